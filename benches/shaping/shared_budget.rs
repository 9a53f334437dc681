//! Scenario 5: three replicas sharing one budget through a real Redis.
//!
//! A private `redis-server` (loopback, free port, no persistence; the
//! tests' `RedisServer`), one
//! strict simulator, and three gateways with `limits.backend = "redis"`.
//! They all leave through 127.0.0.1, so the simulator counts them as one
//! egress IP, as the CRM would count replicas behind one NAT. The callers
//! are spread over the three; the figures come from the simulator's records
//! and the gateways' `/status`.

use std::time::Duration;

use crmgate::sim::{max_in_window, Class, Received};
use serde::Serialize;
use tokio::time::Instant;

use crate::common;
use crate::end_to_end::{LATENCY, LIMIT};
use crate::harness::{self, Gate, Load, ACME_CLIENT};
use crate::measure::{self, Answers, Delivered};

/// Longest the callers' queued requests may take to drain after the run
/// (50 queued at ~10/s take ~5 s).
const DRAIN_GRACE: Duration = Duration::from_secs(20);
/// Replicas sharing the budget.
pub const REPLICAS: usize = 3;
/// At start each replica keeps within its fallback share for 2.5 s after
/// it first reaches Redis (`TRANSITION` in the scheduler); the steady part
/// starts this long after the callers do.
pub const SKIP: Duration = Duration::from_secs(3);

/// One replica as it reported itself at the end of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Replica {
    /// Callers sending to it.
    pub callers: usize,
    /// `/status` `budget_backend`: "shared" unless it fell back.
    pub backend: String,
    /// `/status` `redis_calls`: Redis round trips it made.
    pub redis_calls: u64,
    /// `crmgate_upstream_connections_total`: connections it opened to the
    /// CRM (each one is also reported to Redis, once per lane).
    pub connections_opened: u64,
    /// What its callers got.
    pub answers: Answers,
}

/// Scenario 5's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SharedBudget {
    /// Which Redis: "one Redis", "a TLS Redis with a password", ….
    pub through: String,
    pub replicas: usize,
    pub callers: usize,
    pub seconds: f64,
    /// Seconds skipped at the start before the steady part.
    pub skipped_s: f64,
    /// Arrivals the CRM accepted during the skipped start-up part.
    pub startup_accepted: usize,
    /// The CRM's view of the steady part (arrivals from `skipped_s` on).
    pub steady: Delivered,
    /// The CRM's view of the whole run, start-up included.
    pub whole: Delivered,
    /// Seconds the callers' last requests took to drain after the run.
    pub drain_s: f64,
    /// 503s the CRM answered, run and drain.
    pub rejected_503: usize,
    /// When they arrived (seconds after the callers started).
    pub rejected_at_s: Vec<f64>,
    /// Most general arrivals in any 1000 ms window, run and drain.
    pub max_in_1s: usize,
    /// Requests the simulator received from the replicas, run and drain,
    /// any status (the divisor below).
    pub received: usize,
    /// Sum of the replicas' `redis_calls`.
    pub redis_calls: u64,
    /// `redis_calls / received`.
    pub round_trips_per_request: f64,
    pub per_replica: Vec<Replica>,
}

/// Runs the scenario, or returns why it could not (no redis-server).
pub async fn shared_budget(callers: usize, run: Duration) -> Result<SharedBudget, String> {
    let redis = common::RedisServer::start()
        .await
        .ok_or("redis-server is not on PATH (apt-get install redis-server)")?;
    let topology = format!("url = \"{}\"", redis.url());
    Ok(replicas(callers, run, &topology, "one Redis").await)
}

