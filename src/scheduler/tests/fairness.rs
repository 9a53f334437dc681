//! The fair queue on paused time: a light tenant during a flood, weights,
//! priorities, deadlines and withdrawals.

use super::*;

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
