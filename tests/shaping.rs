//! Rate shaping end to end: budgets, the fair queue, deadlines and retries,
//! measured at the strict simulated CRM over real loopback sockets.
//!
//! Load tests assert counts taken from the simulator's records (per-window
//! maxima, deliveries within a span of simulator time), never how long the
//! test itself took; the only timings asserted are lower bounds on a delay
//! and generous upper bounds on a wait that a FIFO would miss by seconds.
//! Floods hold [`common::LOAD`] so that two of them never share the two cores and
//! add scheduling jitter to each other's measurements.
mod common;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use common::*;
use crmgate::sim::{Class, Received};
use futures_util::future::join_all;

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// `[limits]` for floods that assert what the CRM received: the defaults
/// (20 ms jitter allowance), so the tests check what users run. Extra keys
/// are appended after it.
const LIMITS: &str = "[limits]\n";

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturating_callers_never_trip_the_crm_limit() {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) = isolated_setup(LIMITS).await;
    let calls = (0..30)
        .map(|i| match i % 4 {
            0 => Call::get("/api/v5/orders", Some(ACME_CLIENT)),
            1 => Call::get("/api/v5/orders?page=2", Some(ACME_CLIENT2)),
            2 => Call::get("/api/v5/reference/sites", Some(BETA_CLIENT)),
            _ => Call::get("/open/api/v5/orders", None),
        })
        .collect();
    let load = flood(&gate.url, "sat", calls);
    // The measurement window: two seconds of the CRM's arrivals at full
    // saturation (two full windows for the per-window bound), and the
    // 29 requests still queued when the callers stop drain for three more.
    wait_for_arrivals_spanning(&sim, Duration::from_secs(2)).await;
    let outcomes = load.finish().await;
    let records = sim.records();
    let windows = per_window(&records);
    println!(
        "saturation: {} requests, {:.2}/s at the CRM, per-window max {windows:?}",
        records.len(),
        arrival_rate(&records)
    );

    assert!(
        not_ok(&outcomes, 200).is_empty(),
        "{:?}",
        not_ok(&outcomes, 200)
    );
    assert_no_503(&records);
    // One send per client request: nothing was retried.
    assert_eq!(records.len(), outcomes.len());
    assert!(outcomes.iter().all(|o| o.attempts == Some(1)));
    for (key, n) in &windows {
        assert!(*n <= 10, "{key:?}: {n} arrivals in one second");
    }
    // The budget was used (9 fit in a window at this pacing), so the bound
    // above means something.
    assert!(windows[&(LOOPBACK, Class::General)] >= 8, "{windows:?}");
    assert!(records.len() >= 40, "only {} delivered", records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telephony_has_its_own_budget() {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) = isolated_setup(LIMITS).await;
    let mut calls: Vec<Call> = (0..12)
        .map(|i| Call::get("/api/v5/orders", Some([ACME_CLIENT, BETA_CLIENT][i % 2])))
        .collect();
    calls.extend((0..50).map(|i| Call::telephony([ACME_CLIENT, ACME_CLIENT2, BETA_CLIENT][i % 3])));
    let load = flood(&gate.url, "mix", calls);
    // The measurement window: one second of the CRM's arrivals holds one
    // full telephony window; the ~60 requests queued when the callers stop
    // keep both budgets saturated for about another second as they drain.
    wait_for_arrivals_spanning(&sim, Duration::from_secs(1)).await;
    let outcomes = load.finish().await;
    let records = sim.records();
    let windows = per_window(&records);
    let telephony: Vec<Received> = records
        .iter()
        .filter(|r| r.class == Class::Telephony)
        .cloned()
        .collect();
    println!(
        "telephony: {} telephony at {:.1}/s, {} general; per-window max {windows:?}",
        telephony.len(),
        arrival_rate(&telephony),
        records.len() - telephony.len()
    );

    assert!(
        not_ok(&outcomes, 200).is_empty(),
        "{:?}",
        not_ok(&outcomes, 200)
    );
    assert_no_503(&records);
    let tel = windows[&(LOOPBACK, Class::Telephony)];
    let gen = windows[&(LOOPBACK, Class::General)];
    assert!(tel <= 40, "{tel} telephony requests in one second");
    assert!(tel > 10, "telephony was held to the general rate ({tel}/s)");
    assert!(gen <= 10, "{gen} general requests in one second");
}

