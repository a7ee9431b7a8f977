//! The control API, on its own listener (loopback by default): `POST /publish/` and `POST /recover`
//! ([`publish`]), `GET /health`, `/ready` and `/metrics` ([`health`]), channel introspection ([`channels`]), and
//! `GET /` (a banner). Publishing, recovering and introspection need the credentials of `[control.auth]` when it
//! sets any ([`auth`]); health, readiness and metrics stay open (probes and scrapers carry no credentials, and
//! those reveal no channel names). The optional metrics listener serves the open three alone. Both listeners are
//! served by [`crate::front`], with the bounds of [`limits`].

pub(crate) mod auth;
pub(crate) mod channels;
mod health;
mod publish;
mod respond;

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};

use crate::body::Body;
use crate::bus::Bus;
use crate::front::{self, RequestBody};
use crate::hold::Registry;
use crate::metrics::{Exposition, Metrics};
use respond::text;

/// What the control API needs. Built once at start-up.
pub(crate) struct Control {
    /// Held clients: recovered, introspected, and asked whether the proxy is shutting down.
    pub registry: Registry,
    /// Largest publish body accepted.
    pub max_body: usize,
    /// Credentials required to publish, recover or introspect (none: open).
    pub auth: auth::Auth,
    /// Where a validated publish goes (memory: `registry`; Redis: every instance, this one included).
    pub bus: Bus,
    /// The counters the control API updates (publishes).
    pub metrics: Arc<Metrics>,
    /// Everything encoded for `GET /metrics`.
    pub exposition: Exposition,
}

/// The bounds of a control or metrics connection: the front's defaults (a request head within 30 s, also the most
/// an idle keep-alive connection is kept; a body's next bytes within 30 s; a response taken within 60 s), with no
/// body limit of the front's own: the publish handler applies `control.max_body` itself, so that a body over it
/// is answered with the limit in the message and counted as a refused publish, and no other endpoint reads a body
/// (the connection closes after answering a request whose body was left unread).
pub(crate) fn limits() -> front::Limits {
    front::Limits {
        max_body: u64::MAX,
        ..front::Limits::default()
    }
}

/// Serves one control API request. Never fails: every error is a response.
pub(crate) async fn serve(control: Arc<Control>, req: Request<RequestBody>) -> Response<Body> {
    let path = normalize(req.uri().path());
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match path {
        "/health" | "/ready" | "/metrics" if get => health::serve(&control, path),
        "/health" | "/ready" | "/metrics" => respond::method_not_allowed("GET, HEAD"),
        "/channels" => introspect(&control, path, &req),
        p if p.starts_with("/channels/") => introspect(&control, path, &req),
        "/publish" | "/publish/" | "/recover" | "/recover/" => {
            if req.method() != Method::POST {
                return respond::method_not_allowed("POST");
            }
            if let Err(e) = control.auth.check(req.headers()) {
                tracing::warn!(path, error = %e, "control request refused: authentication failed");
                if path.starts_with("/publish") {
                    control.metrics.publish_answered(StatusCode::UNAUTHORIZED);
                }
                return respond::unauthorized(&control.auth);
            }
            if path.starts_with("/recover") {
                return publish::recover(&control);
            }
            let resp = publish::publish(&control, req).await;
            control.metrics.publish_answered(resp.status());
            resp
        }
        "/" if get => text(StatusCode::OK, "grip-proxy control API\n"),
        _ => respond::not_found(),
    }
}

/// The endpoints of the optional metrics listener (`[metrics] listen`): `/metrics`, `/health` and `/ready`.
pub(crate) fn serve_metrics_listener<B>(control: &Control, req: &Request<B>) -> Response<Body> {
    let path = req.uri().path();
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match path {
        "/health" | "/ready" | "/metrics" if get => health::serve(control, path),
        "/health" | "/ready" | "/metrics" => respond::method_not_allowed("GET, HEAD"),
        _ => respond::not_found(),
    }
}

/// Channel introspection: the publish credentials, then [`channels::serve`].
fn introspect<B>(control: &Control, path: &str, req: &Request<B>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond::method_not_allowed("GET, HEAD");
    }
    if let Err(e) = control.auth.check(req.headers()) {
        tracing::warn!(path, error = %e, "introspection refused: authentication failed");
        return respond::unauthorized(&control.auth);
    }
    channels::serve(&control.registry, path, req.uri().query())
}

/// Python's publisher posts to `//publish/` when its URL ends in a slash.
fn normalize(path: &str) -> &str {
    let trimmed = path.trim_start_matches('/');
    &path[path.len() - trimmed.len() - usize::from(path.len() > trimmed.len())..]
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
}
