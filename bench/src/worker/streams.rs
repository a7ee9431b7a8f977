//! Stream clients of a worker: each opens a stream through the proxy (`GET /stream/<channel>`),
//! reads its head and first piece (it is then *open*), then reads chunks as they come. A
//! first-item client reports the time it read its first published chunk (for a fan-out); a
//! counting client counts every published chunk it reads within a window (sustained deliveries).

use super::{connect, Ev, HoldState};
use crate::http::{BodyKind, PUBLISHED_BODY, STREAM_START};
use crate::sys::now_ns;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

/// What a stream client does with the published chunks it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Report the first published chunk as the client's answer (`collect`), then idle.
    FirstItem,
    /// Count every published chunk (`stream_stop`).
    Count,
    /// Report the time this many published items had been read (`collect`), then idle.
    CatchUp(u64),
}

/// Chunk counters shared by the counting clients of a worker.
#[derive(Default)]
pub(super) struct Counts {
    /// Chunks read at a CLOCK_MONOTONIC time in [window_start, window_end) are counted in
    /// `in_window` (nothing is until `stream_window` sets it).
    pub window_start: AtomicU64,
    pub window_end: AtomicU64,
    pub in_window: AtomicU64,
    /// Published chunks read in all.
    pub total: AtomicU64,
    /// Chunks that were neither the first piece nor the published content.
    pub other: AtomicU64,
}

/// One piece of a stream body.
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Start,
    Published,
    /// Several published bodies in one piece (an origin's catch-up answer).
    Many(u64),
    Other(Vec<u8>),
    /// The last chunk: the proxy ended the stream.
    End,
}

/// Reads a stream response from one connection with a small buffer: the head, then one chunk
/// at a time.
struct ChunkReader {
    buf: Vec<u8>,
    len: usize,
}

impl ChunkReader {
    fn new() -> Self {
        Self {
            buf: vec![0; 512],
            len: 0,
        }
    }

    async fn fill(&mut self, s: &mut TcpStream) -> io::Result<usize> {
        if self.len == self.buf.len() {
            if self.buf.len() >= 1 << 20 {
                return Err(bad("chunk too large"));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = s.read(&mut self.buf[self.len..]).await?;
        self.len += n;
        Ok(n)
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// Reads the response head: (status, chunked).
    async fn head(&mut self, s: &mut TcpStream) -> io::Result<(u16, bool)> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf[..self.len]) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    let chunked = resp.headers.iter().any(|h| {
                        h.name.eq_ignore_ascii_case("transfer-encoding")
                            && h.value.eq_ignore_ascii_case(b"chunked")
                    });
                    self.consume(n);
                    return Ok((status, chunked));
                }
                Ok(httparse::Status::Partial) => {
                    if self.fill(s).await? == 0 {
                        return Err(bad("connection closed before the head"));
                    }
                }
                Err(e) => return Err(bad(&format!("bad response head: {e}"))),
            }
        }
    }

    /// The next complete piece in the buffer, consumed; `None` if more bytes are needed.
    fn next_piece(&mut self) -> io::Result<Option<Piece>> {
        let Some(eol) = self.buf[..self.len].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&self.buf[..eol]).unwrap_or("");
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
        if size == 0 {
            return Ok(Some(Piece::End)); // trailers are not read: the stream is over
        }
        let end = eol + 2 + size;
        if self.len < end + 2 {
            return Ok(None);
        }
        let data = &self.buf[eol + 2..end];
        let repeated = data.len() / PUBLISHED_BODY.len().max(1);
        let piece = if data == PUBLISHED_BODY {
            Piece::Published
        } else if repeated > 1
            && data
                .chunks(PUBLISHED_BODY.len())
                .all(|c| c == PUBLISHED_BODY)
        {
            Piece::Many(repeated as u64)
        } else if data == STREAM_START {
            Piece::Start
        } else {
            Piece::Other(data[..data.len().min(60)].to_vec())
        };
        self.consume(end + 2);
        Ok(Some(piece))
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// One stream client, until its stream ends, `close`, or `deadline`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn stream_client(
    addr: SocketAddr,
    req: Arc<[u8]>,
    tx: mpsc::UnboundedSender<Ev>,
    sem: Arc<Semaphore>,
    st: Arc<HoldState>,
    counts: Arc<Counts>,
    mode: Mode,
    deadline: Instant,
) {
    let permit = sem.acquire_owned().await;
    let Ok(mut s) = connect(addr).await else {
        let _ = tx.send(Ev::Failed);
        return;
    };
    if s.write_all(&req).await.is_err() {
        let _ = tx.send(Ev::Failed);
        return;
    }
    let _ = tx.send(Ev::Sent);
    drop(permit);
    let mut opened = false;
    let r = tokio::time::timeout_at(
        deadline,
        read_stream(&mut s, &tx, &st, &counts, mode, &mut opened),
    )
    .await;
    if opened {
        st.waiting.fetch_sub(1, Relaxed);
    }
    match r {
        Err(_) => return, // deadline
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => {
            st.done.fetch_add(1, Relaxed);
            let _ = tx.send(Ev::Error); // ended before its item, or while counted
            return;
        }
        Ok(Err(e)) => {
            st.done.fetch_add(1, Relaxed);
            let _ = tx.send(Ev::OtherSample(format!("stream read: {e}")));
            let _ = tx.send(Ev::Error);
            return;
        }
    }
    st.done.fetch_add(1, Relaxed);
    // A first-item client keeps its connection (no close traffic during a fan-out).
    tokio::time::sleep_until(deadline).await;
}

