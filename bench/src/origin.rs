//! The origin server (`grip-bench origin`): a small keep-alive HTTP/1.1 server with GRIP hold
//! responses on `/hold/<channel>`, stream holds on `/stream/<channel>`, streams after an id on
//! `/catchup/<after>/<channel>` (answering a `Grip-Last` re-fetch with what was missed), `hello`
//! on `/plain` and request counters on `/stats`.

use crate::http::{PUBLISHED_BODY, STREAM_START};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Counters {
    hold: AtomicU64,
    stream: AtomicU64,
    plain: AtomicU64,
    /// `/catchup/` requests, and those of them that were `Grip-Last` re-fetches.
    catchup: AtomicU64,
    catchup_last: AtomicU64,
    /// `/etag/` requests, and those of them answered `304`.
    etag: AtomicU64,
    etag_304: AtomicU64,
    /// The version of the `/etag/` value: its ETag is `"<version>"`.
    etag_version: AtomicU64,
    other: AtomicU64,
}

/// The first version of the `/etag/` value (each `POST /etag-change` adds one).
pub(crate) const ETAG_FIRST_VERSION: u64 = 1;

/// What `respond` needs of a request besides its path.
#[derive(Default)]
struct Asked<'a> {
    /// It carries `Grip-Last` (a stream re-fetch).
    grip_last: bool,
    /// Its `If-None-Match`, if any.
    if_none_match: Option<&'a [u8]>,
}

/// Items a `/catchup/<after>/<channel>` client missed (the catch-up figure publishes ids 1 to
/// `after + CATCHUP_BEHIND` before the clients come back after `after`).
pub(crate) const CATCHUP_BEHIND: u64 = 10;

/// Run the origin on `127.0.0.1:port` until stdin closes (the orchestrator went away).
pub(crate) fn run(port: u16) -> io::Result<()> {
    crate::sys::raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let counters = Arc::new(Counters::default());
        counters
            .etag_version
            .store(ETAG_FIRST_VERSION, Ordering::Relaxed);
        // Exit when the parent closes our stdin.
        tokio::spawn(async {
            let mut stdin = tokio::io::stdin();
            let mut b = [0u8; 64];
            while matches!(stdin.read(&mut b).await, Ok(n) if n > 0) {}
            std::process::exit(0);
        });
        println!("ready");
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            };
            let _ = sock.set_nodelay(true);
            let c = counters.clone();
            tokio::spawn(async move {
                let _ = serve_conn(sock, c).await;
            });
        }
    })
}

async fn serve_conn(mut sock: TcpStream, counters: Arc<Counters>) -> io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    let mut out = Vec::with_capacity(512);
    loop {
        // Answer every complete request in the buffer (pipelining-safe), then write once.
        let mut close = false;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            let n = match req.parse(&buf[..len]) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => break,
                Err(_) => {
                    sock.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await?;
                    return Ok(());
                }
            };
            let mut body_len = 0usize;
            let mut conn_close = req.version == Some(0);
            let mut asked = Asked::default();
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("grip-last") {
                    asked.grip_last = true;
                } else if h.name.eq_ignore_ascii_case("if-none-match") {
                    asked.if_none_match = Some(h.value);
                } else if h.name.eq_ignore_ascii_case("content-length") {
                    body_len = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                } else if h.name.eq_ignore_ascii_case("connection") {
                    let v = h.value.to_ascii_lowercase();
                    if v.windows(5).any(|w| w == b"close") {
                        conn_close = true;
                    } else if v.windows(10).any(|w| w == b"keep-alive") {
                        conn_close = false;
                    }
                }
            }
            if len < n + body_len {
                break; // wait for the rest of the body
            }
            let path = req.path.unwrap_or("/");
            respond(path, &asked, &counters, &mut out);
            buf.copy_within(n + body_len..len, 0);
            len -= n + body_len;
            if conn_close {
                close = true;
                break;
            }
        }
        if !out.is_empty() {
            sock.write_all(&out).await?;
            out.clear();
        }
        if close {
            return Ok(());
        }
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = sock.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
}

/// Whether an `If-None-Match` value names `etag` (or is `*`).
fn etag_matches(if_none_match: &[u8], etag: &[u8]) -> bool {
    if_none_match
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|t| t == etag || t == b"*")
}

