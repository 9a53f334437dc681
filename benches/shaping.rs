//! crmgate traffic-shaping benchmark.
//!
//! ```text
//! cargo bench --bench shaping                      # full run, ~100 s
//! cargo bench --bench shaping -- --quick           # smoke run, ~30 s
//! cargo bench --bench shaping -- --seconds 10 --only utilisation,fairness
//! ```
//!
//! Scenarios (names for `--only`):
//! 1. `utilisation`: 50 callers saturate one tenant's general budget against
//!    the strict simulator (20–60 ms latency); the rate the CRM accepted ÷
//!    the limit, and the 503s it answered.
//! 2. `jitter`: the same with 0–20 ms random arrival jitter between the
//!    gateway and the CRM (a per-request delaying hop).
//! 3. `fairness`: tenant A floods, tenant B sends one request every 0.5 s;
//!    B's queue wait (`x-crmgate-queue-ms`) against A's.
//! 4. `scheduler`: the fair queue's push+pop cost by queue length and
//!    tenant count, and `Scheduler::acquire` grants/s with the budget
//!    unbounded.
//! 5. `redis`: three gateways with `limits.backend = "redis"` share one
//!    budget through a private `redis-server` (started and killed by the
//!    bench; skipped loudly when it is not on PATH), 50 callers spread over
//!    them, one egress IP at the simulator; combined utilisation after the
//!    start-up transition, 503s, and Redis round trips per request.
//! 6. `passthrough`: what a request costs when the limiter never binds.
//!    `wrk -t1 -c8 --latency` against a fixed-JSON nginx upstream directly,
//!    through an nginx `proxy_pass` (the anchor), and through the release
//!    `crmgate` binary (8 egress budgets at 10,000/s), side by side: req/s,
//!    p50/p99, crmgate ÷ nginx, CPU per request. These three are separate
//!    processes; skipped loudly without `nginx` or `wrk`.
//! 7. `tls`: the production path at a realistic distance: HTTPS to the
//!    simulator (its CA in `upstream.ca_file`), 60 ms round trip plus a
//!    60 ms TLS handshake per new connection, two egress IPs; tenant A
//!    floods while tenant B sends every 0.5 s. Utilisation per egress IP,
//!    503s, B's queue wait, connections opened per egress IP. Run once
//!    with ALPN offering `h2` and once with `http/1.1` only.
//! 8. `holding`: memory per waiting request. The release `crmgate` holds
//!    10,000 GETs in its queue (one connection each, rate 1/s, nothing
//!    drains); VmRSS/VmHWM while holding, per request, and RSS once a second
//!    for 10 s after every caller went away; side by side with nginx
//!    `limit_req` holding the same number when nginx is installed.
//!    `--hold N` changes the count, `--gate-bin PATH` measures another
//!    crmgate build (e.g. one with a different allocator).
//! 9. `export`: `X-Crmgate-Export: ndjson` over some thousands of orders
//!    (20–60 ms latency, 100 per page): CRM list requests against ⌈N/100⌉,
//!    distinct items, time to the first item; history from `sinceId = 0`
//!    (every entry once, in order, `last_id`); a light tenant's queue wait
//!    while an export holds the budget. `--orders N` changes N.
//! 10. `cache`: 50 callers on `reference/statuses` (the CRM should see 1), 30
//!     callers on one list page while another tenant saturates the budget
//!     (1), a write then a read (sees it), and a cache hit's req/s and p99
//!     side by side with nginx `proxy_cache` (skipped loudly without nginx
//!     or wrk).
//! 11. `adapt`: adaptation at default settings against a lower real limit
//!     (7/s), 30 % random 503s and a 20 s outage, and without 503s; see
//!     `shaping/adapt.rs`.
//!
//! Everything runs in one process on one tokio runtime, like the
//! integration tests: the callers, the gateway and the simulator share the
//! machine's cores. The report ends with one JSON line for tooling.
//! See docs/performance.md for how to read the numbers.

