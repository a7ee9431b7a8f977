//! ETag-polling clients of a worker, as clients of a plain REST API poll: each asks `GET PATH`
//! with `If-None-Match` of the ETag it has, keeps a keep-alive connection, and takes the new
//! ETag from every `200`. *Interval* clients ask every INTERVAL_MS (each at a phase of its own
//! within the interval, so that their requests are spread evenly); *held* clients (INTERVAL_MS
//! 0) ask again as soon as they have an answer, as a client held by conditional holds does.
//! Each client reports the time it first read each new version, for the delivery latency after
//! a change.

use super::{arg, connect, sample_suffix, CONNECT_CONCURRENCY};
use crate::http::RespReader;
use crate::sys::now_ns;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Answers counted by the clients of a worker.
#[derive(Default)]
struct Counts {
    /// `200` (a new version), `304`, and any other status.
    ok: AtomicU64,
    not_modified: AtomicU64,
    other: AtomicU64,
    /// Requests that failed (connection lost, bad response) and reconnects after `close`.
    errors: AtomicU64,
    reconnects: AtomicU64,
    /// One unexpected answer, described.
    sample: Mutex<Option<String>>,
}

/// A client had version `version` at CLOCK_MONOTONIC `t` (ns), for the first time.
struct Got {
    version: u64,
    t: u64,
}

/// The polling clients of a worker (at most one group at a time).
#[derive(Default)]
pub(super) struct Pollers {
    set: JoinSet<()>,
    counts: Arc<Counts>,
    rx: Option<mpsc::UnboundedReceiver<Got>>,
    /// Per version, the times clients first had it (as received so far).
    got: HashMap<u64, Vec<u64>>,
    /// Clients started, and those that could not connect.
    count: usize,
    failed: usize,
}

/// What one client is given.
struct Client {
    addr: SocketAddr,
    host: Arc<str>,
    path: Arc<str>,
    /// The version it has (its `If-None-Match`).
    version: u64,
    /// Interval clients: the interval and the client's first request time.
    every: Option<(Duration, Instant)>,
    deadline: Instant,
}

/// The fraction of the interval at which client `i` (over all workers) polls: the golden-ratio
/// sequence, spread evenly for any number of clients.
fn phase(i: usize) -> f64 {
    (i as f64 * 0.618_033_988_749_895).fract()
}

/// The version an `ETag` names (`"7"` -> 7).
fn version_of(etag: &str) -> Option<u64> {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}

/// `etag ADDR COUNT PATH VERSION INTERVAL_MS OFFSET MAX_MS` -> `connected SENT FAILED`: start
/// COUNT clients, all with `If-None-Match: "VERSION"`; reply once each is connected (or failed).
pub(super) async fn start(p: &mut Pollers, args: &[&str]) -> Result<String, String> {
    stop_clients(p).await;
    let addr: SocketAddr = arg(args, 1)?;
    let count: usize = arg(args, 2)?;
    let path: String = arg(args, 3)?;
    let version: u64 = arg(args, 4)?;
    let interval_ms: u64 = arg(args, 5)?;
    let offset: usize = arg(args, 6)?;
    let max_ms: u64 = arg(args, 7)?;
    let now = Instant::now();
    let deadline = now + Duration::from_millis(max_ms);
    let (host, path): (Arc<str>, Arc<str>) = (addr.to_string().into(), path.into());
    let (tx, rx) = mpsc::unbounded_channel();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    p.counts = Arc::new(Counts::default());
    let sem = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    for i in 0..count {
        let every = (interval_ms > 0).then(|| {
            let d = Duration::from_millis(interval_ms);
            (d, now + d.mul_f64(phase(offset + i)))
        });
        let c = Client {
            addr,
            host: host.clone(),
            path: path.clone(),
            version,
            every,
            deadline,
        };
        let (counts, tx, started, sem) = (
            p.counts.clone(),
            tx.clone(),
            started_tx.clone(),
            sem.clone(),
        );
        p.set.spawn(async move {
            let permit = sem.acquire_owned().await;
            let Ok(s) = connect(c.addr).await else {
                let _ = started.send(false);
                return;
            };
            drop(permit);
            let _ = started.send(true);
            poll(c, s, &counts, &tx).await;
        });
    }
    drop(started_tx);
    let (mut sent, mut failed) = (0, 0);
    let limit = Instant::now() + Duration::from_secs(120);
    while sent + failed < count {
        match tokio::time::timeout_at(limit, started.recv()).await {
            Ok(Some(true)) => sent += 1,
            Ok(Some(false)) => failed += 1,
            Ok(None) | Err(_) => break,
        }
    }
    // Clients that did not report within the bound count as failed.
    p.rx = Some(rx);
    p.count = count;
    p.failed = count - sent;
    Ok(format!("connected {sent} {}", p.failed))
}

