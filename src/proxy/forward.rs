//! Sending requests to origins: a pooled hyper-util client with connect and response-head timeouts, error
//! classification (unreachable / invalid / timed out), and the copy of a request kept so it can be re-sent.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;

use crate::body::{self, Body, BoxError};
use crate::config::OriginConfig;
use crate::error::ProxyError;

/// The origin client. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, Body>,
    response_timeout: Duration,
}

impl Forwarder {
    /// A client with the configured pool and timeouts.
    pub fn new(cfg: &OriginConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .build(connector);
        Forwarder {
            client,
            response_timeout: cfg.response_timeout,
        }
    }

    /// The response-head timeout, also applied to reading a held body.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Sends a request and waits for the response head.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the request (the connection is not returned to the pool).
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(ProxyError::OriginTimeout(self.response_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(ProxyError::OriginConnect(e)),
            Ok(Err(e)) if caused_by_body_limit(&e) => Err(ProxyError::BodyTooLarge),
            Ok(Err(e)) => Err(ProxyError::OriginProtocol(Box::new(e))),
        }
    }
}

/// Whether the client's body failed by growing past its limit (the error travels inside hyper's).
fn caused_by_body_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<crate::front::BodyTooLarge>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// What is needed to send a request to the origin again: its head and a copy of its body.
pub struct Replayable {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Option<Arc<Mutex<Capture>>>,
}

/// The copy of a streamed request body, filled as the body passes.
#[derive(Default)]
struct Capture {
    chunks: Vec<Bytes>,
    len: usize,
    /// Larger than the replay limit: kept no further.
    overflow: bool,
    /// The end of the body went through.
    complete: bool,
}

impl Replayable {
    /// Builds the first request to the origin, keeping what a re-send needs. A body up to `limit` bytes is copied
    /// as it streams through (chunks are refcounted `Bytes`: the copy is a list of handles).
    pub fn first<B>(
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        incoming: B,
        limit: usize,
    ) -> (Replayable, Request<Body>)
    where
        B: HttpBody<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (body, capture) = if incoming.is_end_stream() {
            (body::empty(), None)
        } else {
            let capture = Arc::new(Mutex::new(Capture::default()));
            let tee = Tee {
                inner: incoming,
                capture: capture.clone(),
                limit,
            };
            (BodyExt::boxed(tee), Some(capture))
        };
        let mut req = Request::new(body);
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers.clone();
        (
            Replayable {
                method,
                uri,
                headers,
                body: capture,
            },
            req,
        )
    }

    /// The same request again, with an `extra` header (e.g. `Grip-Last`) in place of any of the same name.
    pub fn again(
        &self,
        extra: Option<(HeaderName, HeaderValue)>,
    ) -> Result<Request<Body>, ProxyError> {
        let body = match &self.body {
            None => body::empty(),
            Some(capture) => {
                let c = capture.lock();
                if c.overflow {
                    return Err(ProxyError::NotReplayable(
                        "request body larger than origin.max_replay_body",
                    ));
                }
                if !c.complete {
                    return Err(ProxyError::NotReplayable(
                        "request body was not read to its end",
                    ));
                }
                let mut all = BytesMut::with_capacity(c.len);
                for chunk in &c.chunks {
                    all.extend_from_slice(chunk);
                }
                body::full(all.freeze())
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        if let Some((name, value)) = extra {
            req.headers_mut().insert(name, value);
        }
        Ok(req)
    }
}

/// Streams the client's body to the origin while keeping a copy for a re-send.
struct Tee<B> {
    inner: B,
    capture: Arc<Mutex<Capture>>,
    limit: usize,
}

impl<B> HttpBody for Tee<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let limit = self.limit;
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let end = self.inner.is_end_stream();
                if let Some(data) = frame.data_ref() {
                    let mut c = self.capture.lock();
                    c.complete = end;
                    if !c.overflow {
                        if c.len + data.len() > limit {
                            c.overflow = true;
                            c.chunks.clear();
                        } else {
                            c.len += data.len();
                            c.chunks.push(data.clone());
                        }
                    }
                }
            }
            Poll::Ready(None) => self.capture.lock().complete = true,
            _ => {}
        }
        polled.map(|frame| frame.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
