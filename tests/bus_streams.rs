//! The Redis bus with `bus.transport = "stream"` over real sockets: two proxy instances and a real
//! `redis-server`. Publishes are shared through a Redis stream; an instance cut from Redis resumes from the last
//! entry it applied (nothing lost, nothing twice, nothing re-fetched), and falls back to re-fetching its held
//! clients only when Redis lost the entries it needs. Without `redis-server` on PATH these tests say so on stderr
//! and pass (except under CI, where they fail: CI must run them).

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::net::SocketAddr;

use serde_json::{json, Value};
use support::redis_server::{first_holds_then_fresh, redis_or_skip, RedisServer};
use support::*;

/// The stream every instance shares with the default `bus.prefix`.
const STREAM: &str = "grip-proxy:items";

/// `[bus]` on the stream transport, reconnecting after `reconnect` seconds (then at most 0.2 s more).
fn stream_toml(url: &str, reconnect: f64) -> String {
    let max = reconnect.max(0.2);
    format!(
        "[bus]\nurl = \"{url}\"\ntransport = \"stream\"\nreconnect_min_secs = {reconnect}\nreconnect_max_secs = {max}"
    )
}

/// A proxy in front of `origin` on the stream bus at `url`, connected.
async fn instance(origin: SocketAddr, url: &str, reconnect: f64) -> Proxy {
    let proxy = Proxy::to(origin)
        .toml(&stream_toml(url, reconnect))
        .start()
        .await;
    proxy.wait_bus(true).await;
    proxy
}

fn int(value: redis::Value) -> i64 {
    match value {
        redis::Value::Int(n) => n,
        other => panic!("not an integer: {other:?}"),
    }
}

/// `/hold/<channel>` holds on that channel; anything else is plain data.
fn hold_on_path(req: &Recorded) -> Reply {
    match req.path().strip_prefix("/hold/") {
        Some(channel) => Reply::hold(channel),
        None => Reply::text("plain"),
    }
}

