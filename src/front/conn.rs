//! One client connection: read a head, run the handler while feeding it the body and watching for the client
//! leaving, write the response, repeat while keep-alive allows. While a request is parked the connection keeps
//! no buffer: it waits for readability and reads into a stack buffer only when bytes (or EOF) arrive.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::body::RequestBody;
use super::io::Io;
use super::{ClientBodyError, Limits};
use crate::body::{Body, BoxError};
use crate::h1::decode::{Decoded, Decoder};
use crate::h1::encode;
use crate::h1::request::{self, Reject};
use crate::h1::{socket, Framing, PreEncoded, Written};

/// What happened while the handler ran.
enum Event {
    /// Progress (body bytes passed on, or pipelined bytes buffered).
    Progress,
    /// The client closed or reset the connection: drop the handler.
    Gone,
    /// Nothing more to watch (the buffer is full of pipelined bytes): wait for the handler alone.
    Quiet,
}

/// The task serving a newly accepted connection until it closes: over TLS with `tls`, after a handshake bounded
/// by the header timeout. `None`: the TLS session could not be created (logged).
pub(crate) fn start<H, F>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<&super::TlsListener>,
    handler: H,
    limits: Arc<Limits>,
    stop: CancellationToken,
) -> Option<impl Future<Output = ()>>
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F,
    F: Future<Output = Response<Body>>,
{
    // Made here rather than in the task: the TLS config is not needed once the session exists, and the task's
    // future (what every parked connection costs) would keep a slot for it.
    let io = match tls {
        None => Io::Plain(Arc::new(stream)),
        Some(tls) => match crate::tls::server::Session::new(tls.config.clone()) {
            Ok(session) => Io::tls(stream, session, tls.handshakes.clone()),
            Err(e) => {
                tracing::warn!(client.addr = %peer, error = %e, "TLS session could not be created");
                return None;
            }
        },
    };
    Some(run(io, peer, handler, limits, stop))
}

/// Serves a connection until it closes.
async fn run<H, F>(
    io: Io,
    peer: SocketAddr,
    handler: H,
    limits: Arc<Limits>,
    stop: CancellationToken,
) where
    H: Fn(Request<RequestBody>, SocketAddr) -> F,
    F: Future<Output = Response<Body>>,
{
    let mut conn = Conn {
        stream: io,
        buf: BytesMut::new(),
        limits,
    };
    if conn.stream.is_tls() {
        // Boxed: the handshake's state is needed once, not in every parked connection's future.
        let handshake = Box::pin(tokio::time::timeout(
            conn.limits.header_timeout,
            conn.stream.handshake(&mut conn.buf),
        ));
        let failed = match handshake.await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("not completed within the header timeout".to_owned()),
        };
        conn.stream.handshake_done(failed.is_none());
        if let Some(reason) = failed {
            // Debug level: scanners, old clients and clients that do not trust the certificate are common, and
            // nothing here is the operator's to fix.
            tracing::debug!(client.addr = %peer, reason, "TLS handshake failed");
            return;
        }
    }
    match conn.serve(peer, &handler, &stop).await {
        Ok(()) => {}
        // A client that stopped reading: worth a line, as it may be a slow-read attack or a stuck client.
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            tracing::info!(client.addr = %peer, error = %e, "connection closed: write timed out");
        }
        Err(e) => {
            tracing::debug!(client.addr = %peer, error = %e, "connection closed with an error")
        }
    }
}

/// A request whose handler has been created, and what the connection needs to finish it.
struct Begun<F> {
    fut: std::pin::Pin<Box<F>>,
    decoder: Decoder,
    tx: Option<mpsc::Sender<Result<bytes::Bytes, BoxError>>>,
    version: Version,
    is_head: bool,
    keep_alive: bool,
    expect_continue: bool,
}

struct Conn {
    /// The socket, plain or under TLS.
    stream: Io,
    /// Bytes read but not consumed: a partial head, body bytes, pipelined requests. Empty (no allocation)
    /// between requests and while parked.
    buf: BytesMut,
    /// Shared by every connection of the listener: a pointer here instead of 64 bytes in each parked future.
    limits: Arc<Limits>,
}

