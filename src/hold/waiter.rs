//! A parked client's place in the registry, in one allocation shared by every channel it waits on: its channels,
//! what a release needs to answer it by writing to its socket, and the delivery its task takes.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use super::{Delivery, Release};
use crate::grip::{ChannelSub, ResponseParts};
use crate::h1::{DirectWrite, PreEncoded};
use crate::item::Action;

/// What a release needs to answer a parked client itself: the client's socket, and the response it is held with
/// (the release is written only when its shared encoding was made for that same held response).
#[derive(Debug)]
pub(crate) struct Direct {
    /// The client's socket.
    pub(crate) socket: DirectWrite,
    /// The held response.
    pub(crate) held: Arc<ResponseParts>,
}

/// A parked client, shared by the channels it waits on (the first delivery takes it) and its `Parked` guard.
#[derive(Debug)]
pub(crate) struct Waiter {
    /// The channels, with the prev-id the hold gave on each.
    subs: Box<[ChannelSub]>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    stage: Stage,
    /// The client's task, to wake once a delivery is here.
    waker: Option<Waker>,
    /// Present while waiting, when the release may write to the socket; dropped as soon as the wait ends.
    direct: Option<Direct>,
}

#[derive(Debug)]
enum Stage {
    /// In its channels, waiting.
    Waiting,
    /// A delivery took it out of the channel(s) it came from; its task has not taken the delivery yet.
    Delivered(Delivery),
    /// Its task took the delivery.
    Received,
    /// Its task stopped waiting (the timeout) before any delivery came: still in its channels until its guard
    /// leaves them.
    Abandoned,
}

/// What [`Waiter::deliver`] did.
pub(crate) enum Told {
    /// Another delivery took the waiter first, or its task stopped waiting.
    No,
    /// Delivered; wake this task (`None`: it was not waiting yet and will see the delivery when it polls).
    Yes(Option<Waker>, Wrote),
}

/// How much of its response a release wrote to a client's socket itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wrote {
    /// Nothing: the client's task writes its answer (no socket lent, another answer, or the socket was full).
    Nothing,
    /// Part: the socket took some; the task writes the rest.
    Part,
    /// All of it.
    All,
}

impl Waiter {
    pub(crate) fn new(subs: Vec<ChannelSub>, direct: Option<Direct>) -> Self {
        Waiter {
            subs: subs.into_boxed_slice(),
            state: Mutex::new(State {
                stage: Stage::Waiting,
                waker: None,
                direct,
            }),
        }
    }

    /// The channels it waits on.
    pub(crate) fn subs(&self) -> &[ChannelSub] {
        &self.subs
    }

    /// The prev-id the hold waits after on `channel`.
    pub(crate) fn prev_id(&self, channel: &str) -> Option<&str> {
        self.subs
            .iter()
            .find(|s| &*s.name == channel)
            .and_then(|s| s.prev_id.as_deref())
    }

    /// Hands it `delivery` unless another got there first. The caller wakes the returned task when it is ready to:
    /// a release to many clients writes to every socket before waking any task.
    pub(crate) fn deliver(&self, delivery: Delivery) -> Told {
        let mut state = self.state.lock();
        if !matches!(state.stage, Stage::Waiting) {
            return Told::No;
        }
        let mut wrote = Wrote::Nothing;
        let delivery = match (delivery, state.direct.take()) {
            (Delivery::Item(release), Some(direct)) => match self.write(&release, &direct) {
                Some((encoded, written)) => {
                    wrote = if written == encoded.wire().len() {
                        Wrote::All
                    } else {
                        Wrote::Part
                    };
                    Delivery::Written {
                        release,
                        encoded,
                        written,
                    }
                }
                None => Delivery::Item(release),
            },
            (delivery, _) => delivery,
        };
        state.stage = Stage::Delivered(delivery);
        Told::Yes(state.waker.take(), wrote)
    }

