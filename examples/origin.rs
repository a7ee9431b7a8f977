//! The example origin on its own (no proxy in this process), for docker-compose.yml and for trying several
//! grip-proxy instances: `/value`, `/events` and the page at `/` as in the `demo` example, publishing each change
//! to one control API.
//!
//! Run: `cargo run --example origin -- --listen 127.0.0.1:8080 --publish http://127.0.0.1:5561/publish/`.
//! With instances sharing a Redis bus, publishing to one of them reaches the clients held on all (docs/scaling.md).

#[path = "value_origin/mod.rs"]
mod value_origin;

use std::net::SocketAddr;

use clap::Parser;
use tokio::net::TcpListener;

/// The example origin of grip-proxy's README, on its own.
#[derive(Parser, Debug)]
struct Args {
    /// Where the origin listens.
    #[arg(long, default_value = "127.0.0.1:8080", env = "ORIGIN_LISTEN")]
    listen: SocketAddr,
    /// The grip-proxy control API URL that changes are published to.
    #[arg(
        long,
        default_value = "http://127.0.0.1:5561/publish/",
        env = "ORIGIN_PUBLISH"
    )]
    publish: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    println!(
        "example origin on http://{}, publishing to {}",
        args.listen, args.publish
    );
    tokio::select! {
        _ = value_origin::serve(listener, args.publish) => {}
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
