//! Reliability of delivery: items are sequenced by `prev-id` (an out-of-order item waits for its predecessor,
//! bounded in time and count; `no-seq` and a channel's first item go at once), a duplicate publish still answers
//! 200 and delivers nothing, and `POST /recover` re-fetches held clients and forgets last ids.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use tokio::time::Instant;

/// Publishes and checks the answer is `200 Published`.
async fn publish_ok(proxy: &Proxy, body: Value) {
    let resp = publish(proxy, body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.text().trim_end(), "Published");
}

/// A proxy whose out-of-order items wait `wait_secs` (long: the test never lets it expire unless it says so).
async fn sequencing_proxy(origin: &Origin, publish_toml: &str) -> Proxy {
    Proxy::to(origin.addr())
        .toml(&format!("[publish]\n{publish_toml}"))
        .start()
        .await
}

#[tokio::test]
async fn an_out_of_order_item_waits_for_its_predecessor_then_both_go_out_in_order() {
    let origin = Origin::start(|_| Reply::hold("c; prev-id=1")).await;
    let proxy = sequencing_proxy(&origin, "ordering_wait_secs = 30").await;
    publish_ok(&proxy, items(&[numbered("c", 1, None, "1")])).await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;

    publish_ok(&proxy, items(&[numbered("c", 3, Some(2), "3")])).await;
    assert_eq!(
        proxy.registry().held_on("c"),
        1,
        "item 3 went out before item 2"
    );
    assert_eq!(proxy.registry().last_id("c").as_deref(), Some("1"));

    publish_ok(&proxy, items(&[numbered("c", 2, Some(1), "2")])).await;
    let got = client.response().await;
    assert_eq!(got.status, 200);
    assert_eq!(got.text(), "2", "the client waiting after 1 gets 2");
    assert_eq!(
        proxy.registry().last_id("c").as_deref(),
        Some("3"),
        "item 3 followed item 2"
    );
    assert_eq!(origin.count(), 1, "nobody was re-fetched");
}

