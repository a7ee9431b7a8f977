//! Stream holds: the response stays open, and what is published to its channels (`http-stream` items), keep-alive
//! data and the answers of its `rel=next` link are appended as they come. [`StreamBody`] is that response's body;
//! the connection writes its pieces as they are (already framed) and tells it nothing but that it is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tokio_util::task::AbortOnDropHandle;

use super::{read_held_body, ProxyState};
use crate::body::{self, Body, BoxError};
use crate::error::ProxyError;
use crate::front::{StreamAbort, Streaming};
use crate::grip::stream::{KeepAlive, KeepAliveMode, NextLink, StreamInstruction};
use crate::grip::{self, instruct, Hold, HoldMode, ResponseParts};
use crate::h1::{encode, Framing};
use crate::hold::{Fed, FeedEnd, Release, Subscription};
use crate::item::HttpStream;
use crate::limits::HoldSlot;
use crate::routes::Route;

/// Failed link fetches are retried this many times (Pushpin's number), then the stream ends.
const LINK_RETRIES: u32 = 5;
/// Link answers in a row that may give only a next link (pages of what was missed) before the stream ends.
const LINK_PAGES: u32 = 100;
/// The first retry waits this long, each next one twice as long, plus up to a second of jitter.
const LINK_RETRY_BASE: Duration = Duration::from_secs(1);

/// Where and how a stream's links are fetched: its route's origin and signer.
pub(crate) struct LinkBase {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    signer: Arc<grip::sig::Signer>,
    /// The route's TLS setting, for links to its `https` origin.
    tls: Option<crate::tls::client::OriginTls>,
}

impl LinkBase {
    pub(crate) fn of(route: &Route) -> Self {
        LinkBase {
            scheme: route.scheme.clone(),
            authority: route.authority.clone(),
            signer: route.signer.clone(),
            tls: route.tls.clone(),
        }
    }
}

/// Checks a stream hold before anything is sent: its status must allow a body, and a channel with a prev-id needs
/// a `rel=next` link, the only way a stream that misses an item can catch up (Pushpin starts such a stream, then
/// ends it at once).
pub(crate) fn check(hold: &Hold, status: http::StatusCode) -> Result<(), ProxyError> {
    if status == http::StatusCode::NO_CONTENT || status == http::StatusCode::NOT_MODIFIED {
        return Err(grip::GripError::new(
            "Grip-Hold",
            "stream",
            format!(
                "a stream cannot have status {} (it has no body)",
                status.as_u16()
            ),
        )
        .into());
    }
    let has_next = hold.stream.as_ref().is_some_and(|s| s.next.is_some());
    match hold.channels.iter().find(|c| c.prev_id.is_some()) {
        Some(c) if !has_next => Err(grip::GripError::new(
            "Grip-Channel",
            &c.name,
            "a stream hold with prev-id needs a Grip-Link with rel=next to catch up from",
        )
        .into()),
        _ => Ok(()),
    }
}

/// The response that opens a stream: the held response's status and headers, its body as the first piece.
pub(crate) fn response(
    state: Arc<ProxyState>,
    (sub, client_hold): (Subscription, Option<HoldSlot>),
    hold: &Hold,
    held: &ResponseParts,
    base: LinkBase,
    chunked: bool,
) -> Response<Body> {
    let caught_up = Arc::new(AtomicBool::new(false));
    let mut headers = held.headers.clone();
    headers.remove(header::CONTENT_LENGTH);
    let framing = if chunked {
        Framing::Chunked
    } else {
        Framing::Close
    };
    let seed = seed(&sub);
    let mut body = StreamBody {
        state,
        sub,
        chunked,
        ready: Ready::default(),
        prev_ids: hold
            .channels
            .iter()
            .map(|c| (c.name.clone(), c.prev_id.clone()))
            .collect(),
        _client_hold: client_hold,
        extra: Box::new(Extra::default()),
        base: Arc::new(base),
        fetch: None,
        retries: 0,
        pages: 0,
        done: false,
        rng: seed,
        caught_up: caught_up.clone(),
    };
    body.push_piece(&held.body);
    body.apply_instruction(hold.stream.as_deref());
    let metrics = body.state.metrics.clone();
    let max_queued = body.state.hold.max_stream_queue;
    let mut resp = Response::new(http_body_util::BodyExt::boxed(body));
    *resp.status_mut() = held.status;
    *resp.headers_mut() = headers;
    if let Some(reason) = &held.reason {
        if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason.clone()) {
            resp.extensions_mut().insert(phrase);
        }
    }
    resp.extensions_mut().insert(Streaming {
        framing,
        max_queued,
        slow: Arc::new(move || metrics.slow_stream_dropped()),
        caught_up,
    });
    resp
}

