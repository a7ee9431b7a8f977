//! Catch-up from channel history: a response hold behind its channel's last id answered with the item that
//! follows its prev-id, from the registry's history instead of a re-fetch; hits and misses counted.

use std::sync::Arc;

use super::{Outcome, ProxyState, Waited};
use crate::grip::ResponseParts;
use crate::hold::Release;
use crate::metrics::HistoryKind;

/// The answer of a response hold whose next item (`next`, the one naming its prev-id) is in the history: the
/// item merged into the held response, as if it had just been published. The origin is not asked.
pub(super) fn answer(state: &ProxyState, held: &Arc<ResponseParts>, next: &Release) -> Waited {
    state.metrics.history_hits(HistoryKind::Response, 1);
    state.metrics.delivery();
    match &next.item.http_response {
        Some(published) => {
            Waited::Answer(next.response_for(held, &published.parts), Outcome::Released)
        }
        // The registry answers from the history only with an `http-response` to send.
        None => Waited::Refetch(None),
    }
}

/// A hold behind its channel's last id that the history could not answer (history on): it goes to the origin.
pub(super) fn missed(state: &ProxyState, kind: HistoryKind) {
    if state.registry.history_totals().is_some() {
        state.metrics.history_miss(kind);
    }
}

/// A stream that subscribed behind its channel's last id and was given `replayed` items from the history.
pub(super) fn replayed(state: &ProxyState, replayed: usize) {
    if replayed > 0 {
        state.metrics.history_hits(HistoryKind::Stream, replayed);
    }
}
