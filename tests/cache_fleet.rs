//! The fleet cache's Redis store against a real redis-server (and a real
//! Cluster): an answer stored by one replica is found by another, with its
//! age on Redis's clock; a write to a dictionary drops its entries for every
//! replica; the byte bound holds by evicting what expires soonest; the fill
//! lock lets one replica read while the others wait for its entry; with
//! Redis down every call returns at once as "unavailable".
//!
//! Each test starts its own redis-server on a free port; without one on PATH
//! they skip loudly (or fail where CI requires Redis).
mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use common::*;
use crmgate::cache::fleet::{Fill, FleetStore, Lookup};
use crmgate::cache::key::Key;
use crmgate::cache::store::BufferedAnswer;
use crmgate::config::Config;
use crmgate::redis_link::RedisLink;

/// One replica's store on the Redis that `topology` names.
fn store(topology: &str, max_bytes: u64) -> FleetStore {
    let text = format!(
        "[limits]\nbackend = \"redis\"\n[redis]\n{topology}\ntimeout = \"2s\"\nkey_prefix = \"fc\"\n\
         [[tenants]]\nname = \"acme\"\nsubdomain = \"acme\"\napi_key = \"k\"\n"
    );
    let config = Config::from_toml(&text, "test", &|_| None).unwrap();
    FleetStore::new(Arc::new(RedisLink::new(&config.redis)), "fc", max_bytes)
}

fn key(path: &str) -> Key {
    Key::new(&"acme".into(), path, Some("limit=100"))
}

fn answer(body: &str) -> BufferedAnswer {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.append("x-extra", HeaderValue::from_static("a"));
    headers.append("x-extra", HeaderValue::from_static("b"));
    BufferedAnswer {
        status: StatusCode::OK,
        headers,
        body: Bytes::from(body.to_string()),
    }
}

fn generation(lookup: Lookup) -> String {
    match lookup {
        Lookup::Miss { generation } => generation,
        other => panic!("expected a miss, got {other:?}"),
    }
}

/// Stored by one replica, found by another; a write drops it for both.
async fn shared_and_dropped_by_a_write(topology: &str) {
    let (a, b) = (store(topology, 1 << 20), store(topology, 1 << 20));
    let statuses = key("/api/v5/reference/statuses");
    let sites = key("/api/v5/reference/sites");
    let gen = generation(a.lookup(&statuses).await);
    let body = r#"{"success":true,"statuses":{}}"#;
    assert!(
        a.put(
            &statuses,
            &answer(body),
            Duration::from_secs(60),
            Duration::ZERO,
            &gen
        )
        .await
    );
    let sites_gen = generation(a.lookup(&sites).await);
    assert!(
        a.put(
            &sites,
            &answer("{}"),
            Duration::from_secs(60),
            Duration::ZERO,
            &sites_gen
        )
        .await
    );
    let Lookup::Found { entry: e, .. } = b.lookup(&statuses).await else {
        panic!("the other replica finds it");
    };
    assert!(e.fresh() && e.age < Duration::from_secs(5), "{e:?}");
    assert_eq!(e.answer.body, body);
    assert_eq!(e.answer.status, 200);
    let extra: Vec<_> = e.answer.headers.get_all("x-extra").iter().collect();
    assert_eq!(extra, ["a", "b"], "headers keep order and repeats");

    // A write to statuses (through replica b): dead for a, and a fill that
    // started before the write is not stored.
    b.invalidate("acme", "statuses").await;
    let new_gen = generation(a.lookup(&statuses).await);
    assert_ne!(new_gen, gen);
    assert!(
        !a.put(
            &statuses,
            &answer(body),
            Duration::from_secs(60),
            Duration::ZERO,
            &gen
        )
        .await,
        "a read from before the write is not stored"
    );
    assert!(
        matches!(b.lookup(&sites).await, Lookup::Found { .. }),
        "another dictionary keeps its entry"
    );
}

#[tokio::test]
async fn an_entry_is_shared_and_a_write_drops_it_fleet_wide() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    shared_and_dropped_by_a_write(&format!("url = \"{}\"", redis.url())).await;
}

#[tokio::test]
async fn the_same_on_a_cluster() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    shared_and_dropped_by_a_write(&cluster.config_line()).await;
}

