//! The integration test harness: a recording origin (hyper, or raw TCP for misbehaviour), the proxy started
//! in-process on 127.0.0.1:0, HTTP clients (hyper, or raw TCP for what hyper will not send), a publish helper,
//! and `within`, which bounds every await so that a broken behaviour fails fast instead of hanging.

#![allow(dead_code)] // each test file uses its own part of the harness

pub(crate) mod redis_server;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use grip_proxy::Registry;
use grip_proxy::{App, Config};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

/// The bound on one await: long enough for a loaded 2-core CI machine, short enough to fail fast.
pub(crate) const LIMIT: Duration = Duration::from_secs(5);

/// Awaits `fut`, or panics naming the caller's line if it takes longer than `limit`.
#[track_caller]
pub(crate) fn within<F: Future>(limit: Duration, fut: F) -> impl Future<Output = F::Output> {
    let at = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(limit, fut).await {
            Ok(out) => out,
            Err(_) => panic!("timed out after {limit:?} at {at}"),
        }
    }
}

/// A port nothing listens on (bound, then released), for a process or server the test starts on it.
pub(crate) fn free_port() -> u16 {
    // Ports a spawned binary will bind are taken below the kernel's ephemeral range (32768 and up on Linux), where
    // `bind(127.0.0.1:0)` and outgoing connections never land: a port found free here cannot be handed to another
    // test's listener or connection before the binary binds it. A counter keeps the tests of one binary apart;
    // the start is spread by the process id, and a port in use by anything else is skipped.
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let offset = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + (offset.wrapping_add(n) % SPAN);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}

// === Bodies ===

/// The body type of requests and origin replies.
pub(crate) type Body = UnsyncBoxBody<Bytes, Infallible>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub(crate) fn empty() -> Body {
    Empty::new().boxed_unsync()
}

/// A chunked body made of these chunks.
pub(crate) fn chunks(list: Vec<Bytes>) -> Body {
    let frames = list.into_iter().map(|c| Ok(Frame::data(c)));
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

/// A chunked body whose chunks are sent through `tx`; it ends when `tx` is dropped.
pub(crate) fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel(8);
    (tx, ChannelBody(rx).boxed_unsync())
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

// === Responses as a client sees them ===

/// A whole response.
#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: StatusCode,
    /// A reason phrase other than the canonical one.
    pub(crate) reason: Option<String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Resp {
    pub(crate) fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Every value of a header.
    pub(crate) fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    /// Panics if any `Grip-*` header reached the client.
    #[track_caller]
    pub(crate) fn assert_no_grip_headers(&self) {
        let grip: Vec<&str> = self
            .headers
            .keys()
            .map(HeaderName::as_str)
            .filter(|n| n.starts_with("grip-"))
            .collect();
        assert!(
            grip.is_empty(),
            "Grip-* headers reached the client: {grip:?}"
        );
    }

    /// Panics unless this is the proxy's own short plain-text error with this status.
    #[track_caller]
    pub(crate) fn assert_proxy_error(&self, status: u16) {
        assert_eq!(self.status, status, "body: {:?}", self.body);
        let ct = self.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("text/plain"), "content-type {ct:?}");
        assert!(
            !self.body.is_empty() && self.body.len() < 200,
            "{:?}",
            self.body
        );
    }
}

// === hyper client ===

/// A request to `path`; `Host` is added when sent if not set.
pub(crate) fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(path)
}

/// One client connection (keep-alive: several requests may be sent on it, one after another).
pub(crate) struct Conn {
    addr: SocketAddr,
    sender: SendRequest<Body>,
}

impl Conn {
    pub(crate) async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { addr, sender }
    }

    /// Sends a request and returns the response head with its body unread.
    pub(crate) async fn send_head(&mut self, mut req: Request<Body>) -> Response<Incoming> {
        if !req.headers().contains_key(http::header::HOST) {
            let host = HeaderValue::from_str(&self.addr.to_string()).unwrap();
            req.headers_mut().insert(http::header::HOST, host);
        }
        self.sender.ready().await.unwrap();
        self.sender.send_request(req).await.unwrap()
    }

    pub(crate) async fn send(&mut self, req: Request<Body>) -> Resp {
        let resp = self.send_head(req).await;
        read_body(resp).await
    }
}

