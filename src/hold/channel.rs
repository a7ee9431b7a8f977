//! One channel's state: the clients parked on it, the id of the last item published to it, items waiting for a
//! missing predecessor, and recent ids (duplicates). The park/publish ordering invariant lives here: both run
//! under the channel's map-entry lock and do bounded work there. A channel kept only for its last id is compact:
//! the id and its time, everything else behind one pointer that is null then.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::feed::Feed;
use super::history::{History, Keeper};
use super::waiter::Waiter;
use super::Release;
use crate::item::Item;

/// What a member behind the last id gets from the history after `prev`: a response hold, the item that follows
/// (if it answers one); a stream, every item from that one on, pushed to its feed. `None`: not in the history.
fn from_history(
    (keeper, history): (&Keeper, &History),
    member: Member<'_>,
    prev: &str,
) -> Option<ParkOutcome> {
    let now = Instant::now();
    let max_age = keeper.rules.max_age;
    match member {
        Member::Waiter(_) => history
            .next_response(prev, now, max_age)
            .map(|r| ParkOutcome::FromHistory(r.clone())),
        Member::Stream(feed) => {
            let mut replayed = 0;
            for release in history.since(prev, now, max_age)? {
                // A new feed's socket belongs to its connection: a push queues, never claims it.
                let claimed = feed.push(release, release.stream_len());
                debug_assert!(!claimed, "a new feed queues");
                replayed += 1;
            }
            Some(ParkOutcome::Replayed(replayed))
        }
    }
}

/// Parked clients by waiter id. A hold on several channels is in each; the first delivery takes it and the others
/// find it taken.
pub(crate) type Waiters = HashMap<u64, Arc<Waiter>>;

/// Streams subscribed, by subscription id.
pub(crate) type Streams = HashMap<u64, Arc<Feed>>;

/// Ids remembered per channel for duplicate detection: bounds the memory and the scan of a busy channel.
const RECENT_IDS_MAX: usize = 32;

/// How items are sequenced on a channel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sequencing {
    /// An out-of-order item waits this long for its predecessor.
    pub(crate) wait: Duration,
    /// Most items waiting; one more sends the oldest out anyway.
    pub(crate) max_pending: usize,
    /// A (channel, id) seen this recently is a duplicate.
    pub(crate) duplicate_window: Duration,
}

/// What joins a channel: a response hold's slot (taken by the first item), or a stream's feed (given every item).
#[derive(Clone, Copy)]
pub(crate) enum Member<'a> {
    Waiter(&'a Arc<Waiter>),
    Stream(&'a Arc<Feed>),
}

impl Member<'_> {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Member::Waiter(_) => Kind::Waiter,
            Member::Stream(_) => Kind::Stream,
        }
    }
}

/// A response hold or a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Waiter,
    Stream,
}

/// What park decided for one channel.
pub(crate) enum ParkOutcome {
    /// The waiter is in the channel.
    Parked,
    /// The channel's last id differs from the hold's prev-id: the client is behind, and is not inserted.
    Stale,
    /// A response hold is behind, and the item that follows its prev-id is in the history: that is its answer
    /// (it is not inserted).
    FromHistory(Arc<Release>),
    /// A stream was behind: the items it missed were pushed to its feed from the history, and it is in.
    Replayed(usize),
}

/// What a publish did to a channel: items to deliver now, in order, each with the waiters it takes.
#[derive(Default)]
pub(crate) struct Published {
    pub(crate) deliveries: Vec<(Arc<Release>, Waiters)>,
    /// Items to write to idle streams whose socket their push claimed, in order, each with those streams.
    pub(crate) writes: Vec<(Arc<Release>, Vec<Arc<Feed>>)>,
    /// The item was queued to wait for its predecessor until this instant.
    pub(crate) queued_until: Option<Instant>,
    /// The item was a duplicate and dropped.
    pub(crate) duplicate: bool,
}

/// A channel entry in the registry map.
pub(crate) struct Channel {
    /// Id of the last item published here, if known.
    pub(crate) last_id: Option<Box<str>>,
    /// When `last_id` was set: for expiry, least-recently-published eviction and its duplicate window.
    pub(crate) published_at: Instant,
    /// Clients, waiting items and older recent ids; `None` when there are none (a channel kept for its last id).
    live: Option<Box<Live>>,
}

