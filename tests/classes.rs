//! Rate-limit classes end to end: telephony and general methods, including
//! near-miss paths, driven through the gateway at their rates, judged by the
//! simulator's own reading of RetailCRM's rule (`crmgate::sim::classify`,
//! which shares no code with the gateway's `classify`).
//!
//! A gateway that took a general method for telephony would send it from
//! the 40/s budget; the simulator counts it against 10/s and answers 503,
//! so every test here asserts the simulator answered no 503 at all. Loads
//! are fixed counts (a few seconds at the documented rates), and the
//! assertions are counts from the simulator's records.
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;
use crmgate::sim::{classify, max_in_window, Class, Received};
use futures_util::future::join_all;
use reqwest::Method;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A call-event body the simulator accepts.
const EVENT: &str = r#"{"phone":"+79990001122","type":"in"}"#;

/// One path, sent `times` times in a row by one caller.
struct Caller {
    method: Method,
    path: &'static str,
    key: &'static str,
    times: usize,
    /// The class RetailCRM's rule gives the path (checked against the
    /// simulator's classifier, so a table typo cannot weaken the test).
    class: Class,
    /// What the simulator answers when the path is paced correctly.
    status: u16,
}

fn general(method: Method, path: &'static str, status: u16) -> Caller {
    Caller {
        method,
        path,
        key: ACME_CLIENT,
        times: 6,
        class: Class::General,
        status,
    }
}

fn telephony(path: &'static str, key: &'static str, status: u16) -> Caller {
    Caller {
        method: Method::POST,
        path,
        key,
        times: 15,
        class: Class::Telephony,
        status,
    }
}

/// General methods, near misses included, at about 10/s in total, and
/// telephony at about 40/s, for about four seconds.
fn mixed_load(near_misses: Vec<Caller>) -> Vec<Caller> {
    let mut callers = vec![
        general(Method::GET, "/api/v5/orders", 200),
        general(Method::GET, "/api/v4/orders", 200),
        general(Method::GET, "/api/v5/reference/sites", 200),
    ];
    callers.extend(near_misses);
    for key in [ACME_CLIENT, BETA_CLIENT] {
        callers.extend([
            telephony("/api/v5/telephony/call/event", key, 200),
            telephony("/api/v4/telephony/call/event", key, 200),
            // Methods the simulator does not implement (404) still count
            // as telephony at the CRM.
            telephony("/api/telephony/call/event", key, 404),
            telephony("/api/v5/telephony/call/event/", key, 404),
        ]);
    }
    callers
}

/// Paths that mention telephony but are general methods under RetailCRM's
/// rule, and that the gateway classifies correctly today.
fn general_near_misses() -> Vec<Caller> {
    vec![
        general(Method::GET, "/api/v5/orders/telephony", 404),
        general(Method::POST, "/api/v5/telephonyx/call/event", 404),
        general(
            Method::POST,
            "/api/v5/integration-modules/telephony/edit",
            404,
        ),
    ]
}

/// Runs every caller to completion through the gateway and returns what
/// the simulator received, after checking each caller saw its status.
async fn drive(callers: &[Caller]) -> Vec<Received> {
    for c in callers {
        assert_eq!(classify(c.path), c.class, "table entry {}", c.path);
    }
    // The simulator on a thread of its own (its arrival stamps never wait
    // behind the gateway's tasks), a gateway with the default limits.
    let (sim, gate, _sim_thread) = isolated_setup("[limits]\n").await;
    let client = client();
    let sent = join_all(callers.iter().map(|c| {
        let (client, url) = (client.clone(), format!("{}{}", gate.url, c.path));
        async move {
            let mut statuses = Vec::new();
            for _ in 0..c.times {
                let mut req = client
                    .request(c.method.clone(), &url)
                    .header("x-api-key", c.key);
                if c.method == Method::POST {
                    req = req.form(&[("event", EVENT)]);
                }
                let resp = req.send().await.expect("gateway answers");
                statuses.push(resp.status().as_u16());
            }
            statuses
        }
    }))
    .await;
    let records = sim.records();
    let windows = max_in_window(&records, Duration::from_secs(1));
    println!("{} arrivals, per-window max {windows:?}", records.len());

    let throttled: Vec<(&str, Class)> = records
        .iter()
        .filter(|r| r.status == 503)
        .map(|r| (r.path.as_str(), r.class))
        .collect();
    assert!(
        throttled.is_empty(),
        "the simulator answered 503 {} times: {throttled:?}; per-window max {windows:?}",
        throttled.len()
    );
    for (c, statuses) in callers.iter().zip(&sent) {
        assert!(
            statuses.iter().all(|s| *s == c.status),
            "{} {}: {statuses:?}",
            c.method,
            c.path
        );
    }
    records
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_class_at_its_rate_draws_no_503() {
    let callers = mixed_load(general_near_misses());
    let records = drive(&callers).await;

    // Every request arrived once, and the simulator saw each path in the
    // class the table gives it.
    assert_eq!(
        records.len(),
        callers.iter().map(|c| c.times).sum::<usize>()
    );
    for c in &callers {
        let seen: Vec<&Received> = records.iter().filter(|r| r.path == c.path).collect();
        assert!(seen.len() >= c.times, "{}: {} arrivals", c.path, seen.len());
        assert!(seen.iter().all(|r| r.class == c.class), "{}", c.path);
    }
    // Both budgets were used, so "no 503" means something: telephony went
    // faster than the general limit allows, general filled its window.
    let windows = max_in_window(&records, Duration::from_secs(1));
    let (tel, gen) = (
        windows[&(LOOPBACK, Class::Telephony)],
        windows[&(LOOPBACK, Class::General)],
    );
    assert!(tel > 10, "telephony held to the general rate: {tel}/s");
    assert!(tel <= 40, "{tel} telephony requests in one second");
    assert!(
        (8..=10).contains(&gen),
        "{gen} general requests in one second"
    );
}

/// `/api/v5/telephony` and `/api/telephony` name the group, not a method
/// under `telephony/*`, so the CRM counts them as general. The gateway once
/// took them for telephony and sent them from the 40/s budget; the
/// simulator caught that with 503s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bare_telephony_group_is_general() {
    let near_misses = vec![
        general(Method::POST, "/api/v5/telephony", 404),
        general(Method::POST, "/api/telephony", 404),
    ];
    drive(&mixed_load(near_misses)).await;
}
