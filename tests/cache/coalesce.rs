//! Coalescing: identical GETs share a request only while it waits.

use std::time::Duration;

use super::common::*;
use super::*;

#[tokio::test]
async fn identical_gets_join_while_queued_and_each_gets_the_full_answer() {
    let (sim, gate) = setup(SLOW).await;
    block(&gate).await;
    let callers: Vec<_> = (0..5)
        .map(|i| {
            let (url, id) = (gate.url.clone(), format!("caller-{i}"));
            // Parameters in another order are the same read.
            let path = if i % 2 == 0 {
                "/api/v5/orders?limit=20&page=1"
            } else {
                "/api/v5/orders?page=1&limit=20"
            };
            tokio::spawn(async move {
                let resp = client()
                    .get(format!("{url}{path}"))
                    .header("X-API-KEY", ACME_CLIENT)
                    .header("X-Request-Id", &id)
                    .send()
                    .await
                    .unwrap();
                let h = |n: &str| resp.headers()[n].to_str().unwrap().to_string();
                let out = (
                    id,
                    h("x-request-id"),
                    h("x-crmgate-cache"),
                    resp.status().as_u16(),
                );
                (out, resp.text().await.unwrap())
            })
        })
        .collect();
    // All five inside the stage (it seats them before any await) while the
    // shared request still waits for the slot the blocker used.
    wait_until("five callers seated, one request queued", || {
        inflight(&gate, 5) && gate.gateway.scheduler.queued() == 1
    })
    .await;
    let mut bodies = Vec::new();
    let mut results = Vec::new();
    for c in callers {
        let ((id, echoed, cache, status), body) = c.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(id, echoed, "each joiner keeps its own X-Request-Id");
        results.push(cache);
        bodies.push(body);
    }
    results.sort();
    assert_eq!(
        results,
        ["coalesced", "coalesced", "coalesced", "coalesced", "miss"]
    );
    assert!(bodies
        .iter()
        .all(|b| b == &bodies[0] && b.contains("\"orders\"")));
    assert_eq!(seen(&sim, "/api/v5/orders", Some("limit=20")), 1);
    let m = metrics_text(&gate.admin).await;
    assert_eq!(
        metric(&m, "crmgate_coalesced_total", &[("tenant", "acme")]),
        Some(4.0)
    );
    assert_eq!(
        metric(
            &m,
            "crmgate_cache_requests_total",
            &[("tenant", "acme"), ("result", "miss")]
        ),
        Some(2.0),
        "the shared request, and the blocker (which went straight through)"
    );
}

#[tokio::test]
async fn a_get_after_the_shared_request_was_sent_waits_for_its_own_slot() {
    let (sim, gate) = setup(SLOW).await;
    sim.set_latency(Duration::from_millis(700), Duration::from_millis(700));
    block(&gate).await;
    let spawn_get = |path: &'static str| {
        let url = gate.url.clone();
        tokio::spawn(async move {
            let r = client()
                .get(format!("{url}{path}"))
                .header("X-API-KEY", ACME_CLIENT)
                .send()
                .await
                .unwrap();
            r.headers()["x-crmgate-cache"].to_str().unwrap().to_string()
        })
    };
    // A list page (not cached): queued behind the blocker, then sent.
    let first = spawn_get(ORDERS);
    wait_until("the first request reached the CRM", || {
        seen(&sim, "/api/v5/orders", Some("limit=20")) == 1
    })
    .await;
    let second = get(&gate, ORDERS, ACME_CLIENT).await;
    assert_eq!(first.await.unwrap(), "miss");
    assert_eq!(
        second.cache, "miss",
        "it did not join a request already sent"
    );
    assert_eq!(seen(&sim, "/api/v5/orders", Some("limit=20")), 2);

    // A cacheable read already sent: a caller behind it waits for the fill
    // and is answered from the entry (the cache's lock), not by a second read.
    let statuses = "/api/v5/reference/statuses";
    let filling = spawn_get(statuses);
    wait_until("the fill reached the CRM", || {
        seen(&sim, statuses, None) == 1
    })
    .await;
    let behind = get(&gate, statuses, ACME_CLIENT).await;
    assert_eq!(
        (filling.await.unwrap().as_str(), behind.cache.as_str()),
        ("miss", "hit")
    );
    assert_eq!(seen(&sim, statuses, None), 1);
}

