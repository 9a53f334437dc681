//! The request path, composed: inbound → (stages to come) → forward.
//!
//! One handler serves every API request. It names the request, runs the
//! stages in order, and finishes every answer the same way: request id,
//! attempt and queue headers, counters, the access log line. Each stage
//! lives in its own module and is tested without the others:
//!
//! 1. [`crate::inbound`]: read, limit, identify, rewrite → a typed request;
//! 2. the stages between inbound and the scheduler: [`crate::batch`] (an
//!    oversized batch is refused before it spends a slot), then
//!    [`crate::reconcile`] around forward (a create that failed after
//!    sending is looked up by `externalId`); cache and coalescing of reads
//!    and paginated export take their places here too;
//! 3. [`crate::forward`]: wait in the [`crate::scheduler`], send through an
//!    [`crate::egress`] client, retry when [`crate::forward::retry`] allows,
//!    stream back.
//!
//! This module never sees the real key and never logs a query unmasked.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::time::Instant;

use crate::access::{self, Trace};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::inbound::{self, REQUEST_ID_HEADER};
use crate::scheduler::QueueError;

/// Response header: how many times the request was sent to the CRM.
pub const ATTEMPTS_HEADER: &str = "x-crmgate-attempts";
/// Response header: total milliseconds spent waiting for slots.
pub const QUEUE_MS_HEADER: &str = "x-crmgate-queue-ms";

/// The API router: every path goes to the proxy handler.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new().fallback(handle).with_state(gateway)
}

async fn handle(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
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

    let mut response = match run(&gw, peer, req, &request_id, &mut trace).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(reason) = e.rejection() {
                gw.metrics.rejections.with_label_values(&[reason]).inc();
            }
            if matches!(e, GatewayError::Queue(QueueError::ShuttingDown)) {
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
    let query = gw.runtime().config.log.query;
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
    req: Request,
    request_id: &str,
    trace: &mut Trace,
) -> Result<Response, GatewayError> {
    let export = crate::export::wanted(req.headers())?;
    let request = inbound::read(&gw.runtime(), &gw.bodies, peer, req, request_id, trace).await?;
    let _inflight = gw.stats(&request.tenant.name).inflight();
    crate::batch::check(&request.out)?;
    if let Some(wanted) = export {
        return crate::export::export(gw, request, wanted, trace).await;
    }
    crate::reconcile::run(gw, request, trace).await
}

/// The caller's `X-Request-Id` when it is sane, else a new one.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}
