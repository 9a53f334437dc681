//! Scenario 7: what a waiting request costs in memory.
//!
//! The release `crmgate` binary, with the simulator behind it (the same
//! binary's `sim`), holds `hold` GETs (10,000 by default, the default
//! `queue_capacity`) in its queue: the rate is 1/s and the queue wait ten
//! minutes, so the queue cannot drain during the hold. Each GET is one
//! connection from a lean client (a tokio `TcpStream` that writes the request
//! and waits), so the client's own memory is not in the way. Once the
//! gateway reports them all waiting, its VmRSS and VmHWM are read from
//! `/proc/<pid>/status`; then the client closes every socket and the RSS is
//! sampled once a second for ten seconds. Side by side, when nginx is
//! installed: nginx `limit_req` (1 request a minute, burst = `hold`, no
//! `nodelay`) in front of the same simulator holds the same number.
//!
//! This module owns those processes, their configs and the client sockets:
//! it must never leave a process running (each is killed when its guard
//! drops, also on panic) and never sends traffic off loopback.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::passthrough::{free_port, nginx_binary, start_probed, Guard};

/// The client key the holding client presents to crmgate.
const CLIENT_KEY: &str = "bench-hold-client";
/// The simulator's built-in account key (`crmgate sim`).
const SIM_KEY: &str = "demo-crm-key";
/// How many connections may be between connect and a written request at
/// once: a burst of 10,000 SYNs would overflow the listen backlog and turn
/// the ramp into SYN retransmission timeouts.
const CONNECTING: usize = 256;
/// The RSS the gateway must fall under after the queue empties (MiB), and
/// within how many seconds (issue 9, item 3).
pub const AFTER_UNDER_MIB: u64 = 64;
pub const AFTER_SECONDS: u32 = 10;
/// The same in quick mode: enough to see the fall begin.
pub const AFTER_SECONDS_QUICK: u32 = 3;
/// How long the ramp to `hold` waiting requests may take.
const RAMP_LIMIT: Duration = Duration::from_secs(180);

/// One target's figures.
#[derive(Debug, Clone, Serialize)]
pub struct HoldRun {
    pub target: String,
    /// VmRSS (KiB) with nothing waiting, before the client connects.
    pub idle_rss_kib: u64,
    /// Requests the target reported waiting when measured.
    pub held: u64,
    /// VmRSS and VmHWM (KiB) while holding.
    pub held_rss_kib: u64,
    pub held_hwm_kib: u64,
    /// (held RSS − idle RSS) ÷ held, in bytes.
    pub per_request_bytes: f64,
    /// VmRSS (KiB) 1, 2, … 10 s after the client closed every socket.
    pub after_rss_kib: Vec<u64>,
    /// The first of those seconds at which RSS was under 64 MiB.
    pub under_limit_after_s: Option<u32>,
    /// Requests still counted waiting at the last sample (should be 0).
    pub left_after: u64,
    /// Seconds from the first connect to all `hold` waiting.
    pub ramp_s: f64,
    /// Requests answered during the hold (a slot came free) and replaced.
    pub answered_during_hold: u64,
    /// `/proc/loadavg` just before the ramp.
    pub loadavg: String,
}

/// Scenario 7's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Holding {
    pub hold: usize,
    /// Seconds RSS was followed after the release.
    pub after_seconds: u32,
    pub runs: Vec<HoldRun>,
    /// Why nginx was not measured, when it was not.
    pub nginx_skipped: Option<String>,
    pub loadavg_end: String,
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Ready once `port` answers any HTTP request: the admin port, the
/// simulator, nginx's status server. Never the gated port, whose slots
/// the probe would spend.
fn any_answer(port: u16) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /status HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 8];
    s.read_exact(&mut head).map_err(|e| e.to_string())?;
    if head.starts_with(b"HTTP/1.") {
        Ok(())
    } else {
        Err("not an HTTP answer".into())
    }
}

/// The body of `GET path` on a loopback port (HTTP/1.0, so the server closes).
async fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok(body.to_string())
}

/// Requests waiting in crmgate's queue. (Its per-tenant `inflight` counts
/// queued requests too, so it is not added.)
async fn gateway_held(admin: u16) -> Result<u64, String> {
    let body = http_get(admin, "/status").await?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    v["queued_total"]
        .as_u64()
        .ok_or_else(|| "no queued_total in /status".to_string())
}

