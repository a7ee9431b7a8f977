//! Client worker process (`grip-bench worker`): cheap long-poll clients and load loops on a
//! current_thread runtime, driven by one-line commands on stdin, answering on stdout.
//!
//! Commands (space separated) and replies:
//! - `hold ADDR COUNT PREFIX NCHAN OFFSET MAX_MS [ROUTE]` -> `connected SENT FAILED`: open COUNT
//!   connections, client i asks `GET /ROUTE/PREFIX{(OFFSET+i)%NCHAN}` (ROUTE: `hold`, or `sub`
//!   for Nchan) and waits for one response.
//!   Error answers before `arm` are retried (at most 10 times, 50-100 ms apart).
//! - `status` -> `status WAITING RETRIES DONE FAILED`: clients with a request outstanding,
//!   error answers retried so far, clients finished, clients that could not connect.
//! - `arm` -> `armed`: a publish follows; every answer from now on is final.
//! - `collect TIMEOUT_MS` -> `collected PUBLISHED TIMEOUTS OTHER ERRORS PENDING T1,T2,..`:
//!   wait for the hold clients' responses; Ti are CLOCK_MONOTONIC ns of published responses.
//! - `close` -> `closed`: drop every hold connection.
//! - `repoll ADDR COUNT PREFIX NCHAN OFFSET MAX_MS [ROUTE]` -> `connected SENT FAILED`: like hold, but
//!   each client re-requests on its connection after every response (reconnecting if closed).
//! - `repoll_stop T_START T_END` -> `repolled IN_WINDOW TOTAL OTHER ERRORS RECONNECTS`.
//! - `stream ADDR COUNT PREFIX NCHAN OFFSET MAX_MS` -> `connected SENT FAILED`: open COUNT
//!   streams, client i on `GET /stream/PREFIX{(OFFSET+i)%NCHAN}`; `status` counts a stream as
//!   waiting once its first piece is read; `collect` reports each client's first published chunk.
//! - `stream_count ADDR COUNT PREFIX NCHAN OFFSET MAX_MS` -> `connected SENT FAILED`: like
//!   `stream`, but every published chunk is counted (no `collect`).
//! - `catchup ADDR COUNT PREFIX NCHAN OFFSET MAX_MS ROUTE WANT` -> `connected SENT FAILED`: like
//!   `stream` on `GET /ROUTE/PREFIX{(OFFSET+i)%NCHAN}` (ROUTE: `catchup/AFTER`); `collect`
//!   reports the time each client had read WANT published items (one chunk each, or joined in
//!   one piece by an origin answering a re-fetch): when it had caught up.
//! - `stream_window T_START T_END` -> `window`: count chunks read in [T_START, T_END) from now.
//! - `stream_stop` -> `streamed IN_WINDOW TOTAL OTHER ENDED FAILED`: drop the streams; published
//!   chunks read in the window and in all, other chunks, streams that ended or broke early,
//!   streams that could not be opened.
//! - `load ADDR CONNS DURATION_MS PATH` -> `loaded OK NON200 ERRORS RECONNECTS`: keep-alive
//!   GET loop per connection.
//! - `tls CA_PATH` -> `tls`: trust the CA in that PEM file for the HTTPS clients. From then on,
//!   `hold`, `repoll`, `load` and `handshake` take `tls:ADDR` for HTTPS to ADDR (rustls, TLS 1.2
//!   and 1.3, ALPN http/1.1, no session resumption).
//! - `handshake ADDR CONNS DURATION_MS PATH` -> `handshaken OK NON200 ERRORS`: per connection, a
//!   loop of: new TCP connection (and full TLS handshake with `tls:ADDR`), one
//!   `GET PATH` with `Connection: close`, close.
//! - `publish ADDR CONNS DURATION_MS ITEMS [nchan]` -> `published REQS ITEMS NON200 ERRORS
//!   RECONNECTS`: POST /publish/ loop per connection, ITEMS items (distinct channels) per request;
//!   with `nchan`, `POST /pub/<channel>` with the published body instead (ITEMS must be 1), any
//!   2xx counted as published (NON200: other statuses).
//! - `etag ADDR COUNT PATH VERSION INTERVAL_MS OFFSET MAX_MS` -> `connected SENT FAILED`: COUNT
//!   ETag-polling clients (`etag`), each `GET PATH` with `If-None-Match: "VERSION"` at first and
//!   the ETag of its last `200` after: every INTERVAL_MS (client OFFSET+i at its own phase of the
//!   interval), or, with INTERVAL_MS 0, again as soon as it has an answer (held by the proxy).
//! - `etag_wait VERSION TIMEOUT_MS` -> `etag_got GOT PENDING T1,T2,..`: wait until every ETag
//!   client has read VERSION; Ti are the CLOCK_MONOTONIC ns at which each first had it.
//! - `etag_stop` -> `etag_stopped OK NOT_MODIFIED OTHER ERRORS RECONNECTS FAILED`: drop the ETag
//!   clients; their 200, 304 and other answers, failed requests, reconnects, failed connects.
//! - `quit`: exit.
//!
//! `collected` and `repolled` may end with ` | DESCRIPTION` of one unexpected response.