/// The parts of a channel that only a channel in use has.
#[derive(Default)]
struct Live {
    /// Parked clients.
    waiters: Waiters,
    /// Streams subscribed: each takes every `http-stream` item, in publish order, and stays.
    streams: Streams,
    /// Items whose `prev-id` is not the last id, waiting for their predecessor, oldest first.
    pending: VecDeque<(Arc<Item>, Instant)>,
    /// Ids seen within the duplicate window besides `last_id` (which is checked on its own), oldest first, at most
    /// `RECENT_IDS_MAX`.
    recent_ids: VecDeque<(Box<str>, Instant)>,
    /// The last items applied, when history is on (boxed: most channels in use have none).
    history: Option<Box<History>>,
}

impl Live {
    fn is_empty(&self) -> bool {
        self.waiters.is_empty()
            && self.streams.is_empty()
            && self.pending.is_empty()
            && self.recent_ids.is_empty()
            && self.history.as_ref().is_none_or(|h| h.is_empty())
    }
}

impl Channel {
    pub(crate) fn new() -> Self {
        Channel {
            last_id: None,
            published_at: Instant::now(),
            live: None,
        }
    }

    fn live(&mut self) -> &mut Live {
        self.live.get_or_insert_with(Box::default)
    }

    /// Frees the live parts once nothing is in them.
    fn tidy(&mut self) {
        if self.live.as_ref().is_some_and(|l| l.is_empty()) {
            self.live = None;
        }
    }

    /// Response holds parked here.
    pub(crate) fn waiter_count(&self) -> usize {
        self.live.as_ref().map_or(0, |l| l.waiters.len())
    }

    /// Streams subscribed here.
    pub(crate) fn stream_count(&self) -> usize {
        self.live.as_ref().map_or(0, |l| l.streams.len())
    }

    /// The streams subscribed here.
    pub(crate) fn streams(&self) -> impl Iterator<Item = &Arc<Feed>> {
        self.live.iter().flat_map(|l| l.streams.values())
    }

    /// Takes every parked client out (a shutdown or recovery answers them all).
    pub(crate) fn take_waiters(&mut self) -> Waiters {
        let waiters = self
            .live
            .as_mut()
            .map(|l| std::mem::take(&mut l.waiters))
            .unwrap_or_default();
        self.tidy();
        waiters
    }

    /// Removes a member of this kind.
    pub(crate) fn leave(&mut self, id: u64, kind: Kind) {
        if let Some(l) = self.live.as_mut() {
            match kind {
                Kind::Waiter => l.waiters.remove(&id).map(drop),
                Kind::Stream => l.streams.remove(&id).map(drop),
            };
        }
        self.tidy();
    }

    /// Forgets recent ids older than `window` (sweeps call this, so that a quiet channel's live parts go).
    pub(crate) fn forget_recent(&mut self, now: Instant, window: Duration) {
        if let Some(l) = self.live.as_mut() {
            while let Some((_, at)) = l.recent_ids.front() {
                if now.saturating_duration_since(*at) < window {
                    break;
                }
                l.recent_ids.pop_front();
            }
        }
        self.tidy();
    }

    /// Checks a hold's prev-id against the last id (unless `None`), then adds the member. Runs under the entry
    /// lock.
    ///
    /// A member behind the last id catches up from the history (`keeper`: history is on) when it holds the item
    /// that follows the member's prev-id: a response hold is answered with that item, a stream is given it and
    /// every later one, in order, before it is inserted. Both under the entry lock, so that no publish comes in
    /// between: nothing missed, nothing twice.
    pub(crate) fn join(
        &mut self,
        id: u64,
        member: Member<'_>,
        prev_id: Option<&str>,
        keeper: Option<&Keeper>,
    ) -> ParkOutcome {
        let mut outcome = ParkOutcome::Parked;
        if let (Some(last), Some(prev)) = (self.last_id.as_deref(), prev_id) {
            if last != prev {
                let caught_up = keeper
                    .zip(self.history())
                    .and_then(|history| from_history(history, member, prev));
                match caught_up {
                    None => return ParkOutcome::Stale,
                    Some(answer @ ParkOutcome::FromHistory(_)) => return answer,
                    Some(replayed) => outcome = replayed,
                }
            }
        }
        let live = self.live();
        match member {
            Member::Waiter(waiter) => live.waiters.insert(id, waiter.clone()).map(drop),
            Member::Stream(feed) => live.streams.insert(id, feed.clone()).map(drop),
        };
        outcome
    }

    /// The history kept, if any.
    fn history(&self) -> Option<&History> {
        self.live.as_ref()?.history.as_deref()
    }

    /// Items and bytes in the history.
    pub(crate) fn history_len(&self) -> (usize, usize) {
        self.history().map_or((0, 0), |h| (h.len(), h.bytes()))
    }

    /// Drops the history (its items may no longer follow on from what clients had: a recovery, a forgotten id).
    pub(crate) fn clear_history(&mut self) {
        if let Some(l) = self.live.as_mut() {
            l.history = None;
        }
        self.tidy();
    }