/// Requests nginx is processing, from `stub_status` ("Writing", less the
/// status request itself).
async fn nginx_held(status: u16) -> Result<u64, String> {
    let body = http_get(status, "/").await?;
    body.split_whitespace()
        .skip_while(|w| *w != "Writing:")
        .nth(1)
        .and_then(|n| n.parse::<u64>().ok())
        .map(|n| n.saturating_sub(1))
        .ok_or_else(|| format!("unexpected stub_status: {body:?}"))
}

/// `hold` connections, each with one GET waiting for its answer. A
/// connection that gets an answer (its slot came) is replaced, so the
/// target keeps holding `hold`.
struct Clients {
    stop: CancellationToken,
    answered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Clients {
    fn open(port: u16, hold: usize) -> Clients {
        let request: Arc<[u8]> = format!(
            "GET /api/v5/orders?limit=20 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             User-Agent: crmgate-bench\r\nAccept: application/json\r\n\
             X-API-KEY: {CLIENT_KEY}\r\n\r\n"
        )
        .into_bytes()
        .into();
        let stop = CancellationToken::new();
        let answered = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let connecting = Arc::new(Semaphore::new(CONNECTING));
        let tasks = (0..hold)
            .map(|_| {
                tokio::spawn(hold_one(
                    port,
                    request.clone(),
                    connecting.clone(),
                    stop.clone(),
                    answered.clone(),
                    failed.clone(),
                ))
            })
            .collect();
        Clients {
            stop,
            answered,
            failed,
            tasks,
        }
    }

    /// Closes every socket and waits until each is closed.
    async fn release(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn hold_one(
    port: u16,
    request: Arc<[u8]>,
    connecting: Arc<Semaphore>,
    stop: CancellationToken,
    answered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    // A target that answers everything at once (a misconfiguration) must
    // not turn this into a connect loop.
    while answered.load(Ordering::Relaxed) < 1_000 {
        let stream = tokio::select! {
            s = async {
                let _permit = connecting.acquire().await.ok()?;
                let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
                s.write_all(&request).await.ok()?;
                Some(s)
            } => s,
            _ = stop.cancelled() => return,
        };
        let Some(mut stream) = stream else {
            failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut first = [0u8; 64];
        tokio::select! {
            // Dropping the stream closes the connection: the caller went away.
            _ = stop.cancelled() => return,
            read = stream.read(&mut first) => match read {
                Ok(n) if n > 0 => answered.fetch_add(1, Ordering::Relaxed),
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            },
        };
    }
}

/// Opens `hold` waiting requests against `port`, measures `pid`, releases
/// them and follows the RSS down.
async fn measure<F, Fut>(
    target: &str,
    pid: u32,
    port: u16,
    hold: usize,
    after_seconds: u32,
    held: F,
) -> Result<HoldRun, String>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<u64, String>>,
{
    let (idle_rss_kib, _) = memory(pid).ok_or("cannot read the target's /proc status")?;
    let loadavg = crate::loadavg();
    let started = Instant::now();
    let clients = Clients::open(port, hold);
    let mut count = 0;
    while started.elapsed() < RAMP_LIMIT {
        count = held().await.unwrap_or(0);
        if count >= hold as u64 {
            break;
        }
        if clients.failed.load(Ordering::Relaxed) > 0 {
            break;
        }
        // Polling for an observable condition (all waiting), not ordering.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ramp_s = started.elapsed().as_secs_f64();
    let failed = clients.failed.load(Ordering::Relaxed);
    if count < hold as u64 {
        clients.release().await;
        return Err(format!(
            "{target} held only {count} of {hold} after {ramp_s:.0} s ({failed} connections failed)"
        ));
    }
    let (held_rss_kib, held_hwm_kib) = memory(pid).ok_or("target exited while holding")?;
    let answered_during_hold = clients.answered.load(Ordering::Relaxed);
    clients.release().await;

    let mut after_rss_kib = Vec::new();
    let mut under_limit_after_s = None;
    for s in 1..=after_seconds {
        // A measurement interval: RSS once a second.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (rss, _) = memory(pid).ok_or("target exited after the hold")?;
        if rss < AFTER_UNDER_MIB * 1024 && under_limit_after_s.is_none() {
            under_limit_after_s = Some(s);
        }
        after_rss_kib.push(rss);
    }
    let left_after = held().await.unwrap_or(u64::MAX);
    Ok(HoldRun {
        target: target.to_string(),
        idle_rss_kib,
        held: count,
        held_rss_kib,
        held_hwm_kib,
        per_request_bytes: (held_rss_kib.saturating_sub(idle_rss_kib) * 1024) as f64 / count as f64,
        after_rss_kib,
        under_limit_after_s,
        left_after,
        ramp_s,
        answered_during_hold,
        loadavg,
    })
}

fn crmgate_conf(port: u16, admin: u16, sim: u16, hold: usize) -> String {
    // queue_capacity is left at its default (10,000): the deployed shape.
    let capacity = if hold > 10_000 {
        format!("queue_capacity = {hold}\n")
    } else {
        String::new()
    };
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
shutdown_grace = "1s"

# Measures what one waiting request holds: identical GETs must not be
# coalesced into one.
[cache]
enabled = false

[limits]
general_per_second = 1
max_queue_wait = "10m"
max_queued_per_tenant = {hold}
{capacity}
[[tenants]]
name = "bench"
base_url = "http://127.0.0.1:{sim}"
api_key = "{SIM_KEY}"
client_keys = ["{CLIENT_KEY}"]
"#
    )
}

fn nginx_conf(dir: &std::path::Path, port: u16, status: u16, sim: u16, hold: usize) -> String {
    let d = dir.display();
    let files = hold + 1024;
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile {files};
pid {d}/hold.pid;
error_log {d}/hold-error.log error;
events {{ worker_connections {files}; }}
http {{
    client_body_temp_path {d}/hold-body;
    proxy_temp_path {d}/hold-proxy;
    fastcgi_temp_path {d}/hold-fastcgi;
    uwsgi_temp_path {d}/hold-uwsgi;
    scgi_temp_path {d}/hold-scgi;
    access_log off;
    limit_req_zone $binary_remote_addr zone=hold:1m rate=1r/m;
    upstream crm {{
        server 127.0.0.1:{sim};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            limit_req zone=hold burst={hold};
            proxy_pass http://crm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-API-KEY "{SIM_KEY}";
        }}
    }}
    server {{
        listen 127.0.0.1:{status};
        location / {{ stub_status; }}
    }}
}}
"#
    )
}

/// Runs the scenario with the crmgate binary `gate_bin`, or says why it
/// cannot.
pub async fn holding(
    gate_bin: &std::path::Path,
    hold: usize,
    after_seconds: u32,
) -> Result<Holding, String> {
    // The client needs a descriptor per connection, and so does crmgate,
    // which inherits the limit (nginx sets its own: worker_rlimit_nofile).
    let want = (hold + 1024) as u64;
    let got = rlimit::increase_nofile_limit(want).map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    if got < want {
        return Err(format!(
            "RLIMIT_NOFILE is {got}, {want} needed (raise the hard limit: ulimit -Hn)"
        ));
    }
    let dir = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
    let d = dir.path();
    let (sim_port, gate, admin) = (free_port(), free_port(), free_port());

    let mut sim_cmd = std::process::Command::new(gate_bin);
    sim_cmd
        .args(["sim", "--listen"])
        .arg(format!("127.0.0.1:{sim_port}"))
        .env("RUST_LOG", "warn");
    let sim = start_probed(
        "simulator",
        sim_cmd,
        sim_port,
        &d.join("sim.log"),
        any_answer,
    )?;

    let conf = d.join("crmgate.toml");
    std::fs::write(&conf, crmgate_conf(gate, admin, sim_port, hold))
        .map_err(|e| format!("{}: {e}", conf.display()))?;
    let mut gate_cmd = std::process::Command::new(gate_bin);
    gate_cmd.arg("serve").arg("--config").arg(&conf);
    if std::env::var_os("RUST_LOG").is_none() {
        gate_cmd.env("RUST_LOG", "info");
    }
    let mut runs = Vec::new();
    {
        let crmgate = start_probed(
            "crmgate",
            gate_cmd,
            admin,
            &d.join("crmgate.log"),
            any_answer,
        )?;
        runs.push(
            measure("crmgate", crmgate.pid(), gate, hold, after_seconds, || {
                gateway_held(admin)
            })
            .await?,
        );
    }

    let nginx_skipped = match nginx_binary() {
        None => Some("nginx is not installed (apt-get install nginx)".to_string()),
        Some(nginx) => {
            let (port, status) = (free_port(), free_port());
            let conf = d.join("hold.conf");
            std::fs::write(&conf, nginx_conf(d, port, status, sim_port, hold))
                .map_err(|e| format!("{}: {e}", conf.display()))?;
            let mut cmd = std::process::Command::new(nginx);
            cmd.arg("-p")
                .arg(d)
                .arg("-e")
                .arg(d.join("hold-error.log"))
                .arg("-c")
                .arg(&conf);
            let proc: Guard = start_probed(
                "nginx limit_req",
                cmd,
                status,
                &d.join("hold.stderr"),
                any_answer,
            )?;
            runs.push(
                measure(
                    "nginx limit_req",
                    proc.pid(),
                    port,
                    hold,
                    after_seconds,
                    || nginx_held(status),
                )
                .await?,
            );
            None
        }
    };
    drop(sim);
    Ok(Holding {
        hold,
        after_seconds,
        runs,
        nginx_skipped,
        loadavg_end: crate::loadavg(),
    })
}

/// Holding: RSS (MiB) with 10,000 waiting GETs (issue 9: at most nginx's,
/// ≤ 100 MiB on the reference machine).
pub const TARGET_HOLD_RSS_MIB: f64 = 100.0;

/// KiB to MiB.
fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Prints scenario 8's table and verdicts.
pub fn print(h: &Holding) {
    println!(
        "\n== 8. Memory per waiting request: {} GETs held in the queue, one connection each",
        h.hold
    );
    println!(
        "   {:<16} {:>9} {:>11} {:>10} {:>12} {:>8} {:>9}  load average before",
        "target", "idle MiB", "held MiB", "HWM MiB", "bytes/req", "ramp s", "answered"
    );
    for r in &h.runs {
        println!(
            "   {:<16} {:>9.1} {:>11.1} {:>10.1} {:>12.0} {:>8.1} {:>9}  {}",
            r.target,
            mib(r.idle_rss_kib),
            mib(r.held_rss_kib),
            mib(r.held_hwm_kib),
            r.per_request_bytes,
            r.ramp_s,
            r.answered_during_hold,
            r.loadavg
        );
    }
    println!(
        "   RSS after every caller went away (MiB, at 1 … {} s):",
        h.after_seconds
    );
    for r in &h.runs {
        let after: Vec<String> = r
            .after_rss_kib
            .iter()
            .map(|k| format!("{:.0}", mib(*k)))
            .collect();
        println!(
            "   {:<16} {}   under {} MiB after: {}   still held: {}",
            r.target,
            after.join(" "),
            AFTER_UNDER_MIB,
            r.under_limit_after_s
                .map_or("never".into(), |s| format!("{s} s")),
            r.left_after
        );
    }
    if let Some(why) = &h.nginx_skipped {
        println!("   nginx limit_req: SKIPPED ({why})");
    }
    if let Some(gate) = h.runs.iter().find(|r| r.target == "crmgate") {
        let held = mib(gate.held_rss_kib);
        let nginx = h.runs.iter().find(|r| r.target != "crmgate");
        let limit = nginx.map_or(TARGET_HOLD_RSS_MIB, |n| {
            mib(n.held_rss_kib).min(TARGET_HOLD_RSS_MIB)
        });
        println!(
            "   crmgate held RSS {held:.1} MiB   target ≤ {limit:.1} MiB (≤ nginx, ≤ {TARGET_HOLD_RSS_MIB:.0}): {}",
            crate::measure::verdict(held <= limit)
        );
        println!(
            "   crmgate under {} MiB within {} s after: {}",
            AFTER_UNDER_MIB,
            h.after_seconds,
            crate::measure::verdict(gate.under_limit_after_s.is_some())
        );
    }
}
