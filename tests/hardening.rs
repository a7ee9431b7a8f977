//! Regression tests over real sockets for the denial-of-service and validation fixes: request trailers, slow
//! bodies and slow readers, `Host`, 1xx finals, client errors, origin heads, channel lists, paths, token leeway.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

// === Helpers ===

/// Opens a connection, writes `bytes`, and reads one response, each within `LIMIT`.
#[track_caller]
fn raw_exchange(addr: SocketAddr, bytes: Vec<u8>) -> impl std::future::Future<Output = Resp> {
    within(LIMIT, async move {
        let mut conn = RawConn::open(addr).await;
        conn.write(&bytes).await;
        conn.read_response().await
    })
}

/// A `GET` of `target` (with `Host: x`), as raw bytes.
fn raw_get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

/// The sum over every `kind` of `grip_proxy_origin_errors_total`, scraped from the control listener.
async fn origin_errors(proxy: &Proxy) -> f64 {
    let resp = within(LIMIT, get(proxy.control_addr(), "/metrics")).await;
    assert_eq!(resp.status, 200);
    let series: Vec<f64> = resp
        .text()
        .lines()
        .filter(|l| l.starts_with("grip_proxy_origin_errors_total{"))
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(
        !series.is_empty(),
        "no grip_proxy_origin_errors_total in\n{}",
        resp.text()
    );
    series.iter().sum()
}

/// An origin that echoes the request body it received.
async fn echo_origin() -> Origin {
    Origin::start(|req| Reply::status(200).body(req.body.clone())).await
}

/// `n` bytes of a repeating pattern, so that a reordered or truncated copy does not compare equal.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A raw origin that records each request head the moment it arrives (before any body), reads a
/// `Content-Length` body, and answers `200 ok`. Stops (with its connections) on drop.
struct HeadOrigin {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl HeadOrigin {
    async fn start() -> HeadOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let log = heads.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                conns.spawn(serve_heads(stream, log.clone()));
            }
        });
        HeadOrigin { addr, heads, task }
    }

    /// The request heads received so far.
    fn heads(&self) -> Vec<String> {
        self.heads.lock().clone()
    }
}

impl Drop for HeadOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_heads(mut stream: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        heads.lock().push(head.clone());
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.trim().parse().unwrap());
        while buf.len() < length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
    }
}

// === 1. Trailer limit ===

/// A chunked POST of `hello` whose trailer section starts with these bytes.
fn post_with_trailers(trailers: &[u8]) -> Vec<u8> {
    let mut out =
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
            .to_vec();
    out.extend_from_slice(trailers);
    out
}

/// One trailer field line of exactly `len` bytes (its CRLF not counted), with its CRLF.
fn trailer_line(len: usize) -> Vec<u8> {
    let mut line = b"X-Pad: ".to_vec();
    line.resize(len, b'p');
    line.extend_from_slice(b"\r\n");
    line
}

