//! Prometheus metrics. The hot path only touches atomics: every counter handle it uses is resolved when the
//! route table is built (one set per route and status class), histograms are fixed arrays of atomic buckets, and
//! nothing is allocated or locked per request. Gauges that the registry and the bus already keep (held clients,
//! channels, bus state) are read when `/metrics` is scraped. [`Exposition`] encodes it all as OpenMetrics text
//! through `prometheus-client`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::bus::Bus;
use crate::error::ProxyError;
use crate::hold::Registry;
use crate::limits::{Clients, Refused};

/// The route label of requests no route matched (not a valid host, so it cannot name a route).
pub(crate) const UNROUTED: &str = "(none)";

/// Upper bounds (seconds) of the publish-to-delivery histogram: sub-millisecond fan-out up to the 5 s an item
/// may wait for a missing predecessor (`publish.ordering_wait_secs`).
const DELIVERY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds (seconds) of the origin response-head histogram, up to the default 30 s response timeout.
const ORIGIN_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The kinds of hold a channel's history answers: `kind` of the history counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HistoryKind {
    /// A response hold.
    Response,
    /// A stream.
    Stream,
}

impl HistoryKind {
    const LABELS: [&'static str; 2] = ["response", "stream"];
}

/// What one re-check of a group of conditional holds found: `result` of the re-check counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recheck {
    /// `304` again: the clients stay held.
    Unchanged,
    /// A new answer, sent to every client of the group.
    Shared,
    /// A new answer that may not be shared (private, `no-store`, `Set-Cookie`, too large, GRIP): each client
    /// re-fetches its own.
    Refetched,
    /// The origin failed (unreachable, timeout, `5xx`): the clients stay held until the next re-check.
    Failed,
}

impl Recheck {
    const LABELS: [&'static str; 4] = ["unchanged", "shared", "refetched", "failed"];
}

// === labels ===

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuntimeLabel {
    runtime: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Status classes, indexed by `status / 100 - 1`.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_index(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

/// How a hold ended, for `grip_proxy_holds_ended_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldEnd {
    /// Answered with a published item.
    Released,
    /// Answered with the timeout response.
    TimedOut,
    /// Sent to the origin again (a hint, a prev-id mismatch, recovery).
    Refetched,
    /// The client went away while held.
    Disconnected,
    /// Answered because the proxy is shutting down.
    Shutdown,
}

impl HoldEnd {
    const ALL: [HoldEnd; 5] = [
        HoldEnd::Released,
        HoldEnd::TimedOut,
        HoldEnd::Refetched,
        HoldEnd::Disconnected,
        HoldEnd::Shutdown,
    ];

    fn label(self) -> &'static str {
        match self {
            HoldEnd::Released => "released",
            HoldEnd::TimedOut => "timeout",
            HoldEnd::Refetched => "refetch",
            HoldEnd::Disconnected => "disconnect",
            HoldEnd::Shutdown => "shutdown",
        }
    }
}

/// Origin failure kinds, for `grip_proxy_origin_errors_total{kind}`.
const ORIGIN_KINDS: [&str; 5] = [
    "connect",
    "timeout",
    "protocol",
    "invalid_grip",
    "not_replayable",
];

/// The `kind` label of an origin failure, or `None` when the error is not the origin's.
pub(crate) fn origin_error_kind(e: &ProxyError) -> Option<&'static str> {
    match e {
        ProxyError::OriginConnect(_) => Some("connect"),
        ProxyError::OriginTimeout(_) => Some("timeout"),
        ProxyError::OriginProtocol(_) => Some("protocol"),
        ProxyError::InvalidGrip(_) => Some("invalid_grip"),
        ProxyError::NotReplayable(_) => Some("not_replayable"),
        _ => None,
    }
}

// === impl Metrics ===

