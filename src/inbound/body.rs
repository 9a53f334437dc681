//! The request body: read within its limits, accounted while it is held,
//! and checked for keys in places crmgate cannot rewrite (JSON).
//!
//! A body is buffered (a retry must resend it) for as long as its request
//! queues and is sent. Two bounds hold: one body is at most
//! `server.max_body_bytes` (413), and all bodies held at once are at most
//! `limits.max_buffered_bytes` (503 with `Retry-After` at once), so a full
//! queue of large bodies cannot exhaust memory. Bytes are counted as they
//! arrive, before they are kept. This module never logs a body.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use bytes::BytesMut;
use http_body_util::BodyExt;

use crate::bodies::{BodyLease, BodyPool};
use crate::error::GatewayError;
use crate::rewrite::is_key_name;

/// The client sent no body bytes for `server.body_timeout`: the error the
/// server's body timer ends a stalled body with (answered as 408).
#[derive(Debug, thiserror::Error)]
#[error("no request body bytes for {0:?}")]
pub struct BodyStalled(pub Duration);

/// Reads the whole body: at most `limit` bytes (by its declared length
/// before reading, or while reading), held in `pool` within `pool_limit`.
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    pool: &Arc<BodyPool>,
    pool_limit: usize,
) -> Result<(Bytes, BodyLease), GatewayError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let mut lease = BodyLease::new(pool);
    let expected = declared.unwrap_or(0) as usize;
    if !lease.grow(expected, pool_limit) {
        return Err(GatewayError::BuffersFull);
    }
    let mut body = body;
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(read_error)?.into_data() else {
            continue;
        };
        len += data.len();
        if len > limit {
            return Err(GatewayError::BodyTooLarge { limit });
        }
        if len > lease.bytes() && !lease.grow(len - lease.bytes(), pool_limit) {
            return Err(GatewayError::BuffersFull);
        }
        // One chunk (the usual case) is kept as it came, without a copy.
        match first.take() {
            None if rest.is_empty() => first = Some(data),
            None => rest.extend_from_slice(&data),
            Some(f) => {
                rest.reserve(expected.max(f.len() + data.len()));
                rest.extend_from_slice(&f);
                rest.extend_from_slice(&data);
            }
        }
    }
    let bytes = first.unwrap_or_else(|| rest.freeze());
    Ok((bytes, lease))
}

/// What a failed read was: a stalled client (408) or a broken body (400).
fn read_error(e: axum::Error) -> GatewayError {
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(stalled) = s.downcast_ref::<BodyStalled>() {
            return GatewayError::BodyTimeout { timeout: stalled.0 };
        }
        source = s.source();
    }
    GatewayError::BadRequest(format!("could not read the request body: {e}"))
}

/// True when a JSON body carries a key field (any spelling) at its top
/// level: crmgate does not rewrite JSON, so such a request is refused rather
/// than sent with the caller's key. (Form and multipart bodies are
/// rewritten instead.)
pub fn has_key_field(headers: &HeaderMap, body: &[u8]) -> bool {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    (media == "application/json" || media.ends_with("+json"))
        && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
            .is_ok_and(|map| map.keys().any(|k| is_key_name(k)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        h
    }

    fn chunks(parts: &[&'static str]) -> Body {
        let parts: Vec<Result<Bytes, std::io::Error>> = parts
            .iter()
            .map(|p| Ok(Bytes::from_static(p.as_bytes())))
            .collect();
        Body::from_stream(futures_util::stream::iter(parts))
    }

    #[tokio::test]
    async fn bodies_are_held_in_the_pool_until_the_lease_drops() {
        let pool = Arc::new(BodyPool::default());
        let h = HeaderMap::new();
        let (a, lease_a) = read(&h, chunks(&["abc", "def"]), 100, &pool, 10)
            .await
            .unwrap();
        assert_eq!(a, "abcdef");
        assert_eq!(pool.held(), 6);
        // 6 + 5 > 10: refused at once, and nothing of it stays held.
        let refused = read(&h, chunks(&["12345"]), 100, &pool, 10).await;
        assert!(matches!(refused, Err(GatewayError::BuffersFull)));
        assert_eq!(pool.held(), 6);
        drop(lease_a);
        assert_eq!(pool.held(), 0);
        let (b, _lease) = read(&h, chunks(&["12345"]), 100, &pool, 10).await.unwrap();
        assert_eq!((b.as_ref(), pool.held()), (&b"12345"[..], 5));
    }

    #[tokio::test]
    async fn a_declared_length_is_held_before_reading() {
        let pool = Arc::new(BodyPool::default());
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, "11".parse().unwrap());
        let refused = read(&h, chunks(&["x"]), 100, &pool, 10).await;
        assert!(matches!(refused, Err(GatewayError::BuffersFull)));
        h.insert(header::CONTENT_LENGTH, "101".parse().unwrap());
        let refused = read(&h, chunks(&["x"]), 100, &pool, 1000).await;
        assert!(matches!(
            refused,
            Err(GatewayError::BodyTooLarge { limit: 100 })
        ));
        assert_eq!(pool.held(), 0);
    }

    #[tokio::test]
    async fn an_empty_body_holds_nothing() {
        let pool = Arc::new(BodyPool::default());
        let (b, _lease) = read(&HeaderMap::new(), Body::empty(), 100, &pool, 10)
            .await
            .unwrap();
        assert!(b.is_empty());
        assert_eq!(pool.held(), 0);
    }

    #[test]
    fn keys_in_json_bodies_are_found() {
        let json = headers("application/json; charset=utf-8");
        assert!(has_key_field(&json, br#"{"api_key":"ck","order":{}}"#));
        assert!(!has_key_field(
            &json,
            br#"{"order":{"apiKey":"nested is data"}}"#
        ));
        assert!(!has_key_field(&json, b"not json"));
        // Form and multipart bodies are rewritten instead.
        assert!(!has_key_field(
            &headers("application/x-www-form-urlencoded"),
            b"apiKey=ck"
        ));
        assert!(!has_key_field(
            &headers("multipart/form-data; boundary=b"),
            b"--b\r\nContent-Disposition: form-data; name=\"apiKey\"\r\n\r\nck\r\n--b--\r\n"
        ));
    }
}
