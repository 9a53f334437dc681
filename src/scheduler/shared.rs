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
//! to the CRM is opened or a send leaves late (both rare).
//!
//! When Redis is unreachable or slower than `redis.timeout`, the lane uses
//! its local budget, shaped at `limit / redis.expected_replicas`, without
//! waiting on Redis again; a background prober pings it every second and
//! ends the fallback when it answers. The switch is logged once each way. Never a
//! key or password in logs: the URL is not printed.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use crate::classify::Class;
use crate::config::{AdaptiveConfig, Config};

/// Reserves the earliest slot among the budgets in KEYS (pairs of state
/// hash and send log). ARGV: limit, window (µs), recovery (req/s per s),
/// TTL (ms), and one '1' or '0' per budget: whether it may be used. Returns
/// {index of the
/// chosen budget, µs to wait}.
const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local recovery = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local allowed = ARGV[5]
local best, best_at = 1, nil
for i = 1, #KEYS, 2 do
  local k = (i + 1) / 2
  if string.sub(allowed, k, k) == '1' then
  local st = redis.call('HMGET', KEYS[i], 'last', 'cut_rate', 'cut_at', 'paused')
  local rate = limit
  if st[2] then
    rate = math.min(limit, tonumber(st[2]) + recovery * (now - tonumber(st[3])) / 1000000)
  end
  local at = now
  if st[1] then at = math.max(at, tonumber(st[1]) + math.ceil(window / rate)) end
  local n = redis.call('LLEN', KEYS[i + 1])
  if n >= limit then
    at = math.max(at, tonumber(redis.call('LINDEX', KEYS[i + 1], n - limit)) + window)
  end
  if st[4] then at = math.max(at, tonumber(st[4])) end
  if best_at == nil or at < best_at then best, best_at = i, at end
  end
end
if best_at == nil then return redis.error_reply('no budget may be used') end
redis.call('HSET', KEYS[best], 'last', best_at)
redis.call('RPUSH', KEYS[best + 1], best_at)
redis.call('LTRIM', KEYS[best + 1], -limit, -1)
redis.call('PEXPIRE', KEYS[best], ttl)
redis.call('PEXPIRE', KEYS[best + 1], ttl)
return {(best - 1) / 2, best_at - now}
"#;

/// Slows one shared budget after a 503/429 (once per window) and pauses it
/// for Retry-After. KEYS: state hash. ARGV: limit, decrease factor, minimum
/// rate, recovery, window (µs), retry-after (µs, 0 = none), TTL (ms).
const THROTTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local st = redis.call('HMGET', KEYS[1], 'cut_rate', 'cut_at', 'paused')
local retry = tonumber(ARGV[6])
if retry > 0 then
  redis.call('HSET', KEYS[1], 'paused', math.max(tonumber(st[3] or 0), now + retry))
end
if tonumber(ARGV[2]) > 0 and (not st[2] or now - tonumber(st[2]) >= tonumber(ARGV[5])) then
  local rate = limit
  if st[1] then rate = math.min(limit, tonumber(st[1]) + tonumber(ARGV[4]) * (now - tonumber(st[2])) / 1000000) end
  local lowered = math.max(tonumber(ARGV[3]), rate * tonumber(ARGV[2]))
  redis.call('HSET', KEYS[1], 'cut_rate', lowered, 'cut_at', now)
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[7]))
return 1
"#;

/// Sends reserved within the last ARGV[1] µs (and ARGV[2] µs of slack
/// before that) that are already due left late (a slow connect, a late
/// wake-up): they count from now, as the local budget does for connects
/// (see `Budget::connect_finished`). KEYS: state hash, send log.
const CONNECTED: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local from = now - tonumber(ARGV[1]) - tonumber(ARGV[2])
local log = redis.call('LRANGE', KEYS[2], 0, -1)
for i, v in ipairs(log) do
  local at = tonumber(v)
  if at >= from and at < now then redis.call('LSET', KEYS[2], i - 1, now) end
end
local last = tonumber(redis.call('HGET', KEYS[1], 'last') or '0')
if last >= from and last < now then redis.call('HSET', KEYS[1], 'last', now) end
return 1
"#;

/// The widened window in µs, as the scripts take it.
fn window_us(config: &Config) -> u64 {
    (Duration::from_secs(1) + config.limits.jitter_allowance).as_micros() as u64
}

/// How long to use the local fallback before trying Redis again.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// The Redis side of shared budgets.
pub struct Shared {
    url: crate::config::Secret,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    timeout: Duration,
    prefix: String,
    /// Budget name of each egress, in config order.
    ids: Vec<String>,
    limits: [AtomicU32; 2],
    window_us: AtomicU64,
    adaptive: Mutex<AdaptiveConfig>,
    fallback: AtomicBool,
    /// When this replica last came back from fallback.
    rejoined: Mutex<Option<tokio::time::Instant>>,
    calls: AtomicU64,
    reserve: Script,
    throttle: Script,
    connected: Script,
}