pub(crate) async fn read_body(resp: Response<Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    Resp {
        status: parts.status,
        reason: parts
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned()),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// Sends one request on a new connection. Not bounded: wrap it in `within`.
pub(crate) async fn send(addr: SocketAddr, req: Request<Body>) -> Resp {
    Conn::open(addr).await.send(req).await
}

/// GETs `path` on a new connection. Not bounded: wrap it in `within`.
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Resp {
    send(addr, request("GET", path).body(empty()).unwrap()).await
}

/// A request running in its own task (e.g. a client about to be held).
pub(crate) struct Pending(JoinHandle<Resp>);

impl Pending {
    /// Runs `request` (e.g. `send(addr, req)`) in a task of its own.
    pub(crate) fn spawn(request: impl Future<Output = Resp> + Send + 'static) -> Pending {
        Pending(tokio::spawn(request))
    }

    pub(crate) fn get(addr: SocketAddr, path: &str) -> Pending {
        let path = path.to_owned();
        Pending(tokio::spawn(async move { get(addr, &path).await }))
    }

    /// Its response, within `LIMIT`.
    #[track_caller]
    pub(crate) fn response(self) -> impl Future<Output = Resp> {
        let joined = within(LIMIT, self.0);
        async move { joined.await.unwrap() }
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

// === raw TCP client ===

/// A client connection that writes bytes as given (hop-by-hop headers, HTTP/1.0, a head without its body) and
/// parses responses itself.
pub(crate) struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub(crate) async fn open(addr: SocketAddr) -> RawConn {
        RawConn {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    pub(crate) async fn write(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads one response: its head, then a body delimited by `Content-Length`, chunks, or the end of the
    /// connection. Not bounded: wrap it in `within`.
    pub(crate) async fn read_response(&mut self) -> Resp {
        let mut resp = self.read_head().await;
        let no_body = resp.status.is_informational()
            || resp.status == StatusCode::NO_CONTENT
            || resp.status == StatusCode::NOT_MODIFIED;
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|te| te.contains("chunked"));
        let length = resp.header("content-length").map(|l| l.parse().unwrap());
        resp.body = if no_body {
            Bytes::new()
        } else if chunked {
            self.read_chunked().await
        } else if let Some(len) = length {
            self.read_exact(len).await
        } else {
            while self.fill().await {}
            std::mem::take(&mut self.buf).into()
        };
        resp
    }

    /// Reads a response head only (a stream's: its body is read piece by piece with [`RawConn::next_chunk`]).
    pub(crate) async fn read_head(&mut self) -> Resp {
        let (resp, head_len) = loop {
            if let Some(parsed) = parse_head(&self.buf) {
                break parsed;
            }
            assert!(
                self.fill().await,
                "connection closed before a response head"
            );
        };
        self.buf.drain(..head_len);
        resp
    }

    /// Reads the next chunk of a chunked body: `None` for the last chunk (trailers read too). Panics if the
    /// connection closes first. Not bounded: wrap it in `within`.
    pub(crate) async fn next_chunk(&mut self) -> Option<Bytes> {
        let line = self.read_line().await;
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            while !self.read_line().await.is_empty() {}
            return None;
        }
        let data = self.read_exact(size).await;
        assert!(
            self.read_line().await.is_empty(),
            "chunk not followed by CRLF"
        );
        Some(data)
    }

    /// Reads until `n` bytes of a close-delimited body are here, and takes them.
    pub(crate) async fn next_bytes(&mut self, n: usize) -> Bytes {
        self.read_exact(n).await
    }

    /// The connection's socket, for tests that stop reading or shut a direction down.
    pub(crate) fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Whether the server closed the connection (reads until EOF; data is an error).
    pub(crate) async fn closed(&mut self) -> bool {
        !self.fill().await && self.buf.is_empty()
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn read_exact(&mut self, len: usize) -> Bytes {
        while self.buf.len() < len {
            assert!(self.fill().await, "connection closed inside a body");
        }
        self.buf.drain(..len).collect::<Vec<u8>>().into()
    }

    async fn read_line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..i].to_vec()).unwrap();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await, "connection closed inside a chunked body");
        }
    }

    async fn read_chunked(&mut self) -> Bytes {
        let mut body = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            body.extend_from_slice(&chunk);
        }
        body.into()
    }
}

