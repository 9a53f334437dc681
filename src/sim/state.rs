//! The state every request handler shares: accounts, limits, latency,
//! faults, the ledger and the order store.
//!
//! Data plus the current limit per class; it never starts tasks or touches
//! sockets (that is `server`), so handlers depend on it and not on the
//! [`super::Simulator`] handle that runs them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::class::Class;
use super::config::{SimAccount, SimConfig};
use super::entities::Entities;
use super::faults::Faults;
use super::record::Ledger;
use super::store::Store;

/// What the gate and the API handlers read and change while serving.
pub(crate) struct Shared {
    pub(crate) accounts: Vec<SimAccount>,
    pub(crate) window: Duration,
    pub(crate) total_orders: u32,
    general_limit: AtomicU32,
    telephony_limit: AtomicU32,
    pub(crate) latency: Mutex<(Duration, Duration)>,
    /// The round trip added to every request (half each way).
    pub(crate) rtt: Duration,
    pub(crate) faults: Faults,
    pub(crate) ledger: Mutex<Ledger>,
    pub(crate) store: Store,
    /// Customers beyond the orders, and the switch that adds them.
    pub(crate) listing: super::listing::Listing,
    /// Customers and corporate customers created through the API.
    pub(crate) entities: Entities,
    pub(crate) reference: super::reference::Reference,
    /// What each account's key may do (`GET /api/credentials`).
    pub(crate) access: super::credentials::Access,
}

impl Shared {
    pub(crate) fn new(cfg: SimConfig) -> Self {
        Shared {
            store: Store::new(cfg.accounts.len()),
            entities: Entities::new(cfg.accounts.len()),
            reference: super::reference::Reference::new(cfg.accounts.len()),
            accounts: cfg.accounts,
            window: cfg.window,
            total_orders: cfg.total_orders,
            general_limit: AtomicU32::new(cfg.general_per_second),
            telephony_limit: AtomicU32::new(cfg.telephony_per_second),
            latency: Mutex::new(cfg.latency),
            rtt: cfg.rtt,
            faults: Faults::default(),
            ledger: Mutex::new(Ledger::new(cfg.limiter)),
            listing: super::listing::Listing::default(),
            access: super::credentials::Access::default(),
        }
    }

    /// The current per-window limit of `class`.
    pub(crate) fn limit(&self, class: Class) -> u32 {
        match class {
            Class::General => self.general_limit.load(Ordering::Relaxed),
            Class::Telephony => self.telephony_limit.load(Ordering::Relaxed),
        }
    }

    /// Changes both limits; takes effect for the next arrival.
    pub(crate) fn set_limits(&self, general: u32, telephony: u32) {
        self.general_limit.store(general, Ordering::Relaxed);
        self.telephony_limit.store(telephony, Ordering::Relaxed);
    }
}
