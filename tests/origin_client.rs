//! The proxy's own origin client over real sockets: connection reuse, origins that close idle connections, every
//! response framing (length, chunks, close-delimited, none for HEAD), interim responses, and broken origins.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

/// Sends `GET /` on a raw connection and reads everything until the proxy closes it (within the limit).
async fn get_until_closed(proxy: &Proxy) -> String {
    let mut client = TcpStream::connect(proxy.addr()).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    within(LIMIT, client.read_to_end(&mut got)).await.unwrap();
    String::from_utf8_lossy(&got).into_owned()
}

/// Sends `req` on `client`, within the limit. Requests that must share an origin connection are sent on one client
/// connection: in per-core mode each runtime pools origin connections of its own, and a client connection stays on
/// one runtime.
async fn send_on(client: &mut Conn, req: http::Request<Body>) -> Resp {
    within(LIMIT, client.send(req)).await
}

/// `GET path` on `client`, within the limit.
async fn get_on(client: &mut Conn, path: &str) -> Resp {
    send_on(client, request("GET", path).body(empty()).unwrap()).await
}

fn ok(_: &str, _: usize) -> (Vec<u8>, After) {
    (
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        After::KeepOpen,
    )
}

#[tokio::test]
async fn sequential_requests_share_one_origin_connection() {
    let origin = ScriptOrigin::start(ok).await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut client = Conn::open(proxy.addr()).await;

    for _ in 0..5 {
        let resp = get_on(&mut client, "/").await;
        assert_eq!((resp.status.as_u16(), resp.text()), (200, "ok"));
    }

    assert_eq!(origin.connections(), 1);
    assert_eq!(origin.request_connections(), [0, 0, 0, 0, 0]);
}

#[tokio::test]
async fn an_idle_connection_the_origin_closed_is_replaced_without_an_error() {
    // Answers one request per connection, then closes it without saying so (no `Connection: close`): the
    // pooled connection is dead when the next request comes.
    fn once(_: &str, _: usize) -> (Vec<u8>, After) {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            After::Close,
        )
    }
    let origin = ScriptOrigin::start(once).await;
    let proxy = Proxy::start(origin.addr()).await;

    for _ in 0..5 {
        let resp = within(LIMIT, proxy.get("/")).await;
        assert_eq!((resp.status.as_u16(), resp.text()), (200, "ok"));
    }

    assert_eq!(origin.request_connections(), [0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_request_on_a_pooled_connection_the_origin_closes_under_it_is_sent_again() {
    // Answers the first request of each connection, and closes without an answer when a second one comes: the
    // proxy cannot see it coming (the connection looked open when it was taken from the pool).
    fn first_only(_: &str, on_conn: usize) -> (Vec<u8>, After) {
        if on_conn == 0 {
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                After::KeepOpen,
            )
        } else {
            (Vec::new(), After::Close)
        }
    }
    let origin = ScriptOrigin::start(first_only).await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut client = Conn::open(proxy.addr()).await;

    for _ in 0..3 {
        let resp = get_on(&mut client, "/").await;
        assert_eq!((resp.status.as_u16(), resp.text()), (200, "ok"));
    }

    // Each later request reached a pooled connection first, which closed, then a new one.
    assert_eq!(origin.request_connections(), [0, 0, 1, 1, 2]);
}

#[tokio::test]
async fn a_connection_the_origin_marks_close_is_not_reused() {
    fn close(_: &str, _: usize) -> (Vec<u8>, After) {
        (
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            After::KeepOpen,
        )
    }
    let origin = ScriptOrigin::start(close).await;
    let proxy = Proxy::start(origin.addr()).await;

    for _ in 0..3 {
        let resp = within(LIMIT, proxy.get("/")).await;
        assert_eq!(resp.text(), "ok");
        assert_eq!(resp.header("connection"), None);
    }

    assert_eq!(origin.connections(), 3);
}

#[tokio::test]
async fn chunked_close_delimited_and_bodyless_responses_are_relayed_whole() {
    fn framings(head: &str, _: usize) -> (Vec<u8>, After) {
        if head.starts_with("GET /chunked ") {
            let answer = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                          5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n";
            (answer.into(), After::KeepOpen)
        } else if head.starts_with("GET /close ") {
            (
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end".to_vec(),
                After::Close,
            )
        } else if head.starts_with("HEAD ") {
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n".to_vec(),
                After::KeepOpen,
            )
        } else if head.starts_with("GET /304 ") {
            (
                b"HTTP/1.1 304 Not Modified\r\netag: \"7\"\r\ncontent-length: 10\r\n\r\n".to_vec(),
                After::KeepOpen,
            )
        } else {
            ok(head, 0)
        }
    }
    let origin = ScriptOrigin::start(framings).await;
    let proxy = Proxy::start(origin.addr()).await;

    let mut client = Conn::open(proxy.addr()).await;
    let chunked = get_on(&mut client, "/chunked").await;
    assert_eq!(chunked.text(), "hello, world");
    let head = send_on(&mut client, request("HEAD", "/h").body(empty()).unwrap()).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("10"));
    assert_eq!(head.text(), "");
    let not_modified = get_on(&mut client, "/304").await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), Some("\"7\""));
    let after = get_on(&mut client, "/after").await;
    assert_eq!(after.text(), "ok");
    // Chunked, HEAD and 304 left the connection in a known state: all on the first one.
    assert_eq!(origin.request_connections(), [0, 0, 0, 0]);

    let close = within(LIMIT, proxy.get("/close")).await;
    assert_eq!(close.status, 200);
    assert_eq!(close.text(), "until the end");
}

