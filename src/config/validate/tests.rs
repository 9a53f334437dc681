//! One test per rule that belongs to no one section (TOML errors, unknown
//! fields, rates, egress IPs, the summary, secrets kept out of every
//! problem), each naming the field path it expects; and the helpers the
//! sections' tests share (`tenant/tests.rs`, `server/tests.rs`, ...).

use super::*;

pub(super) const GOOD: &str = r#"
    [[tenants]]
    name = "acme"
    subdomain = "acme"
    api_key_env = "ACME_KEY"
    client_keys = ["svc-a"]
"#;

pub(super) fn env(name: &str) -> Option<String> {
    match name {
        "ACME_KEY" => Some("real-acme".into()),
        "BETA_KEY" => Some("real-beta".into()),
        "EMPTY" => Some("  ".into()),
        _ => None,
    }
}

pub(super) fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, "test.toml", &env)
}

pub(super) fn problems(text: &str) -> Vec<String> {
    load(text).expect_err("config should be rejected").problems
}

pub(super) fn has(problems: &[String], needle: &str) -> bool {
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
