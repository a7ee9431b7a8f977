//! Catch-up from channel history over real sockets: a stream that comes back with a prev-id in the history gets
//! what it missed from memory, then live items; a response hold behind gets the next item at once; a prev-id
//! unknown or older than the history is re-fetched with `Grip-Last` as without history; what `/channels/<name>`
//! and `/metrics` say. The origin counts every request it gets.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::net::SocketAddr;

use serde_json::{json, Value};
use support::*;

/// History on: the last 3 items of each channel.
const HISTORY: &str = "[history]\nitems = 3";

/// `/s` opens a stream on `c`, after the id in `?after=N` if given (with the `rel=next` link a stream with a
/// prev-id needs); `/next` (the link) and any request with `Grip-Last` answer plain data naming what they were
/// asked; `/poll?after=N` is a response hold on `c` after N.
fn origin(req: &Recorded) -> Reply {
    if let Some(last) = req.header("grip-last") {
        return Reply::text(&format!("caught up from {last}"));
    }
    let after = req.uri.split_once("after=").map(|(_, n)| n.to_owned());
    let channel = match &after {
        Some(n) => format!("c; prev-id={n}"),
        None => "c".to_owned(),
    };
    match req.path() {
        "/s" => Reply::text("start\n")
            .header("Grip-Hold", "stream")
            .header("Grip-Channel", &channel)
            .header("Grip-Link", "</next>; rel=next"),
        "/poll" => Reply::hold(&channel),
        _ => Reply::text("from the origin\n"),
    }
}

/// An `http-stream` item on `c` with id `n`, after `n - 1` (the first names none).
fn piece(n: u64) -> Value {
    let mut item = json!({"channel": "c", "id": n.to_string(),
        "formats": {"http-stream": {"content": format!("{n}\n")}}});
    if n > 1 {
        item["prev-id"] = json!((n - 1).to_string());
    }
    item
}

/// An `http-response` item on `c` with id `n`, after `n - 1`, whose body is `n`.
fn answer(n: u64) -> Value {
    numbered(
        "c",
        n,
        n.checked_sub(1).filter(|p| *p > 0),
        &format!("{n}\n"),
    )
}

async fn publish_all(proxy: &Proxy, list: impl IntoIterator<Item = Value>) {
    for item in list {
        let resp = publish(proxy, items(&[item])).await;
        assert_eq!(resp.status, 200, "{:?}", resp.body);
    }
}

