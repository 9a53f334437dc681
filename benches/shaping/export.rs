//! Scenario 9: exports (`X-Crmgate-Export: ndjson`) against the strict
//! simulator (20–60 ms latency) holding some thousands of orders, 100 per
//! page: the list walked whole, history from `sinceId = 0`, and a light
//! interactive tenant's queue wait while an export holds the budget.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use crate::end_to_end::{LATENCY, LIMIT};
use crate::harness::{self, Gate, Load, ACME_CLIENT, BETA_CLIENT};
use crate::measure::{self, Answers, Delivered, Percentiles, TARGET_LIGHT_P95_MS};

/// One slot at the default pacing ((1000 + 20) ms / 10) plus the CRM's
/// longest latency: the first item's target.
pub const FIRST_ITEM_TARGET_MS: f64 = 102.0 + 60.0;

/// One export, as the caller and the CRM saw it.
#[derive(Debug, Clone, Serialize)]
pub struct Walked {
    /// Requests the CRM received for the method.
    pub crm_requests: usize,
    /// ⌈N / 100⌉ for a list; for history also the closing short page.
    pub expected_requests: usize,
    /// Item lines in the stream.
    pub items: usize,
    /// Distinct ids among them.
    pub distinct: usize,
    /// Ids were 1..=N in order (every item once, in order).
    pub in_order: bool,
    /// Request sent → first item line complete (ms).
    pub first_item_ms: f64,
    /// Request sent → summary line (s).
    pub seconds: f64,
    /// The summary line's inner object.
    pub summary: Value,
}

/// How often the light tenant asks.
pub const LIGHT_EVERY: Duration = Duration::from_millis(500);

/// The scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct Export {
    pub orders: u64,
    pub page_limit: u64,
    pub list: Walked,
    pub history: Walked,
    /// The light tenant's queue wait (ms) during a second list export, one
    /// request every [`LIGHT_EVERY`].
    pub light_wait_ms: Percentiles,
    pub light_answers: Answers,
    /// The export that ran beside the light tenant.
    pub export_beside_light: Walked,
    /// The CRM's view of the whole run.
    pub delivered: Delivered,
    pub loadavg_start: String,
    pub loadavg_end: String,
}

