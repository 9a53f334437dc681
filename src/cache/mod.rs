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
//! With the Redis backend the answers are also kept for the whole fleet
//! ([`fleet`]): the in-process store becomes an L1 (`cache.local_ttl`) in
//! front of Redis, a miss in both takes the fleet's fill lock so replicas
//! missing at once wait for one CRM read, and Redis being down only means
//! working locally (no request waits on it).
//!
//! A write to a dictionary (`POST /api/v*/reference/{dictionary}/...`)
//! drops that tenant's entries of that dictionary before and after it is
//! sent, in Redis too. `Cache-Control: no-cache` skips the lookup and refreshes the entry;
//! `no-store` bypasses the stage. Every GET's answer says what happened in
//! `X-Crmgate-Cache` (`hit`, `shared`, `miss`, `coalesced`, `stale`, `bypass`), with
//! `Age` on hits and stale answers. This stage never sees the real key,
//! never logs a path or query, and never shares an entry between tenants.

pub mod coalesce;
/// The hit path: a GET answered from a fresh entry using only the request
/// head, before inbound reads it.
pub mod early;
pub mod fleet;
mod flight;
pub mod key;
pub mod stats;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::Response;
use tokio::time::Instant;

use crate::access::Trace;
use crate::config::Config;
use crate::error::GatewayError;
use crate::forward::{Forward, Forwarder};
use crate::inbound::Inbound;
use coalesce::{Flights, Role};
use fleet::{FleetStore, Lookup};
use flight::{fly, Plan};
use key::Key;
use stats::{CacheOutcome, Stats};
use store::{Entry, Store};

/// Response header: what the cache stage did (`hit`, `miss`, `coalesced`,
/// `stale`, `bypass`).
pub const CACHE_HEADER: &str = "x-crmgate-cache";

/// The stage's shared state: the store, the flights and the counters.
pub struct Cache {
    store: ArcSwap<Store>,
    /// The fleet's store in Redis, with the Redis backend and `cache.shared`.
    fleet: Option<Arc<FleetStore>>,
    max_bytes: AtomicU64,
    flights: Arc<Flights>,
    /// Per-tenant counters and the last minute.
    pub stats: Stats,
}

