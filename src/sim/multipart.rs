//! The CRM's reading of `multipart/form-data` bodies: the fields PHP puts
//! in `$_POST`, found the way PHP's own parser (`main/rfc1867.c`) finds
//! them, quirks included.
//!
//! RetailCRM is PHP, and its PHP clients (api-client-php 5.x, the Bitrix
//! and WooCommerce modules) send every POST as multipart, `apiKey` among
//! the parts. Written from PHP's behaviour, never from the gateway's
//! parser, so a part the gateway misses is a part the CRM still reads:
//! - the boundary is the first `boundary` substring of the content type,
//!   after the next `=`, up to a closing `"` or to `,`/`;`;
//! - a boundary is a line (CR stripped) exactly `--boundary`, looked for
//!   line by line, also after the closing one (so parts there are read);
//! - part headers run to an empty line; a line starting with white space
//!   (or without a colon) continues the previous header;
//! - the first `Content-Disposition` header's last `name=` (quoted with `"`
//!   or `'`, escapes `\\` and `\<quote>`) names the field; a part with a
//!   `filename=` is a file, not a field;
//! - a value runs to the next `\n--boundary`, minus one CR before it.

/// The `$_POST` fields of a multipart body, in order; empty when PHP would
/// find no boundary.
pub(crate) fn fields(content_type: &str, body: &[u8]) -> Vec<(String, String)> {
    let Some(boundary) = boundary(content_type) else {
        return Vec::new();
    };
    let dash = format!("--{boundary}").into_bytes();
    let next = [b"\n".as_slice(), &dash].concat();
    let mut out = Vec::new();
    let mut pos = 0;
    // Each round: find a boundary line, read headers, then the value.
    while let Some(after) = find_boundary(body, pos, &dash) {
        let (headers, value_at) = headers(body, after);
        let end = find(&body[value_at..], &next).map_or(body.len(), |i| value_at + i);
        let mut value = &body[value_at..end];
        if end < body.len() {
            value = value.strip_suffix(b"\r").unwrap_or(value);
        }
        pos = end;
        let Some(cd) = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-disposition"))
        else {
            continue;
        };
        let (name, file) = disposition(&cd.1);
        if let (Some(name), false) = (name, file) {
            out.push((name, String::from_utf8_lossy(value).into_owned()));
        }
    }
    out
}

