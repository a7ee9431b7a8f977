//! The hold registry: which clients are parked on which channels, and the last published id per channel.
//! `Registry` is a cheap handle (an `Arc` inside); a parked request owns a `Parked` guard that unparks on drop.

mod channel;
mod feed;
mod history;
mod release;
mod waiter;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{Config, HistoryConfig, LastIdsConfig, PublishConfig};
use crate::grip::ChannelSub;
use crate::h1::{DirectWrite, PreEncoded};
use crate::item::Item;
use channel::{Channel, Kind, Member, ParkOutcome};
pub(crate) use feed::{Fed, Feed, FeedEnd};
use history::Keeper;
pub(crate) use release::{shared_response, Release};
use std::task::Waker;
pub(crate) use waiter::Direct;
use waiter::{Told, Waiter, Wrote};

/// The map's size is checked against its capacity once every this many publishes.
const CAPACITY_CHECK_EVERY: u64 = 64;

/// A release to more parked clients than this is split between the runtime's worker threads.
const SPLIT_RELEASE_AT: usize = 1024;

/// Hands each item to the waiters it took, in order, and writes each item to the idle streams whose socket it
/// claimed: first every client's response is written to its socket where the release can do that itself (see
/// [`Waiter::deliver`]), then the clients' tasks are woken to finish. A release to many clients is split between
/// the runtime's worker threads. Runs with no map guard held. Returns how many clients the items were handed to
/// (a part handed to another thread counts as handed).
fn deliver(
    inner: &Arc<Inner>,
    deliveries: Vec<(Arc<Release>, channel::Waiters)>,
    writes: Vec<(Arc<Release>, Vec<Arc<Feed>>)>,
) -> usize {
    let mut delivered = 0;
    for (release, mut feeds) in writes {
        for part in split_off_parts(&mut feeds) {
            delivered += part.len();
            let (release, inner) = (release.clone(), inner.clone());
            tokio::spawn(async move { write_out(&inner, &release, part) });
        }
        delivered += feeds.len();
        write_out(inner, &release, feeds);
    }
    let mut wake = Vec::new();
    for (release, waiters) in deliveries {
        let mut waiters: Vec<Arc<Waiter>> = waiters.into_values().collect();
        for part in split_off_parts(&mut waiters) {
            delivered += part.len();
            let (release, inner) = (release.clone(), inner.clone());
            tokio::spawn(async move {
                let mut wake = Vec::with_capacity(part.len());
                hand_out(&inner, &release, part, &mut wake);
                wake.into_iter().for_each(Waker::wake);
            });
        }
        delivered += hand_out(inner, &release, waiters, &mut wake);
    }
    wake.into_iter().for_each(Waker::wake);
    delivered
}

/// Writes `release` to each stream whose socket its push claimed.
fn write_out(inner: &Inner, release: &Release, feeds: Vec<Arc<Feed>>) {
    let mut whole = 0;
    for feed in feeds {
        whole += u64::from(feed.write_claimed(release));
    }
    inner.stream_written.fetch_add(whole, Ordering::Relaxed);
}

/// Hands `release` to each waiter, collecting the tasks to wake. Returns how many took it.
fn hand_out(
    inner: &Inner,
    release: &Arc<Release>,
    waiters: Vec<Arc<Waiter>>,
    wake: &mut Vec<Waker>,
) -> usize {
    let (mut taken, mut all, mut part) = (0, 0, 0);
    for waiter in waiters {
        if let Told::Yes(waker, wrote) = waiter.deliver(Delivery::Item(release.clone())) {
            taken += 1;
            all += u64::from(wrote == Wrote::All);
            part += u64::from(wrote == Wrote::Part);
            wake.extend(waker);
        }
    }
    inner.written_all.fetch_add(all, Ordering::Relaxed);
    inner.written_part.fetch_add(part, Ordering::Relaxed);
    taken
}

/// Splits a large release's clients into one part per other worker thread of the runtime (`waiters` keeps the
/// part this thread hands out); nothing for a small release, outside a multi-thread runtime, or with one worker.
fn split_off_parts<T>(waiters: &mut Vec<T>) -> Vec<Vec<T>> {
    if waiters.len() < SPLIT_RELEASE_AT {
        return Vec::new();
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return Vec::new();
    };
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return Vec::new();
    }
    let threads = handle.metrics().num_workers();
    let per_part = waiters.len().div_ceil(threads.max(1));
    let mut parts = Vec::new();
    while waiters.len() > per_part {
        let at = waiters.len() - per_part;
        parts.push(waiters.split_off(at));
    }
    parts
}

/// Tells one parked client and wakes its task. `false`: another delivery took it first, or it stopped waiting.
fn tell(waiter: &Waiter, delivery: Delivery) -> bool {
    match waiter.deliver(delivery) {
        Told::Yes(waker, _) => {
            waker.into_iter().for_each(Waker::wake);
            true
        }
        Told::No => false,
    }
}

/// What a parked client is told.
#[derive(Debug, Clone)]
pub(crate) enum Delivery {
    /// An item was published on one of its channels.
    Item(Arc<Release>),
    /// An item was published on one of its channels, and the release wrote the first `written` bytes of its
    /// shared encoding (`encoded`) to the client's socket: the client's answer, of which the rest is to write.
    Written {
        /// The release.
        release: Arc<Release>,
        /// The response written.
        encoded: PreEncoded,
        /// How many of its bytes the socket took.
        written: usize,
    },
    /// The proxy is shutting down: answer with the timeout response now.
    Shutdown,
    /// What the client waits for may have been missed (recovery, a bus outage): re-fetch from the origin.
    Refetch,
}

