//! The budgets through the scheduler, on paused time: the window bound,
//! classes and egress IPs, throttling, the per-account scope, connects and
//! late sends that move slots.

use super::*;

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
