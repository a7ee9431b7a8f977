//! Sizes and durations of a run (`--short` or full) and the results it produces.

use crate::stats::Percentiles;
use crate::target::Kind;
use serde::Serialize;
use std::time::Duration;

/// What to measure and for how long.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Plan {
    pub short: bool,
    /// Held clients per fan-out/memory round (ascending).
    pub fanout_n: Vec<usize>,
    pub sustained_clients: usize,
    pub sustained_channels: usize,
    /// Interval between publish batches in the sustained test.
    pub sustained_publish_interval_ms: u64,
    /// Streams per stream memory round, on one channel (ascending).
    pub stream_memory_n: Vec<usize>,
    /// Streams of the stream fan-out figure (one of the memory rounds in a whole run).
    pub stream_fanout_n: usize,
    pub stream_sustained_streams: usize,
    pub stream_sustained_channels: usize,
    pub warmup_window_ms: u64,
    pub window_ms: u64,
    pub passthrough_conns: usize,
    /// Pass-through runs of `--compare`: each a window straight to the origin, then one through
    /// each forwarding proxy, in an order rotated from run to run (1 in a single-target run).
    pub passthrough_runs: usize,
    pub publish_conns: usize,
    pub workers: usize,
    /// Clients held on instance A (and on A', and on M) in each cross-instance (Redis bus)
    /// fan-out round.
    pub bus_fanout_n: usize,
    /// Single-client rounds per delivery path in the cross-instance latency test.
    pub bus_rounds: usize,
    /// Rounds per path run first and not counted.
    pub bus_warmup_rounds: usize,
    /// Distinct channels published to (one item with an id each, nobody subscribed) for memory
    /// per remembered channel.
    pub remembered_n: usize,
    /// Items per publish request of that figure.
    pub remembered_batch: usize,
    /// Churn variant: rounds of `remembered_churn_clients` clients, each held on a new channel
    /// and released by an item with an id.
    pub remembered_churn_rounds: usize,
    pub remembered_churn_clients: usize,
    /// HTTPS long-polls held (and plain ones, the baseline) for memory per held HTTPS client.
    pub https_memory_n: usize,
    /// Runs of the HTTPS pass-through and handshake figures: grip-proxy's and nginx's windows
    /// alternate, their order rotated every run.
    pub https_runs: usize,
    /// Connections opening, handshaking, asking and closing at once in the handshake figure.
    pub handshake_conns: usize,
    /// Catch-up figure: streams reconnecting after an id `CATCHUP_BEHIND` items back, spread over
    /// `catchup_channels` channels.
    pub catchup_streams: usize,
    pub catchup_channels: usize,
    /// Bound on the whole run.
    pub max_run: Duration,
}

impl Plan {
    pub(crate) fn new(short: bool) -> Self {
        if short {
            Self {
                short,
                fanout_n: vec![500, 1_000],
                sustained_clients: 1_000,
                sustained_channels: 100,
                sustained_publish_interval_ms: 5,
                stream_memory_n: vec![500, 1_000],
                stream_fanout_n: 1_000,
                stream_sustained_streams: 1_000,
                stream_sustained_channels: 100,
                warmup_window_ms: 300,
                window_ms: 1_500,
                passthrough_conns: 50,
                passthrough_runs: 1,
                publish_conns: 8,
                workers: 2,
                bus_fanout_n: 200,
                bus_rounds: 200,
                bus_warmup_rounds: 20,
                remembered_n: 10_000,
                remembered_batch: 1_000,
                remembered_churn_rounds: 33,
                remembered_churn_clients: 300,
                https_memory_n: 1_000,
                https_runs: 2,
                handshake_conns: 32,
                catchup_streams: 1_000,
                catchup_channels: 100,
                max_run: Duration::from_secs(360),
            }
        } else {
            Self {
                short,
                fanout_n: vec![1_000, 5_000, 10_000, 19_000],
                sustained_clients: 10_000,
                sustained_channels: 100,
                sustained_publish_interval_ms: 20,
                stream_memory_n: vec![10_000, 19_000],
                stream_fanout_n: 10_000,
                stream_sustained_streams: 10_000,
                stream_sustained_channels: 100,
                warmup_window_ms: 1_000,
                window_ms: 5_000,
                passthrough_conns: 50,
                passthrough_runs: 1,
                publish_conns: 8,
                workers: 3,
                bus_fanout_n: 1_000,
                bus_rounds: 500,
                bus_warmup_rounds: 20,
                remembered_n: 100_000,
                remembered_batch: 1_000,
                remembered_churn_rounds: 333,
                remembered_churn_clients: 300,
                https_memory_n: 10_000,
                https_runs: 4,
                handshake_conns: 32,
                catchup_streams: 10_000,
                catchup_channels: 100,
                max_run: Duration::from_secs(1_200),
            }
        }
    }

