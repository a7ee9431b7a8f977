//! The orchestrator: starts origin, proxy and workers, runs every measurement in order,
//! stops everything, then prints and writes the report.

use crate::children::{LineChild, Result};
use crate::plan::{Plan, Results};
use crate::procfs::{machine_cpu_ticks, tree_cpu_ticks_with_reaped};
use crate::scenarios::{Ctx, HttpsInstances, HttpsPlan, StreamPlan};
use crate::target::{free_port, Kind, Target};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// Options of a benchmark run.
pub(crate) struct Options {
    pub short: bool,
    pub target: Kind,
    pub proxy_bin: PathBuf,
    pub out: PathBuf,
    /// Figures to measure alone (empty: the whole run, with its report).
    pub only: Vec<Figure>,
    /// Measure grip-proxy, then every installed peer, and report them side by side
    /// (`target` is then grip-proxy, `proxy_bin` its binary).
    pub compare: bool,
}

/// A figure that `--only` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Figure {
    Fanout,
    Sustained,
    Passthrough,
    Publish,
    /// Memory per open stream (rounds on a fresh instance).
    StreamMemory,
    /// One item to N streams on one channel.
    StreamFanout,
    /// Chunks delivered per second to streams on many channels.
    StreamSustained,
    /// Memory per channel remembered for its last id with no client (an instance of its own).
    Remembered,
    /// Memory per held HTTPS long-poll, next to plain ones at the same N (instances of their own).
    HttpsMemory,
    /// Keep-alive HTTPS requests/s through grip-proxy and nginx with TLS, each against the origin.
    HttpsPassthrough,
    /// Full TLS handshakes per second (one request per connection), grip-proxy and nginx.
    Handshakes,
    /// Streams coming back some items behind: from channel history, and from the origin.
    Catchup,
    /// Figure 6: delivery through the Redis bus, over Pub/Sub and over a Redis Stream, against
    /// the memory bus (a private redis-server and instances of their own).
    Bus,
}

impl Figure {
    /// Why this figure cannot be measured against `kind` (None: it can).
    fn unsupported_by(self, kind: Kind) -> Option<&'static str> {
        match (kind, self) {
            (Kind::GripProxy, _) => None,
            (_, Figure::Bus) => Some("only grip-proxy has the Redis publish bus"),
            (_, Figure::HttpsMemory | Figure::HttpsPassthrough | Figure::Handshakes) => {
                Some("the HTTPS figures are measured against grip-proxy (with nginx with TLS beside it)")
            }
            (Kind::Pushpin, _) => None,
            (_, Figure::Passthrough) => None,
            (Kind::Nchan, Figure::Fanout | Figure::Sustained | Figure::Publish) => None,
            (Kind::Nginx, _) => Some("plain nginx has no GRIP holds or publishes"),
            (Kind::Nchan, _) => {
                Some("not measured against Nchan (only memory per held client, fan-out, sustained, pass-through and publish are)")
            }
        }
    }
}

impl StreamPlan {
    /// The stream rounds and tests a run (or `--only`, if not empty) asks for.
    fn of(plan: &Plan, only: &[Figure]) -> Self {
        let all = only.is_empty();
        let mut rounds = Vec::new();
        if all || only.contains(&Figure::StreamMemory) {
            rounds.extend(&plan.stream_memory_n);
        }
        if all || only.contains(&Figure::StreamFanout) {
            rounds.push(plan.stream_fanout_n);
        }
        rounds.sort_unstable();
        rounds.dedup();
        Self {
            rounds,
            sustained: all || only.contains(&Figure::StreamSustained),
        }
    }

    fn is_empty(&self) -> bool {
        self.rounds.is_empty() && !self.sustained
    }
}

