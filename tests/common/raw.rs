//! The one raw HTTP/1.1 client, for tests that must control every byte
//! sent (a half head, a stalled body, a path no client would normalise, a
//! Host a real client would not send): write the bytes on a fresh
//! connection, read until the gateway closes it, then read the answers out
//! of the bytes. [`CLOSE_LIMIT`] only turns a hang into a failure; it never
//! decides an outcome.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Outer limit for the gateway to finish a connection on its own. The
/// config's head and body timeouts are far shorter; this only turns a hang
/// into a failure and never decides an outcome.
pub const CLOSE_LIMIT: Duration = Duration::from_secs(15);

/// What came back on a raw connection before it closed.
#[derive(Debug)]
pub struct Raw {
    /// Every byte read before EOF (or before a reset).
    pub bytes: Vec<u8>,
    /// The connection ended with a reset rather than a clean EOF.
    pub reset: bool,
}

impl Raw {
    /// The bytes as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status code of the first response, if one came.
    pub fn status(&self) -> Option<u16> {
        let text = self.text();
        let line = text.lines().next()?;
        line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    /// A header of the first response (lowercase name).
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.text();
        let head = text.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    /// The body of the first response, as JSON.
    pub fn json(&self) -> serde_json::Value {
        let text = self.text();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_else(|| panic!("no response head in {text:?}"));
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
    }
}

/// Reads until the peer closes; an error (with what came) if it does not
/// close within [`CLOSE_LIMIT`].
pub async fn try_read_to_close(stream: &mut TcpStream) -> Result<Raw, String> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let closed = tokio::time::timeout(CLOSE_LIMIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return false,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                Err(_) => return true,
            }
        }
    })
    .await;
    match closed {
        Ok(reset) => Ok(Raw { bytes, reset }),
        Err(_) => Err(format!(
            "the gateway kept the connection open for {CLOSE_LIMIT:?}; got {:?}",
            String::from_utf8_lossy(&bytes)
        )),
    }
}

/// [`try_read_to_close`], failing the test on a hang.
pub async fn read_to_close(stream: &mut TcpStream) -> Raw {
    try_read_to_close(stream)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Writes `request` on a fresh connection to `addr` and reads until the
/// gateway closes it. A write may fail when the gateway closes early (a
/// huge head): what came back is what counts.
pub async fn exchange(addr: &str, request: &[u8]) -> Result<Raw, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = s.write_all(request).await;
    try_read_to_close(&mut s).await
}

/// [`exchange`] of a text request (which should say `Connection: close`),
/// failing the test on a hang.
pub async fn raw(addr: &str, request: &str) -> Raw {
    exchange(addr, request.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One HTTP response read off the wire.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// Header lines, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits the bytes of a connection into complete responses; anything left
/// over that is not a whole response is an error ("partial garbage").
pub fn parse_responses(mut rest: &[u8]) -> Result<Vec<Response>, String> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let end = find(rest, b"\r\n\r\n").ok_or("an incomplete response head")?;
        let head = std::str::from_utf8(&rest[..end]).map_err(|_| "a non-UTF-8 response head")?;
        rest = &rest[end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|s| s.get(2..5))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("not a status line: {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l
                    .split_once(':')
                    .ok_or_else(|| format!("bad header line {l:?}"))?;
                Ok((n.to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect::<Result<_, String>>()?;
        let mut r = Response {
            status,
            headers,
            body: Vec::new(),
        };
        if r.header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let eol = find(rest, b"\r\n").ok_or("an incomplete chunk size")?;
                let size = std::str::from_utf8(&rest[..eol])
                    .ok()
                    .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok())
                    .ok_or("a bad chunk size")?;
                rest = &rest[eol + 2..];
                if size == 0 {
                    rest = rest
                        .strip_prefix(b"\r\n")
                        .ok_or("no end after the last chunk")?;
                    break;
                }
                if rest.len() < size + 2 || &rest[size..size + 2] != b"\r\n" {
                    return Err("a truncated chunk".into());
                }
                r.body.extend_from_slice(&rest[..size]);
                rest = &rest[size + 2..];
            }
        } else if let Some(len) = r.header("content-length") {
            let len: usize = len.parse().map_err(|_| "a bad content-length")?;
            if rest.len() < len {
                return Err(format!("a body cut short ({} of {len} bytes)", rest.len()));
            }
            r.body = rest[..len].to_vec();
            rest = &rest[len..];
        } else if !matches!(status, 100..=199 | 204 | 304) {
            r.body = rest.to_vec();
            rest = &[];
        }
        out.push(r);
    }
    Ok(out)
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
