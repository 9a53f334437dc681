//! Budgets shared between replicas through Redis.
//!
//! When several crmgate replicas leave through one NAT IP, each one's local
//! budget would add up at the CRM. With `limits.backend = "redis"` a lane's
//! dispatcher asks Redis for a slot instead: one Lua script, run atomically
//! on Redis server time (`TIME`), applies the same pacing and sliding-log
//! rules as [`super::Budget`] to the budget of every egress identity, picks
//! the one that frees first, *reserves* that slot and returns how long to
//! wait for it. The replica sleeps that long and grants the slot locally, so
//! queueing, fairness, deadlines and cancellation stay local and replicas'
//! clocks never matter (only durations measured by Redis cross the wire).
//! One round trip per granted request, plus one per lane when a connection
//! to the CRM is opened, and one when a send leaves late (both rare).
//!
//! When Redis is unreachable or slower than `redis.timeout`, the lane uses
//! its local budget, shaped at `limit / redis.expected_replicas`, without
//! waiting on Redis again; the [`RedisLink`]'s prober pings it every second
//! and ends the fallback when it answers. The link owns the connection (one
//! server, Sentinel or Cluster), its state and the redaction of causes; this
//! module owns the scripts and their keys. Every key of one script call
//! carries the lane's hash tag (`{general}`, `{general:acme}`), so a Redis
//! Cluster keeps them in one slot.
//!
//! The scripts live in `lua/`, one file each, with their KEYS, ARGV and
//! reply in the header. Their rules are [`super::Budget`]'s, which is the
//! reference; tests/budget_equivalence/ feeds both the same events.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Script;

use crate::classify::Class;
use crate::config::{AdaptiveConfig, Config};
use crate::redis_link::{LinkState, RedisLink};

// Each script is a clock prelude (defining `now`) followed by its body.
/// Defines `now` from Redis's `TIME` (production).
const CLOCK_REDIS: &str = include_str!("lua/clock_redis.lua");
/// Defines `now` from the last ARGV (tests, see [`RedisBudget::with_clock`]).
const CLOCK_ARGV: &str = include_str!("lua/clock_argv.lua");
const RESERVE: &str = include_str!("lua/reserve.lua");
const THROTTLE: &str = include_str!("lua/throttle.lua");
/// Adaptation's functions, prepended to the scripts that use them.
const ADAPT: &str = include_str!("lua/adapt.lua");
const CONNECTED: &str = include_str!("lua/connected.lua");
const DEPARTED: &str = include_str!("lua/departed.lua");

/// A slot reserved in the shared log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The egress whose budget holds the slot.
    pub egress: usize,
    /// How long to wait for the slot, from when the script ran.
    pub wait: Duration,
    /// The slot in the log's own time base (Redis µs): what
    /// [`RedisBudget::departed`] takes when the send leaves late.
    pub slot_us: u64,
}

/// The widened window in µs, as the scripts take it.
fn window_us(config: &Config) -> u64 {
    (Duration::from_secs(1) + config.limits.jitter_allowance).as_micros() as u64
}

/// The Redis side of shared budgets.
pub struct RedisBudget {
    link: Arc<RedisLink>,
    prefix: String,
    /// Budget name of each egress, in config order.
    ids: Vec<String>,
    limits: [AtomicU32; 2],
    window_us: AtomicU64,
    adaptive: Mutex<AdaptiveConfig>,
    reserve: Script,
    throttle: Script,
    connected: Script,
    departed: Script,
    /// `None`: the scripts read Redis's `TIME`. `Some`: tests set "now"
    /// (µs) here and every call passes it as the scripts' last ARGV.
    clock: Option<Arc<AtomicU64>>,
}

impl RedisBudget {
    /// Prepares the client; nothing is connected until the first slot (a
    /// Redis that cannot be reached, or a URL it rejects, means fallback).
    pub fn new(config: &Config) -> RedisBudget {
        RedisBudget::build(config, Arc::new(RedisLink::new(&config.redis)), None)
    }

    /// Like [`RedisBudget::new`], on a link other users share (the fleet cache).
    pub fn with_link(config: &Config, link: Arc<RedisLink>) -> RedisBudget {
        RedisBudget::build(config, link, None)
    }

