//! One test per `[[tenants]]` rule (names, real keys, client keys and their
//! sources, base URLs), each naming the field path it expects.

use super::super::tests::*;
use crate::config::*;

#[test]
fn duplicate_tenant_names_are_rejected() {
    let text = format!(
        "{GOOD}\n[[tenants]]\nname = \"acme\"\nsubdomain = \"b\"\napi_key_env = \"BETA_KEY\"\n"
    );
    assert!(has(
        &problems(&text),
        "tenants[1].name: is already used by tenants[0]"
    ));
}

#[test]
fn duplicates_are_reported_even_next_to_other_problems() {
    let text = "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_env = \"NOPE\"\n\
                [[tenants]]\nname = \"a\"\nsubdomain = \"b\"\napi_key_env = \"ACME_KEY\"\n";
    let p = problems(text);
    assert!(
        has(&p, "tenants[1].name: is already used by tenants[0]"),
        "{p:?}"
    );
    assert!(has(&p, "tenants[0].api_key_env"), "{p:?}");
}

#[test]
fn a_client_key_shared_by_two_tenants_is_rejected() {
    let text = format!("{GOOD}\n[[tenants]]\nname = \"beta\"\nsubdomain = \"b\"\napi_key_env = \"BETA_KEY\"\nclient_keys = [\"svc-a\"]\n");
    let p = problems(&text);
    assert!(
        has(
            &p,
            "tenants[1].client_keys[0]: is also a client key of tenants[0] (at tenants[0].client_keys[0])"
        ),
        "{p:?}"
    );
    assert!(
        !has(&p, "svc-a"),
        "a client key leaked into the message: {p:?}"
    );
}

#[test]
fn unset_and_empty_keys_are_reported_without_the_name() {
    // A RetailCRM key is also a valid variable name: an unset variable's
    // name may be the key itself, pasted in the wrong field.
    let p = problems("[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_env = \"NOPE\"\n");
    assert_eq!(
        p,
        ["tenants[0].api_key_env: names an environment variable that is not set"]
    );
    let p = problems("[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_env = \"EMPTY\"\n");
    assert_eq!(
        p,
        ["tenants[0].api_key_env: names an environment variable that is empty"]
    );
    let p =
        problems("[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_env = \"ck-1234 5678\"\n");
    assert!(
        has(
            &p,
            "tenants[0].api_key_env: is not an environment variable name"
        ),
        "{p:?}"
    );
    let p = problems("[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\n");
    assert!(has(&p, "tenants[0].api_key_env: no key"), "{p:?}");
}

#[test]
fn key_files_are_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("key");
    std::fs::write(&file, "from-file\n").unwrap();
    let text = format!(
        "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_file = {:?}\n",
        file.display().to_string()
    );
    assert_eq!(
        load(&text).unwrap().tenants[0].api_key.expose(),
        "from-file"
    );
    let text =
        "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_file = \"/nonexistent/key\"\n";
    let p = problems(text);
    assert!(
        has(
            &p,
            "tenants[0].api_key_file: cannot read the file it names: "
        ) && !has(&p, "/nonexistent"),
        "{p:?}"
    );
}

#[test]
fn inline_keys_work_with_a_warning() {
    let c = load("[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key = \"inline-secret\"\n")
        .unwrap();
    assert_eq!(c.tenants[0].key_source, KeySource::Inline);
    assert!(c.warnings[0].contains("tenants[0].api_key"));
    assert!(!c.summary().contains("inline-secret"));
}

#[test]
fn base_url_must_be_http() {
    let p =
        problems("[[tenants]]\nname = \"a\"\nbase_url = \"ftp://x\"\napi_key_env = \"ACME_KEY\"\n");
    assert!(
        has(
            &p,
            "tenants[0].base_url: must be an http:// or https:// URL"
        ),
        "{p:?}"
    );
    let p = problems(
        "[[tenants]]\nname = \"a\"\nbase_url = \"not a url\"\napi_key_env = \"ACME_KEY\"\n",
    );
    assert!(has(&p, "tenants[0].base_url: is not a URL"), "{p:?}");
}

#[test]
fn tenant_base_url_overrides_the_template() {
    let c = load("[[tenants]]\nname = \"a\"\nsubdomain = \"x\"\nbase_url = \"http://127.0.0.1:9000\"\napi_key_env = \"ACME_KEY\"\n").unwrap();
    assert_eq!(c.tenants[0].base_url.as_str(), "http://127.0.0.1:9000/");
}

