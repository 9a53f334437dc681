//! Forward: wait for a slot, send, retry when the rule allows, stream back.
//!
//! The last stage of the request path, behind one handle: a [`Forwarder`]
//! holds the scheduler, the egress clients, the config in force and the
//! metrics a send writes, and [`Forwarder::send`] takes a typed [`Inbound`]
//! request (already authenticated and rewritten) through four steps:
//! [`Forwarder::wait_for_slot`] in the scheduler, [`Forwarder::send_once`]
//! through the egress client the permit names, [`retry::decide`] whether to
//! answer, wait and resend, or fail, and [`stream_back`] the CRM's answer
//! chunk by chunk (never buffered). The real key is added here, at send
//! time, and the URL and key of one send come from the same config
//! snapshot. The stages before it (cache, reconcile, export) take a
//! `Forwarder`, never the whole gateway. It never logs a key or a URL
//! (queries may hold customer data).

pub mod retry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::Response;
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus::{Histogram, IntCounter};
use rand::Rng;
use tokio::time::Instant;
use tower_http::timeout::TimeoutBody;

use crate::access::Trace;
use crate::classify::Class;
use crate::egress::{Clients, Egress};
use crate::error::GatewayError;
use crate::inbound::Inbound;
use crate::live::{Live, Snapshot};
use crate::metrics::Metrics;
use crate::rewrite::{drop_hop_by_hop, X_API_KEY};
use crate::scheduler::{Lift, Permit, Scheduler, Ticket};
use crate::tenant::Tenant;
use retry::{Attempt, Backoff, Decision, Failure, SendOutcome};

/// What a stage needs of forward: send one request (with retries) and read
/// the config in force. [`Forwarder`] is the real one; a stage's tests may
/// script one.
pub trait Forward: Sync {
    /// Sends `req` with retries and returns the CRM's answer.
    fn send(
        &self,
        req: Inbound,
        trace: &mut Trace,
    ) -> impl Future<Output = Result<Response, GatewayError>> + Send;

    /// The config in force.
    fn snapshot(&self) -> Arc<Snapshot>;
}

/// The handle to the last stage: cheap to clone, all clones share the
/// scheduler, the clients, the config in force and the metrics.
#[derive(Clone)]
pub struct Forwarder {
    scheduler: Scheduler,
    clients: Arc<Clients>,
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    series: Arc<Series>,
}

/// The Prometheus series every send touches, looked up once: a lookup by
/// labels hashes them and takes the family's lock, and every worker's
/// sends would pass that lock's cache line between the cores.
struct Series {
    /// `crmgate_queue_wait_seconds` by class.
    queue_wait: [Histogram; 2],
    /// By egress (budget order, fixed until restart) and class: the
    /// answer's latency, and attempts answered `200`.
    sends: Vec<[(Histogram, IntCounter); 2]>,
}

impl Series {
    fn new(metrics: &Metrics, egress: &[Arc<crate::egress::Egress>]) -> Series {
        let class = |c: Class| c.as_str();
        Series {
            queue_wait: Class::ALL.map(|c| metrics.queue_wait.with_label_values(&[class(c)])),
            sends: egress
                .iter()
                .map(|e| {
                    Class::ALL.map(|c| {
                        (
                            metrics
                                .upstream_latency
                                .with_label_values(&[&e.label, class(c)]),
                            metrics.upstream_attempts.with_label_values(&[
                                &e.label,
                                class(c),
                                "200",
                            ]),
                        )
                    })
                })
                .collect(),
        }
    }
}

impl Forward for Forwarder {
    async fn send(&self, req: Inbound, trace: &mut Trace) -> Result<Response, GatewayError> {
        self.send_lifted(req, trace, None).await
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.live.snapshot()
    }
}

/// What one send came to, before the retry rule judges it.
struct Sent {
    outcome: SendOutcome,
    /// The CRM's answer, when `outcome` is [`SendOutcome::Answer`].
    answer: Option<hyper::Response<Incoming>>,
    /// Why it failed, for a 502 (never the URL, never a key).
    cause: Option<String>,
    timeout: Duration,
}

impl Forwarder {
    /// The handle over these parts.
    pub fn new(
        scheduler: Scheduler,
        clients: Arc<Clients>,
        live: Arc<Live>,
        metrics: Arc<Metrics>,
    ) -> Forwarder {
        let series = Arc::new(Series::new(&metrics, &clients.all()));
        Forwarder {
            scheduler,
            clients,
            live,
            metrics,
            series,
        }
    }

    /// True when a request of `class` from `tenant` would get a slot at once.
    pub fn free_now(&self, class: Class, tenant: &Arc<str>) -> bool {
        self.scheduler.free_now(class, tenant)
    }

    /// Like [`Forward::send`], for a request several callers share (see
    /// [`crate::cache`]): its first wait follows `lift` (raised priority,
    /// extended deadline).
    pub async fn send_lifted(
        &self,
        mut req: Inbound,
        trace: &mut Trace,
        lift: Option<&Lift>,
    ) -> Result<Response, GatewayError> {
        let permit = self
            .wait_for_slot(&mut req.ticket, lift, &req.tenant, trace)
            .await?;
        // Boxed: a request waiting for its first slot holds only the wait,
        // not the room the send, the retry rule and the answer need (this
        // future is held by every request in the queue).
        Box::pin(self.send_granted(req, permit, trace)).await
    }

