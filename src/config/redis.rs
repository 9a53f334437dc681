//! `[redis]`, typed: where Redis is (one server, Sentinels, or a Cluster),
//! how crmgate authenticates and which roots it trusts for TLS.
//!
//! Built only by `validate::redis`, so every value here was checked: the
//! URLs parse and use one scheme the build can connect with, the password
//! came from exactly one place, a CA file was read and holds roots. Nothing
//! here prints a URL with its user info or a password: [`Secret`] redacts
//! itself, and [`RedisConfig::summary`] shows hosts only.

use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use super::{CaBundle, Secret};

/// Where Redis is: exactly one of `redis.url`, `redis.sentinels`,
/// `redis.cluster_nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server, or a proxy in front of several: `redis.url`.
    Single(Secret),
    /// Sentinels that name the current master (`redis.sentinels`), and the
    /// master's name (`redis.sentinel_master`). Failovers are followed:
    /// after a failure the master is asked of the Sentinels again.
    Sentinel {
        /// The Sentinels' URLs (`redis://host:26379`).
        sentinels: Vec<Secret>,
        /// The monitored master's name.
        master: String,
    },
    /// Seed nodes of a Redis Cluster (`redis.cluster_nodes`).
    Cluster(Vec<Secret>),
}

/// Where the Redis password came from (shown by `check`, never the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// `redis.password_env`.
    Env(String),
    /// `redis.password_file`.
    File(PathBuf),
    /// Inside the URL(s).
    Url,
}

impl fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::Env(name) => write!(f, "env {name}"),
            PasswordSource::File(path) => write!(f, "file {}", path.display()),
            PasswordSource::Url => f.write_str("the URL"),
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where Redis is.
    pub topology: RedisTopology,
    /// The password from `password_env` / `password_file`, which overrides
    /// none in the URLs (validation refuses both at once). `None`: the
    /// URLs' own, if any.
    pub password: Option<Secret>,
    /// Where the password comes from, if there is one.
    pub password_source: Option<PasswordSource>,
    /// Whether the URLs are `rediss://` (TLS).
    pub tls: bool,
    /// `redis.ca_file`: the only roots trusted for Redis when given (a
    /// private CA); else the compiled-in web roots.
    pub ca: Option<CaBundle>,
    /// Prefix of every key crmgate writes.
    pub key_prefix: String,
    /// Replicas sharing one budget; the fallback budget is `limit / expected_replicas`.
    pub expected_replicas: NonZeroU32,
    /// Longest one Redis call may take before the local fallback is used.
    pub timeout: Duration,
    /// `redis.required`: `/readyz` answers 503 while Redis is not in use.
    pub required: bool,
}

impl RedisConfig {
    /// One line for `check`: the topology with hosts only (no user info, no
    /// password), TLS and its roots, where the password comes from.
    pub fn summary(&self) -> String {
        let hosts = |urls: &[Secret]| -> String {
            urls.iter()
                .map(|u| host_of(u.expose()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let topology = match &self.topology {
            RedisTopology::Single(url) => host_of(url.expose()),
            RedisTopology::Sentinel { sentinels, master } => {
                format!("master {master:?} via sentinels {}", hosts(sentinels))
            }
            RedisTopology::Cluster(nodes) => format!("cluster seeds {}", hosts(nodes)),
        };
        let tls = match (self.tls, &self.ca) {
            (false, _) => "no TLS".to_string(),
            (true, None) => "TLS (compiled-in web roots)".to_string(),
            (true, Some(ca)) => format!(
                "TLS ({} root(s) from {})",
                ca.certs.len(),
                ca.path.display()
            ),
        };
        let password = match &self.password_source {
            None => "no password".to_string(),
            Some(source) => format!("password from {source}"),
        };
        format!(
            "{topology}; {tls}; {password}; timeout {}; {}",
            humantime::format_duration(self.timeout),
            if self.required {
                "required for readiness"
            } else {
                "fallback keeps ready"
            }
        )
    }
}

/// `host:port` of a Redis URL, without user info.
fn host_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}:{}",
            u.scheme(),
            u.host_str().unwrap_or("?"),
            u.port().unwrap_or(6379)
        ),
        Err(_) => "?".to_string(),
    }
}