#[tokio::test]
async fn a_stale_entry_is_kept_for_its_grace_then_gone() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = store(&format!("url = \"{}\"", redis.url()), 1 << 20);
    let k = key("/api/v5/reference/statuses");
    let gen = generation(s.lookup(&k).await);
    // Fresh for 1 ms, kept for a minute more.
    assert!(
        s.put(
            &k,
            &answer("{}"),
            Duration::from_millis(1),
            Duration::from_secs(60),
            &gen
        )
        .await
    );
    let stale = wait_for("the entry to pass its TTL", || async {
        match s.lookup(&k).await {
            Lookup::Found { entry, .. } if !entry.fresh() => Some(entry),
            Lookup::Found { .. } => None,
            other => panic!("kept for its grace: {other:?}"),
        }
    })
    .await;
    assert_eq!(stale.remaining(), Duration::ZERO);
    // Without a grace it is gone with its TTL (Redis expires it).
    assert!(
        s.put(
            &k,
            &answer("{}"),
            Duration::from_millis(1),
            Duration::ZERO,
            &gen
        )
        .await
    );
    wait_for("the entry to expire", || async {
        matches!(s.lookup(&k).await, Lookup::Miss { .. }).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_byte_bound_evicts_what_expires_soonest() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let s = store(&format!("url = \"{}\"", redis.url()), 4000);
    let body = "x".repeat(1000);
    // Five entries of ~1.2 kB; the first expires soonest, the last latest.
    let keys: Vec<Key> = (0..5)
        .map(|i| key(&format!("/api/v5/reference/dict{i}")))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        let gen = generation(s.lookup(k).await);
        assert!(
            s.put(
                k,
                &answer(&body),
                Duration::from_secs(60 + i as u64 * 10),
                Duration::ZERO,
                &gen
            )
            .await
        );
    }
    let held: u64 = cli(redis.port, &["GET", "fc:{cache}:bytes"])
        .trim()
        .parse()
        .unwrap();
    assert!(held <= 4000 && held > 2000, "held {held} bytes");
    let mut found = Vec::new();
    for k in &keys {
        found.push(matches!(s.lookup(k).await, Lookup::Found { .. }));
    }
    assert_eq!(
        found,
        [false, false, true, true, true],
        "the soonest to expire went first"
    );
    // Larger than the bound: not stored at all.
    let big = key("/api/v5/reference/big");
    let gen = generation(s.lookup(&big).await);
    assert!(
        !s.put(
            &big,
            &answer(&"y".repeat(5000)),
            Duration::from_secs(60),
            Duration::ZERO,
            &gen
        )
        .await
    );
}

#[tokio::test]
async fn one_replica_fills_while_the_others_wait_for_its_entry() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let topology = format!("url = \"{}\"", redis.url());
    let (a, b) = (
        store(&topology, 1 << 20),
        Arc::new(store(&topology, 1 << 20)),
    );
    let k = key("/api/v5/reference/statuses");
    let gen = generation(a.lookup(&k).await);
    let Fill::Mine(token) = a.fill(&k).await else {
        panic!("the first replica fills");
    };
    assert_eq!(b.fill(&k).await, Fill::Theirs);
    let waiter = {
        let (b, k) = (b.clone(), k.clone());
        tokio::spawn(async move { b.wait_for_fill(&k).await })
    };
    assert!(
        a.put(
            &k,
            &answer("{\"filled\":1}"),
            Duration::from_secs(60),
            Duration::ZERO,
            &gen
        )
        .await
    );
    a.release(&k, &token).await;
    let Lookup::Found { entry: e, .. } = waiter.await.unwrap() else {
        panic!("the waiter gets the filler's entry");
    };
    assert_eq!(e.answer.body, "{\"filled\":1}");

    // A fill that ends without an entry (the CRM failed) frees the waiters
    // at once, with a miss: they read the CRM themselves.
    let other = key("/api/v5/reference/sites");
    let Fill::Mine(token) = a.fill(&other).await else {
        panic!("free lock");
    };
    let waiter = {
        let (b, k) = (b.clone(), other.clone());
        tokio::spawn(async move { b.wait_for_fill(&k).await })
    };
    a.release(&other, &token).await;
    assert!(matches!(waiter.await.unwrap(), Lookup::Miss { .. }));
    assert!(matches!(b.fill(&other).await, Fill::Mine(_)), "released");
}

#[tokio::test]
async fn with_redis_down_every_call_returns_at_once() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let s = store(&format!("url = \"{}\"", redis.url()), 1 << 20);
    let k = key("/api/v5/reference/statuses");
    assert!(matches!(s.lookup(&k).await, Lookup::Miss { .. }));
    redis.kill();
    // The first call finds out (within redis.timeout); then none waits.
    assert!(matches!(s.lookup(&k).await, Lookup::Unavailable));
    assert!(!s.available());
    let started = tokio::time::Instant::now();
    assert!(matches!(s.lookup(&k).await, Lookup::Unavailable));
    assert_eq!(s.fill(&k).await, Fill::Unavailable);
    assert!(matches!(s.wait_for_fill(&k).await, Lookup::Unavailable));
    assert!(
        !s.put(
            &k,
            &answer("{}"),
            Duration::from_secs(1),
            Duration::ZERO,
            "0"
        )
        .await
    );
    // No call waits on Redis while it is down: all of them together took
    // less than one redis.timeout (2 s), the least one Redis call may wait.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// Three replicas sharing budgets and cache through `redis`.