/// A stream's keep-alive and links, set by the hold and by each link answer that holds again.
#[derive(Default)]
struct Extra {
    keep_alive: Option<(KeepAlive, Bytes)>,
    keep_alive_at: Option<Pin<Box<Sleep>>>,
    next: Option<NextLink>,
    next_at: Option<Pin<Box<Sleep>>>,
    gone: Option<Box<str>>,
    /// Items taken from the feed and not yet written (a link fetch came between).
    queued: std::collections::VecDeque<Arc<Release>>,
}

/// Framed pieces ready to hand out, in order. Published items' pieces are the bytes every stream of the channel
/// shares: one alone is handed out as it is (no copy, no allocation), several are joined.
#[derive(Default)]
enum Ready {
    #[default]
    Nothing,
    One(Bytes),
    Joined(BytesMut),
}

impl Ready {
    fn is_nothing(&self) -> bool {
        matches!(self, Ready::Nothing)
    }

    fn push(&mut self, piece: Bytes) {
        *self = match std::mem::take(self) {
            Ready::Nothing => Ready::One(piece),
            Ready::One(first) => {
                let mut joined = BytesMut::with_capacity(first.len() + piece.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&piece);
                Ready::Joined(joined)
            }
            Ready::Joined(mut joined) => {
                joined.extend_from_slice(&piece);
                Ready::Joined(joined)
            }
        };
    }

    fn take(&mut self) -> Bytes {
        match std::mem::take(self) {
            Ready::Nothing => Bytes::new(),
            Ready::One(piece) => piece,
            Ready::Joined(joined) => joined.freeze(),
        }
    }
}

/// A link answer, read whole.
struct Fetched {
    status: http::StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// The body of a stream response. Each poll hands the connection everything ready at once, framed for it.
pub(crate) struct StreamBody {
    state: Arc<ProxyState>,
    /// The client's hold place (`limits.client_max_holds`), given back when the stream ends. Declared before
    /// `sub`, so given back before the registry counts the stream gone.
    _client_hold: Option<HoldSlot>,
    sub: Subscription,
    /// Chunked (HTTP/1.1) or close-delimited (HTTP/1.0).
    chunked: bool,
    /// Framed pieces ready to hand out, in order. Published items' pieces are the bytes every stream of the channel
    /// shares; one alone is handed out as it is, several are joined.
    ready: Ready,
    /// Each channel and the id the next item on it must name as its prev-id (`None`: any).
    prev_ids: Vec<(Box<str>, Option<Box<str>>)>,
    extra: Box<Extra>,
    base: Arc<LinkBase>,
    /// A link fetch under way, in its own task (its future is neither `Sync` nor small).
    fetch: Option<AbortOnDropHandle<Result<Fetched, ProxyError>>>,
    /// Failed fetches in a row.
    retries: u32,
    /// Link answers in a row that gave a next link without holding again.
    pages: u32,
    /// Ended: the last piece is out (close item, link answer without a hold, shutdown).
    done: bool,
    rng: u64,
    /// The connection's writer has nothing unwritten (see [`StreamBody::idle`]).
    caught_up: Arc<AtomicBool>,
}

impl StreamBody {
    /// Adds a piece of content to what is handed out next (nothing for empty content: an empty chunk would end the
    /// response).
    fn push_piece(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.ready.push(if self.chunked {
            encode::chunk(data)
        } else {
            Bytes::copy_from_slice(data)
        });
    }

    /// Takes a hold's (or a link answer's) keep-alive and links; timers start over.
    fn apply_instruction(&mut self, instr: Option<&StreamInstruction>) {
        let now = Instant::now();
        let e = &mut self.extra;
        e.keep_alive = instr.and_then(|i| i.keep_alive.clone()).map(|k| {
            let framed = if self.chunked {
                encode::chunk(&k.data)
            } else {
                k.data.clone()
            };
            (k, framed)
        });
        e.next = instr.and_then(|i| i.next.clone());
        if let Some(gone) = instr.and_then(|i| i.gone.clone()) {
            e.gone = Some(gone);
        }
        e.keep_alive_at = None;
        e.next_at = None;
        self.arm_keep_alive(now);
        if let Some(next) = &self.extra.next {
            self.extra.next_at = Some(Box::pin(tokio::time::sleep_until(now + next.timeout)));
        }
    }

