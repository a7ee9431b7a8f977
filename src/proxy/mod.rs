//! The proxy service: each client request goes through named phases: route, prepare, forward, inspect, park,
//! respond. A hold parks the request in the registry until a publish, the timeout, or shutdown.

mod catch_up;
mod conditional;
pub(crate) mod forward;
pub(crate) mod headers;
mod interned;
mod path;
pub(crate) mod recheck;
mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;

use crate::body::{Body, BoxError};
use crate::config::{Config, HoldConfig};
use crate::error::{ProxyError, Source};
use crate::grip::{self, instruct, GripError, HoldMode, ResponseParts};
use crate::h1::{DirectWrite, Written};
use crate::hold::{shared_response, Delivery, Direct, ParkError, Registry};
use crate::item::Action;
use crate::limits::{Client, Clients, HoldSlot, Refusal, Refused};
use crate::metrics::{route_label, HoldEnd, Metrics, RouteStats};
use crate::origin::OriginBody;
use crate::routes::{Route, RouteTable};
use forward::{Forwarder, Replayable};

/// A request re-sent this many times because of prev-id mismatches gets its timeout response instead, so a
/// publisher racing ahead of a slow origin cannot keep one request looping.
const MAX_REFETCHES: usize = 5;

/// Everything the proxy path reads. Built once; shared behind an `Arc`.
pub(crate) struct ProxyState {
    /// Route lookup.
    pub routes: RouteTable,
    /// Origin client.
    pub forwarder: Forwarder,
    /// Parked clients.
    pub registry: Registry,
    /// Hold settings.
    pub hold: HoldConfig,
    /// Add `X-Forwarded-For`.
    pub x_forwarded_for: bool,
    /// Add `X-Forwarded-Proto`.
    pub x_forwarded_proto: bool,
    /// Request bodies kept for a re-send, at most.
    pub max_replay_body: usize,
    /// Request bodies up to this size are read whole before the origin is contacted.
    pub request_buffer_size: usize,
    /// Checks `Grip-Sig` of a trusted GRIP proxy in front, if one is configured.
    pub upstream: Option<crate::grip::sig::Verifier>,
    /// Counters and histograms (shared by every generation of the state).
    pub metrics: Arc<Metrics>,
    /// The per-client limits and their table of clients, if any are set (shared by every generation).
    pub clients: Option<Clients>,
    /// Request counters and log label of each route, by the route's index in the config.
    pub route_stats: Box<[RouteStats]>,
    /// Held responses shared between the clients held with them.
    held_responses: interned::Interned,
    /// The groups of held conditional requests re-checked together (`[routes.conditional] recheck_secs`).
    rechecks: recheck::Rechecks,
}

impl ProxyState {
    /// Builds the proxy state from config and a registry, with its own origin client and metrics (for tests of
    /// the request and connection futures; the app builds it with [`ProxyState::build`]).
    #[cfg(test)]
    pub(crate) fn new(config: &Config, registry: Registry) -> Self {
        Self::build(
            config,
            registry,
            Forwarder::new(&config.origin, 0),
            Arc::new(Metrics::new()),
            Clients::new(&config.fair_use),
        )
    }

    /// Builds the proxy state around an existing origin client and metrics: at start, and for each reload (which
    /// keeps the origin pool and the counters).
    pub(crate) fn build(
        config: &Config,
        registry: Registry,
        forwarder: Forwarder,
        metrics: Arc<Metrics>,
        clients: Option<Clients>,
    ) -> Self {
        let route_stats = config
            .routes
            .iter()
            .map(|r| metrics.route(&route_label(r.host.as_deref(), &r.path_prefix)))
            .collect();
        ProxyState {
            routes: RouteTable::new(&config.routes),
            forwarder,
            registry,
            hold: config.hold.clone(),
            x_forwarded_for: config.x_forwarded_for,
            x_forwarded_proto: config.x_forwarded_proto,
            max_replay_body: config.origin.max_replay_body,
            request_buffer_size: config.request_buffer_size,
            upstream: config.upstream.as_ref().map(|u| u.verifier.clone()),
            metrics,
            clients,
            route_stats,
            held_responses: interned::Interned::default(),
            rechecks: recheck::Rechecks::default(),
        }
    }

