//! The cache stage: between inbound and forward, it spends the CRM's budget
//! once per distinct read.
//!
//! Two parts ([`coalesce`] and [`store`]):
//! - identical GETs ([`key`]) that arrive while one of them still waits in
//!   the queue share it: one slot, one answer buffered and handed to each;
//! - successful answers (`200` with `"success": true`) of the paths that
//!   `[cache]` rules name (by default the dictionaries, `credentials` and
//!   `api-versions`) are kept per tenant for their TTL, and an expired one
//!   is served when the CRM fails (`stale_if_error`).
//!
//! A write to a dictionary (`POST /api/v*/reference/{dictionary}/...`)
//! drops that tenant's entries of that dictionary before and after it is
//! sent. `Cache-Control: no-cache` skips the lookup and refreshes the entry;
//! `no-store` bypasses the stage. Every GET's answer says what happened in
//! `X-Crmgate-Cache` (`hit`, `miss`, `coalesced`, `stale`, `bypass`), with
//! `Age` on hits and stale answers. This stage never sees the real key,
//! never logs a path or query, and never shares an entry between tenants.

pub mod coalesce;
pub mod early;
pub mod key;
pub mod stats;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::Response;
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::time::Instant;

use crate::access::Trace;
use crate::bodies::{BodyLease, BodyPool};
use crate::config::{CacheConfig, Config};
use crate::error::GatewayError;
use crate::forward::{Forward, Forwarder};
use crate::inbound::Inbound;
use coalesce::{Flight, Flights, Role, Shared};
use key::Key;
use stats::{Outcome, Stats};
use store::{Answer, Entry, Store};

/// Response header: what the cache stage did (`hit`, `miss`, `coalesced`,
/// `stale`, `bypass`).
pub const CACHE_HEADER: &str = "x-crmgate-cache";

/// The stage's shared state: the store, the flights and the counters.
pub struct Cache {
    store: ArcSwap<Store>,
    max_bytes: AtomicU64,
    flights: Arc<Flights>,
    /// Per-tenant counters and the last minute.
    pub stats: Stats,
}

impl Cache {
    /// The stage for `config`; counters registered in `metrics` start at 0
    /// for every tenant.
    pub fn new(config: &Config, metrics: &crate::metrics::Metrics) -> Cache {
        let cache = Cache {
            store: ArcSwap::from_pointee(Store::new(config.cache.max_bytes)),
            max_bytes: AtomicU64::new(config.cache.max_bytes),
            flights: Arc::default(),
            stats: Stats::new(metrics.cache_requests.clone(), metrics.coalesced.clone()),
        };
        cache.reconfigure(config);
        cache
    }

    /// Applies a reloaded config: a new memory bound starts an empty store
    /// (moka's bound is fixed when built); every tenant's series exist.
    /// Rules and TTLs are read per request, so they apply at once.
    pub fn reconfigure(&self, config: &Config) {
        if self
            .max_bytes
            .swap(config.cache.max_bytes, Ordering::AcqRel)
            != config.cache.max_bytes
        {
            self.store
                .store(Arc::new(Store::new(config.cache.max_bytes)));
        }
        for t in &config.tenants {
            self.stats.tenant(&t.name.as_str().into());
        }
    }

    /// Bytes held (as weighed) and entries.
    pub fn usage(&self) -> (u64, u64) {
        self.store.load().usage()
    }

    /// Shared requests waiting or under way.
    pub fn flights(&self) -> usize {
        self.flights.len()
    }
}

/// How the caller's `Cache-Control` asks to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Directive {
    Normal,
    /// Fetch from the CRM and refresh the entry.
    NoCache,
    /// Neither cache nor coalesce.
    NoStore,
}

fn directive(headers: &HeaderMap) -> Directive {
    let mut d = Directive::Normal;
    for v in headers.get_all(header::CACHE_CONTROL) {
        for part in v.to_str().unwrap_or("").split(',') {
            match part.trim().to_ascii_lowercase().as_str() {
                "no-store" => return Directive::NoStore,
                "no-cache" => d = Directive::NoCache,
                _ => {}
            }
        }
    }
    d
}

fn outcome_header(o: Outcome) -> HeaderValue {
    HeaderValue::from_static(o.as_str())
}

/// How one read is served, decided before anything is sent.
enum Way {
    /// Straight to forward, streamed back unbuffered, with the result to
    /// tell in [`CACHE_HEADER`] (none when the stage is off or not a GET).
    Forward(Option<Outcome>),
    /// Answered from a fresh entry, counted.
    Answered(Response),
    /// Through a shared request, started or joined: kept for `ttl` when
    /// set; `stale` is the expired entry served should it fail.
    Shared {
        key: Key,
        ttl: Option<Duration>,
        stale: Option<Arc<Entry>>,
    },
}

