//! Scheduler behaviour under paused tokio time: ordering, bounds, fairness.

use std::time::Duration;

use futures_util::FutureExt;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;
use crate::config::Config;

fn config(extra: &str) -> Config {
    let text = format!(
        "{extra}\n[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key = \"k\"\n\
         [[tenants]]\nname = \"b\"\nsubdomain = \"b\"\napi_key = \"k2\"\n"
    );
    Config::from_toml(&text, "test", &|_| None).unwrap()
}

fn ticket(tenant: &str, client: &str, class: Class) -> Ticket {
    Ticket {
        tenant: tenant.into(),
        weight: 1,
        max_queued: 10_000,
        client: client.into(),
        priority: Priority::Normal,
        class,
        deadline: Instant::now() + Duration::from_secs(3600),
    }
}

/// A scheduler on the Redis backend at a port nobody listens on (bound,
/// read and released), so its lanes run on their fallback share;
/// `redis_extra` adds keys to `[redis]`.
fn unreachable_redis(redis_extra: &str) -> Scheduler {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Scheduler::new(&config(&format!(
        "[limits]\nbackend = \"redis\"\n[redis]\nurl = \"redis://127.0.0.1:{port}\"\n{redis_extra}"
    )))
}

/// Spawns a waiter that returns when it was granted, relative to `t0`.
fn spawn(s: &Scheduler, t: Ticket) -> JoinHandle<Result<(Duration, usize), QueueError>> {
    let s = s.clone();
    let t0 = Instant::now();
    tokio::spawn(async move { s.acquire(t).await.map(|p| (t0.elapsed(), p.egress)) })
}

/// Largest count of grant times within any window of length `w`.
fn max_in_window(times: &mut [Duration], w: Duration) -> usize {
    times.sort();
    super::budget::tests::max_in_window(times, w)
}