#[test]
fn a_tenant_needs_subdomain_or_base_url() {
    let p = problems("[[tenants]]\nname = \"a\"\napi_key_env = \"ACME_KEY\"\n");
    assert!(
        has(&p, "tenants[0].subdomain: set subdomain (or base_url)"),
        "{p:?}"
    );
}

/// A tenant "a" with `extra` lines; its real key comes from ACME_KEY.
pub(super) fn tenant_with(extra: &str) -> String {
    format!("[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_env = \"ACME_KEY\"\n{extra}\n")
}

fn load_with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_toml(text, "test.toml", &move |name| {
        vars.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| env(name))
    })
}

#[test]
fn client_keys_from_env_file_and_inline_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clients");
    std::fs::write(
        &file,
        "# services of acme\nck-file-1\n\n  ck-file-2  \n# ck-old\n",
    )
    .unwrap();
    let text = tenant_with(&format!(
        "client_keys = [\"ck-inline\"]\nclient_keys_env = \"A_CLIENTS\"\nclient_keys_file = {:?}",
        file.display().to_string()
    ));
    let c = load_with_env(&text, &[("A_CLIENTS", " ck-env-1, ck-env-2 ,")]).unwrap();
    let t = &c.tenants[0];
    let keys: Vec<&str> = t.client_keys.iter().map(|k| k.expose()).collect();
    assert_eq!(
        keys,
        [
            "ck-inline",
            "ck-env-1",
            "ck-env-2",
            "ck-file-1",
            "ck-file-2"
        ]
    );
    assert_eq!(
        t.client_key_sources,
        [
            KeySource::Inline,
            KeySource::Env("A_CLIENTS".into()),
            KeySource::File(file.clone())
        ]
    );
    let s = c.summary();
    assert!(
        s.contains("5 client key(s) from inline + env A_CLIENTS + file"),
        "{s}"
    );
    assert!(!s.contains("ck-"), "a client key in the summary: {s}");
}

#[test]
fn a_client_key_file_alone_is_enough() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clients");
    std::fs::write(&file, "ck-only\n").unwrap();
    let text = tenant_with(&format!(
        "client_keys_file = {:?}",
        file.display().to_string()
    ));
    let c = load(&text).unwrap();
    assert_eq!(c.tenants[0].client_keys[0].expose(), "ck-only");
}

#[test]
fn duplicate_client_keys_name_both_field_paths_across_sources() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clients");
    std::fs::write(&file, "# beta\nck-shared-SECRET\n").unwrap();
    let text = format!(
        "{}[[tenants]]\nname = \"b\"\nsubdomain = \"b\"\napi_key_env = \"BETA_KEY\"\nclient_keys_file = {:?}\n",
        tenant_with("client_keys_env = \"A_CLIENTS\""),
        file.display().to_string()
    );
    let p = load_with_env(&text, &[("A_CLIENTS", "ck-a,ck-shared-SECRET")])
        .unwrap_err()
        .problems;
    assert_eq!(
        p,
        [
            "tenants[1].client_keys_file (line 2): is also a client key of tenants[0] \
          (at tenants[0].client_keys_env (item 2))"
        ]
    );
    let p = load_with_env(
        &tenant_with("client_keys = [\"ck-x\"]\nclient_keys_env = \"A_CLIENTS\""),
        &[("A_CLIENTS", "ck-x")],
    )
    .unwrap_err()
    .problems;
    assert_eq!(
        p,
        ["tenants[0].client_keys_env (item 1): is listed twice (also at tenants[0].client_keys[0])"]
    );
}

#[test]
fn client_key_sources_that_yield_nothing_are_errors_not_an_open_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clients");
    std::fs::write(&file, "# nothing yet\n\n").unwrap();
    let text = tenant_with(&format!(
        "client_keys_env = \"A_CLIENTS\"\nclient_keys_file = {:?}",
        file.display().to_string()
    ));
    let p = load_with_env(&text, &[("A_CLIENTS", " , ")])
        .unwrap_err()
        .problems;
    assert!(
        has(&p, "tenants[0].client_keys_env: yields no client keys")
            && has(&p, "tenants[0].client_keys_file: yields no client keys"),
        "{p:?}"
    );
    let p = problems(&tenant_with(
        "client_keys_env = \"UNSET_CLIENTS\"\nclient_keys_file = \"/nonexistent/clients\"",
    ));
    assert_eq!(
        p,
        [
            "tenants[0].client_keys_env: names an environment variable that is not set",
            "tenants[0].client_keys_file: cannot read the file it names: No such file or directory (os error 2)"
        ]
    );
}