mod etag;
mod streams;

use crate::http::{get_request, post_request, publish_body, BodyKind, RespReader};
use crate::sys::now_ns;
use crate::tls::Conn;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsConnector;

/// Connections being opened at once per worker (keeps SYN backlogs from overflowing).
const CONNECT_CONCURRENCY: usize = 200;

enum Ev {
    Sent,
    Failed,
    Resp {
        kind: BodyKind,
        status: u16,
        t: u64,
    },
    Error,
    Reconnect,
    /// Description of an unexpected response (sent at most once per client).
    OtherSample(String),
}

/// Counters of a hold group, shared with its clients.
#[derive(Default)]
struct HoldState {
    /// Set just before the publish: from then on every answer is final (no retries).
    armed: AtomicBool,
    /// Clients with a request outstanding.
    waiting: AtomicUsize,
    /// Error answers that were retried.
    retries: AtomicUsize,
    /// Clients that have their final answer (or gave up).
    done: AtomicUsize,
}

/// What the clients of a group do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clients {
    /// Long-poll once (`hold`).
    Hold,
    /// Long-poll again after every response (`repoll`).
    Repoll,
    /// Open a stream (`stream`, `stream_count`).
    Stream(streams::Mode),
}

#[derive(Default)]
struct Group {
    set: JoinSet<()>,
    state: Arc<HoldState>,
    /// Chunk counters of `stream_count` clients.
    counts: Arc<streams::Counts>,
    rx: Option<mpsc::UnboundedReceiver<Ev>>,
    early: Vec<Ev>,
    count: usize,
    failed: usize,
}

/// Run the worker until `quit` or stdin closes.
pub(crate) fn run(id: usize) -> io::Result<()> {
    crate::sys::raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(command_loop(id))
}

async fn command_loop(id: usize) -> io::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    let mut group = Group::default();
    let mut pollers = etag::Pollers::default();
    // The HTTPS clients' connector (`tls CA_PATH`).
    let mut tls: Option<TlsConnector> = None;
    while let Some(line) = lines.next_line().await? {
        let args: Vec<&str> = line.split_whitespace().collect();
        let reply = match args.first().copied() {
            Some("hold") => start_group(&mut group, &args, Clients::Hold, &tls).await,
            Some("repoll") => start_group(&mut group, &args, Clients::Repoll, &tls).await,
            Some("stream") => {
                let kind = Clients::Stream(streams::Mode::FirstItem);
                start_group(&mut group, &args, kind, &tls).await
            }
            Some("stream_count") => {
                let kind = Clients::Stream(streams::Mode::Count);
                start_group(&mut group, &args, kind, &tls).await
            }
            Some("catchup") => match arg::<u64>(&args, 8) {
                Ok(want) => {
                    let kind = Clients::Stream(streams::Mode::CatchUp(want));
                    start_group(&mut group, &args, kind, &tls).await
                }
                Err(e) => Err(e),
            },
            Some("tls") => arg::<std::path::PathBuf>(&args, 1).and_then(|ca| {
                tls = Some(crate::tls::connector(&ca)?);
                Ok("tls".to_string())
            }),
            Some("handshake") => handshakes(&args, &tls).await,
            Some("stream_window") => stream_window(&group, &args),
            Some("stream_stop") => stream_stop(&mut group).await,
            Some("collect") => collect(&mut group, &args).await,
            Some("status") => Ok(format!(
                "status {} {} {} {}",
                group.state.waiting.load(Relaxed),
                group.state.retries.load(Relaxed),
                group.state.done.load(Relaxed),
                group.failed
            )),
            Some("arm") => {
                group.state.armed.store(true, Relaxed);
                Ok("armed".to_string())
            }
            Some("close") => {
                close(&mut group).await;
                Ok("closed".to_string())
            }
            Some("repoll_stop") => repoll_stop(&mut group, &args).await,
            Some("load") => load(&args, &tls).await,
            Some("publish") => publish_loop(id, &args).await,
            Some("etag") => etag::start(&mut pollers, &args).await,
            Some("etag_wait") => etag::wait(&mut pollers, &args).await,
            Some("etag_stop") => etag::stop(&mut pollers).await,
            Some("quit") | None => break,
            Some(other) => Err(format!("unknown command {other}")),
        };
        let reply = reply.unwrap_or_else(|e| format!("error {e}"));
        out.write_all(reply.as_bytes()).await?;
        out.write_all(b"\n").await?;
        out.flush().await?;
    }
    close(&mut group).await;
    let _ = etag::stop(&mut pollers).await;
    Ok(())
}

