//! The control listener's connections, as publishers see them over real sockets: the publish body limit at, below
//! and above it, keep-alive and pipelined publishes, a request head that does not arrive in time, and a shutdown
//! that lets a publish in flight finish.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::time::Duration;

use support::*;

/// An origin that holds every request on the channel named by its path (`/c` holds on `c`).
async fn holding_origin() -> Origin {
    Origin::start(|req| Reply::hold(&req.path()[1..])).await
}

/// A publish body of exactly `len` bytes: one item for channel `c`, padded with spaces.
fn body_of(len: usize) -> String {
    let body = items(&[item("c", "x")]).to_string();
    assert!(body.len() <= len, "{len} is too short for {body}");
    format!("{body}{}", " ".repeat(len - body.len()))
}

/// A `POST /publish/` with `body` and its `Content-Length`.
fn raw_publish(body: &str) -> Vec<u8> {
    format!(
        "POST /publish/ HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The same body in chunks of at most 300 bytes.
fn raw_publish_chunked(body: &str) -> Vec<u8> {
    let mut req =
        b"POST /publish/ HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body.as_bytes().chunks(300) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

/// Sends `req` on a new connection and reads the answer.
async fn exchange(addr: std::net::SocketAddr, req: &[u8]) -> Resp {
    let mut conn = RawConn::open(addr).await;
    conn.write(req).await;
    within(LIMIT, conn.read_response()).await
}

#[tokio::test]
async fn publish_bodies_below_at_and_above_the_limit_declared_or_chunked() {
    let origin = holding_origin().await;
    let proxy = Proxy::to(origin.addr())
        .toml("[control]\nmax_body = 1000")
        .start()
        .await;
    let control = proxy.control_addr();
    for (len, status) in [(999, 200), (1000, 200), (1001, 413)] {
        let body = body_of(len);
        for (how, req) in [
            ("declared", raw_publish(&body)),
            ("chunked", raw_publish_chunked(&body)),
        ] {
            let resp = exchange(control, &req).await;
            assert_eq!(resp.status, status, "{len} bytes, {how}: {}", resp.text());
            if status == 413 {
                assert_eq!(
                    resp.text(),
                    "Payload Too Large: the publish body limit is 1000 bytes\n",
                    "{how}"
                );
            } else {
                assert_eq!(resp.text(), "Published\n", "{len} bytes, {how}");
            }
        }
    }
    // Each refused publish is counted, by its status class.
    let metrics = within(LIMIT, get(control, "/metrics")).await;
    assert!(
        metrics
            .text()
            .lines()
            .any(|l| l == "grip_proxy_publish_requests_total{status=\"4xx\"} 2"),
        "{}",
        metrics.text()
    );
}

#[tokio::test]
async fn two_publishes_on_one_keep_alive_connection_and_two_pipelined() {
    let origin = holding_origin().await;
    let proxy = Proxy::start(origin.addr()).await;
    let holding = Pending::get(proxy.addr(), "/c");
    proxy.wait_held(1).await;

    // One after the other on a client connection: the second goes on the same connection.
    let mut conn = Conn::open(proxy.control_addr()).await;
    for body in ["first", "second"] {
        let req = request("POST", "/publish/")
            .body(full(items(&[item("c", body)]).to_string()))
            .unwrap();
        let resp = within(LIMIT, conn.send(req)).await;
        assert_eq!(resp.status, 200, "{body}");
        assert_eq!(resp.header("connection"), None, "{body}: kept alive");
    }
    assert_eq!(holding.response().await.text(), "first");

    // Pipelined: both written at once, answered in order on the same connection, which stays open.
    let mut raw = RawConn::open(proxy.control_addr()).await;
    let mut both = raw_publish(&items(&[item("c", "third")]).to_string());
    both.extend_from_slice(&raw_publish("{\"items\": 5}"));
    raw.write(&both).await;
    let first = within(LIMIT, raw.read_response()).await;
    let second = within(LIMIT, raw.read_response()).await;
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (200, 400));
    assert!(second.text().contains("items"), "{}", second.text());
    raw.write(b"GET /health HTTP/1.1\r\nHost: c\r\n\r\n").await;
    assert_eq!(within(LIMIT, raw.read_response()).await.text(), "ok\n");
}

/// A request head that is not whole 30 s after the connection opened is a `408`, and the connection closes; an idle
/// keep-alive connection is closed then too. 30 s of real time: both are watched at once.
#[tokio::test]
async fn a_control_request_head_not_received_within_30_s_is_a_408() {
    let origin = holding_origin().await;
    let proxy = Proxy::start(origin.addr()).await;
    let control = proxy.control_addr();
    let started = tokio::time::Instant::now();

    let mut slow = RawConn::open(control).await;
    slow.write(b"POST /publish/ HTTP/1.1\r\nHost: c\r\n").await;
    let mut idle = RawConn::open(control).await;
    idle.write(b"GET /health HTTP/1.1\r\nHost: c\r\n\r\n").await;
    assert_eq!(within(LIMIT, idle.read_response()).await.status, 200);

    let bound = Duration::from_secs(30) + LIMIT;
    let (slow_resp, idle_closed) = within(bound, async {
        tokio::join!(
            async {
                let resp = slow.read_response().await;
                (resp, started.elapsed(), slow.closed().await)
            },
            async {
                let closed = idle.closed().await;
                (closed, started.elapsed())
            }
        )
    })
    .await;
    let (resp, slow_after, slow_closed) = slow_resp;
    assert_eq!(resp.status, 408, "{}", resp.text());
    assert!(slow_closed, "the connection closes after the 408");
    assert!(
        slow_after >= Duration::from_secs(29),
        "answered after {slow_after:?}"
    );
    let (idle_closed, idle_after) = idle_closed;
    assert!(idle_closed);
    assert!(
        idle_after >= Duration::from_secs(29),
        "closed after {idle_after:?}"
    );
}

/// A publish whose body is still arriving when the proxy stops is read to its end and answered (with
/// `Connection: close`) within the shutdown grace; an idle control connection is closed at once, and new ones are
/// refused.
#[tokio::test]
async fn shutdown_lets_a_publish_in_flight_finish() {
    let origin = holding_origin().await;
    let proxy = Proxy::to(origin.addr())
        .toml("[shutdown]\ngrace_secs = 4")
        .start()
        .await;
    let control = proxy.control_addr();

    let mut idle = RawConn::open(control).await;
    idle.write(b"GET /health HTTP/1.1\r\nHost: c\r\n\r\n").await;
    assert_eq!(within(LIMIT, idle.read_response()).await.status, 200);

    let req = raw_publish(&items(&[item("c", "late")]).to_string());
    let (head_and_some, rest) = req.split_at(req.len() - 10);
    let mut publishing = RawConn::open(control).await;
    publishing.write(head_and_some).await;
    // The request is in flight (its handler waits for the body) before the stop.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stopping = tokio::spawn(proxy.shutdown());
    assert!(
        within(LIMIT, idle.closed()).await,
        "an idle connection is closed at the stop"
    );
    let refused = within(LIMIT, async {
        loop {
            match tokio::net::TcpStream::connect(control).await {
                Err(_) => return,
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    });
    refused.await;
    assert!(
        !stopping.is_finished(),
        "the publish in flight is waited for"
    );

    publishing.write(rest).await;
    let resp = within(LIMIT, publishing.read_response()).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(within(LIMIT, publishing.closed()).await);
    within(LIMIT, stopping).await.unwrap();
}

/// A publish still in flight when the grace period ends does not hold the shutdown up.
#[tokio::test]
async fn shutdown_does_not_wait_past_the_grace_for_a_stalled_publish() {
    let origin = holding_origin().await;
    let proxy = Proxy::to(origin.addr())
        .toml("[shutdown]\ngrace_secs = 1")
        .start()
        .await;
    let mut stalled = RawConn::open(proxy.control_addr()).await;
    stalled
        .write(b"POST /publish/ HTTP/1.1\r\nHost: c\r\nContent-Length: 100\r\n\r\n{")
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    proxy.shutdown().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "shutdown took {took:?}"
    );
}
