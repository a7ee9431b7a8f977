//! The five measurements, run by the orchestrator against a started proxy, origin and workers
//! (the stream figures are in `streams`, memory per remembered channel in `remembered`, the
//! HTTPS figures in `https`, catch-up from channel history in `catchup`, conditional holds in
//! `conditional`).

mod catchup;
mod conditional;
mod https;
mod remembered;
mod streams;

pub(crate) use https::{HttpsPlan, Instances as HttpsInstances};
pub(crate) use streams::StreamPlan;

use crate::children::{broadcast, LineChild, Result};
use crate::http::{
    get_request, post_request, publish_body, read_full_text, simple_request, RespReader,
};
use crate::plan::{FanoutRound, Passthrough, Plan, PublishRun, Sustained};
use crate::procfs::{tree_cpu_ns, tree_rss_kib, wait_cpu_idle};
use crate::stats::Percentiles;
use crate::sys::now_ns;
use crate::target::{Kind, Target};
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Shared state of a run.
pub(crate) struct Ctx {
    pub target: Target,
    pub origin: SocketAddr,
    pub workers: Vec<LineChild>,
    pub plan: Plan,
    pub notes: Vec<String>,
    /// Whether the proxy answers `GET /channels/<name>` on its control port (None: unknown).
    channels_endpoint: Option<bool>,
    /// Held clients connect to the target's HTTPS listener (`tls:ADDR`) instead of its plain one.
    pub tls_clients: bool,
}

/// A proxy that pass-through windows go through: its listener, and the root of its process tree
/// (whose CPU time is read around each window).
#[derive(Debug, Clone)]
pub(crate) struct Forwarder {
    pub name: String,
    /// Where the workers' clients connect: its plain listener, or `tls:ADDR` (HTTPS).
    pub dest: String,
    pub pid: u32,
}

impl Forwarder {
    pub(crate) fn of(t: &Target) -> Self {
        Self {
            name: t.kind.name().to_string(),
            dest: t.listen.to_string(),
            pid: t.pid(),
        }
    }

    /// The target's HTTPS listener (None: it has none).
    pub(crate) fn https_of(t: &Target) -> Option<Self> {
        Some(Self {
            name: format!("{} HTTPS", t.kind.name()),
            dest: format!("tls:{}", t.tls_listen?),
            pid: t.pid(),
        })
    }
}

/// A round's clients, held and measured, before the publish.
struct Parked {
    n: usize,
    channel: String,
    connect_failed: usize,
    retried: u64,
    park_ms: f64,
    held_rss_kib: u64,
}

/// Split `n` clients over `w` workers: (count, offset) per worker.
fn split(n: usize, w: usize) -> Vec<(usize, usize)> {
    let mut off = 0;
    (0..w)
        .map(|i| {
            let c = n / w + usize::from(i < n % w);
            let r = (c, off);
            off += c;
            r
        })
        .collect()
}

/// Reply fields after the tag (a trailing ` | description` is left out; see `sample`).
fn fields(reply: &str, tag: &str) -> Result<Vec<String>> {
    let reply = reply.split(" | ").next().unwrap_or("");
    let mut it = reply.split_whitespace();
    if it.next() != Some(tag) {
        return Err(format!(
            "unexpected worker reply (wanted {tag}): {reply:.200}"
        ));
    }
    Ok(it.map(str::to_string).collect())
}

/// How much the origin's counter `key` grew between two of its `/stats` answers.
fn counted_since(before: &serde_json::Value, after: &serde_json::Value, key: &str) -> u64 {
    after[key]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(before[key].as_u64().unwrap_or(0))
}

/// The clients that could not connect, summed over the workers' `connected SENT FAILED` replies.
fn failed_connects(replies: &[String]) -> Result<usize> {
    let mut failed = 0;
    for r in replies {
        failed += fields(r, "connected")?
            .get(1)
            .and_then(|s| s.parse::<usize>().ok())
            .unwrap_or(0);
    }
    Ok(failed)
}

/// The ` | description` of an unexpected response at the end of a reply, if any.
fn sample(reply: &str) -> Option<String> {
    reply.split_once(" | ").map(|(_, s)| s.to_string())
}

/// ` (e.g. <the first sample any reply carries>)`, or nothing.
fn example(replies: &[String]) -> String {
    replies
        .iter()
        .find_map(|r| sample(r))
        .map(|s| format!(" (e.g. {s})"))
        .unwrap_or_default()
}

