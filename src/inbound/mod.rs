//! Inbound: what the caller sent, read, checked and rewritten into a typed
//! [`Inbound`] request.
//!
//! The first stage of the request path: split the path into tenant prefix
//! and API method, identify the tenant ([`crate::tenant`]) — before reading
//! the body whenever the key is in a header or the query, so a wrong key
//! costs no body — read the bounded body, classify the method
//! ([`crate::classify`]), read crmgate's control headers, and rewrite the
//! request for the CRM ([`crate::rewrite`], and [`multipart`] for
//! `multipart/form-data` bodies): the caller's key stripped, `site` added. The real key is *not* added here: [`crate::forward`] adds it
//! at send time. This module never logs, and never keeps the caller's key
//! past tenant resolution.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio::time::Instant;

pub mod body;
pub mod multipart;

use crate::access::Trace;
use crate::bodies::{BodyLease, BodyPool};
use crate::classify::{classify, Class};
use crate::error::GatewayError;
use crate::live::Snapshot;
use crate::rewrite::{
    append_param, is_form, is_multipart, strip_api_key, upstream_headers, Stripped, X_API_KEY,
};
use crate::scheduler::{Priority, Ticket};
use crate::tenant::Tenant;

/// Request header: `high`, `normal` (default) or `low`.
pub const PRIORITY_HEADER: &str = "x-crmgate-priority";
/// Request header: the longest the caller will wait for a slot, e.g. `5s`.
pub const MAX_WAIT_HEADER: &str = "x-crmgate-max-wait";
/// Request and response header identifying the request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// [`REQUEST_ID_HEADER`] as a typed name (a `&str` name is parsed on every
/// lookup and insert).
pub const REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID_HEADER);
/// The caller's hops, with its address added (typed, as above).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// A request that passed the inbound checks: whose it is, which budget, how
/// long it may wait, and what to send.
#[derive(Debug)]
pub struct Inbound {
    /// The tenant, as resolved from the config snapshot the request arrived
    /// under.
    pub tenant: Arc<Tenant>,
    /// What the scheduler needs: tenant, client, class, priority, deadline.
    pub ticket: Ticket,
    /// What goes to the CRM, minus the real key and the base URL. Boxed:
    /// a queued request's future holds its `Inbound` at each stage it
    /// passes through (an async fn keeps its argument and the callee's
    /// copy apart), so a small `Inbound` is a small waiting request.
    pub out: Box<Outgoing>,
    /// The body's bytes in the pool of held bodies, until the request ends.
    pub lease: BodyLease,
}

impl Inbound {
    /// The budget class of the request.
    pub fn class(&self) -> Class {
        self.ticket.class
    }

    /// The API path (`/api/v5/...`), without tenant prefix or query.
    pub fn api_path(&self) -> &str {
        &self.out.path
    }
}

/// The caller's request, rewritten for the CRM.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// GET, POST, ...
    pub method: Method,
    /// `/api/v5/...`: the API path, without tenant prefix.
    pub path: String,
    /// The rewritten query (no key, `site` added), if any.
    pub query: Option<String>,
    /// End-to-end headers, no key, plus `X-Forwarded-For` and `X-Request-Id`.
    pub headers: HeaderMap,
    /// The body, rewritten when it is a form (no key, `site` added).
    pub body: Bytes,
}

