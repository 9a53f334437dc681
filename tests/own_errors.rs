//! crmgate's own errors, end to end: bad requests, oversized bodies, an
//! unreachable or stalled CRM, each a RetailCRM-shaped JSON answer that
//! names no key and (for bad input) never reaches the CRM.
mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn bad_requests_get_retailcrm_json_errors_and_never_reach_the_crm() {
    let (sim, gate) = start("").await;
    let c = client();
    let url = |p: &str| format!("{}{p}", gate.url);
    let missing = "\"apiKey\" is missing.";
    let wrong = "Wrong \"apiKey\" value.";

    let msg = own_error(
        c.get(url("/ghost/api/v5/orders"))
            .header("X-API-KEY", ACME_CLIENT)
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    assert!(msg.contains("Account does not exist"), "{msg}");
    assert!(msg.contains("ghost"), "{msg}");

    for path in ["/api/v5/orders", "/acme/api/v5/orders", "/api/credentials"] {
        let resp = c.get(url(path)).send().await.unwrap();
        assert_eq!(own_error(resp, 403).await, missing, "{path}");
    }
    // Wrong keys, in every place a key can be presented.
    let resp = c
        .get(url("/api/v5/orders"))
        .header("X-API-KEY", "svc-nobody")
        .send()
        .await
        .unwrap();
    assert_eq!(own_error(resp, 403).await, wrong);
    let resp = c
        .get(url("/api/v5/orders?apiKey=svc-nobody"))
        .send()
        .await
        .unwrap();
    assert_eq!(own_error(resp, 403).await, wrong);
    let resp = c
        .post(url("/api/v5/orders/create"))
        .form(&[("apiKey", "svc-nobody"), ("order", "{}")])
        .send()
        .await
        .unwrap();
    assert_eq!(own_error(resp, 403).await, wrong);
    // Another tenant's key does not open acme, nor does the real key.
    for key in [BETA_CLIENT, ACME_KEY] {
        let resp = c
            .get(url("/acme/api/v5/orders"))
            .header("X-API-KEY", key)
            .send()
            .await
            .unwrap();
        assert_eq!(own_error(resp, 403).await, wrong);
    }
    let resp = c
        .get(url("/api/v5/orders"))
        .header("X-API-KEY", ACME_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(own_error(resp, 403).await, wrong);

    for path in [
        "/",
        "/foo",
        "/acme/foo",
        "/api",
        "/acme/api",
        "/acme",
        "//api/v5/orders",
    ] {
        let resp = c
            .get(url(path))
            .header("X-API-KEY", ACME_CLIENT)
            .send()
            .await
            .unwrap();
        own_error(resp, 404).await;
    }

    for (name, value) in [
        ("X-Crmgate-Priority", "urgent"),
        ("X-Crmgate-Priority", ""),
        ("X-Crmgate-Max-Wait", "soon"),
        ("X-Crmgate-Max-Wait", "-1s"),
    ] {
        let resp = c
            .get(url("/api/v5/orders"))
            .header("X-API-KEY", ACME_CLIENT)
            .header(name, value)
            .send()
            .await
            .unwrap();
        let msg = own_error(resp, 400).await;
        assert!(
            msg.to_ascii_lowercase()
                .contains(&name.to_ascii_lowercase()),
            "{msg}"
        );
    }

    assert!(sim.records().is_empty(), "{:?}", sim.records());
    // Valid control headers are accepted (so the 400s above were about the values).
    let resp = c
        .get(url("/api/v5/orders"))
        .header("X-API-KEY", ACME_CLIENT)
        .header("X-Crmgate-Priority", "High")
        .header("X-Crmgate-Max-Wait", "5s")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(sim.records().len(), 1);
}

#[tokio::test]
async fn oversized_bodies_get_413_with_or_without_content_length() {
    let (sim, gate) = start(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nmax_body_bytes = 64\n",
    )
    .await;
    let c = client();
    let url = format!("{}/api/v5/orders/create", gate.url);
    // No length known up front: reqwest sends `Transfer-Encoding: chunked`.
    let chunked = |parts: Vec<String>| {
        let stream = futures_util::stream::iter(parts.into_iter().map(Ok::<_, std::io::Error>));
        reqwest::Body::wrap_stream(stream)
    };
    let big = format!("order=%7B%7D&comment={}", "x".repeat(100));

    let resp = c
        .post(&url)
        .header("X-API-KEY", ACME_CLIENT)
        .header("content-type", FORM)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let msg = own_error(resp, 413).await;
    assert!(msg.contains("64"), "{msg}");
    let resp = c
        .post(&url)
        .header("X-API-KEY", ACME_CLIENT)
        .header("content-type", FORM)
        .body(chunked(vec![
            "order=%7B%7D&comment=".into(),
            "y".repeat(40),
            "z".repeat(40),
        ]))
        .send()
        .await
        .unwrap();
    own_error(resp, 413).await;
    // The key's place does not matter: the body is refused before it is read.
    let resp = c
        .post(&url)
        .header("content-type", FORM)
        .body(format!("apiKey={ACME_CLIENT}&{big}"))
        .send()
        .await
        .unwrap();
    own_error(resp, 413).await;
    assert!(sim.records().is_empty(), "{:?}", sim.records());

    // Exactly at the limit, both ways, is fine.
    let head = "order=%7B%22externalId%22%3A%22L1%22%7D&c=";
    let at_limit = format!("{head}{}", "w".repeat(64 - head.len()));
    assert_eq!(at_limit.len(), 64);
    let resp = c
        .post(&url)
        .header("X-API-KEY", ACME_CLIENT)
        .header("content-type", FORM)
        .body(at_limit.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let second = at_limit.replace("L1", "L2");
    let (a, b) = second.split_at(30);
    let resp = c
        .post(&url)
        .header("X-API-KEY", ACME_CLIENT)
        .header("content-type", FORM)
        .body(chunked(vec![a.to_string(), b.to_string()]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let recs = sim.records();
    assert_eq!(recs.len(), 2);
    assert!(body_str(&recs[1]).starts_with(&second));
}

#[tokio::test]
async fn an_unreachable_crm_is_502_json_naming_the_tenant_without_keys() {
    // Nothing listens there: bound, read and released.
    let port = free_port();
    let (sim, gate) = start(&format!(
        "[retry]\nmax_attempts = 2\ninitial_backoff = \"10ms\"\nmax_backoff = \"20ms\"\n\
         [[tenants]]\nname = \"dead\"\nbase_url = \"http://127.0.0.1:{port}\"\n\
         api_key = \"real-dead-key-5e5e\"\nclient_keys = [\"svc-dead-0042\"]\n"
    ))
    .await;
    let c = client();
    let resp = c
        .get(format!(
            "{}/api/v5/orders?apiKey=svc-dead-0042&limit=20",
            gate.url
        ))
        .send()
        .await
        .unwrap();
    assert!(header(&resp, "x-crmgate-attempts").is_some());
    let msg = own_error(resp, 502).await;
    assert!(msg.contains("tenant dead"), "{msg}");
    assert!(
        !msg.contains("real-dead-key-5e5e") && !msg.contains("svc-dead-0042"),
        "{msg}"
    );
    let resp = c
        .post(format!("{}/dead/api/v5/orders/create", gate.url))
        .header("X-API-KEY", "svc-dead-0042")
        .form(&[("order", "{}")])
        .send()
        .await
        .unwrap();
    let msg = own_error(resp, 502).await;
    assert!(
        msg.contains("tenant dead") && !msg.contains("real-dead-key-5e5e"),
        "{msg}"
    );
    assert!(sim.records().is_empty());
    // The gateway keeps serving the other tenants.
    let resp = c
        .get(format!("{}/api/v5/orders", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_stalled_post_is_504_after_one_attempt() {
    let (sim, gate) = start("[upstream]\nrequest_timeout = \"300ms\"\n").await;
    sim.faults().stall_next(1, Duration::from_secs(3));
    let started = Instant::now();
    let resp = client()
        .post(format!("{}/api/v5/orders/create", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        // No externalId: nothing to reconcile by (see tests/reconcile.rs).
        .form(&[("order", r#"{"number":"stall-1"}"#)])
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(header(&resp, "x-crmgate-attempts"), Some("1"));
    let msg = own_error(resp, 504).await;
    assert!(
        msg.contains("tenant acme") && msg.contains("300ms"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(2), "waited {took:?}");
    let recs = sim.records();
    assert_eq!(recs.len(), 1, "a POST is never resent: {recs:?}");
    assert_eq!(recs[0].method, "POST");
}
