//! The bad-input battery: bytes that a broken client, an
//! odd library or an attacker may send, each on its own raw TCP connection
//! to a real gateway with the simulator behind it.
//!
//! The cases are one table of (name, bytes, expectation); a new case is one
//! line. For every case the runner checks that:
//! - what came back is exactly the expected answers, each complete, then a
//!   close: crmgate's own RetailCRM-shaped JSON error, the CRM's answer, or
//!   (for bytes hyper's parser refuses before any handler) a close with at
//!   most hyper's bare 4xx — never partial garbage, never a hang;
//! - no key, real or client, appears in the answer, in the log (every line
//!   at debug, captured in memory), or in anything the simulator received,
//!   except the real key in its one `X-API-KEY` header;
//! - a request crmgate answered itself reached neither the CRM nor a budget,
//!   and a forwarded one reached the CRM exactly once;
//! - a well-formed request from another client on a fresh connection is
//!   served right after.
//!
//! Bad inputs that are not one request on one connection are tested where
//! their setup lives: the connection cap and header-field counts in
//! `tests/edge.rs`, secrets in config errors in `tests/config_secrets.rs`,
//! the reload race in `tests/forward.rs`, memory in the benchmark.
//!
//! `cases`: the table and its request builders; `log`: the log captured
//! in memory; this file: the runner. The raw client is `common::raw`.
//! `BATTERY_SHOW=1 cargo test --test battery -- --nocapture` prints what
//! each case got: the way to pin the expectation of a new case.

mod cases;
#[path = "../common/mod.rs"]
mod common;
mod log;

use cases::*;
use common::*;
use crmgate::sim::{Received, Simulator};
use log::{captured_log, Log};

/// Every key of the test config, real and client.
const KEYS: [&str; 5] = [ACME_KEY, BETA_KEY, ACME_CLIENT, ACME_CLIENT2, BETA_CLIENT];
/// The real keys (to reach the CRM only as its `X-API-KEY` header).
const REAL_KEYS: [&str; 2] = [ACME_KEY, BETA_KEY];

/// Short head and body timeouts so that stalled cases end quickly; budgets
/// high enough that no case waits for a slot.
const EXTRA: &str = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
     header_timeout = \"500ms\"\nbody_timeout = \"500ms\"\n\
     [limits]\ngeneral_per_second = 1000\ntelephony_per_second = 1000\n";

// ---------------------------------------------------------------- the tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_json_or_a_clean_close_and_leaks_no_key() {
    battery(cases()).await;
}

/// Each case names itself uniquely: `battery` runs them at once.
#[test]
fn case_names_are_unique() {
    let mut names: Vec<_> = cases().iter().map(|c| c.name).collect();
    let all = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all, "a case name is used twice");
}

// ---------------------------------------------------------------- the runner

