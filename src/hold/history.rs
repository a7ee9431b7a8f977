//! Channel history: the last items applied to a channel, kept as released (the item and its release shared, not
//! copied) so that a client behind the channel's last id catches up from memory; bounded per channel (items, age)
//! and in total bytes across channels ([`Totals`], enforced by the registry).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Release;
use crate::config::HistoryConfig;
use crate::item::{Action, HttpStream, Item};

/// What one kept item costs besides its strings and bodies: the item, its release, the two `Arc` headers, the
/// queue slot, and the allocator's rounding.
const ITEM_OVERHEAD: usize =
    std::mem::size_of::<Item>() + std::mem::size_of::<Release>() + 2 * 16 + 8 + 32;

/// What a channel's history costs besides its items: the channel's live parts it keeps allocated, the history
/// itself and its queue's slots.
pub(crate) const CHANNEL_OVERHEAD: usize = 256;

/// The history settings and the totals of every channel's history: one per registry, when history is on.
#[derive(Debug)]
pub(crate) struct Keeper {
    /// Per-channel and total bounds.
    pub(crate) rules: HistoryConfig,
    /// Bytes and items kept across channels.
    pub(crate) totals: Arc<Totals>,
    /// Set while one publisher drops the least recently published channels' histories (the others go on).
    pub(crate) evicting: AtomicBool,
}

impl Keeper {
    pub(crate) fn new(rules: HistoryConfig) -> Self {
        Keeper {
            rules,
            totals: Arc::default(),
            evicting: AtomicBool::new(false),
        }
    }

    /// Whether the histories hold more bytes than allowed.
    pub(crate) fn over_budget(&self) -> bool {
        self.totals.bytes() > self.rules.max_bytes
    }

    /// Bytes the histories are brought down to when over budget: a little under it, so that an eviction pass
    /// (a scan of the channel map) is not needed again at the next publish.
    pub(crate) fn low_water(&self) -> usize {
        self.rules.max_bytes - self.rules.max_bytes / 8
    }
}

/// Bytes and items kept in every channel's history.
#[derive(Debug, Default)]
pub(crate) struct Totals {
    bytes: AtomicUsize,
    items: AtomicUsize,
}

impl Totals {
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn items(&self) -> usize {
        self.items.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.items.fetch_add(1, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize, items: usize) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.items.fetch_sub(items, Ordering::Relaxed);
    }
}

/// The bytes an item is counted for while kept: its strings, its response (and the response it is merged into
/// and encoded once for its clients), its stream content (and its chunk framing), and [`ITEM_OVERHEAD`].
pub(crate) fn cost(item: &Item) -> usize {
    let strings = item.channel.len()
        + item.id.as_deref().map_or(0, str::len)
        + item.prev_id.as_deref().map_or(0, str::len);
    let response = item.http_response.as_ref().map_or(0, |r| {
        let headers: usize = r
            .parts
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        2 * (r.parts.body.len() + headers) + 64
    });
    let stream = match &item.http_stream {
        Some(HttpStream::Content(content)) => 2 * content.len() + 16,
        _ => 0,
    };
    ITEM_OVERHEAD + strings + response + stream
}

/// One channel's history, oldest first. Its bytes (its items' and [`CHANNEL_OVERHEAD`]) are counted in the
/// registry's [`Totals`] until it is dropped.
#[derive(Debug)]
pub(crate) struct History {
    items: VecDeque<Arc<Release>>,
    bytes: usize,
    totals: Arc<Totals>,
}

impl History {
    pub(crate) fn new(totals: Arc<Totals>) -> Self {
        totals.bytes.fetch_add(CHANNEL_OVERHEAD, Ordering::Relaxed);
        History {
            items: VecDeque::new(),
            bytes: CHANNEL_OVERHEAD,
            totals,
        }
    }

