//! The fleet's cache in Redis: answers stored once for every replica, per
//! tenant, with their TTL and `stale_if_error`, within `cache.shared_max_bytes`;
//! the fill lock that lets replicas missing at once wait for one CRM read;
//! and the generations that make a write to a dictionary drop its entries
//! fleet-wide.
//!
//! Every call goes through the [`RedisLink`], so it is bounded by
//! `redis.timeout` and returns at once (as "unavailable") while Redis is
//! down: the cache then works locally and no request waits on Redis. Entry
//! keys are hashes of the read (never a query in a key name; queries hold
//! customer data), all under one hash tag (`{cache}`) so each script runs on
//! one Cluster node. Never a client key: the read's identity holds none.
//! The scripts are in `lua/`, one file each, with KEYS, ARGV and reply in
//! their headers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use redis::{Script, Value};
use sha2::{Digest, Sha256};

use super::key::{dictionary, Key};
use super::store::{BufferedAnswer, Entry};
use crate::redis_link::RedisLink;

const GET: &str = include_str!("lua/fleet_get.lua");
const PUT: &str = include_str!("lua/fleet_put.lua");
const RELEASE: &str = include_str!("lua/fleet_release.lua");

/// How long a fill lock lives at most: the longest one replica's CRM read
/// may keep the others waiting (it is released as soon as the read ends).
pub const FILL_LEASE: Duration = Duration::from_secs(5);
/// How often a replica waiting for another's fill looks for the entry.
const FILL_POLL: Duration = Duration::from_millis(20);

/// An entry read from Redis.
#[derive(Debug)]
pub struct FleetEntry {
    /// The answer.
    pub answer: Arc<BufferedAnswer>,
    /// Time since it was stored (Redis's clock).
    pub age: Duration,
    /// Its TTL.
    pub ttl: Duration,
}

impl FleetEntry {
    /// Within its TTL.
    pub fn fresh(&self) -> bool {
        self.age < self.ttl
    }

    /// Its remaining freshness.
    pub fn remaining(&self) -> Duration {
        self.ttl.saturating_sub(self.age)
    }

    /// As a local entry (for `stale_if_error`), read under `generation`.
    pub fn as_stale(&self, generation: u64) -> Entry {
        Entry::stored_ago(self.answer.clone(), self.age, self.ttl, generation)
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// Redis did not answer (down, slow): work locally.
    Unavailable,
    /// No live entry; `generation` is what a fill must store under.
    Miss {
        /// The dictionary's generation now.
        generation: String,
    },
    /// An entry (fresh or stale: see [`FleetEntry::fresh`]).
    Found {
        /// The entry.
        entry: FleetEntry,
        /// The dictionary's generation now (a refill stores under it).
        generation: String,
    },
}

/// Who fills a missing entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Fill {
    /// This replica holds the lock: read the CRM, then [`FleetStore::put`]
    /// and [`FleetStore::release`].
    Mine(String),
    /// Another replica is reading it: [`FleetStore::wait_for_fill`].
    Theirs,
    /// Redis did not answer: read the CRM without the fleet.
    Unavailable,
}

/// The Redis side of the cache.
pub struct FleetStore {
    link: Arc<RedisLink>,
    prefix: String,
    max_bytes: AtomicU64,
    get: Script,
    put: Script,
    release: Script,
}

impl FleetStore {
    /// A store on `link`, its keys under `prefix`, bounded by `max_bytes`.
    pub fn new(link: Arc<RedisLink>, prefix: &str, max_bytes: u64) -> FleetStore {
        FleetStore {
            link,
            prefix: prefix.to_string(),
            max_bytes: AtomicU64::new(max_bytes),
            get: Script::new(GET),
            put: Script::new(PUT),
            release: Script::new(RELEASE),
        }
    }

    /// Applies a reloaded bound (the next store enforces it).
    pub fn set_max_bytes(&self, max_bytes: u64) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    /// Whether Redis is usable now (not known to be down).
    pub fn available(&self) -> bool {
        !self.link.is_down()
    }

    fn tagged(&self, rest: &str) -> String {
        format!("{}:{{cache}}:{rest}", self.prefix)
    }

    /// The entry's key: tenant and read, hashed.
    fn entry_key(&self, key: &Key) -> String {
        let mut h = Sha256::new();
        h.update(key.tenant.as_bytes());
        h.update([0]);
        h.update(key.canonical().as_bytes());
        self.tagged(&format!("e:{}", hex::encode(&h.finalize()[..16])))
    }

    /// The generation counter of a tenant's dictionary (`-` for cached
    /// reads that are not a dictionary).
    fn generation_key(&self, tenant: &str, dict: &str) -> String {
        self.tagged(&format!("g:{tenant}:{dict}"))
    }

    fn lock_key(&self, key: &Key) -> String {
        format!("{}:lock", self.entry_key(key))
    }