/// Why a client could not be parked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParkError {
    /// The channel's last id is not the hold's prev-id: the client missed an item.
    #[error("channel {channel:?} is past prev-id {prev_id:?}")]
    Stale {
        /// The channel.
        channel: Box<str>,
        /// The prev-id the hold gave.
        prev_id: Box<str>,
    },
    /// The registry is closed (shutting down).
    #[error("shutting down")]
    Closed,
    /// As many clients are held as allowed.
    #[error("too many held clients")]
    Full,
    /// The channel's last id is not the hold's prev-id, and the item that follows the prev-id is in the
    /// channel's history: the response hold's answer, at once.
    #[error("channel {channel:?} is past the hold's prev-id; the next item is in its history")]
    InHistory {
        /// The channel.
        channel: Box<str>,
        /// The item that follows the hold's prev-id.
        next: NextItem,
    },
    /// As many clients are held on this channel as `limits.channel_max_holds` allows.
    #[error("too many held clients on channel {channel:?}")]
    ChannelFull {
        /// The channel.
        channel: Box<str>,
        /// The limit.
        limit: usize,
    },
}

pub(crate) use crate::grip::OWN_CHANNEL;

/// The item a response hold behind its channel gets from the history. Equal when it is the same release.
#[derive(Debug, Clone)]
pub(crate) struct NextItem(pub(crate) Arc<Release>);

impl PartialEq for NextItem {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for NextItem {}

/// The registry's bounds and rules.
#[derive(Debug, Clone)]
pub(crate) struct RegistryConfig {
    /// Last-id memory.
    pub last_ids: LastIdsConfig,
    /// Ordering and duplicates.
    pub publish: PublishConfig,
    /// Most parked clients at once.
    pub max_held: usize,
    /// Per-channel history.
    pub history: HistoryConfig,
    /// Most members (holds and streams) of one channel (`usize::MAX`: no limit).
    pub channel_max_holds: usize,
}

impl From<&Config> for RegistryConfig {
    fn from(c: &Config) -> Self {
        RegistryConfig {
            last_ids: c.last_ids.clone(),
            publish: c.publish.clone(),
            max_held: c.limits.max_held,
            history: c.history.clone(),
            channel_max_holds: c.fair_use.channel_max_holds.unwrap_or(usize::MAX),
        }
    }
}

/// The shared registry. Clone it freely.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    /// Channel name to state. Invariant: no guard into this map lives outside the small sync fns below, and none
    /// is held while touching another key (dashmap may deadlock otherwise).
    channels: DashMap<Box<str>, Channel, ahash::RandomState>,
    /// Source of waiter ids; unique for the process lifetime.
    next_waiter: AtomicU64,
    /// Held clients (live `Parked` and `Subscription` guards).
    held: AtomicUsize,
    /// Live `Subscription` guards (streams).
    streams: AtomicUsize,
    /// Woken whenever `held` changes, for tests and tools that wait for parks.
    held_changed: Notify,
    /// Places taken against `max_held`: parked clients plus parks in progress. Reserved before a park inserts
    /// anything, so that parks racing each other cannot overshoot the bound; `held` counts only parked clients.
    reserved: AtomicUsize,
    /// Tasks in `wait_held` now: `held_changed` is only notified when someone waits, because `Notify` takes a
    /// mutex on every notification and every park and unpark would otherwise contend on it.
    watchers: AtomicUsize,
    /// Set once by `close()`; parks fail afterwards.
    closed: AtomicBool,
    /// Bounds on remembered last ids.
    limits: LastIdsConfig,
    /// Ordering and duplicate rules of publishes.
    sequencing: channel::Sequencing,
    /// Most parked clients at once.
    max_held: usize,
    /// Most members of one channel.
    channel_max_holds: usize,
    /// Woken when the map grows past its capacity, so the sweeper runs early.
    over_capacity: Notify,
    /// Items published, for checking the capacity now and then.
    publishes: AtomicU64,
    /// Released clients whose whole response the release wrote to their socket itself.
    written_all: AtomicU64,
    /// Released clients whose socket took part of the response from the release (their task wrote the rest).
    written_part: AtomicU64,
    /// Stream items a publish wrote whole to an idle stream's socket (no wake-up of its connection).
    stream_written: AtomicU64,
    /// Per-channel history, when it is on.
    history: Option<Keeper>,
}

impl Registry {
    /// An empty registry.
    pub(crate) fn new(config: RegistryConfig) -> Self {
        let RegistryConfig {
            last_ids: limits,
            publish,
            max_held,
            history,
            channel_max_holds,
        } = config;
        Registry {
            inner: Arc::new(Inner {
                channels: DashMap::with_hasher(ahash::RandomState::new()),
                next_waiter: AtomicU64::new(1),
                held: AtomicUsize::new(0),
                streams: AtomicUsize::new(0),
                held_changed: Notify::new(),
                watchers: AtomicUsize::new(0),
                reserved: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
                limits,
                sequencing: channel::Sequencing {
                    wait: publish.ordering_wait,
                    max_pending: publish.ordering_max_pending,
                    duplicate_window: publish.duplicate_window,
                },
                max_held,
                channel_max_holds,
                over_capacity: Notify::new(),
                publishes: AtomicU64::new(0),
                written_all: AtomicU64::new(0),
                written_part: AtomicU64::new(0),
                stream_written: AtomicU64::new(0),
                history: history.enabled().then(|| Keeper::new(history)),
            }),
        }
    }