    /// Drops history items older than `max_age`.
    pub(crate) fn expire_history(&mut self, now: Instant, max_age: Duration) {
        if let Some(h) = self.live.as_mut().and_then(|l| l.history.as_mut()) {
            h.expire(now, max_age);
            if h.is_empty() {
                self.clear_history();
            }
        }
    }

    /// Publishes an item (as Pushpin sequences them): a duplicate id is dropped; an item whose `prev-id` is not
    /// the known last id waits for its predecessor (unless `no-seq`); otherwise it goes out now, followed by any
    /// waiting items it was the predecessor of. Runs under the entry lock; the caller sends after releasing it.
    pub(crate) fn publish(
        &mut self,
        item: &Arc<Item>,
        now: Instant,
        seq: Sequencing,
        keeper: Option<&Keeper>,
    ) -> Published {
        self.apply(item, now, seq, keeper, true)
    }

    /// Records an item as [`Channel::publish`] does (last id, duplicates, history) without handing it to any
    /// member: a replay of items published before this process was there to see them.
    /// Items it finds waiting for a predecessor that never came by `now` are applied as the instances that saw
    /// them live applied them after their wait, also without handing them out.
    pub(crate) fn record(
        &mut self,
        item: &Arc<Item>,
        now: Instant,
        seq: Sequencing,
        keeper: Option<&Keeper>,
    ) {
        self.apply(item, now, seq, keeper, false);
        self.flush_expired_as(now, seq, keeper, false);
    }

    /// When the first item waiting for its predecessor is due, if any.
    pub(crate) fn pending_until(&self) -> Option<Instant> {
        self.live.as_ref()?.pending.front().map(|(_, d)| *d)
    }

    fn apply(
        &mut self,
        item: &Arc<Item>,
        now: Instant,
        seq: Sequencing,
        keeper: Option<&Keeper>,
        hand_out: bool,
    ) -> Published {
        let mut out = Published::default();
        if let Some(id) = item.id.as_deref() {
            if self.seen_recently(id, now, seq.duplicate_window) {
                out.duplicate = true;
                return out;
            }
        }
        let out_of_order = !item.no_seq
            && seq.max_pending > 0
            && matches!((item.prev_id.as_deref(), self.last_id.as_deref()), (Some(p), Some(l)) if p != l);
        if out_of_order {
            // Remembered as seen now: it is not the last id until its predecessor comes.
            if let Some(id) = item.id.as_deref() {
                self.remember_recent(id, now);
            }
            if self.live().pending.len() >= seq.max_pending {
                if let Some((oldest, _)) = self.live().pending.pop_front() {
                    self.apply_chain(oldest, now, seq, keeper, hand_out, &mut out);
                }
            }
            let deadline = now + seq.wait;
            self.live().pending.push_back((item.clone(), deadline));
            out.queued_until = Some(deadline);
            return out;
        }
        self.apply_chain(item.clone(), now, seq, keeper, hand_out, &mut out);
        self.tidy();
        out
    }

    /// Sends out, in order, the waiting items whose time is up (each followed by what it was the predecessor of).
    pub(crate) fn flush_expired(
        &mut self,
        now: Instant,
        seq: Sequencing,
        keeper: Option<&Keeper>,
    ) -> Published {
        self.flush_expired_as(now, seq, keeper, true)
    }

    /// [`Channel::flush_expired`]; `hand_out`: to the channel's members too (not for a replay).
    pub(crate) fn flush_expired_as(
        &mut self,
        now: Instant,
        seq: Sequencing,
        keeper: Option<&Keeper>,
        hand_out: bool,
    ) -> Published {
        let mut out = Published::default();
        while let Some(l) = self.live.as_mut() {
            if l.pending
                .front()
                .is_none_or(|(_, deadline)| *deadline > now)
            {
                break;
            }
            if let Some((item, _)) = l.pending.pop_front() {
                self.apply_chain(item, now, seq, keeper, hand_out, &mut out);
            }
        }
        out.queued_until = self
            .live
            .as_ref()
            .and_then(|l| l.pending.front().map(|(_, d)| *d));
        self.tidy();
        out
    }

