//! Figure 6: delivery through the Redis publish bus, over both of its transports. A private
//! redis-server, two grip-proxy instances A and B joined to it over Pub/Sub
//! (`bus.transport = "pubsub"`), two more, A' and B', joined to the same redis-server over a
//! Redis Stream (`bus.transport = "stream"`, a `bus.prefix` of their own so that the pairs do
//! not see each other's items), plus a memory-bus instance M (the baseline), are started for
//! this scenario only (and stopped after it). Single-client rounds over five paths,
//! interleaved: publish to B / client on A (cross-instance), publish to B' / client on A', publish
//! to A / client on A (same instance, still through Redis), publish to A' / client on A', publish
//! to M / client on M; then N clients held on A released by one publish to B (fan-out), the same
//! N on A' released by one publish to B', and the same N on M released by a publish to M. The
//! Streams figures are reported as ratios to the Pub/Sub ones of the same run.
//!
//! The scenario needs `redis-server` on PATH; without it (or when it does not start) the figure
//! is skipped with a note and the run still succeeds. A proxy that fails here fails the run.

use crate::children::Result;
use crate::http::{get_request, post_request, publish_body, BodyKind, RespReader};
use crate::plan::{BusFigures, DeliveryLatency, FanoutRound, Ratios};
use crate::redis::{find_on_path, Redis};
use crate::run::Options;
use crate::scenarios::Ctx;
use crate::stats::Percentiles;
use crate::sys::now_ns;
use crate::target::{Kind, Target};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bound on one single-client round (hold parked, publish, response read).
const ROUND_LIMIT: Duration = Duration::from_secs(10);
/// Bound on all single-client rounds together.
const ROUNDS_LIMIT: Duration = Duration::from_secs(60);
/// Rounds that may fail (client not given the published body) before the figure is given up.
const MAX_FAILED_ROUNDS: usize = 10;
/// `bus.prefix` of the stream pair: its stream is `<prefix>:items`, apart from the Pub/Sub pair's
/// channel `grip-proxy:publish` (the default prefix) on the same redis-server.
const STREAM_PREFIX: &str = "grip-bench-stream";

impl Ctx {
    /// Run figure 6 if the environment allows it; never fails the run for a missing or broken
    /// redis-server (the figure is then marked skipped, loudly under CI).
    pub(crate) async fn bus_figures(&mut self, opts: &Options) -> BusFigures {
        let mut f = BusFigures::default();
        if opts.target != Kind::GripProxy {
            f.skipped = Some("the target (Pushpin) has no Redis publish bus".into());
            return f;
        }
        let Some(bin) = find_on_path() else {
            self.skip_bus(&mut f, "redis-server not found on PATH".into());
            return f;
        };
        let redis = match Redis::start(&bin, opts.out.join("redis.log")).await {
            Ok(r) => r,
            Err(e) => {
                self.skip_bus(&mut f, format!("redis-server could not be started: {e}"));
                return f;
            }
        };
        eprintln!(
            "redis-server {} up on port {} (pid {})",
            redis.version,
            redis.port,
            redis.pid()
        );
        f.redis_version = Some(redis.version.clone());
        let started = Instant::now();
        if let Err(e) = self.bus_measure(&redis, opts, &mut f).await {
            self.note(format!("figure 6 (Redis bus) could not be measured: {e}"));
            f.error = Some(e);
        }
        drop(redis); // stopped by pid
        f.seconds = started.elapsed().as_secs_f64();
        eprintln!("figure 6 took {:.1} s", f.seconds);
        f
    }

    /// Mark figure 6 skipped for `why`, with a note (and a banner on stderr under CI).
    fn skip_bus(&mut self, f: &mut BusFigures, why: String) {
        let ci = std::env::var_os("CI").is_some();
        if ci {
            let bar = "!".repeat(78);
            eprintln!(
                "{bar}\n!!! grip-bench: figure 6 (cross-instance delivery through the Redis bus) SKIPPED: {why}\n!!! CI is set: install redis-server in the CI image to measure it.\n{bar}"
            );
        }
        self.note(format!(
            "**figure 6 (cross-instance delivery through the Redis bus) SKIPPED: {why}**{}",
            if ci {
                " (CI is set: install redis-server in the CI image to measure it)"
            } else {
                ""
            }
        ));
        f.skipped = Some(why);
    }