/// Runs one export of `path` and reads it whole.
async fn walk(
    client: &reqwest::Client,
    gate: &Gate,
    sim: &crmgate::sim::Simulator,
    path: &str,
    method: &str,
    expected_requests: usize,
) -> Walked {
    // The export's pages (limit=100), not the light tenant's reads.
    let count = || {
        sim.records()
            .iter()
            .filter(|r| {
                r.path == method && r.query.as_deref().is_some_and(|q| q.contains("limit=100"))
            })
            .count()
    };
    let before = count();
    let started = Instant::now();
    let mut resp = client
        .get(format!("{}{path}", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .header("X-Crmgate-Export", "ndjson")
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(resp.status(), 200, "export of {path}");
    let mut text = Vec::new();
    let mut first_item = None;
    while let Some(chunk) = resp.chunk().await.expect("the stream") {
        text.extend_from_slice(&chunk);
        if first_item.is_none() && text.contains(&b'\n') {
            first_item = Some(started.elapsed());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let text = String::from_utf8(text).expect("UTF-8");
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let summary = lines
        .pop()
        .map(|mut s| s["crmgate_export"].take())
        .unwrap_or(Value::Null);
    let ids: Vec<u64> = lines.iter().filter_map(|l| l["id"].as_u64()).collect();
    let distinct = ids.iter().collect::<HashSet<_>>().len();
    let in_order = ids.iter().enumerate().all(|(i, id)| *id == i as u64 + 1);
    Walked {
        crm_requests: count() - before,
        expected_requests,
        items: ids.len(),
        distinct,
        in_order,
        first_item_ms: first_item.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0),
        seconds,
        summary,
    }
}

pub async fn run(orders: u32, loadavg: fn() -> String) -> Export {
    let loadavg_start = loadavg();
    let sim = crmgate::sim::Simulator::spawn(
        crmgate::sim::SimConfig {
            total_orders: orders,
            ..harness::sim_config(LATENCY)
        },
        "127.0.0.1:0".parse().expect("address"),
    )
    .await
    .expect("simulator starts");
    let gate = Gate::start(harness::gateway_config(&sim.base_url(), "")).await;
    let client = harness::client();
    let n = u64::from(orders);
    let pages = n.div_ceil(100) as usize;

    let list = walk(
        &client,
        &gate,
        &sim,
        "/api/v5/orders",
        "/api/v5/orders",
        pages,
    )
    .await;
    // History stops at the first short page: one more request when N is a
    // multiple of 100 (an empty page says there is nothing more).
    let history_requests = if n % 100 == 0 { pages + 1 } else { pages };
    let history = walk(
        &client,
        &gate,
        &sim,
        "/api/v5/orders/history?filter%5BsinceId%5D=0",
        "/api/v5/orders/history",
        history_requests,
    )
    .await;

    // A light tenant asks every 500 ms (as in scenario 3) while the list
    // is exported again.
    let light = Load::trickle(&client, &gate.url, BETA_CLIENT, LIGHT_EVERY);
    let beside = walk(
        &client,
        &gate,
        &sim,
        "/api/v5/orders",
        "/api/v5/orders",
        pages,
    )
    .await;
    let light = light.stop().await;
    let records = sim.records();
    drop(client);
    gate.shutdown().await;
    sim.shutdown();

    Export {
        orders: n,
        page_limit: 100,
        list,
        history,
        light_wait_ms: measure::percentiles(&measure::queue_waits(&light)),
        light_answers: measure::answers(&light),
        export_beside_light: beside,
        delivered: measure::delivered(&records, LIMIT),
        loadavg_start,
        loadavg_end: loadavg(),
    }
}

fn print_walk(name: &str, w: &Walked) {
    println!(
        "   {:<22} {:>6} {:>6} {:>7} {:>9} {:>9} {:>10.0} {:>8.2}  {}",
        name,
        w.crm_requests,
        w.expected_requests,
        w.items,
        w.distinct,
        w.in_order,
        w.first_item_ms,
        w.seconds,
        w.summary
    );
}

/// Prints the scenario's table and verdicts.
pub fn print(e: &Export) {
    println!(
        "\n== 9. Export: {} orders, {} per page, CRM latency 20–60 ms, limit {}/s",
        e.orders, e.page_limit, LIMIT
    );
    println!(
        "   {:<22} {:>6} {:>6} {:>7} {:>9} {:>9} {:>10} {:>8}  summary",
        "export", "CRM", "want", "items", "distinct", "in order", "1st (ms)", "s"
    );
    print_walk("list", &e.list);
    print_walk("history sinceId=0", &e.history);
    print_walk("list beside light", &e.export_beside_light);
    let n = e.orders as usize;
    let list_ok = e.list.crm_requests == e.list.expected_requests
        && e.list.items == n
        && e.list.distinct == n;
    println!(
        "   list: CRM requests = ⌈N/100⌉ and N distinct items: {}",
        measure::verdict(list_ok)
    );
    println!(
        "   first item ≤ one slot + one CRM latency ({:.0} ms): {:.0} ms {}",
        FIRST_ITEM_TARGET_MS,
        e.list.first_item_ms,
        measure::verdict(e.list.first_item_ms <= FIRST_ITEM_TARGET_MS)
    );
    let history_ok = e.history.in_order
        && e.history.items == n
        && e.history.summary["last_id"].as_u64() == Some(e.orders);
    println!(
        "   history: every entry once, in order, last_id = newest ({}): {}",
        e.orders,
        measure::verdict(history_ok)
    );
    let l = &e.light_wait_ms;
    println!(
        "   light tenant (1 request / {} ms) during an export, queue wait (ms): n {} p50 {:.0} p95 {:.0} max {:.0}   p95 ≤ {TARGET_LIGHT_P95_MS:.0}: {}",
        LIGHT_EVERY.as_millis(),
        l.n,
        l.p50,
        l.p95,
        l.max,
        measure::verdict(l.p95 <= TARGET_LIGHT_P95_MS)
    );
    println!(
        "   light answers: {} ok, other {:?}; CRM: utilisation {:.4}, 503s {}, most in any 1000 ms {}",
        e.light_answers.ok_200,
        e.light_answers.other,
        e.delivered.utilisation,
        e.delivered.rejected_503,
        e.delivered.max_in_1s
    );
    println!(
        "   load average: start {}, end {}",
        e.loadavg_start, e.loadavg_end
    );
}