/// Reads the stream; `Ok(true)`: a first-item client has its item; `Ok(false)`: the stream
/// ended. A response that is not a stream is the client's (other) answer: `Ok(true)`.
async fn read_stream(
    s: &mut TcpStream,
    tx: &mpsc::UnboundedSender<Ev>,
    st: &HoldState,
    counts: &Counts,
    mode: Mode,
    opened: &mut bool,
) -> io::Result<bool> {
    let mut rd = ChunkReader::new();
    let (status, chunked) = rd.head(s).await?;
    if status != 200 || !chunked {
        let _ = tx.send(Ev::Resp {
            kind: BodyKind::Other,
            status,
            t: now_ns(),
        });
        let _ = tx.send(Ev::OtherSample(format!(
            "status {status}, chunked {chunked}: not a stream"
        )));
        return Ok(true);
    }
    let mut sampled = false;
    // Published items read so far (a catch-up client).
    let mut caught: u64 = 0;
    loop {
        let t = now_ns();
        let in_window =
            (counts.window_start.load(Relaxed)..counts.window_end.load(Relaxed)).contains(&t);
        let mut published = 0;
        while let Some(piece) = rd.next_piece()? {
            match piece {
                Piece::Start if !*opened => {
                    *opened = true;
                    st.waiting.fetch_add(1, Relaxed);
                }
                Piece::Published | Piece::Many(_) if matches!(mode, Mode::CatchUp(_)) => {
                    caught += match piece {
                        Piece::Many(n) => n,
                        _ => 1,
                    };
                    if matches!(mode, Mode::CatchUp(want) if caught >= want) {
                        let _ = tx.send(Ev::Resp {
                            kind: BodyKind::Published,
                            status,
                            t,
                        });
                        return Ok(true);
                    }
                }
                Piece::Published if mode == Mode::FirstItem => {
                    let _ = tx.send(Ev::Resp {
                        kind: BodyKind::Published,
                        status,
                        t,
                    });
                    return Ok(true);
                }
                Piece::Published => published += 1,
                Piece::End => return Ok(false),
                Piece::Start | Piece::Many(_) | Piece::Other(_) => {
                    counts.other.fetch_add(1, Relaxed);
                    if !sampled {
                        sampled = true;
                        let data = match &piece {
                            Piece::Other(d) => String::from_utf8_lossy(d).into_owned(),
                            _ => "a second first piece".to_string(),
                        };
                        let _ = tx.send(Ev::OtherSample(format!("stream chunk {data:?}")));
                    }
                }
            }
        }
        if published > 0 {
            counts.total.fetch_add(published, Relaxed);
            if in_window {
                counts.in_window.fetch_add(published, Relaxed);
            }
        }
        if rd.fill(s).await? == 0 {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> ChunkReader {
        let mut r = ChunkReader::new();
        r.buf = bytes.to_vec();
        r.len = bytes.len();
        r
    }

    #[test]
    fn pieces_of_a_stream_body() {
        let mut r = reader(b"6\r\nstart\n\r\n6\r\nhello\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n");
        assert_eq!(r.next_piece().unwrap(), Some(Piece::Start));
        assert_eq!(r.next_piece().unwrap(), Some(Piece::Published));
        assert_eq!(r.next_piece().unwrap(), Some(Piece::Other(b"abc".to_vec())));
        assert_eq!(r.next_piece().unwrap(), Some(Piece::End));
        let mut r = reader(b"c\r\nhello\nhello\n\r\n7\r\nhello\nh\r\n");
        assert_eq!(r.next_piece().unwrap(), Some(Piece::Many(2)));
        assert!(matches!(r.next_piece().unwrap(), Some(Piece::Other(_))));
    }

    #[test]
    fn partial_chunk_waits_for_more() {
        let mut r = reader(b"6\r\nhel");
        assert_eq!(r.next_piece().unwrap(), None);
        let mut r = reader(b"6\r\nhello\n");
        assert_eq!(r.next_piece().unwrap(), None); // its CRLF is not there yet
        let mut r = reader(b"6");
        assert_eq!(r.next_piece().unwrap(), None);
        assert!(reader(b"zz\r\n").next_piece().is_err());
    }
}
