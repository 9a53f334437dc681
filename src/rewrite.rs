//! Rewriting what the caller sent into what the CRM receives.
//!
//! Parameters are handled as raw `name=value` pairs, so everything crmgate
//! does not touch keeps its exact encoding (`filter[numbers][]=...`). Only
//! key parameters are removed — `apiKey`, whose value is returned to find
//! the tenant, and every other spelling of it ([`is_key_name`]), which the
//! CRM may read too — and `site` is added when the tenant has a default and
//! the request has none.
//! Headers: hop-by-hop ones and the caller's `X-API-KEY` are dropped.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};

/// The parameter RetailCRM reads a key from.
pub const API_KEY_PARAM: &str = "apiKey";

/// The header a key travels in: the caller's in, the real one out (a typed
/// name: a `&str` name is parsed on every lookup and insert).
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// Parameters after removing `apiKey`.
#[derive(Debug, PartialEq, Eq)]
pub struct Stripped {
    /// The remaining pairs, joined with `&`, each byte-for-byte as received.
    pub rest: Vec<u8>,
    /// The first `apiKey` value found, decoded.
    pub api_key: Option<String>,
    /// True if a `site` parameter is present.
    pub has_site: bool,
}

/// True for a parameter name that carries a key in some spelling, as PHP
/// (the CRM) reads names: leading spaces dropped, `.` and ` ` read as `_`,
/// and `name[...]` read as the array `name`. So `apiKey`, `apikey`,
/// `APIKEY`, `api_key`, `api.key`, ` apiKey`, `apiKey[]`, `apiKey[0]` all
/// count (ASCII case-insensitive). The name is the percent-decoded one.
pub fn is_key_name(name: &str) -> bool {
    let name = name.trim_start_matches(' ');
    // `a[b]` is the array `a`; a `[` without its `]` is kept (PHP turns it
    // into `_`, which no key name contains).
    let base = match name.find('[') {
        Some(i) if name[i..].contains(']') => &name[..i],
        _ => name,
    };
    let mut folded = [0u8; 7];
    if base.len() != 6 && base.len() != 7 {
        return false;
    }
    for (f, b) in folded.iter_mut().zip(base.bytes()) {
        *f = match b {
            b'.' | b' ' => b'_',
            b => b.to_ascii_lowercase(),
        };
    }
    &folded[..base.len()] == b"apikey" || &folded[..base.len()] == b"api_key"
}

/// Removes every key pair ([`is_key_name`]) from raw `a=b&c=d` text; the
/// first `apiKey` (exact spelling, as RetailCRM reads it) is returned.
pub fn strip_api_key(raw: &[u8]) -> Stripped {
    let mut rest = Vec::with_capacity(raw.len());
    let mut api_key = None;
    let mut has_site = false;
    for pair in raw.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        // Decode this one pair only to read its name; it is copied raw.
        let (name, value) = form_urlencoded::parse(pair).next().unwrap_or_default();
        if is_key_name(&name) {
            if api_key.is_none() && name == API_KEY_PARAM {
                api_key = Some(value.into_owned());
            }
            continue;
        }
        has_site |= name == "site";
        if !rest.is_empty() {
            rest.push(b'&');
        }
        rest.extend_from_slice(pair);
    }
    Stripped {
        rest,
        api_key,
        has_site,
    }
}

/// Appends `name=value` (form-encoded) to raw parameters.
pub fn append_param(params: &mut Vec<u8>, name: &str, value: &str) {
    if !params.is_empty() {
        params.push(b'&');
    }
    let encoded: String = form_urlencoded::Serializer::new(String::new())
        .append_pair(name, value)
        .finish();
    params.extend_from_slice(encoded.as_bytes());
}

/// The media type of the content type, read as PHP (the CRM) reads it: it
/// ends at `;`, `,` or a space, so `application/x-www-form-urlencoded,
/// text/plain` is a form too. Compare it without case.
fn media_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split([';', ',', ' ']).next())
        .map(str::trim)
}

/// True if the content type is `application/x-www-form-urlencoded`, read
/// as PHP reads it (`media_type`).
pub fn is_form(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|v| v.eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

/// True if the content type is `multipart/form-data`, read as PHP reads it
/// (`media_type`): PHP fills `$_POST` from its parts as from a form.
pub fn is_multipart(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|v| v.eq_ignore_ascii_case("multipart/form-data"))
}

/// Header names that the `Connection` header lists (hop-by-hop too).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect()
}

