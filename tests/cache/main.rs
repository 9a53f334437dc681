//! The cache stage end to end, against the simulator. `coalesce`: join only
//! while queued, hang-ups, the shared deadline, the cache's lock. `store`:
//! rules, invalidation on writes, tenant isolation, `no-cache`/`no-store`,
//! `stale_if_error`, the memory bound, metrics, reload. This file: the
//! helpers both use. Counts are taken at the simulator: what the CRM really
//! received.

mod coalesce;
#[path = "../common/mod.rs"]
mod common;
mod store;

use std::time::Duration;

use common::*;
use crmgate::sim::Simulator;

/// One slot per ~1 s, so a request behind a blocker waits long enough for
/// others to join it; the cache on.
pub(crate) const SLOW: &str = "[limits]\ngeneral_per_second = 1\n[cache]\nenabled = true\n";

pub(crate) struct Got {
    pub(crate) status: u16,
    pub(crate) cache: String,
    pub(crate) age: Option<u64>,
    pub(crate) body: String,
}

pub(crate) async fn get_with(
    gate: &Gate,
    path: &str,
    key: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<Got, reqwest::Error> {
    let mut req = client()
        .get(format!("{}{path}", gate.url))
        .header("X-API-KEY", key)
        .timeout(timeout);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req.send().await?;
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (status, cache, age) = (
        resp.status().as_u16(),
        h("x-crmgate-cache").unwrap_or_default(),
        h("age").map(|a| a.parse().unwrap()),
    );
    Ok(Got {
        status,
        cache,
        age,
        body: resp.text().await?,
    })
}

pub(crate) async fn get(gate: &Gate, path: &str, key: &str) -> Got {
    get_with(gate, path, key, &[], Duration::from_secs(60))
        .await
        .unwrap()
}

/// GETs of `path` (and `query`, if given) the CRM received.
pub(crate) fn seen(sim: &Simulator, path: &str, query: Option<&str>) -> usize {
    sim.records()
        .iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .filter(|r| query.is_none_or(|q| r.query.as_deref().unwrap_or("").contains(q)))
        .count()
}

/// Takes the only slot for the next second, so what follows waits.
pub(crate) async fn block(gate: &Gate) {
    let got = get(gate, "/api/v5/orders?page=9", ACME_CLIENT).await;
    assert_eq!(got.status, 200, "{}", got.body);
}

pub(crate) fn inflight(gate: &Gate, n: u64) -> bool {
    gate.gateway
        .stats(&"acme".into())
        .inflight
        .load(std::sync::atomic::Ordering::Relaxed)
        == n
}

pub(crate) const ORDERS: &str = "/api/v5/orders?limit=20";
