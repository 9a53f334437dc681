//! One test per validation rule, each naming the field path it expects
//! (long on purpose: every rule's test sits here, next to its section's).

use super::*;

const GOOD: &str = r#"
    [[tenants]]
    name = "acme"
    subdomain = "acme"
    api_key_env = "ACME_KEY"
    client_keys = ["svc-a"]
"#;

fn env(name: &str) -> Option<String> {
    match name {
        "ACME_KEY" => Some("real-acme".into()),
        "BETA_KEY" => Some("real-beta".into()),
        "EMPTY" => Some("  ".into()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, "test.toml", &env)
}

fn problems(text: &str) -> Vec<String> {
    load(text).expect_err("config should be rejected").problems
}

fn has(problems: &[String], needle: &str) -> bool {
    problems.iter().any(|p| p.contains(needle))
}

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = load(GOOD).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.server.admin_listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(c.server.max_body_bytes, 8 * 1024 * 1024);
    assert_eq!(c.limits.general_per_second.get(), 10);
    assert_eq!(c.limits.telephony_per_second.get(), 40);
    assert_eq!(c.limits.jitter_allowance, Duration::from_millis(20));
    assert_eq!(c.limits.scope, Scope::EgressIp);
    assert_eq!(c.retry.max_attempts.get(), 8);
    assert_eq!(c.limits.adaptive.recovery_per_second, 1.0);
    let t = &c.tenants[0];
    assert_eq!(t.base_url.as_str(), "https://acme.retailcrm.ru/");
    assert_eq!(t.api_key.expose(), "real-acme");
    assert_eq!(t.key_source, KeySource::Env("ACME_KEY".into()));
    assert_eq!(c.checksum.len(), 64);
}

#[test]
fn toml_errors_name_line_and_column() {
    let p = problems("[server]\nlisten = 8080x\n");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("test.toml:2:"), "{p:?}");
}

#[test]
fn unknown_fields_are_rejected_with_position() {
    let p = problems("[limits]\ngeneral_per_sec = 5\n");
    assert!(
        p[0].starts_with("test.toml:2:1:") && p[0].contains("general_per_sec"),
        "{p:?}"
    );
}

#[test]
fn no_tenants_is_rejected() {
    assert!(has(&problems("[server]\n"), "tenants: no tenants"));
}

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

#[test]
fn bad_egress_ips_are_rejected() {
    let text =
        format!("[upstream]\negress_ips = [\"127.0.0.2\", \"10.0.0.300\", \"127.0.0.2\"]\n{GOOD}");
    let p = problems(&text);
    assert!(
        has(&p, "upstream.egress_ips[1]: is not an IP address"),
        "{p:?}"
    );
    assert!(has(&p, "upstream.egress_ips[2]: is listed twice"), "{p:?}");
}

#[test]
fn zero_and_negative_rates_are_rejected() {
    let text = format!("[limits]\ngeneral_per_second = 0\ntelephony_per_second = -4\n{GOOD}");
    let p = problems(&text);
    assert!(
        has(
            &p,
            "limits.general_per_second: must be a whole number from 1"
        ),
        "{p:?}"
    );
    assert!(
        has(
            &p,
            "limits.telephony_per_second: must be a whole number from 1"
        ),
        "{p:?}"
    );
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let text =
        "[limits]\nmax_queue_wait = \"soon\"\nscope = \"planet\"\n[retry]\nmax_attempts = 0\n\
                [[tenants]]\nname = \"bad name\"\nsubdomain = \"a\"\napi_key_env = \"NOPE\"\n";
    let p = problems(text);
    for needle in [
        "limits.max_queue_wait: is not a duration",
        "limits.scope: must be one of",
        "retry.max_attempts",
        "tenants[0].name",
        "tenants[0].api_key_env",
    ] {
        assert!(has(&p, needle), "missing {needle:?} in {p:?}");
    }
}

#[test]
fn other_value_rules() {
    let text = format!(
        "[server]\nlisten = \"nowhere\"\nmax_body_bytes = 0\n[limits]\njitter_allowance = \"2s\"\n\
         [limits.adaptive]\ndecrease_factor = 1.5\nmin_rate = 1e-300\n[retry]\ninitial_backoff = \"2s\"\nmax_backoff = \"1s\"\n\
         [redis]\nurl = \"http://x\"\n{GOOD}"
    );
    let p = problems(&text);
    for needle in [
        "server.listen: is not an address",
        "server.max_body_bytes: must be positive",
        "limits.jitter_allowance: must be shorter than 1s",
        "limits.adaptive.decrease_factor",
        "limits.adaptive.min_rate: must be at least 0.01",
        "retry.max_backoff",
        "redis.url",
    ] {
        assert!(has(&p, needle), "missing {needle:?} in {p:?}");
    }
}