/// Writes `start`, then `a` bytes without end (until the connection fails, or 64 MiB), while reading what the
/// proxy answers. Returns the response's status line once a whole response (head and `Content-Length` body) is
/// read, within `LIMIT`; the writer is then stopped, and the proxy must close the connection within `LIMIT`.
async fn answer_to_an_endless_request(addr: SocketAddr, start: Vec<u8>) -> String {
    let stream = within(LIMIT, TcpStream::connect(addr)).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(&start).await.is_err() {
            return;
        }
        let filler = vec![b'a'; 1024];
        for _ in 0..64 * 1024 {
            if wr.write_all(&filler).await.is_err() {
                return;
            }
        }
    });
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    let status_line = within(LIMIT, async {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut slots);
            if let httparse::Status::Complete(head_len) = resp.parse(&got).unwrap() {
                let length: usize = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |h| {
                        std::str::from_utf8(h.value).unwrap().parse().unwrap()
                    });
                if got.len() >= head_len + length {
                    let text = String::from_utf8_lossy(&got);
                    break text.lines().next().unwrap().to_owned();
                }
            }
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => panic!(
                    "connection closed before a whole response: {:?}",
                    String::from_utf8_lossy(&got)
                ),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    writer.abort();
    let _ = writer.await;
    // The proxy closes: reads end (with EOF, or a reset) instead of waiting.
    within(LIMIT, async {
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    status_line
}

/// Trailers past 16 KiB, whichever side of the limit the first line ends on, and then a line that never ends:
/// the client gets a `400` (its framing error, not the origin's), the connection is closed, the origin never
/// gets more than the body, and the proxy still serves others.
#[tokio::test]
async fn trailers_growing_past_16_kib_are_a_400_and_the_connection_closes() {
    let origin = Origin::start(|req| Reply::text(&format!("got {} bytes", req.body.len()))).await;
    let proxy = Proxy::start(origin.addr()).await;

    for first_line in [16_383, 16_384] {
        let mut start = trailer_line(first_line);
        start.extend_from_slice(b"X-Endless: ");
        let status = answer_to_an_endless_request(proxy.addr(), post_with_trailers(&start)).await;
        assert!(
            status.starts_with("HTTP/1.1 400 "),
            "first trailer line of {first_line} bytes: {status}"
        );
        for req in origin.requests() {
            assert!(
                req.body.len() <= 5,
                "the origin got {} body bytes",
                req.body.len()
            );
        }
        assert_eq!(proxy.get("/after").await.status, 200, "{first_line}");
    }
}

/// A trailer line well under the limit is read and dropped: the origin gets the body.
#[tokio::test]
async fn a_trailer_line_under_the_limit_is_accepted() {
    let origin = echo_origin().await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut trailers = trailer_line(100);
    trailers.extend_from_slice(b"\r\n");

    let resp = raw_exchange(proxy.addr(), post_with_trailers(&trailers)).await;

    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello");
    assert_eq!(origin.nth(0).await.body, "hello");
}

// === 2. Slow request bodies ===

const STALLED_POST: &[u8] = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nx";

/// Clients that send one byte of a small body and stall take no origin concurrency permit: with two permits and
/// three stalled uploads, a `GET` is still answered by the origin at once (not after the response timeout).
#[tokio::test]
async fn stalled_small_uploads_do_not_take_the_origin_concurrency_permits() {
    let origin = Origin::start(|req| Reply::text(&format!("got {} bytes", req.body.len()))).await;
    let proxy = Proxy::to(origin.addr())
        .toml("[origin]\nmax_concurrent_requests = 2\nresponse_timeout_secs = 20")
        .start()
        .await;
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut conn = within(LIMIT, RawConn::open(proxy.addr())).await;
        within(LIMIT, conn.write(STALLED_POST)).await;
        stalled.push(conn);
    }

    let resp = proxy.get("/fast").await;

    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "got 0 bytes");
    drop(stalled);
}

/// A small body that stops arriving for `proxy.body_read_timeout_secs` is a `408` and a closed connection; the
/// origin never saw the request, and no origin error is counted.
#[tokio::test]
async fn a_stalled_small_upload_is_a_408_and_never_reaches_the_origin() {
    let origin = HeadOrigin::start().await;
    let proxy = Proxy::to(origin.addr)
        .toml("[proxy]\nbody_read_timeout_secs = 1")
        .start()
        .await;
    let errors_before = origin_errors(&proxy).await;
    let mut conn = within(LIMIT, RawConn::open(proxy.addr())).await;
    within(LIMIT, conn.write(STALLED_POST)).await;

    let resp = within(LIMIT, conn.read_response()).await;

    resp.assert_proxy_error(408);
    assert!(within(LIMIT, conn.closed()).await, "connection left open");
    assert_eq!(origin.heads(), Vec::<String>::new());
    assert_eq!(origin_errors(&proxy).await, errors_before);
    assert_eq!(proxy.get("/next").await.text(), "ok");
}

/// A body larger than `proxy.request_buffer_size` that stalls once it is streaming to the origin is a `408`
/// too (the client's fault), not blamed on the origin.
#[tokio::test]
async fn a_large_upload_stalling_mid_stream_is_a_408_not_an_origin_error() {
    let origin = echo_origin().await;
    let proxy = Proxy::to(origin.addr())
        .toml("[proxy]\nbody_read_timeout_secs = 1\nrequest_buffer_size = 1024")
        .start()
        .await;
    let errors_before = origin_errors(&proxy).await;
    let mut conn = within(LIMIT, RawConn::open(proxy.addr())).await;
    let mut req = b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".to_vec();
    req.extend_from_slice(&pattern(4096));
    within(LIMIT, conn.write(&req)).await;

    let resp = within(LIMIT, conn.read_response()).await;

    resp.assert_proxy_error(408);
    assert!(within(LIMIT, conn.closed()).await, "connection left open");
    assert_eq!(origin_errors(&proxy).await, errors_before);
}