/// Run the whole benchmark; every child is stopped before this returns (also on error).
pub(crate) fn run(opts: Options) -> Result<()> {
    let nofile = crate::sys::raise_nofile_limit();
    if nofile < 20_000 {
        eprintln!("warning: open-file limit is {nofile}; large rounds may fail");
    }
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| format!("create {}: {e}", opts.out.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let plan = if opts.compare {
        Plan::compare(opts.short)
    } else {
        Plan::new(opts.short)
    };
    let limit = plan.max_run;
    rt.block_on(async move {
        let run = async {
            if opts.compare {
                crate::compare::run(&opts, plan).await
            } else {
                run_async(&opts, plan).await
            }
        };
        tokio::select! {
            r = tokio::time::timeout(limit, run) => match r {
                Ok(r) => r,
                Err(_) => Err(format!("benchmark did not finish within {limit:?}; aborted")),
            },
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        }
    })
}

async fn run_async(opts: &Options, plan: Plan) -> Result<()> {
    let started = Instant::now();
    let out = &opts.out;
    eprintln!(
        "grip-bench: target {:?} ({}), {} run, output in {}",
        opts.target,
        opts.proxy_bin.display(),
        if plan.short { "short" } else { "full" },
        out.display()
    );
    // Origin.
    let (origin, origin_port) = start_origin(out).await?;
    let origin_addr: SocketAddr = ([127, 0, 0, 1], origin_port).into();

    // Proxy under test.
    let target = Target::start(opts.target, &opts.proxy_bin, origin_port, out).await?;
    eprintln!(
        "proxy up: listen {}, control {}, pid {}",
        target.listen,
        target.control,
        target.pid()
    );

    // Workers.
    let mut workers = Vec::new();
    for i in 0..plan.workers {
        workers.push(LineChild::spawn(
            &format!("worker{i}"),
            &["worker".into(), "--id".into(), i.to_string()],
            &out.join(format!("worker{i}.log")),
        )?);
    }

    let mut ctx = Ctx::new(target, origin_addr, workers, plan.clone());
    // nginx and Nchan: the figures that apply, as with --only (no report).
    let only: Vec<Figure> = if opts.only.is_empty() && !opts.target.is_grip() {
        eprintln!(
            "note: a run against {:?} measures only the figures that apply and writes no report",
            opts.target
        );
        <Figure as clap::ValueEnum>::value_variants()
            .iter()
            .copied()
            .filter(|f| f.unsupported_by(opts.target).is_none())
            .collect()
    } else {
        opts.only.clone()
    };
    if !only.is_empty() {
        // Each figure prints its own progress line; nothing is written.
        let result = measure_only(&mut ctx, opts, &only).await;
        for w in ctx.workers.drain(..) {
            w.stop().await;
        }
        ctx.target.stop();
        origin.stop().await;
        return result;
    }
    let result = measure(&mut ctx, opts, started).await;

    // Stop everything by pid, whatever happened.
    for w in ctx.workers.drain(..) {
        w.stop().await;
    }
    ctx.target.stop();
    origin.stop().await;

    let results = result?;
    let md = crate::report::markdown(&results);
    println!("{md}");
    crate::report::write_all(out, &results, &md)?;
    eprintln!(
        "wrote {}, {} and {}",
        out.join("results.json").display(),
        out.join("report.md").display(),
        out.join("plot.svg").display()
    );
    match &results.bus.error {
        Some(e) => Err(format!(
            "figure 6 (delivery through the Redis bus) could not be measured: {e}"
        )),
        None => Ok(()),
    }
}

async fn measure_only(ctx: &mut Ctx, opts: &Options, only: &[Figure]) -> Result<()> {
    let mut only = only.to_vec();
    only.retain(|f| match f.unsupported_by(opts.target) {
        Some(why) => {
            eprintln!("{f:?}: skipped ({why})");
            false
        }
        None => true,
    });
    let only = &only[..];
    let me = std::process::id();
    let (busy0, total0) = machine_cpu_ticks();
    let ours0 = tree_cpu_ticks_with_reaped(me);
    ctx.warm_up().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss_kib = ctx.rss_kib();
    eprintln!("idle RSS {:.1} MiB", idle_rss_kib as f64 / 1024.0);
    let mut fanout = Vec::new();
    if only.contains(&Figure::Fanout) {
        for n in ctx.plan.fanout_n.clone() {
            fanout.push(ctx.fanout_round(n, "fan", idle_rss_kib).await?);
        }
    }
    let mut sustained = None;
    if only.contains(&Figure::Sustained) {
        sustained = Some(ctx.sustained().await?);
    }
    let streams = StreamPlan::of(&ctx.plan, only);
    if !streams.is_empty() {
        let f = ctx.stream_figures(opts, &streams).await?;
        eprint!(
            "{}",
            crate::report::stream_comparison(&f, &fanout, sustained.as_ref())
        );
    }
    if only.contains(&Figure::Passthrough) {
        ctx.passthrough().await?;
    }
    if only.contains(&Figure::Publish) {
        ctx.publish_api(1).await?;
        if opts.target == Kind::Nchan {
            eprintln!("publish (100 items/request): skipped (Nchan's publisher has no batches)");
        } else {
            ctx.publish_api(100).await?;
        }
    }
    if only.contains(&Figure::Remembered) {
        let f = ctx.remembered_figures(opts).await?;
        eprint!("{}", crate::report::remembered_lines(&f));
    }
    if only.contains(&Figure::Catchup) {
        let f = ctx.catchup_figures(opts).await?;
        eprint!("{}", crate::report::catchup_lines(&f));
    }
    let https = HttpsPlan::of(only);
    if !https.is_empty() {
        let f = ctx.https_figures(&https_instances(opts), https).await?;
        eprint!("{}", crate::report::https_lines(&f));
    }
    let mut bus_error = None;
    if only.contains(&Figure::Bus) {
        let f = ctx.bus_figures(opts).await;
        eprint!("{}", crate::report::bus_lines(&f));
        bus_error = f.error;
    }
    let (busy1, total1) = machine_cpu_ticks();
    let foreign = (busy1.saturating_sub(busy0))
        .saturating_sub(tree_cpu_ticks_with_reaped(me).saturating_sub(ours0));
    eprintln!(
        "other processes used {:.0}% of the machine's CPU meanwhile",
        100.0 * foreign as f64 / total1.saturating_sub(total0).max(1) as f64
    );
    match bus_error {
        Some(e) => Err(format!(
            "figure 6 (delivery through the Redis bus) could not be measured: {e}"
        )),
        None => Ok(()),
    }
}

async fn measure(ctx: &mut Ctx, opts: &Options, started: Instant) -> Result<Results> {
    let proxy_processes = process_names(&ctx.target.processes());
    let me = std::process::id();
    let (busy0, total0) = machine_cpu_ticks();
    let ours0 = tree_cpu_ticks_with_reaped(me);
    eprintln!("warming up");
    ctx.warm_up().await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss_kib = ctx.rss_kib();
    eprintln!("idle RSS {:.1} MiB", idle_rss_kib as f64 / 1024.0);

    let mut phases = vec![("idle".to_string(), idle_rss_kib)];
    let mut fanout = Vec::new();
    for n in ctx.plan.fanout_n.clone() {
        let round = ctx.fanout_round(n, "fan", idle_rss_kib).await?;
        phases.push((format!("held round N={n}"), round.rss_after_release_kib));
        fanout.push(round);
    }
    let sustained = ctx.sustained().await?;
    phases.push(("sustained".into(), ctx.rss_kib()));
    eprintln!("streams, on an instance of their own");
    let streams = ctx
        .stream_figures(opts, &StreamPlan::of(&ctx.plan, &[]))
        .await?;
    let passthrough = ctx.passthrough().await?;
    phases.push(("pass-through".into(), ctx.rss_kib()));
    let publish_single = ctx.publish_api(1).await?;
    phases.push(("publish 1/request".into(), ctx.rss_kib()));
    let publish_batched = ctx.publish_api(100).await?;
    phases.push(("publish 100/request".into(), ctx.rss_kib()));
    eprintln!("memory per remembered channel, on an instance of its own");
    let remembered = ctx.remembered_figures(opts).await?;
    eprintln!("HTTPS, on instances of their own (nginx with TLS beside grip-proxy)");
    let mut https = ctx
        .https_figures(&https_instances(opts), HttpsPlan::of(&[]))
        .await?;
    if let Some(m) = https.memory.as_mut() {
        m.main_plain_kib_per_held = fanout.iter().find(|f| f.n == m.n).map(|f| f.kib_per_held);
    }
    eprintln!("catch-up of streams behind, from channel history and from the origin");
    let catchup = ctx.catchup_figures(opts).await?;
    eprintln!("cross-instance delivery through the Redis bus");
    let bus = ctx.bus_figures(opts).await;
    // CPU used meanwhile by anything that is not this benchmark (other builds, tests, ...).
    let (busy1, total1) = machine_cpu_ticks();
    let ours = tree_cpu_ticks_with_reaped(me).saturating_sub(ours0);
    let foreign = busy1.saturating_sub(busy0).saturating_sub(ours);
    let foreign_cpu_percent = 100.0 * foreign as f64 / total1.saturating_sub(total0).max(1) as f64;
    if foreign_cpu_percent > 5.0 {
        ctx.notes.push(format!(
            "other processes used {foreign_cpu_percent:.0}% of the machine's CPU during the run: figures are less reliable"
        ));
    }
    Ok(Results {
        target: opts.target,
        proxy_bin: opts.proxy_bin.display().to_string(),
        plan: ctx.plan.clone(),
        proxy_processes,
        idle_rss_kib,
        fanout,
        sustained,
        passthrough,
        publish_single,
        publish_batched,
        bus,
        streams,
        remembered,
        https,
        catchup,
        rss_after_phase_kib: phases,
        foreign_cpu_percent,
        notes: ctx.notes.clone(),
        run_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The binaries and output dir of the HTTPS figures' instances.
fn https_instances(opts: &Options) -> HttpsInstances<'_> {
    HttpsInstances {
        bin: &opts.proxy_bin,
        nginx_bin: Kind::Nginx.default_bin(workspace_root()),
        out: &opts.out,
    }
}

pub(crate) fn process_names(pids: &[u32]) -> Vec<String> {
    pids.iter()
        .map(|p| {
            let name = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            format!("{} ({p})", name.trim())
        })
        .collect()
}

/// The workspace root (parent of this crate's directory).
pub(crate) fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
}

/// Starts the bench origin on a free loopback port (its log in `out`), once it says it is listening.
pub(crate) async fn start_origin(out: &std::path::Path) -> Result<(LineChild, u16)> {
    let port = free_port()?;
    let mut origin = LineChild::spawn(
        "origin",
        &["origin".into(), "--port".into(), port.to_string()],
        &out.join("origin.log"),
    )?;
    origin.recv(Duration::from_secs(10)).await?;
    Ok((origin, port))
}
