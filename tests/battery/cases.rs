//! The battery's table: one line per bad input (name, bytes, expectation),
//! with the builders of requests and the placeholders filled in at run
//! time.

pub(crate) use super::common::find;

/// One answer on the connection, in order.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ans {
    /// Forwarded: the CRM's answer with this status (JSON, carrying the
    /// request id crmgate gave it).
    Crm(u16),
    /// crmgate's own error: this status, `{"success":false,"errorMsg":"..."}`.
    Own(u16),
    /// hyper's parser refused the bytes before any handler: a bare 4xx with
    /// an empty body (hyper has no hook to shape it).
    Parser,
}

/// What the whole connection must show.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expect {
    /// Exactly these answers, then a close.
    Answers(&'static [Ans]),
    /// Refused by the parser: a close, with nothing or one [`Ans::Parser`].
    Closed,
    /// Either of two outcomes: a choice the issue leaves to the fix, or a
    /// race the client cannot control (which of hyper and the guard refuses
    /// a huge head depends on how the bytes arrive).
    Either(&'static Expect, &'static Expect),
}

pub(crate) use Ans::{Crm, Own};
pub(crate) use Expect::{Answers, Closed, Either};

/// Which listener a case talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Port {
    Api,
    Admin,
}

/// One bad input. The bytes may hold placeholders, filled in at run time:
/// `{id}` (this case's request id prefix, unique), `{ck}` (a client key of
/// "acme"), `{real}` (acme's real key), `{addr}` (the API listener).
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) port: Port,
    pub(crate) raw: Vec<u8>,
    pub(crate) expect: Expect,
    /// Text that must not appear in the case's access log lines.
    pub(crate) hidden: &'static [&'static str],
}

pub(crate) fn case(name: &'static str, raw: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        name,
        port: Port::Api,
        raw: raw.into(),
        expect,
        hidden: &[],
    }
}

pub(crate) fn admin_case(name: &'static str, raw: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        port: Port::Admin,
        ..case(name, raw, expect)
    }
}

/// A GET of `target` with `headers` (each ending `\r\n`), the case's request
/// id, and `Connection: close`.
pub(crate) fn get(target: &str, headers: &str) -> Vec<u8> {
    method("GET", target, headers)
}

