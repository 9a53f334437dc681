//! Scenarios of a fleet on Redis as managed services run it, each with
//! three replicas in front of one strict simulator (one egress IP, as
//! replicas behind one NAT) and real `redis-server` processes started by
//! the integration tests' helpers (`tests/common/redis_procs.rs`):
//!
//! - `redis_tls`: scenario 5 through a Redis that speaks TLS only, with a
//!   password and a CA made for the run (`rediss://`, `redis.ca_file`);
//! - `fleet_cache`: 30 readers per replica on `reference/statuses` with a
//!   short TTL: the fleet cache should let the CRM see one read per TTL for
//!   the whole fleet, not one per replica;
//! - `failover`: a Sentinel set (master, replica, Sentinel) under load; the
//!   master is killed mid-run: the most arrivals in any 1000 ms at the CRM
//!   stay within the limit, and every replica goes back to "shared".
//!
//! Without `redis-server` each is skipped loudly (the caller prints why).
//! Measures and reports; it never asserts. Every process it starts is
//! killed when its handle drops.

use std::time::Duration;

use crmgate::sim::{max_in_window, Class};
use serde::Serialize;
use tokio::time::Instant;

use crate::common::{self, poll_until, RedisServer, SentinelSet, TlsRedis};
use crate::end_to_end::{LATENCY, LIMIT};
use crate::harness::{self, Gate, Load, Req, ACME_CLIENT};
use crate::measure::{self, verdict, Answers};
use crate::shared_budget::{self, SharedBudget, REPLICAS};

/// `redis_tls`: combined utilisation after the start-up transition.
pub const TARGET_UTILISATION_TLS_REDIS: f64 = 0.93;
/// `fleet_cache`: the reference's TTL in the run.
const TTL: Duration = Duration::from_secs(2);
/// `fleet_cache`: readers per replica.
pub const READERS: usize = 30;
/// The reference every reader asks for.
const STATUSES: &str = "/api/v5/reference/statuses";
/// How long a replica may take to notice Redis, or a failover, before the
/// scenario reports "never".
const NOTICE: Duration = Duration::from_secs(30);

const MISSING: &str = "redis-server is not on PATH (apt-get install redis-server)";

/// `redis_tls`: scenario 5 through a TLS Redis with a password.
pub async fn tls(callers: usize, run: Duration) -> Result<SharedBudget, String> {
    let redis = TlsRedis::start().await.ok_or(MISSING)?;
    // The password inside the URL (it is never printed); the private CA.
    let url = redis
        .url()
        .replace("rediss://", &format!("rediss://:{}@", redis.password));
    let topology = format!("url = \"{url}\"\nca_file = \"{}\"", redis.ca_file.display());
    let through = "a TLS Redis (rediss://, password, private CA)";
    Ok(shared_budget::replicas(callers, run, &topology, through).await)
}

/// Prints `redis_tls`.
pub fn print_tls(s: &SharedBudget) {
    shared_budget::print_against(s, TARGET_UTILISATION_TLS_REDIS, "15a");
}

/// Three gateways sharing budgets (and the cache) through the Redis that
/// `topology` names, with `cache` as their `[cache]` section; waits until
/// each has reached Redis (or [`NOTICE`] passed).
async fn fleet(sim_url: &str, topology: &str, cache: &str) -> Vec<Gate> {
    let prefix = format!(
        "crmgate-bench-{}-{}",
        std::process::id(),
        common::free_port()
    );
    let sections = format!(
        "[redis]\n{topology}\nexpected_replicas = {REPLICAS}\nkey_prefix = \"{prefix}\"\n{cache}"
    );
    let mut gates = Vec::new();
    for _ in 0..REPLICAS {
        let config = harness::gateway_config_with(sim_url, "backend = \"redis\"", &sections);
        gates.push(Gate::start(config).await);
    }
    let all_shared = poll_until(NOTICE, || async { all(&gates, "shared").then_some(()) }).await;
    if all_shared.is_none() {
        eprintln!("warning: not every replica reached Redis within {NOTICE:?}");
    }
    gates
}

/// Whether every replica's `budget_backend` reads `state`.
fn all(gates: &[Gate], state: &str) -> bool {
    gates.iter().all(|g| g.gateway.backend_state() == state)
}

/// `fleet_cache`'s figures.
#[derive(Debug, Clone, Serialize)]
pub struct FleetCache {
    pub replicas: usize,
    pub readers_per_replica: usize,
    pub seconds: f64,
    pub ttl_s: f64,
    /// Reads of the reference the CRM received.
    pub crm_reads: usize,
    /// TTL periods the run spans: `⌊seconds / ttl⌋ + 1`, the most reads one
    /// cache for the whole fleet may cause.
    pub ttl_periods: usize,
    /// Most CRM reads in any TTL-long window (1 when the fleet shares).
    pub most_reads_in_a_ttl: usize,
    /// When the CRM received them (seconds after the readers started).
    pub reads_at_s: Vec<f64>,
    /// Per replica, from `/status` (tenant acme's `cache_last_minute`):
    /// answers served from Redis, and reads that waited for another
    /// replica's fill; and its `budget_backend` at the end.
    pub per_replica: Vec<ReplicaCache>,
    /// What the readers got.
    pub answers: Answers,
}

