//! Shared budgets through a real `redis-server`: several gateways leaving
//! through one IP stay within one budget, survive a Redis outage on their
//! fallback share, and return to the shared budget when Redis is back; the
//! same through Sentinel (with a failover under load) and a Redis Cluster.
//!
//! Each test starts its own redis-server on a free port; without one on PATH
//! the tests skip loudly (CI installs it and sets CRMGATE_REQUIRE_ALL=1, which makes a skip fail).
//! They wait for what they can observe (each replica's backend state, the
//! CRM's arrivals); what remains timed is the windows they measure and the
//! scheduler's transition, which nothing outside it shows.
mod common;

use std::time::Duration;

use common::*;
use crmgate::sim::{max_in_window, Class, Simulator};
use tokio::time::Instant;

/// How long a replica also keeps within its fallback share after reaching
/// Redis, at start and after an outage (`TRANSITION` in
/// src/scheduler/dispatch.rs). Nothing outside the scheduler shows when it
/// ends, so the tests count it from a moment they can observe (every
/// replica reaching Redis) and wait for the CRM's arrivals to pass it.
const TRANSITION: Duration = Duration::from_millis(2500);

/// Three replicas in front of `sim`, sharing budgets through `redis`.
async fn replicas(sim: &Simulator, redis: &RedisServer, prefix: &str) -> Vec<Gate> {
    replicas_on(sim, &format!("url = \"{}\"", redis.url()), prefix).await
}

/// Three replicas in front of `sim`, sharing budgets through the Redis that
/// `topology` (`[redis]` lines: url, sentinels or cluster_nodes) names.
async fn replicas_on(sim: &Simulator, topology: &str, prefix: &str) -> Vec<Gate> {
    let extra = format!(
        "[limits]\nbackend = \"redis\"\n[redis]\n{topology}\nexpected_replicas = 3\nkey_prefix = \"{prefix}\"\ntimeout = \"100ms\"\n"
    );
    let mut gates = Vec::new();
    for _ in 0..3 {
        gates.push(Gate::start(config(&config_text(sim, &extra))).await);
    }
    gates
}

/// `per_gate` callers per replica, each sending general GETs back to back.
fn flood_replicas(gates: &[Gate], per_gate: usize) -> Vec<Flood> {
    let call = Call::get("/api/v5/orders", Some(ACME_CLIENT));
    gates
        .iter()
        .enumerate()
        .map(|(i, gate)| {
            flood(
                &gate.url,
                &format!("replica{i}"),
                vec![call.clone(); per_gate],
            )
        })
        .collect()
}

/// Stops every caller and returns what they all saw.
async fn finish(floods: Vec<Flood>) -> Vec<Outcome> {
    floods.iter().for_each(Flood::stop);
    let mut all = Vec::new();
    for f in floods {
        all.extend(f.finish().await);
    }
    all
}

/// Waits until every replica has made a Redis call and is on the shared
/// budget; returns when that was seen.
async fn wait_until_all_reached_redis(gates: &[Gate]) -> Instant {
    wait_until("every replica to reach Redis", || {
        gates.iter().all(|g| {
            g.gateway
                .scheduler
                .shared_state()
                .is_some_and(|(fallback, calls)| !fallback && calls > 0)
        })
    })
    .await;
    Instant::now()
}

/// Waits until every replica's `budget_backend` (as `/status` shows it,
/// read in-process) is `state`; fails with what each one shows.
async fn wait_for_backend(gates: &[Gate], state: &str) {
    let states = || -> Vec<&str> { gates.iter().map(|g| g.gateway.backend_state()).collect() };
    let reached = poll_until(WAIT_LIMIT, || {
        std::future::ready(states().iter().all(|s| *s == state).then_some(()))
    })
    .await;
    assert!(
        reached.is_some(),
        "replicas never all showed budget_backend {state:?} within {WAIT_LIMIT:?}: {:?}",
        states()
    );
}

/// Waits until the CRM has received a request at or after `at`: the
/// callers have kept it busy until then (arrivals are stamped in order, so
/// every earlier one is recorded too).
async fn wait_for_arrival_after(sim: &Simulator, at: Instant, what: &str) {
    wait_until(what, || sim.records().iter().any(|r| r.at >= at)).await;
}

