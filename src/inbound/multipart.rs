//! Multipart form bodies (`multipart/form-data`, RFC 7578 over RFC 2046's
//! grammar), read as the CRM reads them.
//!
//! RetailCRM is PHP, which fills `$_POST` from the parts of a multipart
//! body exactly as from a form; PHP clients (api-client-php 5.x, the Bitrix
//! and WooCommerce modules) send every POST that way, `apiKey` included. So
//! a key part is as good as `apiKey=` in a form body: [`strip`] returns the
//! first `apiKey` value and removes every part whose name is a key in any
//! spelling PHP reads ([`crate::rewrite::is_key_name`], the one rule shared
//! with forms and queries). Every other byte stays as received: preamble,
//! boundary, part headers, file contents, epilogue.
//!
//! Where PHP's reading (`main/rfc1867.c`) and the RFC's could differ, the
//! body is refused ([`MultipartError`], a 400) rather than guessed at: a
//! boundary parameter the two read differently, a line that starts with the
//! boundary but is no boundary line, anything after the closing boundary
//! that PHP would take for another part, a line long enough for PHP to
//! split, a NUL in part headers, a part without a name. That is what makes
//! "no key part can remain" hold for the CRM's parser, not only for ours.
//! This module never logs, and keeps no key past returning it.

use axum::body::Bytes;

use crate::rewrite::{is_key_name, API_KEY_PARAM};

/// PHP reads multipart headers in lines of at most 5 KiB and splits longer
/// ones; a line this long (outside part contents) is refused, so PHP and
/// crmgate always see the same lines.
pub const MAX_LINE: usize = 4096;

/// Why a multipart body cannot be forwarded (answered 400, never sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// The content type has no usable `boundary` parameter.
    #[error("multipart/form-data without a boundary parameter")]
    NoBoundary,
    /// The `boundary` parameter reads differently by the RFC and by PHP.
    #[error("the multipart boundary parameter is ambiguous")]
    AmbiguousBoundary,
    /// No line of the body is the opening boundary.
    #[error("the multipart body has no opening boundary line")]
    NoOpening,
    /// The body ends inside part `n` (no closing boundary).
    #[error("multipart part {0} is not terminated by a boundary")]
    Unterminated(usize),
    /// A line starts with the boundary but has more after it.
    #[error("a multipart boundary line has characters after the boundary")]
    BadBoundaryLine,
    /// A boundary line after the closing one.
    #[error("a multipart boundary line follows the closing boundary")]
    AfterClose,
    /// Part `n`'s headers do not end with an empty line before its content.
    #[error("multipart part {0} has no empty line after its headers")]
    UnendedHeaders(usize),
    /// Part `n` has no `Content-Disposition` name.
    #[error("multipart part {0} has no name")]
    NoName(usize),
    /// A line outside part contents is over [`MAX_LINE`] bytes, or part
    /// headers hold a NUL byte.
    #[error("a multipart boundary or header line is too long or holds a NUL byte")]
    BadLine,
}

/// A multipart body with its key parts removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stripped {
    /// The body without key parts; the received bytes when there were none.
    pub body: Bytes,
    /// The first `apiKey` part's value (exact name, not a file part).
    pub api_key: Option<String>,
    /// True if a `site` part is present.
    pub has_site: bool,
    /// How many key parts were removed.
    pub removed: usize,
    boundary: String,
    /// Where the closing boundary line starts in `body`.
    close_at: usize,
}

impl Stripped {
    /// The body with one more text part, `name` = `value`, before the
    /// closing boundary; `None` when `value` could not be a part's content
    /// (a line break in it).
    pub fn with_field(&self, name: &str, value: &str) -> Option<Bytes> {
        if value.contains(['\r', '\n']) || name.contains(['"', '\r', '\n']) {
            return None;
        }
        let part = format!(
            "--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n",
            self.boundary
        );
        let mut out = Vec::with_capacity(self.body.len() + part.len());
        out.extend_from_slice(&self.body[..self.close_at]);
        out.extend_from_slice(part.as_bytes());
        out.extend_from_slice(&self.body[self.close_at..]);
        Some(out.into())
    }
}

/// The boundary of a `multipart/form-data` content type, when the RFC's
/// parameter syntax and PHP's substring search agree on it.
pub fn boundary(content_type: &str) -> Result<String, MultipartError> {
    let rfc = rfc_boundary(content_type)?;
    match (rfc, php_boundary(content_type)) {
        (None, None) => Err(MultipartError::NoBoundary),
        (Some(r), Some(p)) if r == p => {
            let printable = r.bytes().all(|b| (0x20..0x7f).contains(&b));
            if r.is_empty() || r.len() > 200 || !printable {
                return Err(MultipartError::NoBoundary);
            }
            Ok(r)
        }
        _ => Err(MultipartError::AmbiguousBoundary),
    }
}

