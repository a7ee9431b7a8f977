//! Output: the Markdown tables, results.json and a hand-written SVG plot (the stream rows are in
//! `streams`, memory per remembered channel in `remembered`, the Redis bus in `bus`).

mod bus;
mod catchup;
mod compare;
mod https;
mod remembered;
mod streams;

pub(crate) use bus::bus_lines;
pub(crate) use catchup::catchup_lines;
pub(crate) use compare::markdown as compare_markdown;
pub(crate) use https::https_lines;
pub(crate) use remembered::remembered_lines;
pub(crate) use streams::stream_comparison;

use crate::plan::{FanoutRound, Ratios, Results};
use crate::stats::Percentiles;
use std::fmt::Write;
use std::path::Path;

/// The performance targets grip-proxy sets itself (docs/performance.md lists them with the measured figures):
/// memory per held client, sustained deliveries, pass-through against the origin alone, publish items/s.
const MEM_KIB_TARGET: f64 = 4.0;
const SUSTAINED_TARGET: f64 = 45_000.0;
const RATIO_TARGET: f64 = 0.5;
const PUBLISH_SINGLE_TARGET: f64 = 100_000.0;
const PUBLISH_BATCH_TARGET: f64 = 1_500_000.0;

fn fanout_target_ms(n: usize) -> Option<f64> {
    match n {
        1_000 => Some(8.0),
        10_000 => Some(50.0),
        _ => None,
    }
}

fn meets(ok: bool) -> &'static str {
    if ok {
        "yes"
    } else {
        "no"
    }
}

/// `12345.6` -> `12,346`.
fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn memory_rows(r: &Results) -> Vec<&FanoutRound> {
    // Memory is asked at N = 10,000 and the largest N; in --short mode every N is shown.
    let max = r.fanout.iter().map(|f| f.n).max().unwrap_or(0);
    r.fanout
        .iter()
        .filter(|f| r.plan.short || f.n == 10_000 || f.n == max)
        .collect()
}

