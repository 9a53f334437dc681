//! Reading keys from the environment and from files, and noticing files that
//! other users can read.
//!
//! Everything read here is a secret, and so is anything an operator may have
//! put in the wrong field (the key itself in `api_key_env`). So problems name
//! the field path and what is wrong, never the value, the variable's name or
//! the file's path; only a permission warning names a path, because the file
//! was found and read, so the path is known to be a path.

use std::fmt;
use std::path::Path;

/// Whether `name` can be an environment variable's name as shells and
/// systemd write it. A RetailCRM key also matches, which is why an unset
/// variable is reported without its name.
pub(super) fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Why a secret could not be read. `Display` never includes a value, name
/// or path.
#[derive(Debug)]
pub(super) enum ReadError {
    /// `api_key_env` / `client_keys_env` holds something that is not a name.
    NotAName,
    /// The named variable is not set.
    Unset,
    /// The file cannot be read.
    Io(std::io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NotAName => f.write_str(
                "is not an environment variable name (letters, digits and '_', not starting \
                 with a digit): write the variable's name here, not the key",
            ),
            ReadError::Unset => f.write_str("names an environment variable that is not set"),
            // io::Error's Display carries the OS reason only, not the path.
            ReadError::Io(e) => write!(f, "cannot read the file it names: {e}"),
        }
    }
}

/// The value of the environment variable `name`.
pub(super) fn from_env(
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ReadError> {
    if !is_env_name(name) {
        return Err(ReadError::NotAName);
    }
    env(name).ok_or(ReadError::Unset)
}

/// The contents of the file at `path`.
pub(super) fn from_file(path: &str) -> Result<String, ReadError> {
    std::fs::read_to_string(path).map_err(ReadError::Io)
}

/// Client keys from a `client_keys_env` value: comma-separated, spaces
/// around each trimmed, empty items (a trailing comma) skipped. Each comes
/// with its 1-based position, to name it in messages.
pub(super) fn env_list(value: &str) -> Vec<(usize, String)> {
    value
        .split(',')
        .map(str::trim)
        .enumerate()
        .filter(|(_, k)| !k.is_empty())
        .map(|(n, k)| (n + 1, k.to_string()))
        .collect()
}

/// Client keys from a `client_keys_file`: one per line, trimmed; blank lines
/// and lines starting with `#` skipped. Each comes with its line number.
pub(super) fn file_list(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .map(str::trim)
        .enumerate()
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(n, l)| (n + 1, l.to_string()))
        .collect()
}

/// A warning when users other than crmgate may read the file at `path`:
/// "others" can read it, or its group can and crmgate is not in that group
/// (group-readable files are how Kubernetes `fsGroup` and a `root:crmgate
/// 0640` install grant access, so that case alone is fine). `what` says what
/// the file holds. `None` when the file is private enough or cannot be
/// inspected.
pub(super) fn exposure(path: &Path, what: &str) -> Option<String> {
    let readers = readers(path)?;
    Some(format!(
        "{} holds {what} and is readable by {} (mode {:04o}): run `chmod 600 {}` \
         (or `chmod 640` with a group only crmgate is in)",
        path.display(),
        readers.who,
        readers.mode,
        path.display(),
    ))
}

/// Who besides the owner (and crmgate's own groups) may read a file.
struct Readers {
    who: &'static str,
    mode: u32,
}

#[cfg(unix)]
fn readers(path: &Path) -> Option<Readers> {
    use std::os::unix::fs::MetadataExt;

    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o7777;
    let others = mode & 0o004 != 0;
    let group = mode & 0o040 != 0 && !in_group(meta.gid());
    let who = match (group, others) {
        (false, false) => return None,
        (true, false) => "its group",
        (false, true) => "all users",
        (true, true) => "its group and all users",
    };
    Some(Readers { who, mode })
}

#[cfg(not(unix))]
fn readers(_path: &Path) -> Option<Readers> {
    None
}

/// Whether this process is in group `gid` (effective or supplementary).
#[cfg(unix)]
fn in_group(gid: u32) -> bool {
    use rustix::process::{getegid, getgroups};

    getegid().as_raw() == gid
        || getgroups().is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        for ok in ["ACME_KEY", "_x", "a1"] {
            assert!(is_env_name(ok), "{ok}");
        }
        for bad in ["", "1A", "ck-123", "a b", "KEY=1", "ключ"] {
            assert!(!is_env_name(bad), "{bad}");
        }
    }

    #[test]
    fn read_errors_never_show_what_was_read() {
        let env = |_: &str| None;
        let e = from_env("SECRET-not-a-name", &env).unwrap_err();
        assert!(!e.to_string().contains("SECRET"), "{e}");
        let e = from_env("SECRETabc123", &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "names an environment variable that is not set"
        );
        let e = from_file("/nonexistent/SECRET-file").unwrap_err();
        assert!(e.to_string().starts_with("cannot read the file it names: "));
        assert!(!e.to_string().contains("SECRET"), "{e}");
    }

    #[test]
    fn lists_from_env_and_files() {
        assert_eq!(
            env_list(" a , b,,c ,"),
            [(1, "a".into()), (2, "b".into()), (4, "c".into())]
        );
        assert_eq!(
            file_list("# clients\n\n  a  \n#b\nc\n"),
            [(3, "a".into()), (5, "c".into())]
        );
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_files_are_named_with_their_mode() {
        use std::os::unix::fs::PermissionsExt;

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys");
        std::fs::write(&file, "k\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(exposure(&file, "keys"), None);
        // Our own group may read: that is how access is granted.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(exposure(&file, "keys"), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = exposure(&file, "client keys").expect("a warning");
        assert!(
            w.contains(&file.display().to_string())
                && w.contains("mode 0644")
                && w.contains("all users")
                && w.contains("chmod 600"),
            "{w}"
        );
        assert_eq!(exposure(&dir.path().join("missing"), "keys"), None);
    }
}