    /// Start the instances, then measure the single-client rounds and the fan-outs into `f`.
    /// Every instance is stopped by pid, also on error.
    async fn bus_measure(
        &mut self,
        redis: &Redis,
        opts: &Options,
        f: &mut BusFigures,
    ) -> Result<()> {
        let mut inst = BusInstances::start(opts, self.origin.port(), &redis.url()).await?;
        f.stream_prefix = Some(STREAM_PREFIX.to_string());
        self.single_client_rounds(&inst, f).await?;
        self.bus_fanouts(&mut inst, f).await
    }

    /// Single-client rounds over the five paths, interleaved so that they share any drift; the
    /// latencies and their ratios go into `f`.
    async fn single_client_rounds(
        &mut self,
        inst: &BusInstances,
        f: &mut BusFigures,
    ) -> Result<()> {
        let paths = inst.paths();
        let t_rounds = Instant::now();
        let [cross, stream_cross, same, stream_same, memory] =
            delivery_latency(&paths, self.plan.bus_warmup_rounds, self.plan.bus_rounds).await?;
        eprintln!(
            "delivery p50/p99 ({} rounds per path in {:.1} s): cross-instance Pub/Sub {} / Streams {}, same instance via Redis Pub/Sub {} / Streams {}, memory bus {}",
            cross.rounds,
            t_rounds.elapsed().as_secs_f64(),
            p50_p99(&cross),
            p50_p99(&stream_cross),
            p50_p99(&same),
            p50_p99(&stream_same),
            p50_p99(&memory)
        );
        f.ratio_cross_to_memory = Some(Ratios::of(&cross.latency, &memory.latency));
        f.ratio_same_redis_to_memory = Some(Ratios::of(&same.latency, &memory.latency));
        f.ratio_cross_to_same_redis = Some(Ratios::of(&cross.latency, &same.latency));
        f.ratio_stream_to_pubsub_cross = Some(Ratios::of(&stream_cross.latency, &cross.latency));
        f.ratio_stream_to_pubsub_same = Some(Ratios::of(&stream_same.latency, &same.latency));
        for d in [&cross, &stream_cross, &same, &stream_same, &memory] {
            if d.failed > 0 {
                self.note(format!(
                    "figure 6, {}: {} of {} rounds did not deliver the published body",
                    d.path, d.failed, d.rounds
                ));
            }
        }
        f.cross_instance = Some(cross);
        f.same_instance_redis = Some(same);
        f.stream_cross_instance = Some(stream_cross);
        f.stream_same_instance = Some(stream_same);
        f.memory_bus = Some(memory);
        Ok(())
    }

    /// Fan-out: N clients held on A (the workers' clients), one publish to B; right after, the
    /// same N on A', one publish to B' (Streams); then, with the four Redis instances stopped,
    /// the same N on M, one publish to M (the baseline).
    async fn bus_fanouts(&mut self, inst: &mut BusInstances, f: &mut BusFigures) -> Result<()> {
        let n = self.plan.bus_fanout_n;
        let (b, sb, m) = (inst.b.control, inst.stream_b.control, inst.m.control);
        let pubsub = self.fanout_on(&mut inst.a, n, "bus", b).await?;
        let stream = self
            .fanout_on(&mut inst.stream_a, n, "busstream", sb)
            .await?;
        for t in [
            &mut inst.a,
            &mut inst.b,
            &mut inst.stream_a,
            &mut inst.stream_b,
        ] {
            t.stop();
        }
        let memory = self.fanout_on(&mut inst.m, n, "busmem", m).await;
        inst.m.stop();
        let memory = memory?;
        eprintln!(
            "fan-out to {n} (last client): Pub/Sub {:.1} ms, Streams {:.1} ms, memory bus {:.1} ms",
            pubsub.fanout_ms, stream.fanout_ms, memory.fanout_ms
        );
        f.ratio_fanout_cross_to_memory = ratio(pubsub.fanout_ms, memory.fanout_ms);
        f.ratio_fanout_stream_to_pubsub = ratio(stream.fanout_ms, pubsub.fanout_ms);
        f.fanout = Some(pubsub);
        f.fanout_stream = Some(stream);
        f.fanout_memory = Some(memory);
        Ok(())
    }