    /// Sets the keep-alive timer to fire `timeout` from `from`, minus a jitter of up to a second (at most half the
    /// timeout), so that streams opened together do not all wake together.
    fn arm_keep_alive(&mut self, from: Instant) {
        let Some((k, _)) = &self.extra.keep_alive else {
            return;
        };
        let span = k.timeout.min(Duration::from_secs(2)) / 2;
        let jitter =
            Duration::from_nanos(next_random(&mut self.rng) % span.as_nanos().max(1) as u64);
        let at = from + k.timeout - jitter;
        match &mut self.extra.keep_alive_at {
            Some(sleep) => sleep.as_mut().reset(at),
            None => self.extra.keep_alive_at = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Something was written: an idle keep-alive and the link timer start over.
    fn wrote(&mut self) {
        let now = Instant::now();
        if matches!(&self.extra.keep_alive, Some((k, _)) if k.mode == KeepAliveMode::Idle) {
            self.arm_keep_alive(now);
        }
        if let (Some(next), Some(at)) = (&self.extra.next, &mut self.extra.next_at) {
            at.as_mut().reset(now + next.timeout);
        }
    }

    /// Whether publishes may write content straight to the socket now: nothing here or in the writer is waiting
    /// to go out, no link fetch is under way (items wait for its answer), and no channel's prev-id is checked
    /// (each item would need checking against it). Writing is then just appending, in publish order.
    fn idle(&self) -> bool {
        self.ready.is_nothing()
            && self.extra.queued.is_empty()
            && self.fetch.is_none()
            && !self.done
            && self.chunked
            && self.prev_ids.iter().all(|(_, p)| p.is_none())
            && self.caught_up.load(Ordering::Relaxed)
    }

    /// Applies items in order until one needs the origin (a gap, a hint): the rest wait in `queued`.
    fn apply_items(&mut self) {
        while let Some(release) = self.extra.queued.pop_front() {
            if self.fetch.is_some() || self.done {
                self.extra.queued.push_front(release);
                return;
            }
            let item = &release.item;
            let Some(slot) = self
                .prev_ids
                .iter_mut()
                .find(|(name, _)| *name == item.channel)
            else {
                continue; // a channel left by a followed link
            };
            if let Some(expected) = slot.1.as_deref() {
                if item.prev_id.as_deref() != Some(expected) {
                    tracing::debug!(channel = %item.channel, expected, prev_id = ?item.prev_id, "stream missed an item: fetching its next link");
                    // What was queued after the gap is the link answer's to give.
                    self.extra.queued.clear();
                    self.start_fetch();
                    return;
                }
                slot.1 = item.id.clone();
            }
            match &item.http_stream {
                Some(HttpStream::Content(_)) => {
                    if let Some(bytes) = release.stream_bytes(self.chunked) {
                        self.ready.push(bytes);
                        self.state.metrics.stream_item();
                    }
                }
                Some(HttpStream::Close) => {
                    self.done = true;
                    return;
                }
                Some(HttpStream::Hint) => {
                    self.extra.queued.clear();
                    self.start_fetch();
                    return;
                }
                None => {}
            }
        }
    }

    /// Starts fetching the `rel=next` link, if there is one and no fetch is under way.
    fn start_fetch(&mut self) {
        if self.fetch.is_some() {
            return;
        }
        let Some(next) = &self.extra.next else {
            tracing::debug!("stream has no rel=next link to catch up from; going on");
            return;
        };
        let uri = next.uri.clone();
        let last: Vec<(Box<str>, Box<str>)> = self
            .prev_ids
            .iter()
            .filter_map(|(c, p)| p.clone().map(|p| (c.clone(), p)))
            .collect();
        let delay = if self.retries == 0 {
            Duration::ZERO
        } else {
            LINK_RETRY_BASE * 2u32.pow(self.retries - 1)
                + Duration::from_millis(next_random(&mut self.rng) % 1000)
        };
        let state = self.state.clone();
        let base = self.base.clone();
        self.fetch = Some(AbortOnDropHandle::new(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            fetch_link(&state, &base, &uri, &last).await
        })));
    }

