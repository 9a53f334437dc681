//! Scenario 9: the cache stage. What the CRM is spared, and what a hit costs.
//!
//! In process, against the strict simulator (20–60 ms latency):
//! - 50 callers ask for `reference/statuses` in a loop: the CRM should see
//!   one request, every caller the same body;
//! - tenant beta saturates the general budget while 30 callers of acme ask
//!   for the same list page at once: the CRM should see one request for it;
//! - a write to `reference/statuses/{code}/edit`, then a read: the read
//!   should see the change.
//!
//! Then the cost of a hit, side by side in one run: `wrk -t1 -c8 --latency`
//! against Debian's nginx with `proxy_cache` serving a cached
//! `reference/statuses`, and against the release `crmgate` binary serving
//! the same hit, both in front of the same fixed-JSON nginx upstream.
//! Skipped loudly without nginx or wrk. Both run at the same worker count:
//! crmgate with `server.worker_threads = N`, nginx with `worker_processes
//! N` (N = 1, and 2 unless `--quick`). Every child process is stopped when
//! its guard drops; nothing leaves loopback.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::harness::{self, Gate, Load, ACME_CLIENT, BETA_CLIENT};
use crate::measure::verdict;
use crate::passthrough::{self as pt, Run};

const STATUSES: &str = "/api/v5/reference/statuses";
const LIST_PAGE: &str = "/api/v5/orders?limit=20&page=2";
/// Rounds of the hit-cost comparison.
const ROUNDS: usize = 3;

/// The in-process figures.
#[derive(Debug, Clone, Serialize)]
pub struct Spared {
    pub seconds: f64,
    pub statuses_callers: usize,
    pub statuses_answers: u64,
    pub statuses_distinct_bodies: usize,
    pub statuses_at_crm: usize,
    pub list_callers: usize,
    pub list_answers_200: usize,
    pub list_at_crm: usize,
    /// beta's flood: requests the CRM received during the list-page part.
    pub flood_at_crm: usize,
    pub write_then_read_sees_change: bool,
    pub loadavg: String,
}

/// The hit cost, side by side.
#[derive(Debug, Clone, Serialize)]
pub struct HitCost {
    /// crmgate's `server.worker_threads` and nginx's `worker_processes`.
    pub workers: usize,
    pub seconds: f64,
    /// [`ROUNDS`] runs of each, alternating, nginx first.
    pub runs: Vec<Run>,
    pub nginx_median_rps: f64,
    pub crmgate_median_rps: f64,
    pub nginx_median_p99_ms: f64,
    pub crmgate_median_p99_ms: f64,
    /// crmgate's median req/s ÷ nginx proxy_cache's median req/s.
    pub ratio: f64,
    /// crmgate's misses since start: the start-up probe (a list page) and
    /// the one fill; anything more means the runs were not all hits.
    pub crmgate_misses: f64,
    pub loadavg_end: String,
}

