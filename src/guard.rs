//! The edge guard: who may call at all, decided from the request head alone.
//!
//! One check on the request head, run by [`crate::server`]'s per-request
//! service for both listeners (API and admin) before anything else. In
//! order, it refuses:
//! 1. a head with more than [`MAX_HEADER_FIELDS`] fields or
//!    [`MAX_HEADER_BYTES`] bytes of them (431, connection closed): such a
//!    head would be copied upstream and held while the request queues;
//! 2. on a loopback listener, a `Host` that is neither a loopback name or
//!    address nor in `server.allowed_hosts` (421): that is what a page using
//!    DNS rebinding sends, and the only way it could read answers;
//! 3. a browser request (an `Origin` header, or `Sec-Fetch-Site` other than
//!    `none`) whose origin is not in `server.allowed_origins` (403): a web
//!    page must not drive a tenant with the real key, nor the admin port.
//!    A same-origin request to a trusted host (loopback, or listed in
//!    `server.allowed_hosts`) passes: it comes from a page this listener
//!    served itself (the status page reading `/status`).
//!
//! It never reads the body, never touches a budget, and never logs or echoes
//! a header value: they are the caller's text.

use std::net::IpAddr;

use axum::http::uri::Authority;
use axum::http::{header, HeaderMap, Uri};

use crate::config::{normalize_origin, ServerConfig};
use crate::error::GatewayError;

/// Most header fields a request may carry (each repeated field counts).
/// RetailCRM clients send about ten; browsers about twenty.
pub const MAX_HEADER_FIELDS: usize = 64;

/// Most bytes of header fields (names, values and their framing) a request
/// may carry. hyper itself refuses a head over 64 KiB, or with more than
/// 100 fields, without a body: see [`crate::server`].
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The guard's rules, on a request head. `loopback_listener` says whether
/// the listener is bound to a loopback address.
pub fn check(
    server: &ServerConfig,
    loopback_listener: bool,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(), GatewayError> {
    let bytes: usize = headers
        .iter()
        // `name: value\r\n`, as on the wire.
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers.len() > MAX_HEADER_FIELDS || bytes > MAX_HEADER_BYTES {
        return Err(GatewayError::HeadersTooLarge {
            max_fields: MAX_HEADER_FIELDS,
            max_bytes: MAX_HEADER_BYTES,
        });
    }
    let host = host(headers, uri);
    if loopback_listener {
        // No Host at all is not a browser (they always send one).
        let allowed = match &host {
            Host::Absent => true,
            Host::Invalid => false,
            Host::Given(authority) => host_allowed(authority, &server.allowed_hosts),
        };
        if !allowed {
            return Err(GatewayError::MisdirectedHost);
        }
    }
    if !is_browser(headers) || same_origin_to_trusted_host(headers, &host, server) {
        return Ok(());
    }
    match browser_origin(headers, &host) {
        Some(origin) if server.allowed_origins.contains(&origin) => Ok(()),
        _ => Err(GatewayError::BrowserRefused),
    }
}

/// True when a browser sent the request: it has an `Origin` header, or a
/// `Sec-Fetch-Site` other than `none` (`none` is a user typing the address).
/// Other HTTP clients send neither.
pub fn is_browser(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ORIGIN)
        || headers
            .get_all("sec-fetch-site")
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"none"))
}

/// True for a request a page of this very origin made (`Sec-Fetch-Site:
/// same-origin`, and an `Origin`, if any, equal to `http://{Host}`) to a
/// host that cannot be a rebinding name: a loopback name or address, or one
/// listed in `server.allowed_hosts`. Only crmgate serves pages on that
/// origin, so nothing foreign is speaking.
fn same_origin_to_trusted_host(headers: &HeaderMap, host: &Host, server: &ServerConfig) -> bool {
    let Host::Given(authority) = host else {
        return false;
    };
    let mut sites = headers.get_all("sec-fetch-site").iter();
    let same_origin = match (sites.next(), sites.next()) {
        (Some(v), None) => v.as_bytes().eq_ignore_ascii_case(b"same-origin"),
        _ => false,
    };
    if !same_origin || !host_allowed(authority, &server.allowed_hosts) {
        return false;
    }
    let own = normalize_origin(&format!("http://{authority}"));
    let mut origins = headers.get_all(header::ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (None, _) => true,
        (Some(origin), None) => {
            own.is_some() && origin.to_str().ok().and_then(normalize_origin) == own
        }
        (Some(_), Some(_)) => false,
    }
}

