//! Scenario `runaway`: one service of a tenant holds 1,500 connections open
//! (far beyond the tenant's `max_queued` of 1,000) while a light service of
//! the same tenant sends one request every 0.5 s. Room in the queue is
//! shared by the longest-queue drop (src/scheduler/room.rs), so the light
//! service should be served as if the runaway were not there.
//!
//! Each runaway connection sends again as soon as it is answered; after a
//! 503 it waits 1 s (as a client honouring `Retry-After` would), so the
//! refused ones do not turn the run into a busy loop over loopback. Needs a
//! descriptor per connection on both sides (one process): the soft
//! `RLIMIT_NOFILE` is raised, and the scenario is skipped when the hard
//! limit is too low. Measures and reports; it never asserts.

use std::time::Duration;

use serde::Serialize;

use crate::end_to_end::{LATENCY, LIMIT};
use crate::harness::{self, Gate, Load, Req, ACME_CLIENT, ACME_CLIENT2};
use crate::measure::{self, verdict, Answers, Delivered, Percentiles, TARGET_LIGHT_P95_MS};

/// Connections of the runaway service.
pub const RUNAWAY: usize = 1_500;
/// The light service's pace.
const LIGHT_EVERY: Duration = Duration::from_millis(500);
/// Share of the light service's requests that must be served (200).
pub const TARGET_LIGHT_SERVED: f64 = 0.95;
/// A runaway connection's pause after a 503.
const AFTER_REFUSAL: Duration = Duration::from_secs(1);

/// The scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Runaway {
    pub runaway_connections: usize,
    pub seconds: f64,
    pub light_every_ms: u64,
    /// 200 answers ÷ requests of the light service.
    pub light_served: f64,
    /// The light service's queue wait (ms) over its 200 answers.
    pub light_wait_ms: Percentiles,
    /// The light service's whole answer time (ms), as it saw it.
    pub light_answer_ms: Percentiles,
    pub light_answers: Answers,
    pub runaway_answers: Answers,
    /// The CRM's view of the run.
    pub delivered: Delivered,
    /// `reason="displaced"` in `/status`: waiting requests that gave way.
    pub displaced: Option<u64>,
}

/// Runs the scenario for `run` (the light service's span), or says why not.
pub async fn run(run: Duration) -> Result<Runaway, String> {
    // Client and gateway ends of every connection, plus the rest.
    let want = (2 * RUNAWAY + 1024) as u64;
    let got = rlimit::increase_nofile_limit(want).map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    if got < want {
        return Err(format!(
            "RLIMIT_NOFILE is {got}, {want} needed (raise the hard limit: ulimit -Hn)"
        ));
    }
    let sim = harness::sim(LATENCY).await;
    let gate = Gate::start(harness::gateway_config(&sim.base_url(), "")).await;
    let runaway_client = harness::client();
    let light_client = harness::client();
    let runaway = Load::flood_req(
        &runaway_client,
        &gate.url,
        Req::Get(ACME_CLIENT),
        RUNAWAY,
        AFTER_REFUSAL,
    );
    // The light service meets a full line: the runaway's connections are
    // open and queued (about 1 s to open 1,500 on loopback).
    let full = crate::common::poll_until(Duration::from_secs(20), || async {
        (queued(&gate) >= 1_000).then_some(())
    })
    .await;
    if full.is_none() {
        eprintln!("warning: the runaway never filled the tenant's queue within 20 s");
    }
    let light = Load::trickle_req(
        &light_client,
        &gate.url,
        Req::Get(ACME_CLIENT2),
        LIGHT_EVERY,
    );
    tokio::time::sleep(run).await;
    // The light requests still waiting are answered within the wait they
    // were measured for (p95 ≤ 300 ms): a short grace, then stop.
    let light = light.finish(Duration::from_secs(2)).await;
    let records = sim.records();
    let displaced = displaced(&gate);
    let runaway = runaway.stop().await;
    gate.shutdown().await;
    sim.shutdown();

    let ok = light.iter().filter(|s| s.status == 200).count();
    let answer_ms: Vec<f64> = light.iter().map(|s| s.answer_ms).collect();
    Ok(Runaway {
        runaway_connections: RUNAWAY,
        seconds: run.as_secs_f64(),
        light_every_ms: LIGHT_EVERY.as_millis() as u64,
        light_served: ok as f64 / light.len().max(1) as f64,
        light_wait_ms: measure::percentiles(&measure::queue_waits(&light)),
        light_answer_ms: measure::percentiles(&answer_ms),
        light_answers: measure::answers(&light),
        runaway_answers: measure::answers(&runaway),
        delivered: measure::delivered(&records, LIMIT),
        displaced,
    })
}

/// Requests of tenant acme waiting now (`/status`, read in-process).
fn queued(gate: &Gate) -> u64 {
    tenant(gate)["queued"].as_u64().unwrap_or(0)
}

/// Tenant acme's `displaced` count in `/status`, if it shows one.
fn displaced(gate: &Gate) -> Option<u64> {
    tenant(gate)["displaced"].as_u64()
}

fn tenant(gate: &Gate) -> serde_json::Value {
    let doc = crate::common::status_now(gate);
    doc["tenants"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == "acme"))
        .cloned()
        .unwrap_or_default()
}

/// Prints the scenario's table and verdicts.
pub fn print(r: &Runaway) {
    println!(
        "\n== 14. Runaway service: {} connections of one client beside a light client of the same tenant",
        r.runaway_connections
    );
    println!(
        "   light: 1 request / {} ms for {:.0} s; runaway: next request at once, 1 s after a 503; limit {LIMIT}/s",
        r.light_every_ms, r.seconds
    );
    println!(
        "   {:<38} {:>12.3}   target ≥ {TARGET_LIGHT_SERVED}: {}   ({} ok, other {:?})",
        "light requests served",
        r.light_served,
        verdict(r.light_served >= TARGET_LIGHT_SERVED),
        r.light_answers.ok_200,
        r.light_answers.other
    );
    let (w, a) = (&r.light_wait_ms, &r.light_answer_ms);
    println!(
        "   {:<38} {:>12.0}   target ≤ {TARGET_LIGHT_P95_MS:.0}: {}   (p50 {:.0}, max {:.0})",
        "light queue wait p95 (ms)",
        w.p95,
        verdict(w.p95 <= TARGET_LIGHT_P95_MS),
        w.p50,
        w.max
    );
    println!(
        "   {:<38} {:>12.0}   (p50 {:.0}, max {:.0}; CRM latency included)",
        "light answer time p95 (ms)", a.p95, a.p50, a.max
    );
    println!(
        "   {:<38} {:>12}   target 0: {}",
        "503s answered by the CRM",
        r.delivered.rejected_503,
        verdict(r.delivered.rejected_503 == 0)
    );
    println!(
        "   {:<38} {:>12}   limit {LIMIT}",
        "most arrivals in any 1000 ms", r.delivered.max_in_1s
    );
    println!(
        "   runaway answers: {} ok, other {:?}; displaced (status): {}; CRM utilisation {:.4}",
        r.runaway_answers.ok_200,
        r.runaway_answers.other,
        r.displaced.map_or("n/a".into(), |n| n.to_string()),
        r.delivered.utilisation
    );
}
