//! The config in force: a [`Snapshot`] (the validated config and the tenant
//! index built from it) behind one atomic pointer ([`Live`]).
//!
//! A request takes one snapshot and keeps it, so it sees either the old
//! config or the new one, never a mix. Only a reload puts a new snapshot in
//! force. This module owns no other state and must never log a key.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::tenant::Tenants;

/// The config in force and what is derived from it, as of one moment.
pub struct Snapshot {
    /// The validated config.
    pub config: Config,
    /// Tenants indexed by name and client key.
    pub tenants: Tenants,
}

impl Snapshot {
    /// The snapshot of `config`, its tenants indexed.
    pub fn new(config: Config) -> Snapshot {
        let tenants = Tenants::new(&config.tenants);
        Snapshot { config, tenants }
    }
}

/// The snapshot in force, swapped whole by a reload.
pub struct Live {
    current: ArcSwap<Snapshot>,
}

impl Live {
    /// `config` in force.
    pub fn new(config: Config) -> Live {
        Live {
            current: ArcSwap::from_pointee(Snapshot::new(config)),
        }
    }

    /// The config in force (keep it for one request).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The config in force, for a read that ends before the next `.await`:
    /// unlike [`Live::snapshot`] it writes nothing shared (no reference
    /// count that every worker's requests would pass between cores).
    pub fn peek(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Puts `snapshot` in force. Only a reload calls this, under its lock.
    pub(crate) fn put(&self, snapshot: Snapshot) {
        self.current.store(Arc::new(snapshot));
    }
}
