//! The TTL cache: rules, writes, tenants, directives, stale answers,
//! the memory bound, metrics and reload.

use std::time::Duration;

use super::common::*;
use super::*;

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
