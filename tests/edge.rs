//! The edge, on real sockets: slow and greedy clients (head and body
//! timeouts, the connection cap, header limits), browsers (Origin,
//! Sec-Fetch-Site, Host on both listeners) and the admin token of
//! `POST /reload`.
//!
//! Raw TCP (`common::raw`) is used wherever the test must control exactly what is sent (a
//! half head, a stalled body, a Host a real client would not send). Timeouts
//! are set short in the config; a test waits for the close with a generous
//! outer limit and never asserts a tight time.

mod common;

use std::time::Duration;

use common::*;
use crmgate::sim::Simulator;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The admin token used by these tests (long enough for validation).
const TOKEN: &str = "edge-admin-token-5c1f9e07";

/// A `[server]` section on ephemeral loopback ports, plus `extra` keys.
fn server(extra: &str) -> String {
    format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{extra}\n")
}

async fn start(extra_server: &str) -> (Simulator, Gate) {
    let sim = sim().await;
    let gate = Gate::start(config(&config_text(&sim, &server(extra_server)))).await;
    (sim, gate)
}

fn addr_of(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

/// A GET of the orders list through `path_prefix` with `headers`
/// (`Name: value` lines), closing after the answer.
fn get(host: &str, path: &str, headers: &[&str]) -> String {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

fn key(k: &str) -> String {
    format!("X-API-KEY: {k}")
}

/// A plain GET with acme's key, on a new connection, gets its 200: what
/// was done to one connection left the gateway serving others.
async fn assert_still_served(gate: &Gate) {
    let ok = raw(
        &addr_of(&gate.url),
        &get("127.0.0.1", "/api/v5/orders", &[&key(ACME_CLIENT)]),
    )
    .await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text());
}

async fn rejected(gate: &Gate, reason: &str) -> f64 {
    metric_now(
        &gate.admin,
        "crmgate_rejections_total",
        &[("reason", reason)],
    )
    .await
}

// ---------------------------------------------------------------- slow

#[tokio::test]
async fn a_half_sent_head_is_closed_after_header_timeout() {
    let (_sim, gate) = start("header_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(b"GET /api/v5/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-")
        .await
        .unwrap();
    let got = read_to_close(&mut s).await;
    assert!(
        got.bytes.is_empty(),
        "a timed-out head gets no answer, only a close: {got:?}"
    );
    // Others are still served.
    assert_still_served(&gate).await;
}

#[tokio::test]
async fn an_idle_connection_that_never_sends_is_closed_too() {
    let (_sim, gate) = start("header_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    let got = read_to_close(&mut s).await;
    assert!(got.bytes.is_empty(), "{got:?}");
}

#[tokio::test]
async fn a_stalled_body_gets_408_json_then_close() {
    let (sim, gate) = start("body_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    let head = format!(
        "POST /acme/api/v5/orders/create HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n",
        key(ACME_CLIENT)
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(b"order=%7B%22").await.unwrap();
    let got = read_to_close(&mut s).await;
    assert_eq!(got.status(), Some(408), "{}", got.text());
    assert_eq!(got.header("connection").as_deref(), Some("close"));
    let v = got.json();
    assert_eq!(v["success"], false);
    assert!(
        v["errorMsg"].as_str().unwrap().contains("Request timeout"),
        "{v}"
    );
    assert!(sim.records().is_empty(), "nothing reached the CRM");
    assert_eq!(rejected(&gate, "body_timeout").await, 1.0);
    // Counted once, as what it is: not also as a malformed request.
    assert_eq!(rejected(&gate, "bad_request").await, 0.0);
    assert_eq!(
        answered(&gate, "acme", 408),
        1,
        "the access counters say 408"
    );
}

// ---------------------------------------------------------------- greedy

#[tokio::test]
async fn beyond_max_connections_a_connection_is_closed_at_once_and_counted() {
    let (_sim, gate) = start("max_connections = 2\nheader_timeout = \"60s\"").await;
    let open = gate
        .gateway
        .metrics
        .connections_open
        .with_label_values(&["api"]);
    let first = TcpStream::connect(gate.addr).await.unwrap();
    let _second = TcpStream::connect(gate.addr).await.unwrap();
    wait_until("two API connections open", || open.get() == 2).await;

    let mut third = TcpStream::connect(gate.addr).await.unwrap();
    let got = read_to_close(&mut third).await;
    assert!(got.bytes.is_empty(), "{got:?}");
    assert_eq!(
        metric_now(
            &gate.admin,
            "crmgate_connections_refused_total",
            &[("listener", "api")]
        )
        .await,
        1.0,
        "the admin port has its own cap: it still answers"
    );
    assert_eq!(
        metric_now(
            &gate.admin,
            "crmgate_connections_open",
            &[("listener", "api")]
        )
        .await,
        2.0
    );

    // A freed place is taken by the next connection.
    drop(first);
    wait_until("one API connection left", || open.get() == 1).await;
    assert_still_served(&gate).await;
}

#[tokio::test]
async fn too_many_or_too_large_headers_get_431_json_or_a_clean_close() {
    let (sim, gate) = start("").await;
    let addr = addr_of(&gate.url);
    let k = key(ACME_CLIENT);

    // Over the guard's limits, within hyper's: 431 JSON.
    let many: Vec<String> = (0..70).map(|i| format!("X-Extra-{i}: {i}")).collect();
    let mut headers: Vec<&str> = many.iter().map(String::as_str).collect();
    headers.push(&k);
    let got = raw(&addr, &get("127.0.0.1", "/api/v5/orders", &headers)).await;
    assert_eq!(got.status(), Some(431), "{}", got.text());
    assert_eq!(got.json()["success"], false);

    let big = format!("X-Big: {}", "b".repeat(20 * 1024));
    let got = raw(&addr, &get("127.0.0.1", "/api/v5/orders", &[&big, &k])).await;
    assert_eq!(got.status(), Some(431), "{}", got.text());
    assert_eq!(got.json()["success"], false);
    assert_eq!(rejected(&gate, "headers_too_large").await, 2.0);

    // Over hyper's own limits (100 fields, a 64 KiB head): hyper refuses
    // before any handler, with a bare 431 or just a close.
    let lots: Vec<String> = (0..150).map(|i| format!("X-Extra-{i}: {i}")).collect();
    let lots: Vec<&str> = lots.iter().map(String::as_str).collect();
    let huge = format!("X-Huge: {}", "h".repeat(100 * 1024));
    for request in [
        get("127.0.0.1", "/api/v5/orders", &lots),
        get("127.0.0.1", "/api/v5/orders", &[&huge]),
    ] {
        let got = raw(&addr, &request).await;
        assert!(
            got.bytes.is_empty() || got.reset || got.status() == Some(431),
            "{}",
            got.text()
        );
    }
    assert!(sim.records().is_empty(), "nothing reached the CRM");

    // And the gateway keeps serving.
    let ok = raw(&addr, &get("127.0.0.1", "/api/v5/orders", &[&k])).await;
    assert_eq!(ok.status(), Some(200), "{}", ok.text());
}

// ---------------------------------------------------------------- browsers

#[tokio::test]
async fn a_web_page_cannot_drive_an_open_tenant() {
    let (sim, gate) = start("").await;
    let addr = addr_of(&gate.url);
    // The form a page on the same machine auto-submits.
    let body = "order=%7B%22externalId%22%3A%22csrf-1%22%7D";
    let form = format!(
        "POST /open/api/v5/orders/create HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
         Origin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let got = raw(&addr, &form).await;
    assert_eq!(got.status(), Some(403), "{}", got.text());
    assert!(
        got.json()["errorMsg"]
            .as_str()
            .unwrap()
            .starts_with("Access denied"),
        "{}",
        got.text()
    );
    assert!(sim.records().is_empty(), "nothing reached the CRM");
    assert!(sim.orders_created("acme").is_empty());

    // A navigation from another site (no Origin, Sec-Fetch-Site cross-site).
    let nav = get(
        "localhost:8080",
        "/open/api/v5/orders",
        &["Sec-Fetch-Site: cross-site"],
    );
    assert_eq!(raw(&addr, &nav).await.status(), Some(403));
    assert_eq!(rejected(&gate, "browser").await, 2.0);

    // The user typing the address is not a page acting on its own.
    let typed = get(
        "localhost:8080",
        "/open/api/v5/orders",
        &["Sec-Fetch-Site: none"],
    );
    assert_eq!(raw(&addr, &typed).await.status(), Some(200));
}

#[tokio::test]
async fn listed_origins_and_hosts_are_let_through() {
    let (_sim, gate) = start(
        "allowed_origins = [\"https://tools.example.com\"]\nallowed_hosts = [\"gw.internal\"]",
    )
    .await;
    let addr = addr_of(&gate.url);
    let k = key(ACME_CLIENT);
    let listed = get(
        "127.0.0.1",
        "/api/v5/orders",
        &[
            &k,
            "Origin: https://tools.example.com",
            "Sec-Fetch-Site: cross-site",
        ],
    );
    assert_eq!(raw(&addr, &listed).await.status(), Some(200));
    let other = get(
        "127.0.0.1",
        "/api/v5/orders",
        &[&k, "Origin: https://evil.example"],
    );
    assert_eq!(raw(&addr, &other).await.status(), Some(403));

    let host = get("gw.internal:8080", "/api/v5/orders", &[&k]);
    assert_eq!(raw(&addr, &host).await.status(), Some(200));
}

#[tokio::test]
async fn a_rebinding_host_is_refused_on_both_loopback_listeners() {
    let (sim, gate) = start("").await;
    let (api, admin) = (addr_of(&gate.url), addr_of(&gate.admin));
    let k = key(ACME_CLIENT);
    for host in ["evil.example", "evil.example:8080", "10.1.2.3"] {
        let got = raw(&api, &get(host, "/api/v5/orders", &[&k])).await;
        assert_eq!(got.status(), Some(421), "{host}: {}", got.text());
        assert_eq!(got.json()["success"], false);
        let got = raw(&admin, &get(host, "/status", &[])).await;
        assert_eq!(got.status(), Some(421), "admin, {host}: {}", got.text());
    }
    assert!(sim.records().is_empty());
    assert_eq!(rejected(&gate, "host").await, 6.0);
    for host in ["localhost", "localhost:9090", "127.0.0.1", "[::1]:9090"] {
        let got = raw(&admin, &get(host, "/status", &[])).await;
        assert_eq!(got.status(), Some(200), "admin, {host}: {}", got.text());
    }
}

#[tokio::test]
async fn the_admin_port_refuses_browsers_too() {
    let (_sim, gate) = start("").await;
    let admin = addr_of(&gate.admin);
    let page = get("127.0.0.1", "/status", &["Origin: http://evil.example"]);
    let got = raw(&admin, &page).await;
    assert_eq!(got.status(), Some(403), "{}", got.text());
    let fetch = get("localhost:9090", "/metrics", &["Sec-Fetch-Site: same-site"]);
    assert_eq!(raw(&admin, &fetch).await.status(), Some(403));
}

// ---------------------------------------------------------------- admin token

/// A gateway whose config file (with `server_extra`) reloads from disk.
async fn reloadable(server_extra: &str) -> (Simulator, Gate, tempfile::TempDir) {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crmgate.toml");
    let gate = Gate::from_file(&path, &config_text(&sim, &server(server_extra))).await;
    (sim, gate, dir)
}

fn reload(headers: &[&str]) -> String {
    let mut r = String::from(
        "POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n",
    );
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r
}

#[tokio::test]
async fn reload_needs_the_bearer_token_when_one_is_set() {
    let (_sim, gate, _dir) = reloadable(&format!("admin_token = \"{TOKEN}\"")).await;
    let admin = addr_of(&gate.admin);

    let got = raw(&admin, &reload(&[])).await;
    assert_eq!(got.status(), Some(401), "{}", got.text());
    assert_eq!(got.header("www-authenticate").as_deref(), Some("Bearer"));
    assert_eq!(got.json()["success"], false);
    assert!(!got.text().contains(TOKEN));

    let wrong = format!("Authorization: Bearer {TOKEN}-not");
    assert_eq!(raw(&admin, &reload(&[&wrong])).await.status(), Some(401));
    assert_eq!(rejected(&gate, "unauthorized").await, 2.0);

    let right = format!("Authorization: Bearer {TOKEN}");
    let got = raw(&admin, &reload(&[&right])).await;
    assert_eq!(got.status(), Some(200), "{}", got.text());
    assert_eq!(got.json()["success"], true);

    // A page cannot reload, even one that somehow has the token.
    let from_page = raw(
        &admin,
        &reload(&[
            &right,
            "Origin: http://evil.example",
            "Content-Type: text/plain",
        ]),
    )
    .await;
    assert_eq!(from_page.status(), Some(403), "{}", from_page.text());
}

#[tokio::test]
async fn without_a_token_loopback_reload_is_open_but_not_to_pages() {
    let (_sim, gate, _dir) = reloadable("allowed_origins = [\"http://127.0.0.1:9090\"]").await;
    let admin = addr_of(&gate.admin);
    let got = raw(&admin, &reload(&[])).await;
    assert_eq!(got.status(), Some(200), "{}", got.text());
    // A listed origin may read the admin port, not reload the config.
    let listed = raw(&admin, &reload(&["Origin: http://127.0.0.1:9090"])).await;
    assert_eq!(listed.status(), Some(403), "{}", listed.text());
    let read = raw(
        &admin,
        &get("127.0.0.1", "/status", &["Origin: http://127.0.0.1:9090"]),
    )
    .await;
    assert_eq!(read.status(), Some(200), "{}", read.text());
}

#[test]
fn check_refuses_a_non_loopback_admin_port_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crmgate.toml");
    std::fs::write(
        &path,
        "[server]\nadmin_listen = \"0.0.0.0:9090\"\n\n[[tenants]]\nname = \"acme\"\n\
         subdomain = \"acme\"\napi_key = \"real-acme-key-0000\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crmgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("crmgate runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error: server.admin_token: is required when server.admin_listen is not a loopback address"),
        "{stderr}"
    );

    // With a token from the environment it passes, and the token is not shown.
    std::fs::write(
        &path,
        "[server]\nadmin_listen = \"0.0.0.0:9090\"\nadmin_token_env = \"EDGE_TEST_ADMIN_TOKEN\"\n\n\
         [[tenants]]\nname = \"acme\"\nsubdomain = \"acme\"\napi_key = \"real-acme-key-0000\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crmgate"))
        .args(["check", "--config"])
        .arg(&path)
        .env("EDGE_TEST_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("crmgate runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("reload token from env EDGE_TEST_ADMIN_TOKEN"),
        "{stdout}"
    );
    assert!(!stdout.contains(TOKEN), "{stdout}");
}

// ---------------------------------------------------------------- memory

#[tokio::test]
async fn bodies_held_for_waiting_requests_are_bounded_in_total() {
    let (sim, gate) = setup("[limits]\nmax_buffered_bytes = 1000\ngeneral_per_second = 1\n").await;
    // The first create stalls at the CRM (held in flight), the second
    // waits for the next slot (held in the queue): 800 bytes held.
    sim.faults().stall_next(1, Duration::from_secs(2));
    let c = client();
    let post = |n: usize| {
        let req = c
            .post(format!("{}/api/v5/orders/create", gate.url))
            .header("X-API-KEY", ACME_CLIENT)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("order={}", "x".repeat(n - 6)));
        tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
    };
    let first = post(400);
    let gw = gate.gateway.clone();
    wait_until("the first body is held", || gw.bodies.held() >= 400).await;
    let second = post(400);
    wait_until("the second body is held", || gw.bodies.held() >= 800).await;

    let resp = c
        .post(format!("{}/api/v5/orders/create", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("order={}", "y".repeat(394)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let v = json(resp).await;
    assert_eq!(v["success"], false, "{v}");

    // Both held bodies reached the CRM (which judges their content).
    assert_ne!(first.await.unwrap(), 503);
    assert_ne!(second.await.unwrap(), 503);
    assert_eq!(sim.records().len(), 2, "the refused body was never sent");
    wait_until("every body given back", || gw.bodies.held() == 0).await;
    assert_eq!(rejected(&gate, "buffers_full").await, 1.0);
}

#[tokio::test]
async fn a_key_inside_a_json_body_is_refused() {
    let (sim, gate) = setup("").await;
    let c = client();
    for (content_type, body) in [
        (
            "application/json",
            format!(r#"{{"apiKey":"{ACME_CLIENT}","order":{{}}}}"#),
        ),
        (
            "application/vnd.x+json",
            format!(r#"{{"api_key":"{ACME_CLIENT}"}}"#),
        ),
    ] {
        let resp = c
            .post(format!("{}/acme/api/v5/orders/create", gate.url))
            .header("X-API-KEY", ACME_CLIENT)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{content_type}");
        let v = json(resp).await;
        assert!(v["errorMsg"].as_str().unwrap().contains("X-API-KEY"), "{v}");
        assert!(!v.to_string().contains(ACME_CLIENT));
    }
    assert!(
        sim.records().is_empty(),
        "nothing with a key in it was sent"
    );
}
