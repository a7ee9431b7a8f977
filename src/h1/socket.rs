//! Socket IO for both roles: the one readiness wait, reads that tell the runtime when a socket has been drained,
//! and writing body pieces (chunk framing and coalescing).

use std::io;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Reads into `buf` without waiting. `Err(WouldBlock)`: nothing there.
pub(crate) fn try_read(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let want = buf.len();
    read_clearing(stream, want, || stream.try_read(buf))
}

/// As [`try_read`], appending to `buf`'s spare capacity (reserve before calling).
pub(crate) fn try_read_buf(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let want = buf.capacity() - buf.len();
    read_clearing(stream, want, || stream.try_read_buf(buf))
}

/// Runs `read` (asked for `want` bytes) and clears the readiness the runtime observed when it read fewer.
///
/// A read that returns fewer bytes than asked for took everything the kernel had, so the runtime's cached
/// readiness is cleared there and then; otherwise it stays set until a read fails with `WouldBlock`, and the next
/// wait costs a `recv` syscall that finds nothing. Measured: one such syscall per origin exchange and one per
/// client request.
fn read_clearing(
    stream: &TcpStream,
    want: usize,
    read: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut got = 0;
    // The closure reports a short read as `WouldBlock`, which makes tokio clear the readiness it observed (a
    // readiness event that arrived meanwhile is kept: tokio compares its event tick).
    let result = stream.try_io(Interest::READABLE, || match read() {
        Ok(n) if n > 0 && n < want => {
            got = n;
            Err(io::ErrorKind::WouldBlock.into())
        }
        other => other,
    });
    match result {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

/// Polls whether the socket is readable (or closed). Uses the socket's own reader slot through `poll_read_ready`
/// rather than `readable()`, whose future carries a 152-byte waiter node: this wait is what every parked
/// connection is doing.
fn poll_readable(stream: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    stream.poll_read_ready(cx)
}

/// Waits until the socket is readable (or closed), without reading.
pub(crate) async fn read_ready(stream: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| poll_readable(stream, cx)).await
}

/// Reads as [`try_read_buf`] once the socket is readable; `Pending` until it is.
pub(crate) fn poll_read_buf(
    stream: &TcpStream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    loop {
        ready!(poll_readable(stream, cx))?;
        match try_read_buf(stream, buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return Poll::Ready(other),
        }
    }
}

/// Waits until the socket is readable, then reads as [`try_read_buf`].
pub(crate) async fn read_buf(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_buf(stream, buf, cx)).await
}

/// Buffered bytes are written together with the next body piece when both fit in this much: a head and a small
/// body go out with one syscall.
const COALESCE_MAX: usize = 16 * 1024;

/// Where a writer of message bodies sends whole slices, waiting as needed: a socket, or a client connection's
/// transport (which may encrypt).
pub(crate) trait WriteAll {
    /// Writes all of `bytes`.
    fn write_all(
        &mut self,
        bytes: &[u8],
    ) -> impl std::future::Future<Output = io::Result<()>> + Send;
}

impl WriteAll for &TcpStream {
    fn write_all(
        &mut self,
        bytes: &[u8],
    ) -> impl std::future::Future<Output = io::Result<()>> + Send {
        write_all(self, bytes)
    }
}

/// Adds one piece of a message body to `out` (which may hold a head or earlier pieces), framed as a chunk when
/// `chunked`, and writes what is buffered when it would grow past [`COALESCE_MAX`] or when `more` is coming
/// later (so what is here must not wait for it). Whatever stays in `out` is the caller's to write at the end.
pub(crate) async fn put_body_piece(
    stream: &TcpStream,
    out: &mut Vec<u8>,
    data: &[u8],
    chunked: bool,
    more: bool,
) -> io::Result<()> {
    put_body_piece_to(&mut &*stream, out, data, chunked, more).await
}

/// [`put_body_piece`] to any [`WriteAll`].
pub(crate) async fn put_body_piece_to<W: WriteAll>(
    writer: &mut W,
    out: &mut Vec<u8>,
    data: &[u8],
    chunked: bool,
    more: bool,
) -> io::Result<()> {
    if chunked {
        super::encode::chunk_header(out, data.len());
    }
    if out.len() + data.len() <= COALESCE_MAX {
        out.extend_from_slice(data);
    } else {
        writer.write_all(out).await?;
        out.clear();
        writer.write_all(data).await?;
    }
    if chunked {
        out.extend_from_slice(b"\r\n");
    }
    if more && !out.is_empty() {
        writer.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// Writes all of `bytes`, waiting whenever the socket is full. Takes the socket shared (`&TcpStream`), as a client
/// connection lends its socket to the registry while its request is parked ([`super::DirectWrite`]). Waits through
/// the socket's own writer slot (`poll_write_ready`), which costs no waiter node.
pub(crate) async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = std::future::poll_fn(|cx| poll_write(stream, bytes, cx)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// One write once the socket is writable; `Pending` until it is.
fn poll_write(stream: &TcpStream, bytes: &[u8], cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    loop {
        ready!(stream.poll_write_ready(cx))?;
        match stream.try_write(bytes) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return Poll::Ready(other),
        }
    }
}

/// Waits until the socket can take more bytes (or has failed).
pub(crate) async fn write_ready(stream: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| stream.poll_write_ready(cx)).await
}

/// Shuts down the socket's sending side (the peer reads the end of what was sent, then EOF). Errors are ignored:
/// the peer may have gone already.
pub(crate) fn shutdown_write(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).shutdown(std::net::Shutdown::Write);
}