    /// A fan-out round with the workers' clients held on `holder` (swapped in as the target for
    /// the round, then swapped back) and the publish sent to `publish_to`.
    async fn fanout_on(
        &mut self,
        holder: &mut Target,
        n: usize,
        tag: &str,
        publish_to: SocketAddr,
    ) -> Result<FanoutRound> {
        std::mem::swap(&mut self.target, holder);
        let round = async {
            self.wait_idle("starting the bus instances").await;
            let idle = self.rss_kib();
            self.fanout_round_via(n, tag, idle, publish_to).await
        }
        .await;
        std::mem::swap(&mut self.target, holder);
        round
    }
}

/// The instances of figure 6: A and B on the Redis bus over Pub/Sub (the default prefix), the
/// stream pair A' and B' on the same redis-server over a Redis Stream (`STREAM_PREFIX`, so that
/// neither pair sees the other's items), and M on the memory bus. Each is stopped by pid when
/// dropped.
struct BusInstances {
    a: Target,
    b: Target,
    stream_a: Target,
    stream_b: Target,
    m: Target,
}

impl BusInstances {
    /// Start the five instances, fresh, each ready once it proxies and accepts a publish.
    async fn start(opts: &Options, origin_port: u16, url: &str) -> Result<Self> {
        let bin = &opts.proxy_bin;
        let log = |x: &str| opts.out.join(format!("grip-proxy-bus-{x}.log"));
        let stream = stream_config(url);
        let inst = Self {
            a: Target::start_instance(bin, origin_port, log("a"), Some(url)).await?,
            b: Target::start_instance(bin, origin_port, log("b"), Some(url)).await?,
            stream_a: Target::start_instance_with(bin, origin_port, log("stream-a"), &stream)
                .await?,
            stream_b: Target::start_instance_with(bin, origin_port, log("stream-b"), &stream)
                .await?,
            m: Target::start_instance(bin, origin_port, log("memory"), None).await?,
        };
        inst.print();
        Ok(inst)
    }

    /// One progress line with every instance's ports and pid.
    fn print(&self) {
        let line = |name: &str, t: &Target| {
            format!(
                "{name} listen {} control {} (pid {})",
                t.listen,
                t.control,
                t.pid()
            )
        };
        eprintln!(
            "bus instances up: {}, {}, {}, {}, {}",
            line("A (Pub/Sub)", &self.a),
            line("B (Pub/Sub)", &self.b),
            line("A' (Streams)", &self.stream_a),
            line("B' (Streams)", &self.stream_b),
            line("memory-bus M", &self.m)
        );
    }

    /// The single-client paths, in the order a round visits them (the Streams path right after
    /// its Pub/Sub counterpart).
    fn paths(&self) -> [DeliveryPath; 5] {
        let path = |name, tag, holder: &Target, publish_to: &Target| DeliveryPath {
            name,
            tag,
            listen: holder.listen,
            holder_control: holder.control,
            publish_to: publish_to.control,
        };
        [
            path(
                "client on A, publish to B (Redis bus, Pub/Sub)",
                "x",
                &self.a,
                &self.b,
            ),
            path(
                "client on A', publish to B' (Redis bus, Streams)",
                "xs",
                &self.stream_a,
                &self.stream_b,
            ),
            path(
                "client on A, publish to A (Redis bus, Pub/Sub)",
                "s",
                &self.a,
                &self.a,
            ),
            path(
                "client on A', publish to A' (Redis bus, Streams)",
                "ss",
                &self.stream_a,
                &self.stream_a,
            ),
            path(
                "client on M, publish to M (memory bus)",
                "m",
                &self.m,
                &self.m,
            ),
        ]
    }
}

/// The config file of a stream-pair instance: the Redis bus at `url` over a Redis Stream
/// (`<STREAM_PREFIX>:items`, the default `stream_max_len`).
fn stream_config(url: &str) -> String {
    format!("[bus]\nurl = \"{url}\"\ntransport = \"stream\"\nprefix = \"{STREAM_PREFIX}\"\n")
}

