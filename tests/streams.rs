//! Stream holds over real sockets: `Grip-Hold: stream` (headers and instruct bodies), `http-stream` publishes in
//! order, close, keep-alives, `Grip-Link` (next on a gap and on its timeout, gone on a disconnect), Server-Sent
//! Events, slow and vanished clients, shutdown, and what `/channels` and `/metrics` say about streams.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// `/stream/<channel>` opens a stream on that channel with a first piece of body; anything else is plain data.
fn stream_on_path(req: &Recorded) -> Reply {
    match req.path().strip_prefix("/stream/") {
        Some(channel) => stream_hold("first\n", channel)
            .header("Content-Type", "text/plain")
            .header("X-Origin", "yes"),
        None => Reply::text("plain"),
    }
}

/// `200` with this body, holding a stream on `channel` (a `Grip-Channel` value).
fn stream_hold(body: &str, channel: &str) -> Reply {
    Reply::text(body)
        .header("Grip-Hold", "stream")
        .header("Grip-Channel", channel)
}

fn hint(channel: &str) -> Value {
    json!({"channel": channel, "http-stream": {"action": "hint"}})
}

fn chunk(channel: &str, content: &str) -> Value {
    json!({"channel": channel, "formats": {"http-stream": {"content": content}}})
}

fn chunk_with_ids(channel: &str, id: &str, prev: &str, content: &str) -> Value {
    json!({"channel": channel, "id": id, "prev-id": prev, "formats": {"http-stream": {"content": content}}})
}

fn close(channel: &str) -> Value {
    json!({"channel": channel, "formats": {"http-stream": {"action": "close"}}})
}