/// Headers that belong to one connection and must not be forwarded. Typed
/// names: removing by a `&str` parses the name again for every call (about
/// 450 instructions each under callgrind).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn drop_hop_by_hop(headers: &mut HeaderMap) {
    for name in connection_named(headers) {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// True for a request header that must not go upstream as the caller sent
/// it: hop-by-hop, recomputed by the client, the caller's key, or replaced
/// (`X-Forwarded-For`, `X-Request-Id`), crmgate's own control headers, or
/// `Expect` (met here: the whole body is read before it is sent on).
fn not_forwarded(name: &HeaderName) -> bool {
    *name == header::HOST
        || *name == header::CONTENT_LENGTH
        || HOP_BY_HOP.contains(name)
        || matches!(
            name.as_str(),
            "x-api-key" | "x-forwarded-for" | "x-request-id" | "expect"
        )
        || name.as_str().starts_with("x-crmgate-")
}

/// The request headers to send upstream: the caller's end-to-end headers
/// minus its key, crmgate's control headers and what the client recomputes.
/// Built by copying what stays (cheaper than cloning and removing), into a
/// map sized for it and the two headers inbound adds (`X-Forwarded-For`,
/// `X-Request-Id`): a queued request holds this map while it waits, and
/// one sized by the incoming count (its `Host`, key and framing included)
/// is often the next power of two up, twice the room.
pub fn upstream_headers(incoming: &HeaderMap) -> HeaderMap {
    let named = connection_named(incoming);
    let kept = |name: &HeaderName| !not_forwarded(name) && !named.contains(name);
    let n = incoming.keys().filter(|name| kept(name)).count();
    let mut h = HeaderMap::with_capacity(n + 2);
    for (name, value) in incoming {
        if kept(name) {
            // Copied, not shared: the request may wait long.
            h.append(name.clone(), owned(value));
        }
    }
    h
}

/// `value` in storage of its own. A value hyper parsed points into the
/// connection's read buffer (8 KiB or more), which a kept copy would keep
/// alive, and whose one reference count every copy of it would share.
pub fn owned(value: &HeaderValue) -> HeaderValue {
    let mut owned = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
    owned.set_sensitive(value.is_sensitive());
    owned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(raw: &str) -> (String, Option<String>, bool) {
        let r = strip_api_key(raw.as_bytes());
        (String::from_utf8(r.rest).unwrap(), r.api_key, r.has_site)
    }

    #[test]
    fn strips_every_api_key_and_keeps_the_rest_verbatim() {
        assert_eq!(
            s("filter[numbers][]=1235C&apiKey=k%2B1&page=2&apiKey=other"),
            (
                "filter[numbers][]=1235C&page=2".into(),
                Some("k+1".into()),
                false
            )
        );
        assert_eq!(s("apiKey=a+b"), ("".into(), Some("a b".into()), false));
        assert_eq!(
            s("%61piKey=x&site=main"),
            ("site=main".into(), Some("x".into()), true)
        );
        assert_eq!(
            s("filter%5BcustomFields%5D%5Bnps%5D%5Bmin%5D=5&&limit=20"),
            (
                "filter%5BcustomFields%5D%5Bnps%5D%5Bmin%5D=5&limit=20".into(),
                None,
                false
            )
        );
        assert_eq!(s("flag&apiKeyX=1"), ("flag&apiKeyX=1".into(), None, false));
    }

    #[test]
    fn strips_every_spelling_of_the_key_but_reads_only_api_key() {
        assert_eq!(
            s("apikey=a&APIKEY=b&api_key=c&apiKey%5B%5D=d&API_KEY[]=e&x=1"),
            ("x=1".into(), None, false)
        );
        assert_eq!(
            s("api_key=c&apiKey=k&apiKey[]=d"),
            ("".into(), Some("k".into()), false)
        );
        for name in [
            "apiKey",
            "apikey",
            "APIKEY",
            "api_key",
            "Api_Key[]",
            "apiKey[]",
        ] {
            assert!(is_key_name(name), "{name}");
        }
        // PHP's own readings of a name.
        for name in [
            " apiKey",
            "  api_key",
            "api.key",
            "api key",
            "apiKey[0]",
            "apiKey[x][y]",
        ] {
            assert!(is_key_name(name), "{name}");
        }
        for name in [
            "apiKeys", "api-key", "key", "xapikey", "apiKey[", "api__key", "a.pikey",
        ] {
            assert!(!is_key_name(name), "{name}");
        }
    }

    #[test]
    fn appends_encoded() {
        let mut p = b"a=1".to_vec();
        append_param(&mut p, "site", "my shop&co");
        assert_eq!(p, b"a=1&site=my+shop%26co");
        let mut p = Vec::new();
        append_param(&mut p, "site", "main");
        assert_eq!(p, b"site=main");
    }

    #[test]
    fn drops_hop_by_hop_and_keys() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-api-key", "client".parse().unwrap());
        h.insert("x-crmgate-priority", "high".parse().unwrap());
        h.insert("accept", "application/json".parse().unwrap());
        h.append("accept-language", "ru".parse().unwrap());
        h.append("accept-language", "en".parse().unwrap());
        h.insert("host", "localhost:8080".parse().unwrap());
        h.insert("content-length", "3".parse().unwrap());
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.insert("x-request-id", "r1".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("expect", "100-continue".parse().unwrap());
        let out = upstream_headers(&h);
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out.contains_key("accept"));
        let langs: Vec<_> = out.get_all("accept-language").iter().collect();
        assert_eq!(langs, ["ru", "en"], "repeated headers keep their order");
        // Room for what stays and the two inbound adds (6 entries), not
        // for the 13 that came in (24).
        assert!(out.capacity() < 8, "capacity {}", out.capacity());
    }

    #[test]
    fn answers_lose_every_hop_by_hop_header() {
        let mut h = HeaderMap::new();
        for name in [
            "connection",
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            h.insert(HeaderName::from_static(name), "x".parse().unwrap());
        }
        h.append("connection", "X-Resp-Hop".parse().unwrap());
        h.insert("x-resp-hop", "1".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        drop_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn form_detection() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8"
                .parse()
                .unwrap(),
        );
        assert!(is_form(&h));
        h.insert(
            "content-type",
            "Application/X-WWW-Form-Urlencoded".parse().unwrap(),
        );
        assert!(is_form(&h), "media types are case-insensitive");
        h.insert("content-type", "application/json".parse().unwrap());
        assert!(!is_form(&h));
        h.insert(
            "content-type",
            "Multipart/Form-Data, x; boundary=b".parse().unwrap(),
        );
        assert!(is_multipart(&h) && !is_form(&h));
        for php_reads_a_form in [
            "application/x-www-form-urlencoded, text/plain",
            "application/x-www-form-urlencoded charset=UTF-8",
        ] {
            h.insert("content-type", php_reads_a_form.parse().unwrap());
            assert!(is_form(&h), "{php_reads_a_form}");
        }
    }
}
