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

use super::raw::{RawConfig, RawServer, RawTenant};
use super::secrets;
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
pub(super) fn validate(
    raw: RawConfig,
    env: &dyn Fn(&str) -> Option<String>,
    checksum: String,
) -> Result<Config, ConfigError> {
    let mut p = Problems::default();
    let mut warnings = Vec::new();

    let server = server(&mut p, &mut warnings, &raw.server, env);

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
            "must be between 0 and 1 (exclusive)",
        );
    }
    if !(adaptive.recovery_per_second.is_finite() && adaptive.recovery_per_second > 0.0) {
        p.push("limits.adaptive.recovery_per_second", "must be positive");
    }
    if !(adaptive.min_rate.is_finite() && adaptive.min_rate > 0.0) {
        p.push("limits.adaptive.min_rate", "must be positive");
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
        let clients = client_keys_of(&mut p, &mut warnings, i, t, env);
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
        if let Some(tenant) = tenant(&mut p, &mut warnings, i, t, &template, &limits, env)
            .and_then(|tenant| with_client_keys(&mut p, tenant, clients))
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

    if p.0.is_empty() {
        Ok(Config {
            server,
            upstream,
            limits,
            retry,
            redis,
            log,
            tenants,
            checksum,
            warnings,
        })
    } else {
        Err(ConfigError { problems: p.0 })
    }
}

/// Validates `[server]`. Never echoes a token, nor the name of the
/// variable or file it comes from (someone may have pasted the token there).
fn server(
    p: &mut Problems,
    warnings: &mut Vec<String>,
    s: &RawServer,
    env: &dyn Fn(&str) -> Option<String>,
) -> ServerConfig {
    let max_body = s.max_body_bytes.unwrap_or(8 * 1024 * 1024);
    if max_body <= 0 {
        p.push("server.max_body_bytes", "must be positive");
    }
    let (admin_token, admin_token_source) = admin_token(p, warnings, s, env).unzip();
    let server = ServerConfig {
        listen: p.socket("server.listen", s.listen.as_deref(), "127.0.0.1:8080"),
        admin_listen: p.socket(
            "server.admin_listen",
            s.admin_listen.as_deref(),
            "127.0.0.1:9090",
        ),
        max_body_bytes: usize::try_from(max_body.max(1)).unwrap_or(usize::MAX),
        shutdown_grace: p.duration("server.shutdown_grace", s.shutdown_grace.as_deref(), "30s"),
        header_timeout: p.duration("server.header_timeout", s.header_timeout.as_deref(), "10s"),
        body_timeout: p.duration("server.body_timeout", s.body_timeout.as_deref(), "30s"),
        max_connections: p.positive_usize("server.max_connections", s.max_connections, 10_000),
        allowed_origins: allowed_origins(p, s.allowed_origins.as_deref().unwrap_or_default()),
        allowed_hosts: allowed_hosts(p, s.allowed_hosts.as_deref().unwrap_or_default()),
        admin_token,
        admin_token_source,
    };
    if server.listen == server.admin_listen && server.listen.port() != 0 {
        p.push("server.admin_listen", "must differ from server.listen");
    }
    for (path, d) in [
        ("server.header_timeout", server.header_timeout),
        ("server.body_timeout", server.body_timeout),
    ] {
        if d.is_zero() {
            p.push(path, "must be longer than zero");
        }
    }
    let token_problem = p.0.iter().any(|l| l.starts_with("server.admin_token"));
    if server.admin_token.is_none() && !server.admin_listen.ip().is_loopback() && !token_problem {
        p.push(
            "server.admin_token",
            "is required when server.admin_listen is not a loopback address: \
             set admin_token_env or admin_token_file (POST /reload then needs \
             Authorization: Bearer <token>), or bind the admin port to 127.0.0.1",
        );
    }
    server
}

