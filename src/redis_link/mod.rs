//! The replica's one link to Redis, and the truth about its state.
//!
//! [`RedisLink`] owns the connection (one server, the Sentinels' master, or
//! a Cluster; see `connect`), bounds every call by `redis.timeout`, and
//! keeps [`LinkState`]: `Connecting` until a call has succeeded, `Up` after
//! one did, `Down` (with the cause) from a failure until a call succeeds
//! again. It never claims `Up` without an answer from Redis. While `Down`,
//! calls return at once without touching the network; a prober (started by
//! the owner, [`RedisLink::probe`]) pings every second and ends the outage.
//! The shared budget and the fleet cache both go through it, so one Redis
//! outage is seen the same way by both.
//!
//! Never a URL's user info or a password in any text it makes: causes go
//! through [`Redactor`], which scrubs every configured URL and password.

mod connect;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub use connect::Conn;

use crate::config::{RedisConfig, RedisTopology};

/// How often a link that is not up tries Redis again.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What is known about Redis right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// No call has succeeded yet, and none has failed.
    Connecting,
    /// The last call succeeded.
    Up,
    /// The last call failed: why (redacted).
    Down(String),
}

/// The connection to Redis, its state and its counters.
pub struct RedisLink {
    target: Result<connect::Target, String>,
    conn: tokio::sync::Mutex<Option<Conn>>,
    timeout: Duration,
    state: Mutex<LinkState>,
    /// `state` is `Down` (read on every dispatcher wake-up, so atomic).
    down: AtomicBool,
    calls: AtomicU64,
    /// When a call last succeeded (ms since `born`).
    last_ok: AtomicU64,
    born: tokio::time::Instant,
    /// When the link last came back after being down.
    rejoined: Mutex<Option<tokio::time::Instant>>,
    redactor: Redactor,
}

impl RedisLink {
    /// Prepares the client; nothing is connected until the first call or
    /// probe. A config the client rejects shows as `Down` with its cause.
    pub fn new(config: &RedisConfig) -> RedisLink {
        let redactor = Redactor::new(config);
        RedisLink {
            target: connect::Target::new(config)
                .map_err(|e| format!("invalid Redis settings: {}", redactor.cause(&e))),
            conn: tokio::sync::Mutex::new(None),
            timeout: config.timeout,
            state: Mutex::new(LinkState::Connecting),
            down: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            last_ok: AtomicU64::new(0),
            born: tokio::time::Instant::now(),
            rejoined: Mutex::new(None),
            redactor,
        }
    }

    /// The state now.
    pub fn state(&self) -> LinkState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// True while the last call failed (calls return at once meanwhile).
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// True once a call succeeded and none failed since.
    pub fn is_up(&self) -> bool {
        matches!(self.state(), LinkState::Up)
    }

    /// Redis round trips attempted so far (probes included).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// `redis.timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// When the link last came back from `Down`, if it ever did.
    pub fn rejoined_at(&self) -> Option<tokio::time::Instant> {
        *self.rejoined.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on a connection, connecting first if needed, all within
    /// `redis.timeout`. `None` when the link is down (at once, without a
    /// call), or the call failed or timed out (the link goes down, logged
    /// once with the cause). A success brings the link up.
    pub async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.is_down() {
            return None;
        }
        self.attempt(f).await
    }

