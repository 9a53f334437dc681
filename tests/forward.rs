//! The forward stage end to end: the retry rule against a real simulator,
//! and one config snapshot per send across a reload.

mod common;

use std::time::Duration;

use common::*;
use crmgate::sim::{SimConfig, Simulator};

const MOVED_KEY: &str = "real-acme-key-moved-b2e4";

#[tokio::test]
async fn a_backoff_never_outlives_the_callers_deadline() {
    let (sim, gate) = setup("").await;
    // The CRM asks for 30 s; the caller waits at most 2 s: it gets the 503
    // now, with the CRM's hint, after one send.
    sim.faults().fail_next(1, Some("30".into()));
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        client()
            .get(format!("{}/api/v5/orders", gate.url))
            .header("X-API-KEY", ACME_CLIENT)
            .header("X-Crmgate-Max-Wait", "2s")
            .send(),
    )
    .await
    .expect("answered without waiting out the Retry-After")
    .unwrap();
    assert_eq!(resp.status(), 503);
    let h = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(h("retry-after").as_deref(), Some("30"));
    assert_eq!(h("x-crmgate-attempts").as_deref(), Some("1"));
    let body = json(resp).await;
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(sim.records().len(), 1);
}

/// A simulator holding acme's account under `key`.
async fn sim_with_key(key: &str) -> Simulator {
    spawn_sim(SimConfig {
        accounts: vec![sim_account("acme", key, "main")],
        ..SimConfig::default()
    })
    .await
}

fn moved_text(sim: &Simulator, key: &str) -> String {
    // The cache stage off: the test counts identical queued GETs.
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [cache]\nenabled = false\n\
         [limits]\ngeneral_per_second = 2\n\n\
         [[tenants]]\nname = \"acme\"\nbase_url = \"{}\"\napi_key = \"{key}\"\n\
         client_keys = [\"{ACME_CLIENT}\"]\n",
        sim.base_url()
    )
}

#[tokio::test]
async fn queued_requests_follow_a_moved_tenant_with_the_key_of_its_new_host() {
    let old = sim_with_key(ACME_KEY).await;
    let new = sim_with_key(MOVED_KEY).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crmgate.toml");
    let gate = Gate::from_file(&path, &moved_text(&old, ACME_KEY)).await;

    let c = client();
    let url = format!("{}/api/v5/orders", gate.url);
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let req = c.get(&url).header("X-API-KEY", ACME_CLIENT);
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    let gw = gate.gateway.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gw.scheduler.queued() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests never queued"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::fs::write(&path, moved_text(&new, MOVED_KEY)).unwrap();
    gw.reload().expect("the moved config is valid");

    for call in calls {
        // Each simulator answers 403 to a key that is not its own: every 200
        // proves URL and key came from one snapshot.
        assert_eq!(call.await.unwrap().unwrap(), 200);
    }
    let (at_old, at_new) = (old.records(), new.records());
    assert_eq!(at_old.len() + at_new.len(), 6, "each request sent once");
    assert!(at_old
        .iter()
        .all(|r| r.api_key.as_deref() == Some(ACME_KEY)));
    assert!(at_new
        .iter()
        .all(|r| r.api_key.as_deref() == Some(MOVED_KEY)));
    assert!(
        at_new.len() >= 3,
        "the queued requests went to the new host"
    );
}