/// Every counter and histogram the proxy and the control API update. One per [`crate::App`]; cheap handles
/// (each counter is an `Arc<AtomicU64>`) are resolved in advance for the hot path.
#[derive(Debug)]
pub(crate) struct Metrics {
    requests: Family<RequestLabels, Counter>,
    unrouted: RouteStats,
    origin_errors_family: Family<KindLabel, Counter>,
    origin_errors: [Counter; ORIGIN_KINDS.len()],
    holds_started: Counter,
    holds_ended_family: Family<ReasonLabel, Counter>,
    holds_ended: [Counter; HoldEnd::ALL.len()],
    holds_refused: Counter,
    refused_family: Family<ReasonLabel, Counter>,
    refused: [Counter; Refused::ALL.len()],
    deliveries: Counter,
    streams_opened: Counter,
    stream_items: Counter,
    keep_alives: Counter,
    slow_streams: Counter,
    published_items: Counter,
    publish_requests_family: Family<StatusLabel, Counter>,
    publish_requests: [Counter; STATUS_CLASSES.len()],
    reloads_family: Family<ResultLabel, Counter>,
    reloads: [Counter; 2],
    history_hits_family: Family<KindLabel, Counter>,
    history_hits: [Counter; 2],
    history_misses_family: Family<KindLabel, Counter>,
    history_misses: [Counter; 2],
    conditional_holds: Counter,
    conditional_unasked: Counter,
    rechecks_family: Family<ResultLabel, Counter>,
    rechecks: [Counter; 4],
    recheck_clients: Counter,
    delivery_latency: Histogram,
    origin_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// All counters at zero.
    pub(crate) fn new() -> Self {
        let requests = Family::default();
        let unrouted = RouteStats::new(&requests, UNROUTED);
        let origin_errors_family = Family::<KindLabel, Counter>::default();
        let origin_errors =
            ORIGIN_KINDS.map(|kind| origin_errors_family.get_or_create_owned(&KindLabel { kind }));
        let holds_ended_family = Family::<ReasonLabel, Counter>::default();
        let holds_ended = HoldEnd::ALL.map(|end| {
            holds_ended_family.get_or_create_owned(&ReasonLabel {
                reason: end.label(),
            })
        });
        let refused_family = Family::<ReasonLabel, Counter>::default();
        let refused = Refused::ALL.map(|kind| {
            refused_family.get_or_create_owned(&ReasonLabel {
                reason: kind.label(),
            })
        });
        let publish_requests_family = Family::<StatusLabel, Counter>::default();
        let publish_requests = STATUS_CLASSES
            .map(|status| publish_requests_family.get_or_create_owned(&StatusLabel { status }));
        let reloads_family = Family::<ResultLabel, Counter>::default();
        let reloads = ["ok", "rejected"]
            .map(|result| reloads_family.get_or_create_owned(&ResultLabel { result }));
        let history_hits_family = Family::<KindLabel, Counter>::default();
        let history_hits = HistoryKind::LABELS
            .map(|kind| history_hits_family.get_or_create_owned(&KindLabel { kind }));
        let history_misses_family = Family::<KindLabel, Counter>::default();
        let history_misses = HistoryKind::LABELS
            .map(|kind| history_misses_family.get_or_create_owned(&KindLabel { kind }));
        let rechecks_family = Family::<ResultLabel, Counter>::default();
        let rechecks = Recheck::LABELS
            .map(|result| rechecks_family.get_or_create_owned(&ResultLabel { result }));
        Metrics {
            requests,
            unrouted,
            origin_errors_family,
            origin_errors,
            holds_started: Counter::default(),
            holds_ended_family,
            holds_ended,
            holds_refused: Counter::default(),
            refused_family,
            refused,
            deliveries: Counter::default(),
            streams_opened: Counter::default(),
            stream_items: Counter::default(),
            keep_alives: Counter::default(),
            slow_streams: Counter::default(),
            published_items: Counter::default(),
            publish_requests_family,
            publish_requests,
            reloads_family,
            reloads,
            history_hits_family,
            history_hits,
            history_misses_family,
            history_misses,
            conditional_holds: Counter::default(),
            conditional_unasked: Counter::default(),
            rechecks_family,
            rechecks,
            recheck_clients: Counter::default(),
            delivery_latency: Histogram::new(DELIVERY_BUCKETS),
            origin_latency: Histogram::new(ORIGIN_BUCKETS),
        }
    }

    /// The request counters of one route, labelled `label`. Called when a route table is built (start, reload),
    /// never per request.
    pub(crate) fn route(&self, label: &str) -> RouteStats {
        RouteStats::new(&self.requests, label)
    }

    /// The request counters of requests no route matched.
    pub(crate) fn unrouted(&self) -> &RouteStats {
        &self.unrouted
    }

