//! Forwarding without holds: what reaches the origin, what comes back, header rewriting, `Grip-Sig`, origin
//! failures, routing and streaming.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::BodyExt;
use support::*;

#[tokio::test]
async fn method_path_query_body_and_host_reach_the_origin() {
    let origin = Origin::start(|_| Reply::status(201).body("created")).await;
    let proxy = Proxy::start(origin.addr()).await;
    // A streamed (chunked) body of 1.5 MB in 16 KiB chunks, each chunk different.
    let chunks: Vec<Bytes> = (0..96u8).map(|i| Bytes::from(vec![i; 16 * 1024])).collect();
    let sent: Vec<u8> = chunks.iter().flatten().copied().collect();
    let req = request("POST", "/a/b?x=1&y=two")
        .header("host", "example.test:1234")
        .body(support::chunks(chunks))
        .unwrap();

    let resp = proxy.send(req).await;

    assert_eq!(resp.status, 201);
    assert_eq!(resp.text(), "created");
    let got = origin.nth(0).await;
    assert_eq!(got.method, "POST");
    assert_eq!(got.uri, "/a/b?x=1&y=two");
    assert_eq!(got.header("host"), Some("example.test:1234"));
    assert_eq!(got.body.len(), sent.len());
    assert!(got.body == sent, "the body arrived altered");
}

