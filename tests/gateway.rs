//! Gateway core, end to end: keys, tenants, rewriting, crmgate's own errors
//! and streaming the CRM's answers back. Real sockets, the simulator as the
//! CRM (or a tiny raw HTTP stub where the simulator cannot say what we need).
mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use crmgate::sim::{Received, Simulator};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FORM: &str = "application/x-www-form-urlencoded";
/// What crmgate's own answers and the simulator's JSON carry.
const JSON_TYPE: &str = "application/json; charset=utf-8";

/// [`setup`] with budgets high enough that no test waits for a slot: these
/// tests are about what is sent, not when.
async fn start(extra: &str) -> (Simulator, Gate) {
    start_with(|_| extra.to_string()).await
}

/// [`start`] with extra config that needs the simulator's URL.
async fn start_with(extra: impl FnOnce(&Simulator) -> String) -> (Simulator, Gate) {
    let sim = sim().await;
    sim.set_limits(100_000, 100_000);
    let extra = format!(
        "[limits]\ngeneral_per_second = 1000\ntelephony_per_second = 1000\n{}",
        extra(&sim)
    );
    let gate = Gate::start(config(&config_text(&sim, &extra))).await;
    (sim, gate)
}

/// Checks one of crmgate's own answers: status, JSON content type,
/// `{"success":false,"errorMsg":...}`; returns the message.
async fn own_error(resp: reqwest::Response, status: u16) -> String {
    assert_eq!(resp.status(), status, "{resp:?}");
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let body = json(resp).await;
    assert_eq!(body["success"], false, "{body}");
    let msg = body["errorMsg"]
        .as_str()
        .unwrap_or_else(|| panic!("no errorMsg in {body}"))
        .to_string();
    for secret in CLIENT_KEYS.iter().chain(&[ACME_KEY, BETA_KEY]) {
        assert!(!msg.contains(secret), "a key leaked into {msg:?}");
    }
    msg
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

fn body_str(r: &Received) -> &str {
    std::str::from_utf8(&r.body).unwrap()
}

/// A port nothing listens on (bound, read, released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A raw HTTP/1.1 upstream that answers every request with `response`
/// verbatim and closes; the request heads it read are sent on the channel.
async fn raw_upstream(
    response: &'static str,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !contains(&head, "\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, rx)
}

/// Sends `request` as raw bytes (so no client normalises the path) and
/// returns the status code and the whole answer.
async fn raw_request(gate: &Gate, request: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut answer))
        .await
        .expect("the gateway answers")
        .unwrap();
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    (status, answer)
}