fn parse_head(buf: &[u8]) -> Option<(Resp, usize)> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut slots);
    let len = match parsed.parse(buf).unwrap() {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return None,
    };
    let mut headers = HeaderMap::new();
    for h in parsed.headers.iter() {
        headers.append(
            HeaderName::from_bytes(h.name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(h.value).unwrap(),
        );
    }
    let resp = Resp {
        status: StatusCode::from_u16(parsed.code.unwrap()).unwrap(),
        reason: parsed.reason.map(str::to_owned),
        headers,
        body: Bytes::new(),
    };
    Some((resp, len))
}

// === Origin ===

/// A request as the origin received it.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    /// 0 for the first request the origin received, then 1, ...
    pub(crate) seq: usize,
    pub(crate) method: Method,
    /// Path and query.
    pub(crate) uri: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Recorded {
    pub(crate) fn path(&self) -> &str {
        self.uri.split('?').next().unwrap()
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Names of the `Grip-*` headers received.
    pub(crate) fn grip_headers(&self) -> Vec<&str> {
        self.headers
            .keys()
            .map(HeaderName::as_str)
            .filter(|n| n.starts_with("grip-"))
            .collect()
    }
}

/// What the origin answers.
pub(crate) struct Reply {
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Body,
    delay: Duration,
}

impl Reply {
    pub(crate) fn status(code: u16) -> Reply {
        Reply {
            status: StatusCode::from_u16(code).unwrap(),
            headers: Vec::new(),
            body: empty(),
            delay: Duration::ZERO,
        }
    }

    /// `200` with this body.
    pub(crate) fn text(body: &str) -> Reply {
        Reply::status(200).body(body.to_owned())
    }

    /// `200`, `Grip-Hold: response` and this `Grip-Channel` value, body `held\n`.
    pub(crate) fn hold(channel: &str) -> Reply {
        Reply::text("held\n")
            .header("Grip-Hold", "response")
            .header("Grip-Channel", channel)
    }

    /// Adds a header (repeatable).
    pub(crate) fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        ));
        self
    }

    pub(crate) fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = full(body);
        self
    }

    /// A chunked body, sent as the test feeds it.
    pub(crate) fn streamed(mut self, body: Body) -> Reply {
        self.body = body;
        self
    }

    /// Waits this long before answering.
    pub(crate) fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

struct Log {
    requests: Mutex<Vec<Recorded>>,
    count: watch::Sender<usize>,
}

impl Log {
    /// Waits (within `LIMIT`, from the caller's line) until request number `n` (0-based) has arrived; returns it.
    #[track_caller]
    fn nth(&self, n: usize) -> impl Future<Output = Recorded> + '_ {
        let mut count = self.count.subscribe();
        let arrived = within(LIMIT, async move {
            count.wait_for(|c| *c > n).await.unwrap();
        });
        async move {
            arrived.await;
            self.requests.lock()[n].clone()
        }
    }

    fn record(&self, parts: http::request::Parts, body: Bytes) -> Recorded {
        let mut requests = self.requests.lock();
        let rec = Recorded {
            seq: requests.len(),
            method: parts.method,
            uri: parts.uri.to_string(),
            headers: parts.headers,
            body,
        };
        requests.push(rec.clone());
        self.count.send_replace(requests.len());
        rec
    }
}

/// A real HTTP/1.1 server on 127.0.0.1:0 that records every request (head and whole body) before its handler
/// answers. Stops (with all its connections) on drop.
pub(crate) struct Origin {
    addr: SocketAddr,
    log: Arc<Log>,
    task: JoinHandle<()>,
}

impl Origin {
    pub(crate) async fn start<H>(handler: H) -> Origin
    where
        H: Fn(&Recorded) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Log {
            requests: Mutex::new(Vec::new()),
            count: watch::channel(0).0,
        });
        let handler = Arc::new(handler);
        let task = tokio::spawn(serve_origin(listener, log.clone(), handler));
        Origin { addr, log, task }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything received so far.
    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.log.requests.lock().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.log.requests.lock().len()
    }

    /// Waits (within `LIMIT`) until request number `n` (0-based) has arrived, and returns it.
    #[track_caller]
    pub(crate) fn nth(&self, n: usize) -> impl Future<Output = Recorded> + '_ {
        self.log.nth(n)
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An origin's request handling: the request is recorded (whole body) before the handler's reply is sent.
fn recording<H>(
    log: Arc<Log>,
    handler: Arc<H>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
where
    H: Fn(&Recorded) -> Reply + Send + Sync + 'static,
{
    hyper::service::service_fn(move |req: Request<Incoming>| {
        let (log, handler) = (log.clone(), handler.clone());
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let reply = handler(&log.record(parts, body));
            tokio::time::sleep(reply.delay).await;
            let mut resp = Response::new(reply.body);
            *resp.status_mut() = reply.status;
            for (name, value) in reply.headers {
                resp.headers_mut().append(name, value);
            }
            Ok::<_, Infallible>(resp)
        }
    })
}

