//! Fair-use limits over real sockets (`[limits]`): holds per client and per channel, the request rate per client
//! with its burst, clients named by a trusted proxy's `X-Forwarded-For`, the bounded table of clients, and the
//! refusal counters.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::task::JoinHandle;

/// An origin that holds every request on the channel named by its path (`/news` holds on `news`), and streams on
/// `/stream/<channel>`.
async fn origin_holding_on_path() -> Origin {
    Origin::start(|req| match req.path().strip_prefix("/stream/") {
        Some(channel) => Reply::text("first\n")
            .header("Grip-Hold", "stream")
            .header("Grip-Channel", channel),
        None => Reply::hold(&req.path()[1..]),
    })
    .await
}

/// A GET of `path` in a task of its own, with `X-Forwarded-For: xff` if given.
fn spawn_get(addr: SocketAddr, path: &str, xff: Option<&str>) -> JoinHandle<Resp> {
    let mut req = request("GET", path);
    if let Some(xff) = xff {
        req = req.header("x-forwarded-for", xff);
    }
    let req = req.body(empty()).unwrap();
    tokio::spawn(send(addr, req))
}

/// GETs `path` with `X-Forwarded-For: xff`, within `LIMIT`.
async fn get_as(proxy: &Proxy, path: &str, xff: &str) -> Resp {
    within(LIMIT, spawn_get(proxy.addr(), path, Some(xff)))
        .await
        .unwrap()
}

/// The value of one series of the proxy's `/metrics`.
async fn metric(proxy: &Proxy, series: &str) -> u64 {
    let resp = within(LIMIT, get(proxy.control_addr(), "/metrics")).await;
    let prefix = format!("{series} ");
    resp.text()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no series {series} in\n{}", resp.text()))
        .trim()
        .parse()
        .unwrap()
}

/// Panics unless `resp` is the proxy's 429 with a `Retry-After` from 1 to `max_retry` seconds.
#[track_caller]
fn assert_refused(resp: &Resp, max_retry: u64) {
    resp.assert_proxy_error(429);
    assert!(
        resp.text().starts_with("Too Many Requests"),
        "{}",
        resp.text()
    );
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=max_retry).contains(&retry), "Retry-After {retry}");
}

