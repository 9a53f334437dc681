//! Turns a [`RawConfig`] into a [`Config`], collecting every problem.
//!
//! Each rule names the field path it checks (`tenants[1].api_key_env`), so an
//! operator can fix a whole file in one pass. Messages name environment
//! variables and files, never the key values themselves.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use super::raw::{RawConfig, RawTenant};
use super::*;

/// Problems found so far.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, path: &str, message: impl fmt::Display) {
        self.0.push(format!("{path}: {message}"));
    }

    fn duration(&mut self, path: &str, value: Option<&str>, default: &str) -> Duration {
        let text = value.unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(d) => d,
            Err(e) => {
                self.push(
                    path,
                    format!("invalid duration {text:?} ({e}); write e.g. \"250ms\", \"5s\""),
                );
                humantime::parse_duration(default).unwrap_or_default()
            }
        }
    }

    fn positive_u32(&mut self, path: &str, value: Option<i64>, default: u32) -> NonZeroU32 {
        let v = value.unwrap_or(i64::from(default));
        match u32::try_from(v).ok().and_then(NonZeroU32::new) {
            Some(n) => n,
            None => {
                self.push(
                    path,
                    format!("must be a whole number from 1 to {}, got {v}", u32::MAX),
                );
                NonZeroU32::new(default.max(1)).unwrap_or(NonZeroU32::MIN)
            }
        }
    }

    fn positive_usize(&mut self, path: &str, value: Option<i64>, default: usize) -> NonZeroUsize {
        let v = value.unwrap_or(default as i64);
        match usize::try_from(v).ok().and_then(NonZeroUsize::new) {
            Some(n) => n,
            None => {
                self.push(path, format!("must be a positive whole number, got {v}"));
                NonZeroUsize::new(default.max(1)).unwrap_or(NonZeroUsize::MIN)
            }
        }
    }

    fn socket(&mut self, path: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        text.parse().unwrap_or_else(|_| {
            self.push(
                path,
                format!("invalid address {text:?}; write IP:PORT, e.g. \"127.0.0.1:8080\""),
            );
            default.parse().expect("default address parses")
        })
    }
}

