//! Figure 6 in the report: delivery through the Redis publish bus (fan-out and single-client
//! rounds), over Pub/Sub and over a Redis Stream, against the memory bus, with the ratios of the
//! same run (Streams / Pub/Sub, Redis / memory bus).

use super::{percentiles, ratios, thousands};
use crate::plan::{BusFigures, DeliveryLatency, FanoutRound, Ratios, Results};
use std::fmt::Write;

/// A fan-out round: last client, then the per-client percentiles.
fn fanout(f: &FanoutRound) -> String {
    format!(
        "{:.1} ms (per client p50 {:.1} / p90 {:.1} / p99 {:.1} / max {:.1} ms)",
        f.fanout_ms, f.latency.p50_ms, f.latency.p90_ms, f.latency.p99_ms, f.latency.max_ms
    )
}

/// A ratio of two fan-out rounds: last client, then the per-client medians.
fn fanout_ratio(x: f64, a: &FanoutRound, b: &FanoutRound) -> String {
    format!(
        "×{x:.2} (per client p50 ×{:.2})",
        a.latency.p50_ms / b.latency.p50_ms.max(1e-9)
    )
}

/// The fan-out entries: each round, then the ratios (cross-instance Pub/Sub / memory bus,
/// Streams / Pub/Sub).
fn fanout_entries(b: &BusFigures, out: &mut Vec<(String, String)>) {
    let rounds = [
        (
            "Cross-instance fan-out through Redis Pub/Sub: N={} held on A, publish to B (last client)",
            &b.fanout,
        ),
        (
            "Cross-instance fan-out through a Redis Stream: N={} held on A', publish to B' (last client)",
            &b.fanout_stream,
        ),
        (
            "Memory bus fan-out (baseline): N={} held on M, publish to M (last client)",
            &b.fanout_memory,
        ),
    ];
    for (name, f) in rounds {
        if let Some(f) = f {
            let name = name.replace("{}", &thousands(f.n as f64));
            out.push((name, fanout(f)));
        }
    }
    if let (Some(x), Some(c), Some(m)) =
        (b.ratio_fanout_cross_to_memory, &b.fanout, &b.fanout_memory)
    {
        out.push((
            "Ratio cross-instance (Pub/Sub) / memory bus fan-out (last client)".into(),
            fanout_ratio(x, c, m),
        ));
    }
    if let (Some(x), Some(st), Some(c)) =
        (b.ratio_fanout_stream_to_pubsub, &b.fanout_stream, &b.fanout)
    {
        out.push((
            "Ratio Streams / Pub/Sub cross-instance fan-out (last client)".into(),
            fanout_ratio(x, st, c),
        ));
    }
}

