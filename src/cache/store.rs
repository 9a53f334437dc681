//! The TTL cache of answers: one moka cache for all tenants, bounded by
//! bytes, each entry living its own TTL plus the `stale_if_error` grace.
//!
//! Keys carry the tenant, so tenants never share an entry. A write to a
//! dictionary bumps that tenant's generation of the dictionary: entries
//! filled from a read that started before the write are dead at once, even
//! if the read finished after it (no entry outlives a write it might not
//! reflect). The store holds answers only: never a key, never a request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use dashmap::DashMap;
use moka::sync::Cache;
use moka::Expiry;
use tokio::time::Instant;

use super::key::{dictionary, Key};

/// A whole answer, buffered: what every joiner and every hit gets.
#[derive(Debug)]
pub struct BufferedAnswer {
    /// The CRM's status.
    pub status: StatusCode,
    /// The CRM's end-to-end headers.
    pub headers: HeaderMap,
    /// The body, shared (a clone is a reference count).
    pub body: Bytes,
}

/// `X-Crmgate-Cache` as a constant name: no parsing per answer.
pub(super) const CACHE_HEADER_NAME: axum::http::HeaderName =
    axum::http::HeaderName::from_static(super::CACHE_HEADER);

impl BufferedAnswer {
    /// The answer as a response, with `X-Crmgate-Cache: {result}`.
    pub fn response(&self, result: HeaderValue) -> Response {
        let mut resp = Response::new(Body::from(self.body.clone()));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        resp.headers_mut().insert(CACHE_HEADER_NAME, result);
        resp
    }

    /// Bytes the answer takes, roughly: body, header names and values.
    fn weight(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        self.body.len() + headers + 64
    }
}

/// One cached answer and when it was stored.
#[derive(Debug)]
pub struct Entry {
    /// The answer.
    pub answer: Arc<BufferedAnswer>,
    /// When the answer arrived.
    pub stored: Instant,
    /// Fresh for this long.
    pub ttl: Duration,
    /// Kept this long (TTL plus the stale grace), then evicted.
    keep: Duration,
    /// The write generation its read started under.
    generation: u64,
}

impl Entry {
    /// Still within its TTL at `now`.
    pub fn fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored) < self.ttl
    }

    /// Seconds since it was stored (the `Age` header).
    pub fn age(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.stored).as_secs()
    }

    /// An entry stored `age` ago (read from the fleet's cache), under
    /// `generation`.
    pub fn stored_ago(
        answer: Arc<BufferedAnswer>,
        age: Duration,
        ttl: Duration,
        generation: u64,
    ) -> Entry {
        let now = Instant::now();
        Entry {
            answer,
            stored: now.checked_sub(age).unwrap_or(now),
            ttl,
            keep: ttl,
            generation,
        }
    }

    /// Past its TTL but within `stale_if_error` at `now`.
    pub fn usable_stale(&self, now: Instant, grace: Duration) -> bool {
        now.saturating_duration_since(self.stored) < self.ttl + grace
    }
}

/// Per entry, moka keeps it for its own TTL plus the stale grace.
struct PerEntry;

impl Expiry<Key, Arc<Entry>> for PerEntry {
    fn expire_after_create(
        &self,
        _key: &Key,
        entry: &Arc<Entry>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(entry.keep)
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        entry: &Arc<Entry>,
        _now: std::time::Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.keep)
    }
}

/// The cache of answers and the dictionaries' write generations.
pub struct Store {
    cache: Cache<Key, Arc<Entry>>,
    /// Bumped by every dictionary write, in any tenant.
    generation: AtomicU64,
    /// Generation of the last write per (tenant, dictionary bucket). Names
    /// are hashed into [`BUCKETS`] buckets, so callers writing to made-up
    /// dictionaries cannot grow the map; a shared bucket only drops a little
    /// more than needed.
    writes: DashMap<(Arc<str>, u16), u64>,
}

/// Dictionary buckets per tenant.
const BUCKETS: u64 = 1024;

fn bucket(dict: &str) -> u16 {
    use std::hash::{Hash, Hasher};
    // Deterministic (fixed keys): the same name always lands in one bucket.
    let mut h = std::hash::DefaultHasher::new();
    dict.hash(&mut h);
    (h.finish() % BUCKETS) as u16
}