#[path = "shaping/adapt.rs"]
mod adapt;
#[path = "shaping/cache.rs"]
mod cache;
#[path = "shaping/end_to_end.rs"]
mod end_to_end;
#[path = "shaping/export.rs"]
mod export;
#[path = "shaping/harness.rs"]
mod harness;
#[path = "shaping/holding.rs"]
mod holding;
#[path = "shaping/measure.rs"]
mod measure;
#[path = "shaping/passthrough.rs"]
mod passthrough;
#[path = "shaping/sched_cost.rs"]
mod sched_cost;
#[path = "shaping/shared_budget.rs"]
mod shared_budget;
#[path = "shaping/tls.rs"]
mod tls;

use std::time::Duration;

use serde_json::json;

const SCENARIOS: [&str; 11] = [
    "utilisation",
    "jitter",
    "fairness",
    "scheduler",
    "redis",
    "passthrough",
    "tls",
    "holding",
    "export",
    "cache",
    "adapt",
];

/// Targets, as agreed for the gateway.
const TARGET_UTILISATION: f64 = 0.98;
const TARGET_UTILISATION_JITTER: f64 = 0.96;
const TARGET_LIGHT_P95_MS: f64 = 300.0;
/// Over HTTPS at 60 ms with handshakes, per egress IP (issue 14).
const TARGET_UTILISATION_TLS: f64 = 0.97;
/// Three replicas together, after the start-up transition (issue target).
const TARGET_UTILISATION_REDIS: f64 = 0.9;
/// Pass-through: crmgate's req/s at least this share of nginx proxy_pass's.
const TARGET_PASS_RATIO: f64 = 0.6;
/// Pass-through: crmgate's median latency (ms) in the same run.
const TARGET_PASS_P50_MS: f64 = 0.3;
/// Holding: RSS (MiB) with 10,000 waiting GETs (issue 9: at most nginx's,
/// ≤ 100 MiB on the reference machine).
const TARGET_HOLD_RSS_MIB: f64 = 100.0;

struct Args {
    quick: bool,
    seconds: Option<f64>,
    only: Vec<String>,
    callers: usize,
    jitter_ms: u64,
    hold: usize,
    gate_bin: std::path::PathBuf,
    orders: Option<u32>,
}

const USAGE: &str = "usage: cargo bench --bench shaping -- [--quick] [--seconds N] \
[--only utilisation,jitter,fairness,scheduler,redis,passthrough,tls,holding,export,cache,adapt] [--callers N] [--jitter-ms N] \
[--hold N] [--gate-bin PATH] [--orders N]";

fn parse_args() -> Args {
    let mut args = Args {
        quick: false,
        seconds: None,
        only: SCENARIOS.iter().map(|s| s.to_string()).collect(),
        callers: 50,
        jitter_ms: 20,
        hold: 10_000,
        gate_bin: env!("CARGO_BIN_EXE_crmgate").into(),
        orders: None,
    };
    let mut it = std::env::args().skip(1);
    let value = |it: &mut dyn Iterator<Item = String>, flag: &str| -> String {
        it.next().unwrap_or_else(|| {
            eprintln!("{flag} needs a value\n{USAGE}");
            std::process::exit(2)
        })
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // `cargo bench` appends this to every bench binary.
            "--bench" => {}
            "--quick" => args.quick = true,
            "--seconds" => {
                args.seconds = Some(value(&mut it, "--seconds").parse().unwrap_or_else(|_| {
                    eprintln!("--seconds takes a number\n{USAGE}");
                    std::process::exit(2)
                }))
            }
            "--only" => {
                args.only = value(&mut it, "--only")
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .collect();
                if let Some(bad) = args.only.iter().find(|s| !SCENARIOS.contains(&s.as_str())) {
                    eprintln!("unknown scenario {bad:?}\n{USAGE}");
                    std::process::exit(2)
                }
            }
            "--callers" => args.callers = value(&mut it, "--callers").parse().unwrap_or(50).max(1),
            "--jitter-ms" => args.jitter_ms = value(&mut it, "--jitter-ms").parse().unwrap_or(20),
            "--hold" => args.hold = value(&mut it, "--hold").parse().unwrap_or(10_000).max(1),
            "--gate-bin" => args.gate_bin = value(&mut it, "--gate-bin").into(),
            "--orders" => args.orders = value(&mut it, "--orders").parse().ok().filter(|n| *n > 0),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => {
                eprintln!("unknown argument {other:?}\n{USAGE}");
                std::process::exit(2)
            }
        }
    }
    args
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "n/a".into())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

