//! A stream's feed: the items published to its channels and not yet taken by its connection, in publish order,
//! bounded in bytes. Publishers push under the channel's entry lock and never wait; past the bound the feed ends
//! (the client is disconnected) rather than drop an item from the middle of the stream. While the stream is idle,
//! a publish writes its content to the client's socket itself instead of queueing it (see [`Gate`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;

use super::Release;
use crate::h1::DirectWrite;
use crate::item::HttpStream;

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
    /// The client's socket (a chunked stream), when a publish may write content to it itself.
    direct: Option<DirectWrite>,
}

/// Who may write to the stream's socket next.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// The stream's connection (its body and writer): the default, and whenever anything is queued or handed out.
    #[default]
    Connection,
    /// Any publish: the stream is idle (nothing queued here, in its body or in its writer), so the next item's
    /// content may go straight to the socket, in order.
    Open,
    /// A publish is writing to the socket now; the connection waits for it to finish.
    Writing,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Arc<Release>>,
    /// Content bytes in `queue`.
    bytes: usize,
    recover: bool,
    end: Option<FeedEnd>,
    waker: Option<Waker>,
    gate: Gate,
    /// Items a publish wrote to the socket since the connection last looked.
    written: u64,
    /// What the socket did not take of the last piece a publish wrote: the connection writes it before anything
    /// else.
    rest: Option<Bytes>,
}

/// What the stream's connection takes back when it claims its socket ([`Feed::poll_claim`]).
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    /// Items publishes wrote to the socket meanwhile.
    pub(crate) written: u64,
    /// The part of the last one the socket did not take, to write first.
    pub(crate) rest: Option<Bytes>,
}

impl Feed {
    /// An empty feed holding at most `limit` bytes of content; `direct`: the client's socket, for a chunked
    /// stream whose publishes may write to it while it is idle.
    pub(crate) fn new(limit: usize, direct: Option<DirectWrite>) -> Self {
        Feed {
            state: Mutex::new(State::default()),
            limit,
            direct,
        }
    }