/// Bodies below, at and above `proxy.request_buffer_size`, declared or chunked, reach the origin whole.
#[tokio::test]
async fn bodies_around_the_request_buffer_size_reach_the_origin_whole() {
    let origin = echo_origin().await;
    let proxy = Proxy::to(origin.addr())
        .toml("[proxy]\nrequest_buffer_size = 1024")
        .start()
        .await;

    for len in [1000, 1024, 1025, 4096] {
        let body = Bytes::from(pattern(len));
        let declared = request("POST", "/up").body(full(body.clone())).unwrap();
        let resp = proxy.send(declared).await;
        assert_eq!(resp.status, 200, "{len} bytes declared");
        assert!(resp.body == body, "{len} bytes declared: body differs");

        let pieces = body.chunks(300).map(Bytes::copy_from_slice).collect();
        let chunked = request("POST", "/up").body(chunks(pieces)).unwrap();
        let resp = proxy.send(chunked).await;
        assert_eq!(resp.status, 200, "{len} bytes chunked");
        assert!(resp.body == body, "{len} bytes chunked: body differs");
    }
}

// === 3. Write timeout ===

/// An origin that answers every request with a chunked body that never ends, and reports (bytes written, error)
/// when a write fails.
struct EndlessOrigin {
    addr: SocketAddr,
    failures: mpsc::UnboundedReceiver<(u64, io::Error)>,
    task: JoinHandle<()>,
}

impl EndlessOrigin {
    async fn start() -> EndlessOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, failures) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                conns.spawn(stream_without_end(stream, tx.clone()));
            }
        });
        EndlessOrigin {
            addr,
            failures,
            task,
        }
    }
}

impl Drop for EndlessOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stream_without_end(
    mut stream: TcpStream,
    failed: mpsc::UnboundedSender<(u64, io::Error)>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let mut chunk = b"10000\r\n".to_vec();
    chunk.resize(chunk.len() + 0x10000, b'z');
    chunk.extend_from_slice(b"\r\n");
    let mut written: u64 = 0;
    let start = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    if let Err(e) = stream.write_all(start).await {
        let _ = failed.send((written, e));
        return;
    }
    loop {
        if let Err(e) = stream.write_all(&chunk).await {
            let _ = failed.send((written, e));
            return;
        }
        written += chunk.len() as u64;
    }
}

