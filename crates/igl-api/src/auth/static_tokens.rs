//! Static bearer tokens, kept only as SHA-256 digests and compared in constant time.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::StaticToken;

/// A configured token's digest and the identity it grants.
#[derive(Clone)]
struct Entry {
    digest: [u8; 32],
    identity: StaticToken,
}

/// The static tokens. The plaintext of a token is not kept: lookups hash the presented token
/// and compare it with **every** digest without early exit, so the time taken does not depend
/// on which token (or how much of one) matched.
#[derive(Clone, Default)]
pub(super) struct StaticTokens {
    entries: Vec<Entry>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl StaticTokens {
    pub(super) fn new(tokens: Vec<StaticToken>) -> Self {
        let mut table = StaticTokens::default();
        for token in tokens {
            table.push(token);
        }
        table
    }

    /// Adds a token; a later duplicate of an earlier token never matches.
    pub(super) fn push(&mut self, token: StaticToken) {
        let digest = digest(&token.token);
        let identity = StaticToken {
            token: String::new(),
            ..token
        };
        self.entries.push(Entry { digest, identity });
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The identity of `token`, if it is a configured token.
    pub(super) fn find(&self, token: &str) -> Option<&StaticToken> {
        let presented = digest(token);
        let mut found: Option<&StaticToken> = None;
        for entry in &self.entries {
            let matches: Choice = entry.digest.ct_eq(&presented);
            // Keep the first match; evaluate every entry either way.
            if bool::from(matches) && found.is_none() {
                found = Some(&entry.identity);
            }
        }
        found
    }
}

impl fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|entry| &entry.identity))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use igl_domain::Jurisdiction;

    use super::*;

    fn token(value: &str, party: &str) -> StaticToken {
        StaticToken {
            token: value.to_owned(),
            party: party.to_owned(),
            jurisdiction: Jurisdiction::parse("AU").unwrap(),
        }
    }

    #[test]
    fn finds_configured_tokens_only() {
        let table = StaticTokens::new(vec![
            token("token-one-0123456789", "one"),
            token("token-two-0123456789", "two"),
        ]);
        assert_eq!(table.find("token-two-0123456789").unwrap().party, "two");
        assert_eq!(table.find("token-one-0123456789").unwrap().party, "one");
        assert!(table.find("token-one-012345678").is_none());
        assert!(table.find("token-one-01234567890").is_none());
        assert!(table.find("").is_none());
    }

    #[test]
    fn the_first_duplicate_wins() {
        let table = StaticTokens::new(vec![
            token("same-token-0123456789", "first"),
            token("same-token-0123456789", "second"),
        ]);
        assert_eq!(table.find("same-token-0123456789").unwrap().party, "first");
    }

    #[test]
    fn plaintext_is_not_kept_and_debug_is_redacted() {
        let table = StaticTokens::new(vec![token("very-secret-token-value", "dev")]);
        assert!(table.entries.iter().all(|e| e.identity.token.is_empty()));
        let debug = format!("{table:?}");
        assert!(!debug.contains("very-secret-token-value"), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
    }
}
