//! Figure 7 in the report: memory per remembered channel (a channel entry kept only for its last
//! id, no client held), with the lengths of the channel names and ids the figure includes.

use super::{meets, thousands};
use crate::plan::{Remembered, RememberedFigures, Results};
use std::fmt::Write;

/// The target: bytes per remembered channel beyond its name's and its id's lengths.
const BEYOND_STRINGS_TARGET: f64 = 100.0;

fn measured(m: &Remembered) -> String {
    format!(
        "{} bytes/channel (names {:.1} B + ids {:.1} B: {} bytes beyond the strings; RSS +{:.1} MiB over {} channels)",
        thousands(m.bytes_per_channel),
        m.name_len,
        m.id_len,
        thousands(m.beyond_strings),
        m.rss_after_kib.saturating_sub(m.rss_before_kib) as f64 / 1024.0,
        thousands(m.counted as f64)
    )
}

fn variants(f: &RememberedFigures) -> [(String, Option<&Remembered>); 2] {
    [
        (
            match &f.publish {
                Some(m) => format!(
                    "Memory per remembered channel: items with ids published to {} channels nobody holds",
                    thousands(m.channels as f64)
                ),
                None => String::new(),
            },
            f.publish.as_ref(),
        ),
        (
            match &f.churn {
                Some(m) => format!(
                    "Memory per remembered channel, churn: {} rounds of {} clients each held on a new channel, released by an item with an id",
                    m.requests, m.clients_per_round
                ),
                None => String::new(),
            },
            f.churn.as_ref(),
        ),
    ]
}

/// Figure 7 rows of the main table.
pub(super) fn rows(s: &mut String, r: &Results) {
    let f = &r.remembered;
    if let Some(why) = &f.skipped {
        let _ = writeln!(
            s,
            "| 7 | Memory per remembered channel | **skipped**: {why} | — | — |"
        );
        return;
    }
    for (name, m) in variants(f) {
        if let Some(m) = m {
            let _ = writeln!(
                s,
                "| 7 | {name} | {} | < {BEYOND_STRINGS_TARGET} bytes beyond the strings | {} |",
                measured(m),
                meets(m.beyond_strings < BEYOND_STRINGS_TARGET)
            );
        }
    }
}

/// Figure 7 details below the tables.
pub(super) fn details(s: &mut String, r: &Results) {
    let f = &r.remembered;
    if f.skipped.is_some() {
        return;
    }
    let mut parts = vec![
        "Remembered channels (each variant on an instance of its own, started and warmed up for it)"
            .to_string(),
    ];
    if let Some(m) = &f.publish {
        parts.push(format!(
            "publish: {} requests of {} items in {:.0} ms, gauge and CPU settled {:.0} ms later, RSS {:.1} -> {:.1} MiB, grip_proxy_channels +{}",
            m.requests,
            thousands(m.items_per_request as f64),
            m.publish_ms,
            m.settle_ms,
            m.rss_before_kib as f64 / 1024.0,
            m.rss_after_kib as f64 / 1024.0,
            thousands(m.counted as f64)
        ));
    }
    if let Some(m) = &f.churn {
        parts.push(format!(
            "churn: {} clients released of {}, rounds took {:.0} ms, settled {:.0} ms later, RSS {:.1} -> {:.1} MiB, grip_proxy_channels +{}",
            thousands(m.released as f64),
            thousands(m.channels as f64),
            m.publish_ms,
            m.settle_ms,
            m.rss_before_kib as f64 / 1024.0,
            m.rss_after_kib as f64 / 1024.0,
            thousands(m.counted as f64)
        ));
    }
    let _ = writeln!(s, "{}.", parts.join("; "));
}

/// Figure 7 as lines for `--only`.
pub(crate) fn remembered_lines(f: &RememberedFigures) -> String {
    let mut s = String::new();
    if let Some(why) = &f.skipped {
        let _ = writeln!(s, "remembered: skipped: {why}");
        return s;
    }
    for (name, m) in variants(f) {
        if let Some(m) = m {
            let _ = writeln!(
                s,
                "{name}: {} (target < {BEYOND_STRINGS_TARGET} bytes beyond the strings: {})",
                measured(m),
                meets(m.beyond_strings < BEYOND_STRINGS_TARGET)
            );
        }
    }
    s
}
