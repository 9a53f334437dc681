//! TOML text to [`RawConfig`], with errors that name a position and a field
//! path but never a value.
//!
//! toml's own error text is not safe to show: its `Display` quotes the source
//! line, and serde's type errors quote the value (`invalid type: string
//! "ck-…", expected a sequence`), which for `client_keys = "ck-…"` is a key.
//! So the message is rebuilt here from the span (line and column), the field
//! path (tracked by `serde_path_to_error`) and the *kind* of mistake. Only
//! fixed phrases and names from our own schema get through; this module must
//! never copy text from the value into a message.

use super::raw::RawConfig;
use super::ConfigError;

/// Parses `text` (named `origin` in messages) into the raw, unchecked config.
pub(super) fn parse(text: &str, origin: &str) -> Result<RawConfig, ConfigError> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let path = e.path().to_string();
        let err = e.into_inner();
        let at = match err.span() {
            Some(span) => {
                let (line, column) = position(text, span.start);
                format!("{origin}:{line}:{column}")
            }
            None => origin.to_string(),
        };
        // serde_path_to_error shows the empty path as ".": that is a syntax
        // error from the TOML parser, raised before any field was reached.
        let problem = if path.is_empty() || path == "." {
            syntax(err.message())
        } else {
            format!("{path}: {}", data(err.message()))
        };
        ConfigError {
            problems: vec![format!("{at}: {problem}")],
        }
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A TOML syntax error. The parser's messages are fixed labels ("invalid
/// basic string", "expected newline, `#`", "duplicate key `x` in table `y`")
/// that name tokens and keys, never the value; they are kept, on one line.
fn syntax(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "invalid TOML".to_string()
    } else {
        format!("invalid TOML: {}", lines.join("; "))
    }
}

/// A serde data error at a known field, rewritten without the value. Only
/// serde's standard shapes are recognised; anything else becomes a generic
/// phrase rather than risk echoing a value.
fn data(message: &str) -> String {
    // The part after the last ", expected " comes from our schema (the
    // visitor), never from the file: a value containing that phrase sits
    // before it.
    let expected = message.rsplit_once(", expected ").map(|(_, e)| e.trim());
    if let Some(found) = message.strip_prefix("invalid type: ") {
        let found = found_kind(found);
        return match expected {
            Some(e) => format!("expected {}, found {found}", expected_form(e)),
            None => format!("wrong type: found {found}"),
        };
    }
    if message.starts_with("unknown field `") {
        // The field's name is already the last element of the path.
        return match expected {
            Some(e) => format!("unknown field, expected {e}"),
            None => "unknown field".to_string(),
        };
    }
    if message.starts_with("missing field `") || message.starts_with("duplicate field `") {
        // Both name a field of our schema only.
        return message.to_string();
    }
    // "invalid value: …", "invalid length …", "unknown variant `…`", and
    // anything toml adds: the value is never shown.
    match expected {
        Some(e) => format!("invalid value, expected {}", expected_form(e)),
        None => "invalid value".to_string(),
    }
}

/// What serde's `Unexpected` described, in our words and without its value
/// (`string "…"`, `integer `5``, `floating point `1.5``, `boolean `true``).
fn found_kind(unexpected: &str) -> &'static str {
    const KINDS: [(&str, &str); 8] = [
        ("string", "a string"),
        ("integer", "a whole number"),
        ("floating point", "a decimal number"),
        ("boolean", "true/false"),
        ("character", "a character"),
        ("sequence", "a list"),
        // TOML dates and times also reach serde as maps.
        ("map", "a table (or a date-time)"),
        ("unit value", "nothing"),
    ];
    KINDS
        .iter()
        .find(|(prefix, _)| unexpected.starts_with(prefix))
        .map_or("a value of another type", |(_, kind)| kind)
}

/// Serde's name of the expected type, as an operator would say it.
fn expected_form(expected: &str) -> &str {
    match expected {
        "a sequence" => "a list",
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => {
            "a whole number"
        }
        "f32" | "f64" => "a number",
        "a boolean" => "true or false",
        e if e.starts_with("struct ") || e == "a map" => "a table",
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(text: &str) -> String {
        let e = parse(text, "t.toml").expect_err("should be rejected");
        assert_eq!(e.problems.len(), 1, "{e:?}");
        e.problems[0].clone()
    }

    #[test]
    fn type_errors_name_position_path_and_kinds_but_not_the_value() {
        assert_eq!(
            problem("[[tenants]]\nname = \"a\"\nclient_keys = \"ck-SECRET-1\"\n"),
            "t.toml:3:15: tenants[0].client_keys: expected a list, found a string"
        );
        assert_eq!(
            problem("[server]\nmax_body_bytes = \"SECRET-2\"\n"),
            "t.toml:2:18: server.max_body_bytes: expected a whole number, found a string"
        );
        assert_eq!(
            problem("[limits.adaptive]\nenabled = 1.5\n"),
            "t.toml:2:11: limits.adaptive.enabled: expected true or false, found a decimal number"
        );
        assert_eq!(
            problem("[[tenants]]\nclient_keys = [\"a\", 77]\n"),
            "t.toml:2:21: tenants[0].client_keys[1]: expected a string, found a whole number"
        );
        assert_eq!(
            problem("server = 5\n"),
            "t.toml:1:10: server: expected a table, found a whole number"
        );
    }

    #[test]
    fn a_value_that_mimics_the_message_shape_is_still_not_echoed() {
        let p = problem("[[tenants]]\napi_key = [\"SECRET-3, expected SECRET-4\"]\n");
        assert_eq!(
            p,
            "t.toml:2:11: tenants[0].api_key: expected a string, found a list"
        );
        let p = problem("[server]\nlisten = 7\n#\"SECRET-5, expected SECRET-6\"\n");
        assert!(!p.contains("SECRET"), "{p}");
    }

    #[test]
    fn syntax_errors_keep_the_parser_label_without_the_line() {
        let p = problem("[server]\nlisten = SECRET-7\n");
        assert!(p.starts_with("t.toml:2:10: invalid TOML: "), "{p}");
        assert!(!p.contains("SECRET"), "{p}");
        let p = problem("[server]\nlisten = 'a'\nlisten = 'SECRET-8'\n");
        assert!(p.contains("duplicate key `listen`"), "{p}");
        assert!(!p.contains("SECRET"), "{p}");
    }

    #[test]
    fn unknown_fields_are_named_by_their_path() {
        let p = problem("[limits]\ngeneral_per_sec = 5\n");
        assert!(
            p.starts_with("t.toml:2:1: limits.general_per_sec: unknown field, expected one of"),
            "{p}"
        );
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        assert_eq!(position("ä = 1\nb", 7), (2, 1));
        assert_eq!(position("äb", 2), (1, 2));
        assert_eq!(position("x", 99), (1, 2));
    }
}
