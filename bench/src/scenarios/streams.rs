//! The stream figures, measured like their long-poll counterparts on a grip-proxy instance
//! started fresh for them: memory per open stream and fan-out of one item to N streams on one
//! channel (`stream_round`), and chunks delivered per second to streams on many channels while
//! items are published back to back (`stream_sustained`).

use super::{example, fields, num, Ctx, Parked};
use crate::children::{broadcast, Result};
use crate::http::{post_request, stream_publish_body};
use crate::plan::{FanoutRound, StreamFigures, StreamSustained};
use crate::procfs::{process_cpu_ns, tree_cpu_ns};
use crate::run::Options;
use crate::sys::now_ns;
use crate::target::{Kind, Target};
use std::time::Duration;
use tokio::time::Instant;

/// Which stream figures to measure.
pub(crate) struct StreamPlan {
    /// Streams per round on one channel (ascending): memory, and the fan-out of one item.
    pub rounds: Vec<usize>,
    pub sustained: bool,
}

impl Ctx {
    /// Start a fresh grip-proxy instance, warm it up, measure the stream figures of `what` on it,
    /// and stop it. The instance is stopped (and `self.target` restored) whatever happened.
    pub(crate) async fn stream_figures(
        &mut self,
        opts: &Options,
        what: &StreamPlan,
    ) -> Result<StreamFigures> {
        let mut f = StreamFigures::default();
        if opts.target != Kind::GripProxy {
            f.skipped = Some("stream holds are measured against grip-proxy only".into());
            return Ok(f);
        }
        let log = opts.out.join("grip-proxy-streams.log");
        let mut instance =
            Target::start_instance(&opts.proxy_bin, self.origin.port(), log, None).await?;
        eprintln!(
            "stream instance up: listen {}, control {}, pid {}",
            instance.listen,
            instance.control,
            instance.pid()
        );
        std::mem::swap(&mut self.target, &mut instance);
        let r = self.stream_figures_on_target(what, &mut f).await;
        std::mem::swap(&mut self.target, &mut instance);
        instance.stop();
        r.map(|()| f)
    }

    async fn stream_figures_on_target(
        &mut self,
        what: &StreamPlan,
        f: &mut StreamFigures,
    ) -> Result<()> {
        // The same warm-up as the main instance's, with a stream round for the held round.
        let cmd = format!("load {} 10 500 /plain", self.target.listen);
        broadcast(&mut self.workers[..1], &[cmd], Duration::from_secs(30)).await?;
        self.stream_round(200, "swarm", 0).await?;
        self.wait_idle("the stream warm-up").await;
        f.idle_rss_kib = self.rss_kib();
        eprintln!(
            "stream instance idle RSS {:.1} MiB",
            f.idle_rss_kib as f64 / 1024.0
        );
        for &n in &what.rounds {
            let round = self.stream_round(n, "str", f.idle_rss_kib).await?;
            f.rounds.push(round);
        }
        if what.sustained {
            f.sustained = Some(self.stream_sustained().await?);
        }
        Ok(())
    }