/// The scenario through the Redis that `topology` (`[redis]` lines: a URL
/// with what it needs, such as `ca_file`) names; `through` says which, for
/// the report.
pub async fn replicas(
    callers: usize,
    run: Duration,
    topology: &str,
    through: &str,
) -> SharedBudget {
    let sim = harness::sim(LATENCY).await;
    // The default `redis.timeout` (250 ms); a prefix of its own so nothing
    // else on this Redis shares the budget.
    let prefix = format!(
        "crmgate-bench-{}-{}",
        std::process::id(),
        common::free_port()
    );
    let sections =
        format!("[redis]\n{topology}\nexpected_replicas = {REPLICAS}\nkey_prefix = \"{prefix}\"\n");
    let mut gates = Vec::new();
    for _ in 0..REPLICAS {
        let config =
            harness::gateway_config_with(&sim.base_url(), "backend = \"redis\"", &sections);
        gates.push(Gate::start(config).await);
    }
    let client = harness::client();

    // Callers spread as evenly as they go: 50 → 17, 17, 16.
    let shares: Vec<usize> = (0..REPLICAS)
        .map(|i| callers / REPLICAS + usize::from(i < callers % REPLICAS))
        .collect();
    let started = Instant::now();
    let loads: Vec<Load> = gates
        .iter()
        .zip(&shares)
        .filter(|(_, n)| **n > 0)
        .map(|(g, n)| Load::flood(&client, &g.url, ACME_CLIENT, *n))
        .collect();
    tokio::time::sleep(run).await;
    let records = sim.records();
    // Then let the callers' queued requests through instead of abandoning
    // them: an abandoned waiter can leave a reserved slot unused (a call
    // without a request), which would blur the round-trip count.
    let drain_from = Instant::now();
    for load in &loads {
        load.wind_down();
    }
    let mut answers = Vec::new();
    for load in loads {
        answers.push(measure::answers(&load.finish(DRAIN_GRACE).await));
    }
    let drain_s = drain_from.elapsed().as_secs_f64();
    let mut statuses = Vec::new();
    for g in &gates {
        statuses.push((
            status(&client, &g.admin).await,
            connections_opened(&client, &g.admin).await,
        ));
    }
    let all = sim.records();
    drop(client);
    futures_util::future::join_all(gates.into_iter().map(Gate::shutdown)).await;
    sim.shutdown();

    let skip = SKIP.min(run / 2);
    let steady: Vec<Received> = records
        .iter()
        .filter(|r| r.at >= started + skip)
        .cloned()
        .collect();
    let startup_accepted = records
        .iter()
        .filter(|r| r.at < started + skip && r.class == Class::General && r.status != 503)
        .count();
    let received = all.len();
    let all_general: Vec<&Received> = all.iter().filter(|r| r.class == Class::General).collect();
    let rejected_at_s: Vec<f64> = all_general
        .iter()
        .filter(|r| r.status == 503)
        .map(|r| r.at.saturating_duration_since(started).as_secs_f64())
        .collect();
    let rejected_503 = rejected_at_s.len();
    let max_in_1s = max_in_window(&all, Duration::from_secs(1))
        .into_iter()
        .filter(|((_, class), _)| *class == Class::General)
        .map(|(_, n)| n)
        .max()
        .unwrap_or(0);
    let per_replica: Vec<Replica> = statuses
        .into_iter()
        .zip(shares)
        .zip(answers)
        .map(|(((s, connections_opened), callers), answers)| Replica {
            callers,
            backend: s["budget_backend"].as_str().unwrap_or("?").to_string(),
            redis_calls: s["redis_calls"].as_u64().unwrap_or(0),
            connections_opened,
            answers,
        })
        .collect();
    let redis_calls = per_replica.iter().map(|r| r.redis_calls).sum::<u64>();
    SharedBudget {
        through: through.to_string(),
        replicas: REPLICAS,
        callers,
        seconds: run.as_secs_f64(),
        skipped_s: skip.as_secs_f64(),
        startup_accepted,
        steady: measure::delivered(&steady, LIMIT),
        whole: measure::delivered(&records, LIMIT),
        drain_s,
        rejected_503,
        rejected_at_s,
        max_in_1s,
        received,
        redis_calls,
        round_trips_per_request: redis_calls as f64 / received.max(1) as f64,
        per_replica,
    }
}

