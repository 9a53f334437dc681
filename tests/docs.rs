//! The docs say what the code does: README's test section names every
//! external program a test may need (its Debian packages and its
//! `CRMGATE_REQUIRE_*` switch), and `.ci/run` installs each of them.
//! Reads files only; starts nothing.
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
