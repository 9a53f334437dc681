//! The request path: resolve → rewrite → classify → queue → forward → stream.
//!
//! One handler serves every API request. It reads the (bounded) body,
//! resolves the tenant, swaps the caller's key for the real one, waits for a
//! slot, sends, retries when that is safe, and streams the CRM's answer back
//! without buffering it. Retries never turn one client request into two side
//! effects: a request the CRM may have received is resent only if it is a
//! GET or HEAD. The real key exists only in the outgoing request; logs show
//! the path with `apiKey` masked.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rand::Rng;
use tokio::time::Instant;

use crate::classify::{classify, Class};
use crate::error::GatewayError;
use crate::gateway::{Gateway, Runtime};
use crate::rewrite::{append_param, drop_hop_by_hop, is_form, strip_api_key, upstream_headers};
use crate::scheduler::{Priority, Ticket};
use crate::tenant::Tenant;

/// Request header: `high`, `normal` (default) or `low`.
pub const PRIORITY_HEADER: &str = "x-crmgate-priority";
/// Request header: the longest the caller will wait for a slot, e.g. `5s`.
pub const MAX_WAIT_HEADER: &str = "x-crmgate-max-wait";
/// Response header: how many times the request was sent to the CRM.
pub const ATTEMPTS_HEADER: &str = "x-crmgate-attempts";
/// Response header: total milliseconds spent waiting for slots.
pub const QUEUE_MS_HEADER: &str = "x-crmgate-queue-ms";
/// Request and response header identifying the request.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The API router: every path goes to the proxy handler.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new().fallback(handle).with_state(gateway)
}

/// What the access log line reports about one request.
#[derive(Default)]
struct Trace {
    tenant: Option<Arc<str>>,
    class: Option<Class>,
    attempts: u32,
    queue: Duration,
    upstream: Duration,
    egress: Option<String>,
}

async fn handle(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = req.method().clone();
    let logged_path = masked_path(req.uri());
    let mut trace = Trace::default();

    let result = proxy(&gw, peer, req, &request_id, &mut trace).await;
    let mut response = match result {
        Ok(r) => r,
        Err(e) => {
            if let Some(reason) = e.rejection() {
                gw.metrics.rejections.with_label_values(&[reason]).inc();
            }
            if matches!(
                e,
                GatewayError::Queue(crate::scheduler::QueueError::ShuttingDown)
            ) {
                gw.drain.cut_off();
            }
            e.into_response()
        }
    };
    let status = response.status();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(REQUEST_ID_HEADER, v);
    }
    if trace.attempts > 0 || trace.class.is_some() {
        h.insert(ATTEMPTS_HEADER, HeaderValue::from(trace.attempts));
        h.insert(
            QUEUE_MS_HEADER,
            HeaderValue::from(trace.queue.as_millis() as u64),
        );
    }
    if let (Some(tenant), Some(class)) = (&trace.tenant, trace.class) {
        gw.metrics
            .requests
            .with_label_values(&[tenant, class.as_str(), status.as_str()])
            .inc();
        let stats = gw.stats(tenant);
        *stats
            .by_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(status.as_u16())
            .or_default() += 1;
    }
    gw.drain.request_finished();
    tracing::info!(
        target: "crmgate::access",
        request_id = %request_id,
        tenant = trace.tenant.as_deref().unwrap_or("-"),
        class = trace.class.map_or("-", Class::as_str),
        method = %method,
        path = %logged_path,
        status = status.as_u16(),
        attempts = trace.attempts,
        queue_ms = trace.queue.as_millis() as u64,
        upstream_ms = trace.upstream.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        egress = trace.egress.as_deref().unwrap_or("-"),
    );
    response
}

