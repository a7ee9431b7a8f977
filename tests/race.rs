//! Publishes racing with parks over real sockets: 50 clients long-poll a versioned resource while a publisher
//! sends 200 items with ids as fast as it can. Every client must see every version it asks after, in order, and
//! never wait for an item it missed (no 304): it either gets the item or is re-fetched with the right `Grip-Last`.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use support::*;
use tokio::task::JoinSet;

const CLIENTS: usize = 50;
const ITEMS: u64 = 200;

/// The origin's state: the current version, and every re-fetch with `Grip-Last` it received.
#[derive(Default)]
struct Versioned {
    version: AtomicU64,
    /// `(X-Have, Grip-Last, the version when it arrived)`.
    catch_ups: Mutex<Vec<(u64, String, u64)>>,
}

impl Versioned {
    /// `GET /v` with `X-Have: n`: the version at once if newer than n, else a hold after n that times out
    /// with a 304.
    ///
    /// A re-fetch with `Grip-Last` normally finds a newer version (the client was behind the proxy). It may not:
    /// the version is set before its publish reaches the proxy, so a fast client can get version n from here,
    /// ask again after n and be held after n while the proxy's last id is still n-1. The proxy cannot tell ahead
    /// from behind and re-fetches; answering with the hold again is right, and such re-fetches are only counted.
    fn answer(&self, req: &Recorded) -> Reply {
        let have: u64 = req.header("x-have").unwrap().parse().unwrap();
        let version = self.version.load(Ordering::SeqCst);
        if let Some(last) = req.header("grip-last") {
            self.catch_ups.lock().push((have, last.to_owned(), version));
        }
        if have < version {
            return Reply::text(&version.to_string()).header("X-Version", &version.to_string());
        }
        Reply::status(200)
            .header("Grip-Hold", "response")
            .header("Grip-Channel", &format!("v; prev-id={have}"))
            .header("Grip-Timeout", "5")
            .header("Grip-Status", "304")
            .body("timed out")
    }
}

fn version_item(i: u64) -> Value {
    json!({
        "channel": "v",
        "id": i.to_string(),
        "prev-id": (i - 1).to_string(),
        "formats": {"http-response": {"body": i.to_string(), "headers": {"X-Version": i.to_string()}}},
    })
}

/// Polls from version 0 until it has `ITEMS`; returns how many responses it took.
async fn client(addr: std::net::SocketAddr, number: usize) -> usize {
    let mut conn = within(LIMIT, Conn::open(addr)).await;
    let mut have = 0;
    let mut responses = 0;
    while have < ITEMS {
        let req = request("GET", "/v")
            .header("X-Have", have.to_string())
            .body(empty())
            .unwrap();
        // A held request ends by a publish, or by its 5 s timeout (a 304, which fails below).
        let resp = within(Duration::from_secs(10), conn.send(req)).await;
        responses += 1;
        assert_eq!(
            resp.status, 200,
            "client {number} after version {have} got {resp:?}: it waited for an item it had missed"
        );
        let version: u64 = resp.text().parse().unwrap();
        assert_eq!(
            resp.header("x-version"),
            Some(resp.text()),
            "client {number}"
        );
        assert!(
            version > have,
            "client {number} had version {have} and was given {version}"
        );
        have = version;
    }
    responses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_racing_with_publishes_never_miss_an_item() {
    let state = Arc::new(Versioned::default());
    let origin = {
        let state = state.clone();
        Origin::start(move |req| state.answer(req)).await
    };
    let proxy = Proxy::start(origin.addr()).await;

    within(Duration::from_secs(60), async {
        let mut clients = JoinSet::new();
        for number in 0..CLIENTS {
            clients.spawn(client(proxy.addr(), number));
        }
        // No waiting for parks: publishes race with them on purpose.
        for i in 1..=ITEMS {
            state.version.store(i, Ordering::SeqCst);
            let resp = publish(&proxy, items(&[version_item(i)])).await;
            assert_eq!(resp.status, 200, "item {i}: {}", resp.text());
        }
        let mut responses = 0;
        while let Some(done) = clients.join_next().await {
            responses += done.unwrap();
        }
        println!(
            "{CLIENTS} clients reached version {ITEMS} in {responses} responses; \
             the origin answered {} requests",
            origin.count()
        );
    })
    .await;

    let catch_ups = state.catch_ups.lock().clone();
    let ahead = catch_ups.iter().filter(|(have, _, v)| have >= v).count();
    println!(
        "re-fetches with Grip-Last: {}, of which by a client ahead of the proxy: {ahead}",
        catch_ups.len(),
    );
    for (have, last, _) in &catch_ups {
        assert_eq!(
            *last,
            format!("v; last-id={have}"),
            "Grip-Last does not name what the client had"
        );
    }
}
