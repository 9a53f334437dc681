//! Scenario 4: what the scheduler itself costs, without HTTP.
//!
//! (a) The fair queue alone: one push plus one pop on the same three-level
//! shape the scheduler uses (tenant → priority band → client), at a steady
//! queue length, across queue lengths and tenant counts.
//! (b) `Scheduler::acquire` end to end (queue, dispatcher task, oneshot,
//! wake-up) with the budget set so high it never binds.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crmgate::classify::Class;
use crmgate::scheduler::{Level, Priority, Scheduler, Ticket, Wfq};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::harness;

/// The scheduler's queue shape, with a plain number as the entry.
type Queue = Wfq<Arc<str>, Wfq<Priority, Wfq<Arc<str>, VecDeque<u64>>>>;

pub const LENGTHS: [usize; 4] = [10, 100, 1_000, 10_000];
pub const TENANTS: [usize; 4] = [1, 10, 100, 1_000];

/// One cell of the push+pop grid.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub queued: usize,
    pub tenants: usize,
    /// Tenants that hold work at once: `min(queued, tenants)`.
    pub active_tenants: usize,
    /// Nanoseconds per push+pop pair (best of several rounds).
    pub ns_per_op: f64,
}

fn push(q: &mut Queue, tenant: &Arc<str>, client: &Arc<str>, item: u64) {
    // Same calls and weights as the scheduler's LaneState::push (normal
    // priority has weight 2, tenants and clients weight 1).
    q.push_with(tenant.clone(), 1, |t| {
        t.push_with(Priority::Normal, 2, |b| {
            b.push_with(client.clone(), 1, |c| c.push_back(item))
        })
    });
}

/// Pushes go round-robin over all `tenants`; with more tenants than queued
/// items each push lands on an idle tenant (tenant churn).
fn cell(queued: usize, tenants: usize, ops: usize, rounds: usize) -> Cell {
    let names: Vec<Arc<str>> = (0..tenants)
        .map(|i| Arc::from(format!("tenant-{i}")))
        .collect();
    let clients: Vec<Arc<str>> = (0..tenants)
        .map(|i| Arc::from(format!("client-key-{i}")))
        .collect();
    let mut q = Queue::default();
    let mut next = 0usize;
    for i in 0..queued {
        push(&mut q, &names[next], &clients[next], i as u64);
        next = (next + 1) % tenants;
    }
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let started = std::time::Instant::now();
        for i in 0..ops {
            let item = q.pop().expect("queue is never empty");
            black_box(item);
            push(&mut q, &names[next], &clients[next], i as u64);
            next = (next + 1) % tenants;
        }
        best = best.min(started.elapsed().as_nanos() as f64 / ops as f64);
    }
    Cell {
        queued,
        tenants,
        active_tenants: queued.min(tenants),
        ns_per_op: best,
    }
}

pub fn grid(ops: usize, rounds: usize) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &queued in &LENGTHS {
        for &tenants in &TENANTS {
            cells.push(cell(queued, tenants, ops, rounds));
        }
    }
    cells
}

/// Grants per second through `Scheduler::acquire` with `waiters` tasks
/// that each re-queue as soon as they are granted.
#[derive(Debug, Clone, Serialize)]
pub struct Dispatch {
    pub waiters: usize,
    pub tenants: usize,
    pub grants: u64,
    pub seconds: f64,
    pub grants_per_s: f64,
    /// Mean time from enqueue to grant as the permit reports it (µs).
    pub mean_wait_us: f64,
    /// Share of the grants taken at once, without the dispatcher (the
    /// scheduler's fast path; 1.0 expected with one waiter).
    pub at_once: f64,
}