    /// Counts a failed request against the origin, if the failure was the origin's.
    pub(crate) fn origin_error(&self, e: &ProxyError) {
        if let Some(kind) = origin_error_kind(e) {
            if let Some(i) = ORIGIN_KINDS.iter().position(|k| *k == kind) {
                self.origin_errors[i].inc();
            }
        }
    }

    /// How long the origin took to send its response head.
    pub(crate) fn origin_latency(&self, took: Duration) {
        self.origin_latency.observe(took);
    }

    /// A client was parked. The returned guard counts how its hold ends; dropped without [`HoldTrack::end`] (the
    /// request future was dropped: the client went away), it counts a disconnect.
    pub(crate) fn hold_started(&self) -> HoldTrack<'_> {
        self.holds_started.inc();
        HoldTrack(Some(self))
    }

    /// A hold was refused: `proxy.max_held` clients are held already.
    pub(crate) fn hold_refused(&self) {
        self.holds_refused.inc();
    }

    /// Counts a request refused by a fair-use limit (`[limits]`), if `e` is one.
    pub(crate) fn refusal(&self, e: &ProxyError) {
        if let ProxyError::Limited(r) = e {
            if let Some(i) = Refused::ALL.iter().position(|k| *k == r.kind) {
                self.refused[i].inc();
            }
        }
    }

    /// A held client received a published item (whatever it then does with it).
    pub(crate) fn delivery(&self) {
        self.deliveries.inc();
    }

    /// A stream hold started.
    pub(crate) fn stream_opened(&self) {
        self.streams_opened.inc();
    }

    /// An item's content was appended to a stream.
    pub(crate) fn stream_item(&self) {
        self.stream_items.inc();
    }

    /// `n` items' content was appended to a stream by their publishes (counted when its connection learns of it).
    pub(crate) fn stream_items(&self, n: u64) {
        self.stream_items.inc_by(n);
    }

    /// Keep-alive data was written to an idle stream.
    pub(crate) fn keep_alive_sent(&self) {
        self.keep_alives.inc();
    }

    /// A stream client was disconnected for falling more than `hold.max_stream_queue` behind.
    pub(crate) fn slow_stream_dropped(&self) {
        self.slow_streams.inc();
    }

    /// A held client's response was built from an item the control API accepted at `accepted`.
    pub(crate) fn released(&self, accepted: Instant) {
        self.delivery_latency.observe(accepted.elapsed());
    }

    /// The control API answered a publish request with `status`.
    pub(crate) fn publish_answered(&self, status: StatusCode) {
        self.publish_requests[class_index(status)].inc();
    }

    /// The control API accepted a publish of `items` items.
    pub(crate) fn items_published(&self, items: usize) {
        self.published_items.inc_by(items as u64);
    }

    /// `items` items were answered from a channel's history: a response hold's answer, or what a stream missed.
    pub(crate) fn history_hits(&self, kind: HistoryKind, items: usize) {
        self.history_hits[kind as usize].inc_by(items as u64);
    }

    /// A hold behind its channel's last id was not in the history (history on): sent to the origin again.
    pub(crate) fn history_miss(&self, kind: HistoryKind) {
        self.history_misses[kind as usize].inc();
    }

    /// A conditional request answered `304` by its origin was held (`[routes.conditional]`).
    pub(crate) fn conditional_hold(&self) {
        self.conditional_holds.inc();
    }

    /// A conditional request held without asking its origin: its validators are those of the answer a group of
    /// equal requests was just released with.
    pub(crate) fn conditional_unasked(&self) {
        self.conditional_unasked.inc();
    }

    /// One re-check request of a group of conditional holds, and what it found (counted before its clients are
    /// released).
    pub(crate) fn recheck(&self, result: Recheck) {
        self.rechecks[result as usize].inc();
    }

    /// Clients released by one re-check.
    pub(crate) fn recheck_released(&self, clients: usize) {
        self.recheck_clients.inc_by(clients as u64);
    }

    /// A configuration reload was applied (`ok`) or rejected.
    pub(crate) fn reload(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
    }

    /// The OpenMetrics exposition of these metrics, plus gauges read at scrape time from the registry, the client
    /// connections of each runtime (one tracker per client runtime) and, when the bus is Redis, from its status.
    pub(crate) fn exposition(
        self: &Arc<Self>,
        holds: Registry,
        bus: &Bus,
        origins: crate::origin::Client,
        connections: &[TaskTracker],
        handshakes: Arc<crate::tls::server::Handshakes>,
        clients: Option<Clients>,
    ) -> Exposition {
        let mut r = prometheus_client::registry::Registry::with_prefix("grip_proxy");
        r.register(
            "build",
            "grip-proxy's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        r.register(
            "requests",
            "Client requests answered, by route (host and path prefix) and status class",
            self.requests.clone(),
        );
        r.register(
            "origin_errors",
            "Requests failed by the origin: connect, timeout, protocol, invalid_grip, not_replayable",
            self.origin_errors_family.clone(),
        );
        r.register(
            "origin_response_seconds",
            "Time from sending a request to an origin to its response head",
            self.origin_latency.clone(),
        );
        r.register(
            "origin_idle_connections",
            "Keep-alive connections to origins idle in the pool now",
            Scraped::gauge(move || origins.idle_connections() as u64),
        );
        let completed = handshakes.clone();
        r.register(
            "tls_handshakes",
            "TLS handshakes completed on the HTTPS listeners (clients, and the control API if it is HTTPS)",
            Scraped::counter(move || completed.completed()),
        );
        r.register(
            "tls_handshake_failures",
            "TLS handshakes that failed there: refused, broken, or not finished within 30 s (the reason is logged at debug)",
            Scraped::counter(move || handshakes.failed()),
        );
        r.register(
            "client_connections",
            "Client connections open now, by the runtime serving them (one runtime unless proxy.runtime is per-core)",
            PerRuntime(connections.into()),
        );
        let held = holds.clone();
        r.register(
            "held_clients",
            "Clients held now: response holds and streams",
            Scraped::gauge(move || held.held() as u64),
        );
        let open = holds.clone();
        r.register(
            "streams_open",
            "Stream holds open now (also counted in held_clients)",
            Scraped::gauge(move || open.streams() as u64),
        );
        r.register(
            "streams_opened",
            "Stream holds started",
            self.streams_opened.clone(),
        );
        r.register(
            "stream_items",
            "Published items appended to streams (one per stream per item)",
            self.stream_items.clone(),
        );
        r.register(
            "stream_keep_alives",
            "Keep-alive data written to idle streams",
            self.keep_alives.clone(),
        );
        r.register(
            "stream_slow_clients_dropped",
            "Stream clients disconnected for falling more than hold.max_stream_queue bytes behind",
            self.slow_streams.clone(),
        );
        let written = holds.clone();
        r.register(
            "released_written",
            "Released clients whose whole response the publishing thread wrote to their socket (no task wake-up first)",
            Scraped::counter(move || written.released_by_write().0),
        );
        let streamed = holds.clone();
        r.register(
            "stream_items_written",
            "Stream items the publishing thread wrote whole to an idle stream's socket, with no wake-up of its connection (also in stream_items)",
            Scraped::counter(move || streamed.stream_items_written()),
        );
        let partly = holds.clone();
        r.register(
            "released_partly_written",
            "Released clients whose socket took part of the response from the publishing thread; their task wrote the rest",
            Scraped::counter(move || partly.released_by_write().1),
        );
        r.register(
            "channels",
            "Channel entries kept (with held clients or a remembered last id)",
            Scraped::gauge({
                let holds = holds.clone();
                move || holds.channels() as u64
            }),
        );
        r.register(
            "holds_started",
            "Clients parked on their channels",
            self.holds_started.clone(),
        );
        r.register(
            "holds_ended",
            "Holds ended: released by a publish, timeout, refetch (sent to the origin again), disconnect, shutdown",
            self.holds_ended_family.clone(),
        );
        r.register(
            "holds_refused",
            "Holds refused with a 503 because proxy.max_held clients were held",
            self.holds_refused.clone(),
        );
        r.register(
            "refused",
            "Requests refused with a 429 by a [limits] setting: client_rate, client_holds, channel_holds",
            self.refused_family.clone(),
        );
        r.register(
            "clients_tracked",
            "Clients in the table of per-client limits now (0 when no per-client limit is set)",
            Scraped::gauge({
                let clients = clients.clone();
                move || clients.as_ref().map_or(0, |c| c.tracked() as u64)
            }),
        );
        r.register(
            "clients_untracked",
            "Requests served without per-client limits because the client table was full of clients with requests in progress (limits.max_clients_tracked)",
            Scraped::counter(move || clients.as_ref().map_or(0, Clients::untracked)),
        );
        r.register(
            "publish_requests",
            "Publish requests answered by the control API, by status class",
            self.publish_requests_family.clone(),
        );
        r.register(
            "published_items",
            "Items accepted by this instance's control API",
            self.published_items.clone(),
        );
        r.register(
            "deliveries",
            "Published items received by held clients",
            self.deliveries.clone(),
        );
        r.register(
            "publish_delivery_seconds",
            "Time from the control API accepting an item (or the bus delivering it) to a released client's response",
            self.delivery_latency.clone(),
        );
        r.register(
            "history_hits",
            "Items answered from a channel's history to holds behind its last id (kind: response, stream)",
            self.history_hits_family.clone(),
        );
        r.register(
            "history_misses",
            "Holds behind their channel's last id whose prev-id was not in the history (history on): re-fetched from the origin",
            self.history_misses_family.clone(),
        );
        r.register(
            "conditional_holds",
            "Conditional requests (If-None-Match, If-Modified-Since) answered 304 by an origin and held ([routes.conditional])",
            self.conditional_holds.clone(),
        );
        r.register(
            "conditional_holds_unasked",
            "Conditional requests held without an origin request: their validators were those of the answer a re-check had just sent to equal requests",
            self.conditional_unasked.clone(),
        );
        r.register(
            "rechecks",
            "Re-check requests sent to origins for groups of held conditional requests (result: unchanged, shared, refetched, failed)",
            self.rechecks_family.clone(),
        );
        r.register(
            "recheck_released_clients",
            "Clients released by re-checks: divided by the re-checks that found a change, the clients one origin request answered",
            self.recheck_clients.clone(),
        );
        let kept = holds.clone();
        r.register(
            "history_items",
            "Items kept in the history of all channels",
            Scraped::gauge(move || kept.history_totals().map_or(0, |t| t.0) as u64),
        );
        let kept = holds.clone();
        r.register(
            "history_bytes",
            "Bytes (estimated) kept in the history of all channels, at most history.max_bytes",
            Scraped::gauge(move || kept.history_totals().map_or(0, |t| t.1) as u64),
        );
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP): ok, or rejected (invalid file; the running configuration was kept)",
            self.reloads_family.clone(),
        );
        if let Bus::Redis(_) = bus {
            register_bus(&mut r, bus);
        }
        Exposition {
            registry: Arc::new(r),
        }
    }
}