/// `boundary=` among the `;`-separated parameters (quoted strings read with
/// their escapes); more than one is ambiguous.
fn rfc_boundary(content_type: &str) -> Result<Option<String>, MultipartError> {
    let mut found = None;
    for param in split_outside_quotes(content_type, ';').into_iter().skip(1) {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("boundary") {
            continue;
        }
        if found.is_some() {
            return Err(MultipartError::AmbiguousBoundary);
        }
        let value = value.trim();
        found = Some(match value.strip_prefix('"') {
            Some(q) => unquote(q, '"'),
            None => value.to_string(),
        });
    }
    Ok(found)
}

/// PHP's reading: the first `boundary` substring (case-sensitive, then
/// not), the value after the next `=`, up to a closing `"` or to `,`/`;`.
fn php_boundary(content_type: &str) -> Option<String> {
    let at = content_type
        .find("boundary")
        .or_else(|| content_type.to_ascii_lowercase().find("boundary"))?;
    let rest = &content_type[at..];
    let value = &rest[rest.find('=')? + 1..];
    match value.strip_prefix('"') {
        Some(q) => q.find('"').map(|end| q[..end].to_string()),
        None => Some(value[..value.find([',', ';']).unwrap_or(value.len())].to_string()),
    }
}

/// Splits at `sep`, not inside `"..."` or `'...'` (with `\` escaping the
/// quote): PHP's `php_ap_getword`.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quote, mut escaped) = (0, None, false);
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == sep => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            None => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// The text after an opening `quote`, up to the closing one, with `\\` and
/// `\<quote>` unescaped: PHP's `substring_conf`.
fn unquote(s: &str, quote: char) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == quote {
            break;
        }
        match (c, chars.peek()) {
            ('\\', Some(&n)) if n == '\\' || n == quote => {
                out.push(n);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

/// One part: where it starts (its boundary line) and what it is.
#[derive(Debug)]
struct Part {
    /// The start of its boundary line.
    start: usize,
    /// The name PHP registers it under (the last `name` parameter).
    name: Option<String>,
    /// A key name in any reading of its headers.
    key: bool,
    /// Has a `filename` parameter (PHP files it in `$_FILES`).
    file: bool,
    /// Its content, without the line break before the next boundary.
    content: std::ops::Range<usize>,
}

/// Finds the key parts of `body` (delimited by `boundary`), returns the
/// first `apiKey` value, and the body without them.
pub fn strip(boundary: &str, body: Bytes) -> Result<Stripped, MultipartError> {
    let (parts, close_at) = parse(boundary.as_bytes(), &body)?;
    let mut api_key = None;
    let mut has_site = false;
    let mut removed = 0;
    for p in &parts {
        let field = p.name.as_deref().filter(|_| !p.file);
        if api_key.is_none() && field == Some(API_KEY_PARAM) {
            api_key = Some(String::from_utf8_lossy(&body[p.content.clone()]).into_owned());
        }
        has_site |= field == Some("site");
        removed += usize::from(p.key);
    }
    if removed == 0 {
        return Ok(Stripped {
            body,
            api_key,
            has_site,
            removed,
            boundary: boundary.to_string(),
            close_at,
        });
    }
    // A part runs from its boundary line to the next one; the line break
    // before a boundary belongs to that boundary, so whole parts drop out
    // cleanly.
    let mut out = Vec::with_capacity(body.len());
    let mut from = 0;
    for (i, p) in parts.iter().enumerate() {
        if p.key {
            let next = parts.get(i + 1).map_or(close_at, |n| n.start);
            out.extend_from_slice(&body[from..p.start]);
            from = next;
        }
    }
    out.extend_from_slice(&body[from..]);
    // Only parts before it were removed.
    let close_at = close_at - (body.len() - out.len());
    Ok(Stripped {
        body: out.into(),
        api_key,
        has_site,
        removed,
        boundary: boundary.to_string(),
        close_at,
    })
}

/// The parts of `body` and where its closing boundary line starts.
fn parse(boundary: &[u8], body: &[u8]) -> Result<(Vec<Part>, usize), MultipartError> {
    let dash = [b"--", boundary].concat();
    // Every line that starts with the boundary must be a boundary line:
    // PHP ends a part's content at the first "\n--boundary", whatever
    // follows it, and looks for boundary lines everywhere else.
    let mut delims = Vec::new();
    let mut line = 0;
    let mut in_content = false;
    loop {
        let rest = &body[line..];
        let is_delim = rest.starts_with(&dash);
        if is_delim {
            delims.push(line);
        }
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            // The last line (the epilogue's, or a closing boundary's).
            if !in_content && rest.len() > MAX_LINE {
                return Err(MultipartError::BadLine);
            }
            break;
        };
        // Preamble and epilogue lines are read line by line by PHP too.
        if (!in_content || is_delim) && nl >= MAX_LINE {
            return Err(MultipartError::BadLine);
        }
        if is_delim {
            in_content = !rest[dash.len()..].starts_with(b"--");
        }
        line += nl + 1;
    }
    let mut parts = Vec::new();
    let mut close_at = None;
    for (i, &at) in delims.iter().enumerate() {
        if close_at.is_some() {
            return Err(MultipartError::AfterClose);
        }
        let after = &body[at + dash.len()..];
        let headers_at = if after.starts_with(b"--") {
            close_at = Some(at);
            continue;
        } else if after.starts_with(b"\r\n") {
            at + dash.len() + 2
        } else if after.starts_with(b"\n") {
            at + dash.len() + 1
        } else {
            return Err(MultipartError::BadBoundaryLine);
        };
        let n = parts.len() + 1;
        let end = *delims.get(i + 1).ok_or(MultipartError::Unterminated(n))?;
        parts.push(part(body, n, at, headers_at, end)?);
    }
    match (delims.first(), close_at) {
        (None, _) => Err(MultipartError::NoOpening),
        (Some(_), None) => Err(MultipartError::Unterminated(parts.len())),
        (Some(_), Some(close)) => Ok((parts, close)),
    }
}

/// Part `n`: headers from `headers_at` up to an empty line, then content up
/// to the line break before the boundary line at `end`.
fn part(
    body: &[u8],
    n: usize,
    start: usize,
    headers_at: usize,
    end: usize,
) -> Result<Part, MultipartError> {
    let seg = &body[headers_at..end];
    let mut pos = 0;
    // (name, value) as PHP collects them: a line starting with white space,
    // or without a colon, continues the previous header.
    let mut headers: Vec<(String, String)> = Vec::new();
    loop {
        let nl = seg[pos..]
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(MultipartError::UnendedHeaders(n))?;
        let raw = &seg[pos..pos + nl];
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        pos += nl + 1;
        if raw.is_empty() {
            break;
        }
        if raw.len() >= MAX_LINE || raw.contains(&0) {
            return Err(MultipartError::BadLine);
        }
        let text = String::from_utf8_lossy(raw);
        let colon = (!text.starts_with(|c: char| c.is_ascii_whitespace()))
            .then(|| text.find(':'))
            .flatten();
        match (colon, headers.last_mut()) {
            (Some(c), _) => headers.push((text[..c].to_string(), text[c + 1..].to_string())),
            (None, Some(last)) => last.1.push_str(&text),
            (None, None) => {}
        }
    }
    // The empty line must come before the boundary's own line break.
    if headers_at + pos >= end {
        return Err(MultipartError::UnendedHeaders(n));
    }
    let content_start = headers_at + pos;
    let mut content_end = end - 1;
    if content_end > content_start && body[content_end - 1] == b'\r' {
        content_end -= 1;
    }
    let mut p = Part {
        start,
        name: None,
        key: false,
        file: false,
        content: content_start..content_end,
    };
    let mut named = false;
    for (_, value) in headers
        .iter()
        .filter(|(h, _)| h.trim().eq_ignore_ascii_case("content-disposition"))
    {
        disposition(value, &mut p, &mut named);
    }
    if !named {
        return Err(MultipartError::NoName(n));
    }
    Ok(p)
}

/// Reads a `Content-Disposition` value into `p`: PHP's name (the last
/// `name=`), whether it is a file, and whether any reading of any
/// `name`-like parameter is a key name (the safe side: such a part goes).
fn disposition(value: &str, p: &mut Part, named: &mut bool) {
    let php = split_outside_quotes(value, ';');
    let naive = value.split(';');
    for (i, pair) in php.iter().copied().chain(naive).enumerate() {
        let from_php = i < php.len();
        let Some((key, raw)) = pair.split_once('=') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        if key.starts_with("filename") {
            p.file |= from_php;
            continue;
        }
        if !key.starts_with("name") {
            continue;
        }
        let php_value = php_word(raw);
        let trimmed = raw.trim().trim_matches(['"', '\'']);
        let extended = trimmed.rsplit('\'').next().unwrap_or(trimmed);
        let extended = percent_encoding::percent_decode_str(extended).decode_utf8_lossy();
        p.key |= [php_value.as_str(), trimmed, &extended]
            .iter()
            .any(|v| is_key_name(v));
        if from_php && key == "name" {
            *named = true;
            p.name = Some(php_value);
        }
    }
}

/// A parameter value as PHP's `php_ap_getword_conf` reads it: after white
/// space, a `"`- or `'`-quoted string with escapes, else up to white space.
fn php_word(raw: &str) -> String {
    let s = raw.trim_start();
    match s.chars().next() {
        Some(q @ ('"' | '\'')) => unquote(&s[1..], q),
        _ => s
            .split(|c: char| c.is_ascii_whitespace())
            .next()
            .unwrap_or("")
            .to_string(),
    }
}

#[cfg(test)]
mod tests;
