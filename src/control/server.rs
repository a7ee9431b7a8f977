//! The control and metrics listeners' server: hyper's HTTP/1 connections, one task each, with a header read
//! timeout; stopped by a cancellation token, then drained gracefully within a bound. (Clients of the proxy are
//! served by [`crate::front`].)

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::body::Body;

/// Time a client gets to send a request head once it starts one: bounds slow-header (slowloris) clients.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections on `listener` and serves each with `handler` until `stop` fires; then stops accepting,
/// lets open connections finish their current request, and returns once they have or `grace` has passed.
pub(crate) async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    stop: CancellationToken,
    grace: Duration,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    loop {
        let Some((stream, peer)) = crate::accept::accept(name, &listener, &stop).await else {
            break;
        };
        let handler = handler.clone();
        let service = service_fn(move |req| {
            let fut = handler(req, peer);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        let span = tracing::debug_span!("conn", listener = name, client.addr = %peer);
        tokio::spawn(
            async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::debug!(listener = name, "connections drained"),
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(listener = name, grace_secs = grace.as_secs_f64(), "grace period over; closing remaining connections");
        }
    }
}