/// The admin token from exactly one of `admin_token_env`,
/// `admin_token_file`, `admin_token`; `None` when unset or unusable.
fn admin_token(
    p: &mut Problems,
    warnings: &mut Vec<String>,
    s: &RawServer,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(Secret, KeySource)> {
    let (path, token, source) = match (&s.admin_token_env, &s.admin_token_file, &s.admin_token) {
        (None, None, None) => return None,
        (Some(var), None, None) => {
            let path = "server.admin_token_env";
            match env(var).map(|v| v.trim().to_string()) {
                Some(v) => (path, v, KeySource::Env(var.clone())),
                None => {
                    p.push(path, "the environment variable it names is not set");
                    return None;
                }
            }
        }
        (None, Some(file), None) => {
            let path = "server.admin_token_file";
            match std::fs::read_to_string(file) {
                Ok(v) => (
                    path,
                    v.trim().to_string(),
                    KeySource::File(PathBuf::from(file)),
                ),
                Err(e) => {
                    p.push(
                        path,
                        format!("cannot read the file it names ({})", e.kind()),
                    );
                    return None;
                }
            }
        }
        (None, None, Some(v)) => {
            warnings.push(
                "server.admin_token: the token is written in the config; prefer \
                 admin_token_env or admin_token_file"
                    .to_string(),
            );
            (
                "server.admin_token",
                v.trim().to_string(),
                KeySource::Inline,
            )
        }
        _ => {
            p.push(
                "server.admin_token",
                "set only one of admin_token_env, admin_token_file, admin_token",
            );
            return None;
        }
    };
    if token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
        p.push(
            path,
            format!("the token must be at least {MIN_ADMIN_TOKEN_CHARS} characters"),
        );
        return None;
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        p.push(
            path,
            "the token has characters an Authorization header cannot carry \
             (use visible ASCII, no spaces)",
        );
        return None;
    }
    Some((Secret::new(token), source))
}

/// Shortest admin token accepted: long enough that guessing it over the
/// network is hopeless.
const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// `server.allowed_origins`, normalised to `scheme://host[:port]` (the form
/// browsers send in `Origin`).
fn allowed_origins(p: &mut Problems, raw: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, text) in raw.iter().enumerate() {
        let path = format!("server.allowed_origins[{i}]");
        match normalize_origin(text) {
            Some(origin) if !out.contains(&origin) => out.push(origin),
            Some(_) => p.push(&path, "is listed twice"),
            None => p.push(
                &path,
                "must be an origin such as \"https://crm-tools.example.com\" \
                 (http or https, a host, an optional port, no path); \
                 \"*\" and \"null\" are not accepted",
            ),
        }
    }
    out
}

/// An origin as browsers serialise it, or `None` when `text` is not one
/// (a path, a query, `null`, another scheme).
pub fn normalize_origin(text: &str) -> Option<String> {
    let url = Url::parse(text.trim()).ok()?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    plain.then(|| url.origin().ascii_serialization())
}