#[test]
fn client_keys_must_be_header_safe_and_not_the_real_key() {
    let p = load_with_env(
        &tenant_with("client_keys_env = \"A_CLIENTS\""),
        &[("A_CLIENTS", "ok-1,has space,real-acme")],
    )
    .unwrap_err()
    .problems;
    assert_eq!(
        p,
        [
            "tenants[0].client_keys_env (item 2): must be non-empty visible ASCII, without spaces",
            "tenants[0].client_keys_env (item 3): must not be the real CRM key"
        ]
    );
}

#[test]
fn an_open_tenant_on_a_public_listener_is_warned_about() {
    let open = "[[tenants]]\nname = \"shop\"\nsubdomain = \"a\"\napi_key_env = \"ACME_KEY\"\n";
    let c = load(&format!("[server]\nlisten = \"0.0.0.0:8080\"\n{open}")).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.starts_with("tenants[0] (shop): has no client keys")),
        "{:?}",
        c.warnings
    );
    assert!(c.summary().contains("no client keys: open"));
    // Loopback: only this host can reach it; with client keys: closed.
    for text in [
        format!("[server]\nlisten = \"127.0.0.1:8080\"\n{open}"),
        format!("[server]\nlisten = \"[::1]:8080\"\n{open}"),
        format!("[server]\nlisten = \"0.0.0.0:8080\"\n{GOOD}"),
    ] {
        let c = load(&text).unwrap();
        assert!(
            !c.warnings.iter().any(|w| w.contains("no client keys")),
            "{text}: {:?}",
            c.warnings
        );
    }
}

#[cfg(unix)]
#[test]
fn readable_key_files_and_configs_with_inline_keys_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path, m: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let clients = dir.path().join("clients");
    std::fs::write(&key, "real-from-file\n").unwrap();
    std::fs::write(&clients, "ck-1\n").unwrap();
    let text = format!(
        "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_file = {:?}\nclient_keys_file = {:?}\n",
        key.display().to_string(),
        clients.display().to_string()
    );
    mode(&key, 0o644);
    mode(&clients, 0o604);
    let w = load(&text).unwrap().warnings;
    assert_eq!(w.len(), 2, "{w:?}");
    let about = |field: &str| {
        w.iter()
            .find(|w| w.starts_with(&format!("tenants[0].{field}: ")))
            .unwrap_or_else(|| panic!("no warning about {field}: {w:?}"))
    };
    let k = about("api_key_file");
    assert!(
        k.contains(&key.display().to_string())
            && k.contains("mode 0644")
            && k.contains("chmod 600"),
        "{k}"
    );
    assert!(about("client_keys_file").contains("mode 0604"), "{w:?}");
    mode(&key, 0o600);
    mode(&clients, 0o400);
    assert!(load(&text).unwrap().warnings.is_empty());

    // The config file itself, when it holds keys.
    let config = dir.path().join("crmgate.toml");
    std::fs::write(
        &config,
        "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key = \"inline-SECRET\"\nclient_keys = [\"ck-inline\"]\n",
    )
    .unwrap();
    mode(&config, 0o644);
    let w = Config::load(&config).unwrap().warnings;
    let about_file: Vec<&String> = w
        .iter()
        .filter(|w| w.starts_with(&config.display().to_string()))
        .collect();
    assert_eq!(about_file.len(), 1, "{w:?}");
    assert!(
        about_file[0].contains("tenants[0].api_key, tenants[0].client_keys")
            && about_file[0].contains("mode 0644")
            && about_file[0].contains("`chmod 640` with a group only crmgate is in"),
        "{w:?}"
    );
    mode(&config, 0o600);
    let w = Config::load(&config).unwrap().warnings;
    assert!(
        !w.iter().any(|w| w.contains("readable")),
        "a 0600 config is private: {w:?}"
    );
    // Without inline keys a readable config is fine.
    std::fs::write(&config, &text).unwrap();
    mode(&config, 0o644);
    assert!(Config::load(&config).unwrap().warnings.is_empty());
}