/// One replica's share of the fleet cache.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaCache {
    pub shared_hits: u64,
    pub fill_waits: u64,
    pub backend: String,
}

/// Tenant acme's cache counters and the backend state of `gate`.
fn replica_cache(gate: &Gate) -> ReplicaCache {
    let doc = common::status_now(gate);
    let acme = doc["tenants"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == "acme"))
        .cloned()
        .unwrap_or_default();
    let count = |field: &str| acme["cache_last_minute"][field].as_u64().unwrap_or(0);
    ReplicaCache {
        shared_hits: count("shared_hits_last_minute"),
        fill_waits: count("fill_waits_last_minute"),
        backend: gate.gateway.backend_state().to_string(),
    }
}

/// `fleet_cache`: [`READERS`] per replica read the statuses for `run`.
pub async fn reference(run: Duration) -> Result<FleetCache, String> {
    let redis = RedisServer::start().await.ok_or(MISSING)?;
    let sim = harness::sim(LATENCY).await;
    let cache = format!(
        "[cache]\n[[cache.rules]]\npath = \"{STATUSES}\"\nttl = \"{}s\"\n",
        TTL.as_secs()
    );
    let topology = format!("url = \"{}\"", redis.url());
    let gates = fleet(&sim.base_url(), &topology, &cache).await;
    let client = harness::client();
    let started = Instant::now();
    let loads: Vec<Load> = gates
        .iter()
        .map(|g| {
            let req = Req::GetPath(STATUSES, ACME_CLIENT);
            Load::flood_req(&client, &g.url, req, READERS, Duration::ZERO)
        })
        .collect();
    tokio::time::sleep(run).await;
    let mut samples = Vec::new();
    for load in loads {
        samples.extend(load.stop().await);
    }
    let records = sim.records();
    let per_replica = gates.iter().map(replica_cache).collect();
    futures_util::future::join_all(gates.into_iter().map(Gate::shutdown)).await;
    sim.shutdown();
    drop(redis);

    let mut reads: Vec<Instant> = records
        .iter()
        .filter(|r| r.method == "GET" && r.path == STATUSES)
        .map(|r| r.at)
        .collect();
    reads.sort_unstable();
    let most_reads_in_a_ttl = (0..reads.len())
        .map(|i| {
            reads[i..]
                .iter()
                .take_while(|t| **t - reads[i] < TTL)
                .count()
        })
        .max()
        .unwrap_or(0);
    Ok(FleetCache {
        replicas: REPLICAS,
        readers_per_replica: READERS,
        seconds: run.as_secs_f64(),
        ttl_s: TTL.as_secs_f64(),
        crm_reads: reads.len(),
        ttl_periods: (run.as_secs_f64() / TTL.as_secs_f64()).floor() as usize + 1,
        most_reads_in_a_ttl,
        reads_at_s: reads
            .iter()
            .map(|t| t.saturating_duration_since(started).as_secs_f64())
            .collect(),
        per_replica,
        answers: measure::answers(&samples),
    })
}

/// Prints `fleet_cache`.
pub fn print_reference(c: &FleetCache) {
    println!(
        "\n== 15b. Fleet cache: {} replicas × {} readers of reference/statuses, TTL {:.0} s, {:.0} s",
        c.replicas, c.readers_per_replica, c.ttl_s, c.seconds
    );
    println!(
        "   {:<38} {:>12}   target ≤ {} (one per TTL for the fleet): {}",
        "reads at the CRM",
        c.crm_reads,
        c.ttl_periods,
        verdict(c.crm_reads <= c.ttl_periods)
    );
    println!(
        "   {:<38} {:>12}   target 1 (not {}): {}",
        "most CRM reads in any TTL",
        c.most_reads_in_a_ttl,
        c.replicas,
        verdict(c.most_reads_in_a_ttl <= 1)
    );
    println!(
        "   {:<38} {:>12}   other: {:?}",
        "reader answers (200)", c.answers.ok_200, c.answers.other
    );
    let at: Vec<String> = c.reads_at_s.iter().map(|t| format!("{t:.2}")).collect();
    println!("   CRM reads at (s): {}", at.join(", "));
    for (i, r) in c.per_replica.iter().enumerate() {
        println!(
            "   replica {}: shared hits {}, fill waits {}, backend {}",
            i + 1,
            r.shared_hits,
            r.fill_waits,
            r.backend
        );
    }
}

