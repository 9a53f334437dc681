//! End-to-end tests: a real simulator on a loopback port, driven by reqwest.
//!
//! Windows are long (a minute) wherever a test counts requests, so a slow CI
//! machine cannot let an arrival slip out of the window and change a result.

mod class;
mod faults;
mod limits;
mod routes;
mod tls;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use reqwest::{Client, Response, StatusCode};
use serde_json::Value;

use super::*;

pub(super) const KEY: &str = "demo-crm-key";

pub(super) fn any_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Default accounts and data, generous limits, a long window.
pub(super) fn roomy() -> SimConfig {
    SimConfig {
        general_per_second: 1000,
        telephony_per_second: 1000,
        window: Duration::from_secs(60),
        ..SimConfig::default()
    }
}

pub(super) fn client_from(ip: Option<IpAddr>) -> Client {
    Client::builder()
        .no_proxy()
        .local_address(ip)
        .build()
        .expect("client")
}

pub(super) async fn start(cfg: SimConfig) -> (Simulator, Client) {
    let sim = Simulator::spawn(cfg, any_port()).await.expect("spawn");
    (sim, client_from(None))
}

pub(super) async fn get(c: &Client, sim: &Simulator, path_and_query: &str) -> Response {
    c.get(format!("{}{path_and_query}", sim.base_url()))
        .header("X-API-KEY", KEY)
        .send()
        .await
        .expect("send")
}

pub(super) async fn post_form(
    c: &Client,
    sim: &Simulator,
    path: &str,
    form: &[(&str, &str)],
) -> Response {
    c.post(format!("{}{path}", sim.base_url()))
        .header("X-API-KEY", KEY)
        .form(form)
        .send()
        .await
        .expect("send")
}

/// Status, content type and parsed JSON body.
pub(super) async fn parts(resp: Response) -> (StatusCode, String, Value) {
    let status = resp.status();
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    // reqwest's `json` feature is off; parse the bytes ourselves.
    let bytes = resp.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).expect("JSON body");
    (status, ctype, body)
}