/// When the 503s arrived, if there were any.
fn print_rejected_at(at: &[f64]) {
    if !at.is_empty() {
        let at: Vec<String> = at.iter().map(|t| format!("{t:.2}")).collect();
        println!(
            "   {:<38} {:>12}",
            "  … arrived at (s after start)",
            at.join(", ")
        );
    }
}

fn print_saturation(title: &str, s: &end_to_end::Saturation, target: f64) {
    let d = &s.delivered;
    println!("\n== {title}");
    println!(
        "   {} callers, {:.0} s, CRM latency 20–60 ms, limit {}/s, jitter 0–{} ms",
        s.callers,
        s.seconds,
        end_to_end::LIMIT,
        s.jitter_ms
    );
    println!("   {:<38} {:>12}", "accepted by the CRM", d.accepted);
    println!(
        "   {:<38} {:>12.3}",
        "span first→last accepted (s)", d.span_s
    );
    println!("   {:<38} {:>12.3}", "delivered rate (req/s)", d.rate);
    println!(
        "   {:<38} {:>12.4}   target ≥ {target:.2}: {}",
        "utilisation (rate / limit)",
        d.utilisation,
        verdict(d.utilisation >= target)
    );
    println!(
        "   {:<38} {:>12}   target 0: {}",
        "503s answered by the CRM",
        d.rejected_503,
        verdict(d.rejected_503 == 0)
    );
    print_rejected_at(&d.rejected_at_s);
    println!(
        "   {:<38} {:>12}",
        "most arrivals in any 1000 ms", d.max_in_1s
    );
    println!(
        "   {:<38} {:>12.2}   min {:.1} / p50 {:.1} / p95 {:.1} / max {:.1}",
        "gap between accepted arrivals (ms)",
        d.mean_gap_ms,
        d.gap_ms.min,
        d.gap_ms.p50,
        d.gap_ms.p95,
        d.gap_ms.max
    );
    println!(
        "   {:<38} {:>12}   other: {:?}",
        "caller answers (200)", s.answers.ok_200, s.answers.other
    );
    if let Some(h) = &s.held_ms {
        println!(
            "   {:<38} {:>12}",
            "jitter actually added (ms)",
            format!("p50 {:.1} / max {:.1}", h.p50, h.max)
        );
    }
}

fn print_fairness(f: &end_to_end::Fairness) {
    println!("\n== 3. Light-tenant wait during a flood");
    println!(
        "   tenant A: {} callers flooding; tenant B: 1 request / {} ms; {:.0} s; equal weights",
        f.flood_callers, f.light_every_ms, f.seconds
    );
    println!(
        "   {:<30} {:>6} {:>9} {:>9} {:>9}",
        "queue wait (ms)", "n", "p50", "p95", "max"
    );
    for (name, p) in [
        ("B (light)", &f.light_wait_ms),
        ("A (flood)", &f.flood_wait_ms),
    ] {
        println!(
            "   {:<30} {:>6} {:>9.0} {:>9.0} {:>9.0}",
            name, p.n, p.p50, p.p95, p.max
        );
    }
    println!(
        "   B p95 ≤ {TARGET_LIGHT_P95_MS:.0} ms: {}",
        verdict(f.light_wait_ms.p95 <= TARGET_LIGHT_P95_MS)
    );
    println!(
        "   B answers: {} ok, other {:?}; A answers: {} ok, other {:?}",
        f.light_answers.ok_200,
        f.light_answers.other,
        f.flood_answers.ok_200,
        f.flood_answers.other
    );
    println!(
        "   CRM: utilisation {:.4}, 503s {}, most in any 1000 ms {}",
        f.delivered.utilisation, f.delivered.rejected_503, f.delivered.max_in_1s
    );
}

