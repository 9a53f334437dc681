//! One test per `[server]` rule: edge limits, browsers, the admin token
//! and the drain's accept window, each naming the field path it expects.

use super::super::tests::*;
use crate::config::*;

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
