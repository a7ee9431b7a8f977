//! Per-core mode (`proxy.runtime = "per-core"`): client connections served by N current-thread tokio runtimes,
//! one OS thread each, each accepting on its own `SO_REUSEPORT` listener of the proxy address.
//!
//! A connection is accepted, served, parked and released on one thread, and the origin connections it uses come
//! from that runtime's own pool (`origin::use_local_pool`): nothing on the forwarding path wakes another thread.
//! The kernel spreads new connections over the listeners by a hash of their addresses and ports. The app's stop
//! token stops every runtime as it stops the shared one: accepting ends, open connections get the grace period.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::body::Body;
use crate::front::{self, Limits, RequestBody};
use crate::origin;

/// What every runtime serves its clients with.
pub(crate) struct Serving<H> {
    /// Fires at shutdown: stop accepting, let open connections finish within `grace`.
    pub stop: CancellationToken,
    /// How long open connections get after `stop`.
    pub grace: Duration,
    /// Per-connection bounds.
    pub limits: Limits,
    /// The request handler (cloned into each runtime).
    pub handler: H,
    /// The origin client whose local pool `i` belongs to runtime `i`.
    pub origins: origin::Client,
    /// The HTTPS listeners' TLS config, if they are configured.
    pub tls: Option<front::TlsListener>,
}

/// The listeners one runtime serves: the plain one, and the HTTPS one if configured.
pub(crate) struct Listeners {
    /// Plain HTTP.
    pub plain: std::net::TcpListener,
    /// HTTPS.
    pub tls: Option<std::net::TcpListener>,
}

/// The running runtimes.
pub(crate) struct Runtimes {
    /// One per runtime: resolves (sent or dropped) once its thread has dropped its runtime.
    stopped: Vec<oneshot::Receiver<()>>,
    /// Dropped with the app when it was not shut down: each runtime then stops at once (its listener closed, its
    /// connections dropped with it), as the shared runtime's listener task is aborted then.
    _abort: DropGuard,
}

impl Runtimes {
    /// Starts one thread with its runtime per listener: runtime `i` serves `listeners[i]`, tracks its connections in
    /// `trackers[i]` and uses local origin pool `i`. Returns once every runtime has registered its listener.
    pub(crate) async fn start<H, F>(
        listeners: Vec<Listeners>,
        trackers: &[TaskTracker],
        serving: Serving<H>,
    ) -> io::Result<Runtimes>
    where
        H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let abort = CancellationToken::new();
        // Armed now: a failure below stops the runtimes already started.
        let guard = abort.clone().drop_guard();
        let mut started = Vec::with_capacity(listeners.len());
        let mut stopped = Vec::with_capacity(listeners.len());
        for (index, (listener, tracker)) in listeners.into_iter().zip(trackers).enumerate() {
            let (started_tx, started_rx) = oneshot::channel();
            let (stopped_tx, stopped_rx) = oneshot::channel();
            let runtime = Runtime {
                index,
                listener,
                connections: tracker.clone(),
                abort: abort.clone(),
                stop: serving.stop.clone(),
                grace: serving.grace,
                limits: serving.limits,
                handler: serving.handler.clone(),
                origins: serving.origins.clone(),
                tls: serving.tls.clone(),
            };
            std::thread::Builder::new()
                .name(format!("grip-client-{index}"))
                .spawn(move || runtime.run(started_tx, stopped_tx))?;
            started.push(started_rx);
            stopped.push(stopped_rx);
        }
        for runtime in started {
            match runtime.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("a client runtime's thread ended early")),
            }
        }
        Ok(Runtimes {
            stopped,
            _abort: guard,
        })
    }

    /// Resolves once every runtime has stopped: after the stop token fired, each has closed its listener and its
    /// connections have finished, or the grace period ran out and the rest were dropped with the runtime.
    pub(crate) fn stopped(&mut self) -> impl Future<Output = ()> + Send + 'static {
        let stopped = std::mem::take(&mut self.stopped);
        async move {
            for runtime in stopped {
                // An error means the thread ended without sending: stopped all the same.
                let _ = runtime.await;
            }
        }
    }
}

/// One runtime's thread: what it serves.
struct Runtime<H> {
    index: usize,
    listener: Listeners,
    connections: TaskTracker,
    abort: CancellationToken,
    stop: CancellationToken,
    grace: Duration,
    limits: Limits,
    handler: H,
    origins: origin::Client,
    tls: Option<front::TlsListener>,
}

impl<H, F> Runtime<H>
where
    H: Fn(Request<RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    /// The thread's body: builds the runtime, registers the listener with it, says so on `started`, serves until
    /// stopped, then closes the runtime's idle origin connections and drops the runtime (and with it any connection
    /// still open after the grace period) before saying so on `stopped`.
    fn run(self, started: oneshot::Sender<io::Result<()>>, stopped: oneshot::Sender<()>) {
        let Runtime {
            index,
            listener,
            connections,
            abort,
            stop,
            grace,
            limits,
            handler,
            origins,
            tls,
        } = self;
        origin::use_local_pool(index);
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        let registered = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener.plain).and_then(|plain| {
                let tls = listener
                    .tls
                    .map(tokio::net::TcpListener::from_std)
                    .transpose()?;
                Ok((plain, tls))
            })
        };
        let (listener, tls_listener) = match registered {
            Ok(listeners) => listeners,
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        };
        if started.send(Ok(())).is_err() {
            return; // the start-up was abandoned
        }
        runtime.block_on(async {
            let https = {
                let (connections, stop, handler) =
                    (connections.clone(), stop.clone(), handler.clone());
                async move {
                    if let (Some(listener), Some(tls)) = (tls_listener, tls) {
                        front::serve(
                            "https",
                            listener,
                            Some(tls),
                            connections,
                            stop,
                            grace,
                            limits,
                            handler,
                        )
                        .await;
                    }
                }
            };
            let plain = front::serve(
                "proxy",
                listener,
                None,
                connections,
                stop,
                grace,
                limits,
                handler,
            );
            tokio::select! {
                _ = futures_util::future::join(plain, https) => {}
                () = abort.cancelled() => {}
            }
        });
        origins.close_local(index);
        drop(runtime);
        tracing::debug!(runtime = index, "client runtime stopped");
        let _ = stopped.send(());
    }
}
