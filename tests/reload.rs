//! Hot reload: a rotated key is in force for queued and new requests, and
//! an invalid reload is refused with the old config kept. Reloading
//! upstream timeouts: the gateway rebuilds its egress clients, new
//! sends use them, and a request already sent finishes on the client it was
//! sent with. Real sockets against the simulator (stalls come from its fault
//! injection) or against a listener that never completes a handshake.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use crmgate::sim::{SimConfig, Simulator};
use serde_json::Value;

/// The simulator's stall: longer than the short timeout, well within the long one.
const SLOW: Duration = Duration::from_secs(2);

/// Config text with `upstream` settings; no retries, so a timeout or a
/// connect failure is the answer.
fn text(sim: &Simulator, upstream: &str) -> String {
    let extra = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [upstream]\n{upstream}\n[retry]\nmax_attempts = 1\n"
    );
    config_text(sim, &extra)
}

/// Rewrites the file and reloads through the admin API; the reload must succeed.
async fn reload_to(gate: &Gate, path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    let (code, body) = admin_reload(&gate.admin).await;
    let body: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(
        (code, &body["success"]),
        (200, &Value::Bool(true)),
        "{body}"
    );
}

/// GET through the gateway as acme; the status and the JSON body. The
/// future holds no borrow of `gate`, so a test may spawn it.
fn get(gate: &Gate) -> impl std::future::Future<Output = (u16, Value)> + 'static {
    let url = format!("{}/api/v5/orders", gate.url);
    async move {
        let resp = client()
            .get(url)
            .header("x-api-key", ACME_CLIENT)
            .send()
            .await
            .expect("gateway answers");
        (resp.status().as_u16(), json(resp).await)
    }
}

/// Connections opened to the CRM: while a request waited, or ahead of
/// need (warm).
fn connections_opened(gate: &Gate) -> u64 {
    let m = &gate.gateway.metrics;
    m.upstream_connections.with_label_values(&["default"]).get()
        + m.upstream_warm_connections
            .with_label_values(&["default"])
            .get()
}

#[tokio::test]
async fn a_raised_request_timeout_lets_a_slow_answer_through_after_reload() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crmgate.toml");
    let sim = sim().await;
    let gate = Gate::from_file(&path, &text(&sim, "request_timeout = \"1s\"")).await;

    sim.faults().stall_next(1, SLOW);
    let (code, body) = get(&gate).await;
    assert_eq!(code, 504, "2 s answer, 1 s timeout: {body}");

    let opened_before = connections_opened(&gate);
    reload_to(&gate, &path, &text(&sim, "request_timeout = \"5s\"")).await;
    sim.faults().stall_next(1, SLOW);
    let (code, body) = get(&gate).await;
    assert_eq!(
        code, 200,
        "2 s answer, 5 s timeout after the reload: {body}"
    );
    assert_eq!(sim.records().len(), 2, "each call reached the CRM once");
    // The 504 dropped the first connection: the second send went out on
    // another one, opened after it (warm, or while the request waited).
    assert!(
        connections_opened(&gate) > opened_before,
        "a new connection was opened and counted"
    );
}

#[tokio::test]
async fn a_request_in_flight_during_a_reload_finishes_on_its_old_client() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crmgate.toml");
    let sim = sim().await;
    let gate = Gate::from_file(&path, &text(&sim, "request_timeout = \"5s\"")).await;

    sim.faults().stall_next(1, SLOW);
    let in_flight = tokio::spawn(get(&gate));
    wait_until("the slow request reached the CRM", || {
        sim.records().len() == 1
    })
    .await;

    // Lower the timeout under the stall while that request waits for it.
    reload_to(&gate, &path, &text(&sim, "request_timeout = \"1s\"")).await;
    let (code, body) = in_flight.await.unwrap();
    assert_eq!(
        code, 200,
        "sent before the reload: its client and timeout stay: {body}"
    );

    // A new send is held to the new timeout.
    sim.faults().stall_next(1, SLOW);
    let (code, body) = get(&gate).await;
    assert_eq!(code, 504, "sent after the reload: 1 s timeout: {body}");
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so
/// a connect to it hangs until the connector's timeout.
struct Blackhole {
    addr: std::net::SocketAddr,
    _listener: tokio::net::TcpListener,
    _queued: std::net::TcpStream,
}

impl Blackhole {
    fn start() -> Blackhole {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        // Backlog 0 holds one completed handshake; it is never accepted.
        let listener = socket.listen(0).unwrap();
        let addr = listener.local_addr().unwrap();
        let queued = std::net::TcpStream::connect(addr).unwrap();
        Blackhole {
            addr,
            _listener: listener,
            _queued: queued,
        }
    }
}

#[tokio::test]
async fn a_lowered_connect_timeout_is_in_force_after_reload() {
    let hole = Blackhole::start();
    let text = |connect: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [upstream]\nconnect_timeout = \"{connect}\"\nrequest_timeout = \"2s\"\n\
             [retry]\nmax_attempts = 1\n\
             [[tenants]]\nname = \"acme\"\nbase_url = \"http://{}\"\napi_key = \"real-key\"\n\
             client_keys = [\"{ACME_CLIENT}\"]\n",
            hole.addr
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crmgate.toml");
    let gate = Gate::from_file(&path, &text("10s")).await;

    // Connect timeout longer than the request timeout: the request's timer
    // ends the wait, as a timeout.
    let (code, body) = get(&gate).await;
    assert_eq!(
        code, 504,
        "the connect hangs past the 2 s request timeout: {body}"
    );

    reload_to(&gate, &path, &text("200ms")).await;
    let (code, body) = get(&gate).await;
    assert_eq!(
        code, 502,
        "the 200 ms connect timeout ends the wait first, as a connect failure: {body}"
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
