//! `App`: binds the listeners (clients, control, and metrics if configured), builds the shared state from
//! `Config`, runs the servers, the last-id sweeper and the origin pool sweeper, and shuts them all down in order.
//! Clients are served on the caller's runtime, or in per-core mode on runtimes of their own (`runtimes`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{Bus, BusError};
use crate::config::{Config, RuntimeMode};
use crate::control::{self, Control};
use crate::front;
use crate::hold::Registry;
use crate::limits::Clients;
use crate::metrics::Metrics;
use crate::proxy::forward::Forwarder;
use crate::proxy::{self, ProxyState};
use crate::reload::Reloader;
use crate::runtimes::{self, Runtimes};

/// How often expired last ids are swept (and early, when the map is over capacity).
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bus could not start (Redis unreachable with `bus.startup = "fail"`).
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A per-core runtime (its thread, or its listener's registration) could not start.
    #[error("cannot start the client runtimes: {0}")]
    Runtime(#[source] std::io::Error),
    /// The HTTPS listener's TLS settings were refused by the TLS library.
    #[error("cannot set up TLS: {0}")]
    Tls(#[source] rustls::Error),
}

/// A running proxy: both listeners bound and served.
pub struct App {
    proxy_addr: SocketAddr,
    tls_addr: Option<SocketAddr>,
    control_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    registry: Registry,
    reloader: Reloader,
    bus: Bus,
    stop: CancellationToken,
    tasks: JoinSet<()>,
    /// The per-core runtimes, if any (dropping them stops them at once).
    _runtimes: Option<Runtimes>,
}

impl App {
    /// Binds the listeners and starts serving. Returns once both are bound.
    pub async fn start(config: Config) -> Result<App, StartError> {
        let (proxy_listeners, proxy_addr, tls_addr) = bind_clients(&config).await?;
        let certificates = config
            .tls
            .as_ref()
            .map(|tls| crate::tls::server::Resolver::new(tls.certificates.clone()));
        let handshakes = Arc::new(crate::tls::server::Handshakes::default());
        let tls = certificates
            .clone()
            .map(crate::tls::server::config)
            .transpose()
            .map_err(StartError::Tls)?
            .map(|config| front::TlsListener {
                config,
                handshakes: handshakes.clone(),
            });
        let control_listener = bind("control", config.control_listen).await?;
        let control_addr = local_addr("control", config.control_listen, &control_listener)?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => {
                let l = bind("metrics", addr).await?;
                let bound = local_addr("metrics", addr, &l)?;
                Some((l, bound))
            }
            None => None,
        };
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }

        let registry = Registry::new((&config).into());
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let bus = Bus::start(
            &config.bus,
            registry.clone(),
            config.control_max_body,
            stop.clone(),
            &mut tasks,
        )
        .await?;

        let metrics = Arc::new(Metrics::new());
        let forwarder = Forwarder::new(&config.origin, proxy_listeners.local_pools());
        let origins = forwarder.client().clone();
        tasks.spawn(sweep_origin_pool(
            origins.clone(),
            config.origin.pool_idle_timeout,
            stop.clone(),
        ));
        // The table of per-client limits, if any: kept across reloads, as the registry is.
        let clients = Clients::new(&config.fair_use);
        if let Some(clients) = &clients {
            tasks.spawn(clients.clone().run_sweeper(SWEEP_INTERVAL, stop.clone()));
        }
        // Reloads swap this; each request takes the state in force when it arrives and keeps it to its end.
        let live = Arc::new(arc_swap::ArcSwap::from_pointee(ProxyState::build(
            &config,
            registry.clone(),
            forwarder,
            metrics.clone(),
            clients.clone(),
        )));
        let reloader = Reloader::new(live.clone(), config.clone(), certificates);
        let serving = runtimes::Serving {
            stop: stop.clone(),
            grace: config.shutdown_grace,
            limits: front::Limits::from(&config.limits),
            handler: move |req, peer| proxy::serve(live.load_full(), req, peer),
            tls,
            origins: origins.clone(),
        };
        let (connections, runtimes) = serve_clients(proxy_listeners, serving, &mut tasks).await?;

        let control = Arc::new(Control {
            registry: registry.clone(),
            max_body: config.control_max_body,
            auth: control::auth::Auth::new(&config.control_auth),
            bus: bus.clone(),
            exposition: metrics.exposition(
                registry.clone(),
                &bus,
                origins,
                &connections,
                handshakes.clone(),
                clients,
            ),
            metrics,
        });
        let metrics_addr = metrics_listener.as_ref().map(|(_, addr)| *addr);
        if let Some((listener, _)) = metrics_listener {
            let control = control.clone();
            tasks.spawn(front::serve(
                "metrics",
                listener,
                None,
                TaskTracker::new(),
                stop.clone(),
                config.shutdown_grace,
                control::limits(),
                move |req, _peer| {
                    let resp = control::serve_metrics_listener(&control, &req);
                    async move { resp }
                },
            ));
        }
        let control_tls = config
            .control_tls
            .clone()
            .map(|certificates| {
                crate::tls::server::config(crate::tls::server::Resolver::new(certificates))
            })
            .transpose()
            .map_err(StartError::Tls)?
            .map(|config| front::TlsListener {
                config,
                handshakes: handshakes.clone(),
            });
        tasks.spawn(front::serve(
            "control",
            control_listener,
            control_tls,
            TaskTracker::new(),
            stop.clone(),
            config.shutdown_grace,
            control::limits(),
            move |req, _peer| control::serve(control.clone(), req),
        ));

        tasks.spawn(registry.clone().run_sweeper(SWEEP_INTERVAL, stop.clone()));

        tracing::info!(proxy = %proxy_addr, https = tls_addr.map(tracing::field::display), control = %control_addr, metrics = ?metrics_addr, routes = config.routes.len(), bus = bus.kind(), runtime = config.runtime.as_str(), threads = config.threads, "grip-proxy listening");
        Ok(App {
            proxy_addr,
            tls_addr,
            control_addr,
            metrics_addr,
            registry,
            reloader,
            bus,
            stop,
            tasks,
            _runtimes: runtimes,
        })
    }

    /// Where clients connect.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// Where HTTPS clients connect (`[tls] listen`), if configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Where the control API listens.
    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    /// Where the metrics listener (`[metrics] listen`) listens, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Live reload: apply a new configuration's reloadable settings (see docs/operations.md).
    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    /// The hold registry (to observe parked clients).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The publish bus's status, to observe it (memory: always connected).
    pub fn bus_status(&self) -> tokio::sync::watch::Receiver<crate::bus::Status> {
        self.bus.status()
    }

    /// Whether the bus can take a publish now (memory: always; Redis: subscribed).
    pub fn bus_connected(&self) -> bool {
        self.bus.is_connected()
    }

    /// Stops accepting, answers every held client with its timeout response, lets in-flight requests finish
    /// within the grace period, and returns when all is done.
    pub async fn shutdown(mut self) {
        tracing::info!(held = self.registry.held(), "shutting down");
        self.stop.cancel();
        self.registry.close();
        while self.tasks.join_next().await.is_some() {}
        tracing::info!("stopped");
    }
}