    /// Like [`RedisLink::call`], but also while down: the prober's way in.
    async fn attempt<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let call = async {
            let conn = self.connection().await?;
            self.calls.fetch_add(1, Ordering::Relaxed);
            f(conn).await.map_err(|e| self.redactor.cause(&e))
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
                self.failed(format!(
                    "no answer within redis.timeout ({:?})",
                    self.timeout
                ))
                .await;
                None
            }
        }
    }

    /// The open connection, or a new one.
    async fn connection(&self) -> Result<Conn, String> {
        let target = self.target.as_ref().map_err(Clone::clone)?;
        let mut guard = self.conn.lock().await;
        if let Some(conn) = &*guard {
            return Ok(conn.clone());
        }
        let conn = target
            .connect(self.timeout)
            .await
            .map_err(|e| format!("cannot connect: {}", self.redactor.cause(&e)))?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    fn set_state(&self, state: LinkState) -> LinkState {
        self.down
            .store(matches!(state, LinkState::Down(_)), Ordering::Relaxed);
        std::mem::replace(
            &mut *self.state.lock().unwrap_or_else(|p| p.into_inner()),
            state,
        )
    }

    /// Drops the connection (the next call reconnects, asking the Sentinels
    /// again) and marks the link down, logging the transition once.
    async fn failed(&self, why: String) {
        *self.conn.lock().await = None;
        match self.set_state(LinkState::Down(why.clone())) {
            LinkState::Down(_) => tracing::debug!(cause = %why, "Redis still unavailable"),
            _ => tracing::warn!(
                cause = %why,
                "Redis unavailable: using the local fallback budget (limit / expected_replicas) and the local cache"
            ),
        }
    }

    fn succeeded(&self) {
        self.last_ok
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        match self.set_state(LinkState::Up) {
            LinkState::Down(_) => {
                *self.rejoined.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(tokio::time::Instant::now());
                tracing::info!("Redis reachable again: back to the shared budget");
            }
            LinkState::Connecting => tracing::info!("Redis reached: budgets are shared"),
            LinkState::Up => {}
        }
    }

    /// Pings Redis at once and then every [`PROBE_EVERY`] unless a call
    /// succeeded meanwhile (off the request path), so the state is known
    /// before the first request, an idle replica notices a dead Redis, and
    /// an outage ends without a request paying for it. Runs until `stop`.
    pub async fn probe(self: std::sync::Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        loop {
            let now = self.born.elapsed().as_millis() as u64;
            let since_ok = now.saturating_sub(self.last_ok.load(Ordering::Relaxed));
            if !self.is_up() || since_ok >= PROBE_EVERY.as_millis() as u64 {
                let ping = |mut c: Conn| async move {
                    redis::cmd("PING").query_async::<String>(&mut c).await
                };
                let _ = self.attempt(ping).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

/// Scrubs every configured URL and password from error texts.
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// The secrets of `config`: each URL, each URL's password (raw and
    /// percent-decoded), and the configured password.
    pub fn new(config: &RedisConfig) -> Redactor {
        let urls = match &config.topology {
            RedisTopology::Single(u) => vec![u.clone()],
            RedisTopology::Sentinel { sentinels, .. } => sentinels.clone(),
            RedisTopology::Cluster(nodes) => nodes.clone(),
        };
        let mut secrets = Vec::new();
        for url in &urls {
            let text = url.expose().to_string();
            if let Some(password) = url::Url::parse(&text)
                .ok()
                .and_then(|u| u.password().map(str::to_owned))
            {
                secrets.push(
                    percent_encoding::percent_decode_str(&password)
                        .decode_utf8_lossy()
                        .into_owned(),
                );
                secrets.push(password);
            }
            secrets.push(text);
        }
        if let Some(p) = &config.password {
            secrets.push(p.expose().to_string());
        }
        secrets.retain(|s| !s.is_empty());
        // Longest first, so a URL is replaced whole before its password.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor { secrets }
    }

    /// A Redis error's text for a log line or the status page.
    pub fn cause(&self, err: &redis::RedisError) -> String {
        self.scrub(err.to_string())
    }

    fn scrub(&self, mut text: String) -> String {
        for s in &self.secrets {
            if text.contains(s.as_str()) {
                text = text.replace(s.as_str(), "***");
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn redis_config(section: &str, env: &[(&str, &str)]) -> RedisConfig {
        let text = format!(
            "[limits]\nbackend = \"redis\"\n[redis]\n{section}\n[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key = \"k\"\n"
        );
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_toml(&text, "test", &move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
        .unwrap()
        .redis
    }

    #[test]
    fn a_cause_keeps_the_error_but_never_a_url_or_password() {
        let config = redis_config(
            "cluster_nodes = [\"redis://gate:s3cr%21t@10.0.0.7:6379\", \"redis://gate:s3cr%21t@10.0.0.8:6379\"]",
            &[],
        );
        let r = Redactor::new(&config);
        let err = redis::RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            "Password authentication failed",
            "WRONGPASS for redis://gate:s3cr%21t@10.0.0.7:6379 (s3cr!t, s3cr%21t)".to_string(),
        ));
        let text = r.cause(&err);
        assert!(text.contains("Password authentication failed"), "{text}");
        assert!(text.contains("WRONGPASS"), "{text}");
        assert!(!text.contains("s3cr"), "{text}");
        assert!(!text.contains("10.0.0.7"), "{text}");

        let config = redis_config(
            "url = \"rediss://r.example:6380\"\npassword_env = \"RPW\"",
            &[("RPW", "env-pass-77")],
        );
        let err = redis::RedisError::from((
            redis::ErrorKind::AuthenticationFailed,
            "auth",
            "sent env-pass-77".to_string(),
        ));
        assert!(!Redactor::new(&config).cause(&err).contains("env-pass-77"));
    }

    #[tokio::test]
    async fn the_state_is_connecting_until_a_call_answers_and_down_with_a_redacted_cause() {
        // A port nothing listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = redis_config(
            &format!("url = \"redis://:hunter2-pw@127.0.0.1:{port}\"\ntimeout = \"200ms\""),
            &[],
        );
        let link = RedisLink::new(&config);
        assert_eq!(link.state(), LinkState::Connecting);
        assert!(!link.is_down() && !link.is_up());
        let got = link
            .call(|mut c| async move { redis::cmd("PING").query_async::<String>(&mut c).await })
            .await;
        assert_eq!(got, None);
        let LinkState::Down(why) = link.state() else {
            panic!("down after a failed call: {:?}", link.state());
        };
        assert!(why.contains("cannot connect"), "{why}");
        assert!(!why.contains("hunter2"), "{why}");
        // Down: calls return at once, without a round trip.
        let calls = link.calls();
        assert_eq!(
            link.call(|_| async { Ok::<_, redis::RedisError>(1) }).await,
            None
        );
        assert_eq!(link.calls(), calls);
    }
}