/// The single-client paths with their names in the table, in the table's order.
fn paths(b: &BusFigures) -> [(&'static str, &Option<DeliveryLatency>); 5] {
    [
        (
            "Cross-instance delivery, Pub/Sub, 1 client on A, publish to B",
            &b.cross_instance,
        ),
        (
            "Cross-instance delivery, Streams, 1 client on A', publish to B'",
            &b.stream_cross_instance,
        ),
        (
            "Same instance through Redis, Pub/Sub, 1 client on A, publish to A",
            &b.same_instance_redis,
        ),
        (
            "Same instance through Redis, Streams, 1 client on A', publish to A'",
            &b.stream_same_instance,
        ),
        (
            "Memory bus (baseline), 1 client on M, publish to M",
            &b.memory_bus,
        ),
    ]
}

/// The per-percentile ratios of the single-client paths, with their names in the table.
fn path_ratios(b: &BusFigures) -> [(&'static str, &Option<Ratios>); 4] {
    [
        (
            "Ratio cross-instance (Pub/Sub) / memory bus",
            &b.ratio_cross_to_memory,
        ),
        (
            "Ratio same instance through Redis (Pub/Sub) / memory bus",
            &b.ratio_same_redis_to_memory,
        ),
        (
            "Ratio Streams / Pub/Sub, cross-instance",
            &b.ratio_stream_to_pubsub_cross,
        ),
        (
            "Ratio Streams / Pub/Sub, same instance",
            &b.ratio_stream_to_pubsub_same,
        ),
    ]
}

/// Figure 6's measured entries as (name, measured), in the table's order.
fn entries(b: &BusFigures) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fanout_entries(b, &mut out);
    for (name, d) in paths(b) {
        if let Some(d) = d {
            out.push((
                format!("{name} ({} rounds)", d.rounds),
                percentiles(&d.latency),
            ));
        }
    }
    for (name, x) in path_ratios(b) {
        if let Some(x) = x {
            out.push((name.to_string(), ratios(x)));
        }
    }
    out
}

/// Figure 6 rows of the main table (no targets).
pub(super) fn rows(s: &mut String, r: &Results) {
    let b = &r.bus;
    if let Some(why) = &b.skipped {
        let _ = writeln!(
            s,
            "| 6 | Cross-instance delivery through the Redis bus | **skipped**: {why} | — | — |"
        );
        return;
    }
    for (name, measured) in entries(b) {
        let _ = writeln!(s, "| 6 | {name} | {measured} | — | — |");
    }
    if let Some(e) = &b.error {
        let _ = writeln!(
            s,
            "| 6 | Cross-instance delivery through the Redis bus | **not measured**: {e} | — | — |"
        );
    }
}

/// Figure 6 details below the tables.
pub(super) fn details(s: &mut String, r: &Results) {
    let b = &r.bus;
    if b.skipped.is_some() {
        return;
    }
    let mut parts = vec![format!(
        "Redis bus (redis-server {}; instances A and B on it over Pub/Sub, A' and B' over a Redis Stream (prefix `{}`), M on the memory bus, started for figure 6, which took {:.1} s)",
        b.redis_version.as_deref().unwrap_or("?"),
        b.stream_prefix.as_deref().unwrap_or("?"),
        b.seconds
    )];
    for (name, f) in [("Pub/Sub", &b.fanout), ("Streams", &b.fanout_stream)] {
        if let Some(f) = f {
            parts.push(format!(
                "fan-out N={} ({name}): parked in {:.0} ms, publish answered in {:.1} ms, {}/{} released, {} timeout bodies, {} other, {} errors",
                thousands(f.n as f64),
                f.park_ms,
                f.publish_ack_ms,
                f.released,
                f.n,
                f.timeout_bodies,
                f.other_responses,
                f.errors
            ));
        }
    }
    for (_, d) in paths(b) {
        if let Some(d) = d {
            parts.push(format!(
                "{}: mean {:.3} ms, publish answered p50 {:.3} / p99 {:.3} ms, {} failed rounds",
                d.path, d.mean_ms, d.publish_ack.p50_ms, d.publish_ack.p99_ms, d.failed
            ));
        }
    }
    if let Some(x) = &b.ratio_cross_to_same_redis {
        parts.push(format!(
            "cross-instance / same instance through Redis (Pub/Sub): {}",
            ratios(x)
        ));
    }
    let _ = writeln!(s, "{}.", parts.join("; "));
}

/// Figure 6 as lines for `--only bus`.
pub(crate) fn bus_lines(b: &BusFigures) -> String {
    let mut s = String::new();
    if let Some(why) = &b.skipped {
        let _ = writeln!(s, "bus: skipped: {why}");
        return s;
    }
    for (name, measured) in entries(b) {
        let _ = writeln!(s, "{name}: {measured}");
    }
    if let Some(e) = &b.error {
        let _ = writeln!(s, "bus: not measured: {e}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    fn latency(p50_ms: f64) -> DeliveryLatency {
        DeliveryLatency {
            rounds: 200,
            latency: Percentiles {
                p50_ms,
                p90_ms: p50_ms * 2.0,
                p99_ms: p50_ms * 4.0,
                max_ms: p50_ms * 8.0,
            },
            ..Default::default()
        }
    }

    #[test]
    fn stream_rows_follow_their_pubsub_rows_with_the_ratios() {
        let (cross, stream) = (latency(0.2), latency(0.3));
        let b = BusFigures {
            ratio_stream_to_pubsub_cross: Some(Ratios::of(&stream.latency, &cross.latency)),
            cross_instance: Some(cross),
            stream_cross_instance: Some(stream),
            ..Default::default()
        };
        let lines = bus_lines(&b);
        let at = |needle: &str| {
            lines
                .find(needle)
                .unwrap_or_else(|| panic!("{needle}: {lines}"))
        };
        assert!(at("Cross-instance delivery, Pub/Sub") < at("Cross-instance delivery, Streams"));
        assert!(
            lines.contains("Ratio Streams / Pub/Sub, cross-instance: p50 ×1.50"),
            "{lines}"
        );
        assert!(!lines.contains("same instance"), "{lines}");
    }

    #[test]
    fn skipped_figure_is_one_line() {
        let b = BusFigures {
            skipped: Some("redis-server not found on PATH".into()),
            ..Default::default()
        };
        assert_eq!(
            bus_lines(&b),
            "bus: skipped: redis-server not found on PATH\n"
        );
    }
}
