//! `App`: binds the listeners (clients, control, and metrics if configured), builds the shared state from
//! `Config`, runs the servers, the last-id sweeper and the origin pool sweeper, and shuts them all down in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusError};
use crate::config::Config;
use crate::control::{self, Control};
use crate::front;
use crate::hold::Registry;
use crate::metrics::Metrics;
use crate::proxy::forward::Forwarder;
use crate::proxy::{self, ProxyState};
use crate::reload::Reloader;

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
}

/// A running proxy: both listeners bound and served.
pub struct App {
    proxy_addr: SocketAddr,
    control_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    registry: Registry,
    reloader: Reloader,
    bus: Bus,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl App {
    /// Binds the listeners and starts serving. Returns once both are bound.
    pub async fn start(config: Config) -> Result<App, StartError> {
        let proxy_listener = bind("proxy", config.listen).await?;
        let control_listener = bind("control", config.control_listen).await?;
        let proxy_addr = local_addr("proxy", config.listen, &proxy_listener)?;
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
        let forwarder = Forwarder::new(&config.origin);
        let origins = forwarder.client().clone();
        tasks.spawn(sweep_origin_pool(
            origins.clone(),
            config.origin.pool_idle_timeout,
            stop.clone(),
        ));
        // Reloads swap this; each request takes the state in force when it arrives and keeps it to its end.
        let live = Arc::new(arc_swap::ArcSwap::from_pointee(ProxyState::build(
            &config,
            registry.clone(),
            forwarder,
            metrics.clone(),
        )));
        let reloader = Reloader::new(live.clone(), config.clone());
        tasks.spawn(front::serve(
            "proxy",
            proxy_listener,
            stop.clone(),
            config.shutdown_grace,
            front::Limits::from(&config.limits),
            move |req, peer| proxy::serve(live.load_full(), req, peer),
        ));

        let control = Arc::new(Control {
            registry: registry.clone(),
            max_body: config.control_max_body,
            auth: control::auth::Auth::new(&config.control_auth),
            bus: bus.clone(),
            exposition: metrics.exposition(registry.clone(), &bus, origins),
            metrics,
        });
        let metrics_addr = metrics_listener.as_ref().map(|(_, addr)| *addr);
        if let Some((listener, _)) = metrics_listener {
            let control = control.clone();
            tasks.spawn(front::serve(
                "metrics",
                listener,
                stop.clone(),
                config.shutdown_grace,
                control::limits(),
                move |req, _peer| {
                    let resp = control::serve_metrics_listener(&control, &req);
                    async move { resp }
                },
            ));
        }
        tasks.spawn(front::serve(
            "control",
            control_listener,
            stop.clone(),
            config.shutdown_grace,
            control::limits(),
            move |req, _peer| control::serve(control.clone(), req),
        ));

        tasks.spawn(registry.clone().run_sweeper(SWEEP_INTERVAL, stop.clone()));

        tracing::info!(proxy = %proxy_addr, control = %control_addr, metrics = ?metrics_addr, routes = config.routes.len(), bus = bus.kind(), "grip-proxy listening");
        Ok(App {
            proxy_addr,
            control_addr,
            metrics_addr,
            registry,
            reloader,
            bus,
            stop,
            tasks,
        })
    }

    /// Where clients connect.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
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
    let err = |source| StartError::Bind { what, addr, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
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
