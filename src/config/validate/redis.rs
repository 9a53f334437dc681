//! The `[redis]` rules: one topology (url, sentinels or cluster_nodes), URLs
//! this build can connect with, one source for the password, a CA file only
//! with TLS.
//!
//! Messages name the field and what is wrong, never a URL (it may hold a
//! password), a password, a variable's name or a file's contents; a CA
//! file's problems name its path, as `upstream.ca_file`'s do.

use std::path::{Path, PathBuf};

use ::redis::IntoConnectionInfo;
use url::Url;

use super::super::raw::RawRedis;
use super::super::trust::read_ca_file;
use super::super::{secrets, PasswordSource, RedisConfig, RedisTopology, Secret};
use super::Problems;

const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// What the URLs of one topology have in common.
#[derive(Default)]
struct Seen {
    /// `Some(true)` once a `rediss://` URL was seen, `Some(false)` for `redis://`.
    tls: Option<bool>,
    /// Whether any URL carries a password.
    password: bool,
}

/// Checks one URL at `path`; returns it if usable.
fn url(p: &mut Problems, path: &str, text: &str, seen: &mut Seen, cluster: bool) -> Option<Secret> {
    let u = match Url::parse(text) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss") => u,
        _ => {
            p.push(path, "must be a redis:// or rediss:// URL");
            return None;
        }
    };
    let tls = u.scheme() == "rediss";
    if u.host_str().is_none_or(str::is_empty) {
        p.push(path, "has no host");
        return None;
    }
    if u.fragment() == Some("insecure") {
        // redis-rs reads `#insecure` as "skip hostname checks", which needs a
        // feature this build leaves out on purpose.
        p.push(
            path,
            "asks for #insecure (no hostname check), which this build does not support; \
             trust a private CA with redis.ca_file instead",
        );
        return None;
    }
    if let Err(e) = text.into_connection_info() {
        // The crate's error kinds are fixed phrases; its detail may quote the
        // URL, so only the kind is shown.
        p.push(
            path,
            format!("cannot be used by the Redis client ({:?})", e.kind()),
        );
        return None;
    }
    if cluster && !matches!(u.path(), "" | "/" | "/0") {
        p.push(
            path,
            "selects a database; Redis Cluster has only database 0",
        );
    }
    match seen.tls {
        Some(other) if other != tls => p.push(
            path,
            "mixes redis:// and rediss://: every URL of one topology uses the same scheme",
        ),
        _ => seen.tls = Some(tls),
    }
    seen.password |= u.password().is_some();
    Some(Secret::new(text))
}

/// A list of URLs (`sentinels`, `cluster_nodes`).
fn urls(
    p: &mut Problems,
    path: &str,
    list: &[String],
    seen: &mut Seen,
    cluster: bool,
) -> Vec<Secret> {
    if list.is_empty() {
        p.push(path, "is empty: give at least one redis:// URL");
    }
    list.iter()
        .enumerate()
        .filter_map(|(i, text)| url(p, &format!("{path}[{i}]"), text, seen, cluster))
        .collect()
}

/// Validates `[redis]`.
pub(super) fn redis(
    p: &mut Problems,
    warnings: &mut Vec<String>,
    rd: &RawRedis,
    env: &dyn Fn(&str) -> Option<String>,
) -> RedisConfig {
    let mut seen = Seen::default();
    let given = [
        rd.url.is_some(),
        rd.sentinels.is_some(),
        rd.cluster_nodes.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        p.push(
            "redis",
            "give exactly one of redis.url, redis.sentinels, redis.cluster_nodes",
        );
    }
    if rd.sentinel_master.is_some() && rd.sentinels.is_none() {
        p.push("redis.sentinel_master", "is only used with redis.sentinels");
    }
    let topology = if let Some(list) = &rd.sentinels {
        let sentinels = urls(p, "redis.sentinels", list, &mut seen, false);
        let master = match rd.sentinel_master.as_deref().map(str::trim) {
            Some(m) if !m.is_empty() => m.to_string(),
            _ => {
                p.push(
                    "redis.sentinel_master",
                    "is required with redis.sentinels: the name the Sentinels monitor",
                );
                String::new()
            }
        };
        RedisTopology::Sentinel { sentinels, master }
    } else if let Some(list) = &rd.cluster_nodes {
        RedisTopology::Cluster(urls(p, "redis.cluster_nodes", list, &mut seen, true))
    } else {
        let text = rd.url.as_deref().unwrap_or(DEFAULT_URL);
        RedisTopology::Single(
            url(p, "redis.url", text, &mut seen, false).unwrap_or_else(|| Secret::new(DEFAULT_URL)),
        )
    };
    let tls = seen.tls.unwrap_or(false);

    // A password in a Sentinel's URL is that Sentinel's; the master's may be
    // given beside it (without one, the master gets the Sentinels').
    let sentinel = matches!(topology, RedisTopology::Sentinel { .. });
    let (password, password_source) = password(p, warnings, rd, env, seen.password, sentinel);

    let ca = rd.ca_file.as_ref().and_then(|file| {
        if !tls {
            p.push(
                "redis.ca_file",
                "is only used with rediss:// URLs (TLS); the URLs here are redis://",
            );
            return None;
        }
        read_ca_file(Path::new(file))
            .map_err(|e| p.push("redis.ca_file", e))
            .ok()
    });

    RedisConfig {
        topology,
        password,
        password_source,
        tls,
        ca,
        key_prefix: rd.key_prefix.clone().unwrap_or_else(|| "crmgate".into()),
        expected_replicas: p.positive_u32("redis.expected_replicas", rd.expected_replicas, 1),
        timeout: p.duration("redis.timeout", rd.timeout.as_deref(), "250ms"),
        required: rd.required.unwrap_or(false),
    }
}

