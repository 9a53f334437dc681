//! A gateway whose budgets never make a test wait for a slot (tests about
//! what is sent, not when), and readers of what comes back: crmgate's own
//! JSON errors, headers, bodies the CRM received.

use crmgate::sim::{Received, Simulator};

use super::*;

pub const FORM: &str = "application/x-www-form-urlencoded";
/// What crmgate's own answers and the simulator's JSON carry.
pub const JSON_TYPE: &str = "application/json; charset=utf-8";

/// [`setup`] with budgets high enough that no test waits for a slot: these
/// tests are about what is sent, not when.
pub async fn start(extra: &str) -> (Simulator, Gate) {
    start_with(|_| extra.to_string()).await
}

/// [`start`] with extra config that needs the simulator's URL.
pub async fn start_with(extra: impl FnOnce(&Simulator) -> String) -> (Simulator, Gate) {
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
pub async fn own_error(resp: reqwest::Response, status: u16) -> String {
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

pub fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).map(|v| v.to_str().unwrap())
}

pub fn body_str(r: &Received) -> &str {
    std::str::from_utf8(&r.body).unwrap()
}
