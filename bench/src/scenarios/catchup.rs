//! Figure 9: catch-up. N streams come back at once, each after an id `CATCHUP_BEHIND` items
//! behind its channel's last id (an SSE client's `Last-Event-ID`), on a grip-proxy instance
//! started fresh for each variant: with `[history]` on, the proxy replays what they missed from
//! memory; with it off, it re-fetches each from the origin with `Grip-Last` (the origin answers
//! with the missed items). Timed from the first connect until every stream has read them all.

use super::{counted_since, failed_connects, fields, split, Ctx};
use crate::children::{broadcast, Result};
use crate::http::PUBLISHED_BODY;
use crate::origin::CATCHUP_BEHIND;
use crate::plan::{CatchUp, CatchUpFigures};
use crate::run::Options;
use crate::stats::Percentiles;
use crate::sys::now_ns;
use crate::target::{Kind, Target};
use std::time::Duration;

/// The id the streams come back after: items 1 to `AFTER + CATCHUP_BEHIND` are published first.
const AFTER: u64 = 10;

/// Items kept per channel with history on: more than the streams missed.
const HISTORY_ITEMS: usize = 100;

/// A publish body with one `http-stream` item with an id per channel, after the previous id.
fn numbered_body(channels: &[String], id: u64) -> Vec<u8> {
    let content = std::str::from_utf8(PUBLISHED_BODY).unwrap_or("hello\n");
    let items: Vec<serde_json::Value> = channels
        .iter()
        .map(|channel| {
            let mut item = serde_json::json!({
                "channel": channel,
                "id": id.to_string(),
                "formats": {"http-stream": {"content": content}}
            });
            if id > 1 {
                item["prev-id"] = serde_json::json!((id - 1).to_string());
            }
            item
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "items": items })).unwrap_or_default()
}

impl Ctx {
    /// Measure the catch-up figure: from the history, then from the origin (history off), each on
    /// an instance of its own.
    pub(crate) async fn catchup_figures(&mut self, opts: &Options) -> Result<CatchUpFigures> {
        let mut f = CatchUpFigures::default();
        if opts.target != Kind::GripProxy {
            f.skipped = Some("channel history is grip-proxy's".into());
            return Ok(f);
        }
        f.from_history = Some(self.catchup_on_instance(opts, HISTORY_ITEMS).await?);
        f.from_origin = Some(self.catchup_on_instance(opts, 0).await?);
        Ok(f)
    }

    /// Start a fresh instance with `history_items` (0: off), measure one round on it, stop it.
    /// The instance is stopped (and `self.target` restored) whatever happened.
    async fn catchup_on_instance(
        &mut self,
        opts: &Options,
        history_items: usize,
    ) -> Result<CatchUp> {
        let tag = if history_items > 0 {
            "history"
        } else {
            "origin"
        };
        let log = opts.out.join(format!("grip-proxy-catchup-{tag}.log"));
        let toml = format!("[history]\nitems = {history_items}\n");
        let mut instance =
            Target::start_instance_with(&opts.proxy_bin, self.origin.port(), log, &toml).await?;
        std::mem::swap(&mut self.target, &mut instance);
        let r = self.catchup_round(history_items).await;
        let _ = self.close_clients().await;
        std::mem::swap(&mut self.target, &mut instance);
        instance.stop();
        r
    }

    async fn catchup_round(&mut self, history_items: usize) -> Result<CatchUp> {
        self.warm_up_plain(self.target.listen).await?;
        let (n, nchan) = (self.plan.catchup_streams, self.plan.catchup_channels);
        let prefix = format!("cu{history_items}-");
        let channels: Vec<String> = (0..nchan).map(|k| format!("{prefix}{k}")).collect();
        let bodies: Vec<Vec<u8>> = (1..=AFTER + CATCHUP_BEHIND)
            .map(|id| numbered_body(&channels, id))
            .collect();
        super::remembered::post_all(self.target.control, &bodies).await?;
        self.wait_idle("the catch-up publishes").await;

        let before = self.origin_stats().await?;
        let cpu0 = self.proxy_cpu_ns();
        let t0 = now_ns();
        let max_ms = 180_000;
        let cmds: Vec<String> = split(n, self.workers.len())
            .iter()
            .map(|(c, off)| {
                format!(
                    "catchup {} {c} {prefix} {nchan} {off} {max_ms} catchup/{AFTER} {CATCHUP_BEHIND}",
                    self.target.listen
                )
            })
            .collect();
        let replies = broadcast(&mut self.workers, &cmds, Duration::from_secs(150)).await?;
        let failed = failed_connects(&replies)?;
        let collect_ms = 60_000 + n as u64 * 3;
        let cmds = vec![format!("collect {collect_ms}"); self.workers.len()];
        let replies = broadcast(
            &mut self.workers,
            &cmds,
            Duration::from_millis(collect_ms + 30_000),
        )
        .await?;
        let cpu1 = self.proxy_cpu_ns();
        let mut times: Vec<u64> = Vec::with_capacity(n);
        for r in &replies {
            let f = fields(r, "collected")?;
            if let Some(list) = f.get(5).filter(|l| *l != "-") {
                times.extend(
                    list.split(',')
                        .filter_map(|t| t.parse::<u64>().ok())
                        .map(|t| t.saturating_sub(t0)),
                );
            }
        }
        let after = self.origin_stats().await?;
        let diff = |key: &str| counted_since(&before, &after, key);
        let caught_up = times.len();
        let all_ms = times.iter().max().copied().unwrap_or(0) as f64 / 1e6;
        let round = CatchUp {
            history_items,
            streams: n,
            channels: nchan,
            behind: CATCHUP_BEHIND,
            caught_up,
            not_caught_up: n.saturating_sub(caught_up),
            all_ms,
            latency: Percentiles::from_ns(&mut times),
            origin_requests: diff("catchup"),
            origin_refetches: diff("catchup_last"),
            proxy_cpu_ms: cpu1.saturating_sub(cpu0) as f64 / 1e6,
        };
        if round.not_caught_up > 0 {
            self.note(format!(
                "catch-up ({}): {} of {n} streams did not catch up ({failed} could not connect)",
                if history_items > 0 {
                    "history"
                } else {
                    "origin"
                },
                round.not_caught_up
            ));
        }
        eprintln!(
            "catch-up from {}: {n} streams {CATCHUP_BEHIND} items behind on {nchan} channels: all caught up in {:.1} ms (p50 {:.1} p99 {:.1}), {} origin requests ({} Grip-Last re-fetches), proxy CPU {:.1} ms",
            if history_items > 0 { "history" } else { "the origin" },
            round.all_ms, round.latency.p50_ms, round.latency.p99_ms,
            round.origin_requests, round.origin_refetches, round.proxy_cpu_ms
        );
        Ok(round)
    }
}
