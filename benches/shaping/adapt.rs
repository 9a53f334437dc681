//! Scenario 10, `adapt`: how adaptation tells a lower real limit from noise,
//! at default settings, against the strict simulator (20–60 ms latency):
//!
//! - a) the CRM really allows 7/s (another sender uses 3 of its 10/s; the
//!   simulator's per-IP limit is 7): accepted rate and 503 share from 10 s on;
//! - b) 30 % of requests answered 503 at random: accepted rate, caller errors;
//! - c) a 20 s outage answering 503 to everything: most sends per request,
//!   what callers whose deadline passed got (every other caller sends
//!   `X-Crmgate-Max-Wait: 10s`), and how long after the outage the full rate
//!   was back;
//! - d) no 503 at all: utilisation, as the `utilisation` scenario.
//!
//! It owns its callers (they read `X-Crmgate-Attempts` and `Retry-After`)
//! and judges the CRM by the simulator's records. It never asserts: the
//! report says MET or MISSED against the targets.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crmgate::sim::{Class, Received, Simulator};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::end_to_end::{self, LATENCY, LIMIT};
use crate::harness::{self, Gate, ACME_CLIENT, PATH};
use crate::measure::verdict;

/// What one caller saw for one request.
#[derive(Debug, Clone)]
struct Seen {
    status: u16,
    attempts: Option<u32>,
    retry_after: bool,
    /// RetailCRM-shaped error JSON (`"success": false` and an `errorMsg`).
    json_error: bool,
}

/// Callers that repeat the bench request back to back.
struct Callers {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Callers {
    /// `n` callers; every other one sends `X-Crmgate-Max-Wait: {max_wait}`
    /// when given.
    fn start(client: &reqwest::Client, gate: &str, n: usize, max_wait: Option<&str>) -> Callers {
        let stop = CancellationToken::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let url = format!("{gate}{PATH}");
        let tasks = (0..n)
            .map(|i| {
                let (client, url, stop, seen) =
                    (client.clone(), url.clone(), stop.clone(), seen.clone());
                let wait = max_wait.filter(|_| i % 2 == 1).map(str::to_owned);
                tokio::spawn(async move {
                    while !stop.is_cancelled() {
                        let s = one(&client, &url, wait.as_deref()).await;
                        seen.lock().unwrap_or_else(|p| p.into_inner()).push(s);
                    }
                })
            })
            .collect();
        Callers { stop, tasks, seen }
    }

    /// No new requests; waits for the answers to those made (at most `grace`).
    async fn finish(self, grace: Duration) -> Vec<Seen> {
        self.stop.cancel();
        let deadline = Instant::now() + grace;
        for t in self.tasks {
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                eprintln!("warning: a caller was still waiting after {grace:?}");
            }
        }
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.clone()
    }
}

async fn one(client: &reqwest::Client, url: &str, max_wait: Option<&str>) -> Seen {
    let mut req = client.get(url).header("X-API-KEY", ACME_CLIENT);
    if let Some(w) = max_wait {
        req = req.header("X-Crmgate-Max-Wait", w);
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let h = resp.headers();
            let attempts = h
                .get("x-crmgate-attempts")
                .and_then(|v| v.to_str().ok()?.parse().ok());
            let retry_after = h.contains_key("retry-after");
            let body = resp.bytes().await.unwrap_or_default();
            let json_error = serde_json::from_slice::<serde_json::Value>(&body)
                .is_ok_and(|v| v["success"] == false && v["errorMsg"].is_string());
            Seen {
                status,
                attempts,
                retry_after,
                json_error,
            }
        }
        Err(_) => Seen {
            status: 0,
            attempts: None,
            retry_after: false,
            json_error: false,
        },
    }
}

/// The CRM's general-class arrivals in `[from, to)`: accepted, refused.
fn count(records: &[Received], from: Instant, to: Instant) -> (usize, usize) {
    let part = records
        .iter()
        .filter(|r| r.class == Class::General && r.at >= from && r.at < to);
    part.fold((0, 0), |(ok, no), r| {
        if r.status == 503 {
            (ok, no + 1)
        } else {
            (ok + 1, no)
        }
    })
}

