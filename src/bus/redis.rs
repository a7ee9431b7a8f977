//! The Redis bus: the control API PUBLISHes each validated publish body to one pub/sub channel; a subscriber task
//! applies every body that comes back to the local registry, in the order Redis delivers them. The task
//! reconnects with bounded exponential backoff and stops on the app's cancellation token. While it is not
//! subscribed, publishes are refused (503); when it subscribes again, every held client is re-fetched from its
//! origin and every last id forgotten, since items may have been missed meanwhile.
//!
//! With `bus.transport = "stream"` the body is instead `XADD`ed to a Redis stream and the task reads the stream
//! with `XREAD` from the last entry it applied. After a lost connection it resumes from that entry: what was
//! published meanwhile is applied, in stream order, and nothing is re-fetched. Only when that entry may be gone
//! (trimmed by `MAXLEN`, or Redis lost its data) does it fall back to the re-fetch of every held client.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use redis::aio::{MultiplexedConnection, PubSub};
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{BusError, Status};
use crate::config::{RedisConfig, Startup, Transport};
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

/// Entries asked for per `XREAD`.
const READ_COUNT: usize = 100;

/// Entries asked for per `XRANGE` when reading the stream back at start-up.
const REPLAY_PAGE: usize = 1000;

/// Longest a start-up read of the stream may take.
const REPLAY_LIMIT: Duration = Duration::from_secs(30);

/// A stream entry id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EntryId(u64, u64);

impl EntryId {
    /// Before any entry: reading from it reads the whole stream.
    const ZERO: EntryId = EntryId(0, 0);

    fn parse(id: &[u8]) -> Option<EntryId> {
        let (ms, seq) = std::str::from_utf8(id).ok()?.split_once('-')?;
        Some(EntryId(ms.parse().ok()?, seq.parse().ok()?))
    }