    /// Parks a client on `subs`. Each channel is checked (prev-id against the last id) and joined under its entry
    /// lock, so a publish either comes before (and the check sees its id) or after (and finds the waiter).
    ///
    /// `check_prev_id: false` parks whatever the prev-ids say: for a request that was already re-fetched once, so
    /// that an origin still behind cannot make it loop. (Pushpin instead forgets the channel's last id, which lets
    /// other clients that are behind park too, waiting for an item that has gone.)
    ///
    /// `direct`: the client's socket and held response, when the release may write the response itself.
    ///
    /// The channels are kept by the parked client (one allocation with its other state), not copied.
    pub(crate) fn park(
        &self,
        subs: Vec<ChannelSub>,
        check_prev_id: bool,
        direct: Option<Direct>,
    ) -> Result<Parked, ParkError> {
        let waiter = Arc::new(Waiter::new(subs, direct));
        let (id, _) = self.join(waiter.subs(), check_prev_id, Member::Waiter(&waiter))?;
        Ok(Parked {
            registry: self.clone(),
            id,
            waiter,
        })
    }

    /// Subscribes a stream to `subs`, with a feed holding at most `queue_limit` bytes. The prev-ids are checked as
    /// [`Registry::park`] checks them (unless `check_prev_id` is false). Streams count toward `max_held`.
    ///
    /// `direct`: the client's socket, for a chunked stream, when publishes may write content to it while the stream
    /// is idle.
    pub(crate) fn subscribe(
        &self,
        subs: &[ChannelSub],
        check_prev_id: bool,
        queue_limit: usize,
        direct: Option<DirectWrite>,
    ) -> Result<Subscription, ParkError> {
        let feed = Arc::new(Feed::new(queue_limit, direct));
        let (id, replayed) = self.join(subs, check_prev_id, Member::Stream(&feed))?;
        Ok(Subscription {
            registry: self.clone(),
            id,
            replayed,
            channels: subs.iter().map(|s| s.name.clone()).collect(),
            feed,
        })
    }

