//! Outbound calls to subscribers' callbacks: which targets are allowed, the HTTP client,
//! intent verification and the `X-Hub-Signature` of deliveries.
//!
//! Unless loopback callbacks are allowed, a callback must resolve to public addresses only:
//! literal addresses are checked when the subscription is made and again before each call,
//! and host names are resolved by a resolver that drops non-public addresses (so a DNS
//! answer that changes after subscribing cannot reach the endpoint's own network).
//! Redirects are not followed and no proxy is used.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sha2::Sha256;
use url::{Host, Url};

use super::error::EndpointError;

/// Why a callback URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CallbackUrlError {
    /// Not an absolute `http:`/`https:` URL with a host.
    #[error("not a valid URL")]
    Invalid,
    /// Targets a loopback, private or otherwise non-public address.
    #[error("callback targets a non-public address")]
    NotPublic,
}

impl CallbackUrlError {
    /// The marshmallow-style message.
    pub(crate) fn message(&self) -> &'static str {
        match self {
            Self::Invalid => "Not a valid URL.",
            Self::NotPublic => {
                "Callback URL must not target a loopback, private or link-local address."
            }
        }
    }
}

/// Parses and checks a callback URL.
pub(crate) fn check_callback_url(
    callback: &str,
    allow_non_public: bool,
) -> Result<Url, CallbackUrlError> {
    let url = Url::parse(callback).map_err(|_| CallbackUrlError::Invalid)?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(CallbackUrlError::Invalid);
    }
    let host = url.host().ok_or(CallbackUrlError::Invalid)?;
    if allow_non_public {
        return Ok(url);
    }
    let public = match host {
        Host::Ipv4(address) => is_public_ip(IpAddr::V4(address)),
        Host::Ipv6(address) => is_public_ip(IpAddr::V6(address)),
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name != "localhost" && !name.ends_with(".localhost")
        }
    };
    if public {
        Ok(url)
    } else {
        Err(CallbackUrlError::NotPublic)
    }
}

/// Whether `address` is a public unicast address.
pub(crate) fn is_public_ip(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(address: Ipv4Addr) -> bool {
    let [a, b, ..] = address.octets();
    !(address.is_unspecified()
        || address.is_loopback()
        || address.is_private()
        || address.is_link_local()
        || address.is_broadcast()
        || address.is_multicast()
        || address.is_documentation()
        || a == 0
        // shared address space (carrier-grade NAT), 100.64.0.0/10
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, 192.0.0.0/24
        || (a == 192 && b == 0 && address.octets()[2] == 0)
        // benchmarking, 198.18.0.0/15
        || (a == 198 && (b == 18 || b == 19))
        // reserved, 240.0.0.0/4
        || a >= 240)
}

fn is_public_v6(address: Ipv6Addr) -> bool {
    let first = address.segments()[0];
    !(address.is_unspecified()
        || address.is_loopback()
        || address.is_multicast()
        // unique local fc00::/7
        || (first & 0xfe00) == 0xfc00
        // link-local fe80::/10
        || (first & 0xffc0) == 0xfe80
        // documentation 2001:db8::/32
        || (first == 0x2001 && address.segments()[1] == 0x0db8)
        // IPv4-compatible and NAT64 forms carry an IPv4 address we would have to check again
        || address.to_ipv4().is_some())
}

/// A resolved host had only non-public addresses.
#[derive(Debug)]
pub(crate) struct RefusedAddress(String);

impl fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} resolves to no public address", self.0)
    }
}

impl std::error::Error for RefusedAddress {}

/// The system resolver, keeping public addresses only.
#[derive(Debug)]
struct PublicOnlyResolver;

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let public: Vec<SocketAddr> = resolved
                .filter(|address| is_public_ip(address.ip()))
                .collect();
            if public.is_empty() {
                return Err(Box::new(RefusedAddress(host)) as Box<_>);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// Whether `error` (a reqwest error) was caused by [`RefusedAddress`].
pub(crate) fn is_refused_address(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<RefusedAddress>() {
            return true;
        }
        current = error.source();
    }
    false
}

/// The HTTP client for verification requests and deliveries.
pub(crate) fn http_client(allow_non_public: bool) -> Result<reqwest::Client, EndpointError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(60))
        .user_agent(concat!("igl-channel-endpoint/", env!("CARGO_PKG_VERSION")));
    if !allow_non_public {
        builder = builder.dns_resolver(Arc::new(PublicOnlyResolver));
    }
    builder.build().map_err(EndpointError::HttpClient)
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`, the `X-Hub-Signature` value.
pub(crate) fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for byte in digest.iter() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The parameters of an intent verification request.
#[derive(Debug)]
pub(crate) struct Verification<'a> {
    pub(crate) mode: &'a str,
    pub(crate) topic: &'a str,
    pub(crate) lease_seconds: i64,
}

/// How intent verification failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VerificationError {
    #[error("callback request failed")]
    Request(#[source] reqwest::Error),
    #[error("callback answered {0}")]
    Status(reqwest::StatusCode),
    #[error("callback did not echo the challenge")]
    WrongChallenge,
}

/// The longest verification answer read (a challenge is a UUID).
const MAX_CHALLENGE_ANSWER: usize = 1024;

/// Verifies the subscriber's intent: `GET callback?hub.mode&hub.topic&hub.challenge&
/// hub.lease_seconds` must answer 2xx with the challenge as its body.
pub(crate) async fn verify_intent(
    client: &reqwest::Client,
    callback: &Url,
    request: &Verification<'_>,
    timeout: Duration,
) -> Result<(), VerificationError> {
    let challenge = uuid::Uuid::new_v4().to_string();
    let mut url = callback.clone();
    url.query_pairs_mut()
        .append_pair("hub.mode", request.mode)
        .append_pair("hub.topic", request.topic)
        .append_pair("hub.challenge", &challenge)
        .append_pair("hub.lease_seconds", &request.lease_seconds.to_string());
    let mut response = client
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(VerificationError::Request)?;
    if !response.status().is_success() {
        return Err(VerificationError::Status(response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(VerificationError::Request)? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_CHALLENGE_ANSWER {
            return Err(VerificationError::WrongChallenge);
        }
    }
    if body.trim_ascii() == challenge.as_bytes() {
        Ok(())
    } else {
        Err(VerificationError::WrongChallenge)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_urls() {
        assert!(check_callback_url("https://node.example.org/rx", false).is_ok());
        assert!(check_callback_url("http://8.8.8.8:8080/x", false).is_ok());
        assert_eq!(
            check_callback_url("ftp://node.example.org/", false),
            Err(CallbackUrlError::Invalid)
        );
        assert_eq!(
            check_callback_url("not a url", false),
            Err(CallbackUrlError::Invalid)
        );
        for refused in [
            "http://127.0.0.1:9000/",
            "http://localhost/",
            "http://api.localhost/",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://172.16.5.4/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
        ] {
            assert_eq!(
                check_callback_url(refused, false),
                Err(CallbackUrlError::NotPublic),
                "{refused}"
            );
            assert!(check_callback_url(refused, true).is_ok(), "{refused}");
        }
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