    /// Steps 2 to 4, from the first slot on: send, judge, and wait again
    /// when the rule retries.
    async fn send_granted(
        &self,
        req: Inbound,
        first: Permit,
        trace: &mut Trace,
    ) -> Result<Response, GatewayError> {
        let Inbound {
            tenant,
            mut ticket,
            out,
            ..
        } = req;
        let class = ticket.class;
        let idempotent = matches!(out.method, Method::GET | Method::HEAD);
        // Why the last send failed, for a 502.
        let mut cause = String::new();
        let mut permit = first;
        loop {
            let egress = self.clients.get(permit.egress);
            trace.egress = Some(egress.label.clone());
            // URL and key from one snapshot, taken at send time: a request
            // queued across a reload goes to the host that goes with the
            // key. A tenant the reload removed is served as it arrived.
            let snap = self.live.snapshot();
            let target: &Tenant = snap.tenants.get(&tenant.name).unwrap_or(&tenant);
            let sent = self
                .send_once(&snap, &egress, target, &out, class, &permit, trace)
                .await;
            if let Some(c) = sent.cause {
                cause = c;
            }
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
            match retry::decide(sent.outcome, attempt, backoff, jitter) {
                Decision::Answer => {
                    let resp = sent.answer.expect("an answer outcome carries its response");
                    return Ok(stream_back(resp, sent.timeout));
                }
                Decision::Fail(failure) => {
                    let error = failed(failure, &tenant.name, trace.attempts, cause, sent.timeout);
                    // Not resendable and possibly processed: say so, so that
                    // a stage that can find out (reconcile) may ask the CRM.
                    let ambiguous = !idempotent
                        && matches!(sent.outcome, SendOutcome::Broken | SendOutcome::TimedOut);
                    return Err(if ambiguous {
                        GatewayError::Ambiguous(Box::new(error))
                    } else {
                        error
                    });
                }
                Decision::Retry { after, reason } => {
                    self.metrics
                        .retries
                        .with_label_values(&[class.as_str(), reason.as_str()])
                        .inc();
                    drop(permit);
                    tokio::time::sleep(after).await;
                    trace.queue += after;
                    // A retry: `wait_for_slot` reacquires (the lift, if
                    // any, was applied to the ticket at the first grant).
                    permit = self
                        .wait_for_slot(&mut ticket, None, &tenant, trace)
                        .await?;
                }
            }
        }
    }

    /// Step 1: waits in the scheduler for a slot. The first wait of a
    /// shared request follows `lift`, and its retries wait as the shared
    /// request was raised to; a retry was admitted before any drain began,
    /// so it may still queue.
    async fn wait_for_slot(
        &self,
        ticket: &mut Ticket,
        lift: Option<&Lift>,
        tenant: &Tenant,
        trace: &mut Trace,
    ) -> Result<Permit, GatewayError> {
        let permit = if trace.attempts == 0 {
            match lift {
                Some(lift) => {
                    let permit = self.scheduler.acquire_lifted(ticket.clone(), lift).await?;
                    (ticket.priority, ticket.deadline) = lift.current();
                    permit
                }
                None => self.scheduler.acquire(ticket.clone()).await?,
            }
        } else {
            self.scheduler.reacquire(ticket.clone()).await?
        };
        trace.queue += permit.waited;
        self.series.queue_wait[ticket.class.index()].observe(permit.waited.as_secs_f64());
        self.metrics
            .tenant_queue_wait
            .observe(&tenant.name, permit.waited);
        trace.attempts += 1;
        Ok(permit)
    }