async fn statuses_loop(gate: &Gate, callers: usize, run: Duration) -> (u64, usize) {
    let client = harness::client();
    let bodies = Arc::new(Mutex::new(HashSet::new()));
    let answers = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let until = Instant::now() + run;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (client, url, bodies, answers) = (
                client.clone(),
                format!("{}{STATUSES}", gate.url),
                bodies.clone(),
                answers.clone(),
            );
            tokio::spawn(async move {
                while Instant::now() < until {
                    let Ok(resp) = client
                        .get(&url)
                        .header("X-API-KEY", ACME_CLIENT)
                        .send()
                        .await
                    else {
                        continue;
                    };
                    if resp.status() == 200 {
                        if let Ok(b) = resp.bytes().await {
                            answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            bodies.lock().unwrap().insert(b);
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let distinct = bodies.lock().unwrap().len();
    (answers.load(std::sync::atomic::Ordering::Relaxed), distinct)
}

/// The in-process part.
pub async fn spared(run: Duration) -> Spared {
    let sim = harness::sim((Duration::from_millis(20), Duration::from_millis(60))).await;
    let gate = Gate::start(harness::gateway_config_with(
        &sim.base_url(),
        "",
        "[cache]\nenabled = true\n",
    ))
    .await;
    let loadavg = crate::loadavg();
    let (statuses_answers, distinct) = statuses_loop(&gate, 50, run).await;
    let at_crm = |path: &str, query: Option<&str>, key: &str| {
        sim.records()
            .iter()
            .filter(|r| r.path == path)
            .filter(|r| query.is_none_or(|q| r.query.as_deref().unwrap_or("").contains(q)))
            .filter(|r| r.headers.iter().any(|(n, v)| n == "x-api-key" && v == key))
            .count()
    };
    let acme_key = crate::common::ACME_KEY;
    let statuses_at_crm = at_crm(STATUSES, None, acme_key);

    // The list page while beta keeps the budget busy.
    let client = harness::client();
    let flood = Load::flood(&client, &gate.url, BETA_CLIENT, 20);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = sim.records().len();
    let list: Vec<_> = (0..30)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{}{LIST_PAGE}", gate.url));
            tokio::spawn(async move {
                client
                    .get(url)
                    .header("X-API-KEY", ACME_CLIENT)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    let mut list_ok = 0;
    for l in list {
        list_ok += usize::from(l.await.unwrap_or(0) == 200);
    }
    let flood_at_crm = sim.records().len() - before;
    flood.stop().await;
    let list_at_crm = at_crm("/api/v5/orders", Some("page=2"), acme_key);

    // A write, then a read.
    let edit = client
        .post(format!("{}{STATUSES}/new/edit", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .form(&[("status", "{\"name\":\"Renamed by the bench\"}")])
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false);
    let read = match client
        .get(format!("{}{STATUSES}", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    gate.shutdown().await;
    sim.shutdown();
    Spared {
        seconds: run.as_secs_f64(),
        statuses_callers: 50,
        statuses_answers,
        statuses_distinct_bodies: distinct,
        statuses_at_crm,
        list_callers: 30,
        list_answers_200: list_ok,
        list_at_crm,
        flood_at_crm: flood_at_crm.saturating_sub(list_at_crm),
        write_then_read_sees_change: edit && read.contains("Renamed by the bench"),
        loadavg,
    }
}

/// nginx with `proxy_cache` in front of `upstream`: the anchor for a hit,
/// with `workers` worker processes (more than one needs nginx's master).
fn proxy_cache_conf(dir: &Path, port: u16, upstream: u16, workers: usize) -> String {
    let d = dir.display();
    let common = pt::nginx_common(dir, "cache");
    let common = if workers > 1 {
        common.replace(
            "master_process off;\nworker_processes 1;",
            &format!("master_process on;\nworker_processes {workers};"),
        )
    } else {
        common
    };
    format!(
        r#"{}    access_log {d}/cache-access.log combined buffer=64k flush=1s;
    proxy_cache_path {d}/cache keys_zone=crm:10m max_size=32m inactive=10m use_temp_path=off;
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
            proxy_set_header X-API-KEY "{}";
            proxy_cache crm;
            proxy_cache_key "$http_x_api_key$request_uri";
            proxy_cache_valid 200 5m;
            proxy_cache_lock on;
            add_header X-Cache $upstream_cache_status;
        }}
    }}
}}
"#,
        common,
        pt::REAL_KEY
    )
}

/// One HTTP/1.0 GET of `path` on `port`; the whole answer.
fn fetch(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nX-API-KEY: {}\r\n\r\n",
        pt::CLIENT_KEY
    )
    .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    Ok(answer)
}

/// Stops an nginx master with its workers (SIGQUIT lets the master end
/// them; the guard's SIGKILL would leave them running).
struct Master(u32);

impl Drop for Master {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-QUIT", &self.0.to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The hit cost at `workers` threads/processes each, or why it cannot be
/// measured.
pub fn hit_cost(secs: u64, workers: usize, rounds: usize) -> Result<HitCost, String> {
    let work = pt::Workdir::new()?;
    let d = work.path();
    let (up, anchor, gate, admin) = (
        pt::free_port(),
        pt::free_port(),
        pt::free_port(),
        pt::free_port(),
    );
    let write = |name: &str, text: String| work.write(name, text);
    let nginx_cmd = |conf: &Path, name: &str| work.nginx(conf, name);
    let up_conf = write("upstream.conf", pt::upstream_conf(d, up))?;
    let cache_conf = write("cache.conf", proxy_cache_conf(d, anchor, up, workers))?;
    let gate_conf = pt::crmgate_conf(gate, admin, up).replacen(
        "[server]\n",
        &format!("[server]\nworker_threads = {workers}\n"),
        1,
    );
    let gate_conf = write("crmgate.toml", gate_conf)?;
    let upstream = pt::start(
        "nginx upstream",
        nginx_cmd(&up_conf, "upstream"),
        up,
        &d.join("upstream.stderr"),
    )?;
    let anchor_proc = pt::start(
        "nginx proxy_cache",
        nginx_cmd(&cache_conf, "cache"),
        anchor,
        &d.join("cache.stderr"),
    )?;
    // With a master, the workers do the work: the master's figures include
    // its children's.
    let (anchor_pid, master) = if workers > 1 {
        (Some(anchor_proc.pid()), Some(Master(anchor_proc.pid())))
    } else {
        (Some(anchor_proc.pid()), None)
    };
    let mut gate_cmd = Command::new(env!("CARGO_BIN_EXE_crmgate"));
    gate_cmd.arg("serve").arg("--config").arg(&gate_conf);
    if std::env::var_os("RUST_LOG").is_none() {
        gate_cmd.env("RUST_LOG", "info");
    }
    let crmgate = pt::start("crmgate", gate_cmd, gate, &d.join("crmgate.log"))?;
    // Fill both caches, and check that the second answer is a hit.
    for (name, port, header) in [
        ("nginx", anchor, "X-Cache: HIT"),
        ("crmgate", gate, "x-crmgate-cache: hit"),
    ] {
        fetch(port, STATUSES)?;
        let second = fetch(port, STATUSES)?;
        if !second
            .to_ascii_lowercase()
            .contains(&header.to_ascii_lowercase())
        {
            return Err(format!("{name} did not serve a hit:\n{second}"));
        }
    }
    // Alternating rounds: on a shared machine the load moves between runs,
    // and each target should meet the same spread of it.
    let mut runs = Vec::new();
    for _ in 0..rounds {
        runs.push(pt::measure_at(
            "nginx proxy_cache",
            anchor,
            anchor_pid,
            secs,
            STATUSES,
        )?);
        runs.push(pt::measure_at(
            "crmgate cache",
            gate,
            Some(crmgate.pid()),
            secs,
            STATUSES,
        )?);
    }
    let metrics = fetch(admin, "/metrics")?;
    let crmgate_misses = metrics
        .lines()
        .filter(|l| l.starts_with("crmgate_cache_requests_total") && l.contains("result=\"miss\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    let median = |target: &str, f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().filter(|r| r.target == target).map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (nginx_rps, gate_rps) = (
        median("nginx proxy_cache", |r| r.requests_per_s),
        median("crmgate cache", |r| r.requests_per_s),
    );
    let (nginx_p99, gate_p99) = (
        median("nginx proxy_cache", |r| r.p99_ms),
        median("crmgate cache", |r| r.p99_ms),
    );
    let ratio = gate_rps / nginx_rps;
    drop(master);
    drop((crmgate, anchor_proc, upstream));
    Ok(HitCost {
        workers,
        seconds: secs as f64,
        runs,
        nginx_median_rps: nginx_rps,
        crmgate_median_rps: gate_rps,
        nginx_median_p99_ms: nginx_p99,
        crmgate_median_p99_ms: gate_p99,
        ratio,
        crmgate_misses,
        loadavg_end: crate::loadavg(),
    })
}

/// Runs the scenario (both parts), prints it, and returns its JSON.
pub fn scenario(
    rt: &tokio::runtime::Runtime,
    quick: bool,
    seconds: Option<f64>,
) -> serde_json::Value {
    println!("\n== 10. Cache and coalescing");
    let run = Duration::from_secs_f64(seconds.unwrap_or(if quick { 3.0 } else { 20.0 }));
    let s = rt.block_on(spared(run));
    println!("   load average before: {}", s.loadavg);
    println!(
        "   {} callers on reference/statuses for {:.0} s: {} answers, {} distinct bodies, CRM saw {} (target 1): {}",
        s.statuses_callers,
        s.seconds,
        s.statuses_answers,
        s.statuses_distinct_bodies,
        s.statuses_at_crm,
        verdict(s.statuses_at_crm == 1 && s.statuses_distinct_bodies == 1)
    );
    println!(
        "   {} callers on one list page while beta saturates the budget (beta's requests at the CRM while they waited: {}): {} answered 200, CRM saw {} (target 1): {}",
        s.list_callers,
        s.flood_at_crm,
        s.list_answers_200,
        s.list_at_crm,
        verdict(s.list_at_crm == 1 && s.list_answers_200 == s.list_callers)
    );
    println!(
        "   a write to reference/statuses/new/edit, then a read: {}",
        verdict(s.write_then_read_sees_change)
    );
    let secs = seconds
        .unwrap_or(if quick { 2.0 } else { 5.0 })
        .round()
        .max(1.0) as u64;
    let workers: &[usize] = if quick { &[1] } else { &[1, 2] };
    // One round is enough to see that it runs.
    let rounds = if quick { 1 } else { ROUNDS };
    let mut hits = Vec::new();
    for &n in workers {
        let hit = match hit_cost(secs, n, rounds) {
            Ok(h) => {
                println!("   hit cost at {n} worker(s) each (crmgate worker_threads, nginx worker_processes), wrk -t1 -c8 for {secs} s each, {rounds} alternating rounds:");
                for r in &h.runs {
                    println!(
                    "     {:<18} {:>9.0} req/s  p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  non-2xx {}  errors {}  cpu {:.1}+{:.1} µs/req  load {}",
                    r.target,
                    r.requests_per_s,
                    r.p50_ms,
                    r.p90_ms,
                    r.p99_ms,
                    r.non_2xx,
                    r.socket_errors,
                    r.cpu_user_us.unwrap_or(0.0),
                    r.cpu_kernel_us.unwrap_or(0.0),
                    r.loadavg
                );
                }
                let p99_ok = h.crmgate_median_p99_ms <= h.nginx_median_p99_ms;
                println!(
                "     medians: nginx {:.0} req/s p99 {:.3} ms, crmgate {:.0} req/s p99 {:.3} ms",
                h.nginx_median_rps,
                h.nginx_median_p99_ms,
                h.crmgate_median_rps,
                h.crmgate_median_p99_ms
            );
                println!(
                "     crmgate ÷ nginx proxy_cache: {:.2}× req/s (target ≥ 1.0: {}), p99 {} nginx's (target ≤: {}); crmgate misses {}",
                h.ratio,
                verdict(h.ratio >= 1.0),
                if p99_ok { "≤" } else { ">" },
                verdict(p99_ok),
                h.crmgate_misses
            );
                serde_json::to_value(&h).unwrap()
            }
            Err(why) => {
                println!("\n   !!!!! hit cost at {n} worker(s) SKIPPED: {why} !!!!!\n");
                eprintln!("!!!!! cache hit-cost scenario SKIPPED: {why} !!!!!");
                serde_json::json!({ "skipped": why })
            }
        };
        hits.push(hit);
    }
    serde_json::json!({ "spared": s, "hit": hits })
}
