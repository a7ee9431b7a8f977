//! Figure 10: conditional holds, for an origin that speaks no GRIP. N clients poll one resource
//! with `If-None-Match` (the bench origin answers `304` while their ETag is current): *direct*,
//! each straight to the origin every interval, as clients of a plain REST API do; *through
//! conditional holds*, each through a grip-proxy instance of its own whose route has
//! `[routes.conditional]` with `recheck_secs` = that interval, asking again as soon as it has an
//! answer. In each mode the origin's requests are counted over a steady window with no change;
//! then the value changes a few times, each timed from just before the change was written to the
//! origin until every client had the new value.

use super::{counted_since, failed_connects, fields, split, Ctx};
use crate::children::{broadcast, Result};
use crate::http::{post_request, simple_request};
use crate::plan::{ConditionalFigures, EtagPolling, Ratios, RecheckCounts};
use crate::run::Options;
use crate::stats::Percentiles;
use crate::sys::now_ns;
use crate::target::{Kind, Target};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// The resource every client polls (one group of equal requests for the proxy).
const PATH: &str = "/etag/value";

/// How the clients poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Straight to the origin, every interval.
    Direct,
    /// Through the proxy's conditional holds, again as soon as answered.
    Held,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Held => "conditional holds",
        }
    }
}

/// The pause before change `k` (after every client had the one before, and, held, is held
/// again): a tenth of the interval
/// and a fraction of it that differs from change to change (the golden-ratio sequence), so that
/// changes land at different points of the proxy's re-check interval, which restarts when the
/// first client asking again after a change is held.
fn gap_before_change(k: usize, interval: Duration) -> Duration {
    interval.mul_f64(0.1 + (0.5 + k as f64 * 0.618_033_988_749_895).fract())
}

/// The config of the conditional-holds instance: one route to the origin, held on `{path}`.
fn conditional_toml(origin: SocketAddr, interval: Duration) -> String {
    format!(
        "[[routes]]\norigin = \"http://{origin}\"\n[routes.conditional]\nchannel = \"{{path}}\"\ntimeout_secs = 55\nrecheck_secs = {:.3}\n",
        interval.as_secs_f64()
    )
}

impl Ctx {
    /// Measure figure 10: direct polling, then polling through conditional holds on an instance
    /// of its own.
    pub(crate) async fn conditional_figures(
        &mut self,
        opts: &Options,
    ) -> Result<ConditionalFigures> {
        let mut f = ConditionalFigures::default();
        if opts.target != Kind::GripProxy {
            f.skipped = Some("conditional holds are grip-proxy's".into());
            return Ok(f);
        }
        let direct = self.etag_polling(Mode::Direct).await?;
        let held = self.conditional_on_instance(opts).await?;
        if direct.origin_rps > 0.0 {
            f.ratio_origin_rps = Some(held.origin_rps / direct.origin_rps);
        }
        if direct.delivered > 0 && held.delivered > 0 {
            f.ratio_latency = Some(Ratios::of(&held.latency, &direct.latency));
        }
        f.direct = Some(direct);
        f.held = Some(held);
        Ok(f)
    }

    /// Start the conditional-holds instance, measure on it, stop it (and restore `self.target`)
    /// whatever happened.
    async fn conditional_on_instance(&mut self, opts: &Options) -> Result<EtagPolling> {
        let interval = Duration::from_millis(self.plan.conditional_interval_ms);
        let log = opts.out.join("grip-proxy-conditional.log");
        let toml = conditional_toml(self.origin, interval);
        let mut instance =
            Target::start_instance_with(&opts.proxy_bin, self.origin.port(), log, &toml).await?;
        std::mem::swap(&mut self.target, &mut instance);
        let r = self.etag_polling(Mode::Held).await;
        if r.is_err() {
            let _ = self.stop_etag_clients().await;
        }
        std::mem::swap(&mut self.target, &mut instance);
        instance.stop();
        r
    }

    /// One mode: start the clients, let them settle, count the origin's requests over the
    /// window, time the changes, stop the clients.
    async fn etag_polling(&mut self, mode: Mode) -> Result<EtagPolling> {
        let n = self.plan.conditional_clients;
        let interval = Duration::from_millis(self.plan.conditional_interval_ms);
        let window = Duration::from_millis(self.plan.conditional_window_ms);
        let mut m = EtagPolling {
            mode: mode.name().into(),
            clients: n,
            interval_s: interval.as_secs_f64(),
            window_s: window.as_secs_f64(),
            changes: self.plan.conditional_changes,
            ..EtagPolling::default()
        };
        let version = self.origin_stats().await?["etag_version"]
            .as_u64()
            .ok_or("origin /stats has no etag_version")?;
        m.connect_failed = self.start_etag_clients(mode, version).await?;
        let connected = n - m.connect_failed;
        if connected == 0 {
            let _ = self.stop_etag_clients().await;
            return Err(format!("{}: no client could connect", mode.name()));
        }
        self.settle(mode, connected, interval).await;

        let before = self.origin_stats().await?;
        let cpu0 = self.proxy_cpu_ns();
        tokio::time::sleep(window).await;
        let cpu1 = self.proxy_cpu_ns();
        let after = self.origin_stats().await?;
        let diff = |key: &str| counted_since(&before, &after, key);
        m.origin_requests = diff("etag");
        m.origin_not_modified = diff("etag_304");
        m.origin_rps = m.origin_requests as f64 / window.as_secs_f64();

        let mut times = self.time_changes(mode, &mut m, connected, interval).await?;
        m.delivered = times.len();
        m.missed = (connected * m.changes).saturating_sub(m.delivered);
        m.mean_ms = times.iter().sum::<u64>() as f64 / times.len().max(1) as f64 / 1e6;
        m.latency = Percentiles::from_ns(&mut times);
        self.stop_etag_clients_into(&mut m).await?;
        if mode == Mode::Held {
            let mut p = self.recheck_counts().await;
            p.window_cpu_ms = cpu1.saturating_sub(cpu0) as f64 / 1e6;
            m.proxy = Some(p);
        }
        self.report_etag_polling(&m);
        Ok(m)
    }