async fn serve_origin<H>(listener: TcpListener, log: Arc<Log>, handler: Arc<H>)
where
    H: Fn(&Recorded) -> Reply + Send + Sync + 'static,
{
    // Owned here so that aborting this task closes every connection too.
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while conns.try_join_next().is_some() {}
        let service = recording(log.clone(), handler.clone());
        conns.spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service),
        );
    }
}

/// What a scripted origin does after writing its answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Wait for the next request on the same connection.
    KeepOpen,
    /// Close the connection.
    Close,
}

/// The answer a script gives: the bytes for a request head and its index on its connection, and what then.
type Script = dyn Fn(&str, usize) -> (Vec<u8>, After) + Send + Sync;

/// A raw TCP origin for what a well-behaved server will not do: answers each request head with bytes from a
/// script (broken, ambiguous or stalling responses), counting connections and recording requests.
pub(crate) struct ScriptOrigin {
    addr: SocketAddr,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    requests: Arc<Mutex<Vec<(usize, String)>>>,
    task: JoinHandle<()>,
}

impl ScriptOrigin {
    /// `script(request head, its index on its connection) -> (answer, after)`.
    pub(crate) async fn start(
        script: impl Fn(&str, usize) -> (Vec<u8>, After) + Send + Sync + 'static,
    ) -> ScriptOrigin {
        let script: Arc<Script> = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (conns, reqs) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let index = conns.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(serve_script(stream, index, script.clone(), reqs.clone()));
            }
        });
        ScriptOrigin {
            addr,
            connections,
            requests,
            task,
        }
    }

    /// An origin that answers every request with `answer` (maybe nothing) and closes the connection.
    pub(crate) async fn answering(answer: impl Into<Vec<u8>>) -> ScriptOrigin {
        let answer = answer.into();
        ScriptOrigin::start(move |_, _| (answer.clone(), After::Close)).await
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The connection index each request arrived on, in order.
    pub(crate) fn request_connections(&self) -> Vec<usize> {
        self.requests.lock().iter().map(|(c, _)| *c).collect()
    }
}

impl Drop for ScriptOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_script(
    mut stream: TcpStream,
    index: usize,
    script: Arc<Script>,
    requests: Arc<Mutex<Vec<(usize, String)>>>,
) {
    let mut buf = Vec::new();
    for on_conn in 0.. {
        let end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        requests.lock().push((index, head.clone()));
        let (answer, after) = script(&head, on_conn);
        if stream.write_all(&answer).await.is_err() || after == After::Close {
            return;
        }
    }
}

// === Proxy ===

/// The proxy's config: TOML snippets, then the listeners on 127.0.0.1:0.
pub(crate) struct ProxyBuilder {
    toml: String,
}

impl ProxyBuilder {
    /// Adds TOML (a section such as `[hold]\nmin_timeout_secs = 1`, or `[[routes]]`).
    pub(crate) fn toml(mut self, text: &str) -> ProxyBuilder {
        self.toml.push_str(text);
        self.toml.push('\n');
        self
    }

    pub(crate) async fn start(self) -> Proxy {
        let mut config = Config::from_toml_str(&self.toml)
            .unwrap_or_else(|e| panic!("test config: {e}\n{}", self.toml));
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.control_listen = "127.0.0.1:0".parse().unwrap();
        let app = App::start(config).await.unwrap();
        Proxy { app: Some(app) }
    }
}

/// The proxy running in-process. Dropping it stops its listeners; `shutdown` stops it in order.
pub(crate) struct Proxy {
    app: Option<App>,
}

impl Proxy {
    /// A proxy whose one route sends everything to `origin`; add settings with `.toml(..)`.
    pub(crate) fn to(origin: SocketAddr) -> ProxyBuilder {
        Proxy::with_routes(&format!("[[routes]]\norigin = \"http://{origin}\""))
    }

    /// A proxy with these `[[routes]]`.
    pub(crate) fn with_routes(routes: &str) -> ProxyBuilder {
        ProxyBuilder {
            toml: String::new(),
        }
        .toml(routes)
    }