/// Reads and checks one request into an [`Inbound`]; records the tenant and
/// class in `trace` as soon as they are known.
pub async fn read(
    snap: &Snapshot,
    pool: &Arc<BodyPool>,
    peer: SocketAddr,
    req: Request,
    request_id: &str,
    trace: &mut Trace,
) -> Result<Inbound, GatewayError> {
    let (parts, body) = req.into_parts();
    if !matches!(parts.method, Method::GET | Method::HEAD | Method::POST) {
        return Err(GatewayError::MethodNotAllowed(parts.method.to_string()));
    }
    let (prefix, api_path) = split_path(parts.uri.path())?;
    let query = strip_api_key(parts.uri.query().unwrap_or("").as_bytes());
    let header_key = match parts.headers.get(&X_API_KEY) {
        Some(v) => Some(v.to_str().map_err(|_| GatewayError::WrongKey)?.to_string()),
        None => None,
    };
    // An empty key is no key, as RetailCRM treats it.
    let given = |k: &Option<String>| k.clone().filter(|k| !k.is_empty());
    let early_key = given(&header_key).or_else(|| given(&query.api_key));
    // With the key in a header or the query, or when the body cannot carry
    // one (neither a form nor multipart), the tenant is known before the
    // body is read: a wrong or missing key costs no body (and, with
    // `Expect: 100-continue`, no upload: hyper sends `100 Continue` only
    // when the body is first read).
    let multipart = is_multipart(&parts.headers);
    let early = match &early_key {
        Some(key) => Some(snap.tenants.resolve(prefix, Some(key))?),
        None if !is_form(&parts.headers) && !multipart => Some(snap.tenants.resolve(prefix, None)?),
        None => {
            if let Some(name) = prefix {
                if snap.tenants.get(name).is_none() {
                    return Err(GatewayError::UnknownTenant(name.to_string()));
                }
            }
            None
        }
    };

    let class = classify(api_path);
    if let Some(t) = &early {
        // Known before the body: a body that fails is counted for it.
        trace.tenant = Some(t.name.clone());
        trace.class = Some(class);
    }
    // A multipart body PHP and crmgate could read differently is refused
    // before it is read.
    let boundary = match multipart {
        true => {
            let ct = parts.headers.get(axum::http::header::CONTENT_TYPE);
            let ct = ct.and_then(|v| v.to_str().ok()).unwrap_or("");
            Some(multipart::boundary(ct).map_err(bad_multipart)?)
        }
        false => None,
    };
    let (body, lease) = body::read(
        &parts.headers,
        body,
        snap.config.server.max_body_bytes,
        pool,
        snap.config.limits.max_buffered_bytes.get(),
    )
    .await?;
    if body::has_key_field(&parts.headers, &body) {
        return Err(GatewayError::BadRequest(
            "a key inside a JSON body is not accepted: send it in the X-API-KEY \
             header (or as apiKey in the query, a form or a multipart body)"
                .into(),
        ));
    }
    let form = match boundary {
        Some(b) => Some(BodyParams::Multipart(
            multipart::strip(&b, body.clone()).map_err(bad_multipart)?,
        )),
        None if is_form(&parts.headers) => Some(BodyParams::Form(strip_api_key(&body))),
        None => None,
    };
    let presented = early_key.or_else(|| form.as_ref().and_then(|f| given(&f.api_key())));
    let tenant = match early {
        Some(t) => t,
        None => snap.tenants.resolve(prefix, presented.as_deref())?,
    };
    trace.tenant = Some(tenant.name.clone());
    trace.class = Some(class);

    let priority = priority(&parts.headers)?;
    let max_wait = max_wait(&parts.headers, snap.config.limits.max_queue_wait)?;
    let out = outgoing(
        &tenant, &parts, api_path, query, form, body, peer, request_id,
    );
    let ticket = Ticket {
        tenant: tenant.name.clone(),
        weight: tenant.config.weight.get(),
        max_queued: tenant.config.max_queued.get(),
        // Fairness inside a tenant is per client key, else per source address.
        client: presented.map_or_else(|| peer.ip().to_string().into(), Into::into),
        priority,
        class,
        deadline: Instant::now() + max_wait,
    };
    Ok(Inbound {
        tenant,
        ticket,
        out: Box::new(out),
        lease,
    })
}

/// The parameters a body carries, its keys removed: a form or a multipart
/// body, which PHP (the CRM) reads alike.
enum BodyParams {
    Form(Stripped),
    Multipart(multipart::Stripped),
}

impl BodyParams {
    fn api_key(&self) -> Option<String> {
        match self {
            BodyParams::Form(f) => f.api_key.clone(),
            BodyParams::Multipart(m) => m.api_key.clone(),
        }
    }

    fn has_site(&self) -> bool {
        match self {
            BodyParams::Form(f) => f.has_site,
            BodyParams::Multipart(m) => m.has_site,
        }
    }

    /// The body to send, with `site` added when given; the site back when
    /// it could not go into the body (it then goes into the query).
    fn into_body(self, site: Option<&str>) -> (Bytes, Option<&str>) {
        match (self, site) {
            (BodyParams::Form(mut f), Some(site)) => {
                append_param(&mut f.rest, "site", site);
                (f.rest.into(), None)
            }
            (BodyParams::Form(f), None) => (f.rest.into(), None),
            (BodyParams::Multipart(m), Some(site)) => match m.with_field("site", site) {
                Some(body) => (body, None),
                None => (m.body, Some(site)),
            },
            (BodyParams::Multipart(m), None) => (m.body, None),
        }
    }
}

/// A multipart body that cannot be forwarded: 400, never sent.
fn bad_multipart(e: multipart::MultipartError) -> GatewayError {
    GatewayError::BadRequest(e.to_string())
}