/// `a / b`, if `b` is positive.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// `0.123/0.456 ms`: a path's median and p99, for the progress line.
fn p50_p99(d: &DeliveryLatency) -> String {
    format!("{:.3}/{:.3} ms", d.latency.p50_ms, d.latency.p99_ms)
}

/// Where a single client is held and where the publish goes.
struct DeliveryPath {
    name: &'static str,
    /// Channel name tag (channels are `xlat-<tag>-<round>`, fresh every round).
    tag: &'static str,
    listen: SocketAddr,
    /// Control port of the instance holding the client (`GET /channels/<name>`).
    holder_control: SocketAddr,
    publish_to: SocketAddr,
}

/// Keep-alive connections of one path.
struct PathConns {
    client: Conn,
    introspect: Conn,
    publish: Conn,
    samples: Vec<u64>,
    acks: Vec<u64>,
    failed: usize,
}

struct Conn {
    addr: SocketAddr,
    s: TcpStream,
    rd: RespReader,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Result<Self> {
        let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr} timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = s.set_nodelay(true);
        Ok(Self {
            addr,
            s,
            rd: RespReader::new(),
        })
    }

    async fn reopen(&mut self) -> Result<()> {
        *self = Self::open(self.addr).await?;
        Ok(())
    }

    /// One request/response exchange; returns the status and body.
    async fn exchange(&mut self, req: &[u8]) -> Result<(u16, Vec<u8>)> {
        let addr = self.addr;
        let res = tokio::time::timeout(ROUND_LIMIT, async {
            self.s.write_all(req).await?;
            self.rd.read_with_body(&mut self.s).await
        })
        .await
        .map_err(|_| format!("{addr}: no answer within {ROUND_LIMIT:?}"))?
        .map_err(|e| format!("{addr}: {e}"))?;
        let (resp, body) = res;
        if resp.close {
            self.reopen().await?;
        }
        Ok((resp.status, body))
    }
}

/// Single-client rounds over every path, interleaved (round i of each path, then round i+1, the
/// order of the paths reversed every other round): `warmup` uncounted rounds, then `rounds`
/// counted ones. Returns one result per path.
async fn delivery_latency<const P: usize>(
    paths: &[DeliveryPath; P],
    warmup: usize,
    rounds: usize,
) -> Result<[DeliveryLatency; P]> {
    let mut conns = Vec::with_capacity(P);
    for p in paths {
        conns.push(PathConns {
            client: Conn::open(p.listen).await?,
            introspect: Conn::open(p.holder_control).await?,
            publish: Conn::open(p.publish_to).await?,
            samples: Vec::with_capacity(rounds),
            acks: Vec::with_capacity(rounds),
            failed: 0,
        });
    }
    let deadline = Instant::now() + ROUNDS_LIMIT;
    for i in 0..warmup + rounds {
        if Instant::now() > deadline {
            return Err(format!(
                "single-client rounds did not finish within {ROUNDS_LIMIT:?} (at round {i} of {})",
                warmup + rounds
            ));
        }
        for k in visit_order(P, i) {
            let (p, c) = (&paths[k], &mut conns[k]);
            let channel = format!("xlat-{}-{i}", p.tag);
            match one_round(p, c, &channel).await? {
                Some((lat, ack)) if i >= warmup => {
                    c.samples.push(lat);
                    c.acks.push(ack);
                }
                Some(_) => {}
                None => {
                    c.failed += 1;
                    if c.failed > MAX_FAILED_ROUNDS {
                        return Err(format!(
                            "{}: {} rounds did not deliver the published body",
                            p.name, c.failed
                        ));
                    }
                }
            }
        }
    }
    let out: Vec<DeliveryLatency> = paths
        .iter()
        .zip(conns)
        .map(|(p, mut c)| {
            let mean_ms =
                c.samples.iter().sum::<u64>() as f64 / c.samples.len().max(1) as f64 / 1e6;
            DeliveryLatency {
                path: p.name.to_string(),
                rounds: c.samples.len(),
                failed: c.failed,
                latency: Percentiles::from_ns(&mut c.samples),
                mean_ms,
                publish_ack: Percentiles::from_ns(&mut c.acks),
            }
        })
        .collect();
    out.try_into()
        .map_err(|_| "internal: path count mismatch".to_string())
}