#[tokio::test]
async fn interim_responses_from_the_origin_are_skipped() {
    fn early_hints(_: &str, _: usize) -> (Vec<u8>, After) {
        (
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
              HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal"
                .to_vec(),
            After::KeepOpen,
        )
    }
    let origin = ScriptOrigin::start(early_hints).await;
    let proxy = Proxy::start(origin.addr()).await;

    let resp = within(LIMIT, proxy.get("/")).await;

    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "final");
    assert_eq!(resp.header("link"), None);
}

#[tokio::test]
async fn an_origin_closing_mid_body_truncates_the_response_and_closes_the_client_connection() {
    fn short(_: &str, _: usize) -> (Vec<u8>, After) {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten..".to_vec(),
            After::Close,
        )
    }
    let origin = ScriptOrigin::start(short).await;
    let proxy = Proxy::start(origin.addr()).await;
    // The proxy closes the client connection: reading to EOF ends within the limit.
    let text = get_until_closed(&proxy).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-length: 100\r\n"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    assert_eq!(body, "only ten..");
}

#[tokio::test]
async fn ambiguous_or_oversized_origin_heads_are_a_502() {
    fn broken(head: &str, _: usize) -> (Vec<u8>, After) {
        let answer = if head.starts_with("GET /lengths ") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok".to_vec()
        } else if head.starts_with("GET /upgrade ") {
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n".to_vec()
        } else {
            let mut huge = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
            huge.extend(std::iter::repeat_n(b'a', 70 * 1024));
            huge
        };
        (answer, After::Close)
    }
    let origin = ScriptOrigin::start(broken).await;
    let proxy = Proxy::start(origin.addr()).await;

    for path in ["/lengths", "/upgrade", "/huge"] {
        let resp = within(LIMIT, proxy.get(path)).await;
        resp.assert_proxy_error(502);
    }
}

#[tokio::test]
async fn an_origin_answering_before_the_whole_body_is_relayed_at_once() {
    // Refuses the upload as soon as it has the head, and reads no further.
    fn refuse(_: &str, _: usize) -> (Vec<u8>, After) {
        (
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!".to_vec(),
            After::KeepOpen,
        )
    }
    let origin = ScriptOrigin::start(refuse).await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut client = RawConn::open(proxy.addr()).await;
    // A head announcing 1 MB and the first bytes of it; the rest never comes while the client waits.
    client
        .write(b"POST /upload HTTP/1.1\r\nhost: t\r\ncontent-length: 1000000\r\n\r\nfirst bytes")
        .await;

    let resp = within(LIMIT, client.read_response()).await;

    assert_eq!(resp.status, 413);
    assert_eq!(resp.text(), "too big!");
    // The body was not read to its end: the connection cannot carry another request.
    assert!(within(LIMIT, client.closed()).await);
}

#[tokio::test]
async fn an_origin_that_stalls_mid_body_is_given_up_after_the_body_read_timeout() {
    // Half the body, then nothing, with the connection left open.
    fn stall(_: &str, _: usize) -> (Vec<u8>, After) {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf.".to_vec(),
            After::KeepOpen,
        )
    }
    let origin = ScriptOrigin::start(stall).await;
    let proxy = Proxy::to(origin.addr())
        .toml("[origin]\nbody_read_timeout_secs = 0.3")
        .start()
        .await;
    // Without the timeout the proxy would wait on the origin for ever, and the client with it.
    let text = get_until_closed(&proxy).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhalf."), "{text}");
}
