//! Retries end to end: random 503s retried without duplicates, a reset
//! after processing retried only for a GET, Retry-After honoured, a lone
//! 503 retried and counted without lowering the rate, a refused connection
//! retried even for a POST. Real loopback sockets against the simulator.
mod common;

use std::time::Duration;

use common::*;
use crmgate::sim::Received;
use futures_util::future::join_all;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_503s_are_retried_without_duplicates() {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) = isolated_setup(&format!(
        "{LIMITS}[limits.adaptive]\nrecovery_per_second = 10.0\n\
         [retry]\nmax_attempts = 10\ninitial_backoff = \"20ms\"\nmax_backoff = \"200ms\""
    ))
    .await;
    sim.faults().set_random_503(0.3);
    let c = client();
    // Ten callers, four creates each.
    let outcomes: Vec<Outcome> = join_all((0..10).map(|caller| {
        let (c, url) = (&c, &gate.url);
        async move {
            let key = [ACME_CLIENT, ACME_CLIENT2][caller % 2];
            let mut seen = Vec::new();
            for k in 0..4 {
                let ext = format!("x-{}", caller * 4 + k);
                seen.push(Call::create(key, &ext).send(c, url, &ext).await);
            }
            seen
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    sim.faults().clear();
    let records = sim.records();
    let attempts: Vec<u32> = outcomes.iter().map(|o| o.attempts.unwrap_or(0)).collect();
    println!(
        "random 503: {} creates, {} sends ({} answered 503), attempts {attempts:?}",
        outcomes.len(),
        records.len(),
        count_503(&records)
    );

    assert!(
        not_ok(&outcomes, 201).is_empty(),
        "{:?}",
        not_ok(&outcomes, 201)
    );
    let mut created: Vec<String> = sim
        .orders_created("acme")
        .iter()
        .map(|o| o["externalId"].as_str().unwrap_or("").to_string())
        .collect();
    created.sort();
    let mut expected: Vec<String> = (0..40).map(|n| format!("x-{n}")).collect();
    expected.sort();
    assert_eq!(created, expected, "each order exactly once");
    assert!(attempts.iter().any(|&a| a > 1), "no retries happened");
    // Every attempt the gateway counted reached the CRM, and no more.
    assert_eq!(records.len() as u32, attempts.iter().sum::<u32>());
    for (key, n) in per_window(&records) {
        assert!(n <= 10, "{key:?}: {n} arrivals in one second");
    }
}

#[tokio::test]
async fn a_reset_after_processing_is_retried_only_for_a_get() {
    let (sim, gate) = setup("[retry]\ninitial_backoff = \"20ms\"").await;
    let c = client();

    sim.faults().reset_after_processing_next(1);
    // No externalId: nothing to reconcile by (see tests/reconcile.rs).
    let order = r#"{"number":"x-reset"}"#;
    let post = Call::post(
        "/api/v5/orders/create",
        Some(ACME_CLIENT),
        &[("order", order)],
    )
    .send(&c, &gate.url, "post")
    .await;
    post.assert_gateway_error(502);
    assert_eq!(post.attempts, Some(1), "{post:?}");
    let created = sim.orders_created("acme");
    let ours = created.iter().filter(|o| o["number"] == "x-reset");
    assert_eq!(ours.count(), 1);
    let posts = sim.records().iter().filter(|r| id_of(r) == "post").count();
    assert_eq!(
        posts, 1,
        "the POST was resent after the CRM may have processed it"
    );

    sim.faults().reset_after_processing_next(1);
    let get = Call::get("/api/v5/orders", Some(ACME_CLIENT))
        .send(&c, &gate.url, "get")
        .await;
    assert_eq!(get.status, 200, "{get:?}");
    assert_eq!(get.attempts, Some(2), "{get:?}");
    let gets = sim.records().iter().filter(|r| id_of(r) == "get").count();
    assert_eq!(gets, 2);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (sim, gate) = setup("[retry]\ninitial_backoff = \"20ms\"").await;
    sim.faults().fail_next(1, Some("1".into()));
    let o = Call::get("/api/v5/orders", Some(ACME_CLIENT))
        .send(&client(), &gate.url, "ra")
        .await;
    assert_eq!(o.status, 200, "{o:?}");
    assert_eq!(o.attempts, Some(2), "{o:?}");
    let records = sim.records();
    let arrivals: Vec<&Received> = records.iter().filter(|r| id_of(r) == "ra").collect();
    assert_eq!(arrivals.len(), 2);
    assert_eq!((arrivals[0].status, arrivals[1].status), (503, 200));
    let gap = arrivals[1].at - arrivals[0].at;
    println!("Retry-After 1: resent after {gap:?}");
    assert!(
        gap >= Duration::from_millis(950),
        "resent after only {gap:?}"
    );
}

/// `(effective_rate, configured_rate)` of the general budget, from `/status`.
async fn general_budget(gate: &Gate) -> (f64, f64) {
    general_rates(&status_doc(gate).await)
}

/// `(effective_rate, configured_rate)` of the general budget in a `/status`
/// document.
fn general_rates(status: &serde_json::Value) -> (f64, f64) {
    let b = status["budgets"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["class"] == "general"))
        .unwrap_or_else(|| panic!("no general budget in {status}"))
        .clone();
    (
        b["effective_rate"].as_f64().expect("effective_rate"),
        b["configured_rate"].as_f64().expect("configured_rate"),
    )
}

#[tokio::test]
async fn a_lone_503_is_retried_and_counted_but_keeps_the_rate() {
    // Lowering the rate takes evidence that the rate caused the 503s
    // (tests/adapt.rs); one 503 is none.
    let (sim, gate) = setup("[retry]\ninitial_backoff = \"20ms\"").await;
    let c = client();
    let get = Call::get("/api/v5/orders", Some(ACME_CLIENT));
    assert_eq!(get.send(&c, &gate.url, "warm").await.status, 200);
    assert_eq!(general_budget(&gate).await, (10.0, 10.0));
    let throttled = [("class", "general"), ("status", "503")];
    let retried = [("class", "general"), ("reason", "throttled")];
    let throttled_before =
        metric_now(&gate.admin, "crmgate_upstream_throttled_total", &throttled).await;
    let retried_before = metric_now(&gate.admin, "crmgate_retries_total", &retried).await;

    sim.faults().fail_next(1, None);
    let o = get.send(&c, &gate.url, "lone").await;
    assert_eq!((o.status, o.attempts), (200, Some(2)), "{o:?}");
    assert_eq!(general_budget(&gate).await, (10.0, 10.0));
    let throttled_after =
        metric_now(&gate.admin, "crmgate_upstream_throttled_total", &throttled).await;
    let retried_after = metric_now(&gate.admin, "crmgate_retries_total", &retried).await;
    assert_eq!(throttled_after - throttled_before, 1.0);
    assert_eq!(retried_after - retried_before, 1.0);
}

#[tokio::test]
async fn a_refused_connection_is_retried_even_for_a_post() {
    let sim = sim().await;
    // A port that was just free: connecting to it is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = format!(
        "{}\n[[tenants]]\nname = \"dead\"\nbase_url = \"http://{closed}\"\napi_key = \"dead-key\"\n",
        config_text(
            &sim,
            "[retry]\nmax_attempts = 3\ninitial_backoff = \"10ms\""
        )
    );
    let gate = Gate::start(config(&text)).await;
    let retried = [("class", "general"), ("reason", "connect")];
    let before = metric_now(&gate.admin, "crmgate_retries_total", &retried).await;
    let order = r#"{"externalId":"x-dead"}"#;
    let o = Call::post("/dead/api/v5/orders/create", None, &[("order", order)])
        .send(&client(), &gate.url, "dead")
        .await;
    o.assert_gateway_error(502);
    assert_eq!(o.attempts, Some(3), "{o:?}");
    assert_eq!(
        metric_now(&gate.admin, "crmgate_retries_total", &retried).await - before,
        2.0
    );
    assert!(sim.records().is_empty());
}