async fn grant_times(
    waiters: Vec<JoinHandle<Result<(Duration, usize), QueueError>>>,
) -> Vec<Duration> {
    let mut out = Vec::new();
    for w in waiters {
        out.push(w.await.unwrap().unwrap().0);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn grants_never_exceed_the_limit_in_any_window() {
    let s = Scheduler::new(&config(""));
    let waiters: Vec<_> = (0..95)
        .map(|i| spawn(&s, ticket("a", &format!("c{}", i % 7), Class::General)))
        .collect();
    let mut times = grant_times(waiters).await;
    assert_eq!(times.len(), 95);
    assert_eq!(max_in_window(&mut times, Duration::from_millis(1020)), 10);
    // Fully used: one grant every 102 ms, no slot left idle.
    assert_eq!(*times.last().unwrap(), Duration::from_millis(94 * 102));
}

#[tokio::test(start_paused = true)]
async fn telephony_has_its_own_budget() {
    let s = Scheduler::new(&config(""));
    let general: Vec<_> = (0..10)
        .map(|_| spawn(&s, ticket("a", "x", Class::General)))
        .collect();
    let phone: Vec<_> = (0..40)
        .map(|_| spawn(&s, ticket("a", "x", Class::Telephony)))
        .collect();
    let g = grant_times(general).await;
    let t = grant_times(phone).await;
    // 40/s paces telephony at 25.5 ms (seen on the next whole millisecond),
    // unaffected by the general queue.
    assert_eq!(g.iter().max(), Some(&Duration::from_millis(9 * 102)));
    assert_eq!(t.iter().max(), Some(&Duration::from_millis(995)));
}

#[tokio::test(start_paused = true)]
async fn two_egress_ips_double_the_rate() {
    let s = Scheduler::new(&config(
        "[upstream]\negress_ips = [\"127.0.0.2\", \"127.0.0.3\"]",
    ));
    let waiters: Vec<_> = (0..40)
        .map(|_| spawn(&s, ticket("a", "x", Class::General)))
        .collect();
    let mut per_ip = [0usize; 2];
    let mut last = Duration::ZERO;
    for w in waiters {
        let (at, egress) = w.await.unwrap().unwrap();
        per_ip[egress] += 1;
        last = last.max(at);
    }
    assert_eq!(per_ip, [20, 20]);
    assert_eq!(
        last,
        Duration::from_millis(19 * 102),
        "40 requests through 2 IPs take half the time"
    );
}

#[tokio::test(start_paused = true)]
async fn a_light_tenant_is_served_within_a_slot_during_a_flood() {
    let s = Scheduler::new(&config(""));
    let flood: Vec<_> = (0..60)
        .map(|i| spawn(&s, ticket("a", &format!("f{i}"), Class::General)))
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut waits = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        spawn(&s, ticket("b", "light", Class::General))
            .await
            .unwrap()
            .unwrap();
        waits.push(start.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for w in &waits {
        assert!(
            *w <= Duration::from_millis(210),
            "light tenant waited {w:?}"
        );
    }
    for f in flood {
        f.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn tenants_split_by_weight() {
    let s = Scheduler::new(&config(""));
    let mut heavy = ticket("a", "x", Class::General);
    heavy.weight = 3;
    let waiters: Vec<_> = (0..40)
        .flat_map(|_| {
            [
                spawn(&s, heavy.clone()),
                spawn(&s, ticket("b", "y", Class::General)),
            ]
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(2050)).await;
    let mut done = [0usize; 2];
    for (i, w) in waiters.iter().enumerate() {
        if w.is_finished() {
            done[i % 2] += 1;
        }
    }
    // 21 slots (0 ms, 102 ms, ... 2040 ms), split 3:1.
    assert_eq!(done[0] + done[1], 21);
    assert!(
        (15..=16).contains(&done[0]),
        "weight 3 got {} of 21",
        done[0]
    );
}

#[tokio::test(start_paused = true)]
async fn high_priority_goes_first_but_low_is_not_starved() {
    let s = Scheduler::new(&config(""));
    let mut low = ticket("a", "batch", Class::General);
    low.priority = Priority::Low;
    let lows: Vec<_> = (0..40).map(|_| spawn(&s, low.clone())).collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut high = ticket("a", "ui", Class::General);
    high.priority = Priority::High;
    let highs: Vec<_> = (0..40).map(|_| spawn(&s, high.clone())).collect();
    tokio::time::sleep(Duration::from_millis(2050)).await;
    let lows_done = lows.iter().filter(|w| w.is_finished()).count();
    let highs_done = highs.iter().filter(|w| w.is_finished()).count();
    // The first slot went to low before high arrived; the next 20 split 4:1.
    assert_eq!(lows_done + highs_done, 21);
    assert!(
        (15..=17).contains(&highs_done),
        "high got {highs_done}, low {lows_done}"
    );
    assert!(lows_done >= 4, "low must not starve");
}

#[tokio::test(start_paused = true)]
async fn deadline_gives_up_and_frees_the_place() {
    let s = Scheduler::new(&config("[limits]\ngeneral_per_second = 1"));
    s.acquire(ticket("a", "x", Class::General)).await.unwrap();
    let mut late = ticket("a", "x", Class::General);
    late.deadline = Instant::now() + Duration::from_millis(300);
    let err = s.acquire(late).await.unwrap_err();
    assert!(matches!(err, QueueError::Deadline(_)), "{err:?}");
    assert!(err.retry_after() >= Duration::from_secs(1));
    assert_eq!(s.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_withdrawn_request_never_gets_a_slot() {
    let s = Scheduler::new(&config("[limits]\ngeneral_per_second = 2"));
    s.acquire(ticket("a", "x", Class::General)).await.unwrap();
    let gone = spawn(&s, ticket("a", "x", Class::General));
    let next = spawn(&s, ticket("a", "x", Class::General));
    tokio::time::sleep(Duration::from_millis(100)).await;
    gone.abort();
    let (at, _) = next.await.unwrap().unwrap();
    assert_eq!(
        at,
        Duration::from_millis(510),
        "the next waiter takes the first free slot"
    );
    assert_eq!(
        s.snapshot()[0].budgets[0].sent_last_window,
        2,
        "the withdrawn one used none"
    );
    assert_eq!(s.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn capacity_limits_reject_at_once() {
    let s = Scheduler::new(&config("[limits]\nqueue_capacity = 15"));
    let mut capped = ticket("b", "x", Class::General);
    capped.max_queued = 2;
    let held: Vec<_> = (0..12)
        .map(|_| spawn(&s, ticket("a", "x", Class::General)))
        .collect();
    let b1 = spawn(&s, capped.clone());
    let b2 = spawn(&s, capped.clone());
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(matches!(
        s.acquire(capped.clone()).await,
        Err(QueueError::Full("tenant", _))
    ));
    let a1 = spawn(&s, ticket("a", "x", Class::General));
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(s.queued(), 14, "12 - 1 granted + 2 + 1");
    for w in held.into_iter().chain([b1, b2, a1]) {
        w.abort();
    }
}

/// Spawns `n` waiters of `tenant`'s `client` with `weight` and
/// `max_queued`, and lets them queue.
async fn hold(
    s: &Scheduler,
    n: usize,
    (tenant, client): (&str, &str),
    weight: u32,
    max_queued: usize,
) -> Vec<JoinHandle<Result<(Duration, usize), QueueError>>> {
    let held = (0..n)
        .map(|_| {
            let mut t = ticket(tenant, client, Class::General);
            (t.weight, t.max_queued) = (weight, max_queued);
            spawn(s, t)
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    held
}

/// What the waiters that already ended got.
async fn ended(
    held: &mut Vec<JoinHandle<Result<(Duration, usize), QueueError>>>,
) -> Vec<QueueError> {
    let mut out = Vec::new();
    let mut still = Vec::new();
    for h in held.drain(..) {
        if h.is_finished() {
            out.push(h.await.unwrap().unwrap_err());
        } else {
            still.push(h);
        }
    }
    *held = still;
    out
}

#[tokio::test(start_paused = true)]
async fn at_total_capacity_the_longest_line_makes_room() {
    let s = Scheduler::new(&config(
        "[limits]\nqueue_capacity = 3\ngeneral_per_second = 1",
    ));
    s.acquire(ticket("a", "x", Class::General)).await.unwrap();
    let mut a = hold(&s, 3, ("a", "x"), 1, 10_000).await;
    assert_eq!(s.queued(), 3);
    // The queue is full, and a's own line is the longest: refused.
    assert!(matches!(
        s.acquire(ticket("a", "x", Class::General)).await,
        Err(QueueError::Full("total", _))
    ));
    // b has no line at all: admitted, and a's newest waiter gives way.
    let mut b = hold(&s, 1, ("b", "y"), 1, 10_000).await;
    assert_eq!(s.queued(), 3, "the bound holds throughout");
    let gone = ended(&mut a).await;
    assert!(
        matches!(gone[..], [QueueError::Displaced(d)] if d >= Duration::from_secs(1)),
        "{gone:?}"
    );
    assert_eq!((s.tenant_queued("a"), s.tenant_queued("b")), (2, 1));
    assert_eq!((s.displaced("a"), s.displaced("b")), (1, 0));
    // Now b's line (1, 2 with another) is no shorter than a's (2).
    assert!(matches!(
        s.acquire(ticket("b", "y", Class::General)).await,
        Err(QueueError::Full("total", _))
    ));
    // b's one request still waits.
    assert!(ended(&mut b).await.is_empty());
    for w in a.into_iter().chain(b) {
        w.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn at_total_capacity_lines_are_measured_by_weight() {
    let s = Scheduler::new(&config(
        "[limits]\nqueue_capacity = 4\ngeneral_per_second = 1",
    ));
    s.acquire(ticket("a", "x", Class::General)).await.unwrap();
    // a (weight 2) holds 3: 1.5 per unit of weight; b (weight 1) holds 1.
    let mut a = hold(&s, 3, ("a", "x"), 2, 10_000).await;
    let mut b = hold(&s, 1, ("b", "y"), 1, 10_000).await;
    assert_eq!(s.queued(), 4);
    // b with 2 would be longer than a's 1.5: refused.
    assert!(matches!(
        s.acquire(ticket("b", "y", Class::General)).await,
        Err(QueueError::Full("total", _))
    ));
    // c has none: a, the longest per weight, gives way, not b.
    let c = hold(&s, 1, ("c", "z"), 1, 10_000).await;
    assert_eq!(ended(&mut a).await.len(), 1);
    assert!(ended(&mut b).await.is_empty());
    assert_eq!((s.displaced("a"), s.displaced("b")), (1, 0));
    assert_eq!(s.queued(), 4);
    for w in a.into_iter().chain(b).chain(c) {
        w.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn at_max_queued_a_runaway_client_makes_room_for_a_light_one() {
    let s = Scheduler::new(&config("[limits]\ngeneral_per_second = 1"));
    s.acquire(ticket("b", "runaway", Class::General))
        .await
        .unwrap();
    let mut runaway = hold(&s, 3, ("b", "runaway"), 1, 3).await;
    let limited = |client: &str| {
        let mut t = ticket("b", client, Class::General);
        t.max_queued = 3;
        t
    };
    // The tenant is at max_queued and the runaway's line is the longest.
    assert!(matches!(
        s.acquire(limited("runaway")).await,
        Err(QueueError::Full("tenant", _))
    ));
    // The light client gets in; the runaway's newest request gives way.
    let light = spawn(&s, limited("light"));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let gone = ended(&mut runaway).await;
    assert!(matches!(gone[..], [QueueError::Displaced(_)]), "{gone:?}");
    assert_eq!(s.tenant_queued("b"), 3);
    assert_eq!(s.displaced("b"), 1);
    // A second light request would make its line as long as the runaway's.
    assert!(matches!(
        s.acquire(limited("light")).await,
        Err(QueueError::Full("tenant", _))
    ));
    // Fair order within the tenant: the light one is served with the next
    // slot or the one after, not after the runaway's backlog.
    let (at, _) = light.await.unwrap().unwrap();
    assert!(at <= Duration::from_millis(2100), "{at:?}");
    for w in runaway {
        w.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn throttling_slows_the_lane() {
    let s = Scheduler::new(&config("[limits.adaptive]\ndecrease_factor = 0.5"));
    let p = s.acquire(ticket("a", "x", Class::General)).await.unwrap();
    p.throttled(Some(Duration::from_secs(2)));
    let snap = s.snapshot();
    // A lone 503 pauses the budget but is no evidence against the rate.
    assert_eq!(snap[0].budgets[0].effective_rate, 10.0);
    assert!(snap[0].budgets[0].next_free_in_ms >= 1999);
    let (at, _) = spawn(&s, ticket("a", "x", Class::General))
        .await
        .unwrap()
        .unwrap();
    assert!(
        at >= Duration::from_secs(2),
        "Retry-After honoured, got {at:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn cut_off_answers_every_waiter() {
    let s = Scheduler::new(&config("[limits]\ngeneral_per_second = 1"));
    let waiters: Vec<_> = (0..5)
        .map(|_| spawn(&s, ticket("a", "x", Class::General)))
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    s.cut_off();
    let mut shut = 0;
    for w in waiters {
        if w.await.unwrap() == Err(QueueError::ShuttingDown) {
            shut += 1;
        }
    }
    assert_eq!(shut, 4);
    assert_eq!(
        s.acquire(ticket("a", "x", Class::General))
            .await
            .unwrap_err(),
        QueueError::ShuttingDown
    );
}

#[tokio::test(start_paused = true)]
async fn per_account_scope_gives_each_tenant_a_budget() {
    let s = Scheduler::new(&config("[limits]\nscope = \"egress_ip_and_account\""));
    let waiters: Vec<_> = (0..10)
        .flat_map(|_| {
            [
                spawn(&s, ticket("a", "x", Class::General)),
                spawn(&s, ticket("b", "x", Class::General)),
            ]
        })
        .collect();
    // Each tenant has 10/s of its own: 20 grants in the time of 10.
    assert_eq!(
        grant_times(waiters).await.iter().max(),
        Some(&Duration::from_millis(9 * 102))
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_is_counted_as_withdrawn_but_a_deadline_is_not() {
    let s = Scheduler::new(&config("[limits]\ngeneral_per_second = 1"));
    s.acquire(ticket("a", "x", Class::General)).await.unwrap();
    let gone = spawn(&s, ticket("a", "x", Class::General));
    let mut late = ticket("a", "x", Class::General);
    late.deadline = Instant::now() + Duration::from_millis(100);
    tokio::time::sleep(Duration::from_millis(50)).await;
    gone.abort();
    assert!(matches!(
        s.acquire(late).await,
        Err(QueueError::Deadline(_))
    ));
    assert_eq!(s.withdrawn(), 1);
}

#[tokio::test(start_paused = true)]
async fn sends_behind_a_slow_connect_count_from_when_it_opened() {
    let s = Scheduler::new(&config("[limits]\ngeneral_per_second = 2"));
    let waiters: Vec<_> = (0..3)
        .map(|_| spawn(&s, ticket("a", "x", Class::General)))
        .collect();
    // The first request opens a connection that takes 300 ms.
    let started = s.connect_started(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.connect_finished(0, started);
    let times = grant_times(waiters).await;
    // The first send counts from 300 ms, when its connection was ready:
    // the pace and the window both restart from there. Without this the
    // third would go at 1020 ms, only 720 ms after the first could have
    // reached the CRM.
    let ms = Duration::from_millis;
    assert_eq!(times, [ms(0), ms(810), ms(1320)]);
}

#[tokio::test(start_paused = true)]
async fn a_connect_longer_than_the_window_holds_the_dependent_slot() {
    let s = Scheduler::new(&config("[limits]\ngeneral_per_second = 2"));
    let waiters: Vec<_> = (0..3)
        .map(|_| spawn(&s, ticket("a", "x", Class::General)))
        .collect();
    let started = s.connect_started(0);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    s.connect_finished(0, started);
    let times = grant_times(waiters).await;
    assert_eq!(times[2], Duration::from_millis(3020));
}

#[tokio::test(start_paused = true)]
async fn a_connect_in_fallback_does_not_stall_the_lane() {
    // Redis unreachable: the lane runs on its fallback share (10 / 10 = 1/s).
    let s = unreachable_redis("expected_replicas = 10");
    s.acquire(ticket("a", "x", Class::General)).await.unwrap();
    // The first request opens a connection that takes 60 ms; meanwhile the
    // next one queues behind a slot that waits for that connect.
    let started = s.connect_started(0);
    let next = spawn(&s, ticket("a", "x", Class::General));
    tokio::time::sleep(Duration::from_millis(60)).await;
    s.connect_finished(0, started);
    let (at, _) = next.await.unwrap().unwrap();
    assert!(at < Duration::from_secs(2), "the lane stalled for {at:?}");
    assert_eq!(s.shared_state().map(|(fallback, _)| fallback), Some(true));
}

/// The first poll of `acquire`: a fast-path grant is ready at once, without
/// the dispatcher task ever running.
fn acquire_now(s: &Scheduler, t: Ticket) -> Option<Result<Permit, QueueError>> {
    s.acquire(t).now_or_never()
}

#[tokio::test(start_paused = true)]
async fn a_free_budget_grants_at_once_without_the_dispatcher() {
    let s = Scheduler::new(&config("[limits]\nqueue_capacity = 1"));
    let permit = acquire_now(&s, ticket("a", "x", Class::General))
        .expect("granted on the first poll")
        .unwrap();
    assert_eq!((permit.egress, permit.waited), (0, Duration::ZERO));
    // The slot is counted: the next one waits a pace.
    assert_eq!(s.snapshot()[0].budgets[0].sent_last_window, 1);
    assert!(acquire_now(&s, ticket("a", "x", Class::General)).is_none());
    // A grant that never waited never held a place in the queue.
    assert_eq!(s.queued(), 0);
    assert_eq!(s.tenant_queued("a"), 0);
    tokio::time::sleep(Duration::from_millis(102)).await;
    assert!(acquire_now(&s, ticket("b", "y", Class::General)).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_free_slot_goes_to_the_waiting_request_not_a_newcomer() {
    let s = Scheduler::new(&config("[limits]\ngeneral_per_second = 1"));
    acquire_now(&s, ticket("a", "x", Class::General))
        .expect("granted at once")
        .unwrap();
    let waiting = spawn(&s, ticket("a", "x", Class::General));
    tokio::time::sleep(Duration::from_millis(150)).await;
    // A reload frees the budget (10/s: the next slot was due at 102 ms)
    // while the dispatcher, not yet run, still sleeps towards 1020 ms.
    s.reconfigure(&config("[limits]\ngeneral_per_second = 10"));
    let newcomer = s.acquire(ticket("b", "y", Class::General));
    tokio::pin!(newcomer);
    assert!(
        futures_util::poll!(newcomer.as_mut()).is_pending(),
        "a newcomer must not take the slot of a waiting request"
    );
    let (at, _) = waiting.await.unwrap().unwrap();
    assert_eq!(
        at,
        Duration::from_millis(150),
        "the waiter got the freed slot"
    );
    let t0 = Instant::now();
    newcomer.await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_millis(102), "one pace later");
}

#[tokio::test(start_paused = true)]
async fn the_window_bound_holds_with_fast_grants_and_queueing_mixed() {
    // Two egress IPs at 10/s; requests come in bursts faster than the pace,
    // with pauses in which the queue empties, so some are granted on the
    // fast path and some by the dispatcher.
    let s = Scheduler::new(&config(
        "[upstream]\negress_ips = [\"127.0.0.2\", \"127.0.0.3\"]",
    ));
    let start = Instant::now();
    let mut waiters = Vec::new();
    for burst in 0..12u64 {
        for i in 0..(1 + burst % 5) {
            let (s, t) = (s.clone(), ticket("a", &format!("c{i}"), Class::General));
            // Grant times from one origin, and whether the grant was immediate.
            waiters.push(tokio::spawn(async move {
                let p = s.acquire(t).await.unwrap();
                (start.elapsed(), p.egress, p.waited.is_zero())
            }));
        }
        // 5 at once take ~255 ms to drain through 2 × 10/s: a 300 ms gap
        // sometimes empties the queue and sometimes does not.
        tokio::time::sleep(Duration::from_millis(if burst % 3 == 0 {
            100
        } else {
            300
        }))
        .await;
    }
    let mut per_ip: [Vec<Duration>; 2] = Default::default();
    let mut immediate = 0;
    for w in waiters {
        let (at, egress, at_once) = w.await.unwrap();
        per_ip[egress].push(at);
        immediate += usize::from(at_once);
    }
    assert!(immediate >= 2, "some grants took the fast path");
    for times in &mut per_ip {
        assert!(!times.is_empty());
        assert!(max_in_window(times, Duration::from_millis(1020)) <= 10);
        // Pacing per egress: consecutive sends at least 102 ms apart.
        assert!(times
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_millis(102)));
    }
}

#[tokio::test(start_paused = true)]
async fn no_fast_grant_past_the_deadline_or_after_cut_off_or_with_redis() {
    let s = Scheduler::new(&config(""));
    let mut late = ticket("a", "x", Class::General);
    late.deadline = Instant::now();
    assert!(matches!(
        s.acquire(late).await,
        Err(QueueError::Deadline(_))
    ));
    assert_eq!(
        s.snapshot()[0].budgets[0].sent_last_window,
        0,
        "no slot used"
    );
    s.close();
    assert_eq!(
        acquire_now(&s, ticket("a", "x", Class::General)).map(|r| r.unwrap_err()),
        Some(QueueError::ShuttingDown)
    );
    // A retry during the drain may still be granted at once, until the cut-off.
    assert!(matches!(
        s.reacquire(ticket("a", "x", Class::General)).now_or_never(),
        Some(Ok(_))
    ));
    s.cut_off();
    assert!(matches!(
        s.reacquire(ticket("a", "x", Class::General)).now_or_never(),
        Some(Err(QueueError::ShuttingDown))
    ));

    // Redis (unreachable here, so the lane is in fallback): slots come from
    // the dispatcher only, which owns the reservations and the transitions.
    let s = unreachable_redis("");
    assert!(acquire_now(&s, ticket("a", "x", Class::General)).is_none());
}

/// A send that leaves 80 ms after its slot (a stalled caller task): the
/// next slots move with it, so the departures, which are what the CRM
/// counts, never put more than the limit in any 1000 ms.
#[tokio::test(start_paused = true)]
async fn a_send_that_leaves_late_moves_the_next_slot_with_it() {
    let s = Scheduler::new(&config(""));
    let first = s.acquire(ticket("a", "x", Class::General)).await.unwrap();
    let stalled = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(80)).await;
        first.departed();
        Instant::now()
    });
    let t0 = Instant::now();
    let mut departures = Vec::new();
    for _ in 0..25 {
        let p = s.acquire(ticket("a", "x", Class::General)).await.unwrap();
        p.departed();
        departures.push(Instant::now());
    }
    departures.push(stalled.await.unwrap());
    let mut times: Vec<Duration> = departures.iter().map(|t| *t - t0).collect();
    assert_eq!(max_in_window(&mut times, Duration::from_millis(1000)), 10);
    // The slot ten after the stalled one waited for it: 80 + 1020 ms.
    assert_eq!(times[10], Duration::from_millis(1100), "{times:?}");
}

/// The same for a request granted by the dispatcher (it queued): its
/// permit carries the slot the budget recorded, so a waiter that wakes or
/// sends late is late against that slot.
#[tokio::test(start_paused = true)]
async fn a_queued_send_that_leaves_late_moves_the_next_slot_with_it() {
    let s = Scheduler::new(&config(""));
    let t0 = Instant::now();
    let first = s.acquire(ticket("a", "x", Class::General)).await.unwrap();
    first.departed();
    let mut departures = vec![Instant::now()];
    let s2 = s.clone();
    let stalled = tokio::spawn(async move {
        let p = s2.acquire(ticket("a", "x", Class::General)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        p.departed();
        Instant::now()
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    for _ in 0..25 {
        let p = s.acquire(ticket("a", "x", Class::General)).await.unwrap();
        p.departed();
        departures.push(Instant::now());
    }
    departures.push(stalled.await.unwrap());
    let mut times: Vec<Duration> = departures.iter().map(|t| *t - t0).collect();
    assert_eq!(max_in_window(&mut times, Duration::from_millis(1000)), 10);
    // Granted at 102 ms, left at 182: ten sends later, 182 + 1020 ms.
    assert_eq!(times[11], Duration::from_millis(1202), "{times:?}");
}

/// A scheduler whose general budget is `rate` per second (validation caps
/// configured rates at 10,000/s; these tests need a sub-microsecond pace).
fn at_rate(rate: u32) -> Scheduler {
    let mut c = config("");
    c.limits.general_per_second = std::num::NonZeroU32::new(rate).unwrap();
    Scheduler::new(&c)
}

#[tokio::test(start_paused = true)]
async fn a_single_waiter_with_a_free_budget_takes_the_fast_path() {
    let s = Scheduler::new(&config(""));
    for i in 0..20u64 {
        let permit = s.acquire(ticket("a", "c", Class::General)).await.unwrap();
        assert_eq!(permit.waited, Duration::ZERO);
        assert_eq!(
            s.granted_at_once(),
            i + 1,
            "grant {i} went through the queue"
        );
        // The next slot is free by the time the next request comes.
        tokio::time::sleep(Duration::from_millis(102)).await;
    }
    assert_eq!(s.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_behind_a_busy_budget_is_granted_by_the_dispatcher() {
    let s = Scheduler::new(&config(""));
    s.acquire(ticket("a", "c", Class::General)).await.unwrap();
    let t0 = Instant::now();
    // 102 ms away: far beyond the short wait, so it queues.
    let permit = s.acquire(ticket("a", "c", Class::General)).await.unwrap();
    assert_eq!(s.granted_at_once(), 1);
    assert_eq!(t0.elapsed(), Duration::from_millis(102));
    assert_eq!(permit.waited, Duration::from_millis(102));
}

#[tokio::test(start_paused = true)]
async fn a_single_waiter_asking_faster_than_a_microsecond_pace_keeps_the_fast_path() {
    // 1,000,000/s: a pace of 1.02 µs. A task that asks again at once finds
    // its next slot a hair ahead; it waits for it without the dispatcher
    // (whose timer would round the wait up to a whole millisecond).
    let s = at_rate(1_000_000);
    let mut last = None;
    for i in 0..1000u64 {
        let permit = s.acquire(ticket("a", "c", Class::General)).await.unwrap();
        assert_eq!(
            s.granted_at_once(),
            i + 1,
            "grant {i} went through the queue"
        );
        // Never before its slot, and the slots keep the pace.
        assert!(Instant::now() >= permit.at);
        if let Some(prev) = last {
            assert!(permit.at - prev >= Duration::from_nanos(1020));
        }
        last = Some(permit.at);
    }
    assert_eq!(s.queued(), 0);
}
