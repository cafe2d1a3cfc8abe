//! The URI rule for a message's `obj` and `predicate` (REFERENCE-WIRE §1.2), extended to
//! accept URNs and URLs without a path, as the product requires.

/// Which form of URI a value was recognised as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriKind {
    /// An IPFS CID (v0 `Qm…` or v1 multibase `b…`/`z…`/`f…`), optionally prefixed `/ipfs/`.
    Cid,
    /// A URL with a scheme and an authority (`https://example.com`, `https://e.org/x`).
    Url,
    /// A URN (RFC 8141): `urn:<nid>:<nss>`.
    Urn,
    /// A base58btc multihash of a known hash function.
    Multihash,
    /// A dotted name with at least three non-empty segments (`UN.CEFACT.Trade.CO.created`).
    Fqn,
}

/// Classifies `value` as one of the accepted URI forms, or `None` when it is none of them.
///
/// Whitespace and control characters are never part of a URI.
pub fn classify_uri(value: &str) -> Option<UriKind> {
    if value.is_empty() || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let cid_candidate = value.strip_prefix("/ipfs/").unwrap_or(value);
    if is_cid(cid_candidate) {
        return Some(UriKind::Cid);
    }
    if is_urn(value) {
        return Some(UriKind::Urn);
    }
    if is_url(value) {
        return Some(UriKind::Url);
    }
    if decode_base58(value).is_some_and(|bytes| is_multihash(&bytes)) {
        return Some(UriKind::Multihash);
    }
    if is_fqn(value) {
        return Some(UriKind::Fqn);
    }
    None
}

fn decode_base58(value: &str) -> Option<Vec<u8>> {
    bs58::decode(value).into_vec().ok()
}

/// Reads an unsigned LEB128 varint (as used by multiformats), at most 9 bytes.
fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value: u64 = 0;
    for (index, byte) in bytes.iter().enumerate().take(9) {
        value |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[index + 1..]));
        }
    }
    None
}

/// Known multihash function codes with their full digest lengths.
fn known_digest_len(code: u64) -> Option<usize> {
    match code {
        0x11 => Some(20),        // sha1
        0x12 | 0x16 => Some(32), // sha2-256, sha3-256
        0x13 | 0x14 => Some(64), // sha2-512, sha3-512
        0x1e => Some(32),        // blake3 (default length)
        0xb220 => Some(32),      // blake2b-256
        0xb240 => Some(64),      // blake2b-512
        0x1b => Some(32),        // keccak-256
        _ => None,
    }
}

fn is_multihash(bytes: &[u8]) -> bool {
    let Some((code, rest)) = read_varint(bytes) else {
        return false;
    };
    let Some((len, digest)) = read_varint(rest) else {
        return false;
    };
    let Some(max_len) = known_digest_len(code) else {
        return false;
    };
    usize::try_from(len).is_ok_and(|len| len == digest.len() && len > 0 && len <= max_len)
}

fn is_cid(value: &str) -> bool {
    if value.len() == 46 && value.starts_with("Qm") {
        return decode_base58(value).is_some_and(|bytes| is_multihash(&bytes));
    }
    let Some(prefix) = value.chars().next() else {
        return false;
    };
    let body = &value[prefix.len_utf8()..];
    let bytes = match prefix {
        'z' => decode_base58(body),
        'b' => decode_base32_lower(body),
        'f' => decode_hex(body),
        _ => None,
    };
    bytes.is_some_and(|bytes| is_cid_v1(&bytes))
}

fn is_cid_v1(bytes: &[u8]) -> bool {
    let Some((version, rest)) = read_varint(bytes) else {
        return false;
    };
    if version != 1 {
        return false;
    }
    let Some((_codec, multihash)) = read_varint(rest) else {
        return false;
    };
    is_multihash(multihash)
}

fn decode_base32_lower(body: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len() * 5 / 8);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for byte in body.bytes() {
        let value = match byte {
            b'a'..=b'z' => byte - b'a',
            b'2'..=b'7' => byte - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn decode_hex(body: &str) -> Option<Vec<u8>> {
    if !body.len().is_multiple_of(2) {
        return None;
    }
    (0..body.len())
        .step_by(2)
        .map(|index| u8::from_str_radix(body.get(index..index + 2)?, 16).ok())
        .collect()
}

fn is_scheme(scheme: &str) -> bool {
    let mut chars = scheme.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn is_url(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    is_scheme(scheme) && !host.is_empty() && !host.starts_with(':')
}

fn is_urn(value: &str) -> bool {
    let mut parts = value.splitn(3, ':');
    let (Some(urn), Some(nid), Some(nss)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    urn.eq_ignore_ascii_case("urn")
        && (2..=32).contains(&nid.len())
        && nid.starts_with(|c: char| c.is_ascii_alphanumeric())
        && nid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !nss.is_empty()
}

fn is_fqn(value: &str) -> bool {
    let segments: Vec<&str> = value.split('.').collect();
    segments.len() >= 3 && segments.iter().all(|segment| !segment.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_reference_forms() {
        assert_eq!(
            classify_uri("QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n"),
            Some(UriKind::Cid)
        );
        assert_eq!(
            classify_uri("/ipfs/QmQtYtUS7K1AdKjbuMsmPmPGDLaKL38M5HYwqxW9RKW49n"),
            Some(UriKind::Cid)
        );
        assert_eq!(
            classify_uri("bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"),
            Some(UriKind::Cid)
        );
        assert_eq!(classify_uri("https://example.com/x"), Some(UriKind::Url));
        assert_eq!(
            classify_uri("UN.CEFACT.Trade.CertificateOfOrigin.created"),
            Some(UriKind::Fqn)
        );
        assert_eq!(classify_uri("a.b.c"), Some(UriKind::Fqn));
    }

    #[test]
    fn accepts_what_the_reference_wrongly_rejected() {
        assert_eq!(classify_uri("https://example.com"), Some(UriKind::Url));
        assert_eq!(classify_uri("urn:un:cefact:x"), Some(UriKind::Urn));
        assert_eq!(classify_uri("URN:ISBN:0451450523"), Some(UriKind::Urn));
    }

    #[test]
    fn rejects_non_uris() {
        for value in [
            "",
            "foo",
            "a.b",
            "a..b.c",
            "a.b.",
            "https://",
            "http:///x",
            "urn:x:y",
            "a b.c.d",
        ] {
            assert_eq!(classify_uri(value), None, "{value:?} should be rejected");
        }
    }

    proptest! {
        #[test]
        fn classify_never_panics(input in "\\PC{0,80}") {
            let _ = classify_uri(&input);
        }

        #[test]
        fn dotted_names_with_three_segments_are_fqns(
            segments in proptest::collection::vec("[A-Za-z][A-Za-z0-9]{0,8}", 3..8)
        ) {
            let value = segments.join(".");
            prop_assert!(classify_uri(&value).is_some());
        }

        #[test]
        fn any_https_url_with_host_is_accepted(host in "[a-z]{1,10}\\.[a-z]{2,5}", path in "(/[a-z0-9]{0,6}){0,3}") {
            let value = format!("https://{host}{path}");
            prop_assert_eq!(classify_uri(&value), Some(UriKind::Url));
        }
    }
}