    /// A proxy in front of `origin` with the default settings.
    pub(crate) async fn start(origin: SocketAddr) -> Proxy {
        Proxy::to(origin).start().await
    }

    /// The running app (its reloader, metrics listener, bus).
    pub(crate) fn app(&self) -> &App {
        self.app.as_ref().unwrap()
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.app().proxy_addr()
    }

    pub(crate) fn control_addr(&self) -> SocketAddr {
        self.app().control_addr()
    }

    pub(crate) fn registry(&self) -> &Registry {
        self.app().registry()
    }

    /// Waits (within `LIMIT`) until exactly `n` clients are parked.
    #[track_caller]
    pub(crate) fn wait_held(&self, n: usize) -> impl Future<Output = ()> + '_ {
        within(LIMIT, self.registry().wait_held(move |held| held == n))
    }

    /// GETs `path` through the proxy on a new connection, within `LIMIT`.
    #[track_caller]
    pub(crate) fn get<'a>(&self, path: &'a str) -> impl Future<Output = Resp> + 'a {
        within(LIMIT, get(self.addr(), path))
    }

    /// Sends a request through the proxy on a new connection, within `LIMIT`.
    #[track_caller]
    pub(crate) fn send(&self, req: Request<Body>) -> impl Future<Output = Resp> {
        within(LIMIT, send(self.addr(), req))
    }

    /// Stops as the binary does on SIGTERM, within `LIMIT`.
    pub(crate) async fn shutdown(mut self) {
        let app = self.app.take().unwrap();
        within(LIMIT, app.shutdown()).await;
    }
}

// === Publishing ===

/// POSTs `body` to the control API's `/publish/`, within `LIMIT`.
#[track_caller]
pub(crate) fn publish(proxy: &Proxy, body: Value) -> impl Future<Output = Resp> {
    let req = request("POST", "/publish/")
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap();
    within(LIMIT, send(proxy.control_addr(), req))
}

/// An item with an `http-response` format holding `body`.
pub(crate) fn item(channel: &str, body: &str) -> Value {
    json!({"channel": channel, "formats": {"http-response": {"body": body}}})
}

/// Sends signal `name` (e.g. `TERM`, `HUP`) to a spawned process, and checks it was delivered.
pub(crate) fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name} {pid} failed");
}