/// Pending connections the kernel queues per listener. tokio's default (128) drops SYNs in a reconnect storm
/// (measured: 500 simultaneous connects took 1.05 s, retried SYNs); the kernel caps it at `somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    bind_socket(what, addr, false)
}

/// Binds a listener; with `reuse_port`, one of a group on the same address that the kernel spreads connections
/// over (each must set it before binding).
fn bind_socket(
    what: &'static str,
    addr: SocketAddr,
    reuse_port: bool,
) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { what, addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    if reuse_port {
        socket.set_reuseport(true).map_err(err)?;
    }
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// The client listeners (plain, and HTTPS if configured), or in per-core mode a pair per runtime.
enum ClientListeners {
    /// Served on the caller's runtime.
    Shared(TcpListener, Option<TcpListener>),
    /// One pair per runtime, each on the same addresses as the others (`SO_REUSEPORT`), registered by the runtime
    /// that serves it.
    PerCore(Vec<runtimes::Listeners>),
}

impl ClientListeners {
    /// Origin pools of their own that the client runtimes need.
    fn local_pools(&self) -> usize {
        match self {
            ClientListeners::Shared(..) => 0,
            ClientListeners::PerCore(listeners) => listeners.len(),
        }
    }
}

/// Binds the client listeners, and says where the plain and the HTTPS ones listen.
async fn bind_clients(
    config: &Config,
) -> Result<(ClientListeners, SocketAddr, Option<SocketAddr>), StartError> {
    let tls_listen = config.tls.as_ref().map(|t| t.listen);
    if config.runtime == RuntimeMode::Shared {
        let listener = bind("proxy", config.listen).await?;
        let addr = local_addr("proxy", config.listen, &listener)?;
        let (tls, tls_addr) = match tls_listen {
            Some(listen) => {
                let l = bind("https", listen).await?;
                let bound = local_addr("https", listen, &l)?;
                (Some(l), Some(bound))
            }
            None => (None, None),
        };
        return Ok((ClientListeners::Shared(listener, tls), addr, tls_addr));
    }
    let plain = bind_group("proxy", config.listen, config.threads)?;
    let addr = plain.0;
    let (tls, tls_addr) = match tls_listen {
        Some(listen) => {
            let (bound, listeners) = bind_group("https", listen, config.threads)?;
            (listeners.into_iter().map(Some).collect(), Some(bound))
        }
        None => (plain.1.iter().map(|_| None).collect::<Vec<_>>(), None),
    };
    let listeners = plain
        .1
        .into_iter()
        .zip(tls)
        .map(|(plain, tls)| runtimes::Listeners { plain, tls })
        .collect();
    Ok((ClientListeners::PerCore(listeners), addr, tls_addr))
}

/// `n` listeners on one address (`SO_REUSEPORT`) for the per-core runtimes, and the address they are bound to:
/// the first bind picks the port when the configured one is 0, the others bind to that port.
fn bind_group(
    what: &'static str,
    listen: SocketAddr,
    n: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), StartError> {
    let first = bind_socket(what, listen, true)?;
    let addr = local_addr(what, listen, &first)?;
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners.push(bind_socket(what, addr, true)?);
    }
    // Taken off this runtime (which registered them) for the runtimes that will serve them.
    let listeners = listeners
        .into_iter()
        .map(TcpListener::into_std)
        .collect::<Result<_, _>>()
        .map_err(|source| StartError::Bind { what, addr, source })?;
    Ok((addr, listeners))
}

