//! What the simulator received: one [`Received`] per request, kept in arrival
//! order in a ledger that also owns the rate-limit windows.
//!
//! The record and the window count are made under one lock with one
//! timestamp, so the order of records, their `at` and the simulator's 503
//! decisions always agree; [`super::max_in_window`] over the records
//! reproduces exactly what the server counted.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::window::SlidingWindow;
use crate::classify::Class;

/// One request as the simulator saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The TCP peer's address (the gateway's egress IP).
    pub source_ip: IpAddr,
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string exactly as received (no re-encoding).
    pub query: Option<String>,
    /// Headers in received order, names lowercase, values lossily UTF-8.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Bytes,
    /// Decoded `application/x-www-form-urlencoded` pairs (empty otherwise).
    pub form: Vec<(String, String)>,
    /// Arrival time (before the body was read).
    pub at: Instant,
    /// The rate-limit class the path falls in.
    pub class: Class,
    /// Status answered; 0 if the connection was reset or the answer never
    /// went out (stalled and the client gave up, or still in progress).
    pub status: u16,
    /// The key presented: `X-API-KEY` header, else `apiKey` in the query,
    /// else `apiKey` in a form body.
    pub api_key: Option<String>,
}

impl Received {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Identifies a record across `clear_records` calls: a cleared record's
/// later updates are dropped instead of landing on a newer one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordId(u64);

/// The records plus the windows they were counted in.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Sequence number of `records[0]`.
    base: u64,
    records: Vec<Received>,
    windows: SlidingWindow,
}

impl Ledger {
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
            .windows
            .arrive((rec.source_ip, rec.class), rec.at, window, limit);
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
    use std::net::Ipv4Addr;

    fn rec(path: &str) -> Received {
        Received {
            source_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            method: "GET".into(),
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
        let mut ledger = Ledger::default();
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