/// `GET /etag/<name>`: the current value with its `ETag`, or `304` (with the `ETag`) when the
/// request's `If-None-Match` names it. No GRIP instructions: a plain REST resource.
fn etag_value(asked: &Asked<'_>, counters: &Counters, out: &mut Vec<u8>) {
    use std::io::Write;
    counters.etag.fetch_add(1, Ordering::Relaxed);
    let version = counters.etag_version.load(Ordering::Relaxed);
    let etag = format!("\"{version}\"");
    if asked
        .if_none_match
        .is_some_and(|v| etag_matches(v, etag.as_bytes()))
    {
        counters.etag_304.fetch_add(1, Ordering::Relaxed);
        let _ = write!(
            out,
            "HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nCache-Control: no-cache\r\n\r\n"
        );
    } else {
        let body = format!("value {version}\n");
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nETag: {etag}\r\nCache-Control: no-cache\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}

fn respond(path: &str, asked: &Asked<'_>, counters: &Counters, out: &mut Vec<u8>) {
    use std::io::Write;
    let grip_last = asked.grip_last;
    if path.starts_with("/etag/") {
        etag_value(asked, counters, out);
    } else if path == "/etag-change" {
        // The bench's control endpoint (any method): a new version, answered with its number.
        let version = counters.etag_version.fetch_add(1, Ordering::Relaxed) + 1;
        let body = version.to_string();
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    } else if let Some((after, channel)) = path
        .strip_prefix("/catchup/")
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(after, channel)| Some((after.parse::<u64>().ok()?, channel)))
    {
        // A stream after `after`, with the link a stream with a prev-id needs. Asked again with
        // Grip-Last (the proxy found the client behind and has no history of it), the origin
        // answers with the items missed as the stream's first piece, and holds after the last.
        counters.catchup.fetch_add(1, Ordering::Relaxed);
        let (body, prev) = if grip_last {
            counters.catchup_last.fetch_add(1, Ordering::Relaxed);
            (
                PUBLISHED_BODY.repeat(CATCHUP_BEHIND as usize),
                after + CATCHUP_BEHIND,
            )
        } else {
            (STREAM_START.to_vec(), after)
        };
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nGrip-Hold: stream\r\nGrip-Channel: {channel}; prev-id={prev}\r\nGrip-Link: </catchup/{prev}/{channel}>; rel=next\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        out.extend_from_slice(&body);
    } else if let Some(channel) = path.strip_prefix("/hold/") {
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nGrip-Hold: response\r\nGrip-Channel: {channel}\r\nGrip-Timeout: 120\r\nContent-Length: 8\r\n\r\ntimeout\n"
        );
        counters.hold.fetch_add(1, Ordering::Relaxed);
    } else if let Some(channel) = path.strip_prefix("/stream/") {
        // The body is the stream's first piece; no Grip-Keep-Alive, so every later chunk is a
        // published item.
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nGrip-Hold: stream\r\nGrip-Channel: {channel}\r\nContent-Length: {}\r\n\r\n",
            STREAM_START.len()
        );
        out.extend_from_slice(STREAM_START);
        counters.stream.fetch_add(1, Ordering::Relaxed);
    } else if path == "/plain" {
        out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n",
        );
        counters.plain.fetch_add(1, Ordering::Relaxed);
    } else if path == "/stats" {
        let body = format!(
            "{{\"hold\":{},\"stream\":{},\"plain\":{},\"catchup\":{},\"catchup_last\":{},\"etag\":{},\"etag_304\":{},\"etag_version\":{},\"other\":{}}}",
            counters.hold.load(Ordering::Relaxed),
            counters.stream.load(Ordering::Relaxed),
            counters.plain.load(Ordering::Relaxed),
            counters.catchup.load(Ordering::Relaxed),
            counters.catchup_last.load(Ordering::Relaxed),
            counters.etag.load(Ordering::Relaxed),
            counters.etag_304.load(Ordering::Relaxed),
            counters.etag_version.load(Ordering::Relaxed),
            counters.other.load(Ordering::Relaxed)
        );
        let _ = write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    } else {
        counters.other.fetch_add(1, Ordering::Relaxed);
        out.extend_from_slice(b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n");
    }
}
