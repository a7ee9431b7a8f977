//! Figure 7: memory per remembered channel, on a grip-proxy instance started fresh for it. The
//! proxy keeps a channel entry for the last id published to it (for `prev-id` checks) even when
//! no client is held on it; this measures what one such entry costs in RSS, after items with an
//! id were published to distinct channels nobody holds (`remembered_publish`), and after rounds
//! of clients each held on a new channel and released by such an item (`remembered_churn`).

use super::{fields, num, Ctx};
use crate::children::{broadcast, Result};
use crate::http::{post_request, RespReader, PUBLISHED_BODY};
use crate::plan::{Remembered, RememberedFigures};
use crate::run::Options;
use crate::target::{Kind, Target};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Channel name and item id of the i-th channel of the publish variant. Fixed widths (up to
/// 999,999 channels), so that every name is 10 bytes and every id 9 bytes.
fn publish_name(i: usize) -> (String, String) {
    (format!("rem-{i:06}"), format!("id-{i:06}"))
}

/// A GRIP publish body with one `http-response` item carrying an `id` per (channel, id).
fn id_publish_body(items: &[(String, String)]) -> Vec<u8> {
    let body = std::str::from_utf8(PUBLISHED_BODY).unwrap_or("hello\n");
    let items: Vec<serde_json::Value> = items
        .iter()
        .map(|(channel, id)| {
            serde_json::json!({
                "channel": channel,
                "id": id,
                "formats": {"http-response": {"code": 200, "body": body}}
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "items": items })).unwrap_or_default()
}

/// POST every body to `/publish/` on `control`, one after the other on a keep-alive connection
/// (reconnecting if the proxy closes it); each must be answered 200 within 30 s.
pub(super) async fn post_all(control: SocketAddr, bodies: &[Vec<u8>]) -> Result<()> {
    let host = control.to_string();
    let mut conn: Option<(TcpStream, RespReader)> = None;
    for body in bodies {
        let (s, rd) = match conn.as_mut() {
            Some(c) => c,
            None => {
                let s = TcpStream::connect(control)
                    .await
                    .map_err(|e| format!("connect to control port: {e}"))?;
                let _ = s.set_nodelay(true);
                conn.insert((s, RespReader::new()))
            }
        };
        let req = post_request(&host, "/publish/", body);
        let res = async {
            s.write_all(&req).await?;
            rd.read_response(s).await
        };
        match tokio::time::timeout(Duration::from_secs(30), res).await {
            Ok(Ok(r)) if r.status == 200 => {
                if r.close {
                    conn = None;
                }
            }
            Ok(Ok(r)) => return Err(format!("publish with ids answered {}", r.status)),
            Ok(Err(e)) => return Err(format!("publish with ids: {e}")),
            Err(_) => return Err("publish with ids not answered within 30 s".into()),
        }
    }
    Ok(())
}

/// The figure from the RSS and the gauge before and after.
fn per_channel(
    channels: usize,
    counted: u64,
    (name_bytes, id_bytes): (usize, usize),
    rss_before_kib: u64,
    rss_after_kib: u64,
) -> Remembered {
    let bytes_per_channel =
        rss_after_kib.saturating_sub(rss_before_kib) as f64 * 1024.0 / counted.max(1) as f64;
    let name_len = name_bytes as f64 / channels.max(1) as f64;
    let id_len = id_bytes as f64 / channels.max(1) as f64;
    Remembered {
        channels,
        counted,
        name_len,
        id_len,
        rss_before_kib,
        rss_after_kib,
        bytes_per_channel,
        beyond_strings: bytes_per_channel - name_len - id_len,
        ..Default::default()
    }
}

impl Ctx {
    /// Measure memory per remembered channel: the publish variant, then the churn variant, each
    /// on a grip-proxy instance started fresh for it and warmed up like the main one (so that
    /// both start from an empty channel map and neither reuses memory the other freed).
    pub(crate) async fn remembered_figures(&mut self, opts: &Options) -> Result<RememberedFigures> {
        let mut f = RememberedFigures::default();
        if opts.target != Kind::GripProxy {
            f.skipped = Some(
                "measured against grip-proxy only (its `grip_proxy_channels` gauge counts the entries)"
                    .into(),
            );
            return Ok(f);
        }
        f.publish = Some(self.remembered_on_instance(opts, false).await?);
        f.churn = Some(self.remembered_on_instance(opts, true).await?);
        Ok(f)
    }

    /// Start a fresh instance, warm it up, measure one variant on it, and stop it. The instance
    /// is stopped (and `self.target` restored) whatever happened.
    async fn remembered_on_instance(&mut self, opts: &Options, churn: bool) -> Result<Remembered> {
        let what = if churn { "churn" } else { "publish" };
        let log = opts.out.join(format!("grip-proxy-remembered-{what}.log"));
        let mut instance =
            Target::start_instance(&opts.proxy_bin, self.origin.port(), log, None).await?;
        std::mem::swap(&mut self.target, &mut instance);
        let r = async {
            self.warm_up().await?;
            self.wait_idle("the warm-up").await;
            eprintln!(
                "remembered ({what}): instance pid {}, idle RSS {:.1} MiB after its warm-up",
                self.target.pid(),
                self.rss_kib() as f64 / 1024.0
            );
            if churn {
                self.remembered_churn().await
            } else {
                self.remembered_publish().await
            }
        }
        .await;
        std::mem::swap(&mut self.target, &mut instance);
        instance.stop();
        r
    }

    async fn channels_gauge(&self) -> Result<u64> {
        self.metric("grip_proxy_channels")
            .await
            .ok_or_else(|| "the proxy's /metrics has no grip_proxy_channels gauge".to_string())
    }

    /// Wait until `grip_proxy_channels` counts at least `want` (bounded by `limit`: then a
    /// note), then until the proxy's CPU is idle. Returns the gauge then.
    async fn wait_channels(&mut self, want: u64, limit: Duration) -> Result<u64> {
        let deadline = Instant::now() + limit;
        loop {
            let c = self.channels_gauge().await?;
            if c >= want {
                break;
            }
            if Instant::now() > deadline {
                self.note(format!(
                    "remembered: grip_proxy_channels counted {c} of {want} expected within {limit:?}"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.wait_idle("remembering channels").await;
        self.channels_gauge().await
    }

    /// Publish one item with an id to each of `remembered_n` distinct channels nobody holds,
    /// `remembered_batch` items per request; (RSS growth) / (channels the gauge gained).
    async fn remembered_publish(&mut self) -> Result<Remembered> {
        let n = self.plan.remembered_n;
        let batch = self.plan.remembered_batch.max(1);
        let items: Vec<(String, String)> = (0..n).map(publish_name).collect();
        let bytes = items
            .iter()
            .fold((0, 0), |(a, b), (c, i)| (a + c.len(), b + i.len()));
        let bodies: Vec<Vec<u8>> = items.chunks(batch).map(id_publish_body).collect();
        drop(items);
        let c0 = self.channels_gauge().await?;
        let rss0 = self.rss_kib();
        let started = Instant::now();
        post_all(self.target.control, &bodies).await?;
        let publish_ms = started.elapsed().as_secs_f64() * 1e3;
        let settling = Instant::now();
        let c1 = self
            .wait_channels(c0 + n as u64, Duration::from_secs(60))
            .await?;
        let settle_ms = settling.elapsed().as_secs_f64() * 1e3;
        let rss1 = self.rss_kib();
        let counted = c1.saturating_sub(c0);
        if counted == 0 {
            return Err(format!(
                "grip_proxy_channels did not grow after {n} items with ids were published to distinct channels"
            ));
        }
        let r = Remembered {
            requests: bodies.len(),
            items_per_request: batch,
            publish_ms,
            settle_ms,
            ..per_channel(n, counted, bytes, rss0, rss1)
        };
        eprintln!(
            "remembered (publish): {:.0} bytes/channel over {counted} channels (names {:.0} B, ids {:.0} B: {:.0} beyond the strings; RSS {:.1} -> {:.1} MiB; {} requests in {:.0} ms, settled in {:.0} ms)",
            r.bytes_per_channel, r.name_len, r.id_len, r.beyond_strings,
            rss0 as f64 / 1024.0, rss1 as f64 / 1024.0, r.requests, publish_ms, settle_ms
        );
        Ok(r)
    }

    /// Churn: `remembered_churn_rounds` rounds; in each, `remembered_churn_clients` clients
    /// long-poll `/hold/<a new channel each>`, and once the proxy holds them all
    /// (`grip_proxy_held_clients`), one request publishes an item with an id to each of those
    /// channels, releasing them; the clients then close. Every channel stays remembered with no
    /// client. (RSS growth over all rounds) / (channels the gauge gained).
    async fn remembered_churn(&mut self) -> Result<Remembered> {
        let rounds = self.plan.remembered_churn_rounds;
        let k = self.plan.remembered_churn_clients;
        let control = self.target.control;
        let c0 = self.channels_gauge().await?;
        let rss0 = self.rss_kib();
        let (mut name_bytes, mut id_bytes, mut released) = (0usize, 0usize, 0usize);
        let started = Instant::now();
        let held_base = self.metric("grip_proxy_held_clients").await.unwrap_or(0);
        for r in 0..rounds {
            let prefix = format!("chn{r:04}-");
            // The previous round's clients were all released, but the gauge gives their places
            // back as their guards drop, a little after the answers: wait (bounded) until it is
            // back to where the churn started, so that this round's count starts from there.
            let back = Instant::now() + Duration::from_secs(10);
            let mut held0 = self.metric("grip_proxy_held_clients").await.unwrap_or(0);
            while held0 > held_base && Instant::now() < back {
                tokio::time::sleep(Duration::from_millis(5)).await;
                held0 = self.metric("grip_proxy_held_clients").await.unwrap_or(0);
            }
            let failed = self.open_clients("hold", k, &prefix, k, 120_000).await?;
            let want = held0 + (k - failed) as u64;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let held = self
                    .metric("grip_proxy_held_clients")
                    .await
                    .ok_or("the proxy's /metrics has no grip_proxy_held_clients gauge")?;
                if held >= want {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "remembered churn round {r}: the proxy held {held} of {want} clients after 30 s"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let items: Vec<(String, String)> = (0..k)
                .map(|ch| (format!("{prefix}{ch}"), format!("id{r:04}-{ch:03}")))
                .collect();
            for (c, i) in &items {
                name_bytes += c.len();
                id_bytes += i.len();
            }
            let cmds = vec!["arm".to_string(); self.workers.len()];
            broadcast(&mut self.workers, &cmds, Duration::from_secs(10)).await?;
            post_all(control, &[id_publish_body(&items)]).await?;
            let cmds = vec!["collect 30000".to_string(); self.workers.len()];
            let replies = broadcast(&mut self.workers, &cmds, Duration::from_secs(60)).await?;
            let (mut got, mut pending) = (0, 0);
            for rep in &replies {
                let f = fields(rep, "collected")?;
                got += num(&f, 0) as usize;
                pending += num(&f, 4);
            }
            if pending > 0 {
                return Err(format!(
                    "remembered churn round {r}: {pending} of {k} clients not released within 30 s"
                ));
            }
            released += got;
            self.close_clients().await?;
        }
        let publish_ms = started.elapsed().as_secs_f64() * 1e3;
        let settling = Instant::now();
        let expected = c0 + (rounds * k) as u64;
        let c1 = self
            .wait_channels(expected, Duration::from_secs(30))
            .await?;
        // The clients' connections are closed too: wait until the proxy holds none.
        let until = Instant::now() + Duration::from_secs(30);
        while self.metric("grip_proxy_held_clients").await.unwrap_or(0) > 0
            && Instant::now() < until
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.wait_idle("the churn rounds").await;
        let settle_ms = settling.elapsed().as_secs_f64() * 1e3;
        let rss1 = self.rss_kib();
        let counted = c1.saturating_sub(c0);
        if counted == 0 {
            return Err("grip_proxy_channels did not grow over the churn rounds".into());
        }
        if released < rounds * k {
            self.note(format!(
                "remembered churn: {released} of {} clients got the published body",
                rounds * k
            ));
        }
        let r = Remembered {
            requests: rounds,
            items_per_request: k,
            publish_ms,
            settle_ms,
            clients_per_round: k,
            released,
            ..per_channel(rounds * k, counted, (name_bytes, id_bytes), rss0, rss1)
        };
        eprintln!(
            "remembered (churn): {:.0} bytes/channel over {counted} channels ({rounds} rounds of {k} held clients; names {:.1} B, ids {:.0} B: {:.0} beyond the strings; RSS {:.1} -> {:.1} MiB; rounds took {:.0} ms)",
            r.bytes_per_channel, r.name_len, r.id_len, r.beyond_strings,
            rss0 as f64 / 1024.0, rss1 as f64 / 1024.0, publish_ms
        );
        Ok(r)
    }
}