#[tokio::test]
async fn client_holds_at_their_bound_then_again_after_a_release() {
    let origin = origin_holding_on_path().await;
    let proxy = Proxy::to(origin.addr())
        .toml("[limits]\nclient_max_holds = 2")
        .start()
        .await;
    let a = Pending::get(proxy.addr(), "/a");
    let b = Pending::get(proxy.addr(), "/b");
    proxy.wait_held(2).await;

    // One above the bound: the origin asked to hold (and was asked), the hold is refused.
    let refused = proxy.get("/c").await;
    assert_refused(&refused, 1);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(origin.count(), 3, "the hold limit is checked at hold time");
    assert_eq!(
        metric(&proxy, r#"grip_proxy_refused_total{reason="client_holds"}"#).await,
        1
    );

    // A publish releases one: a place is free again.
    assert_eq!(
        publish(&proxy, items(&[item("a", "news")])).await.status,
        200
    );
    assert_eq!(a.response().await.text(), "news");
    proxy.wait_held(1).await;
    let c = Pending::get(proxy.addr(), "/c");
    proxy.wait_held(2).await;
    assert_refused(&proxy.get("/d").await, 1);
    assert_eq!(
        metric(&proxy, r#"grip_proxy_refused_total{reason="client_holds"}"#).await,
        2
    );
    assert_eq!(
        metric(&proxy, r#"grip_proxy_refused_total{reason="client_rate"}"#).await,
        0
    );
    publish(&proxy, items(&[item("b", "1")])).await;
    publish(&proxy, items(&[item("c", "2")])).await;
    assert_eq!(b.response().await.status, 200);
    assert_eq!(c.response().await.status, 200);
}

#[tokio::test]
async fn streams_count_as_client_holds() {
    let origin = origin_holding_on_path().await;
    let proxy = Proxy::to(origin.addr())
        .toml("[limits]\nclient_max_holds = 1")
        .start()
        .await;
    let mut stream = RawConn::open(proxy.addr()).await;
    stream
        .write(b"GET /stream/feed HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let head = within(LIMIT, stream.read_head()).await;
    assert_eq!(head.status, 200);
    proxy.wait_held(1).await;
    assert_refused(&proxy.get("/news").await, 1);
    // The stream ends (its client leaves): its place is given back.
    drop(stream);
    proxy.wait_held(0).await;
    let _held = Pending::get(proxy.addr(), "/news");
    proxy.wait_held(1).await;
}

#[tokio::test]
async fn rate_with_a_burst_refuses_before_the_origin() {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::to(origin.addr())
        .toml("[limits]\nclient_requests_per_sec = 0.1\nclient_burst = 3")
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(proxy.get("/x").await.text(), "ok");
    }
    let refused = proxy.get("/x").await;
    assert_refused(&refused, 10);
    assert_eq!(
        origin.count(),
        3,
        "a refused request never reaches the origin"
    );
    assert_eq!(
        metric(&proxy, r#"grip_proxy_refused_total{reason="client_rate"}"#).await,
        1
    );
    assert_eq!(metric(&proxy, "grip_proxy_clients_tracked").await, 1);
}

#[tokio::test]
async fn a_trusted_proxy_names_the_client() {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::to(origin.addr())
        .toml(
            "[limits]\nclient_requests_per_sec = 0.1\nclient_burst = 1\n\
             trusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]",
        )
        .start()
        .await;
    assert_eq!(get_as(&proxy, "/", "192.0.2.1").await.status, 200);
    assert_refused(&get_as(&proxy, "/", "192.0.2.1").await, 10);
    // Another client behind the same proxy, also through another trusted hop: limited on its own.
    assert_eq!(get_as(&proxy, "/", "192.0.2.2, 10.1.2.3").await.status, 200);
    assert_refused(&get_as(&proxy, "/", "192.0.2.2").await, 10);
    // The proxy's own requests: its own address.
    assert_eq!(proxy.get("/").await.status, 200);
    assert_eq!(origin.count(), 3);
    assert_eq!(metric(&proxy, "grip_proxy_clients_tracked").await, 3);
}

#[tokio::test]
async fn an_untrusted_peer_cannot_name_the_client() {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::to(origin.addr())
        .toml(
            "[limits]\nclient_requests_per_sec = 0.1\nclient_burst = 1\n\
             trusted_proxies = [\"10.0.0.0/8\"]",
        )
        .start()
        .await;
    assert_eq!(get_as(&proxy, "/", "192.0.2.1").await.status, 200);
    // A spoofed header: both count as 127.0.0.1.
    assert_refused(&get_as(&proxy, "/", "192.0.2.2").await, 10);
    assert_eq!(origin.count(), 1);
    assert_eq!(metric(&proxy, "grip_proxy_clients_tracked").await, 1);
}

#[tokio::test]
async fn the_client_table_stays_bounded() {
    const CLIENTS: u32 = 20_000;
    const CONNS: u32 = 4;
    const BATCH: u32 = 250;
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::to(origin.addr())
        .toml(
            "[limits]\nclient_requests_per_sec = 0.01\nclient_burst = 5\n\
             max_clients_tracked = 1000\ntrusted_proxies = [\"127.0.0.1\"]",
        )
        .start()
        .await;
    // Distinct addresses, pipelined in batches on a few keep-alive connections.
    let addr = proxy.addr();
    let tasks: Vec<_> = (0..CONNS)
        .map(|c| {
            tokio::spawn(async move {
                let mut conn = RawConn::open(addr).await;
                let mut ok = 0;
                for batch in (c * CLIENTS / CONNS..(c + 1) * CLIENTS / CONNS)
                    .collect::<Vec<_>>()
                    .chunks(BATCH as usize)
                {
                    let mut out = String::new();
                    for i in batch {
                        let [_, _, hi, lo] = (0x0b00_0000 + i).to_be_bytes();
                        out.push_str(&format!(
                            "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 11.0.{hi}.{lo}\r\n\r\n"
                        ));
                    }
                    conn.write(out.as_bytes()).await;
                    for _ in batch {
                        ok += usize::from(conn.read_response().await.status == 200);
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += within(LIMIT * 6, task).await.unwrap();
    }
    assert_eq!(
        ok, CLIENTS as usize,
        "each client's first request is allowed"
    );
    let tracked = metric(&proxy, "grip_proxy_clients_tracked").await;
    assert!((1..=1000).contains(&tracked), "{tracked} clients tracked");
    // The limits still hold after the churn: a new client gets its burst, then is refused.
    for _ in 0..5 {
        assert_eq!(get_as(&proxy, "/", "12.0.0.1").await.status, 200);
    }
    assert_refused(&get_as(&proxy, "/", "12.0.0.1").await, 100);
}

#[tokio::test]
async fn channel_holds_at_their_bound_other_channels_unaffected() {
    let origin = origin_holding_on_path().await;
    let proxy = Proxy::to(origin.addr())
        .toml("[limits]\nchannel_max_holds = 2")
        .start()
        .await;
    let a = Pending::get(proxy.addr(), "/news");
    let _b = Pending::get(proxy.addr(), "/news");
    proxy.wait_held(2).await;
    assert_refused(&proxy.get("/news").await, 1);
    // Another channel.
    let sports = Pending::get(proxy.addr(), "/sports");
    proxy.wait_held(3).await;
    // A hold on several channels is refused if one is full, and left in none.
    assert_refused(&proxy.get("/sports,news").await, 1);
    assert_eq!(proxy.registry().held(), 3);
    assert_eq!(proxy.registry().held_on("sports"), 1);
    assert_eq!(
        metric(
            &proxy,
            r#"grip_proxy_refused_total{reason="channel_holds"}"#
        )
        .await,
        2
    );
    // Released: the channel has room again (a new hold and a stream both count).
    assert_eq!(
        publish(&proxy, items(&[item("news", "n1")])).await.status,
        200
    );
    assert_eq!(a.response().await.text(), "n1");
    proxy.wait_held(1).await;
    let _c = Pending::get(proxy.addr(), "/news");
    let mut stream = RawConn::open(proxy.addr()).await;
    stream
        .write(b"GET /stream/news HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(within(LIMIT, stream.read_head()).await.status, 200);
    proxy.wait_held(3).await;
    assert_refused(&proxy.get("/stream/news").await, 1);
    assert_refused(&proxy.get("/news").await, 1);
    assert_eq!(
        metric(
            &proxy,
            r#"grip_proxy_refused_total{reason="channel_holds"}"#
        )
        .await,
        4
    );
    publish(&proxy, items(&[item("sports", "s1")])).await;
    assert_eq!(sports.response().await.text(), "s1");
}