#[test]
fn the_redis_backend_and_egress_id() {
    let c = load(&format!(
        "[limits]\nbackend = \"redis\"\n[redis]\nexpected_replicas = 3\n{GOOD}"
    ))
    .unwrap();
    assert_eq!(c.limits.backend, Backend::Redis);
    assert_eq!(c.redis.expected_replicas.get(), 3);
    let p = problems(&format!(
        "[upstream]\negress_ips = [\"127.0.0.2\", \"127.0.0.3\"]\negress_id = \"nat\"\n{GOOD}"
    ));
    assert!(
        has(&p, "upstream.egress_id: names one shared budget"),
        "{p:?}"
    );
}

#[test]
fn summary_has_no_secrets() {
    let c = load(GOOD).unwrap();
    let s = c.summary();
    assert!(
        s.contains("acme") && s.contains("env ACME_KEY") && s.contains("1 client key(s)"),
        "{s}"
    );
    assert!(!s.contains("real-acme") && !s.contains("svc-a"), "{s}");
}

/// A tenant "a" with `extra` lines; its real key comes from ACME_KEY.
fn tenant_with(extra: &str) -> String {
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

#[test]
fn urls_with_credentials_are_redacted_in_the_summary() {
    let c = load(
        "[[tenants]]\nname = \"a\"\nbase_url = \"https://user-SECRET:pass-SECRET@crm.example\"\napi_key_env = \"ACME_KEY\"\n",
    )
    .unwrap();
    let s = c.summary();
    assert!(s.contains("https://***:***@crm.example"), "{s}");
    assert!(!s.contains("SECRET"), "{s}");
}

/// Broken configs, each carrying a recognisable secret in the bad value
/// (or in the wrong field). No problem text may contain it.
const SECRET_BATTERY: &[&str] = &[
    // TOML type errors: toml/serde would quote the value.
    "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_env = \"ACME_KEY\"\nclient_keys = \"ck-SECRET-1\"\n",
    "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key = [\"SECRET-2\"]\n",
    "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key = 1234567\nclient_keys = [\"SECRET-3\", 4]\n",
    "[server]\nmax_body_bytes = \"SECRET-4\"\n",
    "[limits.adaptive]\nenabled = \"SECRET-5\"\n",
    "[limits]\nscope = { SECRET = \"SECRET-6\" }\n",
    "tenants = \"SECRET-7\"\n",
    // TOML syntax errors.
    "[[tenants]]\napi_key = SECRET-8\n",
    "[[tenants]]\napi_key = \"SECRET-9\n",
    "[[tenants]]\napi_key = \"SECRET-10\\q\"\n",
    "[[tenants]]\napi_key = \"SECRET-11\" trailing\n",
    "[[tenants]]\napi_key = 'a'\napi_key = 'SECRET-12'\n",
    "[[tenants]]\napi_key = \"\"\"SECRET-13\n",
    // The key in the wrong field.
    "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_env = \"SECRET-14-not-a-name\"\n",
    "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_env = \"SECRET15abcdef0123456789abcdef01\"\n",
    "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_file = \"SECRET-16\"\n",
    "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_env = \"ACME_KEY\"\nclient_keys_env = \"SECRET-17\"\n",
    "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_env = \"ACME_KEY\"\nclient_keys_env = \"SECRET18abc\"\n",
    "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_env = \"ACME_KEY\"\nclient_keys_file = \"/SECRET-19\"\n",
    // URLs with credentials or a key in the query.
    "[[tenants]]\nname = \"a\"\nbase_url = \"https://user:SECRET-20@crm.example?apiKey=SECRET-21\"\napi_key_env = \"ACME_KEY\"\n",
    "[[tenants]]\nname = \"a\"\nbase_url = \"ftp://user:SECRET-22@crm.example\"\napi_key_env = \"ACME_KEY\"\n",
    "[[tenants]]\nname = \"a\"\nbase_url = \"https://user:SECRET-23@crm.example:99999\"\napi_key_env = \"ACME_KEY\"\n",
    "[redis]\nurl = \"http://:SECRET-24@redis\"\n",
    // Keys that break a rule, and other bad values.
    "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key = \"SECRET 25\"\nclient_keys = [\"SECRET 26\", \"SECRET 25\"]\n",
    "[[tenants]]\nname = \"SECRET 27\"\nsubdomain = \"SECRET 28\"\napi_key_env = \"ACME_KEY\"\n",
    "[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key_env = \"ACME_KEY\"\nclient_keys = [\"SECRET-29\"]\n\
     [[tenants]]\nname = \"b\"\nsubdomain = \"b\"\napi_key_env = \"BETA_KEY\"\nclient_keys = [\"SECRET-29\"]\n",
    "[server]\nlisten = \"SECRET-30\"\nshutdown_grace = \"SECRET-31\"\n",
    "[upstream]\negress_ips = [\"SECRET-32\"]\negress_id = \"SECRET-33\"\n[limits]\nbackend = \"SECRET-34\"\n",
    "[upstream]\nbase_url = \"https://SECRET-35.example\"\n",
];

#[test]
fn no_error_text_contains_a_value_from_the_file() {
    for (n, text) in SECRET_BATTERY.iter().enumerate() {
        let p = load(text)
            .err()
            .unwrap_or_else(|| panic!("case {n} should be rejected:\n{text}"))
            .problems;
        let all = p.join("\n");
        assert!(
            !all.contains("SECRET"),
            "case {n} echoes a value:\n{text}\n---\n{all}"
        );
        assert!(
            p.iter().all(|line| line.contains(": ")),
            "case {n}: every problem names where it is: {p:?}"
        );
    }
}

// ---- [server]: edge limits, browsers, admin token ----

fn with_server(server: &str) -> String {
    format!("[server]\n{server}\n{GOOD}")
}

const TOKEN: &str = "admin-token-0123456789abcdef";

#[test]
fn edge_limits_have_documented_defaults() {
    let s = load(GOOD).unwrap().server;
    assert_eq!(s.header_timeout, Duration::from_secs(10));
    assert_eq!(s.body_timeout, Duration::from_secs(30));
    assert_eq!(s.max_connections.get(), 10_000);
    assert_eq!(s.worker_threads, None, "one worker per core");
    assert!(s.allowed_origins.is_empty() && s.allowed_hosts.is_empty());
    assert!(s.admin_token.is_none() && s.admin_open());
}

#[test]
fn worker_threads_pin_the_runtime() {
    let s = load(&with_server("worker_threads = 2")).unwrap().server;
    assert_eq!(s.worker_threads.map(|n| n.get()), Some(2));
}

#[test]
fn edge_limits_must_be_positive() {
    let p = problems(&with_server(
        "header_timeout = \"0s\"\nbody_timeout = \"soon\"\nmax_connections = 0\nworker_threads = 0",
    ));
    assert!(
        has(&p, "server.worker_threads: must be a positive"),
        "{p:?}"
    );
    assert!(
        has(&p, "server.header_timeout: must be longer than zero"),
        "{p:?}"
    );
    assert!(has(&p, "server.body_timeout: is not a duration"), "{p:?}");
    assert!(
        has(&p, "server.max_connections: must be a positive"),
        "{p:?}"
    );
}

#[test]
fn allowed_origins_are_normalised_and_checked() {
    let c = load(&with_server(
        "allowed_origins = [\"HTTPS://Tools.Example.com/\", \"http://localhost:3000\", \"https://a.example:443\"]",
    ))
    .unwrap();
    assert_eq!(
        c.server.allowed_origins,
        [
            "https://tools.example.com",
            "http://localhost:3000",
            "https://a.example"
        ]
    );
    let p = problems(&with_server(
        "allowed_origins = [\"*\", \"null\", \"https://x.example/path\", \"ftp://x.example\", \"https://b.example\", \"https://B.example\"]",
    ));
    for i in 0..4 {
        assert!(
            has(
                &p,
                &format!("server.allowed_origins[{i}]: must be an origin")
            ),
            "{i}: {p:?}"
        );
    }
    assert!(
        has(&p, "server.allowed_origins[5]: is listed twice"),
        "{p:?}"
    );
}

#[test]
fn allowed_hosts_are_names_without_port() {
    let c = load(&with_server(
        "allowed_hosts = [\"CRMGATE.internal.\", \"[fd00::1]\", \"10.0.0.5\"]",
    ))
    .unwrap();
    assert_eq!(
        c.server.allowed_hosts,
        ["crmgate.internal", "fd00::1", "10.0.0.5"]
    );
    let p = problems(&with_server("allowed_hosts = [\"gw:8080\", \"a b\", \"\"]"));
    for i in 0..3 {
        assert!(
            has(
                &p,
                &format!("server.allowed_hosts[{i}]: must be a host name")
            ),
            "{i}: {p:?}"
        );
    }
}

#[test]
fn a_non_loopback_admin_listener_needs_a_token() {
    let p = problems(&with_server("admin_listen = \"0.0.0.0:9090\""));
    assert!(
        has(
            &p,
            "server.admin_token: is required when server.admin_listen is not a loopback address"
        ),
        "{p:?}"
    );
    let c = load(&with_server(
        "admin_listen = \"0.0.0.0:9090\"\nadmin_token_env = \"ADMIN\"",
    ));
    // ADMIN is not set in the test environment.
    let p = c.expect_err("unset variable").problems;
    assert!(
        has(
            &p,
            "server.admin_token_env: the environment variable it names is not set"
        ),
        "{p:?}"
    );
    // Only the problem with the variable, not a second one for the missing token.
    assert_eq!(p.len(), 1, "{p:?}");
}

#[test]
fn the_admin_token_comes_from_env_file_or_inline() {
    let env = |name: &str| (name == "CRMGATE_ADMIN").then(|| format!(" {TOKEN}\n"));
    let text = with_server("admin_listen = \"0.0.0.0:9090\"\nadmin_token_env = \"CRMGATE_ADMIN\"");
    let c = Config::from_toml(&text, "test.toml", &|n| env(n).or_else(|| self::env(n))).unwrap();
    assert_eq!(c.server.admin_token.as_ref().unwrap().expose(), TOKEN);
    assert_eq!(
        c.server.admin_token_source,
        Some(KeySource::Env("CRMGATE_ADMIN".into()))
    );
    assert!(!c.server.admin_open());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let c = load(&with_server(&format!(
        "admin_token_file = {:?}",
        file.display().to_string()
    )))
    .unwrap();
    assert_eq!(c.server.admin_token.unwrap().expose(), TOKEN);

    let c = load(&with_server(&format!("admin_token = \"{TOKEN}\""))).unwrap();
    assert!(c.server.admin_token.is_some());
    assert!(has(
        &c.warnings,
        "server.admin_token: the token is written in the config"
    ));
}

#[test]
fn admin_token_problems_never_show_the_token_or_where_it_is() {
    // Someone pasted the token itself where a variable or file name belongs.
    let p = problems(&with_server(&format!("admin_token_env = \"{TOKEN}\"")));
    assert!(has(&p, "server.admin_token_env:"), "{p:?}");
    let p2 = problems(&with_server(&format!("admin_token_file = \"{TOKEN}\"")));
    assert!(
        has(
            &p2,
            "server.admin_token_file: cannot read the file it names"
        ),
        "{p2:?}"
    );
    let p3 = problems(&with_server("admin_token = \"short-secret\""));
    assert!(
        has(&p3, "server.admin_token: the token must be at least 16"),
        "{p3:?}"
    );
    let p4 = problems(&with_server(
        "admin_token = \"has a space in it, long enough\"",
    ));
    assert!(
        has(&p4, "server.admin_token: the token has characters"),
        "{p4:?}"
    );
    let p5 = problems(&with_server(&format!(
        "admin_token = \"{TOKEN}\"\nadmin_token_env = \"X\""
    )));
    assert!(has(&p5, "server.admin_token: set only one of"), "{p5:?}");
    for line in p.iter().chain(&p2).chain(&p3).chain(&p4).chain(&p5) {
        assert!(
            !line.contains(TOKEN) && !line.contains("short-secret"),
            "{line}"
        );
    }
}

// ---- server.drain_accept and [reconcile] ----

#[test]
fn drain_accept_defaults_to_5s_within_the_grace_and_must_fit_in_it() {
    let s = load(GOOD).unwrap().server;
    assert_eq!(s.drain_accept, Duration::from_secs(5));
    // Unset, it never asks for more than a short grace allows...
    let s = load(&with_server("shutdown_grace = \"2s\""))
        .unwrap()
        .server;
    assert_eq!(s.drain_accept, Duration::from_secs(2));
    // ...set, it must fit.
    let s = load(&with_server("drain_accept = \"0s\"")).unwrap().server;
    assert_eq!(s.drain_accept, Duration::ZERO);
    let p = problems(&with_server(
        "shutdown_grace = \"2s\"\ndrain_accept = \"3s\"",
    ));
    assert!(
        has(
            &p,
            "server.drain_accept: must not be longer than server.shutdown_grace"
        ),
        "{p:?}"
    );
    let p = problems(&with_server("drain_accept = \"soon\""));
    assert!(has(&p, "server.drain_accept: is not a duration"), "{p:?}");
}

#[test]
fn reconcile_delay_defaults_to_1s_and_is_bounded() {
    assert_eq!(load(GOOD).unwrap().reconcile.delay, Duration::from_secs(1));
    let c = load(&format!("[reconcile]\ndelay = \"250ms\"\n{GOOD}")).unwrap();
    assert_eq!(c.reconcile.delay, Duration::from_millis(250));
    let p = problems(&format!("[reconcile]\ndelay = \"5m\"\n{GOOD}"));
    assert!(has(&p, "reconcile.delay: must be at most 60s"), "{p:?}");
    let p = problems(&format!("[reconcile]\ndelay = \"SECRET-1\"\n{GOOD}"));
    assert!(
        has(&p, "reconcile.delay: is not a duration") && !has(&p, "SECRET"),
        "{p:?}"
    );
    let p = problems(&format!("[reconcile]\nwait = \"1s\"\n{GOOD}"));
    assert!(has(&p, "wait"), "unknown keys are refused: {p:?}");
}