    /// Takes a link answer: its body is appended; a stream hold goes on with its channels and links, an answer
    /// with only a link fetches that one, any other ends the stream.
    fn take_answer(&mut self, answer: Result<Fetched, ProxyError>) {
        let fetched = match answer {
            Ok(f) if f.status.is_success() => f,
            Ok(f) => {
                return self.fetch_failed(&format!("status {}", f.status.as_u16()));
            }
            Err(e) => return self.fetch_failed(&e.to_string()),
        };
        self.retries = 0;
        let parsed = parse_answer(&self.state, &fetched);
        let (body, hold, links) = match parsed {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "stream's link answer has invalid GRIP instructions: ending the stream");
                self.done = true;
                return;
            }
        };
        self.push_piece(&body);
        match hold {
            Some(hold) if hold.mode == HoldMode::Stream => {
                self.pages = 0;
                self.sub.resubscribe(&hold.channels);
                self.prev_ids = hold
                    .channels
                    .iter()
                    .map(|c| (c.name.clone(), c.prev_id.clone()))
                    .collect();
                self.apply_instruction(hold.stream.as_deref());
                // Items queued meanwhile that do not follow the new hold are what its answer already gave.
                let prev_ids = &self.prev_ids;
                self.extra.queued.retain(|r| {
                    prev_ids.iter().any(|(c, p)| {
                        *c == r.item.channel
                            && (p.is_none() || r.item.prev_id.as_deref() == p.as_deref())
                    })
                });
            }
            Some(_) => {
                tracing::warn!("stream's link answered with a response hold: ending the stream");
                self.done = true;
            }
            None if links.next.is_some() => {
                // A page of what was missed, and where the next one is. Bounded: an origin that never holds again
                // must not keep the proxy fetching in a loop.
                self.pages += 1;
                if self.pages > LINK_PAGES {
                    tracing::warn!(
                        pages = LINK_PAGES,
                        "stream's links kept answering without holding again: ending the stream"
                    );
                    self.done = true;
                    return;
                }
                self.extra.next = links.next;
                self.start_fetch();
            }
            None => self.done = true,
        }
    }

    fn fetch_failed(&mut self, why: &str) {
        self.retries += 1;
        if self.retries > LINK_RETRIES {
            tracing::warn!(
                error = why,
                "stream's next link kept failing: ending the stream"
            );
            self.done = true;
            return;
        }
        tracing::debug!(
            error = why,
            retry = self.retries,
            "stream's next link failed: retrying"
        );
        self.start_fetch();
    }
}

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // The socket is the connection's again before it hands anything out; what publishes wrote to it while the
        // stream was idle counts as written (its timers start over), and what the socket did not take goes first.
        let claimed = std::task::ready!(this.sub.feed().poll_claim(cx));
        if claimed.written > 0 {
            this.wrote();
            this.state.metrics.stream_items(claimed.written);
        }
        if let Some(rest) = claimed.rest {
            this.ready.push(rest);
        }
        loop {
            if !this.ready.is_nothing() {
                this.wrote();
                // Taken whole: an idle stream keeps no buffer.
                return Poll::Ready(Some(Ok(Frame::data(this.ready.take()))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(fetch) = &mut this.fetch {
                match Pin::new(fetch).poll(cx) {
                    Poll::Ready(answer) => {
                        this.fetch = None;
                        // Items published during the fetch are judged against what the answer says.
                        this.sub.feed().take_items(&mut this.extra.queued);
                        let answer = answer.unwrap_or_else(|e| {
                            Err(ProxyError::OriginProtocol(
                                format!("link fetch task: {e}").into(),
                            ))
                        });
                        this.take_answer(answer);
                        this.apply_items();
                        continue;
                    }
                    Poll::Pending => {
                        // A shutdown does not wait for the fetch: the stream ends now, with its last chunk.
                        if this.sub.feed().poll_shutdown(cx).is_ready() {
                            this.fetch = None;
                            this.done = true;
                            continue;
                        }
                    }
                }
            } else {
                match this.sub.feed().poll_take(cx, &mut this.extra.queued) {
                    Poll::Ready(Fed::Items) => {
                        this.apply_items();
                        continue;
                    }
                    Poll::Ready(Fed::Recover) => {
                        if this.extra.next.is_some() {
                            this.start_fetch();
                        } else {
                            // Items may have been missed and nothing can fill the gap: the client is disconnected
                            // (it reconnects and catches up from the origin) rather than given a stream with a hole.
                            tracing::info!(
                                "stream without a rel=next link may have missed items: ending it"
                            );
                            return Poll::Ready(Some(Err(Box::new(StreamAbort::Missed))));
                        }
                        continue;
                    }
                    Poll::Ready(Fed::End(FeedEnd::Shutdown)) => {
                        this.done = true;
                        continue;
                    }
                    Poll::Ready(Fed::End(FeedEnd::Overflow)) => {
                        return Poll::Ready(Some(Err(Box::new(StreamAbort::TooSlow))));
                    }
                    Poll::Pending => {}
                }
                let link_due = this
                    .extra
                    .next_at
                    .as_mut()
                    .is_some_and(|at| at.as_mut().poll(cx).is_ready());
                if link_due {
                    let timeout = this.extra.next.as_ref().map(|n| n.timeout);
                    if let (Some(at), Some(timeout)) = (&mut this.extra.next_at, timeout) {
                        at.as_mut().reset(Instant::now() + timeout);
                    }
                    this.start_fetch();
                    continue;
                }
            }
            if let Some(at) = &mut this.extra.keep_alive_at {
                if at.as_mut().poll(cx).is_ready() {
                    if let Some((_, framed)) = &this.extra.keep_alive {
                        let framed = framed.clone();
                        this.ready.push(framed);
                        this.state.metrics.keep_alive_sent();
                    }
                    let now = Instant::now();
                    this.arm_keep_alive(now);
                    continue;
                }
            }
            if this.idle() {
                this.sub.feed().open();
            }
            return Poll::Pending;
        }
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for StreamBody {
    fn drop(&mut self) {
        let written = self.sub.feed().take_written();
        if written > 0 {
            self.state.metrics.stream_items(written);
        }
        // Told only when the client went away (or was dropped as too slow), not when the stream ended itself.
        let Some(gone) = self.extra.gone.take().filter(|_| !self.done) else {
            return;
        };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let state = self.state.clone();
        let base = self.base.clone();
        handle.spawn(async move {
            let req = match link_request(&base, &gone, Method::POST, &[]) {
                Ok(req) => req,
                Err(e) => return tracing::debug!(error = %e, "cannot build the gone link request"),
            };
            match state.forwarder.send(req).await {
                Ok(resp) => tracing::debug!(status = resp.status().as_u16(), link = %gone, "told the origin a stream client is gone"),
                Err(e) => tracing::debug!(error = %e, link = %gone, "gone link failed"),
            }
        });
    }
}

/// `GET`s a stream's `rel=next` link, signed, with `Grip-Last` for each channel that has an id, and reads the answer
/// whole (bounded as a held body).
async fn fetch_link(
    state: &ProxyState,
    base: &LinkBase,
    uri: &str,
    last: &[(Box<str>, Box<str>)],
) -> Result<Fetched, ProxyError> {
    let req = link_request(base, uri, Method::GET, last)?;
    let resp = state.forwarder.send(req).await?;
    let (parts, body) = resp.into_parts();
    let body = read_held_body(state, body).await?;
    Ok(Fetched {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

fn link_request(
    base: &LinkBase,
    uri: &str,
    method: Method,
    last: &[(Box<str>, Box<str>)],
) -> Result<Request<Body>, ProxyError> {
    let target: Uri = if uri.starts_with('/') {
        Uri::builder()
            .scheme(base.scheme.clone())
            .authority(base.authority.clone())
            .path_and_query(uri)
            .build()
    } else {
        uri.parse().map_err(http::Error::from)
    }
    .map_err(|_| grip::GripError::new("Grip-Link", uri, "not a valid URI"))?;
    let mut req = Request::new(body::empty());
    *req.method_mut() = method;
    // A link to the route's own origin is verified as the route says; one elsewhere against the system's roots.
    if let Some(tls) = &base.tls {
        if target.scheme() == Some(&base.scheme) && target.authority() == Some(&base.authority) {
            req.extensions_mut().insert(tls.clone());
        }
    }
    *req.uri_mut() = target;
    let h = req.headers_mut();
    h.insert(HeaderName::from_static("grip-sig"), base.signer.header());
    for (channel, id) in last {
        if let Ok(v) = HeaderValue::from_str(&format!("{channel}; last-id={id}")) {
            h.append(HeaderName::from_static("grip-last"), v);
        }
    }
    Ok(req)
}

/// A link answer's body (the instruct body's response body, for an instruct answer), its hold, and its links.
fn parse_answer(
    state: &ProxyState,
    f: &Fetched,
) -> Result<(Bytes, Option<Hold>, StreamInstruction), grip::GripError> {
    let is_instruct = f
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with(instruct::CONTENT_TYPE));
    let links = grip::stream::from_headers(&f.headers)?;
    if is_instruct {
        let i = instruct::from_body(&f.body, state.hold.max_channels)?;
        return Ok((i.response.body, i.hold, links));
    }
    let hold = grip::parse::from_headers(&f.headers, state.hold.max_channels)?.map(|h| h.hold);
    Ok((f.body.clone(), hold, links))
}

/// A seed for a stream's jitter: its subscription's address and the time, mixed.
fn seed(sub: &Subscription) -> u64 {
    let addr = sub as *const Subscription as u64;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    addr ^ nanos.rotate_left(32) ^ 0x9E37_79B9_7F4A_7C15
}

/// splitmix64: enough randomness for timer jitter.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
