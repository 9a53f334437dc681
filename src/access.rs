//! The access log: one line per request, and what it reports.
//!
//! Stages fill a [`Trace`] as they learn things (tenant, class, attempts,
//! waits, egress); [`log`] writes it once the answer's status is known. The
//! line shows the path and, by `log.query`, the query's parameter names
//! (values masked, the default: queries hold phones, e-mails and names), or
//! names and values, or nothing. A key parameter, in any spelling, is
//! masked in every mode. Never a key, a body or a header value.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use tokio::time::Instant;

use crate::access_line::Fields;
use crate::classify::Class;
use crate::config::LogQuery;
use crate::rewrite::is_key_name;

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
    /// How a create that failed after sending was reconciled (the
    /// `outcome` of `crmgate_reconciled_total`), if it was.
    pub reconciled: Option<&'static str>,
}

/// The path and query for logs: by `mode`, the query's names with values
/// masked, names and values, or no query. Key parameters (any spelling)
/// always show as `name=***`. Names are shown as sent (still encoded).
pub fn logged_path(target: &str, mode: LogQuery) -> String {
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let query = match (query, mode) {
        (None, _) | (_, LogQuery::None) => return path.to_string(),
        (Some(q), _) => q,
    };
    let mut out = String::with_capacity(path.len() + 1 + query.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').filter(|p| !p.is_empty()).enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        // Decoded only when it has to be (a name with no escape is itself).
        let decoded = if name.contains(['%', '+']) {
            form_urlencoded::parse(name.as_bytes())
                .next()
                .map(|(n, _)| n)
                .unwrap_or_default()
        } else {
            std::borrow::Cow::Borrowed(name)
        };
        out.push_str(name);
        if pair.contains('=') {
            out.push('=');
            let shown = mode == LogQuery::Full && !is_key_name(&decoded);
            out.push_str(if shown { value } else { "***" });
        }
    }
    out
}

/// Writes the access log line of one finished request.
pub fn log(
    request_id: &str,
    method: &Method,
    target: &str,
    query: LogQuery,
    status: StatusCode,
    trace: &Trace,
    started: Instant,
) {
    let path = logged_path(target, query);
    let fields = Fields {
        request_id,
        tenant: trace.tenant.as_deref().unwrap_or("-"),
        class: trace.class.map_or("-", Class::as_str),
        method: method.as_str(),
        path: &path,
        status: status.as_u16(),
        attempts: trace.attempts,
        queue_ms: trace.queue.as_millis() as u64,
        upstream_ms: trace.upstream.as_millis() as u64,
        total_ms: started.elapsed().as_millis() as u64,
        egress: trace.egress.as_deref().unwrap_or("-"),
        reconciled: trace.reconciled.unwrap_or("-"),
    };
    if !crate::access_line::write(&fields) {
        log_by_tracing(&fields);
    }
}

/// The access line through `tracing` (when [`crate::access_line`] is not
/// installed). [`crate::access_line`] writes the same bytes.
pub(crate) fn log_by_tracing(f: &Fields<'_>) {
    tracing::info!(
        target: "crmgate::access",
        request_id = %f.request_id,
        tenant = f.tenant,
        class = f.class,
        method = %f.method,
        path = %f.path,
        status = f.status,
        attempts = f.attempts,
        queue_ms = f.queue_ms,
        upstream_ms = f.upstream_ms,
        total_ms = f.total_ms,
        egress = f.egress,
        reconciled = f.reconciled,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_logged_by_mode_and_keys_never() {
        let uri =
            "/api/v5/orders?apiKey=secret&filter%5Bphone%5D=79001234567&limit=20&APIKEY=s2&flag";
        assert_eq!(
            logged_path(uri, LogQuery::Names),
            "/api/v5/orders?apiKey=***&filter%5Bphone%5D=***&limit=***&APIKEY=***&flag"
        );
        assert_eq!(
            logged_path(uri, LogQuery::Full),
            "/api/v5/orders?apiKey=***&filter%5Bphone%5D=79001234567&limit=20&APIKEY=***&flag"
        );
        assert_eq!(logged_path(uri, LogQuery::None), "/api/v5/orders");
        let uri = "/api/v5/orders?api%5Fkey=secret&apiKey%5B%5D=s";
        assert_eq!(
            logged_path(uri, LogQuery::Full),
            "/api/v5/orders?api%5Fkey=***&apiKey%5B%5D=***"
        );
        let uri = "/api/v5/orders";
        assert_eq!(logged_path(uri, LogQuery::Full), "/api/v5/orders");
    }
}