/// Opens a stream at `path` and reads its head; waits until `held` clients are held.
async fn open(proxy: &Proxy, path: &str, held: usize) -> RawConn {
    let mut conn = RawConn::open(proxy.addr()).await;
    conn.write(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await;
    let head = within(LIMIT, conn.read_head()).await;
    assert_eq!(head.status, 200);
    proxy.wait_held(held).await;
    conn
}

/// Reads the stream until `want` bytes of content came (pieces may come joined in one chunk).
async fn read_text(conn: &mut RawConn, want: usize) -> String {
    let mut got = String::new();
    while got.len() < want {
        let chunk = within(LIMIT, conn.next_chunk())
            .await
            .expect("stream ended");
        got.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    got
}

async fn control_json(proxy: &Proxy, path: &str) -> Value {
    let resp = within(LIMIT, get(proxy.control_addr(), path)).await;
    assert_eq!(resp.status, 200);
    serde_json::from_str(resp.text()).unwrap()
}

/// The value of one series of `/metrics`, e.g. `grip_proxy_history_items`; panics if absent.
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let text = within(LIMIT, get(addr, "/metrics")).await;
    let prefix = format!("{series} ");
    text.text()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no series {series} in\n{}", text.text()))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_stream_back_with_a_prev_id_in_the_history_gets_what_it_missed_from_memory_then_live_items(
) {
    let origin = Origin::start(origin).await;
    let proxy = Proxy::to(origin.addr()).toml(HISTORY).start().await;
    let mut first = open(&proxy, "/s", 1).await;
    assert_eq!(read_text(&mut first, 6).await, "start\n");
    publish_all(&proxy, (1..=2).map(piece)).await;
    assert_eq!(read_text(&mut first, 4).await, "1\n2\n");
    drop(first);
    proxy.wait_held(0).await;

    // Away while 3, 4 and 5 are published; back after 2 (an SSE client's Last-Event-ID, mapped by its origin).
    publish_all(&proxy, (3..=5).map(piece)).await;
    let mut again = open(&proxy, "/s?after=2", 1).await;
    assert_eq!(read_text(&mut again, 12).await, "start\n3\n4\n5\n");
    assert_eq!(
        origin.count(),
        2,
        "one request per stream opened: nothing re-fetched, no link followed"
    );

    // Then live, without a gap or a duplicate.
    publish_all(&proxy, [piece(6)]).await;
    assert_eq!(read_text(&mut again, 2).await, "6\n");
    assert_eq!(origin.count(), 2);
    assert_eq!(
        metric(
            proxy.control_addr(),
            "grip_proxy_history_hits_total{kind=\"stream\"}"
        )
        .await,
        3.0
    );
}

#[tokio::test]
async fn many_streams_back_together_each_get_every_item_once_in_order() {
    let origin = Origin::start(origin).await;
    let proxy = Proxy::to(origin.addr())
        .toml("[history]\nitems = 50")
        .start()
        .await;
    publish_all(&proxy, (1..=10).map(piece)).await;
    // Items keep coming while the streams subscribe: each must see 5.. in order, from memory then live.
    let mut streams = Vec::new();
    for i in 0..8 {
        let mut conn = RawConn::open(proxy.addr()).await;
        conn.write(b"GET /s?after=4 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        streams.push(conn);
        publish_all(&proxy, [piece(11 + i)]).await;
    }
    let expected: String = (5..=18).map(|n| format!("{n}\n")).collect();
    for conn in &mut streams {
        within(LIMIT, conn.read_head()).await;
        assert_eq!(
            read_text(conn, 6 + expected.len()).await,
            format!("start\n{expected}")
        );
    }
    assert_eq!(origin.count(), 8);
}

#[tokio::test]
async fn a_response_hold_behind_gets_the_next_item_from_the_history_at_once() {
    let origin = Origin::start(origin).await;
    let proxy = Proxy::to(origin.addr()).toml(HISTORY).start().await;
    publish_all(&proxy, (1..=5).map(answer)).await;

    let resp = proxy.get("/poll?after=3").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "4\n", "the item after 3, not a re-fetch");
    assert_eq!(origin.count(), 1, "no Grip-Last re-fetch");
    assert!(origin.requests()[0].header("grip-last").is_none());

    // Up to date: parks, and is released by the next publish as usual.
    let client = Pending::get(proxy.addr(), "/poll?after=5");
    proxy.wait_held(1).await;
    publish_all(&proxy, [answer(6)]).await;
    assert_eq!(client.response().await.text(), "6\n");
    assert_eq!(origin.count(), 2);
    assert_eq!(
        metric(
            proxy.control_addr(),
            "grip_proxy_history_hits_total{kind=\"response\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_prev_id_unknown_or_older_than_the_history_is_re_fetched_with_grip_last() {
    let origin = Origin::start(origin).await;
    let proxy = Proxy::to(origin.addr()).toml(HISTORY).start().await;
    publish_all(&proxy, (1..=6).map(answer)).await;
    assert_eq!(
        control_json(&proxy, "/channels/c").await["history"],
        json!({"items": 3, "bytes": proxy.registry().history_of("c").1}),
        "the last 3: 4, 5 and 6"
    );

    // 3 is the prev-id of item 4, the oldest kept: still served from memory.
    assert_eq!(proxy.get("/poll?after=3").await.text(), "4\n");
    assert_eq!(origin.count(), 1);
    // Item 3 (after 2) is gone: the origin is asked, with what the client last had.
    let resp = proxy.get("/poll?after=2").await;
    assert_eq!(resp.text(), "caught up from c; last-id=2");
    assert_eq!(origin.count(), 3);
    assert_eq!(
        origin.nth(2).await.header("grip-last"),
        Some("c; last-id=2")
    );
    // An id the channel never had.
    let resp = proxy.get("/poll?after=nope").await;
    assert_eq!(resp.text(), "caught up from c; last-id=nope");
    assert_eq!(origin.count(), 5);
    let control = proxy.control_addr();
    assert_eq!(
        metric(
            control,
            "grip_proxy_history_misses_total{kind=\"response\"}"
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(control, "grip_proxy_history_hits_total{kind=\"response\"}").await,
        1.0
    );
    assert_eq!(metric(control, "grip_proxy_history_items").await, 3.0);
    assert!(metric(control, "grip_proxy_history_bytes").await > 0.0);
}

#[tokio::test]
async fn a_stream_behind_the_history_follows_its_link_as_without_history() {
    let origin = Origin::start(origin).await;
    let proxy = Proxy::to(origin.addr()).toml(HISTORY).start().await;
    publish_all(&proxy, (1..=6).map(piece)).await;
    // After 1: item 2 is no longer kept. The stream is re-fetched with Grip-Last, as without history.
    let resp = proxy.get("/s?after=1").await;
    assert_eq!(resp.text(), "caught up from c; last-id=1");
    assert_eq!(origin.count(), 2);
    assert_eq!(
        metric(
            proxy.control_addr(),
            "grip_proxy_history_misses_total{kind=\"stream\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn without_history_a_hold_behind_is_re_fetched_and_nothing_is_kept() {
    let origin = Origin::start(origin).await;
    let proxy = Proxy::start(origin.addr()).await;
    publish_all(&proxy, (1..=5).map(answer)).await;
    let resp = proxy.get("/poll?after=3").await;
    assert_eq!(resp.text(), "caught up from c; last-id=3");
    assert_eq!(origin.count(), 2);
    assert_eq!(
        control_json(&proxy, "/channels/c").await["history"],
        json!({"items": 0, "bytes": 0})
    );
    assert_eq!(
        metric(
            proxy.control_addr(),
            "grip_proxy_history_misses_total{kind=\"response\"}"
        )
        .await,
        0.0,
        "no history, no miss"
    );
}

#[tokio::test]
async fn a_recovery_forgets_the_history_with_the_last_ids() {
    let origin = Origin::start(origin).await;
    let proxy = Proxy::to(origin.addr()).toml(HISTORY).start().await;
    publish_all(&proxy, (1..=3).map(answer)).await;
    assert_eq!(proxy.registry().history_of("c").0, 3);
    let req = request("POST", "/recover").body(empty()).unwrap();
    assert_eq!(
        within(LIMIT, send(proxy.control_addr(), req)).await.status,
        200
    );
    assert_eq!(proxy.registry().history_of("c"), (0, 0));
    assert_eq!(proxy.registry().history_totals(), Some((0, 0)));
}
