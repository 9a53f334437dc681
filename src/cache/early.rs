//! The hit path: a GET answered from a fresh entry before inbound reads it.
//!
//! A hit needs no body, no rewritten headers, no ticket: only who is asking
//! and the canonical read. This looks those up from the request head with
//! inbound's own functions (path split, key stripping, tenant resolution,
//! the default `site`), and answers only when the full path would give the
//! same answer: anything inbound would judge or refuse (crmgate's control
//! headers, a body, a cache directive, a bad key) goes the full way. It
//! never logs and never keeps the caller's key.

use axum::extract::Request;
use axum::http::{header, Method};
use axum::response::Response;
use tokio::time::Instant;

use super::key::Key;
use super::stats::CacheOutcome;
use crate::access::Trace;
use crate::classify::classify;
use crate::inbound::split_path;
use crate::live::Snapshot;
use crate::rewrite::{append_param, strip_api_key, X_API_KEY};

/// The answer in `cache` to `req`, when there is a fresh one and the full
/// path would give it too (under the config in `snap`); records tenant and
/// class in `trace`.
pub fn lookup(
    cache: &super::Cache,
    snap: &Snapshot,
    req: &Request,
    trace: &mut Trace,
) -> Option<Response> {
    if req.method() != Method::GET {
        return None;
    }
    let headers = req.headers();
    // Every crmgate control header (priority, max wait, export, ...) is
    // inbound's or a later stage's to judge.
    if headers.keys().any(|h| h.as_str().starts_with("x-crmgate-")) {
        return None;
    }
    let judged = [
        header::CACHE_CONTROL,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONTENT_TYPE,
    ];
    if judged.iter().any(|h| headers.contains_key(h)) {
        return None;
    }
    let cfg = &snap.config.cache;
    if !cfg.enabled {
        return None;
    }
    let (prefix, api_path) = split_path(req.uri().path()).ok()?;
    cfg.ttl_for(api_path)?;
    let query = strip_api_key(req.uri().query().unwrap_or("").as_bytes());
    // As inbound: the header's key first, an empty key is no key.
    let header_key = match headers.get(X_API_KEY) {
        Some(v) => Some(v.to_str().ok()?),
        None => None,
    };
    let presented = header_key
        .filter(|k| !k.is_empty())
        .or(query.api_key.as_deref().filter(|k| !k.is_empty()));
    let tenant = snap.tenants.resolve(prefix, presented).ok()?;
    let mut rest = query.rest;
    if let Some(site) = tenant.config.site.as_deref().filter(|_| !query.has_site) {
        append_param(&mut rest, "site", site);
    }
    let rest = std::str::from_utf8(&rest).ok()?;
    let key = Key::new(&tenant.name, api_path, Some(rest));
    let entry = cache.store.load().get(&key)?;
    let now = Instant::now();
    if !entry.fresh(now) {
        return None;
    }
    trace.tenant = Some(tenant.name.clone());
    trace.class = Some(classify(api_path));
    cache.stats.count(&tenant.name, CacheOutcome::Hit);
    Some(super::from_entry(&entry, CacheOutcome::Hit, now))
}
