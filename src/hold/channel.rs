//! One channel's state: the clients parked on it and the id of the last item published to it. The park/publish
//! ordering invariant lives here: both run under the channel's map-entry lock and do O(1) work there.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Delivery;

/// Where a parked client is told what happened. A hold on several channels puts the same slot in each; the first
/// delivery takes the sender and the others find `None`.
pub(crate) type Slot = Arc<Mutex<Option<oneshot::Sender<Delivery>>>>;

/// An item whose id was published on the channel this recently is a duplicate and is dropped (GRIP.md 6): a
/// publisher that retries a POST which was applied (Python's retries once after a 5xx) must not deliver it twice.
pub(crate) const DUPLICATE_WINDOW: Duration = Duration::from_secs(60);

/// Ids remembered per channel for duplicate detection: bounds the memory and the scan of a busy channel.
const RECENT_IDS_MAX: usize = 32;

/// What park decided for one channel.
pub(crate) enum ParkOutcome {
    /// The waiter is in the channel.
    Parked,
    /// The channel's last id differs from the hold's prev-id: the client is behind. The last id is forgotten (so a
    /// retried request's hold is accepted whatever its prev-id) and the waiter is not inserted.
    Stale,
}

/// A channel entry in the registry map.
pub(crate) struct Channel {
    /// Parked clients by waiter id.
    pub(crate) waiters: HashMap<u64, Slot>,
    /// Id of the last item published here, if known.
    pub(crate) last_id: Option<Box<str>>,
    /// When `last_id` was set: for expiry and least-recently-published eviction.
    pub(crate) published_at: Instant,
    /// Ids published within `DUPLICATE_WINDOW`, oldest first, at most `RECENT_IDS_MAX`.
    recent_ids: VecDeque<(Box<str>, Instant)>,
}

impl Channel {
    pub(crate) fn new() -> Self {
        Channel {
            waiters: HashMap::new(),
            last_id: None,
            published_at: Instant::now(),
            recent_ids: VecDeque::new(),
        }
    }

    /// Checks the hold's prev-id against the last id, then inserts the waiter. Runs under the entry lock.
    pub(crate) fn park(&mut self, waiter: u64, slot: &Slot, prev_id: Option<&str>) -> ParkOutcome {
        if let (Some(last), Some(prev)) = (self.last_id.as_deref(), prev_id) {
            if last != prev {
                self.last_id = None;
                return ParkOutcome::Stale;
            }
        }
        self.waiters.insert(waiter, slot.clone());
        ParkOutcome::Parked
    }

    /// Records the item's id as the last id, then takes the waiters if the item releases them. `None`: the id was
    /// published within `DUPLICATE_WINDOW`, and the item is dropped. Runs under the entry lock; the caller sends
    /// after releasing it.
    pub(crate) fn publish(
        &mut self,
        id: Option<&str>,
        releases: bool,
        now: Instant,
    ) -> Option<HashMap<u64, Slot>> {
        if let Some(id) = id {
            if self.seen_recently(id, now) {
                return None;
            }
        }
        self.last_id = id.map(Box::from);
        self.published_at = now;
        Some(if releases {
            std::mem::take(&mut self.waiters)
        } else {
            HashMap::new()
        })
    }

    /// Whether `id` was published within `DUPLICATE_WINDOW`; remembers it if not.
    fn seen_recently(&mut self, id: &str, now: Instant) -> bool {
        while let Some((_, at)) = self.recent_ids.front() {
            if now.saturating_duration_since(*at) < DUPLICATE_WINDOW {
                break;
            }
            self.recent_ids.pop_front();
        }
        if self.recent_ids.iter().any(|(seen, _)| &**seen == id) {
            return true;
        }
        if self.recent_ids.len() == RECENT_IDS_MAX {
            self.recent_ids.pop_front();
        }
        self.recent_ids.push_back((id.into(), now));
        false
    }

    /// Nothing worth keeping: no waiters and no last id.
    pub(crate) fn is_idle(&self) -> bool {
        self.waiters.is_empty() && self.last_id.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> (Slot, oneshot::Receiver<Delivery>) {
        let (tx, rx) = oneshot::channel();
        (Arc::new(Mutex::new(Some(tx))), rx)
    }

    #[tokio::test]
    async fn park_checks_prev_id_then_inserts() {
        let mut c = Channel::new();
        let (s, _rx) = slot();
        assert!(
            matches!(c.park(1, &s, Some("x")), ParkOutcome::Parked),
            "unknown last id: park"
        );
        c.publish(Some("2"), false, Instant::now());
        assert!(matches!(c.park(2, &s, Some("2")), ParkOutcome::Parked));
        assert!(matches!(c.park(3, &s, Some("1")), ParkOutcome::Stale));
        assert!(c.last_id.is_none(), "stale park forgets the last id");
        assert!(
            matches!(c.park(4, &s, Some("1")), ParkOutcome::Parked),
            "retry is accepted"
        );
        assert_eq!(c.waiters.len(), 3);
        let taken = c.publish(Some("3"), true, Instant::now()).unwrap();
        assert_eq!(taken.len(), 3);
        assert!(c.waiters.is_empty());
        assert_eq!(c.last_id.as_deref(), Some("3"));
        c.publish(None, true, Instant::now());
        assert!(c.is_idle());
    }

    #[tokio::test(start_paused = true)]
    async fn a_recent_id_is_a_duplicate() {
        let mut c = Channel::new();
        let (s, _rx) = slot();
        assert!(c.publish(Some("1"), true, Instant::now()).is_some());
        c.park(1, &s, None);
        assert!(c.publish(Some("1"), true, Instant::now()).is_none());
        assert_eq!(c.waiters.len(), 1, "a duplicate takes no one");
        assert!(
            c.publish(None, true, Instant::now()).is_some(),
            "no id: never a duplicate"
        );
        tokio::time::advance(DUPLICATE_WINDOW).await;
        assert!(
            c.publish(Some("1"), true, Instant::now()).is_some(),
            "the window is over"
        );
    }
}
