//! Shared harness for integration tests: a simulated CRM and a gateway on
//! loopback ephemeral ports, plus small helpers. Everything is real sockets.
//!
//! Layout: this file starts things (simulator, gateway, redis-server);
//! [`wait`] holds the one polling loop (wait for what is observable, never
//! sleep to order events); [`metrics`] the one Prometheus text parser;
//! [`load`] the request and flood helpers and the CRM-side checks; [`keys`]
//! client keys in every place and the check that none reached the CRM;
//! [`tls`] the HTTPS simulator; [`ops`] the keys no output may show and
//! the admin calls; [`quick`] a gateway that never makes a
//! test wait, and readers of crmgate's own answers; [`raw`] the one raw
//! HTTP/1.1 client (every byte controlled); [`redis_procs`] Redis
//! with TLS, Sentinel and Cluster. All of it is re-exported, so
//! `use common::*;` is enough.
#![allow(dead_code)]

pub mod keys;
pub mod load;
pub mod metrics;
pub mod ops;
pub mod quick;
pub mod raw;
pub mod redis_procs;
pub mod require;
pub mod tls;
pub mod wait;

// Not every test binary uses every helper.
#[allow(unused_imports)]
pub use keys::*;
#[allow(unused_imports)]
pub use load::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use ops::*;
#[allow(unused_imports)]
pub use quick::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use redis_procs::*;
#[allow(unused_imports)]
pub use require::*;
#[allow(unused_imports)]
pub use tls::*;
#[allow(unused_imports)]
pub use wait::*;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crmgate::config::Config;
use crmgate::gateway::Gateway;
use crmgate::server::{DrainReport, Server};
use crmgate::sim::{SimAccount, SimConfig, Simulator};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The real CRM key of tenant "acme" (held by the simulator and crmgate only).
pub const ACME_KEY: &str = "real-acme-key-7f3a";
/// The real CRM key of tenant "beta".
pub const BETA_KEY: &str = "real-beta-key-91c2";
/// Client keys of "acme".
pub const ACME_CLIENT: &str = "svc-orders-3f9c";
/// Second client key of "acme".
pub const ACME_CLIENT2: &str = "svc-billing-77aa";
/// Client key of "beta".
pub const BETA_CLIENT: &str = "svc-beta-0001";

/// One simulator account holding `key`, with one site.
pub fn sim_account(name: &str, key: &str, site: &str) -> SimAccount {
    SimAccount {
        name: name.into(),
        api_key: key.into(),
        sites: vec![site.into()],
    }
}

/// The simulator config every test starts from: accounts "acme" (site
/// "main") and "beta" (site "beta-shop"), RetailCRM's limits, plain HTTP.
pub fn sim_config() -> SimConfig {
    SimConfig {
        accounts: vec![
            sim_account("acme", ACME_KEY, "main"),
            sim_account("beta", BETA_KEY, "beta-shop"),
        ],
        ..SimConfig::default()
    }
}