    /// Writes the release's response to the client's socket when it is the one the client gets, as
    /// `proxy::answer` would build it: the item carries an `http-response` to send, the client is not behind it,
    /// and its held response is the one the shared encoding was made for. Returns the encoding and how many of its
    /// bytes the socket took (`None`: none; the client's task writes the rest). Runs under the waiter's lock, so
    /// that the task cannot answer the client otherwise meanwhile.
    fn write(&self, release: &Release, direct: &Direct) -> Option<(PreEncoded, usize)> {
        let item = &release.item;
        let published = item.http_response.as_ref()?;
        if published.action != Action::Send || !release.follows(self.prev_id(&item.channel)) {
            return None;
        }
        let encoded = release.encoded_for(&direct.held, &published.parts)?;
        match direct.socket.write_now(encoded.wire()) {
            0 => None,
            written => Some((encoded.clone(), written)),
        }
    }

    /// The delivery, once there is one; registers the task to be woken otherwise.
    pub(crate) fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Delivery> {
        let mut state = self.state.lock();
        match std::mem::replace(&mut state.stage, Stage::Received) {
            Stage::Delivered(delivery) => Poll::Ready(delivery),
            // Polled after it took its delivery (not done by `Parked`): nothing more will come.
            Stage::Received => Poll::Ready(Delivery::Shutdown),
            waiting @ (Stage::Waiting | Stage::Abandoned) => {
                state.stage = waiting;
                if !state
                    .waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }

    /// Its task stops waiting (the hold's timeout): from now on no delivery takes it. `Some`: a delivery took it
    /// first, and may have written to the client already; the task must answer with it.
    pub(crate) fn abandon(&self) -> Option<Delivery> {
        let mut state = self.state.lock();
        state.direct = None;
        match std::mem::replace(&mut state.stage, Stage::Abandoned) {
            Stage::Delivered(delivery) => {
                state.stage = Stage::Received;
                Some(delivery)
            }
            Stage::Received => {
                state.stage = Stage::Received;
                None
            }
            Stage::Waiting | Stage::Abandoned => None,
        }
    }

    /// Whether a delivery took it (and so took it out of the channel that delivery came from).
    pub(crate) fn was_delivered(&self) -> bool {
        let mut state = self.state.lock();
        state.direct = None;
        matches!(state.stage, Stage::Delivered(_) | Stage::Received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::item::Item;

    fn release() -> Arc<Release> {
        Arc::new(Release::new(Arc::new(Item::test_response(
            "c", None, None, "x",
        ))))
    }

    #[test]
    fn a_timed_out_waiter_takes_no_delivery_and_a_delivered_one_keeps_its_delivery() {
        let timed_out = Waiter::new(Vec::new(), None);
        assert!(timed_out.abandon().is_none());
        assert!(matches!(
            timed_out.deliver(Delivery::Item(release())),
            Told::No
        ));
        assert!(!timed_out.was_delivered());

        let delivered = Waiter::new(Vec::new(), None);
        assert!(matches!(
            delivered.deliver(Delivery::Item(release())),
            Told::Yes(None, Wrote::Nothing)
        ));
        assert!(
            matches!(delivered.abandon(), Some(Delivery::Item(_))),
            "the timeout after a delivery answers with the delivery"
        );
        assert!(delivered.was_delivered());
        assert!(matches!(delivered.deliver(Delivery::Shutdown), Told::No));
    }

    #[test]
    fn the_task_is_woken_once_the_delivery_is_there() {
        let waiter = Waiter::new(Vec::new(), None);
        let (waker, woken) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(waiter.poll_recv(&mut cx).is_pending());
        let Told::Yes(Some(to_wake), _) = waiter.deliver(Delivery::Refetch) else {
            panic!("delivered, with the task to wake");
        };
        to_wake.wake();
        assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(matches!(
            waiter.poll_recv(&mut cx),
            Poll::Ready(Delivery::Refetch)
        ));
    }

    fn counting_waker() -> (Waker, Arc<std::sync::atomic::AtomicUsize>) {
        struct Count(Arc<std::sync::atomic::AtomicUsize>);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (Waker::from(Arc::new(Count(count.clone()))), count)
    }
}
