//! `[server]`: listeners, the edge's limits, browser and host rules, and
//! the admin token. Never echoes a token, nor the name of the variable or
//! file it comes from (someone may have pasted the token there).

use std::net::IpAddr;
use std::path::PathBuf;

use url::Url;

use super::super::raw::RawServer;
use super::super::*;
use super::Problems;

/// Validates `[server]`. Never echoes a token, nor the name of the
/// variable or file it comes from (someone may have pasted the token there).
pub(super) fn server(
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
        drain_accept: p.duration("server.drain_accept", s.drain_accept.as_deref(), "5s"),
        header_timeout: p.duration("server.header_timeout", s.header_timeout.as_deref(), "10s"),
        body_timeout: p.duration("server.body_timeout", s.body_timeout.as_deref(), "30s"),
        max_connections: p.positive_usize("server.max_connections", s.max_connections, 10_000),
        worker_threads: s
            .worker_threads
            .map(|n| p.positive_usize("server.worker_threads", Some(n), 1)),
        allowed_origins: allowed_origins(p, s.allowed_origins.as_deref().unwrap_or_default()),
        allowed_hosts: allowed_hosts(p, s.allowed_hosts.as_deref().unwrap_or_default()),
        admin_token,
        admin_token_source,
        tls: super::tls::tls(p, s),
    };
    let mut server = server;
    if s.drain_accept.is_none() {
        // The default never asks for more than the grace allows.
        server.drain_accept = server.drain_accept.min(server.shutdown_grace);
    } else if server.drain_accept > server.shutdown_grace {
        p.push(
            "server.drain_accept",
            "must not be longer than server.shutdown_grace (requests accepted \
             during the drain are served within the grace)",
        );
    }
    if server.listen == server.admin_listen && server.listen.port() != 0 {
        p.push("server.admin_listen", "must differ from server.listen");
    }
    if let Some(tls) = server.tls.as_ref().filter(|t| t.listen.port() != 0) {
        if tls.listen == server.listen || tls.listen == server.admin_listen {
            p.push(
                "server.tls_listen",
                "must differ from server.listen and server.admin_listen",
            );
        }
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

#[cfg(test)]
mod tests;