    /// Takes a place against `max_held` and adds `member` to each channel of `subs`, checking prev-ids under each
    /// channel's entry lock, so that a publish either comes before (and the check sees its id) or after (and finds
    /// the member). Returns the member's id, and how many items a stream behind was given from the history; on an
    /// error nothing is left behind.
    fn join(
        &self,
        subs: &[ChannelSub],
        check_prev_id: bool,
        member: Member<'_>,
    ) -> Result<(u64, usize), ParkError> {
        if self.is_closed() {
            return Err(ParkError::Closed);
        }
        if self.inner.reserved.fetch_add(1, Ordering::AcqRel) >= self.inner.max_held {
            self.inner.reserved.fetch_sub(1, Ordering::AcqRel);
            return Err(ParkError::Full);
        }
        let id = self.inner.next_waiter.fetch_add(1, Ordering::Relaxed);
        let keeper = self.inner.history.as_ref();
        let max_members = self.inner.channel_max_holds;
        let mut replayed = 0;
        for (i, sub) in subs.iter().enumerate() {
            let prev_id = sub.prev_id.as_deref().filter(|_| check_prev_id);
            // The proxy's own channels are not limited: the client is counted on the channel it asked for.
            let max_members = if sub.name.starts_with(OWN_CHANNEL) {
                usize::MAX
            } else {
                max_members
            };
            // The member count is checked under the same entry lock as the join: exact under races.
            let outcome = self.with_channel(&sub.name, |c| {
                if c.waiter_count() + c.stream_count() >= max_members {
                    None
                } else {
                    Some(c.join(id, member, prev_id, keeper))
                }
            });
            let refused = match outcome {
                Some(ParkOutcome::Parked) => continue,
                Some(ParkOutcome::Replayed(n)) => {
                    replayed += n;
                    continue;
                }
                None => ParkError::ChannelFull {
                    channel: sub.name.clone(),
                    limit: max_members,
                },
                Some(ParkOutcome::Stale) => ParkError::Stale {
                    channel: sub.name.clone(),
                    prev_id: sub.prev_id.clone().unwrap_or_default(),
                },
                Some(ParkOutcome::FromHistory(next)) => ParkError::InHistory {
                    channel: sub.name.clone(),
                    next: NextItem(next),
                },
            };
            self.forget_if_idle(&sub.name);
            self.leave(subs[..i].iter().map(|s| &*s.name), id, member.kind());
            self.inner.reserved.fetch_sub(1, Ordering::AcqRel);
            return Err(refused);
        }
        // close() sets the flag before draining: either the drain saw our member, or we see the flag here.
        if self.is_closed() {
            self.leave(subs.iter().map(|s| &*s.name), id, member.kind());
            self.inner.reserved.fetch_sub(1, Ordering::AcqRel);
            return Err(ParkError::Closed);
        }
        if member.kind() == Kind::Stream {
            self.inner.streams.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.held.fetch_add(1, Ordering::SeqCst);
        self.notify_held();
        Ok((id, replayed))
    }

    /// Gives back the place a member took (its guard is dropped).
    fn release_place(&self, kind: Kind) {
        if kind == Kind::Stream {
            self.inner.streams.fetch_sub(1, Ordering::Relaxed);
        }
        self.inner.held.fetch_sub(1, Ordering::SeqCst);
        self.inner.reserved.fetch_sub(1, Ordering::AcqRel);
        self.notify_held();
    }

    /// Publishes an item: drops a duplicate id, queues an item whose predecessor is missing (see
    /// `Channel::publish`), otherwise records its id as the channel's last id and, if it carries an
    /// `http-response`, releases every client parked on the channel. Returns how many clients items were handed to.
    pub(crate) fn publish(&self, item: &Arc<Item>) -> usize {
        // An item without an id on a channel with no entry (nobody held, no last id, nothing waiting) has nothing
        // to record and no one to release: no entry is made for it. A publish to channels without subscribers
        // would otherwise insert and remove one per item. A park racing with this is ordered after it, as if the
        // publish had come first.
        if item.id.is_none() && !self.inner.channels.contains_key(&*item.channel) {
            return 0;
        }
        // No clock read per item: the instant the item was accepted, read once for its whole publish request.
        let now = item.accepted;
        let seq = self.inner.sequencing;
        let keeper = self.inner.history.as_ref();
        let published = self.with_channel(&item.channel, |c| c.publish(item, now, seq, keeper));
        if published.duplicate {
            tracing::debug!(channel = %item.channel, id = ?item.id, "duplicate item dropped");
            return 0;
        }
        if let Some(deadline) = published.queued_until {
            tracing::debug!(channel = %item.channel, id = ?item.id, prev_id = ?item.prev_id, "item waits for its predecessor");
            self.flush_at(&item.channel, deadline);
        }
        // Counting the map's entries takes a read lock on every shard: done every `CAPACITY_CHECK_EVERY` publishes,
        // the map may pass its capacity by that many entries before the sweeper is woken.
        if self
            .inner
            .publishes
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(CAPACITY_CHECK_EVERY)
            && self.inner.channels.len() > self.inner.limits.capacity
        {
            self.inner.over_capacity.notify_one();
        }
        self.forget_if_idle(&item.channel);
        if let Some(keeper) = keeper.filter(|k| k.over_budget()) {
            self.evict_history(keeper);
        }
        deliver(&self.inner, published.deliveries, published.writes)
    }

    /// Records an item published before this process could see it (a Redis stream read back at start-up): its
    /// channel's last id, recent ids and history are set as if it had been published here, at `item.accepted`,
    /// but no client is released or written to by it. Clients parked meanwhile are behind it or not, as any
    /// park is judged against a last id.
    pub(crate) fn replay(&self, item: &Arc<Item>) {
        let now = item.accepted;
        let seq = self.inner.sequencing;
        let keeper = self.inner.history.as_ref();
        self.with_channel(&item.channel, |c| c.record(item, now, seq, keeper));
        self.forget_if_idle(&item.channel);
        if let Some(keeper) = keeper.filter(|k| k.over_budget()) {
            self.evict_history(keeper);
        }
    }

    /// Ends a replay: items still waiting for a predecessor are applied, without handing them out, if their wait
    /// is over (the live instances applied them then), or sent out when it is, as a live publish's would be.
    pub(crate) fn replay_done(&self) {
        let now = Instant::now();
        let seq = self.inner.sequencing;
        let keeper = self.inner.history.as_ref();
        let waiting: Vec<Box<str>> = self
            .inner
            .channels
            .iter()
            .filter(|c| c.pending_until().is_some())
            .map(|c| c.key().clone())
            .collect();
        for name in waiting {
            let due = self.inner.channels.get_mut(&*name).and_then(|mut c| {
                c.flush_expired_as(now, seq, keeper, false);
                c.pending_until()
            });
            match due {
                Some(deadline) => self.flush_at(&name, deadline),
                None => self.forget_if_idle(&name),
            }
        }
    }

    /// How far back a replay at start-up is worth reading: the longest any record of an item is kept (a last id
    /// for `last_ids.ttl`, history items for `history.max_age`).
    pub(crate) fn replay_window(&self) -> std::time::Duration {
        let history = self.inner.history.as_ref().map(|k| k.rules.max_age);
        self.inner.limits.ttl.max(history.unwrap_or_default())
    }

    /// Brings the histories of all channels under their byte budget: drops the histories of the least recently
    /// published channels until the total is a little under it. One publisher at a time does this (a scan of the
    /// map, amortised over the eighth of the budget it frees); the others go on meanwhile.
    fn evict_history(&self, keeper: &Keeper) {
        if keeper.evicting.swap(true, Ordering::Acquire) {
            return;
        }
        let mut kept: Vec<(Instant, Box<str>)> = self
            .inner
            .channels
            .iter()
            .filter(|c| c.history_len().0 > 0)
            .map(|c| (c.published_at, c.key().clone()))
            .collect();
        kept.sort_unstable_by_key(|(at, _)| *at);
        let low_water = keeper.low_water();
        for (_, name) in kept {
            if keeper.totals.bytes() <= low_water {
                break;
            }
            if let Some(mut c) = self.inner.channels.get_mut(&*name) {
                c.clear_history();
            }
            self.forget_if_idle(&name);
        }
        keeper.evicting.store(false, Ordering::Release);
    }

    /// Sends out the channel's waiting items whose time is up, at `deadline`.
    fn flush_at(&self, channel: &str, deadline: Instant) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return; // no runtime (a sync caller): items go out with the next publish on the channel
        };
        let registry = self.clone();
        let channel: Box<str> = channel.into();
        handle.spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let flushed = registry
                .inner
                .channels
                .get_mut(&*channel)
                .map(|mut c| {
                    let keeper = registry.inner.history.as_ref();
                    c.flush_expired(Instant::now(), registry.inner.sequencing, keeper)
                });
            if let Some(flushed) = flushed {
                if !flushed.deliveries.is_empty() {
                    tracing::debug!(%channel, items = flushed.deliveries.len(), "predecessor never came: sending anyway");
                }
                registry.forget_if_idle(&channel);
                if let Some(keeper) = registry.inner.history.as_ref().filter(|k| k.over_budget()) {
                    registry.evict_history(keeper);
                }
                deliver(&registry.inner, flushed.deliveries, flushed.writes);
            }
        });
    }

    /// Refuses new parks and answers every parked client with `Delivery::Shutdown`.
    pub(crate) fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        self.release_all(Delivery::Shutdown, false);
    }

    /// Recovery (`POST /recover`, or a bus back from an outage): forgets every last id, and makes every parked
    /// client re-fetch from its origin. Returns how many clients were told.
    pub(crate) fn recover(&self) -> usize {
        self.release_all(Delivery::Refetch, true)
    }

    /// Makes every parked client re-fetch from its origin, keeping the last ids and histories (they are known to
    /// be current: a bus that read back what it missed). Returns how many clients were told.
    pub(crate) fn refetch_all(&self) -> usize {
        self.release_all(Delivery::Refetch, false)
    }

    fn release_all(&self, delivery: Delivery, forget_ids: bool) -> usize {
        let mut waiters = Vec::new();
        let mut feeds: std::collections::HashMap<*const Feed, Arc<Feed>> = Default::default();
        for mut entry in self.inner.channels.iter_mut() {
            waiters.extend(entry.take_waiters().into_values());
            // Streams stay subscribed: a shutdown ends their feeds, a recovery asks them to catch up.
            feeds.extend(entry.streams().map(|f| (Arc::as_ptr(f), f.clone())));
            if forget_ids {
                // What comes next may not follow on from the history: it goes with the last id.
                entry.last_id = None;
                entry.clear_history();
            }
        }
        if forget_ids {
            self.inner.channels.retain(|_, c| !c.is_idle());
        }
        for feed in feeds.values() {
            match delivery {
                Delivery::Shutdown => feed.end(FeedEnd::Shutdown),
                _ => feed.recover(),
            }
        }
        feeds.len()
            + waiters
                .iter()
                .filter(|waiter| tell(waiter, delivery.clone()))
                .count()
    }

    /// Whether `close()` was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }

    /// Clients held now: response holds and streams.
    pub fn held(&self) -> usize {
        self.inner.held.load(Ordering::SeqCst)
    }

    /// Released clients whose response the release wrote to their socket itself: wholly, and in part (their task
    /// wrote the rest). The others' tasks wrote their whole response.
    pub fn released_by_write(&self) -> (u64, u64) {
        (
            self.inner.written_all.load(Ordering::Relaxed),
            self.inner.written_part.load(Ordering::Relaxed),
        )
    }

    /// Stream items a publish wrote whole to an idle stream's socket, with no wake-up of its connection.
    pub fn stream_items_written(&self) -> u64 {
        self.inner.stream_written.load(Ordering::Relaxed)
    }

    /// Streams open now (they are also counted in [`Registry::held`]).
    pub fn streams(&self) -> usize {
        self.inner.streams.load(Ordering::Relaxed)
    }

    /// Response holds parked on one channel now.
    pub fn held_on(&self, channel: &str) -> usize {
        self.inner
            .channels
            .get(channel)
            .map(|c| c.waiter_count())
            .unwrap_or(0)
    }

    /// Streams subscribed to one channel now.
    pub fn streams_on(&self, channel: &str) -> usize {
        self.inner
            .channels
            .get(channel)
            .map(|c| c.stream_count())
            .unwrap_or(0)
    }

    /// The last id known for a channel.
    pub fn last_id(&self, channel: &str) -> Option<String> {
        self.inner
            .channels
            .get(channel)
            .and_then(|c| c.last_id.as_deref().map(str::to_owned))
    }

    /// Items and bytes in one channel's history.
    pub fn history_of(&self, channel: &str) -> (usize, usize) {
        self.inner
            .channels
            .get(channel)
            .map_or((0, 0), |c| c.history_len())
    }

    /// Items and bytes in every channel's history; `None` when history is off.
    pub fn history_totals(&self) -> Option<(usize, usize)> {
        let totals = &self.inner.history.as_ref()?.totals;
        Some((totals.items(), totals.bytes()))
    }

    /// Channel entries kept (with waiters or a last id).
    pub fn channels(&self) -> usize {
        self.inner.channels.len()
    }

    /// Calls `f` with each channel entry's name, response holds, streams and last id, for introspection
    /// (`GET /channels`). `f` runs while a shard of the map is read-locked (parks and publishes on that shard wait):
    /// it must be quick, and must not touch the registry.
    /// The proxy's own channels (names starting with [`OWN_CHANNEL`]) are left out.
    pub(crate) fn for_each_channel(&self, mut f: impl FnMut(&str, usize, usize, Option<&str>)) {
        for entry in self.inner.channels.iter() {
            if entry.key().starts_with(OWN_CHANNEL) {
                continue;
            }
            f(
                entry.key(),
                entry.waiter_count(),
                entry.stream_count(),
                entry.last_id.as_deref(),
            );
        }
    }

    /// Waits until `pred(held())` holds. For tests and tools; cancel safe.
    pub async fn wait_held(&self, pred: impl Fn(usize) -> bool) {
        struct Watching<'a>(&'a AtomicUsize);
        impl Drop for Watching<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.inner.watchers.fetch_add(1, Ordering::SeqCst);
        let _watching = Watching(&self.inner.watchers);
        loop {
            let notified = self.inner.held_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if pred(self.held()) {
                return;
            }
            notified.await;
        }
    }

    /// Wakes `wait_held` callers, if any. `held` and `watchers` are both SeqCst, so either the watcher sees the
    /// new count or this sees the watcher.
    fn notify_held(&self) {
        if self.inner.watchers.load(Ordering::SeqCst) > 0 {
            self.inner.held_changed.notify_waiters();
        }
    }

    /// Forgets expired last ids, then the least recently published ones beyond the capacity. Entries with
    /// waiters stay.
    pub(crate) fn sweep(&self, now: Instant) {
        let ttl = self.inner.limits.ttl;
        let window = self.inner.sequencing.duplicate_window;
        let max_age = self.inner.history.as_ref().map(|k| k.rules.max_age);
        self.inner.channels.retain(|_, c| {
            c.forget_recent(now, window);
            if c.last_id.is_some() && now.saturating_duration_since(c.published_at) >= ttl {
                c.last_id = None;
                c.clear_history();
            }
            if let Some(max_age) = max_age {
                c.expire_history(now, max_age);
            }
            !c.is_idle()
        });
        let cap = self.inner.limits.capacity;
        let len = self.inner.channels.len();
        if len <= cap {
            return;
        }
        let mut idle: Vec<(Instant, Box<str>)> = self
            .inner
            .channels
            .iter()
            .filter(|e| !e.has_clients())
            .map(|e| (e.published_at, e.key().clone()))
            .collect();
        idle.sort_unstable_by_key(|(at, _)| *at);
        for (_, name) in idle.into_iter().take(len - cap) {
            self.inner
                .channels
                .remove_if(&name, |_, c| !c.has_clients());
        }
    }

    /// Runs `sweep` every `interval`, and early when a publish finds the map over capacity, until `stop` fires.
    pub(crate) async fn run_sweeper(
        self,
        interval: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
                _ = self.inner.over_capacity.notified() => {}
            }
            self.sweep(Instant::now());
        }
    }

    // === private helpers: every map guard lives and dies inside one of these ===

    fn with_channel<R>(&self, name: &str, f: impl FnOnce(&mut Channel) -> R) -> R {
        if let Some(mut c) = self.inner.channels.get_mut(name) {
            return f(&mut c);
        }
        let mut c = self
            .inner
            .channels
            .entry(name.into())
            .or_insert_with(Channel::new);
        f(&mut c)
    }

    fn forget_if_idle(&self, name: &str) {
        self.inner.channels.remove_if(name, |_, c| c.is_idle());
    }

    /// Removes member `id` of this kind from each of `channels`, and forgets those left idle.
    fn leave<'a>(&self, channels: impl Iterator<Item = &'a str>, id: u64, kind: Kind) {
        for name in channels {
            if let Some(mut c) = self.inner.channels.get_mut(name) {
                c.leave(id, kind);
            }
            self.forget_if_idle(name);
        }
    }
}

