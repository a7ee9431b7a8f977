//! The Redis bus over real sockets: two proxy instances and a real `redis-server`. A publish to either instance
//! (or straight into Redis) reaches the clients held on both, in the same order, with the same last ids; Redis
//! down at start-up, lost and back. Without `redis-server` on PATH these tests say so on stderr and pass (except
//! under CI, where they fail: CI must run them).

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use grip_proxy::{App, Config};
use support::redis_server::{first_holds_then_fresh, redis_or_skip, RedisServer};
use support::*;
use tokio::time::Instant;

/// The channel every instance shares with the default `bus.prefix`.
const CHANNEL: &str = "grip-proxy:publish";

/// `[bus]` for a test: fast reconnects, so a restarted Redis is found again within milliseconds. More `[bus]`
/// keys may follow.
fn bus_toml(url: &str) -> String {
    format!("[bus]\nurl = \"{url}\"\nreconnect_min_secs = 0.02\nreconnect_max_secs = 0.2")
}

/// A proxy in front of `origin` on the Redis bus at `url` (not waiting for it to connect).
async fn instance(origin: SocketAddr, url: &str) -> Proxy {
    Proxy::to(origin).toml(&bus_toml(url)).start().await
}

/// Two instances sharing the bus, both subscribed.
async fn two_instances(origin: SocketAddr, redis: &RedisServer) -> (Proxy, Proxy) {
    let a = instance(origin, &redis.url()).await;
    let b = instance(origin, &redis.url()).await;
    a.wait_bus(true).await;
    b.wait_bus(true).await;
    (a, b)
}

/// `/hold/<channel>` holds on that channel; a request with `Grip-Last` gets data naming it; anything else is
/// plain data.
fn hold_on_path(req: &Recorded) -> Reply {
    if let Some(last) = req.header("grip-last") {
        return Reply::text(&format!("caught up from {last}"));
    }
    match req.path().strip_prefix("/hold/") {
        Some(channel) => Reply::hold(channel),
        None => Reply::text("plain"),
    }
}

