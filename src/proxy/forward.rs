//! Sending requests to origins: the pooled origin client (src/origin) with a response-head timeout and bounded
//! concurrency, error classification (unreachable / invalid / timed out), and the copy of a request kept so it
//! can be re-sent.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use parking_lot::Mutex;

use crate::body::{self, Body, BoxError};
use crate::config::OriginConfig;
use crate::error::ProxyError;
use crate::front::ClientBodyError;
use crate::origin::{self, OriginBody, OriginError};
use crate::tls::client::OriginTls;

/// The origin client. Cheap to clone (the pools are shared).
#[derive(Clone)]
pub(crate) struct Forwarder {
    client: origin::Client,
    response_timeout: Duration,
    /// Requests waiting for an origin's response head at once. Bounds the origin connections a burst opens
    /// (each costs a socket and its read buffer, which the allocator keeps after the burst: with hyper's client,
    /// measured +37 KiB of RSS per held client after 5,000 clients parked at once without this bound).
    permits: Arc<tokio::sync::Semaphore>,
}

impl Forwarder {
    /// A client with the configured pool and timeouts, and `local_pools` pools of their own for the per-core
    /// runtimes (0 in shared mode).
    pub(crate) fn new(cfg: &OriginConfig, local_pools: usize) -> Self {
        let client = origin::Client::new(origin::Settings {
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.pool_idle_timeout,
            max_idle_per_host: cfg.pool_max_idle_per_host,
            body_read_timeout: cfg.body_read_timeout,
            local_pools,
        });
        Forwarder {
            client,
            response_timeout: cfg.response_timeout,
            permits: Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrent_requests)),
        }
    }

    /// The response-head timeout, also applied to reading a held body.
    pub(crate) fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Sends a request and waits for the response head.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the request (the connection is not returned to the pool).
    pub(crate) async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<Response<OriginBody>, ProxyError> {
        let exchange = async {
            // The semaphore is never closed, so acquiring only waits.
            let _permit = self.permits.acquire().await;
            self.client.send(req).await
        };
        match tokio::time::timeout(self.response_timeout, exchange).await {
            Err(_) => Err(ProxyError::OriginTimeout(self.response_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(OriginError::Connect { source, .. })) => Err(ProxyError::OriginConnect(source)),
            // Counted and answered as an unreachable origin; the message keeps the TLS reason.
            Ok(Err(e @ OriginError::Tls { .. })) => {
                Err(ProxyError::OriginConnect(std::io::Error::other(e)))
            }
            Ok(Err(OriginError::RequestBody(e))) => Err(request_body_error(e)),
            Ok(Err(e)) => Err(ProxyError::OriginProtocol(Box::new(e))),
        }
    }

    /// The origin client (its pools are shared by every clone).
    pub(crate) fn client(&self) -> &origin::Client {
        &self.client
    }
}

/// The failure of a request body while it was sent to the origin: the client's (a 4xx) when the client's body
/// stream says so, anywhere in its chain of causes; otherwise the origin connection's.
pub(crate) fn request_body_error(e: BoxError) -> ProxyError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
    while let Some(c) = cause {
        if let Some(client) = c.downcast_ref::<ClientBodyError>() {
            return ProxyError::ClientBody(*client);
        }
        cause = c.source();
    }
    ProxyError::OriginProtocol(Box::new(OriginError::RequestBody(e)))
}

/// Reads a request body of up to `limit` bytes whole, before anything is asked of the origin: a client that
/// trickles its body in then holds no origin connection and no concurrency permit while it does (the wait for
/// each piece is bounded by the client connection's body read timeout). A body that declares more, or that grows
/// past `limit`, is streamed: what was read first, then the rest as it comes.
pub(crate) async fn read_ahead(
    req: Request<Body>,
    limit: usize,
) -> Result<Request<Body>, ProxyError> {
    let (parts, mut incoming) = req.into_parts();
    let declared_large = incoming
        .size_hint()
        .exact()
        .is_some_and(|n| n > limit as u64);
    if incoming.is_end_stream() || declared_large {
        return Ok(Request::from_parts(parts, incoming));
    }
    let mut read: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    while len <= limit {
        match incoming.frame().await {
            None => {
                let whole = match read.len() {
                    0 => Bytes::new(),
                    1 => read.pop().unwrap_or_default(),
                    _ => {
                        let mut all = BytesMut::with_capacity(len);
                        read.iter().for_each(|b| all.extend_from_slice(b));
                        all.freeze()
                    }
                };
                return Ok(Request::from_parts(parts, body::full(whole)));
            }
            Some(Err(e)) => return Err(request_body_error(e)),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    len += data.len();
                    read.push(data);
                }
            }
        }
    }
    let body = Prefixed {
        read: read.into_iter(),
        rest: incoming,
    };
    Ok(Request::from_parts(parts, BodyExt::boxed(body)))
}

