//! `--compare`: grip-proxy's figures, then the same figures against each installed peer, one
//! target after the other in one run, on the same origin: nginx (pass-through only, its windows
//! alternating with grip-proxy's while both run), Nchan (memory, fan-out, sustained, publish) and
//! Pushpin (everything grip-proxy does). Each target's figures are the existing scenarios, run in
//! the single-target run's order: warm-up, held rounds, sustained, pass-through, publish.

use crate::children::{LineChild, Result};
use crate::plan::{Comparison, Plan, TargetRun};
use crate::procfs::{machine_cpu_ticks, tree_cpu_ticks_with_reaped, tree_rss_kib};
use crate::run::{process_names, workspace_root, Options};
use crate::scenarios::{Ctx, Forwarder, HttpsInstances, HttpsPlan};
use crate::target::{Kind, Target};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// What every target's phase shares.
struct Env<'a> {
    origin_port: u16,
    plan: &'a Plan,
    out: &'a Path,
}

/// Run the comparison, print and write its report; every child is stopped before this returns.
pub(crate) async fn run(opts: &Options, plan: Plan) -> Result<()> {
    let started = Instant::now();
    let out = &opts.out;
    if let Some(why) = Kind::GripProxy.missing(&opts.proxy_bin) {
        return Err(format!("grip-proxy: {why}"));
    }
    eprintln!(
        "grip-bench: comparison of grip-proxy ({}) with the installed peers, {} run, output in {}",
        opts.proxy_bin.display(),
        if plan.short { "short" } else { "full" },
        out.display()
    );
    let me = std::process::id();
    let (busy0, total0) = machine_cpu_ticks();
    let ours0 = tree_cpu_ticks_with_reaped(me);

    let (origin, origin_port) = crate::run::start_origin(out).await?;
    let env = Env {
        origin_port,
        plan: &plan,
        out,
    };
    let root = workspace_root();
    let mut nginx = peer(Kind::Nginx, &Kind::Nginx.default_bin(root));
    let grip = env
        .measure_target(
            TargetRun::new(Kind::GripProxy, &opts.proxy_bin),
            Some(&mut nginx),
        )
        .await;
    if nginx.measured() && nginx.error.is_none() && nginx.passthrough.is_empty() {
        nginx.error = Some(
            "not measured: its pass-through windows alternate with grip-proxy's, whose figures stopped before them".into(),
        );
    }
    let mut targets = vec![grip, nginx];
    for kind in [Kind::Nchan, Kind::Pushpin] {
        let run = peer(kind, &kind.default_bin(root));
        targets.push(env.measure_target(run, None).await);
    }
    origin.stop().await;

    let (busy1, total1) = machine_cpu_ticks();
    let ours = tree_cpu_ticks_with_reaped(me).saturating_sub(ours0);
    let foreign = busy1.saturating_sub(busy0).saturating_sub(ours);
    let foreign_cpu_percent = 100.0 * foreign as f64 / total1.saturating_sub(total0).max(1) as f64;
    let mut notes = Vec::new();
    if foreign_cpu_percent > 5.0 {
        notes.push(format!(
            "other processes used {foreign_cpu_percent:.0}% of the machine's CPU during the run: figures are less reliable"
        ));
    }
    let c = Comparison {
        plan,
        targets,
        foreign_cpu_percent,
        notes,
        run_seconds: started.elapsed().as_secs_f64(),
    };
    let md = crate::report::compare_markdown(&c);
    println!("{md}");
    crate::report::write_comparison(out, &c, &md)?;
    eprintln!(
        "wrote {} and {}",
        out.join("results.json").display(),
        out.join("report.md").display()
    );
    let failed: Vec<String> = c
        .targets
        .iter()
        .filter_map(|t| {
            t.error
                .as_ref()
                .map(|e| format!("{}: {e}", t.target.name()))
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("could not measure {}", failed.join("; ")))
    }
}

/// A peer's entry: its package version, and whether it is installed.
fn peer(kind: Kind, bin: &Path) -> TargetRun {
    let mut r = TargetRun::new(kind, bin);
    r.version = kind.package().and_then(package_version);
    if let Some(why) = kind.missing(bin) {
        eprintln!("{}: not installed ({why})", kind.name());
        r.not_installed = Some(why);
    }
    r
}

/// Version of an installed Debian package (`dpkg-query`), if any.
fn package_version(package: &str) -> Option<String> {
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !v.is_empty()).then_some(v)
}

