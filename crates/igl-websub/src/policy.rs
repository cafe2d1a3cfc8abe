//! Validation of subscription requests: callback URLs (SSRF guard), topics, leases.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Which callback URLs the hub calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallbackPolicy {
    /// Allow loopback, private, link-local and unique-local addresses (and `localhost`).
    /// Off in production: a subscriber could otherwise make the hub call internal services.
    pub allow_private: bool,
}

/// Checks a callback URL: `http`/`https`, a host, and (unless allowed) no literal private
/// address or `localhost`. Host names are not resolved here; deployments that must stop DNS
/// names pointing inside should also filter egress at the network level.
pub fn check_callback(callback: &str, policy: CallbackPolicy) -> Result<url::Url, String> {
    let url = url::Url::parse(callback).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} is not http or https", url.scheme()));
    }
    let private = match url.host() {
        None => return Err("the URL has no host".into()),
        Some(url::Host::Domain(domain)) => {
            let domain = domain.to_ascii_lowercase();
            domain == "localhost" || domain.ends_with(".localhost")
        }
        Some(url::Host::Ipv4(ip)) => is_private(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_private(IpAddr::V6(ip)),
    };
    if private && !policy.allow_private {
        return Err("callbacks to private or loopback addresses are not allowed".into());
    }
    Ok(url)
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_broadcast()
                || ip == Ipv4Addr::new(169, 254, 169, 254)
                || ip.octets()[0] == 100 && (64..128).contains(&ip.octets()[1])
        }
        IpAddr::V6(ip) => {
            ip.is_loopback()
                || ip.is_unspecified()
                || (ip.segments()[0] & 0xfe00) == 0xfc00
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private(IpAddr::V4(v4)))
                || ip == Ipv6Addr::LOCALHOST
        }
    }
}

/// Validates a topic like the reference's Subscriptions API (REFERENCE-WIRE §3.2), without
/// its 500s: non-empty, no `/`, no empty segments, at most one `*` and only as the whole
/// last segment, and topics under `UN.` need four segments unless they end in a wildcard.
/// `*` alone subscribes to every event.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("Topic must not be empty".into());
    }
    if topic.contains('/') || topic.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("Topic must not contain '/', whitespace or control characters".into());
    }
    if topic == "*" {
        return Ok(());
    }
    let segments: Vec<&str> = topic.split('.').collect();
    if segments.iter().any(|segment| segment.is_empty()) {
        return Err("Topic must not contain empty segments".into());
    }
    let stars = topic.matches('*').count();
    let wildcard = segments.last() == Some(&"*");
    if stars > 1 || (stars == 1 && !wildcard) {
        return Err("Wildcard '*' is only allowed as the whole last segment".into());
    }
    if segments[0].eq_ignore_ascii_case("UN") && segments.len() < 4 && !wildcard {
        return Err(
            "Predicates shorter than 4 elements must include wildcard as the last element".into(),
        );
    }
    Ok(())
}

/// Lease limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasePolicy {
    /// Lease when the subscriber asks for none.
    pub default: Duration,
    /// Shortest lease accepted.
    pub min: Duration,
    /// Longest lease accepted.
    pub max: Duration,
}

impl Default for LeasePolicy {
    /// 10 days by default, between 1 hour and 1 year.
    fn default() -> Self {
        Self {
            default: Duration::from_secs(10 * 24 * 3600),
            min: Duration::from_secs(3600),
            max: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUBLIC: CallbackPolicy = CallbackPolicy {
        allow_private: false,
    };
    const LOCAL: CallbackPolicy = CallbackPolicy {
        allow_private: true,
    };

    #[test]
    fn callbacks() {
        assert!(check_callback("https://subscriber.example.org/cb?x=1", PUBLIC).is_ok());
        assert!(check_callback("ftp://x.org/", PUBLIC).is_err());
        assert!(check_callback("not a url", PUBLIC).is_err());
        for private in [
            "http://127.0.0.1:8080/cb",
            "http://localhost/cb",
            "http://10.1.2.3/",
            "http://192.168.0.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/",
            "http://[fd00::1]/",
        ] {
            assert!(check_callback(private, PUBLIC).is_err(), "{private}");
            assert!(check_callback(private, LOCAL).is_ok(), "{private}");
        }
    }

    #[test]
    fn topics_follow_the_reference_without_its_500s() {
        for ok in [
            "UN.CEFACT.*",
            "UN.CEFACT.Trade.CO.created",
            "CEFACT.*",
            "message.*",
            "message.AU:1.status",
            "*",
            "a",
        ] {
            assert!(check_topic(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            "a.b.",
            "CEFACT.*.*",
            "CEFACT.TRADE.*.CO.created",
            "UN.CEFACT",
            "UN.CEFACT.TRADE",
            "a.b*",
            "a/b",
        ] {
            assert!(check_topic(bad).is_err(), "{bad}");
        }
    }
}
