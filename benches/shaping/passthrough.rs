//! Scenario 6: what crmgate costs per request when the limiter never binds.
//!
//! Three targets, loaded one after another by `wrk -t1 -c8 --latency` in the
//! same run: a fixed-JSON upstream (Debian's nginx, `return 200`) called
//! directly; a second nginx in front of it as the anchor (`proxy_pass`, one
//! process, the key header replaced, upstream keep-alive); and the release
//! `crmgate` binary in front of it, with 8 egress budgets at 10,000/s so the
//! limiter is out of the way. Every process runs outside the bench (the
//! bench only orchestrates), so the figures are the gateways' own.
//!
//! This module owns those processes and their temporary configs: it must
//! never leave an nginx or a crmgate running (each child is killed when its
//! guard drops, also on panic) and never sends traffic off loopback.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

pub(crate) use crate::common::free_port;

/// The client key wrk presents to crmgate.
pub(crate) const CLIENT_KEY: &str = "bench-pass-client";
/// The "real" key crmgate and the anchor put in its place.
pub(crate) const REAL_KEY: &str = "bench-pass-real-key";
/// The request every target gets: a general-class read.
const PATH: &str = "/api/v5/orders?limit=20";
/// wrk's shape, as in the reference measurement.
const WRK_CONNECTIONS: u32 = 8;
/// crmgate's budgets: 8 egress IPs at this rate each never bind at the
/// rates reached here (the scheduler still paces and counts every send).
const EGRESS_IPS: usize = 8;
const RATE: u32 = 10_000;

/// One wrk run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub target: &'static str,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Answers that were not 2xx/3xx (wrk's count): a gateway answering
    /// errors quickly would otherwise look fast.
    pub non_2xx: u64,
    /// wrk's socket errors (connect, read, write, timeout), summed.
    pub socket_errors: u64,
    /// CPU the target process used per request (µs), user and kernel.
    pub cpu_user_us: Option<f64>,
    pub cpu_kernel_us: Option<f64>,
    /// Context switches of the target's threads per request.
    pub switches_per_request: Option<f64>,
    /// `/proc/loadavg` (1, 5, 15 min) just before this run.
    pub loadavg: String,
}

/// Scenario 6's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Passthrough {
    pub seconds: f64,
    pub connections: u32,
    pub runs: Vec<Run>,
    /// crmgate req/s ÷ nginx proxy_pass req/s.
    pub ratio: f64,
    pub loadavg_end: String,
}

/// A child process that is killed when dropped, so that no nginx or crmgate
/// outlives the bench, whatever way it ends (return, `?`, panic).
pub(crate) struct Guard {
    name: &'static str,
    child: Child,
}

impl Guard {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("warning: could not stop {}: {e}", self.name);
        }
        let _ = self.child.wait();
    }
}

/// The nginx binary: Debian's, or the first `nginx` on PATH.
pub(crate) fn nginx_binary() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/sbin/nginx");
    if debian.is_file() {
        return Some(debian);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nginx"))
            .find(|p| p.is_file())
    })
}

/// The working directory of one side-by-side run with nginx: nginx and
/// wrk checked first, config files written into it, nginx commands rooted
/// in it. Removed when dropped.
pub(crate) struct Workdir {
    dir: tempfile::TempDir,
    nginx: PathBuf,
}

impl Workdir {
    /// Checks that nginx and wrk are installed, and makes the directory.
    pub(crate) fn new() -> Result<Workdir, String> {
        let nginx = nginx_binary().ok_or("nginx is not installed (apt-get install nginx)")?;
        if !has_wrk() {
            return Err("wrk is not on PATH (apt-get install wrk)".into());
        }
        let dir = tempfile::tempdir().map_err(|e| format!("no temp dir: {e}"))?;
        Ok(Workdir { dir, nginx })
    }