/// The path and query for logs, with every `apiKey` value masked.
fn masked_path(uri: &axum::http::Uri) -> String {
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

/// Splits `/api/...` or `/{tenant}/api/...` into (tenant prefix, API path).
fn split_path(path: &str) -> Result<(Option<&str>, &str), GatewayError> {
    // The outgoing client's URL parser resolves `.` and `..` (also as
    // `%2e`, and `\` as `/`), so such a path would reach another method than
    // the one checked and classified here, or leave `/api/` with the real key.
    let dots = |s: &str| {
        matches!(
            s.to_ascii_lowercase().replace("%2e", ".").as_str(),
            "." | ".."
        )
    };
    if path.split(['/', '\\']).any(dots) {
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

/// The caller's request, rewritten for the CRM.
struct Outgoing {
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Bytes,
}

async fn proxy(
    gw: &Gateway,
    peer: SocketAddr,
    req: Request,
    request_id: &str,
    trace: &mut Trace,
) -> Result<Response, GatewayError> {
    let rt = gw.runtime();
    let (parts, body) = req.into_parts();
    let (prefix, api_path) = split_path(parts.uri.path())?;
    let limit = rt.config.server.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
        {
            GatewayError::BodyTooLarge { limit }
        } else {
            GatewayError::BadRequest(format!("could not read the request body: {e}"))
        }
    })?;

    let query = strip_api_key(parts.uri.query().unwrap_or("").as_bytes());
    let form = is_form(&parts.headers).then(|| strip_api_key(&body));
    let header_key = match parts.headers.get("x-api-key") {
        Some(v) => Some(v.to_str().map_err(|_| GatewayError::WrongKey)?.to_string()),
        None => None,
    };
    // An empty key is no key, as RetailCRM treats it.
    let given = |k: &Option<String>| k.clone().filter(|k| !k.is_empty());
    let presented = given(&header_key)
        .or_else(|| given(&query.api_key))
        .or_else(|| form.as_ref().and_then(|f| given(&f.api_key)));
    let tenant = rt.tenants.resolve(prefix, presented.as_deref())?;
    trace.tenant = Some(tenant.name.clone());
    let class = classify(api_path);
    trace.class = Some(class);

    let priority = match parts.headers.get(PRIORITY_HEADER) {
        None => Priority::Normal,
        Some(v) => v.to_str().ok().and_then(Priority::parse).ok_or_else(|| {
            GatewayError::BadRequest(format!("{PRIORITY_HEADER} must be high, normal or low"))
        })?,
    };
    let mut max_wait = rt.config.limits.max_queue_wait;
    if let Some(v) = parts.headers.get(MAX_WAIT_HEADER) {
        let asked = v
            .to_str()
            .ok()
            .and_then(|s| humantime::parse_duration(s.trim()).ok())
            .ok_or_else(|| {
                GatewayError::BadRequest(format!(
                    "{MAX_WAIT_HEADER} must be a duration such as 5s or 500ms"
                ))
            })?;
        max_wait = max_wait.min(asked);
    }

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
    let stats = gw.stats(&tenant.name);
    stats.inflight.fetch_add(1, Ordering::Relaxed);
    let _inflight = scopeguard(move || {
        stats.inflight.fetch_sub(1, Ordering::Relaxed);
    });
    forward(gw, &rt, &tenant, ticket, out, trace).await
}

#[allow(clippy::too_many_arguments)]
fn outgoing(
    tenant: &Tenant,
    parts: &axum::http::request::Parts,
    api_path: &str,
    query: crate::rewrite::Stripped,
    form: Option<crate::rewrite::Stripped>,
    body: Bytes,
    peer: SocketAddr,
    request_id: &str,
) -> Outgoing {
    let mut query_out = query.rest;
    let mut body = body;
    let site_given = query.has_site || form.as_ref().is_some_and(|f| f.has_site);
    let site = tenant.config.site.as_deref().filter(|_| !site_given);
    match form {
        Some(mut f) => {
            if let Some(site) = site {
                append_param(&mut f.rest, "site", site);
            }
            body = Bytes::from(f.rest);
        }
        None => {
            if let Some(site) = site {
                append_param(&mut query_out, "site", site);
            }
        }
    }
    let base = tenant.config.base_url.as_str().trim_end_matches('/');
    let mut url = format!("{base}{api_path}");
    if !query_out.is_empty() {
        url.push('?');
        url.push_str(&String::from_utf8_lossy(&query_out));
    }
    // The real key is added by `forward` at send time.
    let mut headers = upstream_headers(&parts.headers);
    // Earlier hops, from every X-Forwarded-For line the caller sent, then us.
    let mut hops: Vec<String> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect();
    hops.push(peer.ip().to_string());
    let forwarded = hops.join(", ");
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert("x-forwarded-for", v);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
    Outgoing {
        method: parts.method.clone(),
        url,
        headers,
        body,
    }
}

/// The real key as a header value, marked sensitive so it is never printed.
fn key_header(key: &crate::config::Secret) -> HeaderValue {
    // Validation guarantees a non-empty key; one with bytes a header cannot
    // hold would be refused by the CRM anyway.
    let mut value =
        HeaderValue::from_str(key.expose()).unwrap_or_else(|_| HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// Runs `f` when dropped (also when the client goes away mid-request).
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// Parses `Retry-After`: seconds, or an HTTP date.
pub fn parse_retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// Exponential backoff with jitter: attempt 1 waits about `initial`, each
/// next one twice as long, capped; the jitter spreads retries of requests
/// that failed together.
fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let base = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    base.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// Sends with retries and streams the answer back.
async fn forward(
    gw: &Gateway,
    rt: &Runtime,
    tenant: &Tenant,
    ticket: Ticket,
    out: Outgoing,
    trace: &mut Trace,
) -> Result<Response, GatewayError> {
    let retry = &rt.config.retry;
    let timeout = rt.config.upstream.request_timeout;
    let idempotent = matches!(out.method, Method::GET | Method::HEAD);
    let class = ticket.class;
    loop {
        // A retry was admitted before any drain began: it may still queue.
        let permit = if trace.attempts == 0 {
            gw.scheduler.acquire(ticket.clone()).await?
        } else {
            gw.scheduler.reacquire(ticket.clone()).await?
        };
        trace.queue += permit.waited;
        gw.metrics
            .queue_wait
            .with_label_values(&[class.as_str()])
            .observe(permit.waited.as_secs_f64());
        trace.attempts += 1;
        let egress = gw.egress(permit.egress);
        trace.egress = Some(egress.label.clone());
        // The key is read at send time, so a request queued across a key
        // rotation goes out with the new key (or, if a reload removed the
        // tenant, with the key it arrived under).
        let mut headers = out.headers.clone();
        let key = match gw.runtime().tenants.get(&tenant.name) {
            Some(current) => key_header(&current.config.api_key),
            None => key_header(&tenant.config.api_key),
        };
        headers.insert("x-api-key", key);
        let send = egress
            .client
            .request(out.method.clone(), &out.url)
            .headers(headers)
            .body(out.body.clone());
        let sent_at = Instant::now();
        let result = tokio::time::timeout(timeout, send.send()).await;
        let latency = sent_at.elapsed();
        trace.upstream += latency;
        gw.metrics
            .upstream_latency
            .with_label_values(&[&egress.label, class.as_str()])
            .observe(latency.as_secs_f64());
        let more = trace.attempts < retry.max_attempts.get();
        let attempt_status = |status: &str| {
            gw.metrics
                .upstream_attempts
                .with_label_values(&[&egress.label, class.as_str(), status])
                .inc();
        };
        // reqwest's own read timer can fire while waiting for headers: that
        // is a timeout too, not a broken connection.
        let sent = match result {
            Ok(Ok(resp)) => Sent::Answer(resp),
            Ok(Err(e)) if e.is_timeout() && !e.is_connect() => Sent::TimedOut,
            Ok(Err(e)) => Sent::Failed(e),
            Err(_) => Sent::TimedOut,
        };
        // Decide: answer, or wait and retry (with `reason`).
        let (reason, wait) = match sent {
            Sent::Answer(resp) => {
                let status = resp.status();
                attempt_status(status.as_str());
                if status != StatusCode::SERVICE_UNAVAILABLE
                    && status != StatusCode::TOO_MANY_REQUESTS
                {
                    return Ok(stream_back(resp));
                }
                // A 503/429 is the CRM refusing the request unprocessed:
                // safe to resend, whatever the method.
                gw.metrics
                    .upstream_throttled
                    .with_label_values(&[&egress.label, class.as_str(), status.as_str()])
                    .inc();
                let retry_after =
                    parse_retry_after(resp.headers()).map(|d| d.min(Duration::from_secs(60)));
                permit.throttled(retry_after);
                tracing::warn!(tenant = %tenant.name, egress = %egress.label, class = %class, status = status.as_u16(), "CRM is rate limiting; slowing down");
                if !more {
                    return Err(GatewayError::UpstreamThrottled {
                        tenant: tenant.name.to_string(),
                        attempts: trace.attempts,
                        retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
                    });
                }
                let wait = backoff(retry.initial_backoff, retry.max_backoff, trace.attempts);
                ("throttled", wait.max(retry_after.unwrap_or_default()))
            }
            Sent::Failed(e) => {
                attempt_status("error");
                // A connect error means nothing was written: any method may be
                // resent. Anything later may have reached the CRM.
                let connect = e.is_connect();
                // The URL is left out: its query may hold customer data.
                let cause = error_chain(&e.without_url());
                tracing::warn!(tenant = %tenant.name, egress = %egress.label, connect, cause = %cause, "CRM request failed");
                if !(more && (connect || idempotent)) {
                    return Err(GatewayError::UpstreamUnreachable {
                        tenant: tenant.name.to_string(),
                        cause,
                    });
                }
                let reason = if connect { "connect" } else { "reset" };
                (
                    reason,
                    backoff(retry.initial_backoff, retry.max_backoff, trace.attempts),
                )
            }
            Sent::TimedOut => {
                attempt_status("error");
                tracing::warn!(tenant = %tenant.name, egress = %egress.label, ?timeout, "CRM did not answer in time");
                if !(more && idempotent) {
                    return Err(GatewayError::UpstreamTimeout {
                        tenant: tenant.name.to_string(),
                        timeout,
                    });
                }
                (
                    "timeout",
                    backoff(retry.initial_backoff, retry.max_backoff, trace.attempts),
                )
            }
        };
        gw.metrics
            .retries
            .with_label_values(&[class.as_str(), reason])
            .inc();
        drop(permit);
        tokio::time::sleep(wait).await;
        trace.queue += wait;
    }
}

/// What one send produced.
enum Sent {
    /// Response headers arrived.
    Answer(reqwest::Response),
    /// The send failed before an answer.
    Failed(reqwest::Error),
    /// No answer within `upstream.request_timeout`.
    TimedOut,
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
    // reqwest names the URL, which holds no key (keys travel in a header).
    parts.join(": ")
}

/// The CRM's answer as our response: status, end-to-end headers, body
/// streamed chunk by chunk.
fn stream_back(resp: reqwest::Response) -> Response {
    let status = resp.status();
    let mut headers = resp.headers().clone();
    drop_hop_by_hop(&mut headers);
    let mut response = Response::new(Body::from_stream(resp.bytes_stream()));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