    /// Wait until the `n` stream clients are settled: each has read its first piece (the stream
    /// is open), ended or failed; the proxy counts at least the open ones in
    /// `grip_proxy_streams_open`; and its CPU is idle. Returns the streams open.
    async fn wait_streams(&mut self, n: usize, limit: Duration) -> Result<u64> {
        let deadline = Instant::now() + limit;
        let open = loop {
            let [open, _, ended, failed] = self.hold_status().await?;
            if open + ended + failed >= n as u64 {
                break open;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "streams were not opened within {limit:?} ({open} open, {ended} ended, {failed} failed of {n})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match self.metric("grip_proxy_streams_open").await {
                None => break,
                Some(k) if k >= open => break,
                Some(k) if Instant::now() > until => {
                    self.note(format!(
                        "the proxy counted {k} streams open where {open} clients had their first piece"
                    ));
                    break;
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        self.wait_idle("opening streams").await;
        Ok(open)
    }

    /// Stream memory and fan-out: open `n` streams on one channel, read the proxy's RSS,
    /// publish one `http-stream` item, time every stream's chunk (as a long-poll fan-out round).
    pub(crate) async fn stream_round(
        &mut self,
        n: usize,
        tag: &str,
        idle_rss: u64,
    ) -> Result<FanoutRound> {
        let prefix = format!("{tag}{n}-");
        let channel = format!("{prefix}0");
        let started = Instant::now();
        let release_ms = 60_000 + n as u64 * 3;
        let failed = self
            .open_clients("stream", n, &prefix, 1, 240_000 + release_ms)
            .await?;
        let open = self
            .wait_streams(n, Duration::from_secs(60 + n as u64 / 200))
            .await?;
        if open + (failed as u64) < n as u64 {
            self.note(format!(
                "streams N={n}: only {open} streams open before the publish"
            ));
        }
        let parked = Parked {
            n,
            channel,
            connect_failed: failed,
            retried: 0,
            park_ms: started.elapsed().as_secs_f64() * 1e3,
            held_rss_kib: self.rss_kib(),
        };
        let body = stream_publish_body(std::slice::from_ref(&parked.channel));
        let control = self.target.control;
        let round = self.release_round(parked, idle_rss, control, &body).await?;
        if tag != "swarm" {
            eprintln!(
                "stream fan-out N={n}: opened in {:.0} ms, {:.2} KiB/stream, fan-out {:.1} ms (p50 {:.1} p99 {:.1}), proxy CPU {:.1} ms ({:.2} µs/stream)",
                round.park_ms, round.kib_per_held, round.fanout_ms, round.latency.p50_ms, round.latency.p99_ms,
                round.proxy_cpu_ms, round.proxy_cpu_ms * 1e3 / n.max(1) as f64
            );
        }
        Ok(round)
    }

    /// Sustained stream deliveries: `stream_sustained_streams` streams spread round-robin over
    /// `stream_sustained_channels` channels; one publisher connection posts one item per channel
    /// per request, each request as soon as the previous one is answered. After the warm-up,
    /// the published chunks the clients read within the window are counted.
    pub(crate) async fn stream_sustained(&mut self) -> Result<StreamSustained> {
        let n = self.plan.stream_sustained_streams;
        let nchan = self.plan.stream_sustained_channels;
        let warm = Duration::from_millis(self.plan.warmup_window_ms);
        let window = Duration::from_millis(self.plan.window_ms);
        let max_ms = 300_000 + (warm + window).as_millis() as u64;
        let failed = self
            .open_clients("stream_count", n, "ssus-", nchan, max_ms)
            .await?;
        let open = self
            .wait_streams(n, Duration::from_secs(60 + n as u64 / 200))
            .await?;
        if open + (failed as u64) < n as u64 {
            self.note(format!(
                "stream sustained: only {open} of {n} streams open before publishing"
            ));
        }

        let channels: Vec<String> = (0..nchan).map(|k| format!("ssus-{k}")).collect();
        let req = post_request(
            &self.target.control.to_string(),
            "/publish/",
            &stream_publish_body(&channels),
        );
        let start = Instant::now();
        let t_start = now_ns() + warm.as_nanos() as u64;
        let t_end = t_start + window.as_nanos() as u64;
        let cmds = vec![format!("stream_window {t_start} {t_end}"); self.workers.len()];
        broadcast(&mut self.workers, &cmds, Duration::from_secs(10)).await?;
        let stop_at = start + warm + window;
        let publisher = tokio::spawn(super::publish_batches(
            self.target.control,
            super::Batch::single(req),
            Duration::ZERO,
            stop_at,
            (start + warm, stop_at),
        ));
        tokio::time::sleep_until(start + warm).await;
        let cpu0 = self.cpu_now();
        tokio::time::sleep_until(stop_at).await;
        let cpu1 = self.cpu_now();
        let (batches, pub_failures, in_window) =
            publisher.await.map_err(|e| format!("publisher: {e}"))?;

        let cmds = vec!["stream_stop".to_string(); self.workers.len()];
        let replies = broadcast(&mut self.workers, &cmds, Duration::from_secs(60)).await?;
        let window_s = window.as_secs_f64();
        let cores = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e9 / window_s;
        let mut s = StreamSustained {
            streams: n,
            channels: nchan,
            window_s,
            publish_batches: batches,
            publish_failures: pub_failures,
            publish_batches_per_s: in_window as f64 / window_s,
            offered_per_s: (in_window * open) as f64 / window_s,
            proxy_cores: cores(cpu0[0], cpu1[0]),
            workers_cores: cores(cpu0[1], cpu1[1]),
            orchestrator_cores: cores(cpu0[2], cpu1[2]),
            ..Default::default()
        };
        for r in &replies {
            let f = fields(r, "streamed")?;
            s.deliveries += num(&f, 0);
            s.chunks_total += num(&f, 1);
            s.other_chunks += num(&f, 2);
            s.ended += num(&f, 3);
            s.connect_failed += num(&f, 4);
        }
        s.deliveries_per_s = s.deliveries as f64 / window_s;
        if pub_failures > 0 {
            self.note(format!(
                "stream sustained: {pub_failures} publish requests failed"
            ));
        }
        if s.ended > 0 || s.other_chunks > 0 {
            let example = example(&replies);
            self.note(format!(
                "stream sustained: {} streams ended early, {} unexpected chunks{example}",
                s.ended, s.other_chunks
            ));
        }
        eprintln!(
            "stream sustained: {:.0} deliveries/s to {} streams on {} channels ({:.0} publish requests/s offering {:.0} deliveries/s; CPU cores: proxy {:.2}, workers {:.2}, publisher {:.2})",
            s.deliveries_per_s, open, nchan, s.publish_batches_per_s, s.offered_per_s,
            s.proxy_cores, s.workers_cores, s.orchestrator_cores
        );
        self.wait_idle("the stream sustained test").await;
        Ok(s)
    }

    /// CPU time (ns) used so far by the proxy, the workers and this process (the publisher).
    fn cpu_now(&self) -> [u64; 3] {
        [
            self.proxy_cpu_ns(),
            self.workers.iter().map(|w| tree_cpu_ns(w.pid())).sum(),
            process_cpu_ns(std::process::id()),
        ]
    }
}
