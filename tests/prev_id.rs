//! Reliability through `id` / `prev-id`: stale holds are re-requested with `Grip-Last`, items that do not follow
//! a client re-fetch it, hints re-fetch, and a publish racing with a park is never lost.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

/// Answers a request carrying `Grip-Last` with data naming it, and anything else with `otherwise`.
fn catch_up_or(otherwise: impl Fn(&Recorded) -> Reply) -> impl Fn(&Recorded) -> Reply {
    move |req| match req.header("grip-last") {
        Some(last) => Reply::text(&format!("caught up from {last}")),
        None => otherwise(req),
    }
}

#[tokio::test]
async fn a_hold_behind_the_last_id_is_re_requested_with_grip_last() {
    let origin = Origin::start(catch_up_or(|_| Reply::hold("c; prev-id=1"))).await;
    let proxy = Proxy::start(origin.addr()).await;
    publish(&proxy, items(&[numbered("c", 2, None, "2")])).await;
    assert_eq!(proxy.registry().last_id("c").as_deref(), Some("2"));

    let req = request("POST", "/poll?since=1")
        .body(full("payload"))
        .unwrap();
    let resp = proxy.send(req).await;

    assert_eq!(resp.text(), "caught up from c; last-id=1");
    let (first, again) = (origin.nth(0).await, origin.nth(1).await);
    assert_eq!(first.header("grip-last"), None);
    assert_eq!(again.method, "POST");
    assert_eq!(again.uri, "/poll?since=1");
    assert_eq!(again.body, "payload");
    assert!(again.header("grip-sig").is_some());
    assert_eq!(origin.count(), 2);
    assert_eq!(proxy.registry().held(), 0);
}