/// The Markdown report printed to stdout.
pub(crate) fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## grip-bench: {:?} ({}), {} mode\n",
        r.target,
        r.proxy_bin,
        if r.plan.short { "short" } else { "full" }
    );
    let _ = writeln!(s, "| # | Figure | Measured | Target | Meets |");
    let _ = writeln!(s, "|---|---|---|---|---|");
    for f in memory_rows(r) {
        let _ = writeln!(
            s,
            "| 1 | Memory per held long-poll, N={} | {:.2} KiB/held (RSS {:.1} MiB held, {:.1} MiB idle) | ≤ {MEM_KIB_TARGET} KB | {} |",
            thousands(f.n as f64),
            f.kib_per_held,
            f.held_rss_kib as f64 / 1024.0,
            r.idle_rss_kib as f64 / 1024.0,
            meets(f.kib_per_held <= MEM_KIB_TARGET)
        );
    }
    streams::memory_rows(&mut s, r);
    for f in &r.fanout {
        let (target, ok) = match fanout_target_ms(f.n) {
            Some(t) => (format!("≤ {t} ms"), meets(f.fanout_ms <= t)),
            None => ("—".to_string(), "—"),
        };
        let _ = writeln!(
            s,
            "| 2 | Fan-out to N={} on one channel (last client) | {:.1} ms (per client p50 {:.1} / p90 {:.1} / p99 {:.1} / max {:.1} ms) | {target} | {ok} |",
            thousands(f.n as f64),
            f.fanout_ms,
            f.latency.p50_ms,
            f.latency.p90_ms,
            f.latency.p99_ms,
            f.latency.max_ms
        );
    }
    streams::fanout_rows(&mut s, r);
    let su = &r.sustained;
    let _ = writeln!(
        s,
        "| 3 | Sustained deliveries/s ({} re-polling clients, {} channels, {:.1} s window) | {}/s | ≥ {}/s | {} |",
        thousands(su.clients as f64),
        su.channels,
        su.window_s,
        thousands(su.deliveries_per_s),
        thousands(SUSTAINED_TARGET),
        meets(su.deliveries_per_s >= SUSTAINED_TARGET)
    );
    streams::sustained_rows(&mut s, r);
    let p = &r.passthrough;
    let _ = writeln!(
        s,
        "| 4 | Pass-through ratio ({} keep-alive conns, GET /plain) | {:.2} ({} req/s proxied / {} req/s direct) | ≥ {RATIO_TARGET} | {} |",
        p.conns,
        p.ratio,
        thousands(p.proxied_rps),
        thousands(p.direct_rps),
        meets(p.ratio >= RATIO_TARGET)
    );
    for (pr, target) in [
        (&r.publish_single, PUBLISH_SINGLE_TARGET),
        (&r.publish_batched, PUBLISH_BATCH_TARGET),
    ] {
        let _ = writeln!(
            s,
            "| 5 | Publish API, {} item(s)/request, {} conns, no subscribers | {} items/s ({} req/s) | ≥ {} items/s | {} |",
            pr.items_per_request,
            pr.conns,
            thousands(pr.items_per_s),
            thousands(pr.requests_per_s),
            thousands(target),
            meets(pr.items_per_s >= target)
        );
    }
    bus::rows(&mut s, r);
    remembered::rows(&mut s, r);
    https::rows(&mut s, &r.https);
    catchup::rows(&mut s, r);

    let _ = writeln!(s, "\n### Held rounds (one channel, one publish)\n");
    let _ = writeln!(
        s,
        "| N | parked in | retried | RSS held | KiB/held | publish ack | fan-out (last) | p50 | p90 | p99 | max | released | RSS after release | proxy CPU (µs/client) |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for f in &r.fanout {
        let _ = writeln!(
            s,
            "| {} | {:.0} ms | {} | {:.1} MiB | {:.2} | {:.1} ms | {:.1} ms | {:.1} | {:.1} | {:.1} | {:.1} | {}/{} | {:.1} MiB | {:.1} ms ({:.2}) |",
            thousands(f.n as f64),
            f.park_ms,
            f.retried_before_publish,
            f.held_rss_kib as f64 / 1024.0,
            f.kib_per_held,
            f.publish_ack_ms,
            f.fanout_ms,
            f.latency.p50_ms,
            f.latency.p90_ms,
            f.latency.p99_ms,
            f.latency.max_ms,
            f.released,
            f.n,
            f.rss_after_release_kib as f64 / 1024.0,
            f.proxy_cpu_ms,
            f.proxy_cpu_ms * 1e3 / f.n.max(1) as f64
        );
    }
    streams::details(&mut s, r);
    let _ = writeln!(
        s,
        "\nSustained: {} deliveries in {:.1} s, {}/s re-polls reached the origin, {} publish batches ({} failed), {} errors, {} other responses, {} reconnects.",
        thousands(su.deliveries as f64),
        su.window_s,
        thousands(su.origin_repolls_per_s),
        su.publish_batches,
        su.publish_failures,
        su.errors,
        su.other_responses,
        su.reconnects
    );
    let _ = writeln!(
        s,
        "Pass-through: {} errors direct, {} errors / {} non-200 / {} reconnects proxied; proxy CPU {:.1} µs per forwarded request ({:.0} ms over the window).",
        p.direct_errors,
        p.proxied_errors,
        p.proxied_non200,
        p.proxied_reconnects,
        p.cpu_us_per_request,
        p.proxy_cpu_ms
    );
    for pr in [&r.publish_single, &r.publish_batched] {
        let _ = writeln!(
            s,
            "Publish ({} items/request): {} non-200, {} errors, {} reconnects.",
            pr.items_per_request, pr.non200, pr.errors, pr.reconnects
        );
    }
    bus::details(&mut s, r);
    remembered::details(&mut s, r);
    https::section(&mut s, &r.https);
    catchup::details(&mut s, r);
    let phases: Vec<String> = r
        .rss_after_phase_kib
        .iter()
        .map(|(name, kib)| format!("{name} {:.1}", *kib as f64 / 1024.0))
        .collect();
    let _ = writeln!(
        s,
        "Proxy RSS (MiB) after each phase: {}.",
        phases.join(", ")
    );
    let _ = writeln!(
        s,
        "Proxy processes measured: {}. Other processes used {:.1}% of the CPU meanwhile. Run took {:.0} s.",
        r.proxy_processes.join(", "),
        r.foreign_cpu_percent,
        r.run_seconds
    );
    if !r.notes.is_empty() {
        let _ = writeln!(s, "\nNotes:");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// `p50 … / p90 … / p99 … / max … ms` of a latency distribution.
fn percentiles(p: &Percentiles) -> String {
    format!(
        "p50 {:.3} / p90 {:.3} / p99 {:.3} / max {:.3} ms",
        p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
    )
}

/// `p50 ×… / p90 ×… / p99 ×… / max ×…` of a per-percentile ratio.
fn ratios(x: &Ratios) -> String {
    format!(
        "p50 ×{:.2} / p90 ×{:.2} / p99 ×{:.2} / max ×{:.2}",
        x.p50, x.p90, x.p99, x.max
    )
}

/// A named, coloured line of (x, y) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// One line chart panel of the SVG.
struct Panel<'a> {
    title: &'a str,
    unit: &'a str,
    series: Vec<Series<'a>>,
    target: Option<f64>,
}

