//! Scenario 12: the fleet through Redis as production runs it.
//!
//! - `tls`: scenario 5 (three replicas, 50 callers, one budget) through a
//!   `redis-server --tls-port` with a password and a CA made here
//!   (`redis.ca_file`, `redis.password_file`);
//! - `cache`: three replicas × 30 readers of `reference/statuses` (TTL 2 s,
//!   the fleet cache on): how many reads the CRM saw per TTL;
//! - `failover`: three replicas flooding through Sentinel (one master, one
//!   replica, one Sentinel); the master is killed a third of the way in:
//!   the most general arrivals in any 1 s window at the CRM, 503s, and how
//!   long the replicas took to return to the shared budget.
//!
//! Every Redis process is the bench's own (free loopback ports, killed by
//! its pid when dropped); without `redis-server` the scenario is skipped
//! loudly.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crmgate::sim::{max_in_window, Class};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde::Serialize;
use tokio::time::Instant;

use crate::end_to_end::{LATENCY, LIMIT};
use crate::harness::{self, Gate, Load, ACME_CLIENT};
use crate::shared_budget::{self, SharedBudget, REPLICAS};

/// One Redis process of the bench's own.
struct Proc {
    child: Child,
}

impl Proc {
    async fn start(port: u16, args: &[String]) -> Result<Proc, String> {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    "redis-server is not on PATH (apt-get install redis-server)".to_string()
                }
                _ => format!("cannot start redis-server: {e}"),
            })?;
        let p = Proc { child };
        for _ in 0..200 {
            if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .is_ok()
            {
                return Ok(p);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("redis-server did not listen on {port} within 10 s"))
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn args(port: u16, dir: &Path, extra: &[String]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    a.extend_from_slice(extra);
    a
}

/// A CA and a certificate for 127.0.0.1, as PEM files in `dir`.
fn certificates(dir: &Path) -> Result<(String, String, String), String> {
    let err = |e: rcgen::Error| format!("cannot make certificates: {e}");
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "crmgate bench Redis CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).map_err(err)?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().map_err(err)?;
    let cert = leaf.signed_by(&key, &issuer).map_err(err)?;
    let write = |name: &str, text: String| -> Result<String, String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {name}: {e}"))?;
        Ok(path.display().to_string())
    };
    Ok((
        write("ca.pem", ca_cert.pem())?,
        write("redis.pem", cert.pem())?,
        write("redis.key", key.serialize_pem())?,
    ))
}

/// Scenario 5 through a TLS Redis with a password.
pub async fn tls(callers: usize, run: Duration) -> Result<SharedBudget, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (ca, cert, key) = certificates(dir.path())?;
    let port = free_port();
    let password = format!("bench-{}", rand::random::<u64>());
    let pw_file = dir.path().join("password");
    std::fs::write(&pw_file, &password).map_err(|e| e.to_string())?;
    let extra: Vec<String> = [
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
        "--requirepass",
        &password,
    ]
    .map(String::from)
    .to_vec();
    let _redis = Proc::start(port, &args(0, dir.path(), &extra)).await?;
    let lines = format!(
        "url = \"rediss://127.0.0.1:{port}\"\nca_file = \"{ca}\"\npassword_file = \"{}\"",
        pw_file.display()
    );
    Ok(shared_budget::run_on(callers, run, &lines).await)
}

/// The fleet cache's figures.
#[derive(Debug, Clone, Serialize)]
pub struct FleetCache {
    pub replicas: usize,
    pub readers_per_replica: usize,
    pub seconds: f64,
    pub ttl_s: f64,
    /// Reads answered (all 200 expected).
    pub answered: usize,
    pub not_200: usize,
    /// Reads of the statuses the CRM received.
    pub crm_reads: usize,
    /// `crm_reads / (seconds / ttl)`: 1.0 is one read per TTL for the fleet.
    pub crm_reads_per_ttl: f64,
    /// `X-Crmgate-Cache` values seen, with counts.
    pub results: std::collections::BTreeMap<String, usize>,
}

