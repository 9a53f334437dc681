//! The pool of buffered bytes: request bodies, and answers a stage holds
//! (a shared GET's, an export's pages), all bounded together by
//! `limits.max_buffered_bytes`.
//!
//! A [`BodyLease`] holds bytes in the [`BodyPool`] and gives them back when
//! dropped, whatever path the request takes. This module only counts: it
//! never reads, keeps or logs a byte of a body.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes of request bodies held right now, across all requests.
#[derive(Debug, Default)]
pub struct BodyPool {
    held: AtomicUsize,
}

impl BodyPool {
    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// The bytes one request holds in the pool; given back when dropped.
#[derive(Debug)]
pub struct BodyLease {
    pool: Arc<BodyPool>,
    bytes: usize,
}

impl BodyLease {
    /// An empty lease.
    pub fn new(pool: &Arc<BodyPool>) -> BodyLease {
        BodyLease {
            pool: pool.clone(),
            bytes: 0,
        }
    }

    /// The pool this lease holds bytes in (where a stage's further
    /// buffers for the same request are counted too).
    pub fn pool(&self) -> &Arc<BodyPool> {
        &self.pool
    }

    /// Bytes this lease holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `more` bytes, unless that would pass `limit` in total.
    pub fn grow(&mut self, more: usize, limit: usize) -> bool {
        let pool = &self.pool.held;
        let mut held = pool.load(Ordering::Relaxed);
        loop {
            let Some(next) = held.checked_add(more).filter(|n| *n <= limit) else {
                return false;
            };
            match pool.compare_exchange_weak(held, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.bytes += more;
                    return true;
                }
                Err(now) => held = now,
            }
        }
    }
}

impl Drop for BodyLease {
    fn drop(&mut self) {
        self.pool.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}
