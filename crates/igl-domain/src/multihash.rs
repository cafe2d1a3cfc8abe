use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Multihash code of sha2-256.
const SHA2_256: u8 = 0x12;
/// Digest length of sha2-256.
const SHA2_256_LEN: usize = 32;
/// Length of the base58btc text of a sha2-256 multihash (always starts with `Qm`).
const TEXT_LEN: usize = 46;

/// The address of a document: a sha2-256 multihash of its bytes, written in base58btc
/// (`Qm…`, 46 characters), as the reference document API computes it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Multihash {
    digest: [u8; SHA2_256_LEN],
}

/// Why a string is not a sha2-256 [`Multihash`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultihashError {
    /// Not base58btc text.
    #[error("{0:?} is not base58btc")]
    NotBase58(String),
    /// Base58 but not a sha2-256 multihash (wrong code or digest length).
    #[error("{0:?} is not a sha2-256 multihash")]
    NotSha256(String),
}

impl Multihash {
    /// The multihash of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let mut hasher = MultihashHasher::new();
        hasher.update(bytes);
        hasher.finish()
    }

    /// Wraps a raw sha2-256 digest.
    pub fn from_digest(digest: [u8; SHA2_256_LEN]) -> Self {
        Self { digest }
    }

    /// Parses the base58btc text form (`Qm…`).
    pub fn parse(text: &str) -> Result<Self, MultihashError> {
        if text.len() != TEXT_LEN {
            return Err(if bs58::decode(text).into_vec().is_err() {
                MultihashError::NotBase58(text.to_owned())
            } else {
                MultihashError::NotSha256(text.to_owned())
            });
        }
        let bytes = bs58::decode(text)
            .into_vec()
            .map_err(|_| MultihashError::NotBase58(text.to_owned()))?;
        match bytes.as_slice() {
            [SHA2_256, len, digest @ ..]
                if usize::from(*len) == SHA2_256_LEN && digest.len() == SHA2_256_LEN =>
            {
                let mut out = [0u8; SHA2_256_LEN];
                out.copy_from_slice(digest);
                Ok(Self { digest: out })
            }
            _ => Err(MultihashError::NotSha256(text.to_owned())),
        }
    }

    /// The raw sha2-256 digest.
    pub fn digest(&self) -> &[u8; SHA2_256_LEN] {
        &self.digest
    }

    /// The base58btc text form (`Qm…`).
    pub fn to_base58(&self) -> String {
        let mut bytes = Vec::with_capacity(SHA2_256_LEN + 2);
        bytes.push(SHA2_256);
        bytes.push(SHA2_256_LEN as u8);
        bytes.extend_from_slice(&self.digest);
        bs58::encode(bytes).into_string()
    }
}

impl fmt::Display for Multihash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base58())
    }
}

impl fmt::Debug for Multihash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Multihash({})", self.to_base58())
    }
}

impl FromStr for Multihash {
    type Err = MultihashError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl TryFrom<String> for Multihash {
    type Error = MultihashError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<Multihash> for String {
    fn from(value: Multihash) -> Self {
        value.to_base58()
    }
}

/// Computes a [`Multihash`] incrementally, for documents that arrive as streams.
#[derive(Debug, Clone, Default)]
pub struct MultihashHasher {
    sha256: Sha256,
    bytes_seen: u64,
}

impl MultihashHasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk.
    pub fn update(&mut self, chunk: &[u8]) {
        self.sha256.update(chunk);
        self.bytes_seen += chunk.len() as u64;
    }

    /// How many bytes were fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.bytes_seen
    }

    /// The multihash of everything fed.
    pub fn finish(self) -> Multihash {
        Multihash {
            digest: self.sha256.finalize().into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vector() {
        // 0x12 0x20 ++ sha256("hello world"), base58btc; computed independently in Python.
        let multihash = Multihash::of(b"hello world");
        assert_eq!(
            multihash.to_base58(),
            "QmaozNR7DZHQK1ZcU9p7QdrshMvXqWK6gpu5rmrkPdT3L4"
        );
        assert_eq!(multihash.to_base58().len(), TEXT_LEN);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Multihash::parse("not-base58-0OIl"),
            Err(MultihashError::NotBase58(_))
        ));
        assert!(matches!(
            Multihash::parse("abc"),
            Err(MultihashError::NotSha256(_))
        ));
        // A valid base58 string of the right length whose first byte is not 0x12.
        let mut wrong_code = vec![0x13u8, 32];
        wrong_code.extend([7u8; 32]);
        let text = bs58::encode(wrong_code).into_string();
        assert!(matches!(
            Multihash::parse(&text),
            Err(MultihashError::NotSha256(_))
        ));
    }

    #[test]
    fn streaming_equals_one_shot() {
        let mut hasher = MultihashHasher::new();
        hasher.update(b"hello ");
        hasher.update(b"world");
        assert_eq!(hasher.bytes_seen(), 11);
        assert_eq!(hasher.finish(), Multihash::of(b"hello world"));
    }

    proptest! {
        #[test]
        fn text_round_trips(digest in proptest::array::uniform32(any::<u8>())) {
            let multihash = Multihash::from_digest(digest);
            let text = multihash.to_base58();
            prop_assert!(text.starts_with("Qm"));
            prop_assert_eq!(text.len(), TEXT_LEN);
            prop_assert_eq!(Multihash::parse(&text).unwrap(), multihash);
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,60}") {
            let _ = Multihash::parse(&input);
        }
    }
}