/// [`get`] with any method token.
pub(crate) fn method(m: &str, target: &str, headers: &str) -> Vec<u8> {
    format!(
        "{m} {target} HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {{id}}\r\n{headers}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// A POST of `body` to `target` as `ctype`. A body with placeholders has
/// its Content-Length counted once they are filled (`{len}`).
pub(crate) fn post(target: &str, ctype: &str, headers: &str, body: &str) -> Vec<u8> {
    let len = if body.contains('{') {
        "{len}".to_string()
    } else {
        body.len().to_string()
    };
    format!(
        "POST {target} HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {{id}}\r\n\
         Content-Type: {ctype}\r\n{headers}Content-Length: {len}\r\nConnection: close\r\n\r\n{body}"
    )
    .into_bytes()
}

/// Requests sent in one write: their ids numbered (`{id}1`, `{id}2`, ...),
/// and only the last asking to close.
pub(crate) fn pipeline(requests: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let numbered = format!("{{id}}{}", i + 1);
        let mut r = replace(r, &[("{id}", &numbered)]);
        if i + 1 < requests.len() {
            r = replace(&r, &[("Connection: close\r\n", "")]);
        }
        out.extend(r);
    }
    out
}

pub(crate) const K: &str = "X-API-KEY: {ck}\r\n";
pub(crate) const FORM: &str = "application/x-www-form-urlencoded";
/// An order to create; its externalId is the case's request id, so each
/// case creates its own.
pub(crate) const ORDER: &str = "order=%7B%22externalId%22%3A%22{id}%22%7D";

/// The head of a keyed POST with a chunked body, to which a case appends
/// its chunks.
pub(crate) const CHUNKED: &str = "POST /api/v5/orders/create HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";

/// A chunked body that ends at once (`0`), then a request that a reader
/// going by Content-Length (which the cases set to cover it) takes as body:
/// two readers may disagree, so the connection must close after such a
/// request (RFC 9112, 6.1) and the second request is never served.
pub(crate) const SMUGGLED: &[u8] = b"0\r\n\r\nGET /api/v5/orders?smuggled=1 HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}smuggled\r\nX-API-KEY: {ck}\r\nConnection: close\r\n\r\n";

pub(crate) fn cat(a: &str, b: &[u8]) -> Vec<u8> {
    [a.as_bytes(), b].concat()
}

/// The cases that hold today.
#[rustfmt::skip]
pub(crate) fn cases() -> Vec<Case> {
    const MP: &str = "multipart/form-data; boundary=XyZ";
    const MULTIPART: &str = "--XyZ\r\nContent-Disposition: form-data; name=\"apiKey\"\r\n\r\n{ck}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"order\"\r\n\r\n{\"externalId\":\"{id}\"}\r\n--XyZ--\r\n";
    let keyed_form = format!("apiKey={{ck}}&{ORDER}");
    let long_uri = format!("/api/v5/orders?filter[name]={}", "n".repeat(70 * 1024));
    let huge = format!("X-Huge: {}\r\n", "h".repeat(100 * 1024));
    vec![
        // The baseline: a well-formed request is forwarded.
        case("well-formed", get("/api/v5/orders", K), Answers(&[Crm(200)])),
        // (a) slow clients: a half head is closed unanswered; a half body
        // gets 408 JSON; a connection that never sends is closed.
        case("half-head", "GET /api/v5/orders HTTP/1.1\r\nHost: localhost\r\nX-API-", Closed),
        case("half-body", "POST /api/v5/orders/create HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\norder=%7B", Answers(&[Own(408)])),
        case("empty-request", "", Closed),
        case("only-crlfs", "\r\n\r\n", Closed),
        // (b) the key is checked before the body: a wrong key or an unknown
        // tenant gets its answer while the body is still unsent.
        case("wrong-key-no-body", "POST /api/v5/orders/create HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: svc-nobody\r\nContent-Length: 8000000\r\n\r\nabc", Answers(&[Own(403)])),
        case("unknown-tenant-no-body", "POST /nobody/api/v5/orders/create HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nContent-Length: 8000000\r\n\r\nabc", Answers(&[Own(404)])),
        case("expect-continue-wrong-key", "POST /api/v5/orders/create HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: svc-nobody\r\nExpect: 100-continue\r\nContent-Length: 8000000\r\n\r\n", Answers(&[Own(403)])),
        case("declared-too-large", "POST /api/v5/orders/create HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nContent-Length: 80000000\r\n\r\nabc", Answers(&[Own(413)])),
        // (d) browsers and DNS rebinding.
        case("browser-form-open-tenant", post("/open/api/v5/orders/create", FORM, "Origin: http://evil.example\r\nSec-Fetch-Site: cross-site\r\n", ORDER), Answers(&[Own(403)])),
        case("browser-navigation", get("/open/api/v5/orders", "Sec-Fetch-Site: cross-site\r\n"), Answers(&[Own(403)])),
        case("rebinding-host", "GET /api/v5/orders HTTP/1.1\r\nHost: evil.example\r\nX-API-KEY: {ck}\r\nConnection: close\r\n\r\n", Answers(&[Own(421)])),
        // (h) only GET, HEAD and POST are forwarded.
        case("trace", method("TRACE", "/api/v5/orders", K), Answers(&[Own(405)])),
        case("connect-path", method("CONNECT", "/acme/api/v5/orders", K), Answers(&[Own(405)])),
        case("connect-authority", "CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nConnection: close\r\n\r\n", Answers(&[Own(405)])),
        case("options", method("OPTIONS", "/api/v5/orders", K), Answers(&[Own(405)])),
        case("options-star", method("OPTIONS", "*", K), Answers(&[Own(405)])),
        case("put", method("PUT", "/api/v5/orders/1/edit", K), Answers(&[Own(405)])),
        case("delete", method("DELETE", "/api/v5/orders/1", K), Answers(&[Own(405)])),
        case("bogus-method-token", method("BREW", "/api/v5/orders", K), Answers(&[Own(405)])),
        case("invalid-method-token", method("GE(T", "/api/v5/orders", K), Closed),
        // (i) the admin port: no page may reload, no foreign Host.
        admin_case("admin-reload-from-page", "POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi", Answers(&[Own(403)])),
        admin_case("admin-rebinding-host", "GET /metrics HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n", Answers(&[Own(421)])),
        // (j) every spelling of the key, in the query and in a form, is
        // stripped (the runner checks the CRM and the log never see it).
        case("query-apiKey", get("/api/v5/orders?apiKey={ck}&limit=20", ""), Answers(&[Crm(200)])),
        case("query-apikey", get("/api/v5/orders?apikey={ck}&limit=20", K), Answers(&[Crm(200)])),
        case("query-APIKEY", get("/api/v5/orders?APIKEY={ck}&limit=20", K), Answers(&[Crm(200)])),
        case("query-api_key", get("/api/v5/orders?api_key={ck}&limit=20", K), Answers(&[Crm(200)])),
        case("query-apiKey[]", get("/api/v5/orders?apiKey[]={ck}&limit=20", K), Answers(&[Crm(200)])),
        case("query-apiKey%5B%5D", get("/api/v5/orders?apiKey%5B%5D={ck}&limit=20", K), Answers(&[Crm(200)])),
        case("query-percent-name", get("/api/v5/orders?%61pi%4Bey={ck}&limit=20", ""), Answers(&[Crm(200)])),
        case("query-percent-api_key", get("/api/v5/orders?api%5Fkey={ck}&limit=20", K), Answers(&[Crm(200)])),
        case("query-real-key-spelled", get("/api/v5/orders?API_KEY={real}", K), Answers(&[Crm(200)])),
        case("query-real-key-as-client", get("/api/v5/orders?apiKey={real}", ""), Answers(&[Own(403)])),
        case("query-every-spelling", get("/api/v5/orders?apikey={ck}&APIKEY={ck}&api_key={ck}&apiKey[]={ck}&Api_Key%5B%5D={ck}&apiKey={ck}", ""), Answers(&[Crm(200)])),
        case("form-apiKey", post("/api/v5/orders/create", FORM, "", &format!("apiKey={{ck}}&{ORDER}")), Answers(&[Crm(201)])),
        case("form-apikey", post("/api/v5/orders/create", FORM, K, &format!("apikey={{ck}}&{ORDER}")), Answers(&[Crm(201)])),
        case("form-APIKEY", post("/api/v5/orders/create", FORM, K, &format!("APIKEY={{ck}}&{ORDER}")), Answers(&[Crm(201)])),
        case("form-api_key", post("/api/v5/orders/create", FORM, K, &format!("{ORDER}&api_key={{ck}}")), Answers(&[Crm(201)])),
        case("form-apiKey[]", post("/api/v5/orders/create", FORM, K, &format!("apiKey[]={{ck}}&{ORDER}")), Answers(&[Crm(201)])),
        case("form-percent-names", post("/api/v5/orders/create", FORM, "", &format!("%61piKey={{ck}}&api%5Fkey={{ck}}&apiKey%5B%5D={{ck}}&{ORDER}")), Answers(&[Crm(201)])),
        case("form-charset", post("/api/v5/orders/create", "Application/X-WWW-Form-Urlencoded; charset=UTF-8", "", &format!("apiKey={{ck}}&{ORDER}")), Answers(&[Crm(201)])),
        case("form-query-and-header", post("/api/v5/orders/create?apikey={ck}", FORM, K, &format!("APIKEY={{ck}}&{ORDER}")), Answers(&[Crm(201)])),
        // Invalid percent-encoding: in the path, the query and a form body.
        case("bad-percent-path", get("/api/v5/orders%zz", K), Answers(&[Crm(404)])),
        case("bad-percent-prefix", get("/ac%zzme/api/v5/orders", K), Answers(&[Own(404)])),
        case("bad-percent-query", get("/api/v5/orders?filter[name]=%zz&apiKey={ck}&x=%", ""), Answers(&[Crm(200)])),
        case("bad-percent-key-value", get("/api/v5/orders?apiKey={ck}%zz", ""), Answers(&[Own(403)])),
        case("bad-percent-form", post("/api/v5/orders/create", FORM, "", &format!("apiKey={{ck}}&x=%zz%&{ORDER}")), Answers(&[Crm(201)])),
        case("percent-dot-dot", get("/api/v5/%2e%2E/credentials", K), Answers(&[Own(404)])),
        // A huge head: over the guard's bound gets 431 JSON; over hyper's
        // buffer a bare refusal or a close, unless the head arrived in reads
        // large enough to pass hyper's check (it looks only between reads)
        // and the guard refuses it.
        case("big-header", get("/api/v5/orders", &format!("{K}X-Big: {}\r\n", "b".repeat(20 * 1024))), Answers(&[Own(431)])),
        case("huge-header", get("/api/v5/orders", &format!("{K}{huge}")), Either(&Answers(&[Own(431)]), &Closed)),
        case("very-long-uri", get(&long_uri, K), Closed),
        // Bad chunked framing: the key is known from the header, so the body
        // read fails in the handler: 400 JSON.
        case("chunk-size-invalid", cat(CHUNKED, b"zz\r\nhello\r\n0\r\n\r\n"), Answers(&[Own(400)])),
        case("chunk-missing-crlf", cat(CHUNKED, b"5\r\nhello0\r\n\r\n"), Answers(&[Own(400)])),
        case("chunk-larger-than-declared", cat(CHUNKED, b"3\r\nhello\r\n0\r\n\r\n"), Answers(&[Own(400)])),
        case("chunk-size-overflow", cat(CHUNKED, b"fffffffffffffffffff\r\nx\r\n0\r\n\r\n"), Answers(&[Own(400)])),
        case("chunked-good", cat(CHUNKED, b"8\r\norder=%7\r\n29\r\nB%22externalId%22%3A%22chunked-good%22%7D\r\n0\r\n\r\n"), Answers(&[Crm(201)])),
        // Non-UTF-8 and raw high bytes in the path.
        case("path-raw-0xff", &b"GET /api/v5/orders/\xff\xfe HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nConnection: close\r\n\r\n"[..], Closed),
        case("path-raw-utf8", &b"GET /api/v5/orders/\xc3\xa9 HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nConnection: close\r\n\r\n"[..], Answers(&[Crm(404)])),
        case("query-raw-0xff", &b"GET /api/v5/orders?apiKey={ck}&x=\xff HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n"[..], Closed),
        // Absolute-form: to this listener it is served; to another host it
        // is a misdirected request.
        case("absolute-form-self", "GET http://{addr}/api/v5/orders HTTP/1.1\r\nHost: {addr}\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nConnection: close\r\n\r\n", Answers(&[Crm(200)])),
        case("absolute-form-other-host", "GET http://evil.example/api/v5/orders HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nConnection: close\r\n\r\n", Answers(&[Own(421)])),
        case("absolute-form-userinfo", "GET http://user:pw@127.0.0.1/api/v5/orders HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nConnection: close\r\n\r\n", Answers(&[Own(421)])),
        // HTTP/1.0, with and without Host.
        case("http10-host", "GET /api/v5/orders HTTP/1.0\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\n\r\n", Answers(&[Crm(200)])),
        case("http10-no-host", "GET /api/v5/orders HTTP/1.0\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\n\r\n", Answers(&[Crm(200)])),
        case("http10-post-form", "POST /api/v5/orders/create HTTP/1.0\r\nX-Request-Id: {id}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {len}\r\n\r\napiKey={ck}&order=%7B%22externalId%22%3A%22{id}%22%7D", Answers(&[Crm(201)])),
        case("http09", "GET /api/v5/orders\r\n\r\n", Closed),
        case("http2-preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Closed),
        // Pipelining: two and three requests in one write; a bad one
        // between good ones is answered in its place.
        case("pipeline-two", pipeline(&[get("/api/v5/orders", K), get("/api/v5/orders?limit=20", K)]), Answers(&[Crm(200), Crm(200)])),
        case("pipeline-three-405-between", pipeline(&[get("/api/v5/orders", K), method("TRACE", "/api/v5/orders", K), get("/api/v5/orders?page=2", K)]), Answers(&[Crm(200), Own(405), Crm(200)])),
        case("pipeline-three-wrong-key-between", pipeline(&[get("/api/v5/orders", K), get("/api/v5/orders", "X-API-KEY: svc-nobody\r\n"), get("/api/v5/orders?page=2", K)]), Answers(&[Crm(200), Own(403), Crm(200)])),
        case("pipeline-form-post-between", pipeline(&[get("/api/v5/orders", K), post("/api/v5/orders/create", FORM, K, "api_key=x&order=%7B%22externalId%22%3A%22pipe-post%22%7D"), get("/api/v5/orders?page=2", K)]), Answers(&[Crm(200), Crm(201), Crm(200)])),
        case("pipeline-garbage-between", pipeline(&[get("/api/v5/orders", K), b"GARBAGE\r\n\r\n".to_vec(), get("/api/v5/orders?page=2", K)]), Answers(&[Crm(200), Ans::Parser])),
        // Request smuggling shapes and broken lengths.
        case("te-and-cl", cat("POST /api/v5/orders/create HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {len}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n", SMUGGLED), Answers(&[Crm(400)])),
        case("te-and-cl-keep-alive", cat("POST /api/v5/orders/create HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {len}\r\nTransfer-Encoding: chunked\r\n\r\n", SMUGGLED), Answers(&[Crm(400)])),
        case("te-not-chunked", "POST /api/v5/orders/create HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\nabc", Closed),
        case("cl-duplicate-same", "POST /api/v5/orders/create HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {len}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\norder=%7B%22externalId%22%3A%22{id}%22%7D", Answers(&[Crm(201)])),
        case("cl-duplicate-differ", "POST /api/v5/orders/create HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nContent-Length: 3\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde", Closed),
        case("cl-negative", "POST /api/v5/orders/create HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nContent-Length: -1\r\nConnection: close\r\n\r\nabc", Closed),
        case("cl-garbage", "POST /api/v5/orders/create HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nContent-Length: 3x\r\nConnection: close\r\n\r\nabc", Closed),
        case("cl-plus-sign", "POST /api/v5/orders/create HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nContent-Length: +3\r\nConnection: close\r\n\r\nabc", Closed),
        // Header syntax.
        case("obs-fold", "GET /api/v5/orders HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nX-Folded: a\r\n b\r\nConnection: close\r\n\r\n", Closed),
        case("obs-fold-key", "GET /api/v5/orders HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY:\r\n {ck}\r\nConnection: close\r\n\r\n", Closed),
        case("nul-in-header", "GET /api/v5/orders HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nX-Nul: a\0b\r\nConnection: close\r\n\r\n", Closed),
        case("nul-in-key", "GET /api/v5/orders HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\0\r\nConnection: close\r\n\r\n", Closed),
        case("space-before-colon", "GET /api/v5/orders HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY : {ck}\r\nConnection: close\r\n\r\n", Closed),
        case("bare-lf", "GET /api/v5/orders HTTP/1.1\nHost: localhost\nX-Request-Id: {id}\nX-API-KEY: {ck}\nConnection: close\n\n", Answers(&[Crm(200)])),
        case("key-high-bytes", &b"GET /api/v5/orders HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\xe9\r\nConnection: close\r\n\r\n"[..], Answers(&[Own(403)])),
        case("two-hosts", "GET /api/v5/orders HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\nX-Request-Id: {id}\r\nX-API-KEY: {ck}\r\nConnection: close\r\n\r\n", Answers(&[Own(421)])),
        case("two-keys", "GET /api/v5/orders HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {id}\r\nX-API-KEY: svc-nobody\r\nX-API-KEY: {ck}\r\nConnection: close\r\n\r\n", Answers(&[Own(403)])),
        // Multipart bodies (every POST of PHP's clients): key parts in every
        // spelling are stripped, the rest forwarded; a malformed body is
        // refused and never forwarded.
        case("multipart-apiKey", post("/api/v5/orders/create", MP, K, MULTIPART), Answers(&[Crm(201)])),
        case("multipart-apiKey-only-key", post("/api/v5/orders/create", MP, "", MULTIPART), Answers(&[Crm(201)])),
        case("multipart-apiKey-open-tenant", post("/open/api/v5/orders/create", MP, "", MULTIPART), Answers(&[Crm(201)])),
        case("multipart-spellings", post("/api/v5/orders/create", MP, K, &MULTIPART.replace("\"apiKey\"", "\"api_key\"").replace("{ck}\r\n--XyZ\r\n", "{ck}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"APIKEY[]\"\r\n\r\n{ck}\r\n--XyZ\r\n")), Answers(&[Crm(201)])),
        case("multipart-wrong-key", post("/api/v5/orders/create", MP, "", &MULTIPART.replace("{ck}", "svc-nobody")), Answers(&[Own(403)])),
        case("multipart-no-boundary", post("/api/v5/orders/create", "multipart/form-data", K, MULTIPART), Answers(&[Own(400)])),
        case("multipart-two-boundaries", post("/api/v5/orders/create", "multipart/form-data; boundary=XyZ; boundary=Q", K, MULTIPART), Answers(&[Own(400)])),
        case("multipart-unterminated", post("/api/v5/orders/create", MP, K, MULTIPART.trim_end_matches("--XyZ--\r\n")), Answers(&[Own(400)])),
        case("multipart-unterminated-key", post("/api/v5/orders/create", MP, "", "--XyZ\r\nContent-Disposition: form-data; name=\"apiKey\"\r\n\r\n{ck}"), Answers(&[Own(400)])),
        case("multipart-nameless-part", post("/api/v5/orders/create", MP, K, &MULTIPART.replace("; name=\"order\"", "")), Answers(&[Own(400)])),
        case("multipart-padded-boundary", post("/api/v5/orders/create", MP, K, &MULTIPART.replacen("--XyZ\r\n", "--XyZ \r\n", 1)), Answers(&[Own(400)])),
        case("multipart-part-after-close", post("/api/v5/orders/create", MP, K, &format!("--XyZ--\r\n{MULTIPART}")), Answers(&[Own(400)])),
        case("multipart-nul-in-name", post("/api/v5/orders/create", MP, K, &MULTIPART.replace("\"apiKey\"", "\"apiKey\0x\"")), Answers(&[Own(400)])),
        case("multipart-empty", post("/api/v5/orders/create", MP, K, ""), Answers(&[Own(400)])),
        // A key inside a JSON body (which crmgate does not rewrite) is
        // refused.
        case("json-apiKey", post("/api/v5/orders/create", "application/json", K, "{\"apiKey\":\"{ck}\",\"order\":{\"externalId\":\"{id}\"}}"), Answers(&[Own(400)])),
        // Content types PHP reads as a form are rewritten as forms.
        case("form-type-comma", post("/api/v5/orders/create", "application/x-www-form-urlencoded, text/plain", K, &keyed_form), Answers(&[Crm(201)])),
        case("form-type-space", post("/api/v5/orders/create", "application/x-www-form-urlencoded charset=UTF-8", K, &keyed_form), Answers(&[Crm(201)])),
        // PHP's own spellings: leading spaces dropped, `.` and ` ` read as
        // `_`, `apiKey[0]` read as the array `apiKey`: all stripped.
        case("query-leading-space", get("/api/v5/orders?+apiKey={ck}", K), Answers(&[Crm(200)])),
        case("query-api.key", get("/api/v5/orders?api.key={ck}", K), Answers(&[Crm(200)])),
        case("query-api+key", get("/api/v5/orders?api+key={ck}", K), Answers(&[Crm(200)])),
        case("query-apiKey[0]", get("/api/v5/orders?apiKey[0]={ck}", K), Answers(&[Crm(200)])),
        // (k) query values (customer data) are not logged by default.
        case("query-values-logged", get("/api/v5/orders?filter[email]=jane.doe%40example.com&filter[phone]=79991234567", K), Answers(&[Crm(200)])).hiding(&["jane.doe", "79991234567"]),
        case("bad-priority", get("/api/v5/orders", &format!("{K}X-Crmgate-Priority: urgent\r\n")), Answers(&[Own(400)])),
    ]
}

impl Case {
    /// Text that must not appear in this case's access log line either.
    fn hiding(mut self, words: &'static [&'static str]) -> Case {
        self.hidden = words;
        self
    }
}

/// `raw` with each placeholder replaced, then `{len}` with the length of
/// what follows the first head.
pub(crate) fn fill(raw: &[u8], with: &[(&str, &str)]) -> Vec<u8> {
    let out = replace(raw, with);
    match find(&out, b"\r\n\r\n") {
        Some(end) => {
            let len = (out.len() - end - 4).to_string();
            replace(&out, &[("{len}", &len)])
        }
        None => out,
    }
}

pub(crate) fn replace(raw: &[u8], with: &[(&str, &str)]) -> Vec<u8> {
    let mut out = raw.to_vec();
    for (from, to) in with {
        let mut next = Vec::with_capacity(out.len());
        let mut rest = &out[..];
        while let Some(at) = find(rest, from.as_bytes()) {
            next.extend_from_slice(&rest[..at]);
            next.extend_from_slice(to.as_bytes());
            rest = &rest[at + from.len()..];
        }
        next.extend_from_slice(rest);
        out = next;
    }
    out
}