/// Opens a stream at `path` over HTTP/1.1 and reads its head; waits until `held` clients are held.
async fn open(proxy: &Proxy, path: &str, held: usize) -> (RawConn, Resp) {
    let mut conn = RawConn::open(proxy.addr()).await;
    conn.write(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    let head = within(LIMIT, conn.read_head()).await;
    proxy.wait_held(held).await;
    (conn, head)
}

async fn next(conn: &mut RawConn) -> Option<String> {
    within(LIMIT, conn.next_chunk())
        .await
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
}

#[tokio::test]
async fn a_stream_gets_the_origin_head_and_body_then_each_item_in_order_then_the_end() {
    let origin = Origin::start(stream_on_path).await;
    let proxy = Proxy::start(origin.addr()).await;
    let (mut conn, head) = open(&proxy, "/stream/c", 1).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    assert_eq!(head.header("content-type"), Some("text/plain"));
    assert_eq!(head.header("x-origin"), Some("yes"));
    assert!(head.header("content-length").is_none());
    head.assert_no_grip_headers();
    assert_eq!(next(&mut conn).await.as_deref(), Some("first\n"));
    assert_eq!(proxy.registry().streams_on("c"), 1);

    publish(&proxy, items(&[chunk("c", "one\n"), chunk("c", "two\n")])).await;
    publish(&proxy, items(&[chunk("c", "three\n")])).await;
    let mut got = String::new();
    while got.len() < "one\ntwo\nthree\n".len() {
        got.push_str(&next(&mut conn).await.unwrap());
    }
    assert_eq!(got, "one\ntwo\nthree\n");

    publish(&proxy, items(&[close("c")])).await;
    assert_eq!(
        next(&mut conn).await,
        None,
        "the last chunk ends the response"
    );
    assert!(within(LIMIT, conn.closed()).await);
    proxy.wait_held(0).await;
    assert_eq!(proxy.registry().streams_on("c"), 0);
}

#[tokio::test]
async fn an_http_1_0_client_gets_a_close_delimited_stream() {
    let origin = Origin::start(stream_on_path).await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut conn = RawConn::open(proxy.addr()).await;
    conn.write(b"GET /stream/c HTTP/1.0\r\n\r\n").await;
    let head = within(LIMIT, conn.read_head()).await;
    assert!(head.header("transfer-encoding").is_none());
    assert!(head.header("content-length").is_none());
    assert_eq!(&within(LIMIT, conn.next_bytes(6)).await[..], b"first\n");
    proxy.wait_held(1).await;
    publish(&proxy, items(&[chunk("c", "raw bytes")])).await;
    assert_eq!(&within(LIMIT, conn.next_bytes(9)).await[..], b"raw bytes");
    publish(&proxy, items(&[close("c")])).await;
    assert!(within(LIMIT, conn.closed()).await, "the end is the close");
}

#[tokio::test]
async fn instruct_bodies_open_streams_and_a_non_200_status_streams_with_its_status() {
    let origin = Origin::start(|req: &Recorded| match req.path() {
        "/instruct" => Reply::text(
            &json!({"hold": {"mode": "stream", "channels": [{"name": "i"}]},
                    "response": {"code": 200, "headers": {"Content-Type": "text/event-stream"}, "body": ": hello\n\n"}})
            .to_string(),
        )
        .header("Content-Type", "application/grip-instruct"),
        _ => Reply::status(202)
            .body("accepted\n")
            .header("Grip-Hold", "stream")
            .header("Grip-Channel", "s"),
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let (mut a, head) = open(&proxy, "/instruct", 1).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    assert_eq!(next(&mut a).await.as_deref(), Some(": hello\n\n"));
    let (mut b, head) = open(&proxy, "/other", 2).await;
    assert_eq!(head.status, 202);
    assert_eq!(next(&mut b).await.as_deref(), Some("accepted\n"));
    publish(&proxy, items(&[chunk("i", "data: 1\n\n"), chunk("s", "x")])).await;
    assert_eq!(next(&mut a).await.as_deref(), Some("data: 1\n\n"));
    assert_eq!(next(&mut b).await.as_deref(), Some("x"));
}

#[tokio::test]
async fn one_item_gives_response_holds_and_streams_each_their_format() {
    let origin = Origin::start(|req: &Recorded| match req.path() {
        "/poll" => Reply::hold("both"),
        _ => stream_on_path(req),
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let (mut stream, _) = open(&proxy, "/stream/both", 1).await;
    next(&mut stream).await;
    let poll = Pending::get(proxy.addr(), "/poll");
    proxy.wait_held(2).await;
    let item = json!({"channel": "both", "formats": {
        "http-response": {"body": "whole response\n"},
        "http-stream": {"content": "a piece\n"}}});
    publish(&proxy, items(&[item])).await;
    assert_eq!(next(&mut stream).await.as_deref(), Some("a piece\n"));
    let resp = within(LIMIT, poll.response()).await;
    assert_eq!(resp.text(), "whole response\n");
    assert_eq!(proxy.registry().streams_on("both"), 1, "the stream stays");
}

#[tokio::test]
async fn an_http_stream_item_without_content_or_close_is_a_400_and_nothing_is_delivered() {
    let origin = Origin::start(stream_on_path).await;
    let proxy = Proxy::start(origin.addr()).await;
    let (mut conn, _) = open(&proxy, "/stream/c", 1).await;
    next(&mut conn).await;
    let bad =
        json!({"items": [chunk("c", "never\n"), {"channel": "c", "formats": {"http-stream": {}}}]});
    let resp = publish(&proxy, bad).await;
    assert_eq!(resp.status, 400);
    assert!(
        resp.text().contains("items[1].formats.http-stream.content"),
        "{}",
        resp.text()
    );
    let resp = publish(
        &proxy,
        json!({"items": [{"channel": "c", "http-stream": {"action": "explode"}}]}),
    )
    .await;
    assert_eq!(resp.status, 400);
    assert!(
        resp.text().contains("items[0].http-stream.action"),
        "{}",
        resp.text()
    );
    // The next good item is the first thing the stream gets.
    publish(
        &proxy,
        items(&[json!({"channel": "c", "formats": {"http-stream": {"content-bin": "b2sK"}}})]),
    )
    .await;
    assert_eq!(next(&mut conn).await.as_deref(), Some("ok\n"));
}

#[tokio::test]
async fn items_published_out_of_order_reach_a_stream_in_order_and_a_duplicate_is_dropped() {
    let origin = Origin::start(stream_on_path).await;
    let proxy = Proxy::start(origin.addr()).await;
    publish(&proxy, items(&[chunk_with_ids("c", "1", "0", "")])).await;
    let (mut conn, _) = open(&proxy, "/stream/c", 1).await;
    next(&mut conn).await;
    publish(&proxy, items(&[chunk_with_ids("c", "4", "3", "four\n")])).await;
    publish(&proxy, items(&[chunk_with_ids("c", "3", "2", "three\n")])).await;
    publish(&proxy, items(&[chunk_with_ids("c", "2", "1", "two\n")])).await;
    publish(
        &proxy,
        items(&[chunk_with_ids("c", "3", "2", "three again\n")]),
    )
    .await;
    publish(&proxy, items(&[chunk_with_ids("c", "5", "4", "five\n")])).await;
    let mut got = String::new();
    while got.len() < "two\nthree\nfour\nfive\n".len() {
        got.push_str(&next(&mut conn).await.unwrap());
    }
    assert_eq!(got, "two\nthree\nfour\nfive\n");
}

/// An origin for link tests: `/s` opens a stream on `c` after id 1 with a next link; `/next` answers what came
/// after `Grip-Last` and holds again after id 3.
fn linked(req: &Recorded) -> Reply {
    match req.path() {
        "/s" => {
            stream_hold("start\n", "c; prev-id=1").header("Grip-Link", "</next?from=1>; rel=next")
        }
        "/next" => stream_hold("caught up: 2 3\n", "c; prev-id=3")
            .header("Grip-Link", "</next?from=3>; rel=next"),
        _ => Reply::status(404),
    }
}

#[tokio::test]
async fn a_gap_makes_exactly_one_link_request_with_grip_last_and_its_answer_continues_the_stream() {
    let origin = Origin::start(linked).await;
    let proxy = Proxy::start(origin.addr()).await;
    let (mut conn, _) = open(&proxy, "/s", 1).await;
    assert_eq!(next(&mut conn).await.as_deref(), Some("start\n"));
    // Item 2 was lost; 3 names 2 as its predecessor and goes out at once (no-seq), so the stream (which expects
    // prev-id 1) sees the gap.
    let mut three = chunk_with_ids("c", "3", "2", "three\n");
    three["no-seq"] = json!(true);
    publish(&proxy, items(&[three])).await;
    assert_eq!(next(&mut conn).await.as_deref(), Some("caught up: 2 3\n"));
    let link = within(LIMIT, origin.nth(1)).await;
    assert_eq!(link.uri, "/next?from=1");
    assert_eq!(link.method, "GET");
    assert_eq!(link.header("grip-last"), Some("c; last-id=1"));
    assert!(link.header("grip-sig").is_some(), "links are signed");
    // The stream goes on after id 3.
    publish(&proxy, items(&[chunk_with_ids("c", "4", "3", "four\n")])).await;
    assert_eq!(next(&mut conn).await.as_deref(), Some("four\n"));
    assert_eq!(origin.count(), 2, "exactly one link request");
}

#[tokio::test]
async fn a_link_is_fetched_when_its_timeout_passes() {
    let origin = Origin::start(|req: &Recorded| match req.path() {
        "/s" => stream_hold("start\n", "c").header("Grip-Link", "</later>; rel=next; timeout=1"),
        _ => Reply::text("from the link\n"),
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let started = Instant::now();
    let (mut conn, _) = open(&proxy, "/s", 1).await;
    next(&mut conn).await;
    assert_eq!(next(&mut conn).await.as_deref(), Some("from the link\n"));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        next(&mut conn).await,
        None,
        "an answer without a hold or link ends the stream"
    );
}

#[tokio::test]
async fn a_stream_hold_with_prev_id_and_no_next_link_is_refused_before_anything_is_sent() {
    let origin = Origin::start(|_: &Recorded| stream_hold("x", "c; prev-id=1")).await;
    let proxy = Proxy::start(origin.addr()).await;
    let resp = proxy.get("/s").await;
    assert_eq!(resp.status, 502);
    assert_eq!(proxy.registry().held(), 0);

    // A status that cannot carry a body cannot start a stream either.
    let origin = Origin::start(|_: &Recorded| {
        Reply::status(204)
            .header("Grip-Hold", "stream")
            .header("Grip-Channel", "c")
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    assert_eq!(proxy.get("/s").await.status, 502);
}

#[tokio::test]
async fn keep_alives_are_written_when_the_stream_is_idle_and_not_while_items_flow() {
    let origin = Origin::start(|_: &Recorded| {
        Reply::text(": open\n\n")
            .header("Content-Type", "text/event-stream")
            .header("Grip-Hold", "stream")
            .header("Grip-Channel", "k")
            .header("Grip-Keep-Alive", r":\n\n; format=cstring; timeout=1")
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let (mut conn, _) = open(&proxy, "/sse", 1).await;
    next(&mut conn).await;
    let mut last = Instant::now();
    for _ in 0..3 {
        assert_eq!(next(&mut conn).await.as_deref(), Some(":\n\n"));
        let gap = last.elapsed();
        last = Instant::now();
        // One second, less a jitter of at most half of it; never much more.
        assert!(
            gap >= Duration::from_millis(450) && gap <= Duration::from_millis(1500),
            "{gap:?}"
        );
    }
    // Items every 300 ms keep the stream busy: no keep-alive among them.
    for i in 0..5 {
        publish(&proxy, items(&[chunk("k", &format!("data: {i}\n\n"))])).await;
        assert_eq!(next(&mut conn).await, Some(format!("data: {i}\n\n")));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn server_sent_events_reconnects_carry_last_event_id_and_events_arrive_at_once() {
    let origin = Origin::start(|_: &Recorded| {
        Reply::text("")
            .header("Content-Type", "text/event-stream")
            .header("Grip-Hold", "stream")
            .header("Grip-Channel", "sse")
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut conn = RawConn::open(proxy.addr()).await;
    conn.write(b"GET /events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nLast-Event-ID: 41\r\n\r\n")
        .await;
    let head = within(LIMIT, conn.read_head()).await;
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    proxy.wait_held(1).await;
    assert_eq!(
        within(LIMIT, origin.nth(0)).await.header("last-event-id"),
        Some("41")
    );
    // Time from sending the publish to reading the event, over 20 events: nothing is buffered between the two.
    let mut took = Vec::new();
    for i in 0..20 {
        let event = format!("id: {i}\ndata: hi\n\n");
        let published = Instant::now();
        let publishing = tokio::spawn(publish(&proxy, items(&[chunk("sse", &event)])));
        assert_eq!(next(&mut conn).await, Some(event));
        took.push(published.elapsed());
        assert_eq!(publishing.await.unwrap().status, 200);
    }
    took.sort();
    println!(
        "publish to SSE event: median {:?}, max {:?}",
        took[10], took[19]
    );
    assert!(took[10] < Duration::from_millis(250), "{took:?}");
}

#[tokio::test]
async fn a_client_that_leaves_is_unsubscribed_at_once_and_the_gone_link_is_told() {
    let origin = Origin::start(|req: &Recorded| match req.path() {
        "/s" => stream_hold("start\n", "c").header("Grip-Link", "</bye?who=1>; rel=gone"),
        _ => Reply::status(204),
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let (mut conn, _) = open(&proxy, "/s", 1).await;
    next(&mut conn).await;
    conn.stream_mut().shutdown().await.unwrap(); // a half-close
    proxy.wait_held(0).await;
    assert_eq!(proxy.registry().streams_on("c"), 0);
    let gone = within(LIMIT, origin.nth(1)).await;
    assert_eq!(
        (gone.method.as_str(), gone.uri.as_str()),
        ("POST", "/bye?who=1")
    );
    drop(conn);

    // A reset does the same.
    let (mut conn, _) = open(&proxy, "/s", 1).await;
    #[allow(deprecated)] // linger 0 is how a reset is made; nothing here blocks on it
    conn.stream_mut().set_linger(Some(Duration::ZERO)).unwrap();
    drop(conn);
    proxy.wait_held(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_at_the_bound_while_the_others_keep_receiving() {
    const OTHERS: usize = 1000;
    const BOUND: usize = 64 * 1024;
    let origin = Origin::start(stream_on_path).await;
    let proxy = Proxy::to(origin.addr())
        .toml(&format!("[hold]\nmax_stream_queue = {BOUND}"))
        .start()
        .await;
    let mut others = Vec::new();
    for i in 0..OTHERS {
        let (mut conn, _) = open(&proxy, "/stream/big", i + 1).await;
        next(&mut conn).await;
        others.push(conn);
    }
    // The stuck client: a small receive buffer, reads its head, then nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(proxy.addr()).await.unwrap();
    stuck
        .write_all(b"GET /stream/big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    proxy.wait_held(OTHERS + 1).await;
    let readers: Vec<_> = others
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                let mut n = 0usize;
                while let Some(chunk) = conn.next_chunk().await {
                    n += chunk.len();
                }
                n
            })
        })
        .collect();
    let piece = "x".repeat(1024);
    let mut published = 0usize;
    // Publish 16 KiB at a time until the stuck client is gone: bounded, as its kernel buffers are small.
    while proxy.registry().streams_on("big") == OTHERS + 1 {
        assert!(published < 64 * BOUND, "the stuck client was never dropped");
        let batch: Vec<Value> = (0..16).map(|_| chunk("big", &piece)).collect();
        publish(&proxy, items(&batch)).await;
        published += 16 * 1024;
    }
    println!("stuck client dropped after {published} bytes were published");
    let metrics = within(LIMIT, get(proxy.control_addr(), "/metrics")).await;
    assert!(
        metrics
            .text()
            .contains("grip_proxy_stream_slow_clients_dropped_total 1"),
        "{}",
        metrics.text()
    );
    // The others go on: more after the drop, then the end.
    for _ in 0..4 {
        let batch: Vec<Value> = (0..16).map(|_| chunk("big", &piece)).collect();
        publish(&proxy, items(&batch)).await;
        published += 16 * 1024;
    }
    publish(&proxy, items(&[close("big")])).await;
    for reader in readers {
        let n = within(LIMIT, reader).await.unwrap();
        assert_eq!(n, published, "every other stream got every item");
    }
    proxy.wait_held(0).await;
}

#[tokio::test]
async fn shutdown_ends_each_stream_with_its_last_chunk() {
    let origin = Origin::start(stream_on_path).await;
    let proxy = Proxy::start(origin.addr()).await;
    let (mut a, _) = open(&proxy, "/stream/a", 1).await;
    let (mut b, _) = open(&proxy, "/stream/b", 2).await;
    next(&mut a).await;
    next(&mut b).await;
    let stopping = tokio::spawn(proxy.shutdown());
    assert_eq!(next(&mut a).await, None);
    assert_eq!(next(&mut b).await, None);
    within(LIMIT, stopping).await.unwrap();
}

#[tokio::test]
async fn channels_and_metrics_count_streams_apart() {
    let origin = Origin::start(|req: &Recorded| match req.path() {
        "/poll" => Reply::hold("m"),
        _ => stream_on_path(req),
    })
    .await;
    let proxy = Proxy::to(origin.addr())
        .toml("[hold]\nmin_timeout_secs = 1\ndefault_timeout_secs = 60")
        .start()
        .await;
    let (mut s, _) = open(&proxy, "/stream/m", 1).await;
    next(&mut s).await;
    let _poll = Pending::get(proxy.addr(), "/poll");
    proxy.wait_held(2).await;
    let one = within(LIMIT, get(proxy.control_addr(), "/channels/m")).await;
    let one: Value = serde_json::from_slice(&one.body).unwrap();
    assert_eq!(
        (one["held"].clone(), one["streams"].clone()),
        (json!(1), json!(1))
    );
    let list = within(LIMIT, get(proxy.control_addr(), "/channels")).await;
    let list: Value = serde_json::from_slice(&list.body).unwrap();
    assert_eq!(list["channels"][0]["streams"], json!(1));
    assert_eq!(list["channels"][0]["held"], json!(1));
    publish(&proxy, items(&[chunk("m", "a"), chunk("m", "b")])).await;
    next(&mut s).await;
    let text = within(LIMIT, get(proxy.control_addr(), "/metrics")).await;
    let text = text.text();
    for want in [
        "grip_proxy_streams_open 1",
        "grip_proxy_held_clients 2",
        "grip_proxy_streams_opened_total 1",
    ] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    assert!(text.contains("grip_proxy_stream_items_total"), "{text}");
}

#[tokio::test]
async fn a_recovery_makes_a_linked_stream_catch_up_and_cuts_off_one_that_cannot() {
    let origin = Origin::start(|req: &Recorded| match req.path() {
        "/linked" => stream_hold("start\n", "r").header("Grip-Link", "</next>; rel=next"),
        "/next" => stream_hold("what you missed\n", "r"),
        _ => stream_hold("start\n", "r"),
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let (mut linked, _) = open(&proxy, "/linked", 1).await;
    let (mut plain, _) = open(&proxy, "/plain", 2).await;
    next(&mut linked).await;
    next(&mut plain).await;
    let req = request("POST", "/recover").body(empty()).unwrap();
    assert_eq!(
        within(LIMIT, send(proxy.control_addr(), req)).await.status,
        200
    );
    assert_eq!(
        next(&mut linked).await.as_deref(),
        Some("what you missed\n")
    );
    // The stream without a link is cut off without its last chunk: its client sees a broken stream and reconnects.
    assert!(within(LIMIT, plain.closed()).await);
    proxy.wait_held(1).await;
    publish(&proxy, items(&[chunk("r", "after\n")])).await;
    assert_eq!(next(&mut linked).await.as_deref(), Some("after\n"));
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_link_fetch_under_way() {
    let origin = Origin::start(|req: &Recorded| match req.path() {
        "/s" => stream_hold("start\n", "c").header("Grip-Link", "</slow>; rel=next"),
        _ => Reply::text("late\n").delay(Duration::from_secs(20)),
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let (mut conn, _) = open(&proxy, "/s", 1).await;
    next(&mut conn).await;
    publish(&proxy, items(&[hint("c")])).await;
    within(LIMIT, origin.nth(1)).await; // the link fetch is under way
    let started = Instant::now();
    let stopping = tokio::spawn(proxy.shutdown());
    assert_eq!(next(&mut conn).await, None, "the last chunk, at once");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    within(LIMIT, stopping).await.unwrap();
}

#[tokio::test]
async fn links_that_never_hold_again_are_followed_a_bounded_number_of_times() {
    let origin = Origin::start(|req: &Recorded| match req.path() {
        "/s" => stream_hold("start\n", "c").header("Grip-Link", "</page>; rel=next"),
        _ => Reply::text("p\n").header("Grip-Link", "</page>; rel=next"),
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let (mut conn, _) = open(&proxy, "/s", 1).await;
    next(&mut conn).await;
    publish(&proxy, items(&[hint("c")])).await;
    let mut pages = String::new();
    while let Some(piece) = next(&mut conn).await {
        pages.push_str(&piece);
    }
    // 100 pages followed, the 101st answer appended, then the end.
    assert_eq!(pages, "p\n".repeat(101));
    assert_eq!(origin.count(), 1 + 101);
}

#[tokio::test]
async fn an_idle_stream_is_written_by_the_publishing_thread_and_what_its_socket_does_not_take_follows_in_order(
) {
    let origin = Origin::start(stream_on_path).await;
    let proxy = Proxy::to(origin.addr())
        .toml("[control]\nmax_body = 40000000\n[hold]\nmax_stream_queue = 40000000")
        .start()
        .await;
    let (mut conn, _) = open(&proxy, "/stream/c", 1).await;
    assert_eq!(next(&mut conn).await.as_deref(), Some("first\n"));
    // Once the stream's connection has nothing left to write, a publish writes the next item itself. Items are
    // published one at a time until one was (the first almost always is), each read in order.
    let mut sent = 0;
    while proxy.registry().stream_items_written() == 0 {
        assert!(sent < 20, "no item was written by its publish");
        sent += 1;
        publish(&proxy, items(&[chunk("c", &format!("item {sent}"))])).await;
        assert_eq!(next(&mut conn).await, Some(format!("item {sent}")));
    }

    // The client reads nothing while a 16 MB item and three small ones are published: the socket takes part of the
    // big one from its publish, the connection writes the rest, then the others, in order.
    let big: String = (0..16 * 1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let whole = proxy.registry().stream_items_written();
    publish(&proxy, items(&[chunk("c", &big)])).await;
    publish(&proxy, items(&[chunk("c", "x"), chunk("c", "y")])).await;
    publish(&proxy, items(&[chunk("c", "z")])).await;
    assert_eq!(
        proxy.registry().stream_items_written(),
        whole,
        "the big item went out in part, the others queued behind it"
    );
    let read = within(LIMIT, conn.next_chunk()).await.unwrap();
    assert!(read == big.as_bytes(), "the big item arrives whole");
    for want in ["x", "y", "z"] {
        assert_eq!(next(&mut conn).await.as_deref(), Some(want));
    }
    publish(&proxy, items(&[close("c")])).await;
    assert_eq!(next(&mut conn).await, None, "then the end");
}
