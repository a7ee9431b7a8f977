//! The publish bus: where a validated publish goes. `Memory` (the default) applies its items to this process's
//! registry at once. `Redis` sends the publish body to one Redis pub/sub channel (or, with
//! `bus.transport = "stream"`, adds it to one Redis stream) and applies nothing itself: every instance
//! subscribed to that channel or reading that stream, this one included, applies the body when it comes back, so
//! all instances apply the same items in the same order and keep the same last id per channel (docs/scaling.md).

pub(crate) mod redis;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::BusConfig;
use crate::hold::Registry;
use crate::item::Item;

/// Why the bus cannot take a publish now (the control API answers 503), or could not start.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The subscription to Redis is down: a publish now would not reach this instance's clients.
    #[error("the Redis bus is not connected")]
    NotConnected,
    /// Redis could not be reached or refused a command.
    #[error("Redis: {0}")]
    Redis(#[source] ::redis::RedisError),
    /// Redis did not answer in time.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis took the PUBLISH but no instance was subscribed (not even this one): nobody would deliver it.
    #[error("no instance is subscribed to the Redis channel")]
    NoSubscriber,
    /// `bus.startup = "fail"` and the first subscription failed.
    #[error("cannot subscribe to the Redis bus at {url} (bus.startup = \"fail\"): {reason}")]
    Startup {
        /// The URL, password redacted.
        url: String,
        /// Why, on one line.
        reason: String,
    },
}

/// What the bus has done since start, and whether it is connected. Memory: always connected, no counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// Subscribed to Redis now (memory: always).
    pub connected: bool,
    /// Subscriptions made (the first, then one per reconnection).
    pub connects: u64,
    /// Publish bodies sent to Redis.
    pub published: u64,
    /// Publishes refused with a 503 (bus down, Redis error or timeout).
    pub refused: u64,
    /// Messages received from the subscription, or entries read from the stream (applied or dropped).
    pub received: u64,
    /// Messages received that were dropped (not a valid publish body, or too large).
    pub dropped: u64,
    /// Held clients told to re-fetch from their origin when a subscription was (re-)made.
    pub refetched: u64,
    /// Health-check PINGs answered on the subscription (stream transport: `XREAD`s that returned nothing after
    /// their block time).
    pub pings: u64,
}

/// The bus handle: cheap to clone.
#[derive(Clone)]
pub(crate) enum Bus {
    /// One process: items go straight to the registry.
    Memory(Registry),
    /// Shared through Redis pub/sub.
    Redis(Arc<redis::RedisBus>),
}

impl Bus {
    /// Builds the bus from config. With Redis, the subscriber task is spawned on `tasks` and stops on `stop`; with
    /// `bus.startup = "fail"` the first subscription is made here and its failure is returned.
    pub(crate) async fn start(
        config: &BusConfig,
        registry: Registry,
        max_message: usize,
        stop: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> Result<Bus, BusError> {
        let Some(redis_config) = &config.redis else {
            return Ok(Bus::Memory(registry));
        };
        let (bus, subscriber) =
            redis::RedisBus::start(redis_config, registry, max_message, stop).await?;
        tasks.spawn(subscriber);
        Ok(Bus::Redis(bus))
    }

    /// Publishes a validated publish: `raw` is its body as received, `items` what it parsed into. Memory applies
    /// the items in order; Redis PUBLISHes `raw` and leaves applying to the subscription. An error means nothing
    /// was accepted (answer 503).
    ///
    /// # Cancel safety
    /// Dropping the future may leave a PUBLISH sent or not, as with any request whose answer is not awaited.
    pub(crate) async fn publish(&self, raw: Bytes, items: Vec<Item>) -> Result<(), BusError> {
        match self {
            Bus::Memory(registry) => {
                apply(registry, items);
                Ok(())
            }
            Bus::Redis(bus) => bus.publish(&raw).await,
        }
    }

    /// `"memory"` or `"redis"`, for logs.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Bus::Memory(_) => "memory",
            Bus::Redis(_) => "redis",
        }
    }

    /// Whether a publish can be accepted now (memory: always).
    pub(crate) fn is_connected(&self) -> bool {
        self.status().borrow().connected
    }

    /// The bus status, to read or to wait on (readiness, metrics, tests).
    pub(crate) fn status(&self) -> watch::Receiver<Status> {
        match self {
            Bus::Memory(_) => {
                // The sender is dropped: the value stays readable and never changes.
                watch::channel(Status {
                    connected: true,
                    ..Status::default()
                })
                .1
            }
            Bus::Redis(bus) => bus.status(),
        }
    }

    /// How long a publisher refused with a 503 should wait before retrying.
    pub(crate) fn retry_after(&self) -> Duration {
        match self {
            Bus::Memory(_) => Duration::from_secs(1),
            Bus::Redis(bus) => bus.retry_after(),
        }
    }
}

/// Applies items to the registry in order, as one publish: the one place both buses deliver through. Returns
/// how many held clients they were handed to.
pub(crate) fn apply(registry: &Registry, items: Vec<Item>) -> usize {
    let mut delivered = 0;
    for item in items {
        let item = Arc::new(item);
        let n = registry.publish(&item);
        tracing::debug!(channel = %item.channel, id = ?item.id, delivered = n, "published");
        delivered += n;
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grip::ChannelSub;
    use crate::hold::Delivery;

    fn registry() -> Registry {
        Registry::new((&crate::config::Config::default()).into())
    }

    #[tokio::test]
    async fn memory_applies_items_in_order() {
        let r = registry();
        let mut tasks = JoinSet::new();
        let bus = Bus::start(
            &BusConfig::default(),
            r.clone(),
            1000,
            CancellationToken::new(),
            &mut tasks,
        )
        .await
        .unwrap();
        assert_eq!(bus.kind(), "memory");
        assert!(bus.is_connected());
        assert!(tasks.is_empty(), "the memory bus runs no task");
        let mut hold = r
            .park(
                vec![ChannelSub {
                    name: "c".into(),
                    prev_id: None,
                    filters: vec![],
                }],
                true,
                None,
            )
            .unwrap();
        let body = br#"{"items": [
            {"channel": "c", "id": "1", "http-response": {"body": "first"}},
            {"channel": "c", "id": "2", "http-response": {"body": "second"}}
        ]}"#;
        let items = crate::item::parse_body(body).unwrap();
        bus.publish(Bytes::from_static(body), items).await.unwrap();
        let Delivery::Item(release) = hold.recv().await else {
            panic!("expected an item");
        };
        assert_eq!(
            release.item.id.as_deref(),
            Some("1"),
            "the first item released it"
        );
        assert_eq!(r.last_id("c").as_deref(), Some("2"));
    }
}