    /// Start `conditional_clients` clients over the workers, polling the origin (direct) or
    /// through the proxy (held) with the ETag of `version`; the clients that could not connect.
    async fn start_etag_clients(&mut self, mode: Mode, version: u64) -> Result<usize> {
        let (to, interval_ms) = match mode {
            Mode::Direct => (self.origin, self.plan.conditional_interval_ms),
            Mode::Held => (self.target.listen, 0),
        };
        let max_ms = 300_000;
        let cmds: Vec<String> = split(self.plan.conditional_clients, self.workers.len())
            .iter()
            .map(|(c, off)| format!("etag {to} {c} {PATH} {version} {interval_ms} {off} {max_ms}"))
            .collect();
        let replies = broadcast(&mut self.workers, &cmds, Duration::from_secs(150)).await?;
        let failed = failed_connects(&replies)?;
        Ok(failed)
    }

    /// Wait until the clients poll steadily: direct, one interval and the warm-up; held, until
    /// the proxy holds every client (bounded), then one re-check interval and a little more, so
    /// that the first requests (each forwarded to the origin once) are out of the window.
    async fn settle(&mut self, mode: Mode, connected: usize, interval: Duration) {
        if mode == Mode::Direct {
            tokio::time::sleep(interval + Duration::from_millis(self.plan.warmup_window_ms)).await;
            return;
        }
        self.wait_all_held(connected, "before the window").await;
        tokio::time::sleep(interval + Duration::from_millis(300)).await;
    }

    /// Wait (bounded) until the proxy holds `connected` clients (`grip_proxy_held_clients`); a
    /// note if it did not.
    async fn wait_all_held(&mut self, connected: usize, when: &str) {
        let limit =
            Instant::now() + Duration::from_secs(30) + Duration::from_millis(connected as u64 * 2);
        let mut held = 0;
        while Instant::now() < limit {
            held = self.metric("grip_proxy_held_clients").await.unwrap_or(0);
            if held >= connected as u64 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.note(format!(
            "conditional holds: only {held} of {connected} clients were held {when}; measured anyway"
        ));
    }

    /// Make the changes one after the other, each after its gap: the delivery times (ns after
    /// the change) of every client that had it within the bound.
    async fn time_changes(
        &mut self,
        mode: Mode,
        m: &mut EtagPolling,
        connected: usize,
        interval: Duration,
    ) -> Result<Vec<u64>> {
        let mut times = Vec::with_capacity(connected * m.changes);
        let wait_ms = 15_000 + 2 * connected as u64 + interval.as_millis() as u64;
        let start = self.origin_stats().await?["etag"].as_u64().unwrap_or(0);
        let t_start = Instant::now();
        for k in 0..m.changes {
            if mode == Mode::Held && k > 0 {
                // Every client asked again after the last change, and is held again.
                self.wait_all_held(connected, &format!("before change {}", k + 1))
                    .await;
            }
            tokio::time::sleep(gap_before_change(k, interval)).await;
            let (t0, version) = self.change_value().await?;
            let cmds = vec![format!("etag_wait {version} {wait_ms}"); self.workers.len()];
            let limit = Duration::from_millis(wait_ms + 30_000);
            let replies = broadcast(&mut self.workers, &cmds, limit).await?;
            let mut pending = 0;
            let mut these = Vec::with_capacity(connected);
            for r in &replies {
                let f = fields(r, "etag_got")?;
                pending += f.get(1).and_then(|s| s.parse::<usize>().ok()).unwrap_or(0);
                if let Some(list) = f.get(2).filter(|l| *l != "-") {
                    these.extend(
                        list.split(',')
                            .filter_map(|t| t.parse::<u64>().ok())
                            .map(|t| t.saturating_sub(t0)),
                    );
                }
            }
            let ms = |t: Option<&u64>| t.map_or(0.0, |&t| t as f64 / 1e6);
            m.change_first_ms.push(ms(these.iter().min()));
            m.change_last_ms.push(ms(these.iter().max()));
            times.append(&mut these);
            if pending > 0 {
                self.note(format!(
                    "{}: {pending} of {connected} clients did not have change {} within {wait_ms} ms",
                    m.mode,
                    k + 1
                ));
            }
        }
        // The last cycle ends one gap after the last change, as the others did.
        tokio::time::sleep(gap_before_change(m.changes, interval)).await;
        let end = self.origin_stats().await?["etag"].as_u64().unwrap_or(0);
        let changes = m.changes.max(1) as f64;
        m.origin_requests_per_change = end.saturating_sub(start) as f64 / changes;
        m.change_cycle_s = t_start.elapsed().as_secs_f64() / changes;
        Ok(times)
    }

    /// Change the value at the origin: the time just before the request was written, and the
    /// new version.
    async fn change_value(&self) -> Result<(u64, u64)> {
        let addr = self.origin.to_string();
        let req = post_request(&addr, "/etag-change", b"");
        let t0 = now_ns();
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(5), simple_request(&addr, &req))
                .await
                .map_err(|_| "origin /etag-change timed out".to_string())?
                .map_err(|e| format!("origin /etag-change: {e}"))?;
        if status != 200 {
            return Err(format!("origin /etag-change answered {status}"));
        }
        let version = body
            .trim()
            .parse()
            .map_err(|_| format!("origin /etag-change answered {body:?}"))?;
        Ok((t0, version))
    }

