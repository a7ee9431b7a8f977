//! The Redis bus: the control API PUBLISHes each validated publish body to one pub/sub channel; a subscriber task
//! applies every body that comes back to the local registry, in the order Redis delivers them. The task
//! reconnects with bounded exponential backoff and stops on the app's cancellation token. While it is not
//! subscribed, publishes are refused (503); when it subscribes again, every held client is re-fetched from its
//! origin and every last id forgotten, since items may have been missed meanwhile.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::AsyncConnectionConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{BusError, Status};
use crate::config::{RedisConfig, Startup};
use crate::hold::Registry;
use crate::item;

/// Shared by the control API (publish) and the subscriber task.
pub(crate) struct RedisBus {
    config: RedisConfig,
    client: redis::Client,
    /// Where received items are applied.
    registry: Registry,
    /// Received messages larger than this are dropped (the control API's own body limit).
    max_message: usize,
    /// The connection PUBLISH uses, made on first use and again after an error. A tokio mutex: connecting is
    /// awaited under it, so that the publishes arriving after an outage open one connection, not one each.
    publisher: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// Connected or not, and counters. Written by the subscriber task and publishes; read by anyone.
    status: watch::Sender<Status>,
}

/// Why a subscription ended.
enum Ended {
    /// The app is stopping.
    Stopped,
    /// The connection was lost (the reason, for the log).
    Lost(String),
}

impl RedisBus {
    /// Makes the bus and its subscriber task (not yet spawned). With `startup = "fail"` the first subscription
    /// is made here, and its failure returned.
    pub(crate) async fn start(
        config: &RedisConfig,
        registry: Registry,
        max_message: usize,
        stop: CancellationToken,
    ) -> Result<(Arc<RedisBus>, impl Future<Output = ()> + Send + 'static), BusError> {
        // A `rediss://` URL: redis-rs builds its rustls config with the process's default crypto provider.
        crate::tls::client::install_provider();
        let client = config.client().map_err(BusError::Redis)?;
        let bus = Arc::new(RedisBus {
            config: config.clone(),
            client,
            registry,
            max_message,
            publisher: tokio::sync::Mutex::new(None),
            status: watch::channel(Status::default()).0,
        });
        let first = match config.startup {
            Startup::Retry => None,
            Startup::Fail => {
                let pubsub = bus.subscribe().await.map_err(|e| BusError::Startup {
                    url: config.redacted_url(),
                    reason: e.to_string().replace('\n', " "),
                })?;
                bus.subscribed();
                Some(pubsub)
            }
        };
        let task = bus.clone().run(first, stop);
        Ok((bus, task))
    }

    /// The status, to read or to wait on.
    pub(crate) fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// `Retry-After` for a refused publish.
    pub(crate) fn retry_after(&self) -> Duration {
        self.config.retry_after
    }

    // === publishing ===

    /// PUBLISHes `raw` to the channel. Refused at once while the subscription is down: this instance would not
    /// deliver it, and the publisher should learn that now rather than believe it was delivered.
    pub(crate) async fn publish(&self, raw: &Bytes) -> Result<(), BusError> {
        let connected = self.status.borrow().connected;
        let result = if connected {
            self.publish_now(raw).await
        } else {
            Err(BusError::NotConnected)
        };
        self.status.send_modify(|s| match result {
            Ok(()) => s.published += 1,
            Err(_) => s.refused += 1,
        });
        result
    }

    async fn publish_now(&self, raw: &Bytes) -> Result<(), BusError> {
        let (mut conn, cached) = self.publisher().await?;
        let mut sent = self.send(&mut conn, raw).await;
        if let Err(BusError::Redis(_) | BusError::Timeout(_)) = &sent {
            // Made again on next use: after an error or a late answer its state is unknown.
            self.publisher.lock().await.take();
        }
        if let Err(BusError::Redis(e)) = &sent {
            // A connection kept from before Redis restarted fails on first use, before anything was sent:
            // one retry on a new connection turns that into a success instead of a 503. Not after a timeout,
            // when the PUBLISH may have gone through.
            if cached && !e.is_timeout() && (e.is_connection_dropped() || e.is_io_error()) {
                tracing::debug!(error = %e, "bus: publish connection was stale; reconnecting");
                let (mut conn, _) = self.publisher().await?;
                sent = self.send(&mut conn, raw).await;
            }
        }
        sent
    }

