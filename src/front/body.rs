//! `RequestBody`: a client's request body as an `http_body::Body`, fed by the connection task as it decodes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

use crate::body::BoxError;

/// Body chunks in flight between the connection and the proxy: small, so a slow origin slows the client down.
pub(crate) const BODY_CHANNEL_CAPACITY: usize = 2;

/// The receiving end of a request body. Ends when the sender is dropped after the last chunk.
#[derive(Debug)]
pub struct RequestBody {
    rx: Option<mpsc::Receiver<Result<Bytes, BoxError>>>,
    /// Exact length when the request declared one.
    length: Option<u64>,
}

impl RequestBody {
    /// A body with nothing in it.
    pub(crate) fn empty() -> Self {
        RequestBody {
            rx: None,
            length: Some(0),
        }
    }

    /// A body fed through a channel; `length` when `Content-Length` gave it.
    pub(crate) fn channel(length: Option<u64>) -> (mpsc::Sender<Result<Bytes, BoxError>>, Self) {
        let (tx, rx) = mpsc::channel(BODY_CHANNEL_CAPACITY);
        (
            tx,
            RequestBody {
                rx: Some(rx),
                length,
            },
        )
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                if let Some(n) = self.length.as_mut() {
                    *n = n.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => {
                self.rx = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none() || self.length == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
