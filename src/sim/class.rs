//! The CRM's side of two request facts: which rate limit a path counts
//! against, and whether a body is a form (urlencoded or multipart) the CRM
//! would decode.
//!
//! Written from RetailCRM's published rules (see `retailcrm-api.md`), not
//! from the gateway's code: the simulator must never import the gateway's
//! request path (`crate::classify`, `crate::rewrite`, `crate::proxy`), or a
//! gateway that misclassifies a method would be judged by its own mistake
//! and the strict limit could not catch it.

use axum::http::{header, HeaderMap};

/// Which documented limit a request counts against at the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Every method that is not telephony: RetailCRM allows 10 per second per IP.
    General,
    /// Telephony methods, `/api/telephony/*` and `/api/v{N}/telephony/*`:
    /// 40 per second per IP.
    Telephony,
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Class::General => "general",
            Class::Telephony => "telephony",
        })
    }
}

/// The limit `path` (without the query) counts against.
///
/// RetailCRM names telephony methods `/api/telephony/*`, spelled
/// `/api/v5/telephony/*` in v5 (and likewise in the older versions it still
/// serves). Read literally, only paths *under* `telephony/` are telephony:
/// `/api/v5/telephony` itself is no method, and `telephonyx/...` or
/// `orders/telephony` are other groups. Anything that does not match counts
/// as general, the lower limit, so the simulator errs on the strict side.
/// No normalisation is done (no case folding, no `//` merging, no
/// percent-decoding): the CRM's router does not do it for us either.
pub fn classify(path: &str) -> Class {
    let Some(rest) = path.strip_prefix("/api/") else {
        return Class::General;
    };
    // An optional version segment: "v" followed by one or more digits.
    let method = match rest.split_once('/') {
        Some((version, tail)) if is_version(version) => tail,
        _ => rest,
    };
    if method.starts_with("telephony/") {
        Class::Telephony
    } else {
        Class::General
    }
}

fn is_version(segment: &str) -> bool {
    segment
        .strip_prefix('v')
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// True if the CRM would decode this request's body as form fields.
///
/// RetailCRM is PHP, which fills `$_POST` when the content type, cut at the
/// first `;`, `,` or space and compared without case, is
/// `application/x-www-form-urlencoded`. We copy that tolerance rather than
/// parse the header strictly, so a body the CRM would read (and a key in it)
/// is never missed. PHP decodes `multipart/form-data` into the same fields
/// (RetailCRM's PHP clients send every POST that way): see [`is_multipart`].
pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    media_type_is(headers, b"application/x-www-form-urlencoded")
}

/// True if PHP would decode this request's body as `multipart/form-data`:
/// the same cut of the content type as [`is_form`].
pub(crate) fn is_multipart(headers: &HeaderMap) -> bool {
    media_type_is(headers, b"multipart/form-data")
}

/// PHP's reading of the content type: cut at the first `;`, `,` or space,
/// compared without case.
fn media_type_is(headers: &HeaderMap, expected: &[u8]) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|value| {
        let value = value.as_bytes();
        let end = value
            .iter()
            .position(|b| matches!(b, b';' | b',' | b' '))
            .unwrap_or(value.len());
        value[..end].eq_ignore_ascii_case(expected)
    })
}