fn num(f: &[String], i: usize) -> u64 {
    f.get(i).and_then(|s| s.parse().ok()).unwrap_or(0)
}

impl Ctx {
    /// A gauge or counter without labels from the proxy's `GET /metrics` (None: no such line or
    /// no answer).
    pub(crate) async fn metric(&self, name: &str) -> Option<u64> {
        let addr = self.target.control.to_string();
        let req = get_request(&addr, "/metrics");
        let r = tokio::time::timeout(Duration::from_secs(5), simple_request(&addr, &req)).await;
        let Ok(Ok((200, body))) = r else {
            return None;
        };
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
    }

    pub(crate) fn new(
        target: Target,
        origin: SocketAddr,
        workers: Vec<LineChild>,
        plan: Plan,
    ) -> Self {
        Self {
            target,
            origin,
            workers,
            plan,
            notes: Vec::new(),
            channels_endpoint: None,
            tls_clients: false,
        }
    }

    pub(crate) fn note(&mut self, s: String) {
        eprintln!("note: {s}");
        self.notes.push(s);
    }

    /// CPU time used so far by the proxy's processes (every thread), in ns.
    pub(crate) fn proxy_cpu_ns(&self) -> u64 {
        crate::procfs::tree_cpu_ns(self.target.pid())
    }

    pub(crate) fn rss_kib(&self) -> u64 {
        tree_rss_kib(self.target.pid())
    }

    /// Hold requests the origin has answered so far.
    async fn origin_holds(&self) -> Result<u64> {
        Ok(self.origin_stats().await?["hold"].as_u64().unwrap_or(0))
    }

