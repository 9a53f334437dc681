//! The export stage end to end (`X-Crmgate-Export: ndjson`) against the
//! simulator: lists and history walked whole, the summary line (complete,
//! and failed with a resume point that works), de-duplication when a
//! create shifts the pages, a hang-up that stops the walk, and the answers
//! for what cannot be exported. Counts are taken at the simulator.

mod common;

use std::collections::HashSet;

use common::*;
use crmgate::sim::{Received, Simulator};
use serde_json::Value;

fn export_get(gate: &Gate, path: &str) -> reqwest::RequestBuilder {
    client()
        .get(format!("{}{path}", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .header("X-Crmgate-Export", "ndjson")
}

/// The stream's item lines and its summary (the inner object).
fn split(text: &str) -> (Vec<Value>, Value) {
    let mut lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let mut summary = lines.pop().expect("a summary line");
    assert!(
        summary.get("crmgate_export").is_some(),
        "last line: {summary}"
    );
    (lines, summary["crmgate_export"].take())
}

fn ids(items: &[Value]) -> Vec<u64> {
    items.iter().map(|i| i["id"].as_u64().unwrap()).collect()
}

/// The whole stream of `resp`, with `between` run once the first chunk
/// (the first page) has arrived; what `between` returned.
async fn read_with<T>(mut resp: reqwest::Response, between: impl FnOnce() -> T) -> (String, T) {
    let mut text = String::from_utf8(resp.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    let done = between();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    (text, done)
}

/// `crmgate_exports_total{outcome}` now.
async fn exports_total(gate: &Gate, outcome: &str) -> f64 {
    metric_now(
        &gate.admin,
        "crmgate_exports_total",
        &[("outcome", outcome)],
    )
    .await
}

/// List requests the simulator received for `path` (any query).
fn requests_to(sim: &Simulator, path: &str) -> Vec<Received> {
    sim.records()
        .into_iter()
        .filter(|r| r.path == path)
        .collect()
}

#[tokio::test]
async fn a_list_is_exported_whole_one_item_per_line() {
    let (sim, gate) = setup_with_orders(450, "").await;
    let resp = export_get(&gate, "/api/v5/orders?limit=20&filter%5Bstatus%5D=new")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "application/x-ndjson");
    assert_eq!(h["x-crmgate-export-total"], "450");
    assert_eq!(h["x-crmgate-export-pages"], "5");
    let (items, summary) = split(&resp.text().await.unwrap());
    assert_eq!(ids(&items), (1..=450).collect::<Vec<u64>>());
    assert_eq!(
        summary,
        serde_json::json!({"complete": true, "pages": 5, "items": 450})
    );

    // The CRM saw exactly the five pages, at the export's page size, with
    // the caller's other parameters, the real key and no export header.
    let sent = requests_to(&sim, "/api/v5/orders");
    let queries: Vec<&str> = sent.iter().map(|r| r.query.as_deref().unwrap()).collect();
    let want: Vec<String> = (1..=5)
        .map(|p| format!("filter%5Bstatus%5D=new&site=main&page={p}&limit=100"))
        .collect();
    assert_eq!(queries, want);
    assert!(sent
        .iter()
        .all(|r| r.api_key.as_deref() == Some(ACME_KEY) && r.header("x-crmgate-export").is_none()));
    assert_no_client_key(&sim.records());

    let text = metrics_text(&gate.admin).await;
    let m = |name, labels: &[(&str, &str)]| metric(&text, name, labels).unwrap_or(-1.0);
    assert_eq!(m("crmgate_export_pages_total", &[("tenant", "acme")]), 5.0);
    assert_eq!(
        m("crmgate_export_items_total", &[("tenant", "acme")]),
        450.0
    );
    assert_eq!(m("crmgate_export_pages_total", &[("tenant", "beta")]), 0.0);
    assert_eq!(m("crmgate_exports_total", &[("outcome", "complete")]), 1.0);
    assert_eq!(m("crmgate_exports_total", &[("outcome", "hung_up")]), 0.0);
    assert_eq!(m("crmgate_exports_in_progress", &[]), 0.0);
    assert_eq!(status_doc(&gate).await["exports_in_progress"], 0);
}

#[tokio::test]
async fn history_is_walked_by_since_id_until_a_short_page() {
    let (sim, gate) = setup_with_orders(250, "").await;
    let resp = export_get(
        &gate,
        "/api/v5/orders/history?filter%5BsinceId%5D=30&page=4",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-crmgate-export-total"], "220");
    let (items, summary) = split(&resp.text().await.unwrap());
    assert_eq!(
        ids(&items),
        (31..=250).collect::<Vec<u64>>(),
        "every entry once, in order"
    );
    assert!(items.iter().all(|e| e["order"]["id"] == e["id"]));
    assert_eq!(
        summary,
        serde_json::json!({"complete": true, "pages": 3, "items": 220, "last_id": 250})
    );
    let queries: Vec<String> = requests_to(&sim, "/api/v5/orders/history")
        .into_iter()
        .map(|r| r.query.unwrap())
        .collect();
    assert_eq!(
        queries,
        [
            "site=main&filter%5BsinceId%5D=30&limit=100",
            "site=main&filter%5BsinceId%5D=130&limit=100",
            "site=main&filter%5BsinceId%5D=230&limit=100",
        ]
    );

    // From a start date, customers' history: the cursor takes over.
    sim.add_customers(250);
    let resp = export_get(
        &gate,
        "/api/v5/customers/history?filter%5BstartDate%5D=2026-01-01%2003%3A00%3A00",
    )
    .send()
    .await
    .unwrap();
    let (items, summary) = split(&resp.text().await.unwrap());
    assert_eq!(ids(&items), (180..=250).collect::<Vec<u64>>());
    assert_eq!(items[0]["customer"]["externalId"], "cust-180");
    assert_eq!(summary["last_id"], 250);
    assert_eq!(summary["complete"], true);
}

#[tokio::test]
async fn items_a_create_shifted_onto_the_next_page_are_written_once() {
    let (sim, gate) = setup_with_orders(250, "").await;
    // The customers list is newest first: three customers created after
    // the first page push its last three onto the second page.
    sim.add_customers(250);
    sim.add_customers_after(1, 3);
    let resp = export_get(&gate, "/api/v5/customers").send().await.unwrap();
    let (items, summary) = split(&resp.text().await.unwrap());
    let got = ids(&items);
    let distinct: HashSet<u64> = got.iter().copied().collect();
    assert_eq!(distinct.len(), got.len(), "no id twice");
    assert_eq!(
        distinct,
        (1..=250).collect(),
        "everything that was there at the start"
    );
    assert_eq!(summary["items"], 250);
    assert_eq!(summary["pages"], 3);
    // The CRM really did repeat them: 100 + 100 + 53 items were answered.
    assert_eq!(requests_to(&sim, "/api/v5/customers").len(), 3);
}

#[tokio::test]
async fn a_page_that_fails_for_good_ends_with_a_resume_point_that_works() {
    let retry = "[retry]\nmax_attempts = 2\ninitial_backoff = \"10ms\"\nmax_backoff = \"20ms\"\n";
    let (sim, gate) = setup_with_orders(3000, retry).await;
    let resp = export_get(&gate, "/api/v5/orders").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The CRM starts refusing everything: some later page fails for good.
    let (text, _) = read_with(resp, || sim.faults().fail_next(100_000, None)).await;
    sim.faults().clear();
    let (items, summary) = split(&text);
    assert_eq!(summary["complete"], false, "{summary}");
    let pages = summary["pages"].as_u64().unwrap();
    assert!((1..30).contains(&pages), "{summary}");
    assert_eq!(summary["items"].as_u64().unwrap(), pages * 100);
    assert_eq!(items.len() as u64, pages * 100);
    assert_eq!(summary["resume"], serde_json::json!({"page": pages + 1}));
    assert!(
        summary["error"].as_str().unwrap().contains("rate limiting"),
        "{summary}"
    );

    // Resuming from that page completes the list: nothing lost, nothing twice.
    let resp = export_get(&gate, &format!("/api/v5/orders?page={}", pages + 1))
        .send()
        .await
        .unwrap();
    let (rest, summary) = split(&resp.text().await.unwrap());
    assert_eq!(summary["complete"], true, "{summary}");
    let mut all = ids(&items);
    all.extend(ids(&rest));
    assert_eq!(all, (1..=3000).collect::<Vec<u64>>());
    assert_eq!(exports_total(&gate, "failed").await, 1.0);
}

#[tokio::test]
async fn history_that_fails_resumes_after_the_last_entry_written() {
    let retry = "[retry]\nmax_attempts = 1\n";
    let (sim, gate) = setup_with_orders(3000, retry).await;
    let resp = export_get(&gate, "/api/v5/orders/history?filter%5BsinceId%5D=0")
        .send()
        .await
        .unwrap();
    let (text, _) = read_with(resp, || sim.faults().fail_next(100_000, None)).await;
    sim.faults().clear();
    let (items, summary) = split(&text);
    let last = *ids(&items).last().unwrap();
    assert_eq!(summary["complete"], false);
    assert_eq!(summary["last_id"], last);
    assert_eq!(summary["resume"], serde_json::json!({"sinceId": last}));
}

#[tokio::test]
async fn the_callers_max_wait_applies_to_each_page_not_to_the_export() {
    // 30 pages at 10/s take about 3 s, three times the caller's wait.
    let (sim, gate) = setup_with_orders(3000, "").await;
    let resp = export_get(&gate, "/api/v5/orders")
        .header("X-Crmgate-Max-Wait", "1s")
        .send()
        .await
        .unwrap();
    let (items, summary) = split(&resp.text().await.unwrap());
    assert_eq!(summary["complete"], true, "{summary}");
    assert_eq!((items.len(), summary["pages"].as_u64()), (3000, Some(30)));
    let sent = requests_to(&sim, "/api/v5/orders");
    let span = sent.last().unwrap().at - sent[0].at;
    assert!(
        span > std::time::Duration::from_secs(1),
        "the walk outlived one wait: {span:?}"
    );
}

#[tokio::test]
async fn a_drain_ends_an_export_with_a_resume_point_not_a_cut() {
    let (_sim, mut gate) = setup_with_orders(
        5000,
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         shutdown_grace = \"20s\"\ndrain_accept = \"0s\"\n",
    )
    .await;
    let resp = export_get(&gate, "/api/v5/orders").send().await.unwrap();
    let (text, drain) = read_with(resp, || gate.begin_shutdown()).await;
    let (items, summary) = split(&text);
    assert_eq!(summary["complete"], false, "{summary}");
    let pages = summary["pages"].as_u64().unwrap();
    assert_eq!(items.len() as u64, pages * 100);
    assert_eq!(summary["resume"], serde_json::json!({"page": pages + 1}));
    assert!(
        summary["error"].as_str().unwrap().contains("shutting down"),
        "{summary}"
    );
    drain.await.expect("the gateway drains");
}

#[tokio::test]
async fn a_caller_that_hangs_up_stops_the_walk() {
    let (sim, gate) = setup_with_orders(5000, "").await;
    let mut resp = export_get(&gate, "/api/v5/orders").send().await.unwrap();
    assert_eq!(resp.headers()["x-crmgate-export-pages"], "50");
    resp.chunk().await.unwrap().expect("the first page");
    assert_eq!(status_doc(&gate).await["exports_in_progress"], 1);
    drop(resp);
    wait_until("the export to end", || {
        status_now(&gate)["exports_in_progress"] == 0
    })
    .await;
    // The first page, and at most what was fetched ahead (`prefetch`, 2)
    // or being written when the drop was noticed; usually the next page is
    // still waiting for its slot and is never sent (1 request in all).
    let asked = requests_to(&sim, "/api/v5/orders").len();
    assert!(asked <= 5, "{asked} of 50 pages requested after a hang-up");
    assert_eq!(exports_total(&gate, "hung_up").await, 1.0);
}

#[tokio::test]
async fn what_cannot_be_exported_gets_400_json_and_a_crm_error_is_the_answer() {
    let (sim, gate) = setup_with_orders(50, "").await;
    for (path, why) in [
        ("/api/v5/reference/sites", "no \\\"pagination\\\" object"),
        ("/api/credentials", "no \\\"pagination\\\" object"),
    ] {
        let resp = export_get(&gate, path).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        let body = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["success"], false);
        assert!(body.contains(why), "{path}: {body}");
    }
    let resp = client()
        .get(format!("{}/api/v5/orders", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .header("X-Crmgate-Export", "csv")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(json(resp).await["errorMsg"]
        .as_str()
        .unwrap()
        .contains("ndjson"));
    let resp = client()
        .post(format!("{}/api/v5/orders/create", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .header("X-Crmgate-Export", "ndjson")
        .form(&[("order", "{}")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(sim.orders_created("acme").is_empty(), "nothing was created");

    // The CRM's own refusal of the first page is the answer, as it came.
    let resp = export_get(&gate, "/api/v5/orders?filter%5BsinceId%5D=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "orders ignores that filter");
    let resp = export_get(&gate, "/api/v5/orders/history?filter%5BsinceId%5D=x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v = json(resp).await;
    assert_eq!(v["errorMsg"], "Errors in the input parameters");
    // A first page the gateway cannot get is its usual 503.
    sim.faults().fail_next(100, None);
    let resp = export_get(&gate, "/api/v5/orders")
        .header("X-Crmgate-Max-Wait", "1s")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(json(resp).await["success"], false);
    sim.faults().clear();
}