/// A gateway's `/status`, or `null` if it would not answer.
async fn status(client: &reqwest::Client, admin: &str) -> serde_json::Value {
    let resp = client.get(format!("{admin}/status")).send().await;
    match resp {
        Ok(r) => r.json().await.unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::Null,
    }
}

/// The sum of `crmgate_upstream_connections_total` over its egresses (0 if
/// the metrics would not answer).
async fn connections_opened(client: &reqwest::Client, admin: &str) -> u64 {
    let Ok(resp) = client.get(format!("{admin}/metrics")).send().await else {
        return 0;
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("crmgate_upstream_connections_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Three replicas together, after the start-up transition (issue target).
pub const TARGET_UTILISATION_REDIS: f64 = 0.9;

/// Prints scenario 5's table and verdicts.
pub fn print(s: &SharedBudget) {
    print_against(s, TARGET_UTILISATION_REDIS, "5")
}

/// [`print`] against another utilisation goal (the TLS Redis's), under
/// another section number.
pub fn print_against(s: &SharedBudget, target: f64, section: &str) {
    let (st, wh) = (&s.steady, &s.whole);
    println!(
        "\n== {section}. Shared budget: {} replicas through {}",
        s.replicas, s.through
    );
    println!(
        "   {} callers over {} gateways ({}), {:.0} s, CRM latency 20–60 ms, limit {}/s for all of them",
        s.callers,
        s.replicas,
        s.per_replica
            .iter()
            .map(|r| r.callers.to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        s.seconds,
        LIMIT
    );
    println!(
        "   steady part: from {:.1} s on (start-up keeps each replica within its fallback share)",
        s.skipped_s
    );
    println!(
        "   {:<38} {:>12}   {:.2}/s",
        format!("accepted in the first {:.1} s", s.skipped_s),
        s.startup_accepted,
        s.startup_accepted as f64 / s.skipped_s
    );
    println!(
        "   {:<38} {:>12}",
        "accepted by the CRM (steady)", st.accepted
    );
    println!(
        "   {:<38} {:>12.3}",
        "delivered rate (req/s, steady)", st.rate
    );
    println!(
        "   {:<38} {:>12.4}   target ≥ {target:.2}: {}",
        "combined utilisation (steady)",
        st.utilisation,
        measure::verdict(st.utilisation >= target)
    );
    println!(
        "   {:<38} {:>12.4}",
        "combined utilisation (whole run)", wh.utilisation
    );
    println!(
        "   {:<38} {:>12}   target 0: {}",
        "503s answered by the CRM",
        s.rejected_503,
        measure::verdict(s.rejected_503 == 0)
    );
    measure::print_rejected_at(&s.rejected_at_s);
    println!(
        "   {:<38} {:>12}   limit {}",
        "most arrivals in any 1000 ms", s.max_in_1s, LIMIT
    );
    println!(
        "   {:<38} {:>12.2}   min {:.1} / p50 {:.1} / p95 {:.1} / max {:.1}",
        "gap between accepted arrivals (ms)",
        st.mean_gap_ms,
        st.gap_ms.min,
        st.gap_ms.p50,
        st.gap_ms.p95,
        st.gap_ms.max
    );
    println!(
        "   {:<38} {:>12.3}   {} calls / {} requests received",
        "Redis round trips per request", s.round_trips_per_request, s.redis_calls, s.received
    );
    println!(
        "   (503s, the 1000 ms maximum and round trips include the {:.1} s drain of the callers' last requests)",
        s.drain_s
    );
    for (i, r) in s.per_replica.iter().enumerate() {
        println!(
            "   replica {}: {:>2} callers, backend {:<8} redis_calls {:>5}, CRM connections opened {}, answers {} ok, other {:?}",
            i + 1,
            r.callers,
            r.backend,
            r.redis_calls,
            r.connections_opened,
            r.answers.ok_200,
            r.answers.other
        );
    }
}