fn arg<T: std::str::FromStr>(args: &[&str], i: usize) -> Result<T, String> {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad or missing argument {i}"))
}

/// Where clients connect: an address, over TLS if it was given as `tls:ADDR`.
#[derive(Clone)]
struct Dest {
    addr: SocketAddr,
    tls: Option<TlsConnector>,
}

/// Argument `i` as a [`Dest`]: `ADDR`, or `tls:ADDR` once `tls` gave the CA.
fn dest(args: &[&str], i: usize, tls: &Option<TlsConnector>) -> Result<Dest, String> {
    let s = args.get(i).ok_or_else(|| format!("missing argument {i}"))?;
    match s.strip_prefix("tls:") {
        Some(a) => Ok(Dest {
            addr: a.parse().map_err(|_| format!("bad address {a}"))?,
            tls: Some(tls.clone().ok_or("tls:ADDR before the `tls` command")?),
        }),
        None => Ok(Dest {
            addr: arg(args, i)?,
            tls: None,
        }),
    }
}

/// `hold`/`repoll`/`stream`/`stream_count`: open the clients and reply once every first request
/// is sent.
async fn start_group(
    group: &mut Group,
    args: &[&str],
    kind: Clients,
    tls: &Option<TlsConnector>,
) -> Result<String, String> {
    close(group).await;
    let to = dest(args, 1, tls)?;
    let addr = to.addr;
    if to.tls.is_some() && matches!(kind, Clients::Stream(_)) {
        return Err("streams are plain HTTP only".into());
    }
    let count: usize = arg(args, 2)?;
    let prefix: String = arg(args, 3)?;
    let nchan: usize = arg::<usize>(args, 4)?.max(1);
    let offset: usize = arg(args, 5)?;
    let max_ms: u64 = arg(args, 6)?;
    let deadline = Instant::now() + Duration::from_millis(max_ms);
    let host = addr.to_string();
    let mut by_channel: Vec<Option<Arc<[u8]>>> = vec![None; nchan];
    let (tx, mut rx) = mpsc::unbounded_channel();
    group.state = Arc::new(HoldState::default());
    group.counts = Arc::new(streams::Counts::default());
    let route = match args.get(7) {
        Some(r) => *r,
        None if matches!(kind, Clients::Stream(_)) => "stream",
        None => "hold",
    };
    let sem = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    for i in 0..count {
        let ch = (offset + i) % nchan;
        let req = by_channel[ch]
            .get_or_insert_with(|| Arc::from(get_request(&host, &format!("/{route}/{prefix}{ch}"))))
            .clone();
        let (tx, sem) = (tx.clone(), sem.clone());
        match kind {
            Clients::Repoll => {
                group
                    .set
                    .spawn(repoll_client(to.clone(), req, tx, sem, deadline));
            }
            Clients::Hold => {
                group.set.spawn(hold_client(
                    to.clone(),
                    req,
                    tx,
                    sem,
                    group.state.clone(),
                    deadline,
                ));
            }
            Clients::Stream(mode) => {
                group.set.spawn(streams::stream_client(
                    addr,
                    req,
                    tx,
                    sem,
                    group.state.clone(),
                    group.counts.clone(),
                    mode,
                    deadline,
                ));
            }
        }
    }
    drop(tx);
    // Wait (bounded) until every client has sent its first request or failed.
    let (mut sent, mut failed) = (0, 0);
    let limit = Instant::now() + Duration::from_secs(120);
    let mut early = Vec::new();
    while sent + failed < count {
        match tokio::time::timeout_at(limit, rx.recv()).await {
            Ok(Some(Ev::Sent)) => sent += 1,
            Ok(Some(Ev::Failed)) => failed += 1,
            Ok(Some(ev)) => early.push(ev),
            Ok(None) | Err(_) => break,
        }
    }
    // Responses that raced ahead of the last connects are kept for `collect`.
    group.early = early;
    group.rx = Some(rx);
    group.count = count;
    group.failed = failed;
    Ok(format!("connected {sent} {failed}"))
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = timeout(Duration::from_secs(30), TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timeout"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Connect to `to` (with a full TLS handshake for `tls:ADDR`), bounded by 30 s.
async fn connect_to(to: &Dest) -> io::Result<Conn> {
    timeout(
        Duration::from_secs(30),
        Conn::connect(to.addr, to.tls.as_ref()),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timeout"))?
}

/// Re-sends a hold client makes after an error response before the publish is armed.
const MAX_RETRIES: usize = 10;

async fn hold_client(
    addr: Dest,
    req: Arc<[u8]>,
    tx: mpsc::UnboundedSender<Ev>,
    sem: Arc<Semaphore>,
    st: Arc<HoldState>,
    deadline: Instant,
) {
    let permit = sem.acquire_owned().await;
    let Ok(mut s) = connect_to(&addr).await else {
        let _ = tx.send(Ev::Failed);
        return;
    };
    let mut permit = Some(permit);
    let mut rd = RespReader::new();
    let mut retries = 0;
    loop {
        if s.send(&req).await.is_err() {
            let _ = tx.send(if permit.is_some() {
                Ev::Failed
            } else {
                Ev::Error
            });
            st.done.fetch_add(1, Relaxed);
            return;
        }
        if permit.take().is_some() {
            let _ = tx.send(Ev::Sent);
        }
        st.waiting.fetch_add(1, Relaxed);
        let r = tokio::time::timeout_at(deadline, rd.read_response(&mut s)).await;
        st.waiting.fetch_sub(1, Relaxed);
        let sample = rd.last_other.take();
        // Like a real long-poll client, retry an error answer (or a dropped connection) that
        // comes before the publish; once the publish is armed every answer is final.
        let retry = !st.armed.load(Relaxed)
            && retries < MAX_RETRIES
            && match &r {
                Ok(Ok(resp)) => resp.status != 200,
                Ok(Err(_)) => true,
                Err(_) => false,
            };
        if retry {
            retries += 1;
            st.retries.fetch_add(1, Relaxed);
            if let Some(o) = sample {
                if retries == 1 {
                    let _ = tx.send(Ev::OtherSample(o));
                }
            }
            tokio::time::sleep(Duration::from_millis(50 + (retries as u64 * 37) % 50)).await;
            if !matches!(&r, Ok(Ok(resp)) if !resp.close) {
                match connect_to(&addr).await {
                    Ok(ns) => s = ns,
                    Err(_) => {
                        let _ = tx.send(Ev::Error);
                        st.done.fetch_add(1, Relaxed);
                        return;
                    }
                }
                rd = RespReader::new();
            }
            continue;
        }
        st.done.fetch_add(1, Relaxed);
        match r {
            Ok(Ok(resp)) => {
                let _ = tx.send(Ev::Resp {
                    kind: resp.kind,
                    status: resp.status,
                    t: now_ns(),
                });
                if let Some(o) = sample {
                    let _ = tx.send(Ev::OtherSample(o));
                }
            }
            _ => {
                let _ = tx.send(Ev::Error);
                return;
            }
        }
        break;
    }
    // Keep the connection open (no close traffic during a fan-out) until `close` or deadline.
    tokio::time::sleep_until(deadline).await;
}

async fn repoll_client(
    addr: Dest,
    req: Arc<[u8]>,
    tx: mpsc::UnboundedSender<Ev>,
    sem: Arc<Semaphore>,
    deadline: Instant,
) {
    let permit = sem.acquire_owned().await;
    let mut first = true;
    let mut sampled = false;
    let mut permit = Some(permit);
    while Instant::now() < deadline {
        let Ok(mut s) = connect_to(&addr).await else {
            let _ = tx.send(if first { Ev::Failed } else { Ev::Error });
            if first {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut rd = RespReader::new();
        loop {
            if s.send(&req).await.is_err() {
                let _ = tx.send(if first { Ev::Failed } else { Ev::Error });
                if first {
                    return;
                }
                break;
            }
            if first {
                first = false;
                permit.take();
                let _ = tx.send(Ev::Sent);
            }
            match tokio::time::timeout_at(deadline, rd.read_response(&mut s)).await {
                Ok(Ok(r)) => {
                    let _ = tx.send(Ev::Resp {
                        kind: r.kind,
                        status: r.status,
                        t: now_ns(),
                    });
                    if let Some(o) = rd.last_other.take() {
                        if !sampled {
                            sampled = true;
                            let _ = tx.send(Ev::OtherSample(o));
                        }
                    }
                    if r.status != 200 {
                        // Back off a little after an error answer, as a real client would.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if r.close {
                        let _ = tx.send(Ev::Reconnect);
                        break;
                    }
                }
                Ok(Err(_)) => {
                    let _ = tx.send(Ev::Error);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    break;
                }
                Err(_) => return,
            }
        }
    }
}

async fn collect(group: &mut Group, args: &[&str]) -> Result<String, String> {
    let timeout_ms: u64 = arg(args, 1)?;
    let rx = group.rx.as_mut().ok_or("no clients")?;
    let limit = Instant::now() + Duration::from_millis(timeout_ms);
    let (mut published, mut timeouts, mut other, mut errors) = (0usize, 0usize, 0usize, 0usize);
    let mut times = Vec::with_capacity(group.count);
    let mut sample: Option<String> = None;
    let mut early = std::mem::take(&mut group.early).into_iter();
    while published + timeouts + other + errors + group.failed < group.count {
        let ev = match early.next() {
            Some(ev) => Ok(Some(ev)),
            None => tokio::time::timeout_at(limit, rx.recv()).await,
        };
        match ev {
            Ok(Some(Ev::Resp { kind, status, t })) => match kind {
                BodyKind::Published if status == 200 => {
                    published += 1;
                    times.push(t);
                }
                BodyKind::Timeout => timeouts += 1,
                _ => other += 1,
            },
            Ok(Some(Ev::Error)) => errors += 1,
            Ok(Some(Ev::OtherSample(o))) => {
                sample.get_or_insert(o);
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let pending = group.count - group.failed - published - timeouts - other - errors;
    let times: Vec<String> = times.iter().map(u64::to_string).collect();
    Ok(format!(
        "collected {published} {timeouts} {other} {} {pending} {}{}",
        errors + group.failed,
        if times.is_empty() {
            "-".to_string()
        } else {
            times.join(",")
        },
        sample_suffix(sample)
    ))
}

async fn close(group: &mut Group) {
    group.set.abort_all();
    while group.set.join_next().await.is_some() {}
    group.rx = None;
    group.early.clear();
    group.count = 0;
    group.failed = 0;
}

async fn repoll_stop(group: &mut Group, args: &[&str]) -> Result<String, String> {
    let t_start: u64 = arg(args, 1)?;
    let t_end: u64 = arg(args, 2)?;
    group.set.abort_all();
    while group.set.join_next().await.is_some() {}
    let mut rx = group.rx.take().ok_or("no clients")?;
    let mut events = std::mem::take(&mut group.early);
    while let Ok(ev) = rx.try_recv() {
        events.push(ev);
    }
    let (mut in_window, mut total, mut other, mut errors, mut reconnects) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut sample: Option<String> = None;
    for ev in events {
        match ev {
            Ev::Resp {
                kind: BodyKind::Published,
                status: 200,
                t,
            } => {
                total += 1;
                if (t_start..t_end).contains(&t) {
                    in_window += 1;
                }
            }
            Ev::Resp { .. } => other += 1,
            Ev::Error | Ev::Failed => errors += 1,
            Ev::Reconnect => reconnects += 1,
            Ev::OtherSample(o) => {
                sample.get_or_insert(o);
            }
            Ev::Sent => {}
        }
    }
    close(group).await;
    Ok(format!(
        "repolled {in_window} {total} {other} {errors} {reconnects}{}",
        sample_suffix(sample)
    ))
}

/// `stream_window`: from now on, count the published chunks read in the window.
fn stream_window(group: &Group, args: &[&str]) -> Result<String, String> {
    let t_start: u64 = arg(args, 1)?;
    let t_end: u64 = arg(args, 2)?;
    // Start first: (start, 0) is an empty window, never a window from 0.
    group.counts.window_start.store(t_start, Relaxed);
    group.counts.window_end.store(t_end, Relaxed);
    Ok("window".to_string())
}

/// `stream_stop`: drop the counting streams and report their counts.
async fn stream_stop(group: &mut Group) -> Result<String, String> {
    group.set.abort_all();
    while group.set.join_next().await.is_some() {}
    let mut rx = group.rx.take().ok_or("no clients")?;
    let mut sample: Option<String> = None;
    let mut events = std::mem::take(&mut group.early);
    while let Ok(ev) = rx.try_recv() {
        events.push(ev);
    }
    let mut ended = 0u64;
    for ev in events {
        match ev {
            Ev::Error | Ev::Resp { .. } => ended += 1,
            Ev::OtherSample(o) => {
                sample.get_or_insert(o);
            }
            _ => {}
        }
    }
    let c = &group.counts;
    let reply = format!(
        "streamed {} {} {} {ended} {}{}",
        c.in_window.load(Relaxed),
        c.total.load(Relaxed),
        c.other.load(Relaxed),
        group.failed,
        sample_suffix(sample)
    );
    close(group).await;
    Ok(reply)
}

/// ` | description` of an unexpected response, appended to a reply line.
fn sample_suffix(sample: Option<String>) -> String {
    sample
        .map(|s| format!(" | {}", s.replace('\n', " ")))
        .unwrap_or_default()
}

#[derive(Default, Clone, Copy)]
struct LoopCounts {
    ok: u64,
    non200: u64,
    errors: u64,
    reconnects: u64,
}

impl std::ops::AddAssign for LoopCounts {
    fn add_assign(&mut self, o: Self) {
        self.ok += o.ok;
        self.non200 += o.non200;
        self.errors += o.errors;
        self.reconnects += o.reconnects;
    }
}

/// One keep-alive request loop until `deadline`, cycling through `reqs`; an answer counts as ok
/// if it is 200 (or any 2xx with `any_2xx`).
async fn request_loop(
    addr: Dest,
    reqs: Vec<Vec<u8>>,
    deadline: Instant,
    any_2xx: bool,
) -> LoopCounts {
    let mut c = LoopCounts::default();
    let mut i = 0usize;
    'conn: while Instant::now() < deadline {
        let Ok(mut s) = connect_to(&addr).await else {
            c.errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut rd = RespReader::new();
        while Instant::now() < deadline {
            let req = &reqs[i % reqs.len()];
            i += 1;
            if s.send(req).await.is_err() {
                c.errors += 1;
                continue 'conn;
            }
            match tokio::time::timeout_at(deadline, rd.read_response(&mut s)).await {
                Ok(Ok(r)) => {
                    if r.status == 200 || (any_2xx && (200..300).contains(&r.status)) {
                        c.ok += 1;
                    } else {
                        c.non200 += 1;
                    }
                    if r.close {
                        c.reconnects += 1;
                        continue 'conn;
                    }
                }
                Ok(Err(_)) => {
                    c.errors += 1;
                    continue 'conn;
                }
                Err(_) => break 'conn, // window over mid-request: not counted
            }
        }
    }
    c
}

async fn run_loops(
    tasks: Vec<(Dest, Vec<Vec<u8>>)>,
    duration_ms: u64,
    any_2xx: bool,
) -> LoopCounts {
    let deadline = Instant::now() + Duration::from_millis(duration_ms);
    let mut set = JoinSet::new();
    for (addr, reqs) in tasks {
        set.spawn(request_loop(addr, reqs, deadline, any_2xx));
    }
    let mut total = LoopCounts::default();
    while let Some(r) = set.join_next().await {
        if let Ok(c) = r {
            total += c;
        }
    }
    total
}

async fn load(args: &[&str], tls: &Option<TlsConnector>) -> Result<String, String> {
    let to = dest(args, 1, tls)?;
    let conns: usize = arg(args, 2)?;
    let duration_ms: u64 = arg(args, 3)?;
    let path: String = arg(args, 4)?;
    let req = get_request(&to.addr.to_string(), &path);
    let tasks = (0..conns)
        .map(|_| (to.clone(), vec![req.clone()]))
        .collect();
    let c = run_loops(tasks, duration_ms, false).await;
    Ok(format!(
        "loaded {} {} {} {}",
        c.ok, c.non200, c.errors, c.reconnects
    ))
}

async fn publish_loop(id: usize, args: &[&str]) -> Result<String, String> {
    let addr: SocketAddr = arg(args, 1)?;
    let conns: usize = arg(args, 2)?;
    let duration_ms: u64 = arg(args, 3)?;
    let items: usize = arg::<usize>(args, 4)?.max(1);
    let nchan = match args.get(5).copied() {
        None => false,
        Some("nchan") if items == 1 => true,
        Some("nchan") => return Err("Nchan's publisher takes one item per request".into()),
        Some(other) => return Err(format!("unknown publish mode {other}")),
    };
    let host = addr.to_string();
    // Each connection cycles through 16 pre-encoded requests; channels are distinct within a
    // request and nobody is subscribed to any of them.
    let tasks = (0..conns)
        .map(|c| {
            let reqs = (0..16)
                .map(|j| {
                    let chans: Vec<String> = (0..items)
                        .map(|k| format!("nosub-{id}-{c}-{j}-{k}"))
                        .collect();
                    if nchan {
                        crate::target::nginx::publish_request(&host, &chans[0])
                    } else {
                        post_request(&host, "/publish/", &publish_body(&chans))
                    }
                })
                .collect();
            (Dest { addr, tls: None }, reqs)
        })
        .collect();
    // Nchan answers 202 (no subscriber) or 201.
    let c = run_loops(tasks, duration_ms, nchan).await;
    Ok(format!(
        "published {} {} {} {} {}",
        c.ok,
        c.ok * items as u64,
        c.non200,
        c.errors,
        c.reconnects
    ))
}

/// `handshake`: per connection, new connections back to back until the window ends, each with
/// one `GET PATH` (`Connection: close`) answered before it is dropped; answers after the window
/// are not counted.
async fn handshakes(args: &[&str], tls: &Option<TlsConnector>) -> Result<String, String> {
    let to = dest(args, 1, tls)?;
    let conns: usize = arg(args, 2)?;
    let duration_ms: u64 = arg(args, 3)?;
    let path: String = arg(args, 4)?;
    let host = to.addr.to_string();
    let req: Arc<[u8]> = Arc::from(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").into_bytes(),
    );
    let deadline = Instant::now() + Duration::from_millis(duration_ms);
    let mut set = JoinSet::new();
    for _ in 0..conns {
        let (to, req) = (to.clone(), req.clone());
        set.spawn(async move {
            let mut c = LoopCounts::default();
            while Instant::now() < deadline {
                let one = async {
                    let mut s = connect_to(&to).await?;
                    s.send(&req).await?;
                    RespReader::new().read_response(&mut s).await
                };
                match tokio::time::timeout_at(deadline, one).await {
                    Ok(Ok(r)) if r.status == 200 => c.ok += 1,
                    Ok(Ok(_)) => c.non200 += 1,
                    Ok(Err(_)) => {
                        c.errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(_) => break, // window over mid-connection: not counted
                }
            }
            c
        });
    }
    let mut total = LoopCounts::default();
    while let Some(r) = set.join_next().await {
        if let Ok(c) = r {
            total += c;
        }
    }
    Ok(format!(
        "handshaken {} {} {}",
        total.ok, total.non200, total.errors
    ))
}
