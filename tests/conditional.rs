//! Conditional holds over real sockets, against an origin that knows nothing of GRIP: it serves a value with an
//! `ETag` and answers `304` to `If-None-Match` when the client has the current one. Clients are held on that 304
//! and released by a publish, a hint, or a coalesced re-check; what the origin counts and what each client gets.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use support::*;
use tokio::time::Instant;

/// The origin's value: its version is its ETag.
struct Store {
    version: u64,
    value: String,
    /// Answer `503` to anything that is not a `304`.
    failing: bool,
}

/// An origin with no GRIP: `GET` answers the value (per `Accept-Language` on `/lang`, per `Authorization` on
/// `/me`, `Cache-Control: private` on `/private`) with `ETag: "<version>"`, or `304` when `If-None-Match` lists
/// the current version.
fn plain_origin() -> (
    Arc<Mutex<Store>>,
    impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
) {
    let store = Arc::new(Mutex::new(Store {
        version: 1,
        value: "first".into(),
        failing: false,
    }));
    let shared = store.clone();
    let handler = move |req: &Recorded| {
        let (version, value, failing) = {
            let s = shared.lock();
            (s.version, s.value.clone(), s.failing)
        };
        let etag = format!("\"{version}\"");
        let has = req
            .header("if-none-match")
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
        let reply = if has {
            Reply::status(304)
        } else if failing {
            return Reply::status(503);
        } else {
            let body = match req.path() {
                "/lang" => format!(
                    "{value} in {}",
                    req.header("accept-language").unwrap_or("-")
                ),
                "/me" => format!("{value} for {}", req.header("authorization").unwrap_or("-")),
                _ => value,
            };
            Reply::text(&body)
        };
        let reply = reply.header("ETag", &etag);
        match req.path() {
            "/lang" => reply.header("Vary", "Accept-Language"),
            "/private" => reply.header("Cache-Control", "private"),
            _ => reply,
        }
    };
    (store, handler)
}

fn change(store: &Mutex<Store>, value: &str) {
    let mut s = store.lock();
    s.version += 1;
    s.value = value.into();
}

/// `[routes.conditional]` on the one route, with these extra keys.
fn conditional(origin: SocketAddr, keys: &str) -> ProxyBuilder {
    Proxy::to(origin).toml(&format!("[routes.conditional]\n{keys}"))
}

/// The plain origin, and a proxy in front of it with `[routes.conditional]` `keys` and `extra` TOML.
async fn plain_setup(keys: &str, extra: &str) -> (Arc<Mutex<Store>>, Origin, Proxy) {
    let (store, handler) = plain_origin();
    let origin = Origin::start(handler).await;
    let proxy = conditional(origin.addr(), keys).toml(extra).start().await;
    (store, origin, proxy)
}

/// A GET of `path` with `If-None-Match` and extra headers, in its own task.
fn held_get(addr: SocketAddr, path: &str, etag: &str, extra: &[(&str, &str)]) -> Pending {
    let mut req = request("GET", path).header("if-none-match", etag);
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    let req = req.body(empty()).unwrap();
    Pending::spawn(async move { send(addr, req).await })
}

async fn control_json(proxy: &Proxy, path: &str) -> Value {
    let resp = within(LIMIT, get(proxy.control_addr(), path)).await;
    assert_eq!(resp.status, 200);
    serde_json::from_str(resp.text()).unwrap()
}

