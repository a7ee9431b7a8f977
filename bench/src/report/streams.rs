//! The stream rows of the report, each next to its long-poll baseline of the same run (same N),
//! with the ratio stream / long-poll; and the same comparison as text for `--only`.

use super::{meets, thousands};
use crate::plan::{FanoutRound, Results, StreamFigures, Sustained};
use std::fmt::Write;

/// The target for fan-out to 10,000 streams on one channel (the long-poll one at that N).
const STREAM_FANOUT_TARGET_MS: f64 = 50.0;
/// The target for sustained deliveries to 10,000 streams.
const STREAM_SUSTAINED_TARGET: f64 = 200_000.0;

/// The long-poll round of the same N in the same run.
fn baseline(fanout: &[FanoutRound], n: usize) -> Option<&FanoutRound> {
    fanout.iter().find(|f| f.n == n)
}

/// `×0.85 of <what>`, or a note that there was no baseline.
fn against(x: f64, base: Option<f64>, what: &str) -> String {
    match base {
        Some(b) if b > 0.0 => format!("long-poll {what}: ×{:.2}", x / b),
        _ => "no long-poll baseline in this run".to_string(),
    }
}

/// Figure 1s: memory per held stream, next to the long-poll memory rows.
pub(super) fn memory_rows(s: &mut String, r: &Results) {
    let st = &r.streams;
    if let Some(why) = &st.skipped {
        let _ = writeln!(s, "| 1s-3s | Streams | **skipped**: {why} | — | — |");
        return;
    }
    for f in st
        .rounds
        .iter()
        .filter(|f| r.plan.stream_memory_n.contains(&f.n))
    {
        let base = baseline(&r.fanout, f.n);
        let _ = writeln!(
            s,
            "| 1s | Memory per held stream, N={} | {:.2} KiB/stream (RSS {:.1} MiB held, {:.1} MiB idle; {}) | — | — |",
            thousands(f.n as f64),
            f.kib_per_held,
            f.held_rss_kib as f64 / 1024.0,
            st.idle_rss_kib as f64 / 1024.0,
            against(
                f.kib_per_held,
                base.map(|b| b.kib_per_held),
                &format!("{:.2} KiB/held", base.map_or(0.0, |b| b.kib_per_held))
            )
        );
    }
}

/// Figure 2s: fan-out of one item to N streams, next to the long-poll fan-out rows.
pub(super) fn fanout_rows(s: &mut String, r: &Results) {
    let n = r.plan.stream_fanout_n;
    let Some(f) = r.streams.rounds.iter().find(|f| f.n == n) else {
        return;
    };
    let (target, ok) = if n == 10_000 {
        (
            format!("≤ {STREAM_FANOUT_TARGET_MS} ms"),
            meets(f.fanout_ms <= STREAM_FANOUT_TARGET_MS),
        )
    } else {
        ("—".to_string(), "—")
    };
    let base = baseline(&r.fanout, n);
    let _ = writeln!(
        s,
        "| 2s | Fan-out to N={} streams on one channel (last stream) | {:.1} ms (per stream p50 {:.1} / p90 {:.1} / p99 {:.1} / max {:.1} ms; {}) | {target} | {ok} |",
        thousands(n as f64),
        f.fanout_ms,
        f.latency.p50_ms,
        f.latency.p90_ms,
        f.latency.p99_ms,
        f.latency.max_ms,
        against(
            f.fanout_ms,
            base.map(|b| b.fanout_ms),
            &format!("{:.1} ms", base.map_or(0.0, |b| b.fanout_ms))
        )
    );
}

/// Figure 3s: sustained stream deliveries, next to the re-polling long-poll figure.
pub(super) fn sustained_rows(s: &mut String, r: &Results) {
    let Some(su) = &r.streams.sustained else {
        return;
    };
    // The target is set for 10,000 streams (not for the short mode's 1,000).
    let (target, ok) = if su.streams == 10_000 {
        (
            format!("≥ {}/s", thousands(STREAM_SUSTAINED_TARGET)),
            meets(su.deliveries_per_s >= STREAM_SUSTAINED_TARGET),
        )
    } else {
        ("—".to_string(), "—")
    };
    let _ = writeln!(
        s,
        "| 3s | Sustained stream deliveries/s ({} streams, {} channels, publishing back to back, {:.1} s window) | {}/s ({} publish requests/s offered {}/s; long-poll re-polling {}/s: ×{:.2}) | {target} | {ok} |",
        thousands(su.streams as f64),
        su.channels,
        su.window_s,
        thousands(su.deliveries_per_s),
        thousands(su.publish_batches_per_s),
        thousands(su.offered_per_s),
        thousands(r.sustained.deliveries_per_s),
        su.deliveries_per_s / r.sustained.deliveries_per_s.max(1e-9)
    );
}

