//! The control API: `POST /publish/` (items released to held clients), `POST /recover` (forget last ids, re-fetch
//! every held client), `GET /` (a banner). Its own listener, loopback by default; optional credentials. Health,
//! readiness, metrics and channel introspection on the same listener are answered by [`crate::ops`].

pub mod auth;
pub mod item;

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::hold::Registry;

/// Time allowed to receive a whole publish body: a publisher that stops mid-body does not keep its connection
/// and task for ever (the head has its own limit, the control server's header read timeout).
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What the control service needs. Built once at start-up.
pub struct Control {
    /// Where items go.
    pub registry: Registry,
    /// Largest publish body accepted.
    pub max_body: usize,
    /// Credentials required to publish or recover (none: open).
    pub auth: auth::Auth,
    /// Where a validated publish goes (memory: `registry`; Redis: every instance, this one included).
    pub bus: crate::bus::Bus,
    /// Health, readiness, metrics and channel introspection ([`crate::ops`]).
    pub ops: crate::ops::Ops,
}

/// Serves one control API request. Never fails: every error is a response.
pub async fn serve(control: Arc<Control>, req: Request<Incoming>) -> Response<Body> {
    let path = normalize(req.uri().path());
    if let Some(resp) = crate::ops::serve(&control, path, &req) {
        return resp;
    }
    match path {
        "/publish" | "/publish/" | "/recover" | "/recover/" => {
            if req.method() != Method::POST {
                let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
                resp.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                return resp;
            }
            if let Err(e) = control.auth.check(req.headers()) {
                tracing::warn!(path, error = %e, "control request refused: authentication failed");
                if path.starts_with("/publish") {
                    control
                        .ops
                        .metrics
                        .publish_answered(StatusCode::UNAUTHORIZED);
                }
                let mut resp = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, control.auth.challenge());
                return resp;
            }
            if path.starts_with("/recover") {
                let told = control.registry.recover();
                tracing::info!(
                    refetched = told,
                    "recover: last ids forgotten, held clients re-fetched"
                );
                return text(StatusCode::OK, "Recovered\n");
            }
            let resp = publish(&control, req).await;
            control.ops.metrics.publish_answered(resp.status());
            resp
        }
        "/" if req.method() == Method::GET || req.method() == Method::HEAD => {
            text(StatusCode::OK, "grip-proxy control API\n")
        }
        _ => text(StatusCode::NOT_FOUND, "Not Found\n"),
    }
}

/// Python's publisher posts to `//publish/` when its URL ends in a slash.
fn normalize(path: &str) -> &str {
    let trimmed = path.trim_start_matches('/');
    &path[path.len() - trimmed.len() - usize::from(path.len() > trimmed.len())..]
}

async fn publish(control: &Control, req: Request<Incoming>) -> Response<Body> {
    let wants_json = accepts_json(&req);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > control.max_body as u64) {
        tracing::warn!(limit = control.max_body, "publish body too large");
        return too_large(control.max_body);
    }
    let reading = Limited::new(req.into_body(), control.max_body).collect();
    let Ok(read) = tokio::time::timeout(BODY_READ_TIMEOUT, reading).await else {
        tracing::warn!(
            timeout_secs = BODY_READ_TIMEOUT.as_secs(),
            "publish body not received in time"
        );
        return text(
            StatusCode::REQUEST_TIMEOUT,
            "Request Timeout: publish body not received in time\n",
        );
    };
    let body: Bytes = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            tracing::warn!(limit = control.max_body, "publish body too large");
            return too_large(control.max_body);
        }
        Err(e) => {
            tracing::warn!(error = %e, "publish body could not be read");
            return text(
                StatusCode::BAD_REQUEST,
                "Bad Request: body could not be read\n",
            );
        }
    };
    let items = match item::parse_body(&body) {
        Ok(items) => items,
        Err(e) => {
            // The field only: the reason may quote a value of the body, which is never logged.
            tracing::warn!(field = %e.field, "publish rejected");
            return if wants_json {
                json(
                    StatusCode::BAD_REQUEST,
                    &serde_json::json!({ "error": e.to_string() }),
                )
            } else {
                text(StatusCode::BAD_REQUEST, format!("Bad Request: {e}\n"))
            };
        }
    };
    let count = items.len();
    if let Err(e) = control.bus.publish(body, items).await {
        tracing::warn!(bus = control.bus.kind(), error = %e, "publish refused: the bus cannot take it now");
        return unavailable(control.bus.retry_after(), wants_json);
    }
    control.ops.metrics.items_published(count);
    if wants_json {
        json_body(StatusCode::OK, PUBLISHED_JSON)
    } else {
        text(StatusCode::OK, "Published\n")
    }
}

fn accepts_json<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/json"))
}

/// 503 while the bus cannot take a publish: nothing was published, and the publisher should retry.
fn unavailable(retry_after: std::time::Duration, wants_json: bool) -> Response<Body> {
    const WHY: &str = "the publish bus is unavailable; retry later";
    let mut resp = if wants_json {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "error": WHY }),
        )
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Service Unavailable: {WHY}\n"),
        )
    };
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after.as_secs().max(1)),
    );
    resp
}

fn too_large(limit: usize) -> Response<Body> {
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("Payload Too Large: the publish body limit is {limit} bytes\n"),
    )
}

/// The JSON answer to a publish, as `serde_json` writes `{"message": "Published"}` (a test pins it): a static
/// body, like the text answers, is sent without being copied.
const PUBLISHED_JSON: &str = r#"{"message":"Published"}"#;

/// A text answer; a `&'static str` body goes out without a copy.
fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    json_body(status, value.to_string())
}

fn json_body(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_leading_slashes() {
        assert_eq!(normalize("//publish/"), "/publish/");
        assert_eq!(normalize("/publish"), "/publish");
        assert_eq!(normalize("///"), "/");
        assert_eq!(normalize(""), "");
    }

    #[test]
    fn published_json_is_what_serde_json_writes() {
        assert_eq!(
            PUBLISHED_JSON,
            serde_json::json!({ "message": "Published" }).to_string()
        );
    }
}