pub async fn dispatch(waiters: usize, tenants: usize, run: Duration) -> Dispatch {
    // A budget of 1,000,000/s: a pace of ~1 µs, so the budget never binds
    // and what is measured is the queue, the dispatcher and the wake-ups.
    // Validation caps rates at 10,000/s (a pace of 102 µs, which would
    // bind), so the rate is set on the validated config, bench-only.
    let mut config = harness::gateway_config("http://127.0.0.1:9", "queue_capacity = 1000000");
    config.limits.general_per_second = std::num::NonZeroU32::new(1_000_000).expect("not zero");
    let sched = Scheduler::new(&config);
    let stop = CancellationToken::new();
    let grants = Arc::new(AtomicU64::new(0));
    let waited_ns = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(3600);
    let tenant_names: Vec<Arc<str>> = (0..tenants)
        .map(|i| Arc::from(format!("tenant-{i}")))
        .collect();
    let tasks: Vec<_> = (0..waiters)
        .map(|i| {
            let ticket = Ticket {
                tenant: tenant_names[i % tenants].clone(),
                weight: 1,
                max_queued: usize::MAX,
                client: Arc::from(format!("client-{i}")),
                priority: Priority::Normal,
                class: Class::General,
                deadline,
            };
            let (sched, stop, grants, waited_ns) = (
                sched.clone(),
                stop.clone(),
                grants.clone(),
                waited_ns.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let permit = tokio::select! {
                        p = sched.acquire(ticket.clone()) => p,
                        _ = stop.cancelled() => return,
                    };
                    let permit = permit.expect("the budget never refuses here");
                    waited_ns.fetch_add(permit.waited.as_nanos() as u64, Ordering::Relaxed);
                    grants.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Warm up (all waiters queued, lane and dispatcher running), then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (g0, w0, f0) = (
        grants.load(Ordering::Relaxed),
        waited_ns.load(Ordering::Relaxed),
        sched.granted_at_once(),
    );
    let started = Instant::now();
    tokio::time::sleep(run).await;
    let (g1, w1, f1) = (
        grants.load(Ordering::Relaxed),
        waited_ns.load(Ordering::Relaxed),
        sched.granted_at_once(),
    );
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    sched.cut_off();
    let n = g1 - g0;
    Dispatch {
        waiters,
        tenants,
        grants: n,
        seconds,
        grants_per_s: n as f64 / seconds,
        mean_wait_us: if n > 0 {
            (w1 - w0) as f64 / n as f64 / 1000.0
        } else {
            f64::NAN
        },
        at_once: if n > 0 {
            (f1 - f0) as f64 / n as f64
        } else {
            f64::NAN
        },
    }
}

/// How exactly a saturated budget keeps its pace, with no HTTP involved:
/// the instants at which permits are granted, for one class.
#[derive(Debug, Clone, Serialize)]
pub struct Pacing {
    pub class: &'static str,
    pub limit: u32,
    /// The pace the budget aims for: `(1000 + jitter_allowance) / limit`.
    pub paced_ms: f64,
    pub grants: usize,
    /// Mean gap between consecutive grants (ms).
    pub mean_gap_ms: f64,
    /// `(grants - 1) / span / limit`.
    pub utilisation: f64,
    /// `1000 / (1000 + jitter_allowance)`: the best the pace allows.
    pub ceiling: f64,
}

/// How late tokio's timer fires `sleep_until` for a deadline with a
/// sub-millisecond part, as the dispatcher uses it (ms past the deadline).
#[derive(Debug, Clone, Serialize)]
pub struct TimerLateness {
    pub late_ms: crate::measure::Percentiles,
    /// Share of wake-ups at least 1 ms late: the dispatcher then counts the
    /// slot at the wake-up time instead of the planned one, and the pace
    /// slips by that much.
    pub share_at_least_1ms: f64,
}

async fn timer_lateness(run: Duration) -> TimerLateness {
    // The telephony pace: 25.5 ms, so deadlines fall between ticks.
    let pace = Duration::from_micros(25_500);
    let end = Instant::now() + run;
    let mut at = Instant::now() + pace;
    let mut late = Vec::new();
    while at < end {
        tokio::time::sleep_until(at).await;
        late.push(Instant::now().duration_since(at).as_secs_f64() * 1000.0);
        at += pace;
    }
    let share = late.iter().filter(|l| **l >= 1.0).count() as f64 / late.len().max(1) as f64;
    TimerLateness {
        late_ms: crate::measure::percentiles(&late),
        share_at_least_1ms: share,
    }
}

/// Saturates the general (10/s) and telephony (40/s) budgets at once with
/// default limits, `waiters` tasks each, and times the grants; meanwhile
/// measures the timer's lateness on the same runtime.
pub async fn pacing(waiters: usize, run: Duration) -> (Vec<Pacing>, TimerLateness) {
    let timer = tokio::spawn(timer_lateness(run));
    let config = harness::gateway_config("http://127.0.0.1:9", "");
    let jitter_ms = config.limits.jitter_allowance.as_secs_f64() * 1000.0;
    let sched = Scheduler::new(&config);
    let stop = CancellationToken::new();
    let deadline = Instant::now() + Duration::from_secs(3600);
    let mut lanes = Vec::new();
    for class in [Class::General, Class::Telephony] {
        let times = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
        for i in 0..waiters {
            let ticket = Ticket {
                tenant: Arc::from("acme"),
                weight: 1,
                max_queued: usize::MAX,
                client: Arc::from(format!("client-{i}")),
                priority: Priority::Normal,
                class,
                deadline,
            };
            let (sched, stop, times) = (sched.clone(), stop.clone(), times.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        p = sched.acquire(ticket.clone()) => {
                            if p.is_err() { return; }
                            times.lock().unwrap_or_else(|p| p.into_inner()).push(Instant::now());
                        }
                        _ = stop.cancelled() => return,
                    }
                }
            });
        }
        lanes.push((class, times));
    }
    tokio::time::sleep(run).await;
    stop.cancel();
    sched.cut_off();
    let timer = timer.await.expect("timer probe runs");
    let pacing = lanes
        .into_iter()
        .map(|(class, times)| {
            let mut t = times.lock().unwrap_or_else(|p| p.into_inner()).clone();
            t.sort_unstable();
            let limit = config.rate(class).get();
            let span = match (t.first(), t.last()) {
                (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
                _ => 0.0,
            };
            let n = t.len().max(2) - 1;
            Pacing {
                class: class.as_str(),
                limit,
                paced_ms: (1000.0 + jitter_ms) / f64::from(limit),
                grants: t.len(),
                mean_gap_ms: span * 1000.0 / n as f64,
                utilisation: n as f64 / span / f64::from(limit),
                ceiling: 1000.0 / (1000.0 + jitter_ms),
            }
        })
        .collect();
    (pacing, timer)
}

/// Prints 4a: push+pop cost by queue length and tenant count.
pub fn print_grid(cells: &[Cell]) {
    println!("\n== 4a. Fair queue: ns per push+pop (tenant → priority → client, best of rounds)");
    print!("   {:>10} |", "queued \\ T");
    for t in TENANTS {
        print!(" {:>9}", format!("T={t}"));
    }
    println!();
    for q in LENGTHS {
        print!("   {q:>10} |");
        for t in TENANTS {
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
    let row: Vec<&Cell> = cells.iter().filter(|c| c.queued == 10_000).collect();
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

/// Prints 4b: grants per second through `Scheduler::acquire`.
pub fn print_dispatch(d: &[Dispatch]) {
    println!("\n== 4b. Scheduler::acquire → grant, budget 1,000,000/s (a pace of 1.02 µs)");
    println!(
        "   {:>8} {:>8} {:>12} {:>14} {:>16} {:>8}",
        "waiters", "tenants", "grants", "grants/s", "mean wait (µs)", "at once"
    );
    for x in d {
        println!(
            "   {:>8} {:>8} {:>12} {:>14.0} {:>16.1} {:>8.3}",
            x.waiters, x.tenants, x.grants, x.grants_per_s, x.mean_wait_us, x.at_once
        );
    }
}

/// Prints 4c: pacing accuracy and the timer's lateness.
pub fn print_pacing(p: &[Pacing], timer: &TimerLateness) {
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