impl Env<'_> {
    /// Start the target with fresh workers, measure its figures into `run`, stop everything.
    /// A failure is recorded in `run.error` (the figures measured before it are kept).
    async fn measure_target(&self, mut run: TargetRun, nginx: Option<&mut TargetRun>) -> TargetRun {
        if run.not_installed.is_some() {
            return run;
        }
        eprintln!("== {}", run.target.name());
        if let Err(e) = self.start_and_measure(&mut run, nginx).await {
            eprintln!("{}: could not measure: {e}", run.target.name());
            run.error = Some(e);
        }
        run
    }

    async fn start_and_measure(
        &self,
        run: &mut TargetRun,
        nginx: Option<&mut TargetRun>,
    ) -> Result<()> {
        let kind = run.target;
        let bin = PathBuf::from(&run.proxy_bin);
        let target = Target::start(kind, &bin, self.origin_port, self.out).await?;
        eprintln!(
            "{} up: listen {}, control {}, pid {}",
            kind.name(),
            target.listen,
            target.control,
            target.pid()
        );
        // Fresh workers for every target: a failed figure cannot leave a reply behind for the next.
        let mut workers = Vec::new();
        for i in 0..self.plan.workers {
            workers.push(LineChild::spawn(
                &format!("worker{i}"),
                &["worker".into(), "--id".into(), i.to_string()],
                &self
                    .out
                    .join(format!("worker{i}-{}.log", kind.name().to_lowercase())),
            )?);
        }
        let origin: SocketAddr = ([127, 0, 0, 1], self.origin_port).into();
        let mut ctx = Ctx::new(target, origin, workers, self.plan.clone());
        let r = self.figures(&mut ctx, run, nginx).await;
        for w in ctx.workers.drain(..) {
            w.stop().await;
        }
        ctx.target.stop();
        run.notes.append(&mut ctx.notes);
        r
    }

    /// The figures that apply to the target, in the single-target run's order.
    async fn figures(
        &self,
        ctx: &mut Ctx,
        run: &mut TargetRun,
        nginx: Option<&mut TargetRun>,
    ) -> Result<()> {
        let kind = run.target;
        run.proxy_processes = process_names(&ctx.target.processes());
        ctx.warm_up().await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        run.idle_rss_kib = ctx.rss_kib();
        eprintln!("idle RSS {:.1} MiB", run.idle_rss_kib as f64 / 1024.0);
        for n in self.plan.fanout_n.clone() {
            run.fanout
                .push(ctx.fanout_round(n, "fan", run.idle_rss_kib).await?);
        }
        run.sustained = Some(ctx.sustained().await?);
        if kind.is_grip() {
            self.passthrough(ctx, run, nginx).await?;
        }
        run.publish_single = Some(ctx.publish_api(1).await?);
        if kind.is_grip() {
            run.publish_batched = Some(ctx.publish_api(100).await?);
        }
        if kind == Kind::GripProxy {
            eprintln!("== grip-proxy HTTPS, with nginx (TLS) beside it");
            let bin = PathBuf::from(&run.proxy_bin);
            let inst = HttpsInstances {
                bin: &bin,
                nginx_bin: Kind::Nginx.default_bin(workspace_root()),
                out: self.out,
            };
            let mut f = ctx.https_figures(&inst, HttpsPlan::of(&[])).await?;
            if let Some(m) = f.memory.as_mut() {
                m.main_plain_kib_per_held = run
                    .fanout
                    .iter()
                    .find(|r| r.n == m.n)
                    .map(|r| r.kib_per_held);
            }
            run.https = Some(f);
        }
        Ok(())
    }

    /// Pass-through of the target and, if given and installed, of nginx, started next to it for
    /// this figure: their windows alternate, run after run, each run with its own window straight
    /// to the origin.
    async fn passthrough(
        &self,
        ctx: &mut Ctx,
        run: &mut TargetRun,
        nginx: Option<&mut TargetRun>,
    ) -> Result<()> {
        let mut proxies = vec![Forwarder::of(&ctx.target)];
        let mut peer: Option<(&mut TargetRun, Target)> = None;
        if let Some(ng) = nginx.filter(|ng| ng.measured()) {
            eprintln!("== nginx, next to {} for pass-through", run.target.name());
            let bin = PathBuf::from(&ng.proxy_bin);
            match Target::start(Kind::Nginx, &bin, self.origin_port, self.out).await {
                Ok(t) => {
                    eprintln!("nginx up: listen {}, pid {}", t.listen, t.pid());
                    ctx.warm_up_plain(t.listen).await?;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    ng.proxy_processes = process_names(&t.processes());
                    ng.idle_rss_kib = tree_rss_kib(t.pid());
                    proxies.push(Forwarder::of(&t));
                    peer = Some((ng, t));
                }
                Err(e) => {
                    eprintln!("nginx: could not start: {e}");
                    ng.error = Some(e);
                }
            }
        }
        let r = ctx
            .passthrough_runs(&proxies, self.plan.passthrough_runs)
            .await;
        let mut per_proxy = match r {
            Ok(p) => p,
            Err(e) => {
                if let Some((ng, _)) = peer.as_mut() {
                    ng.error = Some(format!("pass-through, alternating with grip-proxy: {e}"));
                }
                return Err(e);
            }
        };
        if let Some((ng, mut t)) = peer {
            t.stop();
            ng.passthrough = per_proxy.pop().unwrap_or_default();
        }
        run.passthrough = per_proxy.pop().unwrap_or_default();
        Ok(())
    }
}
