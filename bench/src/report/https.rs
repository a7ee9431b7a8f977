//! The HTTPS figures in the reports: memory per held HTTPS long-poll against plain ones, and
//! grip-proxy's HTTPS listener against nginx with TLS (pass-through, full handshakes per second).

use super::thousands;
use crate::plan::{Handshakes, HttpsFigures, Passthrough};
use std::fmt::Write;

/// The target of HTTPS pass-through: grip-proxy ÷ nginx with TLS, in the same run.
const VS_NGINX_TARGET: f64 = 1.0;

/// Median of the values (None if none).
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// grip-proxy ÷ nginx per run (paired by run), their median, and the runs where grip-proxy's
/// figure was at least nginx's.
fn versus(grip: &[f64], nginx: &[f64]) -> Option<(f64, usize, usize)> {
    let per_run: Vec<f64> = grip
        .iter()
        .zip(nginx)
        .filter(|(_, n)| **n > 0.0)
        .map(|(g, n)| g / n)
        .collect();
    let at_least = per_run.iter().filter(|r| **r >= 1.0).count();
    let n = per_run.len();
    Some((median(per_run)?, at_least, n))
}

fn rps(p: &[Passthrough]) -> Vec<f64> {
    p.iter().map(|p| p.proxied_rps).collect()
}

fn rate(h: &[Handshakes]) -> Vec<f64> {
    h.iter().map(|h| h.per_s).collect()
}