    /// The counters (and log label) of the route at config index `index`, or of unrouted requests.
    fn stats(&self, index: Option<u32>) -> &RouteStats {
        index
            .and_then(|i| self.route_stats.get(i as usize))
            .unwrap_or_else(|| self.metrics.unrouted())
    }
}

/// How a request ended, for the request log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// No hold: the origin's response went through.
    Passed,
    /// Held, then released by a publish.
    Released,
    /// Held until the timeout.
    TimedOut,
    /// Held, then answered because the proxy is shutting down.
    Shutdown,
    /// Re-fetched too often; answered with the timeout response.
    RefetchLimit,
    /// A stream hold: the response started and goes on.
    Streaming,
}

/// Serves one client request. Never fails: errors become short responses, logged here once.
///
/// Routing and preparing are done before the returned future is built, so the request itself is never stored
/// in it (an async fn keeps its arguments beside its locals, for the whole hold: see the size test and
/// docs/performance.md).
pub(crate) fn serve<B>(
    state: Arc<ProxyState>,
    mut req: Request<B>,
    client: SocketAddr,
) -> impl Future<Output = Response<Body>> + Send
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let chunked = req.version() == http::Version::HTTP_11;
    // The client's socket, lent by its connection for a release to write to; never forwarded.
    let direct = req.extensions_mut().remove::<DirectWrite>();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // Routed, and forwarded, by the normal form of its path: `/public/../private/x` is `/private/x` to the route
    // table and to the origin alike.
    let normalized = match path::normalize_uri(req.uri()) {
        Ok(Some(uri)) => {
            *req.uri_mut() = uri;
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => Err(ProxyError::BadRequest(e.reason())),
    };
    // Phase *admit*: the client's request rate, before anything else (a refused request never reaches the
    // origin), and the client its holds count against.
    let (holder, admitted) = match admit(&state, &req, client, started) {
        Ok(holder) => (holder, Ok(())),
        Err(e) => (None, Err(e)),
    };
    let routed = admitted.and(normalized).and_then(|()| route(&state, &req));
    // u32: this lives in the request future for the whole hold (routes are far fewer).
    let route_index = routed
        .as_ref()
        .ok()
        .and_then(|r| u32::try_from(r.index).ok());
    // The error boxed too: this value is captured by the future below and keeps its size for the whole hold.
    let prepared = routed
        .and_then(|route| prepare(&state, route, req, client))
        .map(|(mut replay, first)| {
            replay.client = holder;
            (Box::new(replay), Box::new(first))
        })
        .map_err(Box::new);
    async move {
        let result = match prepared {
            Ok(prepared) => proxy(&state, prepared, route_index, chunked, direct).await,
            Err(e) => Err(*e),
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let stats = state.stats(route_index);
        let route = stats.label();
        match result {
            Ok((resp, outcome)) => {
                stats.record(resp.status());
                tracing::info!(
                    client.addr = %client, %method, %path, route, status = resp.status().as_u16(),
                    duration_ms, outcome = ?outcome, "request"
                );
                resp
            }
            Err(e) => {
                stats.record(e.status());
                state.metrics.origin_error(&e);
                state.metrics.refusal(&e);
                let status = e.status().as_u16();
                match e.source_kind() {
                    Source::Origin => tracing::warn!(
                        client.addr = %client, %method, %path, route, status, duration_ms, error = %e, "request failed"
                    ),
                    Source::Client | Source::Internal => tracing::info!(
                        client.addr = %client, %method, %path, route, status, duration_ms, error = %e, "request refused"
                    ),
                }
                e.into_response()
            }
        }
    }
}

async fn proxy(
    state: &Arc<ProxyState>,
    (mut replay, first): (Box<Replayable>, Box<Request<Body>>),
    route_index: Option<u32>,
    chunked: bool,
    direct: Option<DirectWrite>,
) -> Result<(Response<Body>, Outcome), ProxyError> {
    // Both boxed: neither is stored inline in this future, and the first request's box is freed once sent, so
    // a parked request keeps only what a re-send needs.
    let mut first = Some(first);
    let mut grip_last: Option<Box<(HeaderName, HeaderValue)>> = None;
    for attempt in 0..=MAX_REFETCHES {
        // The origin exchange is boxed: the client's future is large, and inline it would set the size of this
        // future for its whole life, parked time included. Built in a block: the request (about 240 bytes) would
        // otherwise be stored in this future for as long as its variable is in scope, moved out or not.
        let exchanging = {
            let req = match first.take() {
                Some(req) => *req,
                None => replay.again(grip_last.take().map(|last| *last))?,
            };
            Box::pin(exchange(state, req, replay.conditional.as_deref(), attempt))
        };
        let (mut hold, held) = match exchanging.await? {
            Inspected::Respond(r) => return Ok((r, Outcome::Passed)),
            Inspected::Hold(hold, held) => (hold, held),
            Inspected::Conditional(mut hold, held) => {
                state.metrics.conditional_hold();
                join_recheck(state, &mut replay, &mut hold, &held);
                (hold, held)
            }
        };
        let waited = if hold.mode == HoldMode::Stream {
            // Only a chunked (HTTP/1.1) stream is lent its socket.
            let direct = direct.as_ref().filter(|_| chunked).cloned();
            open_stream(
                state,
                &hold,
                &held,
                attempt > 0,
                (route_index, chunked),
                (direct, stream_slot(&replay)?),
            )
        } else {
            // One of the client's hold places (`limits.client_max_holds`), marked in the request's client (on the
            // heap: the request future does not grow) and given back when the hold ends, or with the request.
            if let Some(Err(refusal)) = replay.client.as_mut().map(Client::park) {
                return Err(limited(refusal));
            }
            let waited = wait(state, &mut hold, &held, attempt > 0, direct.as_ref()).await;
            if let Some(client) = replay.client.as_mut() {
                client.unpark();
            }
            // Out of its re-check group, if in one: the hold is over.
            replay.recheck = None;
            waited
        };
        match waited {
            Waited::Answer(r, outcome) => return Ok((r, outcome)),
            Waited::Fail(e) => return Err(e),
            Waited::Refetch(last) => grip_last = last,
        }
        if attempt == MAX_REFETCHES {
            tracing::warn!(
                attempt,
                "prev-id mismatches kept repeating; answering with the timeout response"
            );
            return Ok((held.to_response(), Outcome::RefetchLimit));
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// Phases *forward* and *inspect*: send to the origin (a small body read whole first), read its answer.
/// A first attempt of a conditional `GET` whose validators a re-check just gave out is held without being sent.
async fn exchange(
    state: &ProxyState,
    req: Request<Body>,
    conditional: Option<&conditional::Conditional>,
    attempt: usize,
) -> Result<Inspected, ProxyError> {
    if let Some(held) = conditional
        .filter(|_| attempt == 0)
        .and_then(|c| unasked(state, c, &req))
    {
        return Ok(held);
    }
    let req = forward::read_ahead(req, state.request_buffer_size).await?;
    let sent = Instant::now();
    let resp = state.forwarder.send(req).await?;
    state.metrics.origin_latency(sent.elapsed());
    inspect(state, resp, conditional).await
}

/// A conditional `GET` whose validators are those a group of equal requests was just released with: held as its
/// origin would have answered `304`, without asking it (`recheck::Rechecks::unasked`).
fn unasked(
    state: &ProxyState,
    cond: &conditional::Conditional,
    req: &Request<Body>,
) -> Option<Inspected> {
    cond.config.recheck?;
    let held = state
        .rechecks
        .unasked(cond.route, req.method(), req.uri(), req.headers())?;
    state.metrics.conditional_unasked();
    Some(Inspected::Conditional(cond.hold(), held))
}

/// A conditional hold with re-checks on joins the group of the requests its origin would answer alike, and
/// waits on the group's channel beside its own.
fn join_recheck(
    state: &Arc<ProxyState>,
    replay: &mut Replayable,
    hold: &mut grip::Hold,
    held: &ResponseParts,
) {
    let Some(cond) = replay.conditional.as_deref() else {
        return;
    };
    let Some(every) = cond.config.recheck else {
        return;
    };
    let route = cond.route;
    let (method, uri, headers, tls) = replay.head();
    let key = conditional::group_key(route, &method, &uri, &headers, &held.headers);
    let member = recheck::Rechecks::join(state, key, || {
        Some(recheck::Probe {
            method,
            uri,
            headers,
            tls,
            route,
            every,
        })
    });
    if let Some(member) = member {
        hold.channels.push(grip::ChannelSub {
            name: member.channel().into(),
            prev_id: None,
            filters: Vec::new(),
        });
        replay.recheck = Some(member);
    }
}

/// Phase *admit*: counts the request against its client's rate (`limits.client_requests_per_sec`) and returns
/// the client its holds count against (when `limits.client_max_holds` is set). No per-client limit: nothing.
fn admit<B>(
    state: &ProxyState,
    req: &Request<B>,
    peer: SocketAddr,
    now: Instant,
) -> Result<Option<Client>, ProxyError> {
    match &state.clients {
        None => Ok(None),
        Some(clients) => clients
            .admit(peer.ip(), req.headers(), now)
            .map_err(limited),
    }
}

/// One of the client's hold places (`limits.client_max_holds`) for a stream, kept by the stream's body for as long
/// as it lasts; `None` when that limit is not set. Taken when the origin asks to hold (its answer is then
/// discarded if refused).
fn stream_slot(replay: &Replayable) -> Result<Option<HoldSlot>, ProxyError> {
    replay
        .client
        .as_ref()
        .map(Client::hold)
        .transpose()
        .map_err(limited)
}

/// A refusal by a fair-use limit, as the error the client is answered with (429, counted and logged once, where
/// every failed request is).
fn limited(refusal: Refusal) -> ProxyError {
    ProxyError::Limited(Box::new(refusal))
}

/// The refusal of a hold on a channel at `limits.channel_max_holds`.
fn channel_full(channel: &str, limit: usize) -> ProxyError {
    limited(Refusal {
        kind: Refused::ChannelHolds,
        who: channel.into(),
        limit: limit as f64,
        retry_after: 1,
    })
}

/// Phase *route*: find the route.
fn route<'s, B>(state: &'s ProxyState, req: &Request<B>) -> Result<&'s Route, ProxyError> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host());
    state
        .routes
        .lookup(host, req.uri().path())
        .ok_or(ProxyError::NoRoute)
}

/// Phase *prepare*: the request for the origin (headers rewritten and signed), and what a re-send needs.
fn prepare<B>(
    state: &ProxyState,
    route: &Route,
    req: Request<B>,
    client: SocketAddr,
) -> Result<(Replayable, Request<Body>), ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .ok_or(ProxyError::BadRequest("request target has no path"))?;
    let uri = Uri::builder()
        .scheme(route.scheme.clone())
        .authority(route.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;
    let mut headers = parts.headers;
    let conditional = conditional::of(route, &parts.method, &parts.uri, &headers);
    let trusted = match (&state.upstream, headers.get("grip-sig")) {
        (Some(verifier), Some(sig)) => verifier.verify(sig.as_bytes()),
        _ => false,
    };
    headers::to_origin(
        &mut headers,
        headers::Upstream {
            grip_sig: route.signer.header(),
            client_addr: state.x_forwarded_for.then_some(client),
            proto: state.x_forwarded_proto.then_some(
                if parts.extensions.get::<crate::front::Https>().is_some() {
                    "https"
                } else {
                    "http"
                },
            ),
            trusted,
        },
    );
    let (mut replay, first) = Replayable::first(
        parts.method,
        uri,
        headers,
        body,
        state.max_replay_body,
        route.tls.clone(),
    );
    replay.conditional = conditional;
    Ok((replay, first))
}

enum Inspected {
    Respond(Response<Body>),
    Hold(grip::Hold, Arc<ResponseParts>),
    /// A conditional request the origin answered `304` without instructions (`[routes.conditional]`).
    Conditional(grip::Hold, Arc<ResponseParts>),
}

/// Phase *inspect*: read the origin's answer. No instructions: stream it back untouched (no buffering), unless it
/// is a `304` to a conditional request on a route with conditional holds, which is held. Instructions: read the
/// body (bounded), and build the held (timeout) response.
async fn inspect(
    state: &ProxyState,
    resp: Response<OriginBody>,
    conditional: Option<&conditional::Conditional>,
) -> Result<Inspected, ProxyError> {
    let (mut parts, body) = resp.into_parts();
    let is_instruct = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with(instruct::CONTENT_TYPE));
    let from_headers = if is_instruct {
        None
    } else {
        grip::parse::from_headers(&parts.headers, state.hold.max_channels)?
    };
    if from_headers.is_none() && !is_instruct {
        headers::to_client(&mut parts.headers);
        if let Some(cond) = conditional.filter(|_| parts.status == StatusCode::NOT_MODIFIED) {
            // Read to its end (a 304 has no body), so that the origin connection goes back to the pool.
            read_held_body(state, body).await?;
            parts.headers.remove(header::CONTENT_LENGTH);
            let reason = headers::reason(&parts);
            let held = ResponseParts {
                status: parts.status,
                reason,
                headers: parts.headers,
                body: Bytes::new(),
            };
            return Ok(Inspected::Conditional(
                cond.hold(),
                state.held_responses.intern(held),
            ));
        }
        let body = body.boxed();
        return Ok(Inspected::Respond(Response::from_parts(parts, body)));
    }
    let bytes = read_held_body(state, body).await?;
    if is_instruct {
        let i = instruct::from_body(&bytes, state.hold.max_channels)?;
        return match i.hold {
            None => Ok(Inspected::Respond(i.response.to_response())),
            Some(hold) => hold_of(state, hold, i.response),
        };
    }
    let instr = from_headers.expect("checked above: header instructions are present");
    headers::to_client(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    let (status, reason) = match instr.status {
        Some((status, reason)) => (status, reason),
        None => (parts.status, headers::reason(&parts)),
    };
    let held = ResponseParts {
        status,
        reason,
        headers: parts.headers,
        body: bytes,
    };
    hold_of(state, instr.hold, held)
}

fn hold_of(
    state: &ProxyState,
    hold: grip::Hold,
    held: ResponseParts,
) -> Result<Inspected, ProxyError> {
    if hold.mode == HoldMode::Stream {
        stream::check(&hold, held.status)?;
    }
    Ok(Inspected::Hold(hold, state.held_responses.intern(held)))
}

async fn read_held_body(state: &ProxyState, body: OriginBody) -> Result<Bytes, ProxyError> {
    let limit = state.hold.max_body;
    let timeout = state.forwarder.response_timeout();
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ProxyError::OriginTimeout(timeout)),
        // Still a slice of the origin connection's read buffer: interning copies it out if it is kept.
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(GripError::new(
            "held body",
            &format!("over {limit} bytes"),
            "larger than hold.max_body",
        )
        .into()),
        Ok(Err(e)) => Err(ProxyError::OriginProtocol(e)),
    }
}