/// The Redis bus status, read at scrape time.
fn register_bus(r: &mut prometheus_client::registry::Registry, bus: &Bus) {
    type Field = fn(&crate::bus::Status) -> u64;
    let status = bus.status();
    let connected = status.clone();
    r.register(
        "bus_connected",
        "1 while subscribed to the Redis bus",
        Scraped::gauge(move || u64::from(connected.borrow().connected)),
    );
    let counters: [(&str, &str, Field); 7] = [
        (
            "bus_connects",
            "Subscriptions made to Redis (the first, then one per reconnection)",
            |s| s.connects,
        ),
        ("bus_published", "Publish bodies sent to Redis", |s| {
            s.published
        }),
        (
            "bus_refused",
            "Publishes refused with a 503 (bus down, Redis error or timeout)",
            |s| s.refused,
        ),
        (
            "bus_received",
            "Messages received from the Redis subscription",
            |s| s.received,
        ),
        (
            "bus_dropped",
            "Messages received that were dropped (invalid or too large)",
            |s| s.dropped,
        ),
        (
            "bus_refetched",
            "Held clients re-fetched when a subscription was (re-)made",
            |s| s.refetched,
        ),
        (
            "bus_pings",
            "Health-check PINGs answered on the subscription",
            |s| s.pings,
        ),
    ];
    for (name, help, field) in counters {
        let status = status.clone();
        r.register(
            name,
            help,
            Scraped::counter(move || field(&status.borrow())),
        );
    }
}