    /// The directory.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `text` to the file `name` in the directory.
    pub(crate) fn write(&self, name: &str, text: String) -> Result<PathBuf, String> {
        let path = self.path().join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// nginx with `conf`, its prefix here and its error log `{name}-error.log`.
    pub(crate) fn nginx(&self, conf: &Path, name: &str) -> Command {
        let d = self.path();
        let mut c = Command::new(&self.nginx);
        c.arg("-p")
            .arg(d)
            .arg("-e")
            .arg(d.join(format!("{name}-error.log")))
            .arg("-c")
            .arg(conf);
        c
    }
}

pub(crate) fn has_wrk() -> bool {
    Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The parts of an nginx config both instances share: one process (the
/// equivalent of one worker, and a single pid to stop), every path inside
/// `dir`, keep-alive connections never recycled during the run.
pub(crate) fn nginx_common(dir: &Path, name: &str) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/{name}.pid;
error_log {d}/{name}-error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {d}/{name}-body;
    proxy_temp_path {d}/{name}-proxy;
    fastcgi_temp_path {d}/{name}-fastcgi;
    uwsgi_temp_path {d}/{name}-uwsgi;
    scgi_temp_path {d}/{name}-scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
"#
    )
}

/// The fixed-JSON upstream.
pub(crate) fn upstream_conf(dir: &Path, port: u16) -> String {
    format!(
        r#"{}    access_log off;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{{"success":true}}';
        }}
    }}
}}
"#,
        nginx_common(dir, "upstream")
    )
}

/// The anchor: what a plain nginx reverse proxy costs. It logs each request
/// (buffered, as nginx is normally run), as crmgate does.
fn anchor_conf(dir: &Path, port: u16, upstream: u16) -> String {
    format!(
        r#"{}    access_log {}/anchor-access.log combined buffer=64k flush=1s;
    upstream crm {{
        server 127.0.0.1:{upstream};
        keepalive 16;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://crm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-API-KEY "{REAL_KEY}";
        }}
    }}
}}
"#,
        nginx_common(dir, "anchor"),
        dir.display()
    )
}

pub(crate) fn crmgate_conf(port: u16, admin: u16, upstream: u16) -> String {
    let ips: Vec<String> = (2..2 + EGRESS_IPS)
        .map(|i| format!("\"127.0.0.{i}\""))
        .collect();
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
shutdown_grace = "1s"

[upstream]
egress_ips = [{}]

[limits]
general_per_second = {RATE}

[[tenants]]
name = "bench"
base_url = "http://127.0.0.1:{upstream}"
api_key = "{REAL_KEY}"
client_keys = ["{CLIENT_KEY}"]
"#,
        ips.join(", ")
    )
}

/// Starts `cmd` and waits until `port` answers `GET PATH` with 200 (5 s).
/// stderr goes to `log`, which is named in the error when it fails.
pub(crate) fn start(
    name: &'static str,
    cmd: Command,
    port: u16,
    log: &Path,
) -> Result<Guard, String> {
    start_probed(name, cmd, port, log, probe)
}

/// [`start`] with another readiness check: `ready(port)` is Ok once the
/// process serves.
pub(crate) fn start_probed(
    name: &'static str,
    mut cmd: Command,
    port: u16,
    log: &Path,
    ready: fn(u16) -> Result<(), String>,
) -> Result<Guard, String> {
    let err = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    // Owned from here on: an early return kills it.
    let mut guard = Guard { name, child };
    let until = Instant::now() + Duration::from_secs(5);
    let mut last = String::new();
    while Instant::now() < until {
        if let Ok(Some(status)) = guard.child.try_wait() {
            return Err(format!(
                "{name} exited ({status}) at start; see {}",
                log.display()
            ));
        }
        match ready(port) {
            Ok(()) => return Ok(guard),
            Err(e) => last = e,
        }
        // Polling for an observable condition (the port answers), not ordering.
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "{name} did not answer 200 on port {port} within 5 s ({last}); see {}",
        log.display()
    ))
}

/// One HTTP/1.0 request; Ok when the answer is 200.
fn probe(port: u16) -> Result<(), String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {PATH} HTTP/1.0\r\nHost: 127.0.0.1\r\nX-API-KEY: {CLIENT_KEY}\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let status = answer.lines().next().unwrap_or("").to_string();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(format!("answered {status:?}"))
    }
}