impl Store {
    /// A store holding at most `max_bytes` of answers and keys.
    pub fn new(max_bytes: u64) -> Store {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &Key, e: &Arc<Entry>| {
                u32::try_from(k.weight() + e.answer.weight()).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntry)
            .support_invalidation_closures()
            .build();
        Store {
            cache,
            generation: AtomicU64::new(0),
            writes: DashMap::new(),
        }
    }

    /// The generation a read starts under; pass it to [`Store::insert`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The entry for `key`, unless evicted or invalidated by a write.
    pub fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        let entry = self.cache.get(key)?;
        // The common case: no write at all since the entry's read began.
        if entry.generation == self.generation() {
            return Some(entry);
        }
        let dict = dictionary(key.path())?;
        let written = self
            .writes
            .get(&(key.tenant.clone(), bucket(dict)))
            .map_or(0, |g| *g);
        (written <= entry.generation).then_some(entry)
    }

    /// Stores `answer` for `key`, read under `generation`, fresh for `ttl`
    /// and kept `grace` longer for `stale_if_error`.
    pub fn insert(
        &self,
        key: Key,
        answer: Arc<BufferedAnswer>,
        ttl: Duration,
        grace: Duration,
        generation: u64,
    ) {
        let entry = Entry {
            answer,
            stored: Instant::now(),
            ttl,
            keep: ttl + grace,
            generation,
        };
        self.cache.insert(key, Arc::new(entry));
    }

    /// A write to `dict` of `tenant`: every entry of that dictionary read
    /// before now is dead at once, and its memory freed soon after.
    pub fn invalidate(&self, tenant: &Arc<str>, dict: &str) {
        let g = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.writes.insert((tenant.clone(), bucket(dict)), g);
        let (tenant, dict) = (tenant.clone(), dict.to_string());
        // Only fails when closures are not supported; they are.
        let _ = self.cache.invalidate_entries_if(move |k, _| {
            k.tenant == tenant && dictionary(k.path()) == Some(dict.as_str())
        });
    }

    /// Bytes held (keys and answers, as weighed) and entries, after
    /// applying pending evictions.
    pub fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.weighted_size(), self.cache.entry_count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(bytes: usize) -> Arc<BufferedAnswer> {
        Arc::new(BufferedAnswer {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; bytes]),
        })
    }

    fn key(tenant: &str, path: &str) -> Key {
        Key::new(&tenant.into(), path, None)
    }

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn a_write_kills_its_dictionary_of_its_tenant_only() {
        let s = Store::new(1 << 20);
        let g = s.generation();
        for (t, p) in [
            ("a", "/api/v5/reference/statuses"),
            ("a", "/api/v5/reference/sites"),
            ("b", "/api/v5/reference/statuses"),
        ] {
            s.insert(key(t, p), answer(10), MIN, MIN, g);
        }
        s.invalidate(&"a".into(), "statuses");
        assert!(s.get(&key("a", "/api/v5/reference/statuses")).is_none());
        assert!(s.get(&key("a", "/api/v5/reference/sites")).is_some());
        assert!(s.get(&key("b", "/api/v5/reference/statuses")).is_some());
        // A read that began before the write stores a dead entry.
        s.insert(
            key("a", "/api/v5/reference/statuses"),
            answer(10),
            MIN,
            MIN,
            g,
        );
        assert!(s.get(&key("a", "/api/v5/reference/statuses")).is_none());
        let after = s.generation();
        s.insert(
            key("a", "/api/v5/reference/statuses"),
            answer(10),
            MIN,
            MIN,
            after,
        );
        assert!(s.get(&key("a", "/api/v5/reference/statuses")).is_some());
    }

    #[test]
    fn writes_to_made_up_dictionaries_do_not_grow_the_map() {
        let s = Store::new(1 << 20);
        for i in 0..5000 {
            s.invalidate(&"a".into(), &format!("made-up-{i}"));
        }
        assert!(s.writes.len() <= BUCKETS as usize);
    }

    #[test]
    fn the_byte_bound_holds() {
        let s = Store::new(100_000);
        for i in 0..100 {
            s.insert(
                key("a", &format!("/api/v5/reference/d{i}")),
                answer(10_000),
                MIN,
                MIN,
                0,
            );
        }
        let (bytes, entries) = s.usage();
        assert!(bytes <= 100_000, "{bytes} bytes held");
        assert!((1..=10).contains(&entries), "{entries} entries");
    }
}
