//! `POST /publish/`: a body of items, validated whole (an invalid item refuses the whole publish, naming its
//! field) and handed to the bus; `POST /recover`: every last id forgotten and every held client re-fetched.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::respond::{json, json_body, text};
use super::Control;
use crate::body::Body;
use crate::front::{ClientBodyError, RequestBody};
use crate::item;

/// Time allowed to receive a whole publish body: a publisher that trickles its body does not keep its connection
/// and task for ever (the head has its own limit, and each wait for body bytes the front's `body_read_timeout`).
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Forgets every last id and makes every held client re-fetch from its origin.
pub(super) fn recover(control: &Control) -> Response<Body> {
    let told = control.registry.recover();
    tracing::info!(
        refetched = told,
        "recover: last ids forgotten, held clients re-fetched"
    );
    text(StatusCode::OK, "Recovered\n")
}

pub(super) async fn publish(control: &Control, req: Request<RequestBody>) -> Response<Body> {
    // The one clock read of the request: the body's deadline, and the instant each item is accepted at, which the
    // registry records its publish at.
    let now = tokio::time::Instant::now();
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
    let Ok(read) = tokio::time::timeout_at(now + BODY_READ_TIMEOUT, reading).await else {
        tracing::warn!(
            timeout_secs = BODY_READ_TIMEOUT.as_secs(),
            "publish body not received in time"
        );
        return not_in_time();
    };
    let body: Bytes = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            tracing::warn!(limit = control.max_body, "publish body too large");
            return too_large(control.max_body);
        }
        Err(e) if e.downcast_ref() == Some(&ClientBodyError::TimedOut) => {
            tracing::warn!("publish body not received in time");
            return not_in_time();
        }
        Err(e) => {
            tracing::warn!(error = %e, "publish body could not be read");
            return text(
                StatusCode::BAD_REQUEST,
                "Bad Request: body could not be read\n",
            );
        }
    };
    let items = match item::parse_body_at(&body, now) {
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
    control.metrics.items_published(count);
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

fn not_in_time() -> Response<Body> {
    text(
        StatusCode::REQUEST_TIMEOUT,
        "Request Timeout: publish body not received in time\n",
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_json_is_what_serde_json_writes() {
        assert_eq!(
            PUBLISHED_JSON,
            serde_json::json!({ "message": "Published" }).to_string()
        );
    }
}