#[tokio::test]
async fn origin_status_headers_and_body_reach_the_client() {
    let origin = Origin::start(|_| {
        Reply::status(418)
            .header("X-Custom", "a")
            .header("Set-Cookie", "a=1")
            .header("Set-Cookie", "b=2")
            .header("Cache-Control", "no-cache")
            .body("short and stout")
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;

    let resp = proxy.get("/teapot").await;

    assert_eq!(resp.status, 418);
    assert_eq!(resp.header("x-custom"), Some("a"));
    assert_eq!(resp.all("set-cookie"), ["a=1", "b=2"]);
    assert_eq!(resp.header("cache-control"), Some("no-cache"));
    assert_eq!(resp.text(), "short and stout");
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let origin = Origin::start(|_| {
        Reply::text("ok")
            .header("Connection", "X-Resp-Hop")
            .header("X-Resp-Hop", "1")
            .header("Keep-Alive", "timeout=5")
            .header("Proxy-Authenticate", "Basic")
            .header("X-Resp-End", "kept")
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;

    let mut client = RawConn::open(proxy.addr()).await;
    client
        .write(
            b"GET /hop HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Req-Hop\r\nX-Req-Hop: 1\r\n\
              Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eDp5\r\n\
              Proxy-Connection: keep-alive\r\nX-Req-End: kept\r\n\r\n",
        )
        .await;
    let resp = within(LIMIT, client.read_response()).await;

    assert_eq!(resp.status, 200);
    let got = origin.nth(0).await;
    for name in [
        "x-req-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert_eq!(got.header(name), None, "{name} reached the origin");
    }
    let origin_connection = got.header("connection").unwrap_or_default();
    assert!(
        !origin_connection.to_ascii_lowercase().contains("x-req-hop"),
        "{origin_connection:?}"
    );
    assert_eq!(got.header("x-req-end"), Some("kept"));

    for name in ["x-resp-hop", "keep-alive", "proxy-authenticate"] {
        assert_eq!(resp.header(name), None, "{name} reached the client");
    }
    let client_connection = resp.header("connection").unwrap_or_default();
    assert!(
        !client_connection
            .to_ascii_lowercase()
            .contains("x-resp-hop"),
        "{client_connection:?}"
    );
    assert_eq!(resp.header("x-resp-end"), Some("kept"));
    assert_eq!(resp.text(), "ok");
}

/// The claims of a JWT, read without checking it.
fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&json).unwrap()
}

fn now_secs() -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(now.as_secs()).unwrap()
}

#[tokio::test]
async fn client_grip_headers_are_removed_and_the_origin_gets_a_valid_grip_sig() {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::start(origin.addr()).await;
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJwdXNocGluIiwiZXhwIjo5OTk5OTk5OTk5fQ.forged";
    let req = request("GET", "/")
        .header("Grip-Sig", forged)
        .header("Grip-Hold", "response")
        .header("Grip-Last", "c; last-id=1")
        .header("Grip-Channel", "c")
        .header("Grip-Feature", "forged-feature")
        .body(empty())
        .unwrap();

    assert_eq!(proxy.send(req).await.status, 200);

    let got = origin.nth(0).await;
    // Only what the proxy adds itself: its signature, and the features it may announce.
    let mut grip = got.grip_headers();
    grip.retain(|name| *name != "grip-feature");
    assert_eq!(grip, ["grip-sig"]);
    let features = got.headers.get_all("grip-feature");
    assert!(features.iter().all(|v| v != "forged-feature"));
    let sig = got.header("grip-sig").unwrap();
    assert_ne!(sig, forged);
    assert_eq!(
        grip_proxy::verify_grip_sig(sig, b"changeme").as_deref(),
        Some("pushpin")
    );
    let exp = claims(sig)["exp"].as_i64().unwrap();
    let expected = now_secs() + 3600;
    assert!(
        (exp - expected).abs() <= 5,
        "exp {exp}, expected about {expected}"
    );
}

#[tokio::test]
async fn a_route_signs_with_its_own_issuer_and_key() {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::with_routes(&format!(
        "[[routes]]\norigin = \"http://{}\"\nsig_iss = \"my-proxy\"\nsig_key = \"s3cret\"",
        origin.addr()
    ))
    .start()
    .await;

    proxy.get("/").await;

    let sig = origin.nth(0).await.header("grip-sig").unwrap().to_owned();
    assert_eq!(
        grip_proxy::verify_grip_sig(&sig, b"s3cret").as_deref(),
        Some("my-proxy")
    );
    assert_eq!(grip_proxy::verify_grip_sig(&sig, b"changeme"), None);
}

#[tokio::test]
async fn x_forwarded_headers_are_added_by_default() {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::start(origin.addr()).await;

    proxy.get("/").await;
    let req = request("GET", "/")
        .header("X-Forwarded-For", "10.1.2.3")
        .body(empty())
        .unwrap();
    proxy.send(req).await;
    // Two header lines are one list: neither line's addresses may be lost.
    let req = request("GET", "/")
        .header("X-Forwarded-For", "10.1.2.3, 10.4.5.6")
        .header("X-Forwarded-For", "10.7.8.9")
        .body(empty())
        .unwrap();
    proxy.send(req).await;

    let xff = |req: &Recorded| {
        let lines = req.headers.get_all("x-forwarded-for").iter();
        lines
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let first = origin.nth(0).await;
    assert_eq!(xff(&first), ["127.0.0.1"]);
    assert_eq!(first.header("x-forwarded-proto"), Some("http"));
    assert_eq!(xff(&origin.nth(1).await), ["10.1.2.3, 127.0.0.1"]);
    assert_eq!(
        xff(&origin.nth(2).await),
        ["10.1.2.3, 10.4.5.6, 10.7.8.9, 127.0.0.1"]
    );
}

#[tokio::test]
async fn x_forwarded_headers_can_be_turned_off() {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::to(origin.addr())
        .toml("[proxy]\nx_forwarded_for = false\nx_forwarded_proto = false")
        .start()
        .await;

    proxy.get("/").await;

    let got = origin.nth(0).await;
    assert_eq!(got.header("x-forwarded-for"), None);
    assert_eq!(got.header("x-forwarded-proto"), None);
}

#[tokio::test]
async fn several_requests_share_one_client_connection() {
    let origin = Origin::start(|req| Reply::text(req.path())).await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut conn = Conn::open(proxy.addr()).await;

    for path in ["/one", "/two", "/three"] {
        let req = request("GET", path).body(empty()).unwrap();
        let resp = within(LIMIT, conn.send(req)).await;
        assert_eq!(resp.text(), path);
    }
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let origin = Origin::start(|req| Reply::text(req.path())).await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut client = RawConn::open(proxy.addr()).await;

    client
        .write(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\nGET /two HTTP/1.1\r\nHost: h\r\n\r\n")
        .await;

    assert_eq!(within(LIMIT, client.read_response()).await.text(), "/one");
    assert_eq!(within(LIMIT, client.read_response()).await.text(), "/two");
}

#[tokio::test]
async fn a_client_expecting_100_continue_is_told_to_send_its_body() {
    let origin = Origin::start(|req| Reply::text(std::str::from_utf8(&req.body).unwrap())).await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut client = RawConn::open(proxy.addr()).await;

    client
        .write(b"POST /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await;
    let interim = within(LIMIT, client.read_response()).await;
    assert_eq!(interim.status, 100);
    client.write(b"hello").await;

    let resp = within(LIMIT, client.read_response()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello");
}

#[tokio::test]
async fn origin_refusing_connections_is_a_502() {
    let port = free_port();
    let proxy = Proxy::start(format!("127.0.0.1:{port}").parse().unwrap()).await;

    proxy.get("/").await.assert_proxy_error(502);
}

#[tokio::test]
async fn origin_closing_without_an_answer_is_a_502() {
    let origin = ScriptOrigin::answering(b"".as_slice()).await;
    let proxy = Proxy::start(origin.addr()).await;

    proxy.get("/").await.assert_proxy_error(502);
}

#[tokio::test]
async fn origin_sending_garbage_is_a_502() {
    let origin =
        ScriptOrigin::answering(b"SECRET garbage, not HTTP at all\r\n\r\n".as_slice()).await;
    let proxy = Proxy::start(origin.addr()).await;

    let resp = proxy.get("/").await;

    resp.assert_proxy_error(502);
    assert!(!resp.text().contains("SECRET"), "{}", resp.text());
}

#[tokio::test]
async fn origin_slower_than_the_response_timeout_is_a_504() {
    let origin = Origin::start(|_| Reply::text("too late").delay(Duration::from_secs(30))).await;
    let proxy = Proxy::to(origin.addr())
        .toml("[origin]\nresponse_timeout_secs = 0.3")
        .start()
        .await;

    let resp = within(Duration::from_secs(3), get(proxy.addr(), "/")).await;

    resp.assert_proxy_error(504);
    assert!(!resp.text().contains("too late"));
}

#[tokio::test]
async fn the_most_specific_route_wins() {
    let any = Origin::start(|_| Reply::text("any")).await;
    let api = Origin::start(|_| Reply::text("api")).await;
    let proxy = Proxy::with_routes(&format!(
        "[[routes]]\norigin = \"http://{}\"\n\
         [[routes]]\nhost = \"api.test\"\npath_prefix = \"/v2/\"\norigin = \"http://{}\"",
        any.addr(),
        api.addr()
    ))
    .start()
    .await;
    let cases = [
        ("api.test", "/v2/items", "api"),
        ("API.test:7999", "/v2/", "api"),
        ("api.test", "/v1/items", "any"),
        ("other.test", "/v2/items", "any"),
    ];

    for (host, path, want) in cases {
        let req = request("GET", path)
            .header("host", host)
            .body(empty())
            .unwrap();
        assert_eq!(proxy.send(req).await.text(), want, "{host} {path}");
    }
    let paths = |o: &Origin| {
        o.requests()
            .iter()
            .map(|r| r.uri.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(paths(&api), ["/v2/items", "/v2/"]);
    assert_eq!(paths(&any), ["/v1/items", "/v2/items"]);
}

#[tokio::test]
async fn a_streamed_response_reaches_the_client_chunk_by_chunk() {
    let (tx, body) = channel_body();
    let body = parking_lot::Mutex::new(Some(body));
    let origin = Origin::start(move |_| {
        Reply::status(200)
            .header("Content-Type", "text/event-stream")
            .streamed(body.lock().take().unwrap())
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut conn = Conn::open(proxy.addr()).await;

    // The origin has sent only the first chunk: the head and that chunk must reach the client now.
    tx.send(Bytes::from_static(b"data: one\n\n")).await.unwrap();
    let req = request("GET", "/events").body(empty()).unwrap();
    let resp = within(LIMIT, conn.send_head(req)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut first = Vec::new();
    while first.len() < b"data: one\n\n".len() {
        let frame = within(LIMIT, body.frame()).await.unwrap().unwrap();
        first.extend_from_slice(frame.data_ref().unwrap());
    }
    assert_eq!(first, b"data: one\n\n");

    tx.send(Bytes::from_static(b"data: two\n\n")).await.unwrap();
    drop(tx);
    let rest = within(LIMIT, body.collect()).await.unwrap().to_bytes();
    assert_eq!(rest, "data: two\n\n");
}

#[tokio::test]
async fn a_request_no_route_matches_is_a_502() {
    let origin = Origin::start(|_| Reply::text("SECRET")).await;
    let proxy = Proxy::with_routes(&format!(
        "[[routes]]\nhost = \"api.test\"\norigin = \"http://{}\"",
        origin.addr()
    ))
    .start()
    .await;
    let req = request("GET", "/")
        .header("host", "other.test")
        .body(empty())
        .unwrap();

    proxy.send(req).await.assert_proxy_error(502);
    assert_eq!(origin.count(), 0);
}

#[tokio::test]
async fn an_http_1_0_client_gets_an_unchunked_response_and_the_connection_closes() {
    let origin = Origin::start(|_| {
        let parts = vec![Bytes::from_static(b"one,"), Bytes::from_static(b"two")];
        Reply::status(200).streamed(support::chunks(parts))
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut client = RawConn::open(proxy.addr()).await;

    client.write(b"GET /old HTTP/1.0\r\n\r\n").await;
    let resp = within(LIMIT, client.read_response()).await;

    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), None);
    assert_eq!(resp.text(), "one,two");
    assert!(within(LIMIT, client.closed()).await);
    assert_eq!(origin.nth(0).await.uri, "/old");
}
