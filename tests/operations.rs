//! Operations: the admin listener, Prometheus metrics, graceful drain, hot
//! reload, and the real binary's logs and signals. Everything runs on
//! loopback sockets against the simulator.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::*;
use crmgate::sim::{SimConfig, Simulator};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A client key no tenant accepts.
const BAD_CLIENT: &str = "svc-intruder-0bad";
/// acme's key after rotation.
const ROTATED_KEY: &str = "real-acme-key-rotated-5d1e";

/// Every key a test may have used: none may ever show up in output.
const SECRETS: [&str; 7] = [
    ACME_KEY,
    BETA_KEY,
    ACME_CLIENT,
    ACME_CLIENT2,
    BETA_CLIENT,
    BAD_CLIENT,
    ROTATED_KEY,
];

fn assert_no_secret(what: &str, text: &str) {
    for key in SECRETS {
        assert!(
            !text.contains(key),
            "{what} contains the key {key:?}:\n{text}"
        );
    }
}

/// GET `url` with client key `key` in the header, in the background.
fn spawn_get(
    client: &reqwest::Client,
    url: String,
    key: &'static str,
) -> JoinHandle<reqwest::Result<(u16, String)>> {
    let request = client.get(url).header("X-API-KEY", key);
    tokio::spawn(async move {
        let resp = request.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    })
}

async fn get_json(url: String) -> (u16, Value) {
    let resp = client().get(url).send().await.expect("admin answers");
    (resp.status().as_u16(), json(resp).await)
}

/// The general-class budget rows of a `/status` document.
fn general_budgets(status: &Value) -> Vec<Value> {
    status["budgets"]
        .as_array()
        .expect("budgets is an array")
        .iter()
        .filter(|b| b["class"] == "general")
        .cloned()
        .collect()
}

fn tenant<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["tenants"]
        .as_array()
        .expect("tenants is an array")
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tenant {name} in {status}"))
}