enum Waited {
    /// Fail the request (the origin's answer is discarded).
    Fail(ProxyError),
    /// Answer the client with this.
    Answer(Response<Body>, Outcome),
    /// Send the request to the origin again, with this `Grip-Last` header if any.
    Refetch(Option<Box<(HeaderName, HeaderValue)>>),
}

/// Phases *park* and *respond*: park in the registry and wait for a publish, the timeout or shutdown.
///
/// # Cancel safety
/// Dropping the future (the client went away) drops the `Parked` guard, which unparks it from every channel.
async fn wait(
    state: &ProxyState,
    hold: &mut grip::Hold,
    held: &Arc<ResponseParts>,
    retry: bool,
    socket: Option<&DirectWrite>,
) -> Waited {
    let timeout = state.hold.effective_timeout(hold.timeout);
    let direct = socket.map(|socket| Direct {
        socket: socket.clone(),
        held: held.clone(),
    });
    // A re-fetched request parks whatever its prev-ids: the origin was told what the client missed, and a hold
    // from an origin still behind must not loop (a later item with another prev-id re-fetches it again).
    // The channels move into the registry's record of the parked client: kept once, not copied.
    let channels = std::mem::take(&mut hold.channels);
    let mut parked = match state.registry.park(channels, !retry, direct) {
        Ok(parked) => parked,
        Err(ParkError::Stale { channel, prev_id }) => {
            tracing::debug!(%channel, %prev_id, "hold is behind the channel's last id: re-fetching");
            catch_up::missed(state, crate::metrics::HistoryKind::Response);
            return Waited::Refetch(grip_last(&channel, &prev_id));
        }
        Err(ParkError::InHistory { channel, next }) => {
            tracing::debug!(%channel, "hold is behind the channel's last id: answered from its history");
            return catch_up::answer(state, held, &next.0);
        }
        Err(ParkError::Closed) => return Waited::Answer(held.to_response(), Outcome::Shutdown),
        Err(ParkError::Full) => {
            state.metrics.hold_refused();
            return Waited::Fail(ProxyError::HoldsExhausted);
        }
        Err(ParkError::ChannelFull { channel, limit }) => {
            return Waited::Fail(channel_full(&channel, limit))
        }
    };
    // Declared after `parked`, so dropped before it when the client goes away: the disconnect is counted before
    // the registry reports the client gone.
    let track = state.metrics.hold_started();
    let delivery = tokio::select! {
        d = parked.recv() => Some(d),
        // A release may have taken the client just now (and written to its socket): then that is its answer.
        _ = tokio::time::sleep(timeout) => parked.expire(),
    };
    let waited = answer(state, &parked, held, delivery);
    track.end(match &waited {
        Waited::Answer(_, Outcome::Released) => HoldEnd::Released,
        Waited::Answer(_, Outcome::Shutdown) => HoldEnd::Shutdown,
        Waited::Refetch(_) => HoldEnd::Refetched,
        Waited::Answer(..) | Waited::Fail(_) => HoldEnd::TimedOut,
    });
    waited
}