fn print_grid(cells: &[sched_cost::Cell]) {
    println!("\n== 4a. Fair queue: ns per push+pop (tenant → priority → client, best of rounds)");
    print!("   {:>10} |", "queued \\ T");
    for t in sched_cost::TENANTS {
        print!(" {:>9}", format!("T={t}"));
    }
    println!();
    for q in sched_cost::LENGTHS {
        print!("   {q:>10} |");
        for t in sched_cost::TENANTS {
            let c = cells
                .iter()
                .find(|c| c.queued == q && c.tenants == t)
                .expect("every cell measured");
            let mark = if t > q { "*" } else { " " };
            print!(" {:>8.0}{mark}", c.ns_per_op);
        }
        println!();
    }
    println!("   * more tenants than queued requests: at most `queued` tenants hold work at once,");
    println!("     and every push lands on an idle tenant (churn).");
    // Growth with the tenant count, at a queue long enough that every
    // tenant holds work: the active set is what the O(log n) is over.
    let row: Vec<&sched_cost::Cell> = cells.iter().filter(|c| c.queued == 10_000).collect();
    let base = row.first().map_or(f64::NAN, |c| c.ns_per_op);
    let growth: Vec<String> = row
        .iter()
        .map(|c| format!("T={} ×{:.2}", c.tenants, c.ns_per_op / base))
        .collect();
    println!(
        "   growth at 10,000 queued (log2 T = 0, 3.3, 6.6, 10.0): {}",
        growth.join(", ")
    );
}

fn print_dispatch(d: &[sched_cost::Dispatch]) {
    println!("\n== 4b. Scheduler::acquire → grant, budget 1,000,000/s (never binds)");
    println!(
        "   {:>8} {:>8} {:>12} {:>14} {:>16}",
        "waiters", "tenants", "grants", "grants/s", "mean wait (µs)"
    );
    for x in d {
        println!(
            "   {:>8} {:>8} {:>12} {:>14.0} {:>16.1}",
            x.waiters, x.tenants, x.grants, x.grants_per_s, x.mean_wait_us
        );
    }
}

fn print_pacing(p: &[sched_cost::Pacing], timer: &sched_cost::TimerLateness) {
    println!("\n== 4c. Pacing accuracy: saturated budgets, scheduler alone (no HTTP)");
    println!(
        "   {:<10} {:>6} {:>10} {:>8} {:>14} {:>12} {:>9}",
        "class", "limit", "pace (ms)", "grants", "mean gap (ms)", "utilisation", "ceiling"
    );
    for x in p {
        println!(
            "   {:<10} {:>6} {:>10.2} {:>8} {:>14.3} {:>12.4} {:>9.4}",
            x.class, x.limit, x.paced_ms, x.grants, x.mean_gap_ms, x.utilisation, x.ceiling
        );
    }
    let l = &timer.late_ms;
    println!(
        "   tokio sleep_until lateness (ms): p50 {:.2} / p95 {:.2} / max {:.2}; ≥ 1 ms late: {:.0}% of wake-ups",
        l.p50,
        l.p95,
        l.max,
        timer.share_at_least_1ms * 100.0
    );
}

