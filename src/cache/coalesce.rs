//! Coalescing: identical GETs that arrive while one of them still waits in
//! the queue share that one request.
//!
//! A [`Flight`] is one shared request, run by its own task so that no
//! single caller owns it. Callers hold a [`Seat`]; the flight's [`Lift`]
//! carries the highest priority and the latest deadline of its seats to
//! the scheduler. Joining is possible only until the scheduler grants the
//! slot (the lift closes then): a later GET starts a flight of its own, so
//! every answer was read after its caller asked. When the last seat leaves
//! before the answer, the task is aborted: a request still queued leaves the
//! queue unsent. This module never sees a key; it never logs a path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::{sleep_until, Instant};

use super::key::Key;
use super::store::BufferedAnswer;
use crate::error::GatewayError;
use crate::scheduler::{Lift, Priority, QueueError};

/// What the shared request came to: the answer and how it was obtained.
pub struct FlightOutcome {
    /// The whole answer, or why there is none.
    pub answer: Result<Arc<BufferedAnswer>, GatewayError>,
    /// Sends made to the CRM.
    pub attempts: u32,
    /// Time the shared request spent queued.
    pub queue: Duration,
    /// Time waiting for the CRM.
    pub upstream: Duration,
    /// Egress of the last send.
    pub egress: Option<String>,
    /// The answer's bytes in the pool of buffered bodies, while shared.
    pub lease: Option<crate::bodies::BodyLease>,
    /// The answer came from the fleet's cache (another replica's read).
    pub from_fleet: bool,
}

/// One shared request.
pub struct Flight {
    /// Priority and deadline of the shared request, raised by joiners.
    pub lift: Arc<Lift>,
    result: watch::Sender<Option<Arc<FlightOutcome>>>,
    /// Seats taken and the task, under the flights' lock.
    state: Mutex<FlightState>,
}

#[derive(Default)]
struct FlightState {
    seats: usize,
    task: Option<AbortHandle>,
}

impl Flight {
    /// Publishes the outcome to every seat.
    pub fn finish(&self, shared: FlightOutcome) {
        self.result.send_replace(Some(Arc::new(shared)));
    }

    /// Publishes `shared()` unless an outcome was published already.
    pub fn finish_if_unfinished(&self, shared: impl FnOnce() -> FlightOutcome) {
        self.result.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            *r = Some(Arc::new(shared()));
            true
        });
    }
}

/// The flights under way, by key.
#[derive(Default)]
pub struct Flights {
    map: Mutex<HashMap<Key, Arc<Flight>>>,
}

/// Whether a caller joined a waiting flight or started one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Started the flight: its request is the one queued.
    Started,
    /// Joined a flight that was still waiting.
    Joined,
}

/// A caller's place in a flight; leaving (drop) may end the flight.
pub struct Seat {
    flights: Arc<Flights>,
    key: Key,
    /// The flight sat in.
    pub flight: Arc<Flight>,
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Arc<Flight>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the waiting flight for `key`, raising it to `priority` and
    /// `deadline`, or starts a new one (the caller then spawns its task and
    /// hands it over with [`Seat::attach`]).
    pub fn take_seat(
        self: &Arc<Self>,
        key: &Key,
        priority: Priority,
        deadline: Instant,
    ) -> (Seat, Role) {
        let mut map = self.lock();
        if let Some(f) = map.get(key) {
            // Under the map lock: the last seat cannot leave meanwhile.
            if f.lift.raise(priority, deadline) {
                lock(&f.state).seats += 1;
                let seat = Seat {
                    flights: self.clone(),
                    key: key.clone(),
                    flight: f.clone(),
                };
                return (seat, Role::Joined);
            }
        }
        let flight = Arc::new(Flight {
            lift: Arc::new(Lift::new(priority, deadline)),
            result: watch::Sender::new(None),
            state: Mutex::new(FlightState {
                seats: 1,
                task: None,
            }),
        });
        // A flight already sent stays out of the map's way: it removes
        // itself only if it is still the one listed.
        map.insert(key.clone(), flight.clone());
        let seat = Seat {
            flights: self.clone(),
            key: key.clone(),
            flight,
        };
        (seat, Role::Started)
    }

    /// Waits for the answer of the flight for `key` if it was already sent
    /// (it can no longer be joined); true if there was one. The cache's
    /// "lock": a caller of a cacheable read waits for the fill under way,
    /// then looks again, instead of sending the same read right behind it.
    pub async fn wait_for_sent(&self, key: &Key) -> bool {
        let flight = {
            let map = self.lock();
            match map.get(key) {
                Some(f) if f.lift.granted() => f.clone(),
                _ => return false,
            }
        };
        let mut rx = flight.result.subscribe();
        // The sender lives in `flight`, held here: this ends with the answer.
        let _ = rx.wait_for(Option::is_some).await;
        true
    }

    /// The flight ended: later GETs start a new one.
    pub fn done(&self, key: &Key, flight: &Arc<Flight>) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }

    /// Flights listed now (waiting or under way).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no flight is listed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn lock(m: &Mutex<FlightState>) -> MutexGuard<'_, FlightState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Seat {
    /// Hands the flight its task, so the last seat to leave can stop it.
    pub fn attach(&self, task: AbortHandle) {
        lock(&self.flight.state).task = Some(task);
    }

    /// Waits for the shared outcome, or until `deadline` while the shared
    /// request is still queued (a queue deadline of this caller's own).
    pub async fn wait(&self, deadline: Instant) -> Result<Arc<FlightOutcome>, GatewayError> {
        let mut rx = self.flight.result.subscribe();
        let mut patient = false;
        loop {
            if let Some(shared) = rx.borrow_and_update().clone() {
                return Ok(shared);
            }
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Err(GatewayError::Queue(QueueError::ShuttingDown));
                    }
                }
                _ = sleep_until(deadline), if !patient => {
                    if !self.flight.lift.granted() {
                        return Err(GatewayError::Queue(QueueError::Deadline(Duration::from_secs(1))));
                    }
                    // Already sent: the answer is on its way.
                    patient = true;
                }
            }
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        let mut st = lock(&self.flight.state);
        st.seats -= 1;
        if st.seats > 0 {
            return;
        }
        // The last caller left: a queued request leaves the queue unsent
        // (dropping its wait withdraws it); an answer nobody waits for is
        // not read.
        if self.flight.result.borrow().is_none() {
            if let Some(task) = st.task.take() {
                task.abort();
            }
        }
        if map
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            map.remove(&self.key);
        }
    }
}