    /// Queues an item (`len`: its content's size), or, when the stream is idle and the item is content, claims the
    /// socket for the publish to write it ([`Feed::write_claimed`], after the channel's lock is released):
    /// `true` then. Past the bound the feed ends with [`FeedEnd::Overflow`] and what it held is dropped: the
    /// client gets nothing more, never a stream with a hole in it.
    pub(crate) fn push(&self, release: &Arc<Release>, len: usize) -> bool {
        let waker = {
            let mut s = self.state.lock();
            if s.end.is_some() {
                return false;
            }
            let content = matches!(release.item.http_stream, Some(HttpStream::Content(_)));
            if s.gate == Gate::Open && content && len > 0 && self.direct.is_some() {
                s.gate = Gate::Writing;
                return true;
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
        false
    }

    /// Writes the item a [`Feed::push`] claimed the socket for, then gives the socket back: to the next publish
    /// if nothing came meanwhile, else to the connection (woken), which first writes what the socket did not take.
    /// Returns whether the socket took the whole piece.
    pub(crate) fn write_claimed(&self, release: &Release) -> bool {
        let piece = release.stream_bytes(true).unwrap_or_default();
        let written = match &self.direct {
            Some(direct) => direct.write_now(&piece),
            None => 0,
        };
        let whole = written == piece.len();
        let waker = {
            let mut s = self.state.lock();
            s.written += 1;
            if written < piece.len() {
                s.rest = Some(piece.slice(written..));
            }
            let idle = s.rest.is_none() && s.queue.is_empty() && !s.recover && s.end.is_none();
            if idle {
                s.gate = Gate::Open;
                None
            } else {
                s.gate = Gate::Connection;
                s.waker.take()
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        whole
    }

    /// The connection takes the socket back before it hands anything out: what publishes wrote meanwhile, and
    /// what is left of the last piece. `Pending` while a publish is writing (woken when it is done).
    pub(crate) fn poll_claim(&self, cx: &mut Context<'_>) -> Poll<Claimed> {
        let mut s = self.state.lock();
        if s.gate == Gate::Writing {
            s.register(cx);
            return Poll::Pending;
        }
        s.gate = Gate::Connection;
        Poll::Ready(Claimed {
            written: std::mem::take(&mut s.written),
            rest: s.rest.take(),
        })
    }

    /// Takes the count of items publishes wrote to the socket since the connection last looked (for its metrics,
    /// when it ends).
    pub(crate) fn take_written(&self) -> u64 {
        std::mem::take(&mut self.state.lock().written)
    }

    /// The connection has nothing queued, nothing to hand out and nothing unwritten: the next content item may be
    /// written by its publish. Ignored when anything is waiting here or the feed cannot write to the socket.
    pub(crate) fn open(&self) {
        let mut s = self.state.lock();
        let idle = s.rest.is_none() && s.queue.is_empty() && !s.recover && s.end.is_none();
        if idle && self.direct.is_some() && s.gate == Gate::Connection {
            s.gate = Gate::Open;
        }
    }

    /// Ends the feed (shutdown). Items already queued are still handed out first.
    pub(crate) fn end(&self, how: FeedEnd) {
        let waker = {
            let mut s = self.state.lock();
            s.end.get_or_insert(how);
            s.close_gate();
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
            s.close_gate();
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
        s.register(cx);
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
        s.register(cx);
        Poll::Pending
    }
}

impl State {
    /// Gives the socket back to the connection unless a publish is writing (it gives it back when done).
    fn close_gate(&mut self) {
        if self.gate == Gate::Open {
            self.gate = Gate::Connection;
        }
    }

    fn register(&mut self, cx: &mut Context<'_>) {
        match &self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => self.waker = Some(cx.waker().clone()),
        }
    }

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

    /// A feed lent one end of a loopback connection, and the other end.
    async fn lent() -> (Feed, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let socket = Arc::new(accepted.unwrap().0);
        (
            Feed::new(1024, Some(DirectWrite::new(socket))),
            client.unwrap(),
        )
    }

    fn claim(feed: &Feed) -> Poll<Claimed> {
        feed.poll_claim(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn publishes_write_only_while_the_connection_has_opened_the_gate_and_nothing_waits() {
        let (feed, mut client) = lent().await;
        assert!(
            !feed.push(&release("a"), 1),
            "closed until the connection opens it"
        );
        feed.open();
        assert!(
            !feed.push(&release("b"), 1),
            "not while an item waits in the queue"
        );
        assert!(matches!(take(&feed), Poll::Ready((Fed::Items, 2))));
        feed.open();
        assert!(
            feed.push(&release("c"), 1),
            "idle and open: the publish writes"
        );
        assert!(
            !feed.push(&release("d"), 1),
            "a second item queues behind the write"
        );
        assert!(
            claim(&feed).is_pending(),
            "the connection waits while a publish writes"
        );
        assert!(feed.write_claimed(&release("c")));
        let Poll::Ready(claimed) = claim(&feed) else {
            panic!("the socket is the connection's again");
        };
        assert_eq!((claimed.written, claimed.rest), (1, None));
        assert!(!feed.push(&release("e"), 1), "claimed back: items queue");
        let mut got = [0u8; 6];
        tokio::io::AsyncReadExt::read_exact(&mut client, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"1\r\nc\r\n", "c went out as one chunk");

        assert!(matches!(take(&feed), Poll::Ready((Fed::Items, 2))));
        feed.open();
        feed.recover();
        assert!(!feed.push(&release("f"), 1), "a recovery closes the gate");
        assert!(matches!(take(&feed), Poll::Ready((Fed::Items, 1))));
        assert!(matches!(take(&feed), Poll::Ready((Fed::Recover, 0))));
    }

    #[test]
    fn a_feed_without_a_socket_never_lets_a_publish_write() {
        let feed = Feed::new(10, None);
        feed.open();
        assert!(!feed.push(&release("a"), 1));
    }

    #[test]
    fn items_in_order_then_the_end() {
        let feed = Feed::new(10, None);
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
        let feed = Feed::new(4, None);
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
        let feed = Feed::new(4, None);
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
