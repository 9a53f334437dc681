//! The docs say what the code does: README's test section names every
//! external program a test may need (its Debian packages and its
//! `CRMGATE_REQUIRE_*` switch), `.ci/run` installs each of them, and
//! operations.md names every rejection reason and its Troubleshooting has a
//! row for every error crmgate answers
//! (each variant of `GatewayError` and `QueueError`, read from the source,
//! with its message). Reads files only; starts nothing.
mod common;

use common::*;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The text of the Markdown section under `heading`, up to the next heading
/// of the same or a higher level.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let start = doc
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    let body = &doc[start + heading.len() + 2..];
    let end = body
        .match_indices("\n#")
        .find(|(i, _)| {
            let hashes = body[i + 1..].chars().take_while(|c| *c == '#').count();
            hashes <= level && body[i + 1 + hashes..].starts_with(' ')
        })
        .map_or(body.len(), |(i, _)| i);
    &body[..end]
}

#[test]
fn readme_says_which_tests_need_which_program() {
    let readme = read("README.md");
    let tests = section(&readme, "## Run the tests");
    assert!(tests.contains("CRMGATE_REQUIRE_ALL=1"), "{tests}");
    for program in Program::ALL {
        let apt = format!("apt-get install {}", program.packages());
        assert!(tests.contains(&apt), "README's test section lacks `{apt}`");
        let switch = program.require_var().trim_start_matches("CRMGATE_REQUIRE");
        assert!(
            tests.contains(switch),
            "README's test section lacks {}",
            program.require_var()
        );
    }
    // The one set-up line installs every package too.
    let setup = section(&readme, "## Set-up on a fresh Debian machine");
    for program in Program::ALL {
        for package in program.packages().split(' ') {
            assert!(
                setup.contains(package),
                "README's set-up line lacks {package}"
            );
        }
    }
}

#[test]
fn ci_installs_and_requires_every_program() {
    let ci = read(".ci/run");
    assert!(ci.contains("export CRMGATE_REQUIRE_ALL=1"));
    assert!(ci.contains("export CRMGATE_PYTHON="));
    for program in Program::ALL {
        for package in program.packages().split(' ') {
            assert!(ci.contains(package), ".ci/run does not install {package}");
        }
    }
}

/// The variants of `pub enum NAME` in `source`, each with the string of the
/// `#[error("...")]` attribute above it (escapes undone).
fn variants(source: &str, name: &str) -> Vec<(String, String)> {
    let start = source
        .find(&format!("pub enum {name} {{"))
        .unwrap_or_else(|| panic!("no enum {name}"));
    let body = &source[start..];
    let body = &body[..body.find("\n}").expect("the enum's end")];
    let mut out = Vec::new();
    let mut message = String::new();
    let mut in_error = false;
    for line in body.lines().skip(1) {
        let trimmed = line.trim();
        if trimmed.starts_with("#[error(") {
            in_error = true;
            message.clear();
        }
        if in_error {
            if message.is_empty() {
                if let Some(q) = trimmed.find('"') {
                    let rest = &trimmed[q + 1..];
                    let mut lit = String::new();
                    let mut chars = rest.chars();
                    while let Some(c) = chars.next() {
                        match c {
                            '\\' => lit.extend(chars.next()),
                            '"' => break,
                            c => lit.push(c),
                        }
                    }
                    message = lit;
                }
            }
            if trimmed.ends_with(")]") {
                in_error = false;
            }
            continue;
        }
        // A variant: four spaces of indent, then an upper-case name.
        if line.starts_with("    ") && !line.starts_with("     ") {
            let ident: String = trimmed
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            if ident.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                out.push((ident, std::mem::take(&mut message)));
            }
        }
    }
    out
}

#[test]
fn troubleshooting_covers_every_error() {
    let ops = read("docs/operations.md");
    let trouble = section(&ops, "## Troubleshooting");
    let errors = variants(&read("src/error.rs"), "GatewayError");
    let queue = variants(&read("src/scheduler/ticket.rs"), "QueueError");
    assert!(errors.len() >= 20, "parsed only {errors:?}");
    assert_eq!(queue.len(), 4, "{queue:?}");
    let mut missing = Vec::new();
    let rows = errors
        .iter()
        .filter(|(name, _)| name != "Queue")
        .map(|(name, msg)| (name.clone(), msg.clone()))
        .chain(
            queue
                .iter()
                .map(|(name, msg)| (format!("Queue({name})"), format!("crmgate: {msg}"))),
        );
    for (name, message) in rows {
        if !trouble.contains(&format!("`{name}`")) {
            missing.push(format!("{name}: no row"));
        }
        // The fixed start of the message, up to its first placeholder.
        let fixed = message.split('{').next().unwrap_or("").trim_end();
        if fixed.len() >= 6 && !trouble.contains(fixed) {
            missing.push(format!("{name}: errorMsg {fixed:?} not quoted"));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/operations.md, Troubleshooting, lacks:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_metrics_list_names_every_rejection_reason() {
    let ops = read("docs/operations.md");
    let row = ops
        .lines()
        .find(|l| l.starts_with("| `crmgate_rejections_total{reason}`"))
        .expect("operations.md lists crmgate_rejections_total");
    for reason in crmgate::metrics::REJECTION_REASONS {
        assert!(
            row.contains(&format!("`{reason}`")),
            "operations.md's crmgate_rejections_total row lacks `{reason}`"
        );
    }
}