/// `median (run 1, run 2, ...)` with `fmt` applied to each.
fn over_runs(v: &[f64], fmt: &dyn Fn(f64) -> String) -> String {
    match median(v.to_vec()) {
        None => "–".into(),
        Some(m) => format!(
            "{} ({})",
            fmt(m),
            v.iter().map(|x| fmt(*x)).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn ratio_cell(x: Option<(f64, usize, usize)>) -> String {
    match x {
        Some((m, at_least, n)) => format!("{m:.2} (≥ 1 in {at_least} of {n} runs)"),
        None => "–".into(),
    }
}

/// Progress-style lines (for `--only`): one per figure.
pub(crate) fn https_lines(f: &HttpsFigures) -> String {
    let mut s = String::new();
    if let Some(why) = &f.skipped {
        let _ = writeln!(s, "HTTPS figures: skipped ({why})");
        return s;
    }
    for (name, sess) in [("grip-proxy", &f.grip_session), ("nginx", &f.nginx_session)] {
        if let Some(sess) = sess {
            let _ = writeln!(s, "HTTPS session with {name}: {sess}");
        }
    }
    if let Some(m) = &f.memory {
        let _ = writeln!(
            s,
            "https-memory N={}: {:.2} KiB per held HTTPS long-poll, {:.2} KiB per held plain long-poll (same run): HTTPS/plain {:.2}",
            thousands(m.n as f64),
            m.https.kib_per_held,
            m.plain.kib_per_held,
            m.ratio
        );
    }
    if !f.grip_passthrough.is_empty() {
        let dir = |p: &[Passthrough]| median(p.iter().map(|p| p.ratio).collect()).unwrap_or(0.0);
        let _ = write!(
            s,
            "https-passthrough: grip-proxy {} req/s (÷ plain direct {:.2})",
            thousands(median(rps(&f.grip_passthrough)).unwrap_or(0.0)),
            dir(&f.grip_passthrough)
        );
        if !f.nginx_passthrough.is_empty() {
            let _ = write!(
                s,
                ", nginx {} req/s (÷ plain direct {:.2}): grip-proxy/nginx {}",
                thousands(median(rps(&f.nginx_passthrough)).unwrap_or(0.0)),
                dir(&f.nginx_passthrough),
                ratio_cell(versus(
                    &rps(&f.grip_passthrough),
                    &rps(&f.nginx_passthrough)
                ))
            );
        }
        let _ = writeln!(s, " (medians of {} runs)", f.grip_passthrough.len());
    }
    if !f.grip_handshakes.is_empty() {
        let cpu = |h: &[Handshakes]| {
            median(h.iter().map(|h| h.cpu_us_per_handshake).collect()).unwrap_or(0.0)
        };
        let _ = write!(
            s,
            "handshakes: grip-proxy {}/s ({:.0} µs CPU each)",
            thousands(median(rate(&f.grip_handshakes)).unwrap_or(0.0)),
            cpu(&f.grip_handshakes)
        );
        if !f.nginx_handshakes.is_empty() {
            let _ = write!(
                s,
                ", nginx {}/s ({:.0} µs CPU each): grip-proxy/nginx {}",
                thousands(median(rate(&f.nginx_handshakes)).unwrap_or(0.0)),
                cpu(&f.nginx_handshakes),
                ratio_cell(versus(
                    &rate(&f.grip_handshakes),
                    &rate(&f.nginx_handshakes)
                ))
            );
        }
        let _ = writeln!(s, " (medians of {} runs)", f.grip_handshakes.len());
    }
    if let Some(why) = &f.nginx_missing {
        let _ = writeln!(s, "nginx with TLS: {why}");
    }
    s
}

/// Figure 8 rows of the single-target report's main table.
pub(super) fn rows(s: &mut String, f: &HttpsFigures) {
    if let Some(why) = &f.skipped {
        let _ = writeln!(s, "| 8 | HTTPS | skipped ({why}) | — | — |");
        return;
    }
    if let Some(m) = &f.memory {
        let _ = writeln!(
            s,
            "| 8 | Memory per held HTTPS long-poll, N={} | {:.2} KiB/held (plain: {:.2} KiB/held; HTTPS ÷ plain {:.2}) | — | — |",
            thousands(m.n as f64),
            m.https.kib_per_held,
            m.plain.kib_per_held,
            m.ratio
        );
    }
    let g = rps(&f.grip_passthrough);
    if let Some(vs) = versus(&g, &rps(&f.nginx_passthrough)) {
        let _ = writeln!(
            s,
            "| 8 | HTTPS pass-through, grip-proxy ÷ nginx with TLS ({} keep-alive conns) | {:.2} (median of {} runs; {} req/s) | ≥ {VS_NGINX_TARGET:.1} | {} |",
            f.grip_passthrough.first().map_or(0, |p| p.conns),
            vs.0,
            vs.2,
            thousands(median(g).unwrap_or(0.0)),
            super::meets(vs.0 >= VS_NGINX_TARGET)
        );
    }
    let g = rate(&f.grip_handshakes);
    if let Some(vs) = versus(&g, &rate(&f.nginx_handshakes)) {
        let _ = writeln!(
            s,
            "| 8 | Full TLS handshakes/s, grip-proxy ÷ nginx with TLS | {:.2} (median of {} runs; {}/s) | — | — |",
            vs.0,
            vs.2,
            thousands(median(g).unwrap_or(0.0))
        );
    }
}

/// The HTTPS section of a report (`### HTTPS`): a table of the figures, then every window.
pub(crate) fn section(s: &mut String, f: &HttpsFigures) {
    let _ = writeln!(s, "\n### HTTPS\n");
    if let Some(why) = &f.skipped {
        let _ = writeln!(s, "Skipped: {why}.");
        return;
    }
    let _ = writeln!(
        s,
        "| figure | grip-proxy | nginx (TLS) | grip-proxy ÷ nginx, median of the runs | target |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    if let Some(m) = &f.memory {
        let _ = writeln!(
            s,
            "| RSS per held HTTPS long-poll, N = {} | {:.2} KiB (plain long-poll, same run: {:.2} KiB; HTTPS ÷ plain {:.2}) | – | – | — |",
            thousands(m.n as f64),
            m.https.kib_per_held,
            m.plain.kib_per_held,
            m.ratio
        );
    }
    let nginx_cell = |v: &[f64], fmt: &dyn Fn(f64) -> String| {
        if v.is_empty() {
            f.nginx_missing.clone().unwrap_or_else(|| "–".into())
        } else {
            over_runs(v, fmt)
        }
    };
    let k = |x: f64| thousands(x);
    if !f.grip_passthrough.is_empty() {
        let conns = f.grip_passthrough[0].conns;
        let g = rps(&f.grip_passthrough);
        let n = rps(&f.nginx_passthrough);
        let vs = versus(&g, &n);
        let ok = match vs {
            Some((m, _, _)) if m >= VS_NGINX_TARGET => "met",
            Some(_) => "not met",
            None => "—",
        };
        let _ = writeln!(
            s,
            "| HTTPS pass-through req/s, {conns} keep-alive connections, `GET /plain` | {} | {} | {} | ≥ {VS_NGINX_TARGET:.1} ({ok}) |",
            over_runs(&g, &k),
            nginx_cell(&n, &k),
            ratio_cell(vs)
        );
        let d = |p: &[Passthrough]| p.iter().map(|p| p.ratio).collect::<Vec<_>>();
        let r2 = |x: f64| format!("{x:.2}");
        let _ = writeln!(
            s,
            "| HTTPS pass-through ÷ plain HTTP straight to the origin | {} | {} | – | — |",
            over_runs(&d(&f.grip_passthrough), &r2),
            nginx_cell(&d(&f.nginx_passthrough), &r2)
        );
        let c = |p: &[Passthrough]| p.iter().map(|p| p.cpu_us_per_request).collect::<Vec<_>>();
        let us = |x: f64| format!("{x:.1} µs");
        let _ = writeln!(
            s,
            "| proxy CPU per HTTPS request (pass-through) | {} | {} | {} | — |",
            over_runs(&c(&f.grip_passthrough), &us),
            nginx_cell(&c(&f.nginx_passthrough), &us),
            versus(&c(&f.grip_passthrough), &c(&f.nginx_passthrough))
                .map_or("–".into(), |(m, _, _)| format!("{m:.2}"))
        );
    }
    if !f.grip_handshakes.is_empty() {
        let conns = f.grip_handshakes[0].conns;
        let g = rate(&f.grip_handshakes);
        let n = rate(&f.nginx_handshakes);
        let _ = writeln!(
            s,
            "| full TLS handshakes/s ({conns} connections at once, one `GET /plain` each, no resumption) | {} | {} | {} | — |",
            over_runs(&g, &k),
            nginx_cell(&n, &k),
            ratio_cell(versus(&g, &n))
        );
        let c = |h: &[Handshakes]| h.iter().map(|h| h.cpu_us_per_handshake).collect::<Vec<_>>();
        let us = |x: f64| format!("{x:.0} µs");
        let _ = writeln!(
            s,
            "| proxy CPU per handshake (and its request) | {} | {} | {} | — |",
            over_runs(&c(&f.grip_handshakes), &us),
            nginx_cell(&c(&f.nginx_handshakes), &us),
            versus(&c(&f.grip_handshakes), &c(&f.nginx_handshakes))
                .map_or("–".into(), |(m, _, _)| format!("{m:.2}"))
        );
    }
    let _ = writeln!(s);
    for (name, sess) in [("grip-proxy", &f.grip_session), ("nginx", &f.nginx_session)] {
        if let Some(sess) = sess {
            let _ = writeln!(s, "Negotiated with {name}: {sess}.");
        }
    }
    let _ = writeln!(
        s,
        "Certificates: a CA and a leaf for 127.0.0.1/localhost (ECDSA P-256) made for the run; the clients (rustls, \
         ring, TLS 1.2 and 1.3, ALPN http/1.1, no session resumption) trust that CA. Pass-through and handshakes ran on \
         a grip-proxy instance of their own with nginx (TLS) beside it, their windows alternating, order rotated every run; \
         memory per held client on two fresh instances (plain clients on one, HTTPS on the other, both with the HTTPS \
         listener, warmed up alike)."
    );
    if let Some(main) = f.memory.as_ref().and_then(|m| m.main_plain_kib_per_held) {
        let _ = writeln!(
            s,
            "Figure 1 at the same N on the run's main instance (after its smaller rounds): {main:.2} KiB/held."
        );
    }
    if let Some(m) = &f.memory {
        let _ = writeln!(
            s,
            "Held rounds: plain N = {}: idle RSS {:.1} MiB, held {:.1} MiB, parked in {:.0} ms, fan-out {:.1} ms; HTTPS: idle RSS {:.1} MiB, held {:.1} MiB, parked in {:.0} ms, fan-out {:.1} ms (released {}/{}).",
            thousands(m.n as f64),
            m.plain_idle_rss_kib as f64 / 1024.0,
            m.plain.held_rss_kib as f64 / 1024.0,
            m.plain.park_ms,
            m.plain.fanout_ms,
            m.https_idle_rss_kib as f64 / 1024.0,
            m.https.held_rss_kib as f64 / 1024.0,
            m.https.park_ms,
            m.https.fanout_ms,
            m.https.released,
            m.n
        );
    }
    let mut rows: Vec<String> = Vec::new();
    for (name, p) in [
        ("grip-proxy", &f.grip_passthrough),
        ("nginx", &f.nginx_passthrough),
    ] {
        for p in p.iter() {
            rows.push(format!(
                "| pass-through | {name} | {} | {} | {} req/s (direct {}, ratio {:.2}) | {:.1} µs/request | {} / {} | – |",
                p.run + 1,
                p.order,
                thousands(p.proxied_rps),
                thousands(p.direct_rps),
                p.ratio,
                p.cpu_us_per_request,
                p.proxied_non200,
                p.proxied_errors
            ));
        }
    }
    for (name, h) in [
        ("grip-proxy", &f.grip_handshakes),
        ("nginx", &f.nginx_handshakes),
    ] {
        for h in h.iter() {
            rows.push(format!(
                "| handshakes | {name} | {} | {} | {}/s | {:.0} µs/handshake | {} / {} | {:.2} |",
                h.run + 1,
                h.order,
                thousands(h.per_s),
                h.cpu_us_per_handshake,
                h.non200,
                h.errors,
                h.workers_cores
            ));
        }
    }
    if !rows.is_empty() {
        let _ = writeln!(
            s,
            "\n| figure | proxy | run | place in run | rate | proxy CPU | non-200 / errors | client cores |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for r in rows {
            let _ = writeln!(s, "{r}");
        }
        let _ = writeln!(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grip_over_nginx_pairs_runs() {
        let (m, at_least, n) = versus(&[110.0, 90.0, 100.0], &[100.0, 100.0, 100.0]).unwrap();
        assert!((m - 1.0).abs() < 1e-9);
        assert_eq!((at_least, n), (2, 3));
        assert!(versus(&[1.0], &[]).is_none());
    }
}