#[tokio::test]
async fn a_client_held_on_one_instance_is_released_by_a_publish_to_the_other() {
    let redis =
        redis_or_skip!("a_client_held_on_one_instance_is_released_by_a_publish_to_the_other");
    let origin = Origin::start(hold_on_path).await;
    let (a, b) = two_instances(origin.addr(), &redis).await;
    let client = Pending::get(a.addr(), "/hold/news");
    a.wait_held(1).await;

    let resp = publish(&b, items(&[item("news", "from b\n")])).await;

    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(resp.text(), "Published\n");
    assert_eq!(client.response().await.text(), "from b\n");
    a.wait_received(1).await;
    b.wait_received(1).await;
    assert_eq!(b.bus_status().published, 1);
    assert_eq!(a.bus_status().published, 0);
    assert_eq!(origin.count(), 1, "released, not re-fetched");
    // The subscriber task stops with the instance.
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_stream_on_one_instance_gets_http_stream_items_published_to_the_other_in_order() {
    let redis = redis_or_skip!(
        "a_stream_on_one_instance_gets_http_stream_items_published_to_the_other_in_order"
    );
    let origin = Origin::start(|_: &Recorded| {
        Reply::text("open\n")
            .header("Grip-Hold", "stream")
            .header("Grip-Channel", "live")
    })
    .await;
    let (a, b) = two_instances(origin.addr(), &redis).await;
    let mut conn = RawConn::open(a.addr()).await;
    conn.write(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n").await;
    within(LIMIT, conn.read_head()).await;
    assert_eq!(within(LIMIT, conn.next_chunk()).await.unwrap(), "open\n");
    a.wait_held(1).await;
    for (n, to) in [(1, &b), (2, &a), (3, &b)] {
        let item = serde_json::json!({"channel": "live", "id": n.to_string(),
            "formats": {"http-stream": {"content": format!("{n}\n")}}});
        assert_eq!(publish(to, items(&[item])).await.status, 200);
    }
    let mut got = String::new();
    while got.len() < 6 {
        got.push_str(
            std::str::from_utf8(&within(LIMIT, conn.next_chunk()).await.unwrap()).unwrap(),
        );
    }
    assert_eq!(got, "1\n2\n3\n");
    publish(
        &b,
        items(&[serde_json::json!({"channel": "live", "http-stream": {"action": "close"}})]),
    )
    .await;
    assert_eq!(within(LIMIT, conn.next_chunk()).await, None);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn an_item_published_straight_into_redis_releases_clients_on_both_instances() {
    let redis =
        redis_or_skip!("an_item_published_straight_into_redis_releases_clients_on_both_instances");
    let origin = Origin::start(hold_on_path).await;
    let (a, b) = two_instances(origin.addr(), &redis).await;
    let on_a = Pending::get(a.addr(), "/hold/news");
    let on_b = Pending::get(b.addr(), "/hold/news");
    a.wait_held(1).await;
    b.wait_held(1).await;

    let body = items(&[item("news", "straight from redis\n")]).to_string();
    let subscribers = redis.publish(CHANNEL, &body).await;

    assert_eq!(subscribers, 2, "both instances are subscribed");
    assert_eq!(on_a.response().await.text(), "straight from redis\n");
    assert_eq!(on_b.response().await.text(), "straight from redis\n");
    // Something that is not a publish body is dropped (and counted), not applied.
    redis.publish(CHANNEL, "not json").await;
    a.wait_received(2).await;
    assert_eq!(a.bus_status().dropped, 1);
}

#[tokio::test]
async fn each_instance_keeps_its_own_history_and_answers_a_hold_behind_from_it() {
    let redis =
        redis_or_skip!("each_instance_keeps_its_own_history_and_answers_a_hold_behind_from_it");
    let origin = Origin::start(|req| match req.path() {
        "/behind" if req.header("grip-last").is_none() => Reply::hold("c; prev-id=1"),
        _ => hold_on_path(req),
    })
    .await;
    let history = format!("{}\n[history]\nitems = 10", bus_toml(&redis.url()));
    let a = Proxy::to(origin.addr()).toml(&history).start().await;
    let b = Proxy::to(origin.addr()).toml(&history).start().await;
    a.wait_bus(true).await;
    b.wait_bus(true).await;
    for (id, to) in [(1, &b), (2, &a), (3, &b)] {
        let prev = (id > 1).then(|| id - 1);
        let resp = publish(to, items(&[numbered("c", id, prev, &id.to_string())])).await;
        assert_eq!(resp.status, 200, "item {id}: {:?}", resp.body);
    }
    a.wait_received(3).await;
    b.wait_received(3).await;
    for instance in [&a, &b] {
        assert_eq!(instance.registry().history_of("c").0, 3);
        let resp = instance.get("/behind").await;
        assert_eq!(
            resp.text(),
            "2",
            "the item after 1, from this instance's history"
        );
    }
    assert_eq!(
        origin.count(),
        2,
        "one request per client: nothing re-fetched"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn items_published_to_alternating_instances_apply_in_one_order_with_the_same_last_ids() {
    let redis = redis_or_skip!(
        "items_published_to_alternating_instances_apply_in_one_order_with_the_same_last_ids"
    );
    let origin = Origin::start(|req| match req.path() {
        "/stale" if req.header("grip-last").is_none() => Reply::hold("c; prev-id=2"),
        _ => hold_on_path(req),
    })
    .await;
    let (a, b) = two_instances(origin.addr(), &redis).await;
    let on_a = Pending::get(a.addr(), "/hold/c");
    let on_b = Pending::get(b.addr(), "/hold/c");
    a.wait_held(1).await;
    b.wait_held(1).await;

    for (id, to) in [(1, &b), (2, &a), (3, &b)] {
        let prev = (id > 1).then(|| id - 1);
        let resp = publish(to, items(&[numbered("c", id, prev, &id.to_string())])).await;
        assert_eq!(resp.status, 200, "item {id}: {:?}", resp.body);
    }

    // Both clients got the first item, whichever instance it was published to.
    assert_eq!(on_a.response().await.text(), "1");
    assert_eq!(on_b.response().await.text(), "1");
    a.wait_received(3).await;
    b.wait_received(3).await;
    assert_eq!(a.registry().last_id("c").as_deref(), Some("3"));
    assert_eq!(b.registry().last_id("c").as_deref(), Some("3"));
    // A hold whose prev-id is behind is re-fetched with Grip-Last on either instance.
    for proxy in [&a, &b] {
        assert_eq!(
            proxy.get("/stale").await.text(),
            "caught up from c; last-id=2"
        );
    }

    // Concurrent publishes to both instances: Redis picks one order, and every instance follows it.
    let mut sent = Vec::new();
    for id in 1..=20u64 {
        let to = if id % 2 == 0 { &a } else { &b };
        sent.push(publish(to, items(&[numbered("race", id, None, "x")])));
    }
    for resp in futures_util::future::join_all(sent).await {
        assert_eq!(resp.status, 200);
    }
    a.wait_received(23).await;
    b.wait_received(23).await;
    let last = a.registry().last_id("race");
    assert!(last.is_some());
    assert_eq!(last, b.registry().last_id("race"));
}

#[tokio::test]
async fn redis_lost_then_back_keeps_clients_held_refuses_publishes_then_re_fetches_them() {
    let mut redis = redis_or_skip!(
        "redis_lost_then_back_keeps_clients_held_refuses_publishes_then_re_fetches_them"
    );
    let (seen, handler) = first_holds_then_fresh();
    let origin = Origin::start(handler).await;
    let (a, b) = two_instances(origin.addr(), &redis).await;
    let x = Pending::get(a.addr(), "/x");
    let y = Pending::get(b.addr(), "/y");
    a.wait_held(1).await;
    b.wait_held(1).await;
    // B opens its publish connection now, so that it is a stale one after the restart.
    let warm_up = publish(&b, items(&[item("elsewhere", "")])).await;
    assert_eq!(warm_up.status, 200);

    redis.kill();
    a.wait_bus(false).await;
    b.wait_bus(false).await;

    let refused = publish(&a, items(&[item("c", "lost")])).await;
    refused.assert_proxy_error(503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(refused.text().contains("unavailable"), "{}", refused.text());
    let json_req = request("POST", "/publish/")
        .header("accept", "application/json")
        .body(full(items(&[item("c", "lost")]).to_string()))
        .unwrap();
    let refused = within(LIMIT, support::send(b.control_addr(), json_req)).await;
    assert_eq!(refused.status, 503);
    assert!(refused.text().contains("\"error\""), "{}", refused.text());
    assert_eq!(a.registry().held(), 1, "held clients stay held");
    assert_eq!(b.registry().held(), 1, "held clients stay held");
    assert!(!x.is_finished() && !y.is_finished());
    assert_eq!(origin.count(), 2);

    redis.restart().await;
    a.wait_bus(true).await;
    b.wait_bus(true).await;

    // They may have missed items: each is re-fetched from the origin, which now has data for them.
    assert_eq!(x.response().await.text(), "fresh /x");
    assert_eq!(y.response().await.text(), "fresh /y");
    assert_eq!(seen.lock().get("/x"), Some(&2));
    assert_eq!(seen.lock().get("/y"), Some(&2));
    assert_eq!(origin.count(), 4);
    for proxy in [&a, &b] {
        let status = proxy.bus_status();
        assert_eq!(status.connects, 2);
        assert_eq!(status.refetched, 1);
        assert_eq!(status.refused, 1);
    }
    assert_eq!(b.bus_status().published, 1);
    // Delivery resumes, through a publish connection made before the restart.
    let z = Pending::get(a.addr(), "/z");
    a.wait_held(1).await;
    let resp = publish(&b, items(&[item("c", "back")])).await;
    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(z.response().await.text(), "back");
}

#[tokio::test]
async fn a_frozen_redis_is_noticed_by_the_health_check_and_recovered_from() {
    let redis = redis_or_skip!("a_frozen_redis_is_noticed_by_the_health_check_and_recovered_from");
    let (seen, handler) = first_holds_then_fresh();
    let origin = Origin::start(handler).await;
    let a = Proxy::to(origin.addr())
        .toml(&bus_toml(&redis.url()))
        .toml("connect_timeout_secs = 0.5\ncommand_timeout_secs = 0.5\nping_interval_secs = 0.05")
        .start()
        .await;
    a.wait_bus(true).await;
    a.wait_status(|s| s.pings >= 2).await;
    assert_eq!(
        a.bus_status().connects,
        1,
        "answered PINGs keep the subscription"
    );
    let x = Pending::get(a.addr(), "/x");
    a.wait_held(1).await;

    // The connection stays open, but nothing answers: only the PING can tell.
    redis.pause();
    a.wait_bus(false).await;
    publish(&a, items(&[item("c", "frozen")]))
        .await
        .assert_proxy_error(503);
    assert!(!x.is_finished(), "held clients stay held");

    redis.resume();
    a.wait_bus(true).await;
    assert_eq!(x.response().await.text(), "fresh /x");
    assert_eq!(seen.lock().get("/x"), Some(&2));
}

#[tokio::test]
async fn with_redis_down_at_start_up_the_proxy_serves_and_subscribes_once_redis_is_up() {
    if !RedisServer::available() {
        // Says it loudly (or fails under CI).
        let _ = RedisServer::start_or_skip(
            "bus_redis::with_redis_down_at_start_up_the_proxy_serves_and_subscribes_once_redis_is_up",
        )
        .await;
        return;
    }
    let (seen, handler) = first_holds_then_fresh();
    let origin = Origin::start(handler).await;
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let a = instance(origin.addr(), &url).await;
    assert!(!a.bus_status().connected);
    let x = Pending::get(a.addr(), "/x");
    a.wait_held(1).await;
    publish(&a, items(&[item("c", "too early")]))
        .await
        .assert_proxy_error(503);

    let _redis = RedisServer::start_on(port).await.unwrap();
    a.wait_bus(true).await;

    assert_eq!(
        x.response().await.text(),
        "fresh /x",
        "held while the bus was down: re-fetched"
    );
    assert_eq!(seen.lock().get("/x"), Some(&2));
    let z = Pending::get(a.addr(), "/z");
    a.wait_held(1).await;
    assert_eq!(publish(&a, items(&[item("c", "now")])).await.status, 200);
    assert_eq!(z.response().await.text(), "now");
}

#[tokio::test]
async fn with_startup_fail_an_unreachable_redis_is_one_clear_error() {
    let port = free_port();
    let toml = format!(
        "[bus]\nurl = \"redis://:secret@127.0.0.1:{port}/0\"\nstartup = \"fail\"\nconnect_timeout_secs = 1.0"
    );
    let mut config = Config::from_toml_str(&toml).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.control_listen = "127.0.0.1:0".parse().unwrap();

    let err = within(LIMIT, App::start(config)).await.err().unwrap();

    let message = err.to_string();
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.starts_with(&format!(
            "cannot subscribe to the Redis bus at redis://:***@127.0.0.1:{port}/0 (bus.startup = \"fail\"): "
        )),
        "{message}"
    );
    assert!(!message.contains("secret"), "{message}");

    // The binary exits non-zero with that one line.
    let path =
        std::env::temp_dir().join(format!("grip-proxy-{}-bus-fail.toml", std::process::id()));
    std::fs::write(&path, &toml).unwrap();
    let out = within(
        LIMIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_grip-proxy"))
            .env_remove("GRIP_PROXY_CONFIG")
            .env_remove("GRIP_PROXY_BUS")
            .env("RUST_LOG", "off")
            .arg("--config")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0"])
            .output(),
    )
    .await
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot subscribe to the Redis bus"),
        "{stderr}"
    );
}

/// Cross-instance delivery latency: a client held on instance A, a publish POSTed to instance B (keep-alive
/// connection), timed until the client has its response. Prints p50/p99 (docs/scaling.md reports a release run:
/// `cargo test --release --test bus_redis cross_instance -- --nocapture`; `GRIP_BUS_LATENCY_ROUNDS` sets N).
/// The same loop on one memory-bus instance gives the baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cross_instance_delivery_latency() {
    let redis = redis_or_skip!("cross_instance_delivery_latency");
    let rounds: usize = std::env::var("GRIP_BUS_LATENCY_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let origin = Origin::start(hold_on_path).await;
    let (a, b) = two_instances(origin.addr(), &redis).await;
    let cross = measure(&a, &b, rounds).await;
    let single = Proxy::start(origin.addr()).await;
    let memory = measure(&single, &single, rounds).await;
    eprintln!("cross-instance delivery (Redis bus), {rounds} rounds: {cross}");
    eprintln!("same-instance delivery (memory bus), {rounds} rounds: {memory}");
}

/// Times `rounds` publishes to `to` releasing a client held on `held_on`; returns a summary line.
async fn measure(held_on: &Proxy, to: &Proxy, rounds: usize) -> String {
    let mut control = Conn::open(to.control_addr()).await;
    let mut samples = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let client = Pending::get(held_on.addr(), "/hold/latency");
        held_on.wait_held(1).await;
        let body = items(&[item("latency", &round.to_string())]).to_string();
        let req = request("POST", "/publish/").body(full(body)).unwrap();
        let started = Instant::now();
        let published = within(LIMIT, control.send(req)).await;
        let resp = client.response().await;
        samples.push(started.elapsed());
        assert_eq!(published.status, 200);
        assert_eq!(resp.text(), round.to_string());
        held_on.wait_held(0).await;
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        ms(at(0.50)),
        ms(at(0.99)),
        ms(at(1.0))
    )
}