    /// The origin's request counters (`GET /stats`).
    pub(crate) async fn origin_stats(&self) -> Result<serde_json::Value> {
        let req = get_request(&self.origin.to_string(), "/stats");
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(5),
            simple_request(&self.origin.to_string(), &req),
        )
        .await
        .map_err(|_| "origin /stats timed out".to_string())?
        .map_err(|e| format!("origin /stats: {e}"))?;
        if status != 200 {
            return Err(format!("origin /stats answered {status}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("origin /stats: {e}"))
    }

    pub(crate) async fn wait_idle(&mut self, what: &str) {
        if !wait_cpu_idle(self.target.pid(), Duration::from_secs(15)).await {
            self.note(format!(
                "proxy still busy 15 s after {what}; measured anyway"
            ));
        }
    }

    /// Held count from the proxy's optional `GET /channels/<name>`, if it offers one.
    async fn channel_held(&mut self, channel: &str) -> Option<u64> {
        if self.channels_endpoint == Some(false) {
            return None;
        }
        let addr = self.target.control.to_string();
        let req = self.target.channel_info_request(channel)?;
        let r = tokio::time::timeout(Duration::from_secs(5), simple_request(&addr, &req)).await;
        let count = match r {
            Ok(Ok((200, body))) => serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| find_count(&v)),
            _ => None,
        };
        if self.channels_endpoint.is_none() {
            self.channels_endpoint = Some(count.is_some());
        }
        count
    }

    /// Wait until `expected_holds` hold requests reached the origin and the proxy's CPU is idle
    /// (used for the re-polling clients of the sustained test).
    async fn wait_origin_then_idle(&mut self, expected_holds: u64, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let h = self.origin_holds().await?;
            if h >= expected_holds {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "only {h} of {expected_holds} hold requests reached the origin within {limit:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.wait_idle("parking clients").await;
        Ok(())
    }

    /// Sum of the workers' `status` replies: (waiting, retries, done, failed).
    async fn hold_status(&mut self) -> Result<[u64; 4]> {
        let cmds = vec!["status".to_string(); self.workers.len()];
        let replies = broadcast(&mut self.workers, &cmds, Duration::from_secs(30)).await?;
        let mut t = [0u64; 4];
        for r in &replies {
            let f = fields(r, "status")?;
            for (i, x) in t.iter_mut().enumerate() {
                *x += num(&f, i);
            }
        }
        Ok(t)
    }

    /// Wait until the N hold clients are parked: every client has its request outstanding (no
    /// retry pending), the origin answered at least that many hold requests, the proxy reports
    /// them held (if it offers `/channels/<name>`), its CPU is idle, and nothing changes during a
    /// further settle second (Pushpin re-requests some held requests about 1 s later).
    /// Returns the number of clients parked and the error answers they retried.
    async fn wait_held(
        &mut self,
        n: usize,
        h0: u64,
        channel: &str,
        limit: Duration,
    ) -> Result<(u64, u64)> {
        let deadline = Instant::now() + limit;
        let mut origin_deadline: Option<Instant> = None;
        loop {
            if Instant::now() > deadline {
                let [waiting, retries, done, failed] = self.hold_status().await?;
                return Err(format!(
                    "held clients did not settle within {limit:?} ({waiting} waiting, {retries} retried, {done} finished, {failed} failed of {n})"
                ));
            }
            let [waiting, retries, done, failed] = self.hold_status().await?;
            if waiting + done + failed < n as u64 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue; // some clients are between a retry and its re-send
            }
            // Every outstanding request has reached the origin once the proxy forwarded it
            // (error answers may come from the proxy itself, so retries are not counted).
            let expected = h0 + waiting;
            let h = self.origin_holds().await?;
            // Nchan holds its subscribers itself: nothing reaches the origin.
            if h < expected && self.target.kind.is_grip() {
                // Waiting clients whose request has not reached the origin yet (or a proxy that
                // merges identical requests: then give up on this check after 5 s).
                let od =
                    *origin_deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(5));
                if Instant::now() < od {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                self.note(format!(
                    "origin saw {h} of {expected} hold requests expected on {channel}"
                ));
            }
            let until = Instant::now() + Duration::from_secs(30);
            while let Some(held) = self.channel_held(channel).await {
                if held >= waiting || Instant::now() > until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.wait_idle("parking clients").await;
            let h_before = self.origin_holds().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.wait_idle("parking clients").await;
            let [waiting2, retries2, _, _] = self.hold_status().await?;
            let h_after = self.origin_holds().await?;
            if waiting2 == waiting && retries2 == retries && h_after == h_before {
                return Ok((waiting, retries));
            }
        }
    }

    /// Publish `body` (for Nchan: the published body to `channel`) on the control port
    /// `control`; returns (time sent, time acknowledged).
    async fn publish(&self, control: SocketAddr, channel: &str, body: &[u8]) -> Result<(u64, u64)> {
        let mut s = TcpStream::connect(control)
            .await
            .map_err(|e| format!("connect to control port: {e}"))?;
        let _ = s.set_nodelay(true);
        let req = self.target.publish_request(control, channel, body);
        let t0 = now_ns();
        s.write_all(&req)
            .await
            .map_err(|e| format!("send publish: {e}"))?;
        let (status, body) = tokio::time::timeout(Duration::from_secs(30), read_full_text(&mut s))
            .await
            .map_err(|_| "publish not answered within 30 s".to_string())?
            .map_err(|e| format!("publish: {e}"))?;
        let t1 = now_ns();
        if !self.target.publish_accepted(status) {
            return Err(format!("publish answered {status}: {body:.200}"));
        }
        Ok((t0, t1))
    }

    /// Hold `n` clients on `nchan` channels named `prefix{i}`; returns clients that failed to connect.
    async fn open_clients(
        &mut self,
        cmd: &str,
        n: usize,
        prefix: &str,
        nchan: usize,
        max_ms: u64,
    ) -> Result<usize> {
        let parts = split(n, self.workers.len());
        let addr = match (self.tls_clients, self.target.tls_listen) {
            (true, Some(a)) => format!("tls:{a}"),
            (true, None) => return Err("the proxy has no HTTPS listener".into()),
            (false, _) => self.target.listen.to_string(),
        };
        // Nchan's subscribers are on `/sub/<channel>` instead of the origin's `/hold/`.
        let route = match (self.target.hold_route(), cmd) {
            (Some(r), "hold" | "repoll") => format!(" {r}"),
            _ => String::new(),
        };
        let cmds: Vec<String> = parts
            .iter()
            .map(|(c, off)| format!("{cmd} {addr} {c} {prefix} {nchan} {off} {max_ms}{route}"))
            .collect();
        let replies = broadcast(&mut self.workers, &cmds, Duration::from_secs(150)).await?;
        let mut failed = 0;
        for r in replies {
            let f = fields(&r, "connected")?;
            failed += num(&f, 1) as usize;
        }
        if failed * 100 > n {
            return Err(format!(
                "{failed} of {n} clients could not connect/send to the proxy"
            ));
        }
        if failed > 0 {
            self.note(format!(
                "{failed} of {n} clients could not connect ({cmd} {prefix})"
            ));
        }
        Ok(failed)
    }

    async fn close_clients(&mut self) -> Result<()> {
        let cmds = vec!["close".to_string(); self.workers.len()];
        broadcast(&mut self.workers, &cmds, Duration::from_secs(60)).await?;
        Ok(())
    }

    /// 0.5 s of `GET /plain` on 10 connections to `addr` (a proxy's warm-up of its forwarding;
    /// `tls:ADDR` for its HTTPS listener).
    pub(crate) async fn warm_up_plain(&mut self, addr: impl std::fmt::Display) -> Result<()> {
        let cmd = format!("load {addr} 10 500 /plain");
        broadcast(&mut self.workers[..1], &[cmd], Duration::from_secs(30)).await?;
        Ok(())
    }

    /// Warm the proxy up (pass-through requests and one small held round).
    pub(crate) async fn warm_up(&mut self) -> Result<()> {
        self.warm_up_plain(self.target.listen).await?;
        if self.target.kind != Kind::Nginx {
            self.fanout_round(200, "warm", 0).await?;
        }
        Ok(())
    }

    /// Figures 1 and 2: hold N clients on one channel, measure RSS, publish once, time delivery.
    pub(crate) async fn fanout_round(
        &mut self,
        n: usize,
        tag: &str,
        idle_rss: u64,
    ) -> Result<FanoutRound> {
        let control = self.target.control;
        self.fanout_round_via(n, tag, idle_rss, control).await
    }

    /// A fan-out round whose clients are held on `self.target` and whose publish is sent to the
    /// control port `publish_to` (another instance's for the cross-instance round).
    pub(crate) async fn fanout_round_via(
        &mut self,
        n: usize,
        tag: &str,
        idle_rss: u64,
        publish_to: SocketAddr,
    ) -> Result<FanoutRound> {
        let prefix = format!("{tag}{n}-");
        let channel = format!("{prefix}0");
        let h0 = self.origin_holds().await?;
        let started = Instant::now();
        let release_ms = 60_000 + n as u64 * 3;
        let failed = self
            .open_clients("hold", n, &prefix, 1, 240_000 + release_ms)
            .await?;
        let (held, retried) = self
            .wait_held(n, h0, &channel, Duration::from_secs(60 + n as u64 / 200))
            .await?;
        if held + (failed as u64) < n as u64 {
            self.note(format!(
                "N={n}: only {held} clients parked before the publish"
            ));
        }
        let parked = Parked {
            n,
            channel,
            connect_failed: failed,
            retried,
            park_ms: started.elapsed().as_secs_f64() * 1e3,
            held_rss_kib: self.rss_kib(),
        };
        let body = publish_body(std::slice::from_ref(&parked.channel));
        let round = self
            .release_round(parked, idle_rss, publish_to, &body)
            .await?;
        if tag != "warm" {
            let label = if tag == "fan" {
                String::new()
            } else {
                format!(" ({tag})")
            };
            eprintln!(
                "fan-out{label} N={n}: parked in {:.0} ms, {:.2} KiB/held, fan-out {:.1} ms (p50 {:.1} p99 {:.1}), proxy CPU {:.1} ms ({:.2} µs/client)",
                round.park_ms, round.kib_per_held, round.fanout_ms, round.latency.p50_ms, round.latency.p99_ms,
                round.proxy_cpu_ms, round.proxy_cpu_ms * 1e3 / n.max(1) as f64
            );
        }
        Ok(round)
    }

    /// The rest of a fan-out round once its clients are parked (and RSS read): publish `body`
    /// to the control port `publish_to`, time every client's answer, close the clients.
    async fn release_round(
        &mut self,
        parked: Parked,
        idle_rss: u64,
        publish_to: SocketAddr,
        body: &[u8],
    ) -> Result<FanoutRound> {
        let Parked {
            n,
            channel,
            connect_failed: failed,
            retried,
            park_ms,
            held_rss_kib,
        } = parked;
        let release_ms = 60_000 + n as u64 * 3;
        let cmds = vec!["arm".to_string(); self.workers.len()];
        broadcast(&mut self.workers, &cmds, Duration::from_secs(10)).await?;
        let cpu0 = self.proxy_cpu_ns();
        let (t0, t_ack) = self.publish(publish_to, &channel, body).await?;
        let cmds = vec![format!("collect {release_ms}"); self.workers.len()];
        let replies = broadcast(
            &mut self.workers,
            &cmds,
            Duration::from_millis(release_ms + 30_000),
        )
        .await?;
        // The proxy's own CPU time for the publish and the release of every client: less noisy than the wall
        // time on a shared machine, and what a release costs the proxy whatever the clients cost.
        let proxy_cpu_ms = self.proxy_cpu_ns().saturating_sub(cpu0) as f64 / 1e6;
        let (mut released, mut timeouts, mut other, mut errors, mut pending) = (0, 0, 0, 0, 0);
        let mut lat: Vec<u64> = Vec::with_capacity(n);
        for r in &replies {
            let f = fields(r, "collected")?;
            released += num(&f, 0) as usize;
            timeouts += num(&f, 1) as usize;
            other += num(&f, 2) as usize;
            errors += num(&f, 3) as usize;
            pending += num(&f, 4) as usize;
            if let Some(ts) = f.get(5).filter(|s| *s != "-") {
                lat.extend(
                    ts.split(',')
                        .filter_map(|t| t.parse::<u64>().ok())
                        .map(|t| t.saturating_sub(t0)),
                );
            }
        }
        if pending > 0 {
            return Err(format!(
                "{pending} of {n} clients on {channel} were not released within {release_ms} ms of the publish"
            ));
        }
        if released == 0 {
            return Err(format!(
                "no client on {channel} received the published body ({timeouts} timeout bodies, {other} other responses, {errors} errors)"
            ));
        }
        if released + failed < n {
            let example = example(&replies);
            self.note(format!(
                "N={n}: {released} released with the published body, {timeouts} timeout bodies, {other} other responses{example}, {errors} errors"
            ));
        }
        let fanout_ms = lat.iter().max().copied().unwrap_or(0) as f64 / 1e6;
        let latency = Percentiles::from_ns(&mut lat);
        self.close_clients().await?;
        self.wait_idle("releasing clients").await;
        let rss_after = self.rss_kib();
        let round = FanoutRound {
            n,
            connect_failed: failed,
            retried_before_publish: retried,
            park_ms,
            held_rss_kib,
            kib_per_held: held_rss_kib.saturating_sub(idle_rss) as f64 / n.max(1) as f64,
            publish_ack_ms: t_ack.saturating_sub(t0) as f64 / 1e6,
            fanout_ms,
            latency,
            released,
            timeout_bodies: timeouts,
            other_responses: other,
            errors,
            rss_after_release_kib: rss_after,
            proxy_cpu_ms,
        };
        Ok(round)
    }

    /// Figure 3: sustained deliveries per second.
    ///
    /// Design: `sustained_clients` clients (10,000) spread round-robin over
    /// `sustained_channels` channels (100, so 100 clients per channel). Every client long-polls
    /// `/hold/sus-<k>` and, as soon as it has read a response, sends the next request on the
    /// same keep-alive connection (reconnecting if the proxy closed it; after an error answer it
    /// waits 20 ms), so every re-poll goes through the proxy to the origin and parks again.
    /// A publisher sends one batch every `sustained_publish_interval_ms` (20 ms; 5 ms with
    /// `--short`'s 1,000 clients) carrying one item per channel (100 items), on one keep-alive
    /// control connection; a batch answered later than the interval delays the next one (no
    /// backlog). That offers up to 50 deliveries per client per second (500,000/s; 200,000/s
    /// in `--short`), more than a proxy on this machine can take, so the count
    /// measures how fast the proxy delivers and re-parks. After a warm-up, responses carrying
    /// the published body whose read time falls in the fixed window are counted and divided by
    /// the window length.
    pub(crate) async fn sustained(&mut self) -> Result<Sustained> {
        let n = self.plan.sustained_clients;
        let nchan = self.plan.sustained_channels;
        let warm = Duration::from_millis(self.plan.warmup_window_ms);
        let window = Duration::from_millis(self.plan.window_ms);
        let h0 = self.origin_holds().await?;
        let max_ms = 300_000 + (warm + window).as_millis() as u64;
        let failed = self
            .open_clients("repoll", n, "sus-", nchan, max_ms)
            .await?;
        let channels: Vec<String> = (0..nchan).map(|k| format!("sus-{k}")).collect();
        let limit = Duration::from_secs(60 + n as u64 / 200);
        let batch = if self.target.kind.is_grip() {
            self.wait_origin_then_idle(h0 + (n - failed) as u64, limit)
                .await?;
            Batch::single(post_request(
                &self.target.control.to_string(),
                "/publish/",
                &publish_body(&channels),
            ))
        } else {
            // Nchan: no origin and no reliable subscriber count (its channel info undercounts
            // subscribers held by the other worker), so its CPU going idle after every first
            // request was sent marks them parked; the warm-up before the window absorbs
            // stragglers. One pipelined `POST /pub/<channel>` per channel.
            self.wait_idle("parking clients").await;
            let control = self.target.control;
            Batch {
                req: channels
                    .iter()
                    .flat_map(|c| self.target.publish_request(control, c, &[]))
                    .collect(),
                answers: channels.len(),
                any_2xx: true,
            }
        };
        let start = Instant::now();
        let t_start = now_ns() + warm.as_nanos() as u64;
        let t_end = t_start + window.as_nanos() as u64;
        let stop_at = start + warm + window;
        let interval = Duration::from_millis(self.plan.sustained_publish_interval_ms);
        let publisher = tokio::spawn(publish_batches(
            self.target.control,
            batch,
            interval,
            stop_at,
            (start + warm, stop_at),
        ));
        tokio::time::sleep_until(start + warm).await;
        let holds_start = self.origin_holds().await?;
        tokio::time::sleep_until(stop_at).await;
        let holds_end = self.origin_holds().await?;
        let (batches, pub_failures, _) = publisher.await.map_err(|e| format!("publisher: {e}"))?;

        let cmds = vec![format!("repoll_stop {t_start} {t_end}"); self.workers.len()];
        let replies = broadcast(&mut self.workers, &cmds, Duration::from_secs(60)).await?;
        let mut s = Sustained {
            clients: n,
            channels: nchan,
            window_s: window.as_secs_f64(),
            publish_batches: batches,
            publish_failures: pub_failures,
            ..Default::default()
        };
        for r in &replies {
            let f = fields(r, "repolled")?;
            s.deliveries += num(&f, 0);
            s.other_responses += num(&f, 2);
            s.errors += num(&f, 3);
            s.reconnects += num(&f, 4);
        }
        s.deliveries_per_s = s.deliveries as f64 / s.window_s;
        s.origin_repolls_per_s = holds_end.saturating_sub(holds_start) as f64 / s.window_s;
        if pub_failures > 0 {
            self.note(format!("sustained: {pub_failures} publish batches failed"));
        }
        if s.errors > 0 || s.other_responses > 0 {
            let example = example(&replies);
            self.note(format!(
                "sustained: {} client errors, {} non-published responses{example}, {} reconnects",
                s.errors, s.other_responses, s.reconnects
            ));
        }
        if self.target.kind.is_grip() {
            eprintln!(
                "sustained: {:.0} deliveries/s ({:.0} re-polls/s at the origin)",
                s.deliveries_per_s, s.origin_repolls_per_s
            );
        } else {
            eprintln!(
                "sustained: {:.0} deliveries/s (re-polls stay in the proxy)",
                s.deliveries_per_s
            );
        }
        self.wait_idle("the sustained test").await;
        Ok(s)
    }

    /// Figure 4: requests/s through the proxy ÷ requests/s straight to the origin, and the
    /// proxy's CPU time per forwarded request.
    pub(crate) async fn passthrough(&mut self) -> Result<Passthrough> {
        let me = Forwarder::of(&self.target);
        let mut runs = self.passthrough_runs(&[me], 1).await?;
        runs.pop()
            .and_then(|mut r| r.pop())
            .ok_or_else(|| "no pass-through window was measured".to_string())
    }

    /// Pass-through in `runs` runs: each a window straight to the origin, then one window through
    /// each of `proxies`, whose order is rotated by one from run to run (so that on a noisy
    /// machine no proxy always comes right after the direct window). Returns, per proxy, one
    /// [`Passthrough`] per run, its ratio taken against that run's direct window, with the CPU
    /// time its process tree used over its window per request forwarded.
    pub(crate) async fn passthrough_runs(
        &mut self,
        proxies: &[Forwarder],
        runs: usize,
    ) -> Result<Vec<Vec<Passthrough>>> {
        let conns = self.plan.passthrough_conns;
        let window_s = self.plan.window_ms as f64 / 1e3;
        let mut out = vec![Vec::with_capacity(runs); proxies.len()];
        for run in 0..runs {
            let direct = self.load_plain(self.origin, conns).await?;
            let mut line = format!(
                "pass-through{}: {:.0} req/s direct",
                if runs > 1 {
                    format!(" run {}/{runs}", run + 1)
                } else {
                    String::new()
                },
                direct[0] as f64 / window_s
            );
            for k in 0..proxies.len() {
                let i = (k + run) % proxies.len();
                let p = &proxies[i];
                let cpu0 = tree_cpu_ns(p.pid);
                let proxied = self.load_plain(&p.dest, conns).await?;
                let cpu_ns = tree_cpu_ns(p.pid).saturating_sub(cpu0);
                if proxied[0] == 0 {
                    return Err(format!(
                        "no pass-through request succeeded through {} ({})",
                        p.name, p.dest
                    ));
                }
                let forwarded = proxied[0] + proxied[1];
                let pt = Passthrough {
                    conns,
                    window_s,
                    direct_rps: direct[0] as f64 / window_s,
                    proxied_rps: proxied[0] as f64 / window_s,
                    ratio: proxied[0] as f64 / direct[0].max(1) as f64,
                    direct_errors: direct[2],
                    proxied_errors: proxied[2],
                    proxied_non200: proxied[1],
                    proxied_reconnects: proxied[3],
                    proxy_cpu_ms: cpu_ns as f64 / 1e6,
                    cpu_us_per_request: cpu_ns as f64 / 1e3 / forwarded.max(1) as f64,
                    run,
                    order: k + 1,
                };
                let _ = write!(
                    line,
                    ", {} {:.0} req/s proxied (ratio {:.2}, {:.1} µs CPU/request)",
                    p.name, pt.proxied_rps, pt.ratio, pt.cpu_us_per_request
                );
                out[i].push(pt);
                if !wait_cpu_idle(p.pid, Duration::from_secs(15)).await {
                    self.note(format!(
                        "{} still busy 15 s after its pass-through window; measured anyway",
                        p.name
                    ));
                }
            }
            eprintln!("{line}");
        }
        Ok(out)
    }

    /// Runs one timed window on up to two workers, `conns` connections split between them; `command` makes a
    /// worker's command from its share of the connections and the window in ms.
    async fn on_workers(
        &mut self,
        conns: usize,
        command: impl Fn(usize, u64) -> String,
    ) -> Result<Vec<String>> {
        let w = self.workers.len().min(2);
        let window = self.plan.window_ms;
        let cmds: Vec<String> = split(conns, w)
            .iter()
            .map(|(c, _)| command(*c, window))
            .collect();
        broadcast(
            &mut self.workers[..w],
            &cmds,
            Duration::from_millis(window + 30_000),
        )
        .await
    }

    async fn load_plain(&mut self, addr: impl std::fmt::Display, conns: usize) -> Result<[u64; 4]> {
        // `load ADDR CONNS DURATION PATH` -> ok non200 errors reconnects
        let replies = self
            .on_workers(conns, |c, window| {
                format!("load {addr} {c} {window} /plain")
            })
            .await?;
        let mut tot = [0u64; 4];
        for r in &replies {
            let f = fields(r, "loaded")?;
            for (i, t) in tot.iter_mut().enumerate() {
                *t += num(&f, i);
            }
        }
        Ok(tot)
    }

    /// Figure 5: publish API items/s with no subscribers (Nchan: its publisher location, one
    /// item per request).
    pub(crate) async fn publish_api(&mut self, items: usize) -> Result<PublishRun> {
        let conns = self.plan.publish_conns;
        let window = self.plan.window_ms;
        let addr = self.target.control;
        // Nchan: one `POST /pub/<channel>` per item (it has no batches), any 2xx accepted.
        let nchan = match self.target.kind {
            Kind::Nchan if items > 1 => {
                return Err("Nchan's publisher takes one message per request".into())
            }
            Kind::Nchan => " nchan",
            _ => "",
        };
        let replies = self
            .on_workers(conns, |c, window| {
                format!("publish {addr} {c} {window} {items}{nchan}")
            })
            .await?;
        let window_s = window as f64 / 1e3;
        let mut r = PublishRun {
            items_per_request: items,
            conns,
            window_s,
            ..Default::default()
        };
        let (mut reqs, mut its) = (0, 0);
        for rep in &replies {
            let f = fields(rep, "published")?;
            reqs += num(&f, 0);
            its += num(&f, 1);
            r.non200 += num(&f, 2);
            r.errors += num(&f, 3);
            r.reconnects += num(&f, 4);
        }
        if reqs == 0 {
            return Err(format!(
                "no publish request ({items} items) was accepted{}",
                example(&replies)
            ));
        }
        r.requests_per_s = reqs as f64 / window_s;
        r.items_per_s = its as f64 / window_s;
        eprintln!(
            "publish ({items} items/request): {:.0} items/s",
            r.items_per_s
        );
        self.wait_idle("the publish test").await;
        Ok(r)
    }
}

/// What the publisher of a sustained test writes per batch.
pub(crate) struct Batch {
    /// The request(s), pipelined.
    pub req: Vec<u8>,
    /// Answers the batch gets (one per request).
    pub answers: usize,
    /// Any 2xx answer is a success (Nchan: 201/202); otherwise only 200.
    pub any_2xx: bool,
}

impl Batch {
    /// One request answered 200.
    pub(crate) fn single(req: Vec<u8>) -> Self {
        Self {
            req,
            answers: 1,
            any_2xx: false,
        }
    }

    fn accepts(&self, status: u16) -> bool {
        status == 200 || (self.any_2xx && (200..300).contains(&status))
    }
}

/// Publisher of the sustained tests: one batch per `interval` until `stop_at` (a bounded count),
/// or with a zero interval each batch as soon as the previous one is answered (bounded by
/// `stop_at` and the 10 s bound on each answer). Returns the batches answered 200, the failed
/// ones, and those answered 200 within `window`.
async fn publish_batches(
    control: SocketAddr,
    batch: Batch,
    interval: Duration,
    stop_at: Instant,
    window: (Instant, Instant),
) -> (u64, u64, u64) {
    let (mut ok, mut failed, mut in_window) = (0u64, 0u64, 0u64);
    let max_batches = if interval.is_zero() {
        u64::MAX
    } else {
        (stop_at
            .saturating_duration_since(Instant::now())
            .as_millis()
            / interval.as_millis().max(1)) as u64
            + 10
    };
    let mut conn: Option<(TcpStream, RespReader)> = None;
    let mut next = Instant::now();
    while Instant::now() < stop_at && ok + failed < max_batches {
        tokio::time::sleep_until(next).await;
        next = Instant::now().max(next) + interval;
        if conn.is_none() {
            match TcpStream::connect(control).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    conn = Some((s, RespReader::new()));
                }
                Err(_) => {
                    failed += 1;
                    // Back to back or not, a refused connect waits before the next try.
                    next = next.max(Instant::now() + Duration::from_millis(20));
                    continue;
                }
            }
        }
        let Some((s, rd)) = conn.as_mut() else {
            continue;
        };
        let res = async {
            s.write_all(&batch.req).await?;
            // A failed or closing answer ends the batch (the connection is then replaced).
            let mut r = rd.read_response(s).await?;
            for _ in 1..batch.answers {
                if !batch.accepts(r.status) || r.close {
                    break;
                }
                r = rd.read_response(s).await?;
            }
            Ok::<_, std::io::Error>(r)
        };
        match tokio::time::timeout(Duration::from_secs(10), res).await {
            Ok(Ok(r)) if batch.accepts(r.status) => {
                ok += 1;
                let now = Instant::now();
                if now >= window.0 && now < window.1 {
                    in_window += 1;
                }
                if r.close {
                    conn = None;
                }
            }
            _ => {
                failed += 1;
                conn = None;
                next = next.max(Instant::now() + Duration::from_millis(20));
            }
        }
    }
    (ok, failed, in_window)
}

/// Find a held-client count in a `/channels/<name>` answer.
fn find_count(v: &serde_json::Value) -> Option<u64> {
    const KEYS: [&str; 7] = [
        "held",
        "held_clients",
        "holds",
        "clients",
        "subscribers",
        "count",
        "connections",
    ];
    match v {
        serde_json::Value::Object(m) => {
            for k in KEYS {
                if let Some(n) = m.get(k).and_then(serde_json::Value::as_u64) {
                    return Some(n);
                }
            }
            m.values().find_map(find_count)
        }
        _ => None,
    }
}
