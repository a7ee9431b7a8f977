//! Sizes and durations of a run (`--short` or full) and the results it produces.

use crate::stats::Percentiles;
use crate::target::Kind;
use serde::Serialize;
use std::time::Duration;

/// What to measure and for how long.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub short: bool,
    /// Held clients per fan-out/memory round (ascending).
    pub fanout_n: Vec<usize>,
    pub sustained_clients: usize,
    pub sustained_channels: usize,
    /// Interval between publish batches in the sustained test.
    pub sustained_publish_interval_ms: u64,
    pub warmup_window_ms: u64,
    pub window_ms: u64,
    pub passthrough_conns: usize,
    pub publish_conns: usize,
    pub workers: usize,
    /// Bound on the whole run.
    pub max_run: Duration,
}

impl Plan {
    pub fn new(short: bool) -> Self {
        if short {
            Self {
                short,
                fanout_n: vec![500, 1_000],
                sustained_clients: 1_000,
                sustained_channels: 100,
                sustained_publish_interval_ms: 5,
                warmup_window_ms: 300,
                window_ms: 1_500,
                passthrough_conns: 50,
                publish_conns: 8,
                workers: 2,
                max_run: Duration::from_secs(240),
            }
        } else {
            Self {
                short,
                fanout_n: vec![1_000, 5_000, 10_000, 19_000],
                sustained_clients: 10_000,
                sustained_channels: 100,
                sustained_publish_interval_ms: 20,
                warmup_window_ms: 1_000,
                window_ms: 5_000,
                passthrough_conns: 50,
                publish_conns: 8,
                workers: 3,
                max_run: Duration::from_secs(900),
            }
        }
    }
}

/// One round of N clients held on one channel, then released by one publish.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutRound {
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
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Sustained {
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
pub struct Passthrough {
    pub conns: usize,
    pub window_s: f64,
    pub direct_rps: f64,
    pub proxied_rps: f64,
    pub ratio: f64,
    pub direct_errors: u64,
    pub proxied_errors: u64,
    pub proxied_non200: u64,
    pub proxied_reconnects: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishRun {
    pub items_per_request: usize,
    pub conns: usize,
    pub window_s: f64,
    pub requests_per_s: f64,
    pub items_per_s: f64,
    pub non200: u64,
    pub errors: u64,
    pub reconnects: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
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
    /// RSS of the proxy (KiB) after each phase, once it is idle again.
    pub rss_after_phase_kib: Vec<(String, u64)>,
    /// Share of the machine's CPU used by processes other than this benchmark's (its
    /// orchestrator, origin, workers and the proxy) while it measured, in percent.
    pub foreign_cpu_percent: f64,
    pub notes: Vec<String>,
    pub run_seconds: f64,
}
