//! Forward: wait for a slot, send, retry when the rule allows, stream back.
//!
//! The last stage of the request path. It takes a typed [`Inbound`] request
//! (already authenticated and rewritten), queues it in the scheduler, sends
//! it through the egress client the permit names, and either streams the
//! CRM's answer back chunk by chunk (never buffered) or asks [`retry::decide`]
//! whether to wait and resend. The real key is added here, at send time, and
//! the URL and key of one send come from the same config snapshot. It never
//! logs a key or a URL (queries may hold customer data).

pub mod retry;

use axum::body::Body;
use axum::http::{HeaderValue, Method};
use axum::response::Response;
use rand::Rng;
use tokio::time::Instant;
use url::Url;

use crate::access::Trace;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::inbound::Inbound;
use crate::rewrite::drop_hop_by_hop;
use crate::tenant::Tenant;
use retry::{Attempt, Backoff, Decision, Failure, Outcome};

/// Sends `req` with retries and streams the answer back.
pub async fn forward(
    gw: &Gateway,
    req: Inbound,
    trace: &mut Trace,
) -> Result<Response, GatewayError> {
    forward_lifted(gw, req, trace, None).await
}

/// Like [`forward`], for a request several callers share (see
/// [`crate::cache`]): its first wait follows `lift` (raised priority,
/// extended deadline).
pub async fn forward_lifted(
    gw: &Gateway,
    req: Inbound,
    trace: &mut Trace,
    lift: Option<&crate::scheduler::Lift>,
) -> Result<Response, GatewayError> {
    let Inbound {
        tenant,
        mut ticket,
        out,
        ..
    } = req;
    let class = ticket.class;
    let idempotent = matches!(out.method, Method::GET | Method::HEAD);
    // Why the last send failed, for a 502 (never the URL, never a key).
    let mut cause = String::new();
    loop {
        // A retry was admitted before any drain began: it may still queue.
        let permit = if trace.attempts == 0 {
            match lift {
                Some(lift) => {
                    let permit = gw.scheduler.acquire_lifted(ticket.clone(), lift).await?;
                    // Retries wait as the shared request was raised to.
                    (ticket.priority, ticket.deadline) = lift.current();
                    permit
                }
                None => gw.scheduler.acquire(ticket.clone()).await?,
            }
        } else {
            gw.scheduler.reacquire(ticket.clone()).await?
        };
        trace.queue += permit.waited;
        gw.metrics
            .queue_wait
            .with_label_values(&[class.as_str()])
            .observe(permit.waited.as_secs_f64());
        gw.metrics
            .tenant_queue_wait
            .observe(&tenant.name, permit.waited);
        trace.attempts += 1;
        let egress = gw.clients.get(permit.egress);
        trace.egress = Some(egress.label.clone());

        // URL and key from one snapshot, taken at send time: a request queued
        // across a reload goes to the host that goes with the key. A tenant
        // the reload removed is served as it arrived.
        let snap = gw.snapshot();
        let target: &Tenant = snap.tenants.get(&tenant.name).unwrap_or(&tenant);
        let timeout = snap.config.upstream.request_timeout;
        let mut headers = out.headers.clone();
        headers.insert("x-api-key", key_header(&target.config.api_key));
        let send = egress
            .client
            .request(
                out.method.clone(),
                target_url(target, &out.path, out.query.as_deref()),
            )
            .headers(headers)
            .body(out.body.clone());
        // The CRM sees the spacing of the actual writes: a send leaving
        // late moves its slot (and the next one) with it.
        permit.departed();
        let sent_at = Instant::now();
        let result = tokio::time::timeout(timeout, send.send()).await;
        let latency = sent_at.elapsed();
        trace.upstream += latency;
        gw.metrics
            .upstream_latency
            .with_label_values(&[&egress.label, class.as_str()])
            .observe(latency.as_secs_f64());

        // reqwest's own read timer can fire while waiting for headers: that
        // is a timeout too, not a broken connection.
        let (outcome, answer) = match result {
            Ok(Ok(resp)) => {
                let status = resp.status();
                gw.metrics
                    .upstream_attempts
                    .with_label_values(&[&egress.label, class.as_str(), status.as_str()])
                    .inc();
                if retry::is_throttle(status) {
                    gw.metrics
                        .upstream_throttled
                        .with_label_values(&[&egress.label, class.as_str(), status.as_str()])
                        .inc();
                    let retry_after = retry::parse_retry_after(resp.headers())
                        .map(|d| d.min(retry::MAX_RETRY_AFTER));
                    permit.throttled(retry_after);
                    tracing::warn!(tenant = %tenant.name, egress = %egress.label, class = %class, status = status.as_u16(), "CRM is rate limiting; slowing down");
                    (Outcome::Throttled { retry_after }, None)
                } else {
                    (Outcome::Answer, Some(resp))
                }
            }
            Ok(Err(e)) => {
                gw.metrics
                    .upstream_attempts
                    .with_label_values(&[&egress.label, class.as_str(), "error"])
                    .inc();
                // The URL is left out: its query may hold customer data.
                let (timed_out, connect) = (e.is_timeout() && !e.is_connect(), e.is_connect());
                cause = error_chain(&e.without_url());
                if timed_out {
                    tracing::warn!(tenant = %tenant.name, egress = %egress.label, ?timeout, "CRM did not answer in time");
                    (Outcome::TimedOut, None)
                } else {
                    tracing::warn!(tenant = %tenant.name, egress = %egress.label, connect, cause = %cause, "CRM request failed");
                    let outcome = if connect {
                        Outcome::ConnectFailed
                    } else {
                        Outcome::Broken
                    };
                    (outcome, None)
                }
            }
            Err(_) => {
                gw.metrics
                    .upstream_attempts
                    .with_label_values(&[&egress.label, class.as_str(), "error"])
                    .inc();
                tracing::warn!(tenant = %tenant.name, egress = %egress.label, ?timeout, "CRM did not answer in time");
                (Outcome::TimedOut, None)
            }
        };

        let attempt = Attempt {
            idempotent,
            made: trace.attempts,
            max: snap.config.retry.max_attempts.get(),
            time_left: ticket.deadline.saturating_duration_since(Instant::now()),
        };
        let backoff = Backoff {
            initial: snap.config.retry.initial_backoff,
            max: snap.config.retry.max_backoff,
        };
        let jitter = rand::thread_rng().gen_range(0.5..=1.0);
        match retry::decide(outcome, attempt, backoff, jitter) {
            Decision::Answer => {
                let resp = answer.expect("an answer outcome carries its response");
                return Ok(stream_back(resp));
            }
            Decision::Fail(failure) => {
                let tenant = tenant.name.to_string();
                // Not resendable and possibly processed: say so, so that a
                // stage that can find out (reconcile) may ask the CRM.
                let ambiguous =
                    !idempotent && matches!(outcome, Outcome::Broken | Outcome::TimedOut);
                let error = match failure {
                    Failure::Throttled { retry_after } => GatewayError::UpstreamThrottled {
                        tenant,
                        attempts: trace.attempts,
                        retry_after,
                    },
                    Failure::Unreachable => GatewayError::UpstreamUnreachable {
                        tenant,
                        cause: std::mem::take(&mut cause),
                    },
                    Failure::TimedOut => GatewayError::UpstreamTimeout { tenant, timeout },
                };
                return Err(if ambiguous {
                    GatewayError::Ambiguous(Box::new(error))
                } else {
                    error
                });
            }
            Decision::Retry { after, reason } => {
                gw.metrics
                    .retries
                    .with_label_values(&[class.as_str(), reason.as_str()])
                    .inc();
                drop(permit);
                tokio::time::sleep(after).await;
                trace.queue += after;
            }
        }
    }
}