/// `failover`'s figures.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    pub replicas: usize,
    pub callers: usize,
    /// Seconds of load before the master is killed, and after every
    /// replica is back on the shared budget.
    pub before_s: f64,
    pub after_s: f64,
    /// From the kill: every replica on its fallback share, the Sentinel's
    /// promotion seen, every replica back on "shared" (None: not within 30 s).
    pub all_fallback_after_s: Option<f64>,
    pub promoted_after_s: Option<f64>,
    pub shared_again_after_s: Option<f64>,
    /// Most general arrivals at the CRM in any 1000 ms, the whole run.
    pub max_in_1s: usize,
    /// 503s the CRM answered, the whole run.
    pub rejected_503: usize,
    /// Accepted general arrivals per second, whole seconds from the start.
    pub per_second: Vec<usize>,
    /// Each replica's `budget_backend` at the end.
    pub backends_at_end: Vec<String>,
    pub answers: Answers,
}

/// `failover`: load on three replicas behind a Sentinel; the master dies.
pub async fn failover(
    callers: usize,
    before: Duration,
    after: Duration,
) -> Result<Failover, String> {
    let mut set = SentinelSet::start().await.ok_or(MISSING)?;
    let sim = harness::sim(LATENCY).await;
    let topology = format!(
        "sentinels = [\"{}\"]\nsentinel_master = \"{}\"",
        set.sentinel_url(),
        set.name
    );
    let gates = fleet(&sim.base_url(), &topology, "").await;
    let client = harness::client();
    let started = Instant::now();
    let loads: Vec<Load> = gates
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let n = callers / REPLICAS + usize::from(i < callers % REPLICAS);
            Load::flood(&client, &g.url, ACME_CLIENT, n)
        })
        .collect();
    tokio::time::sleep(before).await;

    let new_master = set.replica.port;
    set.master.kill();
    let killed = Instant::now();
    let since = |found: Option<()>| found.map(|()| killed.elapsed().as_secs_f64());
    let all_fallback_after_s =
        since(poll_until(NOTICE, || async { all(&gates, "fallback").then_some(()) }).await);
    let promoted_after_s = since(
        poll_until(NOTICE, || async {
            (set.master_port() == Some(new_master)).then_some(())
        })
        .await,
    );
    let shared_again_after_s =
        since(poll_until(NOTICE, || async { all(&gates, "shared").then_some(()) }).await);
    tokio::time::sleep(after).await;

    let records = sim.records();
    let whole = started.elapsed().as_secs();
    for load in &loads {
        load.wind_down();
    }
    let mut samples = Vec::new();
    for load in loads {
        samples.extend(load.finish(Duration::from_secs(20)).await);
    }
    let backends_at_end = gates
        .iter()
        .map(|g| g.gateway.backend_state().to_string())
        .collect();
    futures_util::future::join_all(gates.into_iter().map(Gate::shutdown)).await;
    sim.shutdown();
    drop(set);

    let general: Vec<_> = records
        .iter()
        .filter(|r| r.class == Class::General)
        .collect();
    let per_second = (0..whole)
        .map(|i| {
            let from = started + Duration::from_secs(i);
            let to = from + Duration::from_secs(1);
            general
                .iter()
                .filter(|r| r.status != 503 && r.at >= from && r.at < to)
                .count()
        })
        .collect();
    Ok(Failover {
        replicas: REPLICAS,
        callers,
        before_s: before.as_secs_f64(),
        after_s: after.as_secs_f64(),
        all_fallback_after_s,
        promoted_after_s,
        shared_again_after_s,
        max_in_1s: max_in_window(&records, Duration::from_secs(1))
            .into_iter()
            .filter(|((_, class), _)| *class == Class::General)
            .map(|(_, n)| n)
            .max()
            .unwrap_or(0),
        rejected_503: general.iter().filter(|r| r.status == 503).count(),
        per_second,
        backends_at_end,
        answers: measure::answers(&samples),
    })
}

/// Prints `failover`.
pub fn print_failover(f: &Failover) {
    println!(
        "\n== 15c. Sentinel failover under load: {} replicas, {} callers, master killed after {:.0} s",
        f.replicas, f.callers, f.before_s
    );
    let secs = |s: Option<f64>| s.map_or("never".to_string(), |s| format!("{s:.1} s"));
    println!(
        "   after the kill: all on fallback {}, replica promoted {}, all shared again {}",
        secs(f.all_fallback_after_s),
        secs(f.promoted_after_s),
        secs(f.shared_again_after_s)
    );
    println!(
        "   {:<38} {:>12}   target ≤ {LIMIT}: {}",
        "most arrivals in any 1000 ms",
        f.max_in_1s,
        verdict(f.max_in_1s <= LIMIT as usize)
    );
    println!(
        "   {:<38} {:>12}",
        "503s answered by the CRM", f.rejected_503
    );
    println!(
        "   {:<38} {:>12}   target all shared: {}",
        "backends at the end",
        f.backends_at_end.join(", "),
        verdict(f.backends_at_end.iter().all(|b| b == "shared"))
    );
    println!(
        "   {:<38} {:>12}   other: {:?}",
        "caller answers (200)", f.answers.ok_200, f.answers.other
    );
    println!("   accepted per second: {:?}", f.per_second);
}
