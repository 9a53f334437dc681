//! The production path: crmgate → HTTPS → the CRM. The simulator serves
//! TLS with a CA of its own, which the gateway trusts through
//! `upstream.ca_file`; each behaviour is checked over HTTP/1.1 (ALPN offers
//! only `http/1.1`) and over HTTP/2 (ALPN offers `h2`, which reqwest picks).
//!
//! As in `tests/shaping.rs`, load tests assert what the simulator recorded
//! (per-window maxima, 503s), never how long the test took.
mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::time::Duration;

use common::*;
use crmgate::sim::{Class, Received};
use futures_util::future::join_all;
use reqwest::Version;

/// One test per HTTP version: `$name::http1` and `$name::http2` run
/// `$body(http2: bool)`, as `#[tokio::test]` unless another test attribute
/// is given.
macro_rules! both_versions {
    ($name:ident, $body:ident) => {
        both_versions!($name, $body, tokio::test);
    };
    ($name:ident, $body:ident, $($test:tt)+) => {
        mod $name {
            #[$($test)+]
            async fn http1() {
                super::$body(false).await
            }
            #[$($test)+]
            async fn http2() {
                super::$body(true).await
            }
        }
    };
}

fn version(http2: bool) -> Version {
    if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    }
}

/// Every record came over TLS with the HTTP version ALPN chose.
fn assert_version(records: &[Received], http2: bool) {
    let want = version(http2);
    assert!(
        records.iter().all(|r| r.version == want),
        "expected {want:?}: {:?}",
        records.iter().map(|r| r.version).collect::<Vec<_>>()
    );
}

both_versions!(keys_are_swapped, keys_are_swapped_over_tls);
async fn keys_are_swapped_over_tls(http2: bool) {
    let (sim, gate) = tls_setup(tls_sim_config(http2), "").await;
    // Header, query (twice) and form body: every place a client puts a key.
    send_a_key_in_every_place(&client(), &gate.url, "tls-1").await;

    let recs = sim.records();
    assert_eq!(recs.len(), 3, "{recs:?}");
    assert_version(&recs, http2);
    assert_no_client_key(&recs);
    let real: Vec<_> = recs.iter().map(|r| r.header("x-api-key")).collect();
    assert_eq!(real, [Some(ACME_KEY), Some(ACME_KEY), Some(BETA_KEY)]);
    assert_eq!(recs[1].query.as_deref(), Some("limit=20&site=main"));
    assert_eq!(
        String::from_utf8_lossy(&recs[2].body),
        "site=beta-shop&order=%7B%22externalId%22%3A%22tls-1%22%7D"
    );
}

