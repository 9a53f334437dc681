//! The real `crmgate serve` binary: JSON logs of requests that never hold a
//! key, a drain on SIGTERM and a reload on SIGHUP. Runs against the
//! simulator on loopback ports.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::*;
use crmgate::sim::Simulator;
use serde_json::Value;

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
