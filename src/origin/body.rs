//! The body of an origin's response, read from the origin connection as the caller polls it. Read to its end,
//! the connection goes back to the pool; dropped before, the connection is closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Sleep;

use super::pool::{Conn, Pool, READ_CHUNK};
use crate::body::BoxError;
use crate::h1::{Decoded, Decoder, Framing};

/// The connection a body is read from, and how it is delimited.
pub(super) struct Reading {
    conn: Conn,
    decoder: Decoder,
    reusable: bool,
    /// Longest wait for the origin's next bytes.
    read_timeout: Duration,
    /// The timer of that wait, made the first time the body has to wait at all (a body already buffered whole,
    /// the common case, never needs one) and pushed back after each read.
    idle: Option<Pin<Box<Sleep>>>,
}

impl Reading {
    pub(super) fn new(
        conn: Conn,
        framing: Framing,
        reusable: bool,
        read_timeout: Duration,
    ) -> Self {
        Reading {
            conn,
            decoder: Decoder::new(framing),
            reusable,
            read_timeout,
            idle: None,
        }
    }

    fn is_done(&self) -> bool {
        self.decoder.is_done() || self.decoder.remaining() == Some(0)
    }
}

/// A response body streamed from an origin connection.
pub(crate) struct OriginBody {
    reading: Option<Box<Reading>>,
    pool: Arc<Pool>,
    key: Box<str>,
}

impl OriginBody {
    pub(super) fn new(reading: Reading, pool: Arc<Pool>, key: &str) -> Self {
        let mut body = OriginBody {
            reading: Some(Box::new(reading)),
            pool,
            key: key.into(),
        };
        if body.reading.as_ref().is_some_and(|r| r.is_done()) {
            // Nothing to read (HEAD, 204, 304, `Content-Length: 0`): the connection is free now.
            body.finish();
        }
        body
    }

    /// The body has been read to its end: pool the connection if it can carry another request.
    fn finish(&mut self) {
        if let Some(reading) = self.reading.take() {
            if reading.reusable && reading.conn.buf.is_empty() {
                self.pool.put(&self.key, reading.conn);
            }
        }
    }
}

impl http_body::Body for OriginBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(reading) = this.reading.as_mut() else {
                return Poll::Ready(None);
            };
            let decoder = &mut reading.decoder;
            match decoder.decode(&mut reading.conn.buf) {
                Ok(Decoded::Data(data)) => {
                    if decoder.remaining() == Some(0) {
                        // The last bytes of a sized body: free the connection now rather than on the next
                        // poll, which a consumer that knows the length may never make.
                        let _ = decoder.decode(&mut reading.conn.buf);
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    this.reading = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
            reading.conn.buf.reserve(READ_CHUNK);
            let read = match reading.conn.stream.poll_read_buf(&mut reading.conn.buf, cx) {
                Poll::Ready(read) => read,
                Poll::Pending => {
                    let timeout = reading.read_timeout;
                    let idle = reading
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    ready!(idle.as_mut().poll(cx));
                    this.reading = None;
                    return Poll::Ready(Some(Err(format!(
                        "origin sent no body bytes for {timeout:?} (origin.body_read_timeout_secs)"
                    )
                    .into())));
                }
            };
            match read {
                Ok(0) => {
                    let close_delimited = reading.decoder.is_close_delimited();
                    this.reading = None;
                    return Poll::Ready(if close_delimited {
                        None
                    } else {
                        Some(Err(
                            "origin closed the connection in the middle of the body".into(),
                        ))
                    });
                }
                Ok(_) => {
                    if let Some(idle) = reading.idle.as_mut() {
                        idle.as_mut()
                            .reset(tokio::time::Instant::now() + reading.read_timeout);
                    }
                }
                Err(e) => {
                    this.reading = None;
                    return Poll::Ready(Some(Err(Box::new(e))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reading.as_ref().is_none_or(|r| r.is_done())
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading.as_deref().map(|r| r.decoder.remaining()) {
            None => SizeHint::with_exact(0),
            Some(Some(n)) => SizeHint::with_exact(n),
            // Chunked, or until the connection closes.
            Some(None) => SizeHint::default(),
        }
    }
}