/// Serves the client listeners: on this runtime, or on the per-core runtimes (then a task in `tasks` waits for
/// them to stop). Returns the connection tracker of each runtime, and the per-core runtimes.
async fn serve_clients<H, F>(
    listeners: ClientListeners,
    serving: runtimes::Serving<H>,
    tasks: &mut JoinSet<()>,
) -> Result<(Vec<TaskTracker>, Option<Runtimes>), StartError>
where
    H: Fn(http::Request<front::RequestBody>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = http::Response<crate::body::Body>> + Send + 'static,
{
    match listeners {
        ClientListeners::Shared(listener, tls_listener) => {
            let connections = TaskTracker::new();
            if let (Some(listener), Some(tls)) = (tls_listener, serving.tls) {
                tasks.spawn(front::serve(
                    "https",
                    listener,
                    Some(tls),
                    connections.clone(),
                    serving.stop.clone(),
                    serving.grace,
                    serving.limits,
                    serving.handler.clone(),
                ));
            }
            tasks.spawn(front::serve(
                "proxy",
                listener,
                None,
                connections.clone(),
                serving.stop,
                serving.grace,
                serving.limits,
                serving.handler,
            ));
            Ok((vec![connections], None))
        }
        ClientListeners::PerCore(listeners) => {
            let connections: Vec<TaskTracker> =
                listeners.iter().map(|_| TaskTracker::new()).collect();
            let mut runtimes = Runtimes::start(listeners, &connections, serving)
                .await
                .map_err(StartError::Runtime)?;
            tasks.spawn(runtimes.stopped());
            Ok((connections, Some(runtimes)))
        }
    }
}

fn local_addr(
    what: &'static str,
    addr: SocketAddr,
    l: &TcpListener,
) -> Result<SocketAddr, StartError> {
    l.local_addr()
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Closes idle origin connections past the pool's idle timeout, checking twice per timeout.
async fn sweep_origin_pool(
    origins: crate::origin::Client,
    idle_timeout: Duration,
    stop: CancellationToken,
) {
    let every = (idle_timeout / 2).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => origins.sweep_idle(),
        }
    }
}
