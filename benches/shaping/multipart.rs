//! Scenario `multipart`: utilisation and fairness when every request is a
//! POST the way RetailCRM's PHP client sends it (`orders/create` as
//! `multipart/form-data`, `apiKey` one of the parts), so the gateway finds
//! the tenant inside the body, strips the key part and forwards the rest.
//!
//! a) callers of one tenant saturate the general budget: the rate the CRM
//! accepted ÷ the limit and its 503s, from the simulator's own records,
//! and whether any client key reached the CRM; b) tenant A floods with such
//! POSTs while tenant B sends one every 0.5 s: B's queue wait beside A's.
//!
//! Measures and reports; it never asserts.

use std::time::Duration;

use crmgate::sim::Received;
use serde::Serialize;

use crate::common::keys::{contains, CLIENT_KEYS};
use crate::end_to_end::{LATENCY, LIMIT, TARGET_UTILISATION};
use crate::harness::{self, Gate, Load, Req, ACME_CLIENT, BETA_CLIENT};
use crate::measure::{self, verdict, Answers, Delivered, Percentiles, TARGET_LIGHT_P95_MS};

/// The light tenant's pace.
const LIGHT_EVERY: Duration = Duration::from_millis(500);

/// The scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Multipart {
    pub callers: usize,
    pub seconds: f64,
    /// a) the CRM's view of the saturated run.
    pub saturated: Delivered,
    pub saturated_answers: Answers,
    /// Orders the CRM created in a) (201 or 200 answers to `orders/create`).
    pub created: usize,
    /// Requests that reached the CRM with a client key anywhere in them
    /// (the gateway must strip the part and send the tenant's real key).
    pub client_keys_at_crm: usize,
    /// b) the light tenant's queue wait (ms) over its 2xx answers.
    pub light_wait_ms: Percentiles,
    pub flood_wait_ms: Percentiles,
    pub light_answers: Answers,
    pub flood_answers: Answers,
    /// b) the CRM's view (both tenants share one budget).
    pub fairness_delivered: Delivered,
}

/// Runs a) and b), each for `run`.
pub async fn run(callers: usize, run: Duration) -> Multipart {
    let client = harness::client();

    let sim = harness::sim(LATENCY).await;
    let gate = Gate::start(harness::gateway_config(&sim.base_url(), "")).await;
    let load = Load::flood_req(
        &client,
        &gate.url,
        Req::Multipart(ACME_CLIENT),
        callers,
        Duration::ZERO,
    );
    tokio::time::sleep(run).await;
    let records = sim.records();
    let samples = load.stop().await;
    gate.shutdown().await;
    sim.shutdown();
    let client_keys_at_crm = records.iter().filter(|r| carries_a_client_key(r)).count();
    let created = records
        .iter()
        .filter(|r| r.path.ends_with("/orders/create") && (200..300).contains(&r.status))
        .count();
    let saturated = measure::delivered(&records, LIMIT);
    let saturated_answers = measure::answers(&samples);

    let sim = harness::sim(LATENCY).await;
    let gate = Gate::start(harness::gateway_config(&sim.base_url(), "")).await;
    let flood = Load::flood_req(
        &client,
        &gate.url,
        Req::Multipart(ACME_CLIENT),
        callers,
        Duration::ZERO,
    );
    // The light tenant meets a full queue, not an empty gateway.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let light = Load::trickle_req(&client, &gate.url, Req::Multipart(BETA_CLIENT), LIGHT_EVERY);
    tokio::time::sleep(run).await;
    let light = light.stop().await;
    let records = sim.records();
    let flood = flood.stop().await;
    gate.shutdown().await;
    sim.shutdown();

    Multipart {
        callers,
        seconds: run.as_secs_f64(),
        saturated,
        saturated_answers,
        created,
        client_keys_at_crm,
        light_wait_ms: measure::percentiles(&measure::queue_waits(&light)),
        flood_wait_ms: measure::percentiles(&measure::queue_waits(&flood)),
        light_answers: measure::answers(&light),
        flood_answers: measure::answers(&flood),
        fairness_delivered: measure::delivered(&records, LIMIT),
    }
}

/// Whether a client key (or an `apiKey` part) reached the CRM anywhere in
/// `r`: the integration tests' check (`tests/common/keys.rs`), counted
/// instead of asserted.
fn carries_a_client_key(r: &Received) -> bool {
    CLIENT_KEYS.iter().any(|key| {
        r.api_key.as_deref() == Some(key)
            || r.query.as_deref().unwrap_or("").contains(key)
            || r.headers
                .iter()
                .any(|(n, v)| n.contains(key) || v.contains(key))
            || contains(&r.body, key)
    }) || contains(&r.body, "apiKey")
}

/// Prints the scenario's table and verdicts.
pub fn print(m: &Multipart) {
    let d = &m.saturated;
    println!("\n== 12. Multipart POSTs (PHP client: orders/create, apiKey inside the body)");
    println!(
        "   a) {} callers, {:.0} s, CRM latency 20–60 ms, limit {LIMIT}/s",
        m.callers, m.seconds
    );
    println!("   {:<38} {:>12}", "accepted by the CRM", d.accepted);
    println!("   {:<38} {:>12}", "orders created", m.created);
    println!(
        "   {:<38} {:>12.4}   target ≥ {TARGET_UTILISATION:.2}: {}",
        "utilisation (rate / limit)",
        d.utilisation,
        verdict(d.utilisation >= TARGET_UTILISATION)
    );
    println!(
        "   {:<38} {:>12}   target 0: {}",
        "503s answered by the CRM",
        d.rejected_503,
        verdict(d.rejected_503 == 0)
    );
    measure::print_rejected_at(&d.rejected_at_s);
    println!(
        "   {:<38} {:>12}   limit {LIMIT}",
        "most arrivals in any 1000 ms", d.max_in_1s
    );
    println!(
        "   {:<38} {:>12}   target 0: {}",
        "requests with a client key at the CRM",
        m.client_keys_at_crm,
        verdict(m.client_keys_at_crm == 0)
    );
    println!(
        "   {:<38} {:>12}   by status: {:?}",
        "caller answers (2xx)",
        m.saturated_answers.succeeded(),
        m.saturated_answers.other
    );
    println!(
        "   b) tenant A: {} callers flooding; tenant B: 1 POST / {} ms",
        m.callers,
        LIGHT_EVERY.as_millis()
    );
    println!(
        "   {:<30} {:>6} {:>9} {:>9} {:>9}",
        "queue wait (ms)", "n", "p50", "p95", "max"
    );
    for (name, p) in [
        ("B (light)", &m.light_wait_ms),
        ("A (flood)", &m.flood_wait_ms),
    ] {
        println!(
            "   {:<30} {:>6} {:>9.0} {:>9.0} {:>9.0}",
            name, p.n, p.p50, p.p95, p.max
        );
    }
    println!(
        "   B p95 ≤ {TARGET_LIGHT_P95_MS:.0} ms: {}",
        verdict(m.light_wait_ms.p95 <= TARGET_LIGHT_P95_MS)
    );
    println!(
        "   B answers: {} 2xx, by status {:?}; A answers: {} 2xx, by status {:?}",
        m.light_answers.succeeded(),
        m.light_answers.other,
        m.flood_answers.succeeded(),
        m.flood_answers.other
    );
    let f = &m.fairness_delivered;
    println!(
        "   CRM: utilisation {:.4}, 503s {}: {}, most in any 1000 ms {}",
        f.utilisation,
        f.rejected_503,
        verdict(f.rejected_503 == 0),
        f.max_in_1s
    );
}