/// The order in which round `round` visits `n` paths: as listed in even rounds, reversed in odd
/// ones, so that no path always follows the same one (or always comes first after a publish).
fn visit_order(n: usize, round: usize) -> Vec<usize> {
    if round.is_multiple_of(2) {
        (0..n).collect()
    } else {
        (0..n).rev().collect()
    }
}

/// Hold one client on `channel`, wait until the holder reports it held, publish, and time the
/// delivery. `Ok(None)`: the client got something other than the published body.
async fn one_round(
    p: &DeliveryPath,
    c: &mut PathConns,
    channel: &str,
) -> Result<Option<(u64, u64)>> {
    let hold = get_request(&p.listen.to_string(), &format!("/hold/{channel}"));
    c.client
        .s
        .write_all(&hold)
        .await
        .map_err(|e| format!("{}: send hold: {e}", p.listen))?;
    // Parked? Poll the holder's `GET /channels/<name>` (1 ms apart, bounded).
    let q = get_request(
        &p.holder_control.to_string(),
        &format!("/channels/{channel}"),
    );
    let until = Instant::now() + ROUND_LIMIT;
    loop {
        let (status, body) = c.introspect.exchange(&q).await?;
        if status != 200 {
            return Err(format!(
                "GET /channels/{channel} on {} answered {status}",
                p.holder_control
            ));
        }
        let held = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["held"].as_u64())
            .unwrap_or(0);
        if held >= 1 {
            break;
        }
        if Instant::now() > until {
            return Err(format!(
                "{}: the client on {channel} was not held within {ROUND_LIMIT:?}",
                p.name
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let publish = post_request(
        &p.publish_to.to_string(),
        "/publish/",
        &publish_body(&[channel]),
    );
    let client = &mut c.client;
    let publisher = &mut c.publish;
    let t0 = now_ns();
    publisher
        .s
        .write_all(&publish)
        .await
        .map_err(|e| format!("{}: send publish: {e}", p.publish_to))?;
    let delivered = async {
        let r = client.rd.read_response(&mut client.s).await;
        (r, now_ns())
    };
    let acked = async {
        let r = publisher.rd.read_response(&mut publisher.s).await;
        (r, now_ns())
    };
    let ((resp, t_resp), (ack, t_ack)) =
        tokio::time::timeout(ROUND_LIMIT, async { tokio::join!(delivered, acked) })
            .await
            .map_err(|_| {
                format!(
                    "{}: publish or delivery not done within {ROUND_LIMIT:?}",
                    p.name
                )
            })?;
    let ack = ack.map_err(|e| format!("{}: publish answer: {e}", p.publish_to))?;
    if ack.status != 200 {
        return Err(format!(
            "{}: publish to {} answered {}",
            p.name, p.publish_to, ack.status
        ));
    }
    if ack.close {
        c.publish.reopen().await?;
    }
    let ok = match resp {
        Ok(r) => {
            if r.close {
                c.client.reopen().await?;
            }
            r.status == 200 && r.kind == BodyKind::Published
        }
        Err(_) => {
            c.client.reopen().await?;
            false
        }
    };
    Ok(ok.then(|| (t_resp.saturating_sub(t0), t_ack.saturating_sub(t0))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_the_order_of_the_paths() {
        assert_eq!(visit_order(3, 0), [0, 1, 2]);
        assert_eq!(visit_order(3, 1), [2, 1, 0]);
        assert_eq!(visit_order(3, 2), [0, 1, 2]);
    }

    #[test]
    fn stream_config_names_the_transport_and_its_own_prefix() {
        let toml = stream_config("redis://127.0.0.1:7000/0");
        assert!(toml.starts_with("[bus]\n"), "{toml}");
        assert!(
            toml.contains("url = \"redis://127.0.0.1:7000/0\""),
            "{toml}"
        );
        assert!(toml.contains("transport = \"stream\""), "{toml}");
        assert!(
            toml.contains(&format!("prefix = \"{STREAM_PREFIX}\"")),
            "{toml}"
        );
        assert_ne!(
            STREAM_PREFIX, "grip-proxy",
            "the Pub/Sub pair's default prefix"
        );
    }
}
