//! Churn: 5,000 clients park on a few channels and disconnect, twice. Afterwards the registry holds nothing
//! (no held client, no channel entry), and the second round does not grow the process's memory: nothing is kept
//! per client that has gone.
//!
//! One test in this file on purpose: the resident set size is the whole test process's.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

const CLIENTS: usize = 5_000;
/// Clients connecting at once: bounds the origin connections in flight (this process holds both ends of every
/// client and origin connection, under a limit of 20,000 open files), and stays under the listen backlog (128
/// with tokio's `TcpListener::bind`): a larger burst has SYNs dropped and retried after a second.
const BATCH: usize = 100;
const CHANNELS: usize = 4;
/// The bound on one batch parking, or on everyone leaving.
const SLOW: Duration = Duration::from_secs(30);

/// Resident set size of this process, in kB.
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// An origin that holds every request on the channel named by its path and only counts requests: the harness's
/// `Origin` keeps every request it sees, which would grow this process by itself.
struct CountingOrigin {
    addr: SocketAddr,
    count: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl CountingOrigin {
    async fn start() -> CountingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let counter = counter.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let channel = req.uri().path()[1..].to_owned();
                    async move {
                        let resp = Response::builder()
                            .header("Grip-Hold", "response")
                            .header("Grip-Channel", channel)
                            .header("Grip-Timeout", "120")
                            .body(full("held\n"))
                            .unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                conns.spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        CountingOrigin { addr, count, task }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for CountingOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Parks `CLIENTS` raw clients, `BATCH` at a time, and returns their connections.
async fn park_all(proxy: &Proxy) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(CLIENTS);
    for first in (0..CLIENTS).step_by(BATCH) {
        let mut batch = JoinSet::new();
        for n in first..first + BATCH {
            let addr = proxy.addr();
            batch.spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let req = format!("GET /churn-{} HTTP/1.1\r\nHost: x\r\n\r\n", n % CHANNELS);
                stream.write_all(req.as_bytes()).await.unwrap();
                stream
            });
        }
        while let Some(stream) = within(SLOW, batch.join_next()).await {
            streams.push(stream.unwrap());
        }
        let parked = streams.len();
        within(SLOW, proxy.registry().wait_held(move |n| n == parked)).await;
    }
    streams
}

async fn round(proxy: &Proxy, origin: &CountingOrigin, number: usize) -> u64 {
    let started = Instant::now();
    let streams = park_all(proxy).await;
    let parked = started.elapsed();
    assert_eq!(proxy.registry().held(), CLIENTS);
    assert_eq!(proxy.registry().channels(), CHANNELS);
    for c in 0..CHANNELS {
        assert_eq!(
            proxy.registry().held_on(&format!("churn-{c}")),
            CLIENTS / CHANNELS
        );
    }
    assert_eq!(origin.count(), CLIENTS * number);

    let parked_rss = rss_kb();
    let leaving = Instant::now();
    drop(streams);
    within(SLOW, proxy.registry().wait_held(|n| n == 0)).await;
    println!(
        "round {number}: {CLIENTS} clients parked in {parked:?} (VmRSS {parked_rss} kB), all gone {:?} after \
         they closed",
        leaving.elapsed()
    );

    assert_eq!(proxy.registry().held(), 0);
    assert_eq!(
        proxy.registry().channels(),
        0,
        "channel entries were left behind"
    );
    for c in 0..CHANNELS {
        assert_eq!(proxy.registry().held_on(&format!("churn-{c}")), 0);
    }
    assert_eq!(
        origin.count(),
        CLIENTS * number,
        "a client leaving was re-requested"
    );
    rss_kb()
}

// Single-threaded on purpose: with two workers, frees on the other thread's malloc arena make the resident set
// wander by up to 12% between rounds before it settles (measured over 8 rounds: no growth after the third);
// on one thread it is steady to within 1%, so the 10% bound below tests for a leak, not for the allocator.
#[tokio::test]
async fn five_thousand_clients_park_and_leave_twice_leaving_nothing_behind() {
    let origin = CountingOrigin::start().await;
    let proxy = Proxy::to(origin.addr)
        .toml("[hold]\nmax_timeout_secs = 120")
        .start()
        .await;
    let baseline = rss_kb();

    let first = round(&proxy, &origin, 1).await;
    let second = round(&proxy, &origin, 2).await;

    println!("VmRSS: baseline {baseline} kB, after round 1 {first} kB, after round 2 {second} kB");
    assert!(
        second * 10 <= first * 11,
        "round 2 grew the resident set from {first} kB to {second} kB (more than 10%)"
    );
}
