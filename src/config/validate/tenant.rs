//! `[[tenants]]`: one tenant's account, real key and client keys. Client
//! keys from every source (inline, environment, file) are gathered here and
//! checked for duplicates. Never echoes a key, nor a value read from a
//! variable or a file.

use super::super::raw::RawTenant;
use super::super::*;
use super::*;

/// Validates one tenant; `None` when a field it needs is unusable (the
/// problem is recorded).
pub(super) fn tenant(
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
pub(super) struct ClientKeys {
    /// (where it was found, the key).
    pub(super) keys: Vec<(String, String)>,
    sources: Vec<KeySource>,
    /// A source could not be read: the tenant must not be served without it,
    /// or it could silently become open (the problem is recorded).
    failed: bool,
}

/// Collects the client keys of `tenants[i]` from `client_keys`,
/// `client_keys_env` and `client_keys_file`.
pub(super) fn client_keys_of(
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
pub(super) fn with_client_keys(
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