both_versions!(large_answers_stream, a_large_answer_streams_back);
async fn a_large_answer_streams_back(http2: bool) {
    let (sim, gate) = tls_setup(tls_sim_config(http2), "").await;
    let c = client();
    // A 3 MiB order goes up (a body of many TLS records) and comes back in
    // a page of the order list: orders 201-300, the 238th is ours.
    let comment: String = (0..3 * 1024 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let order = format!(r#"{{"externalId":"big-1","customerComment":"{comment}"}}"#);
    let o = Call::post(
        "/api/v5/orders/create",
        Some(ACME_CLIENT),
        &[("order", &order)],
    )
    .send(&c, &gate.url, "big-up")
    .await;
    assert_eq!(o.status, 201, "{}", &o.body[..o.body.len().min(300)]);

    let mut resp = c
        .get(format!("{}/api/v5/orders?limit=100&page=3", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (mut body, mut chunks) = (Vec::new(), 0);
    while let Some(chunk) = resp.chunk().await.expect("body chunk") {
        body.extend_from_slice(&chunk);
        chunks += 1;
    }
    // Passed on piece by piece as it arrived, not gathered into one buffer.
    assert!(chunks > 1, "the 3 MiB answer came in {chunks} chunk(s)");
    let page: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let ours = page["orders"]
        .as_array()
        .and_then(|os| os.iter().find(|o| o["externalId"] == "big-1"))
        .expect("the big order is on page 3");
    assert_eq!(ours["customerComment"].as_str(), Some(comment.as_str()));
    assert_version(&sim.records(), http2);
}

both_versions!(retries_after_503, a_503_is_retried_over_tls);
async fn a_503_is_retried_over_tls(http2: bool) {
    let (sim, gate) = tls_setup(
        tls_sim_config(http2),
        "[retry]\ninitial_backoff = \"20ms\"\nmax_backoff = \"50ms\"",
    )
    .await;
    let c = client();
    sim.faults().fail_next(2, None);
    let get = Call::get("/api/v5/orders", Some(ACME_CLIENT))
        .send(&c, &gate.url, "get")
        .await;
    assert_eq!((get.status, get.attempts), (200, Some(3)), "{get:?}");
    sim.faults().fail_next(2, None);
    let post = Call::create(ACME_CLIENT, "tls-503")
        .send(&c, &gate.url, "post")
        .await;
    assert_eq!((post.status, post.attempts), (201, Some(3)), "{post:?}");

    let recs = sim.records();
    let statuses: Vec<(&str, u16)> = recs.iter().map(|r| (id_of(r), r.status)).collect();
    assert_eq!(
        statuses,
        [
            ("get", 503),
            ("get", 503),
            ("get", 200),
            ("post", 503),
            ("post", 503),
            ("post", 201)
        ]
    );
    assert_eq!(sim.orders_created("acme").len(), 1, "created exactly once");
    assert_version(&recs, http2);
}

both_versions!(
    ambiguous_reset,
    a_reset_after_a_post_was_sent_is_never_resent
);
async fn a_reset_after_a_post_was_sent_is_never_resent(http2: bool) {
    let (sim, gate) = tls_setup(tls_sim_config(http2), "[retry]\ninitial_backoff = \"20ms\"").await;
    let c = client();

    sim.faults().reset_after_processing_next(1);
    // No externalId: nothing to reconcile by (see tests/reconcile.rs).
    let order = r#"{"number":"tls-reset"}"#;
    let post = Call::post(
        "/api/v5/orders/create",
        Some(ACME_CLIENT),
        &[("order", order)],
    )
    .send(&c, &gate.url, "post")
    .await;
    post.assert_gateway_error(502);
    assert_eq!(post.attempts, Some(1), "{post:?}");
    let posts = sim.records().iter().filter(|r| id_of(r) == "post").count();
    assert_eq!(posts, 1, "the POST was resent after the CRM processed it");
    assert_eq!(sim.orders_created("acme").len(), 1);

    // A GET is safe to resend, and the gateway opens a new connection for it.
    sim.faults().reset_after_processing_next(1);
    let get = Call::get("/api/v5/orders", Some(ACME_CLIENT))
        .send(&c, &gate.url, "get")
        .await;
    assert_eq!((get.status, get.attempts), (200, Some(2)), "{get:?}");
    assert_version(&sim.records(), http2);
}

both_versions!(
    cold_handshakes_are_counted,
    cold_tls_handshakes_never_push_a_window_over_the_limit,
    tokio::test(flavor = "multi_thread", worker_threads = 2)
);
/// A cold start against a CRM 60 ms and one TLS handshake away: every
/// request of the first burst waits for a connection (120 ms), far beyond
/// the 20 ms jitter allowance. Without connect accounting the sends of the
/// next second, over warm connections, would land less than a second after
/// the first arrivals and the strict window would answer 503.
async fn cold_tls_handshakes_never_push_a_window_over_the_limit(http2: bool) {
    let _load = LOAD.lock().await;
    let (rtt, handshake) = FAR;
    let cfg = crmgate::sim::SimConfig {
        rtt,
        handshake,
        ..tls_sim_config(http2)
    };
    let (sim, gate) = tls_isolated_setup(cfg, "[limits]\n").await;
    let calls = (0..20)
        .map(|i| Call::get("/api/v5/orders", Some([ACME_CLIENT, BETA_CLIENT][i % 2])))
        .collect();
    let load = flood(&gate.url, "cold", calls);
    wait_for_arrivals_spanning(&sim, Duration::from_secs(2)).await;
    let outcomes = load.finish().await;
    let records = sim.records();
    let windows = per_window(&records);
    let opened = metric_now(
        &gate.admin,
        "crmgate_upstream_connections_total",
        &[("egress", "default")],
    )
    .await;
    println!(
        "cold TLS ({:?}): {} requests, per-window max {windows:?}, {opened} connections opened",
        version(http2),
        records.len()
    );

    assert!(
        not_ok(&outcomes, 200).is_empty(),
        "{:?}",
        not_ok(&outcomes, 200)
    );
    assert_no_503(&records);
    for (key, n) in &windows {
        assert!(*n <= 10, "{key:?}: {n} arrivals in one second");
    }
    // The budget was used, so the bound above means something.
    let loopback = IpAddr::from([127, 0, 0, 1]);
    assert!(windows[&(loopback, Class::General)] >= 8, "{windows:?}");
    // Warm connections were reused: a new one is opened only while every
    // open one is busy (HTTP/1.1) or before ALPN has said `h2` (a send
    // during the first handshake cannot know it could share it).
    assert!(
        opened >= 1.0 && opened * 4.0 <= records.len() as f64,
        "{opened} connections for {} requests",
        records.len()
    );
    assert_version(&records, http2);
}

both_versions!(
    egress_ips_bind,
    several_egress_ips_bind_their_source_over_tls
);
async fn several_egress_ips_bind_their_source_over_tls(http2: bool) {
    let (sim, gate) = tls_setup(
        tls_sim_config(http2),
        "[upstream]\negress_ips = [\"127.0.0.2\", \"127.0.0.3\"]\n",
    )
    .await;
    let c = client();
    // Both budgets are free at the start, so a burst leaves through both.
    let outcomes = join_all((0..6).map(|n| {
        let c = &c;
        let url = &gate.url;
        async move {
            Call::get("/api/v5/orders", Some(ACME_CLIENT))
                .send(c, url, &format!("ip-{n}"))
                .await
        }
    }))
    .await;
    assert!(
        not_ok(&outcomes, 200).is_empty(),
        "{:?}",
        not_ok(&outcomes, 200)
    );
    let recs = sim.records();
    let sources: HashSet<IpAddr> = recs.iter().map(|r| r.source_ip).collect();
    let want: HashSet<IpAddr> = ["127.0.0.2", "127.0.0.3"]
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect();
    assert_eq!(sources, want);
    for ip in ["127.0.0.2", "127.0.0.3"] {
        // Opened while a request waited, or ahead of need (warm).
        let mut opened = 0.0;
        for name in [
            "crmgate_upstream_connections_total",
            "crmgate_upstream_warm_connections_total",
        ] {
            opened += metric_now(&gate.admin, name, &[("egress", ip)]).await;
        }
        assert!(opened >= 1.0, "{ip}: {opened} connections");
    }
    assert_version(&recs, http2);
}

#[tokio::test]
async fn an_untrusted_certificate_is_502_json_and_nothing_is_sent() {
    let sim = tls_sim(tls_sim_config(true)).await;
    // The simulator's CA is not given: only the compiled-in web roots.
    let gate = Gate::start(config(&config_text(
        &sim,
        "[retry]\nmax_attempts = 2\ninitial_backoff = \"10ms\"\nmax_backoff = \"20ms\"",
    )))
    .await;
    let c = client();
    for call in [
        Call::get("/api/v5/orders", Some(ACME_CLIENT)),
        Call::create(ACME_CLIENT, "never"),
    ] {
        let o = call.send(&c, &gate.url, "untrusted").await;
        o.assert_gateway_error(502);
        let msg = o.json()["errorMsg"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(msg.contains("tenant acme"), "{msg}");
        assert!(
            msg.to_lowercase().contains("certificate"),
            "the cause is named: {msg}"
        );
        assert!(
            !msg.contains(ACME_KEY) && !msg.contains(ACME_CLIENT),
            "{msg}"
        );
    }
    // The handshake failed before any HTTP: the key never left.
    assert!(sim.records().is_empty(), "{:?}", sim.records());
}

/// Runs `crmgate check` on `text`; returns (success, stdout, stderr).
fn check(text: &str) -> (bool, String, String) {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crmgate"))
        .args(["check", "--config", &file.path().display().to_string()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn check_shows_the_trusted_roots_and_warns_about_cleartext() {
    let sim = tls_sim(tls_sim_config(true)).await;
    let text = format!(
        "{}\n[[tenants]]\nname = \"lan\"\nbase_url = \"http://crm.internal.example\"\n\
         api_key = \"real-lan-key-0a0a\"\n",
        sim.config_text("")
    );
    let (ok, out, err) = check(&text);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "trusted roots: compiled-in web roots + 1 extra root(s) from {}",
            sim.ca_file.display()
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "warning: tenants[3].base_url: tenant \"lan\" uses http:// to crm.internal.example"
        ),
        "{out}"
    );
    // The simulator is https:// and loopback: no warning for the others.
    assert_eq!(out.matches("would travel in clear").count(), 1, "{out}");
    assert!(!out.contains("real-lan-key-0a0a"), "{out}");

    let (ok, out, err) = check(&text.replace(
        &sim.ca_file.display().to_string(),
        "/nonexistent/sim-ca.pem",
    ));
    assert!(!ok, "{out}");
    assert!(
        err.contains("error: upstream.ca_file: cannot read /nonexistent/sim-ca.pem: "),
        "{err}"
    );
}