    /// The plan of `--compare`: the same sizes and windows, held rounds only at the N of the
    /// comparison table (1,000 and 10,000; `--short`: 500 and 1,000), pass-through in 4
    /// alternating runs (`--short`: 2), and a bound that covers every target in turn.
    pub(crate) fn compare(short: bool) -> Self {
        let mut p = Self::new(short);
        if !short {
            p.fanout_n = vec![1_000, 10_000];
        }
        p.passthrough_runs = if short { 2 } else { 4 };
        p.max_run = Duration::from_secs(if short { 720 } else { 2_100 });
        p
    }
}

/// One round of N clients held on one channel, then released by one publish.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FanoutRound {
    pub n: usize,
    pub connect_failed: usize,
    /// Error answers (e.g. 502) that clients got and retried before they were parked.
    pub retried_before_publish: u64,
    /// Time from the first hold request until all were parked (origin count + proxy idle).
    pub park_ms: f64,
    pub held_rss_kib: u64,
    /// (held RSS - idle RSS) / N, in KiB.
    pub kib_per_held: f64,
    /// Time from just before the publish POST until the publish was answered.
    pub publish_ack_ms: f64,
    /// Time from just before the publish POST until the last client had its full response.
    pub fanout_ms: f64,
    /// Per-client latency (publish sent -> response read).
    pub latency: Percentiles,
    pub released: usize,
    pub timeout_bodies: usize,
    pub other_responses: usize,
    pub errors: usize,
    pub rss_after_release_kib: u64,
    /// CPU time the proxy used from just before the publish until every client had its response.
    pub proxy_cpu_ms: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Sustained {
    pub clients: usize,
    pub channels: usize,
    pub window_s: f64,
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    /// Hold requests answered by the origin per second during the window (re-polls).
    pub origin_repolls_per_s: f64,
    pub publish_batches: u64,
    pub publish_failures: u64,
    pub other_responses: u64,
    pub errors: u64,
    pub reconnects: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Passthrough {
    pub conns: usize,
    pub window_s: f64,
    pub direct_rps: f64,
    pub proxied_rps: f64,
    pub ratio: f64,
    pub direct_errors: u64,
    pub proxied_errors: u64,
    pub proxied_non200: u64,
    pub proxied_reconnects: u64,
    /// CPU time of the proxy's processes (every thread of its process tree) over the proxied
    /// window.
    pub proxy_cpu_ms: f64,
    /// That CPU time divided by the requests the proxy forwarded in the window (answered 200 or
    /// not).
    pub cpu_us_per_request: f64,
    /// Run (0-based) of `--compare`'s alternating pass-through, and place of this proxy's window
    /// after the run's direct window (1: right after it).
    pub run: usize,
    pub order: usize,
}

#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PublishRun {
    pub items_per_request: usize,
    pub conns: usize,
    pub window_s: f64,
    pub requests_per_s: f64,
    pub items_per_s: f64,
    pub non200: u64,
    pub errors: u64,
    pub reconnects: u64,
}

/// The stream figures, measured on a grip-proxy instance of their own, started fresh for them
/// (so that memory the long-poll rounds left in the allocator does not hide what streams take).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct StreamFigures {
    /// Why they were not measured.
    pub skipped: Option<String>,
    /// RSS of that instance after its warm-up: the base of memory per stream.
    pub idle_rss_kib: u64,
    /// N streams on one channel, then one item published to it (memory and fan-out).
    pub rounds: Vec<FanoutRound>,
    pub sustained: Option<StreamSustained>,
}

/// Figure 7: memory per remembered channel (a channel entry kept only for the last id published
/// to it, for `prev-id` checks), each variant measured on a grip-proxy instance of its own.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RememberedFigures {
    /// Why they were not measured.
    pub skipped: Option<String>,
    pub publish: Option<Remembered>,
    pub churn: Option<Remembered>,
}