/// Three replicas × `readers` readers of one reference for `run`.
pub async fn cache(readers: usize, run: Duration) -> Result<FleetCache, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let _redis = Proc::start(port, &args(port, dir.path(), &[])).await?;
    let sim = harness::sim(LATENCY).await;
    let ttl = Duration::from_secs(2);
    let sections = format!(
        "[redis]\nurl = \"redis://127.0.0.1:{port}\"\nexpected_replicas = {REPLICAS}\n\
         key_prefix = \"bench-cache-{}\"\n[cache]\nttl = \"2s\"\nlocal_ttl = \"1s\"\n",
        rand::random::<u32>()
    );
    let mut gates = Vec::new();
    for _ in 0..REPLICAS {
        let config =
            harness::gateway_config_with(&sim.base_url(), "backend = \"redis\"", &sections);
        gates.push(Gate::start(config).await);
    }
    let client = harness::client();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for g in &gates {
        for _ in 0..readers {
            let (client, url, stop) = (
                client.clone(),
                format!("{}/api/v5/reference/statuses", g.url),
                stop.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let r = client
                        .get(&url)
                        .header("X-API-KEY", ACME_CLIENT)
                        .send()
                        .await;
                    seen.push(match r {
                        Ok(resp) => {
                            let result = resp
                                .headers()
                                .get("x-crmgate-cache")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string();
                            let status = resp.status().as_u16();
                            let _ = resp.bytes().await;
                            (status, result)
                        }
                        Err(_) => (0, "error".to_string()),
                    });
                }
                seen
            }));
        }
    }
    tokio::time::sleep(run).await;
    stop.store(true, Ordering::Relaxed);
    let mut results = std::collections::BTreeMap::new();
    let (mut answered, mut not_200) = (0, 0);
    for t in tasks {
        for (status, result) in t.await.unwrap_or_default() {
            answered += 1;
            not_200 += usize::from(status != 200);
            *results.entry(result).or_insert(0) += 1;
        }
    }
    let crm_reads = sim
        .records()
        .iter()
        .filter(|r| r.path == "/api/v5/reference/statuses")
        .count();
    for g in gates {
        g.shutdown().await;
    }
    sim.shutdown();
    Ok(FleetCache {
        replicas: REPLICAS,
        readers_per_replica: readers,
        seconds: run.as_secs_f64(),
        ttl_s: ttl.as_secs_f64(),
        answered,
        not_200,
        crm_reads,
        crm_reads_per_ttl: crm_reads as f64 / (run.as_secs_f64() / ttl.as_secs_f64()),
        results,
    })
}

/// The Sentinel failover's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    pub replicas: usize,
    pub callers: usize,
    pub seconds: f64,
    /// When the master was killed (s after the callers started).
    pub killed_at_s: f64,
    /// Seconds from the kill until every replica was back on "shared".
    pub back_to_shared_s: Option<f64>,
    /// Most general arrivals in any 1000 ms window at the CRM, whole run.
    pub max_in_1s: usize,
    pub rejected_503: usize,
    /// General arrivals the CRM accepted per second, whole run.
    pub rate: f64,
}