/// A parked client: receives one delivery; unparks from every channel when dropped (client gone, answered, timed
/// out), so nothing is left behind.
pub(crate) struct Parked {
    registry: Registry,
    id: u64,
    waiter: Arc<Waiter>,
}

impl Parked {
    /// Waits for the delivery.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future loses nothing; the delivery stays with the waiter.
    pub(crate) async fn recv(&mut self) -> Delivery {
        std::future::poll_fn(|cx| self.waiter.poll_recv(cx)).await
    }

    /// Stops waiting (the hold's timeout). `Some`: a delivery came first, possibly written to the client
    /// already, and is the client's answer; `None`: the client gets its timeout response, and no delivery takes
    /// it any more.
    pub(crate) fn expire(&mut self) -> Option<Delivery> {
        self.waiter.abandon()
    }

    /// The prev-id this hold waits after on `channel`.
    pub(crate) fn prev_id(&self, channel: &str) -> Option<&str> {
        self.waiter.prev_id(channel)
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        // Whatever delivered to it removed this waiter from the channel it came from: a released single-channel
        // hold has nothing left to remove, and skips the map (a fan-out to 10,000 clients would otherwise take
        // that channel's shard lock 20,000 more times).
        let subs = self.waiter.subs();
        if !(self.waiter.was_delivered() && subs.len() == 1) {
            let names = subs.iter().map(|s| &*s.name);
            self.registry.leave(names, self.id, Kind::Waiter);
        }
        self.registry.release_place(Kind::Waiter);
    }
}