impl Cache {
    /// The stage for `config`; counters registered in `metrics` start at 0
    /// for every tenant.
    /// `redis` is the scheduler's link with the Redis backend: the fleet
    /// cache uses it unless `cache.shared = false`.
    pub fn new(
        config: &Config,
        metrics: &crate::metrics::Metrics,
        redis: Option<Arc<crate::redis_link::RedisLink>>,
    ) -> Cache {
        let fleet = redis.filter(|_| config.cache.shared).map(|link| {
            Arc::new(FleetStore::new(
                link,
                &config.redis.key_prefix,
                config.cache.shared_max_bytes,
            ))
        });
        let cache = Cache {
            store: ArcSwap::from_pointee(Store::new(config.cache.max_bytes)),
            fleet,
            max_bytes: AtomicU64::new(config.cache.max_bytes),
            flights: Arc::default(),
            stats: Stats::new(
                metrics.cache_requests.clone(),
                metrics.coalesced.clone(),
                metrics.cache_fill_waits.clone(),
            ),
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
        if let Some(fleet) = &self.fleet {
            fleet.set_max_bytes(config.cache.shared_max_bytes);
        }
        for t in &config.tenants {
            self.stats.tenant(&t.name.as_str().into());
        }
    }

    /// Whether answers are kept for the fleet in Redis.
    pub fn shared(&self) -> bool {
        self.fleet.is_some()
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

fn outcome_header(o: CacheOutcome) -> HeaderValue {
    HeaderValue::from_static(o.as_str())
}

/// How one read is served, decided once by [`decide`] before any call.
enum Way {
    /// Straight to forward, neither kept nor joinable: the cache is off,
    /// not a GET, `no-store`, or an uncached path with a slot free now. The
    /// outcome is what the answer's header says (none when the cache is
    /// not involved at all).
    Pass(Option<CacheOutcome>),
    /// Answered from an entry already in hand (local, or the fleet's).
    Answered(Response),
    /// Through a flight of the cache: start one or join one.
    Fly(Takeoff),
}

/// What a read that no entry answered takes to its flight, found while
/// deciding.
struct Takeoff {
    key: Key,
    /// How a flight this read starts keeps its answer (`None`: not kept).
    plan: Option<Plan>,
    /// An expired entry within `stale_if_error`, served if the CRM fails.
    stale: Option<Arc<Entry>>,
}

/// The stage for reads: serves a GET from the cache, a shared request, or
/// forwards it (writes go through [`DictionaryWrite`] instead). It decides
/// once how ([`decide`]), then makes one call.
pub async fn serve(
    cache: &Arc<Cache>,
    forward: &Forwarder,
    req: Inbound,
    trace: &mut Trace,
) -> Result<Response, GatewayError> {
    match decide(cache, forward, &req).await {
        Way::Pass(None) => forward.send(req, trace).await,
        Way::Pass(Some(outcome)) => with_outcome(forward.send(req, trace).await, outcome),
        Way::Answered(response) => Ok(response),
        Way::Fly(takeoff) => fly_or_join(cache, forward, req, takeoff, trace).await,
    }
}

/// Decides how `req` is served, counting the outcome it already knows (a
/// pass or a hit); only the fleet lookup and a wait for a fill already sent
/// happen here, never a send.
async fn decide(cache: &Arc<Cache>, forward: &Forwarder, req: &Inbound) -> Way {
    let snap = forward.snapshot();
    let cfg = &snap.config.cache;
    if !cfg.enabled || req.out.method != Method::GET {
        return Way::Pass(None);
    }
    let tenant = &req.tenant.name;
    let stats = cache.stats.tenant(tenant);
    let asked = directive(&req.out.headers);
    if asked == Directive::NoStore {
        stats.count(CacheOutcome::Bypass);
        return Way::Pass(Some(CacheOutcome::Bypass));
    }
    let ttl = cfg.ttl_for(&req.out.path);
    if ttl.is_none() && forward.free_now(req.ticket.class, tenant) {
        // It goes at once, so nobody could join it, and the answer is not
        // kept: it streams back as it comes, unbuffered. (Should another
        // request take the slot first, this one waits unjoinable: rare, and
        // only a missed saving.)
        stats.count(CacheOutcome::Miss);
        return Way::Pass(Some(CacheOutcome::Miss));
    }
    let key = Key::new(tenant, &req.out.path, req.out.query.as_deref());
    let store = cache.store.load_full();
    let mut stale = None;
    if ttl.is_some() {
        // A fill already sent for this key: wait for it and look again (an
        // entry it stores is as good as any hit; one a write made dead is
        // not found, and this caller goes on to a request of its own).
        if asked == Directive::Normal && cache.flights.wait_for_sent(&key).await {
            if let Some(hit) = fresh_hit(&store, &key, &stats) {
                return hit;
            }
        }
        if let Some(e) = store.get(&key) {
            let now = Instant::now();
            if asked != Directive::NoCache && e.fresh(now) {
                stats.count(CacheOutcome::Hit);
                return Way::Answered(from_entry(&e, CacheOutcome::Hit, now));
            }
            if e.usable_stale(now, cfg.stale_if_error) {
                stale = Some(e);
            }
        }
    }
    // The fleet's cache: a fresh entry there is a hit for this replica too
    // (kept locally for `local_ttl`); a stale one serves if the CRM fails.
    let mut fleet_plan = None;
    if let (Some(fleet), Some(ttl)) = (&cache.fleet, ttl) {
        // Boxed: the Redis lookup's future (3.7 KB) would otherwise size
        // every read's future, also the ones that wait in the queue.
        match Box::pin(fleet.lookup(&key)).await {
            Lookup::Found { entry, generation } => {
                if asked != Directive::NoCache && entry.fresh() {
                    let kept = local_ttl(cfg, ttl).min(entry.remaining());
                    store.insert(
                        key.clone(),
                        entry.answer.clone(),
                        kept,
                        ZERO,
                        store.generation(),
                    );
                    stats.count(CacheOutcome::Shared);
                    return Way::Answered(from_fleet(&entry, CacheOutcome::Shared));
                }
                if stale.is_none() {
                    stale = Some(Arc::new(entry.as_stale(store.generation())));
                }
                fleet_plan = Some((fleet.clone(), generation));
            }
            Lookup::Miss { generation } => fleet_plan = Some((fleet.clone(), generation)),
            Lookup::Unavailable => {}
        }
        // The lookup took a while (a round trip, or a timeout with Redis
        // gone): a flight of this replica may have landed meanwhile, and
        // a flight taken now would read the CRM a second time.
        if asked != Directive::NoCache {
            if let Some(hit) = fresh_hit(&store, &key, &stats) {
                return hit;
            }
        }
    }
    let plan = ttl.map(|ttl| Plan {
        ttl,
        local_ttl: if fleet_plan.is_some() {
            local_ttl(cfg, ttl)
        } else {
            ttl
        },
        grace: cfg.stale_if_error,
        generation: store.generation(),
        store: store.clone(),
        fleet: fleet_plan,
    });
    Way::Fly(Takeoff { key, plan, stale })
}

/// Starts a flight for `req`'s key, or joins the one in the air, and
/// answers from its result (or from the stale entry if the CRM failed).
async fn fly_or_join(
    cache: &Arc<Cache>,
    forward: &Forwarder,
    req: Inbound,
    takeoff: Takeoff,
    trace: &mut Trace,
) -> Result<Response, GatewayError> {
    let Takeoff { key, plan, stale } = takeoff;
    let stats = cache.stats.tenant(&req.tenant.name);
    let deadline = req.ticket.deadline;
    let (seat, role) = cache.flights.take_seat(&key, req.ticket.priority, deadline);
    let outcome = match role {
        Role::Started => {
            let task = tokio::spawn(fly(
                cache.clone(),
                forward.clone(),
                req,
                seat.flight.clone(),
                key.clone(),
                plan,
            ));
            seat.attach(task.abort_handle());
            CacheOutcome::Miss
        }
        Role::Joined => {
            // The joiner's own request is never sent.
            drop(req);
            CacheOutcome::Coalesced
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
        stats.count(CacheOutcome::Stale);
        return Ok(from_entry(e, CacheOutcome::Stale, Instant::now()));
    }
    let shared = shared?;
    let outcome = if shared.from_fleet && outcome == CacheOutcome::Miss {
        CacheOutcome::Shared
    } else {
        outcome
    };
    match &shared.answer {
        Ok(a) => {
            stats.count(outcome);
            Ok(a.response(outcome_header(outcome)))
        }
        Err(e) => {
            stats.count(outcome);
            Err(e.clone())
        }
    }
}

/// A write to a dictionary, in flight: that tenant's entries of that
/// dictionary are dropped when it starts and again when its answer is in
/// (on drop), so a read racing the write never keeps the old data.
pub struct DictionaryWrite {
    store: Arc<Store>,
    fleet: Option<Arc<FleetStore>>,
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
            fleet: cache.fleet.clone(),
            tenant: req.tenant.name.clone(),
            dict,
        };
        w.invalidate();
        Some(w)
    }

    /// Drops the entries here, and (in the background, best effort) in Redis.
    fn invalidate(&self) {
        self.store.invalidate(&self.tenant, &self.dict);
        if let (Some(fleet), Ok(rt)) = (&self.fleet, tokio::runtime::Handle::try_current()) {
            let (fleet, tenant, dict) = (fleet.clone(), self.tenant.clone(), self.dict.clone());
            rt.spawn(async move { fleet.invalidate(&tenant, &dict).await });
        }
    }
}

impl Drop for DictionaryWrite {
    fn drop(&mut self) {
        self.invalidate();
    }
}

fn with_outcome(
    r: Result<Response, GatewayError>,
    o: CacheOutcome,
) -> Result<Response, GatewayError> {
    r.map(|mut resp| {
        resp.headers_mut()
            .insert(store::CACHE_HEADER_NAME, outcome_header(o));
        resp
    })
}

/// A hit, counted, when `store` holds a fresh entry for `key`.
fn fresh_hit(store: &Store, key: &Key, stats: &stats::TenantCache) -> Option<Way> {
    let e = store.get(key)?;
    let now = Instant::now();
    e.fresh(now).then(|| {
        stats.count(CacheOutcome::Hit);
        Way::Answered(from_entry(&e, CacheOutcome::Hit, now))
    })
}

fn from_entry(e: &Entry, o: CacheOutcome, now: Instant) -> Response {
    let mut resp = e.answer.response(outcome_header(o));
    resp.headers_mut()
        .insert(header::AGE, HeaderValue::from(e.age(now)));
    resp
}

const ZERO: std::time::Duration = std::time::Duration::ZERO;

/// How long this replica keeps an answer the fleet also keeps.
fn local_ttl(cfg: &crate::config::CacheConfig, ttl: std::time::Duration) -> std::time::Duration {
    cfg.local_ttl.min(ttl)
}

/// A response from a fleet entry, with its `Age` on Redis's clock.
fn from_fleet(e: &fleet::FleetEntry, o: CacheOutcome) -> Response {
    let mut resp = e.answer.response(outcome_header(o));
    resp.headers_mut()
        .insert(header::AGE, HeaderValue::from(e.age.as_secs()));
    resp
}