/// Phase *park* for a stream hold: subscribe, and answer with the response that stays open. A hold behind the
/// channel's last id is re-fetched first, as a response hold is, so that the stream starts where its client is.
fn open_stream(
    state: &Arc<ProxyState>,
    hold: &grip::Hold,
    held: &Arc<ResponseParts>,
    retry: bool,
    (route_index, chunked): (Option<u32>, bool),
    (direct, slot): (Option<DirectWrite>, Option<HoldSlot>),
) -> Waited {
    let Some(route) = route_index.and_then(|i| state.routes.by_index(i as usize)) else {
        return Waited::Fail(ProxyError::NoRoute);
    };
    let sub = match state.registry.subscribe(
        &hold.channels,
        !retry,
        state.hold.max_stream_queue,
        direct,
    ) {
        Ok(sub) => sub,
        Err(ParkError::Stale { channel, prev_id }) => {
            tracing::debug!(%channel, %prev_id, "stream hold is behind the channel's last id: re-fetching");
            catch_up::missed(state, crate::metrics::HistoryKind::Stream);
            return Waited::Refetch(grip_last(&channel, &prev_id));
        }
        // Only a response hold is answered from the history; a stream is fed from it as it subscribes.
        Err(ParkError::InHistory { .. }) => return Waited::Refetch(None),
        Err(ParkError::Closed) => return Waited::Answer(held.to_response(), Outcome::Shutdown),
        Err(ParkError::Full) => {
            state.metrics.hold_refused();
            return Waited::Fail(ProxyError::HoldsExhausted);
        }
        Err(ParkError::ChannelFull { channel, limit }) => {
            return Waited::Fail(channel_full(&channel, limit))
        }
    };
    state.metrics.stream_opened();
    catch_up::replayed(state, sub.replayed());
    let base = stream::LinkBase::of(route);
    let resp = stream::response(state.clone(), (sub, slot), hold, held, base, chunked);
    Waited::Answer(resp, Outcome::Streaming)
}