#[tokio::test]
async fn an_item_whose_predecessor_never_comes_is_sent_after_the_wait() {
    let origin = Origin::start(|_| Reply::hold("c")).await;
    let proxy = sequencing_proxy(&origin, "ordering_wait_secs = 0.3").await;
    publish_ok(&proxy, items(&[numbered("c", 1, None, "1")])).await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;

    let published = Instant::now();
    publish_ok(&proxy, items(&[numbered("c", 3, Some(2), "3")])).await;
    let got = client.response().await;
    let waited = published.elapsed();

    assert_eq!(got.text(), "3");
    assert!(
        waited >= Duration::from_millis(300),
        "sent after {waited:?}, before the 0.3 s wait was over"
    );
    assert_eq!(proxy.registry().last_id("c").as_deref(), Some("3"));
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn a_no_seq_item_goes_out_at_once() {
    let origin = Origin::start(|_| Reply::hold("c")).await;
    let proxy = sequencing_proxy(&origin, "ordering_wait_secs = 30").await;
    publish_ok(&proxy, items(&[numbered("c", 1, None, "1")])).await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;

    let mut no_seq = numbered("c", 9, Some(7), "9");
    no_seq["no-seq"] = json!(true);
    publish_ok(&proxy, items(&[no_seq])).await;

    // Well within the 30 s the item would otherwise wait.
    assert_eq!(client.response().await.text(), "9");
    assert_eq!(proxy.registry().last_id("c").as_deref(), Some("9"));
}

#[tokio::test]
async fn the_first_item_on_a_channel_with_no_known_last_id_goes_out_at_once() {
    let origin = Origin::start(|_| Reply::hold("c")).await;
    let proxy = sequencing_proxy(&origin, "ordering_wait_secs = 30").await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;
    assert_eq!(proxy.registry().last_id("c"), None);

    publish_ok(&proxy, items(&[numbered("c", 5, Some(4), "5")])).await;

    assert_eq!(client.response().await.text(), "5");
    assert_eq!(proxy.registry().last_id("c").as_deref(), Some("5"));
}

#[tokio::test]
async fn over_max_pending_the_oldest_waiting_item_goes_out() {
    let origin = Origin::start(|_| Reply::hold("c")).await;
    let proxy =
        sequencing_proxy(&origin, "ordering_wait_secs = 30\nordering_max_pending = 2").await;
    publish_ok(&proxy, items(&[numbered("c", 1, None, "1")])).await;
    let first = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;

    publish_ok(&proxy, items(&[numbered("c", 3, Some(2), "3")])).await;
    publish_ok(&proxy, items(&[numbered("c", 5, Some(4), "5")])).await;
    assert_eq!(proxy.registry().held_on("c"), 1, "two items may wait");
    publish_ok(&proxy, items(&[numbered("c", 7, Some(6), "7")])).await;

    assert_eq!(
        first.response().await.text(),
        "3",
        "a third waiting item sends the oldest"
    );
    assert_eq!(proxy.registry().last_id("c").as_deref(), Some("3"));

    // 5 and 7 still wait: 4 releases its successor 5 right after it; 7 (after 6) stays.
    proxy.wait_held(0).await;
    let second = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;
    publish_ok(&proxy, items(&[numbered("c", 4, Some(3), "4")])).await;
    assert_eq!(second.response().await.text(), "4");
    assert_eq!(proxy.registry().last_id("c").as_deref(), Some("5"));
}

#[tokio::test]
async fn a_duplicate_publish_answers_200_and_delivers_nothing_until_the_window_is_over() {
    const WINDOW: Duration = Duration::from_secs(1);
    let origin = Origin::start(|_| Reply::hold("c")).await;
    let proxy = sequencing_proxy(&origin, "duplicate_window_secs = 1").await;
    let first = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;
    let first_at = Instant::now();
    publish_ok(&proxy, items(&[numbered("c", 7, None, "seven")])).await;
    assert_eq!(first.response().await.text(), "seven");
    proxy.wait_held(0).await;

    let second = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;
    // A publisher retrying a POST that was applied: the retry must not look like a failure.
    publish_ok(&proxy, items(&[numbered("c", 7, None, "seven again")])).await;
    assert!(first_at.elapsed() < WINDOW, "too slow to test the window");
    assert_eq!(
        proxy.registry().held_on("c"),
        1,
        "the duplicate was delivered"
    );

    // Once the window is over, the same id is a new item. (Time passing is the behaviour under test here.)
    tokio::time::sleep((WINDOW + Duration::from_millis(100)).saturating_sub(first_at.elapsed()))
        .await;
    publish_ok(&proxy, items(&[numbered("c", 7, None, "seven later")])).await;
    assert_eq!(second.response().await.text(), "seven later");
}

#[tokio::test]
async fn recover_re_fetches_held_clients_from_the_origin_and_forgets_last_ids() {
    let origin = Origin::start(|req| match req.seq {
        0 | 1 => Reply::hold(if req.path() == "/a" {
            "a; prev-id=1"
        } else {
            "b"
        }),
        _ => Reply::text(&format!("second answer for {}", req.path())),
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    publish_ok(&proxy, items(&[numbered("a", 1, None, "1")])).await;
    publish_ok(&proxy, items(&[numbered("z", 1, None, "1")])).await;
    let a = Pending::get(proxy.addr(), "/a");
    proxy.wait_held(1).await;
    let b = Pending::get(proxy.addr(), "/b");
    proxy.wait_held(2).await;

    let req = request("POST", "/recover").body(empty()).unwrap();
    let resp = within(LIMIT, send(proxy.control_addr(), req)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    assert_eq!(a.response().await.text(), "second answer for /a");
    assert_eq!(b.response().await.text(), "second answer for /b");
    let mut again: Vec<String> = [origin.nth(2).await, origin.nth(3).await]
        .iter()
        .map(|r| r.path().to_owned())
        .collect();
    again.sort();
    assert_eq!(again, ["/a", "/b"]);
    for r in origin.requests().iter().skip(2) {
        assert_eq!(
            r.header("grip-last"),
            None,
            "a recovery re-fetch is not a catch-up"
        );
    }
    assert_eq!(proxy.registry().last_id("a"), None);
    assert_eq!(proxy.registry().last_id("z"), None);
    proxy.wait_held(0).await;
    assert_eq!(proxy.registry().channels(), 0);
    assert_eq!(origin.count(), 4);
}

#[tokio::test]
async fn another_clients_stale_retry_does_not_let_a_hold_behind_the_last_id_park() {
    // Y's hold (after 1) is on its way back from the origin while item 2 goes out; meanwhile X, also after 1,
    // is found stale and re-fetched. When Y's hold arrives, Y is behind too: it must be re-fetched, not parked
    // to wait for an item that has already gone.
    let (y_body_tx, y_body) = channel_body();
    let y_body = parking_lot::Mutex::new(Some(y_body));
    let origin = Origin::start(move |req| match req.header("grip-last") {
        Some(last) => Reply::text(&format!("caught up from {last}")),
        None if req.path() == "/y" => {
            Reply::hold("c; prev-id=1").streamed(y_body.lock().take().unwrap())
        }
        None => Reply::hold("c; prev-id=1"),
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    publish_ok(&proxy, items(&[numbered("c", 1, None, "1")])).await;

    let y = tokio::spawn(get(proxy.addr(), "/y"));
    assert_eq!(origin.nth(0).await.path(), "/y");
    // The origin has answered Y's hold; the proxy reads its body until the test ends it.
    publish_ok(&proxy, items(&[numbered("c", 2, Some(1), "2")])).await;
    let x = proxy.get("/x").await;
    assert_eq!(x.text(), "caught up from c; last-id=1", "X is behind");

    drop(y_body_tx);
    let Ok(y) = tokio::time::timeout(LIMIT, y).await else {
        panic!(
            "Y was not answered: it is parked (held: {}, channel last id: {:?}) waiting after 1 while 2 has gone out",
            proxy.registry().held(),
            proxy.registry().last_id("c")
        );
    };
    let y = y.unwrap();
    assert_eq!(
        y.text(),
        "caught up from c; last-id=1",
        "Y is behind item 2 too"
    );
}