/// A body whose first pieces were already read: those, then the rest.
struct Prefixed {
    read: std::vec::IntoIter<Bytes>,
    rest: Body,
}

impl HttpBody for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.read.next() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.read.len() == 0 && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self.read.as_slice().iter().map(|b| b.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + read);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}

/// What is needed to send a request to the origin again: its head and a copy of its body.
pub(crate) struct Replayable {
    method: Method,
    uri: Uri,
    /// The headers packed into one allocation: a parked request keeps this for its whole hold, and a `HeaderMap`
    /// costs about 1 KiB for a handful of headers where this costs their bytes (measured: -0.8 KiB per held
    /// client). Unpacked only for a re-send.
    headers: PackedHeaders,
    body: Option<Arc<Mutex<Capture>>>,
    /// The route's TLS setting for an `https` origin, given to every send in the request's extensions.
    tls: Option<OriginTls>,
    /// The client the request's holds count against (`limits.client_max_holds`): kept here, on the heap, rather
    /// than in the request future, which a parked client keeps for its whole hold.
    pub(crate) client: Option<crate::limits::Client>,
    /// The conditional hold this request may become (`[routes.conditional]`), and while it is held with
    /// re-checks, its place in its group.
    pub(crate) conditional: Option<Box<super::conditional::Conditional>>,
    pub(crate) recheck: Option<super::recheck::Member>,
}

/// Header names and values, each as `u16` name length, `u16` value length, name, value.
struct PackedHeaders(Box<[u8]>);

impl PackedHeaders {
    fn pack(headers: &HeaderMap) -> Self {
        let size: usize = headers
            .iter()
            .map(|(n, v)| 4 + n.as_str().len() + v.len())
            .sum();
        let mut out = Vec::with_capacity(size);
        for (name, value) in headers {
            // Header lines are bounded far below 64 KiB by the front end (`proxy.max_request_head`).
            let (n, v) = (name.as_str().as_bytes(), value.as_bytes());
            let (Ok(nl), Ok(vl)) = (u16::try_from(n.len()), u16::try_from(v.len())) else {
                continue;
            };
            out.extend_from_slice(&nl.to_le_bytes());
            out.extend_from_slice(&vl.to_le_bytes());
            out.extend_from_slice(n);
            out.extend_from_slice(v);
        }
        PackedHeaders(out.into_boxed_slice())
    }

    fn unpack(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        let mut rest = &self.0[..];
        while rest.len() >= 4 {
            let nl = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
            let vl = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
            let Some(fields) = rest.get(4..4 + nl + vl) else {
                break;
            };
            // Packed from a valid HeaderMap, so both parse; a failure would only drop that header.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(&fields[..nl]),
                HeaderValue::from_bytes(&fields[nl..]),
            ) {
                map.append(n, v);
            }
            rest = &rest[4 + nl + vl..];
        }
        map
    }
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
    /// as it streams through (chunks are refcounted `Bytes`: the copy is a list of handles). `tls`: the route's
    /// setting for an `https` origin.
    pub(crate) fn first<B>(
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        incoming: B,
        limit: usize,
        tls: Option<OriginTls>,
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
        let packed = PackedHeaders::pack(&headers);
        let mut req = Request::new(body);
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = headers;
        if let Some(tls) = &tls {
            req.extensions_mut().insert(tls.clone());
        }
        (
            Replayable {
                method,
                uri,
                headers: packed,
                body: capture,
                tls,
                client: None,
                conditional: None,
                recheck: None,
            },
            req,
        )
    }

    /// The request's method, target, headers (as sent to the origin) and TLS setting: what a re-check of a
    /// conditional hold sends in its place.
    pub(crate) fn head(&self) -> (Method, Uri, HeaderMap, Option<OriginTls>) {
        (
            self.method.clone(),
            self.uri.clone(),
            self.headers.unpack(),
            self.tls.clone(),
        )
    }

    /// The same request again, with an `extra` header (e.g. `Grip-Last`) in place of any of the same name.
    pub(crate) fn again(
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
        *req.headers_mut() = self.headers.unpack();
        if let Some(tls) = &self.tls {
            req.extensions_mut().insert(tls.clone());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_headers_round_trip() {
        let mut h = HeaderMap::new();
        h.append("host", HeaderValue::from_static("example.com"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        h.append("grip-sig", HeaderValue::from_static("eyJ.x.y"));
        let packed = PackedHeaders::pack(&h);
        assert_eq!(packed.unpack(), h);
        assert!(PackedHeaders::pack(&HeaderMap::new()).unpack().is_empty());
    }
}
