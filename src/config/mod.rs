//! Configuration: loading, validation and the typed, already-checked result.
//!
//! The file is parsed into `raw::RawConfig` (all optional, unknown fields
//! rejected) and then validated once into [`Config`], whose types cannot hold
//! bad values: non-zero rates, parsed addresses, URLs and durations, resolved
//! keys. Every problem is reported with its field path, not just the first.
//! This module reads keys from the environment or files but never prints them:
//! [`Secret`] redacts itself in `Debug` and `Display`. No message it makes
//! (error or warning) contains a value from the file, a key, or a password in
//! a URL: problems name the field path and what is wrong.

mod cache;
mod parse;
mod raw;
mod redis;
mod secrets;
mod tls;
mod trust;
mod validate;

pub use cache::{glob, CacheConfig, CacheRule, CACHED_BY_DEFAULT};
pub use redis::{PasswordSource, RedisConfig, RedisTopology};
pub use tls::{server_config, CertFiles, TlsCert, TlsListen, GENERATED_NAMES};
pub use trust::CaBundle;
pub use validate::normalize_origin;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use url::Url;

/// Where `serve` and `check` look for the config when `--config` is not given.
pub const DEFAULT_PATHS: [&str; 2] = ["config/crmgate.toml", "/etc/crmgate/crmgate.toml"];

/// A secret string (an API key). Never printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `[server]`
    pub server: ServerConfig,
    /// `[upstream]`
    pub upstream: UpstreamConfig,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// `[retry]`
    pub retry: RetryConfig,
    /// `[redis]` (used only with `limits.backend = "redis"`)
    pub redis: RedisConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[export]`
    pub export: ExportConfig,
    /// `[reconcile]`
    pub reconcile: ReconcileConfig,
    /// `[[tenants]]`, in file order.
    pub tenants: Vec<TenantConfig>,
    /// `[cache]`
    pub cache: CacheConfig,
    /// Hex SHA-256 of the file's bytes, shown in `/status` to tell configs apart.
    pub checksum: String,
    /// Non-fatal remarks found while validating (e.g. an inline key).
    pub warnings: Vec<String>,
}

/// `[log]`: what the access log shows.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// How much of the query string the access log line shows.
    pub query: LogQuery,
}

/// `[export]`: how `X-Crmgate-Export` walks a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// `limit` of every page requested (one of RetailCRM's page sizes).
    pub page_limit: u32,
    /// Pages fetched ahead of the caller at most (at least 1).
    pub prefetch: usize,
    /// Largest page answer held; a larger one ends the export.
    pub max_page_bytes: usize,
}

/// How much of a request's query the access log line shows. Keys are
/// masked in every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogQuery {
    /// Parameter names, values masked (`?filter[phone]=***`): queries hold
    /// customer data (phones, e-mails, names).
    Names,
    /// Names and values.
    Full,
    /// The path only.
    None,
}

/// `[server]`: listeners and request-size limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The API listener that services call instead of the CRM.
    pub listen: SocketAddr,
    /// Health, readiness, metrics, status and reload live here.
    pub admin_listen: SocketAddr,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long a SIGTERM waits for queued and in-flight requests.
    pub shutdown_grace: Duration,
    /// For how long after SIGTERM new requests are still accepted and
    /// queued (answered with `Connection: close`); at most `shutdown_grace`.
    pub drain_accept: Duration,
    /// The whole request head must arrive within this, else the connection
    /// is closed. Also how long an idle keep-alive connection stays open.
    pub header_timeout: Duration,
    /// Longest pause in a request body before the request gets 408.
    pub body_timeout: Duration,
    /// Open API connections at most; more are accepted and closed at once.
    pub max_connections: NonZeroUsize,
    /// The async runtime's worker threads; `None`: one per core. Read once
    /// at start-up (a restart-only setting).
    pub worker_threads: Option<NonZeroUsize>,
    /// Browser origins (`scheme://host[:port]`, normalised) allowed to call.
    pub allowed_origins: Vec<String>,
    /// Host names (lowercase, no port) accepted besides loopback ones on a
    /// loopback listener.
    pub allowed_hosts: Vec<String>,
    /// Bearer token `POST /reload` requires, when set.
    pub admin_token: Option<Secret>,
    /// Where `admin_token` came from.
    pub admin_token_source: Option<KeySource>,
    /// The HTTPS API listener (`server.tls_listen`), when set.
    pub tls: Option<TlsListen>,
}

impl ServerConfig {
    /// Whether `POST /reload` may run without a token: only when none is
    /// configured and the admin listener is reachable from this host alone.
    pub fn admin_open(&self) -> bool {
        self.admin_token.is_none() && self.admin_listen.ip().is_loopback()
    }
}