/// Three replicas flood through Sentinel; the master dies at `run / 3`.
pub async fn failover(callers: usize, run: Duration) -> Result<Failover, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (m, r, s) = (free_port(), free_port(), free_port());
    let sub = |name: &str| {
        let d = dir.path().join(name);
        let _ = std::fs::create_dir_all(&d);
        d
    };
    let mut master = Proc::start(m, &args(m, &sub("m"), &[])).await?;
    let replica_extra: Vec<String> = ["--replicaof", "127.0.0.1", &m.to_string()]
        .map(String::from)
        .to_vec();
    let _replica = Proc::start(r, &args(r, &sub("r"), &replica_extra)).await?;
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {s}\nbind 127.0.0.1\ndir {}\nsentinel monitor bench 127.0.0.1 {m} 1\n\
             sentinel down-after-milliseconds bench 1000\nsentinel failover-timeout bench 4000\n",
            sub("s").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let _sentinel = Proc::start(s, &[conf.display().to_string(), "--sentinel".into()]).await?;
    // The Sentinel learns of the replica from the master within seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let sim = harness::sim(LATENCY).await;
    let sections = format!(
        "[redis]\nsentinels = [\"redis://127.0.0.1:{s}\"]\nsentinel_master = \"bench\"\n\
         expected_replicas = {REPLICAS}\nkey_prefix = \"bench-failover\"\n"
    );
    let mut gates = Vec::new();
    for _ in 0..REPLICAS {
        let config =
            harness::gateway_config_with(&sim.base_url(), "backend = \"redis\"", &sections);
        gates.push(Gate::start(config).await);
    }
    let client = harness::client();
    let started = Instant::now();
    let loads: Vec<Load> = gates
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let n = callers / REPLICAS + usize::from(i < callers % REPLICAS);
            Load::flood(&client, &g.url, ACME_CLIENT, n)
        })
        .collect();
    tokio::time::sleep(run / 3).await;
    let killed = Instant::now();
    master.kill();
    // Until a replica has left "shared", then until all are back.
    let mut left = false;
    let mut back = None;
    while started.elapsed() < run {
        let mut states = Vec::new();
        for g in &gates {
            states.push(backend(&client, &g.admin).await);
        }
        let all_shared = states.iter().all(|s| s == "shared");
        if !left && !all_shared {
            left = true;
        }
        if left && back.is_none() && all_shared {
            back = Some(killed.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for load in loads {
        let _ = load.stop().await;
    }
    let records = sim.records();
    for g in gates {
        g.shutdown().await;
    }
    sim.shutdown();
    let general: Vec<_> = records
        .iter()
        .filter(|r| r.class == Class::General)
        .collect();
    let accepted = general.iter().filter(|r| r.status != 503).count();
    Ok(Failover {
        replicas: REPLICAS,
        callers,
        seconds: run.as_secs_f64(),
        killed_at_s: killed.saturating_duration_since(started).as_secs_f64(),
        back_to_shared_s: back,
        max_in_1s: max_in_window(&records, Duration::from_secs(1))
            .into_iter()
            .filter(|((_, class), _)| *class == Class::General)
            .map(|(_, n)| n)
            .max()
            .unwrap_or(0),
        rejected_503: general.len() - accepted,
        rate: accepted as f64 / run.as_secs_f64(),
    })
}

/// A gateway's `/status` `budget_backend` ("?" if it would not answer).
async fn backend(client: &reqwest::Client, admin: &str) -> String {
    let doc: serde_json::Value = match client.get(format!("{admin}/status")).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    doc["budget_backend"].as_str().unwrap_or("?").to_string()
}

/// Prints the three parts.
pub fn print(
    tls: &Result<SharedBudget, String>,
    cache: &Result<FleetCache, String>,
    failover: &Result<Failover, String>,
    load: &str,
) {
    println!("\n== 12. The fleet through Redis (load average at start: {load})");
    match tls {
        Ok(s) => println!(
            "   TLS + password, {} replicas, {} callers: utilisation {:.3} (steady, target ≥ 0.93: {}), {} × 503, max {} in 1 s, backends {:?}",
            s.replicas,
            s.callers,
            s.steady.utilisation,
            if s.steady.utilisation >= 0.93 && s.rejected_503 == 0 { "MET" } else { "MISSED" },
            s.rejected_503,
            s.max_in_1s,
            s.per_replica.iter().map(|r| r.backend.as_str()).collect::<Vec<_>>()
        ),
        Err(why) => println!("   TLS: !!!!! SKIPPED: {why} !!!!!"),
    }
    match cache {
        Ok(c) => println!(
            "   fleet cache, {} replicas × {} readers, {:.0} s, TTL {:.0} s: {} reads answered ({} not 200), CRM reads {} = {:.2} per TTL (target 1: {}); results {:?}",
            c.replicas,
            c.readers_per_replica,
            c.seconds,
            c.ttl_s,
            c.answered,
            c.not_200,
            c.crm_reads,
            c.crm_reads_per_ttl,
            if c.crm_reads_per_ttl <= 1.0 + 1.0 / (c.seconds / c.ttl_s) { "MET" } else { "MISSED" },
            c.results
        ),
        Err(why) => println!("   fleet cache: !!!!! SKIPPED: {why} !!!!!"),
    }
    match failover {
        Ok(f) => println!(
            "   Sentinel failover, {} replicas, {} callers, {:.0} s, master killed at {:.1} s: max {} general in 1 s (limit {LIMIT}: {}), {} × 503, {:.2} req/s, back to shared after {}",
            f.replicas,
            f.callers,
            f.seconds,
            f.killed_at_s,
            f.max_in_1s,
            if f.max_in_1s <= LIMIT as usize { "MET" } else { "MISSED" },
            f.rejected_503,
            f.rate,
            f.back_to_shared_s.map_or("never".to_string(), |s| format!("{s:.1} s"))
        ),
        Err(why) => println!("   Sentinel failover: !!!!! SKIPPED: {why} !!!!!"),
    }
}
