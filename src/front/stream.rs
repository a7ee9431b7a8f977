//! Writing a stream response: the head, then each piece of the body as soon as it comes (pieces arrive framed, the
//! same bytes for every client of a channel), while watching for the client leaving. What the client has not taken
//! yet is bounded; a client that falls further behind, or takes nothing for the write timeout, is disconnected.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::conn::{write_timed, write_timed_out};
use super::io::Io;
use crate::body::Body;
use crate::h1::{encode, socket, Framing};
use bytes::{Buf, BytesMut};
use http::{Response, Version};
use http_body_util::BodyExt;

/// Marks a response whose body is a live stream. Its data frames are written exactly as given: already framed for
/// `framing` (chunks, or raw bytes for a close-delimited HTTP/1.0 response).
#[derive(Clone)]
pub(crate) struct Streaming {
    /// `Chunked` or `Close`.
    pub framing: Framing,
    /// Most bytes the client may leave untaken.
    pub max_queued: usize,
    /// Called when the client is disconnected for falling behind.
    pub slow: Arc<dyn Fn() + Send + Sync>,
    /// Set by the writer while it has nothing unwritten (read by the body, polled in the same task, before it lets
    /// publishes write to the socket themselves).
    pub caught_up: Arc<AtomicBool>,
}

/// Why a stream's body gave up: the error its body yields. The response is cut off (no last chunk), so that the
/// client sees a broken stream, reconnects, and catches up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum StreamAbort {
    /// More was published than the client took (`hold.max_stream_queue`).
    #[error("more published than the client took")]
    TooSlow,
    /// Items may have been missed (a recovery) and the stream has no link to catch up from.
    #[error("items may have been missed, and the stream has no rel=next link")]
    Missed,
}

/// How a stream ended, for the connection's log line.
pub(crate) enum Ended {
    /// The body ended (a close item, shutdown, a link answer without a hold): the response was ended properly.
    Finished,
    /// The client closed or reset the connection.
    ClientGone,
    /// The client fell more than `max_queued` behind.
    TooSlow,
    /// The stream's body gave up for another reason (logged).
    Aborted,
}

impl Ended {
    /// For the log line.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Ended::Finished => "finished",
            Ended::ClientGone => "client_gone",
            Ended::TooSlow => "too_slow",
            Ended::Aborted => "aborted",
        }
    }
}

/// Writes a stream response to the end. `Err(TimedOut)`: the client took nothing for `write_timeout`.
pub(super) async fn write(
    stream: &mut Io,
    resp: Response<Body>,
    marker: Streaming,
    version: Version,
    write_timeout: Duration,
    peer: SocketAddr,
) -> io::Result<Ended> {
    let chunked = marker.framing == Framing::Chunked;
    // Bytes the client has not taken yet: the head first. Built in a block so that neither the head's parts nor
    // its buffer stay in this future for the life of the stream.
    let (mut pending, mut body) = {
        let (parts, body) = resp.into_parts();
        let reason = parts
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| r.as_bytes());
        let mut head = Vec::with_capacity(256);
        encode::response_head(
            &mut head,
            parts.status,
            reason,
            &parts.headers,
            marker.framing,
            false,
            version,
        );
        (BytesMut::from(&head[..]), body)
    };
    let mut deadline = tokio::time::Instant::now() + write_timeout;
    loop {
        // Write what can be written now, without waiting: a TLS connection's ciphertext first.
        match stream.flush_now() {
            Ok(()) => {}
            Err(e) if is_gone(&e) => return Ok(Ended::ClientGone),
            Err(e) => return Err(e),
        }
        while !pending.is_empty() {
            match stream.try_write(&pending) {
                Ok(n) => {
                    pending.advance(n);
                    deadline = tokio::time::Instant::now() + write_timeout;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if is_gone(&e) => return Ok(Ended::ClientGone),
                Err(e) => return Err(e),
            }
        }
        if pending.is_empty() && pending.capacity() > 0 {
            pending = BytesMut::new(); // caught up: an idle stream keeps no buffer
        }
        let backlog = !pending.is_empty() || stream.unsent() > 0;
        marker.caught_up.store(!backlog, Ordering::Relaxed);
        if pending.len() > marker.max_queued {
            (marker.slow)();
            tracing::info!(client.addr = %peer, queued = pending.len(), limit = marker.max_queued, "stream client dropped: too far behind");
            return Ok(Ended::TooSlow);
        }
        tokio::select! {
            biased;
            frame = body.frame() => match frame {
                None => {
                    if chunked {
                        pending.extend_from_slice(encode::LAST_CHUNK);
                    }
                    // The connection shuts the socket down after this last response.
                    write_timed(stream, &pending, write_timeout).await?;
                    return Ok(Ended::Finished);
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if !backlog {
                        // The client's time to take this starts now: it may have been idle for longer than the
                        // write timeout (publishes may have written to its socket meanwhile).
                        deadline = tokio::time::Instant::now() + write_timeout;
                        // The common case: written straight from the shared bytes, copied only if the socket
                        // takes part of them.
                        match stream.try_write(&data) {
                            Ok(n) => {
                                pending.extend_from_slice(&data[n..]);
                                deadline = tokio::time::Instant::now() + write_timeout;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => pending.extend_from_slice(&data),
                            Err(e) if is_gone(&e) => return Ok(Ended::ClientGone),
                            Err(e) => return Err(e),
                        }
                    } else {
                        pending.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    if e.downcast_ref::<StreamAbort>() == Some(&StreamAbort::TooSlow) {
                        (marker.slow)();
                        tracing::info!(client.addr = %peer, limit = marker.max_queued, "stream client dropped: too far behind");
                        return Ok(Ended::TooSlow);
                    }
                    tracing::info!(client.addr = %peer, error = %e, "stream cut off");
                    return Ok(Ended::Aborted);
                }
            },
            r = socket::write_ready(stream.tcp()), if backlog => r?,
            r = socket::read_ready(stream.tcp()) => {
                r?;
                if client_left(stream) {
                    return Ok(Ended::ClientGone);
                }
            }
            // In an async block: the timer is made only when the branch is enabled (a backlog), not on every turn.
            _ = async { tokio::time::sleep_until(deadline).await }, if backlog => {
                return Err(write_timed_out());
            }
        }
    }
}

/// Reads what the client sent and drops it: the stream is this connection's last response, so nothing more is read
/// as a request; only the connection's end (EOF or a reset) matters. A plain function, so that its buffer is on
/// the stack only while it runs, never in the stream's future.
fn client_left(stream: &mut Io) -> bool {
    let mut scratch = BytesMut::new();
    match stream.read_some(&mut scratch) {
        Ok(Some(0)) | Err(_) => true,
        Ok(_) => false,
    }
}

fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}
