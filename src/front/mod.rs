//! The HTTP/1.1 server, the server role of the `h1` codec: lean connection handling, so that a parked long-poll
//! costs a small task and no buffers. It serves the client listener, and the control and metrics listeners.

mod body;
mod conn;
mod io;
mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::Body;
pub use body::RequestBody;
pub(crate) use stream::{StreamAbort, Streaming};

/// What an HTTPS listener needs: its rustls config, and the counters its handshakes go to.
#[derive(Debug, Clone)]
pub struct TlsListener {
    /// Certificates (by SNI), versions, ALPN.
    pub config: std::sync::Arc<rustls::ServerConfig>,
    /// Handshakes completed and failed.
    pub handshakes: std::sync::Arc<crate::tls::server::Handshakes>,
}

/// Marks a request that came over TLS (an HTTPS listener): `X-Forwarded-Proto: https` toward the origin.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Https;

/// Per-connection bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request head (request line and headers); larger is a 431.
    pub max_head: usize,
    /// Largest request body; a larger declared length is a 413 before anything is read, and a chunked body that
    /// grows past it fails with [`ClientBodyError::TooLarge`].
    pub max_body: u64,
    /// Time allowed for a request head to arrive, and for an idle keep-alive connection to start the next one.
    pub header_timeout: Duration,
    /// Longest wait for the next bytes of a request body the handler is reading; then the body fails with
    /// [`ClientBodyError::TimedOut`] (a 408) and the connection closes.
    pub body_read_timeout: Duration,
    /// Longest wait for the client to take more of a response (each write must make progress within it); then
    /// the connection is closed and the response (and its origin connection) dropped.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 64 * 1024,
            max_body: 10_000_000,
            header_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(60),
        }
    }
}

impl From<&crate::config::ProxyLimits> for Limits {
    fn from(l: &crate::config::ProxyLimits) -> Self {
        Limits {
            max_head: l.max_request_head,
            max_body: l.max_request_body,
            body_read_timeout: l.body_read_timeout,
            write_timeout: l.write_timeout,
            ..Limits::default()
        }
    }
}

/// How a client's request body failed: the error its body stream yields. The client's doing, never the origin's:
/// the proxy answers it with a 4xx and does not count it as an origin failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientBodyError {
    /// The body grew past [`Limits::max_body`] (413).
    #[error("request body larger than {0} bytes")]
    TooLarge(u64),
    /// The body's framing is broken, e.g. an invalid chunk size (400).
    #[error("malformed request body: {0}")]
    Malformed(&'static str),
    /// No body bytes arrived within [`Limits::body_read_timeout`] (408).
    #[error("request body not received in time")]
    TimedOut,
    /// The client closed the connection before the end of the body.
    #[error("client closed the connection mid-body")]
    Closed,
}

/// Accepts connections on `listener` until `stop` fires, then lets open connections finish their current request
/// (a parked one is answered by the registry's close) for at most `grace`. `name` names the listener in logs. With
/// `tls`, connections are HTTPS. Each connection's task is spawned on the current runtime and tracked by
/// `connections` (its `len` is the connections open now; it is closed when this returns).
#[allow(clippy::too_many_arguments)]
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    tls: Option<TlsListener>,
    connections: TaskTracker,
    stop: CancellationToken,
    grace: Duration,
    limits: Limits,
    handler: H,
) where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let tracker = connections;
    let limits = std::sync::Arc::new(limits);
    loop {
        let Some((stream, peer)) = crate::accept::accept(name, &listener, &stop).await else {
            break;
        };
        let started = conn::start(
            stream,
            peer,
            tls.as_ref(),
            handler.clone(),
            limits.clone(),
            stop.clone(),
        );
        if let Some(connection) = started {
            tracker.spawn(connection);
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(
            listener = name,
            grace_secs = grace.as_secs_f64(),
            open = tracker.len(),
            "grace period over; closing remaining connections"
        );
    } else {
        tracing::debug!(listener = name, "connections drained");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::hold::Registry;
    use crate::proxy::{self, ProxyState};
    use std::sync::Arc;

    /// The whole per-connection task (connection state plus the proxy's request future) is what a parked client
    /// costs beyond the kernel socket and its registry entry: keep it small.
    #[tokio::test]
    async fn connection_task_stays_small() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let config = Config::default();
        let state = Arc::new(ProxyState::new(&config, Registry::new((&config).into())));
        let handler = move |req, peer| proxy::serve(state.clone(), req, peer);
        let fut = conn::start(
            stream,
            peer,
            None,
            handler,
            std::sync::Arc::new(Limits::default()),
            CancellationToken::new(),
        )
        .unwrap();
        let size = std::mem::size_of_val(&fut);
        println!("connection task future: {size} bytes");
        assert!(
            size <= 896,
            "connection future is {size} bytes (measured 872)"
        );
        drop(client);
    }
}
