//! Accepting connections on a listener: `TCP_NODELAY` set, accept errors (out of file descriptors) logged and
//! retried after a pause, stopped by a cancellation token. Used by the client listener and the control listeners.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// After an accept error (e.g. out of file descriptors), wait this long before accepting again, so the loop does
/// not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// The next connection, with `TCP_NODELAY` set, or `None` once `stop` fires. An accept error (e.g. out of file
/// descriptors) is logged and retried after a pause, so the loop does not spin while the condition lasts.
///
/// # Cancel safety
/// Cancel safe: `TcpListener::accept` is.
pub(crate) async fn accept(
    name: &'static str,
    listener: &TcpListener,
    stop: &CancellationToken,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(error = %e, "set_nodelay failed");
                    }
                    return Some((stream, peer));
                }
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
}