/// Figure 9: streams coming back after an id some items back, caught up from the proxy's channel
/// history, and (history off) by the origin answering the proxy's `Grip-Last` re-fetch; each on
/// a grip-proxy instance of its own.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct CatchUpFigures {
    /// Why they were not measured.
    pub skipped: Option<String>,
    pub from_history: Option<CatchUp>,
    pub from_origin: Option<CatchUp>,
}

/// One catch-up round: every stream connects at once with its prev-id `behind` items back.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct CatchUp {
    /// `[history] items` of the instance (0: off).
    pub history_items: usize,
    pub streams: usize,
    pub channels: usize,
    /// Items each stream missed.
    pub behind: u64,
    /// Streams that read every missed item; the others failed, ended or were still waiting.
    pub caught_up: usize,
    pub not_caught_up: usize,
    /// From the clients' first connect to the last stream caught up.
    pub all_ms: f64,
    /// Per stream, from the first connect to its catch-up.
    pub latency: Percentiles,
    /// Requests the origin got for these streams, and how many of them were `Grip-Last` re-fetches.
    pub origin_requests: u64,
    pub origin_refetches: u64,
    /// The proxy's CPU time over the round.
    pub proxy_cpu_ms: f64,
}

/// Channels left remembered with no client, and the RSS they cost.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Remembered {
    /// Channels the benchmark made remembered (items with an id published to them).
    pub channels: usize,
    /// Growth of `grip_proxy_channels` over the test (the divisor of `bytes_per_channel`).
    pub counted: u64,
    /// Mean length of the channel names and of the ids, in bytes.
    pub name_len: f64,
    pub id_len: f64,
    /// RSS of the instance after its warm-up, just before the test, and once it was idle after.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    /// (RSS after - RSS before) / counted, in bytes.
    pub bytes_per_channel: f64,
    /// `bytes_per_channel` minus the name's and the id's lengths.
    pub beyond_strings: f64,
    /// Publish requests (items per request) and the time they took in all.
    pub requests: usize,
    pub items_per_request: usize,
    pub publish_ms: f64,
    /// Churn only: clients per round, and clients that got the published body.
    pub clients_per_round: usize,
    pub released: usize,
    /// Time until the gauge counted the channels and the proxy's CPU was idle.
    pub settle_ms: f64,
}

/// Chunks delivered per second to streams on many channels while items are published back to
/// back.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct StreamSustained {
    pub streams: usize,
    pub channels: usize,
    pub window_s: f64,
    /// Published chunks the clients read within the window.
    pub deliveries: u64,
    pub deliveries_per_s: f64,
    /// Publish requests (one item per channel) answered 200 within the window, per second.
    pub publish_batches_per_s: f64,
    /// Deliveries those publishes asked for (batches × streams), per second.
    pub offered_per_s: f64,
    pub publish_batches: u64,
    pub publish_failures: u64,
    /// Published chunks read in all (after the window too: the backlog).
    pub chunks_total: u64,
    pub other_chunks: u64,
    /// Streams that ended or broke before they were dropped.
    pub ended: u64,
    pub connect_failed: u64,
    /// CPU time over the window, in cores (1.0 = one core busy all the time).
    pub proxy_cores: f64,
    pub workers_cores: f64,
    pub orchestrator_cores: f64,
}

/// The HTTPS figures: memory per held HTTPS long-poll against plain ones at the same N, and
/// grip-proxy's HTTPS listener against nginx with TLS on the same origin.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct HttpsFigures {
    /// Why they were not measured.
    pub skipped: Option<String>,
    pub memory: Option<HttpsMemory>,
    /// What a handshake with grip-proxy's and with nginx's HTTPS listener negotiated.
    pub grip_session: Option<String>,
    pub nginx_session: Option<String>,
    /// Why nginx was not measured (not installed, did not start).
    pub nginx_missing: Option<String>,
    /// One per run (keep-alive HTTPS `GET /plain`, each against that run's plain direct window).
    pub grip_passthrough: Vec<Passthrough>,
    pub nginx_passthrough: Vec<Passthrough>,
    /// One per run (new connection, full handshake, one request, close).
    pub grip_handshakes: Vec<Handshakes>,
    pub nginx_handshakes: Vec<Handshakes>,
}