/// The password from `password_env` or `password_file` (at most one, and not
/// beside a password in a URL).
fn password(
    p: &mut Problems,
    warnings: &mut Vec<String>,
    rd: &RawRedis,
    env: &dyn Fn(&str) -> Option<String>,
    in_url: bool,
    sentinel: bool,
) -> (Option<Secret>, Option<PasswordSource>) {
    if rd.password_env.is_some() && rd.password_file.is_some() {
        p.push(
            "redis.password_env",
            "give only one of redis.password_env, redis.password_file",
        );
        return (None, None);
    }
    let (field, read) = match (&rd.password_env, &rd.password_file) {
        (Some(var), _) => (
            "redis.password_env",
            secrets::from_env(var, env).map(|v| (v, PasswordSource::Env(var.clone()))),
        ),
        (_, Some(file)) => (
            "redis.password_file",
            secrets::from_file(file).map(|v| (v, PasswordSource::File(PathBuf::from(file)))),
        ),
        _ => return (None, in_url.then_some(PasswordSource::Url)),
    };
    if in_url && !sentinel {
        p.push(
            field,
            "a URL already carries a password: give it in one place only",
        );
        return (None, None);
    }
    match read {
        Ok((value, source)) => {
            // A file's trailing newline is not part of the password.
            let value = value.trim_end_matches(['\r', '\n']).to_string();
            if value.is_empty() {
                p.push(field, "gives an empty password");
                return (None, None);
            }
            if let PasswordSource::File(path) = &source {
                if let Some(w) = secrets::exposure(path, "the Redis password") {
                    warnings.push(format!("redis.password_file: {w}"));
                }
            }
            (Some(Secret::new(value)), Some(source))
        }
        Err(e) => {
            p.push(field, e);
            (None, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, PasswordSource, RedisTopology};

    const TENANT: &str = "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key = \"k\"\n";

    fn env(name: &str) -> Option<String> {
        (name == "REDIS_PW").then(|| "pw-from-env-SECRET".to_string())
    }

    fn load(redis: &str) -> Result<Config, ConfigError> {
        let text = format!("[limits]\nbackend = \"redis\"\n[redis]\n{redis}\n{TENANT}");
        Config::from_toml(&text, "test.toml", &env)
    }

    /// The problems of a rejected `[redis]`, each checked to hold no secret.
    fn problems(redis: &str) -> Vec<String> {
        let p = load(redis).expect_err("rejected").problems;
        for line in &p {
            assert!(!line.contains("SECRET"), "{line}");
        }
        p
    }

    fn has(p: &[String], needle: &str) -> bool {
        p.iter().any(|l| l.contains(needle))
    }

    #[test]
    fn exactly_one_topology() {
        let c = load("").unwrap();
        assert!(matches!(c.redis.topology, RedisTopology::Single(_)));
        let p = problems(
            "url = \"redis://h:6379\"\ncluster_nodes = [\"redis://h:7000\"]\nsentinels = [\"redis://h:26379\"]\nsentinel_master = \"m\"",
        );
        assert!(has(&p, "redis: give exactly one of"), "{p:?}");
        let p = problems("sentinels = [\"redis://h:26379\"]");
        assert!(has(&p, "redis.sentinel_master: is required"), "{p:?}");
        let p = problems("sentinel_master = \"m\"");
        assert!(has(&p, "redis.sentinel_master: is only used"), "{p:?}");
        let p = problems("cluster_nodes = []");
        assert!(has(&p, "redis.cluster_nodes: is empty"), "{p:?}");
        let p = problems("cluster_nodes = [\"redis://:SECRET@h:7000/2\", \"http://SECRET\"]");
        assert!(
            has(&p, "redis.cluster_nodes[0]: selects a database"),
            "{p:?}"
        );
        assert!(
            has(&p, "redis.cluster_nodes[1]: must be a redis://"),
            "{p:?}"
        );
        let p =
            problems("sentinels = [\"redis://h:1\", \"rediss://h:2\"]\nsentinel_master = \"m\"");
        assert!(has(&p, "redis.sentinels[1]: mixes"), "{p:?}");
        let c =
            load("sentinels = [\"redis://h:1\", \"redis://h:2\"]\nsentinel_master = \"mymaster\"")
                .unwrap();
        assert_eq!(
            c.redis.topology,
            RedisTopology::Sentinel {
                sentinels: vec![
                    crate::config::Secret::new("redis://h:1"),
                    crate::config::Secret::new("redis://h:2")
                ],
                master: "mymaster".into()
            }
        );
    }

    #[test]
    fn a_url_the_build_cannot_use_fails_check() {
        let p = problems("url = \"rediss://:SECRET@h:6380/#insecure\"");
        assert!(has(&p, "redis.url: asks for #insecure"), "{p:?}");
        let p = problems("url = \"redis+unix:///tmp/SECRET.sock\"");
        assert!(
            has(&p, "redis.url: must be a redis:// or rediss:// URL"),
            "{p:?}"
        );
        let p = problems("url = \"redis://h:6379/not-a-db-SECRET\"");
        assert!(
            has(&p, "redis.url: cannot be used by the Redis client"),
            "{p:?}"
        );
        assert!(load("url = \"rediss://h:6380\"").unwrap().redis.tls);
    }

    #[test]
    fn the_password_comes_from_one_place_and_never_shows() {
        let c = load("url = \"redis://h:6379\"\npassword_env = \"REDIS_PW\"").unwrap();
        assert_eq!(
            c.redis.password.as_ref().unwrap().expose(),
            "pw-from-env-SECRET"
        );
        assert_eq!(
            c.redis.password_source,
            Some(PasswordSource::Env("REDIS_PW".into()))
        );
        let shown = c.summary();
        assert!(shown.contains("password from env REDIS_PW"), "{shown}");
        assert!(!shown.contains("SECRET"), "{shown}");

        let c = load("url = \"redis://user:url-SECRET@h:6379\"").unwrap();
        assert_eq!(c.redis.password_source, Some(PasswordSource::Url));
        let shown = c.summary();
        assert!(shown.contains("redis://h:6379"), "{shown}");
        assert!(
            !shown.contains("SECRET") && !shown.contains("user"),
            "{shown}"
        );

        let p = problems("url = \"redis://:url-SECRET@h\"\npassword_env = \"REDIS_PW\"");
        assert!(
            has(&p, "redis.password_env: a URL already carries a password"),
            "{p:?}"
        );
        let p = problems("password_env = \"REDIS_PW\"\npassword_file = \"/nonexistent\"");
        assert!(has(&p, "give only one of"), "{p:?}");
        let p = problems("password_env = \"UNSET_VAR\"");
        assert!(
            has(
                &p,
                "redis.password_env: names an environment variable that is not set"
            ),
            "{p:?}"
        );

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "file-pw-SECRET\n").unwrap();
        let c = load(&format!("password_file = \"{}\"", file.display())).unwrap();
        assert_eq!(c.redis.password.unwrap().expose(), "file-pw-SECRET");
        // A Sentinel's URL password is the Sentinels'; the master's may be given beside it.
        let c = load(
            "sentinels = [\"redis://:s-SECRET@h:26379\"]\nsentinel_master = \"m\"\npassword_env = \"REDIS_PW\"",
        )
        .unwrap();
        assert!(c.redis.password.is_some());
    }

    #[test]
    fn a_ca_file_needs_tls_and_a_pem_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("ca.pem");
        std::fs::write(&bad, "SECRET not a certificate").unwrap();
        let p = problems(&format!(
            "url = \"redis://h\"\nca_file = \"{}\"",
            bad.display()
        ));
        assert!(
            has(&p, "redis.ca_file: is only used with rediss://"),
            "{p:?}"
        );
        let p = problems(&format!(
            "url = \"rediss://h\"\nca_file = \"{}\"",
            bad.display()
        ));
        assert!(has(&p, "redis.ca_file:"), "{p:?}");
        assert!(has(&p, &bad.display().to_string()), "names the path: {p:?}");
    }
}
