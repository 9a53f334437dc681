//! The orders each simulated account holds beyond the seeded ones: those
//! created through `orders/create`, with the external ids they claimed.
//!
//! Only storage: validation and answers live in the handlers. It never
//! forgets an order while the simulator runs.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use serde_json::{Map, Value};

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

impl Created {
    /// Whether `ext` is already claimed: by a seeded order (`seed-{id}`,
    /// one of the first `seeded`) or by a created one.
    pub(crate) fn taken(&self, ext: &str, seeded: u64) -> bool {
        let is_seed = ext
            .strip_prefix("seed-")
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|id| {
                (1..=seeded).contains(&id) && ext == super::api::seed_external_id(id)
            });
        is_seed || self.external_ids.contains(ext)
    }

    /// Stores `order` as `orders/create` does: the next id after the
    /// `seeded` ones and those created, its `site`, a `number` when it has
    /// none; claims `ext`. Returns the id and the stored order.
    pub(crate) fn insert(
        &mut self,
        seeded: u64,
        mut order: Map<String, Value>,
        site: String,
        ext: Option<String>,
    ) -> (u64, Value) {
        let id = seeded + self.orders.len() as u64 + 1;
        order.insert("id".into(), id.into());
        order.insert("site".into(), site.into());
        order
            .entry("number")
            .or_insert_with(|| format!("{id}A").into());
        let order = Value::Object(order);
        self.orders.push(order.clone());
        if let Some(ext) = ext {
            self.external_ids.insert(ext);
        }
        (id, order)
    }
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
