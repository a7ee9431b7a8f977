//! Figure 9 in the report: streams coming back some items behind, caught up from the proxy's
//! channel history against the origin answering a `Grip-Last` re-fetch (history off).

use super::thousands;
use crate::plan::{CatchUp, CatchUpFigures, Results};
use std::fmt::Write;

fn measured(m: &CatchUp) -> String {
    format!(
        "all caught up in {:.1} ms (p50 {:.1}, p99 {:.1}); {}/{} streams; {} origin requests ({} re-fetches); proxy CPU {:.1} ms",
        m.all_ms,
        m.latency.p50_ms,
        m.latency.p99_ms,
        thousands(m.caught_up as f64),
        thousands(m.streams as f64),
        thousands(m.origin_requests as f64),
        thousands(m.origin_refetches as f64),
        m.proxy_cpu_ms
    )
}

fn variants(f: &CatchUpFigures) -> [(&'static str, Option<&CatchUp>); 2] {
    [
        ("from history", f.from_history.as_ref()),
        ("from the origin (history off)", f.from_origin.as_ref()),
    ]
}

/// `history / origin` time to all caught up, when both were measured.
fn ratio(f: &CatchUpFigures) -> Option<f64> {
    let (h, o) = (f.from_history.as_ref()?, f.from_origin.as_ref()?);
    (o.all_ms > 0.0).then(|| h.all_ms / o.all_ms)
}

/// Figure 9 rows of the main table (no target: the figure compares the two ways).
pub(super) fn rows(s: &mut String, r: &Results) {
    let f = &r.catchup;
    if let Some(why) = &f.skipped {
        let _ = writeln!(
            s,
            "| 9 | Catch-up of streams behind | **skipped**: {why} | — | — |"
        );
        return;
    }
    for (name, m) in variants(f) {
        if let Some(m) = m {
            let _ = writeln!(
                s,
                "| 9 | Catch-up {name}: {} streams {} items behind on {} channels | {} | — | — |",
                thousands(m.streams as f64),
                m.behind,
                m.channels,
                measured(m)
            );
        }
    }
}

/// Figure 9 details below the tables.
pub(super) fn details(s: &mut String, r: &Results) {
    if let Some(x) = ratio(&r.catchup) {
        let _ = writeln!(
            s,
            "\nCatch-up (each variant on an instance of its own): from history the streams were all caught up in {x:.2}× the time the origin's re-fetch took."
        );
    }
}

/// The figure's lines for `--only catchup`.
pub(crate) fn catchup_lines(f: &CatchUpFigures) -> String {
    let mut s = String::new();
    if let Some(why) = &f.skipped {
        let _ = writeln!(s, "catch-up: skipped: {why}");
        return s;
    }
    for (name, m) in variants(f) {
        if let Some(m) = m {
            let _ = writeln!(s, "catch-up {name}: {}", measured(m));
        }
    }
    if let Some(x) = ratio(f) {
        let _ = writeln!(
            s,
            "catch-up: history / origin time to all caught up: {x:.2}"
        );
    }
    s
}
