//! The identity of a read: which GETs are "the same" for coalescing and
//! for the cache.
//!
//! Two GETs are identical when they belong to the same tenant and ask for
//! the same API path with the same parameters once the client key is gone
//! (inbound already stripped it). Parameters with *different* names may come
//! in any order; parameters repeating one name (`filter[ids][]=1&…=2`) keep
//! their relative order, because the CRM reads them as a list. The key holds
//! no client key, ever; it is never logged (queries hold customer data).

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A canonical read: tenant, path and sorted parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The tenant (from config): keys of different tenants never meet.
    pub tenant: Arc<str>,
    /// `path` then `?` and the parameters, sorted by name (stable).
    canonical: Box<str>,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.tenant.hash(state);
        self.canonical.hash(state);
    }
}

impl Key {
    /// The key of a GET of `path` with the (already key-stripped) `query`.
    pub fn new(tenant: &Arc<str>, path: &str, query: Option<&str>) -> Key {
        let mut canonical = String::with_capacity(path.len() + 1 + query.map_or(0, str::len));
        canonical.push_str(path);
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            let mut params: Vec<&str> = q.split('&').filter(|p| !p.is_empty()).collect();
            // A stable sort by name only: equal names keep their order.
            params.sort_by_cached_key(|p| name(p));
            canonical.push('?');
            for (i, p) in params.iter().enumerate() {
                if i > 0 {
                    canonical.push('&');
                }
                canonical.push_str(p);
            }
        }
        Key {
            tenant: tenant.clone(),
            canonical: canonical.into_boxed_str(),
        }
    }

    /// Path and sorted parameters (for the fleet cache's hashed key names;
    /// never logged).
    pub(crate) fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The API path part (before `?`).
    pub fn path(&self) -> &str {
        self.canonical.split('?').next().unwrap_or("")
    }

    /// Bytes the key takes, for the cache's weigher.
    pub fn weight(&self) -> usize {
        self.tenant.len() + self.canonical.len() + 2 * std::mem::size_of::<usize>()
    }
}

/// A parameter's name as the CRM reads it (decoded): `ids%5B%5D=1` and
/// `ids[]=2` are one name, whose values keep their order.
fn name(param: &str) -> Cow<'_, str> {
    let raw = param.split_once('=').map_or(param, |(n, _)| n);
    form_urlencoded::parse(raw.as_bytes())
        .next()
        .map_or(Cow::Borrowed(""), |(n, _)| n)
}

/// The dictionary a path reads or writes: `statuses` for
/// `/api/v5/reference/statuses` and `/api/v5/reference/statuses/new/edit`.
pub fn dictionary(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/")?;
    let (_version, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("reference/")?;
    let dict = rest.split('/').next()?;
    (!dict.is_empty()).then_some(dict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, path: &str, query: Option<&str>) -> Key {
        Key::new(&tenant.into(), path, query)
    }

    #[test]
    fn different_names_in_any_order_are_the_same_read() {
        assert_eq!(
            key("a", "/api/v5/orders", Some("page=2&limit=50&site=main")),
            key("a", "/api/v5/orders", Some("site=main&limit=50&page=2"))
        );
    }

    #[test]
    fn repeated_names_keep_their_relative_order() {
        let a = key("a", "/api/v5/orders", Some("ids[]=1&page=1&ids[]=2"));
        assert_eq!(
            a,
            key("a", "/api/v5/orders", Some("page=1&ids[]=1&ids[]=2"))
        );
        assert_ne!(
            a,
            key("a", "/api/v5/orders", Some("ids[]=2&page=1&ids[]=1"))
        );
    }

    #[test]
    fn tenants_paths_and_values_tell_reads_apart() {
        let base = key("a", "/api/v5/orders", Some("page=1"));
        assert_ne!(base, key("b", "/api/v5/orders", Some("page=1")));
        assert_ne!(base, key("a", "/api/v5/customers", Some("page=1")));
        assert_ne!(base, key("a", "/api/v5/orders", Some("page=2")));
        assert_eq!(
            key("a", "/api/v5/orders", None),
            key("a", "/api/v5/orders", Some(""))
        );
        assert_eq!(base.path(), "/api/v5/orders");
    }

    #[test]
    fn dictionaries_are_named_by_their_path() {
        assert_eq!(dictionary("/api/v5/reference/statuses"), Some("statuses"));
        assert_eq!(
            dictionary("/api/v5/reference/statuses/new/edit"),
            Some("statuses")
        );
        assert_eq!(dictionary("/api/v5/orders"), None);
        assert_eq!(dictionary("/api/credentials"), None);
    }

    /// The CRM decodes names, so `lim%69t` is `limit`, and of two values of
    /// one name the last wins: reads that send them in another order ask
    /// for different things and must not share an answer.
    #[test]
    fn one_name_spelled_two_ways_keeps_its_order() {
        assert_ne!(
            key("a", "/api/v5/orders", Some("lim%69t=20&limit=100")),
            key("a", "/api/v5/orders", Some("limit=100&lim%69t=20"))
        );
        assert_ne!(
            key("a", "/api/v5/orders", Some("ids[]=1&ids%5B%5D=2")),
            key("a", "/api/v5/orders", Some("ids%5B%5D=2&ids[]=1"))
        );
        assert_eq!(
            key("a", "/api/v5/orders", Some("ids%5B%5D=1&page=1&ids[]=2")),
            key("a", "/api/v5/orders", Some("page=1&ids%5B%5D=1&ids[]=2"))
        );
    }
}