// === impl RouteStats ===

/// The request counters of one route, one per status class.
#[derive(Debug, Clone)]
pub(crate) struct RouteStats {
    label: Box<str>,
    by_class: [Counter; STATUS_CLASSES.len()],
}

impl RouteStats {
    fn new(family: &Family<RequestLabels, Counter>, label: &str) -> Self {
        RouteStats {
            label: label.into(),
            by_class: STATUS_CLASSES.map(|status| {
                family.get_or_create_owned(&RequestLabels {
                    route: label.to_owned(),
                    status,
                })
            }),
        }
    }

    /// The route's label: `host` (or `*`) followed by the path prefix.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Counts one answered request.
    pub(crate) fn record(&self, status: StatusCode) {
        self.by_class[class_index(status)].inc();
    }
}

/// A route's label, as in metrics and logs: its host (`*` for any) followed by its path prefix.
pub(crate) fn route_label(host: Option<&str>, path_prefix: &str) -> String {
    format!("{}{path_prefix}", host.unwrap_or("*"))
}

// === impl HoldTrack ===

/// Counts how one hold ends. See [`Metrics::hold_started`].
#[must_use = "dropping the guard counts a disconnect"]
pub(crate) struct HoldTrack<'a>(
    /// `None` once ended. One pointer: this lives in every parked request's future.
    Option<&'a Metrics>,
);