    /// Applies `item` and the waiting items that follow on from it; `hand_out`: to the channel's members too.
    fn apply_chain(
        &mut self,
        item: Arc<Item>,
        now: Instant,
        seq: Sequencing,
        keeper: Option<&Keeper>,
        hand_out: bool,
        out: &mut Published,
    ) {
        let mut next = Some(item);
        while let Some(item) = next.take() {
            // The id it replaces stays a duplicate for the rest of its window.
            if let Some(previous) = self.last_id.take() {
                let seen = self.published_at;
                if now.saturating_duration_since(seen) < seq.duplicate_window
                    && item.id.as_deref() != Some(&*previous)
                {
                    self.remember_recent_at(previous, seen);
                }
            }
            self.last_id = item.id.clone();
            self.published_at = now;
            let waiters = match self.live.as_mut() {
                Some(l) if hand_out && item.http_response.is_some() => {
                    std::mem::take(&mut l.waiters)
                }
                _ => HashMap::new(),
            };
            let release = Arc::new(Release::new(item));
            if let Some(keeper) = keeper {
                // Kept as released: the item and its release (its encodings built once) are shared, not copied.
                self.live()
                    .history
                    .get_or_insert_with(|| Box::new(History::new(keeper.totals.clone())))
                    .push(&release, now, &keeper.rules);
            }
            // Streams get the item here, under the entry lock, so that every stream sees the channel's items in the
            // order they were applied (a push never waits: a feed past its bound ends instead).
            if hand_out && release.item.http_stream.is_some() {
                let len = release.stream_len();
                let claimed: Vec<Arc<Feed>> = self
                    .streams()
                    .filter(|feed| feed.push(&release, len))
                    .cloned()
                    .collect();
                if !claimed.is_empty() {
                    out.writes.push((release.clone(), claimed));
                }
            }
            out.deliveries.push((release, waiters));
            if let (Some(last), Some(l)) = (self.last_id.as_deref(), self.live.as_mut()) {
                if let Some(pos) = l
                    .pending
                    .iter()
                    .position(|(p, _)| p.prev_id.as_deref() == Some(last))
                {
                    next = l.pending.remove(pos).map(|(p, _)| p);
                }
            }
        }
    }

    /// Whether `id` was published within `window`: it is the last id (seen when it was applied), or one of the
    /// recent ids. An id not seen is remembered by whoever applies or queues it.
    fn seen_recently(&mut self, id: &str, now: Instant, window: Duration) -> bool {
        if self.last_id.as_deref() == Some(id)
            && now.saturating_duration_since(self.published_at) < window
        {
            return true;
        }
        self.forget_recent(now, window);
        self.live
            .as_ref()
            .is_some_and(|l| l.recent_ids.iter().any(|(seen, _)| &**seen == id))
    }

    fn remember_recent(&mut self, id: &str, now: Instant) {
        self.remember_recent_at(id.into(), now);
    }

    fn remember_recent_at(&mut self, id: Box<str>, at: Instant) {
        let l = self.live();
        if l.recent_ids.len() == RECENT_IDS_MAX {
            l.recent_ids.pop_front();
        }
        l.recent_ids.push_back((id, at));
    }

    /// Nothing worth keeping: no waiters, no streams, no last id, nothing pending.
    pub(crate) fn is_idle(&self) -> bool {
        !self.has_clients()
            && self.last_id.is_none()
            && self.live.as_ref().is_none_or(|l| l.pending.is_empty())
    }