/// How callers fared.
#[derive(Debug, Clone, Serialize)]
pub struct Callers503 {
    pub answers: usize,
    pub ok_200: usize,
    /// Non-200 answers (caller errors), by status.
    pub errors: Vec<(u16, usize)>,
    /// Most sends to the CRM for one request (`X-Crmgate-Attempts`).
    pub max_attempts_seen: u32,
    /// 503 answers that were RetailCRM-shaped JSON with `Retry-After`.
    pub errors_503_json_retry_after: usize,
    /// 503 answers given before `retry.max_attempts` sends (the deadline).
    pub errors_503_before_max_attempts: usize,
}

fn callers(seen: &[Seen], max_attempts: u32) -> Callers503 {
    let mut errors = std::collections::BTreeMap::<u16, usize>::new();
    for s in seen.iter().filter(|s| s.status != 200) {
        *errors.entry(s.status).or_default() += 1;
    }
    let e503: Vec<&Seen> = seen.iter().filter(|s| s.status == 503).collect();
    Callers503 {
        answers: seen.len(),
        ok_200: seen.iter().filter(|s| s.status == 200).count(),
        errors: errors.into_iter().collect(),
        max_attempts_seen: seen.iter().filter_map(|s| s.attempts).max().unwrap_or(0),
        errors_503_json_retry_after: e503
            .iter()
            .filter(|s| s.json_error && s.retry_after)
            .count(),
        errors_503_before_max_attempts: e503
            .iter()
            .filter(|s| s.attempts.unwrap_or(0) < max_attempts)
            .count(),
    }
}

/// One adaptation scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: &'static str,
    pub callers: usize,
    pub seconds: f64,
    /// The span measured (s after the first arrival).
    pub measured_from_s: f64,
    pub measured_to_s: f64,
    /// Accepted arrivals per second in that span.
    pub accepted_per_s: f64,
    /// 503s ÷ arrivals in that span.
    pub share_503: f64,
    pub refused_503: usize,
    pub callers_saw: Callers503,
    /// Outage only: seconds after its end until every later second had the
    /// full rate (≥ 9 accepted arrivals).
    pub full_rate_back_after_s: Option<f64>,
    /// Accepted arrivals in each second from the outage's start on.
    pub per_second: Vec<usize>,
    pub loadavg: String,
}

/// Runs the three fault scenarios and the clean one.
pub async fn run(
    callers_n: usize,
    quick: bool,
    loadavg: impl Fn() -> String,
) -> (Vec<Scenario>, end_to_end::Saturation) {
    let max = max_attempts();
    let load = &loadavg;
    if quick {
        let callers_n = callers_n.min(20);
        // A smoke run: the four cases at once, each with its own simulator
        // and gateway (their budgets do not mix; they share the cores), and
        // short: a) measures only 5 s after settling.
        let (a, b, c, d) = tokio::join!(
            limited(callers_n, 15.0, max, load),
            noise(callers_n, 6.0, max, load),
            outage_run(callers_n, (3.0, 6.0, 8.0), max, load),
            end_to_end::saturation(callers_n, Duration::from_secs(4), Duration::ZERO),
        );
        return (vec![a, b, c], d);
    }
    // a) needs 10 s to settle and a tail long enough that one probe above
    // the kept rate is not most of it.
    let out = vec![
        limited(callers_n, 40.0, max, load).await,
        noise(callers_n, 40.0, max, load).await,
        outage_run(callers_n, (5.0, 20.0, 25.0), max, load).await,
    ];
    let clean = end_to_end::saturation(callers_n, Duration::from_secs(20), Duration::ZERO).await;
    (out, clean)
}