    /// Stop the clients, adding what they were answered to `m`.
    async fn stop_etag_clients_into(&mut self, m: &mut EtagPolling) -> Result<()> {
        let replies = self.stop_etag_clients().await?;
        for r in &replies {
            let f = fields(r, "etag_stopped")?;
            let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            m.answers_200 += num(0);
            m.answers_304 += num(1);
            m.answers_other += num(2);
            m.errors += num(3);
            m.reconnects += num(4);
        }
        if m.answers_other > 0 {
            self.note(format!(
                "{}: {} answers were neither 200 nor 304{}",
                m.mode,
                m.answers_other,
                super::example(&replies)
            ));
        }
        Ok(())
    }

    async fn stop_etag_clients(&mut self) -> Result<Vec<String>> {
        let cmds = vec!["etag_stop".to_string(); self.workers.len()];
        broadcast(&mut self.workers, &cmds, Duration::from_secs(60)).await
    }

    /// `grip_proxy_conditional_holds_total` of the current target (0: no answer).
    async fn conditional_holds(&self) -> u64 {
        self.metric("grip_proxy_conditional_holds_total")
            .await
            .unwrap_or(0)
    }

    /// The conditional-hold counters of the current target.
    async fn recheck_counts(&self) -> RecheckCounts {
        let rechecks = |result: &'static str| {
            let name = format!("grip_proxy_rechecks_total{{result=\"{result}\"}}");
            async move { self.metric(&name).await.unwrap_or(0) }
        };
        RecheckCounts {
            conditional_holds: self.conditional_holds().await,
            rechecks_unchanged: rechecks("unchanged").await,
            rechecks_shared: rechecks("shared").await,
            rechecks_refetched: rechecks("refetched").await,
            rechecks_failed: rechecks("failed").await,
            released_clients: self
                .metric("grip_proxy_recheck_released_clients_total")
                .await
                .unwrap_or(0),
            window_cpu_ms: 0.0,
        }
    }

    /// The mode's progress lines.
    fn report_etag_polling(&self, m: &EtagPolling) {
        let per_change: Vec<String> = m
            .change_first_ms
            .iter()
            .zip(&m.change_last_ms)
            .map(|(a, b)| format!("{a:.0}-{b:.0}"))
            .collect();
        eprintln!(
            "conditional ({}): {} clients ({} failed), origin {:.1} req/s over {:.1} s ({} 304); after {} changes: p50 {:.0} p90 {:.0} p99 {:.0} max {:.0} ms ({} of {} delivered), {:.0} origin requests per change",
            m.mode,
            m.clients,
            m.connect_failed,
            m.origin_rps,
            m.window_s,
            m.origin_not_modified,
            m.changes,
            m.latency.p50_ms,
            m.latency.p90_ms,
            m.latency.p99_ms,
            m.latency.max_ms,
            m.delivered,
            m.delivered + m.missed,
            m.origin_requests_per_change
        );
        eprintln!(
            "conditional ({}): first-last client per change (ms): {}",
            m.mode,
            per_change.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_varying_fractions_of_the_interval() {
        let i = Duration::from_secs(1);
        let mut gaps: Vec<f64> = (0..8)
            .map(|k| gap_before_change(k, i).as_secs_f64())
            .collect();
        assert!(gaps.iter().all(|g| (0.1..1.1).contains(g)));
        gaps.sort_by(f64::total_cmp);
        assert!(gaps.windows(2).all(|w| w[1] - w[0] > 0.05));
    }

    #[test]
    fn the_instance_routes_to_the_origin_with_rechecks() {
        let t = conditional_toml(([127, 0, 0, 1], 8080).into(), Duration::from_secs(1));
        assert!(t.starts_with("[[routes]]\norigin = \"http://127.0.0.1:8080\"\n"));
        assert!(t.contains("[routes.conditional]\nchannel = \"{path}\"\n"));
        assert!(t.contains("recheck_secs = 1.000\n"));
    }
}