async fn fleet(sim: &crmgate::sim::Simulator, redis: &RedisServer, cache: &str) -> Vec<Gate> {
    let extra = format!(
        "[limits]\nbackend = \"redis\"\n[redis]\nurl = \"{}\"\nexpected_replicas = 3\nkey_prefix = \"fleet\"\ntimeout = \"1s\"\n[cache]\n{cache}\n",
        redis.url()
    );
    let mut gates = Vec::new();
    for _ in 0..3 {
        gates.push(Gate::start(config(&config_text(sim, &extra))).await);
    }
    wait_until("every replica to reach Redis", || {
        gates.iter().all(|g| g.gateway.backend_state() == "shared")
    })
    .await;
    gates
}

const STATUSES: &str = "/api/v5/reference/statuses";

/// `per_gate` concurrent reads of the statuses through each replica; their
/// `X-Crmgate-Cache` values.
async fn read_everywhere(gates: &[Gate], per_gate: usize) -> Vec<String> {
    let c = client();
    let mut tasks = Vec::new();
    for gate in gates {
        for i in 0..per_gate {
            let (c, url) = (c.clone(), gate.url.clone());
            tasks.push(tokio::spawn(async move {
                let resp = c
                    .get(format!("{url}{STATUSES}"))
                    .header("X-API-KEY", ACME_CLIENT)
                    .header("X-Request-Id", format!("r{i}"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
                resp.headers()
                    .get("x-crmgate-cache")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default()
            }));
        }
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

fn crm_reads(sim: &crmgate::sim::Simulator) -> usize {
    sim.records()
        .iter()
        .filter(|r| r.method == "GET" && r.path == STATUSES)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_read_a_reference_once_and_a_write_drops_it_for_all() {
    let _load = LOAD.lock().await;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let sim = sim().await;
    // A local TTL of 1 ms: every read after the first asks Redis, so what
    // Redis holds (and a write's effect on it) is what each replica serves.
    let gates = fleet(&sim, &redis, "local_ttl = \"1ms\"").await;
    let results = read_everywhere(&gates, 10).await;
    assert_eq!(
        crm_reads(&sim),
        1,
        "one CRM read for the fleet: {results:?}"
    );
    assert!(results.iter().any(|r| r == "shared"), "{results:?}");
    let waits: u64 = gates
        .iter()
        .map(|g| {
            let doc = status_now(g);
            let t = doc["tenants"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == "acme")
                .unwrap()
                .clone();
            t["cache_last_minute"]["fill_waits_last_minute"]
                .as_u64()
                .unwrap()
                + t["cache_last_minute"]["shared_hits_last_minute"]
                    .as_u64()
                    .unwrap()
        })
        .sum();
    assert!(waits > 0, "the other replicas were served by the fleet");
    let metrics = metrics_text(&gates[1].admin).await;
    assert!(
        metrics.contains("crmgate_cache_fill_waits_total{tenant=\"acme\"}"),
        "{metrics}"
    );

    // A write through one replica: the others read the CRM again, once.
    let resp = client()
        .post(format!("{}{STATUSES}/fresh/edit", gates[0].url))
        .header("X-API-KEY", ACME_CLIENT)
        .form(&[("status", "{\"name\":\"Fresh\"}")])
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    // The invalidation reaches Redis in the background: poll for its effect.
    let after = wait_for("a read that sees the write", || async {
        let out = Call::get(STATUSES, Some(ACME_CLIENT))
            .send(&client(), &gates[2].url, "after")
            .await;
        out.body.contains("Fresh").then_some(out)
    })
    .await;
    assert_eq!(after.status, 200);
    read_everywhere(&gates, 5).await;
    assert_eq!(crm_reads(&sim), 2, "one more CRM read after the write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_each_replica_caches_locally() {
    let _load = LOAD.lock().await;
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let sim = sim().await;
    let gates = fleet(&sim, &redis, "").await;
    redis.kill();
    wait_until("every replica to notice", || {
        gates
            .iter()
            .all(|g| g.gateway.backend_state() == "fallback")
    })
    .await;
    let results = read_everywhere(&gates, 5).await;
    assert!(
        !results.iter().any(|r| r == "shared"),
        "no fleet answers without Redis: {results:?}"
    );
    assert_eq!(crm_reads(&sim), 3, "one read per replica: {results:?}");
    let again = read_everywhere(&gates, 2).await;
    assert!(again.iter().all(|r| r == "hit"), "{again:?}");
}