impl HoldTrack<'_> {
    /// The hold ended this way.
    pub(crate) fn end(mut self, how: HoldEnd) {
        if let Some(metrics) = self.0.take() {
            metrics.count_end(how);
        }
    }
}

impl Drop for HoldTrack<'_> {
    fn drop(&mut self) {
        if let Some(metrics) = self.0.take() {
            metrics.count_end(HoldEnd::Disconnected);
        }
    }
}

impl Metrics {
    fn count_end(&self, how: HoldEnd) {
        if let Some(i) = HoldEnd::ALL.iter().position(|h| *h == how) {
            self.holds_ended[i].inc();
        }
    }
}

// === impl Histogram ===

/// A histogram of durations with fixed buckets: one atomic add per bucket hit and one for the sum, no lock
/// (prometheus-client's own histogram takes a lock per observation).
#[derive(Clone)]
pub(crate) struct Histogram {
    inner: Arc<HistogramInner>,
}

struct HistogramInner {
    /// Upper bounds in seconds, for the exposition.
    bounds: &'static [f64],
    /// The same bounds in microseconds, for the comparison on the hot path.
    bounds_us: Box<[u64]>,
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    /// Sum of observations, in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            inner: Arc::new(HistogramInner {
                bounds,
                bounds_us: bounds.iter().map(|b| (b * 1e6) as u64).collect(),
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_us: AtomicU64::new(0),
            }),
        }
    }

    /// Records one duration.
    pub(crate) fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = self
            .inner
            .bounds_us
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(self.inner.bounds_us.len());
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("bounds", &self.inner.bounds)
            .finish_non_exhaustive()
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        let counts: Vec<u64> = self
            .inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let buckets: Vec<(f64, u64)> = self
            .inner
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts.iter().copied())
            .collect();
        // The count is the buckets' sum, so that it always equals the `+Inf` bucket.
        let count = counts.iter().sum();
        let sum = self.inner.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

// === impl Scraped ===

/// A gauge or counter whose value is read when scraped.
struct Scraped<F> {
    read: F,
    kind: MetricType,
}

impl<F: Fn() -> u64> Scraped<F> {
    fn gauge(read: F) -> Self {
        Scraped {
            read,
            kind: MetricType::Gauge,
        }
    }

    fn counter(read: F) -> Self {
        Scraped {
            read,
            kind: MetricType::Counter,
        }
    }
}

impl<F> fmt::Debug for Scraped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scraped").finish_non_exhaustive()
    }
}

impl<F: Fn() -> u64> EncodeMetric for Scraped<F> {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        let value = (self.read)();
        match self.kind {
            MetricType::Counter => encoder.encode_counter::<NoLabelSet, _, u64>(&value, None),
            _ => encoder.encode_gauge(&(i64::try_from(value).unwrap_or(i64::MAX))),
        }
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

// === impl PerRuntime ===

/// The open client connections of each runtime (the tasks its listener's tracker holds), read when scraped.
struct PerRuntime(Box<[TaskTracker]>);

impl fmt::Debug for PerRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PerRuntime").field(&self.0.len()).finish()
    }
}