/// The value of one series of `/metrics`; 0 when absent.
async fn metric(proxy: &Proxy, series: &str) -> f64 {
    let text = within(LIMIT, get(proxy.control_addr(), "/metrics")).await;
    let prefix = format!("{series} ");
    text.text()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Waits (within `LIMIT`) until a series of `/metrics` reads `value`: a counter a release updates after the clients
/// it released may already have their answers. Polled every 10 ms: no event tells when a counter moves.
async fn wait_metric(proxy: &Proxy, series: &str, value: f64) {
    within(LIMIT, async {
        while metric(proxy, series).await != value {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_304_is_held_and_released_by_a_publish_and_anything_else_passes_through() {
    let (_store, origin, proxy) = plain_setup("", "").await;

    // No conditional header, or not the current ETag: the origin's answer at once.
    let plain = proxy.get("/value").await;
    assert_eq!((plain.status.as_u16(), plain.text()), (200, "first"));
    assert_eq!(plain.headers["etag"], "\"1\"");
    let stale = within(
        LIMIT,
        held_get(proxy.addr(), "/value", "\"0\"", &[]).response(),
    )
    .await;
    assert_eq!((stale.status.as_u16(), stale.text()), (200, "first"));
    let post = within(
        LIMIT,
        send(
            proxy.addr(),
            request("POST", "/value")
                .header("if-none-match", "\"1\"")
                .body(full("x"))
                .unwrap(),
        ),
    )
    .await;
    assert_eq!(post.status, 304, "only GET and HEAD are held");

    // Current: held on the channel named by the default template, "{path}".
    let client = held_get(proxy.addr(), "/value", "\"1\"", &[]);
    proxy.wait_held(1).await;
    let channels = control_json(&proxy, "/channels").await;
    assert_eq!(channels["channels"][0]["channel"], "/value", "{channels}");
    assert_eq!(channels["total"], 1, "no other channel listed: {channels}");
    let resp = publish(
        &proxy,
        items(&[json!({"channel": "/value", "formats": {"http-response": {
            "code": 200, "headers": {"ETag": "\"2\""}, "body": "published"}}})]),
    )
    .await;
    assert_eq!(resp.status, 200);
    let released = client.response().await;
    assert_eq!(
        (released.status.as_u16(), released.text()),
        (200, "published")
    );
    assert_eq!(released.headers["etag"], "\"2\"");
    assert_eq!(
        origin.count(),
        4,
        "one origin request per client, nothing more"
    );
    assert_eq!(
        metric(&proxy, "grip_proxy_conditional_holds_total").await,
        1.0
    );
}

#[tokio::test]
async fn the_timeout_answers_the_origins_own_304() {
    let (_store, origin, proxy) =
        plain_setup("timeout_secs = 1", "[hold]\nmin_timeout_secs = 1").await;
    let started = Instant::now();
    let resp = within(
        LIMIT,
        held_get(proxy.addr(), "/value", "\"1\"", &[]).response(),
    )
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "held first"
    );
    assert_eq!(resp.status, 304);
    assert_eq!(resp.headers["etag"], "\"1\"");
    assert!(resp.body.is_empty());
    assert!(resp.headers.get("content-length").is_none());
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn a_route_without_conditional_holds_passes_the_304_through() {
    let (_store, handler) = plain_origin();
    let origin = Origin::start(handler).await;
    let proxy = Proxy::start(origin.addr()).await;
    let resp = within(
        LIMIT,
        held_get(proxy.addr(), "/value", "\"1\"", &[]).response(),
    )
    .await;
    assert_eq!(resp.status, 304);
    assert_eq!(proxy.registry().held(), 0);
}

#[tokio::test]
async fn a_hint_re_fetches_each_held_request_and_releases_only_those_whose_answer_changed() {
    let (store, origin, proxy) = plain_setup("", "").await;
    let behind = held_get(proxy.addr(), "/value", "\"1\"", &[]);
    // This client already knows version 2 too: after the change its answer is still 304.
    let ahead = held_get(proxy.addr(), "/value", "\"1\", \"2\"", &[]);
    proxy.wait_held(2).await;

    change(&store, "second");
    let hint = json!({"channel": "/value", "formats": {"http-response": {"action": "hint"}}});
    assert_eq!(publish(&proxy, items(&[hint])).await.status, 200);
    let resp = behind.response().await;
    assert_eq!((resp.status.as_u16(), resp.text()), (200, "second"));
    assert_eq!(resp.headers["etag"], "\"2\"");
    // Both were asked again; the one still current is held again.
    origin.nth(3).await;
    proxy.wait_held(1).await;
    assert!(!ahead.is_finished());
    let done = json!({"channel": "/value", "formats": {"http-response": {"body": "third"}}});
    assert_eq!(publish(&proxy, items(&[done])).await.status, 200);
    assert_eq!(ahead.response().await.text(), "third");
    assert_eq!(origin.count(), 4);
}

#[tokio::test]
async fn a_thousand_clients_on_one_etag_cost_the_origin_one_request_per_re_check() {
    let (store, origin, proxy) = plain_setup("recheck_secs = 1", "").await;
    const CLIENTS: usize = 1000;
    let started = Instant::now();
    let clients: Vec<Pending> = (0..CLIENTS)
        .map(|_| held_get(proxy.addr(), "/value", "\"1\"", &[]))
        .collect();
    within(Duration::from_secs(30), proxy.wait_held(CLIENTS)).await;
    // Each client's own request once, and the re-checks made while the others were still arriving: one a second.
    let polled = origin.count();
    let intervals = started.elapsed().as_secs() as usize + 1;
    assert!(
        (CLIENTS..=CLIENTS + intervals).contains(&polled),
        "{polled} origin requests for {CLIENTS} clients in {intervals} s"
    );

    // Two re-checks come, about a second apart, one request each.
    let first = within(Duration::from_secs(3), origin.nth(polled)).await;
    assert_eq!(first.header("if-none-match"), Some("\"1\""));
    let at = Instant::now();
    within(Duration::from_secs(3), origin.nth(polled + 1)).await;
    let gap = at.elapsed();
    assert!(
        gap > Duration::from_millis(700),
        "re-checks {gap:?} apart, not one per client"
    );
    assert_eq!(origin.count(), polled + 2);

    // A change: every client has it within one interval (and a margin for a loaded machine).
    change(&store, "changed");
    let changed = Instant::now();
    for client in clients {
        let resp = within(Duration::from_secs(5), client.response()).await;
        assert_eq!((resp.status.as_u16(), resp.text()), (200, "changed"));
        assert_eq!(resp.headers["etag"], "\"2\"");
    }
    let took = changed.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "released {took:?} after the change"
    );
    let rechecks = origin.count() - polled;
    assert!(
        rechecks <= 4,
        "{rechecks} origin requests while {CLIENTS} clients were held"
    );
    wait_metric(
        &proxy,
        "grip_proxy_recheck_released_clients_total",
        CLIENTS as f64,
    )
    .await;
    assert_eq!(
        metric(&proxy, "grip_proxy_rechecks_total{result=\"shared\"}").await,
        1.0
    );
}

#[tokio::test]
async fn users_with_different_credentials_never_get_each_others_answer() {
    let (store, origin, proxy) = plain_setup("recheck_secs = 0.2", "").await;
    let alice = held_get(
        proxy.addr(),
        "/me",
        "\"1\"",
        &[("authorization", "Bearer alice")],
    );
    let bob = held_get(
        proxy.addr(),
        "/me",
        "\"1\"",
        &[("authorization", "Bearer bob")],
    );
    let alice_again = held_get(
        proxy.addr(),
        "/me",
        "\"1\"",
        &[("authorization", "Bearer alice")],
    );
    proxy.wait_held(3).await;
    change(&store, "new");
    assert_eq!(alice.response().await.text(), "new for Bearer alice");
    assert_eq!(alice_again.response().await.text(), "new for Bearer alice");
    assert_eq!(bob.response().await.text(), "new for Bearer bob");
    // One re-check per user answered both of alice's clients.
    let changed: Vec<_> = origin
        .requests()
        .into_iter()
        .skip(3)
        .filter(|r| r.seq >= 3)
        .map(|r| r.header("authorization").unwrap().to_owned())
        .collect();
    assert!(changed.iter().any(|a| a == "Bearer alice"));
    assert!(changed.iter().any(|a| a == "Bearer bob"));
}

#[tokio::test]
async fn a_vary_listed_header_makes_one_group_per_value() {
    let (store, origin, proxy) = plain_setup("recheck_secs = 0.2", "").await;
    let langs = ["en", "en", "en", "fr", "fr"];
    let clients: Vec<(&str, Pending)> = langs
        .iter()
        .map(|l| {
            (
                *l,
                held_get(proxy.addr(), "/lang", "\"1\"", &[("accept-language", l)]),
            )
        })
        .collect();
    proxy.wait_held(langs.len()).await;
    // Six re-checks: three per language, however many clients each has.
    origin.nth(langs.len() + 5).await;
    let per = |lang: &str| {
        origin.requests()[langs.len()..]
            .iter()
            .filter(|r| r.header("accept-language") == Some(lang))
            .count()
    };
    let (en, fr) = (per("en"), per("fr"));
    assert!(
        en.abs_diff(fr) <= 1,
        "en {en}, fr {fr}: one request per language per interval"
    );
    change(&store, "v2");
    for (lang, client) in clients {
        assert_eq!(client.response().await.text(), format!("v2 in {lang}"));
    }
}

#[tokio::test]
async fn a_private_answer_is_never_shared_each_client_fetches_its_own() {
    let (store, origin, proxy) = plain_setup("recheck_secs = 0.2", "").await;
    let a = held_get(proxy.addr(), "/private", "\"1\"", &[]);
    let b = held_get(proxy.addr(), "/private", "\"1\"", &[]);
    proxy.wait_held(2).await;
    let before = origin.count();
    change(&store, "mine");
    assert_eq!(a.response().await.text(), "mine");
    assert_eq!(b.response().await.text(), "mine");
    assert_eq!(
        metric(&proxy, "grip_proxy_rechecks_total{result=\"refetched\"}").await,
        1.0
    );
    wait_metric(&proxy, "grip_proxy_recheck_released_clients_total", 2.0).await;
    assert!(
        origin.count() >= before + 3,
        "one re-check and one request per client"
    );
}

#[tokio::test]
async fn an_origin_in_trouble_keeps_clients_held_until_it_answers_again() {
    let (store, origin, proxy) = plain_setup("recheck_secs = 0.2", "").await;
    let client = held_get(proxy.addr(), "/value", "\"1\"", &[]);
    proxy.wait_held(1).await;
    change(&store, "after the outage");
    store.lock().failing = true;
    // Two re-checks answered 503: the client is still held, not given the error.
    let seen = origin.count();
    origin.nth(seen + 1).await;
    assert!(!client.is_finished());
    assert_eq!(proxy.registry().held(), 1);
    store.lock().failing = false;
    let resp = client.response().await;
    assert_eq!(
        (resp.status.as_u16(), resp.text()),
        (200, "after the outage")
    );
    assert!(metric(&proxy, "grip_proxy_rechecks_total{result=\"failed\"}").await >= 2.0);
}

#[tokio::test]
async fn a_head_request_is_held_and_gets_its_own_answer_after_a_change() {
    let (store, _origin, proxy) = plain_setup("recheck_secs = 0.2", "").await;
    let req = request("HEAD", "/value")
        .header("if-none-match", "\"1\"")
        .body(empty())
        .unwrap();
    let addr = proxy.addr();
    let client = Pending::spawn(async move { send(addr, req).await });
    proxy.wait_held(1).await;
    change(&store, "twelve bytes");
    let resp = client.response().await;
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty());
    assert_eq!(resp.headers["etag"], "\"2\"");
    assert_eq!(
        resp.headers["content-length"], "12",
        "the origin's own HEAD answer"
    );
    assert_eq!(
        metric(&proxy, "grip_proxy_rechecks_total{result=\"refetched\"}").await,
        1.0
    );
}

#[tokio::test]
async fn the_per_client_hold_limit_applies_to_conditional_holds() {
    let (_store, _origin, proxy) = plain_setup("", "[limits]\nclient_max_holds = 2").await;
    let first = held_get(proxy.addr(), "/value", "\"1\"", &[]);
    let second = held_get(proxy.addr(), "/value", "\"1\"", &[]);
    proxy.wait_held(2).await;
    let third = within(
        LIMIT,
        held_get(proxy.addr(), "/value", "\"1\"", &[]).response(),
    )
    .await;
    assert_eq!(third.status, 429, "client_max_holds: {:?}", third.text());
    assert!(third.headers.contains_key("retry-after"));
    let done = json!({"channel": "/value", "formats": {"http-response": {"body": "x"}}});
    assert_eq!(publish(&proxy, items(&[done])).await.status, 200);
    assert_eq!(first.response().await.text(), "x");
    assert_eq!(second.response().await.text(), "x");
}

#[tokio::test]
async fn clients_coming_back_with_the_etag_a_re_check_just_gave_them_are_held_without_asking_the_origin(
) {
    let (store, origin, proxy) = plain_setup("recheck_secs = 1", "").await;
    const CLIENTS: usize = 20;
    let clients: Vec<Pending> = (0..CLIENTS)
        .map(|_| held_get(proxy.addr(), "/value", "\"1\"", &[]))
        .collect();
    proxy.wait_held(CLIENTS).await;
    change(&store, "second");
    for client in clients {
        let resp = within(Duration::from_secs(3), client.response()).await;
        assert_eq!(resp.headers["etag"], "\"2\"");
    }
    let asked = origin.count();

    // Each asks again at once with the ETag it got: held from the answer just shared, the origin not asked.
    let again: Vec<Pending> = (0..CLIENTS)
        .map(|_| held_get(proxy.addr(), "/value", "\"2\"", &[]))
        .collect();
    proxy.wait_held(CLIENTS).await;
    assert_eq!(
        origin.count(),
        asked,
        "no origin request for the clients coming back"
    );
    assert_eq!(
        metric(&proxy, "grip_proxy_conditional_holds_unasked_total").await,
        CLIENTS as f64
    );
    // Their group is re-checked like any other: the next change reaches them.
    change(&store, "third");
    for client in again {
        let resp = within(Duration::from_secs(3), client.response()).await;
        assert_eq!((resp.status.as_u16(), resp.text()), (200, "third"));
    }
    // Another user, or another ETag, is still asked of the origin.
    let other = held_get(
        proxy.addr(),
        "/value",
        "\"2\"",
        &[("authorization", "Bearer x")],
    );
    let resp = within(LIMIT, other.response()).await;
    assert_eq!(resp.text(), "third", "asked, and answered at once");
}

#[tokio::test]
async fn a_client_held_without_asking_times_out_with_the_304_the_shared_answer_stands_for() {
    let (store, _origin, proxy) = plain_setup(
        "recheck_secs = 0.4\ntimeout_secs = 1",
        "[hold]\nmin_timeout_secs = 1",
    )
    .await;
    let client = held_get(proxy.addr(), "/value", "\"1\"", &[]);
    proxy.wait_held(1).await;
    change(&store, "second");
    assert_eq!(within(LIMIT, client.response()).await.text(), "second");
    let resp = within(
        LIMIT,
        held_get(proxy.addr(), "/value", "\"2\"", &[]).response(),
    )
    .await;
    assert_eq!(resp.status, 304);
    assert_eq!(resp.headers["etag"], "\"2\"");
    assert!(resp.body.is_empty());
    assert_eq!(
        metric(&proxy, "grip_proxy_conditional_holds_unasked_total").await,
        1.0,
        "held without asking the origin"
    );
}

/// An origin with no GRIP whose answers depend on `f(request)`; `ETag` is the version in `version`.
fn varying_origin(
    version: Arc<Mutex<u64>>,
    answer: impl Fn(&Recorded) -> Reply + Send + Sync + 'static,
) -> impl Fn(&Recorded) -> Reply + Send + Sync + 'static {
    move |req: &Recorded| {
        let etag = format!("\"{}\"", *version.lock());
        if req.header("if-none-match") == Some(etag.as_str()) {
            return Reply::status(304).header("ETag", &etag);
        }
        answer(req).header("ETag", &etag)
    }
}

#[tokio::test]
async fn tenants_on_one_route_never_share_an_answer_whatever_their_etags() {
    let version = Arc::new(Mutex::new(1));
    let origin = Origin::start(varying_origin(version.clone(), |req| {
        Reply::text(&format!("data of {}", req.header("host").unwrap_or("-")))
    }))
    .await;
    let proxy = conditional(origin.addr(), "recheck_secs = 0.2")
        .start()
        .await;
    let a = held_get(proxy.addr(), "/data", "\"1\"", &[("host", "a.example")]);
    proxy.wait_held(1).await;
    let b = held_get(proxy.addr(), "/data", "\"1\"", &[("host", "b.example")]);
    proxy.wait_held(2).await;
    *version.lock() = 2;
    assert_eq!(a.response().await.text(), "data of a.example");
    assert_eq!(b.response().await.text(), "data of b.example");
}

#[tokio::test]
async fn an_answer_that_varies_on_more_than_the_304_said_is_not_shared() {
    let version = Arc::new(Mutex::new(1));
    // The 304s name no Vary; the 200s vary on the language.
    let origin = Origin::start(varying_origin(version.clone(), |req| {
        Reply::text(&format!(
            "in {}",
            req.header("accept-language").unwrap_or("-")
        ))
        .header("Vary", "Accept-Language")
    }))
    .await;
    let proxy = conditional(origin.addr(), "recheck_secs = 0.2")
        .start()
        .await;
    let en = held_get(proxy.addr(), "/x", "\"1\"", &[("accept-language", "en")]);
    proxy.wait_held(1).await;
    let fr = held_get(proxy.addr(), "/x", "\"1\"", &[("accept-language", "fr")]);
    proxy.wait_held(2).await;
    *version.lock() = 2;
    assert_eq!(en.response().await.text(), "in en");
    assert_eq!(fr.response().await.text(), "in fr");
    assert_eq!(
        metric(&proxy, "grip_proxy_rechecks_total{result=\"refetched\"}").await,
        1.0
    );
}

#[tokio::test]
async fn a_range_request_and_a_whole_one_never_share_an_answer() {
    let version = Arc::new(Mutex::new(1));
    let origin = Origin::start(varying_origin(version.clone(), |req| {
        match req.header("range") {
            Some(_) => Reply::status(206)
                .body("abc")
                .header("Content-Range", "bytes 0-2/10"),
            None => Reply::text("abcdefghij"),
        }
    }))
    .await;
    let proxy = conditional(origin.addr(), "recheck_secs = 0.2")
        .start()
        .await;
    let part = held_get(proxy.addr(), "/f", "\"1\"", &[("range", "bytes=0-2")]);
    proxy.wait_held(1).await;
    let whole = held_get(proxy.addr(), "/f", "\"1\"", &[]);
    proxy.wait_held(2).await;
    *version.lock() = 2;
    let part = part.response().await;
    assert_eq!((part.status.as_u16(), part.text()), (206, "abc"));
    let whole = whole.response().await;
    assert_eq!((whole.status.as_u16(), whole.text()), (200, "abcdefghij"));
}

#[tokio::test]
async fn no_origin_instruction_or_publish_can_name_the_proxys_own_channels() {
    let version = Arc::new(Mutex::new(1));
    let origin = Origin::start(varying_origin(version.clone(), |req| {
        if req.path() == "/evil" {
            return Reply::text(
                r#"{"hold":{"mode":"response","channels":[{"name":"\u0001recheck:0"}]},"response":{"body":"x"}}"#,
            )
            .header("Content-Type", "application/grip-instruct");
        }
        Reply::text(&format!("secret of {}", req.header("authorization").unwrap_or("-")))
    }))
    .await;
    let proxy = conditional(origin.addr(), "recheck_secs = 0.2")
        .start()
        .await;
    let alice = held_get(
        proxy.addr(),
        "/me",
        "\"1\"",
        &[("authorization", "Bearer alice")],
    );
    proxy.wait_held(1).await;
    let evil = within(LIMIT, get(proxy.addr(), "/evil")).await;
    assert_eq!(
        evil.status,
        502,
        "an instruction naming U+0001...: {}",
        evil.text()
    );
    let forged =
        json!({"channel": "\u{1}recheck:0", "formats": {"http-response": {"body": "forged"}}});
    let resp = publish(&proxy, items(&[forged])).await;
    assert_eq!(resp.status, 400);
    *version.lock() = 2;
    assert_eq!(alice.response().await.text(), "secret of Bearer alice");
}

#[tokio::test]
async fn groups_formed_before_and_after_a_reload_never_share_a_channel() {
    let version = Arc::new(Mutex::new(1));
    let bobs = Arc::new(Mutex::new(1));
    let (v, b) = (version.clone(), bobs.clone());
    let origin = Origin::start(move |req: &Recorded| {
        let n = if req.path() == "/bob" {
            *b.lock()
        } else {
            *v.lock()
        };
        let etag = format!("\"{n}\"");
        if req.header("if-none-match") == Some(etag.as_str()) {
            return Reply::status(304).header("ETag", &etag);
        }
        Reply::text(&format!(
            "{} for {}",
            req.path(),
            req.header("authorization").unwrap_or("-")
        ))
        .header("ETag", &etag)
    })
    .await;
    let toml = format!(
        "[[routes]]\norigin = \"http://{}\"\n[routes.conditional]\nrecheck_secs = 0.2\n",
        origin.addr()
    );
    let proxy = Proxy::with_routes(&toml).start().await;
    let alice = held_get(
        proxy.addr(),
        "/alice",
        "\"1\"",
        &[("authorization", "Bearer alice")],
    );
    proxy.wait_held(1).await;
    let mut config = grip_proxy::Config::from_toml_str(&toml).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.control_listen = "127.0.0.1:0".parse().unwrap();
    proxy.app().reloader().apply(config);
    let bob = held_get(
        proxy.addr(),
        "/bob",
        "\"1\"",
        &[("authorization", "Bearer bob")],
    );
    proxy.wait_held(2).await;
    *version.lock() = 2;
    assert_eq!(alice.response().await.text(), "/alice for Bearer alice");
    // Bob's resource did not change: he stays held until it does, and then gets his own.
    let seen = origin.count();
    origin.nth(seen + 1).await;
    assert!(!bob.is_finished(), "bob was released by alice's change");
    *bobs.lock() = 2;
    assert_eq!(bob.response().await.text(), "/bob for Bearer bob");
}

#[tokio::test]
async fn a_re_check_answer_is_shared_up_to_hold_max_body_and_fetched_by_each_client_past_it() {
    let (store, _origin, proxy) = plain_setup("recheck_secs = 0.2", "[hold]\nmax_body = 10").await;
    let metric_of = |result: &'static str| {
        let proxy = &proxy;
        async move {
            metric(
                proxy,
                &format!("grip_proxy_rechecks_total{{result=\"{result}\"}}"),
            )
            .await
        }
    };
    // At the bound (10 bytes): one answer for both.
    let clients = [0, 1].map(|_| held_get(proxy.addr(), "/value", "\"1\"", &[]));
    proxy.wait_held(2).await;
    change(&store, "0123456789");
    for client in clients {
        assert_eq!(client.response().await.text(), "0123456789");
    }
    assert_eq!(metric_of("shared").await, 1.0);
    // One byte past it: each client fetches its own.
    let clients = [0, 1].map(|_| held_get(proxy.addr(), "/value", "\"2\"", &[]));
    proxy.wait_held(2).await;
    change(&store, "0123456789a");
    for client in clients {
        assert_eq!(client.response().await.text(), "0123456789a");
    }
    assert_eq!(metric_of("shared").await, 1.0);
    assert_eq!(metric_of("refetched").await, 1.0);
}
