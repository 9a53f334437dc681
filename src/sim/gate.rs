//! The middleware every request passes before (and after) routing: record the
//! arrival, enforce the window, inject faults, authenticate, add latency.
//!
//! The order is documented in the parent module; it lives here in one
//! function, [`gate`], so it can be read top to bottom.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use rand::Rng;
use tokio::time::Instant;

use super::class::{classify, is_form, is_multipart};
use super::faults::{After, Before};
use super::lock::lock;
use super::reply;
use super::request::{Caller, ConnCtx, Received};
use super::state::Shared;

/// Bodies larger than this are refused; no CRM method takes more in tests.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// How the simulator ends one request.
enum Outcome {
    Answer(Response),
    /// Reset the TCP connection instead of answering.
    Reset,
}

/// axum middleware (see `from_fn_with_state`) wrapping every route.
pub(crate) async fn gate(State(inner): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    // The request's trip to the CRM: it arrives (and counts) half a round trip late.
    let half_rtt = inner.rtt / 2;
    if !half_rtt.is_zero() {
        tokio::time::sleep(half_rtt).await;
    }
    let (mut parts, body) = req.into_parts();
    let conn = parts.extensions.get::<ConnCtx>().cloned();
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().map(str::to_owned);
    let class = classify(&path);
    let header_key = parts
        .headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let api_key = header_key.or_else(|| param(query.as_deref()?.as_bytes(), "apiKey"));
    let rec = Received {
        // Without a connection context (e.g. `oneshot`) there is no peer.
        source_ip: conn
            .as_ref()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.peer.ip()),
        method: parts.method.to_string(),
        version: parts.version,
        path: path.clone(),
        query,
        headers: header_pairs(&parts.headers),
        body: Bytes::new(),
        form: Vec::new(),
        at: Instant::now(), // restamped by the ledger
        class,
        status: 0,
        api_key: api_key.clone(),
    };
    let (id, over_limit) = lock(&inner.ledger).arrive(rec, inner.window, inner.limit(class));

    let outcome = 'outcome: {
        let Ok(body) = to_bytes(body, MAX_BODY).await else {
            break 'outcome Outcome::Answer(reply::error(
                StatusCode::BAD_REQUEST,
                "Request body could not be read",
            ));
        };
        let form: Vec<(String, String)> = if is_form(&parts.headers) {
            form_urlencoded::parse(&body).into_owned().collect()
        } else if is_multipart(&parts.headers) {
            let ct = parts.headers.get(axum::http::header::CONTENT_TYPE);
            let ct = ct.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            super::multipart::fields(&ct.unwrap_or_default(), &body)
        } else {
            Vec::new()
        };
        let api_key = api_key.or_else(|| {
            form.iter()
                .find(|(k, v)| k == "apiKey" && !v.is_empty())
                .map(|(_, v)| v.clone())
        });
        // Stricter than PHP: `apiKey=` in any body counts too.
        let api_key = api_key.or_else(|| param(&body, "apiKey"));
        lock(&inner.ledger).update(id, |r| {
            r.body = body.clone();
            r.form = form.clone();
            r.api_key = api_key.clone();
        });

        if over_limit {
            break 'outcome Outcome::Answer(reply::unavailable(None));
        }
        match inner.faults.before() {
            Before::Reset => break 'outcome Outcome::Reset,
            Before::Fail(retry_after) => {
                break 'outcome Outcome::Answer(reply::unavailable(retry_after.as_deref()))
            }
            Before::Process => {}
        }
        if let Some(d) = inner.faults.stall() {
            tokio::time::sleep(d).await;
        }

        if path.starts_with("/api/") {
            let Some(key) = api_key else {
                break 'outcome Outcome::Answer(reply::error(
                    StatusCode::FORBIDDEN,
                    "\"apiKey\" is missing.",
                ));
            };
            let Some(account) = inner.accounts.iter().position(|a| a.api_key == key) else {
                break 'outcome Outcome::Answer(reply::error(
                    StatusCode::FORBIDDEN,
                    "Wrong \"apiKey\" value.",
                ));
            };
            parts.extensions.insert(Caller { account, form });
        }
        let resp = next.run(Request::from_parts(parts, Body::from(body))).await;

        match inner.faults.after() {
            After::Reset => Outcome::Reset,
            After::Garbage => Outcome::Answer(reply::garbage()),
            After::Answer => Outcome::Answer(resp),
        }
    };

    match outcome {
        Outcome::Answer(resp) => {
            // Processing time, then the answer's trip back.
            let delay = latency(*lock(&inner.latency)) + half_rtt;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let status = resp.status().as_u16();
            lock(&inner.ledger).update(id, |r| r.status = status);
            resp
        }
        Outcome::Reset => match conn {
            Some(conn) => {
                // The connection task sees the token and drops the socket
                // with SO_LINGER 0. Never answer: if this future returned a
                // response first, hyper could write it before the drop.
                conn.reset.cancel();
                std::future::pending().await
            }
            None => reply::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Reset requested outside a simulator connection",
            ),
        },
    }
}

/// A uniform random duration in `[min, max]` (just `min` if the range is empty).
fn latency((min, max): (Duration, Duration)) -> Duration {
    if max > min {
        rand::thread_rng().gen_range(min..=max)
    } else {
        min
    }
}

/// The first non-empty value of `name` in a urlencoded string.
fn param(encoded: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(encoded)
        .find(|(k, v)| k == name && !v.is_empty())
        .map(|(_, v)| v.into_owned())
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_stays_in_range() {
        let (lo, hi) = (Duration::from_millis(3), Duration::from_millis(7));
        assert!((0..100)
            .map(|_| latency((lo, hi)))
            .all(|d| d >= lo && d <= hi));
        assert_eq!(latency((hi, lo)), hi);
        assert_eq!(latency((Duration::ZERO, Duration::ZERO)), Duration::ZERO);
    }

    #[test]
    fn params() {
        assert_eq!(param(b"a=1&apiKey=k%2B1", "apiKey").as_deref(), Some("k+1"));
        assert_eq!(param(b"apiKey=&apiKey=x", "apiKey").as_deref(), Some("x"));
        assert_eq!(param(b"apikey=x", "apiKey"), None);
    }
}