impl Conn {
    async fn serve<H, F>(
        &mut self,
        peer: SocketAddr,
        handler: &H,
        stop: &CancellationToken,
    ) -> io::Result<()>
    where
        H: Fn(Request<RequestBody>, SocketAddr) -> F,
        F: Future<Output = Response<Body>>,
    {
        loop {
            // Reading a head is boxed: rustc lays the futures of this loop's awaits side by side rather than over
            // each other, and a parked connection should carry only what waiting needs.
            let Begun {
                fut,
                mut decoder,
                tx,
                version,
                is_head,
                keep_alive,
                expect_continue,
            } = {
                // In a block of its own: the head is stored in this future while it is in scope, whether or not
                // it was moved out, and must not be while the request runs (docs/performance.md has the sizes).
                let head = match Box::pin(self.read_head(stop)).await? {
                    Ok(Some(head)) => head,
                    Ok(None) => return Ok(()),
                    Err(reject) => {
                        tracing::info!(client.addr = %peer, status = reject.status.as_u16(), reason = reject.reason, "request refused");
                        return Box::pin(self.write_reject(reject)).await;
                    }
                };
                match self.begin(head, handler, peer) {
                    Ok(begun) => begun,
                    Err(reject) => return Box::pin(self.write_reject(reject)).await,
                }
            };
            let mut body_len: u64 = 0;
            if expect_continue {
                // Boxed: a timed write's timer would otherwise be part of this future in every state.
                Box::pin(write_timed(
                    &mut self.stream,
                    b"HTTP/1.1 100 Continue\r\n\r\n",
                    self.limits.write_timeout,
                ))
                .await?;
            }
            let Some(resp) = self.drive(fut, &mut decoder, &mut body_len, tx).await? else {
                tracing::debug!(client.addr = %peer, "client went away before the response");
                return Ok(());
            };
            let keep_alive = keep_alive && decoder.is_done() && !stop.is_cancelled();
            // Boxed: inline, the writer's state would be part of this future in every state, parked included.
            let keep_alive =
                Box::pin(self.write_response(resp, is_head, version, keep_alive)).await?;
            if !keep_alive {
                self.stream.shutdown_write();
                return Ok(());
            }
        }
    }

