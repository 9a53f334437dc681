//! The request path, composed: inbound → batch, export, cache, reconcile → forward.
//!
//! One handler serves every API request. It names the request, runs the
//! stages in order, and finishes every answer the same way: request id,
//! attempt and queue headers, counters, the access log line. Each stage
//! lives in its own module and is tested without the others:
//!
//! 1. [`crate::inbound`]: read, limit, identify, rewrite → a typed request;
//! 2. the stages between inbound and the scheduler: [`crate::batch`] (an
//!    oversized batch is refused before it spends a slot); [`crate::export`]
//!    (`X-Crmgate-Export: ndjson` walks every page); for reads,
//!    [`crate::cache`] (answer from the cache, or share an identical GET
//!    still queued); for writes, [`crate::reconcile`] around forward (a
//!    create that failed after sending is looked up by `externalId`), with
//!    a write to a dictionary dropping that tenant's cached entries;
//! 3. [`crate::forward`]: wait in the [`crate::scheduler`], send through an
//!    [`crate::egress`] client, retry when [`crate::forward::retry`] allows,
//!    stream back.
//!
//! This module never sees the real key and never logs a query unmasked.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, Method};
use axum::response::Response;
use tokio::time::Instant;

use crate::access::{self, Trace};
use crate::error::{reject, GatewayError};
use crate::gateway::Gateway;
use crate::inbound::{self, REQUEST_ID};
use crate::scheduler::QueueError;

/// Response header: how many times the request was sent to the CRM.
pub const ATTEMPTS_HEADER: &str = "x-crmgate-attempts";
/// Response header: total milliseconds spent waiting for slots.
pub const QUEUE_MS_HEADER: &str = "x-crmgate-queue-ms";

// The same names as constants: inserting by `&str` parses the name on
// every answer.
const ATTEMPTS: HeaderName = HeaderName::from_static(ATTEMPTS_HEADER);
const QUEUE_MS: HeaderName = HeaderName::from_static(QUEUE_MS_HEADER);

/// The API's one handler: every request on an API listener, called by the
/// server's per-request service (behind the guard) with the peer address.
///
/// The request comes boxed, and is moved out of its box when inbound reads
/// it: this future and the stages' keep their arguments for as long as
/// they run, and a request waiting in the queue would otherwise hold the
/// 240-byte request head it no longer has, twice in each.
pub async fn handle(gw: Arc<Gateway>, peer: SocketAddr, req: Box<Request>) -> Response {
    let started = Instant::now();
    let request_id = request_id(&req);
    let method = req.method().clone();
    // An owned copy: the request's own URI points into the connection's
    // read buffer, which it would keep alive while the request waits.
    let target = match req.uri().path_and_query() {
        Some(p) => p.as_str().to_owned(),
        None => req.uri().path().to_owned(),
    };
    let mut trace = Trace::default();

    // A cache hit needs nothing of the request but its head: the cache's
    // early lookup answers it before inbound reads anything.
    let early = crate::cache::early::lookup(&gw.cache, &gw.peek(), &req, &mut trace);
    let answer = match early {
        Some(hit) => Ok(hit),
        // Boxed: awaited inline, the stages' future would be laid out in
        // this one, and a cache hit would carry room for all of it.
        None => Box::pin(run(&gw, peer, req, &request_id, &mut trace)).await,
    };
    let mut response = match answer {
        Ok(r) => r,
        Err(e) => {
            if matches!(e, GatewayError::Queue(QueueError::ShuttingDown)) {
                gw.drain.cut_off();
            }
            reject(e, &gw.metrics)
        }
    };
    let status = response.status();
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(REQUEST_ID, v);
    }
    if trace.attempts > 0 || trace.class.is_some() {
        h.insert(ATTEMPTS, HeaderValue::from(trace.attempts));
        h.insert(QUEUE_MS, HeaderValue::from(trace.queue.as_millis() as u64));
    }
    if let (Some(tenant), Some(class)) = (&trace.tenant, trace.class) {
        gw.metrics
            .requests
            .with_label_values(&[tenant, class.as_str(), status.as_str()])
            .inc();
    }
    gw.drain.request_finished();
    let query = gw.peek().config.log.query;
    access::log(
        &request_id,
        &method,
        &target,
        query,
        status,
        &trace,
        started,
    );
    response
}

/// The stages, in order.
async fn run(
    gw: &Arc<Gateway>,
    peer: SocketAddr,
    req: Box<Request>,
    request_id: &str,
    trace: &mut Trace,
) -> Result<Response, GatewayError> {
    let export = crate::export::wanted(req.headers())?;
    // Each stage but the read path is boxed: inbound's future is gone
    // before the wait, and export's and reconcile's take no room in a
    // waiting GET's.
    let request = {
        let snap = gw.snapshot();
        Box::pin(inbound::read(
            &snap,
            &gw.bodies,
            peer,
            unbox(req),
            request_id,
            trace,
        ))
        .await?
    };
    let _inflight = gw.stats(&request.tenant.name).inflight();
    crate::batch::check(&request.out)?;
    let forward = &gw.forwarder;
    if let Some(wanted) = export {
        return Box::pin(crate::export::export(
            forward,
            &gw.metrics,
            request,
            wanted,
            trace,
        ))
        .await;
    }
    if request.out.method != Method::POST {
        return crate::cache::serve(&gw.cache, forward, request, trace).await;
    }
    let _write = crate::cache::DictionaryWrite::begin(&gw.cache, &request);
    Box::pin(crate::reconcile::run(
        forward,
        &gw.metrics.reconciled,
        request,
        trace,
    ))
    .await
}

/// The value out of its box, and the box freed now: moving out with `*b`
/// frees the box only where its binding ends, which for an async fn's
/// argument is when the whole request is done.
#[allow(clippy::boxed_local)] // Taking the box is the point: it is freed here.
fn unbox<T>(b: Box<T>) -> T {
    *b
}

/// The caller's `X-Request-Id` when it is sane, else a new one.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| {
            // Encoded directly, not through `Display`'s formatting machinery.
            let mut buf = uuid::Uuid::encode_buffer();
            uuid::Uuid::new_v4()
                .hyphenated()
                .encode_lower(&mut buf)
                .to_owned()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The futures a request waiting in the queue holds stay small: the
    /// stages' sends, retries, exports, reconciles and Redis calls are
    /// boxed where they start, and the request head is boxed until inbound
    /// reads it. (Sizes are the compiler's; the bounds leave room for
    /// another compiler or a debug build. Before these futures were cut,
    /// `run`'s was 5,600 bytes and `handle`'s 856.)
    #[tokio::test]
    async fn the_futures_a_waiting_request_holds_stay_small() {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                    [[tenants]]\nname = \"acme\"\nbase_url = \"https://acme.retailcrm.ru\"\n\
                    api_key = \"k-0001\"\n";
        let config = Config::from_toml(text, "test config", &|_| None).unwrap();
        let gw = Gateway::new(config, None).unwrap();
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let req = || Box::new(Request::new(axum::body::Body::empty()));
        let mut trace = Trace::default();
        // Never polled: only measured, then dropped.
        let run = run(&gw, peer, req(), "id", &mut trace);
        let run_size = std::mem::size_of_val(&run);
        drop(run);
        let handle_size = std::mem::size_of_val(&handle(gw.clone(), peer, req()));
        assert!(run_size <= 3_000, "the stages' future is {run_size} bytes");
        assert!(
            handle_size <= 600,
            "the handler's future is {handle_size} bytes"
        );
    }
}
