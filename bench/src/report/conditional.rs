//! Figure 10 in the report: ETag-polling clients of an origin that speaks no GRIP, straight to
//! the origin and through conditional holds: the origin's requests per second while nothing
//! changes, and how soon the clients have a change.

use super::thousands;
use crate::plan::{ConditionalFigures, EtagPolling, Results};
use std::fmt::Write;

fn measured(m: &EtagPolling) -> String {
    format!(
        "origin {} req/s ({} in {:.1} s); after a change p50 {:.0} / p90 {:.0} / p99 {:.0} / max {:.0} ms ({}/{} deliveries); {} origin requests per change",
        rate(m.origin_rps),
        thousands(m.origin_requests as f64),
        m.window_s,
        m.latency.p50_ms,
        m.latency.p90_ms,
        m.latency.p99_ms,
        m.latency.max_ms,
        thousands(m.delivered as f64),
        thousands((m.delivered + m.missed) as f64),
        thousands(m.origin_requests_per_change)
    )
}

/// A rate with one decimal when small, with thousands separators when large.
fn rate(x: f64) -> String {
    if x < 100.0 {
        format!("{x:.1}")
    } else {
        thousands(x)
    }
}

fn modes(f: &ConditionalFigures) -> [(&'static str, Option<&EtagPolling>); 2] {
    [
        ("direct, polling every", f.direct.as_ref()),
        ("through conditional holds, re-check every", f.held.as_ref()),
    ]
}

/// The ratios line (conditional ÷ direct), when both were measured.
fn ratios(f: &ConditionalFigures) -> Option<String> {
    let (o, l) = (f.ratio_origin_rps?, f.ratio_latency?);
    Some(format!(
        "conditional ÷ direct: origin req/s {o:.5} (1 in {}); latency after a change p50 {:.2}, p90 {:.2}, p99 {:.2}, max {:.2}",
        thousands(1.0 / o.max(1e-9)),
        l.p50,
        l.p90,
        l.p99,
        l.max
    ))
}

/// Figure 10 rows of the main table (no target: the figure compares the two ways).
pub(super) fn rows(s: &mut String, r: &Results) {
    let f = &r.conditional;
    if let Some(why) = &f.skipped {
        let _ = writeln!(
            s,
            "| 10 | ETag polling through conditional holds | **skipped**: {why} | — | — |"
        );
        return;
    }
    for (name, m) in modes(f) {
        if let Some(m) = m {
            let _ = writeln!(
                s,
                "| 10 | ETag polling, {} clients, {name} {:.1} s | {} | — | — |",
                thousands(m.clients as f64),
                m.interval_s,
                measured(m)
            );
        }
    }
}

/// Figure 10 details below the tables.
pub(super) fn details(s: &mut String, r: &Results) {
    let f = &r.conditional;
    if let Some(x) = ratios(f) {
        let _ = writeln!(s, "\nETag polling (figure 10), {x}.");
    }
    if let Some(line) = f.held.as_ref().and_then(proxy_line) {
        let _ = writeln!(s, "{line}");
    }
    for (name, m) in modes(f) {
        if let Some(m) = m {
            let _ = writeln!(s, "{}", per_change(name, m));
        }
    }
}

/// When the first and the last client had each change.
fn per_change(name: &str, m: &EtagPolling) -> String {
    let spans: Vec<String> = m
        .change_first_ms
        .iter()
        .zip(&m.change_last_ms)
        .map(|(a, b)| format!("{a:.0}-{b:.0}"))
        .collect();
    let name = name.split(',').next().unwrap_or(name);
    format!(
        "ETag polling {name}: first-last client per change (ms after it): {}.",
        spans.join(", ")
    )
}

/// The proxy's counters of the conditional mode, and the clients' answers.
fn proxy_line(m: &EtagPolling) -> Option<String> {
    let p = m.proxy.as_ref()?;
    Some(format!(
        "Conditional holds: {} holds, re-checks {} unchanged / {} shared / {} refetched / {} failed, {} clients released by re-checks; proxy CPU {:.1} ms over the steady window; clients answered {} × 200, {} × 304, {} other, {} errors.",
        thousands(p.conditional_holds as f64),
        p.rechecks_unchanged,
        p.rechecks_shared,
        p.rechecks_refetched,
        p.rechecks_failed,
        thousands(p.released_clients as f64),
        p.window_cpu_ms,
        thousands(m.answers_200 as f64),
        thousands(m.answers_304 as f64),
        m.answers_other,
        m.errors
    ))
}

/// The figure's lines for `--only conditional`.
pub(crate) fn conditional_lines(f: &ConditionalFigures) -> String {
    let mut s = String::new();
    if let Some(why) = &f.skipped {
        let _ = writeln!(s, "conditional: skipped: {why}");
        return s;
    }
    for (name, m) in modes(f) {
        if let Some(m) = m {
            let _ = writeln!(
                s,
                "conditional {name} {:.1} s: {}",
                m.interval_s,
                measured(m)
            );
        }
    }
    if let Some(x) = ratios(f) {
        let _ = writeln!(s, "conditional: {x}");
    }
    if let Some(line) = f.held.as_ref().and_then(proxy_line) {
        let _ = writeln!(s, "conditional: {line}");
    }
    s
}