/// The host a request is addressed to.
enum Host {
    /// Neither a `Host` header nor an absolute URI.
    Absent,
    /// Several `Host` headers, or one that is not an authority.
    Invalid,
    /// The one authority given.
    Given(Authority),
}

/// The request's authority: from an absolute-form URI, which takes
/// precedence (RFC 9112, 3.2.2), else from the one `Host` header.
fn host(headers: &HeaderMap, uri: &Uri) -> Host {
    let mut values = headers.get_all(header::HOST).iter();
    let header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(v), None) => match v.to_str().ok().and_then(|s| s.parse().ok()) {
            Some(authority) => Some(authority),
            None => return Host::Invalid,
        },
        (Some(_), Some(_)) => return Host::Invalid,
    };
    match uri.authority().cloned().or(header) {
        Some(authority) => Host::Given(authority),
        None => Host::Absent,
    }
}

/// A loopback name or address (any port), or a host listed in
/// `server.allowed_hosts` (normalised the same way: lowercase, no trailing
/// dot, IPv6 without brackets).
fn host_allowed(authority: &Authority, allowed: &[String]) -> bool {
    // `user@host` is no Host a browser sends; refuse rather than guess.
    if authority.as_str().contains('@') {
        return false;
    }
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let loopback = name == "localhost"
        || name
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback());
    loopback || allowed.contains(&name)
}

