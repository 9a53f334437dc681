//! Keys out of the TOML, and config errors that never echo a value: the real
//! binary's `check` and `serve` (reload log lines, `POST /reload`'s JSON) on
//! broken files that each carry a recognisable secret, and client keys read
//! from an environment variable and a file, re-read on reload.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::*;
use serde_json::Value;

/// Every secret in these tests contains this; no output may.
const MARK: &str = "SECRET";

/// Broken configs; `{base}` is replaced by a reachable base URL.
const BROKEN: &[&str] = &[
    // A string, not a list: toml/serde would quote it.
    "[[tenants]]\nname = \"acme\"\nbase_url = \"{base}\"\napi_key_env = \"CFG_TEST_ACME_KEY\"\nclient_keys = \"ck-SECRET-1\"\n",
    // The key itself where a variable's name belongs (not a name / not set).
    "[[tenants]]\nname = \"acme\"\nbase_url = \"{base}\"\napi_key_env = \"SECRET-2-not-a-name\"\n",
    "[[tenants]]\nname = \"acme\"\nbase_url = \"{base}\"\napi_key_env = \"SECRET3a9f0c1d2e3f4a5b6c7d8e9f0a1b\"\n",
    "[[tenants]]\nname = \"acme\"\nbase_url = \"{base}\"\napi_key_env = \"CFG_TEST_ACME_KEY\"\nclient_keys_env = \"SECRET4abc\"\n",
    // A URL with a password, and a key in its query.
    "[[tenants]]\nname = \"acme\"\nbase_url = \"https://u:SECRET-5@crm.example/?apiKey=SECRET-6\"\napi_key_env = \"CFG_TEST_ACME_KEY\"\n",
    "[[tenants]]\nname = \"acme\"\nbase_url = \"ftp://u:SECRET-7@crm.example\"\napi_key_env = \"CFG_TEST_ACME_KEY\"\n",
    // Syntax errors on a line holding a key.
    "[[tenants]]\nname = \"acme\"\napi_key = SECRET-8\n",
    "[[tenants]]\nname = \"acme\"\napi_key = \"SECRET-9\n",
    // A key that breaks a rule, and one client key in two tenants.
    "[[tenants]]\nname = \"acme\"\nbase_url = \"{base}\"\napi_key_env = \"CFG_TEST_ACME_KEY\"\nclient_keys = [\"SECRET 10\"]\n",
    "[[tenants]]\nname = \"acme\"\nbase_url = \"{base}\"\napi_key_env = \"CFG_TEST_ACME_KEY\"\nclient_keys = [\"ck-SECRET-11\"]\n\
     [[tenants]]\nname = \"beta\"\nbase_url = \"{base}\"\napi_key_env = \"CFG_TEST_ACME_KEY\"\nclient_keys = [\"ck-SECRET-11\"]\n",
];

fn crmgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crmgate"));
    cmd.env("CFG_TEST_ACME_KEY", ACME_KEY)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null());
    cmd
}

/// Runs `crmgate check` on `path`, with `CFG_TEST_CLIENTS` set to
/// `clients` when given.
fn check(path: &Path, clients: Option<&str>) -> Output {
    let mut cmd = crmgate();
    if let Some(clients) = clients {
        cmd.env("CFG_TEST_CLIENTS", clients);
    }
    cmd.args(["check", "--config"])
        .arg(path)
        .output()
        .expect("crmgate check runs")
}

fn text_of(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[cfg(unix)]
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn check_rejects_broken_configs_without_printing_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    for (n, text) in BROKEN.iter().enumerate() {
        let path = write(
            dir.path(),
            &format!("broken-{n}.toml"),
            &text.replace("{base}", "http://127.0.0.1:9"),
        );
        let out = check(&path, None);
        let all = text_of(&out);
        assert_eq!(out.status.code(), Some(2), "case {n}:\n{all}");
        assert!(all.contains("error: "), "case {n}:\n{all}");
        assert!(!all.contains(MARK), "case {n} leaks a value:\n{all}");
    }
}

#[cfg(unix)]
#[test]
fn check_accepts_keys_from_env_and_files_and_warns_about_exposure() {
    let dir = tempfile::tempdir().unwrap();
    let clients = write(dir.path(), "clients", "# acme's services\nck-SECRET-f1\n");
    chmod(&clients, 0o644);
    let text = format!(
        "[server]\nlisten = \"0.0.0.0:8080\"\n\
         [[tenants]]\nname = \"acme\"\nsubdomain = \"acme\"\napi_key = \"real-SECRET-inline\"\n\
         client_keys_env = \"CFG_TEST_CLIENTS\"\nclient_keys_file = {:?}\n\
         [[tenants]]\nname = \"open\"\nsubdomain = \"open\"\napi_key_env = \"CFG_TEST_ACME_KEY\"\n",
        clients.display().to_string()
    );
    let config = write(dir.path(), "crmgate.toml", &text);
    chmod(&config, 0o644);
    let out = check(&config, Some("ck-SECRET-e1, ck-SECRET-e2"));
    let all = text_of(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains(MARK), "a key in check's output:\n{all}");
    for needle in [
        "3 client key(s) from env CFG_TEST_CLIENTS + file",
        // The key file and the config holding an inline key, with path,
        // mode and fix.
        &format!(
            "tenants[0].client_keys_file: {} holds client keys and is readable by all users (mode 0644): run `chmod 600",
            clients.display()
        ),
        &format!(
            "warning: {} holds keys inline (tenants[0].api_key) and is readable by all users (mode 0644): run `chmod 600",
            config.display()
        ),
        "tenants[1] (open): has no client keys and server.listen is not a loopback address",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }

    // Private files, loopback: nothing to warn about.
    chmod(&clients, 0o600);
    chmod(&config, 0o600);
    std::fs::write(&config, text.replace("0.0.0.0:8080", "127.0.0.1:8080")).unwrap();
    let out = check(&config, Some("ck-SECRET-e1"));
    let all = text_of(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains("readable"), "{all}");
    assert!(!all.contains("has no client keys"), "{all}");
}