/// A client that stops reading a response is cut off after `proxy.write_timeout_secs`: its connection is
/// closed and the origin connection feeding it is dropped (the origin's writes fail).
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_the_origin_connection_dropped() {
    let mut origin = EndlessOrigin::start().await;
    let proxy = Proxy::to(origin.addr)
        .toml("[proxy]\nwrite_timeout_secs = 1")
        .start()
        .await;
    let mut client = within(LIMIT, TcpStream::connect(proxy.addr()))
        .await
        .unwrap();
    within(
        LIMIT,
        client.write_all(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await
    .unwrap();

    // The client never reads: the buffers fill, then the proxy must give up on it.
    let (written, error) = within(Duration::from_secs(15), origin.failures.recv())
        .await
        .unwrap();

    assert!(
        written > 0,
        "the origin wrote nothing before failing: {error}"
    );
    // The client's connection was closed too: reading what was buffered for it reaches its end (EOF, or a reset).
    let mut sink = Vec::new();
    let _ = within(LIMIT, client.read_to_end(&mut sink)).await;
}

// === 4. Host header ===

/// RFC 9112 section 3.2: an HTTP/1.1 request without `Host`, with several, with an invalid one, or whose
/// absolute-form target names another host is a `400`, and the origin sees none of them.
#[tokio::test]
async fn a_missing_repeated_invalid_or_conflicting_host_is_a_400() {
    let origin = Origin::start(|req| Reply::text(&req.uri)).await;
    let proxy = Proxy::start(origin.addr()).await;
    let cases = [
        ("no Host", "GET / HTTP/1.1\r\n\r\n"),
        (
            "two different Host lines",
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
        (
            "two identical Host lines",
            "GET / HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
        ),
        ("a space in Host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n"),
        ("a slash in Host", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"),
        (
            "an absolute-form target naming another host",
            "GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
        ),
    ];

    for (what, raw) in cases {
        let resp = raw_exchange(proxy.addr(), raw.as_bytes().to_vec()).await;
        assert_eq!(resp.status, 400, "{what}: {:?}", resp.body);
        resp.assert_proxy_error(400);
    }

    assert_eq!(origin.count(), 0, "the origin saw {:?}", origin.requests());
}

/// An absolute-form target with an agreeing `Host`, and an HTTP/1.0 request without `Host`, are forwarded.
#[tokio::test]
async fn an_agreeing_absolute_form_and_http_1_0_without_host_are_forwarded() {
    let origin = Origin::start(|req| Reply::text(&req.uri)).await;
    let proxy = Proxy::start(origin.addr()).await;

    let absolute = raw_exchange(
        proxy.addr(),
        b"GET http://a.example/x?q=1 HTTP/1.1\r\nHost: a.example\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(absolute.status, 200, "{:?}", absolute.body);
    assert_eq!(origin.nth(0).await.uri, "/x?q=1");

    let old = raw_exchange(proxy.addr(), b"GET /old HTTP/1.0\r\n\r\n".to_vec()).await;
    assert_eq!(old.status, 200, "{:?}", old.body);
    assert_eq!(old.text(), "/old");
    assert_eq!(origin.nth(1).await.uri, "/old");
}

// === 5. 1xx as a final response ===

/// A published `code` of 100, 101 or 103 is a `400` naming the field, and the held client stays held until a
/// valid publish releases it.
#[tokio::test]
async fn a_published_1xx_code_is_a_400_and_the_held_client_stays_held() {
    let origin = Origin::start(|_| Reply::hold("c")).await;
    let proxy = Proxy::start(origin.addr()).await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;

    for code in [json!(100), json!(101), json!(103), json!("101")] {
        let bad =
            json!({"channel": "c", "formats": {"http-response": {"code": code, "body": "1xx"}}});
        let resp = publish(&proxy, items(&[bad])).await;
        assert_eq!(resp.status, 400, "code {code}: {}", resp.text());
        assert!(
            resp.text().contains("items[0].formats.http-response.code"),
            "code {code}: {}",
            resp.text()
        );
        assert_eq!(proxy.registry().held_on("c"), 1, "code {code}: released");
    }

    let ok = publish(&proxy, items(&[item("c", "final")])).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let resp = client.response().await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "final");
}

/// An origin asking to hold with a 1xx `Grip-Status`, or an instruct body whose response is a 1xx, gets the
/// client a `502`, and nobody is held.
#[tokio::test]
async fn an_origin_hold_with_a_1xx_final_status_is_a_502() {
    let origin = Origin::start(|req| match req.path() {
        "/status-101" => Reply::hold("c")
            .header("Grip-Timeout", "1")
            .header("Grip-Status", "101"),
        "/status-100" => Reply::hold("c")
            .header("Grip-Timeout", "1")
            .header("Grip-Status", "100"),
        _ => Reply::text(
            r#"{"hold":{"channels":[{"name":"c"}],"timeout":1},"response":{"code":101}}"#,
        )
        .header("Content-Type", "application/grip-instruct"),
    })
    .await;
    let proxy = Proxy::to(origin.addr())
        .toml("[hold]\nmin_timeout_secs = 1")
        .start()
        .await;

    for path in ["/status-101", "/status-100", "/instruct"] {
        let resp = raw_exchange(proxy.addr(), raw_get(path)).await;
        assert_eq!(resp.status, 502, "{path}: {:?}", resp.body);
        resp.assert_proxy_error(502);
        resp.assert_no_grip_headers();
    }
    assert_eq!(proxy.registry().held(), 0);
}

// === 6. Client errors not blamed on the origin ===

/// A broken chunked body is the client's error: `400` (not `502`), and no origin error is counted.
#[tokio::test]
async fn a_broken_chunked_body_is_a_400_not_counted_as_an_origin_error() {
    let origin = Origin::start(|req| Reply::text(&format!("got {} bytes", req.body.len()))).await;
    let proxy = Proxy::start(origin.addr()).await;
    let head = "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
    let before = origin_errors(&proxy).await;

    for (what, body) in [
        ("a size that is not hex", "zz\r\n"),
        ("a bad size after a chunk", "5\r\nhello\r\nzz\r\n"),
        ("a chunk not followed by CRLF", "5\r\nhelloXX"),
    ] {
        let resp = raw_exchange(proxy.addr(), format!("{head}{body}").into_bytes()).await;
        assert_eq!(resp.status, 400, "{what}: {:?}", resp.body);
    }

    assert_eq!(origin_errors(&proxy).await, before, "origin errors counted");
}

/// A chunked body that breaks after more than `proxy.request_buffer_size` bytes, once it is streaming to the
/// origin, is the client's error too: `400`, and no origin error is counted.
#[tokio::test]
async fn a_chunked_body_breaking_while_streamed_to_the_origin_is_a_400_not_an_origin_error() {
    let origin = Origin::start(|req| Reply::text(&format!("got {} bytes", req.body.len()))).await;
    let proxy = Proxy::to(origin.addr())
        .toml("[proxy]\nrequest_buffer_size = 1024")
        .start()
        .await;
    let before = origin_errors(&proxy).await;
    let mut req =
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n".to_vec();
    req.extend_from_slice(&pattern(0x800));
    req.extend_from_slice(b"\r\nzz\r\n");

    let resp = raw_exchange(proxy.addr(), req).await;

    assert_eq!(resp.status, 400, "{:?}", resp.body);
    assert_eq!(origin_errors(&proxy).await, before, "origin errors counted");
}

// === 7. Origin response head limit ===

/// A response head of `len` bytes (its blank line included): one long header.
fn response_head_of(len: usize) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-big: ".to_vec();
    out.resize(len - 4, b'b');
    out.extend_from_slice(b"\r\n\r\nok");
    out
}

/// A 130 KB origin response head, written at once, is a `502` (limit 64 KiB), whether one long header or many.
#[tokio::test]
async fn an_origin_response_head_of_130_kb_is_a_502() {
    let many: String = (0..1300)
        .map(|i| format!("x-h{i:04}: {}\r\n", "m".repeat(90)))
        .collect();
    let many = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{many}\r\nok");
    assert!(many.len() > 130_000);
    for (what, answer) in [
        ("one long header", response_head_of(130_000)),
        ("many headers", many.into_bytes()),
    ] {
        let origin = ScriptOrigin::answering(answer).await;
        let proxy = Proxy::start(origin.addr()).await;

        let resp = raw_exchange(proxy.addr(), raw_get("/")).await;

        assert_eq!(resp.status, 502, "{what}");
        resp.assert_proxy_error(502);
    }
}

/// An origin response head just under 64 KiB passes whole.
#[tokio::test]
async fn an_origin_response_head_just_under_64_kib_passes() {
    let origin = ScriptOrigin::answering(response_head_of(65_000)).await;
    let proxy = Proxy::start(origin.addr()).await;

    let resp = raw_exchange(proxy.addr(), raw_get("/")).await;

    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok");
    assert!(resp.header("x-big").unwrap().len() > 64_000);
}

// === 8. Channel list ===

/// A hold naming 9,000 distinct channels is a `502` (more than `hold.max_channels`), and nobody is held.
#[tokio::test]
async fn a_hold_naming_9000_distinct_channels_is_a_502() {
    let names: Vec<String> = (0..9000).map(|i| format!("{i:x}")).collect();
    let list = names.join(",");
    let origin = Origin::start(move |_| Reply::hold(&list)).await;
    let proxy = Proxy::start(origin.addr()).await;

    let resp = proxy.get("/").await;

    resp.assert_proxy_error(502);
    assert_eq!(proxy.registry().held(), 0);
}

/// A hold naming one channel 9,000 times holds the client on that channel once, and a publish to it releases it.
#[tokio::test]
async fn a_hold_naming_one_channel_9000_times_holds_on_it() {
    let list = vec!["a"; 9000].join(", ");
    let origin = Origin::start(move |_| Reply::hold(&list)).await;
    let proxy = Proxy::start(origin.addr()).await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;
    assert_eq!(proxy.registry().held_on("a"), 1);

    let ok = publish(&proxy, items(&[item("a", "for a")])).await;

    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(client.response().await.text(), "for a");
    proxy.wait_held(0).await;
}

// === 9. Route matching on a normalised path ===

/// Two origins, each answering its name, behind `/public/` (A) and the default route (B).
async fn two_routes() -> (Origin, Origin, Proxy) {
    let a = Origin::start(|_| Reply::text("A")).await;
    let b = Origin::start(|_| Reply::text("B")).await;
    let proxy = Proxy::with_routes(&format!(
        "[[routes]]\npath_prefix = \"/public/\"\norigin = \"http://{}\"\n\n[[routes]]\norigin = \"http://{}\"",
        a.addr(),
        b.addr()
    ))
    .start()
    .await;
    (a, b, proxy)
}

/// Dot segments, repeated slashes and percent-encoded unreserved characters are resolved before the route is
/// chosen, the origin gets the normalised path, and the query string goes through unchanged.
#[tokio::test]
async fn routes_match_the_normalised_path_and_the_origin_gets_it() {
    let (a, b, proxy) = two_routes().await;
    let cases = [
        ("/public/x", "A", "/public/x"),
        ("/other", "B", "/other"),
        ("/public/../private/x", "B", "/private/x"),
        ("//public/x", "A", "/public/x"),
        ("/%70ublic/x", "A", "/public/x"),
        ("/public/./x", "A", "/public/x"),
        (
            "/public/./x?a=/../b&c=%2e%2e",
            "A",
            "/public/x?a=/../b&c=%2e%2e",
        ),
    ];

    for (target, want_origin, want_uri) in cases {
        let (seen_a, seen_b) = (a.count(), b.count());
        let resp = raw_exchange(proxy.addr(), raw_get(target)).await;
        assert_eq!(resp.status, 200, "{target}: {:?}", resp.body);
        assert_eq!(resp.text(), want_origin, "{target}");
        let got = match want_origin {
            "A" => a.nth(seen_a).await,
            _ => b.nth(seen_b).await,
        };
        assert_eq!(got.uri, want_uri, "{target}");
    }
}

/// A path climbing above the root is a `400`, and neither origin sees it.
#[tokio::test]
async fn a_path_above_the_root_is_a_400() {
    let (a, b, proxy) = two_routes().await;

    for target in ["/../x", "/public/../../x"] {
        let resp = raw_exchange(proxy.addr(), raw_get(target)).await;
        assert_eq!(resp.status, 400, "{target}: {:?}", resp.body);
        resp.assert_proxy_error(400);
    }

    assert_eq!((a.count(), b.count()), (0, 0));
}

// === 10. Tokens: exp, nbf and leeway ===

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Seconds since the epoch, `delta` from now.
fn at(delta: i64) -> u64 {
    now().checked_add_signed(delta).unwrap()
}

const JWT_KEY: &[u8] = b"jwt-secret";

/// A publish JWT with `iss` and these extra claims.
fn publish_token(claims: Value) -> String {
    let mut all = json!({"iss": "publisher"});
    all.as_object_mut()
        .unwrap()
        .extend(claims.as_object().unwrap().clone());
    hs256(JWT_KEY, all)
}

/// Publishes one item on `c` with `Authorization: Bearer <token>`.
async fn publish_with(proxy: &Proxy, token: &str, body: &str) -> Resp {
    let req = request("POST", "/publish/")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .body(full(items(&[item("c", body)]).to_string()))
        .unwrap();
    within(LIMIT, send(proxy.control_addr(), req)).await
}

/// A proxy requiring HS256 publish JWTs (with these extra `[control.auth]` lines), holding every request on `c`.
async fn jwt_proxy(extra: &str) -> (Origin, Proxy) {
    let origin = Origin::start(|_| Reply::hold("c")).await;
    let proxy = Proxy::to(origin.addr())
        .toml(&format!(
            "[control.auth]\njwt_key = \"jwt-secret\"\njwt_iss = \"publisher\"\n{extra}"
        ))
        .start()
        .await;
    (origin, proxy)
}

/// Publish JWTs: `exp` 30 s past and `nbf` 60 s ahead are refused (`401`, nothing delivered); `exp` 2 s past and
/// `nbf` 2 s ahead are within the default 5 s leeway and accepted.
#[tokio::test]
async fn publish_jwts_are_checked_for_exp_and_nbf_with_a_5_second_leeway() {
    let (_origin, proxy) = jwt_proxy("").await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;

    for (what, claims) in [
        ("expired 30 s ago", json!({"exp": at(-30)})),
        ("not valid for 60 s", json!({"exp": at(600), "nbf": at(60)})),
    ] {
        let resp = publish_with(&proxy, &publish_token(claims), what).await;
        assert_eq!(resp.status, 401, "{what}: {}", resp.text());
        assert_eq!(proxy.registry().held_on("c"), 1, "{what}: delivered");
    }

    let resp = publish_with(&proxy, &publish_token(json!({"exp": at(-2)})), "late").await;
    assert_eq!(resp.status, 200, "expired 2 s ago: {}", resp.text());
    assert_eq!(client.response().await.text(), "late");
    // The release writes the answer before the client's task leaves the registry: wait until it has, so that the
    // next wait counts the next client (otherwise "early" may be published before it is parked).
    proxy.wait_held(0).await;

    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;
    let early = publish_token(json!({"exp": at(600), "nbf": at(2)}));
    let resp = publish_with(&proxy, &early, "early").await;
    assert_eq!(resp.status, 200, "valid in 2 s: {}", resp.text());
    assert_eq!(client.response().await.text(), "early");
}

/// `control.auth.jwt_leeway_secs` sets the leeway: with 0, `exp` 2 s past is refused; with 60, 30 s past passes.
#[tokio::test]
async fn the_publish_jwt_leeway_is_a_setting() {
    let (_origin, strict) = jwt_proxy("jwt_leeway_secs = 0").await;
    let resp = publish_with(&strict, &publish_token(json!({"exp": at(-2)})), "x").await;
    assert_eq!(
        resp.status,
        401,
        "leeway 0, expired 2 s ago: {}",
        resp.text()
    );

    let (_origin, lenient) = jwt_proxy("jwt_leeway_secs = 60").await;
    let resp = publish_with(&lenient, &publish_token(json!({"exp": at(-30)})), "x").await;
    assert_eq!(
        resp.status,
        200,
        "leeway 60, expired 30 s ago: {}",
        resp.text()
    );
}

// === 11. Publish validation ===

/// An item with no format, or an empty `formats`, is a `400` naming it; in a batch with a good item nothing is
/// delivered; an item with only an `http-stream` format stays accepted.
#[tokio::test]
async fn an_item_without_any_format_is_a_400_and_its_batch_delivers_nothing() {
    let origin = Origin::start(|req| Reply::hold(&req.path()[1..])).await;
    let proxy = Proxy::start(origin.addr()).await;
    let client = Pending::get(proxy.addr(), "/good");
    proxy.wait_held(1).await;
    let no_format = json!({"channel": "x"});
    let empty_formats = json!({"channel": "x", "formats": {}});

    for (what, body, named) in [
        (
            "no format",
            items(std::slice::from_ref(&no_format)),
            "items[0]",
        ),
        (
            "empty formats",
            items(std::slice::from_ref(&empty_formats)),
            "items[0]",
        ),
        (
            "a good item and one without a format",
            items(&[item("good", "from a bad batch"), no_format]),
            "items[1]",
        ),
        (
            "a good item and one with empty formats",
            items(&[item("good", "from a bad batch"), empty_formats]),
            "items[1]",
        ),
    ] {
        let resp = publish(&proxy, body).await;
        assert_eq!(resp.status, 400, "{what}: {}", resp.text());
        assert!(resp.text().contains(named), "{what}: {}", resp.text());
        assert_eq!(proxy.registry().held_on("good"), 1, "{what}: delivered");
    }

    let stream_only =
        json!({"items": [{"channel": "x", "formats": {"http-stream": {"content": "a"}}}]});
    let resp = publish(&proxy, stream_only).await;
    assert_eq!(resp.status, 200, "http-stream only: {}", resp.text());

    publish(&proxy, items(&[item("good", "valid")])).await;
    assert_eq!(client.response().await.text(), "valid");
}
