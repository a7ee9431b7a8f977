//! The README's "Long-poll for an API that knows nothing of GRIP" walkthrough, over real sockets: the example
//! origin in its mode without GRIP behind grip-proxy run from config/unmodified-api.toml. A client holding the
//! current ETag is held, and gets the new value after a change made straight at the origin (re-check), or at once
//! when the origin is given a publish URL.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

#[path = "../examples/value_origin/mod.rs"]
#[allow(dead_code)] // the GRIP mode is the browser test's
mod value_origin;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::net::TcpListener;

/// The shipped config, its route pointed at `origin`, with `extra` TOML after it.
fn shipped(origin: SocketAddr, extra: &str) -> Shipped {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/unmodified-api.toml"
    ))
    .unwrap();
    assert!(text.contains("http://127.0.0.1:8080"));
    Shipped(text.replace("http://127.0.0.1:8080", &format!("http://{origin}")) + extra)
}

/// The config's text, to change before starting.
struct Shipped(String);

impl Shipped {
    fn replace(self, from: &str, to: &str) -> Shipped {
        assert!(self.0.contains(from), "{from:?} is not in the config");
        Shipped(self.0.replace(from, to))
    }

    async fn start(self) -> Proxy {
        Proxy::with_routes("").toml(&self.0).start().await
    }
}

/// The example origin without GRIP on a free port, publishing to `publish` if given.
async fn origin(publish: Option<String>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (
        addr,
        tokio::spawn(value_origin::serve_no_grip(listener, publish)),
    )
}

fn with_etag(addr: SocketAddr, etag: &str) -> Pending {
    let req = request("GET", "/value")
        .header("if-none-match", etag)
        .body(empty())
        .unwrap();
    Pending::spawn(async move { send(addr, req).await })
}

async fn change_at_origin(origin: SocketAddr, value: &str) {
    let req = request("POST", "/value")
        .body(full(value.to_owned()))
        .unwrap();
    let resp = within(LIMIT, send(origin, req)).await;
    assert!(resp.status.is_success(), "{}", resp.status);
}

#[tokio::test]
async fn a_change_made_straight_at_the_api_reaches_the_held_client_by_re_check() {
    let (origin, task) = origin(None).await;
    let proxy = shipped(origin, "").start().await;
    let first = proxy.get("/value").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.headers["etag"], "\"1\"");
    assert!(first
        .headers
        .keys()
        .all(|k| !k.as_str().starts_with("grip-")));

    let held = with_etag(proxy.addr(), "\"1\"");
    proxy.wait_held(1).await;
    change_at_origin(origin, "new").await;
    let resp = within(Duration::from_secs(3), held.response()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text().trim_end(), "new");
    assert_eq!(resp.headers["etag"], "\"2\"");
    task.abort();
}

#[tokio::test]
async fn an_api_given_a_publish_url_releases_held_clients_without_re_checks() {
    // The origin's address first, so that the proxy can be pointed at it, then the origin told the proxy's
    // control API.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = listener.local_addr().unwrap();
    let proxy = shipped(origin, "")
        .replace("recheck_secs = 1.0", "recheck_secs = 0")
        .start()
        .await;
    let publish = format!("http://{}/publish/", proxy.control_addr());
    let task = tokio::spawn(value_origin::serve_no_grip(listener, Some(publish)));
    let held = with_etag(proxy.addr(), "\"1\"");
    proxy.wait_held(1).await;
    change_at_origin(origin, "published").await;
    let resp = held.response().await;
    assert_eq!(resp.text().trim_end(), "published");
    assert_eq!(resp.headers["etag"], "\"2\"");
    task.abort();
}
