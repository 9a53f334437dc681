//! Who is asking: resolving the tenant (CRM account) of a request.
//!
//! Two ways in: a path prefix `/{tenant}/api/...` names the tenant, or the
//! client key the caller presents (header `X-API-KEY`, or `apiKey` in the
//! query, a form body or a multipart part) belongs to exactly one tenant. A tenant with client
//! keys always requires one of them; a tenant without any is reachable by
//! prefix alone, trusting everything that can reach the port. This module
//! compares keys but never logs or returns them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::TenantConfig;
use crate::error::GatewayError;

/// A configured tenant, ready for the request path.
#[derive(Debug)]
pub struct Tenant {
    /// Name as an `Arc<str>`, cheap to hand to the scheduler and metrics.
    pub name: Arc<str>,
    /// The validated config entry.
    pub config: TenantConfig,
    client_keys: HashSet<String>,
}

impl Tenant {
    /// True if the tenant accepts requests without a client key.
    pub fn open(&self) -> bool {
        self.client_keys.is_empty()
    }
}

/// All tenants, indexed for lookup by name and by client key.
#[derive(Debug, Default)]
pub struct Tenants {
    by_name: HashMap<String, Arc<Tenant>>,
    by_client_key: HashMap<String, Arc<Tenant>>,
}

impl Tenants {
    /// Indexes validated tenants (names and client keys are unique by then).
    pub fn new(configs: &[TenantConfig]) -> Tenants {
        let mut tenants = Tenants::default();
        for c in configs {
            let keys: HashSet<String> = c
                .client_keys
                .iter()
                .map(|k| k.expose().to_string())
                .collect();
            let t = Arc::new(Tenant {
                name: c.name.as_str().into(),
                config: c.clone(),
                client_keys: keys,
            });
            for k in &t.client_keys {
                tenants.by_client_key.insert(k.clone(), t.clone());
            }
            tenants.by_name.insert(c.name.clone(), t);
        }
        tenants
    }

    /// Looks a tenant up by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Tenant>> {
        self.by_name.get(name)
    }

    /// All tenants, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.by_name.values()
    }

    /// Resolves the tenant of a request from its path prefix (if any) and
    /// the client key it presented (if any).
    pub fn resolve(
        &self,
        prefix: Option<&str>,
        presented: Option<&str>,
    ) -> Result<Arc<Tenant>, GatewayError> {
        match prefix {
            Some(name) => {
                let t = self
                    .by_name
                    .get(name)
                    .ok_or_else(|| GatewayError::UnknownTenant(name.to_string()))?;
                if t.open() {
                    return Ok(t.clone());
                }
                match presented {
                    None => Err(GatewayError::MissingKey),
                    Some(k) if t.client_keys.contains(k) => Ok(t.clone()),
                    Some(_) => Err(GatewayError::WrongKey),
                }
            }
            None => match presented {
                None => Err(GatewayError::MissingKey),
                Some(k) => self
                    .by_client_key
                    .get(k)
                    .cloned()
                    .ok_or(GatewayError::WrongKey),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn tenants() -> Tenants {
        let text = "[[tenants]]\nname = \"acme\"\nsubdomain = \"acme\"\napi_key = \"real\"\nclient_keys = [\"svc-1\", \"svc-2\"]\n\
                    [[tenants]]\nname = \"open\"\nsubdomain = \"open\"\napi_key = \"real2\"\n";
        Tenants::new(&Config::from_toml(text, "t", &|_| None).unwrap().tenants)
    }

    fn name(r: Result<Arc<Tenant>, GatewayError>) -> String {
        match r {
            Ok(t) => t.name.to_string(),
            Err(e) => format!("{e:?}"),
        }
    }

    #[test]
    fn by_client_key() {
        let t = tenants();
        assert_eq!(name(t.resolve(None, Some("svc-2"))), "acme");
        assert_eq!(name(t.resolve(None, Some("nope"))), "WrongKey");
        assert_eq!(name(t.resolve(None, None)), "MissingKey");
        // The real key is not a client key.
        assert_eq!(name(t.resolve(None, Some("real"))), "WrongKey");
    }

    #[test]
    fn by_prefix() {
        let t = tenants();
        assert_eq!(name(t.resolve(Some("acme"), Some("svc-1"))), "acme");
        assert_eq!(name(t.resolve(Some("acme"), None)), "MissingKey");
        assert_eq!(name(t.resolve(Some("acme"), Some("other"))), "WrongKey");
        assert_eq!(name(t.resolve(Some("open"), None)), "open");
        assert_eq!(name(t.resolve(Some("open"), Some("anything"))), "open");
        assert_eq!(
            name(t.resolve(Some("ghost"), Some("svc-1"))),
            "UnknownTenant(\"ghost\")"
        );
        // A key of another tenant does not open this one.
        assert_eq!(name(t.resolve(Some("open"), Some("svc-1"))), "open");
    }
}