    /// Looks `key` up.
    pub async fn lookup(&self, key: &Key) -> Lookup {
        let mut inv = self.get.prepare_invoke();
        inv.key(self.entry_key(key))
            .key(self.generation_key(&key.tenant, dictionary(key.path()).unwrap_or("-")));
        let reply: Option<Vec<Value>> = self
            .link
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await;
        let Some(reply) = reply else {
            return Lookup::Unavailable;
        };
        let text = |v: Option<&Value>| -> Option<Vec<u8>> {
            match v? {
                Value::BulkString(b) => Some(b.clone()),
                Value::SimpleString(s) => Some(s.clone().into_bytes()),
                Value::Int(i) => Some(i.to_string().into_bytes()),
                _ => None,
            }
        };
        let num =
            |v: Option<&Value>| -> Option<u64> { String::from_utf8(text(v)?).ok()?.parse().ok() };
        let generation = text(reply.first())
            .and_then(|g| String::from_utf8(g).ok())
            .unwrap_or_else(|| "0".into());
        if reply.len() < 6 {
            return Lookup::Miss { generation };
        }
        let (Some(status), Some(headers), Some(body), Some(age), Some(ttl)) = (
            num(reply.get(1)).and_then(|s| StatusCode::from_u16(s as u16).ok()),
            text(reply.get(2)),
            text(reply.get(3)),
            num(reply.get(4)),
            num(reply.get(5)),
        ) else {
            return Lookup::Miss { generation };
        };
        Lookup::Found {
            entry: FleetEntry {
                answer: Arc::new(BufferedAnswer {
                    status,
                    headers: decode_headers(&headers),
                    body: Bytes::from(body),
                }),
                age: Duration::from_micros(age),
                ttl: Duration::from_millis(ttl),
            },
            generation,
        }
    }

    /// Stores `answer` for the fleet, kept `ttl` plus `stale` (the
    /// `stale_if_error` grace), unless a write to its dictionary happened
    /// since `generation` was read. True if stored.
    pub async fn put(
        &self,
        key: &Key,
        answer: &BufferedAnswer,
        ttl: Duration,
        stale: Duration,
        generation: &str,
    ) -> bool {
        let mut inv = self.put.prepare_invoke();
        inv.key(self.entry_key(key))
            .key(self.generation_key(&key.tenant, dictionary(key.path()).unwrap_or("-")))
            .key(self.tagged("index"))
            .key(self.tagged("bytes"))
            .key(self.tagged("sizes"))
            .arg(answer.status.as_u16())
            .arg(encode_headers(&answer.headers))
            .arg(answer.body.as_ref())
            .arg(ttl.as_millis().max(1) as u64)
            .arg((ttl + stale).as_millis().max(1) as u64)
            .arg(generation)
            .arg(self.max_bytes.load(Ordering::Relaxed));
        self.link
            .call(|mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            .await
            == Some(1)
    }

    /// Takes the fill lock of `key` (`SET NX PX`), or finds another
    /// replica holding it.
    pub async fn fill(&self, key: &Key) -> Fill {
        let token = uuid::Uuid::new_v4().to_string();
        let lock = self.lock_key(key);
        let t = token.clone();
        let got: Option<Option<String>> = self
            .link
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(lock)
                    .arg(t)
                    .arg("NX")
                    .arg("PX")
                    .arg(FILL_LEASE.as_millis() as u64)
                    .query_async(&mut c)
                    .await
            })
            .await;
        match got {
            None => Fill::Unavailable,
            Some(Some(_)) => Fill::Mine(token),
            Some(None) => Fill::Theirs,
        }
    }

    /// Releases a fill lock taken by [`FleetStore::fill`].
    pub async fn release(&self, key: &Key, token: &str) {
        let mut inv = self.release.prepare_invoke();
        inv.key(self.lock_key(key)).arg(token);
        let _: Option<i64> = self
            .link
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await;
    }

    /// Waits for another replica's fill of `key`: the entry once it is
    /// stored, or what the lookup finds when the lock is gone (the other
    /// read failed) or the lease ran out. Each look is one bounded Redis
    /// call; the whole wait is bounded by [`FILL_LEASE`], and ends at once
    /// if Redis stops answering.
    pub async fn wait_for_fill(&self, key: &Key) -> Lookup {
        let deadline = tokio::time::Instant::now() + FILL_LEASE;
        loop {
            match self.lookup(key).await {
                Lookup::Found { entry, generation } if entry.fresh() => {
                    return Lookup::Found { entry, generation }
                }
                Lookup::Unavailable => return Lookup::Unavailable,
                other => {
                    let lock = self.lock_key(key);
                    let held: Option<bool> = self
                        .link
                        .call(|mut c| async move {
                            redis::cmd("EXISTS").arg(lock).query_async(&mut c).await
                        })
                        .await;
                    if held != Some(true) || tokio::time::Instant::now() >= deadline {
                        return other;
                    }
                }
            }
            tokio::time::sleep(FILL_POLL).await;
        }
    }

    /// A write to a tenant's dictionary `dict`: every replica's entries of
    /// it (in Redis) are dead from now. Best effort: with Redis down,
    /// entries live out their TTL (each replica's L1 is dropped locally).
    pub async fn invalidate(&self, tenant: &str, dict: &str) {
        let gen = self.generation_key(tenant, dict);
        let _: Option<i64> = self
            .link
            .call(|mut c| async move {
                let n = redis::cmd("INCR").arg(&gen).query_async(&mut c).await?;
                // Generations outlive every entry (one day; entries live
                // their TTL plus stale_if_error).
                redis::cmd("PEXPIRE")
                    .arg(&gen)
                    .arg(86_400_000u64)
                    .query_async::<i64>(&mut c)
                    .await?;
                Ok(n)
            })
            .await;
    }
}

/// `name: value\r\n` per header (values cannot hold CR or LF).
fn encode_headers(headers: &HeaderMap) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn decode_headers(bytes: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in bytes.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(at) = line.windows(2).position(|w| w == b": ") else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..at]),
            HeaderValue::from_bytes(&line[at + 2..]),
        ) {
            headers.append(name, value);
        }
    }
    headers
}