/// The CRM-side checks: no 503, never more than 10 general requests from
/// the one source IP in any 1000 ms window.
fn assert_within_the_limit(sim: &Simulator) {
    let records = sim.records();
    let throttled = records.iter().filter(|r| r.status == 503).count();
    assert_eq!(throttled, 0, "the simulator answered 503 {throttled} times");
    for ((ip, class), n) in max_in_window(&records, Duration::from_millis(1000)) {
        if class == Class::General {
            assert!(n <= 10, "{ip} sent {n} general requests within one second");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_budget() {
    // Three replicas and their floods: never beside another load test on
    // the two cores, or the window counts measure the machine.
    let _load = LOAD.lock().await;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let sim = sim().await;
    let gates = replicas(&sim, &redis, "share").await;
    let floods = flood_replicas(&gates, 8);
    // Each replica keeps within its fallback share until TRANSITION after
    // it reached Redis: measure the shared budget after that, for five
    // seconds (whole windows: utilisation is counted in whole slots; five,
    // so that one slow second on a busy machine does not decide it).
    let reached = wait_until_all_reached_redis(&gates).await;
    // A lane's transition counts from its first reply, a round trip after
    // the call that `reached` saw: a little margin.
    let from = reached + TRANSITION + Duration::from_millis(100);
    let until = from + Duration::from_secs(5);
    wait_for_arrival_after(&sim, until, "the end of the measurement window").await;
    let answers = finish(floods).await;

    assert!(
        not_ok(&answers, 200).is_empty(),
        "not all 200: {:?}",
        not_ok(&answers, 200)
    );
    assert_within_the_limit(&sim);
    let delivered = sim
        .records()
        .iter()
        .filter(|r| r.at >= from && r.at < until && r.status == 200)
        .count();
    let utilisation = delivered as f64 / 50.0;
    let per_second: Vec<usize> = (0..7)
        .map(|i| {
            let a = from + Duration::from_secs(i) - Duration::from_secs(1);
            let b = a + Duration::from_secs(1);
            sim.records()
                .iter()
                .filter(|r| r.at >= a && r.at < b && r.status == 200)
                .count()
        })
        .collect();
    // The release build reaches 0.98 here (benchmark scenario 5); a debug
    // build on two shared cores delivers 0.88–0.96, one Redis round trip
    // per grant being slower. 0.85 still tells a shared budget from a
    // broken one: each replica on its own full budget would exceed the
    // window bound checked above, and the backends are checked below.
    assert!(
        utilisation >= 0.85,
        "three replicas together delivered {delivered} in 5 s ({utilisation:.2} of 10/s); \
         per second from 1 s before the window: {per_second:?}"
    );
    for gate in &gates {
        let s = status_doc(gate).await;
        assert_eq!(s["budget_backend"], "shared", "{s}");
        assert!(s["redis_calls"].as_u64().unwrap() > 0, "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_to_a_share_and_recovers() {
    // Three replicas and their floods: never beside another load test on
    // the two cores, or the window counts measure the machine.
    let _load = LOAD.lock().await;
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let sim = sim().await;
    let gates = replicas(&sim, &redis, "outage").await;
    let floods = flood_replicas(&gates, 6);
    // Redis goes away while the replicas are past their transition, on the
    // shared budget alone, with slots reserved ahead.
    let reached = wait_until_all_reached_redis(&gates).await;
    let steady = reached + TRANSITION + Duration::from_millis(500);
    wait_for_arrival_after(&sim, steady, "steady shared traffic").await;

    redis.kill();
    let killed = Instant::now();
    wait_for_backend(&gates, "fallback").await;
    for gate in &gates {
        let s = status_doc(gate).await;
        assert_eq!(s["budget_backend"], "fallback", "{s}");
        let metrics = metrics_text(&gate.admin).await;
        assert_eq!(
            metric(&metrics, "crmgate_redis_fallback", &[]),
            Some(1.0),
            "{metrics}"
        );
        let ready = client()
            .get(format!("{}/readyz", gate.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(
            ready.status(),
            200,
            "a Redis outage does not make crmgate unready"
        );
    }
    // The fallback budgets start a window after the switch (slots reserved
    // before it may still be arriving); count the two seconds after that.
    let (from, until) = (
        killed + Duration::from_secs(1),
        killed + Duration::from_secs(3),
    );
    wait_for_arrival_after(&sim, until, "two seconds of fallback traffic").await;

    redis.restart().await;
    wait_for_backend(&gates, "shared").await;
    // Keep the callers going through the transition back and into the
    // shared budget alone, so the CRM-side checks cover the rejoin; the
    // requests still queued when they stop (~2 s of slots) extend that.
    let rejoined = Instant::now();
    let after = rejoined + TRANSITION + Duration::from_millis(500);
    wait_for_arrival_after(&sim, after, "traffic past the rejoin").await;
    let answers = finish(floods).await;

    for gate in &gates {
        let s = status_doc(gate).await;
        assert_eq!(
            s["budget_backend"], "shared",
            "back to the shared budget: {s}"
        );
    }
    assert!(
        not_ok(&answers, 200).is_empty(),
        "every caller got 200: {:?}",
        not_ok(&answers, 200)
    );
    let during = sim
        .records()
        .iter()
        .filter(|r| r.at >= from && r.at < until && r.status == 200)
        .count();
    assert!(
        during >= 10,
        "requests kept flowing on the fallback budget: {during} in 2 s"
    );
    assert_within_the_limit(&sim);
}

/// The shared budget, driven directly: a connect that took 300 ms moves the
/// send that waited for it, so the slot a window later moves too — the same
/// rule as the local budget, on Redis time.
#[tokio::test]
async fn a_slow_connect_moves_the_shared_window() {
    // Three replicas and their floods: never beside another load test on
    // the two cores, or the window counts measure the machine.
    let _load = LOAD.lock().await;
    // The scheduler draws from the gateway's classes, not the simulator's.
    use crmgate::classify::Class;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let text = format!(
        "[limits]\nbackend = \"redis\"\ngeneral_per_second = 2\n[redis]\nurl = \"{}\"\nkey_prefix = \"connect\"\n\
         [[tenants]]\nname = \"acme\"\nsubdomain = \"acme\"\napi_key = \"k\"\n",
        redis.url()
    );
    let config = crmgate::config::Config::from_toml(&text, "test", &|_| None).unwrap();
    let shared = crmgate::scheduler::RedisBudget::new(&config);
    let first = shared
        .reserve(Class::General, None, u64::MAX)
        .await
        .expect("Redis answers")
        .wait;
    assert_eq!(first, Duration::ZERO);
    let second = shared
        .reserve(Class::General, None, u64::MAX)
        .await
        .unwrap()
        .wait;
    assert!(
        second > Duration::from_millis(450),
        "paced 510 ms apart: {second:?}"
    );
    // The first send's connection took 300 ms to open. Not an ordering
    // sleep: the 300 ms is the input, and it must pass on Redis's clock
    // (the script reads `TIME`), which a test cannot pause or advance.
    tokio::time::sleep(Duration::from_millis(300)).await;
    shared
        .delayed(0, Class::General, None, Duration::from_millis(300))
        .await;
    let third = shared
        .reserve(Class::General, None, u64::MAX)
        .await
        .unwrap()
        .wait;
    // Two slots per 1020 ms window, counted from when the first send could
    // have arrived (≈ 300 ms): the third is ≈ 1320 ms after the start, ≈
    // 1020 ms from now. Unmoved it would be ≈ 720 ms from now.
    assert!(
        third > Duration::from_millis(950),
        "third slot in {third:?}"
    );
    assert!(!shared.in_fallback());
}

/// A send that left late moves in the shared log from its slot to when it
/// left, and the next slot moves with it; a send before its slot (another
/// replica's, on time) stays where it is. On the test's clock, so exact.
#[tokio::test]
async fn a_late_departure_moves_only_its_own_slot_in_the_shared_log() {
    use crmgate::classify::Class;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let text = format!(
        "[limits]\nbackend = \"redis\"\ngeneral_per_second = 2\n[redis]\nurl = \"{}\"\nkey_prefix = \"departed\"\n\
         [[tenants]]\nname = \"acme\"\nsubdomain = \"acme\"\napi_key = \"k\"\n",
        redis.url()
    );
    let config = crmgate::config::Config::from_toml(&text, "test", &|_| None).unwrap();
    // 2 per 1020 ms (the window widened by the 20 ms jitter allowance):
    // paced 510 ms apart.
    const BASE: u64 = 1_000_000_000_000;
    let clock = Arc::new(AtomicU64::new(BASE));
    let shared = crmgate::scheduler::RedisBudget::with_clock(&config, clock.clone());
    let at = |ms: u64| clock.store(BASE + ms * 1000, Ordering::Relaxed);
    let reserve = || async {
        let r = shared
            .reserve(Class::General, None, u64::MAX)
            .await
            .expect("Redis answers");
        r.slot_us - BASE
    };
    at(0);
    assert_eq!(reserve().await, 0);
    let second = reserve().await;
    assert_eq!(second, 510_000);
    // The second send left 200 ms after its slot.
    at(710);
    shared
        .departed(
            0,
            Class::General,
            None,
            BASE + second,
            Duration::from_millis(200),
        )
        .await;
    at(800);
    // Paced from 710 ms: 1220 ms. Unmoved it would be 1020 ms (the first
    // send's window); had the first moved too, 1730 ms.
    assert_eq!(reserve().await, 1_220_000);
    assert!(!shared.in_fallback());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_under_load_stays_within_the_limit() {
    // Three replicas and their floods: never beside another load test on
    // the two cores, or the window counts measure the machine.
    let _load = LOAD.lock().await;
    let Some(mut set) = SentinelSet::start().await else {
        return;
    };
    let sim = sim().await;
    let topology = format!(
        "sentinels = [\"{}\"]\nsentinel_master = \"{}\"",
        set.sentinel_url(),
        set.name
    );
    let gates = replicas_on(&sim, &topology, "sentinel").await;
    let floods = flood_replicas(&gates, 6);
    let reached = wait_until_all_reached_redis(&gates).await;
    let steady = reached + TRANSITION + Duration::from_millis(500);
    wait_for_arrival_after(&sim, steady, "steady shared traffic").await;

    // The master dies mid-load; the Sentinel promotes the replica.
    let (old, new) = (set.master.port, set.replica.port);
    set.master.kill();
    wait_for_backend(&gates, "fallback").await;
    wait_until("the Sentinel to promote the replica", || {
        set.master_port() == Some(new)
    })
    .await;
    assert_ne!(old, new);
    wait_for_backend(&gates, "shared").await;
    let rejoined = Instant::now();
    wait_for_arrival_after(
        &sim,
        rejoined + TRANSITION + Duration::from_millis(500),
        "traffic past the rejoin",
    )
    .await;
    let answers = finish(floods).await;

    assert!(
        not_ok(&answers, 200).is_empty(),
        "every caller got 200: {:?}",
        not_ok(&answers, 200)
    );
    assert_within_the_limit(&sim);
    for gate in &gates {
        let s = status_doc(gate).await;
        assert_eq!(s["budget_backend"], "shared", "on the new master: {s}");
    }
    // The budget lives on the new master now.
    let keys = cli(new, &["KEYS", "sentinel:budget:*"]);
    assert!(keys.contains("sentinel:budget:{general}:"), "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_budget_through_a_cluster() {
    let _load = LOAD.lock().await;
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let sim = sim().await;
    let gates = replicas_on(&sim, &cluster.config_line(), "cluster").await;
    let floods = flood_replicas(&gates, 6);
    let reached = wait_until_all_reached_redis(&gates).await;
    let until = reached + TRANSITION + Duration::from_secs(3);
    wait_for_arrival_after(&sim, until, "shared traffic through the cluster").await;
    let answers = finish(floods).await;

    assert!(
        not_ok(&answers, 200).is_empty(),
        "not all 200: {:?}",
        not_ok(&answers, 200)
    );
    assert_within_the_limit(&sim);
    for gate in &gates {
        let s = status_doc(gate).await;
        assert_eq!(s["budget_backend"], "shared", "{s}");
    }
    // Both keys of the budget sit in one slot, on one node.
    let slot = |key: &str| cli(cluster.nodes[0].port, &["CLUSTER", "KEYSLOT", key]);
    let holders: Vec<u16> = cluster
        .nodes
        .iter()
        .filter(|n| cli(n.port, &["KEYS", "cluster:budget:*"]).contains("{general}"))
        .map(|n| n.port)
        .collect();
    assert_eq!(holders.len(), 1, "one node holds the general budget");
    assert_eq!(
        slot("cluster:budget:{general}:default"),
        slot("cluster:budget:{general}:default:log")
    );
}