/// `retry.max_attempts` at default settings.
pub(crate) fn max_attempts() -> u32 {
    harness::gateway_config("http://127.0.0.1:1", "")
        .retry
        .max_attempts
        .get()
}

struct Rig {
    sim: Simulator,
    gate: Gate,
    client: reqwest::Client,
}

async fn rig() -> Rig {
    let sim = harness::sim(LATENCY).await;
    let gate = Gate::start(harness::gateway_config(&sim.base_url(), "")).await;
    Rig {
        sim,
        gate,
        client: harness::client(),
    }
}

impl Rig {
    async fn stop(self) {
        drop(self.client);
        self.gate.shutdown().await;
        self.sim.shutdown();
    }
}

fn first_arrival(records: &[Received]) -> Instant {
    records
        .iter()
        .map(|r| r.at)
        .min()
        .unwrap_or_else(Instant::now)
}

/// A fault that holds for the whole run (`fault` sets it on the fresh
/// simulator): `n` callers flood for `secs`, measured from `from` seconds.
pub(crate) async fn steady(
    name: &'static str,
    fault: impl FnOnce(&Simulator),
    from: f64,
    (n, secs, max): (usize, f64, u32),
    load: &impl Fn() -> String,
) -> Scenario {
    let rig = rig().await;
    fault(&rig.sim);
    let callers = Callers::start(&rig.client, &rig.gate.url, n, None);
    sleep_secs(secs).await;
    let records = rig.sim.records();
    let seen = callers.finish(Duration::from_secs(40)).await;
    rig.stop().await;
    measure(name, n, secs, &records, from, secs, &seen, max, load)
}

async fn limited(n: usize, secs: f64, max: u32, load: &impl Fn() -> String) -> Scenario {
    // Another sender takes 3 of the IP's 10/s.
    let fault = |sim: &Simulator| sim.set_limits(7, 40);
    steady("a) real limit 7/s", fault, 10.0, (n, secs, max), load).await
}

async fn noise(n: usize, secs: f64, max: u32, load: &impl Fn() -> String) -> Scenario {
    let fault = |sim: &Simulator| sim.faults().set_random_503(0.3);
    steady("b) 30% random 503", fault, 0.0, (n, secs, max), load).await
}

/// c): `before` s of load, an `outage` of 503s to everything, `after` s
/// more.
async fn outage_run(
    n: usize,
    (before, outage, after): (f64, f64, f64),
    max: u32,
    load: &impl Fn() -> String,
) -> Scenario {
    let rig = rig().await;
    // Half the callers wait at most 10 s: in the outage their deadline
    // passes before their attempts run out.
    let callers = Callers::start(&rig.client, &rig.gate.url, n, Some("10s"));
    sleep_secs(before).await;
    let began = Instant::now();
    rig.sim.faults().set_random_503(1.0);
    sleep_secs(outage).await;
    let ended = Instant::now();
    rig.sim.faults().set_random_503(0.0);
    sleep_secs(after).await;
    let records = rig.sim.records();
    let seen = callers.finish(Duration::from_secs(40)).await;
    rig.stop().await;
    let t0 = first_arrival(&records);
    let rel = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let name = if outage == 20.0 {
        "c) 20 s outage"
    } else {
        "c) short outage"
    };
    let mut s = measure(
        name,
        n,
        before + outage + after,
        &records,
        rel(ended),
        rel(ended) + after,
        &seen,
        max,
        load,
    );
    // Whole seconds from the outage's start; the last partial one is left out.
    let whole = (outage + after).floor() as u64;
    s.per_second = (0..whole)
        .map(|i| {
            let from = began + Duration::from_secs(i);
            count(&records, from, from + Duration::from_secs(1)).0
        })
        .collect();
    let after_end: Vec<(u64, usize)> = (0..after.floor() as u64)
        .map(|i| {
            let from = ended + Duration::from_secs(i);
            (i, count(&records, from, from + Duration::from_secs(1)).0)
        })
        .collect();
    s.full_rate_back_after_s = Some(
        after_end
            .iter()
            .filter(|(_, ok)| *ok < 9)
            .map(|(i, _)| (*i + 1) as f64)
            .next_back()
            .unwrap_or(0.0),
    );
    s
}