/// `server.allowed_hosts`: host names or IP addresses, lowercase, no port.
fn allowed_hosts(p: &mut Problems, raw: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, text) in raw.iter().enumerate() {
        let path = format!("server.allowed_hosts[{i}]");
        let host = text.trim().trim_end_matches('.').to_ascii_lowercase();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let valid = !host.is_empty()
            && (host.parse::<IpAddr>().is_ok()
                || host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !valid {
            p.push(
                &path,
                "must be a host name or IP address without port, e.g. \"crmgate.internal\"",
            );
        } else if out.contains(&host) {
            p.push(&path, "is listed twice");
        } else {
            out.push(host);
        }
    }
    out
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
        p.push(
            &at("name"),
            "must be letters, digits, '-' or '_' (and not \"api\"): it is a URL path segment",
        );
    }

    let base = match (&t.base_url, &t.subdomain) {
        (Some(url), _) => Some((at("base_url"), url.clone())),
        (None, Some(sub)) => {
            if !is_plain_name(sub) {
                p.push(
                    &at("subdomain"),
                    "is not a valid subdomain (letters, digits, '-' or '_')",
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
    // The URL is never shown: it may hold a password, or a key in its query.
    let base_url = base.and_then(|(path, text)| match Url::parse(&text) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            if u.query().is_some() || u.fragment().is_some() {
                p.push(&path, "must not have a query or fragment");
            }
            warnings.extend(trust::cleartext_warning(&path, &name, &u));
            Some(u)
        }
        Ok(_) => {
            p.push(&path, "must be an http:// or https:// URL with a host");
            None
        }
        // url's errors are fixed phrases ("invalid port number"), without the input.
        Err(e) => {
            p.push(&path, format!("is not a URL ({e})"));
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
                match secrets::from_env(var, env).map(|v| v.trim().to_string()) {
                    Ok(v) if !v.is_empty() => Some((Secret::new(v), KeySource::Env(var.clone()))),
                    Ok(_) => {
                        p.push(
                            &at("api_key_env"),
                            "names an environment variable that is empty",
                        );
                        None
                    }
                    Err(e) => {
                        p.push(&at("api_key_env"), e);
                        None
                    }
                }
            } else if let Some(file) = &t.api_key_file {
                match secrets::from_file(file).map(|v| v.trim().to_string()) {
                    Ok(v) if !v.is_empty() => {
                        let path = PathBuf::from(file);
                        if let Some(w) = secrets::exposure(&path, "a CRM key") {
                            warnings.push(format!("{}: {w}", at("api_key_file")));
                        }
                        Some((Secret::new(v), KeySource::File(path)))
                    }
                    Ok(_) => {
                        p.push(&at("api_key_file"), "the file it names is empty");
                        None
                    }
                    Err(e) => {
                        p.push(&at("api_key_file"), e);
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
            let field = match source {
                KeySource::Env(_) => "api_key_env",
                KeySource::File(_) => "api_key_file",
                KeySource::Inline => "api_key",
            };
            p.push(
                &at(field),
                "the key has characters an HTTP header cannot carry",
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
        // Filled in by `with_client_keys`.
        client_keys: Vec::new(),
        client_key_sources: Vec::new(),
        site: t.site.clone(),
        weight,
        max_queued,
    })
}

/// A tenant's client keys from all three sources, each with the field path
/// it came from (for messages, which never show the key).
struct ClientKeys {
    keys: Vec<(String, String)>,
    sources: Vec<KeySource>,
    /// A source could not be read: the tenant must not be served without it,
    /// or it could silently become open (the problem is recorded).
    failed: bool,
}

/// Collects the client keys of `tenants[i]` from `client_keys`,
/// `client_keys_env` and `client_keys_file`.
fn client_keys_of(
    p: &mut Problems,
    warnings: &mut Vec<String>,
    i: usize,
    t: &RawTenant,
    env: &dyn Fn(&str) -> Option<String>,
) -> ClientKeys {
    let at = |field: &str| format!("tenants[{i}].{field}");
    // A source that is set but yields nothing must not quietly open the tenant.
    const EMPTY: &str = "yields no client keys, which would leave the tenant open to anything \
                         that reaches server.listen; add keys, or remove the setting";
    let mut out = ClientKeys {
        keys: Vec::new(),
        sources: Vec::new(),
        failed: false,
    };
    if !t.client_keys.is_empty() {
        out.sources.push(KeySource::Inline);
        for (k, key) in t.client_keys.iter().enumerate() {
            out.keys
                .push((at(&format!("client_keys[{k}]")), key.clone()));
        }
    }
    if let Some(var) = &t.client_keys_env {
        match secrets::from_env(var, env) {
            Ok(value) => {
                let keys = secrets::env_list(&value);
                if keys.is_empty() {
                    p.push(&at("client_keys_env"), EMPTY);
                    out.failed = true;
                }
                for (n, key) in keys {
                    out.keys
                        .push((format!("{} (item {n})", at("client_keys_env")), key));
                }
                out.sources.push(KeySource::Env(var.clone()));
            }
            Err(e) => {
                p.push(&at("client_keys_env"), e);
                out.failed = true;
            }
        }
    }
    if let Some(file) = &t.client_keys_file {
        match secrets::from_file(file) {
            Ok(text) => {
                let keys = secrets::file_list(&text);
                if keys.is_empty() {
                    p.push(&at("client_keys_file"), EMPTY);
                    out.failed = true;
                }
                for (n, key) in keys {
                    out.keys
                        .push((format!("{} (line {n})", at("client_keys_file")), key));
                }
                let path = PathBuf::from(file);
                if let Some(w) = secrets::exposure(&path, "client keys") {
                    warnings.push(format!("{}: {w}", at("client_keys_file")));
                }
                out.sources.push(KeySource::File(path));
            }
            Err(e) => {
                p.push(&at("client_keys_file"), e);
                out.failed = true;
            }
        }
    }
    for (path, key) in &out.keys {
        // They travel in the X-API-KEY header or the query: printable ASCII only.
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            p.push(path, "must be non-empty visible ASCII, without spaces");
            out.failed = true;
        }
    }
    out
}

/// Gives a validated tenant its client keys; `None` when they are unusable
/// (the problem is recorded).
fn with_client_keys(
    p: &mut Problems,
    mut tenant: TenantConfig,
    clients: ClientKeys,
) -> Option<TenantConfig> {
    let mut ok = !clients.failed;
    for (path, key) in &clients.keys {
        if key == tenant.api_key.expose() {
            p.push(path, "must not be the real CRM key");
            ok = false;
        }
    }
    tenant.client_keys = clients
        .keys
        .into_iter()
        .map(|(_, k)| Secret::new(k))
        .collect();
    tenant.client_key_sources = clients.sources;
    ok.then_some(tenant)
}

#[cfg(test)]
mod tests;