/// The origin of a browser request: its `Origin` header, or, for a
/// same-origin read (which browsers send without one), the origin the page
/// itself was loaded from, `http://{Host}`. `None` when there is none to
/// match (`Origin: null`, several `Origin` headers, a cross-site
/// navigation).
fn browser_origin(headers: &HeaderMap, host: &Host) -> Option<String> {
    let mut origins = headers.get_all(header::ORIGIN).iter();
    match (origins.next(), origins.next()) {
        (Some(origin), None) => normalize_origin(origin.to_str().ok()?),
        (Some(_), Some(_)) => None,
        (None, _) => {
            let same_origin = headers
                .get("sec-fetch-site")
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"same-origin"));
            match host {
                // crmgate serves plain HTTP, so that is the page's scheme.
                Host::Given(authority) if same_origin => {
                    normalize_origin(&format!("http://{authority}"))
                }
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        h
    }

    fn verdict(s: &ServerConfig, loopback: bool, pairs: &[(&str, &str)]) -> Option<u16> {
        let uri: Uri = "/api/v5/orders".parse().unwrap();
        check(s, loopback, &head(pairs), &uri)
            .err()
            .map(|e| e.status().as_u16())
    }

    #[test]
    fn plain_clients_pass() {
        let s = ServerConfig::for_tests("");
        assert_eq!(verdict(&s, true, &[("host", "127.0.0.1:8080")]), None);
        assert_eq!(verdict(&s, true, &[]), None, "no Host: not a browser");
        assert_eq!(
            verdict(
                &s,
                true,
                &[("host", "localhost"), ("sec-fetch-site", "none")]
            ),
            None,
            "an address typed by the user"
        );
    }

    #[test]
    fn loopback_listeners_take_loopback_hosts_and_allowed_hosts_only() {
        let s = ServerConfig::for_tests("allowed_hosts = [\"gw.internal\"]");
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.:1",
            "127.0.0.1",
            "127.3.4.5:99",
            "[::1]:8080",
            "[::ffff:127.0.0.1]",
            "gw.internal:8080",
            "GW.internal",
        ] {
            assert_eq!(verdict(&s, true, &[("host", ok)]), None, "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "10.0.0.1",
            "[::2]",
            "a b",
        ] {
            assert_eq!(verdict(&s, true, &[("host", bad)]), Some(421), "{bad}");
        }
        assert_eq!(
            verdict(&s, true, &[("host", "localhost"), ("host", "evil.example")]),
            Some(421),
            "two Host headers"
        );
        // A non-loopback listener does not check Host.
        assert_eq!(verdict(&s, false, &[("host", "evil.example")]), None);
    }

    #[test]
    fn an_absolute_uri_is_the_host_that_counts() {
        let s = ServerConfig::for_tests("");
        let uri: Uri = "http://evil.example/api/v5/orders".parse().unwrap();
        let r = check(&s, true, &head(&[("host", "localhost")]), &uri);
        assert!(matches!(r, Err(GatewayError::MisdirectedHost)));
    }

    #[test]
    fn browsers_need_a_listed_origin() {
        let s = ServerConfig::for_tests("allowed_origins = [\"https://tools.example.com\"]");
        let host = ("host", "127.0.0.1:8080");
        for refused in [
            vec![host, ("origin", "https://evil.example")],
            vec![host, ("origin", "null")],
            vec![host, ("origin", "http://tools.example.com")],
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
            // Same-origin, but the Origin is not this host's.
            vec![
                host,
                ("sec-fetch-site", "same-origin"),
                ("origin", "http://127.0.0.1:9999"),
            ],
            vec![
                host,
                ("origin", "https://tools.example.com"),
                ("origin", "https://evil.example"),
            ],
        ] {
            assert_eq!(verdict(&s, true, &refused), Some(403), "{refused:?}");
        }
        for allowed in [
            vec![host, ("origin", "https://tools.example.com")],
            vec![host, ("origin", "https://TOOLS.example.com:443")],
            vec![
                host,
                ("origin", "https://tools.example.com"),
                ("sec-fetch-site", "cross-site"),
            ],
        ] {
            assert_eq!(verdict(&s, true, &allowed), None, "{allowed:?}");
        }
    }

    #[test]
    fn the_status_page_may_read_its_own_listener() {
        let s = ServerConfig::for_tests("");
        for own in [
            vec![
                ("host", "127.0.0.1:9090"),
                ("sec-fetch-site", "same-origin"),
            ],
            vec![
                ("host", "localhost:9090"),
                ("sec-fetch-site", "same-origin"),
                ("origin", "http://localhost:9090"),
            ],
        ] {
            assert_eq!(verdict(&s, true, &own), None, "{own:?}");
        }
        // On a public listener a same-origin request may come from a
        // rebinding name: only a listed host is trusted.
        let rebinding = [
            ("host", "evil.example:9090"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert_eq!(verdict(&s, false, &rebinding), Some(403));
        let listed = ServerConfig::for_tests("allowed_hosts = [\"gate.internal\"]");
        let own = [
            ("host", "gate.internal:9090"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert_eq!(verdict(&listed, false, &own), None);
    }

    #[test]
    fn a_same_origin_read_without_origin_counts_as_the_hosts_origin() {
        // A public listener, a host that is not trusted: the origin must be
        // listed.
        let s = ServerConfig::for_tests("allowed_origins = [\"http://10.0.0.5:9090\"]");
        let read = |host| {
            verdict(
                &s,
                false,
                &[("host", host), ("sec-fetch-site", "same-origin")],
            )
        };
        assert_eq!(read("10.0.0.5:9090"), None);
        assert_eq!(read("10.0.0.5:9091"), Some(403));
    }

    #[test]
    fn too_many_or_too_large_headers_are_431() {
        let s = ServerConfig::for_tests("");
        let names: Vec<String> = (0..=MAX_HEADER_FIELDS).map(|i| format!("x-h{i}")).collect();
        let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
        assert_eq!(verdict(&s, true, &many), Some(431));
        assert_eq!(verdict(&s, true, &many[1..]), None, "exactly the limit");
        let big = "v".repeat(MAX_HEADER_BYTES);
        assert_eq!(verdict(&s, true, &[("x-big", &big)]), Some(431));
    }
}
