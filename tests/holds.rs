//! Response holds: parking on `Grip-Hold: response`, release by a publish, the timeout response, instruction
//! parsing over the wire, invalid instructions, instruct bodies, disconnects and fan-out.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::time::Instant;

/// The origin of most tests here: `/hold/<channel>` holds on that channel (with an ETag and a body the client
/// must never see on release), anything else is plain data.
fn hold_on_path(req: &Recorded) -> Reply {
    match req.path().strip_prefix("/hold/") {
        Some(channel) => Reply::hold(channel)
            .header("ETag", "\"v1\"")
            .header("X-Held", "held")
            .header("Content-Type", "text/plain"),
        None => Reply::text("plain"),
    }
}

const ONE_SECOND_MIN: &str = "[hold]\nmin_timeout_secs = 1";

#[tokio::test]
async fn a_publish_releases_a_held_client_with_the_merged_response() {
    let origin = Origin::start(hold_on_path).await;
    let proxy = Proxy::start(origin.addr()).await;
    let client = Pending::get(proxy.addr(), "/hold/c");
    proxy.wait_held(1).await;
    assert_eq!(proxy.registry().held_on("c"), 1);
    assert!(!client.is_finished());

    let item = json!({"channel": "c", "formats": {"http-response": {
        "code": 201,
        "headers": {"X-Held": "published", "Content-Type": "application/json", "Grip-Hold": "response"},
        "body": "{\"v\":2}"
    }}});
    let published = Instant::now();
    publish(&proxy, items(&[item])).await;
    let resp = within(Duration::from_secs(1), client.response()).await;

    assert!(published.elapsed() < Duration::from_secs(1));
    assert_eq!(resp.status, 201);
    assert_eq!(resp.header("x-held"), Some("published"), "item headers win");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(
        resp.header("etag"),
        Some("\"v1\""),
        "other held headers carry over"
    );
    assert_eq!(resp.text(), "{\"v\":2}");
    assert_eq!(resp.header("content-length"), Some("7"));
    resp.assert_no_grip_headers();
    proxy.wait_held(0).await;
}

