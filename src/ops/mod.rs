//! Operations endpoints on the control listener: `GET /health` (alive), `GET /ready` (listeners bound, bus
//! connected, not shutting down), `GET /metrics` (Prometheus), and channel introspection, `GET /channels/<name>`
//! and `GET /channels?limit=N&offset=M` (see [`channels`]). Health, readiness and metrics are open (probes and
//! scrapers carry no credentials, and they reveal no channel names); introspection requires the publish
//! credentials when `[control.auth]` sets any.

pub mod channels;

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::body::{self, Body};
use crate::metrics::{Exposition, Metrics};
use crate::publish::Control;

/// What the operations endpoints need beyond the control API's own state.
pub struct Ops {
    /// The counters the control API updates (publishes).
    pub metrics: Arc<Metrics>,
    /// Everything encoded for `GET /metrics`.
    pub exposition: Exposition,
}

/// Answers an operations request on the control listener, or `None` when `path` (already normalized) is not one of
/// these endpoints.
pub fn serve<B>(control: &Control, path: &str, req: &Request<B>) -> Option<Response<Body>> {
    let open = matches!(path, "/health" | "/ready" | "/metrics");
    let introspection = path == "/channels" || path.starts_with("/channels/");
    if !open && !introspection {
        return None;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(resp);
    }
    if introspection {
        if let Err(e) = control.auth.check(req.headers()) {
            tracing::warn!(path, error = %e, "introspection refused: authentication failed");
            let mut resp = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, control.auth.challenge());
            return Some(resp);
        }
        return Some(channels::serve(&control.registry, path, req.uri().query()));
    }
    Some(serve_open(control, path))
}

/// The endpoints of the optional metrics listener (`[metrics] listen`): `/metrics`, `/health` and `/ready`.
pub fn serve_metrics_listener<B>(control: &Control, req: &Request<B>) -> Response<Body> {
    let path = req.uri().path();
    if !matches!(path, "/health" | "/ready" | "/metrics") {
        return text(StatusCode::NOT_FOUND, "Not Found\n");
    }
    serve(control, path, req).unwrap_or_else(|| text(StatusCode::NOT_FOUND, "Not Found\n"))
}

fn serve_open(control: &Control, path: &str) -> Response<Body> {
    match path {
        "/health" => text(StatusCode::OK, "ok\n"),
        "/ready" => match not_ready(control) {
            None => text(StatusCode::OK, "ready\n"),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        },
        _ => {
            let mut resp = Response::new(body::full(control.ops.exposition.encode()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
            );
            resp
        }
    }
}

/// Why the proxy should not get traffic now, if it should not. Both listeners are bound before the control API
/// serves anything, so answering at all means they are.
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

pub(crate) fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(body::full(body.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(body::full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