/// utime, stime (seconds) and context switches of process `pid`, all
/// threads together, and of its children (an nginx master's workers).
fn process_usage(pid: u32, tick: f64) -> Option<(f64, f64, u64)> {
    let (mut user, mut kernel, mut switches) = one_process_usage(pid, tick)?;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
    for child in children.unwrap_or_default().split_whitespace() {
        if let Some((u, k, s)) = child.parse().ok().and_then(|c| one_process_usage(c, tick)) {
            (user, kernel, switches) = (user + u, kernel + k, switches + s);
        }
    }
    Some((user, kernel, switches))
}

/// [`process_usage`] of `pid` alone.
fn one_process_usage(pid: u32, tick: f64) -> Option<(f64, f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime) = (
        f.get(11)?.parse::<f64>().ok()?,
        f.get(12)?.parse::<f64>().ok()?,
    );
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if line.starts_with("voluntary_ctxt_switches")
                || line.starts_with("nonvoluntary_ctxt_switches")
            {
                switches += line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Some((utime / tick, stime / tick, switches))
}

/// Clock ticks per second for `/proc/*/stat` (100 on every usual Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `670.00us`, `1.92ms`, `2.01s` → milliseconds.
fn wrk_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

/// Runs wrk against `port{path}` for `secs` and reads its report.
fn wrk_at(port: u16, secs: u64, path: &str) -> Result<(f64, [f64; 3], u64, u64, u64), String> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{WRK_CONNECTIONS}"),
            &format!("-d{secs}s"),
            "--latency",
            "-H",
            &format!("X-API-KEY: {CLIENT_KEY}"),
            &format!("http://127.0.0.1:{port}{path}"),
        ])
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let bad = || format!("unexpected wrk output:\n{text}");
    let rate: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(bad)?;
    let pct = |p: &str| field(p).and_then(wrk_duration_ms).ok_or_else(bad);
    let latency = [pct("50%")?, pct("90%")?, pct("99%")?];
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let non_2xx = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let socket_errors = field("Socket errors:").map_or(0, |v| {
        v.split(',')
            .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    });
    Ok((rate, latency, requests, non_2xx, socket_errors))
}

/// Warms `port` up for a second (connections, pools, caches), then measures.
fn measure(target: &'static str, port: u16, pid: Option<u32>, secs: u64) -> Result<Run, String> {
    measure_at(target, port, pid, secs, PATH)
}

/// [`measure`] on another path.
pub(crate) fn measure_at(
    target: &'static str,
    port: u16,
    pid: Option<u32>,
    secs: u64,
    path: &str,
) -> Result<Run, String> {
    wrk_at(port, 1, path)?;
    let tick = clock_ticks();
    let loadavg = crate::loadavg();
    let before = pid.and_then(|p| process_usage(p, tick));
    let (rate, [p50, p90, p99], requests, non_2xx, socket_errors) = wrk_at(port, secs, path)?;
    let after = pid.and_then(|p| process_usage(p, tick));
    let per_request = |a: f64, b: f64| (b - a) / requests.max(1) as f64;
    let usage = before.zip(after);
    Ok(Run {
        target,
        requests_per_s: rate,
        p50_ms: p50,
        p90_ms: p90,
        p99_ms: p99,
        requests,
        non_2xx,
        socket_errors,
        cpu_user_us: usage.map(|(b, a)| per_request(b.0, a.0) * 1e6),
        cpu_kernel_us: usage.map(|(b, a)| per_request(b.1, a.1) * 1e6),
        switches_per_request: usage.map(|(b, a)| per_request(b.2 as f64, a.2 as f64)),
        loadavg,
    })
}

