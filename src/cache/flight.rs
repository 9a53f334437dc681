//! A flight's own task: the one request that identical reads share, sent
//! once through forward, its answer buffered (up to the pool's limit) and
//! kept by the [`Plan`] when it is cacheable, then handed to every seat.
//! It never answers a caller directly and never keys an entry by anything
//! but the read's [`Key`].

use std::sync::Arc;

use axum::http::{header, HeaderMap};
use axum::response::Response;
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde::Deserialize;

use super::coalesce::{Flight, FlightOutcome};
use super::fleet::{Fill, FleetStore, Lookup};
use super::key::Key;
use super::store::{BufferedAnswer, Store};
use super::{Cache, ZERO};
use crate::access::Trace;
use crate::bodies::{BodyLease, BodyPool};
use crate::error::GatewayError;
use crate::forward::{Forward, Forwarder};
use crate::inbound::Inbound;
use crate::rewrite::owned;

/// Where a shared request's answer is kept, if it is cacheable.
pub(super) struct Plan {
    pub(super) ttl: std::time::Duration,
    /// How long this replica keeps it (the TTL, or `local_ttl` with the fleet).
    pub(super) local_ttl: std::time::Duration,
    pub(super) grace: std::time::Duration,
    pub(super) generation: u64,
    pub(super) store: Arc<Store>,
    /// The fleet's store and the generation the read starts under.
    pub(super) fleet: Option<(Arc<FleetStore>, String)>,
}

/// The shared request: sent once, answer buffered, kept when cacheable,
/// handed to every seat.
pub(super) async fn fly(
    cache: Arc<Cache>,
    forward: Forwarder,
    mut req: Inbound,
    flight: Arc<Flight>,
    key: Key,
    plan: Option<Plan>,
) {
    // Every seat gets the same bytes: ask for them unencoded, so no joiner
    // receives an encoding it did not accept.
    req.out.headers.remove(header::ACCEPT_ENCODING);
    let tenant = req.tenant.name.to_string();
    // Should this task end without an answer (a panic), the seats still
    // get one instead of waiting forever.
    let _unfinished = Unfinished(flight.clone(), tenant.clone());
    let limit = forward.snapshot().config.limits.max_buffered_bytes.get();
    let bodies = req.lease.pool().clone();
    let mut trace = Trace::default();
    // The fleet: take the fill lock, or wait for the replica that holds it
    // and answer with its entry (no CRM read here at all).
    // The fleet's calls are boxed: Redis futures are large (3.7 KB each),
    // and inline they would size this task for every flight, fleet or not,
    // for as long as its request waits in the queue.
    let mut lock = None;
    if let Some((fleet, _)) = plan.as_ref().and_then(|p| p.fleet.as_ref()) {
        match Box::pin(fleet.fill(&key)).await {
            Fill::Mine(token) => lock = Some(token),
            Fill::Theirs => {
                cache.stats.tenant(&req.tenant.name).fill_waited();
                if let Lookup::Found { entry, .. } = Box::pin(fleet.wait_for_fill(&key)).await {
                    if entry.fresh() {
                        if let Some(p) = &plan {
                            let kept = p.local_ttl.min(entry.remaining());
                            p.store.insert(
                                key.clone(),
                                entry.answer.clone(),
                                kept,
                                ZERO,
                                p.generation,
                            );
                        }
                        flight.finish(FlightOutcome {
                            answer: Ok(entry.answer),
                            attempts: 0,
                            queue: std::time::Duration::ZERO,
                            upstream: std::time::Duration::ZERO,
                            egress: None,
                            lease: None,
                            from_fleet: true,
                        });
                        cache.flights.done(&key, &flight);
                        return;
                    }
                }
            }
            Fill::Unavailable => {}
        }
    }
    let result = match forward
        .send_lifted(req, &mut trace, Some(&flight.lift))
        .await
    {
        Ok(resp) => buffer(resp, &bodies, limit, tenant).await,
        Err(e) => Err(e),
    };
    let (answer, lease) = match result {
        Ok((a, lease)) => (Ok(a), Some(lease)),
        Err(e) => (Err(e), None),
    };
    if let (Ok(a), Some(plan)) = (&answer, plan) {
        if cacheable(a) {
            plan.store.insert(
                key.clone(),
                a.clone(),
                plan.local_ttl,
                plan.grace,
                plan.generation,
            );
            if let Some((fleet, generation)) = &plan.fleet {
                Box::pin(fleet.put(&key, a, plan.ttl, plan.grace, generation)).await;
            }
        }
        if let (Some((fleet, _)), Some(token)) = (&plan.fleet, &lock) {
            Box::pin(fleet.release(&key, token)).await;
        }
    }
    flight.finish(FlightOutcome {
        answer,
        attempts: trace.attempts,
        queue: trace.queue,
        upstream: trace.upstream,
        egress: trace.egress,
        lease,
        from_fleet: false,
    });
    cache.flights.done(&key, &flight);
}

/// Publishes an error to the seats of a flight whose task ended without
/// an answer; a no-op after [`Flight::finish`].
struct Unfinished(Arc<Flight>, String);

impl Drop for Unfinished {
    fn drop(&mut self) {
        self.0.finish_if_unfinished(|| FlightOutcome {
            answer: Err(GatewayError::UpstreamUnreachable {
                tenant: std::mem::take(&mut self.1),
                cause: "the shared request ended without an answer".into(),
            }),
            attempts: 0,
            queue: std::time::Duration::ZERO,
            upstream: std::time::Duration::ZERO,
            egress: None,
            lease: None,
            from_fleet: false,
        });
    }
}

/// Reads the CRM's whole answer, holding its bytes in the pool of buffered
/// bodies (`limits.max_buffered_bytes`) while it is shared.
async fn buffer(
    resp: Response,
    pool: &Arc<BodyPool>,
    limit: usize,
    tenant: String,
) -> Result<(Arc<BufferedAnswer>, BodyLease), GatewayError> {
    let (parts, mut body) = resp.into_parts();
    let mut lease = BodyLease::new(pool);
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| GatewayError::UpstreamUnreachable {
            tenant: tenant.clone(),
            cause: "the answer broke off".into(),
        })?;
        if let Ok(data) = frame.into_data() {
            if !lease.grow(data.len(), limit) {
                return Err(GatewayError::BuffersFull);
            }
            bytes.extend_from_slice(&data);
        }
    }
    // A kept answer must not carry the time it was first read: the server
    // adds the current `Date` to each response (and `Age` says how old).
    // Values are copied ([`owned`]): a kept answer would otherwise pin the
    // upstream connection's read buffer for its whole life.
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        if name != header::DATE {
            headers.append(name.clone(), owned(value));
        }
    }
    let answer = BufferedAnswer {
        status: parts.status,
        headers,
        body: bytes.freeze(),
    };
    Ok((Arc::new(answer), lease))
}

/// Only `200` with `"success": true` is kept.
fn cacheable(a: &BufferedAnswer) -> bool {
    #[derive(Deserialize)]
    struct Success {
        success: bool,
    }
    a.status == axum::http::StatusCode::OK
        && serde_json::from_slice::<Success>(&a.body).is_ok_and(|s| s.success)
}