#[tokio::test]
async fn a_publish_to_one_instance_is_added_to_the_stream_and_releases_a_client_held_on_the_other()
{
    let redis = redis_or_skip!(
        "a_publish_to_one_instance_is_added_to_the_stream_and_releases_a_client_held_on_the_other"
    );
    let origin = Origin::start(hold_on_path).await;
    let a = instance(origin.addr(), &redis.url(), 0.02).await;
    let b = instance(origin.addr(), &redis.url(), 0.02).await;
    let on_b = Pending::get(b.addr(), "/hold/news");
    b.wait_held(1).await;

    let resp = publish(&a, items(&[item("news", "from a\n")])).await;

    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(on_b.response().await.text(), "from a\n");
    a.wait_received(1).await;
    b.wait_received(1).await;
    assert_eq!(int(redis.command(&["XLEN", STREAM]).await), 1, "one entry");
    assert_eq!(
        redis.publish("grip-proxy:publish", "{}").await,
        0,
        "no pub/sub subscriber"
    );
    assert_eq!(a.bus_status().published, 1);
    assert_eq!(origin.count(), 1, "released, not re-fetched");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn redis_restarted_without_its_data_makes_both_instances_re_fetch_their_held_clients() {
    let mut redis = redis_or_skip!(
        "redis_restarted_without_its_data_makes_both_instances_re_fetch_their_held_clients"
    );
    let (seen, handler) = first_holds_then_fresh();
    let origin = Origin::start(handler).await;
    let a = instance(origin.addr(), &redis.url(), 0.02).await;
    let b = instance(origin.addr(), &redis.url(), 0.02).await;
    // Both have applied an entry: they have a position in the stream to resume from.
    assert_eq!(
        publish(&a, items(&[item("elsewhere", "")])).await.status,
        200
    );
    a.wait_received(1).await;
    b.wait_received(1).await;
    let x = Pending::get(a.addr(), "/x");
    let y = Pending::get(b.addr(), "/y");
    a.wait_held(1).await;
    b.wait_held(1).await;

    // SIGKILL, and back on the same port with persistence off: the stream is gone.
    redis.kill();
    a.wait_bus(false).await;
    b.wait_bus(false).await;
    publish(&a, items(&[item("c", "lost")]))
        .await
        .assert_proxy_error(503);
    assert!(
        !x.is_finished() && !y.is_finished(),
        "held clients stay held"
    );
    redis.restart().await;
    a.wait_bus(true).await;
    b.wait_bus(true).await;

    // The entries after theirs are not in Redis any more: each held client is re-fetched.
    assert_eq!(x.response().await.text(), "fresh /x");
    assert_eq!(y.response().await.text(), "fresh /y");
    assert_eq!(seen.lock().get("/x"), Some(&2));
    assert_eq!(seen.lock().get("/y"), Some(&2));
    for proxy in [&a, &b] {
        let status = proxy.bus_status();
        assert_eq!(status.connects, 2);
        assert_eq!(status.refetched, 1);
    }
    // Delivery goes on through the new stream.
    let z = Pending::get(a.addr(), "/z");
    a.wait_held(1).await;
    let resp = publish(&b, items(&[item("c", "back")])).await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(z.response().await.text(), "back");
}

/// Any request opens a stream on channel `live`, starting with `open\n`.
fn live_stream(_: &Recorded) -> Reply {
    Reply::text("open\n")
        .header("Grip-Hold", "stream")
        .header("Grip-Channel", "live")
}

/// A stream on `live` through `proxy`, its first piece read, held.
async fn open_live(proxy: &Proxy) -> RawConn {
    let mut conn = RawConn::open(proxy.addr()).await;
    conn.write(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n").await;
    within(LIMIT, conn.read_head()).await;
    assert_eq!(within(LIMIT, conn.next_chunk()).await.unwrap(), "open\n");
    proxy.wait_held(1).await;
    conn
}

/// An `http-stream` item `id` after `id - 1`, whose content is `<id>\n`.
fn numbered_chunk(id: u64) -> Value {
    json!({"channel": "live", "id": id.to_string(), "prev-id": (id - 1).to_string(),
        "formats": {"http-stream": {"content": format!("{id}\n")}}})
}

/// Publishes item `id` through `to`; a 503 (the instance's own bus connection was cut too) is retried once
/// that instance is connected again, as a publisher honouring `Retry-After` would.
async fn publish_until_accepted(to: &Proxy, id: u64) {
    publish_retrying(to, items(&[numbered_chunk(id)])).await;
}

async fn publish_retrying(to: &Proxy, body: Value) {
    for _ in 0..5 {
        let resp = publish(to, body.clone()).await;
        match resp.status.as_u16() {
            200 => return,
            503 => to.wait_bus(true).await,
            other => panic!("{body}: {other} {:?}", resp.body),
        }
    }
    panic!("{body}: still refused");
}

#[tokio::test]
async fn an_instance_cut_from_redis_resumes_the_stream_every_item_once_in_order_without_re_fetch() {
    let redis = redis_or_skip!(
        "an_instance_cut_from_redis_resumes_the_stream_every_item_once_in_order_without_re_fetch"
    );
    let origin = Origin::start(live_stream).await;
    let a = instance(origin.addr(), &redis.url(), 0.02).await;
    // B waits 2 s before reconnecting: items published through A meanwhile are certainly missed on the wire.
    let b = instance(origin.addr(), &redis.url(), 2.0).await;
    publish_until_accepted(&a, 1).await;
    b.wait_received(1).await;
    let mut conn = open_live(&b).await;

    for id in 2..=10 {
        publish_until_accepted(&a, id).await;
    }
    // Cut every client connection (both instances' readers and publish connections) from a connection of
    // our own, which Redis spares.
    let killed = int(redis.command(&["CLIENT", "KILL", "TYPE", "normal"]).await);
    assert!(killed >= 2, "killed {killed}");
    b.wait_bus(false).await;
    for id in 11..=20 {
        publish_until_accepted(&a, id).await;
    }
    assert!(
        !b.bus_status().connected,
        "B was still cut off while 11..=20 were published"
    );
    b.wait_bus(true).await;
    for id in 21..=30 {
        publish_until_accepted(&a, id).await;
    }

    let want: String = (2..=30).map(|id| format!("{id}\n")).collect();
    let mut got = String::new();
    while got.len() < want.len() {
        let chunk = within(LIMIT, conn.next_chunk()).await.unwrap();
        got.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(got, want, "every item once, in order");
    b.wait_received(30).await;
    let status = b.bus_status();
    assert_eq!(status.received, 30, "each entry applied once: {status:?}");
    assert_eq!(status.dropped, 0);
    assert_eq!(status.connects, 2);
    assert_eq!(status.refetched, 0, "resumed, not recovered");
    assert_eq!(a.bus_status().refetched, 0);
    assert_eq!(b.registry().last_id("live").as_deref(), Some("30"));
    // One request ever: the stream was not re-fetched, and no request carried Grip-Last.
    assert_eq!(origin.count(), 1);
    assert!(origin
        .requests()
        .iter()
        .all(|req| req.header("grip-last").is_none()));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn entries_trimmed_while_an_instance_was_cut_off_make_it_re_fetch() {
    let redis = redis_or_skip!("entries_trimmed_while_an_instance_was_cut_off_make_it_re_fetch");
    let (seen, handler) = first_holds_then_fresh();
    let origin = Origin::start(handler).await;
    let a = instance(origin.addr(), &redis.url(), 0.02).await;
    let b = instance(origin.addr(), &redis.url(), 2.0).await;
    assert_eq!(publish(&a, items(&[item("other", "")])).await.status, 200);
    b.wait_received(1).await;
    let y = Pending::get(b.addr(), "/y");
    b.wait_held(1).await;

    redis.command(&["CLIENT", "KILL", "TYPE", "normal"]).await;
    b.wait_bus(false).await;
    for _ in 0..3 {
        publish_retrying(&a, items(&[item("other", "")])).await;
    }
    // Exact trimming to the newest entry: those after B's position are gone.
    assert_eq!(
        int(redis.command(&["XTRIM", STREAM, "MAXLEN", "1"]).await),
        3
    );
    b.wait_bus(true).await;

    assert_eq!(y.response().await.text(), "fresh /y");
    assert_eq!(seen.lock().get("/y"), Some(&2));
    assert_eq!(b.bus_status().refetched, 1);
    assert_eq!(a.bus_status().refetched, 0, "A missed nothing");
}

#[tokio::test]
async fn a_frozen_redis_is_noticed_by_the_blocked_read_timing_out_and_reading_resumes_without_re_fetch(
) {
    let redis = redis_or_skip!(
        "a_frozen_redis_is_noticed_by_the_blocked_read_timing_out_and_reading_resumes_without_re_fetch"
    );
    let origin = Origin::start(hold_on_path).await;
    let a = Proxy::to(origin.addr())
        .toml(&stream_toml(&redis.url(), 0.02))
        .toml("connect_timeout_secs = 0.5\ncommand_timeout_secs = 0.5\nping_interval_secs = 0.05")
        .start()
        .await;
    a.wait_bus(true).await;
    assert_eq!(publish(&a, items(&[item("other", "")])).await.status, 200);
    a.wait_received(1).await;
    // Empty reads after their block time are the health check.
    a.wait_status(|s| s.pings >= 2).await;
    let x = Pending::get(a.addr(), "/hold/c");
    a.wait_held(1).await;

    // The connection stays open, but nothing answers: only the read's own deadline can tell.
    redis.pause();
    a.wait_bus(false).await;
    publish(&a, items(&[item("c", "frozen")]))
        .await
        .assert_proxy_error(503);
    assert!(!x.is_finished(), "held clients stay held");
    redis.resume();
    a.wait_bus(true).await;

    // Resumed from its last entry: nothing re-fetched, and the next publish releases the client.
    let resp = publish(&a, items(&[item("c", "thawed")])).await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(x.response().await.text(), "thawed");
    let status = a.bus_status();
    assert_eq!(status.connects, 2);
    assert_eq!(status.refetched, 0);
    assert_eq!(origin.count(), 1, "not re-fetched");
}

/// `/poll?after=N` holds on `c` after N, `/s?after=N` streams on it after N (with the `rel=next` link a stream
/// with a prev-id needs); a re-fetch (`Grip-Last`) answers plain data naming the id it was asked after.
fn catch_up_origin(req: &Recorded) -> Reply {
    if let Some(last) = req.header("grip-last") {
        return Reply::text(&format!("caught up from {last}"));
    }
    let after = req.uri.split_once("after=").map(|(_, n)| n.to_owned());
    let channel = after.map_or("c".to_owned(), |n| format!("c; prev-id={n}"));
    match req.path() {
        "/s" => Reply::text("start\n")
            .header("Grip-Hold", "stream")
            .header("Grip-Channel", &channel)
            .header("Grip-Link", "</next>; rel=next"),
        _ => Reply::hold(&channel),
    }
}

/// Item `n` on `c` after `n - 1`, in both formats: `<n>\n`.
fn both_formats(n: u64) -> Value {
    let mut item = numbered(
        "c",
        n,
        n.checked_sub(1).filter(|p| *p > 0),
        &format!("{n}\n"),
    );
    item["formats"]["http-stream"] = json!({"content": format!("{n}\n")});
    item
}

#[tokio::test]
async fn an_instance_started_later_reads_the_stream_back_and_catches_clients_up_from_it() {
    let redis = redis_or_skip!(
        "an_instance_started_later_reads_the_stream_back_and_catches_clients_up_from_it"
    );
    let origin = Origin::start(catch_up_origin).await;
    let with_history = format!("{}\n[history]\nitems = 10", stream_toml(&redis.url(), 0.02));
    let addr = origin.addr();
    let start = |toml: String| async move {
        let proxy = Proxy::to(addr).toml(&toml).start().await;
        proxy.wait_bus(true).await;
        proxy
    };
    let a = start(with_history.clone()).await;
    for n in 1..=5 {
        assert_eq!(publish(&a, items(&[both_formats(n)])).await.status, 200);
    }
    a.wait_received(5).await;

    // B starts after all five: it reads them back without anyone to release.
    let b = start(with_history).await;
    assert_eq!(b.registry().last_id("c").as_deref(), Some("5"));
    assert_eq!(b.registry().history_of("c").0, 5);
    assert_eq!(b.bus_status().received, 0, "read back, not received live");

    // A response hold behind gets the next item at once, from B's memory.
    let resp = b.get("/poll?after=3").await;
    assert_eq!(resp.text(), "4\n");
    // A stream behind gets what it missed, in order, from B's memory.
    let mut stream = RawConn::open(b.addr()).await;
    stream
        .write(b"GET /s?after=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(within(LIMIT, stream.read_head()).await.status, 200);
    let mut got = String::new();
    while got.len() < "start\n3\n4\n5\n".len() {
        let chunk = within(LIMIT, stream.next_chunk())
            .await
            .expect("stream ended");
        got.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(got, "start\n3\n4\n5\n");
    assert_eq!(origin.count(), 2, "no Grip-Last re-fetch, no link followed");

    // Up to date: held, and released by the next publish through A.
    let current = Pending::get(b.addr(), "/poll?after=5");
    b.wait_held(2).await;
    assert_eq!(publish(&a, items(&[both_formats(6)])).await.status, 200);
    assert_eq!(current.response().await.text(), "6\n");
    let chunk = within(LIMIT, stream.next_chunk())
        .await
        .expect("stream ended");
    assert_eq!(std::str::from_utf8(&chunk).unwrap(), "6\n");
    assert!(origin
        .requests()
        .iter()
        .all(|r| r.header("grip-last").is_none()));
    assert_eq!(b.bus_status().refetched, 0);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn entries_older_than_the_last_id_ttl_are_not_read_back() {
    let redis = redis_or_skip!("entries_older_than_the_last_id_ttl_are_not_read_back");
    // An entry with an explicit id from long ago, then a recent one.
    redis
        .command(&[
            "XADD",
            STREAM,
            "1000-0",
            "payload",
            &items(&[numbered("old", 1, None, "")]).to_string(),
        ])
        .await;
    redis
        .command(&[
            "XADD",
            STREAM,
            "*",
            "payload",
            &items(&[numbered("new", 7, None, "")]).to_string(),
        ])
        .await;
    let origin = Origin::start(hold_on_path).await;
    let b = instance(origin.addr(), &redis.url(), 0.02).await;
    assert_eq!(b.registry().last_id("new").as_deref(), Some("7"));
    assert_eq!(
        b.registry().last_id("old"),
        None,
        "older than last_ids.ttl_secs"
    );
    b.shutdown().await;
}

#[tokio::test]
async fn redis_killed_and_restarted_with_its_data_under_steady_publishes_loses_and_repeats_nothing()
{
    let Some(mut redis) = RedisServer::persistent_or_skip(
        "bus_streams::redis_killed_and_restarted_with_its_data_under_steady_publishes_loses_and_repeats_nothing",
    )
    .await
    else {
        return;
    };
    let origin = Origin::start(live_stream).await;
    let a = instance(origin.addr(), &redis.url(), 0.02).await;
    let b = instance(origin.addr(), &redis.url(), 0.02).await;
    publish_until_accepted(&a, 1).await;
    a.wait_received(1).await;
    b.wait_received(1).await;
    let mut streams = Vec::new();
    for proxy in [&a, &b] {
        streams.push(open_live(proxy).await);
    }

    // Items 2..=40 through A, one after another, while Redis is killed and started again on its data.
    let publisher = publish_steadily(&a, 2..=40);
    b.wait_received(10).await;
    redis.kill();
    b.wait_bus(false).await;
    redis.restart().await;
    within(std::time::Duration::from_secs(20), publisher)
        .await
        .unwrap();

    every_item_once_in_order(&mut streams, 2..=40, [&a, &b]).await;
    assert_eq!(
        origin.count(),
        2,
        "one request per stream: nothing re-fetched"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Publishes `ids` through `to` one after another, each retried on 503 (a 20 ms pause) as a publisher honouring
/// `Retry-After` does, in a task of its own.
fn publish_steadily(to: &Proxy, ids: std::ops::RangeInclusive<u64>) -> tokio::task::JoinHandle<()> {
    let control = to.control_addr();
    tokio::spawn(async move {
        for id in ids {
            loop {
                let req = request("POST", "/publish/")
                    .header("content-type", "application/json")
                    .body(full(items(&[numbered_chunk(id)]).to_string()))
                    .unwrap();
                let resp = within(LIMIT, send(control, req)).await;
                match resp.status.as_u16() {
                    200 => break,
                    503 => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
                    other => panic!("item {id}: {other}"),
                }
            }
        }
    })
}

/// Each stream got `ids` once each, in order, and each instance resumed without re-fetching anyone.
async fn every_item_once_in_order<const N: usize>(
    streams: &mut [RawConn],
    ids: std::ops::RangeInclusive<u64>,
    instances: [&Proxy; N],
) {
    let last = ids.end().to_string();
    let want: String = ids.map(|id| format!("{id}\n")).collect();
    for conn in streams {
        let mut got = String::new();
        while got.len() < want.len() {
            let chunk = within(LIMIT, conn.next_chunk()).await.unwrap();
            got.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert_eq!(got, want, "every item once, in order");
    }
    for proxy in instances {
        let status = proxy.bus_status();
        assert!(status.connects >= 2, "{status:?}");
        assert_eq!(status.refetched, 0, "resumed, not re-fetched: {status:?}");
        assert_eq!(proxy.registry().last_id("live").as_deref(), Some(&*last));
    }
}

#[tokio::test]
async fn redis_frozen_under_steady_publishes_loses_and_repeats_nothing_on_either_instance() {
    let redis = redis_or_skip!(
        "redis_frozen_under_steady_publishes_loses_and_repeats_nothing_on_either_instance"
    );
    let origin = Origin::start(live_stream).await;
    let quick = "connect_timeout_secs = 0.5\ncommand_timeout_secs = 0.5\nping_interval_secs = 0.05";
    let mut instances = Vec::new();
    for _ in 0..2 {
        let proxy = Proxy::to(origin.addr())
            .toml(&stream_toml(&redis.url(), 0.02))
            .toml(quick)
            .start()
            .await;
        proxy.wait_bus(true).await;
        instances.push(proxy);
    }
    let (a, b) = (&instances[0], &instances[1]);
    publish_until_accepted(a, 1).await;
    b.wait_received(1).await;
    let mut streams = vec![open_live(a).await, open_live(b).await];

    // Items 2..=40 through A while Redis is frozen (SIGSTOP) for a while: a publish that times out is sent again,
    // and may then be in the stream twice; the registries drop the second copy by its id.
    let publisher = publish_steadily(a, 2..=40);
    b.wait_received(10).await;
    redis.pause();
    a.wait_bus(false).await;
    b.wait_bus(false).await;
    redis.resume();
    within(std::time::Duration::from_secs(20), publisher)
        .await
        .unwrap();
    every_item_once_in_order(&mut streams, 2..=40, [a, b]).await;
    assert_eq!(
        origin.count(),
        2,
        "one request per stream: nothing re-fetched"
    );
}
