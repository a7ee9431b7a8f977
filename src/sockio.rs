//! Socket reads that tell the runtime when a socket has been drained. A read that returns fewer bytes than asked
//! for took everything the kernel had, so the runtime's cached readiness is cleared there and then; otherwise it
//! stays set until a read fails with `WouldBlock`, and the next wait costs a `recv` syscall that finds nothing.
//! Measured: one such syscall per origin exchange and one per client request.

use std::io;

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

/// Waits until the socket is readable, then reads as [`try_read_buf`].
pub(crate) async fn read_buf(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    loop {
        std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await?;
        match try_read_buf(stream, buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}