/// N HTTPS long-polls held on one channel, and N plain ones, each on a grip-proxy instance started
/// fresh for it (both with the same HTTPS listener configured) and warmed up the same way.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HttpsMemory {
    pub n: usize,
    pub plain_idle_rss_kib: u64,
    pub https_idle_rss_kib: u64,
    pub plain: FanoutRound,
    pub https: FanoutRound,
    /// HTTPS KiB per held client ÷ plain KiB per held client.
    pub ratio: f64,
    /// Figure 1 at the same N on the run's main instance, if the run measured it (that instance
    /// held other rounds before, so its allocator had grown already).
    pub main_plain_kib_per_held: Option<f64>,
}

/// One window of full TLS handshakes through one proxy.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Handshakes {
    pub conns: usize,
    pub window_s: f64,
    /// Connections that got their `GET /plain` answered 200 within the window.
    pub ok: u64,
    pub per_s: f64,
    pub non200: u64,
    /// Connections that failed (connect, handshake or request).
    pub errors: u64,
    /// CPU time of the proxy's process tree over the window, and per handshake.
    pub proxy_cpu_ms: f64,
    pub cpu_us_per_handshake: f64,
    /// CPU time the client workers used over the window, in cores (1.0: one core busy).
    pub workers_cores: f64,
    /// Run (0-based) and place of this proxy's window in the run (1: first).
    pub run: usize,
    pub order: usize,
}

/// Single-client delivery latency over one path: a client is held, one item is published,
/// the time from just before the publish is written until the client has read its response.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct DeliveryLatency {
    /// Which instance held the client, which one got the publish, and the bus.
    pub path: String,
    pub rounds: usize,
    /// Rounds whose client did not get the published body (not in the percentiles).
    pub failed: usize,
    pub latency: Percentiles,
    pub mean_ms: f64,
    /// Time until the publish was answered 200 (before the release on the Redis bus, after it
    /// on the memory bus).
    pub publish_ack: Percentiles,
}

/// Figure 6: delivery through the Redis publish bus, across instances and on one instance,
/// against the memory bus, over Pub/Sub (instances A and B) and over a Redis Stream (A' and B',
/// on the same redis-server with a prefix of their own).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct BusFigures {
    /// Why the scenario did not run (the rest is then empty).
    pub skipped: Option<String>,
    /// Why it failed once started (the run then exits non-zero after writing the report).
    pub error: Option<String>,
    pub redis_version: Option<String>,
    /// `bus.prefix` of the Streams pair (its stream is `<prefix>:items`).
    pub stream_prefix: Option<String>,
    /// Wall time of the whole scenario (Redis and the instances started and stopped).
    pub seconds: f64,
    /// N clients held on instance A, one publish to instance B (Pub/Sub).
    pub fanout: Option<FanoutRound>,
    /// The same N held on the Streams instance A', one publish to B' (run right after `fanout`).
    pub fanout_stream: Option<FanoutRound>,
    /// The same N held on the memory-bus instance M, publish to M (the baseline, run right
    /// after the cross-instance rounds).
    pub fanout_memory: Option<FanoutRound>,
    /// Last-client fan-out time, cross-instance (Pub/Sub) / memory bus.
    pub ratio_fanout_cross_to_memory: Option<f64>,
    /// Last-client fan-out time, Streams / Pub/Sub (both cross-instance).
    pub ratio_fanout_stream_to_pubsub: Option<f64>,
    /// Publish to B, client held on A (Redis bus, Pub/Sub).
    pub cross_instance: Option<DeliveryLatency>,
    /// Publish to A, client held on A (Redis bus, Pub/Sub: the item still goes through Redis).
    pub same_instance_redis: Option<DeliveryLatency>,
    /// Publish to B', client held on A' (Redis bus, Streams).
    pub stream_cross_instance: Option<DeliveryLatency>,
    /// Publish to A', client held on A' (Redis bus, Streams).
    pub stream_same_instance: Option<DeliveryLatency>,
    /// Publish to a fresh memory-bus instance M, client held there (the baseline).
    pub memory_bus: Option<DeliveryLatency>,
    /// cross_instance / memory_bus and same_instance_redis / memory_bus, per percentile.
    pub ratio_cross_to_memory: Option<Ratios>,
    pub ratio_same_redis_to_memory: Option<Ratios>,
    pub ratio_cross_to_same_redis: Option<Ratios>,
    /// stream_cross_instance / cross_instance and stream_same_instance / same_instance_redis,
    /// per percentile.
    pub ratio_stream_to_pubsub_cross: Option<Ratios>,
    pub ratio_stream_to_pubsub_same: Option<Ratios>,
}