/// One client's requests, from its first until the deadline (or until it is dropped).
async fn poll(mut c: Client, s: TcpStream, counts: &Counts, tx: &mpsc::UnboundedSender<Got>) {
    let mut conn = Some((s, RespReader::new()));
    while Instant::now() < c.deadline {
        if let Some((every, next)) = c.every.as_mut() {
            tokio::time::sleep_until((*next).min(c.deadline)).await;
            let now = Instant::now();
            // Behind (a busy machine): skip the missed polls, keeping the client's phase.
            while *next <= now {
                *next += *every;
            }
        }
        let (mut s, mut rd) = match conn.take() {
            Some(c) => c,
            None => match connect(c.addr).await {
                Ok(s) => (s, RespReader::new()),
                Err(_) => {
                    counts.errors.fetch_add(1, Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nIf-None-Match: \"{}\"\r\n\r\n",
            c.path, c.host, c.version
        );
        if s.write_all(req.as_bytes()).await.is_err() {
            counts.errors.fetch_add(1, Relaxed);
            continue;
        }
        let r = match tokio::time::timeout_at(c.deadline, rd.read_response(&mut s)).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => {
                counts.errors.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(_) => return,
        };
        let t = now_ns();
        match r.status {
            200 => {
                counts.ok.fetch_add(1, Relaxed);
                match rd.last_etag.as_deref().and_then(version_of) {
                    Some(v) if v > c.version => {
                        c.version = v;
                        let _ = tx.send(Got { version: v, t });
                    }
                    Some(_) => {}
                    None => note_other(counts, "200 without a numeric ETag".into()),
                }
            }
            304 => {
                counts.not_modified.fetch_add(1, Relaxed);
            }
            status => {
                counts.other.fetch_add(1, Relaxed);
                let what = rd.last_other.take().unwrap_or(format!("status {status}"));
                note_other(counts, what);
                // Back off a little after an error answer, as a real client would.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if r.close {
            counts.reconnects.fetch_add(1, Relaxed);
        } else {
            conn = Some((s, rd));
        }
    }
}

/// Keep the first unexpected answer's description.
fn note_other(counts: &Counts, what: String) {
    if let Ok(mut s) = counts.sample.lock() {
        s.get_or_insert(what);
    }
}

/// `etag_wait VERSION TIMEOUT_MS` -> `etag_got GOT PENDING T1,T2,..`: wait (bounded) until every
/// connected client has read VERSION; Ti are the CLOCK_MONOTONIC ns at which each first had it.
pub(super) async fn wait(p: &mut Pollers, args: &[&str]) -> Result<String, String> {
    let version: u64 = arg(args, 1)?;
    let timeout_ms: u64 = arg(args, 2)?;
    let want = p.count - p.failed;
    let limit = Instant::now() + Duration::from_millis(timeout_ms);
    let rx = p.rx.as_mut().ok_or("no clients")?;
    while p.got.get(&version).map_or(0, Vec::len) < want {
        match tokio::time::timeout_at(limit, rx.recv()).await {
            Ok(Some(g)) => p.got.entry(g.version).or_default().push(g.t),
            Ok(None) | Err(_) => break,
        }
    }
    let times = p.got.remove(&version).unwrap_or_default();
    let list: Vec<String> = times.iter().map(u64::to_string).collect();
    Ok(format!(
        "etag_got {} {} {}",
        times.len(),
        want.saturating_sub(times.len()),
        if list.is_empty() {
            "-".to_string()
        } else {
            list.join(",")
        }
    ))
}

/// `etag_stop` -> `etag_stopped OK NOT_MODIFIED OTHER ERRORS RECONNECTS FAILED`: drop the
/// clients and report what they were answered (FAILED: clients that could not connect).
pub(super) async fn stop(p: &mut Pollers) -> Result<String, String> {
    stop_clients(p).await;
    let c = &p.counts;
    let sample = c.sample.lock().ok().and_then(|mut s| s.take());
    Ok(format!(
        "etag_stopped {} {} {} {} {} {}{}",
        c.ok.load(Relaxed),
        c.not_modified.load(Relaxed),
        c.other.load(Relaxed),
        c.errors.load(Relaxed),
        c.reconnects.load(Relaxed),
        p.failed,
        sample_suffix(sample)
    ))
}

/// Drop every client and what they reported.
async fn stop_clients(p: &mut Pollers) {
    p.set.abort_all();
    while p.set.join_next().await.is_some() {}
    p.rx = None;
    p.got.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_etags() {
        assert_eq!(version_of("\"7\""), Some(7));
        assert_eq!(version_of("W/\"12\""), Some(12));
        assert_eq!(version_of("\"x\""), None);
    }

    #[test]
    fn phases_are_spread_over_the_interval() {
        let mut buckets = [0usize; 10];
        for i in 0..10_000 {
            let f = phase(i);
            assert!((0.0..1.0).contains(&f));
            buckets[(f * 10.0) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| (900..=1_100).contains(&b)));
    }
}
