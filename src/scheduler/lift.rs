//! A waiting request that others may join: its priority can be raised and
//! its deadline extended while it waits.
//!
//! Coalescing ([`crate::cache`]) queues one request for several callers; the
//! shared request must be as urgent as its most urgent caller and wait as
//! long as the most patient one. A [`Lift`] carries those two values; the
//! waiter ([`super::Scheduler::acquire_lifted`]) re-reads them whenever they
//! change. It only ever raises: a caller leaving never lowers the shared
//! request (it may still be someone's only chance). Once the request is
//! granted the lift is closed and refuses changes, so a late caller knows
//! the request already left. This file never sees keys or bodies.

use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Priority;

/// The adjustable part of a waiting ticket, shared with whoever may join it.
#[derive(Debug)]
pub struct Lift {
    state: Mutex<State>,
    /// Priority or deadline changed: the waiter re-reads them.
    pub(super) changed: Notify,
}

#[derive(Debug, Clone, Copy)]
struct State {
    priority: Priority,
    deadline: Instant,
    granted: bool,
}

impl Lift {
    /// A lift starting at a ticket's own priority and deadline.
    pub fn new(priority: Priority, deadline: Instant) -> Lift {
        Lift {
            state: Mutex::new(State {
                priority,
                deadline,
                granted: false,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Raises the priority to at least `priority` and moves the deadline to
    /// at least `deadline`. False, changing nothing, once the request was
    /// granted (it is no longer waiting).
    pub fn raise(&self, priority: Priority, deadline: Instant) -> bool {
        let mut st = self.lock();
        if st.granted {
            return false;
        }
        // `Priority` orders High < Normal < Low.
        let higher = priority < st.priority;
        let later = deadline > st.deadline;
        st.priority = st.priority.min(priority);
        st.deadline = st.deadline.max(deadline);
        drop(st);
        if higher || later {
            self.changed.notify_one();
        }
        true
    }

    /// Whether the request was granted its slot (it has left the queue).
    pub fn granted(&self) -> bool {
        self.lock().granted
    }

    /// The current priority and deadline.
    pub fn current(&self) -> (Priority, Instant) {
        let st = self.lock();
        (st.priority, st.deadline)
    }

    /// Closes the lift at the grant: later raises are refused.
    pub(super) fn close(&self) {
        self.lock().granted = true;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn raises_only_upwards_and_refuses_after_the_grant() {
        let t0 = Instant::now();
        let lift = Lift::new(Priority::Normal, t0 + Duration::from_secs(5));
        assert!(lift.raise(Priority::Low, t0 + Duration::from_secs(1)));
        assert_eq!(
            lift.current(),
            (Priority::Normal, t0 + Duration::from_secs(5))
        );
        assert!(lift.raise(Priority::High, t0 + Duration::from_secs(9)));
        assert_eq!(
            lift.current(),
            (Priority::High, t0 + Duration::from_secs(9))
        );
        lift.close();
        assert!(lift.granted());
        assert!(!lift.raise(Priority::High, t0 + Duration::from_secs(20)));
        assert_eq!(
            lift.current(),
            (Priority::High, t0 + Duration::from_secs(9))
        );
    }

    use std::sync::Arc;

    use crate::classify::Class;
    use crate::config::Config;
    use crate::scheduler::{QueueError, Scheduler, Ticket};

    fn one_per_second() -> Scheduler {
        let text = "[limits]\ngeneral_per_second = 1\n[[tenants]]\nname = \"a\"\n\
                    subdomain = \"a\"\napi_key = \"k\"\n";
        Scheduler::new(&Config::from_toml(text, "test", &|_| None).unwrap())
    }

    fn ticket(priority: Priority, wait: Duration) -> Ticket {
        Ticket {
            tenant: "a".into(),
            weight: 1,
            max_queued: 100,
            client: "batch".into(),
            priority,
            class: Class::General,
            deadline: Instant::now() + wait,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_raised_request_moves_to_its_new_band_and_is_counted_once() {
        let s = one_per_second();
        let hour = Duration::from_secs(3600);
        s.acquire(ticket(Priority::Low, hour)).await.unwrap();
        let lows: Vec<_> = (0..10)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.acquire(ticket(Priority::Low, hour)).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Queued behind ten of its own client's requests: served last, unless raised.
        let lift = Arc::new(Lift::new(Priority::Low, Instant::now() + hour));
        let shared = {
            let (s, lift) = (s.clone(), lift.clone());
            tokio::spawn(async move { s.acquire_lifted(ticket(Priority::Low, hour), &lift).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(s.queued(), 11);
        assert!(lift.raise(Priority::High, Instant::now() + hour));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(s.queued(), 11, "a raise does not count the request twice");
        // The high band starts even with the busy low band (a tie goes to
        // the band that was first): the raised request is granted within
        // two slots instead of after the ten.
        tokio::time::sleep(Duration::from_millis(2 * 1020 + 50)).await;
        assert!(
            shared.is_finished(),
            "the raised request is served in its new band"
        );
        assert!(shared.await.unwrap().is_ok());
        assert_eq!(lows.iter().filter(|w| w.is_finished()).count(), 1);
        assert_eq!(s.queued(), 9);
        assert!(lift.granted());
        assert!(!lift.raise(Priority::High, Instant::now() + hour));
        // The abandoned entry costs no slot: the ten others follow, one a slot.
        tokio::time::sleep(Duration::from_millis(9 * 1020 + 100)).await;
        assert_eq!(lows.iter().filter(|w| w.is_finished()).count(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn an_extended_deadline_keeps_the_request_waiting() {
        let s = one_per_second();
        s.acquire(ticket(Priority::Normal, Duration::from_secs(60)))
            .await
            .unwrap();
        let short = Duration::from_millis(300);
        // Without a raise the deadline ends the wait.
        let lift = Lift::new(Priority::Normal, Instant::now() + short);
        let err = s
            .acquire_lifted(ticket(Priority::Normal, short), &lift)
            .await
            .unwrap_err();
        assert!(matches!(err, QueueError::Deadline(_)), "{err:?}");
        assert!(
            lift.granted(),
            "a request that stopped waiting cannot be joined"
        );

        let lift = Arc::new(Lift::new(Priority::Normal, Instant::now() + short));
        let shared = {
            let (s, lift) = (s.clone(), lift.clone());
            tokio::spawn(async move {
                s.acquire_lifted(ticket(Priority::Normal, short), &lift)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(lift.raise(Priority::Low, Instant::now() + Duration::from_secs(5)));
        let permit = shared.await.unwrap();
        assert!(permit.is_ok(), "{permit:?}");
        assert!(permit.unwrap().waited > short);
    }
}
