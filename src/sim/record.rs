//! The ledger of what the simulator received: one [`Received`] per request,
//! kept in arrival order, together with the rate limiter that judges them.
//!
//! The record and the window count are made under one lock with one
//! timestamp, so the order of records, their `at` and the simulator's 503
//! decisions always agree; with the strict limiter,
//! [`super::window::max_in_window`] over the records reproduces exactly
//! what the server counted.

use std::time::Duration;

use tokio::time::Instant;

use super::class::Class;
use super::limiter::{Limiter, LimiterKind};
use super::request::Received;

/// Identifies a record across `clear_records` calls: a cleared record's
/// later updates are dropped instead of landing on a newer one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordId(u64);

/// The records plus the limiter they were judged by.
#[derive(Debug)]
pub(crate) struct Ledger {
    /// Sequence number of `records[0]`.
    base: u64,
    records: Vec<Received>,
    limiter: Limiter<(std::net::IpAddr, Class)>,
}

impl Ledger {
    /// An empty ledger judging arrivals by `kind`.
    pub(crate) fn new(kind: LimiterKind) -> Self {
        Ledger {
            base: 0,
            records: Vec::new(),
            limiter: Limiter::new(kind, Instant::now()),
        }
    }

    /// The limiter model in force.
    pub(crate) fn limiter(&self) -> LimiterKind {
        self.limiter.kind()
    }

    /// Changes the limiter model; its counts start afresh.
    pub(crate) fn set_limiter(&mut self, kind: LimiterKind) {
        self.limiter = Limiter::new(kind, Instant::now());
    }

    /// Stamps `rec.at` with the current time, counts it and stores it.
    /// Returns its id and whether it is over `limit`.
    pub(crate) fn arrive(
        &mut self,
        mut rec: Received,
        window: Duration,
        limit: u32,
    ) -> (RecordId, bool) {
        // Taken under the lock so arrival order and timestamps agree.
        rec.at = Instant::now();
        let over = self
            .limiter
            .refuses((rec.source_ip, rec.class), rec.at, window, limit);
        let id = RecordId(self.base + self.records.len() as u64);
        self.records.push(rec);
        (id, over)
    }

    /// Changes a record if it has not been cleared since.
    pub(crate) fn update(&mut self, id: RecordId, f: impl FnOnce(&mut Received)) {
        if let Some(idx) = id.0.checked_sub(self.base) {
            if let Some(rec) = self.records.get_mut(idx as usize) {
                f(rec);
            }
        }
    }

    pub(crate) fn records(&self) -> Vec<Received> {
        self.records.clone()
    }

    pub(crate) fn clear_records(&mut self) {
        self.base += self.records.len() as u64;
        self.records.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::net::{IpAddr, Ipv4Addr};

    fn rec(path: &str) -> Received {
        Received {
            source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            method: "GET".into(),
            version: axum::http::Version::HTTP_11,
            path: path.into(),
            query: None,
            headers: vec![("x-api-key".into(), "k".into())],
            body: Bytes::new(),
            form: Vec::new(),
            at: Instant::now(),
            class: Class::General,
            status: 0,
            api_key: None,
        }
    }

    #[test]
    fn updates_after_clear_do_not_hit_newer_records() {
        let mut ledger = Ledger::new(LimiterKind::Strict);
        let w = Duration::from_secs(1);
        let (old, _) = ledger.arrive(rec("/a"), w, 10);
        ledger.clear_records();
        let (new, _) = ledger.arrive(rec("/b"), w, 10);
        ledger.update(old, |r| r.status = 500);
        ledger.update(new, |r| r.status = 200);
        let recs = ledger.records();
        assert_eq!(recs.len(), 1);
        assert_eq!((recs[0].path.as_str(), recs[0].status), ("/b", 200));
        assert_eq!(recs[0].header("X-Api-Key"), Some("k"));
        assert_eq!(recs[0].header("host"), None);
    }
}