/// The stream rounds next to the long-poll rounds of the same N, and the sustained details.
pub(super) fn details(s: &mut String, r: &Results) {
    let st = &r.streams;
    if st.skipped.is_some() {
        return;
    }
    let _ = writeln!(
        s,
        "\n### Stream rounds (one channel, one `http-stream` item; an instance of their own, idle RSS {:.1} MiB)\n",
        st.idle_rss_kib as f64 / 1024.0
    );
    let _ = writeln!(
        s,
        "| N | opened in | RSS held | KiB/stream | long-poll KiB/held | ratio | publish ack | fan-out (last) | p50 | p99 | long-poll fan-out | ratio | released | proxy CPU (µs/stream) |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for f in &st.rounds {
        let base = baseline(&r.fanout, f.n);
        let cell = |x: Option<f64>, fmt: &dyn Fn(f64) -> String| x.map_or("—".into(), fmt);
        let _ = writeln!(
            s,
            "| {} | {:.0} ms | {:.1} MiB | {:.2} | {} | {} | {:.1} ms | {:.1} ms | {:.1} | {:.1} | {} | {} | {}/{} | {:.1} ms ({:.2}) |",
            thousands(f.n as f64),
            f.park_ms,
            f.held_rss_kib as f64 / 1024.0,
            f.kib_per_held,
            cell(base.map(|b| b.kib_per_held), &|x| format!("{x:.2}")),
            cell(base.map(|b| f.kib_per_held / b.kib_per_held.max(1e-9)), &|x| format!("×{x:.2}")),
            f.publish_ack_ms,
            f.fanout_ms,
            f.latency.p50_ms,
            f.latency.p99_ms,
            cell(base.map(|b| b.fanout_ms), &|x| format!("{x:.1} ms")),
            cell(base.map(|b| f.fanout_ms / b.fanout_ms.max(1e-9)), &|x| format!("×{x:.2}")),
            f.released,
            f.n,
            f.proxy_cpu_ms,
            f.proxy_cpu_ms * 1e3 / f.n.max(1) as f64
        );
    }
    if let Some(su) = &st.sustained {
        let _ = writeln!(
            s,
            "\nStream sustained: {} published chunks read in the {:.1} s window ({} in all, backlog included), {} publish requests ({} failed), {} unexpected chunks, {} streams ended early, {} not opened; CPU over the window, in cores: proxy {:.2}, workers {:.2}, publisher (orchestrator) {:.2}.",
            thousands(su.deliveries as f64),
            su.window_s,
            thousands(su.chunks_total as f64),
            su.publish_batches,
            su.publish_failures,
            su.other_chunks,
            su.ended,
            su.connect_failed,
            su.proxy_cores,
            su.workers_cores,
            su.orchestrator_cores
        );
    }
}

/// The stream figures next to their long-poll baselines of the same run, as lines for `--only`
/// (a baseline is there only if its figure was selected too).
pub(crate) fn stream_comparison(
    f: &StreamFigures,
    fanout: &[FanoutRound],
    sustained: Option<&Sustained>,
) -> String {
    let mut s = String::new();
    if let Some(why) = &f.skipped {
        let _ = writeln!(s, "streams: skipped: {why}");
        return s;
    }
    for r in &f.rounds {
        let base = baseline(fanout, r.n);
        let _ = writeln!(
            s,
            "streams N={}: {:.2} KiB/stream ({}), fan-out {:.1} ms ({})",
            thousands(r.n as f64),
            r.kib_per_held,
            against(
                r.kib_per_held,
                base.map(|b| b.kib_per_held),
                &format!("{:.2} KiB/held", base.map_or(0.0, |b| b.kib_per_held))
            ),
            r.fanout_ms,
            against(
                r.fanout_ms,
                base.map(|b| b.fanout_ms),
                &format!("{:.1} ms", base.map_or(0.0, |b| b.fanout_ms))
            )
        );
    }
    if let Some(su) = &f.sustained {
        let _ = writeln!(
            s,
            "stream sustained: {:.0} deliveries/s ({})",
            su.deliveries_per_s,
            against(
                su.deliveries_per_s,
                sustained.map(|b| b.deliveries_per_s),
                &format!(
                    "re-polling {:.0}/s",
                    sustained.map_or(0.0, |b| b.deliveries_per_s)
                )
            )
        );
    }
    s
}
