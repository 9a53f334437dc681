//! The answers the simulator can give, shaped like RetailCRM's and like the
//! nginx in front of it.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

/// What RetailCRM sends with every JSON answer.
const JSON_TYPE: &str = "application/json; charset=utf-8";

/// nginx's `limit_req` page; RetailCRM answers its rate limit with it.
const NGINX_503: &str = "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// A JSON answer with RetailCRM's content type.
pub(crate) fn json(status: StatusCode, value: &Value) -> Response {
    let mut resp = Response::new(Body::from(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_TYPE));
    resp
}

/// `{"success":false,"errorMsg":msg}` with `status`.
pub(crate) fn error(status: StatusCode, msg: &str) -> Response {
    json(status, &json!({"success": false, "errorMsg": msg}))
}

/// The nginx 503 page, with nginx's reason phrase and an optional `Retry-After`.
pub(crate) fn unavailable(retry_after: Option<&str>) -> Response {
    let mut resp = Response::new(Body::from(NGINX_503));
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    // HTTP/1 clients see "503 Service Temporarily Unavailable" like from nginx.
    resp.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(
            b"Service Temporarily Unavailable",
        ));
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
    headers.insert(header::SERVER, HeaderValue::from_static("nginx"));
    if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert(header::RETRY_AFTER, value);
    }
    resp
}

/// A 200 whose JSON body was cut off mid-way, as from a broken proxy; the
/// content type still claims JSON so clients try, and fail, to parse it.
pub(crate) fn garbage() -> Response {
    let mut resp = Response::new(Body::from(
        &b"{\"success\":true,\"pagination\":{\"limit\":20,\"totalCo\x00\xfe<"[..],
    ));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_TYPE));
    resp
}