/// What a parked client does with its delivery (`None`: the timeout).
fn answer(
    state: &ProxyState,
    parked: &crate::hold::Parked,
    held: &Arc<ResponseParts>,
    delivery: Option<Delivery>,
) -> Waited {
    let release = match delivery {
        None => return Waited::Answer(held.to_response(), Outcome::TimedOut),
        Some(Delivery::Shutdown) => return Waited::Answer(held.to_response(), Outcome::Shutdown),
        Some(Delivery::Refetch) => return Waited::Refetch(None),
        Some(Delivery::Item(release)) => release,
        Some(Delivery::Written {
            release,
            encoded,
            written,
        }) => {
            // The release checked what `answer` checks below, and wrote (part of) this response to the client.
            state.metrics.delivery();
            state.metrics.released(release.item.accepted);
            let resp = shared_response(&encoded, Some(Written(written)));
            return Waited::Answer(resp, Outcome::Released);
        }
    };
    let item = &release.item;
    state.metrics.delivery();
    let Some(published) = &item.http_response else {
        // The registry releases response holds only with items that carry an http-response.
        return Waited::Answer(held.to_response(), Outcome::TimedOut);
    };
    // A client held after `mine` takes only the item that names `mine` as its predecessor. Any other item sends
    // the request to the origin again with what the client last had, as Pushpin does.
    if let Some(mine) = parked.prev_id(&item.channel) {
        if !release.follows(Some(mine)) {
            tracing::debug!(channel = %item.channel, item_prev = ?item.prev_id, mine, "item does not follow this hold: re-fetching");
            return Waited::Refetch(grip_last(&item.channel, mine));
        }
    }
    match published.action {
        Action::Hint => Waited::Refetch(None),
        Action::Send => {
            let resp = release.response_for(held, &published.parts);
            state.metrics.released(item.accepted);
            Waited::Answer(resp, Outcome::Released)
        }
    }
}

/// `Grip-Last: <channel>; last-id=<id>`: tells the origin what the client last had.
/// Boxed: the request future keeps it across the hold that follows, where it is almost always `None`.
fn grip_last(channel: &str, last_id: &str) -> Option<Box<(HeaderName, HeaderValue)>> {
    HeaderValue::from_str(&format!("{channel}; last-id={last_id}"))
        .ok()
        .map(|v| Box::new((HeaderName::from_static("grip-last"), v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The request future is what a parked client costs beyond its socket: keep it small (pushpin guards its
    /// connection task the same way). Fails if a change makes it grow past the bound.
    #[tokio::test]
    async fn request_future_stays_small() {
        let config = Config::default();
        let state = Arc::new(ProxyState::new(&config, Registry::new((&config).into())));
        let req = Request::new(http_body_util::Empty::<Bytes>::new());
        let fut = serve(state, req, "127.0.0.1:1".parse().unwrap());
        let size = std::mem::size_of_val(&fut);
        println!("proxy::serve future: {size} bytes");
        assert!(
            size <= 600,
            "proxy::serve future is {size} bytes (measured 576)"
        );
    }
}