/// A name usable in a URL path segment and as a metric label.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Validates a parsed file. `env` looks up environment variables.
pub(super) fn validate(
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
    checksum: String,
) -> Result<Config, ConfigError> {
    let mut p = Problems::default();
    let mut warnings = Vec::new();

    let s = &raw.server;
    let max_body = s.max_body_bytes.unwrap_or(8 * 1024 * 1024);
    if max_body <= 0 {
        p.push(
            "server.max_body_bytes",
            format!("must be positive, got {max_body}"),
        );
    }
    let server = ServerConfig {
        listen: p.socket("server.listen", s.listen.as_deref(), "127.0.0.1:8080"),
        admin_listen: p.socket(
            "server.admin_listen",
            s.admin_listen.as_deref(),
            "127.0.0.1:9090",
        ),
        max_body_bytes: usize::try_from(max_body.max(1)).unwrap_or(usize::MAX),
        shutdown_grace: p.duration("server.shutdown_grace", s.shutdown_grace.as_deref(), "30s"),
    };
    if server.listen == server.admin_listen && server.listen.port() != 0 {
        p.push("server.admin_listen", "must differ from server.listen");
    }

    let u = &raw.upstream;
    let template = u
        .base_url
        .clone()
        .unwrap_or_else(|| "https://{subdomain}.retailcrm.ru".into());
    if !template.contains("{subdomain}") {
        p.push(
            "upstream.base_url",
            "must contain {subdomain} (a tenant's own base_url overrides it)",
        );
    }
    let mut egress_ips = Vec::new();
    for (i, text) in u.egress_ips.iter().flatten().enumerate() {
        match text.parse::<IpAddr>() {
            Ok(ip) if egress_ips.contains(&ip) => p.push(
                &format!("upstream.egress_ips[{i}]"),
                format!("{ip} is listed twice"),
            ),
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() => p.push(
                &format!("upstream.egress_ips[{i}]"),
                format!("{ip} is not a usable source address"),
            ),
            Ok(ip) => egress_ips.push(ip),
            Err(_) => p.push(
                &format!("upstream.egress_ips[{i}]"),
                format!("{text:?} is not an IP address"),
            ),
        }
    }
    if u.egress_id.is_some() && u.egress_ips.as_ref().is_some_and(|ips| ips.len() > 1) {
        p.push(
            "upstream.egress_id",
            "names one shared budget; with several egress_ips each IP is its own budget, named by the IP",
        );
    }
    if let Some(id) = &u.egress_id {
        if id.trim().is_empty() {
            p.push("upstream.egress_id", "must not be empty");
        }
    }
    let upstream = UpstreamConfig {
        base_url: template.clone(),
        connect_timeout: p.duration(
            "upstream.connect_timeout",
            u.connect_timeout.as_deref(),
            "5s",
        ),
        request_timeout: p.duration(
            "upstream.request_timeout",
            u.request_timeout.as_deref(),
            "30s",
        ),
        egress_ips,
        egress_id: u.egress_id.clone(),
        ca: u.ca_file.as_deref().and_then(|file| {
            trust::read_ca_file(Path::new(file))
                .map_err(|e| p.push("upstream.ca_file", e))
                .ok()
        }),
    };
    for (path, d) in [
        ("upstream.connect_timeout", upstream.connect_timeout),
        ("upstream.request_timeout", upstream.request_timeout),
    ] {
        if d.is_zero() {
            p.push(path, "must be longer than zero");
        }
    }

    let l = &raw.limits;
    let a = &l.adaptive;
    let adaptive = AdaptiveConfig {
        enabled: a.enabled.unwrap_or(true),
        decrease_factor: a.decrease_factor.unwrap_or(0.7),
        recovery_per_second: a.recovery_per_second.unwrap_or(0.2),
        min_rate: a.min_rate.unwrap_or(1.0),
    };
    if !(adaptive.decrease_factor > 0.0 && adaptive.decrease_factor < 1.0) {
        p.push(
            "limits.adaptive.decrease_factor",
            format!(
                "must be between 0 and 1 (exclusive), got {}",
                adaptive.decrease_factor
            ),
        );
    }
    if !(adaptive.recovery_per_second.is_finite() && adaptive.recovery_per_second > 0.0) {
        p.push(
            "limits.adaptive.recovery_per_second",
            format!("must be positive, got {}", adaptive.recovery_per_second),
        );
    }
    if !(adaptive.min_rate.is_finite() && adaptive.min_rate > 0.0) {
        p.push(
            "limits.adaptive.min_rate",
            format!("must be positive, got {}", adaptive.min_rate),
        );
    }
    let scope = match l.scope.as_deref().unwrap_or("egress_ip") {
        "egress_ip" => Scope::EgressIp,
        "egress_ip_and_account" => Scope::EgressIpAndAccount,
        other => {
            p.push(
                "limits.scope",
                format!("{other:?} is not one of \"egress_ip\", \"egress_ip_and_account\""),
            );
            Scope::EgressIp
        }
    };
    let backend = match l.backend.as_deref().unwrap_or("local") {
        "local" => Backend::Local,
        "redis" => Backend::Redis,
        other => {
            p.push(
                "limits.backend",
                format!("{other:?} is not one of \"local\", \"redis\""),
            );
            Backend::Local
        }
    };
    let limits = LimitsConfig {
        general_per_second: p.positive_u32("limits.general_per_second", l.general_per_second, 10),
        telephony_per_second: p.positive_u32(
            "limits.telephony_per_second",
            l.telephony_per_second,
            40,
        ),
        jitter_allowance: p.duration(
            "limits.jitter_allowance",
            l.jitter_allowance.as_deref(),
            "20ms",
        ),
        max_queue_wait: p.duration("limits.max_queue_wait", l.max_queue_wait.as_deref(), "30s"),
        queue_capacity: p.positive_usize("limits.queue_capacity", l.queue_capacity, 10_000),
        max_queued_per_tenant: p.positive_usize(
            "limits.max_queued_per_tenant",
            l.max_queued_per_tenant,
            1_000,
        ),
        scope,
        backend,
        adaptive,
    };
    for (path, rate) in [
        ("limits.general_per_second", limits.general_per_second),
        ("limits.telephony_per_second", limits.telephony_per_second),
    ] {
        if rate.get() > 10_000 {
            p.push(
                path,
                format!("{rate} is far above any RetailCRM limit; at most 10000"),
            );
        }
    }
    if limits.jitter_allowance >= Duration::from_secs(1) {
        p.push(
            "limits.jitter_allowance",
            "must be shorter than 1s (it widens the 1 s window)",
        );
    }
    if limits.max_queue_wait.is_zero() {
        p.push("limits.max_queue_wait", "must be longer than zero");
    }

    let r = &raw.retry;
    let retry = RetryConfig {
        max_attempts: p.positive_u32("retry.max_attempts", r.max_attempts, 4),
        initial_backoff: p.duration(
            "retry.initial_backoff",
            r.initial_backoff.as_deref(),
            "200ms",
        ),
        max_backoff: p.duration("retry.max_backoff", r.max_backoff.as_deref(), "5s"),
    };
    if retry.max_backoff < retry.initial_backoff {
        p.push(
            "retry.max_backoff",
            "must not be shorter than retry.initial_backoff",
        );
    }

    let rd = &raw.redis;
    let redis_url = rd
        .url
        .clone()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    match Url::parse(&redis_url) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") => {}
        _ => p.push("redis.url", "must be a redis:// or rediss:// URL"),
    }
    let redis = RedisConfig {
        url: Secret::new(redis_url),
        key_prefix: rd.key_prefix.clone().unwrap_or_else(|| "crmgate".into()),
        expected_replicas: p.positive_u32("redis.expected_replicas", rd.expected_replicas, 1),
        timeout: p.duration("redis.timeout", rd.timeout.as_deref(), "250ms"),
    };

    if raw.tenants.is_empty() {
        p.push("tenants", "no tenants: add at least one [[tenants]] entry");
    }
    let mut tenants = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut client_keys: HashMap<String, usize> = HashMap::new();
    for (i, t) in raw.tenants.iter().enumerate() {
        // Uniqueness is checked on the raw entries, so a duplicate is
        // reported even when either entry has other problems too.
        if let Some(name) = t.name.as_ref().filter(|n| !n.is_empty()) {
            if let Some(first) = names.insert(name.clone(), i) {
                p.push(
                    &format!("tenants[{i}].name"),
                    format!("{name:?} is already used by tenants[{first}]"),
                );
            }
        }
        for (k, key) in t.client_keys.iter().enumerate() {
            if let Some(first) = client_keys.insert(key.clone(), i) {
                let msg = if first == i {
                    "is listed twice".to_string()
                } else {
                    format!("is also a client key of tenants[{first}]")
                };
                p.push(&format!("tenants[{i}].client_keys[{k}]"), msg);
            }
        }
        if let Some(tenant) = tenant(&mut p, &mut warnings, i, t, &template, &limits, env) {
            tenants.push(tenant);
        }
    }

    if p.0.is_empty() {
        Ok(Config {
            server,
            upstream,
            limits,
            retry,
            redis,
            tenants,
            checksum,
            warnings,
        })
    } else {
        Err(ConfigError { problems: p.0 })
    }
}