fn boundary(content_type: &str) -> Option<String> {
    let at = content_type
        .find("boundary")
        .or_else(|| content_type.to_ascii_lowercase().find("boundary"))?;
    let value = &content_type[at..];
    let value = &value[value.find('=')? + 1..];
    match value.strip_prefix('"') {
        Some(q) => Some(q[..q.find('"')?].to_string()),
        None => Some(value[..value.find([',', ';']).unwrap_or(value.len())].to_string()),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The line at `pos` (CR stripped) and where the next one starts.
fn line(body: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    if pos >= body.len() {
        return None;
    }
    let rest = &body[pos..];
    let (l, next) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (&rest[..i], pos + i + 1),
        None => (rest, body.len()),
    };
    Some((l.strip_suffix(b"\r").unwrap_or(l), next))
}

/// Where the line after the next line exactly `--boundary` starts.
fn find_boundary(body: &[u8], mut pos: usize, dash: &[u8]) -> Option<usize> {
    while let Some((l, next)) = line(body, pos) {
        pos = next;
        if l == dash {
            return Some(pos);
        }
    }
    None
}

/// Part headers as (name before the colon, value), and where the value
/// starts.
fn headers(body: &[u8], mut pos: usize) -> (Vec<(String, String)>, usize) {
    let mut out: Vec<(String, String)> = Vec::new();
    while let Some((l, next)) = line(body, pos) {
        pos = next;
        if l.is_empty() {
            break;
        }
        let l = String::from_utf8_lossy(l);
        let colon = (!l.starts_with(|c: char| c.is_ascii_whitespace()))
            .then(|| l.find(':'))
            .flatten();
        match (colon, out.last_mut()) {
            (Some(c), _) => {
                let value = l[c + 1..].trim_start().to_string();
                out.push((l[..c].to_string(), value));
            }
            (None, Some(last)) => last.1.push_str(&l),
            (None, None) => {}
        }
    }
    (out, pos)
}

/// The part's field name (the last `name=`) and whether it is a file.
fn disposition(value: &str) -> (Option<String>, bool) {
    let (mut name, mut file) = (None, false);
    for pair in split(value, ';') {
        let pair = pair.trim_start();
        let Some(eq) = pair.find('=') else { continue };
        let key = &pair[..eq];
        if key.eq_ignore_ascii_case("name") {
            name = Some(word(&pair[eq + 1..]));
        } else if key.eq_ignore_ascii_case("filename") {
            file = true;
        }
    }
    (name, file)
}

/// Splits at `sep` outside `"..."`/`'...'`.
fn split(s: &str, sep: char) -> Vec<&str> {
    let (mut out, mut start, mut quote, mut skip) = (Vec::new(), 0, None, false);
    for (i, c) in s.char_indices() {
        if skip {
            skip = false;
            continue;
        }
        match quote {
            Some(q) if c == '\\' && s[i + 1..].starts_with(q) => skip = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == sep => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            None => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A quoted (with `\\`, `\<quote>` escapes) or bare (to white space) word.
fn word(raw: &str) -> String {
    let s = raw.trim_start();
    let Some(q) = s.chars().next().filter(|c| *c == '"' || *c == '\'') else {
        return s
            .split(|c: char| c.is_ascii_whitespace())
            .next()
            .unwrap_or("")
            .into();
    };
    let mut out = String::new();
    let mut chars = s[1..].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c == q => break,
            '\\' if chars.peek().is_some_and(|n| *n == q || *n == '\\') => {
                out.extend(chars.next());
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(ct: &str, body: &str) -> Vec<(String, String)> {
        fields(ct, body.as_bytes())
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn reads_fields_like_php() {
        // What curl makes of a PHP array in CURLOPT_POSTFIELDS.
        let body = "--------------------------abc\r\n\
                    Content-Disposition: form-data; name=\"apiKey\"\r\n\r\nk1\r\n\
                    --------------------------abc\r\n\
                    Content-Disposition: form-data; name=\"order\"\r\n\r\n{\"a\":1}\r\n\
                    --------------------------abc\r\n\
                    Content-Disposition: form-data; name=\"f\"; filename=\"x.txt\"\r\n\
                    Content-Type: text/plain\r\n\r\nfile\r\n\
                    --------------------------abc--\r\n";
        let ct = "multipart/form-data; boundary=------------------------abc";
        assert_eq!(
            f(ct, body),
            pairs(&[("apiKey", "k1"), ("order", "{\"a\":1}")])
        );
    }

    #[test]
    fn php_quirks_are_kept() {
        let ct = "multipart/form-data; boundary=b";
        // LF line ends, single quotes, a folded header, the last name.
        let body = "pre\n--b\ncontent-disposition: form-data;\n name='apiKey'\n\nk\r\n\
                    --b\nContent-Disposition: form-data; name=a; name=\"x\\\"y\"\n\nv\n--b--\n\
                    --b\nContent-Disposition: form-data; name=after\n\nlate\n--b--";
        assert_eq!(
            f(ct, body),
            pairs(&[("apiKey", "k"), ("x\"y", "v"), ("after", "late")])
        );
        // A boundary line with anything after it is no boundary line.
        let body = "--b \r\nContent-Disposition: form-data; name=a\r\n\r\nv\r\n--b--";
        assert_eq!(f(ct, body), pairs(&[]));
        // PHP's boundary: the first "boundary" substring.
        let body = "--a\r\nContent-Disposition: form-data; name=k\r\n\r\nv\r\n--a--";
        assert_eq!(
            f("multipart/form-data; xboundary=a; boundary=b", body),
            pairs(&[("k", "v")])
        );
        assert_eq!(f("multipart/form-data", body), pairs(&[]));
    }
}