    /// The smallest id after this one: no entry can lie between the two.
    fn successor(self) -> EntryId {
        match self.1.checked_add(1) {
            Some(seq) => EntryId(self.0, seq),
            None => EntryId(self.0.saturating_add(1), 0),
        }
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// A live link to Redis for the subscriber task.
enum Link {
    /// A pub/sub subscription.
    PubSub(PubSub),
    /// A connection reading the stream from after `from`, and what to do about the clients held meanwhile.
    Stream {
        conn: MultiplexedConnection,
        from: EntryId,
        recover: Recover,
    },
}

/// What a (re)connection does to the registry before publishes are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recover {
    /// Nothing was missed: the read resumes after the last entry applied.
    Nothing,
    /// The first read of this process: the stream's recent entries were read back into the last ids and
    /// histories (`replay`), which are current; clients parked before that are re-fetched.
    Refetch,
    /// Entries were missed and are gone: every last id forgotten, every held client re-fetched.
    Forget,
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
                let link = bus.subscribe(None).await.map_err(|e| BusError::Startup {
                    url: config.redacted_url(),
                    reason: e.to_string().replace('\n', " "),
                })?;
                bus.subscribed(&link);
                Some(link)
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
        if self.config.transport == Transport::Stream {
            // The entry id Redis gives is the order every instance applies it in.
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&self.config.stream_key)
                .arg("MAXLEN")
                .arg("~")
                .arg(self.config.stream_max_len)
                .arg("*")
                .arg("payload")
                .arg(raw.as_ref());
            return match tokio::time::timeout(limit, cmd.query_async::<Value>(conn)).await {
                Err(_) => Err(BusError::Timeout(limit)),
                Ok(Err(e)) => Err(BusError::Redis(e)),
                Ok(Ok(_)) => Ok(()),
            };
        }
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
    async fn run(self: Arc<Self>, mut first: Option<Link>, stop: CancellationToken) {
        let mut delay = self.config.reconnect_min;
        let mut failures = 0u32;
        // Stream transport: the last entry applied here (its successor is the next to apply).
        let mut last: Option<EntryId> = None;
        loop {
            let link = match first.take() {
                Some(link) => link,
                None => {
                    let attempt = tokio::select! {
                        _ = stop.cancelled() => return,
                        attempt = self.subscribe(last) => attempt,
                    };
                    match attempt {
                        Ok(link) => {
                            self.subscribed(&link);
                            link
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
            let ended = match link {
                Link::PubSub(pubsub) => self.listen(pubsub, &stop).await,
                Link::Stream { conn, from, .. } => {
                    last = Some(from);
                    self.read_stream(conn, &mut last, &stop).await
                }
            };
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

    /// Connects and subscribes (pub/sub), or connects and finds where to read the stream from after `last`,
    /// within the connect timeout.
    async fn subscribe(&self, last: Option<EntryId>) -> Result<Link, BusError> {
        let limit = self.config.connect_timeout;
        let subscribe = async {
            if self.config.transport == Transport::Stream {
                // Its own connection: a blocked XREAD would hold up any other command sent on it. The answer
                // may take up to the BLOCK time, which `read_stream` bounds itself.
                let settings = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(limit))
                    .set_response_timeout(None);
                let conn = self
                    .client
                    .get_multiplexed_async_connection_with_config(&settings)
                    .await
                    .map_err(BusError::Redis)?;
                return Ok(Link::Stream {
                    conn,
                    from: EntryId::ZERO,
                    recover: Recover::Nothing,
                });
            }
            let mut pubsub = self
                .client
                .get_async_pubsub()
                .await
                .map_err(BusError::Redis)?;
            pubsub
                .subscribe(&self.config.channel)
                .await
                .map_err(BusError::Redis)?;
            Ok(Link::PubSub(pubsub))
        };
        let link = match tokio::time::timeout(limit, subscribe).await {
            Err(_) => return Err(BusError::Timeout(limit)),
            Ok(link) => link?,
        };
        // Each command of these is bounded by the command timeout; reading back a long stream may take longer
        // than the connect timeout.
        match link {
            Link::Stream { mut conn, .. } => {
                let (from, recover) = self.resume_point(&mut conn, last).await?;
                if recover == Recover::Refetch {
                    if let Err(e) = self.replay(&mut conn, from).await {
                        // Part of it may be recorded: the next attempt reads it all again from a clean start.
                        self.registry.recover();
                        return Err(e);
                    }
                }
                Ok(Link::Stream {
                    conn,
                    from,
                    recover,
                })
            }
            link => Ok(link),
        }
    }

    /// Where to read the stream from, and what becomes of held clients. First connection: from the stream's
    /// current end (its last entry id, not `$`, so that a retry cannot skip what came meanwhile), after reading
    /// back the entries before it (`replay`), and held clients are re-fetched. Again after `last`: from `last`,
    /// with nothing to do, if every entry after it is still in the stream; if not (trimmed past it, the stream
    /// gone, or its ids went back: Redis lost its data), every id forgotten and every held client re-fetched,
    /// then from the current end.
    async fn resume_point(
        &self,
        conn: &mut MultiplexedConnection,
        last: Option<EntryId>,
    ) -> Result<(EntryId, Recover), BusError> {
        let newest = self.edge(conn, "XREVRANGE", "+", "-").await?;
        let Some(last) = last else {
            return Ok((newest.unwrap_or(EntryId::ZERO), Recover::Refetch));
        };
        let oldest = self.edge(conn, "XRANGE", "-", "+").await?;
        let resumable = match (oldest, newest) {
            (Some(oldest), Some(newest)) => newest >= last && oldest <= last.successor(),
            // Empty when this instance started reading, and still empty: nothing was missed.
            (None, None) => last == EntryId::ZERO,
            _ => false,
        };
        if resumable {
            return Ok((last, Recover::Nothing));
        }
        tracing::warn!(
            stream = %self.config.stream_key, last_applied = %last,
            oldest = ?oldest.map(|id| id.to_string()), newest = ?newest.map(|id| id.to_string()),
            "bus: the stream no longer holds the entries after the last one applied (trimmed, or Redis lost \
             its data); re-fetching held clients"
        );
        Ok((newest.unwrap_or(EntryId::ZERO), Recover::Forget))
    }

    /// Reads back the stream's entries up to `until` that are recent enough to matter (within the registry's
    /// replay window of Redis's clock: last ids and history items older than that would be forgotten anyway),
    /// and records them in the registry without releasing anyone: an instance started after them knows the same
    /// last ids as the others, and catches up a client behind from its history. Pages of `REPLAY_PAGE` entries.
    async fn replay(
        &self,
        conn: &mut MultiplexedConnection,
        until: EntryId,
    ) -> Result<(), BusError> {
        if until == EntryId::ZERO {
            return Ok(());
        }
        let limit = self.config.command_timeout;
        let time = tokio::time::timeout(limit, redis::cmd("TIME").query_async::<Vec<u64>>(conn))
            .await
            .map_err(|_| BusError::Timeout(limit))?
            .map_err(BusError::Redis)?;
        let (redis_now_ms, here_now) = match time.as_slice() {
            [secs, micros] => (secs * 1000 + micros / 1000, Instant::now()),
            _ => return Err(self.unexpected("TIME", "not [seconds, microseconds]")),
        };
        let window = u64::try_from(self.registry.replay_window().as_millis()).unwrap_or(u64::MAX);
        let mut from = EntryId(redis_now_ms.saturating_sub(window), 0);
        let (mut entries_read, mut items) = (0usize, 0usize);
        let deadline = here_now + REPLAY_LIMIT;
        while from <= until {
            if Instant::now() > deadline {
                // Too much to read: what was read is dropped, and held clients are re-fetched, as when the
                // stream's entries are lost.
                tracing::warn!(
                    stream = %self.config.stream_key, entries = entries_read, limit_secs = REPLAY_LIMIT.as_secs(),
                    "bus: reading the stream back takes too long; starting without it"
                );
                self.registry.recover();
                return Ok(());
            }
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(&self.config.stream_key)
                .arg(from.to_string())
                .arg(until.to_string())
                .arg("COUNT")
                .arg(REPLAY_PAGE);
            let reply = tokio::time::timeout(limit, cmd.query_async::<Value>(conn))
                .await
                .map_err(|_| BusError::Timeout(limit))?
                .map_err(BusError::Redis)?;
            let page = entries(reply).map_err(|what| self.unexpected("XRANGE", what))?;
            let Some((last, _)) = page.last() else { break };
            from = last.successor();
            entries_read += page.len();
            for (id, payload) in page {
                // The entry's own time, from its id (Redis's clock), on this process's clock.
                let age = Duration::from_millis(redis_now_ms.saturating_sub(id.0));
                let accepted = here_now.checked_sub(age).unwrap_or(here_now);
                let parsed = payload
                    .filter(|p| p.len() <= self.max_message)
                    .map(|p| item::parse_body_at(&p, accepted));
                match parsed {
                    Some(Ok(list)) => {
                        items += list.len();
                        for item in list {
                            self.registry.replay(&Arc::new(item));
                        }
                    }
                    _ => {
                        tracing::debug!(id = %id, "bus: stream entry not read back: no valid publish body")
                    }
                }
            }
        }
        self.registry.replay_done();
        tracing::info!(
            stream = %self.config.stream_key, entries = entries_read, items, until = %until,
            "bus: read back the stream's recent entries into last ids and histories"
        );
        Ok(())
    }

    /// The id of the first entry of the stream in `XRANGE`/`XREVRANGE` order, if any.
    async fn edge(
        &self,
        conn: &mut MultiplexedConnection,
        command: &str,
        start: &str,
        end: &str,
    ) -> Result<Option<EntryId>, BusError> {
        let limit = self.config.command_timeout;
        let mut cmd = redis::cmd(command);
        cmd.arg(&self.config.stream_key)
            .arg(start)
            .arg(end)
            .arg("COUNT")
            .arg(1);
        let reply = tokio::time::timeout(limit, cmd.query_async::<Value>(conn))
            .await
            .map_err(|_| BusError::Timeout(limit))?
            .map_err(BusError::Redis)?;
        let entries = entries(reply).map_err(|what| self.unexpected(command, what))?;
        Ok(entries.first().map(|(id, _)| *id))
    }

    fn unexpected(&self, command: &str, what: &str) -> BusError {
        BusError::Redis(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "unexpected reply",
            format!("{command} {}: {what}", self.config.stream_key),
        )))
    }

    /// Reads the stream after `last` and applies each entry in order, moving `last` on, until the connection is
    /// lost or `stop` fires. Each `XREAD` blocks at most `ping_interval`; no answer within that plus
    /// `command_timeout` is a lost connection (a frozen Redis), as a PING not answered.
    async fn read_stream(
        &self,
        mut conn: MultiplexedConnection,
        last: &mut Option<EntryId>,
        stop: &CancellationToken,
    ) -> Ended {
        let block = self.config.ping_interval;
        let limit = block + self.config.command_timeout;
        let block_ms = u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1);
        loop {
            let from = last.unwrap_or(EntryId::ZERO);
            let mut cmd = redis::cmd("XREAD");
            cmd.arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(&self.config.stream_key)
                .arg(from.to_string());
            let reply = tokio::select! {
                _ = stop.cancelled() => return Ended::Stopped,
                reply = tokio::time::timeout(limit, cmd.query_async::<Value>(&mut conn)) => reply,
            };
            let reply = match reply {
                Err(_) => return Ended::Lost(format!("no answer to XREAD within {limit:?}")),
                Ok(Err(e)) => return Ended::Lost(format!("XREAD failed: {e}")),
                Ok(Ok(reply)) => reply,
            };
            let entries = match read_reply(reply) {
                Ok(entries) => entries,
                Err(what) => return Ended::Lost(self.unexpected("XREAD", what).to_string()),
            };
            if entries.is_empty() {
                // The BLOCK time passed with nothing new: Redis answered, as a PING would.
                self.status.send_modify(|s| s.pings += 1);
            }
            for (id, payload) in entries {
                match payload {
                    Some(payload) => self.apply(&payload),
                    None => {
                        tracing::warn!(id = %id, "bus: stream entry dropped: no payload field");
                        self.status.send_modify(|s| {
                            s.received += 1;
                            s.dropped += 1;
                        });
                    }
                }
                *last = Some(id);
            }
        }
    }

    /// A subscription is (again) in place. Items published while there was none were not applied here: every
    /// held client is re-fetched from its origin and every last id forgotten (their values may be stale). Only
    /// then are publishes accepted again. A stream read resumed after the last entry applied missed nothing: no
    /// re-fetch.
    fn subscribed(&self, link: &Link) {
        let recover = match link {
            Link::PubSub(_) => Recover::Forget,
            Link::Stream { recover, .. } => *recover,
        };
        let refetched = match recover {
            Recover::Nothing => 0,
            Recover::Refetch => self.registry.refetch_all(),
            Recover::Forget => self.registry.recover(),
        };
        self.status.send_modify(|s| {
            s.connected = true;
            s.connects += 1;
            s.refetched += refetched as u64;
        });
        tracing::info!(
            url = %self.config.redacted_url(), transport = ?self.config.transport,
            channel = %self.config.channel, refetched,
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

/// One stream entry: its id and its `payload` field, if it has one.
type Entry = (EntryId, Option<Vec<u8>>);

/// The entries of an `XREAD` reply for one stream: nil (the BLOCK time passed), `[[key, entries]]` (RESP2) or
/// `{key: entries}` (RESP3).
fn read_reply(reply: Value) -> Result<Vec<Entry>, &'static str> {
    let streams = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|stream| match stream {
                Value::Array(pair) if pair.len() == 2 => {
                    pair.into_iter().nth(1).ok_or("no entries")
                }
                _ => Err("a stream is not [key, entries]"),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => return Err("neither nil, an array nor a map"),
    };
    let mut all = Vec::new();
    for list in streams {
        all.extend(entries(list)?);
    }
    Ok(all)
}

/// A list of stream entries, `[[id, [field, value, ...]], ...]`.
fn entries(list: Value) -> Result<Vec<Entry>, &'static str> {
    let Value::Array(list) = list else {
        return match list {
            Value::Nil => Ok(Vec::new()),
            _ => Err("entries are not an array"),
        };
    };
    list.into_iter()
        .map(|entry| {
            let Value::Array(parts) = entry else {
                return Err("an entry is not an array");
            };
            let mut parts = parts.into_iter();
            let id = match parts.next() {
                Some(Value::BulkString(id)) => EntryId::parse(&id),
                Some(Value::SimpleString(id)) => EntryId::parse(id.as_bytes()),
                _ => None,
            }
            .ok_or("an entry id is not <ms>-<seq>")?;
            let fields: Vec<(Value, Value)> = match parts.next() {
                Some(Value::Array(flat)) => {
                    let mut flat = flat.into_iter();
                    let mut pairs = Vec::new();
                    while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                        pairs.push((k, v));
                    }
                    pairs
                }
                Some(Value::Map(pairs)) => pairs,
                _ => Vec::new(),
            };
            let payload = fields.into_iter().find_map(|(k, v)| match (k, v) {
                (Value::BulkString(k), Value::BulkString(v)) if k == b"payload" => Some(v),
                _ => None,
            });
            Ok((id, payload))
        })
        .collect()
}

/// Sleeps `delay`; `Err` if `stop` fired first.
async fn sleep_or_stop(delay: Duration, stop: &CancellationToken) -> Result<(), ()> {
    tokio::select! {
        _ = stop.cancelled() => Err(()),
        _ = tokio::time::sleep(delay) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn entry_ids_order_as_redis_orders_them() {
        let id = EntryId::parse(b"1700000000000-7").unwrap();
        assert_eq!(id, EntryId(1_700_000_000_000, 7));
        assert_eq!(id.to_string(), "1700000000000-7");
        assert!(EntryId::parse(b"9-0").unwrap() < EntryId::parse(b"10-0").unwrap());
        assert_eq!(id.successor(), EntryId(1_700_000_000_000, 8));
        assert_eq!(EntryId(5, u64::MAX).successor(), EntryId(6, 0));
        assert_eq!(EntryId::parse(b"12"), None);
        assert_eq!(EntryId::parse(b"a-1"), None);
    }

    #[test]
    fn xread_replies_in_resp2_and_resp3() {
        assert!(read_reply(Value::Nil).unwrap().is_empty());
        let list = Value::Array(vec![
            entry("1-0", &["payload", "one"]),
            entry("1-1", &["other", "x"]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("k"), list.clone()])]);
        let resp3 = Value::Map(vec![(bulk("k"), list)]);
        for reply in [resp2, resp3] {
            let got = read_reply(reply).unwrap();
            assert_eq!(
                got,
                vec![
                    (EntryId(1, 0), Some(b"one".to_vec())),
                    (EntryId(1, 1), None)
                ]
            );
        }
        assert!(read_reply(Value::Int(1)).is_err());
        assert!(entries(Value::Array(vec![entry("bad", &[])])).is_err());
    }
}
