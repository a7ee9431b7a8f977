//! The control API: paths, answers, the item forms client libraries send, validation errors (and that a rejected
//! batch delivers nothing), methods and the body limit.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use serde_json::{json, Value};
use support::*;

/// An origin that holds every request on the channel named by its path (`/c` holds on `c`).
async fn holding_origin() -> Origin {
    Origin::start(|req| Reply::hold(&req.path()[1..]).header("ETag", "\"v1\"")).await
}

fn post(path: &str, body: &str) -> http::Request<Body> {
    request("POST", path).body(full(body.to_owned())).unwrap()
}

#[tokio::test]
async fn publish_paths_answer_published() {
    let origin = holding_origin().await;
    let proxy = Proxy::start(origin.addr()).await;
    let body = items(&[item("c", "x")]).to_string();

    for path in ["/publish/", "/publish", "//publish/"] {
        let resp = within(LIMIT, send(proxy.control_addr(), post(path, &body))).await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(resp.text().trim_end(), "Published", "{path}");
        assert!(resp
            .header("content-type")
            .unwrap()
            .starts_with("text/plain"));
    }

    // Some clients send an empty Authorization header when no auth is configured.
    let req = request("POST", "/publish/")
        .header("Authorization", "")
        .body(full(body.clone()))
        .unwrap();
    let resp = within(LIMIT, send(proxy.control_addr(), req)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    let req = request("POST", "/publish/")
        .header("Accept", "application/json")
        .body(full(body))
        .unwrap();
    let resp = within(LIMIT, send(proxy.control_addr(), req)).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let answer: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(answer, json!({"message": "Published"}));
}

/// What a released client must get.
struct Want {
    status: u16,
    reason: Option<&'static str>,
    x_a: &'static [&'static str],
    body: &'static str,
}

fn want(
    status: u16,
    reason: Option<&'static str>,
    x_a: &'static [&'static str],
    body: &'static str,
) -> Want {
    Want {
        status,
        reason,
        x_a,
        body,
    }
}

#[tokio::test]
async fn item_forms_that_client_libraries_send_are_delivered() {
    let origin = holding_origin().await;
    let proxy = Proxy::start(origin.addr()).await;
    let nested = |response: Value| json!({"channel": "c", "formats": {"http-response": response}});
    let cases = [
        // Python: the format at the item's top level, code as a number.
        (
            json!({"channel": "c", "http-response": {"code": 201, "body": "top"}}),
            want(201, None, &[], "top"),
        ),
        // Node: nested under formats, code as a numeric string; a reason; headers as an object.
        (
            nested(
                json!({"code": "202", "reason": "Queued Up", "headers": {"X-A": "1"}, "body": "node"}),
            ),
            want(202, Some("Queued Up"), &["1"], "node"),
        ),
        // Headers as a list of pairs, repeated names kept.
        (
            nested(json!({"headers": [["X-A", "1"], ["X-A", "2"]], "body": "pairs"})),
            want(200, None, &["1", "2"], "pairs"),
        ),
        (
            nested(json!({"body-bin": "aGkgdGhlcmU="})),
            want(200, None, &[], "hi there"),
        ),
        (
            nested(json!({"body": "text", "body-bin": "Ymlu"})),
            want(200, None, &[], "bin"),
        ),
        // The old spec's `status` key is not the code.
        (
            nested(json!({"status": 404, "body": "legacy"})),
            want(200, None, &[], "legacy"),
        ),
    ];

    for (item, want) in cases {
        let client = Pending::get(proxy.addr(), "/c");
        proxy.wait_held(1).await;

        let answer = publish(&proxy, items(std::slice::from_ref(&item))).await;

        assert_eq!(answer.status, 200, "{item}: {}", answer.text());
        let resp = client.response().await;
        assert_eq!(resp.status, want.status, "{item}");
        assert_eq!(resp.reason.as_deref(), want.reason, "{item}");
        assert_eq!(resp.all("x-a"), want.x_a, "{item}");
        assert_eq!(resp.text(), want.body, "{item}");
        assert_eq!(resp.header("etag"), Some("\"v1\""), "{item}");
        proxy.wait_held(0).await;
    }
}