/// Runs the scenario, or says why it cannot (nginx or wrk missing, a
/// process that would not start).
pub fn passthrough(secs: u64) -> Result<Passthrough, String> {
    let work = Workdir::new()?;
    let d = work.path();
    let (up, anchor, gate, admin) = (free_port(), free_port(), free_port(), free_port());
    let write = |name: &str, text: String| work.write(name, text);
    let nginx_cmd = |conf: &Path, name: &str| work.nginx(conf, name);
    let up_conf = write("upstream.conf", upstream_conf(d, up))?;
    let anchor_conf = write("anchor.conf", anchor_conf(d, anchor, up))?;
    let gate_conf = write("crmgate.toml", crmgate_conf(gate, admin, up))?;

    // Declared in start order: dropped (killed) in reverse, also on panic.
    let upstream = start(
        "nginx upstream",
        nginx_cmd(&up_conf, "upstream"),
        up,
        &d.join("upstream.stderr"),
    )?;
    let anchor_proc = start(
        "nginx proxy_pass",
        nginx_cmd(&anchor_conf, "anchor"),
        anchor,
        &d.join("anchor.stderr"),
    )?;
    let mut gate_cmd = Command::new(env!("CARGO_BIN_EXE_crmgate"));
    gate_cmd.arg("serve").arg("--config").arg(&gate_conf);
    // The default level, as deployed: one access line per request.
    if std::env::var_os("RUST_LOG").is_none() {
        gate_cmd.env("RUST_LOG", "info");
    }
    let crmgate = start("crmgate", gate_cmd, gate, &d.join("crmgate.log"))?;

    let runs = vec![
        measure("direct", up, Some(upstream.pid()), secs)?,
        measure("nginx proxy_pass", anchor, Some(anchor_proc.pid()), secs)?,
        measure("crmgate", gate, Some(crmgate.pid()), secs)?,
    ];
    let ratio = runs[2].requests_per_s / runs[1].requests_per_s;
    drop((crmgate, anchor_proc, upstream));
    Ok(Passthrough {
        seconds: secs as f64,
        connections: WRK_CONNECTIONS,
        runs,
        ratio,
        loadavg_end: crate::loadavg(),
    })
}

/// Pass-through: crmgate's req/s at least this share of nginx proxy_pass's.
pub const TARGET_PASS_RATIO: f64 = 0.6;

/// Pass-through: crmgate's median latency (ms) in the same run.
pub const TARGET_PASS_P50_MS: f64 = 0.3;

/// Prints scenario 6's table and verdicts.
pub fn print(p: &Passthrough) {
    println!(
        "\n== 6. Pass-through cost: wrk -t1 -c{} -d{:.0}s, fixed-JSON nginx upstream, limiter out of the way",
        p.connections, p.seconds
    );
    println!(
        "   {:<18} {:>10} {:>9} {:>9} {:>9} {:>13} {:>10} {:>8}  load average before",
        "target", "req/s", "p50 ms", "p90 ms", "p99 ms", "CPU µs/req", "(kernel)", "cs/req"
    );
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".into(), |v| format!("{v:.prec$}"));
    for r in &p.runs {
        let cpu = r.cpu_user_us.zip(r.cpu_kernel_us).map(|(u, k)| u + k);
        println!(
            "   {:<18} {:>10.0} {:>9.3} {:>9.3} {:>9.3} {:>13} {:>10} {:>8}  {}",
            r.target,
            r.requests_per_s,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            opt(cpu, 1),
            opt(r.cpu_kernel_us, 1),
            opt(r.switches_per_request, 2),
            r.loadavg
        );
        if r.non_2xx > 0 || r.socket_errors > 0 {
            println!(
                "   !!! {}: {} answers were not 2xx/3xx, {} socket errors: its figures are not pass-through",
                r.target, r.non_2xx, r.socket_errors
            );
        }
    }
    let gate = &p.runs[2];
    println!(
        "   crmgate / nginx req/s: {:.3}   target ≥ {TARGET_PASS_RATIO}: {}",
        p.ratio,
        crate::measure::verdict(p.ratio >= TARGET_PASS_RATIO)
    );
    println!(
        "   crmgate p50: {:.3} ms   target ≤ {TARGET_PASS_P50_MS} ms: {}",
        gate.p50_ms,
        crate::measure::verdict(gate.p50_ms <= TARGET_PASS_P50_MS)
    );
    println!(
        "   (CPU and context switches are the target process's own, all threads, per request)"
    );
}