#[tokio::test]
async fn client_keys_are_stripped_from_header_query_and_form_and_the_real_key_injected() {
    let (sim, gate) = start("").await;
    let c = client();
    let order = r#"{"externalId":"strip-1"}"#;

    // Header, query (twice) and form body.
    send_a_key_in_every_place(&c, &gate.url, "strip-2").await;
    // All three at once.
    let r = c
        .post(format!(
            "{}/api/v5/orders/create?apiKey={ACME_CLIENT2}",
            gate.url
        ))
        .header("X-API-KEY", ACME_CLIENT)
        .form(&[("apiKey", ACME_CLIENT2), ("order", order)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let recs = sim.records();
    assert_eq!(recs.len(), 4, "{recs:?}");
    assert_no_client_key(&recs);
    let real: Vec<_> = recs.iter().map(|r| r.api_key.as_deref()).collect();
    assert_eq!(
        real,
        [
            Some(ACME_KEY),
            Some(ACME_KEY),
            Some(BETA_KEY),
            Some(ACME_KEY)
        ]
    );
    for r in &recs {
        let real = r.api_key.as_deref().unwrap();
        assert_eq!(r.header("x-api-key"), Some(real));
        assert_eq!(r.status / 100, 2, "{r:?}");
    }
    assert_eq!(recs[1].query.as_deref(), Some("limit=20&site=main"));
    assert_eq!(
        body_str(&recs[2]),
        "site=beta-shop&order=%7B%22externalId%22%3A%22strip-2%22%7D"
    );
    // A form gets the tenant's site in the form, not in the query.
    assert_eq!(recs[3].query, None);
    assert_eq!(
        body_str(&recs[3]),
        "order=%7B%22externalId%22%3A%22strip-1%22%7D&site=main"
    );
    assert_eq!(sim.orders_created("beta").len(), 1);
    assert_eq!(sim.orders_created("acme").len(), 1);
}

#[tokio::test]
async fn tenants_resolve_by_client_key_and_by_prefix() {
    let (sim, gate) = start("").await;
    let c = client();
    let cases: [(&str, Option<&str>, &str, Option<&str>); 5] = [
        (
            "/api/v5/orders",
            Some(ACME_CLIENT),
            ACME_KEY,
            Some("site=main"),
        ),
        ("/api/v5/orders", Some(BETA_CLIENT), BETA_KEY, None),
        (
            "/acme/api/v5/orders",
            Some(ACME_CLIENT2),
            ACME_KEY,
            Some("site=main"),
        ),
        ("/beta/api/v5/orders", Some(BETA_CLIENT), BETA_KEY, None),
        // "open" has no client keys: the prefix alone is enough.
        ("/open/api/v5/orders", None, ACME_KEY, None),
    ];
    for (path, key, _, _) in cases {
        let mut req = c.get(format!("{}{path}", gate.url));
        if let Some(k) = key {
            req = req.header("X-API-KEY", k);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path} {key:?}");
        assert_eq!(json(resp).await["success"], true);
    }
    let recs = sim.records();
    assert_eq!(recs.len(), cases.len());
    for (r, (_, _, real, query)) in recs.iter().zip(cases) {
        assert_eq!(r.path, "/api/v5/orders", "the prefix is not forwarded");
        assert_eq!(r.api_key.as_deref(), Some(real), "{r:?}");
        assert_eq!(r.query.as_deref(), query, "{r:?}");
    }
    assert_no_client_key(&recs);
}

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
async fn dot_segments_cannot_leave_api_or_change_the_budget() {
    let (sim, gate) = start("").await;
    // Raw bytes: an HTTP client would resolve the dots before sending.
    for path in [
        "/api/../foo",
        "/api/v5/telephony/../orders",
        "/acme/api/v5/%2e%2e/%2E%2E/admin",
        "/api/v5/./orders",
        "/acme/api/./v5/orders",
        "/api\\..\\foo",
        "/api/v5/telephony\\..\\orders",
    ] {
        let (status, answer) = raw_request(
            &gate,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nX-API-KEY: {ACME_CLIENT}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(status, 404, "{path}: {answer}");
        assert!(answer.contains("\"success\":false"), "{answer}");
    }
    assert!(sim.records().is_empty(), "{:?}", sim.records());
    // Dots inside a segment are just characters.
    let (status, answer) = raw_request(
        &gate,
        &format!(
            "GET /api/v5/orders?filter[name]=a..b HTTP/1.1\r\nHost: localhost\r\nX-API-KEY: {ACME_CLIENT}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(sim.records()[0].path, "/api/v5/orders");
}

#[tokio::test]
async fn bodies_and_queries_pass_through_byte_exact() {
    let (sim, gate) = start("").await;
    let c = client();
    let url = |p: &str| format!("{}{p}", gate.url);

    let create = "site=simple-site&order=%7B%22externalId%22%3A%22a123%22%7D";
    let resp = c
        .post(url("/api/v5/orders/create"))
        .header("X-API-KEY", ACME_CLIENT)
        .header("content-type", FORM)
        .body(create)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body = json(resp).await;
    assert_eq!(body["order"]["externalId"], "a123");
    assert_eq!(body["order"]["site"], "simple-site");
    // The same with a legacy key: only the key goes.
    let resp = c
        .post(url("/api/v5/orders/create"))
        .header("content-type", FORM)
        .body(format!(
            "site=simple-site&apiKey={ACME_CLIENT}&order=%7B%22externalId%22%3A%22a124%22%7D"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let resp = c
        .get(url("/api/v5/orders?limit=50&page=3"))
        .header("X-API-KEY", BETA_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert_eq!(
        body["pagination"],
        json!({"limit": 50, "totalCount": 237, "currentPage": 3, "totalPageCount": 5})
    );
    assert_eq!(body["orders"].as_array().unwrap().len(), 50);
    assert_eq!(body["orders"][0]["id"], 101);

    let queries = [
        "filter[numbers][]=1235C&filter[customFields][nps][min]=5",
        "filter%5Bnumbers%5D%5B%5D=1235C&filter%5BcustomFields%5D%5Bnps%5D%5Bmin%5D=5",
        "filter[name]=Ivan+Petrov&filter[email]=a%2Bb%40example.ru&filter[ids][]=1&filter[ids][]=2&flag",
    ];
    for q in queries {
        let resp = c
            .get(url(&format!("/beta/api/v5/orders?{q}")))
            .header("X-API-KEY", BETA_CLIENT)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{q}");
    }
    let resp = c
        .get(url(&format!(
            "/api/v5/orders?filter[numbers][]=1235C&apiKey={BETA_CLIENT}&limit=20"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let recs = sim.records();
    assert_eq!(recs.len(), 7);
    assert_eq!(body_str(&recs[0]), create);
    assert_eq!(
        recs[0].header("content-type"),
        Some(FORM),
        "content type kept"
    );
    assert_eq!(body_str(&recs[1]), create.replace("a123", "a124"));
    assert_eq!(recs[2].query.as_deref(), Some("limit=50&page=3"));
    for (r, q) in recs[3..6].iter().zip(queries) {
        assert_eq!(r.query.as_deref(), Some(q));
    }
    assert_eq!(
        recs[6].query.as_deref(),
        Some("filter[numbers][]=1235C&limit=20")
    );
    assert_no_client_key(&recs);
}

#[tokio::test]
async fn the_tenant_site_is_added_only_when_the_request_has_none() {
    let (sim, gate) = start("").await;
    let c = client();
    let url = |p: &str| format!("{}{p}", gate.url);
    let order = "order=%7B%22externalId%22%3A%22s1%22%7D";

    let get = |path: String, key: &'static str| c.get(url(&path)).header("X-API-KEY", key);
    let post = |path: &str, key: &'static str, body: String| {
        c.post(url(path))
            .header("X-API-KEY", key)
            .header("content-type", FORM)
            .body(body)
    };
    let reqs = [
        get("/api/v5/orders?limit=20".into(), ACME_CLIENT),
        get("/api/v5/orders".into(), ACME_CLIENT),
        c.get(url(&format!("/api/v5/orders?apiKey={ACME_CLIENT}"))),
        get("/api/v5/orders?limit=20&site=other".into(), ACME_CLIENT),
        post("/api/v5/orders/create", ACME_CLIENT, order.into()),
        post(
            "/api/v5/orders/create",
            ACME_CLIENT,
            order.replace("s1", "s2") + "&site=own",
        ),
        post(
            "/api/v5/orders/create?site=inquery",
            ACME_CLIENT,
            order.replace("s1", "s3"),
        ),
        get("/api/v5/orders?limit=20".into(), BETA_CLIENT),
        post(
            "/api/v5/orders/create",
            BETA_CLIENT,
            order.replace("s1", "s4"),
        ),
        c.get(url("/open/api/v5/orders?limit=20")),
    ];
    for req in reqs {
        let resp = req.send().await.unwrap();
        assert!(resp.status().is_success(), "{resp:?}");
    }
    let recs = sim.records();
    let seen: Vec<(Option<&str>, &str)> = recs
        .iter()
        .map(|r| (r.query.as_deref(), body_str(r)))
        .collect();
    let o = |id: &str| order.replace("s1", id);
    assert_eq!(
        seen,
        [
            (Some("limit=20&site=main"), ""),
            (Some("site=main"), ""),
            (Some("site=main"), ""),
            (Some("limit=20&site=other"), ""),
            (None, &*format!("{}&site=main", o("s1"))),
            (None, &*format!("{}&site=own", o("s2"))),
            (Some("site=inquery"), &*o("s3")),
            (Some("limit=20"), ""),
            (None, &*o("s4")),
            (Some("limit=20"), ""),
        ]
    );
    let sites: Vec<_> = sim
        .orders_created("acme")
        .iter()
        .map(|o| o["site"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sites, ["main", "own", "main"]);
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
    let port = closed_port();
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

#[tokio::test]
async fn hop_by_hop_and_control_headers_are_not_forwarded() {
    let (sim, gate) = start("").await;
    let resp = client()
        .get(format!("{}/api/v5/orders", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .header("Connection", "keep-alive, X-Hop")
        .header("X-Hop", "1")
        .header("Keep-Alive", "timeout=5")
        .header("TE", "trailers")
        .header("Proxy-Authorization", "Basic Zm9vOmJhcg==")
        .header("X-Crmgate-Priority", "low")
        .header("X-Crmgate-Max-Wait", "10s")
        .header("Accept-Language", "ru-RU,ru;q=0.9")
        .header("User-Agent", "retailcrm/api-client-php 6.1")
        .header("X-Trace-Tag", "end-to-end")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The same as raw bytes, so no client library can have dropped any of them.
    let (status, answer) = raw_request(
        &gate,
        &format!(
            "GET /api/v5/orders HTTP/1.1\r\nHost: localhost\r\nX-API-KEY: {ACME_CLIENT}\r\n\
             Connection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
             Proxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Crmgate-Priority: low\r\n\
             X-Crmgate-Whatever: 1\r\nAccept-Language: ru-RU,ru;q=0.9\r\n\
             User-Agent: retailcrm/api-client-php 6.1\r\nX-Trace-Tag: end-to-end\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let recs = sim.records();
    assert_eq!(recs.len(), 2);
    for r in &recs {
        for gone in [
            "x-hop",
            "keep-alive",
            "te",
            "proxy-authorization",
            "x-crmgate-priority",
            "x-crmgate-max-wait",
        ] {
            assert_eq!(r.header(gone), None, "{gone} was forwarded: {r:?}");
        }
        assert!(
            !r.header("connection")
                .unwrap_or("")
                .to_ascii_lowercase()
                .contains("x-hop"),
            "{r:?}"
        );
        assert!(
            !r.headers.iter().any(|(n, _)| n.starts_with("x-crmgate-")),
            "{r:?}"
        );
        assert_eq!(r.header("accept-language"), Some("ru-RU,ru;q=0.9"));
        assert_eq!(r.header("user-agent"), Some("retailcrm/api-client-php 6.1"));
        assert_eq!(r.header("x-trace-tag"), Some("end-to-end"));
    }
}

#[tokio::test]
async fn hop_by_hop_headers_of_the_answer_are_not_passed_back() {
    let (stub, mut heads) = raw_upstream(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: 16\r\nConnection: close, X-Resp-Hop\r\nX-Resp-Hop: 1\r\n\
         Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\
         X-End: kept\r\n\r\n{\"success\":true}",
    )
    .await;
    let (_sim, gate) = start(&format!(
        "[[tenants]]\nname = \"stub\"\nbase_url = \"{stub}\"\napi_key = \"real-stub-key-1\"\n\
         client_keys = [\"svc-stub-0001\"]\n"
    ))
    .await;
    let resp = client()
        .get(format!("{}/stub/api/v5/orders?limit=20", gate.url))
        .header("X-API-KEY", "svc-stub-0001")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for gone in ["x-resp-hop", "keep-alive", "proxy-authenticate"] {
        assert_eq!(header(&resp, gone), None, "{gone}: {resp:?}");
    }
    assert!(!header(&resp, "connection")
        .unwrap_or("")
        .to_ascii_lowercase()
        .contains("x-resp-hop"));
    assert_eq!(header(&resp, "x-end"), Some("kept"));
    assert_eq!(header(&resp, "content-type"), Some(JSON_TYPE));
    assert_eq!(resp.text().await.unwrap(), "{\"success\":true}");
    let head = heads.recv().await.unwrap();
    assert!(
        head.starts_with("GET /api/v5/orders?limit=20 HTTP/1.1\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nx-api-key: real-stub-key-1\r\n"),
        "{head}"
    );
    assert!(!lower.contains("svc-stub-0001"), "{head}");
}

#[tokio::test]
async fn request_ids_and_forwarded_for() {
    let (sim, gate) = start("").await;
    let c = client();
    let get = || {
        c.get(format!("{}/api/v5/orders", gate.url))
            .header("X-API-KEY", ACME_CLIENT)
    };

    let resp = get()
        .header("X-Request-Id", "req-7d1e-abc")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-request-id"), Some("req-7d1e-abc"));
    let resp2 = get().send().await.unwrap();
    let generated = header(&resp2, "x-request-id").unwrap().to_string();
    assert!(
        uuid::Uuid::parse_str(&generated).is_ok(),
        "not an id: {generated}"
    );
    // An unusable id (spaces) is replaced, not forwarded.
    let resp3 = get()
        .header("X-Request-Id", "a b c")
        .header("X-Forwarded-For", "203.0.113.7")
        .send()
        .await
        .unwrap();
    let replaced = header(&resp3, "x-request-id").unwrap().to_string();
    assert!(replaced != "a b c" && replaced != generated, "{replaced}");
    // crmgate's own answers carry the id too.
    let resp4 = c
        .get(format!("{}/api/v5/orders", gate.url))
        .header("X-Request-Id", "req-denied-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp4.status(), 403);
    assert_eq!(header(&resp4, "x-request-id"), Some("req-denied-1"));

    let recs = sim.records();
    assert_eq!(recs.len(), 3);
    let ids: Vec<_> = recs.iter().map(|r| r.header("x-request-id")).collect();
    assert_eq!(
        ids,
        [
            Some("req-7d1e-abc"),
            Some(generated.as_str()),
            Some(replaced.as_str())
        ]
    );
    for r in &recs {
        assert_eq!(
            r.headers
                .iter()
                .filter(|(n, _)| n == "x-request-id" || n == "x-forwarded-for")
                .count(),
            2,
            "{r:?}"
        );
    }
    assert_eq!(recs[0].header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        recs[2].header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
}

#[tokio::test]
async fn the_configured_egress_ip_is_the_source_the_crm_sees() {
    let (sim, gate) = start("[upstream]\negress_ips = [\"127.0.0.2\"]\n").await;
    let resp = client()
        .get(format!("{}/api/v5/orders", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    assert_eq!(sim.records()[0].source_ip, ip);

    // Without egress IPs it is the OS default (loopback's own 127.0.0.1).
    let (sim, gate) = start("").await;
    client()
        .get(format!("{}/api/v5/orders", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(sim.records()[0].source_ip, ip);
}

#[tokio::test]
async fn the_crm_answer_streams_back_with_its_status_headers_and_body() {
    // "stale" holds a key the CRM does not know: its 403 must come through.
    let (sim, gate) = start_with(|sim| {
        format!(
            "[[tenants]]\nname = \"stale\"\nbase_url = \"{}\"\napi_key = \"rotated-away-key\"\n\
             client_keys = [\"svc-stale-0001\"]\n",
            sim.base_url()
        )
    })
    .await;
    let c = client();
    let create = |ext: &str| {
        c.post(format!("{}/api/v5/orders/create", gate.url))
            .header("X-API-KEY", BETA_CLIENT)
            .form(&[(
                "order",
                format!(r#"{{"externalId":"{ext}","firstName":"Ann"}}"#),
            )])
    };

    let resp = create("dup-1").send().await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "content-type"), Some(JSON_TYPE));
    assert_eq!(header(&resp, "x-crmgate-attempts"), Some("1"));
    let queue_ms = header(&resp, "x-crmgate-queue-ms").expect("queue ms");
    assert!(queue_ms.parse::<u64>().is_ok(), "{queue_ms}");
    let body = json(resp).await;
    assert_eq!(body["success"], true);
    assert_eq!(body["id"], 238);
    assert_eq!(body["order"]["firstName"], "Ann");

    let resp = create("dup-1").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(header(&resp, "x-crmgate-attempts"), Some("1"));
    assert_eq!(
        json(resp).await,
        json!({
            "success": false,
            "errorMsg": "Errors in the entity format",
            "errors": {"externalId": "Order with externalId already exists."},
        })
    );

    let resp = c
        .get(format!("{}/api/v5/orders?limit=7", gate.url))
        .header("X-API-KEY", BETA_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = json(resp).await;
    assert_eq!(body["errorMsg"], "Errors in the input parameters");
    assert!(body["errors"]["limit"].is_string(), "{body}");

    let resp = c
        .get(format!("{}/stale/api/v5/orders", gate.url))
        .header("X-API-KEY", "svc-stale-0001")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(header(&resp, "x-crmgate-attempts"), Some("1"));
    assert_eq!(
        json(resp).await,
        json!({"success": false, "errorMsg": "Wrong \"apiKey\" value."})
    );

    let resp = c
        .get(format!("{}/api/v5/no-such-method", gate.url))
        .header("X-API-KEY", BETA_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(header(&resp, "x-crmgate-attempts"), Some("1"));
    assert_eq!(json(resp).await["errorMsg"], "Not found");

    let recs = sim.records();
    let statuses: Vec<u16> = recs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [201, 400, 400, 403, 404]);
    assert_eq!(recs[3].api_key.as_deref(), Some("rotated-away-key"));
    assert_eq!(sim.orders_created("beta").len(), 1);
    assert_no_client_key(&recs);
}

#[tokio::test]
async fn a_garbage_answer_is_passed_through_and_the_gateway_keeps_serving() {
    let (sim, gate) = start("").await;
    sim.faults().garbage_next(1);
    let c = client();
    let get = || {
        c.get(format!("{}/api/v5/orders", gate.url))
            .header("X-API-KEY", ACME_CLIENT)
    };
    let resp = get().send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-crmgate-attempts"), Some("1"));
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(
        &bytes[..],
        &b"{\"success\":true,\"pagination\":{\"limit\":20,\"totalCo\x00\xfe<"[..]
    );
    let resp = get().send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["pagination"]["totalCount"], 237);
    assert_eq!(sim.records().len(), 2);
}

#[tokio::test]
async fn the_official_clients_request_shapes_work() {
    let (sim, gate) = start("").await;
    let c = client();
    let order = |ext: &str| format!(r#"{{"externalId":"{ext}","firstName":"Ivan"}}"#);
    let port_base = gate.url.clone();
    let prefixed_base = format!("{}/acme", gate.url);

    // Python retailcrm / PHP v6: header key, plain or prefixed base URL.
    for (i, base) in [&port_base, &prefixed_base].into_iter().enumerate() {
        let resp = c
            .get(format!("{base}/api/v5/orders"))
            .query(&[("limit", "20"), ("page", "2")])
            .header("X-API-KEY", ACME_CLIENT)
            .header("User-Agent", "python-requests/2.31.0")
            .header("Accept", "*/*")
            .header("Connection", "keep-alive")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{base}");
        assert_eq!(json(resp).await["pagination"]["currentPage"], 2);
        let resp = c
            .post(format!("{base}/api/v5/orders/create"))
            .header("X-API-KEY", ACME_CLIENT)
            .form(&[
                ("order", order(&format!("py-{i}"))),
                ("site", "main".into()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{base}");
        assert_eq!(json(resp).await["order"]["externalId"], format!("py-{i}"));
    }
    // Legacy PHP v5 / .NET: apiKey in the query for GET, in the form for POST.
    for (i, base) in [&port_base, &prefixed_base].into_iter().enumerate() {
        let resp = c
            .get(format!("{base}/api/v5/orders"))
            .query(&[("apiKey", ACME_CLIENT2), ("limit", "20")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{base}");
        let resp = c
            .post(format!("{base}/api/v5/orders/create"))
            .form(&[
                ("apiKey", ACME_CLIENT2.to_string()),
                ("order", order(&format!("legacy-{i}"))),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{base}");
    }

    let recs = sim.records();
    assert_eq!(recs.len(), 8);
    assert!(recs.iter().all(|r| r.api_key.as_deref() == Some(ACME_KEY)));
    assert!(recs.iter().all(|r| r.path.starts_with("/api/v5/orders")));
    assert_no_client_key(&recs);
    let created: Vec<_> = sim
        .orders_created("acme")
        .iter()
        .map(|o| o["externalId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(created, ["py-0", "py-1", "legacy-0", "legacy-1"]);
}

#[tokio::test]
async fn version_less_methods_pass_through() {
    let (sim, gate) = start("").await;
    let c = client();
    let resp = c
        .get(format!("{}/api/api-versions", gate.url))
        .header("X-API-KEY", BETA_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["versions"], json!(["3.0", "4.0", "5.0"]));
    for (path, key, sites) in [
        ("/api/credentials", BETA_CLIENT, json!(["beta-shop"])),
        ("/acme/api/credentials", ACME_CLIENT, json!(["main"])),
    ] {
        let resp = c
            .get(format!("{}{path}", gate.url))
            .header("X-API-KEY", key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let body = json(resp).await;
        assert_eq!(body["sitesAvailable"], sites, "{body}");
        assert_eq!(body["siteAccess"], "access_full");
    }
    let paths: Vec<_> = sim.records().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/api/api-versions", "/api/credentials", "/api/credentials"]
    );
}

/// Runs `crmgate check --config FILE` with `text` in FILE.
fn check(text: &str, env: &[(&str, &str)]) -> (std::process::ExitStatus, String, String, String) {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    let path = file.path().display().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crmgate"));
    cmd.args(["check", "--config", &path])
        .env_remove("CRMGATE_TEST_UNSET_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status,
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
        path,
    )
}

const ENV_KEY_VALUE: &str = "real-from-env-c0ffee77";
const INLINE_KEY_VALUE: &str = "real-inline-deadbeef99";

#[test]
fn check_prints_a_summary_without_any_key() {
    let text = format!(
        "[[tenants]]\nname = \"acme\"\nbase_url = \"http://127.0.0.1:9000\"\n\
         api_key_env = \"CRMGATE_TEST_ACME_KEY\"\nclient_keys = [\"{ACME_CLIENT}\", \"{ACME_CLIENT2}\"]\nsite = \"main\"\n\
         [[tenants]]\nname = \"beta\"\nsubdomain = \"beta\"\napi_key = \"{INLINE_KEY_VALUE}\"\n\
         client_keys = [\"{BETA_CLIENT}\"]\n"
    );
    let (status, out, err, path) = check(&text, &[("CRMGATE_TEST_ACME_KEY", ENV_KEY_VALUE)]);
    assert!(status.success(), "{status}\n{out}\n{err}");
    assert!(out.contains(&format!("{path}: OK")), "{out}");
    assert!(out.contains("tenants (2)"), "{out}");
    assert!(
        out.contains("- acme -> http://127.0.0.1:9000 (key from env CRMGATE_TEST_ACME_KEY, 2 client key(s) from inline, site main"),
        "{out}"
    );
    assert!(
        out.contains("- beta -> https://beta.retailcrm.ru (key from inline, 1 client key(s)"),
        "{out}"
    );
    assert!(out.contains("warning: tenants[1].api_key"), "{out}");
    for secret in [
        ENV_KEY_VALUE,
        INLINE_KEY_VALUE,
        ACME_CLIENT,
        ACME_CLIENT2,
        BETA_CLIENT,
    ] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} leaked:\n{out}\n{err}"
        );
    }
}

#[test]
fn check_reports_every_problem_with_its_field_path() {
    let text = format!(
        "[[tenants]]\nname = \"acme\"\nsubdomain = \"acme\"\napi_key_env = \"CRMGATE_TEST_ACME_KEY\"\n\
         client_keys = [\"{ACME_CLIENT}\"]\n\
         [[tenants]]\nname = \"acme\"\nsubdomain = \"acme2\"\napi_key = \"{INLINE_KEY_VALUE}\"\n\
         [[tenants]]\nname = \"beta\"\nsubdomain = \"beta\"\napi_key_env = \"CRMGATE_TEST_UNSET_KEY\"\n"
    );
    let (status, out, err, _) = check(&text, &[("CRMGATE_TEST_ACME_KEY", ENV_KEY_VALUE)]);
    assert!(!status.success(), "{out}\n{err}");
    assert!(
        err.contains("tenants[1].name: is already used by tenants[0]"),
        "{err}"
    );
    assert!(
        err.contains("tenants[2].api_key_env: names an environment variable that is not set"),
        "{err}"
    );
    assert!(err.contains("2 problem(s)"), "{err}");
    assert!(!out.contains(": OK"), "{out}");
    for secret in [ENV_KEY_VALUE, INLINE_KEY_VALUE, ACME_CLIENT] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{secret} leaked:\n{out}\n{err}"
        );
    }
}

#[test]
fn check_reports_a_toml_syntax_error_with_file_line_and_column() {
    let text = "[server]\nlisten = \"127.0.0.1:8080\"\nmax_body_bytes = = 5\n";
    let (status, out, err, path) = check(text, &[]);
    assert!(!status.success(), "{out}\n{err}");
    // Line 3, column 18: the second `=`.
    assert!(err.contains(&format!("error: {path}:3:18: ")), "{err}");
    assert!(err.contains("1 problem(s)"), "{err}");
}