/// Runs every case (at once: they are independent, each on its own
/// connection, told apart by request id), then the checks that span them
/// all; fails listing every failed case.
async fn battery(cases: Vec<Case>) {
    // One battery at a time, so the log written meanwhile is this one's.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _alone = ONE_AT_A_TIME.lock().await;
    let log = captured_log();
    let log_start = log.len();
    let sim = sim().await;
    sim.set_limits(100_000, 100_000);
    let gate = Gate::start(config(&config_text(&sim, EXTRA))).await;
    let env = Env {
        sim: &sim,
        gate: &gate,
        log,
    };
    let results =
        futures_util::future::join_all(cases.iter().map(|c| async { (c.name, env.run(c).await) }))
            .await;
    let mut failures: Vec<String> = results
        .into_iter()
        .filter_map(|(name, r)| r.err().map(|e| format!("[{name}] {e}")))
        .collect();
    failures.extend(crm_saw_no_key(&sim.records()));
    // Every connection the cases opened is gone from the gateway too.
    let open = gate
        .gateway
        .metrics
        .connections_open
        .with_label_values(&["api"]);
    wait_until("every API connection closed", || open.get() == 0).await;
    let text = log.text_since(log_start);
    for key in KEYS {
        if text.contains(key) {
            let line = text.lines().find(|l| l.contains(key)).unwrap_or_default();
            failures.push(format!("a key is in the log: {line}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// What every case runs against.
#[derive(Clone, Copy)]
struct Env<'a> {
    sim: &'a Simulator,
    gate: &'a Gate,
    log: &'static Log,
}

impl Env<'_> {
    async fn run(&self, case: &Case) -> Result<(), String> {
        let id = format!("b.{}.", case.name);
        let api = self.gate.addr.to_string();
        let addr = match case.port {
            Port::Api => api.clone(),
            Port::Admin => self.gate.admin.trim_start_matches("http://").to_string(),
        };
        let raw = fill(
            &case.raw,
            &[
                ("{id}", &id),
                ("{ck}", ACME_CLIENT),
                ("{real}", ACME_KEY),
                ("{addr}", &api),
            ],
        );
        let got = exchange(&addr, &raw).await?.bytes;
        if std::env::var_os("BATTERY_SHOW").is_some() {
            let shown = String::from_utf8_lossy(&got[..got.len().min(300)]).into_owned();
            eprintln!("[{}] {shown:?}", case.name);
        }
        let answers = self.judge(&got, case.expect, &id)?;

        // The CRM saw each forwarded request once, and nothing else.
        let sent = self
            .sim
            .records()
            .iter()
            .filter(|r| id_of(r).starts_with(&id))
            .count();
        let forwarded = answers.iter().filter(|a| matches!(a, Crm(_))).count();
        if sent != forwarded {
            return Err(format!(
                "the CRM got {sent} request(s), expected {forwarded}"
            ));
        }
        for word in case.hidden {
            if let Some(line) = self
                .log
                .lines_with(&id)
                .into_iter()
                .find(|l| l.contains(word))
            {
                return Err(format!("{word:?} is in the access log: {line}"));
            }
        }

        // Another client is served right after, on a fresh connection.
        let canary = format!(
            "GET /api/v5/orders?limit=20 HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: c.{}.\r\n\
             X-API-KEY: {BETA_CLIENT}\r\nConnection: close\r\n\r\n",
            case.name
        );
        let got = exchange(&api, canary.as_bytes()).await?.bytes;
        self.judge(&got, Answers(&[Crm(200)]), &format!("c.{}.", case.name))
            .map_err(|e| format!("the canary after it failed: {e}"))?;
        Ok(())
    }

    /// Checks what came back against `expect`; returns the answers matched.
    fn judge(&self, got: &[u8], expect: Expect, id: &str) -> Result<Vec<Ans>, String> {
        if let Either(a, b) = expect {
            return self.judge(got, *a, id).or_else(|e| {
                self.judge(got, *b, id)
                    .map_err(|f| format!("neither {a:?} ({e}) nor {b:?} ({f})"))
            });
        }
        let shown = String::from_utf8_lossy(&got[..got.len().min(600)]).into_owned();
        if let Some(key) = KEYS.iter().find(|k| contains(got, k)) {
            return Err(format!("the answer holds key {key}: {shown:?}"));
        }
        let responses = parse_responses(got).map_err(|e| format!("{e}: {shown:?}"))?;
        let expected: &[Ans] = match expect {
            Answers(a) => a,
            Closed if responses.is_empty() => &[],
            Closed => &[Ans::Parser],
            Either(..) => unreachable!("handled above"),
        };
        if responses.len() != expected.len() {
            return Err(format!(
                "expected {expected:?}, got {} answer(s): {shown:?}",
                responses.len()
            ));
        }
        for (r, want) in responses.iter().zip(expected) {
            self.check_answer(r, *want, id)
                .map_err(|e| format!("{want:?}: {e}: {shown:?}"))?;
        }
        Ok(expected.to_vec())
    }

    fn check_answer(&self, r: &Response, want: Ans, id: &str) -> Result<(), String> {
        let (Crm(status) | Own(status)) = want else {
            // hyper's own refusal: a 4xx and nothing else.
            return if (400..500).contains(&r.status) && r.body.is_empty() {
                Ok(())
            } else {
                Err(format!("not a bare parser refusal: {}", r.status))
            };
        };
        if r.status != status {
            return Err(format!("status {}", r.status));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&r.body).map_err(|e| format!("not JSON ({e})"))?;
        if let Own(_) = want {
            if v["success"] != false || !v["errorMsg"].is_string() {
                return Err(format!("not RetailCRM's error shape: {v}"));
            }
            // Answered without a send: no budget slot was used.
            if r.header("x-crmgate-attempts").is_some_and(|a| a != "0") {
                return Err("an own answer after a send".into());
            }
        }
        if let Crm(s) = want {
            if (200..300).contains(&s) && v["success"] != true {
                return Err(format!("not a success: {v}"));
            }
            if r.header("x-crmgate-attempts").is_none_or(|a| a == "0") {
                return Err("the CRM's answer without a send".into());
            }
        }
        // Through the request path: it carries its id, and the access log
        // has its line with its status.
        if let Some(rid) = r.header("x-request-id") {
            if !rid.starts_with(id) {
                return Err(format!("answer to another request: {rid}"));
            }
            let lines = self.log.lines_with(rid);
            let status = format!("status={status}");
            if !lines
                .iter()
                .any(|l| l.contains("crmgate::access") && l.contains(&status))
            {
                return Err(format!(
                    "no access log line with {status} for {rid}: {lines:?}"
                ));
            }
        } else if matches!(want, Crm(_)) {
            return Err("a forwarded answer without its request id".into());
        }
        Ok(())
    }
}

/// Every failure of the rule "the CRM sees the real key once, in
/// `X-API-KEY`, and never a client key".
fn crm_saw_no_key(records: &[Received]) -> Vec<String> {
    let mut failures = Vec::new();
    for r in records {
        let who = format!("the CRM's record of {}", id_of(r));
        let keys = r.headers.iter().filter(|(n, _)| n == "x-api-key");
        if keys.count() != 1 || !REAL_KEYS.contains(&r.header("x-api-key").unwrap_or("")) {
            failures.push(format!("{who}: not exactly one real X-API-KEY"));
        }
        for key in KEYS {
            let in_header = r
                .headers
                .iter()
                .any(|(n, v)| v.contains(key) && (n != "x-api-key" || CLIENT_KEYS.contains(&key)));
            let in_request = r.path.contains(key)
                || r.query.as_deref().unwrap_or("").contains(key)
                || contains(&r.body, key);
            if in_header || in_request {
                failures.push(format!(
                    "{who}: key {key} in {} {:?} {:?}",
                    r.path, r.query, r.headers
                ));
            }
        }
    }
    failures
}