/// Validates one tenant; `None` when a field it needs is unusable (the
/// problem is recorded).
fn tenant(
    p: &mut Problems,
    warnings: &mut Vec<String>,
    i: usize,
    t: &RawTenant,
    template: &str,
    limits: &LimitsConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<TenantConfig> {
    let at = |field: &str| format!("tenants[{i}].{field}");
    let before = p.0.len();

    let name = t.name.clone().unwrap_or_default();
    if name.is_empty() {
        p.push(&at("name"), "is required");
    } else if !is_plain_name(&name) || name == "api" {
        p.push(&at("name"), format!("{name:?} must be letters, digits, '-' or '_' (and not \"api\"): it is a URL path segment"));
    }

    let base = match (&t.base_url, &t.subdomain) {
        (Some(url), _) => Some((at("base_url"), url.clone())),
        (None, Some(sub)) => {
            if !is_plain_name(sub) {
                p.push(
                    &at("subdomain"),
                    format!("{sub:?} is not a valid subdomain"),
                );
                None
            } else {
                Some((
                    "upstream.base_url".to_string(),
                    template.replace("{subdomain}", sub),
                ))
            }
        }
        (None, None) => {
            p.push(
                &at("subdomain"),
                "set subdomain (or base_url) so crmgate knows where the account lives",
            );
            None
        }
    };
    let base_url = base.and_then(|(path, text)| match Url::parse(&text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            if u.query().is_some() || u.fragment().is_some() {
                p.push(&path, format!("{text:?} must not have a query or fragment"));
            }
            warnings.extend(trust::cleartext_warning(&path, &name, &u));
            Some(u)
        }
        Ok(_) => {
            p.push(
                &path,
                format!("{text:?} must be an http:// or https:// URL with a host"),
            );
            None
        }
        Err(e) => {
            p.push(&path, format!("{text:?} is not a URL ({e})"));
            None
        }
    });

    let sources = [
        t.api_key_env.is_some(),
        t.api_key_file.is_some(),
        t.api_key.is_some(),
    ];
    let key = match sources.iter().filter(|s| **s).count() {
        0 => {
            p.push(
                &at("api_key_env"),
                "no key: set api_key_env (or api_key_file)",
            );
            None
        }
        1 => {
            if let Some(var) = &t.api_key_env {
                match env(var).map(|v| v.trim().to_string()) {
                    Some(v) if !v.is_empty() => Some((Secret::new(v), KeySource::Env(var.clone()))),
                    Some(_) => {
                        p.push(
                            &at("api_key_env"),
                            format!("environment variable {var} is empty"),
                        );
                        None
                    }
                    None => {
                        p.push(
                            &at("api_key_env"),
                            format!("environment variable {var} is not set"),
                        );
                        None
                    }
                }
            } else if let Some(file) = &t.api_key_file {
                match std::fs::read_to_string(file).map(|v| v.trim().to_string()) {
                    Ok(v) if !v.is_empty() => {
                        Some((Secret::new(v), KeySource::File(PathBuf::from(file))))
                    }
                    Ok(_) => {
                        p.push(&at("api_key_file"), format!("{file} is empty"));
                        None
                    }
                    Err(e) => {
                        p.push(&at("api_key_file"), format!("cannot read {file}: {e}"));
                        None
                    }
                }
            } else {
                let v = t.api_key.as_deref().unwrap_or_default().trim().to_string();
                if v.is_empty() {
                    p.push(&at("api_key"), "is empty");
                    None
                } else {
                    warnings.push(format!(
                        "{}: the key is written in the config; prefer api_key_env or api_key_file",
                        at("api_key")
                    ));
                    Some((Secret::new(v), KeySource::Inline))
                }
            }
        }
        _ => {
            p.push(
                &at("api_key_env"),
                "set only one of api_key_env, api_key_file, api_key",
            );
            None
        }
    };

    let mut keys = Vec::new();
    for (k, ck) in t.client_keys.iter().enumerate() {
        if ck.trim().is_empty() || ck.trim() != ck {
            p.push(
                &format!("tenants[{i}].client_keys[{k}]"),
                "must be non-empty, without surrounding spaces",
            );
        } else if let Some((real, _)) = &key {
            if real.expose() == ck {
                p.push(
                    &format!("tenants[{i}].client_keys[{k}]"),
                    "must not be the real CRM key",
                );
            }
        }
        keys.push(Secret::new(ck.clone()));
    }
    if let Some(site) = &t.site {
        if site.trim().is_empty() {
            p.push(&at("site"), "must not be empty when set");
        }
    }
    let weight = p.positive_u32(&at("weight"), t.weight, 1);
    if weight.get() > 1000 {
        p.push(&at("weight"), "must be at most 1000");
    }
    let max_queued = p.positive_usize(
        &at("max_queued"),
        t.max_queued,
        limits.max_queued_per_tenant.get(),
    );

    if let Some((k, source)) = &key {
        if !k.expose().bytes().all(|b| b.is_ascii_graphic()) {
            p.push(
                &at("api_key_env"),
                format!("the key from {source} has characters an HTTP header cannot carry"),
            );
        }
    }
    let (api_key, key_source) = key?;
    if p.0.len() != before {
        return None;
    }
    Some(TenantConfig {
        name,
        base_url: base_url?,
        api_key,
        key_source,
        client_keys: keys,
        site: t.site.clone(),
        weight,
        max_queued,
    })
}

#[cfg(test)]
mod tests;
