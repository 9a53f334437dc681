//! `[cache]`: the reference-data cache and coalescing of identical reads,
//! as validated types. Owns only the shape of the settings and the path
//! glob; the cache itself lives in [`crate::cache`].

use std::time::Duration;

/// The paths cached when no rule says otherwise, at `cache.ttl`: RetailCRM's
/// dictionaries and the two account-level reads every client makes on start.
pub const CACHED_BY_DEFAULT: [&str; 3] = [
    "/api/v*/reference/*",
    "/api/credentials",
    "/api/api-versions",
];

/// `[cache]`
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Off: no cache and no coalescing; every request goes to the CRM.
    pub enabled: bool,
    /// All entries together (keys, headers, bodies) at most this many bytes.
    pub max_bytes: u64,
    /// Time to live of an entry no rule names.
    pub ttl: Duration,
    /// How long past its TTL an entry may still be served when the CRM
    /// fails or the queue deadline passes (0: never).
    pub stale_if_error: Duration,
    /// `[[cache.rules]]` in file order, then the defaults: first match wins.
    pub rules: Vec<CacheRule>,
    /// With the Redis backend: answers are also kept in Redis for the whole
    /// fleet (`cache.shared`, default on); the in-process cache is then an
    /// L1 in front of it.
    pub shared: bool,
    /// Bound of the fleet's entries in Redis, in bytes (`cache.shared_max_bytes`).
    pub shared_max_bytes: u64,
    /// With the fleet cache: how long this replica keeps an answer in
    /// process before asking Redis again (`cache.local_ttl`).
    pub local_ttl: std::time::Duration,
}

/// One path rule: requests whose API path matches `path` live `ttl` (zero:
/// not cached).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRule {
    /// A glob over the API path (`/api/v5/...`): `*` matches any run of
    /// characters, `/` included.
    pub path: String,
    /// Time to live; zero turns caching off for the path.
    pub ttl: Duration,
}

impl CacheConfig {
    /// The TTL for an API path: from the first matching rule, `None` when
    /// no rule matches or the match says `0s`.
    pub fn ttl_for(&self, api_path: &str) -> Option<Duration> {
        self.rules
            .iter()
            .find(|r| glob(&r.path, api_path))
            .map(|r| r.ttl)
            .filter(|t| !t.is_zero())
    }
}

/// `*`-only glob matching, `*` spanning any characters. Iterative with one
/// backtrack point, so it is linear-ish and never recursive.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_paths() {
        assert!(glob("/api/v*/reference/*", "/api/v5/reference/statuses"));
        assert!(glob(
            "/api/v*/reference/*",
            "/api/v5/reference/statuses/new/edit"
        ));
        assert!(!glob("/api/v*/reference/*", "/api/v5/orders"));
        assert!(glob("/api/credentials", "/api/credentials"));
        assert!(!glob("/api/credentials", "/api/credentials2"));
        assert!(glob("*", ""));
        assert!(glob("/a*b*c", "/aXbYbZc"));
        assert!(!glob("/a*b*c", "/aXbYbZ"));
    }
}
