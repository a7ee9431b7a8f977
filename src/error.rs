//! `ProxyError`: every way a proxied request can fail, its HTTP status, and the short answer a client gets.

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};
use crate::front::ClientBodyError;
use crate::grip::GripError;
use crate::limits::{Refusal, Refused};

/// Who caused a failure: decides how loudly it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The client sent something we cannot serve.
    Client,
    /// The origin failed or sent something we cannot use.
    Origin,
    /// Our own state (shutting down, limits).
    Internal,
}

/// A failure on the proxy path. Each becomes one short plain-text response in [`ProxyError::into_response`].
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// No route matches the request's host and path.
    #[error("no route for this host and path")]
    NoRoute,
    /// The origin could not be reached.
    #[error("origin unreachable: {0}")]
    OriginConnect(#[source] std::io::Error),
    /// The origin accepted the connection but its response was unusable (closed early, not HTTP).
    #[error("origin failed: {0}")]
    OriginProtocol(#[source] crate::body::BoxError),
    /// The origin sent no response head within the configured time.
    #[error("origin timed out after {0:?}")]
    OriginTimeout(std::time::Duration),
    /// The origin's GRIP instructions are invalid.
    #[error("invalid GRIP instructions from origin: {0}")]
    InvalidGrip(#[from] GripError),
    /// A request could not be re-sent to the origin (its body was too large to keep).
    #[error("request cannot be re-sent to the origin: {0}")]
    NotReplayable(&'static str),
    /// The client's request is malformed in a way we detect (e.g. an unusable URI).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// As many clients are held as `proxy.max_held` allows: the origin's answer is discarded.
    #[error("too many held clients (proxy.max_held); the origin's hold was discarded")]
    HoldsExhausted,
    /// A fair-use limit (`[limits]`): too many requests or holds from one client, or holds on one channel.
    #[error("too many requests: {0}")]
    Limited(Box<Refusal>),
    /// The client's request body failed: too large, malformed, too slow, or cut short.
    #[error("{0}")]
    ClientBody(#[from] crate::front::ClientBodyError),
}

impl ProxyError {
    /// The status the client receives.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute
            | ProxyError::OriginConnect(_)
            | ProxyError::OriginProtocol(_)
            | ProxyError::InvalidGrip(_)
            | ProxyError::NotReplayable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::OriginTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::HoldsExhausted => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Limited(_) => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::ClientBody(e) => match e {
                ClientBodyError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                ClientBodyError::TimedOut => StatusCode::REQUEST_TIMEOUT,
                ClientBodyError::Malformed(_) | ClientBodyError::Closed => StatusCode::BAD_REQUEST,
            },
        }
    }

    /// Who is to blame, for logging.
    pub(crate) fn source_kind(&self) -> Source {
        match self {
            ProxyError::BadRequest(_) | ProxyError::ClientBody(_) | ProxyError::Limited(_) => {
                Source::Client
            }
            ProxyError::NotReplayable(_) | ProxyError::HoldsExhausted => Source::Internal,
            _ => Source::Origin,
        }
    }

    /// The short body text: names the kind of failure, never leaks the origin's body.
    fn public_text(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "Bad Gateway: no route for this request\n",
            ProxyError::OriginConnect(_) => "Bad Gateway: origin unreachable\n",
            ProxyError::OriginProtocol(_) => "Bad Gateway: origin sent an invalid response\n",
            ProxyError::OriginTimeout(_) => "Gateway Timeout: origin did not answer in time\n",
            ProxyError::InvalidGrip(_) => "Bad Gateway: invalid GRIP instructions from origin\n",
            ProxyError::NotReplayable(_) => "Bad Gateway: request could not be re-sent to origin\n",
            ProxyError::BadRequest(_) => "Bad Request\n",
            ProxyError::HoldsExhausted => {
                "Service Unavailable: too many held clients, retry later\n"
            }
            ProxyError::Limited(r) => match r.kind {
                Refused::ClientRate => "Too Many Requests: request rate limit, retry later\n",
                Refused::ClientHolds => {
                    "Too Many Requests: too many held requests from this client\n"
                }
                Refused::ChannelHolds => {
                    "Too Many Requests: too many clients held on this channel\n"
                }
            },
            ProxyError::ClientBody(e) => match e {
                ClientBodyError::TooLarge(_) => "Payload Too Large\n",
                ClientBodyError::Malformed(_) => "Bad Request: malformed request body\n",
                ClientBodyError::TimedOut => "Request Timeout: request body not received in time\n",
                ClientBodyError::Closed => "Bad Request: request body incomplete\n",
            },
        }
    }

    /// Builds the client's answer. Logging is the caller's job (once, at the service boundary).
    pub(crate) fn into_response(self) -> Response<Body> {
        let text = match &self {
            // The client's own mistake: say which.
            ProxyError::BadRequest(reason) => body::full(format!("Bad Request: {reason}\n")),
            _ => body::full(self.public_text()),
        };
        let mut resp = Response::new(text);
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match &self {
            ProxyError::HoldsExhausted => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::Limited(r) => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(r.retry_after));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(ProxyError::NoRoute.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            ProxyError::OriginTimeout(std::time::Duration::from_secs(1)).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ProxyError::HoldsExhausted.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let resp = ProxyError::HoldsExhausted.into_response();
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        let limited = ProxyError::Limited(Box::new(Refusal {
            kind: Refused::ClientRate,
            who: "192.0.2.1".into(),
            limit: 0.5,
            retry_after: 2,
        }));
        assert_eq!(
            limited.to_string(),
            "too many requests: client_rate limit for client 192.0.2.1: limits.client_requests_per_sec = 0.5"
        );
        let resp = limited.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
    }
}
