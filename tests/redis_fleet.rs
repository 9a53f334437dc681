//! The Redis link as an operator sees it: `budget_backend` says `shared`
//! only after Redis answered (`connecting` before, `fallback` with a
//! redacted cause while it fails), `/readyz` stays ready in fallback unless
//! `redis.required`, and TLS with a private CA and a password works against
//! a real `redis-server --tls-port` whose CA the test made.
//!
//! Each test starts its own processes on free ports; without redis-server
//! on PATH they skip loudly (CRMGATE_REQUIRE_REDIS=1 makes that a failure).
mod common;

use std::time::Duration;

use common::*;
use crmgate::classify::Class;
use crmgate::config::Config;
use crmgate::scheduler::RedisBudget;

/// A TCP listener that accepts and then never says a word: a Redis that
/// hangs. Returns its port; the task holds the connections until the test ends.
async fn silent_listener() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    port
}

fn redis_section(sim: &crmgate::sim::Simulator, redis: &str) -> Config {
    config(&config_text(
        sim,
        &format!("[limits]\nbackend = \"redis\"\n[redis]\n{redis}\n"),
    ))
}

async fn readyz(gate: &Gate) -> (u16, serde_json::Value) {
    let resp = client()
        .get(format!("{}/readyz", gate.admin))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), json(resp).await)
}

#[tokio::test]
async fn the_backend_is_connecting_until_redis_answers_and_fallback_with_a_redacted_cause() {
    let sim = sim().await;
    // A Redis that accepts and never answers: the probe waits its timeout.
    let port = silent_listener().await;
    let gate = Gate::start(redis_section(
        &sim,
        &format!("url = \"redis://gate:pw-SILENT-1@127.0.0.1:{port}\"\ntimeout = \"5s\""),
    ))
    .await;
    let s = status_now(&gate);
    assert_eq!(s["budget_backend"], "connecting", "{s}");
    assert_eq!(s["redis_calls"], 0, "{s}");
    assert_eq!(s["budget_backend_cause"], serde_json::Value::Null, "{s}");
    let (code, body) = readyz(&gate).await;
    assert_eq!((code, &body["budget_backend"]), (200, &"connecting".into()));

    wait_until("the probe's timeout to end the wait", || {
        gate.gateway.backend_state() == "fallback"
    })
    .await;
    let doc = status_doc(&gate).await;
    let text = doc.to_string();
    let cause = doc["budget_backend_cause"].as_str().unwrap_or_default();
    assert!(cause.contains("timed out"), "{doc}");
    assert!(
        !text.contains("pw-SILENT-1") && !text.contains("gate:"),
        "{text}"
    );
    assert_eq!(readyz(&gate).await.0, 200, "fallback keeps crmgate ready");
    let page = client()
        .get(format!("{}/", gate.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("pw-SILENT-1"),
        "the status page shows no password"
    );

    // With redis.required, fallback (here: nothing listens) is not ready.
    let closed = free_port();
    let strict = Gate::start(redis_section(
        &sim,
        &format!("url = \"redis://127.0.0.1:{closed}\"\ntimeout = \"200ms\"\nrequired = true"),
    ))
    .await;
    wait_until("the refused connection to show", || {
        strict.gateway.backend_state() == "fallback"
    })
    .await;
    let (code, body) = readyz(&strict).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["errorMsg"]
            .as_str()
            .unwrap()
            .contains("redis.required"),
        "{body}"
    );
    assert_eq!(status_now(&strict)["ready"], false);
}

#[tokio::test]
async fn shared_is_shown_only_after_a_call_answered() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let sim = sim().await;
    let gate = Gate::start(redis_section(
        &sim,
        &format!(
            "url = \"{}\"\nkey_prefix = \"state\"\nrequired = true",
            redis.url()
        ),
    ))
    .await;
    // Every sample that says "shared" has counted an answered call.
    let reached = poll_until(WAIT_LIMIT, || {
        let s = status_now(&gate);
        if s["budget_backend"] == "shared" {
            assert!(s["redis_calls"].as_u64().unwrap() > 0, "{s}");
            return std::future::ready(Some(()));
        }
        assert_eq!(s["budget_backend"], "connecting", "{s}");
        std::future::ready(None)
    })
    .await;
    assert!(reached.is_some(), "never shared: {}", status_now(&gate));
    assert_eq!(readyz(&gate).await.0, 200, "required and shared: ready");
}

/// The config of a gateway on `tls` with `redis` lines added.
fn tls_config(sim: &crmgate::sim::Simulator, tls: &TlsRedis, redis: &str) -> Config {
    redis_section(
        sim,
        &format!(
            "ca_file = \"{}\"\ntimeout = \"2s\"\nkey_prefix = \"tls\"\n{redis}",
            tls.ca_file.display()
        ),
    )
}

#[tokio::test]
async fn tls_with_a_private_ca_and_a_password() {
    let Some(tls) = TlsRedis::start().await else {
        return;
    };
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("redis-password");
    std::fs::write(&pw_file, format!("{}\n", tls.password)).unwrap();

    // password_file: the budget's scripts run over TLS.
    let config = tls_config(
        &sim,
        &tls,
        &format!(
            "url = \"{}\"\npassword_file = \"{}\"",
            tls.url(),
            pw_file.display()
        ),
    );
    let shared = RedisBudget::new(&config);
    let wait = shared
        .reserve(Class::General, None, u64::MAX)
        .await
        .unwrap_or_else(|| panic!("Redis over TLS answers: {:?}", shared.state()))
        .wait;
    assert_eq!(wait, Duration::ZERO);
    assert!(!shared.in_fallback());

    // The whole gateway, with the password inside the URL instead.
    let url = tls
        .url()
        .replace("rediss://", &format!("rediss://:{}@", tls.password));
    let gate = Gate::start(tls_config(&sim, &tls, &format!("url = \"{url}\""))).await;
    wait_until("the TLS Redis to answer", || {
        gate.gateway.backend_state() == "shared"
    })
    .await;
    for _ in 0..3 {
        let out = Call::get("/api/v5/orders", Some(ACME_CLIENT))
            .send(&client(), &gate.url, "tls")
            .await;
        assert_eq!(out.status, 200, "{out:?}");
    }
    assert!(status_now(&gate)["redis_calls"].as_u64().unwrap() >= 3);

    // A wrong password, and a CA that is not Redis's: fallback, each with
    // its cause, never the password.
    let wrong = Gate::start(tls_config(
        &sim,
        &tls,
        &format!(
            "url = \"{}\"",
            tls.url().replace("rediss://", "rediss://:not-the-pw-77@")
        ),
    ))
    .await;
    let other_dir = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = write_certificates(other_dir.path());
    let untrusted = Gate::start(redis_section(
        &sim,
        &format!(
            "url = \"{url}\"\nca_file = \"{}\"\ntimeout = \"2s\"",
            other_ca.display()
        ),
    ))
    .await;
    for (gate, expect) in [(&wrong, "auth"), (&untrusted, "certificate")] {
        wait_until("the failure to show", || {
            gate.gateway.backend_state() == "fallback"
        })
        .await;
        let doc = status_now(gate);
        let cause = doc["budget_backend_cause"].as_str().unwrap().to_lowercase();
        assert!(cause.contains(expect), "{expect}: {cause}");
        let text = doc.to_string();
        assert!(
            !text.contains(&tls.password) && !text.contains("not-the-pw-77"),
            "{text}"
        );
    }
}