/// The CRM URL of one send: the tenant's (already parsed) base URL, with
/// the API path appended to its path, and the rewritten query. Starting
/// from the parsed base saves parsing scheme and host again for every send.
pub(crate) fn target_url(tenant: &Tenant, path: &str, query: Option<&str>) -> Url {
    let mut url = tenant.config.base_url.clone();
    let base = url.path().trim_end_matches('/');
    if base.is_empty() {
        url.set_path(path);
    } else {
        let joined = format!("{base}{path}");
        url.set_path(&joined);
    }
    url.set_query(query);
    url
}

/// The real key as a header value, marked sensitive so it is never printed.
pub(crate) fn key_header(key: &crate::config::Secret) -> HeaderValue {
    // Validation guarantees a non-empty key; one with bytes a header cannot
    // hold would be refused by the CRM anyway.
    let mut value =
        HeaderValue::from_str(key.expose()).unwrap_or_else(|_| HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// The error and its sources, joined: "error sending request: connection refused".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// The CRM's answer as our response: status, end-to-end headers, body
/// streamed chunk by chunk.
fn stream_back(mut resp: reqwest::Response) -> Response {
    let status = resp.status();
    let mut headers = std::mem::take(resp.headers_mut());
    drop_hop_by_hop(&mut headers);
    let mut response = Response::new(Body::from_stream(resp.bytes_stream()));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::tenant::Tenants;

    fn url(base_url: &str, path: &str, query: Option<&str>) -> String {
        let text =
            format!("[[tenants]]\nname = \"t\"\nbase_url = \"{base_url}\"\napi_key = \"k-0001\"\n");
        let config = Config::from_toml(&text, "t.toml", &|_| None).unwrap();
        let tenants = Tenants::new(&config.tenants);
        target_url(tenants.get("t").unwrap(), path, query).to_string()
    }

    #[test]
    fn urls_join_the_base_path_and_keep_the_query_verbatim() {
        let q = Some("filter%5Bids%5D%5B%5D=1&site=a+b");
        assert_eq!(
            url("https://acme.retailcrm.ru", "/api/v5/orders", q),
            "https://acme.retailcrm.ru/api/v5/orders?filter%5Bids%5D%5B%5D=1&site=a+b"
        );
        assert_eq!(
            url("http://127.0.0.1:9000/crm/", "/api/v5/orders", None),
            "http://127.0.0.1:9000/crm/api/v5/orders"
        );
    }
}
