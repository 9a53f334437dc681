//! The one place that decides what a test does when an external program it
//! needs is missing: fail (CI, `CRMGATE_REQUIRE_ALL=1` or the program's own
//! `CRMGATE_REQUIRE_*=1`) or skip loudly. The skip note is written straight
//! to the process's stderr, not through `eprintln!` (which the test harness
//! captures and hides for passing tests), so `cargo test` shows it. Never
//! skips in silence, never decides anything else.
#![allow(dead_code)]

use std::io::Write;
use std::process::Command;

/// An external program some integration tests need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    /// `redis-server`: the shared budget tests start a private one.
    Redis,
    /// `promtool` (Debian package `prometheus`): metrics exposition checks.
    Promtool,
    /// The official `retailcrm` Python package, in `CRMGATE_PYTHON`.
    PythonClient,
    /// Debian's `chromium`, driven headless by the status page's test.
    Chromium,
    /// `php` with the curl extension: the official PHP clients' tests.
    Php,
    /// The `curl` command: multipart bodies and `Expect: 100-continue`.
    Curl,
}

impl Program {
    /// Every program, for listings.
    pub const ALL: [Program; 6] = [
        Program::Redis,
        Program::Promtool,
        Program::PythonClient,
        Program::Chromium,
        Program::Php,
        Program::Curl,
    ];

    /// What is missing, in words.
    pub fn what(self) -> &'static str {
        match self {
            Program::Redis => "redis-server is not on PATH",
            Program::Promtool => "promtool is not on PATH",
            Program::PythonClient => {
                "the retailcrm Python package is not importable by $CRMGATE_PYTHON (default python3)"
            }
            Program::Chromium => "chromium is not on PATH",
            Program::Php => "php (with the curl extension) is not on PATH",
            Program::Curl => "curl is not on PATH",
        }
    }

    /// The Debian packages that provide it.
    pub fn packages(self) -> &'static str {
        match self {
            Program::Redis => "redis-server",
            Program::Promtool => "prometheus",
            Program::PythonClient => "python3-venv",
            Program::Chromium => "chromium fonts-dejavu-core",
            Program::Php => "php-cli php-curl",
            Program::Curl => "curl",
        }
    }

    /// How to install it on Debian.
    pub fn install(self) -> String {
        let apt = format!("apt-get install {}", self.packages());
        match self {
            Program::PythonClient => format!(
                "{apt} && python3 -m venv ~/.venvs/crmgate && \
                 ~/.venvs/crmgate/bin/pip install retailcrm && \
                 export CRMGATE_PYTHON=~/.venvs/crmgate/bin/python"
            ),
            _ => apt,
        }
    }

    /// The variable that requires this program alone (`CRMGATE_REQUIRE_ALL`
    /// requires every one).
    pub fn require_var(self) -> &'static str {
        match self {
            Program::Redis => "CRMGATE_REQUIRE_REDIS",
            Program::Promtool => "CRMGATE_REQUIRE_PROMTOOL",
            Program::PythonClient => "CRMGATE_REQUIRE_PYCLIENT",
            Program::Chromium => "CRMGATE_REQUIRE_BROWSER",
            Program::Php => "CRMGATE_REQUIRE_PHP",
            Program::Curl => "CRMGATE_REQUIRE_CURL",
        }
    }

    /// Whether this run must have the program (a missing one fails).
    pub fn required(self) -> bool {
        is_set("CRMGATE_REQUIRE_ALL") || is_set(self.require_var())
    }
}

fn is_set(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Called when `program` is missing and `test` therefore cannot run: panics
/// when the program is required, else writes a skip note to stderr that
/// names the test, what is missing and the install line. The caller then
/// returns without asserting anything.
#[track_caller]
pub fn missing(program: Program, test: &str) {
    if program.required() {
        panic!(
            "{test}: {} and {} or CRMGATE_REQUIRE_ALL is set, so this test may not skip \
             (install: {})",
            program.what(),
            program.require_var(),
            program.install()
        );
    }
    let note = format!(
        "\n!!!!! SKIPPED {test}: {}\n!!!!! install: {}\n!!!!! (CRMGATE_REQUIRE_ALL=1 turns this skip into a failure)\n\n",
        program.what(),
        program.install()
    );
    // Straight to fd 2: the harness captures `eprintln!`, not this.
    let _ = std::io::stderr().lock().write_all(note.as_bytes());
}

/// The Python interpreter the client tests run: `CRMGATE_PYTHON` (e.g. a
/// virtualenv's `bin/python`), else `python3`.
pub fn python() -> String {
    std::env::var("CRMGATE_PYTHON")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// Whether [`python`] can import the official `retailcrm` package; when it
/// cannot, [`missing`] decides (skip loudly, or fail when required).
pub fn python_client(test: &str) -> bool {
    let found = Command::new(python())
        .args(["-c", "import retailcrm"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        missing(Program::PythonClient, test);
    }
    found
}

/// Whether `program` runs at all (`program --version`-style probe with
/// `args`); when it does not, [`missing`] decides.
pub fn runs(program: Program, cmd: &str, args: &[&str], test: &str) -> bool {
    let found = Command::new(cmd)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        missing(program, test);
    }
    found
}

/// The running test's name, for skip notes: libtest names each test's
/// thread after it (a test's body on a runtime worker reads "this test").
pub fn test_name() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" && !name.starts_with("tokio") => name.to_string(),
        _ => "this test".into(),
    }
}
