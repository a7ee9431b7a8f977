//! The example origin on its own (no proxy in this process), for docker-compose.yml, the Kubernetes examples and
//! for trying several grip-proxy instances: `/value`, `/events` and the page at `/` as in the `demo` example,
//! publishing each change to one control API. With `--no-grip`, an API that knows nothing of GRIP instead.
//!
//! Run: `cargo run --example origin -- --listen 127.0.0.1:8080 --publish http://127.0.0.1:5561/publish/`.
//! With instances sharing a Redis bus, publishing to one of them reaches the clients held on all (docs/scaling.md).
//!
//! `cargo run --example origin -- --no-grip` (or `ORIGIN_NO_GRIP=true`): `GET /value` answers `200` with an
//! `ETag`, or `304 Not Modified` when `If-None-Match` names the current version, never with a `Grip-*` header,
//! for a route with `[routes.conditional]` (config/unmodified-api.toml). `POST /value` stores the new value and
//! publishes nothing, unless `--publish URL` (or `ORIGIN_PUBLISH`) is given too: then it publishes the new value
//! to channel `/value`.

#[path = "value_origin/mod.rs"]
mod value_origin;

use std::net::SocketAddr;

use clap::builder::BoolishValueParser;
use clap::Parser;
use tokio::net::TcpListener;

/// The control API URL that GRIP mode publishes to when `--publish` is not given.
const DEFAULT_PUBLISH: &str = "http://127.0.0.1:5561/publish/";

/// The example origin of grip-proxy's README, on its own.
#[derive(Parser, Debug)]
struct Args {
    /// Where the origin listens.
    #[arg(long, default_value = "127.0.0.1:8080", env = "ORIGIN_LISTEN")]
    listen: SocketAddr,
    /// The grip-proxy control API URL that changes are published to. GRIP mode: default
    /// http://127.0.0.1:5561/publish/. With --no-grip: changes are published (to channel /value) only if this
    /// is given.
    #[arg(long, env = "ORIGIN_PUBLISH", value_name = "URL")]
    publish: Option<String>,
    /// Speak no GRIP: plain ETag / 304 Not Modified answers on /value, for a grip-proxy route with
    /// [routes.conditional]; no /events, no page.
    #[arg(long, env = "ORIGIN_NO_GRIP", value_parser = BoolishValueParser::new())]
    no_grip: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    if args.no_grip {
        match &args.publish {
            Some(publish) => println!(
                "example origin without GRIP on http://{}, publishing to {publish}",
                args.listen
            ),
            None => println!(
                "example origin without GRIP on http://{}, publishing nothing",
                args.listen
            ),
        }
        tokio::select! {
            _ = value_origin::serve_no_grip(listener, args.publish) => {}
            r = shutdown_signal() => r?,
        }
        return Ok(());
    }
    let publish = args.publish.unwrap_or_else(|| DEFAULT_PUBLISH.to_owned());
    println!(
        "example origin on http://{}, publishing to {publish}",
        args.listen
    );
    tokio::select! {
        _ = value_origin::serve(listener, publish) => {}
        r = shutdown_signal() => r?,
    }
    Ok(())
}

/// SIGTERM (docker stop) or SIGINT.
async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}