#[tokio::test]
async fn an_invalid_item_is_a_400_naming_it_and_nothing_of_the_batch_is_delivered() {
    let origin = holding_origin().await;
    let proxy = Proxy::start(origin.addr()).await;
    let client = Pending::get(proxy.addr(), "/c");
    proxy.wait_held(1).await;
    let valid = item("c", "from a rejected batch");
    let with = |bad: Value| items(&[valid.clone(), bad]).to_string();
    let response = |r: Value| json!({"channel": "c", "formats": {"http-response": r}});
    // (body, what the 400 must name)
    let cases = [
        (r#"{"items": [{"channel": "c""#.to_owned(), "JSON"),
        (json!({"items": valid.clone()}).to_string(), "items"),
        (
            with(json!({"formats": {"http-response": {}}})),
            "items[1].channel",
        ),
        (
            with(response(json!({"code": 99}))),
            "items[1].formats.http-response.code",
        ),
        (
            with(response(json!({"code": 1000}))),
            "items[1].formats.http-response.code",
        ),
        (
            with(response(json!({"code": "abc"}))),
            "items[1].formats.http-response.code",
        ),
        (
            with(response(json!({"headers": {"Bad Name": "x"}}))),
            "items[1].formats.http-response.headers[0]",
        ),
        (
            with(json!({"channel": "c", "http-response": {"body-bin": "not base64!"}})),
            "items[1].http-response.body-bin",
        ),
    ];

    for (body, named) in &cases {
        let resp = within(LIMIT, send(proxy.control_addr(), post("/publish/", body))).await;
        assert_eq!(resp.status, 400, "{body}");
        assert!(resp.text().contains(named), "{body}: {}", resp.text());
        assert_eq!(
            proxy.registry().held(),
            1,
            "{body}: the client was released"
        );
    }

    let req = request("POST", "/publish/")
        .header("Accept", "application/json")
        .body(full(cases[2].0.clone()))
        .unwrap();
    let resp = within(LIMIT, send(proxy.control_addr(), req)).await;
    assert_eq!(resp.status, 400);
    let answer: Value = serde_json::from_slice(&resp.body).unwrap();
    assert!(answer["error"]
        .as_str()
        .unwrap()
        .contains("items[1].channel"));

    publish(&proxy, items(&[item("c", "valid")])).await;
    assert_eq!(client.response().await.text(), "valid");
}

#[tokio::test]
async fn other_methods_and_paths_are_refused() {
    let origin = holding_origin().await;
    let proxy = Proxy::start(origin.addr()).await;

    let resp = within(LIMIT, get(proxy.control_addr(), "/publish/")).await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("POST"));

    let resp = within(LIMIT, send(proxy.control_addr(), post("/publish/x", "{}"))).await;
    assert_eq!(resp.status, 404);
    let resp = within(LIMIT, send(proxy.control_addr(), post("/other", "{}"))).await;
    assert_eq!(resp.status, 404);
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_declared_or_chunked() {
    let origin = holding_origin().await;
    let proxy = Proxy::to(origin.addr())
        .toml("[control]\nmax_body = 1000")
        .start()
        .await;

    // Only the head is sent: the answer must come without waiting for the body.
    let mut declared = RawConn::open(proxy.control_addr()).await;
    declared
        .write(b"POST /publish/ HTTP/1.1\r\nHost: c\r\nContent-Length: 100000\r\n\r\n")
        .await;
    let resp = within(LIMIT, declared.read_response()).await;
    assert_eq!(resp.status, 413);

    let mut chunked = RawConn::open(proxy.control_addr()).await;
    let mut req =
        b"POST /publish/ HTTP/1.1\r\nHost: c\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        req.extend_from_slice(format!("1f4\r\n{}\r\n", " ".repeat(500)).as_bytes());
    }
    req.extend_from_slice(b"0\r\n\r\n");
    chunked.write(&req).await;
    let resp = within(LIMIT, chunked.read_response()).await;
    assert_eq!(resp.status, 413);

    let at_limit = format!("{{\"items\": []}}{}", " ".repeat(1000 - 13));
    let resp = within(
        LIMIT,
        send(proxy.control_addr(), post("/publish/", &at_limit)),
    )
    .await;
    assert_eq!(resp.status, 200, "a body of exactly max_body is accepted");
}
