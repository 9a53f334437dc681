//! `crmgate check`, the real binary: the offline summary, every config
//! problem with its field path and TOML syntax errors; and `--online`
//! against the simulator: a good key, a wrong key, a site the key cannot
//! access, missing scopes (current and older CRMs), and the calls kept
//! within the budget. No output ever holds a key.
mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::process::Output;

use common::*;
use crmgate::sim::{KeyAccess, SimConfig, Simulator};

const WRONG_KEY: &str = "wrong-key-5e1d0c";

/// The config for `tenants` (name, key variable, site) against `sim`.
fn config(
    dir: &Path,
    sim: &Simulator,
    tenants: &[(&str, &str, Option<&str>)],
    rate: u32,
) -> String {
    let mut text = format!("[limits]\ngeneral_per_second = {rate}\n");
    for (name, key_env, site) in tenants {
        text += &format!(
            "[[tenants]]\nname = \"{name}\"\nbase_url = \"{}\"\napi_key_env = \"{key_env}\"\n",
            sim.base_url()
        );
        if let Some(site) = site {
            text += &format!("site = \"{site}\"\n");
        }
    }
    let path = dir.join("crmgate.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Runs `crmgate check --online` with the tenants' keys in the environment.
async fn check_online(path: &str) -> (Output, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_crmgate"))
        .args(["check", "--online", "--config", path])
        .env("ONLINE_ACME_KEY", ACME_KEY)
        .env("ONLINE_BETA_KEY", BETA_KEY)
        .env("ONLINE_WRONG_KEY", WRONG_KEY)
        .output()
        .await
        .expect("crmgate check runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for key in [ACME_KEY, BETA_KEY, WRONG_KEY] {
        assert!(!text.contains(key), "a key was printed:\n{text}");
    }
    (out, text)
}

/// The lines about one tenant: its heading and the indented lines under it.
fn block(text: &str, tenant: &str) -> String {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with(&format!("{tenant} (")));
    let head = lines
        .next()
        .unwrap_or_else(|| panic!("no block for {tenant}:\n{text}"));
    let body: Vec<&str> = lines.take_while(|l| l.starts_with("  ")).collect();
    format!("{head}\n{}\n", body.join("\n"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_keys_are_accepted_and_reported() {
    let sim = spawn_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        &sim,
        &[
            ("acme", "ONLINE_ACME_KEY", Some("main")),
            ("beta", "ONLINE_BETA_KEY", None),
        ],
        10,
    );
    let (out, text) = check_online(&path).await;
    assert!(out.status.success(), "{text}");
    for (tenant, site) in [("acme", "main"), ("beta", "beta-shop")] {
        let b = block(&text, tenant);
        assert!(b.contains("key           accepted"), "{b}");
        assert!(
            b.contains("API v5        available (versions 3.0, 4.0, 5.0)"),
            "{b}"
        );
        assert!(
            b.contains(&format!(
                "site access   access_full; sites available: {site}"
            )),
            "{b}"
        );
        assert!(
            b.contains("order_read, order_write, customer_read, customer_write"),
            "{b}"
        );
        assert!(!b.contains("warning"), "{b}");
    }
    assert!(
        text.contains("2 tenant(s), 0 key(s) refused or unchecked, 0 warning(s)"),
        "{text}"
    );
    // Each tenant's two calls reached the CRM with its real key, no more.
    let records = sim.records();
    for (key, n) in [(ACME_KEY, 2), (BETA_KEY, 2)] {
        let paths: Vec<&str> = records
            .iter()
            .filter(|r| r.api_key.as_deref() == Some(key))
            .map(|r| r.path.as_str())
            .collect();
        assert_eq!(paths.len(), n, "{paths:?}");
        assert!(paths.contains(&"/api/credentials") && paths.contains(&"/api/api-versions"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_and_the_exit_is_non_zero() {
    let sim = spawn_sim(sim_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        &sim,
        &[
            ("acme", "ONLINE_ACME_KEY", None),
            ("wrong", "ONLINE_WRONG_KEY", None),
        ],
        10,
    );
    let (out, text) = check_online(&path).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        block(&text, "acme").contains("key           accepted"),
        "{text}"
    );
    let b = block(&text, "wrong");
    assert!(
        b.contains("key           REFUSED (HTTP 403: Wrong \"apiKey\" value.)"),
        "{b}"
    );
    // Nothing more is asked with a refused key.
    assert!(!b.contains("API v5"), "{b}");
    assert!(text.contains("1 key(s) refused or unchecked"), "{text}");
    let wrong_calls = sim
        .records()
        .iter()
        .filter(|r| r.api_key.as_deref() == Some(WRONG_KEY))
        .count();
    assert_eq!(wrong_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_the_key_cannot_access_and_missing_scopes_are_warned_about() {
    let mut cfg = sim_config();
    cfg.accounts[0].sites = vec!["main".into(), "outlet".into()];
    let sim = spawn_sim(cfg).await;
    // acme's key reaches only "main" and cannot write customers.
    assert!(sim.set_key_access(
        "acme",
        KeyAccess {
            scopes: ["order_read", "order_write", "customer_read"]
                .map(String::from)
                .to_vec(),
            sites: Some(vec!["main".into()]),
            legacy: false,
        }
    ));
    // beta answers as an older CRM: a `credentials` list, no `scopes`.
    assert!(sim.set_key_access(
        "beta",
        KeyAccess {
            scopes: ["order_read", "customer_read", "customer_write"]
                .map(String::from)
                .to_vec(),
            sites: None,
            legacy: true,
        }
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        &sim,
        &[
            ("acme", "ONLINE_ACME_KEY", Some("outlet")),
            ("beta", "ONLINE_BETA_KEY", Some("beta-shop")),
        ],
        10,
    );
    let (out, text) = check_online(&path).await;
    // Warnings only: the keys work.
    assert!(out.status.success(), "{text}");
    let acme = block(&text, "acme");
    assert!(
        acme.contains("site access   access_selective; sites available: main"),
        "{acme}"
    );
    assert!(
        acme.contains("warning: site \"outlet\" is not among the sites this key can access (main)"),
        "{acme}"
    );
    assert!(
        acme.contains("warning: the key lacks customer_write "),
        "{acme}"
    );
    let beta = block(&text, "beta");
    assert!(!beta.contains("site \"beta-shop\""), "{beta}");
    assert!(beta.contains("/api/orders/history"), "{beta}");
    assert!(
        beta.contains("warning: the key lacks /api/orders/create "),
        "{beta}"
    );
    assert!(
        text.contains("0 key(s) refused or unchecked, 3 warning(s)"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_wait_for_the_budget() {
    // The CRM allows 2 per second and counts every arrival; so does the
    // config. Three tenants make six calls: sent at once, the CRM would
    // answer 503 to four of them.
    let sim = spawn_sim(SimConfig {
        general_per_second: 2,
        ..sim_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        &sim,
        &[
            ("acme", "ONLINE_ACME_KEY", None),
            ("beta", "ONLINE_BETA_KEY", None),
            ("acme2", "ONLINE_ACME_KEY", None),
        ],
        2,
    );
    let (out, text) = check_online(&path).await;
    assert!(out.status.success(), "{text}");
    let records = sim.records();
    assert_eq!(records.len(), 6, "{records:?}");
    assert!(records.iter().all(|r| r.status == 200), "{records:?}");
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