/// Some traffic for the admin and metrics tests: three forwarded requests
/// (client key in the header, the query and a form body), a wrong key
/// (403) and an unknown tenant prefix (404).
async fn mixed_traffic(gate: &Gate) {
    let c = client();
    send_a_key_in_every_place(&c, &gate.url, "ops-1").await;
    let r = c
        .get(format!("{}/api/v5/orders", gate.url))
        .header("X-API-KEY", BAD_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(format!("{}/nosuch/api/v5/orders", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn admin_endpoints_answer_json_and_never_show_a_key() {
    let (_sim, gate) = setup("").await;

    let (code, body) = get_json(format!("{}/healthz", gate.admin)).await;
    assert_eq!(
        (code, &body["success"]),
        (200, &Value::Bool(true)),
        "{body}"
    );
    let (code, body) = get_json(format!("{}/readyz", gate.admin)).await;
    assert_eq!(
        (code, &body["success"]),
        (200, &Value::Bool(true)),
        "{body}"
    );

    mixed_traffic(&gate).await;

    let resp = client()
        .get(format!("{}/status", gate.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert_no_secret("/status", &text);
    let status: Value = serde_json::from_str(&text).expect("/status is JSON");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].is_u64(), "{status}");
    let checksum = status["config_checksum"].as_str().expect("checksum");
    assert!(
        checksum.len() == 64 && checksum.bytes().all(|b| b.is_ascii_hexdigit()),
        "checksum {checksum}"
    );

    let budgets = general_budgets(&status);
    assert_eq!(budgets.len(), 1, "one egress, one general budget: {status}");
    let b = &budgets[0];
    for field in [
        "egress",
        "class",
        "configured_rate",
        "effective_rate",
        "queued",
        "oldest_wait_ms",
        "next_free_in_ms",
        "adaptation",
    ] {
        assert!(!b[field].is_null(), "budget has no {field}: {b}");
    }
    assert_eq!(b["adaptation"], "free");
    assert_eq!(b["configured_rate"], 10);
    assert_eq!(b["effective_rate"].as_f64(), Some(10.0));
    assert_eq!(b["queued"], 0);

    let names: Vec<&str> = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "beta", "open"]);
    for t in status["tenants"].as_array().unwrap() {
        assert_eq!(
            (&t["queued"], &t["inflight"]),
            (&0.into(), &0.into()),
            "{t}"
        );
    }
    // Rejections before tenant resolution belong to no tenant.
    assert_eq!(
        tenant(&status, "acme")["totals_by_status"],
        serde_json::json!({"200": 2})
    );
    assert_eq!(
        tenant(&status, "beta")["totals_by_status"],
        serde_json::json!({"201": 1})
    );
    assert_eq!(
        tenant(&status, "open")["totals_by_status"],
        serde_json::json!({})
    );

    let resp = client()
        .get(format!("{}/nope", gate.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body = json(resp).await;
    assert_eq!(body["success"], false, "{body}");
    assert!(body["errorMsg"].as_str().unwrap().contains("/status"));

    // Started without a file: a reload has nothing to read.
    let (code, body) = post_reload(&gate).await;
    assert_eq!(code, 409);
    assert_eq!(body["success"], false);
}

#[tokio::test]
async fn metrics_cover_traffic_and_rejections_and_pass_promtool() {
    let (_sim, gate) = setup("").await;
    mixed_traffic(&gate).await;
    let text = metrics_text(&gate.admin).await;
    assert_no_secret("/metrics", &text);

    let get = |name: &str, labels: &[(&str, &str)]| {
        metric(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
    };
    assert_eq!(
        get(
            "crmgate_requests_total",
            &[("tenant", "acme"), ("class", "general"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        get(
            "crmgate_requests_total",
            &[("tenant", "beta"), ("status", "201")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "crmgate_upstream_attempts_total",
            &[("egress", "default"), ("class", "general")]
        ),
        3.0
    );
    assert_eq!(
        get("crmgate_rejections_total", &[("reason", "bad_key")]),
        1.0
    );
    assert_eq!(
        get("crmgate_rejections_total", &[("reason", "unknown_tenant")]),
        1.0
    );
    assert_eq!(
        get("crmgate_queue_wait_seconds_count", &[("class", "general")]),
        3.0
    );
    assert_eq!(
        get(
            "crmgate_queue_wait_seconds_bucket",
            &[("class", "general"), ("le", "+Inf")]
        ),
        3.0
    );
    assert_eq!(get("crmgate_rate_limit", &[("class", "general")]), 10.0);
    assert_eq!(get("crmgate_rate_limit", &[("class", "telephony")]), 40.0);
    assert_eq!(get("crmgate_effective_rate", &[("class", "general")]), 10.0);
    assert_eq!(
        get(
            "crmgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // Rejected requests are never labelled by the path they asked for.
    assert!(!text.contains("nosuch"), "{text}");

    promtool_check(&text);
}

/// The tests' one exposition parser (tests/common/metrics.rs) reads what
/// the format allows, so a label value or a special float never makes a
/// metric look absent.
#[test]
fn the_metrics_parser_reads_escapes_labels_and_special_values() {
    let text = "# HELP x_total A counter.\n# TYPE x_total counter\n\
        x_total{path=\"a\\\"b\\\\c\\nd\",class=\"general\"} 2\n\
        x_total{subclass=\"general\",} 5 1700000000000\n\
        y_bucket{le=\"+Inf\"} +Inf\n\
        z NaN\n\
        up 1\n";
    let all = samples(text);
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(all[0].label("path"), Some("a\"b\\c\nd"));
    // Exact label values: `subclass="general"` is not `class="general"`.
    assert_eq!(metric(text, "x_total", &[("class", "general")]), Some(2.0));
    assert_eq!(metric(text, "x_total", &[]), Some(7.0));
    assert_eq!(
        metric(text, "y_bucket", &[("le", "+Inf")]),
        Some(f64::INFINITY)
    );
    assert!(metric(text, "z", &[]).unwrap().is_nan());
    assert_eq!(metric(text, "up", &[]), Some(1.0));
    assert_eq!(metric(text, "x", &[]), None);
    assert_eq!(metric(text, "x_total", &[("class", "telephony")]), None);
    for bad in [
        "x{a=\"1\" 2",
        "x{a=1} 2",
        "x 1 2 3",
        "x",
        "x{a=\"1\"b=\"2\"} 1",
        "9x 1",
    ] {
        let panicked = std::panic::catch_unwind(|| samples(bad)).is_err();
        assert!(panicked, "accepted {bad:?}");
    }
}

/// Runs `promtool check metrics` on an exposition, when promtool is installed.
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // CI installs promtool and requires it: there, a missing one fails.
            missing(
                Program::Promtool,
                "`promtool check metrics` in operations.rs",
            );
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `[server]` with ephemeral ports, the given grace, no accept window (new
/// requests are refused at once, as these tests expect), and a slow general
/// budget.
fn drain_config(grace: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         shutdown_grace = \"{grace}\"\ndrain_accept = \"0s\"\n[limits]\ngeneral_per_second = 2\n"
    )
}

/// A request whose headers (with `Expect: 100-continue`) reached the handler
/// before shutdown, and whose body is sent later.
struct SlowPost {
    stream: TcpStream,
    body: String,
}

impl SlowPost {
    /// Sends the head and waits for `100 Continue`: the handler is running.
    async fn start(addr: std::net::SocketAddr) -> SlowPost {
        let body = format!("apiKey={ACME_CLIENT}&order=%7B%22externalId%22%3A%22late-1%22%7D");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/v5/orders/create HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
                .await
                .expect("100 Continue arrives")
                .unwrap();
            assert!(n > 0, "connection closed before 100 Continue");
            seen.extend_from_slice(&buf[..n]);
        }
        let seen = String::from_utf8_lossy(&seen);
        assert!(seen.starts_with("HTTP/1.1 100"), "{seen}");
        SlowPost { stream, body }
    }

    /// Sends the body; returns the status and the JSON body of the answer.
    async fn finish(mut self) -> (u16, Value) {
        self.stream.write_all(self.body.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), self.stream.read_to_end(&mut raw))
            .await
            .expect("an answer, not a hang")
            .unwrap();
        let raw = String::from_utf8_lossy(&raw);
        let (head, body) = raw.split_once("\r\n\r\n").expect("a full response");
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"));
        (code, body)
    }
}

#[tokio::test]
async fn drain_serves_every_queued_request_within_a_generous_grace() {
    let (sim, mut gate) = setup(&drain_config("10s")).await;
    let c = client();
    let url = format!("{}/api/v5/orders", gate.url);
    let tasks: Vec<_> = (0..6)
        .map(|_| spawn_get(&c, url.clone(), ACME_CLIENT))
        .collect();
    let gw = gate.gateway.clone();
    wait_until("4 requests queued", || gw.scheduler.queued() >= 4).await;
    let late = SlowPost::start(gate.addr).await;

    // The queue only shrinks from here, so this is at most what is queued
    // when the drain begins.
    let queued = gw.scheduler.queued();
    let drain = gate.begin_shutdown();
    wait_until("shutdown began", || !gw.drain.is_ready()).await;

    // A request that arrives during the drain is refused with JSON...
    let (code, body) = late.finish().await;
    assert_eq!(
        (code, &body["success"]),
        (503, &Value::Bool(false)),
        "{body}"
    );
    // ...and a new connection is refused (or answered 503), never left hanging.
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
        .get(&url)
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await;
    match fresh {
        Err(e) => assert!(!e.is_timeout(), "a new request hung: {e}"),
        Ok(r) => {
            assert_eq!(r.status(), 503);
            assert_eq!(json(r).await["success"], false);
        }
    }

    for t in tasks {
        let (code, body) = t.await.unwrap().expect("no connection error");
        assert_eq!(code, 200, "{body}");
    }
    let report = drain.await.unwrap();
    assert_eq!(report.cut_off, 0, "{report:?}");
    assert!(
        queued >= 3 && report.drained >= queued as u64 && report.drained <= 6,
        "queued {queued} at shutdown, {report:?}"
    );
    // The six, and not the late request, reached the CRM.
    let records = sim.records();
    assert_eq!(records.len(), 6);
    assert!(records.iter().all(|r| r.status == 200 && r.method == "GET"));
}

// A retry asks the scheduler for a new slot; a request admitted before
// SIGTERM must still get one during the grace period.
#[tokio::test]
async fn drain_lets_a_request_waiting_to_retry_finish() {
    let (sim, mut gate) = setup(&drain_config("10s")).await;
    // The CRM refuses the first send and asks for a 1 s pause.
    sim.faults().fail_next(1, Some("1".into()));
    let task = spawn_get(
        &client(),
        format!("{}/api/v5/orders", gate.url),
        ACME_CLIENT,
    );
    wait_until("the first send was refused", || {
        sim.records().first().is_some_and(|r| r.status == 503)
    })
    .await;
    let drain = gate.begin_shutdown();

    let (code, body) = task.await.unwrap().expect("no connection error");
    assert_eq!(code, 200, "admitted before shutdown, so drained: {body}");
    assert_eq!(sim.records().len(), 2);
    let report = drain.await.unwrap();
    assert_eq!((report.drained, report.cut_off), (1, 0), "{report:?}");
}

#[tokio::test]
async fn drain_answers_503_json_to_what_the_grace_cannot_serve() {
    let (sim, mut gate) = setup(&drain_config("300ms")).await;
    let c = client();
    let url = format!("{}/api/v5/orders", gate.url);
    let tasks: Vec<_> = (0..8)
        .map(|_| spawn_get(&c, url.clone(), ACME_CLIENT))
        .collect();
    let gw = gate.gateway.clone();
    wait_until("6 requests queued", || gw.scheduler.queued() >= 6).await;
    let report = gate.begin_shutdown().await.unwrap();

    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (code, body) = t.await.unwrap().expect("an answer, not a connection error");
        match code {
            200 => ok += 1,
            503 => {
                let v: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
                assert_eq!(v["success"], false, "{v}");
                refused += 1;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(refused >= 1, "the grace cannot serve 6 queued at 2/s");
    assert_eq!(report.cut_off, refused, "{report:?}");
    assert_eq!(ok + refused, 8);
    assert_eq!(
        sim.records().len() as u64,
        ok,
        "cut-off requests never reach the CRM"
    );
}

/// A config file for the reload tests: acme with real key `key`.
fn reload_text(sim: &Simulator, key: &str, rate: u32) -> String {
    format!(
        // The cache stage off: these tests count identical queued GETs.
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [cache]\nenabled = false\n\
         [limits]\ngeneral_per_second = {rate}\n\n\
         [[tenants]]\nname = \"acme\"\nbase_url = \"{}\"\napi_key = \"{key}\"\n\
         client_keys = [\"{ACME_CLIENT}\"]\nsite = \"main\"\n",
        sim.base_url()
    )
}

/// A simulator that accepts both acme's old and rotated key.
async fn rotation_sim() -> Simulator {
    spawn_sim(SimConfig {
        accounts: vec![
            sim_account("acme", ACME_KEY, "main"),
            sim_account("acme2", ROTATED_KEY, "main"),
        ],
        ..SimConfig::default()
    })
    .await
}

/// `POST /reload`, with a check that no key shows in its answer.
async fn post_reload(gate: &Gate) -> (u16, Value) {
    let (code, text) = admin_reload(&gate.admin).await;
    assert_no_secret("/reload", &text);
    (
        code,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
    )
}

#[tokio::test]
async fn reload_rotates_the_key_for_queued_and_new_requests() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crmgate.toml");
    let sim = rotation_sim().await;
    let gate = Gate::from_file(&path, &reload_text(&sim, ACME_KEY, 2)).await;
    let old_checksum = status_doc(&gate).await["config_checksum"].clone();

    let c = client();
    let url = format!("{}/api/v5/orders", gate.url);
    let queued_tasks: Vec<_> = (0..6)
        .map(|_| spawn_get(&c, url.clone(), ACME_CLIENT))
        .collect();
    let gw = gate.gateway.clone();
    wait_until("4 requests queued", || gw.scheduler.queued() >= 4).await;

    std::fs::write(&path, reload_text(&sim, ROTATED_KEY, 2)).unwrap();
    let sent_before = sim.records().len();
    let (code, body) = post_reload(&gate).await;
    let sent_during = sim.records().len();
    assert_eq!(
        (code, &body["success"]),
        (200, &Value::Bool(true)),
        "{body}"
    );
    let new_checksum = body["config_checksum"].clone();
    assert!(
        new_checksum.is_string() && new_checksum != old_checksum,
        "{body}"
    );
    assert_eq!(status_doc(&gate).await["config_checksum"], new_checksum);

    let after: Vec<_> = (0..2)
        .map(|_| spawn_get(&c, url.clone(), ACME_CLIENT))
        .collect();
    for t in queued_tasks.into_iter().chain(after) {
        let (code, body) = t.await.unwrap().expect("no connection error");
        assert_eq!(code, 200, "{body}");
    }

    let records = sim.records();
    assert_eq!(records.len(), 8, "every request reached the CRM once");
    assert!(records.iter().all(|r| r.status == 200));
    let key = |i: usize| records[i].api_key.as_deref();
    for i in 0..sent_before {
        assert_eq!(key(i), Some(ACME_KEY), "request {i} left before the reload");
    }
    // A request that left while the reload ran may carry either key.
    for i in sent_during..records.len() {
        assert_eq!(
            key(i),
            Some(ROTATED_KEY),
            "request {i} left after the reload"
        );
    }
    assert!(
        records.len() - sent_during >= 5,
        "at least 3 queued and 2 new requests left after the reload"
    );
    let text = metrics_text(&gate.admin).await;
    assert_eq!(
        metric(
            &text,
            "crmgate_config_reloads_total",
            &[("outcome", "success")]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_invalid_reload_is_refused_and_the_old_config_stays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crmgate.toml");
    let sim = rotation_sim().await;
    let gate = Gate::from_file(&path, &reload_text(&sim, ACME_KEY, 10)).await;
    let before = status_doc(&gate).await;

    std::fs::write(&path, reload_text(&sim, ROTATED_KEY, 0)).unwrap();
    let (code, body) = post_reload(&gate).await;
    assert_eq!(
        (code, &body["success"]),
        (400, &Value::Bool(false)),
        "{body}"
    );
    let errors = body["errors"].as_array().expect("errors listed");
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("limits.general_per_second")),
        "{body}"
    );

    let resp = client()
        .get(format!("{}/api/v5/orders", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(sim.records()[0].api_key.as_deref(), Some(ACME_KEY));
    let after = status_doc(&gate).await;
    assert_eq!(after["config_checksum"], before["config_checksum"]);
    assert_eq!(general_budgets(&after)[0]["configured_rate"], 10);

    let text = metrics_text(&gate.admin).await;
    let reloads = |outcome| {
        metric(
            &text,
            "crmgate_config_reloads_total",
            &[("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!((reloads("failure"), reloads("success")), (1.0, 0.0));
}

/// The real `crmgate serve` binary, logging JSON to files.
struct Binary {
    child: Child,
    api: String,
    admin: String,
    config: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// The environment variable the binary reads acme's real key from.
const KEY_ENV: &str = "CRMGATE_OPS_TEST_ACME_KEY";

fn binary_config(sim: &Simulator, api: u16, admin: u16, rate: u32) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{api}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         shutdown_grace = \"5s\"\n\
         [limits]\ngeneral_per_second = {rate}\n\
         [retry]\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n\n\
         [[tenants]]\nname = \"acme\"\nbase_url = \"{}\"\napi_key_env = \"{KEY_ENV}\"\n\
         client_keys = [\"{ACME_CLIENT}\", \"{ACME_CLIENT2}\"]\nsite = \"main\"\n",
        sim.base_url()
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Binary {
    /// Starts `crmgate serve` in front of `sim` and waits until it is ready.
    /// Ports are found by binding and releasing them, so another process may
    /// take one meanwhile: then the binary exits and we try other ports.
    async fn start(sim: &Simulator, dir: &Path) -> Binary {
        for attempt in 0..5 {
            let (api, admin) = (free_port(), free_port());
            if api == admin {
                continue;
            }
            let config = dir.join("crmgate.toml");
            std::fs::write(&config, binary_config(sim, api, admin, 10)).unwrap();
            let stdout = dir.join(format!("stdout-{attempt}.log"));
            let stderr = dir.join(format!("stderr-{attempt}.log"));
            let child = Command::new(env!("CARGO_BIN_EXE_crmgate"))
                .args(["serve", "--config"])
                .arg(&config)
                .args(["--log-format", "json"])
                .env("RUST_LOG", "debug")
                .env(KEY_ENV, ACME_KEY)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&stdout).unwrap())
                .stderr(std::fs::File::create(&stderr).unwrap())
                .spawn()
                .expect("crmgate binary starts");
            let mut bin = Binary {
                child,
                api: format!("http://127.0.0.1:{api}"),
                admin: format!("http://127.0.0.1:{admin}"),
                config,
                stdout,
                stderr,
            };
            if bin.wait_ready().await {
                return bin;
            }
            eprintln!("crmgate exited before ready (port taken?):\n{}", bin.logs());
        }
        panic!("crmgate did not become ready on any free ports");
    }

    /// True once /readyz answers 200; false if the process exited first.
    async fn wait_ready(&mut self) -> bool {
        let probe = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let (child, ready) = (&mut self.child, format!("{}/readyz", self.admin));
        wait_for_within("crmgate to become ready", Duration::from_secs(30), || {
            let exited = child.try_wait().unwrap().is_some();
            let answer = probe.get(&ready).send();
            async move {
                if exited {
                    return Some(false);
                }
                let r = answer.await.ok()?;
                (r.status() == 200).then_some(true)
            }
        })
        .await
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    async fn wait_exit(&mut self) -> ExitStatus {
        let child = &mut self.child;
        let exited = poll_until(Duration::from_secs(30), || {
            std::future::ready(child.try_wait().unwrap())
        })
        .await;
        exited.unwrap_or_else(|| panic!("crmgate did not exit in 30 s:\n{}", self.logs()))
    }

    /// stdout and stderr so far.
    fn logs(&self) -> String {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.stdout), read(&self.stderr))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // Only if a test failed half-way: do not leave the process behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The JSON log lines (RUST_LOG=debug also lets dependencies log).
fn json_lines(logs: &str) -> Vec<Value> {
    logs.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn binary_logs_requests_without_keys_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim().await;
    let mut bin = Binary::start(&sim, dir.path()).await;
    let c = client();
    let orders = format!("{}/api/v5/orders", bin.api);

    let r = c
        .get(format!("{orders}?limit=20"))
        .header("X-API-KEY", ACME_CLIENT)
        .header("X-Request-Id", "ops-header-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{orders}?limit=20&apiKey={ACME_CLIENT2}"))
        .header("X-Request-Id", "ops-query-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{}/api/v5/orders/create", bin.api))
        .header("X-Request-Id", "ops-form-key")
        .form(&[
            ("apiKey", ACME_CLIENT),
            ("order", r#"{"externalId":"bin-1"}"#),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(format!("{orders}?apiKey={BAD_CLIENT}"))
        .header("X-Request-Id", "ops-bad-key")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    sim.faults().fail_next(1, None);
    let r = c
        .get(&orders)
        .header("X-API-KEY", ACME_CLIENT2)
        .header("X-Request-Id", "ops-retried")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-crmgate-attempts"], "2");
    let forwarded = sim.records();
    assert_eq!(forwarded.len(), 5);
    assert!(forwarded
        .iter()
        .all(|r| r.api_key.as_deref() == Some(ACME_KEY)));

    bin.signal("TERM");
    let exit = bin.wait_exit().await;
    let logs = bin.logs();
    assert!(exit.success(), "exit {exit:?} after SIGTERM:\n{logs}");
    assert_no_secret("the logs", &logs);

    let lines = json_lines(&logs);
    let access = |id: &str| {
        lines
            .iter()
            .find(|l| l["target"] == "crmgate::access" && l["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}:\n{logs}"))
    };
    for (id, tenant, status) in [
        ("ops-header-key", "acme", 200),
        ("ops-query-key", "acme", 200),
        ("ops-form-key", "acme", 201),
        ("ops-bad-key", "-", 403),
        ("ops-retried", "acme", 200),
    ] {
        let line = access(id);
        assert_eq!(
            (&line["tenant"], &line["status"]),
            (&Value::from(tenant), &Value::from(status)),
            "{line}"
        );
    }
    assert_eq!(access("ops-retried")["attempts"], 2);
    let path = |id: &str| access(id)["path"].as_str().unwrap().to_string();
    assert_eq!(path("ops-query-key"), "/api/v5/orders?limit=***&apiKey=***");
    assert_eq!(path("ops-bad-key"), "/api/v5/orders?apiKey=***");

    assert!(
        lines.iter().any(|l| l["message"] == "SIGTERM received"),
        "{logs}"
    );
    let stopped = lines
        .iter()
        .find(|l| l["message"] == "crmgate stopped")
        .unwrap_or_else(|| panic!("no drain report in:\n{logs}"));
    assert_eq!(
        (&stopped["drained"], &stopped["cut_off"]),
        (&Value::from(0), &Value::from(0)),
        "{stopped}"
    );
}

#[tokio::test]
async fn binary_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sim().await;
    let mut bin = Binary::start(&sim, dir.path()).await;
    let c = client();
    let status = || async {
        let r = c.get(format!("{}/status", bin.admin)).send().await.unwrap();
        json(r).await
    };
    // Budgets appear in /status once their class has seen a request.
    let r = c
        .get(format!("{}/api/v5/orders", bin.api))
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let before = status().await;
    assert_eq!(general_budgets(&before)[0]["configured_rate"], 10);

    let text = std::fs::read_to_string(&bin.config).unwrap();
    let changed = text.replace("general_per_second = 10", "general_per_second = 7");
    assert_ne!(text, changed);
    std::fs::write(&bin.config, changed).unwrap();
    bin.signal("HUP");

    let after = wait_for("the reloaded rate in /status", || async {
        let s = status().await;
        (general_budgets(&s)[0]["configured_rate"] == 7).then_some(s)
    })
    .await;
    assert_ne!(after["config_checksum"], before["config_checksum"]);
    let r = c
        .get(format!("{}/api/v5/orders", bin.api))
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "still serving after the reload");

    bin.signal("TERM");
    let exit = bin.wait_exit().await;
    let logs = bin.logs();
    assert!(exit.success(), "exit {exit:?}:\n{logs}");
    assert_no_secret("the logs", &logs);
    let lines = json_lines(&logs);
    assert!(
        lines.iter().any(|l| l["message"] == "config reloaded"),
        "{logs}"
    );
}
