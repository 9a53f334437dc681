//! Fast grants: a free budget grants without the dispatcher, never past a
//! deadline, after cut-off or with Redis, and never ahead of a waiter.

use super::*;

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