#[tokio::test]
async fn the_timeout_answers_with_the_held_response_and_its_grip_status() {
    let origin = Origin::start(|req| match req.path() {
        "/next" => Reply::text("next"),
        _ => Reply::hold("c")
            .header("Grip-Timeout", "1")
            .header("Grip-Status", "304")
            .header("ETag", "\"v1\"")
            .body("the body a 304 cannot have"),
    })
    .await;
    let proxy = Proxy::to(origin.addr()).toml(ONE_SECOND_MIN).start().await;
    let mut client = RawConn::open(proxy.addr()).await;
    client.write(b"GET /v HTTP/1.1\r\nHost: h\r\n\r\n").await;
    proxy.wait_held(1).await;

    let resp = within(LIMIT, client.read_response()).await;

    assert_eq!(resp.status, 304);
    assert_eq!(resp.header("etag"), Some("\"v1\""));
    assert_eq!(resp.header("content-length"), None);
    resp.assert_no_grip_headers();
    // No body was sent: the connection carries the next response right after the 304's head.
    client.write(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let next = within(LIMIT, client.read_response()).await;
    assert_eq!(next.text(), "next");
}

#[tokio::test]
async fn grip_status_with_a_reason_sets_the_status_line() {
    let origin = Origin::start(|_| {
        Reply::hold("c")
            .header("Grip-Timeout", "1")
            .header("Grip-Status", "404 Custom Reason")
            .body("gone")
    })
    .await;
    let proxy = Proxy::to(origin.addr()).toml(ONE_SECOND_MIN).start().await;

    let resp = proxy.get("/").await;

    assert_eq!(resp.status, 404);
    assert_eq!(resp.reason.as_deref(), Some("Custom Reason"));
    assert_eq!(resp.text(), "gone");
}

#[tokio::test]
async fn a_grip_timeout_below_the_minimum_is_raised() {
    let origin = Origin::start(|_| Reply::hold("c").header("Grip-Timeout", "0")).await;
    let proxy = Proxy::to(origin.addr()).toml(ONE_SECOND_MIN).start().await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;

    publish(&proxy, items(&[item("c", "published")])).await;

    assert_eq!(client.response().await.text(), "published");
}

#[tokio::test]
async fn a_grip_timeout_above_the_maximum_is_lowered() {
    let origin = Origin::start(|_| Reply::hold("c").header("Grip-Timeout", "3600")).await;
    let proxy = Proxy::to(origin.addr())
        .toml("[hold]\nmin_timeout_secs = 1\nmax_timeout_secs = 1")
        .start()
        .await;

    let resp = proxy.get("/").await;

    assert_eq!(resp.text(), "held\n");
}

#[tokio::test]
async fn shutdown_answers_held_clients_with_their_timeout_response() {
    let origin = Origin::start(|_| {
        Reply::hold("c")
            .header("Grip-Status", "304")
            .header("ETag", "\"v1\"")
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;

    proxy.shutdown().await;

    let resp = client.response().await;
    assert_eq!(resp.status, 304);
    assert_eq!(resp.header("etag"), Some("\"v1\""));
}

#[tokio::test]
async fn repeated_and_comma_joined_channel_headers_all_subscribe() {
    let origin = Origin::start(|req| match req.path() {
        "/repeated" => Reply::hold("a1").header("Grip-Channel", "b1"),
        _ => Reply::hold("a2, b2"),
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;

    for (path, first, second) in [("/repeated", "a1", "b1"), ("/joined", "a2", "b2")] {
        let client = Pending::get(proxy.addr(), path);
        proxy.wait_held(1).await;
        assert_eq!(proxy.registry().held_on(first), 1, "{path}");
        assert_eq!(proxy.registry().held_on(second), 1, "{path}");

        publish(&proxy, items(&[item(second, second)])).await;

        assert_eq!(client.response().await.text(), second);
        proxy.wait_held(0).await;
    }
}

#[tokio::test]
async fn channel_parameters_are_parsed_off_the_name() {
    let origin = Origin::start(|_| Reply::hold("c; prev-id=7; filter=skip-self")).await;
    let proxy = Proxy::start(origin.addr()).await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;
    assert_eq!(proxy.registry().held_on("c"), 1);

    let next = json!({"channel": "c", "id": "8", "prev-id": "7",
        "formats": {"http-response": {"body": "after 7"}}});
    publish(&proxy, items(&[next])).await;

    assert_eq!(client.response().await.text(), "after 7");
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn grip_channel_without_grip_hold_passes_through_stripped() {
    let origin = Origin::start(|_| {
        Reply::text("data")
            .header("Grip-Channel", "c")
            .header("Grip-Timeout", "5")
            .header("ETag", "\"v1\"")
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;

    let resp = proxy.get("/").await;

    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "data");
    assert_eq!(resp.header("etag"), Some("\"v1\""));
    resp.assert_no_grip_headers();
    assert_eq!(proxy.registry().held(), 0);
}

#[tokio::test]
async fn invalid_instructions_are_a_502_without_the_origin_body() {
    let many: Vec<String> = (0..21).map(|i| format!("c{i}")).collect();
    let many = many.join(", ");
    let origin = Origin::start(move |req| {
        let reply = Reply::text("SECRET origin body");
        match req.path() {
            "/hold" => reply
                .header("Grip-Hold", "bogus")
                .header("Grip-Channel", "c"),
            "/timeout" => reply
                .header("Grip-Hold", "response")
                .header("Grip-Channel", "c")
                .header("Grip-Timeout", "abc"),
            "/status" => reply
                .header("Grip-Hold", "response")
                .header("Grip-Channel", "c")
                .header("Grip-Status", "xyz"),
            "/channels" => reply
                .header("Grip-Hold", "response")
                .header("Grip-Channel", &many),
            "/no-channel" => reply.header("Grip-Hold", "response"),
            _ => Reply::status(500),
        }
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;

    for path in ["/hold", "/timeout", "/status", "/channels", "/no-channel"] {
        let resp = proxy.get(path).await;
        resp.assert_proxy_error(502);
        assert!(!resp.text().contains("SECRET"), "{path}: {}", resp.text());
        resp.assert_no_grip_headers();
    }
    assert_eq!(proxy.registry().held(), 0);
}

#[tokio::test]
async fn a_held_body_over_the_limit_is_a_502() {
    let origin = Origin::start(|req| match req.path() {
        "/big" => Reply::hold("c").body("x".repeat(101)),
        _ => Reply::hold("c").body("x".repeat(100)),
    })
    .await;
    let proxy = Proxy::to(origin.addr())
        .toml("[hold]\nmax_body = 100\nmin_timeout_secs = 1\ndefault_timeout_secs = 1")
        .start()
        .await;

    proxy.get("/big").await.assert_proxy_error(502);
    let at_limit = proxy.get("/at-limit").await;
    assert_eq!(at_limit.status, 200, "a body of exactly max_body is held");
    assert_eq!(at_limit.body.len(), 100);
}

fn instruct(body: &str) -> Reply {
    Reply::text(body).header("Content-Type", "application/grip-instruct")
}

#[tokio::test]
async fn an_instruct_body_holds_and_is_released() {
    let origin = Origin::start(|req| match req.path() {
        "/invalid" => instruct("{\"hold\": {\"channels\": [{\"name\": \"c\"}]"),
        _ => instruct(
            r#"{"hold": {"mode": "response", "channels": [{"name": "c"}], "timeout": 1},
                "response": {"code": 304, "headers": {"ETag": "\"v1\""}, "body": ""}}"#,
        ),
    })
    .await;
    let proxy = Proxy::to(origin.addr()).toml(ONE_SECOND_MIN).start().await;

    let released = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;
    let item = json!({"channel": "c", "formats": {"http-response": {"body": "new"}}});
    publish(&proxy, items(&[item])).await;
    let resp = released.response().await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("etag"), Some("\"v1\""));
    assert_eq!(resp.text(), "new");
    assert_eq!(
        resp.header("content-type"),
        None,
        "the instruct type is not the response's"
    );

    let timed_out = proxy.get("/").await;
    assert_eq!(timed_out.status, 304);
    assert_eq!(timed_out.header("etag"), Some("\"v1\""));
    assert!(timed_out.body.is_empty());

    proxy.get("/invalid").await.assert_proxy_error(502);
}

#[tokio::test]
async fn a_client_leaving_while_held_is_unparked_and_not_re_requested() {
    let origin = Origin::start(hold_on_path).await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut client = RawConn::open(proxy.addr()).await;
    client
        .write(b"GET /hold/c HTTP/1.1\r\nHost: h\r\n\r\n")
        .await;
    proxy.wait_held(1).await;

    drop(client);
    proxy.wait_held(0).await;

    assert_eq!(proxy.registry().held_on("c"), 0);
    publish(&proxy, items(&[item("c", "to no one")])).await;
    assert_eq!(proxy.get("/after").await.text(), "plain");
    let paths: Vec<String> = origin.requests().into_iter().map(|r| r.uri).collect();
    assert_eq!(paths, ["/hold/c", "/after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_releases_a_thousand_held_clients() {
    const CLIENTS: usize = 1000;
    let origin = Origin::start(hold_on_path).await;
    let proxy = Proxy::start(origin.addr()).await;
    let addr = proxy.addr();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        clients.spawn(async move { get(addr, "/hold/many").await });
    }
    within(
        Duration::from_secs(60),
        proxy.registry().wait_held(|n| n == CLIENTS),
    )
    .await;

    publish(&proxy, items(&[item("many", "for everyone")])).await;

    let all = within(Duration::from_secs(30), async {
        let mut answers = Vec::new();
        while let Some(resp) = clients.join_next().await {
            answers.push(resp.unwrap());
        }
        answers
    })
    .await;
    assert_eq!(all.len(), CLIENTS);
    assert!(all
        .iter()
        .all(|r| r.status == 200 && r.text() == "for everyone"));
    proxy.wait_held(0).await;
    assert_eq!(origin.count(), CLIENTS);
}

#[tokio::test]
async fn a_hold_on_two_channels_is_released_once() {
    let origin = Origin::start(hold_on_path).await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut conn = Conn::open(proxy.addr()).await;
    let req = request("GET", "/hold/a,b").body(empty()).unwrap();
    let held = tokio::spawn(async move {
        let resp = conn.send(req).await;
        (resp, conn)
    });
    proxy.wait_held(1).await;

    publish(&proxy, items(&[item("a", "from a"), item("b", "from b")])).await;
    publish(&proxy, items(&[item("b", "from b again")])).await;

    let (resp, mut conn) = within(LIMIT, held).await.unwrap();
    assert_eq!(resp.text(), "from a");
    assert_eq!(proxy.registry().held_on("b"), 0);
    // Nothing else was written on the connection: the next response on it is the next request's.
    let next = within(
        LIMIT,
        conn.send(request("GET", "/next").body(empty()).unwrap()),
    )
    .await;
    assert_eq!(next.text(), "plain");
}

#[tokio::test]
async fn two_items_for_one_channel_in_one_publish_the_client_gets_the_first() {
    let origin = Origin::start(hold_on_path).await;
    let proxy = Proxy::start(origin.addr()).await;
    let client = Pending::get(proxy.addr(), "/hold/c");
    proxy.wait_held(1).await;

    publish(&proxy, items(&[item("c", "first"), item("c", "second")])).await;

    assert_eq!(client.response().await.text(), "first");
}

#[tokio::test]
async fn one_publish_gives_each_client_the_release_of_its_own_held_response() {
    // Clients of /hold/c/<tag> are held with `X-Tag: <tag>`: two shapes of held response on one channel.
    let origin = Origin::start(|req| {
        let tag = req.path().rsplit('/').next().unwrap_or("").to_owned();
        Reply::hold("c")
            .header("X-Tag", &tag)
            .header("Content-Type", "text/plain")
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let a1 = Pending::get(proxy.addr(), "/hold/c/a");
    let a2 = Pending::get(proxy.addr(), "/hold/c/a");
    let b = Pending::get(proxy.addr(), "/hold/c/b");
    // An HTTP/1.0 client: its release is framed for its connection (closed after the body), not as the others'.
    let mut old = RawConn::open(proxy.addr()).await;
    old.write(b"GET /hold/c/a HTTP/1.0\r\n\r\n").await;
    // A client asking to close after this response.
    let mut closing = RawConn::open(proxy.addr()).await;
    closing
        .write(b"GET /hold/c/a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await;
    proxy.wait_held(5).await;

    let item = json!({"channel": "c", "formats": {"http-response": {
        "code": 200, "headers": {"X-Item": "1"}, "body": "news"
    }}});
    publish(&proxy, items(&[item])).await;

    for (client, tag) in [(a1, "a"), (a2, "a"), (b, "b")] {
        let resp = within(LIMIT, client.response()).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-tag"), Some(tag));
        assert_eq!(resp.header("x-item"), Some("1"));
        assert_eq!(resp.header("content-length"), Some("4"));
        assert_eq!(resp.text(), "news");
    }
    for conn in [&mut old, &mut closing] {
        let resp = within(LIMIT, conn.read_response()).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("x-tag"), Some("a"));
        assert_eq!(resp.header("connection"), Some("close"));
        assert_eq!(resp.text(), "news");
        assert!(within(LIMIT, conn.closed()).await, "connection stays open");
    }
}

/// Holds a keep-alive HTTP/1.1 client on `/hold/c` over a raw connection.
async fn raw_hold(proxy: &Proxy, request: &[u8]) -> RawConn {
    let mut conn = RawConn::open(proxy.addr()).await;
    conn.write(request).await;
    within(LIMIT, proxy.wait_held(1)).await;
    conn
}

#[tokio::test]
async fn a_release_is_written_to_the_socket_by_the_publishing_thread_and_the_connection_carries_on()
{
    let origin = Origin::start(hold_on_path).await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut conn = raw_hold(&proxy, b"GET /hold/c HTTP/1.1\r\nHost: h\r\n\r\n").await;

    publish(&proxy, items(&[item("c", "news")])).await;
    let resp = within(LIMIT, conn.read_response()).await;
    assert_eq!((resp.status.as_u16(), resp.text()), (200, "news"));
    assert_eq!(resp.header("etag"), Some("\"v1\""));
    assert_eq!(
        proxy.registry().released_by_write(),
        (1, 0),
        "the release wrote the whole response itself"
    );
    // The connection's task learnt of it and reads the next request on the same connection.
    conn.write(b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(within(LIMIT, conn.read_response()).await.text(), "plain");
    within(LIMIT, proxy.wait_held(0)).await;
}

#[tokio::test]
async fn a_release_larger_than_the_socket_takes_at_once_is_finished_by_the_connection() {
    let origin = Origin::start(hold_on_path).await;
    let proxy = Proxy::to(origin.addr())
        .toml("[control]\nmax_body = 40000000")
        .start()
        .await;
    // The client reads nothing until the publish is answered: the socket takes part of the 16 MB, the
    // connection's task writes the rest once the client reads.
    let mut conn = raw_hold(&proxy, b"GET /hold/c HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let body: String = (0..16 * 1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let answer = publish(&proxy, items(&[item("c", &body)])).await;
    assert_eq!(answer.status, 200);
    assert_eq!(proxy.registry().released_by_write(), (0, 1));

    let resp = within(LIMIT, conn.read_response()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), body.len());
    assert!(resp.text() == body, "the body arrives whole and in order");
    conn.write(b"GET /plain HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(within(LIMIT, conn.read_response()).await.text(), "plain");
}

#[tokio::test]
async fn clients_the_shared_encoding_does_not_fit_are_answered_by_their_own_task() {
    let origin = Origin::start(hold_on_path).await;
    let proxy = Proxy::start(origin.addr()).await;
    // HEAD: the same head, no body. Pipelined: the second request waits behind the held one.
    let mut head = raw_hold(
        &proxy,
        b"HEAD /hold/c HTTP/1.1\r\nHost: h\r\n\r\nGET /plain HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;

    publish(&proxy, items(&[item("c", "news")])).await;
    let resp = within(LIMIT, head.read_head()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-length"), Some("4"));
    // Nothing of the body was written: the next bytes are the pipelined request's response.
    assert_eq!(within(LIMIT, head.read_response()).await.text(), "plain");
    assert_eq!(proxy.registry().released_by_write(), (0, 0));
}

#[tokio::test]
async fn a_pipelined_request_behind_a_release_written_by_the_publisher_is_answered_after_it() {
    let origin = Origin::start(hold_on_path).await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut conn = raw_hold(
        &proxy,
        b"GET /hold/c HTTP/1.1\r\nHost: h\r\n\r\nGET /plain HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;

    publish(&proxy, items(&[item("c", "news")])).await;
    assert_eq!(within(LIMIT, conn.read_response()).await.text(), "news");
    assert_eq!(within(LIMIT, conn.read_response()).await.text(), "plain");
    assert_eq!(proxy.registry().released_by_write(), (1, 0));
}
