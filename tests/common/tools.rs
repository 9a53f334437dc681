//! External programs the client tests drive (curl, php): found, or skipped
//! loudly, or required.
//!
//! A test calls [`available`] first; it returns false (after printing a
//! loud SKIPPED line) when the program is missing, unless the program's
//! `CRMGATE_REQUIRE_*` variable is `1`, which CI sets: then a missing
//! program fails the test.

use std::process::Command;

/// Whether `program` runs (`program args...` exits 0); when it does not,
/// fails if `require_var=1`, else prints why the test is skipped.
pub fn available(program: &str, args: &[&str], require_var: &str, install: &str) -> bool {
    let found = Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var(require_var).as_deref() != Ok("1"),
            "{require_var}=1 but `{program} {}` does not run ({install})",
            args.join(" ")
        );
        eprintln!("\n!!!!! SKIPPED: `{program}` is not available ({install}) !!!!!\n");
    }
    found
}

/// curl on PATH (`CRMGATE_REQUIRE_CURL=1` makes it required).
pub fn curl_available() -> bool {
    available(
        "curl",
        &["--version"],
        "CRMGATE_REQUIRE_CURL",
        "apt-get install curl",
    )
}

/// php-cli with the curl extension (`CRMGATE_REQUIRE_PHP=1` makes it
/// required).
pub fn php_available() -> bool {
    available(
        "php",
        &["-r", "exit(function_exists('curl_init') ? 0 : 1);"],
        "CRMGATE_REQUIRE_PHP",
        "apt-get install php-cli php-curl",
    )
}
