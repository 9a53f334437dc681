//! crmgate traffic-shaping benchmark.
//!
//! ```text
//! cargo bench --bench shaping                      # full run, ~17 min
//! cargo bench --bench shaping -- --quick           # smoke run, under 3 min
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
//! 12. `multipart`: scenarios 1 and 3 with every request a multipart POST
//!     as RetailCRM's PHP client sends it (`orders/create`, `apiKey` one of
//!     the parts): utilisation, 503s, client keys at the CRM, and a light
//!     tenant's wait beside a flooding one.
//! 13. `limiters`: adaptation against a real limit of 7/s and 8/s
//!     (configured 10/s) under each limiter model of the simulator (strict,
//!     lenient, leaky burst 0 and 5, fixed): one table.
//! 14. `runaway`: 1,500 connections of one client beside a light client of
//!     the same tenant: the light one's share served and queue wait.
//! 15. `redis_tls`, `fleet_cache`, `failover`: three replicas through a TLS
//!     Redis with a password (scenario 5's figures); 30 readers per replica
//!     of one reference with a 2 s TTL (CRM reads per TTL); a Sentinel
//!     failover under load (most arrivals in any 1000 ms, back to shared).
//!     See `shaping/fleet.rs`.
//!
//! Everything runs in one process on one tokio runtime, like the
//! integration tests: the callers, the gateway and the simulator share the
//! machine's cores. The report ends with one JSON line for tooling.
//!
//! Layout: this file parses the arguments, lists the scenarios and runs
//! them; each scenario's module under `shaping/` measures and prints its own
//! table with goals and verdicts (`measure` holds the shared judging). The
//! rig starts simulators, gateways and redis-server with the integration
//! tests' own helpers (`tests/common`, included by path), so the bench never
//! mirrors them.
//! See docs/performance.md for how to read the numbers.

#[path = "shaping/adapt.rs"]
mod adapt;
#[path = "shaping/cache.rs"]
mod cache;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "shaping/end_to_end.rs"]
mod end_to_end;
#[path = "shaping/export.rs"]
mod export;
#[path = "shaping/fleet.rs"]
mod fleet;
#[path = "shaping/harness.rs"]
mod harness;
#[path = "shaping/holding.rs"]
mod holding;
#[path = "shaping/limiters.rs"]
mod limiters;
#[path = "shaping/measure.rs"]
mod measure;
#[path = "shaping/multipart.rs"]
mod multipart;
#[path = "shaping/passthrough.rs"]
mod passthrough;
#[path = "shaping/report.rs"]
mod report;
#[path = "shaping/runaway.rs"]
mod runaway;
#[path = "shaping/sched_cost.rs"]
mod sched_cost;
#[path = "shaping/shared_budget.rs"]
mod shared_budget;
#[path = "shaping/tls.rs"]
mod tls;

use std::time::Duration;

use serde_json::json;

use report::{insert_or_skip, Laps};

const SCENARIOS: [&str; 17] = [
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
    "multipart",
    "limiters",
    "runaway",
    "redis_tls",
    "fleet_cache",
    "failover",
];

struct Args {
    quick: bool,
    seconds: Option<f64>,
    only: Vec<String>,
    callers: usize,
    jitter_ms: u64,
    hold: Option<usize>,
    gate_bin: std::path::PathBuf,
    orders: Option<u32>,
}

const USAGE: &str = "usage: cargo bench --bench shaping -- [--quick] [--seconds N] \
[--only utilisation,jitter,fairness,scheduler,redis,passthrough,tls,holding,export,cache,adapt,\
multipart,limiters,runaway,redis_tls,fleet_cache,failover] [--callers N] [--jitter-ms N] \
[--hold N] [--gate-bin PATH] [--orders N]";