impl Shared {
    /// Prepares the client; nothing is connected until the first slot (a
    /// Redis that cannot be reached, or a URL it rejects, means fallback).
    pub fn new(config: &Config) -> Shared {
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
        Shared {
            url: r.url.clone(),
            conn: tokio::sync::Mutex::new(None),
            timeout: r.timeout,
            prefix: r.key_prefix.clone(),
            ids,
            limits: Class::ALL.map(|c| AtomicU32::new(config.rate(c).get())),
            window_us: AtomicU64::new(window_us(config)),
            adaptive: Mutex::new(config.limits.adaptive.clone()),
            fallback: AtomicBool::new(false),
            rejoined: Mutex::new(None),
            calls: AtomicU64::new(0),
            reserve: Script::new(RESERVE),
            throttle: Script::new(THROTTLE),
            connected: Script::new(CONNECTED),
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

    /// True while the local fallback budget is in use.
    pub fn in_fallback(&self) -> bool {
        self.fallback.load(Ordering::Relaxed)
    }

    /// Redis round trips made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn keys(&self, egress: usize, class: Class, tenant: Option<&str>) -> (String, String) {
        let mut key = format!(
            "{}:budget:{}:{}",
            self.prefix,
            self.ids[egress],
            class.as_str()
        );
        if let Some(t) = tenant {
            key.push(':');
            key.push_str(t);
        }
        let log = format!("{key}:log");
        (key, log)
    }

    fn ttl_ms(&self) -> u64 {
        // Long enough to outlive any window and pause; short enough that an
        // abandoned budget does not linger.
        600_000
    }

    /// A connection, connecting first if needed (bounded by the timeout).
    async fn connection(&self) -> Option<ConnectionManager> {
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(self.timeout)
                .set_response_timeout(self.timeout)
                .set_number_of_retries(1);
            let client = redis::Client::open(self.url.expose()).ok()?;
            let connect = ConnectionManager::new_with_config(client, config);
            *guard = tokio::time::timeout(self.timeout, connect).await.ok()?.ok();
        }
        guard.clone()
    }

    /// Marks Redis as down (logging the transition once) until the next probe.
    async fn failed(&self, why: &str) {
        *self.conn.lock().await = None;
        if !self.fallback.swap(true, Ordering::Relaxed) {
            tracing::warn!(cause = why, "Redis budget unavailable: using the local fallback budget (limit / expected_replicas)");
        }
    }

    fn succeeded(&self) {
        if self.fallback.swap(false, Ordering::Relaxed) {
            *self.rejoined.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(tokio::time::Instant::now());
            tracing::info!("Redis budget reachable again: back to the shared budget");
        }
    }

    /// When this replica last came back from fallback (lanes stay careful
    /// for a while after it, even those that were idle meanwhile).
    pub fn rejoined_at(&self) -> tokio::time::Instant {
        let never = tokio::time::Instant::now() - Duration::from_secs(3600);
        self.rejoined
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(never)
    }

    /// Reserves the next shared slot for a lane: which egress, and how long
    /// to wait for it. `None` means "use the local budget now" (Redis is
    /// down, slow, or was recently).
    /// `allowed` has a bit per egress (bit 0 = egress 0) that may be used;
    /// it must not be empty.
    pub async fn reserve(
        &self,
        class: Class,
        tenant: Option<&str>,
        allowed: u64,
    ) -> Option<(usize, Duration)> {
        // In fallback the dispatcher never waits on Redis: the prober
        // (below) finds out when it is back.
        if self.in_fallback() {
            return None;
        }
        let limit = self.limits[super::class_index(class)].load(Ordering::Relaxed);
        let recovery = self
            .adaptive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recovery_per_second;
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
            .arg(recovery)
            .arg(self.ttl_ms())
            .arg(mask);
        let (egress, wait_us): (usize, i64) = self.run(&invocation).await?;
        Some((
            egress.min(self.ids.len() - 1),
            Duration::from_micros(wait_us.max(0) as u64),
        ))
    }

    /// While in fallback, pings Redis every second (off the dispatchers'
    /// path) and ends the fallback when it answers. Runs until `stop`.
    pub async fn probe(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            if !self.in_fallback() {
                continue;
            }
            let ping = async {
                let mut conn = self.connection().await?;
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .ok()
            };
            match tokio::time::timeout(self.timeout, ping).await {
                Ok(Some(_)) => self.succeeded(),
                _ => *self.conn.lock().await = None,
            }
        }
    }

    /// Runs one script call within `redis.timeout`. A failure or timeout
    /// switches to the fallback budget (logged once); a success ends it.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        let call = async {
            let mut conn = self.connection().await.ok_or("cannot connect")?;
            self.calls.fetch_add(1, Ordering::Relaxed);
            invocation
                .invoke_async(&mut conn)
                .await
                .map_err(|_| "script failed")
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => {
                self.succeeded();
                Some(value)
            }
            Ok(Err(why)) => {
                self.failed(why).await;
                None
            }
            Err(_) => {
                self.failed("timed out").await;
                None
            }
        }
    }

    /// Reports that sends through `egress` that were due within the last
    /// `by` left only now (they waited for a new connection, or the replica
    /// woke late): the shared log counts them from now. Best effort, like
    /// [`Shared::throttled`].
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
        let _: Option<i64> = self.run(&invocation).await;
    }

    /// Tells every replica, through the shared state, that the CRM refused a
    /// request on this budget. Best effort: errors only switch to fallback.
    pub async fn throttled(
        &self,
        egress: usize,
        class: Class,
        tenant: Option<&str>,
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
        let (key, _) = self.keys(egress, class, tenant);
        let mut invocation = self.throttle.prepare_invoke();
        invocation
            .key(key)
            .arg(limit)
            .arg(factor)
            .arg(a.min_rate.min(f64::from(limit)))
            .arg(a.recovery_per_second)
            .arg(self.window_us.load(Ordering::Relaxed))
            .arg(retry_after.map_or(0, |d| d.as_micros() as u64))
            .arg(self.ttl_ms());
        let _: Option<i64> = self.run(&invocation).await;
    }
}
