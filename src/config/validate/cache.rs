//! `[cache]`: the switch, the memory bound, the TTLs and the path rules.
//! Never echoes a value from the file.

use super::super::cache::{CacheConfig, CacheRule, CACHED_BY_DEFAULT};
use super::super::raw::RawCache;
use super::Problems;

/// Validates `[cache]`; the configured rules come first, then the default
/// paths at `cache.ttl`.
pub(super) fn cache(p: &mut Problems, c: &RawCache) -> CacheConfig {
    let ttl = p.duration("cache.ttl", c.ttl.as_deref(), "5m");
    let stale_if_error = p.duration("cache.stale_if_error", c.stale_if_error.as_deref(), "1h");
    let max_bytes = c.max_bytes.unwrap_or(32 * 1024 * 1024);
    let shared_max_bytes = c.shared_max_bytes.unwrap_or(64 * 1024 * 1024);
    if shared_max_bytes <= 0 {
        p.push(
            "cache.shared_max_bytes",
            "must be a positive whole number of bytes",
        );
    }
    let local_ttl = p.duration("cache.local_ttl", c.local_ttl.as_deref(), "5s");
    if max_bytes <= 0 {
        p.push(
            "cache.max_bytes",
            "must be a positive whole number of bytes",
        );
    }
    if ttl.is_zero() {
        p.push(
            "cache.ttl",
            "must be longer than zero (set cache.enabled = false to turn the cache off)",
        );
    }
    let mut rules = Vec::new();
    for (i, r) in c.rules.iter().enumerate() {
        let at = format!("cache.rules[{i}]");
        let ttl = match r.ttl.as_deref() {
            Some(text) => p.duration(&format!("{at}.ttl"), Some(text), "0s"),
            None => {
                p.push(
                    &format!("{at}.ttl"),
                    "is missing; write e.g. \"10m\", or \"0s\" to not cache",
                );
                continue;
            }
        };
        match r.path.as_deref() {
            Some(path) if path.starts_with("/api/") && !path.contains(['?', '#']) => {
                rules.push(CacheRule {
                    path: path.to_string(),
                    ttl,
                })
            }
            Some(_) => p.push(
                &format!("{at}.path"),
                "must be an API path starting with /api/ (no query), `*` matching any characters",
            ),
            None => p.push(&format!("{at}.path"), "is missing"),
        }
    }
    rules.extend(CACHED_BY_DEFAULT.iter().map(|path| CacheRule {
        path: path.to_string(),
        ttl,
    }));
    CacheConfig {
        enabled: c.enabled.unwrap_or(true),
        max_bytes: max_bytes.max(1) as u64,
        shared: c.shared.unwrap_or(true),
        shared_max_bytes: shared_max_bytes.max(1) as u64,
        local_ttl,
        ttl,
        stale_if_error,
        rules,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Config;

    const TENANT: &str = "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key = \"k\"\n";

    fn load(cache: &str) -> Result<Config, Vec<String>> {
        Config::from_toml(&format!("{cache}\n{TENANT}"), "t.toml", &|_| None)
            .map_err(|e| e.problems)
    }

    #[test]
    fn defaults_cache_reference_data_for_five_minutes() {
        let c = load("").unwrap().cache;
        assert!(c.enabled);
        assert_eq!(c.max_bytes, 32 * 1024 * 1024);
        assert_eq!(c.stale_if_error, Duration::from_secs(3600));
        let five = Some(Duration::from_secs(300));
        assert_eq!(c.ttl_for("/api/v5/reference/statuses"), five);
        assert_eq!(c.ttl_for("/api/credentials"), five);
        assert_eq!(c.ttl_for("/api/api-versions"), five);
        assert_eq!(c.ttl_for("/api/v5/orders"), None);
    }

    #[test]
    fn rules_come_first_may_turn_off_and_may_add_paths() {
        let c = load(
            "[cache]\nttl = \"1m\"\n\
             [[cache.rules]]\npath = \"/api/v5/reference/sites\"\nttl = \"0s\"\n\
             [[cache.rules]]\npath = \"/api/v5/store/products\"\nttl = \"30s\"\n",
        )
        .unwrap()
        .cache;
        assert_eq!(c.ttl_for("/api/v5/reference/sites"), None);
        assert_eq!(
            c.ttl_for("/api/v5/reference/statuses"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            c.ttl_for("/api/v5/store/products"),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn every_bad_field_is_named() {
        let p = load(
            "[cache]\nmax_bytes = 0\nttl = \"0s\"\nstale_if_error = \"soon\"\n\
             [[cache.rules]]\npath = \"orders\"\nttl = \"1m\"\n\
             [[cache.rules]]\npath = \"/api/x\"\n\
             [[cache.rules]]\npath = \"/api/y\"\nttl = \"later\"\n",
        )
        .unwrap_err();
        for path in [
            "cache.max_bytes:",
            "cache.ttl:",
            "cache.stale_if_error:",
            "cache.rules[0].path:",
            "cache.rules[1].ttl:",
            "cache.rules[2].ttl:",
        ] {
            assert!(p.iter().any(|m| m.starts_with(path)), "{path} in {p:?}");
        }
        assert!(!p
            .iter()
            .any(|m| m.contains("orders") || m.contains("later")));
        let unknown = load("[cache]\nsize = 1\n").unwrap_err();
        assert!(unknown.iter().any(|m| m.contains("size")), "{unknown:?}");
    }
}