    /// For tests only: like [`RedisBudget::new`], but the scripts take "now" (µs
    /// since any epoch) from `clock` instead of Redis's `TIME`, so a test can
    /// drive Redis and a local [`super::Budget`] on one time base.
    #[doc(hidden)]
    pub fn with_clock(config: &Config, clock: Arc<AtomicU64>) -> RedisBudget {
        RedisBudget::build(config, Arc::new(RedisLink::new(&config.redis)), Some(clock))
    }

    fn build(config: &Config, link: Arc<RedisLink>, clock: Option<Arc<AtomicU64>>) -> RedisBudget {
        let r = &config.redis;
        let ids = if config.upstream.egress_ips.is_empty() {
            vec![config
                .upstream
                .egress_id
                .clone()
                .unwrap_or_else(|| "default".into())]
        } else if let (Some(id), 1) = (&config.upstream.egress_id, config.upstream.egress_ips.len())
        {
            vec![id.clone()]
        } else {
            config
                .upstream
                .egress_ips
                .iter()
                .map(|ip| ip.to_string())
                .collect()
        };
        let prelude = if clock.is_some() {
            CLOCK_ARGV
        } else {
            CLOCK_REDIS
        };
        RedisBudget {
            link,
            prefix: r.key_prefix.clone(),
            ids,
            limits: Class::ALL.map(|c| AtomicU32::new(config.rate(c).get())),
            window_us: AtomicU64::new(window_us(config)),
            adaptive: Mutex::new(config.limits.adaptive.clone()),
            reserve: Script::new(&format!("{prelude}{ADAPT}{RESERVE}")),
            throttle: Script::new(&format!("{prelude}{ADAPT}{THROTTLE}")),
            connected: Script::new(&format!("{prelude}{CONNECTED}")),
            // Both its times are on the log's base: no clock.
            departed: Script::new(DEPARTED),
            clock,
        }
    }

    /// Applies reloaded limits, window and adaptation settings.
    pub fn reconfigure(&self, config: &Config) {
        self.window_us.store(window_us(config), Ordering::Relaxed);
        for (i, class) in Class::ALL.into_iter().enumerate() {
            self.limits[i].store(config.rate(class).get(), Ordering::Relaxed);
        }
        *self.adaptive.lock().unwrap_or_else(|p| p.into_inner()) = config.limits.adaptive.clone();
    }

    /// True while the local fallback budget is in use (Redis failed).
    pub fn in_fallback(&self) -> bool {
        self.link.is_down()
    }

    /// What is known about Redis now.
    pub fn state(&self) -> LinkState {
        self.link.state()
    }

    /// The link to Redis.
    pub fn link(&self) -> &Arc<RedisLink> {
        &self.link
    }

    /// Redis round trips made so far.
    pub fn calls(&self) -> u64 {
        self.link.calls()
    }

    /// The state hash and send log of one budget:
    /// `PREFIX:budget:{CLASS[:TENANT]}:EGRESS` and `…:log`. The braces are a
    /// Redis Cluster hash tag: the keys of every egress of one lane, which a
    /// reservation reads together, share one slot.
    fn keys(&self, egress: usize, class: Class, tenant: Option<&str>) -> (String, String) {
        let tag = match tenant {
            Some(t) => format!("{}:{t}", class.as_str()),
            None => class.as_str().to_string(),
        };
        let key = format!("{}:budget:{{{tag}}}:{}", self.prefix, self.ids[egress]);
        let log = format!("{key}:log");
        (key, log)
    }

    fn ttl_ms(&self) -> u64 {
        // Long enough to outlive any window and pause; short enough that an
        // abandoned budget does not linger.
        600_000
    }

    /// When this replica last came back from fallback, if it ever did
    /// (lanes stay careful for a while after it, even those that were idle
    /// meanwhile).
    pub fn rejoined_at(&self) -> Option<tokio::time::Instant> {
        self.link.rejoined_at()
    }