    /// Whether any client (held response or stream) is on the channel.
    pub(crate) fn has_clients(&self) -> bool {
        self.waiter_count() > 0 || self.stream_count() > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEQ: Sequencing = Sequencing {
        wait: Duration::from_secs(5),
        max_pending: 2,
        duplicate_window: Duration::from_secs(60),
    };

    fn slot() -> (Arc<Waiter>, ()) {
        (Arc::new(Waiter::new(Vec::new(), None)), ())
    }

    fn item(id: Option<&str>, prev: Option<&str>) -> Arc<Item> {
        Arc::new(Item::test_response("c", id, prev, "x"))
    }

    fn ids(p: &Published) -> Vec<String> {
        p.deliveries
            .iter()
            .map(|(r, _)| r.item.id.as_deref().unwrap_or("-").to_owned())
            .collect()
    }

    #[tokio::test]
    async fn park_checks_prev_id_then_inserts() {
        let mut c = Channel::new();
        let (s, _rx) = slot();
        assert!(
            matches!(
                c.join(1, Member::Waiter(&s), Some("x"), None),
                ParkOutcome::Parked
            ),
            "unknown last id: park"
        );
        let p = c.publish(&item(Some("2"), None), Instant::now(), SEQ, None);
        assert_eq!(
            p.deliveries[0].1.len(),
            1,
            "the publish takes the parked waiter"
        );
        assert!(matches!(
            c.join(2, Member::Waiter(&s), Some("2"), None),
            ParkOutcome::Parked
        ));
        assert!(matches!(
            c.join(3, Member::Waiter(&s), Some("1"), None),
            ParkOutcome::Stale
        ));
        assert_eq!(
            c.last_id.as_deref(),
            Some("2"),
            "a stale park changes nothing"
        );
        assert!(
            matches!(
                c.join(4, Member::Waiter(&s), None, None),
                ParkOutcome::Parked
            ),
            "a retry parks unchecked"
        );
        assert_eq!(c.waiter_count(), 2);
        let p = c.publish(&item(Some("3"), None), Instant::now(), SEQ, None);
        assert_eq!(p.deliveries[0].1.len(), 2);
        assert_eq!(c.waiter_count(), 0);
        assert_eq!(c.last_id.as_deref(), Some("3"));
        c.publish(&item(None, None), Instant::now(), SEQ, None);
        assert!(c.is_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn a_recent_id_is_a_duplicate() {
        let mut c = Channel::new();
        let (s, _rx) = slot();
        assert!(
            !c.publish(&item(Some("1"), None), Instant::now(), SEQ, None)
                .duplicate
        );
        c.join(1, Member::Waiter(&s), None, None);
        let p = c.publish(&item(Some("1"), None), Instant::now(), SEQ, None);
        assert!(p.duplicate && p.deliveries.is_empty());
        assert_eq!(c.waiter_count(), 1, "a duplicate takes no one");
        assert!(
            !c.publish(&item(None, None), Instant::now(), SEQ, None)
                .duplicate,
            "no id: never a duplicate"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(
            !c.publish(&item(Some("1"), None), Instant::now(), SEQ, None)
                .duplicate,
            "outside the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_kept_for_its_last_id_is_compact_and_still_knows_its_duplicates() {
        let mut c = Channel::new();
        c.publish(&item(Some("1"), None), Instant::now(), SEQ, None);
        assert!(c.live.is_none(), "one id: nothing but the id and its time");
        c.publish(&item(Some("2"), Some("1")), Instant::now(), SEQ, None);
        assert!(
            c.publish(&item(Some("1"), None), Instant::now(), SEQ, None)
                .duplicate,
            "a superseded id is still a duplicate within the window"
        );
        assert!(
            c.publish(&item(Some("2"), None), Instant::now(), SEQ, None)
                .duplicate
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        c.forget_recent(Instant::now(), SEQ.duplicate_window);
        assert!(c.live.is_none(), "the recent ids went with their window");
        assert_eq!(c.last_id.as_deref(), Some("2"));
        let (s, _rx) = slot();
        c.join(1, Member::Waiter(&s), None, None);
        c.leave(1, Kind::Waiter);
        assert!(c.live.is_none(), "a client that leaves leaves nothing");
        assert!(
            std::mem::size_of::<Channel>() <= 40,
            "{}",
            std::mem::size_of::<Channel>()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_order_items_wait_for_their_predecessor() {
        let mut c = Channel::new();
        let now = Instant::now();
        assert_eq!(
            ids(&c.publish(&item(Some("1"), None), now, SEQ, None)),
            ["1"],
            "first item goes at once"
        );
        let p = c.publish(&item(Some("3"), Some("2")), now, SEQ, None);
        assert!(p.deliveries.is_empty());
        assert_eq!(p.queued_until, Some(now + SEQ.wait));
        assert_eq!(
            ids(&c.publish(&item(Some("2"), Some("1")), now, SEQ, None)),
            ["2", "3"],
            "both, in order"
        );
        assert_eq!(c.last_id.as_deref(), Some("3"));
        let mut no_seq = Item::test_response("c", Some("9"), Some("7"), "x");
        no_seq.no_seq = true;
        assert_eq!(
            ids(&c.publish(&Arc::new(no_seq), now, SEQ, None)),
            ["9"],
            "no-seq skips the wait"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_is_bounded_in_time_and_count() {
        let mut c = Channel::new();
        let now = Instant::now();
        c.publish(&item(Some("1"), None), now, SEQ, None);
        c.publish(&item(Some("5"), Some("4")), now, SEQ, None);
        assert!(c
            .flush_expired(now + Duration::from_secs(4), SEQ, None)
            .deliveries
            .is_empty());
        assert_eq!(
            ids(&c.flush_expired(now + SEQ.wait, SEQ, None)),
            ["5"],
            "sent anyway after the wait"
        );
        c.publish(&item(Some("7"), Some("6")), now, SEQ, None);
        c.publish(&item(Some("9"), Some("8")), now, SEQ, None);
        assert_eq!(
            ids(&c.publish(&item(Some("11"), Some("10")), now, SEQ, None)),
            ["7"],
            "over the count: oldest goes"
        );
        assert!(!c.is_idle());
    }
}