#[tokio::test]
async fn after_a_stale_retry_the_same_prev_id_parks_instead_of_looping() {
    let origin = Origin::start(|_| Reply::hold("c; prev-id=1")).await;
    let proxy = Proxy::start(origin.addr()).await;
    publish(&proxy, items(&[numbered("c", 2, None, "2")])).await;

    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;

    assert_eq!(origin.count(), 2);
    assert_eq!(
        origin.nth(1).await.header("grip-last"),
        Some("c; last-id=1")
    );
    assert_eq!(
        proxy.registry().last_id("c").as_deref(),
        Some("2"),
        "the last id is kept; the retried hold parked unchecked"
    );
    // An item without prev-id cannot show that this client (after 1) missed nothing: it is re-fetched with what it
    // last had, and parks again as its origin still answers.
    publish(&proxy, items(&[numbered("c", 3, None, "3")])).await;
    let again = origin.nth(2).await;
    assert_eq!(again.header("grip-last"), Some("c; last-id=1"));
    proxy.wait_held(1).await;
    assert!(!client.is_finished());
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn an_item_without_prev_id_re_fetches_a_client_held_after_an_id() {
    let origin = Origin::start(catch_up_or(|_| Reply::hold("c; prev-id=1"))).await;
    let proxy = Proxy::start(origin.addr()).await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;
    publish(&proxy, items(&[numbered("c", 7, None, "seven")])).await;
    assert_eq!(
        within(LIMIT, client.response()).await.text(),
        "caught up from c; last-id=1"
    );
    assert_eq!(origin.count(), 2);
}

#[tokio::test]
async fn a_stale_hold_whose_request_body_was_too_large_to_keep_is_a_502() {
    let origin = Origin::start(catch_up_or(|_| Reply::hold("c; prev-id=1"))).await;
    let proxy = Proxy::to(origin.addr())
        .toml("[origin]\nmax_replay_body = 1000")
        .start()
        .await;
    publish(&proxy, items(&[numbered("c", 2, None, "2")])).await;

    let req = request("POST", "/").body(full("x".repeat(1001))).unwrap();
    proxy.send(req).await.assert_proxy_error(502);

    assert_eq!(
        origin.count(),
        1,
        "the request was not re-sent without its body"
    );
}

#[tokio::test]
async fn a_hold_at_the_last_id_parks() {
    let origin = Origin::start(|_| Reply::hold("c; prev-id=5")).await;
    let proxy = Proxy::start(origin.addr()).await;
    publish(&proxy, items(&[numbered("c", 5, None, "5")])).await;

    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;
    publish(&proxy, items(&[numbered("c", 6, Some(5), "6")])).await;

    assert_eq!(client.response().await.text(), "6");
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn an_item_not_following_a_client_re_fetches_it_and_one_following_gets_it() {
    let origin = Origin::start(catch_up_or(|req| match req.path() {
        "/behind" => Reply::hold("c; prev-id=1"),
        _ => Reply::hold("c; prev-id=2"),
    }))
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let behind = Pending::get(proxy.addr(), "/behind");
    proxy.wait_held(1).await;
    let current = Pending::get(proxy.addr(), "/current");
    proxy.wait_held(2).await;

    publish(&proxy, items(&[numbered("c", 3, Some(2), "3")])).await;

    assert_eq!(current.response().await.text(), "3");
    assert_eq!(
        behind.response().await.text(),
        "caught up from c; last-id=1"
    );
    let refetch = origin.nth(2).await;
    assert_eq!(refetch.path(), "/behind");
    assert_eq!(origin.count(), 3);
}

#[tokio::test]
async fn a_hint_re_fetches_without_a_body() {
    let origin = Origin::start(|req| match req.seq {
        0 => Reply::hold("c"),
        _ => Reply::text("fresh from the origin"),
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let client = Pending::get(proxy.addr(), "/resource");
    proxy.wait_held(1).await;

    let hint = json!({"channel": "c", "formats": {"http-response": {"action": "hint"}}});
    publish(&proxy, items(&[hint])).await;

    assert_eq!(client.response().await.text(), "fresh from the origin");
    assert_eq!(origin.nth(1).await.path(), "/resource");
}

#[tokio::test]
async fn an_item_published_again_is_dropped_as_a_duplicate() {
    let origin = Origin::start(|_| Reply::hold("c")).await;
    let proxy = Proxy::start(origin.addr()).await;
    let first = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;
    publish(&proxy, items(&[numbered("c", 7, None, "seven")])).await;
    assert_eq!(first.response().await.text(), "seven");
    proxy.wait_held(0).await;

    // A publisher retrying a POST that was applied (after a 5xx from a load balancer) sends the item again.
    let second = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;
    publish(&proxy, items(&[numbered("c", 7, None, "seven")])).await;
    assert_eq!(proxy.registry().held(), 1, "the duplicate was delivered");
    publish(&proxy, items(&[numbered("c", 8, None, "eight")])).await;

    assert_eq!(second.response().await.text(), "eight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_racing_with_the_park_is_never_lost() {
    const ROUNDS: u64 = 200;
    let origin = Origin::start(catch_up_or(|req| {
        let n = req.path().trim_start_matches('/');
        Reply::hold(&format!("race-{n}; prev-id={n}"))
            .header("Grip-Timeout", "3")
            .body("timed out")
    }))
    .await;
    let proxy = Proxy::to(origin.addr())
        .toml("[hold]\nmin_timeout_secs = 3")
        .start()
        .await;

    within(Duration::from_secs(120), async {
        for n in 0..ROUNDS {
            let channel = format!("race-{n}");
            publish(&proxy, items(&[numbered(&channel, n, None, "old")])).await;
            let seen = origin.count();
            let client = Pending::get(proxy.addr(), &format!("/{n}"));
            // The origin has the request and is answering with the hold: publish now, racing the park.
            origin.nth(seen).await;
            publish(&proxy, items(&[numbered(&channel, n + 1, Some(n), "new")])).await;

            let got = client.response().await;
            assert!(
                got.text() == "new" || got.text().starts_with("caught up from"),
                "round {n}: the client got {:?}",
                got.text()
            );
        }
    })
    .await;
}
