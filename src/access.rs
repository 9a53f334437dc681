//! The access log: one line per request, and what it reports.
//!
//! Stages fill a [`Trace`] as they learn things (tenant, class, attempts,
//! waits, egress); [`log`] writes it once the answer's status is known. The
//! line shows the path with every `apiKey` value masked, never a key, a body
//! or a header value.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode, Uri};
use tokio::time::Instant;

use crate::classify::Class;
use crate::rewrite::strip_api_key;

/// What the access log line reports about one request.
#[derive(Debug, Default)]
pub struct Trace {
    /// The tenant, once resolved.
    pub tenant: Option<Arc<str>>,
    /// The budget class, once known.
    pub class: Option<Class>,
    /// Sends made to the CRM.
    pub attempts: u32,
    /// Time spent queued and backing off.
    pub queue: Duration,
    /// Time spent waiting for the CRM's answer headers.
    pub upstream: Duration,
    /// Label of the egress of the last send.
    pub egress: Option<String>,
}

/// The path and query for logs, with every `apiKey` value masked.
pub fn masked_path(uri: &Uri) -> String {
    match uri.query() {
        None => uri.path().to_string(),
        Some(q) => {
            let stripped = strip_api_key(q.as_bytes());
            let mut rest = String::from_utf8_lossy(&stripped.rest).into_owned();
            if stripped.api_key.is_some() {
                rest.push_str(if rest.is_empty() {
                    "apiKey=***"
                } else {
                    "&apiKey=***"
                });
            }
            format!("{}?{}", uri.path(), rest)
        }
    }
}

/// Writes the access log line of one finished request.
pub fn log(
    request_id: &str,
    method: &Method,
    uri: &Uri,
    status: StatusCode,
    trace: &Trace,
    started: Instant,
) {
    tracing::info!(
        target: "crmgate::access",
        request_id = %request_id,
        tenant = trace.tenant.as_deref().unwrap_or("-"),
        class = trace.class.map_or("-", Class::as_str),
        method = %method,
        path = %masked_path(uri),
        status = status.as_u16(),
        attempts = trace.attempts,
        queue_ms = trace.queue.as_millis() as u64,
        upstream_ms = trace.upstream.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        egress = trace.egress.as_deref().unwrap_or("-"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_masked_in_logged_paths() {
        let uri: Uri = "/api/v5/orders?apiKey=secret&limit=20".parse().unwrap();
        assert_eq!(masked_path(&uri), "/api/v5/orders?limit=20&apiKey=***");
        let uri: Uri = "/api/v5/orders?apiKey=secret".parse().unwrap();
        assert_eq!(masked_path(&uri), "/api/v5/orders?apiKey=***");
        let uri: Uri = "/api/v5/orders".parse().unwrap();
        assert_eq!(masked_path(&uri), "/api/v5/orders");
    }
}
