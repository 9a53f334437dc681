//! Shared budgets through a real `redis-server`: several gateways leaving
//! through one IP stay within one budget, survive a Redis outage on their
//! fallback share, and return to the shared budget when Redis is back.
//!
//! Each test starts its own redis-server on a free port; without one on PATH
//! the tests skip loudly (CI sets CRMGATE_REQUIRE_REDIS=1 and installs it).
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use crmgate::sim::{max_in_window, Class, Simulator};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

/// Three replicas in front of `sim`, sharing budgets through `redis`.
async fn replicas(sim: &Simulator, redis: &RedisServer, prefix: &str) -> Vec<Gate> {
    let extra = format!(
        "[limits]\nbackend = \"redis\"\n[redis]\nurl = \"{}\"\nexpected_replicas = 3\nkey_prefix = \"{prefix}\"\ntimeout = \"100ms\"\n",
        redis.url()
    );
    let mut gates = Vec::new();
    for _ in 0..3 {
        gates.push(Gate::start(config(&config_text(sim, &extra))).await);
    }
    gates
}

/// Callers sending general GETs back to back to every gate until stopped.
/// Returns each answer's status and when it came.
fn flood(
    gates: &[Gate],
    per_gate: usize,
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<Vec<(u16, Instant)>>> {
    let mut tasks = Vec::new();
    for gate in gates {
        for _ in 0..per_gate {
            let (url, stop, c) = (gate.url.clone(), stop.clone(), client());
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let resp = c
                        .get(format!("{url}/api/v5/orders"))
                        .header("X-API-KEY", ACME_CLIENT)
                        .send()
                        .await;
                    seen.push((resp.map_or(0, |r| r.status().as_u16()), Instant::now()));
                }
                seen
            }));
        }
    }
    tasks
}

async fn collect(tasks: Vec<JoinHandle<Vec<(u16, Instant)>>>) -> Vec<(u16, Instant)> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn status(gate: &Gate) -> serde_json::Value {
    json(
        client()
            .get(format!("{}/status", gate.admin))
            .send()
            .await
            .unwrap(),
    )
    .await
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
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let sim = sim().await;
    let gates = replicas(&sim, &redis, "share").await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = flood(&gates, 8, stop.clone());
    // The first seconds run on each replica's fallback share while the
    // others may not have reached Redis yet; measure after that.
    sleep(Duration::from_secs(3)).await;
    let from = Instant::now();
    sleep(Duration::from_secs(3)).await;
    let until = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let answers = collect(tasks).await;

    assert!(
        answers.iter().all(|(s, _)| *s == 200),
        "not all 200: {:?}",
        answers
            .iter()
            .filter(|(s, _)| *s != 200)
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_within_the_limit(&sim);
    let delivered = sim
        .records()
        .iter()
        .filter(|r| r.at >= from && r.at < until && r.status == 200)
        .count();
    let utilisation = delivered as f64 / 30.0;
    assert!(
        utilisation >= 0.9,
        "three replicas together delivered {delivered} in 3 s ({utilisation:.2} of 10/s)"
    );
    for gate in &gates {
        let s = status(gate).await;
        assert_eq!(s["budget_backend"], "shared", "{s}");
        assert!(s["redis_calls"].as_u64().unwrap() > 0, "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_falls_back_to_a_share_and_recovers() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let sim = sim().await;
    let gates = replicas(&sim, &redis, "outage").await;
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = flood(&gates, 6, stop.clone());
    sleep(Duration::from_secs(3)).await;

    redis.kill();
    let killed = Instant::now();
    sleep(Duration::from_secs(3)).await;
    for gate in &gates {
        let s = status(gate).await;
        assert_eq!(s["budget_backend"], "fallback", "{s}");
        let metrics = client()
            .get(format!("{}/metrics", gate.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.lines().any(|l| l == "crmgate_redis_fallback 1"),
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
    let during = sim
        .records()
        .iter()
        .filter(|r| r.at >= killed + Duration::from_secs(1) && r.status == 200)
        .count();
    assert!(
        during >= 10,
        "requests kept flowing on the fallback budget: {during} in 2 s"
    );

    redis.restart().await;
    sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let answers = collect(tasks).await;
    for gate in &gates {
        let s = status(gate).await;
        assert_eq!(
            s["budget_backend"], "shared",
            "back to the shared budget: {s}"
        );
    }
    assert!(
        answers.iter().all(|(s, _)| *s == 200),
        "every caller got 200"
    );
    assert_within_the_limit(&sim);
}

/// The shared budget, driven directly: a connect that took 300 ms moves the
/// send that waited for it, so the slot a window later moves too — the same
/// rule as the local budget, on Redis time.
#[tokio::test]
async fn a_slow_connect_moves_the_shared_window() {
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
    let shared = crmgate::scheduler::Shared::new(&config);
    let (_, first) = shared
        .reserve(Class::General, None, u64::MAX)
        .await
        .expect("Redis answers");
    assert_eq!(first, Duration::ZERO);
    let (_, second) = shared
        .reserve(Class::General, None, u64::MAX)
        .await
        .unwrap();
    assert!(
        second > Duration::from_millis(450),
        "paced 510 ms apart: {second:?}"
    );
    // The first send's connection took 300 ms to open.
    sleep(Duration::from_millis(300)).await;
    shared
        .delayed(0, Class::General, None, Duration::from_millis(300))
        .await;
    let (_, third) = shared
        .reserve(Class::General, None, u64::MAX)
        .await
        .unwrap();
    // Two slots per 1020 ms window, counted from when the first send could
    // have arrived (≈ 300 ms): the third is ≈ 1320 ms after the start, ≈
    // 1020 ms from now. Unmoved it would be ≈ 720 ms from now.
    assert!(
        third > Duration::from_millis(950),
        "third slot in {third:?}"
    );
    assert!(!shared.in_fallback());
}