/// A simulator for `cfg` on an ephemeral loopback port, on the test's
/// runtime.
pub async fn spawn_sim(cfg: SimConfig) -> Simulator {
    Simulator::spawn(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator starts")
}

/// A simulator with accounts "acme" and "beta" (tenant "open" uses acme's).
pub async fn sim() -> Simulator {
    spawn_sim(sim_config()).await
}

/// Config text for a gateway in front of `sim`, with `extra` TOML prepended
/// (sections such as `[limits]`). Tenants: acme (client keys, site "main"),
/// beta (one client key), open (no client keys, acme's account).
pub fn config_text(sim: &Simulator, extra: &str) -> String {
    let base = sim.base_url();
    format!(
        r#"{extra}

[[tenants]]
name = "acme"
base_url = "{base}"
api_key = "{ACME_KEY}"
client_keys = ["{ACME_CLIENT}", "{ACME_CLIENT2}"]
site = "main"

[[tenants]]
name = "beta"
base_url = "{base}"
api_key = "{BETA_KEY}"
client_keys = ["{BETA_CLIENT}"]

[[tenants]]
name = "open"
base_url = "{base}"
api_key = "{ACME_KEY}"
"#
    )
}

/// Parses config text, binding both listeners to ephemeral ports unless the
/// text sets them. The cache stage is off unless the text has a `[cache]`
/// section: tests that count what the CRM receives send identical GETs on
/// purpose (tests/cache.rs turns it on).
pub fn config(text: &str) -> Config {
    let text = if text.contains("[cache]") {
        text.to_string()
    } else {
        format!("{text}\n[cache]\nenabled = false\n")
    };
    let text = if text.contains("[server]") {
        text.to_string()
    } else {
        format!("[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{text}")
    };
    Config::from_toml(&text, "test config", &|_| None).expect("test config is valid")
}

/// A running gateway.
pub struct Gate {
    /// API base URL, e.g. `http://127.0.0.1:PORT`.
    pub url: String,
    /// Admin base URL.
    pub admin: String,
    /// API address.
    pub addr: SocketAddr,
    /// HTTPS API address, when `server.tls_listen` is set.
    pub tls: Option<SocketAddr>,
    /// Shared state.
    pub gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<DrainReport>>,
}

impl Gate {
    /// Starts a gateway for `config`; `path` is where reloads read from.
    pub async fn start_with_path(config: Config, path: Option<std::path::PathBuf>) -> Gate {
        let server = Server::bind(config, path).await.expect("gateway binds");
        let (addr, admin, tls) = (server.api_addr(), server.admin_addr(), server.tls_addr());
        let gateway = server.gateway();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .expect("gateway runs")
        });
        Gate {
            url: format!("http://{addr}"),
            admin: format!("http://{admin}"),
            addr,
            tls,
            gateway,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// Starts a gateway for `config`.
    pub async fn start(config: Config) -> Gate {
        Gate::start_with_path(config, None).await
    }

    /// Writes `text` to `path` and starts a gateway that reloads from it.
    pub async fn from_file(path: &Path, text: &str) -> Gate {
        std::fs::write(path, text).unwrap();
        let config = Config::load(path).expect("valid config file");
        Gate::start_with_path(config, Some(path.to_path_buf())).await
    }

    /// Begins shutdown (like SIGTERM) and waits for the drain to finish.
    pub async fn shutdown(mut self) -> DrainReport {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.expect("gateway task")
    }

    /// Begins shutdown and returns the task, to observe requests meanwhile.
    pub fn begin_shutdown(&mut self) -> JoinHandle<DrainReport> {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap()
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A simulator plus a gateway in front of it, with `extra` config.
pub async fn setup(extra: &str) -> (Simulator, Gate) {
    let sim = sim().await;
    let gate = Gate::start(config(&config_text(&sim, extra))).await;
    (sim, gate)
}

/// Like [`setup`], with a simulator holding `orders` orders (and as many
/// customers and history entries).
pub async fn setup_with_orders(orders: u32, extra: &str) -> (Simulator, Gate) {
    let sim = spawn_sim(SimConfig {
        total_orders: orders,
        ..sim_config()
    })
    .await;
    let gate = Gate::start(config(&config_text(&sim, extra))).await;
    (sim, gate)
}

/// A plain HTTP client (no pooling surprises: one per test is fine).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Parses a response body as JSON, failing the test with the body if it is not.
pub async fn json(resp: reqwest::Response) -> serde_json::Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The `/status` document, read in-process (cheap to poll).
pub fn status_now(gate: &Gate) -> serde_json::Value {
    serde_json::to_value(crmgate::status::Status::collect(&gate.gateway))
        .expect("the status document serialises")
}

/// How many answers with `status` the gateway gave tenant `tenant` so far
/// (`totals_by_status` of `/status`, read in-process: cheap to poll).
pub fn answered(gate: &Gate, tenant: &str, status: u16) -> u64 {
    let doc = status_now(gate);
    let t = doc["tenants"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == tenant))
        .unwrap_or_else(|| panic!("no tenant {tenant} in {doc}"));
    t["totals_by_status"][status.to_string()]
        .as_u64()
        .unwrap_or(0)
}

/// GETs the gateway's `/status` document; fails the test unless it is 200
/// and JSON.
pub async fn status_doc(gate: &Gate) -> serde_json::Value {
    let resp = client()
        .get(format!("{}/status", gate.admin))
        .send()
        .await
        .expect("admin answers");
    assert_eq!(resp.status(), 200);
    json(resp).await
}

/// `POST /reload` on the admin listener at `admin` (a base URL): the status
/// and the body as sent, for a test to search for keys before it parses it.
pub async fn admin_reload(admin: &str) -> (u16, String) {
    let resp = client()
        .post(format!("{admin}/reload"))
        .send()
        .await
        .expect("admin answers");
    let code = resp.status().as_u16();
    (code, resp.text().await.expect("body"))
}

/// A `redis-server` of the test's own, on a free loopback port, with no
/// persistence; stopped (by pid) when dropped.
pub struct RedisServer {
    /// The port it listens on.
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one. Without `redis-server` on PATH, [`require::missing`]
    /// decides: a loud skip (`None`), or a failure when required.
    pub async fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer { port, child: None };
        match server.spawn().await {
            Ok(()) => Some(server),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                require::missing(Program::Redis, &test_name());
                None
            }
            Err(e) => panic!("cannot start redis-server: {e}"),
        }
    }

    async fn spawn(&mut self) -> std::io::Result<()> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let port = self.port;
        let listening = poll_until(Duration::from_secs(10), || async move {
            let connected = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
            connected.is_ok().then_some(())
        })
        .await;
        assert!(
            listening.is_some(),
            "redis-server did not start listening on {port} within 10 s"
        );
        Ok(())
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL, like a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty, as after a crash).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await.expect("redis-server restarts");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