/// Connects to `addr` until it accepts (the binary prints nothing about readiness), within `LIMIT`; fails at
/// once if the process exits meanwhile.
pub(crate) async fn wait_listening(addr: std::net::SocketAddr, child: &mut tokio::process::Child) {
    within(LIMIT, async {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "grip-proxy exited early"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// An item on `channel` with an id, a prev-id if given, and a body.
pub(crate) fn numbered(channel: &str, id: u64, prev_id: Option<u64>, body: &str) -> Value {
    let mut item = item(channel, body);
    item["id"] = serde_json::json!(id.to_string());
    if let Some(prev) = prev_id {
        item["prev-id"] = serde_json::json!(prev.to_string());
    }
    item
}

/// `{"items": [..]}`.
pub(crate) fn items(list: &[Value]) -> Value {
    json!({ "items": list })
}

/// A JWT signed HS256 with `key` (publish credentials, upstream `Grip-Sig`).
pub(crate) fn hs256(key: &[u8], claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap()
}

// === TLS: certificates made at test time, HTTPS origins ===

/// A CA and the certificates it issues, made with rcgen at test time; PEM files in a temporary directory; an
/// HTTPS origin (hyper over tokio-rustls) that records requests and counts full and resumed handshakes.
pub(crate) mod tls {
    use super::*;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

    /// A certificate and its key (the chain holds the certificate only: the CA is the trust anchor).
    pub(crate) struct Leaf {
        pub(crate) cert_pem: String,
        pub(crate) key_pem: String,
        pub(crate) der: CertificateDer<'static>,
        key_der: Vec<u8>,
    }

    impl Leaf {
        fn of(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> Leaf {
            Leaf {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                der: cert.der().clone(),
                key_der: key.serialize_der(),
            }
        }

        /// A rustls server config presenting this certificate (default session cache: sessions resume).
        pub(crate) fn server_config(&self) -> Arc<rustls::ServerConfig> {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.der.clone()], key)
            .unwrap();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        }
    }

    /// A test CA.
    pub(crate) struct Ca {
        cert: rcgen::Certificate,
        key: rcgen::KeyPair,
    }

    impl Ca {
        pub(crate) fn new(name: &str) -> Ca {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Ca { cert, key }
        }

        pub(crate) fn pem(&self) -> String {
            self.cert.pem()
        }

        /// A certificate for `names` (DNS names or IP addresses), valid now.
        pub(crate) fn leaf(&self, names: &[&str]) -> Leaf {
            self.issue(names, false)
        }

        /// A certificate for `names` that expired years ago.
        pub(crate) fn expired_leaf(&self, names: &[&str]) -> Leaf {
            self.issue(names, true)
        }

        fn issue(&self, names: &[&str], expired: bool) -> Leaf {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = rcgen::CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "test origin");
            if expired {
                params.not_before = rcgen::date_time_ymd(2001, 1, 1);
                params.not_after = rcgen::date_time_ymd(2002, 1, 1);
            }
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            Leaf::of(&cert, &key)
        }
    }

    /// A self-signed certificate for `names`.
    pub(crate) fn self_signed(names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::generate_simple_self_signed(names).unwrap();
        Leaf::of(&cert.cert, &cert.key_pair)
    }

    /// A directory of its own under the system's temporary directory, removed on drop.
    pub(crate) struct TempDir(std::path::PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> TempDir {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "grip-proxy-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        /// The path of `name` in the directory (which may not exist).
        pub(crate) fn path(&self, name: &str) -> std::path::PathBuf {
            self.0.join(name)
        }

        /// Writes `name` in the directory; its path.
        pub(crate) fn file(&self, name: &str, contents: &str) -> std::path::PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// TLS handshakes an origin completed, by kind, and those that failed.
    #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Handshakes {
        pub(crate) full: usize,
        pub(crate) resumed: usize,
        pub(crate) failed: usize,
    }

    /// An HTTPS origin on 127.0.0.1:0: records every request as [`Origin`] does, answers with `handler`, counts
    /// handshakes. Stops (with all its connections) on drop.
    pub(crate) struct TlsOrigin {
        addr: SocketAddr,
        log: Arc<Log>,
        handshakes: Arc<Mutex<Handshakes>>,
        task: JoinHandle<()>,
    }

    impl TlsOrigin {
        pub(crate) async fn start<H>(config: Arc<rustls::ServerConfig>, handler: H) -> TlsOrigin
        where
            H: Fn(&Recorded) -> Reply + Send + Sync + 'static,
        {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let log = Arc::new(Log {
                requests: Mutex::new(Vec::new()),
                count: watch::channel(0).0,
            });
            let handshakes = Arc::new(Mutex::new(Handshakes::default()));
            let task = tokio::spawn(serve_tls(
                listener,
                tokio_rustls::TlsAcceptor::from(config),
                log.clone(),
                handshakes.clone(),
                Arc::new(handler),
            ));
            TlsOrigin {
                addr,
                log,
                handshakes,
                task,
            }
        }

        pub(crate) fn addr(&self) -> SocketAddr {
            self.addr
        }

        pub(crate) fn count(&self) -> usize {
            self.log.requests.lock().len()
        }

        pub(crate) fn requests(&self) -> Vec<Recorded> {
            self.log.requests.lock().clone()
        }

        pub(crate) fn handshakes(&self) -> Handshakes {
            *self.handshakes.lock()
        }

        /// Waits (within `LIMIT`) until request number `n` (0-based) has arrived, and returns it.
        #[track_caller]
        pub(crate) fn nth(&self, n: usize) -> impl Future<Output = Recorded> + '_ {
            self.log.nth(n)
        }
    }

    impl Drop for TlsOrigin {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve_tls<H>(
        listener: TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        log: Arc<Log>,
        handshakes: Arc<Mutex<Handshakes>>,
        handler: Arc<H>,
    ) where
        H: Fn(&Recorded) -> Reply + Send + Sync + 'static,
    {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            while conns.try_join_next().is_some() {}
            let (acceptor, log, handler, handshakes) = (
                acceptor.clone(),
                log.clone(),
                handler.clone(),
                handshakes.clone(),
            );
            conns.spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    handshakes.lock().failed += 1;
                    return;
                };
                match stream.get_ref().1.handshake_kind() {
                    Some(rustls::HandshakeKind::Resumed) => handshakes.lock().resumed += 1,
                    _ => handshakes.lock().full += 1,
                }
                let service = super::recording(log, handler);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}