/// Per-percentile ratio of two latency distributions.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Ratios {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Ratios {
    pub(crate) fn of(a: &Percentiles, b: &Percentiles) -> Self {
        let r = |x: f64, y: f64| if y > 0.0 { x / y } else { 0.0 };
        Self {
            p50: r(a.p50_ms, b.p50_ms),
            p90: r(a.p90_ms, b.p90_ms),
            p99: r(a.p99_ms, b.p99_ms),
            max: r(a.max_ms, b.max_ms),
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Results {
    pub target: Kind,
    pub proxy_bin: String,
    pub plan: Plan,
    pub proxy_processes: Vec<String>,
    pub idle_rss_kib: u64,
    pub fanout: Vec<FanoutRound>,
    pub sustained: Sustained,
    pub passthrough: Passthrough,
    pub publish_single: PublishRun,
    pub publish_batched: PublishRun,
    pub bus: BusFigures,
    pub streams: StreamFigures,
    pub remembered: RememberedFigures,
    pub https: HttpsFigures,
    pub catchup: CatchUpFigures,
    /// RSS of the proxy (KiB) after each phase, once it is idle again.
    pub rss_after_phase_kib: Vec<(String, u64)>,
    /// Share of the machine's CPU used by processes other than this benchmark's (its
    /// orchestrator, origin, workers and the proxy) while it measured, in percent.
    pub foreign_cpu_percent: f64,
    pub notes: Vec<String>,
    pub run_seconds: f64,
}

/// What `--compare` measured: the same figures against grip-proxy and each peer, one after the
/// other, in one run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Comparison {
    pub plan: Plan,
    /// In the order measured: grip-proxy, nginx (its pass-through windows alternate with
    /// grip-proxy's), Nchan, Pushpin.
    pub targets: Vec<TargetRun>,
    /// Share of the machine's CPU used by processes other than this benchmark's while it
    /// measured, in percent.
    pub foreign_cpu_percent: f64,
    pub notes: Vec<String>,
    pub run_seconds: f64,
}

/// The figures of one target in a `--compare` run (a figure that does not apply is None/empty).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TargetRun {
    pub target: Kind,
    pub proxy_bin: String,
    /// The Debian package's version (peers only), from dpkg.
    pub version: Option<String>,
    /// Why it was not measured because it is not installed.
    pub not_installed: Option<String>,
    /// Why it could not be measured once started (the figures measured before are kept).
    pub error: Option<String>,
    pub proxy_processes: Vec<String>,
    pub idle_rss_kib: u64,
    pub fanout: Vec<FanoutRound>,
    pub sustained: Option<Sustained>,
    /// One per pass-through run.
    pub passthrough: Vec<Passthrough>,
    pub publish_single: Option<PublishRun>,
    pub publish_batched: Option<PublishRun>,
    /// grip-proxy only: the HTTPS figures (nginx with TLS measured beside it), after its others.
    pub https: Option<HttpsFigures>,
    pub notes: Vec<String>,
}

impl TargetRun {
    pub(crate) fn new(target: Kind, proxy_bin: &std::path::Path) -> Self {
        Self {
            target,
            proxy_bin: proxy_bin.display().to_string(),
            version: None,
            not_installed: None,
            error: None,
            proxy_processes: Vec::new(),
            idle_rss_kib: 0,
            fanout: Vec::new(),
            sustained: None,
            passthrough: Vec::new(),
            publish_single: None,
            publish_batched: None,
            https: None,
            notes: Vec::new(),
        }
    }

    /// Whether its figures were measured (installed, started; an error may have ended them).
    pub(crate) fn measured(&self) -> bool {
        self.not_installed.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_per_percentile() {
        let a = Percentiles {
            p50_ms: 0.3,
            p90_ms: 0.4,
            p99_ms: 1.0,
            max_ms: 2.0,
        };
        let b = Percentiles {
            p50_ms: 0.1,
            p90_ms: 0.2,
            p99_ms: 0.5,
            max_ms: 0.0,
        };
        let r = Ratios::of(&a, &b);
        assert!((r.p50 - 3.0).abs() < 1e-9);
        assert!((r.p90 - 2.0).abs() < 1e-9);
        assert!((r.p99 - 2.0).abs() < 1e-9);
        assert_eq!(r.max, 0.0); // no baseline: no ratio
    }
}