fn print_shared(s: &shared_budget::SharedBudget) {
    let (st, wh) = (&s.steady, &s.whole);
    println!(
        "\n== 5. Shared budget: {} replicas through one Redis",
        s.replicas
    );
    println!(
        "   {} callers over {} gateways ({}), {:.0} s, CRM latency 20–60 ms, limit {}/s for all of them",
        s.callers,
        s.replicas,
        s.per_replica
            .iter()
            .map(|r| r.callers.to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        s.seconds,
        end_to_end::LIMIT
    );
    println!(
        "   steady part: from {:.1} s on (start-up keeps each replica within its fallback share)",
        s.skipped_s
    );
    println!(
        "   {:<38} {:>12}   {:.2}/s",
        format!("accepted in the first {:.1} s", s.skipped_s),
        s.startup_accepted,
        s.startup_accepted as f64 / s.skipped_s
    );
    println!(
        "   {:<38} {:>12}",
        "accepted by the CRM (steady)", st.accepted
    );
    println!(
        "   {:<38} {:>12.3}",
        "delivered rate (req/s, steady)", st.rate
    );
    println!(
        "   {:<38} {:>12.4}   target ≥ {TARGET_UTILISATION_REDIS:.2}: {}",
        "combined utilisation (steady)",
        st.utilisation,
        verdict(st.utilisation >= TARGET_UTILISATION_REDIS)
    );
    println!(
        "   {:<38} {:>12.4}",
        "combined utilisation (whole run)", wh.utilisation
    );
    println!(
        "   {:<38} {:>12}   target 0: {}",
        "503s answered by the CRM",
        s.rejected_503,
        verdict(s.rejected_503 == 0)
    );
    print_rejected_at(&s.rejected_at_s);
    println!(
        "   {:<38} {:>12}   limit {}",
        "most arrivals in any 1000 ms",
        s.max_in_1s,
        end_to_end::LIMIT
    );
    println!(
        "   {:<38} {:>12.2}   min {:.1} / p50 {:.1} / p95 {:.1} / max {:.1}",
        "gap between accepted arrivals (ms)",
        st.mean_gap_ms,
        st.gap_ms.min,
        st.gap_ms.p50,
        st.gap_ms.p95,
        st.gap_ms.max
    );
    println!(
        "   {:<38} {:>12.3}   {} calls / {} requests received",
        "Redis round trips per request", s.round_trips_per_request, s.redis_calls, s.received
    );
    println!(
        "   (503s, the 1000 ms maximum and round trips include the {:.1} s drain of the callers' last requests)",
        s.drain_s
    );
    for (i, r) in s.per_replica.iter().enumerate() {
        println!(
            "   replica {}: {:>2} callers, backend {:<8} redis_calls {:>5}, CRM connections opened {}, answers {} ok, other {:?}",
            i + 1,
            r.callers,
            r.backend,
            r.redis_calls,
            r.connections_opened,
            r.answers.ok_200,
            r.answers.other
        );
    }
}

fn print_passthrough(p: &passthrough::Passthrough) {
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
        verdict(p.ratio >= TARGET_PASS_RATIO)
    );
    println!(
        "   crmgate p50: {:.3} ms   target ≤ {TARGET_PASS_P50_MS} ms: {}",
        gate.p50_ms,
        verdict(gate.p50_ms <= TARGET_PASS_P50_MS)
    );
    println!(
        "   (CPU and context switches are the target process's own, all threads, per request)"
    );
}

fn print_tls(t: &tls::TlsRun) {
    println!(
        "\n== 7. Over HTTPS, {} ms away ({})",
        t.rtt_ms,
        if t.http2 {
            "ALPN h2"
        } else {
            "ALPN http/1.1 only"
        }
    );
    println!(
        "   RTT {} ms + TLS handshake {} ms per new connection, CRM latency 20–60 ms, \
         limit {}/s per IP; A: {} callers, B: 1 / {} ms; {:.0} s",
        t.rtt_ms,
        t.handshake_ms,
        end_to_end::LIMIT,
        t.flood_callers,
        t.light_every_ms,
        t.seconds
    );
    println!(
        "   {:<14} {:>8} {:>11} {:>9} {:>6} {:>10} {:>12} {:>9}",
        "egress IP",
        "requests",
        "utilisation",
        "warm",
        "503s",
        "max in 1s",
        "connections",
        "req/conn"
    );
    for e in &t.per_egress {
        println!(
            "   {:<14} {:>8} {:>11.4} {:>9.4} {:>6} {:>10} {:>12} {:>9.1}",
            e.ip,
            e.requests,
            e.delivered.utilisation,
            e.warm.utilisation,
            e.delivered.rejected_503,
            e.delivered.max_in_1s,
            e.connections_opened,
            e.requests as f64 / e.connections_opened.max(1) as f64
        );
    }
    for e in &t.per_egress {
        let gaps: Vec<String> = e
            .long_gaps
            .iter()
            .map(|(at, gap)| format!("{gap:.0} ms at {at:.2} s"))
            .collect();
        println!("   {:<14} gaps > 150 ms: {}", e.ip, gaps.join(", "));
    }
    let (whole, warm) = t.min_utilisation();
    println!(
        "   utilisation ≥ {TARGET_UTILISATION_TLS:.2} on every IP: whole run {}, warm (from {} s) {}; 503s 0: {}",
        verdict(whole >= TARGET_UTILISATION_TLS),
        tls::WARM.as_secs(),
        verdict(warm >= TARGET_UTILISATION_TLS),
        verdict(t.rejected_503() == 0)
    );
    println!(
        "   B queue wait (ms): n {} p50 {:.0} p95 {:.0} max {:.0}   p95 ≤ {TARGET_LIGHT_P95_MS:.0}: {}",
        t.light_wait_ms.n,
        t.light_wait_ms.p50,
        t.light_wait_ms.p95,
        t.light_wait_ms.max,
        verdict(t.light_wait_ms.p95 <= TARGET_LIGHT_P95_MS)
    );
    println!(
        "   A queue wait (ms): p50 {:.0} p95 {:.0}; answers B {} ok {:?}, A {} ok {:?}; load average at end {}",
        t.flood_wait_ms.p50,
        t.flood_wait_ms.p95,
        t.light_answers.ok_200,
        t.light_answers.other,
        t.flood_answers.ok_200,
        t.flood_answers.other,
        t.loadavg
    );
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_holding(h: &holding::Holding) {
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
        holding::AFTER_SECONDS
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
            holding::AFTER_UNDER_MIB,
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
            verdict(held <= limit)
        );
        println!(
            "   crmgate under {} MiB within {} s after: {}",
            holding::AFTER_UNDER_MIB,
            holding::AFTER_SECONDS,
            verdict(gate.under_limit_after_s.is_some())
        );
    }
}

