//! Capacity on paused time: limits that refuse at once, and room made at
//! total capacity and at a client's `max_queued`.

use super::*;

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