/// Splits `/api/...` or `/{tenant}/api/...` into (tenant prefix, API path).
pub fn split_path(path: &str) -> Result<(Option<&str>, &str), GatewayError> {
    // The outgoing client's URL parser resolves `.` and `..` (also as
    // `%2e`, and `\` as `/`), so such a path would reach another method than
    // the one checked and classified here, or leave `/api/` with the real key.
    if path.split(['/', '\\']).any(is_dot_segment) {
        return Err(GatewayError::NotFound);
    }
    if path.starts_with("/api/") {
        return Ok((None, path));
    }
    let rest = path.strip_prefix('/').ok_or(GatewayError::NotFound)?;
    let (prefix, tail) = rest.split_once('/').ok_or(GatewayError::NotFound)?;
    let api = &path[prefix.len() + 1..];
    if prefix.is_empty() || !tail.starts_with("api/") {
        return Err(GatewayError::NotFound);
    }
    Ok((Some(prefix), api))
}

/// Whether a path segment reads as `.` or `..`: one or two of `.` and
/// `%2e` (any case). Checked in place, without copying the segment: this
/// runs for every request.
fn is_dot_segment(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 6 {
        return false;
    }
    let (mut i, mut units) = (0, 0);
    while i < b.len() {
        if b[i] == b'.' {
            i += 1;
        } else if b[i..].len() >= 3 && b[i] == b'%' && b[i + 1] == b'2' && (b[i + 2] | 0x20) == b'e'
        {
            i += 3;
        } else {
            return false;
        }
        units += 1;
    }
    units <= 2
}

/// The `X-Crmgate-Priority` header (normal when absent).
pub fn priority(headers: &HeaderMap) -> Result<Priority, GatewayError> {
    match headers.get(PRIORITY_HEADER) {
        None => Ok(Priority::Normal),
        Some(v) => v.to_str().ok().and_then(Priority::parse).ok_or_else(|| {
            GatewayError::BadRequest(format!("{PRIORITY_HEADER} must be high, normal or low"))
        }),
    }
}

/// The longest wait for a slot: `limits.max_queue_wait`, or less when the
/// caller asks (`X-Crmgate-Max-Wait`); never more.
pub fn max_wait(headers: &HeaderMap, configured: Duration) -> Result<Duration, GatewayError> {
    let Some(v) = headers.get(MAX_WAIT_HEADER) else {
        return Ok(configured);
    };
    let asked = v
        .to_str()
        .ok()
        .and_then(|s| humantime::parse_duration(s.trim()).ok())
        .ok_or_else(|| {
            GatewayError::BadRequest(format!(
                "{MAX_WAIT_HEADER} must be a duration such as 5s or 500ms"
            ))
        })?;
    Ok(configured.min(asked))
}

/// Appends `ip` as its `Display` writes it; an IPv4 address octet by
/// octet, without `core::fmt` (about 1,600 instructions per request under
/// callgrind, for a header every request carries).
fn push_ip(out: &mut String, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(itoa::Buffer::new().format(octet));
            }
        }
        std::net::IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// The request as the CRM will receive it, minus base URL and real key.
#[allow(clippy::too_many_arguments)]
fn outgoing(
    tenant: &Tenant,
    parts: &axum::http::request::Parts,
    api_path: &str,
    query: Stripped,
    form: Option<BodyParams>,
    body: Bytes,
    peer: SocketAddr,
    request_id: &str,
) -> Outgoing {
    let mut query_out = query.rest;
    let mut body = body;
    let site_given = query.has_site || form.as_ref().is_some_and(BodyParams::has_site);
    let mut site = tenant.config.site.as_deref().filter(|_| !site_given);
    if let Some(f) = form {
        // The site goes where the caller's parameters are, when it can.
        (body, site) = f.into_body(site);
    }
    if let Some(site) = site {
        append_param(&mut query_out, "site", site);
    }
    let query = (!query_out.is_empty()).then(|| match String::from_utf8(query_out) {
        Ok(q) => q,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    });
    let mut headers = upstream_headers(&parts.headers);
    // Earlier hops, from every X-Forwarded-For line the caller sent, then us.
    let mut forwarded = String::new();
    for hop in parts
        .headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        forwarded.push_str(hop);
        forwarded.push_str(", ");
    }
    push_ip(&mut forwarded, peer.ip());
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID, v);
    }
    Outgoing {
        method: parts.method.clone(),
        path: api_path.to_string(),
        query,
        headers,
        body,
    }
}

#[cfg(test)]
mod tests;