/// A stream's subscription: its feed gets every `http-stream` item published to its channels until it is dropped
/// (client gone, stream closed), which unsubscribes it everywhere.
pub(crate) struct Subscription {
    registry: Registry,
    id: u64,
    /// Items the stream was given from the history when it subscribed (it was behind).
    replayed: usize,
    channels: Vec<Box<str>>,
    feed: Arc<Feed>,
}

impl Subscription {
    /// The feed items arrive in.
    pub(crate) fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Items the stream was given from the history when it subscribed: it was behind, and catches up from them.
    pub(crate) fn replayed(&self) -> usize {
        self.replayed
    }

    /// Moves the subscription to `subs` (a followed link held again): channels no longer named are left, new ones
    /// joined without a prev-id check (items queued meanwhile settle what was missed), the feed kept, so nothing
    /// published to a channel in both sets is lost or seen twice.
    pub(crate) fn resubscribe(&mut self, subs: &[ChannelSub]) {
        let (keep, leave): (Vec<Box<str>>, Vec<Box<str>>) = std::mem::take(&mut self.channels)
            .into_iter()
            .partition(|name| subs.iter().any(|s| s.name == *name));
        self.registry
            .leave(leave.iter().map(|n| &**n), self.id, Kind::Stream);
        for sub in subs {
            if !keep.contains(&sub.name) {
                self.registry.with_channel(&sub.name, |c| {
                    c.join(self.id, Member::Stream(&self.feed), None, None)
                });
            }
        }
        self.channels = subs.iter().map(|s| s.name.clone()).collect();
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let names = self.channels.iter().map(|n| &**n);
        self.registry.leave(names, self.id, Kind::Stream);
        self.registry.release_place(Kind::Stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sub(name: &str, prev: Option<&str>) -> ChannelSub {
        ChannelSub {
            name: name.into(),
            prev_id: prev.map(Into::into),
            filters: vec![],
        }
    }

    fn registry(capacity: usize) -> Registry {
        let mut config = RegistryConfig::from(&Config::default());
        config.last_ids = LastIdsConfig {
            capacity,
            ttl: Duration::from_secs(60),
        };
        config.max_held = 2;
        Registry::new(config)
    }

    fn item(channel: &str, id: Option<&str>) -> Arc<Item> {
        Arc::new(Item::test_response(channel, id, None, "hi"))
    }

    #[tokio::test]
    async fn publish_releases_and_drop_cleans_up() {
        let r = registry(10);
        let mut h = r
            .park(vec![sub("a", None), sub("b", None)], true, None)
            .unwrap();
        assert_eq!(r.held(), 1);
        assert_eq!(r.publish(&item("a", Some("1"))), 1);
        assert!(matches!(h.recv().await, Delivery::Item(_)));
        assert_eq!(
            r.publish(&item("b", None)),
            0,
            "the sender was already taken"
        );
        drop(h);
        assert_eq!(r.held(), 0);
        assert_eq!(r.held_on("b"), 0);
        assert_eq!(r.channels(), 1, "only a's last id remains");
        assert_eq!(r.last_id("a").as_deref(), Some("1"));
    }

    #[tokio::test]
    async fn a_replayed_item_sets_the_last_id_and_history_and_releases_no_one() {
        let r = with_history(10, 1 << 20);
        let mut held = r.park(vec![sub("a", None)], true, None).unwrap();
        r.replay(&numbered("a", 1, "one"));
        r.replay(&numbered("a", 2, "two"));
        assert_eq!(r.last_id("a").as_deref(), Some("2"));
        assert_eq!(r.history_of("a").0, 2);
        assert!(
            futures_util::FutureExt::now_or_never(held.recv()).is_none(),
            "not released by a replay"
        );
        assert_eq!(r.held_on("a"), 1);
        assert_eq!(r.publish(&numbered("a", 2, "two")), 0, "a duplicate now");
        assert_eq!(r.publish(&numbered("a", 3, "three")), 1);
        assert!(matches!(held.recv().await, Delivery::Item(_)));
    }

    #[tokio::test]
    async fn a_replayed_gap_is_closed_as_the_live_instances_closed_it() {
        let r = with_history(10, 1 << 20);
        let wait = r.inner.sequencing.wait;
        let at = |item: Arc<Item>, after: Duration| {
            let mut item = Arc::unwrap_or_clone(item);
            item.accepted = tokio::time::Instant::now() - wait * 10 + after;
            Arc::new(item)
        };
        // 2 never came: the live instances applied 3 after their wait, then 4.
        r.replay(&at(numbered("a", 1, "one"), Duration::ZERO));
        r.replay(&at(numbered("a", 3, "three"), Duration::ZERO));
        r.replay(&at(numbered("a", 4, "four"), wait * 2));
        assert_eq!(r.last_id("a").as_deref(), Some("4"));
        // One still waiting at the end, its wait over: applied without anyone released.
        let mut held = r.park(vec![sub("b", None)], true, None).unwrap();
        r.replay(&at(numbered("b", 1, "one"), wait * 3));
        r.replay(&at(numbered("b", 3, "three"), wait * 3));
        assert_eq!(r.last_id("b").as_deref(), Some("1"));
        r.replay_done();
        assert_eq!(r.last_id("b").as_deref(), Some("3"));
        assert!(futures_util::FutureExt::now_or_never(held.recv()).is_none());
    }

    #[tokio::test]
    async fn stale_park_is_refused_and_leaves_nothing() {
        let r = registry(10);
        r.publish(&item("a", Some("2")));
        let err = r
            .park(vec![sub("b", None), sub("a", Some("1"))], true, None)
            .err()
            .unwrap();
        assert_eq!(
            err,
            ParkError::Stale {
                channel: "a".into(),
                prev_id: "1".into()
            }
        );
        assert_eq!(r.channels(), 1, "only a's last id remains");
        assert_eq!(r.held(), 0);
        assert!(
            r.park(vec![sub("a", Some("1"))], true, None).is_err(),
            "still behind"
        );
        assert!(
            r.park(vec![sub("a", Some("1"))], false, None).is_ok(),
            "a retry's hold parks unchecked"
        );
    }

    #[tokio::test]
    async fn close_answers_everyone_and_refuses_new() {
        let r = registry(10);
        let mut h = r.park(vec![sub("a", None)], true, None).unwrap();
        r.close();
        assert!(matches!(h.recv().await, Delivery::Shutdown));
        assert_eq!(
            r.park(vec![sub("a", None)], true, None).err(),
            Some(ParkError::Closed)
        );
    }

    #[tokio::test]
    async fn streams_subscribe_stay_through_publishes_and_leave_on_drop() {
        let r = registry(10);
        let mut s = r
            .subscribe(&[sub("a", None), sub("b", None)], true, 1024, None)
            .unwrap();
        assert_eq!((r.held(), r.streams(), r.streams_on("a")), (1, 1, 1));
        let mut stream_item = Item::test_response("a", Some("1"), None, "");
        stream_item.http_stream = Some(crate::item::HttpStream::Content("x".into()));
        r.publish(&Arc::new(stream_item.clone()));
        stream_item.channel = "b".into();
        r.publish(&Arc::new(stream_item));
        let waker = std::task::Waker::noop();
        let mut into = std::collections::VecDeque::new();
        let fed = s
            .feed()
            .poll_take(&mut std::task::Context::from_waker(waker), &mut into);
        assert!(
            matches!(fed, std::task::Poll::Ready(Fed::Items)) && into.len() == 2,
            "both channels, and it stays"
        );
        assert_eq!(r.streams_on("a"), 1);
        s.resubscribe(&[sub("b", None), sub("c", None)]);
        assert_eq!(
            (r.streams_on("a"), r.streams_on("b"), r.streams_on("c")),
            (0, 1, 1)
        );
        assert_eq!(
            r.subscribe(&[sub("a", Some("0"))], true, 1024, None).err(),
            Some(ParkError::Stale {
                channel: "a".into(),
                prev_id: "0".into()
            }),
            "the same prev-id rule as a response hold"
        );
        assert_eq!(
            r.subscribe(&[sub("d", None)], true, 1024, None)
                .map(|_| ())
                .err(),
            None,
            "a second held client fits max_held = 2"
        );
        let _second = r.park(vec![sub("e", None)], true, None).unwrap();
        assert_eq!(
            r.subscribe(&[sub("d", None)], true, 1024, None).err(),
            Some(ParkError::Full),
            "streams count toward max_held"
        );
        r.close();
        let fed = s
            .feed()
            .poll_take(&mut std::task::Context::from_waker(waker), &mut into);
        assert!(matches!(
            fed,
            std::task::Poll::Ready(Fed::End(FeedEnd::Shutdown))
        ));
        drop(s);
        assert_eq!(
            (r.streams(), r.streams_on("b"), r.streams_on("c")),
            (0, 0, 0)
        );
    }

    fn with_history(items: usize, max_bytes: usize) -> Registry {
        let mut config = RegistryConfig::from(&Config::default());
        config.max_held = 100;
        config.history = HistoryConfig {
            items,
            max_age: Duration::from_secs(60),
            max_bytes,
        };
        Registry::new(config)
    }

    fn numbered(channel: &str, id: u32, body: &str) -> Arc<Item> {
        let prev = id.checked_sub(1).filter(|p| *p > 0).map(|p| p.to_string());
        let id = id.to_string();
        let mut item = Item::test_response(channel, Some(&id), prev.as_deref(), body);
        item.http_stream = Some(crate::item::HttpStream::Content(body.to_owned().into()));
        Arc::new(item)
    }

    fn taken(feed: &Feed) -> Vec<String> {
        let mut into = std::collections::VecDeque::new();
        let waker = std::task::Waker::noop();
        let _ = feed.poll_take(&mut std::task::Context::from_waker(waker), &mut into);
        into.iter()
            .map(|r: &Arc<Release>| r.item.id.as_deref().unwrap_or("-").to_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_stream_behind_gets_the_history_then_live_items_and_a_response_hold_the_next_item() {
        let r = with_history(10, 1 << 20);
        for id in 1..=5 {
            r.publish(&numbered("a", id, "x"));
        }
        let s = r
            .subscribe(&[sub("a", Some("2"))], true, 1 << 20, None)
            .unwrap();
        assert_eq!(s.replayed(), 3);
        r.publish(&numbered("a", 6, "x"));
        assert_eq!(
            taken(s.feed()),
            ["3", "4", "5", "6"],
            "no gap, no duplicate"
        );
        match r.park(vec![sub("a", Some("4"))], true, None).err() {
            Some(ParkError::InHistory { channel, next }) => {
                assert_eq!(&*channel, "a");
                assert_eq!(next.0.item.id.as_deref(), Some("5"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.park(vec![sub("a", Some("0"))], true, None).err(),
            Some(ParkError::Stale { .. })
        ));
        assert_eq!(
            r.held(),
            1,
            "only the stream: the answered hold is not parked"
        );
        assert_eq!(r.history_of("a").0, 6);
    }

    #[tokio::test]
    async fn the_byte_budget_holds_under_many_channels_dropping_the_least_recently_published() {
        let one = history::cost(&numbered("c00000", 1, "x")) + history::CHANNEL_OVERHEAD;
        let budget = 1000 * one;
        let r = with_history(5, budget);
        for round in 1..=3 {
            for c in 0..2000 {
                r.publish(&numbered(&format!("c{c:05}"), round, "x"));
                let (_, bytes) = r.history_totals().unwrap();
                assert!(bytes <= budget, "{bytes} > {budget}");
            }
        }
        let (items, bytes) = r.history_totals().unwrap();
        assert!(items > 0 && bytes <= budget);
        let (counted_items, counted_bytes) = (0..2000).fold((0, 0), |(i, b), c| {
            let (ci, cb) = r.history_of(&format!("c{c:05}"));
            (i + ci, b + cb)
        });
        assert_eq!(
            (counted_items, counted_bytes),
            (items, bytes),
            "totals agree"
        );
        assert!(
            r.history_of("c01999").0 >= 1 && r.history_of("c00000").0 == 0,
            "the most recently published keep theirs"
        );
        assert_eq!(
            r.channels(),
            2000,
            "last ids stay: only histories are dropped"
        );
        r.sweep(Instant::now());
        assert_eq!(r.history_totals().unwrap().1, bytes);
    }

    #[tokio::test(start_paused = true)]
    async fn histories_expire_with_their_age_and_their_last_id() {
        let r = with_history(5, 1 << 20);
        r.publish(&numbered("a", 1, "x"));
        tokio::time::advance(Duration::from_secs(30)).await;
        r.publish(&numbered("a", 2, "x"));
        tokio::time::advance(Duration::from_secs(31)).await;
        r.sweep(Instant::now());
        assert_eq!(r.history_of("a").0, 1, "item 1 is past max_age");
        tokio::time::advance(Duration::from_secs(3600)).await;
        r.sweep(Instant::now());
        assert_eq!(r.history_of("a"), (0, 0));
        assert_eq!(r.channels(), 0);
        assert_eq!(r.history_totals(), Some((0, 0)));
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_bounds_last_ids() {
        let r = registry(3);
        for i in 0..5 {
            r.publish(&item(&format!("c{i}"), Some("1")));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let _h = r.park(vec![sub("c0", Some("1"))], true, None).unwrap();
        r.sweep(Instant::now());
        assert_eq!(r.channels(), 3);
        assert!(r.last_id("c0").is_some(), "an entry with waiters stays");
        assert!(r.last_id("c4").is_some(), "the most recent stays");
        assert!(r.last_id("c1").is_none());
        tokio::time::advance(Duration::from_secs(61)).await;
        r.sweep(Instant::now());
        assert_eq!(r.channels(), 1, "expired ids go, the held channel stays");
        assert!(r.last_id("c0").is_none());
    }
}