/// The stage for reads: serves a GET from the cache, a shared request, or
/// forwards it (writes go through [`DictionaryWrite`] instead). It decides
/// once how the read is served ([`Cache::way`]), then makes one call.
pub async fn serve(
    cache: &Cache,
    forward: &Forwarder,
    req: Inbound,
    trace: &mut Trace,
) -> Result<Response, GatewayError> {
    let snap = forward.snapshot();
    let cfg = &snap.config.cache;
    match cache.way(cfg, forward, &req).await {
        Way::Forward(None) => forward.send(req, trace).await,
        Way::Forward(Some(o)) => with_outcome(forward.send(req, trace).await, o),
        Way::Answered(resp) => Ok(resp),
        Way::Shared { key, ttl, stale } => {
            let plan = ttl.map(|ttl| (ttl, cfg.stale_if_error));
            cache.share(forward, req, key, plan, stale, trace).await
        }
    }
}

impl Cache {
    /// Decides how `req` is served; a hit, a bypass or a straight miss is
    /// counted here.
    async fn way(&self, cfg: &CacheConfig, forward: &Forwarder, req: &Inbound) -> Way {
        if !cfg.enabled || req.out.method != Method::GET {
            return Way::Forward(None);
        }
        let tenant = &req.tenant.name;
        let stats = self.stats.tenant(tenant);
        let asked = directive(&req.out.headers);
        if asked == Directive::NoStore {
            stats.count(Outcome::Bypass);
            return Way::Forward(Some(Outcome::Bypass));
        }
        let ttl = cfg.ttl_for(&req.out.path);
        if ttl.is_none() && forward.free_now(req.ticket.class, tenant) {
            // It goes at once, so nobody could join it, and the answer is
            // not kept: it streams back as it comes, unbuffered. (Should
            // another request take the slot first, this one waits
            // unjoinable: rare, and only a missed saving.)
            stats.count(Outcome::Miss);
            return Way::Forward(Some(Outcome::Miss));
        }
        let key = Key::new(tenant, &req.out.path, req.out.query.as_deref());
        let mut stale = None;
        if ttl.is_some() {
            let store = self.store.load_full();
            // A fill already sent for this key: wait for it and look again
            // (an entry it stores is as good as any hit; one a write made
            // dead is not found, and this caller goes on to a request of
            // its own).
            if asked == Directive::Normal && self.flights.wait_for_sent(&key).await {
                let now = Instant::now();
                if let Some(e) = store.get(&key).filter(|e| e.fresh(now)) {
                    stats.count(Outcome::Hit);
                    return Way::Answered(from_entry(&e, Outcome::Hit, now));
                }
            }
            if let Some(e) = store.get(&key) {
                let now = Instant::now();
                if asked != Directive::NoCache && e.fresh(now) {
                    stats.count(Outcome::Hit);
                    return Way::Answered(from_entry(&e, Outcome::Hit, now));
                }
                if e.usable_stale(now, cfg.stale_if_error) {
                    stale = Some(e);
                }
            }
        }
        Way::Shared { key, ttl, stale }
    }

    /// Serves `req` through the shared request for `key`: starts it (kept
    /// per `plan`, its TTL and grace, when set) or joins it, and waits for
    /// its answer; `stale` answers instead should it fail.
    async fn share(
        &self,
        forward: &Forwarder,
        req: Inbound,
        key: Key,
        plan: Option<(Duration, Duration)>,
        stale: Option<Arc<Entry>>,
        trace: &mut Trace,
    ) -> Result<Response, GatewayError> {
        let stats = self.stats.tenant(&req.tenant.name);
        let deadline = req.ticket.deadline;
        let store = self.store.load_full();
        let (seat, role) = self.flights.take_seat(&key, req.ticket.priority, deadline);
        let outcome = match role {
            Role::Started => {
                let plan = plan.map(|(ttl, grace)| Plan {
                    ttl,
                    grace,
                    generation: store.generation(),
                    store: store.clone(),
                });
                let flight = seat.flight.clone();
                let (forward, flights) = (forward.clone(), self.flights.clone());
                let task = tokio::spawn(fly(forward, flights, req, flight, key.clone(), plan));
                seat.attach(task.abort_handle());
                Outcome::Miss
            }
            Role::Joined => {
                // The joiner's own request is never sent.
                drop(req);
                Outcome::Coalesced
            }
        };
        let shared = seat.wait(deadline).await;
        if let Ok(s) = &shared {
            trace.attempts = s.attempts;
            trace.queue = s.queue;
            trace.upstream = s.upstream;
            trace.egress = s.egress.clone();
        }
        // The CRM failed, or this caller's deadline passed: an expired entry
        // within stale_if_error is better than an error.
        let failed = match &shared {
            Ok(s) => match &s.answer {
                Ok(a) => a.status.is_server_error(),
                Err(_) => true,
            },
            Err(_) => true,
        };
        if let (true, Some(e)) = (failed, &stale) {
            stats.count(Outcome::Stale);
            return Ok(from_entry(e, Outcome::Stale, Instant::now()));
        }
        let shared = shared?;
        stats.count(outcome);
        match &shared.answer {
            Ok(a) => Ok(a.response(outcome_header(outcome))),
            Err(e) => Err(e.clone()),
        }
    }
}