impl EncodeMetric for PerRuntime {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), fmt::Error> {
        for (i, tracker) in self.0.iter().enumerate() {
            let label = RuntimeLabel {
                runtime: i.to_string(),
            };
            let open = i64::try_from(tracker.len()).unwrap_or(i64::MAX);
            encoder.encode_family(&label)?.encode_gauge(&open)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

// === impl Exposition ===

/// The metrics as served on `GET /metrics`. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Exposition {
    registry: Arc<prometheus_client::registry::Registry>,
}

/// The content type of [`Exposition::encode`]'s text (Prometheus scrapes it as OpenMetrics).
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

impl Exposition {
    /// The OpenMetrics text, ending in `# EOF`.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail; an encoder error would only cut the text short.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics could not be encoded");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::new((&crate::config::Config::default()).into())
    }

    #[test]
    fn status_classes() {
        assert_eq!(class_index(StatusCode::OK), 1);
        assert_eq!(class_index(StatusCode::NOT_MODIFIED), 2);
        assert_eq!(class_index(StatusCode::BAD_GATEWAY), 4);
        assert_eq!(class_index(StatusCode::CONTINUE), 0);
    }

    #[test]
    fn exposition_has_every_family_and_the_values() {
        let m = Arc::new(Metrics::new());
        let route = m.route("*/api/");
        route.record(StatusCode::OK);
        route.record(StatusCode::OK);
        m.unrouted().record(StatusCode::BAD_GATEWAY);
        m.hold_started().end(HoldEnd::TimedOut);
        drop(m.hold_started());
        m.origin_latency(Duration::from_millis(3));
        m.publish_answered(StatusCode::OK);
        m.items_published(2);
        let holds = registry();
        let bus = Bus::Memory(holds.clone());
        let origins = crate::origin::Client::new(crate::origin::Settings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_idle_per_host: 1,
            body_read_timeout: Duration::from_secs(1),
            local_pools: 2,
        });
        let runtimes = [TaskTracker::new(), TaskTracker::new()];
        let _open = runtimes[1].track_future(std::future::pending::<()>());
        m.refusal(&ProxyError::Limited(Box::new(crate::limits::Refusal {
            kind: Refused::ChannelHolds,
            who: "news".into(),
            limit: 1.0,
            retry_after: 1,
        })));
        let handshakes = Arc::new(crate::tls::server::Handshakes::default());
        handshakes.record(true);
        handshakes.record(false);
        handshakes.record(false);
        let text = m
            .exposition(holds, &bus, origins, &runtimes, handshakes, None)
            .encode();
        for want in [
            r#"grip_proxy_requests_total{route="*/api/",status="2xx"} 2"#,
            r#"grip_proxy_requests_total{route="(none)",status="5xx"} 1"#,
            "grip_proxy_holds_started_total 2",
            r#"grip_proxy_refused_total{reason="channel_holds"} 1"#,
            r#"grip_proxy_refused_total{reason="client_rate"} 0"#,
            "grip_proxy_clients_tracked 0",
            "grip_proxy_origin_idle_connections 0",
            "grip_proxy_tls_handshakes_total 1",
            "grip_proxy_tls_handshake_failures_total 2",
            r#"grip_proxy_client_connections{runtime="0"} 0"#,
            r#"grip_proxy_client_connections{runtime="1"} 1"#,
            r#"grip_proxy_holds_ended_total{reason="timeout"} 1"#,
            r#"grip_proxy_holds_ended_total{reason="disconnect"} 1"#,
            "grip_proxy_held_clients 0",
            "grip_proxy_released_written_total 0",
            "grip_proxy_released_partly_written_total 0",
            "grip_proxy_stream_items_written_total 0",
            "grip_proxy_published_items_total 2",
            r#"grip_proxy_publish_requests_total{status="2xx"} 1"#,
            r#"grip_proxy_origin_response_seconds_bucket{le="0.0025"} 0"#,
            r#"grip_proxy_origin_response_seconds_bucket{le="0.005"} 1"#,
            r#"grip_proxy_origin_response_seconds_bucket{le="+Inf"} 1"#,
            "grip_proxy_origin_response_seconds_count 1",
            "grip_proxy_origin_response_seconds_sum 0.003",
            r#"grip_proxy_build_info{version=""#,
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(
            !text.contains("bus_connected"),
            "memory bus: no bus metrics"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn histogram_sums_and_overflows() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.observe(Duration::from_micros(1000));
        h.observe(Duration::from_secs(100));
        let counts: Vec<u64> = h
            .inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        assert_eq!(counts, [1, 0, 1]);
        assert_eq!(h.inner.sum_us.load(Ordering::Relaxed), 100_001_000);
    }
}
