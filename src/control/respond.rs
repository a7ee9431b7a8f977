//! The control API's answers: plain text and JSON bodies, and the refusals every endpoint shares (`401` with its
//! challenge, `405` with `Allow`, `404`).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::auth::Auth;
use crate::body::{self, Body};

/// The content types of the answers, checked once at compile time (`from_static` checks its bytes on each call
/// otherwise).
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A text answer; a `&'static str` body goes out without a copy.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, body.into(), TEXT)
}

/// A JSON answer.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    json_body(status, value.to_string())
}

/// A JSON answer already encoded.
pub(crate) fn json_body(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, body.into(), JSON)
}

fn with_type(status: StatusCode, body: Bytes, content_type: HeaderValue) -> Response<Body> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, content_type);
    resp
}

/// `405`, naming the methods the endpoint takes.
pub(crate) fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// `401` with the challenge of the configured credentials.
pub(crate) fn unauthorized(auth: &Auth) -> Response<Body> {
    let mut resp = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, auth.challenge());
    resp
}

/// `404`.
pub(crate) fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "Not Found\n")
}
