//! Turns a [`RawConfig`] into a [`Config`], collecting every problem.
//!
//! Each rule names the field path it checks (`tenants[1].api_key_env`), so an
//! operator can fix a whole file in one pass. Messages say what is wrong and
//! what form is expected, but never echo a value from the file: not a key,
//! not a variable name or path (the key itself may have been written there),
//! not even a harmless-looking number, so no rule has to judge what is safe.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use super::raw::RawConfig;
use super::*;

mod cache;
mod export;
mod reconcile;
mod redis;
mod server;
mod tenant;
mod tls;

pub use server::normalize_origin;

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
            Err(_) => {
                // humantime's error quotes the offending unit: not shown.
                self.push(
                    path,
                    "is not a duration; write e.g. \"250ms\", \"5s\", \"1m\"",
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
                    format!("must be a whole number from 1 to {}", u32::MAX),
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
                self.push(path, "must be a positive whole number");
                NonZeroUsize::new(default.max(1)).unwrap_or(NonZeroUsize::MIN)
            }
        }
    }

    fn socket(&mut self, path: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        text.parse().unwrap_or_else(|_| {
            self.push(
                path,
                "is not an address; write IP:PORT, e.g. \"127.0.0.1:8080\"",
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
/// The lowest `limits.adaptive.min_rate` accepted.
const MIN_RATE_FLOOR: f64 = 0.01;

pub(super) fn validate(
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
    checksum: String,
) -> Result<Config, ConfigError> {
    let mut p = Problems::default();
    let mut warnings = Vec::new();

    let server = server::server(&mut p, &mut warnings, &raw.server, env);

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
            Ok(ip) if egress_ips.contains(&ip) => {
                p.push(&format!("upstream.egress_ips[{i}]"), "is listed twice")
            }
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() => p.push(
                &format!("upstream.egress_ips[{i}]"),
                "is not a usable source address (unspecified or multicast)",
            ),
            Ok(ip) => egress_ips.push(ip),
            Err(_) => p.push(&format!("upstream.egress_ips[{i}]"), "is not an IP address"),
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
        warm_connections: u.warm_connections.unwrap_or(true),
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
        recovery_per_second: a.recovery_per_second.unwrap_or(1.0),
        min_rate: a.min_rate.unwrap_or(1.0),
    };
    if !(adaptive.decrease_factor > 0.0 && adaptive.decrease_factor < 1.0) {
        p.push(
            "limits.adaptive.decrease_factor",
            "must be between 0 and 1 (exclusive)",
        );
    }
    if !(adaptive.recovery_per_second.is_finite() && adaptive.recovery_per_second > 0.0) {
        p.push("limits.adaptive.recovery_per_second", "must be positive");
    }
    // The pace is window / rate: a rate near zero would overflow it.
    if !(adaptive.min_rate.is_finite() && adaptive.min_rate >= MIN_RATE_FLOOR) {
        p.push(
            "limits.adaptive.min_rate",
            "must be at least 0.01 (one request per 100 windows)",
        );
    }
    let scope = match l.scope.as_deref().unwrap_or("egress_ip") {
        "egress_ip" => Scope::EgressIp,
        "egress_ip_and_account" => Scope::EgressIpAndAccount,
        _ => {
            p.push(
                "limits.scope",
                "must be one of \"egress_ip\", \"egress_ip_and_account\"",
            );
            Scope::EgressIp
        }
    };
    let backend = match l.backend.as_deref().unwrap_or("local") {
        "local" => Backend::Local,
        "redis" => Backend::Redis,
        _ => {
            p.push("limits.backend", "must be one of \"local\", \"redis\"");
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
        max_buffered_bytes: p.positive_usize(
            "limits.max_buffered_bytes",
            l.max_buffered_bytes,
            64 * 1024 * 1024,
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
            p.push(path, "is far above any RetailCRM limit; at most 10000");
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

    let log = LogConfig {
        query: match raw.log.query.as_deref().unwrap_or("names") {
            "names" => LogQuery::Names,
            "full" => LogQuery::Full,
            "none" => LogQuery::None,
            _ => {
                p.push("log.query", "must be one of \"names\", \"full\", \"none\"");
                LogQuery::Names
            }
        },
    };

    let export = export::export(&mut p, &raw.export);
    let reconcile = reconcile::reconcile(&mut p, &raw.reconcile);

    let r = &raw.retry;
    let retry = RetryConfig {
        max_attempts: p.positive_u32("retry.max_attempts", r.max_attempts, 8),
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

    let redis = redis::redis(&mut p, &mut warnings, &raw.redis, env);

    if raw.tenants.is_empty() {
        p.push("tenants", "no tenants: add at least one [[tenants]] entry");
    }
    let mut tenants = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    // Each client key's tenant and the field path it was first seen at.
    let mut client_keys: HashMap<String, (usize, String)> = HashMap::new();
    for (i, t) in raw.tenants.iter().enumerate() {
        // Uniqueness is checked on the raw entries, so a duplicate is
        // reported even when either entry has other problems too.
        if let Some(name) = t.name.as_ref().filter(|n| !n.is_empty()) {
            if let Some(first) = names.insert(name.clone(), i) {
                p.push(
                    &format!("tenants[{i}].name"),
                    format!("is already used by tenants[{first}]"),
                );
            }
        }
        let clients = tenant::client_keys_of(&mut p, &mut warnings, i, t, env);
        for (at, key) in &clients.keys {
            match client_keys.get(key) {
                Some((first, first_at)) => {
                    let msg = if *first == i {
                        format!("is listed twice (also at {first_at})")
                    } else {
                        format!("is also a client key of tenants[{first}] (at {first_at})")
                    };
                    p.push(at, msg);
                }
                None => {
                    client_keys.insert(key.clone(), (i, at.clone()));
                }
            }
        }
        if let Some(tenant) = tenant::tenant(&mut p, &mut warnings, i, t, &template, &limits, env)
            .and_then(|tenant| tenant::with_client_keys(&mut p, tenant, clients))
        {
            tenants.push(tenant);
        }
    }
    if !server.listen.ip().is_loopback() {
        for (i, t) in tenants
            .iter()
            .enumerate()
            .filter(|(_, t)| t.client_keys.is_empty())
        {
            warnings.push(format!(
                "tenants[{i}] ({}): has no client keys and server.listen is not a loopback \
                 address, so anything that can reach it can use this account's CRM key; set \
                 client_keys_file (or client_keys_env, client_keys), or listen on 127.0.0.1",
                t.name
            ));
        }
    }

    let cache = cache::cache(&mut p, &raw.cache);

    if p.0.is_empty() {
        Ok(Config {
            server,
            upstream,
            limits,
            retry,
            redis,
            log,
            export,
            reconcile,
            tenants,
            cache,
            checksum,
            warnings,
        })
    } else {
        Err(ConfigError { problems: p.0 })
    }
}

#[cfg(test)]
mod tests;