#[tokio::test]
async fn the_shared_request_survives_its_starter_but_not_the_last_caller() {
    let (sim, gate) = setup(SLOW).await;
    block(&gate).await;
    let short = Duration::from_millis(300);
    // The caller that started the flight hangs up; the one that joined it
    // still gets the answer, from one request.
    let starter = {
        let gate_url = gate.url.clone();
        tokio::spawn(async move {
            client()
                .get(format!("{gate_url}{ORDERS}"))
                .header("X-API-KEY", ACME_CLIENT)
                .timeout(short)
                .send()
                .await
        })
    };
    wait_until("the starter queued", || {
        gate.gateway.scheduler.queued() == 1
    })
    .await;
    let joiner = {
        let gate_url = gate.url.clone();
        tokio::spawn(async move {
            let r = client()
                .get(format!("{gate_url}{ORDERS}"))
                .header("X-API-KEY", ACME_CLIENT)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.headers()["x-crmgate-cache"].to_str().unwrap().to_string(),
            )
        })
    };
    assert!(starter.await.unwrap().is_err(), "the starter gave up");
    assert_eq!(joiner.await.unwrap(), (200, "coalesced".to_string()));
    assert_eq!(seen(&sim, "/api/v5/orders", Some("limit=20")), 1);

    // Everyone hangs up while the shared request is queued: it leaves the
    // queue unsent.
    block(&gate).await;
    let quitters: Vec<_> = (0..3)
        .map(|_| {
            let gate_url = gate.url.clone();
            tokio::spawn(async move {
                client()
                    .get(format!("{gate_url}/api/v5/orders?limit=50"))
                    .header("X-API-KEY", ACME_CLIENT)
                    .timeout(short)
                    .send()
                    .await
            })
        })
        .collect();
    for q in quitters {
        assert!(q.await.unwrap().is_err());
    }
    wait_until("the shared request left the queue", || {
        gate.gateway.scheduler.queued() == 0 && gate.gateway.cache.flights() == 0
    })
    .await;
    // Same client, so same fair-queue flow: had the shared request stayed,
    // it would reach the CRM before this one.
    let probe = get(&gate, "/api/v5/orders?page=3", ACME_CLIENT).await;
    assert_eq!(probe.status, 200);
    assert_eq!(seen(&sim, "/api/v5/orders", Some("limit=50")), 0);
    assert!(gate.gateway.scheduler.withdrawn() >= 1);
}

#[tokio::test]
async fn the_shared_request_waits_as_long_as_its_most_patient_caller() {
    let (sim, gate) = setup(SLOW).await;
    block(&gate).await;
    let hurried = {
        let gate_url = gate.url.clone();
        tokio::spawn(async move {
            client()
                .get(format!("{gate_url}{ORDERS}"))
                .header("X-API-KEY", ACME_CLIENT)
                .header("X-Crmgate-Max-Wait", "200ms")
                .header("X-Crmgate-Priority", "low")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    wait_until("the hurried caller queued", || {
        gate.gateway.scheduler.queued() == 1
    })
    .await;
    let patient = {
        let gate_url = gate.url.clone();
        tokio::spawn(async move {
            let r = client()
                .get(format!("{gate_url}{ORDERS}"))
                .header("X-API-KEY", ACME_CLIENT)
                .header("X-Crmgate-Priority", "high")
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.headers()["x-crmgate-cache"].to_str().unwrap().to_string(),
            )
        })
    };
    // The starter's own deadline passes: it gets its 503, the request it
    // started stays queued for the joiner (deadline extended), is sent once.
    assert_eq!(hurried.await.unwrap(), 503);
    assert_eq!(patient.await.unwrap(), (200, "coalesced".to_string()));
    assert_eq!(seen(&sim, "/api/v5/orders", Some("limit=20")), 1);
}