    /// Step 2: one send through `egress` to `target`, with the real key,
    /// within `upstream.request_timeout`; a throttle is reported to the
    /// permit's budget.
    #[allow(clippy::too_many_arguments)]
    async fn send_once(
        &self,
        snap: &Snapshot,
        egress: &Egress,
        target: &Tenant,
        out: &crate::inbound::Outgoing,
        class: Class,
        permit: &Permit,
        trace: &mut Trace,
    ) -> Sent {
        let timeout = snap.config.upstream.request_timeout;
        let uri = match target_uri(target, &out.path, out.query.as_deref()) {
            Ok(uri) => uri,
            // Nothing was sent: the path and query came in as a valid URI,
            // so only a base URL `http` cannot hold ends here.
            Err(e) => {
                return Sent {
                    outcome: SendOutcome::ConnectFailed,
                    answer: None,
                    cause: Some(format!("the CRM URL is not a valid URI ({e})")),
                    timeout,
                }
            }
        };
        let mut req = Request::new(Full::new(out.body.clone()));
        *req.method_mut() = out.method.clone();
        *req.uri_mut() = uri;
        // Room for the key and a User-Agent from the start: a clone has no
        // spare room, and the inserts below would grow both of its tables.
        let headers = req.headers_mut();
        *headers = HeaderMap::with_capacity(out.headers.len() + 2);
        headers.extend(out.headers.iter().map(|(n, v)| (n.clone(), v.clone())));
        headers.insert(X_API_KEY, key_header(&target.config.api_key));
        if !headers.contains_key(header::USER_AGENT) {
            headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        }
        let send = egress.client.request(req);
        // The CRM sees the spacing of the actual writes: a send leaving
        // late moves its slot (and the next one) with it.
        permit.departed();
        let sent_at = Instant::now();
        let result = tokio::time::timeout(timeout, send).await;
        let latency = sent_at.elapsed();
        trace.upstream += latency;
        let m = &self.metrics;
        let (latency_series, answered_200) = &self.series.sends[permit.egress][class.index()];
        latency_series.observe(latency.as_secs_f64());
        let tenant = &target.name;
        let sent = |outcome, answer, cause| Sent {
            outcome,
            answer,
            cause,
            timeout,
        };
        match result {
            Ok(Ok(resp)) => {
                let status = resp.status();
                if status == StatusCode::OK {
                    answered_200.inc();
                } else {
                    m.upstream_attempts
                        .with_label_values(&[&egress.label, class.as_str(), status.as_str()])
                        .inc();
                }
                if retry::is_throttle(status) {
                    m.upstream_throttled
                        .with_label_values(&[&egress.label, class.as_str(), status.as_str()])
                        .inc();
                    let retry_after = retry::parse_retry_after(resp.headers())
                        .map(|d| d.min(retry::MAX_RETRY_AFTER));
                    permit.throttled(retry_after);
                    tracing::warn!(tenant = %tenant, egress = %egress.label, class = %class, status = status.as_u16(), "CRM is rate limiting; slowing down");
                    sent(SendOutcome::Throttled { retry_after }, None, None)
                } else {
                    sent(SendOutcome::Answer, Some(resp), None)
                }
            }
            Ok(Err(e)) => {
                m.upstream_attempts
                    .with_label_values(&[&egress.label, class.as_str(), "error"])
                    .inc();
                // The client's errors never hold the URL (its query may
                // hold customer data); the wait for headers is timed above.
                let connect = e.is_connect();
                let cause = error_chain(&e);
                tracing::warn!(tenant = %tenant, egress = %egress.label, connect, cause = %cause, "CRM request failed");
                let outcome = if connect {
                    SendOutcome::ConnectFailed
                } else {
                    SendOutcome::Broken
                };
                sent(outcome, None, Some(cause))
            }
            Err(_) => {
                m.upstream_attempts
                    .with_label_values(&[&egress.label, class.as_str(), "error"])
                    .inc();
                tracing::warn!(tenant = %tenant, egress = %egress.label, ?timeout, "CRM did not answer in time");
                sent(SendOutcome::TimedOut, None, None)
            }
        }
    }
}

/// Step 3, when the rule gives up: the error the caller gets.
fn failed(
    failure: Failure,
    tenant: &str,
    attempts: u32,
    cause: String,
    timeout: Duration,
) -> GatewayError {
    let tenant = tenant.to_string();
    match failure {
        Failure::Throttled { retry_after } => GatewayError::UpstreamThrottled {
            tenant,
            attempts,
            retry_after,
        },
        Failure::Unreachable => GatewayError::UpstreamUnreachable { tenant, cause },
        Failure::TimedOut => GatewayError::UpstreamTimeout { tenant, timeout },
    }
}

/// What the egress clients say they are, unless the caller said otherwise.
const USER_AGENT: &str = concat!("crmgate/", env!("CARGO_PKG_VERSION"));

/// The CRM URI of one send: the tenant's base URL (scheme, host, port and
/// path, already parsed and checked), the API path appended to its path,
/// and the rewritten query, verbatim. One string built and parsed once:
/// the client takes an `http::Uri`.
pub(crate) fn target_uri(
    tenant: &Tenant,
    path: &str,
    query: Option<&str>,
) -> Result<Uri, axum::http::uri::InvalidUri> {
    let base = &tenant.config.base_url;
    let origin = &base[..url::Position::BeforePath];
    let base_path = base.path().trim_end_matches('/');
    let mut uri = String::with_capacity(
        origin.len() + base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    uri.push_str(origin);
    uri.push_str(base_path);
    uri.push_str(path);
    if let Some(q) = query {
        uri.push('?');
        uri.push_str(q);
    }
    Uri::try_from(uri)
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

/// Step 4: the CRM's answer as our response: status, end-to-end headers,
/// body streamed chunk by chunk as it arrives (never buffered). A CRM that
/// stops sending for `read_timeout` between chunks ends the body with an
/// error, so the caller sees a cut answer rather than a hang.
fn stream_back(resp: hyper::Response<Incoming>, read_timeout: Duration) -> Response {
    let (mut parts, body) = resp.into_parts();
    drop_hop_by_hop(&mut parts.headers);
    let mut response = Response::new(Body::new(TimeoutBody::new(read_timeout, body)));
    *response.status_mut() = parts.status;
    *response.headers_mut() = parts.headers;
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
        target_uri(tenants.get("t").unwrap(), path, query)
            .unwrap()
            .to_string()
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
