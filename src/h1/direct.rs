//! A parked client's socket, shared with the hold registry so that a release writes the response straight to it
//! from the publishing thread, before the client's own task is woken to finish.

use std::sync::Arc;

use tokio::net::TcpStream;

/// A client connection's socket, lent to a request that may be parked: the release that answers the request
/// writes the encoded response through it at once (see `hold::Waiter`), and the connection's task writes whatever
/// the socket did not take. Offered only for a request whose connection can take the shared HTTP/1.1 keep-alive
/// encoding (`h1::PreEncoded::wire`) as it is. A connection that must transform its bytes (TLS) offers none, and
/// its task writes as before.
#[derive(Debug, Clone)]
pub(crate) struct DirectWrite(Arc<TcpStream>);

impl DirectWrite {
    /// A handle on `socket`, shared with its connection.
    pub(crate) fn new(socket: Arc<TcpStream>) -> Self {
        DirectWrite(socket)
    }

    /// Writes as much of `bytes` as the socket takes now, without waiting, and returns how much that was: zero
    /// when its send buffer is full or the socket failed (the connection's task meets the same error when it
    /// writes the rest, and handles it as any write error).
    pub(crate) fn write_now(&self, bytes: &[u8]) -> usize {
        let mut written = 0;
        while written < bytes.len() {
            match self.0.try_write(&bytes[written..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => written += n,
            }
        }
        written
    }
}

/// Marks a response whose first `n` bytes of its shared encoding (`PreEncoded::wire`) a release already wrote to
/// the client's socket: the connection writes the rest, and nothing else, for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written(pub(crate) usize);
