//! `GET /health` (the process answers), `GET /ready` (not shutting down, the publish bus connected; both
//! listeners are bound before the control API serves anything, so answering at all means they are), and
//! `GET /metrics` (Prometheus text).

use http::{header, HeaderValue, Response, StatusCode};

use super::respond::text;
use super::Control;
use crate::body::{self, Body};

/// Answers `/health`, `/ready` or `/metrics` (anything else is taken for `/metrics`: the router only sends those).
pub(super) fn serve(control: &Control, path: &str) -> Response<Body> {
    match path {
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" => match not_ready(control) {
            None => text(StatusCode::OK, "ready\n"),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => {
            let mut resp = Response::new(body::full(control.exposition.encode()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            resp
        }
    }
}

/// Why the proxy should not get traffic now, if it should not.
fn not_ready(control: &Control) -> Option<String> {
    if control.registry.is_closed() {
        return Some("shutting down".into());
    }
    if !control.bus.is_connected() {
        return Some(format!(
            "the publish bus ({}) is not connected",
            control.bus.kind()
        ));
    }
    None
}
