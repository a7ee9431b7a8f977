//! The HTTPS figures, on fresh grip-proxy instances with `[tls]` and nginx with TLS on the same origin:
//! memory per held HTTPS long-poll against plain, keep-alive HTTPS pass-through, full handshakes/s.

use super::{fields, num, Ctx, Forwarder};
use crate::children::{broadcast, Result};
use crate::plan::{FanoutRound, Handshakes, HttpsFigures, HttpsMemory};
use crate::procfs::{tree_cpu_ns, wait_cpu_idle};
use crate::run::Figure;
use crate::target::{Kind, Target};
use crate::tls::Certs;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// Which HTTPS figures a run measures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HttpsPlan {
    pub memory: bool,
    pub passthrough: bool,
    pub handshakes: bool,
}

impl HttpsPlan {
    /// The HTTPS figures a run (or `--only`, if not empty) asks for.
    pub(crate) fn of(only: &[Figure]) -> Self {
        let all = only.is_empty();
        Self {
            memory: all || only.contains(&Figure::HttpsMemory),
            passthrough: all || only.contains(&Figure::HttpsPassthrough),
            handshakes: all || only.contains(&Figure::Handshakes),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        !(self.memory || self.passthrough || self.handshakes)
    }
}

/// Where grip-proxy instances come from and where their logs go.
pub(crate) struct Instances<'a> {
    pub bin: &'a Path,
    pub nginx_bin: PathBuf,
    pub out: &'a Path,
}

impl Ctx {
    /// Make the run's certificates, tell the workers to trust its CA, and measure the HTTPS
    /// figures of `what`, each on grip-proxy instances started fresh for it (and nginx with TLS
    /// for pass-through and handshakes); every instance is stopped, and `self.target` restored,
    /// whatever happened.
    pub(crate) async fn https_figures(
        &mut self,
        inst: &Instances<'_>,
        what: HttpsPlan,
    ) -> Result<HttpsFigures> {
        let mut f = HttpsFigures::default();
        if self.target.kind != Kind::GripProxy {
            f.skipped =
                Some("measured against grip-proxy only (with nginx with TLS beside it)".into());
            return Ok(f);
        }
        if what.is_empty() {
            return Ok(f);
        }
        let certs = Certs::make()?;
        let cmds = vec![format!("tls {}", certs.ca.display()); self.workers.len()];
        for r in broadcast(&mut self.workers, &cmds, Duration::from_secs(10)).await? {
            fields(&r, "tls")?;
        }
        if what.memory {
            f.memory = Some(self.https_memory(inst, &certs).await?);
        }
        if what.passthrough || what.handshakes {
            self.https_peers(inst, &certs, what, &mut f).await?;
        }
        Ok(f)
    }

    /// N plain long-polls held on a fresh instance, then N HTTPS long-polls on another.
    async fn https_memory(&mut self, inst: &Instances<'_>, certs: &Certs) -> Result<HttpsMemory> {
        let n = self.plan.https_memory_n;
        let (plain_idle_rss_kib, plain) = self.held_on_instance(inst, certs, false, n).await?;
        let (https_idle_rss_kib, https) = self.held_on_instance(inst, certs, true, n).await?;
        let ratio = if plain.kib_per_held > 0.0 {
            https.kib_per_held / plain.kib_per_held
        } else {
            0.0
        };
        eprintln!(
            "https-memory N={n}: {:.2} KiB per held HTTPS long-poll, {:.2} KiB per held plain long-poll: HTTPS/plain {ratio:.2}",
            https.kib_per_held, plain.kib_per_held
        );
        Ok(HttpsMemory {
            n,
            plain_idle_rss_kib,
            https_idle_rss_kib,
            plain,
            https,
            ratio,
            main_plain_kib_per_held: None,
        })
    }