fn panel(svg: &mut String, x0: f64, p: &Panel<'_>) {
    let (w, h, left, top, bottom) = (420.0, 320.0, 60.0, 56.0, 50.0);
    let pw = w - left - 20.0;
    let ph = h - top - bottom;
    let max_x = p
        .series
        .iter()
        .flat_map(|s| s.2.iter().map(|q| q.0))
        .fold(1.0f64, f64::max);
    let max_y = p
        .series
        .iter()
        .flat_map(|s| s.2.iter().map(|q| q.1))
        .chain(p.target)
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let sx = |x: f64| x0 + left + x / max_x * pw;
    let sy = |y: f64| top + ph - y / max_y * ph;
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="14" text-anchor="middle" font-weight="bold">{}</text>"#,
        x0 + w / 2.0,
        p.title
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##,
        x0 + left
    );
    for i in 0..=4 {
        let y = max_y * i as f64 / 4.0;
        let _ = writeln!(
            svg,
            r##"<line x1="{x1}" y1="{yy}" x2="{x2}" y2="{yy}" stroke="#eee"/><text x="{tx}" y="{ty}" font-size="10" text-anchor="end">{label}</text>"##,
            x1 = x0 + left,
            x2 = x0 + left + pw,
            yy = sy(y),
            tx = x0 + left - 4.0,
            ty = sy(y) + 3.0,
            label = format_tick(y)
        );
    }
    let xs: Vec<f64> = p
        .series
        .first()
        .map(|s| s.2.iter().map(|q| q.0).collect())
        .unwrap_or_default();
    for x in xs {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="10" text-anchor="middle">{}</text>"#,
            sx(x),
            top + ph + 14.0,
            thousands(x)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">held clients N</text>"#,
        x0 + left + pw / 2.0,
        top + ph + 32.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle" transform="rotate(-90 {0} {1})">{}</text>"#,
        x0 + 14.0,
        top + ph / 2.0,
        p.unit
    );
    if let Some(t) = p.target {
        let _ = writeln!(
            svg,
            r##"<line x1="{x1}" y1="{yy}" x2="{x2}" y2="{yy}" stroke="#c00" stroke-dasharray="4 3"/><text x="{tx}" y="{ty}" font-size="10" fill="#c00" text-anchor="end">target</text>"##,
            x1 = x0 + left,
            x2 = x0 + left + pw,
            yy = sy(t),
            tx = x0 + left + pw - 2.0,
            ty = sy(t) - 3.0
        );
    }
    for (i, (name, color, pts)) in p.series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for &(x, y) in pts {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="9" fill="{color}" text-anchor="middle">{}</text>"#,
                sx(x),
                sy(y),
                sx(x),
                sy(y) - 6.0,
                format_tick(y)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="10" fill="{color}">&#9632; {name}</text>"#,
            x0 + left + i as f64 * 140.0,
            top - 10.0
        );
    }
}

fn format_tick(y: f64) -> String {
    if y >= 100.0 {
        format!("{y:.0}")
    } else if y >= 10.0 {
        format!("{y:.1}")
    } else {
        format!("{y:.2}")
    }
}

/// SVG with memory per held client and fan-out time against N.
pub(crate) fn svg(r: &Results) -> String {
    let mem: Vec<(f64, f64)> = r
        .fanout
        .iter()
        .map(|f| (f.n as f64, f.kib_per_held))
        .collect();
    let last: Vec<(f64, f64)> = r.fanout.iter().map(|f| (f.n as f64, f.fanout_ms)).collect();
    let p50: Vec<(f64, f64)> = r
        .fanout
        .iter()
        .map(|f| (f.n as f64, f.latency.p50_ms))
        .collect();
    let stream_mem: Vec<(f64, f64)> = r
        .streams
        .rounds
        .iter()
        .map(|f| (f.n as f64, f.kib_per_held))
        .collect();
    let stream_last: Vec<(f64, f64)> = r
        .streams
        .rounds
        .iter()
        .map(|f| (f.n as f64, f.fanout_ms))
        .collect();
    let mut mem_series = vec![("(RSS held - idle) / N", "#1f77b4", mem)];
    let mut time_series = vec![
        ("last client", "#d62728", last),
        ("per-client p50", "#2ca02c", p50),
    ];
    if !stream_mem.is_empty() {
        mem_series.push(("streams", "#9467bd", stream_mem));
        time_series.push(("last stream", "#ff7f0e", stream_last));
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="860" height="340" viewBox="0 0 860 340" font-family="sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="860" height="340" fill="white"/>"#);
    panel(
        &mut s,
        0.0,
        &Panel {
            title: &format!("{:?}: memory per held client", r.target),
            unit: "KiB per held client",
            series: mem_series,
            target: Some(MEM_KIB_TARGET),
        },
    );
    panel(
        &mut s,
        430.0,
        &Panel {
            title: &format!("{:?}: fan-out time", r.target),
            unit: "ms after publish",
            series: time_series,
            target: None,
        },
    );
    let _ = writeln!(s, "</svg>");
    s
}

/// Write a `--compare` run's results.json and report.md (its table) into `dir`.
pub(crate) fn write_comparison(
    dir: &Path,
    c: &crate::plan::Comparison,
    md: &str,
) -> Result<(), String> {
    let json = serde_json::to_string_pretty(c).map_err(|e| e.to_string())?;
    for (name, body) in [("results.json", json.as_str()), ("report.md", md)] {
        std::fs::write(dir.join(name), body)
            .map_err(|e| format!("write {}: {e}", dir.join(name).display()))?;
    }
    Ok(())
}

/// Write results.json, report.md and plot.svg into `dir`.
pub(crate) fn write_all(dir: &Path, r: &Results, md: &str) -> Result<(), String> {
    let json = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
    let w = |name: &str, body: &str| {
        std::fs::write(dir.join(name), body)
            .map_err(|e| format!("write {}: {e}", dir.join(name).display()))
    };
    w("results.json", &json)?;
    w("report.md", md)?;
    w("plot.svg", &svg(r))
}