/// A write to a dictionary, in flight: that tenant's entries of that
/// dictionary are dropped when it starts and again when its answer is in
/// (on drop), so a read racing the write never keeps the old data.
pub struct DictionaryWrite {
    store: Arc<Store>,
    tenant: Arc<str>,
    dict: String,
}

impl DictionaryWrite {
    /// Starts the write of `req` when it is a `POST` to a dictionary.
    pub fn begin(cache: &Cache, req: &Inbound) -> Option<DictionaryWrite> {
        if req.out.method != Method::POST {
            return None;
        }
        let dict = key::dictionary(&req.out.path)?.to_owned();
        let w = DictionaryWrite {
            store: cache.store.load_full(),
            tenant: req.tenant.name.clone(),
            dict,
        };
        w.store.invalidate(&w.tenant, &w.dict);
        Some(w)
    }
}

impl Drop for DictionaryWrite {
    fn drop(&mut self) {
        self.store.invalidate(&self.tenant, &self.dict);
    }
}

fn with_outcome(r: Result<Response, GatewayError>, o: Outcome) -> Result<Response, GatewayError> {
    r.map(|mut resp| {
        resp.headers_mut().insert(CACHE_HEADER, outcome_header(o));
        resp
    })
}

fn from_entry(e: &Entry, o: Outcome, now: Instant) -> Response {
    let mut resp = e.answer.response(outcome_header(o));
    resp.headers_mut()
        .insert(header::AGE, HeaderValue::from(e.age(now)));
    resp
}

/// Where a shared request's answer is kept, if it is cacheable.
struct Plan {
    ttl: Duration,
    grace: Duration,
    generation: u64,
    store: Arc<Store>,
}

/// The shared request: sent once, answer buffered, kept when cacheable,
/// handed to every seat.
async fn fly(
    forward: Forwarder,
    flights: Arc<Flights>,
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
                plan.ttl,
                plan.grace,
                plan.generation,
            );
        }
    }
    flight.finish(Shared {
        answer,
        attempts: trace.attempts,
        queue: trace.queue,
        upstream: trace.upstream,
        egress: trace.egress,
        lease,
    });
    flights.done(&key, &flight);
}

/// Publishes an error to the seats of a flight whose task ended without
/// an answer; a no-op after [`Flight::finish`].
struct Unfinished(Arc<Flight>, String);

impl Drop for Unfinished {
    fn drop(&mut self) {
        self.0.finish_if_unfinished(|| Shared {
            answer: Err(GatewayError::UpstreamUnreachable {
                tenant: std::mem::take(&mut self.1),
                cause: "the shared request ended without an answer".into(),
            }),
            attempts: 0,
            queue: Duration::ZERO,
            upstream: Duration::ZERO,
            egress: None,
            lease: None,
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
) -> Result<(Arc<Answer>, BodyLease), GatewayError> {
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
    let mut headers = parts.headers;
    // A kept answer must not carry the time it was first read: the server
    // adds the current `Date` to each response (and `Age` says how old).
    headers.remove(header::DATE);
    let answer = Answer {
        status: parts.status,
        headers,
        body: bytes.freeze(),
    };
    Ok((Arc::new(answer), lease))
}

/// Only `200` with `"success": true` is kept.
fn cacheable(a: &Answer) -> bool {
    #[derive(Deserialize)]
    struct Success {
        success: bool,
    }
    a.status == axum::http::StatusCode::OK
        && serde_json::from_slice::<Success>(&a.body).is_ok_and(|s| s.success)
}