/// Floods until the simulator's arrivals span `span` and returns what it
/// received meanwhile (every arrival within `span` of the first one).
async fn flood_records(extra: &str, callers: usize, span: Duration) -> Vec<Received> {
    let (sim, gate, _sim_thread) = isolated_setup(extra).await;
    let calls = (0..callers)
        .map(|i| Call::get("/api/v5/orders", Some([ACME_CLIENT, BETA_CLIENT][i % 2])))
        .collect();
    let load = flood(&gate.url, "egress", calls);
    wait_for_arrivals_spanning(&sim, span).await;
    let records = sim.records();
    drop(load);
    records
}

/// Arrivals within `span` of the first one, by source IP.
fn delivered_within(records: &[Received], span: Duration) -> HashMap<IpAddr, usize> {
    let t0 = records.iter().map(|r| r.at).min().expect("some arrivals");
    let mut by_ip = HashMap::new();
    for r in records.iter().filter(|r| r.at < t0 + span) {
        *by_ip.entry(r.source_ip).or_default() += 1;
    }
    by_ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_egress_ips_double_the_delivered_rate() {
    let _load = LOAD.lock().await;
    let span = Duration::from_secs(2);
    let one = flood_records(LIMITS, 40, span).await;
    let egress = "[upstream]\negress_ips = [\"127.0.0.2\", \"127.0.0.3\"]";
    let two = flood_records(&format!("{LIMITS}{egress}"), 40, span).await;
    let (one_by_ip, two_by_ip) = (delivered_within(&one, span), delivered_within(&two, span));
    let (n1, n2) = (
        one_by_ip.values().sum::<usize>(),
        two_by_ip.values().sum::<usize>(),
    );
    println!(
        "egress: one IP {n1} in 2 s {one_by_ip:?}, two IPs {n2} in 2 s {two_by_ip:?}; \
         per-window max {:?}",
        per_window(&two)
    );

    assert_no_503(&one);
    assert_no_503(&two);
    for (key, n) in per_window(&one).into_iter().chain(per_window(&two)) {
        assert!(n <= 10, "{key:?}: {n} arrivals in one second");
    }
    let a: IpAddr = "127.0.0.2".parse().unwrap();
    let b: IpAddr = "127.0.0.3".parse().unwrap();
    assert_eq!(two_by_ip.len(), 2, "{two_by_ip:?}");
    assert!(two_by_ip[&a] >= 15 && two_by_ip[&b] >= 15, "{two_by_ip:?}");
    assert!(n1 >= 15, "a single IP delivered only {n1} in 2 s");
    let ratio = n2 as f64 / n1 as f64;
    assert!(
        ratio >= 1.7,
        "two IPs delivered {n2}, one {n1}: ratio {ratio:.2}"
    );
}

/// Connection set-up is reported to the scheduler: without that report a
/// cold connection (TCP and TLS handshakes, ~100 ms to the real CRM) would
/// delay the first send of a burst past the jitter allowance. The budget's
/// handling of the report is unit-tested with paused time
/// (`scheduler::tests::sends_behind_a_slow_connect_count_from_when_it_opened`);
/// this checks the wiring through reqwest's connector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_setup_is_reported_to_the_scheduler() {
    let _load = LOAD.lock().await;
    let (_sim, gate) = setup("").await;
    let c = client();
    for n in 0..3 {
        let o = Call::get("/api/v5/orders", Some(ACME_CLIENT))
            .send(&c, &gate.url, &format!("conn-{n}"))
            .await;
        assert_eq!(o.status, 200, "{o:?}");
    }
    let metrics = metrics_text(&gate.admin).await;
    let opened = metric(
        &metrics,
        "crmgate_upstream_connections_total",
        &[("egress", "default")],
    )
    .expect("connection counter present");
    // Sequential requests reuse one pooled connection.
    assert_eq!(opened, 1.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_tenant_is_not_stuck_behind_a_flood() {
    let _load = LOAD.lock().await;
    let (sim, gate) = setup("").await;
    let calls = (0..50)
        .map(|i| Call::get("/api/v5/orders", Some([ACME_CLIENT, ACME_CLIENT2][i % 2])))
        .collect();
    let load = flood(&gate.url, "acme", calls);
    let acme_queued = || gate.gateway.scheduler.tenant_queued("acme");
    let c = client();
    let mut seen = Vec::new();
    for n in 0..5 {
        // Each probe arrives behind a standing flood, after beta was idle
        // while the flood went on (five acme sends, half a second).
        if n > 0 {
            let sent = sim.records().len();
            wait_until("five more acme sends", || sim.records().len() >= sent + 5).await;
        }
        wait_until("30 acme requests queued", || acme_queued() >= 30).await;
        let queued = acme_queued();
        let o = Call::get("/api/v5/orders", Some(BETA_CLIENT))
            .send(&c, &gate.url, &format!("beta-{n}"))
            .await;
        assert_eq!(o.status, 200, "{o:?}");
        seen.push((queued, o.queue_ms.expect("queue-ms header")));
    }
    drop(load);
    println!("fairness: (acme queued, beta queue ms) = {seen:?}");

    for (acme_queued, wait) in seen {
        // Behind a FIFO of this many, beta would wait seconds.
        assert!(acme_queued >= 30, "the flood was not queued: {acme_queued}");
        assert!(
            wait <= 350,
            "beta waited {wait} ms behind {acme_queued} acme requests"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_header_gives_up_without_sending() {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) = isolated_setup(LIMITS).await;
    // The probes use the flood's client key, so they queue behind it.
    let calls = (0..20)
        .map(|_| Call::get("/api/v5/orders", Some(ACME_CLIENT)))
        .collect();
    let load = flood(&gate.url, "flood", calls);
    // 15 queued ahead: 1.5 s of slots, far past the probes' 200 ms.
    wait_until("15 flood requests queued", || {
        gate.gateway.scheduler.tenant_queued("acme") >= 15
    })
    .await;
    let c = client();
    for n in 0..3 {
        let o = Call::get("/api/v5/orders", Some(ACME_CLIENT))
            .header("x-crmgate-max-wait", "200ms")
            .send(&c, &gate.url, &format!("probe-{n}"))
            .await;
        o.assert_gateway_error(503);
        assert_eq!(o.attempts, Some(0), "{o:?}");
    }
    // Everything queued ahead of the probes is served by now, so their
    // turns have passed.
    let outcomes = load.finish().await;
    let records = sim.records();
    assert!(
        not_ok(&outcomes, 200).is_empty(),
        "{:?}",
        not_ok(&outcomes, 200)
    );
    let sent: Vec<&str> = records.iter().map(id_of).collect();
    assert!(
        !sent.iter().any(|id| id.starts_with("probe-")),
        "a request that was answered 503 reached the CRM"
    );
    assert_eq!(records.len(), outcomes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_max_queue_wait_gives_up_without_sending() {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) =
        isolated_setup(&format!("{LIMITS}max_queue_wait = \"300ms\"")).await;
    let calls = (0..20)
        .map(|_| Call::get("/api/v5/orders", Some(ACME_CLIENT)))
        .collect();
    let load = flood(&gate.url, "w", calls);
    wait_until("5 requests served and 5 refused", || {
        answered(&gate, "acme", 200) >= 5 && answered(&gate, "acme", 503) >= 5
    })
    .await;
    let outcomes = load.finish().await;
    let records = sim.records();
    let sent: HashSet<&str> = records.iter().map(id_of).collect();
    let (ok, refused): (Vec<&Outcome>, Vec<&Outcome>) =
        outcomes.iter().partition(|o| o.status == 200);
    println!(
        "max_queue_wait: {} served, {} refused",
        ok.len(),
        refused.len()
    );

    assert!(refused.len() >= 5, "only {} refused", refused.len());
    assert!(ok.len() >= 5, "only {} served", ok.len());
    for o in &refused {
        o.assert_gateway_error(503);
        assert_eq!(o.attempts, Some(0), "{o:?}");
        assert!(
            !sent.contains(o.id.as_str()),
            "{} was refused yet sent",
            o.id
        );
    }
    for o in &ok {
        assert!(
            sent.contains(o.id.as_str()),
            "{} served but not recorded",
            o.id
        );
    }
    assert_eq!(records.len(), ok.len());
    assert_no_503(&records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let (sim, gate) = setup("[limits]\nqueue_capacity = 3").await;
    let c = client();
    let call = Call::get("/api/v5/orders", Some(ACME_CLIENT));
    let outcomes = join_all((0..20).map(|n| {
        let (c, call, url) = (&c, &call, &gate.url);
        async move { call.send(c, url, &format!("burst-{n}")).await }
    }))
    .await;
    let records = sim.records();
    let sent: HashSet<&str> = records.iter().map(id_of).collect();
    let (ok, refused): (Vec<&Outcome>, Vec<&Outcome>) =
        outcomes.iter().partition(|o| o.status == 200);
    println!(
        "queue_capacity 3: {} served, {} refused",
        ok.len(),
        refused.len()
    );

    assert!(refused.len() >= 10, "only {} of 20 refused", refused.len());
    for o in &refused {
        o.assert_gateway_error(503);
        assert!(o.json()["errorMsg"]
            .as_str()
            .unwrap()
            .contains("queue is full"));
        // Refused before queueing: no wait, no send.
        assert_eq!((o.attempts, o.queue_ms), (Some(0), Some(0)), "{o:?}");
        assert!(!sent.contains(o.id.as_str()));
    }
    assert_eq!(records.len(), ok.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cap_refuses_only_that_tenant() {
    let (sim, gate) = setup("[limits]\nmax_queued_per_tenant = 2").await;
    let c = client();
    let call = Call::get("/api/v5/orders", Some(ACME_CLIENT));
    let acme = join_all((0..12).map(|n| {
        let (c, call, url) = (&c, &call, &gate.url);
        async move { call.send(c, url, &format!("acme-{n}")).await }
    }));
    let beta = async {
        // Arrives while acme's share of the queue is full.
        wait_until("acme's share of the queue full", || {
            gate.gateway.scheduler.tenant_queued("acme") >= 2
        })
        .await;
        Call::get("/api/v5/orders", Some(BETA_CLIENT))
            .send(&c, &gate.url, "beta")
            .await
    };
    let (acme, beta) = tokio::join!(acme, beta);
    let records = sim.records();
    let refused: Vec<&Outcome> = acme.iter().filter(|o| o.status != 200).collect();
    println!("tenant cap 2: {} of 12 acme refused", refused.len());

    assert!(refused.len() >= 6, "only {} of 12 refused", refused.len());
    for o in &refused {
        o.assert_gateway_error(503);
        assert!(
            o.json()["errorMsg"].as_str().unwrap().contains("tenant"),
            "{o:?}"
        );
    }
    assert_eq!(beta.status, 200, "{beta:?}");
    assert_eq!(records.len(), 12 - refused.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_while_queued_is_never_sent() {
    // One slot per 1.02 s: the cancelled request would be third, at ~2 s.
    let (sim, gate) = setup("[limits]\ngeneral_per_second = 1").await;
    let c = client();
    let call = Call::get("/api/v5/orders", Some(ACME_CLIENT));
    let send = |id: &'static str| {
        let (c, call, url) = (c.clone(), call.clone(), gate.url.clone());
        tokio::spawn(async move { call.send(&c, &url, id).await })
    };
    let queued = || gate.gateway.scheduler.queued();
    let first = send("first");
    wait_until("first reached the CRM", || !sim.records().is_empty()).await;
    let second = send("second");
    wait_until("second queued", || queued() >= 1).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let cancelled = {
        let (call, url) = (call.clone(), gate.url.clone());
        tokio::spawn(async move { call.request(&impatient, &url, "cancelled").send().await })
    };
    wait_until("cancelled queued", || queued() >= 2).await;
    let after = send("after");
    // `after` queues behind the cancelled request (unless that one's caller,
    // 200 ms after starting, already gave up: then no wait is needed).
    wait_until("after queued", || queued() >= 3 || cancelled.is_finished()).await;

    let gave_up = cancelled.await.unwrap();
    assert!(
        gave_up.as_ref().is_err_and(|e| e.is_timeout()),
        "expected a client timeout, got {gave_up:?}"
    );
    // Diagnostic only: did the gateway notice the hang-up before the slot?
    let withdrawn = poll_until(Duration::from_millis(500), || {
        std::future::ready((gate.gateway.scheduler.withdrawn() >= 1).then_some(()))
    })
    .await
    .is_some();
    // `after` queued behind the cancelled one: once it is answered, the
    // cancelled request's slot has come and gone.
    let after = after.await.unwrap();
    for o in [first.await.unwrap(), second.await.unwrap(), after] {
        assert_eq!(o.status, 200, "{o:?}");
    }
    let records = sim.records();
    let sent: Vec<&str> = records.iter().map(id_of).collect();
    println!("hang-up: withdrawn from the queue before its slot: {withdrawn}; sent {sent:?}");
    assert!(
        !sent.contains(&"cancelled"),
        "a request whose caller hung up was sent (withdrawn from the queue in time: {withdrawn}); sent {sent:?}"
    );
    assert_eq!(sent, ["first", "second", "after"]);
    assert_eq!(gate.gateway.scheduler.queued(), 0);
}

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
