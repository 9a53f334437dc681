//! The cache stage end to end, against the simulator: coalescing (join only
//! while queued, hang-ups, the shared deadline), the TTL cache (rules,
//! invalidation on writes, tenant isolation, `no-cache`/`no-store`,
//! `stale_if_error`, the memory bound) and its metrics. Counts are taken at
//! the simulator: what the CRM really received.

mod common;

use std::time::Duration;

use common::*;
use crmgate::sim::Simulator;

/// One slot per ~1 s, so a request behind a blocker waits long enough for
/// others to join it; the cache on.
const SLOW: &str = "[limits]\ngeneral_per_second = 1\n[cache]\nenabled = true\n";

struct Got {
    status: u16,
    cache: String,
    age: Option<u64>,
    _id: String,
    body: String,
}

async fn get_with(
    gate: &Gate,
    path: &str,
    key: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Got, reqwest::Error> {
    let mut req = client()
        .get(format!("{}{path}", gate.url))
        .header("X-API-KEY", key)
        .timeout(timeout);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await?;
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (status, cache, age, id) = (
        resp.status().as_u16(),
        h("x-crmgate-cache").unwrap_or_default(),
        h("age").map(|a| a.parse().unwrap()),
        h("x-request-id").unwrap_or_default(),
    );
    Ok(Got {
        status,
        cache,
        age,
        _id: id,
        body: resp.text().await?,
    })
}

async fn get(gate: &Gate, path: &str, key: &str) -> Got {
    get_with(gate, path, key, &[], Duration::from_secs(60))
        .await
        .unwrap()
}

/// GETs of `path` (and `query`, if given) the CRM received.
fn seen(sim: &Simulator, path: &str, query: Option<&str>) -> usize {
    sim.records()
        .iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .filter(|r| query.map_or(true, |q| r.query.as_deref().unwrap_or("").contains(q)))
        .count()
}

/// Takes the only slot for the next second, so what follows waits.
async fn block(gate: &Gate) {
    let got = get(gate, "/api/v5/orders?page=9", ACME_CLIENT).await;
    assert_eq!(got.status, 200, "{}", got.body);
}

fn inflight(gate: &Gate, n: u64) -> bool {
    gate.gateway
        .stats(&"acme".into())
        .inflight
        .load(std::sync::atomic::Ordering::Relaxed)
        == n
}

const ORDERS: &str = "/api/v5/orders?limit=20";

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

#[tokio::test]
async fn rules_turn_paths_off_and_add_paths() {
    let (sim, gate) = setup(
        "[cache]\nttl = \"10m\"\n\
         [[cache.rules]]\npath = \"/api/v5/reference/sites\"\nttl = \"0s\"\n\
         [[cache.rules]]\npath = \"/api/v5/orders\"\nttl = \"30s\"\n",
    )
    .await;
    for _ in 0..2 {
        assert_eq!(
            get(&gate, "/api/v5/reference/sites", ACME_CLIENT)
                .await
                .cache,
            "miss"
        );
    }
    assert_eq!(seen(&sim, "/api/v5/reference/sites", None), 2);
    assert_eq!(get(&gate, ORDERS, ACME_CLIENT).await.cache, "miss");
    let again = get(&gate, ORDERS, ACME_CLIENT).await;
    assert_eq!((again.cache.as_str(), again.age.is_some()), ("hit", true));
    assert_eq!(seen(&sim, "/api/v5/orders", None), 1);
    // A default path, and a path no rule names.
    get(&gate, "/api/credentials", ACME_CLIENT).await;
    assert_eq!(
        get(&gate, "/api/credentials", ACME_CLIENT).await.cache,
        "hit"
    );
    get(&gate, "/api/v5/customers", ACME_CLIENT).await;
}

async fn edit_status(gate: &Gate, key: &str, code: &str, name: &str) {
    let resp = client()
        .post(format!(
            "{}/api/v5/reference/statuses/{code}/edit",
            gate.url
        ))
        .header("X-API-KEY", key)
        .form(&[("status", format!("{{\"name\":\"{name}\"}}"))])
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
}

#[tokio::test]
async fn a_write_to_a_dictionary_drops_it_for_that_tenant_only() {
    let (sim, gate) = setup("[cache]\nenabled = true\n").await;
    let statuses = "/api/v5/reference/statuses";
    for (key, want) in [
        (ACME_CLIENT, "miss"),
        (ACME_CLIENT, "hit"),
        (BETA_CLIENT, "miss"),
    ] {
        assert_eq!(
            get(&gate, statuses, key).await.cache,
            want,
            "tenants never share"
        );
    }
    get(&gate, "/api/v5/reference/sites", ACME_CLIENT).await;
    edit_status(&gate, ACME_CLIENT, "new", "Brand new").await;
    let after = get(&gate, statuses, ACME_CLIENT).await;
    assert_eq!(after.cache, "miss");
    assert!(after.body.contains("Brand new"), "{}", after.body);
    assert_eq!(
        get(&gate, statuses, BETA_CLIENT).await.cache,
        "hit",
        "beta's copy stays"
    );
    assert_eq!(
        get(&gate, "/api/v5/reference/sites", ACME_CLIENT)
            .await
            .cache,
        "hit",
        "another dictionary stays"
    );
    assert_eq!(seen(&sim, statuses, None), 3);
}

#[tokio::test]
async fn no_cache_refreshes_and_no_store_bypasses() {
    let (sim, gate) = setup("[cache]\nenabled = true\n").await;
    let p = "/api/v5/reference/statuses";
    let nc = [("Cache-Control", "no-cache")];
    let ns = [("Cache-Control", "no-store")];
    let long = Duration::from_secs(60);
    assert_eq!(get(&gate, p, ACME_CLIENT).await.cache, "miss");
    let refreshed = get_with(&gate, p, ACME_CLIENT, &nc, long).await.unwrap();
    assert_eq!(refreshed.cache, "miss");
    assert_eq!(seen(&sim, p, None), 2);
    edit_status(&gate, ACME_CLIENT, "new", "Fresh").await;
    let bypass = get_with(&gate, p, ACME_CLIENT, &ns, long).await.unwrap();
    assert_eq!(bypass.cache, "bypass");
    assert!(bypass.body.contains("Fresh"));
    assert_eq!(seen(&sim, p, None), 3);
    // no-store kept nothing: the next read fills the cache.
    assert_eq!(get(&gate, p, ACME_CLIENT).await.cache, "miss");
    assert_eq!(get(&gate, p, ACME_CLIENT).await.cache, "hit");
    // A hit is the same through the full path (control headers), and
    // inbound's checks still apply before it: a bad header or key is refused.
    let high = [("X-Crmgate-Priority", "high")];
    assert_eq!(
        get_with(&gate, p, ACME_CLIENT, &high, long)
            .await
            .unwrap()
            .cache,
        "hit"
    );
    let bad = [("X-Crmgate-Priority", "urgent")];
    assert_eq!(
        get_with(&gate, p, ACME_CLIENT, &bad, long)
            .await
            .unwrap()
            .status,
        400
    );
    assert_eq!(get(&gate, p, "not-a-client-key").await.status, 403);
    let by_prefix = get(&gate, &format!("/acme{p}?apiKey={ACME_CLIENT}"), "").await;
    assert_eq!(by_prefix.cache, "hit", "the same read, key in the query");
    assert_eq!(seen(&sim, p, None), 4);
}

#[tokio::test]
async fn an_expired_entry_is_served_when_the_crm_fails_or_the_deadline_passes() {
    let (sim, gate) = setup(
        "[limits]\ngeneral_per_second = 1\n[retry]\nmax_attempts = 1\n\
         [cache]\nttl = \"1ms\"\nstale_if_error = \"1h\"\n",
    )
    .await;
    let p = "/api/v5/reference/statuses";
    let first = get(&gate, p, ACME_CLIENT).await;
    assert_eq!(first.cache, "miss");
    // The TTL is 1 ms: the entry is expired by the time of the next request.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    sim.faults().fail_next(1, None);
    let stale = get(&gate, p, ACME_CLIENT).await;
    assert_eq!((stale.status, stale.cache.as_str()), (200, "stale"));
    assert_eq!(stale.body, first.body);
    assert!(stale.age.is_some());
    // The queue deadline: the slot is taken for a second, the caller waits 200 ms.
    block(&gate).await;
    let hurried = get_with(
        &gate,
        p,
        ACME_CLIENT,
        &[("X-Crmgate-Max-Wait", "200ms")],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!((hurried.status, hurried.cache.as_str()), (200, "stale"));
    // With no stale copy, the error comes through.
    let none = get_with(
        &gate,
        "/api/credentials",
        ACME_CLIENT,
        &[("X-Crmgate-Max-Wait", "100ms")],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_eq!(none.status, 503);
}

#[tokio::test]
async fn the_memory_bound_holds_and_series_exist_from_the_start() {
    let (_sim, gate) = setup("[cache]\nmax_bytes = 4096\n").await;
    let m = metrics_text(&gate.admin).await;
    for tenant in ["acme", "beta", "open"] {
        for result in ["hit", "miss", "coalesced", "stale", "bypass"] {
            let labels = [("tenant", tenant), ("result", result)];
            assert_eq!(
                metric(&m, "crmgate_cache_requests_total", &labels),
                Some(0.0)
            );
        }
        assert_eq!(
            metric(&m, "crmgate_coalesced_total", &[("tenant", tenant)]),
            Some(0.0)
        );
    }
    assert_eq!(metric(&m, "crmgate_cache_bytes", &[]), Some(0.0));
    for i in 0..30 {
        let got = get(
            &gate,
            &format!("/api/v5/reference/statuses?n={i}"),
            ACME_CLIENT,
        )
        .await;
        assert_eq!(got.cache, "miss");
    }
    let m = metrics_text(&gate.admin).await;
    let bytes = metric(&m, "crmgate_cache_bytes", &[]).unwrap();
    let entries = metric(&m, "crmgate_cache_entries", &[]).unwrap();
    assert!(bytes > 0.0 && bytes <= 4096.0, "{bytes} bytes");
    assert!((1.0..30.0).contains(&entries), "{entries} entries");
    let status = status_now(&gate);
    let acme = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "acme")
        .unwrap();
    assert_eq!(acme["cache_last_minute"]["requests_last_minute"], 30);
}

#[tokio::test]
async fn a_reload_turns_the_stage_off_and_on_and_a_new_bound_starts_empty() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crmgate.toml");
    let text = |cache: &str| {
        config_text(
            &sim,
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[cache]\n{cache}\n"
            ),
        )
    };
    let gate = Gate::from_file(&path, &text("enabled = true")).await;
    let p = "/api/v5/reference/statuses";
    assert_eq!(get(&gate, p, ACME_CLIENT).await.cache, "miss");
    assert_eq!(get(&gate, p, ACME_CLIENT).await.cache, "hit");

    std::fs::write(&path, text("enabled = false")).unwrap();
    gate.gateway.reload().expect("valid config");
    assert_eq!(
        get(&gate, p, ACME_CLIENT).await.cache,
        "",
        "no stage, no header"
    );
    assert_eq!(seen(&sim, p, None), 2);

    std::fs::write(&path, text("enabled = true\nmax_bytes = 65536")).unwrap();
    gate.gateway.reload().expect("valid config");
    assert_eq!(
        get(&gate, p, ACME_CLIENT).await.cache,
        "miss",
        "a new bound, a new store"
    );
    assert_eq!(get(&gate, p, ACME_CLIENT).await.cache, "hit");
    assert_eq!(seen(&sim, p, None), 3);
}
