//! The byte stream of an origin connection: plain TCP, read and written readiness-based on the socket itself, or
//! TLS over it (rustls through tokio-rustls's `AsyncRead`/`AsyncWrite`).

use std::future::Future;
use std::io;
use std::pin::pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::h1::socket;

/// A connection to an origin.
pub(super) enum Transport {
    /// `http`.
    Plain(TcpStream),
    /// `https` (boxed: a TLS session is large, and the plain connections should not carry its size).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    /// Writes all of `bytes` (for TLS: and sends them, nothing stays in the session's buffer).
    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => stream.write_all(bytes).await,
            Transport::Tls(stream) => tls_write_all(stream, bytes).await,
        }
    }

    /// [`socket::put_body_piece`] on this connection.
    pub(super) async fn put_body_piece(
        &mut self,
        out: &mut Vec<u8>,
        data: &[u8],
        chunked: bool,
        more: bool,
    ) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => {
                socket::put_body_piece(stream, out, data, chunked, more).await
            }
            Transport::Tls(stream) => {
                socket::put_body_piece_to(&mut **stream, out, data, chunked, more).await
            }
        }
    }

    /// Reads into `buf`'s spare capacity (reserve before calling) once there is something; `Ok(0)` at the end.
    pub(super) fn poll_read_buf(
        &mut self,
        buf: &mut BytesMut,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        match self {
            Transport::Plain(stream) => socket::poll_read_buf(stream, buf, cx),
            // A read future dropped while pending has consumed nothing (bytes stay in the session).
            Transport::Tls(stream) => {
                Poll::Ready(tls_end(ready!(pin!(stream.read_buf(buf)).poll(cx))))
            }
        }
    }

    /// Waits for bytes, then reads them into `buf` as [`Transport::poll_read_buf`].
    pub(super) async fn read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Plain(stream) => socket::read_buf(stream, buf).await,
            Transport::Tls(stream) => tls_end(stream.read_buf(buf).await),
        }
    }

    /// Waits until the origin sends something, and reads it into `buf` (with `reserve` bytes of room made for it:
    /// on the plain path only once there is something). `Ok(None)`: the wake-up found nothing after all.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is consumed unless it is put in `buf`.
    pub(super) async fn read_some(
        &mut self,
        buf: &mut BytesMut,
        reserve: usize,
    ) -> io::Result<Option<usize>> {
        match self {
            Transport::Plain(stream) => {
                socket::read_ready(stream).await?;
                buf.reserve(reserve);
                match socket::try_read_buf(stream, buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    other => other.map(Some),
                }
            }
            Transport::Tls(stream) => {
                buf.reserve(reserve);
                tls_end(stream.read_buf(buf).await).map(Some)
            }
        }
    }

    /// Whether an idle connection can carry another request: the origin has neither closed it nor sent anything
    /// since (a byte of an idle plain connection is a stray one; on TLS, any record, even a close_notify, means
    /// the session is not where the next request expects it). Costs no syscall when the runtime has seen no
    /// readiness since the last read.
    pub(super) fn is_open(&mut self) -> bool {
        match self {
            Transport::Plain(stream) => tcp_is_open(stream),
            Transport::Tls(stream) => {
                let (tcp, session) = stream.get_mut();
                // Plaintext, a close_notify or an EOF the session has already taken in.
                let mut probe = [0u8; 1];
                let quiet = matches!(
                    io::Read::read(&mut session.reader(), &mut probe),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock
                );
                quiet && !session.wants_write() && tcp_is_open(tcp)
            }
        }
    }
}

/// Writes all of `bytes` and sends them: nothing stays in the session's buffer.
async fn tls_write_all(stream: &mut TlsStream<TcpStream>, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

impl socket::WriteAll for TlsStream<TcpStream> {
    fn write_all(&mut self, bytes: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
        tls_write_all(self, bytes)
    }
}

/// A TLS read's result with an EOF without close_notify taken as the end of the stream, as for plain TCP: whether
/// that end is acceptable is for the message framing to say (a `Content-Length` or chunked body cut short is
/// still an error; only a close-delimited body could be truncated undetected, as over plain HTTP).
fn tls_end(read: io::Result<usize>) -> io::Result<usize> {
    match read {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
        other => other,
    }
}

/// Whether an idle TCP connection is still open: not readable (no EOF, no stray bytes), or readable but with
/// nothing to read after all.
fn tcp_is_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        }
    }
}