fn parse_args() -> Args {
    let mut args = Args {
        quick: false,
        seconds: None,
        only: SCENARIOS.iter().map(|s| s.to_string()).collect(),
        callers: 50,
        jitter_ms: 20,
        hold: None,
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
            "--hold" => args.hold = value(&mut it, "--hold").parse().ok().filter(|n| *n > 0),
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
    let mut laps = Laps::new();

    if wants("utilisation") {
        let s = rt.block_on(end_to_end::saturation(
            args.callers,
            run(20.0, 3.0),
            Duration::ZERO,
        ));
        end_to_end::print_saturation(
            "1. Utilisation under saturation (no added jitter)",
            &s,
            end_to_end::TARGET_UTILISATION,
        );
        json.insert("utilisation".into(), serde_json::to_value(&s).unwrap());
        laps.done("utilisation");
    }
    if wants("jitter") {
        let jitter = Duration::from_millis(args.jitter_ms);
        let s = rt.block_on(end_to_end::saturation(args.callers, run(20.0, 3.0), jitter));
        end_to_end::print_saturation(
            "2. Utilisation with random arrival jitter",
            &s,
            end_to_end::TARGET_UTILISATION_JITTER,
        );
        json.insert("jitter".into(), serde_json::to_value(&s).unwrap());
        laps.done("jitter");
    }
    if wants("fairness") {
        let f = rt.block_on(end_to_end::fairness(
            args.callers,
            run(20.0, 3.0),
            Duration::from_millis(500),
        ));
        end_to_end::print_fairness(&f);
        json.insert("fairness".into(), serde_json::to_value(&f).unwrap());
        laps.done("fairness");
    }
    if wants("scheduler") {
        let (ops, rounds) = if args.quick {
            (20_000, 2)
        } else {
            (200_000, 3)
        };
        let cells = sched_cost::grid(ops, rounds);
        sched_cost::print_grid(&cells);
        let secs = if args.quick { 0.5 } else { 2.0 };
        let dispatch: Vec<_> = [(1, 1), (100, 10), (10_000, 10)]
            .into_iter()
            .map(|(w, t)| rt.block_on(sched_cost::dispatch(w, t, Duration::from_secs_f64(secs))))
            .collect();
        sched_cost::print_dispatch(&dispatch);
        let (pacing, timer) = rt.block_on(sched_cost::pacing(
            args.callers,
            Duration::from_secs_f64(if args.quick { 2.0 } else { 6.0 }),
        ));
        sched_cost::print_pacing(&pacing, &timer);
        json.insert(
            "scheduler".into(),
            json!({ "push_pop": cells, "acquire": dispatch, "pacing": pacing, "timer": timer }),
        );
        laps.done("scheduler");
    }

    if wants("redis") {
        let result = rt.block_on(shared_budget::shared_budget(args.callers, run(20.0, 5.0)));
        insert_or_skip(
            &mut json,
            "redis",
            "5. Shared budget through Redis",
            result,
            shared_budget::print,
        );
        laps.done("redis");
    }

    if wants("passthrough") {
        let secs = args.seconds.unwrap_or(if args.quick { 2.0 } else { 5.0 });
        let result = passthrough::passthrough(secs.round().max(1.0) as u64);
        insert_or_skip(
            &mut json,
            "passthrough",
            "6. Pass-through cost",
            result,
            passthrough::print,
        );
        laps.done("passthrough");
    }

    if wants("tls") {
        let mut runs = Vec::new();
        for http2 in [true, false] {
            let t = rt.block_on(tls::run(args.callers, run(20.0, 3.0), http2, loadavg));
            tls::print(&t);
            runs.push(t);
        }
        json.insert("tls".into(), serde_json::to_value(&runs).unwrap());
        laps.done("tls");
    }
    if wants("holding") {
        let hold = args.hold.unwrap_or(if args.quick { 2_000 } else { 10_000 });
        let after = if args.quick {
            holding::AFTER_SECONDS_QUICK
        } else {
            holding::AFTER_SECONDS
        };
        let result = rt.block_on(holding::holding(&args.gate_bin, hold, after));
        insert_or_skip(
            &mut json,
            "holding",
            "8. Memory per waiting request",
            result,
            holding::print,
        );
        laps.done("holding");
    }

    if wants("export") {
        let orders = args.orders.unwrap_or(if args.quick { 1000 } else { 5000 });
        let e = rt.block_on(export::run(orders, loadavg));
        export::print(&e);
        json.insert("export".into(), serde_json::to_value(&e).unwrap());
        laps.done("export");
    }
    if wants("cache") {
        json.insert(
            "cache".into(),
            cache::scenario(&rt, args.quick, args.seconds),
        );
        laps.done("cache");
    }

    if wants("adapt") {
        let (runs, clean) = rt.block_on(adapt::run(args.callers, args.quick, loadavg));
        adapt::print(&runs, &clean);
        json.insert("adapt".into(), json!({ "faults": runs, "clean": clean }));
        laps.done("adapt");
    }
    if wants("multipart") {
        let m = rt.block_on(multipart::run(args.callers, run(20.0, 3.0)));
        multipart::print(&m);
        json.insert("multipart".into(), serde_json::to_value(&m).unwrap());
        laps.done("multipart");
    }
    if wants("limiters") {
        let runs = rt.block_on(limiters::run(args.callers, args.quick, loadavg));
        limiters::print(&runs, args.quick);
        json.insert("limiters".into(), serde_json::to_value(&runs).unwrap());
        laps.done("limiters");
    }
    if wants("runaway") {
        let r = rt.block_on(runaway::run(run(15.0, 6.0)));
        insert_or_skip(
            &mut json,
            "runaway",
            "14. Runaway service",
            r,
            runaway::print,
        );
        laps.done("runaway");
    }
    if wants("redis_tls") {
        let s = rt.block_on(fleet::tls(args.callers, run(20.0, 5.0)));
        insert_or_skip(
            &mut json,
            "redis_tls",
            "15a. Shared budget through a TLS Redis",
            s,
            fleet::print_tls,
        );
        laps.done("redis_tls");
    }
    if wants("fleet_cache") {
        let c = rt.block_on(fleet::reference(run(12.0, 4.0)));
        insert_or_skip(
            &mut json,
            "fleet_cache",
            "15b. Fleet cache",
            c,
            fleet::print_reference,
        );
        laps.done("fleet_cache");
    }
    if wants("failover") {
        let (before, after) = (run(10.0, 3.0), run(10.0, 3.0));
        let f = rt.block_on(fleet::failover(args.callers, before, after));
        insert_or_skip(
            &mut json,
            "failover",
            "15c. Sentinel failover under load",
            f,
            fleet::print_failover,
        );
        laps.done("failover");
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
            "seconds_per_scenario": laps.seconds,
            "targets": {
                "utilisation": end_to_end::TARGET_UTILISATION,
                "utilisation_jitter": end_to_end::TARGET_UTILISATION_JITTER,
                "light_p95_ms": measure::TARGET_LIGHT_P95_MS,
                "utilisation_tls": tls::TARGET_UTILISATION_TLS,
                "utilisation_redis": shared_budget::TARGET_UTILISATION_REDIS,
                "passthrough_ratio": passthrough::TARGET_PASS_RATIO,
                "passthrough_p50_ms": passthrough::TARGET_PASS_P50_MS,
                "hold_rss_mib": holding::TARGET_HOLD_RSS_MIB,
            },
        }),
    );
    println!("{}", serde_json::Value::Object(json));
    // Dispatcher and server tasks may still be parked; do not wait for them.
    rt.shutdown_timeout(Duration::from_secs(1));
}
