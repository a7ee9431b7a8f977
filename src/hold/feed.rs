//! A stream's feed: the items published to its channels and not yet taken by its connection, in publish order,
//! bounded in bytes. Publishers push under the channel's entry lock and never wait; past the bound the feed ends
//! (the client is disconnected) rather than drop an item from the middle of the stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::Release;

/// How a feed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FeedEnd {
    /// The proxy is shutting down.
    Shutdown,
    /// More than the bound was queued: the client does not keep up.
    Overflow,
}

/// What a stream's connection finds when it looks at its feed.
#[derive(Debug)]
pub(crate) enum Fed {
    /// Items, oldest first, moved into the caller's queue.
    Items,
    /// Recovery: what the stream waits for may have been missed (a bus outage, `POST /recover`).
    Recover,
    /// The feed ended; nothing more comes.
    End(FeedEnd),
}

/// One stream's queue. Shared by the channels it is subscribed to (each pushes into it) and its connection.
#[derive(Debug)]
pub(crate) struct Feed {
    state: Mutex<State>,
    /// Most bytes of content queued at once.
    limit: usize,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Arc<Release>>,
    /// Content bytes in `queue`.
    bytes: usize,
    recover: bool,
    end: Option<FeedEnd>,
    waker: Option<Waker>,
}

impl Feed {
    /// An empty feed holding at most `limit` bytes of content.
    pub(crate) fn new(limit: usize) -> Self {
        Feed {
            state: Mutex::new(State::default()),
            limit,
        }
    }

    /// Queues an item (`len`: its content's size). Past the bound the feed ends with [`FeedEnd::Overflow`] and
    /// what it held is dropped: the client gets nothing more, never a stream with a hole in it.
    pub(crate) fn push(&self, release: &Arc<Release>, len: usize) {
        let waker = {
            let mut s = self.state.lock();
            if s.end.is_some() {
                return;
            }
            s.bytes = s.bytes.saturating_add(len);
            if s.bytes > self.limit {
                s.end = Some(FeedEnd::Overflow);
                s.queue = VecDeque::new();
                s.bytes = 0;
            } else {
                s.queue.push_back(release.clone());
            }
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ends the feed (shutdown). Items already queued are still handed out first.
    pub(crate) fn end(&self, how: FeedEnd) {
        let waker = {
            let mut s = self.state.lock();
            s.end.get_or_insert(how);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Asks the stream to recover (see [`Fed::Recover`]).
    pub(crate) fn recover(&self) {
        let waker = {
            let mut s = self.state.lock();
            s.recover = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes the queued items only (none if the feed overflowed), leaving a recovery request or the end for
    /// [`Feed::poll_take`].
    pub(crate) fn take_items(&self, into: &mut VecDeque<Arc<Release>>) {
        let mut s = self.state.lock();
        if s.end == Some(FeedEnd::Overflow) {
            return;
        }
        s.take_into(into);
    }

    /// `Ready` once the feed has ended for a shutdown; else registers the waker (items may queue meanwhile).
    pub(crate) fn poll_shutdown(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.state.lock();
        if s.end == Some(FeedEnd::Shutdown) {
            return Poll::Ready(());
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Takes what is there: queued items first, then a recovery request, then the end. `Pending` (and woken later)
    /// when there is nothing.
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<Arc<Release>>,
    ) -> Poll<Fed> {
        let mut s = self.state.lock();
        if !s.queue.is_empty() && s.end != Some(FeedEnd::Overflow) {
            s.take_into(into);
            return Poll::Ready(Fed::Items);
        }
        if std::mem::take(&mut s.recover) {
            return Poll::Ready(Fed::Recover);
        }
        if let Some(end) = s.end {
            return Poll::Ready(Fed::End(end));
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl State {
    /// Moves the queue into `into`. An empty `into` is swapped with the queue, so that both keep their buffers
    /// and a busy stream allocates nothing per item.
    fn take_into(&mut self, into: &mut VecDeque<Arc<Release>>) {
        self.bytes = 0;
        if into.is_empty() {
            std::mem::swap(&mut self.queue, into);
        } else {
            into.extend(self.queue.drain(..));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::{HttpStream, Item};
    use std::task::Waker;

    fn release(body: &'static str) -> Arc<Release> {
        let mut item = Item::test_response("c", None, None, "");
        item.http_response = None;
        item.http_stream = Some(HttpStream::Content(body.into()));
        Arc::new(Release::new(Arc::new(item)))
    }

    fn take(feed: &Feed) -> Poll<(Fed, usize)> {
        let mut into = VecDeque::new();
        feed.poll_take(&mut Context::from_waker(Waker::noop()), &mut into)
            .map(|fed| (fed, into.len()))
    }

    #[test]
    fn items_in_order_then_the_end() {
        let feed = Feed::new(10);
        assert!(take(&feed).is_pending());
        feed.push(&release("ab"), 2);
        feed.push(&release("cd"), 2);
        feed.end(FeedEnd::Shutdown);
        assert!(
            matches!(take(&feed), Poll::Ready((Fed::Items, 2))),
            "items first"
        );
        assert!(matches!(
            take(&feed),
            Poll::Ready((Fed::End(FeedEnd::Shutdown), 0))
        ));
    }

    #[test]
    fn at_the_bound_is_kept_past_it_ends() {
        let feed = Feed::new(4);
        feed.push(&release("abcd"), 4);
        assert!(
            matches!(take(&feed), Poll::Ready((Fed::Items, 1))),
            "at the bound"
        );
        feed.push(&release("abc"), 3);
        feed.push(&release("de"), 2);
        assert!(
            matches!(take(&feed), Poll::Ready((Fed::End(FeedEnd::Overflow), 0))),
            "past it: nothing of what was queued, only the end"
        );
        feed.push(&release("x"), 1);
        assert!(matches!(
            take(&feed),
            Poll::Ready((Fed::End(FeedEnd::Overflow), 0))
        ));
    }

    #[test]
    fn just_below_the_bound_is_kept() {
        let feed = Feed::new(4);
        feed.push(&release("abc"), 3);
        assert!(matches!(take(&feed), Poll::Ready((Fed::Items, 1))));
        feed.push(&release("abc"), 3);
        feed.push(&release("x"), 1);
        assert!(
            matches!(take(&feed), Poll::Ready((Fed::Items, 2))),
            "3 + 1 is at the bound again: taking resets the count"
        );
    }
}