#[cfg(test)]
impl ServerConfig {
    /// The `[server]` of a minimal valid config (one tenant) with `extra`
    /// keys in that section: for the unit tests of modules that read it.
    pub(crate) fn for_tests(extra: &str) -> ServerConfig {
        let text = format!(
            "[server]\n{extra}\n[[tenants]]\nname = \"acme\"\n\
             base_url = \"https://acme.retailcrm.ru\"\napi_key = \"real-key-0001\"\n"
        );
        Config::from_toml(&text, "test", &|_| None)
            .expect("valid config")
            .server
    }
}

/// `[upstream]`: how to reach the CRM.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Template with `{subdomain}`; tenants may override it with their own URL.
    pub base_url: String,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed until the response headers arrive, and between body chunks.
    pub request_timeout: Duration,
    /// Local source addresses; each one is a separate budget. Empty means the
    /// OS default route, one budget.
    pub egress_ips: Vec<IpAddr>,
    /// The name of the shared budget in Redis (defaults to the egress IP).
    pub egress_id: Option<String>,
    /// Roots trusted in addition to the compiled-in web roots
    /// (`upstream.ca_file`), read and checked when the config is validated.
    pub ca: Option<CaBundle>,
    /// Keep one connection per (egress, CRM host) open ahead of need.
    pub warm_connections: bool,
}

/// Which requests share one budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One budget per outbound IP and class, shared by all tenants (RetailCRM's documented rule).
    EgressIp,
    /// One budget per outbound IP, class and CRM account.
    EgressIpAndAccount,
}

/// Where budgets are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In this process.
    Local,
    /// Shared between replicas through Redis.
    Redis,
}

/// `[limits.adaptive]`: how a budget reacts to the CRM's 503s.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConfig {
    /// Off means the configured rate is used as is.
    pub enabled: bool,
    /// The effective rate is multiplied by this on a 503 (0 < f < 1).
    pub decrease_factor: f64,
    /// Requests/s regained per second without a 503, up to the configured rate.
    pub recovery_per_second: f64,
    /// The effective rate never falls below this (requests/s).
    pub min_rate: f64,
}

/// `[limits]`: budgets and the queue.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Requests per second per budget for general methods.
    pub general_per_second: NonZeroU32,
    /// Requests per second per budget for telephony methods.
    pub telephony_per_second: NonZeroU32,
    /// Extra width added to the 1 s window to absorb departure-to-arrival jitter.
    pub jitter_allowance: Duration,
    /// Longest a request may wait for a slot before it gets 503.
    pub max_queue_wait: Duration,
    /// Total requests allowed to wait, across tenants and classes.
    pub queue_capacity: NonZeroUsize,
    /// Default per-tenant cap on waiting requests.
    pub max_queued_per_tenant: NonZeroUsize,
    /// Bodies held for queued and in-flight requests, in total, at most;
    /// a request whose body would pass it gets 503 at once.
    pub max_buffered_bytes: NonZeroUsize,
    /// Which requests share a budget.
    pub scope: Scope,
    /// Where budgets are kept.
    pub backend: Backend,
    /// Reaction to upstream 503s.
    pub adaptive: AdaptiveConfig,
}

/// `[reconcile]`: how a create that failed after sending is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcileConfig {
    /// How long after the failure the CRM is asked whether the create
    /// exists: it may still be processing it.
    pub delay: Duration,
}

/// `[retry]`
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Sends per client request at most, the first one included.
    pub max_attempts: NonZeroU32,
    /// First backoff; doubles each attempt, with jitter.
    pub initial_backoff: Duration,
    /// Cap on one backoff (and on an honoured `Retry-After`).
    pub max_backoff: Duration,
}

/// Where a tenant's real key came from (shown by `check`, never the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable.
    Env(String),
    /// A file.
    File(PathBuf),
    /// Written in the config (discouraged).
    Inline,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Env(name) => write!(f, "env {name}"),
            KeySource::File(path) => write!(f, "file {}", path.display()),
            KeySource::Inline => f.write_str("inline"),
        }
    }
}

/// One CRM account.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    /// Name used in the path prefix `/{name}/api/...`, in metrics and logs.
    pub name: String,
    /// Base URL of the account, e.g. `https://acme.retailcrm.ru` (no trailing slash).
    pub base_url: Url,
    /// The real CRM key, injected as `X-API-KEY`.
    pub api_key: Secret,
    /// Where `api_key` came from.
    pub key_source: KeySource,
    /// Keys that internal services present instead of the real one, from
    /// `client_keys`, `client_keys_env` and `client_keys_file` together.
    pub client_keys: Vec<Secret>,
    /// Where the client keys came from, in that order (shown by `check`).
    pub client_key_sources: Vec<KeySource>,
    /// Default `site` parameter added when a request has none.
    pub site: Option<String>,
    /// Share of a budget relative to other tenants.
    pub weight: NonZeroU32,
    /// Cap on this tenant's waiting requests.
    pub max_queued: NonZeroUsize,
}

/// A config that could not be loaded: every problem found.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    /// One line per problem, each naming the file position or field path.
    pub problems: Vec<String>,
}

