//! grip-bench: benchmark of grip-proxy (or Pushpin, nginx, Nchan) for held-client memory, fan-out
//! latency, sustained re-poll deliveries, pass-through overhead and publish API throughput; with
//! `--compare`, grip-proxy and every installed peer in one run, side by side.

mod bus;
mod children;
mod compare;
mod http;
mod origin;
mod plan;
mod procfs;
mod redis;
mod report;
mod run;
mod scenarios;
mod stats;
mod sys;
mod target;
mod tls;
mod worker;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "grip-bench",
    about = "Benchmark a GRIP long-poll proxy (grip-proxy or Pushpin; nginx and Nchan to compare; --compare: all of them in one run)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Sub>,
    /// Small N and short windows (for CI).
    #[arg(long)]
    short: bool,
    /// Proxy to measure.
    #[arg(long, value_enum, default_value = "grip-proxy")]
    target: target::Kind,
    /// Measure grip-proxy, then the same figures against each installed peer, one after the other
    /// in this run: nginx (pass-through, its windows alternating with grip-proxy's), Nchan
    /// (memory per held client, fan-out, sustained, publish 1 item/request) and Pushpin (throttle
    /// lifted); print the comparison table and write it to report.md, every number to
    /// results.json. A peer not installed is reported as such. --proxy-bin is grip-proxy's
    /// binary; with --short, the short mode's sizes. About 5 minutes.
    #[arg(long, conflicts_with_all = ["target", "only"])]
    compare: bool,
    /// Proxy binary (default: release/grip-proxy under $CARGO_TARGET_DIR or the workspace's
    /// target dir, /usr/bin/pushpin for --target pushpin, /usr/sbin/nginx for --target nginx and
    /// nchan).
    #[arg(long)]
    proxy_bin: Option<PathBuf>,
    /// Output directory for results.json, report.md, plot.svg and logs (default: target/bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure only these figures (comma-separated: fanout, sustained, passthrough, publish,
    /// stream-memory, stream-fanout, stream-sustained, remembered, https-memory, https-passthrough,
    /// handshakes, catchup, bus) and print them,
    /// without writing the report: for quick before/after comparisons while working on one path.
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<run::Figure>,
}

#[derive(Subcommand)]
enum Sub {
    /// Internal: the origin server.
    Origin {
        #[arg(long)]
        port: u16,
    },
    /// Internal: a client worker driven over stdin/stdout.
    Worker {
        #[arg(long, default_value_t = 0)]
        id: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Some(Sub::Origin { port }) => origin::run(port).map_err(|e| format!("origin: {e}")),
        Some(Sub::Worker { id }) => worker::run(id).map_err(|e| format!("worker: {e}")),
        None => {
            let root = run::workspace_root();
            let proxy_bin = cli
                .proxy_bin
                .unwrap_or_else(|| cli.target.default_bin(root));
            run::run(run::Options {
                short: cli.short,
                target: cli.target,
                proxy_bin,
                out: cli.out.unwrap_or_else(|| root.join("target/bench")),
                only: cli.only,
                compare: cli.compare,
            })
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grip-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}