#[allow(clippy::too_many_arguments)]
fn measure(
    name: &'static str,
    callers_n: usize,
    secs: f64,
    records: &[Received],
    from_s: f64,
    to_s: f64,
    seen: &[Seen],
    max: u32,
    load: &impl Fn() -> String,
) -> Scenario {
    let t0 = first_arrival(records);
    let at = |s: f64| t0 + Duration::from_secs_f64(s);
    let (ok, no) = count(records, at(from_s), at(to_s));
    Scenario {
        name,
        callers: callers_n,
        seconds: secs,
        measured_from_s: from_s,
        measured_to_s: to_s,
        accepted_per_s: ok as f64 / (to_s - from_s).max(1e-9),
        share_503: no as f64 / (ok + no).max(1) as f64,
        refused_503: no,
        callers_saw: callers(seen, max),
        full_rate_back_after_s: None,
        per_second: Vec::new(),
        loadavg: load(),
    }
}

/// Prints the report lines of scenario 10.
pub fn print(runs: &[Scenario], clean: &end_to_end::Saturation) {
    println!("\n== 11. Adaptation: a lower real limit versus noise (default settings)");
    for s in runs {
        let c = &s.callers_saw;
        println!(
            "   {:<20} {} callers, {:.0} s; measured {:.1}–{:.1} s: accepted {:.2}/s, 503s {} ({:.1} %); load {}",
            s.name,
            s.callers,
            s.seconds,
            s.measured_from_s,
            s.measured_to_s,
            s.accepted_per_s,
            s.refused_503,
            s.share_503 * 100.0,
            s.loadavg
        );
        println!(
            "   {:<20} callers: {} answers, {} ok, errors {:?}, most sends per request {}",
            "", c.answers, c.ok_200, c.errors, c.max_attempts_seen
        );
    }
    let limit = f64::from(LIMIT);
    if let [a, b, c] = runs {
        println!(
            "   a) accepted ≥ {:.2}/s: {}; 503s ≤ 2 %: {}",
            0.9 * 7.0,
            verdict(a.accepted_per_s >= 0.9 * 7.0),
            verdict(a.share_503 <= 0.02)
        );
        println!(
            "   b) accepted ≥ {:.2}/s (most possible 0.7 × 9.8 = 6.86): {}; 0 caller errors: {}",
            0.6 * limit,
            verdict(b.accepted_per_s >= 0.6 * limit),
            verdict(b.callers_saw.errors.is_empty())
        );
        let cc = &c.callers_saw;
        let e503: usize = cc
            .errors
            .iter()
            .filter(|(s, _)| *s == 503)
            .map(|(_, n)| n)
            .sum();
        println!(
            "   c) sends per request ≤ max_attempts: {}; {} callers got 503 ({} before max_attempts: their deadline), \
             JSON + Retry-After on all: {}; full rate back {:.0} s after the end (≤ 15): {}",
            verdict(cc.max_attempts_seen <= 8),
            e503,
            cc.errors_503_before_max_attempts,
            verdict(cc.errors_503_json_retry_after == e503),
            c.full_rate_back_after_s.unwrap_or(f64::NAN),
            verdict(c.full_rate_back_after_s.is_some_and(|s| s <= 15.0))
        );
        println!(
            "      accepted per second from the outage's start: {:?}",
            c.per_second
        );
    }
    println!(
        "   d) no 503: utilisation {:.4} (503s {}): ≥ 0.98: {}",
        clean.delivered.utilisation,
        clean.delivered.rejected_503,
        verdict(clean.delivered.utilisation >= 0.98)
    );
}

/// Sleeps for a float number of seconds.
async fn sleep_secs(s: f64) {
    tokio::time::sleep(Duration::from_secs_f64(s)).await
}