    /// Start an instance with an HTTPS listener, warm it up (0.5 s of `GET /plain` on each
    /// listener, then 200 clients held and released on the listener measured), read its idle
    /// RSS, and hold N clients on one channel there (plain or HTTPS); the round's figure is
    /// against that idle RSS. Returns (idle RSS, round).
    async fn held_on_instance(
        &mut self,
        inst: &Instances<'_>,
        certs: &Certs,
        https: bool,
        n: usize,
    ) -> Result<(u64, FanoutRound)> {
        let what = if https { "https" } else { "plain" };
        let log = inst.out.join(format!("grip-proxy-https-memory-{what}.log"));
        let origin_port = self.origin.port();
        let mut instance =
            Target::start_tls(Kind::GripProxy, inst.bin, origin_port, log, certs).await?;
        std::mem::swap(&mut self.target, &mut instance);
        self.tls_clients = https;
        let r = async {
            self.warm_up_plain(self.target.listen).await?;
            let tls = Forwarder::https_of(&self.target).ok_or("no HTTPS listener")?;
            self.warm_up_plain(&tls.dest).await?;
            self.fanout_round(200, "warm", 0).await?;
            self.wait_idle("the warm-up").await;
            let idle = self.rss_kib();
            eprintln!(
                "https-memory ({what} clients): instance pid {}, idle RSS {:.1} MiB after its warm-up",
                self.target.pid(),
                idle as f64 / 1024.0
            );
            let round = self.fanout_round(n, what, idle).await?;
            Ok((idle, round))
        }
        .await;
        self.tls_clients = false;
        std::mem::swap(&mut self.target, &mut instance);
        instance.stop();
        r
    }

    /// grip-proxy (a fresh instance with an HTTPS listener) and nginx with TLS, both on the
    /// origin: HTTPS pass-through and handshakes, their windows alternating.
    async fn https_peers(
        &mut self,
        inst: &Instances<'_>,
        certs: &Certs,
        what: HttpsPlan,
        f: &mut HttpsFigures,
    ) -> Result<()> {
        let port = self.origin.port();
        let log = inst.out.join("grip-proxy-https.log");
        let mut grip = Target::start_tls(Kind::GripProxy, inst.bin, port, log, certs).await?;
        eprintln!(
            "grip-proxy with HTTPS up: listen {}, HTTPS {}, pid {}",
            grip.listen,
            grip.tls_listen.map_or("-".into(), |a| a.to_string()),
            grip.pid()
        );
        f.grip_session = grip.tls_session.clone();
        let mut nginx = match Kind::Nginx.missing(&inst.nginx_bin) {
            Some(why) => {
                eprintln!("nginx: not installed ({why}): grip-proxy's HTTPS figures alone");
                f.nginx_missing = Some(format!("not installed ({why})"));
                None
            }
            None => {
                let log = inst.out.join("nginx-https.log");
                match Target::start_tls(Kind::Nginx, &inst.nginx_bin, port, log, certs).await {
                    Ok(t) => {
                        eprintln!(
                            "nginx with TLS up: listen {}, HTTPS {}, pid {}",
                            t.listen,
                            t.tls_listen.map_or("-".into(), |a| a.to_string()),
                            t.pid()
                        );
                        Some(t)
                    }
                    Err(e) => {
                        self.note(format!("nginx with TLS did not start: {e}"));
                        f.nginx_missing = Some(format!("did not start: {e}"));
                        None
                    }
                }
            }
        };
        f.nginx_session = nginx.as_ref().and_then(|t| t.tls_session.clone());
        let r = self.https_windows(&grip, nginx.as_ref(), what, f).await;
        if let Some(t) = nginx.as_mut() {
            t.stop();
        }
        grip.stop();
        r
    }

