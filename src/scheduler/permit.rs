//! The [`Permit`]: a granted slot, and what its holder reports back when
//! the request leaves (late or not) and when the CRM answers 503. It moves
//! only its own lane's budget (and the shared log's slot it was given); it
//! never grants or queues.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::dispatch;
use super::lane::{self, Lane};
use crate::classify::Class;

/// A granted slot: send now, through egress number `egress`.
pub struct Permit {
    /// Index into the configured egress IPs (0 when there is only the default).
    pub egress: usize,
    /// The class of the budget used.
    pub class: Class,
    /// Time spent queued for this slot.
    pub waited: Duration,
    /// The slot's time as the budget recorded it (the send's time, for
    /// adaptation and [`Permit::departed`]).
    pub(super) at: Instant,
    /// The shared log's slot, when Redis reserved it: a late departure
    /// moves it there too.
    pub(super) shared_slot: Option<lane::SharedSlot>,
    pub(super) lane: Arc<Lane>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("egress", &self.egress)
            .field("class", &self.class)
            .field("waited", &self.waited)
            .finish()
    }
}

impl Permit {
    /// The request leaves now. If that is later than its slot (a busy
    /// machine, a slow pool checkout, a slow Redis), the budget counts the
    /// send from now, so the next slot moves with it and no window at the
    /// CRM holds more than the limit ([`super::Budget::left_late`], and
    /// [`super::RedisBudget::departed`] for a slot Redis reserved). On time
    /// (within the timer granularity): nothing.
    pub fn departed(&self) {
        let now = Instant::now();
        let late = now.saturating_duration_since(self.at);
        if late >= dispatch::TIMER_GRANULARITY {
            self.lane.lock().budgets[self.egress].left_late(self.at, now);
            self.lane.reshaped.notify_one();
        }
        let (Some(slot), Some(shared)) = (self.shared_slot, self.lane.shared.clone()) else {
            return;
        };
        // Against the shared slot the send is late by the whole time since
        // it was due: Redis's round trip, the dispatcher's wake-up, and the
        // hand-off to here. Counted from the earliest the slot could be
        // due, so never too little (too much only costs a little rate).
        let late = now.saturating_duration_since(slot.due);
        if late < dispatch::TIMER_GRANULARITY {
            return;
        }
        let (egress, class, tenant) = (self.egress, self.class, self.lane.tenant.clone());
        tokio::spawn(async move {
            shared
                .departed(egress, class, tenant.as_deref(), slot.at_us, late)
                .await
        });
    }

    /// Reports that the CRM answered 503/429 to the request sent with this
    /// permit: the budget slows down and honours `retry_after`.
    pub fn throttled(&self, retry_after: Option<Duration>) {
        let now = Instant::now();
        self.lane.lock().budgets[self.egress].throttled(now, self.at, retry_after);
        if let Some(shared) = self.lane.shared.clone() {
            // Every replica slows down through the shared state; best effort,
            // off the request path. Only the send's age crosses the wire.
            let (egress, class, tenant) = (self.egress, self.class, self.lane.tenant.clone());
            let age = now.saturating_duration_since(self.at);
            tokio::spawn(async move {
                shared
                    .throttled(egress, class, tenant.as_deref(), age, retry_after)
                    .await
            });
        }
    }
}