    /// Checks a request head and starts its handler (not polled yet), with the channel its body will be fed
    /// through. `Err`: the request is refused before the handler sees it.
    fn begin<H, F>(
        &mut self,
        head: request::Head,
        handler: &H,
        peer: SocketAddr,
    ) -> Result<Begun<F>, Reject>
    where
        H: Fn(Request<RequestBody>, SocketAddr) -> F,
    {
        let request::Head {
            mut parts,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        if let Framing::Length(n) = framing {
            if n > self.limits.max_body {
                tracing::info!(client.addr = %peer, length = n, limit = self.limits.max_body, "request body too large");
                return Err(Reject {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    reason: "request body too large",
                });
            }
        }
        let version = parts.version;
        let is_head = parts.method == Method::HEAD;
        let decoder = Decoder::new(framing);
        let (tx, body) = if decoder.is_done() {
            (None, RequestBody::empty())
        } else {
            let (tx, body) = RequestBody::channel(decoder.remaining());
            (Some(tx), body)
        };
        if expect_continue {
            parts.headers.remove(http::header::EXPECT);
        }
        // A request that may be parked, on a connection that takes the shared keep-alive encoding of a release
        // as it is: the release may write its answer to this socket itself.
        if version == Version::HTTP_11 && !is_head && keep_alive && decoder.is_done() {
            if let Some(lent) = self.stream.lend() {
                parts.extensions.insert(lent);
            }
        }
        if self.stream.is_tls() {
            parts.extensions.insert(super::Https);
        }
        if self.buf.is_empty() {
            // Release the read buffer: a parked request must not keep one.
            self.buf = BytesMut::new();
        }
        // Boxed so that this connection's own future stays small in every state: the handler's future lives on
        // the heap only while a request is in flight.
        let fut = Box::pin(handler(Request::from_parts(parts, body), peer));
        Ok(Begun {
            fut,
            decoder,
            tx,
            version,
            is_head,
            keep_alive,
            expect_continue,
        })
    }

    /// Reads until a whole head is buffered. `Ok(Ok(None))`: the connection ended cleanly (EOF between requests,
    /// idle past the header timeout, or shutdown while idle).
    async fn read_head(
        &mut self,
        stop: &CancellationToken,
    ) -> io::Result<Result<Option<request::Head>, Reject>> {
        let deadline = tokio::time::Instant::now() + self.limits.header_timeout;
        loop {
            if !self.buf.is_empty() {
                match request::parse(&self.buf, self.limits.max_head) {
                    Ok(Some((head, len))) => {
                        self.buf.advance(len);
                        return Ok(Ok(Some(head)));
                    }
                    Ok(None) => {}
                    Err(reject) => return Ok(Err(reject)),
                }
            }
            let idle = self.buf.is_empty();
            tokio::select! {
                r = socket::read_ready(self.stream.tcp()) => r?,
                _ = tokio::time::sleep_until(deadline) => {
                    if !idle {
                        return Ok(Err(Reject { status: StatusCode::REQUEST_TIMEOUT, reason: "request head not received in time" }));
                    }
                    return Ok(Ok(None));
                }
                _ = stop.cancelled(), if idle => return Ok(Ok(None)),
            }
            if self.read_some()? == Some(0) {
                return Ok(Ok(None));
            }
        }
    }

    /// One non-blocking read into the buffer. `Some(0)`: EOF; `None`: nothing there after all.
    fn read_some(&mut self) -> io::Result<Option<usize>> {
        self.stream.read_some(&mut self.buf)
    }

    /// Runs the handler to its response while feeding it the body and watching the socket. `Ok(None)`: the client
    /// left, and the handler was dropped (which unparks it).
    async fn drive<F>(
        &mut self,
        fut: F,
        decoder: &mut Decoder,
        body_len: &mut u64,
        mut tx: Option<mpsc::Sender<Result<bytes::Bytes, BoxError>>>,
    ) -> io::Result<Option<Response<Body>>>
    where
        F: Future<Output = Response<Body>> + Unpin,
    {
        let mut fut = fut;
        loop {
            let event = tokio::select! {
                biased;
                resp = &mut fut => return Ok(Some(resp)),
                event = self.io_step(decoder, body_len, &mut tx) => event?,
            };
            match event {
                Event::Progress => {}
                Event::Gone => return Ok(None),
                Event::Quiet => return Ok(Some(fut.await)),
            }
        }
    }

    /// One step of IO while the handler runs: pass on body bytes, or watch for EOF.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes read are in the buffer; a body chunk being sent when the handler completes is no longer
    /// needed.
    async fn io_step(
        &mut self,
        decoder: &mut Decoder,
        body_len: &mut u64,
        tx: &mut Option<mpsc::Sender<Result<bytes::Bytes, BoxError>>>,
    ) -> io::Result<Event> {
        if let Some(sender) = tx.as_ref() {
            match decoder.decode(&mut self.buf) {
                Ok(Decoded::Data(data)) => {
                    *body_len += data.len() as u64;
                    if *body_len > self.limits.max_body {
                        let too_large = ClientBodyError::TooLarge(self.limits.max_body);
                        let _ = Box::pin(sender.send(Err(Box::new(too_large)))).await;
                        *tx = None;
                        return Ok(Event::Quiet);
                    }
                    // Boxed: the send future is large, and inline it would size this future (and so every parked
                    // connection) although only requests with bodies use it.
                    if Box::pin(sender.send(Ok(data))).await.is_err() {
                        // The handler dropped the body: the rest is never read, so the connection will close.
                        *tx = None;
                    }
                    return Ok(Event::Progress);
                }
                Ok(Decoded::End) => {
                    *tx = None;
                    return Ok(Event::Progress);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    let malformed = ClientBodyError::Malformed(e.0);
                    let _ = Box::pin(sender.send(Err(Box::new(malformed)))).await;
                    *tx = None;
                    return Ok(Event::Quiet);
                }
            }
            // Waiting for body bytes the handler wants: bounded, so a client that stops sending cannot keep the
            // request (and whatever it holds) forever. Boxed: the timer is only needed while a body is read, and
            // inline it would size every parked connection's future.
            let waited = Box::pin(tokio::time::timeout(
                self.limits.body_read_timeout,
                socket::read_ready(self.stream.tcp()),
            ))
            .await;
            match waited {
                Ok(ready) => ready?,
                Err(_) => {
                    if let Some(sender) = tx.take() {
                        let _ =
                            Box::pin(sender.send(Err(Box::new(ClientBodyError::TimedOut)))).await;
                    }
                    return Ok(Event::Quiet);
                }
            }
        } else if self.buf.len() >= self.limits.max_head {
            return Ok(Event::Quiet);
        } else {
            socket::read_ready(self.stream.tcp()).await?;
        }
        match self.read_some() {
            Ok(Some(0)) | Err(_) => {
                if let Some(sender) = tx.take() {
                    let _ = Box::pin(sender.send(Err(Box::new(ClientBodyError::Closed)))).await;
                }
                Ok(Event::Gone)
            }
            Ok(_) => Ok(Event::Progress),
        }
    }

    /// Writes a response. Returns whether the connection can carry another request.
    async fn write_response(
        &mut self,
        resp: Response<Body>,
        is_head: bool,
        version: Version,
        keep_alive: bool,
    ) -> io::Result<bool> {
        if let Some(marker) = resp.extensions().get::<super::Streaming>().cloned() {
            if !is_head {
                let peer = self.stream.tcp().peer_addr().ok();
                let peer = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                let started = tokio::time::Instant::now();
                let ended = super::stream::write(
                    &mut self.stream,
                    resp,
                    marker,
                    version,
                    self.limits.write_timeout,
                    peer,
                )
                .await?;
                // The request line was logged when the stream started; this one says how and when it ended.
                tracing::info!(
                    client.addr = %peer,
                    ended = ended.label(),
                    duration_ms = started.elapsed().as_millis() as u64,
                    "stream ended"
                );
                return Ok(false);
            }
        }
        let resp = match resp.extensions().get::<PreEncoded>() {
            // A release that wrote part (or all) of the response to this socket already: the rest follows. The
            // release was offered the socket only for a request this encoding fits (see `begin`).
            Some(pre) if resp.extensions().get::<Written>().is_some() => {
                let written = resp.extensions().get::<Written>().map_or(0, |w| w.0);
                let rest = pre.wire().get(written..).unwrap_or_default();
                write_timed(&mut self.stream, rest, self.limits.write_timeout).await?;
                return Ok(keep_alive);
            }
            // A release shared by many clients: its bytes are ready when the connection is what they were made for.
            Some(pre) if version == Version::HTTP_11 && !is_head && keep_alive => {
                write_timed(&mut self.stream, pre.wire(), self.limits.write_timeout).await?;
                return Ok(true);
            }
            Some(pre) => pre.response(),
            None => resp,
        };
        let (parts, mut body) = resp.into_parts();
        let framing =
            encode::response_framing(parts.status, is_head, body.size_hint().exact(), version);
        let keep_alive = keep_alive && framing != Framing::Close;
        let reason = parts
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| r.as_bytes());
        let mut out = Vec::with_capacity(256);
        encode::response_head(
            &mut out,
            parts.status,
            reason,
            &parts.headers,
            framing,
            keep_alive,
            version,
        );
        let write_timeout = self.limits.write_timeout;
        if framing == Framing::Empty {
            write_timed(&mut self.stream, &out, write_timeout).await?;
            return Ok(keep_alive);
        }
        let mut written: u64 = 0;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    // The origin failed mid-body: the client sees a truncated response and a closed connection.
                    tracing::warn!(error = %e, "response body failed mid-stream");
                    write_timed(&mut self.stream, &out, write_timeout).await?;
                    return Ok(false);
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            written += data.len() as u64;
            let chunked = framing == Framing::Chunked;
            let more = !body.is_end_stream();
            let put = socket::put_body_piece_to(&mut self.stream, &mut out, &data, chunked, more);
            tokio::time::timeout(write_timeout, put)
                .await
                .map_err(|_| write_timed_out())??;
        }
        match framing {
            Framing::Chunked => out.extend_from_slice(encode::LAST_CHUNK),
            Framing::Length(n) if n != written => {
                tracing::warn!(
                    declared = n,
                    written,
                    "response body length differs from its declared length"
                );
                write_timed(&mut self.stream, &out, write_timeout).await?;
                return Ok(false);
            }
            _ => {}
        }
        write_timed(&mut self.stream, &out, write_timeout).await?;
        Ok(keep_alive)
    }

    async fn write_reject(&mut self, reject: Reject) -> io::Result<()> {
        let body = format!("{}\n", reject.reason);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let mut out = Vec::with_capacity(128 + body.len());
        let framing = Framing::Length(body.len() as u64);
        encode::response_head(
            &mut out,
            reject.status,
            None,
            &headers,
            framing,
            false,
            Version::HTTP_11,
        );
        out.extend_from_slice(body.as_bytes());
        write_timed(&mut self.stream, &out, self.limits.write_timeout).await?;
        self.stream.shutdown_write();
        Ok(())
    }
}

/// Writes all of `bytes`, or fails with `TimedOut` when the client takes none of them for `limit`: a client that
/// stops reading must not keep its connection, and the origin connection streaming to it, forever.
pub(super) async fn write_timed(
    stream: &mut Io,
    bytes: &[u8],
    limit: std::time::Duration,
) -> io::Result<()> {
    tokio::time::timeout(limit, stream.write_all(bytes))
        .await
        .map_err(|_| write_timed_out())?
}

pub(super) fn write_timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "client did not take the response within proxy.write_timeout_secs",
    )
}