    async fn https_windows(
        &mut self,
        grip: &Target,
        nginx: Option<&Target>,
        what: HttpsPlan,
        f: &mut HttpsFigures,
    ) -> Result<()> {
        let mut proxies = Vec::new();
        for t in std::iter::once(grip).chain(nginx) {
            let p = Forwarder::https_of(t).ok_or("no HTTPS listener")?;
            self.warm_up_plain(&p.dest).await?;
            proxies.push(p);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (name, s) in [("grip-proxy", &f.grip_session), ("nginx", &f.nginx_session)] {
            if let Some(s) = s {
                eprintln!("{name} HTTPS: {s}");
            }
        }
        let suite = |s: &Option<String>| {
            s.as_deref()
                .and_then(|s| s.split_whitespace().nth(1))
                .map(str::to_string)
        };
        if nginx.is_some() && suite(&f.grip_session) != suite(&f.nginx_session) {
            self.note(format!(
                "grip-proxy and nginx negotiated different TLS sessions: {} / {}",
                f.grip_session.as_deref().unwrap_or("?"),
                f.nginx_session.as_deref().unwrap_or("?")
            ));
        }
        let runs = self.plan.https_runs;
        if what.passthrough {
            let mut per = self.passthrough_runs(&proxies, runs).await?;
            if per.len() > 1 {
                f.nginx_passthrough = per.pop().unwrap_or_default();
            }
            f.grip_passthrough = per.pop().unwrap_or_default();
        }
        if what.handshakes {
            let mut per = self.handshake_runs(&proxies, runs).await?;
            if per.len() > 1 {
                f.nginx_handshakes = per.pop().unwrap_or_default();
            }
            f.grip_handshakes = per.pop().unwrap_or_default();
        }
        Ok(())
    }

    /// Full TLS handshakes per second in `runs` runs, one window through each of `proxies` per
    /// run, their order rotated by one every run: `handshake_conns` connection loops (split over
    /// two workers), each opening a new connection, making a full handshake (no resumption),
    /// sending one `GET /plain` with `Connection: close`, reading the answer and closing. With
    /// the proxy's CPU time per handshake over its window.
    async fn handshake_runs(
        &mut self,
        proxies: &[Forwarder],
        runs: usize,
    ) -> Result<Vec<Vec<Handshakes>>> {
        let conns = self.plan.handshake_conns;
        let window_s = self.plan.window_ms as f64 / 1e3;
        let mut out = vec![Vec::with_capacity(runs); proxies.len()];
        let worker_pids: Vec<u32> = self.workers.iter().map(|w| w.pid()).collect();
        let workers_cpu = || worker_pids.iter().map(|&p| tree_cpu_ns(p)).sum::<u64>();
        for run in 0..runs {
            let mut line = format!("handshakes run {}/{runs}:", run + 1);
            for k in 0..proxies.len() {
                let i = (k + run) % proxies.len();
                let p = &proxies[i];
                let (cpu0, wcpu0, t0) = (tree_cpu_ns(p.pid), workers_cpu(), Instant::now());
                let replies = self
                    .on_workers(conns, |c, window| {
                        format!("handshake {} {c} {window} /plain", p.dest)
                    })
                    .await?;
                let cpu_ns = tree_cpu_ns(p.pid).saturating_sub(cpu0);
                let wall_ns = t0.elapsed().as_nanos().max(1) as f64;
                let wcpu_ns = workers_cpu().saturating_sub(wcpu0);
                let mut h = Handshakes {
                    conns,
                    window_s,
                    run,
                    order: k + 1,
                    ..Default::default()
                };
                for r in &replies {
                    let f = fields(r, "handshaken")?;
                    h.ok += num(&f, 0);
                    h.non200 += num(&f, 1);
                    h.errors += num(&f, 2);
                }
                if h.ok == 0 {
                    return Err(format!(
                        "no HTTPS connection to {} ({}) was answered 200 ({} errors, {} non-200)",
                        p.name, p.dest, h.errors, h.non200
                    ));
                }
                h.per_s = h.ok as f64 / window_s;
                h.proxy_cpu_ms = cpu_ns as f64 / 1e6;
                h.cpu_us_per_handshake = cpu_ns as f64 / 1e3 / (h.ok + h.non200).max(1) as f64;
                h.workers_cores = wcpu_ns as f64 / wall_ns;
                let _ = write!(
                    line,
                    " {} {:.0}/s ({:.0} µs CPU/handshake, clients {:.2} cores, {} errors)",
                    p.name, h.per_s, h.cpu_us_per_handshake, h.workers_cores, h.errors
                );
                if h.errors > 0 || h.non200 > 0 {
                    self.note(format!(
                        "handshakes through {}: {} errors, {} non-200 answers in run {}",
                        p.name,
                        h.errors,
                        h.non200,
                        run + 1
                    ));
                }
                out[i].push(h);
                if !wait_cpu_idle(p.pid, Duration::from_secs(15)).await {
                    self.note(format!(
                        "{} still busy 15 s after its handshake window; measured anyway",
                        p.name
                    ));
                }
            }
            eprintln!("{line}");
        }
        Ok(out)
    }
}
