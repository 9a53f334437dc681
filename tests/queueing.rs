//! The fair queue and its deadlines end to end: a light tenant is not stuck
//! behind a flood, a caller's or the config's maximum wait gives up
//! without sending, a full queue and a tenant cap refuse at once, and a
//! caller that hangs up while queued is never sent. Real loopback sockets
//! against the strict simulated CRM; counts, never how long a test took.
mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use futures_util::future::join_all;

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
