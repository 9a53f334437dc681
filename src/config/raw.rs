//! The config file exactly as written: serde structs with every field optional.
//!
//! Nothing here is trusted. `super::validate` turns a [`RawConfig`] into a
//! [`super::Config`] and reports every problem with its field path. Unknown
//! fields are rejected here, by serde, so a typo never silently does nothing.

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub upstream: RawUpstream,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub redis: RawRedis,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub export: RawExport,
    #[serde(default)]
    pub reconcile: RawReconcile,
    #[serde(default)]
    pub tenants: Vec<RawTenant>,
    #[serde(default)]
    pub cache: RawCache,
}

/// `[cache]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub enabled: Option<bool>,
    pub max_bytes: Option<i64>,
    pub ttl: Option<String>,
    pub stale_if_error: Option<String>,
    pub shared: Option<bool>,
    pub shared_max_bytes: Option<i64>,
    pub local_ttl: Option<String>,
    #[serde(default)]
    pub rules: Vec<RawCacheRule>,
}

/// One `[[cache.rules]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCacheRule {
    pub path: Option<String>,
    pub ttl: Option<String>,
}

/// `[export]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExport {
    pub page_limit: Option<i64>,
    pub prefetch: Option<i64>,
    pub max_page_bytes: Option<i64>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub query: Option<String>,
}

/// `[reconcile]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReconcile {
    pub delay: Option<String>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub max_body_bytes: Option<i64>,
    pub shutdown_grace: Option<String>,
    pub drain_accept: Option<String>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub worker_threads: Option<i64>,
    pub allowed_origins: Option<Vec<String>>,
    pub allowed_hosts: Option<Vec<String>>,
    pub admin_token: Option<String>,
    pub admin_token_env: Option<String>,
    pub admin_token_file: Option<String>,
    pub tls_listen: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub tls_names: Option<Vec<String>>,
    pub tls_ca_out: Option<String>,
}

/// `[upstream]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub base_url: Option<String>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub egress_ips: Option<Vec<String>>,
    pub egress_id: Option<String>,
    pub ca_file: Option<String>,
    pub warm_connections: Option<bool>,
}

/// `[limits]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub general_per_second: Option<i64>,
    pub telephony_per_second: Option<i64>,
    pub jitter_allowance: Option<String>,
    pub max_queue_wait: Option<String>,
    pub queue_capacity: Option<i64>,
    pub max_queued_per_tenant: Option<i64>,
    pub max_buffered_bytes: Option<i64>,
    pub scope: Option<String>,
    pub backend: Option<String>,
    #[serde(default)]
    pub adaptive: RawAdaptive,
}

/// `[limits.adaptive]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdaptive {
    pub enabled: Option<bool>,
    pub decrease_factor: Option<f64>,
    pub recovery_per_second: Option<f64>,
    pub min_rate: Option<f64>,
}

/// `[retry]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_attempts: Option<i64>,
    pub initial_backoff: Option<String>,
    pub max_backoff: Option<String>,
}

/// `[redis]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    pub url: Option<String>,
    pub sentinels: Option<Vec<String>>,
    pub sentinel_master: Option<String>,
    pub cluster_nodes: Option<Vec<String>>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    pub ca_file: Option<String>,
    pub key_prefix: Option<String>,
    pub expected_replicas: Option<i64>,
    pub timeout: Option<String>,
    pub required: Option<bool>,
}

/// One `[[tenants]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub name: Option<String>,
    pub subdomain: Option<String>,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    pub api_key_file: Option<String>,
    pub api_key: Option<String>,
    #[serde(default)]
    pub client_keys: Vec<String>,
    pub client_keys_env: Option<String>,
    pub client_keys_file: Option<String>,
    pub site: Option<String>,
    pub weight: Option<i64>,
    pub max_queued: Option<i64>,
}