    async fn send(&self, conn: &mut MultiplexedConnection, raw: &Bytes) -> Result<(), BusError> {
        let limit = self.config.command_timeout;
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&self.config.channel).arg(raw.as_ref());
        let publish = cmd.query_async::<i64>(conn);
        match tokio::time::timeout(limit, publish).await {
            Err(_) => Err(BusError::Timeout(limit)),
            Ok(Err(e)) => Err(BusError::Redis(e)),
            Ok(Ok(0)) => Err(BusError::NoSubscriber),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// The publish connection, and whether it was already open.
    async fn publisher(&self) -> Result<(MultiplexedConnection, bool), BusError> {
        let mut slot = self.publisher.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok((conn.clone(), true));
        }
        let (connect, command) = (self.config.connect_timeout, self.config.command_timeout);
        let settings = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(command));
        let conn = tokio::time::timeout(
            connect + command,
            self.client
                .get_multiplexed_async_connection_with_config(&settings),
        )
        .await
        .map_err(|_| BusError::Timeout(connect + command))?
        .map_err(BusError::Redis)?;
        *slot = Some(conn.clone());
        Ok((conn, false))
    }

    // === the subscriber task ===

    /// Subscribes, applies what comes, and reconnects with backoff when the connection is lost, until `stop`.
    async fn run(self: Arc<Self>, mut first: Option<PubSub>, stop: CancellationToken) {
        let mut delay = self.config.reconnect_min;
        let mut failures = 0u32;
        loop {
            let pubsub = match first.take() {
                Some(pubsub) => pubsub,
                None => {
                    let attempt = tokio::select! {
                        _ = stop.cancelled() => return,
                        attempt = self.subscribe() => attempt,
                    };
                    match attempt {
                        Ok(pubsub) => {
                            self.subscribed();
                            pubsub
                        }
                        Err(e) => {
                            failures += 1;
                            // Loud on the first failure, then on 2, 4, 8, ... so an outage does not flood the log.
                            if failures.is_power_of_two() {
                                tracing::warn!(
                                    url = %self.config.redacted_url(), error = %e, failures,
                                    retry_in_ms = delay.as_millis() as u64,
                                    "bus: cannot subscribe to Redis; publishes answer 503 until it can"
                                );
                            }
                            if sleep_or_stop(delay, &stop).await.is_err() {
                                return;
                            }
                            delay = (delay * 2).min(self.config.reconnect_max);
                            continue;
                        }
                    }
                }
            };
            failures = 0;
            delay = self.config.reconnect_min;
            let ended = self.listen(pubsub, &stop).await;
            self.status.send_modify(|s| s.connected = false);
            match ended {
                Ended::Stopped => return,
                Ended::Lost(reason) => tracing::warn!(
                    url = %self.config.redacted_url(), %reason,
                    "bus: connection to Redis lost; held clients stay held, publishes answer 503 until it is back"
                ),
            }
            if sleep_or_stop(delay, &stop).await.is_err() {
                return;
            }
        }
    }

    /// Connects and subscribes, within the connect timeout.
    async fn subscribe(&self) -> Result<PubSub, BusError> {
        let limit = self.config.connect_timeout;
        let subscribe = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.config.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(limit, subscribe).await {
            Err(_) => Err(BusError::Timeout(limit)),
            Ok(result) => result.map_err(BusError::Redis),
        }
    }

    /// A subscription is (again) in place. Items published while there was none were not applied here: every
    /// held client is re-fetched from its origin and every last id forgotten (their values may be stale). Only
    /// then are publishes accepted again.
    fn subscribed(&self) {
        let refetched = self.registry.recover();
        self.status.send_modify(|s| {
            s.connected = true;
            s.connects += 1;
            s.refetched += refetched as u64;
        });
        tracing::info!(
            url = %self.config.redacted_url(), channel = %self.config.channel, refetched,
            "bus: subscribed to Redis"
        );
    }

    /// Applies received messages until the connection is lost or `stop` fires. A PING every `ping_interval`
    /// catches a Redis that went away without closing the connection.
    async fn listen(&self, pubsub: PubSub, stop: &CancellationToken) -> Ended {
        let (mut sink, mut stream) = pubsub.split();
        let (interval, limit) = (self.config.ping_interval, self.config.command_timeout);
        let health = async {
            loop {
                tokio::time::sleep(interval).await;
                match tokio::time::timeout(limit, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => self.status.send_modify(|s| s.pings += 1),
                    Ok(Err(e)) => return format!("PING failed: {e}"),
                    Err(_) => return format!("no answer to PING within {limit:?}"),
                }
            }
        };
        let receive = async {
            while let Some(msg) = stream.next().await {
                self.apply(msg.get_payload_bytes());
            }
            "the connection closed".to_owned()
        };
        tokio::select! {
            _ = stop.cancelled() => Ended::Stopped,
            reason = health => Ended::Lost(reason),
            reason = receive => Ended::Lost(reason),
        }
    }

    /// Applies one message: a publish body, validated as the control API validates it.
    fn apply(&self, payload: &[u8]) {
        let dropped = if payload.len() > self.max_message {
            tracing::warn!(
                len = payload.len(),
                limit = self.max_message,
                "bus: message dropped: larger than control.max_body"
            );
            true
        } else {
            match item::parse_body(payload) {
                Ok(items) => {
                    let count = items.len();
                    let delivered = super::apply(&self.registry, items);
                    tracing::debug!(items = count, delivered, "bus: message applied");
                    false
                }
                Err(e) => {
                    // The field only: the reason may quote a value of the body, which is never logged.
                    tracing::warn!(field = %e.field, "bus: message dropped: not a valid publish body");
                    true
                }
            }
        };
        self.status.send_modify(|s| {
            s.received += 1;
            s.dropped += u64::from(dropped);
        });
    }
}

/// Sleeps `delay`; `Err` if `stop` fired first.
async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> Result<(), ()> {
    tokio::select! {
        _ = stop.cancelled() => Err(()),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}