impl Config {
    /// Reads and validates a config file, looking keys up in the process
    /// environment and reading key files. Used at startup, by `check` and by
    /// every reload, so a reload re-reads key files too.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![format!("{}: cannot read: {e}", path.display())],
        })?;
        let mut config = Config::from_toml(&text, &path.display().to_string(), &|name| {
            std::env::var(name).ok()
        })?;
        let inline: Vec<String> = config.inline_key_fields();
        if !inline.is_empty() {
            let what = format!("keys inline ({})", inline.join(", "));
            config.warnings.extend(secrets::exposure(path, &what));
        }
        Ok(config)
    }

    /// The field paths of keys written in the file itself.
    fn inline_key_fields(&self) -> Vec<String> {
        let mut fields = Vec::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if t.key_source == KeySource::Inline {
                fields.push(format!("tenants[{i}].api_key"));
            }
            if t.client_key_sources.contains(&KeySource::Inline) {
                fields.push(format!("tenants[{i}].client_keys"));
            }
        }
        fields
    }

    /// Parses and validates TOML text. `origin` names the file in messages;
    /// `env` looks up environment variables (injectable for tests).
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let raw = parse::parse(text, origin)?;
        let checksum = hex::encode(Sha256::digest(text.as_bytes()));
        validate::validate(raw, env, checksum)
    }

    /// The configured rate of a class.
    pub fn rate(&self, class: crate::classify::Class) -> NonZeroU32 {
        match class {
            crate::classify::Class::General => self.limits.general_per_second,
            crate::classify::Class::Telephony => self.limits.telephony_per_second,
        }
    }

    /// A human-readable summary with no secrets in it, for `crmgate check`.
    pub fn summary(&self) -> String {
        let l = &self.limits;
        let egress = if self.upstream.egress_ips.is_empty() {
            "OS default".to_string()
        } else {
            let ips: Vec<String> = self
                .upstream
                .egress_ips
                .iter()
                .map(|i| i.to_string())
                .collect();
            ips.join(", ")
        };
        let tls = match &self.server.tls {
            Some(t) => format!("tls listen {}: {}\n", t.listen, t.cert.describe()),
            None => String::new(),
        };
        let mut out = format!(
            "listen {}, admin {} ({})\n{tls}limits: general {}/s, telephony {}/s per {}, jitter allowance {}, \
             queue {} (max wait {}), backend {}\nretry: {} attempts, backoff {}..{}\negress: {}\ntrusted roots: {}\n{}tenants ({}):\n",
            self.server.listen,
            self.server.admin_listen,
            match &self.server.admin_token_source {
                Some(source) => format!("reload token from {source}"),
                None => "no reload token".to_string(),
            },
            l.general_per_second,
            l.telephony_per_second,
            match l.scope {
                Scope::EgressIp => "egress IP",
                Scope::EgressIpAndAccount => "egress IP and account",
            },
            humantime::format_duration(l.jitter_allowance),
            l.queue_capacity,
            humantime::format_duration(l.max_queue_wait),
            match l.backend {
                Backend::Local => "local",
                Backend::Redis => "redis",
            },
            self.retry.max_attempts,
            humantime::format_duration(self.retry.initial_backoff),
            humantime::format_duration(self.retry.max_backoff),
            egress,
            match &self.upstream.ca {
                None => "compiled-in web roots".to_string(),
                Some(ca) => format!(
                    "compiled-in web roots + {} extra root(s) from {}",
                    ca.certs.len(),
                    ca.path.display()
                ),
            },
            match l.backend {
                Backend::Local => String::new(),
                Backend::Redis => format!("redis: {}\n", self.redis.summary()),
            },
            self.tenants.len(),
        );
        for t in &self.tenants {
            let clients = if t.client_keys.is_empty() {
                "no client keys: open".to_string()
            } else {
                let from: Vec<String> =
                    t.client_key_sources.iter().map(|s| s.to_string()).collect();
                format!(
                    "{} client key(s) from {}",
                    t.client_keys.len(),
                    from.join(" + ")
                )
            };
            out.push_str(&format!(
                "  - {} -> {} (key from {}, {}, site {}, weight {}, max queued {})\n",
                t.name,
                redacted(&t.base_url).trim_end_matches('/'),
                t.key_source,
                clients,
                t.site.as_deref().unwrap_or("-"),
                t.weight,
                t.max_queued,
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}

/// A URL for display, with its user name and password (either may be a
/// credential) each replaced by `***`.
pub fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    if !shown.username().is_empty() {
        let _ = shown.set_username("***");
    }
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// Finds the config file: the given path, else the first default that exists.
pub fn resolve_path(given: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    DEFAULT_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| ConfigError {
            problems: vec![format!(
                "no config file: pass --config PATH or create one of {}",
                DEFAULT_PATHS.join(", ")
            )],
        })
}