    /// Items kept.
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Bytes kept (see [`cost`] and [`CHANNEL_OVERHEAD`]).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Appends an applied item (shared with its release), then drops the oldest beyond the per-channel bounds:
    /// `rules.items`, items older than `rules.max_age` at `now`, and on its own more than the total budget.
    pub(crate) fn push(&mut self, release: &Arc<Release>, now: Instant, rules: &HistoryConfig) {
        let cost = cost(&release.item);
        self.items.push_back(release.clone());
        self.bytes += cost;
        self.totals.add(cost);
        while self.items.len() > rules.items || (self.bytes > rules.max_bytes && self.len() > 1) {
            self.pop_front();
        }
        self.expire(now, rules.max_age);
    }

    /// Drops items older than `max_age` at `now`.
    pub(crate) fn expire(&mut self, now: Instant, max_age: Duration) {
        while self
            .items
            .front()
            .is_some_and(|r| now.saturating_duration_since(r.item.accepted) >= max_age)
        {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(oldest) = self.items.pop_front() {
            let cost = cost(&oldest.item);
            self.bytes -= cost;
            self.totals.sub(cost, 1);
        }
    }

    /// Drops every item.
    #[cfg(test)]
    fn clear(&mut self) {
        self.totals
            .sub(self.bytes - CHANNEL_OVERHEAD, self.items.len());
        self.items.clear();
        self.bytes = CHANNEL_OVERHEAD;
    }

    /// The position of the item that follows `prev_id` (names it as its prev-id), if it is kept and younger than
    /// `max_age` at `now`. The most recent such item, should ids repeat.
    fn position_after(&self, prev_id: &str, now: Instant, max_age: Duration) -> Option<usize> {
        let pos = self
            .items
            .iter()
            .rposition(|r| r.item.prev_id.as_deref() == Some(prev_id))?;
        let item = &self.items[pos].item;
        (now.saturating_duration_since(item.accepted) < max_age).then_some(pos)
    }

    /// For a response hold after `prev_id`: the item that follows it, if kept and if it answers a response hold
    /// (an `http-response` to send; a hint, or an item of other formats, leaves the client to its origin).
    pub(crate) fn next_response(
        &self,
        prev_id: &str,
        now: Instant,
        max_age: Duration,
    ) -> Option<&Arc<Release>> {
        let release = &self.items[self.position_after(prev_id, now, max_age)?];
        release
            .item
            .http_response
            .as_ref()
            .is_some_and(|r| r.action == Action::Send)
            .then_some(release)
    }

    /// For a stream after `prev_id`: every kept item from the one that follows it to the last, in order.
    pub(crate) fn since(
        &self,
        prev_id: &str,
        now: Instant,
        max_age: Duration,
    ) -> Option<impl Iterator<Item = &Arc<Release>>> {
        let pos = self.position_after(prev_id, now, max_age)?;
        Some(self.items.range(pos..))
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.totals.sub(self.bytes, self.items.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(items: usize, max_bytes: usize) -> HistoryConfig {
        HistoryConfig {
            items,
            max_age: Duration::from_secs(60),
            max_bytes,
        }
    }

    fn release(id: u32, prev: Option<u32>, body: &str) -> Arc<Release> {
        let id = id.to_string();
        let prev = prev.map(|p| p.to_string());
        Arc::new(Release::new(Arc::new(Item::test_response(
            "c",
            Some(&id),
            prev.as_deref(),
            body,
        ))))
    }

    fn ids<'a>(it: impl Iterator<Item = &'a Arc<Release>>) -> Vec<String> {
        it.map(|r| r.item.id.as_deref().unwrap_or("-").to_owned())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_order_and_finds_the_item_after_a_prev_id() {
        let totals = Arc::new(Totals::default());
        let mut h = History::new(totals.clone());
        let r = rules(3, 1 << 20);
        for i in 1..=5 {
            h.push(
                &release(i, i.checked_sub(1).filter(|p| *p > 0), "x"),
                Instant::now(),
                &r,
            );
        }
        assert_eq!(
            ids(h.items.iter()),
            ["3", "4", "5"],
            "the last 3, oldest first"
        );
        let now = Instant::now();
        let age = r.max_age;
        assert_eq!(ids(h.since("2", now, age).unwrap()), ["3", "4", "5"]);
        assert_eq!(ids(h.since("4", now, age).unwrap()), ["5"]);
        assert!(h.since("1", now, age).is_none(), "older than the history");
        assert!(h.since("5", now, age).is_none(), "nothing after the last");
        assert!(h.since("zz", now, age).is_none(), "unknown");
        assert_eq!(
            h.next_response("3", now, age).map(|r| r.item.id.clone()),
            Some(Some("4".into()))
        );
        assert_eq!((totals.items(), totals.bytes()), (3, h.bytes()));
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_are_accounted_and_given_back() {
        let totals = Arc::new(Totals::default());
        let r = rules(100, 1 << 20);
        let one = release(1, None, &"x".repeat(1000));
        let expected = cost(&one.item);
        assert!(expected >= 2000, "the body counts, twice: {expected}");
        {
            let mut h = History::new(totals.clone());
            h.push(&one, Instant::now(), &r);
            h.push(&release(2, Some(1), "y"), Instant::now(), &r);
            assert_eq!(h.bytes(), totals.bytes());
            assert_eq!(totals.items(), 2);
            assert!(
                Arc::ptr_eq(&h.items[0], &one),
                "shared with the release, not copied"
            );
            h.clear();
            assert_eq!((totals.bytes(), totals.items()), (CHANNEL_OVERHEAD, 0));
            h.push(&one, Instant::now(), &r);
            assert_eq!(totals.bytes(), expected + CHANNEL_OVERHEAD);
        }
        assert_eq!(
            (totals.bytes(), totals.items()),
            (0, 0),
            "dropped: given back"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_channel_never_keeps_more_than_the_budget_nor_older_than_its_age() {
        let totals = Arc::new(Totals::default());
        let mut h = History::new(totals.clone());
        let one = cost(&release(1, None, "x").item);
        let r = rules(100, CHANNEL_OVERHEAD + 3 * one + one / 2);
        for i in 1..=10 {
            h.push(&release(i, Some(i - 1), "x"), Instant::now(), &r);
        }
        assert_eq!(h.len(), 3);
        assert!(totals.bytes() <= r.max_bytes);
        tokio::time::advance(Duration::from_secs(30)).await;
        h.push(&release(11, Some(10), "x"), Instant::now(), &r);
        let now = Instant::now();
        assert!(h.since("9", now, r.max_age).is_some());
        tokio::time::advance(Duration::from_secs(31)).await;
        let now = Instant::now();
        assert!(
            h.since("9", now, r.max_age).is_none(),
            "an item past its age is not served"
        );
        assert!(h.since("10", now, r.max_age).is_some());
        h.expire(now, r.max_age);
        assert_eq!(ids(h.items.iter()), ["11"]);
        assert_eq!(totals.items(), 1);
    }

    #[test]
    fn a_hint_or_a_stream_only_item_does_not_answer_a_response_hold() {
        let totals = Arc::new(Totals::default());
        let mut h = History::new(totals);
        let r = rules(10, 1 << 20);
        let mut hint = Item::test_response("c", Some("2"), Some("1"), "");
        if let Some(resp) = hint.http_response.as_mut() {
            resp.action = Action::Hint;
        }
        let mut stream = Item::test_response("c", Some("3"), Some("2"), "");
        stream.http_response = None;
        stream.http_stream = Some(HttpStream::Content("s".into()));
        let now = tokio::time::Instant::now();
        h.push(&Arc::new(Release::new(Arc::new(hint))), now, &r);
        h.push(&Arc::new(Release::new(Arc::new(stream))), now, &r);
        assert!(h.next_response("1", now, r.max_age).is_none());
        assert!(h.next_response("2", now, r.max_age).is_none());
        assert_eq!(ids(h.since("1", now, r.max_age).unwrap()), ["2", "3"]);
    }
}
