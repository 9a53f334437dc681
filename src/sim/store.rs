//! The orders each simulated account holds beyond the seeded ones: those
//! created through `orders/create`, with the external ids they claimed.
//!
//! Only storage: validation and answers live in the handlers. It never
//! forgets an order while the simulator runs.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

use super::lock::lock;

/// Orders created through the API, per account (seeded ones are generated).
pub(crate) struct Store {
    accounts: Vec<Mutex<Created>>,
}

/// One account's created orders.
#[derive(Default)]
pub(crate) struct Created {
    /// In creation order.
    pub(crate) orders: Vec<Value>,
    /// Every `externalId` claimed so far.
    pub(crate) external_ids: HashSet<String>,
}

impl Store {
    pub(crate) fn new(accounts: usize) -> Self {
        Store {
            accounts: (0..accounts).map(|_| Mutex::default()).collect(),
        }
    }

    /// Locks one account's orders, e.g. to check and insert atomically.
    pub(crate) fn account(&self, account: usize) -> MutexGuard<'_, Created> {
        lock(&self.accounts[account])
    }

    /// A copy of one account's created orders.
    pub(crate) fn created(&self, account: usize) -> Vec<Value> {
        self.account(account).orders.clone()
    }
}
