//! `--compare`'s report: grip-proxy and its peers side by side with the targets, then the
//! pass-through runs one by one, the held rounds and the other details of every target.

use super::{
    fanout_target_ms, thousands, PUBLISH_BATCH_TARGET, PUBLISH_SINGLE_TARGET, RATIO_TARGET,
    SUSTAINED_TARGET,
};
use crate::plan::{Comparison, FanoutRound, Passthrough, TargetRun};
use crate::target::Kind;
use std::fmt::Write;

/// The comparison table's targets for memory per held client and CPU per released client.
const MEM_KIB_TARGET: f64 = 2.5;
const CPU_PER_CLIENT_US_TARGET: f64 = 5.0;

/// Columns of the table, in order, with their headings.
const COLUMNS: [(Kind, &str); 4] = [
    (Kind::GripProxy, "grip-proxy"),
    (Kind::Nchan, "Nchan"),
    (Kind::Nginx, "nginx"),
    (Kind::Pushpin, "Pushpin (throttle lifted)"),
];

/// A figure of the table, and which targets it applies to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Row {
    Memory,
    Fanout(usize),
    Sustained,
    Passthrough,
    Publish,
    CpuPerClient,
    CpuPerRequest,
}

impl Row {
    fn applies(self, kind: Kind) -> bool {
        match self {
            Row::Passthrough | Row::CpuPerRequest => kind != Kind::Nchan,
            _ => kind != Kind::Nginx,
        }
    }
}

/// Median of the values (0 if none).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// `median unit (run 1, run 2, ...)` of one figure over the pass-through runs.
fn over_runs(
    p: &[Passthrough],
    f: impl Fn(&Passthrough) -> f64,
    digits: usize,
    unit: &str,
) -> String {
    let each: Vec<String> = p.iter().map(|x| format!("{:.digits$}", f(x))).collect();
    let m = median(p.iter().map(&f).collect());
    if p.len() > 1 {
        format!("{m:.digits$}{unit} ({})", each.join(", "))
    } else {
        format!("{m:.digits$}{unit}")
    }
}

fn round(t: &TargetRun, n: usize) -> Option<&FanoutRound> {
    t.fanout.iter().find(|f| f.n == n)
}

fn cpu_us_per_client(f: &FanoutRound) -> f64 {
    f.proxy_cpu_ms * 1e3 / f.n.max(1) as f64
}

/// The value of one cell (None: not measured).
fn value(t: &TargetRun, row: Row) -> Option<String> {
    match row {
        Row::Memory | Row::CpuPerClient => None, // need N: see `cell`
        Row::Fanout(n) => round(t, n).map(|f| {
            format!(
                "{:.1} ms (p50 {:.1}, p99 {:.1})",
                f.fanout_ms, f.latency.p50_ms, f.latency.p99_ms
            )
        }),
        Row::Sustained => t
            .sustained
            .as_ref()
            .map(|s| format!("{}/s", thousands(s.deliveries_per_s))),
        Row::Passthrough => {
            (!t.passthrough.is_empty()).then(|| over_runs(&t.passthrough, |p| p.ratio, 2, ""))
        }
        Row::CpuPerRequest => (!t.passthrough.is_empty())
            .then(|| over_runs(&t.passthrough, |p| p.cpu_us_per_request, 1, " µs")),
        Row::Publish => {
            let single = t.publish_single.as_ref()?;
            Some(match &t.publish_batched {
                Some(b) => format!(
                    "{} / {}",
                    thousands(single.items_per_s),
                    thousands(b.items_per_s)
                ),
                None if t.target == Kind::Nchan => {
                    format!("{} (1 only: no batches)", thousands(single.items_per_s))
                }
                None => format!("{} / not measured", thousands(single.items_per_s)),
            })
        }
    }
}