    /// Reserves the next shared slot for a lane: which egress, and how long
    /// to wait for it, and the slot as the log holds it. `None` means "use the local budget now" (Redis is
    /// down, slow, or was recently).
    /// `allowed` has a bit per egress (bit 0 = egress 0) that may be used;
    /// it must not be empty.
    pub async fn reserve(
        &self,
        class: Class,
        tenant: Option<&str>,
        allowed: u64,
    ) -> Option<Reservation> {
        // In fallback the dispatcher never waits on Redis: the prober
        // (below) finds out when it is back.
        if self.in_fallback() {
            return None;
        }
        let limit = self.limits[super::class_index(class)].load(Ordering::Relaxed);
        let a = self
            .adaptive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut invocation = self.reserve.prepare_invoke();
        for egress in 0..self.ids.len() {
            let (key, log) = self.keys(egress, class, tenant);
            invocation.key(key).key(log);
        }
        let mask: String = (0..self.ids.len())
            .map(|i| {
                if i >= 64 || allowed & (1 << i) != 0 {
                    '1'
                } else {
                    '0'
                }
            })
            .collect();
        invocation
            .arg(limit)
            .arg(self.window_us.load(Ordering::Relaxed))
            .arg(a.recovery_per_second)
            .arg(self.ttl_ms())
            .arg(mask)
            .arg(if a.enabled { "1" } else { "0" })
            .arg(a.decrease_factor)
            .arg(a.min_rate.min(f64::from(limit)));
        let (egress, wait_us, slot_us): (usize, i64, i64) = self.run(invocation).await?;
        Some(Reservation {
            egress: egress.min(self.ids.len() - 1),
            wait: Duration::from_micros(wait_us.max(0) as u64),
            slot_us: slot_us.max(0) as u64,
        })
    }

    /// Pings Redis at once and whenever it is not known to answer, off the
    /// dispatchers' path (see [`RedisLink::probe`]). Runs until `stop`.
    pub async fn probe(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        self.link.clone().probe(stop).await
    }

    /// Runs one script call within `redis.timeout`. A failure or timeout
    /// switches to the fallback budget (logged once, with its cause); a
    /// success ends it.
    async fn run<T: redis::FromRedisValue>(
        &self,
        mut invocation: redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        if let Some(clock) = &self.clock {
            // The ARGV clock reads "now" from the last argument.
            invocation.arg(clock.load(Ordering::Relaxed));
        }
        self.link
            .call(|mut conn| async move { invocation.invoke_async(&mut conn).await })
            .await
    }

    /// Reports that sends through `egress` that were due within the last
    /// `by` left only now (they waited for a new connection): the shared log
    /// counts them from now. Best effort, like [`RedisBudget::throttled`].
    pub async fn delayed(&self, egress: usize, class: Class, tenant: Option<&str>, by: Duration) {
        if self.in_fallback() {
            return;
        }
        let (key, log) = self.keys(egress, class, tenant);
        let mut invocation = self.connected.prepare_invoke();
        invocation
            .key(key)
            .key(log)
            .arg(by.as_micros() as u64)
            .arg(super::budget::CONNECT_SLACK.as_micros() as u64);
        let _: Option<i64> = self.run(invocation).await;
    }

    /// Reports that the send reserved at `slot_us` (a [`Reservation`]'s)
    /// left `late` after it: the shared log counts it, and any send between
    /// its slot and its departure, from then ([`super::Budget::left_late`]'s
    /// rule). Best effort, like [`RedisBudget::throttled`].
    pub async fn departed(
        &self,
        egress: usize,
        class: Class,
        tenant: Option<&str>,
        slot_us: u64,
        late: Duration,
    ) {
        if self.in_fallback() {
            return;
        }
        let (key, log) = self.keys(egress, class, tenant);
        let mut invocation = self.departed.prepare_invoke();
        invocation
            .key(key)
            .key(log)
            .arg(slot_us)
            .arg(late.as_micros() as u64);
        let _: Option<i64> = self.run(invocation).await;
    }

    /// Tells every replica, through the shared state, that the CRM refused a
    /// request on this budget, sent `age` ago. Best effort: errors only
    /// switch to fallback.
    pub async fn throttled(
        &self,
        egress: usize,
        class: Class,
        tenant: Option<&str>,
        age: Duration,
        retry_after: Option<Duration>,
    ) {
        if self.in_fallback() {
            return;
        }
        let limit = self.limits[super::class_index(class)].load(Ordering::Relaxed);
        let a = self
            .adaptive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let factor = if a.enabled { a.decrease_factor } else { 0.0 };
        let (key, log) = self.keys(egress, class, tenant);
        let mut invocation = self.throttle.prepare_invoke();
        invocation
            .key(key)
            .key(log)
            .arg(limit)
            .arg(factor)
            .arg(a.min_rate.min(f64::from(limit)))
            .arg(a.recovery_per_second)
            .arg(self.window_us.load(Ordering::Relaxed))
            .arg(retry_after.map_or(0, |d| d.as_micros() as u64))
            .arg(self.ttl_ms())
            .arg(age.as_micros() as u64);
        let _: Option<i64> = self.run(invocation).await;
    }
}
