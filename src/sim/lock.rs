//! Mutex locking for the simulator's shared state. It owns one policy and
//! must never hold a lock across an `.await`: callers lock, copy or change,
//! and drop.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks a mutex, ignoring poisoning: a panicked test thread must not hide
/// the records from the assertions that explain it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