fn cell(t: Option<&TargetRun>, row: Row, n_max: usize) -> String {
    let Some(t) = t else {
        return "–".into();
    };
    if !row.applies(t.target) {
        return "–".into();
    }
    if t.not_installed.is_some() {
        return "not installed".into();
    }
    let v = match row {
        Row::Memory => round(t, n_max).map(|f| format!("{:.2} KiB", f.kib_per_held)),
        Row::CpuPerClient => round(t, n_max).map(|f| format!("{:.1} µs", cpu_us_per_client(f))),
        _ => value(t, row),
    };
    v.unwrap_or_else(|| "not measured".into())
}

/// The target cell, with grip-proxy's verdict when it was measured.
fn target_cell(c: &Comparison, row: Row, n_max: usize) -> String {
    let grip = c.targets.iter().find(|t| t.target == Kind::GripProxy);
    let verdict = |ok: Option<bool>| match ok {
        Some(ok) => format!(": {}", if ok { "met" } else { "not met" }),
        None => String::new(),
    };
    match row {
        Row::Memory => format!(
            "≤ {MEM_KIB_TARGET} KB{}",
            verdict(
                grip.and_then(|g| round(g, n_max))
                    .map(|f| f.kib_per_held <= MEM_KIB_TARGET)
            )
        ),
        Row::Fanout(n) => match fanout_target_ms(n) {
            Some(t) => format!(
                "≤ {t} ms{}",
                verdict(grip.and_then(|g| round(g, n)).map(|f| f.fanout_ms <= t))
            ),
            None => "—".into(),
        },
        Row::Sustained => format!(
            "≥ {}{}",
            thousands(SUSTAINED_TARGET),
            verdict(
                grip.and_then(|g| g.sustained.as_ref())
                    .map(|s| s.deliveries_per_s >= SUSTAINED_TARGET)
            )
        ),
        Row::Passthrough => {
            let g = grip.map(|g| &g.passthrough[..]).unwrap_or_default();
            let nginx = c
                .targets
                .iter()
                .find(|t| t.target == Kind::Nginx)
                .map(|t| &t.passthrough[..])
                .unwrap_or_default();
            if g.is_empty() {
                return format!("≥ nginx in the same run, and ≥ {RATIO_TARGET}");
            }
            let gm = median(g.iter().map(|p| p.ratio).collect());
            if nginx.is_empty() {
                return format!(
                    "≥ nginx in the same run (nginx not measured), and ≥ {RATIO_TARGET}{}",
                    verdict(Some(gm >= RATIO_TARGET))
                );
            }
            // The windows of a run share its direct window: compare requests/s within each run.
            let ahead = g
                .iter()
                .zip(nginx)
                .filter(|(a, b)| a.proxied_rps >= b.proxied_rps)
                .count();
            let nm = median(nginx.iter().map(|p| p.ratio).collect());
            format!(
                "≥ nginx in the same run (grip-proxy ≥ nginx in {ahead} of {} runs; medians compared), and ≥ {RATIO_TARGET}{}",
                g.len().min(nginx.len()),
                verdict(Some(gm >= nm && gm >= RATIO_TARGET))
            )
        }
        Row::Publish => {
            let ok = grip.and_then(|g| {
                Some((
                    g.publish_single.as_ref()?.items_per_s >= PUBLISH_SINGLE_TARGET,
                    g.publish_batched.as_ref()?.items_per_s >= PUBLISH_BATCH_TARGET,
                ))
            });
            let yes = |b: bool| if b { "met" } else { "not met" };
            format!(
                "≥ {} / ≥ {}{}",
                thousands(PUBLISH_SINGLE_TARGET),
                thousands(PUBLISH_BATCH_TARGET),
                ok.map(|(a, b)| format!(": {} / {}", yes(a), yes(b)))
                    .unwrap_or_default()
            )
        }
        Row::CpuPerClient => format!(
            "≤ {CPU_PER_CLIENT_US_TARGET} µs{}",
            verdict(
                grip.and_then(|g| round(g, n_max))
                    .map(|f| cpu_us_per_client(f) <= CPU_PER_CLIENT_US_TARGET)
            )
        ),
        Row::CpuPerRequest => "—".into(),
    }
}

