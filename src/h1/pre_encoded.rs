//! Responses encoded once for many connections (a release fanned out to the clients held with the same
//! response): the bytes a keep-alive HTTP/1.1 connection sends, and the response for any other connection.

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode, Version};

use super::encode::{response_framing, response_head};
use super::Framing;
use crate::body::{self, Body};

/// A response encoded once for many connections: its bytes as an HTTP/1.1 keep-alive connection answering a
/// request other than HEAD sends them, and its parts for any other connection. Travels as a response extension;
/// cloning it shares both.
#[derive(Debug, Clone)]
pub(crate) struct PreEncoded(Arc<Encoded>);

#[derive(Debug)]
struct Encoded {
    /// Status, headers (framing ones included) and reason phrase.
    head: http::response::Parts,
    /// The body; `None` when the status has none (1xx, 204, 304).
    body: Option<Bytes>,
    wire: Bytes,
}

impl PreEncoded {
    /// Encodes a whole response (its body in memory) as [`response_head`] and the connection's response writer
    /// would for a keep-alive HTTP/1.1 request.
    pub(crate) fn new(resp: Response<Bytes>) -> Self {
        let (head, body) = resp.into_parts();
        let framing = response_framing(
            head.status,
            false,
            Some(body.len() as u64),
            Version::HTTP_11,
        );
        let reason = head
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| r.as_bytes());
        let mut wire = Vec::with_capacity(256 + body.len());
        response_head(
            &mut wire,
            head.status,
            reason,
            &head.headers,
            framing,
            true,
            Version::HTTP_11,
        );
        if let Framing::Length(_) = framing {
            wire.extend_from_slice(&body);
        }
        PreEncoded(Arc::new(Encoded {
            head,
            body: (framing != Framing::Empty).then_some(body),
            wire: wire.into(),
        }))
    }

    /// The response's status.
    pub(crate) fn status(&self) -> StatusCode {
        self.0.head.status
    }

    /// The whole response for a keep-alive HTTP/1.1 connection, request other than HEAD.
    pub(crate) fn wire(&self) -> &Bytes {
        &self.0.wire
    }

    /// The response, to be encoded for the connection at hand.
    pub(crate) fn response(&self) -> Response<Body> {
        let body = match &self.0.body {
            Some(bytes) => body::full(bytes.clone()),
            None => body::empty(),
        };
        Response::from_parts(self.0.head.clone(), body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grip::ResponseParts;
    use http::{HeaderMap, HeaderValue};

    #[test]
    fn pre_encoded_responses_are_whole_keep_alive_messages() {
        // A held response as a release encodes it: made a `Response`, its body kept as bytes.
        let parts = |status: u16, reason: Option<&'static str>, body: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert("etag", HeaderValue::from_static("\"2\""));
            let parts = ResponseParts {
                status: StatusCode::from_u16(status).unwrap(),
                reason: reason.map(|r| Bytes::from_static(r.as_bytes())),
                headers,
                body: Bytes::from_static(body.as_bytes()),
            };
            let body = parts.body.clone();
            parts.into_response().map(|_| body)
        };
        let ok = PreEncoded::new(parts(200, None, "news"));
        assert_eq!(
            &ok.wire()[..],
            b"HTTP/1.1 200 OK\r\netag: \"2\"\r\ncontent-length: 4\r\n\r\nnews"
        );
        assert_eq!(ok.status(), StatusCode::OK);
        let not_modified = PreEncoded::new(parts(304, Some("Same"), "no body for a 304"));
        assert_eq!(
            &not_modified.wire()[..],
            b"HTTP/1.1 304 Same\r\netag: \"2\"\r\n\r\n"
        );
        assert!(not_modified
            .response()
            .headers()
            .get("content-length")
            .is_none());
    }
}