/// `crmgate serve` on ephemeral ports; the addresses come from its log.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Serve {
    fn start(config: &Path, log: PathBuf, clients_env: &str) -> Serve {
        let child = crmgate()
            .env("CFG_TEST_CLIENTS", clients_env)
            .args(["serve", "--config"])
            .arg(config)
            .args(["--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("crmgate serve starts");
        Serve { child, log }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first JSON log line whose message is `message`.
    async fn line(&mut self, message: &str) -> Value {
        let log = self.log.clone();
        let child = &mut self.child;
        wait_for(message, || {
            let exited = child.try_wait().unwrap();
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let found = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["message"] == message);
            if let Some(status) = exited {
                panic!("crmgate exited ({status}) before logging {message:?}:\n{text}");
            }
            std::future::ready(found)
        })
        .await
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test]
async fn a_rejected_reload_shows_no_secret_in_its_json_or_its_log() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let good = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [[tenants]]\nname = \"acme\"\nbase_url = \"{}\"\napi_key_env = \"CFG_TEST_ACME_KEY\"\n\
         client_keys_env = \"CFG_TEST_CLIENTS\"\nsite = \"main\"\n",
        sim.base_url()
    );
    let config = write(dir.path(), "crmgate.toml", &good);
    let mut serve = Serve::start(&config, dir.path().join("serve.log"), "ck-env-SECRET-1");
    let listening = serve.line("crmgate listening").await;
    let api = format!("http://{}", listening["api"].as_str().unwrap());
    let admin = format!("http://{}", listening["admin"].as_str().unwrap());

    // The client key from the environment works.
    let resp = client()
        .get(format!("{api}/api/v5/orders"))
        .header("X-API-KEY", "ck-env-SECRET-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    for (n, text) in BROKEN.iter().enumerate() {
        let broken = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{}",
            text.replace("{base}", &sim.base_url())
        );
        std::fs::write(&config, broken).unwrap();
        let (code, body) = admin_reload(&admin).await;
        assert_eq!(code, 400, "case {n}: {body}");
        let json: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(json["success"], false, "case {n}: {body}");
        assert!(!json["errors"].as_array().unwrap().is_empty(), "{body}");
        assert!(!body.contains(MARK), "case {n}: /reload leaks:\n{body}");
    }
    let rejected = serve
        .logs()
        .lines()
        .filter(|l| l.contains("config reload rejected"))
        .count();
    assert!(rejected >= BROKEN.len(), "{}", serve.logs());
    let logs = serve.logs();
    assert!(!logs.contains(MARK), "the log leaks:\n{logs}");
}

#[tokio::test]
async fn reload_rereads_the_client_key_file() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let clients = write(dir.path(), "clients", "# acme\nck-file-old\nck-file-kept\n");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [[tenants]]\nname = \"acme\"\nbase_url = \"{}\"\napi_key = \"{ACME_KEY}\"\n\
         client_keys_file = {:?}\nsite = \"main\"\n",
        sim.base_url(),
        clients.display().to_string()
    );
    let gate = Gate::from_file(&dir.path().join("crmgate.toml"), &text).await;
    let get = |key: &'static str| {
        let request = client()
            .get(format!("{}/api/v5/orders", gate.url))
            .header("X-API-KEY", key);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("ck-file-old").await, 200);
    assert_eq!(get("ck-file-new").await, 403);

    std::fs::write(&clients, "ck-file-kept\nck-file-new\n").unwrap();
    let (code, body) = admin_reload(&gate.admin).await;
    assert_eq!(code, 200, "{body}");

    assert_eq!(get("ck-file-new").await, 200, "the added key works");
    assert_eq!(get("ck-file-kept").await, 200);
    assert_eq!(get("ck-file-old").await, 403, "the removed key is refused");

    // A file emptied by mistake is refused, and the keys in force stay.
    std::fs::write(&clients, "# rotated out\n").unwrap();
    let (code, body) = admin_reload(&gate.admin).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(get("ck-file-new").await, 200);
    assert_eq!(get("ck-file-old").await, 403);
}