/// The Markdown report of a `--compare` run.
pub(crate) fn markdown(c: &Comparison) -> String {
    let mut s = String::new();
    let plan = &c.plan;
    let n_max = plan.fanout_n.iter().copied().max().unwrap_or(0);
    let runs = plan.passthrough_runs;
    let _ = writeln!(
        s,
        "## grip-bench --compare: grip-proxy and its peers, {} mode, one run\n",
        if plan.short { "short" } else { "full" }
    );
    let by_kind = |k: Kind| c.targets.iter().find(|t| t.target == k);
    let mut rows = vec![(
        format!("RSS per held long-poll, N = {}", thousands(n_max as f64)),
        Row::Memory,
    )];
    for &n in &plan.fanout_n {
        rows.push((
            format!("one publish → last of {} held clients", thousands(n as f64)),
            Row::Fanout(n),
        ));
    }
    rows.push((
        format!(
            "sustained deliveries/s, {} clients re-polling",
            thousands(plan.sustained_clients as f64)
        ),
        Row::Sustained,
    ));
    rows.push((
        format!(
            "pass-through, proxy ÷ direct, {} keep-alive connections: median of {runs} run{} (each run)",
            plan.passthrough_conns,
            if runs == 1 { "" } else { "s" }
        ),
        Row::Passthrough,
    ));
    rows.push((
        "publish items/s, 1 / 100 items per request".into(),
        Row::Publish,
    ));
    rows.push((
        format!(
            "proxy CPU per released client (fan-out {})",
            thousands(n_max as f64)
        ),
        Row::CpuPerClient,
    ));
    rows.push((
        "proxy CPU per forwarded request (pass-through): median (each run)".into(),
        Row::CpuPerRequest,
    ));

    let heads: Vec<&str> = COLUMNS.iter().map(|(_, h)| *h).collect();
    let _ = writeln!(s, "| figure | {} | target |", heads.join(" | "));
    let _ = writeln!(s, "|---|{}---|", "---|".repeat(COLUMNS.len()));
    for (label, row) in &rows {
        let cells: Vec<String> = COLUMNS
            .iter()
            .map(|(k, _)| cell(by_kind(*k), *row, n_max))
            .collect();
        let _ = writeln!(
            s,
            "| {label} | {} | {} |",
            cells.join(" | "),
            target_cell(c, *row, n_max)
        );
    }

    let _ = writeln!(s);
    let versions: Vec<String> = c
        .targets
        .iter()
        .map(|t| match (&t.not_installed, &t.version) {
            (Some(why), _) => format!("{}: not installed ({why})", t.target.name()),
            (None, Some(v)) => format!("{} {v} ({})", t.target.name(), t.proxy_bin),
            (None, None) => format!("{} ({})", t.target.name(), t.proxy_bin),
        })
        .collect();
    let _ = writeln!(
        s,
        "Measured one target after the other in this run, in this order, on the same origin: {}. \
         Each target got fresh client workers and the single-target run's order: warm-up, held rounds \
         (N = {}), sustained, pass-through, publish. nginx ran only for the pass-through windows, started \
         next to grip-proxy after grip-proxy's sustained figure.",
        versions.join("; "),
        plan.fanout_n
            .iter()
            .map(|n| thousands(*n as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "\nPass-through: {runs} run{} per forwarding proxy; a run is one {:.1} s window of `GET /plain` straight to \
         the origin, then one {:.1} s window through each proxy, their order rotated by one every run; the ratio is \
         the proxy's requests/s over that run's direct requests/s. grip-proxy and nginx share their runs (both \
         running, one loaded at a time); Pushpin has its own runs, after its held figures. CPU per forwarded request \
         is the CPU time of the proxy's whole process tree over its window (`/proc/PID/task/*/schedstat`, as for \
         CPU per released client; nginx: master and both workers; Pushpin: the runner, condure, zurl, \
         pushpin-proxy and pushpin-handler) divided by the requests it answered.",
        if runs == 1 { "" } else { "s" },
        plan.window_ms as f64 / 1e3,
        plan.window_ms as f64 / 1e3,
    );
    let _ = writeln!(
        s,
        "\nNchan holds its subscribers itself: its re-polls and publishes never reach the origin, so its sustained \
         figure has no origin round trip per delivery (grip-proxy's and Pushpin's do), and its publish figure is \
         `POST /pub/<channel>` with one message per request (answered 202, no subscriber). CPU per released client \
         is the proxy's CPU time from the publish until the last client had its response, over N."
    );

    passthrough_runs(&mut s, c);
    held_rounds(&mut s, c);
    other_details(&mut s, c);
    if let Some(f) = c.targets.iter().find_map(|t| t.https.as_ref()) {
        super::https::section(&mut s, f);
    }
    let _ = writeln!(
        s,
        "\nOther processes used {:.1}% of the machine's CPU meanwhile. Run took {:.0} s.",
        c.foreign_cpu_percent, c.run_seconds
    );
    let mut notes: Vec<String> = c.notes.clone();
    for t in &c.targets {
        if let Some(e) = &t.error {
            notes.push(format!(
                "{}: **not measured** from here on: {e}",
                t.target.name()
            ));
        }
        notes.extend(t.notes.iter().map(|n| format!("{}: {n}", t.target.name())));
    }
    if !notes.is_empty() {
        let _ = writeln!(s, "\nNotes:");
        for n in &notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

/// Every pass-through window, run by run.
fn passthrough_runs(s: &mut String, c: &Comparison) {
    let mut rows = Vec::new();
    for t in &c.targets {
        for p in &t.passthrough {
            rows.push((p.run, t.target, p));
        }
    }
    if rows.is_empty() {
        return;
    }
    // grip-proxy's and nginx's windows interleaved by run, then Pushpin's.
    rows.sort_by_key(|(run, k, p)| (*k == Kind::Pushpin, *run, p.order));
    let _ = writeln!(s, "\n### Pass-through runs\n");
    let _ = writeln!(
        s,
        "| proxy | run | window after the direct one | direct req/s | proxied req/s | ratio | proxy CPU per request | non-200 / errors / reconnects |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for (run, k, p) in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.2} | {:.1} µs | {} / {} / {} |",
            k.name(),
            run + 1,
            p.order,
            thousands(p.direct_rps),
            thousands(p.proxied_rps),
            p.ratio,
            p.cpu_us_per_request,
            p.proxied_non200,
            p.proxied_errors,
            p.proxied_reconnects
        );
    }
}

/// The held rounds of every target.
fn held_rounds(s: &mut String, c: &Comparison) {
    let _ = writeln!(s, "\n### Held rounds (one channel, one publish)\n");
    let _ = writeln!(
        s,
        "| proxy | N | idle RSS | parked in | retried | KiB/held | publish ack | last client | p50 | p90 | p99 | released | proxy CPU | per client |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for t in &c.targets {
        for f in &t.fanout {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} MiB | {:.0} ms | {} | {:.2} | {:.1} ms | {:.1} ms | {:.1} | {:.1} | {:.1} | {}/{} | {:.1} ms | {:.1} µs |",
                t.target.name(),
                thousands(f.n as f64),
                t.idle_rss_kib as f64 / 1024.0,
                f.park_ms,
                f.retried_before_publish,
                f.kib_per_held,
                f.publish_ack_ms,
                f.fanout_ms,
                f.latency.p50_ms,
                f.latency.p90_ms,
                f.latency.p99_ms,
                f.released,
                f.n,
                f.proxy_cpu_ms,
                cpu_us_per_client(f)
            );
        }
    }
}

/// Sustained and publish details of every target measured.
fn other_details(s: &mut String, c: &Comparison) {
    let _ = writeln!(s);
    for t in c.targets.iter().filter(|t| t.measured()) {
        let mut parts = Vec::new();
        if let Some(su) = &t.sustained {
            let origin = if t.target.is_grip() {
                format!(
                    ", {}/s re-polls reached the origin",
                    thousands(su.origin_repolls_per_s)
                )
            } else {
                String::new()
            };
            parts.push(format!(
                "sustained {} deliveries in {:.1} s{origin}, {} publish batches ({} failed), {} errors, {} other responses, {} reconnects",
                thousands(su.deliveries as f64),
                su.window_s,
                su.publish_batches,
                su.publish_failures,
                su.errors,
                su.other_responses,
                su.reconnects
            ));
        }
        for pr in [&t.publish_single, &t.publish_batched]
            .into_iter()
            .flatten()
        {
            parts.push(format!(
                "publish {} item(s)/request: {} req/s on {} connections, {} non-accepted, {} errors, {} reconnects",
                pr.items_per_request,
                thousands(pr.requests_per_s),
                pr.conns,
                pr.non200,
                pr.errors,
                pr.reconnects
            ));
        }
        if !t.proxy_processes.is_empty() {
            parts.push(format!(
                "processes measured: {}",
                t.proxy_processes.join(", ")
            ));
        }
        if !parts.is_empty() {
            let _ = writeln!(s, "- {}: {}.", t.target.name(), parts.join("; "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comparison(targets: Vec<TargetRun>) -> Comparison {
        Comparison {
            plan: crate::plan::Plan::compare(false),
            targets,
            foreign_cpu_percent: 0.0,
            notes: Vec::new(),
            run_seconds: 1.0,
        }
    }

    #[test]
    fn cells_say_not_installed_not_measured_or_not_applicable() {
        let bin = std::path::Path::new("/nonexistent");
        let mut grip = TargetRun::new(Kind::GripProxy, bin);
        grip.error = Some("did not start".into());
        let nginx = TargetRun::new(Kind::Nginx, bin);
        let nchan = TargetRun::new(Kind::Nchan, bin);
        let mut pushpin = TargetRun::new(Kind::Pushpin, bin);
        pushpin.not_installed = Some("/usr/bin/pushpin not found".into());
        assert_eq!(cell(Some(&pushpin), Row::Memory, 10_000), "not installed");
        assert_eq!(cell(Some(&nginx), Row::Memory, 10_000), "–");
        assert_eq!(cell(Some(&nchan), Row::Passthrough, 10_000), "–");
        assert_eq!(cell(Some(&grip), Row::Sustained, 10_000), "not measured");
        let md = markdown(&comparison(vec![grip, nginx, nchan, pushpin]));
        let row = md
            .lines()
            .find(|l| l.starts_with("| RSS per held long-poll, N = 10,000 |"))
            .unwrap_or_default();
        assert_eq!(
            row,
            "| RSS per held long-poll, N = 10,000 | not measured | not measured | – | not installed | ≤ 2.5 KB |"
        );
        assert!(md.contains("grip-proxy: **not measured** from here on: did not start"));
    }

    #[test]
    fn passthrough_cells_give_the_median_and_each_run() {
        let bin = std::path::Path::new("/nonexistent");
        let mut grip = TargetRun::new(Kind::GripProxy, bin);
        let mut nginx = TargetRun::new(Kind::Nginx, bin);
        for (run, (g, n)) in [(30.0, 20.0), (25.0, 35.0), (40.0, 30.0)]
            .into_iter()
            .enumerate()
        {
            let p = |rps: f64| Passthrough {
                direct_rps: 100.0,
                proxied_rps: rps,
                ratio: rps / 100.0,
                cpu_us_per_request: 10.0,
                run,
                ..Default::default()
            };
            grip.passthrough.push(p(g));
            nginx.passthrough.push(p(n));
        }
        assert_eq!(
            cell(Some(&grip), Row::Passthrough, 10_000),
            "0.30 (0.30, 0.25, 0.40)"
        );
        let c = comparison(vec![grip, nginx]);
        assert_eq!(
            target_cell(&c, Row::Passthrough, 10_000),
            "≥ nginx in the same run (grip-proxy ≥ nginx in 2 of 3 runs; medians compared), and ≥ 0.5: not met"
        );
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }
}