fn main() {
    let args = parse_args();
    let run = |full: f64, quick: f64| {
        Duration::from_secs_f64(
            args.seconds
                .unwrap_or(if args.quick { quick } else { full }),
        )
    };
    let wants = |s: &str| args.only.iter().any(|o| o == s);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let load_start = loadavg();
    println!("crmgate shaping benchmark");
    println!(
        "   {} mode, {cores} cores, tokio multi-thread runtime, load average at start: {load_start}",
        if args.quick { "quick" } else { "full" },
    );
    let started = std::time::Instant::now();
    let mut json = serde_json::Map::new();

    if wants("utilisation") {
        let s = rt.block_on(end_to_end::saturation(
            args.callers,
            run(20.0, 5.0),
            Duration::ZERO,
        ));
        print_saturation(
            "1. Utilisation under saturation (no added jitter)",
            &s,
            TARGET_UTILISATION,
        );
        json.insert("utilisation".into(), serde_json::to_value(&s).unwrap());
    }
    if wants("jitter") {
        let jitter = Duration::from_millis(args.jitter_ms);
        let s = rt.block_on(end_to_end::saturation(args.callers, run(20.0, 5.0), jitter));
        print_saturation(
            "2. Utilisation with random arrival jitter",
            &s,
            TARGET_UTILISATION_JITTER,
        );
        json.insert("jitter".into(), serde_json::to_value(&s).unwrap());
    }
    if wants("fairness") {
        let f = rt.block_on(end_to_end::fairness(
            args.callers,
            run(20.0, 5.0),
            Duration::from_millis(500),
        ));
        print_fairness(&f);
        json.insert("fairness".into(), serde_json::to_value(&f).unwrap());
    }
    if wants("scheduler") {
        let (ops, rounds) = if args.quick {
            (20_000, 2)
        } else {
            (200_000, 3)
        };
        let cells = sched_cost::grid(ops, rounds);
        print_grid(&cells);
        let secs = if args.quick { 0.5 } else { 2.0 };
        let dispatch: Vec<_> = [(1, 1), (100, 10), (10_000, 10)]
            .into_iter()
            .map(|(w, t)| rt.block_on(sched_cost::dispatch(w, t, Duration::from_secs_f64(secs))))
            .collect();
        print_dispatch(&dispatch);
        let (pacing, timer) = rt.block_on(sched_cost::pacing(
            args.callers,
            Duration::from_secs_f64(if args.quick { 2.0 } else { 6.0 }),
        ));
        print_pacing(&pacing, &timer);
        json.insert(
            "scheduler".into(),
            json!({ "push_pop": cells, "acquire": dispatch, "pacing": pacing, "timer": timer }),
        );
    }

    if wants("redis") {
        match rt.block_on(shared_budget::shared_budget(args.callers, run(20.0, 6.0))) {
            Ok(s) => {
                print_shared(&s);
                json.insert("redis".into(), serde_json::to_value(&s).unwrap());
            }
            Err(why) => {
                println!("\n== 5. Shared budget through Redis");
                println!("\n   !!!!! SKIPPED: {why} !!!!!\n");
                eprintln!("!!!!! redis scenario SKIPPED: {why} !!!!!");
                json.insert("redis".into(), json!({ "skipped": why }));
            }
        }
    }

    if wants("passthrough") {
        let secs = args.seconds.unwrap_or(if args.quick { 3.0 } else { 5.0 });
        match passthrough::passthrough(secs.round().max(1.0) as u64) {
            Ok(p) => {
                print_passthrough(&p);
                json.insert("passthrough".into(), serde_json::to_value(&p).unwrap());
            }
            Err(why) => {
                println!("\n== 6. Pass-through cost");
                println!("\n   !!!!! SKIPPED: {why} !!!!!\n");
                eprintln!("!!!!! passthrough scenario SKIPPED: {why} !!!!!");
                json.insert("passthrough".into(), json!({ "skipped": why }));
            }
        }
    }

    if wants("tls") {
        let mut runs = Vec::new();
        for http2 in [true, false] {
            let t = rt.block_on(tls::run(args.callers, run(20.0, 5.0), http2, loadavg));
            print_tls(&t);
            runs.push(t);
        }
        json.insert("tls".into(), serde_json::to_value(&runs).unwrap());
    }
    if wants("holding") {
        match rt.block_on(holding::holding(&args.gate_bin, args.hold)) {
            Ok(h) => {
                print_holding(&h);
                json.insert("holding".into(), serde_json::to_value(&h).unwrap());
            }
            Err(why) => {
                println!("\n== 8. Memory per waiting request");
                println!("\n   !!!!! SKIPPED: {why} !!!!!\n");
                eprintln!("!!!!! holding scenario SKIPPED: {why} !!!!!");
                json.insert("holding".into(), json!({ "skipped": why }));
            }
        }
    }

    if wants("export") {
        let orders = args.orders.unwrap_or(if args.quick { 3000 } else { 5000 });
        let e = rt.block_on(export::run(orders, loadavg));
        export::print(&e, TARGET_LIGHT_P95_MS);
        json.insert("export".into(), serde_json::to_value(&e).unwrap());
    }
    if wants("cache") {
        json.insert(
            "cache".into(),
            cache::scenario(&rt, args.quick, args.seconds),
        );
    }

    if wants("adapt") {
        let (runs, clean) = rt.block_on(adapt::run(args.callers, args.quick, loadavg));
        adapt::print(&runs, &clean, verdict);
        json.insert("adapt".into(), json!({ "faults": runs, "clean": clean }));
    }

    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "\n   total {elapsed:.1} s; load average at start {load_start}, at end {}",
        loadavg()
    );
    json.insert(
        "meta".into(),
        json!({
            "bench": "crmgate-shaping",
            "quick": args.quick,
            "cores": cores,
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "elapsed_s": elapsed,
            "targets": {
                "utilisation": TARGET_UTILISATION,
                "utilisation_jitter": TARGET_UTILISATION_JITTER,
                "light_p95_ms": TARGET_LIGHT_P95_MS,
                "utilisation_tls": TARGET_UTILISATION_TLS,
                "utilisation_redis": TARGET_UTILISATION_REDIS,
                "passthrough_ratio": TARGET_PASS_RATIO,
                "passthrough_p50_ms": TARGET_PASS_P50_MS,
                "hold_rss_mib": TARGET_HOLD_RSS_MIB,
            },
        }),
    );
    println!("{}", serde_json::Value::Object(json));
    // Dispatcher and server tasks may still be parked; do not wait for them.
    rt.shutdown_timeout(Duration::from_secs(1));
}
