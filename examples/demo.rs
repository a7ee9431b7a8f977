//! A complete long-poll setup in one process, to try grip-proxy with curl: a small example origin on
//! 127.0.0.1:8080 that speaks GRIP, and grip-proxy in front of it on 127.0.0.1:7999 (control API 127.0.0.1:5561).
//!
//! Run: `cargo run --release --example demo`, then (see README.md):
//! - `curl -i http://127.0.0.1:7999/value` answers at once with the value and its ETag;
//! - `curl -i -H 'If-None-Match: "1"' http://127.0.0.1:7999/value` waits (held by the proxy) ...
//! - ... until `curl -X POST -d 'new value' http://127.0.0.1:7999/value` changes the value: the origin publishes
//!   it, and every waiting client gets it at once; after 30 s without a change a waiting client gets `304`;
//! - http://127.0.0.1:7999/ in a browser shows each change as it arrives, over Server-Sent Events (a stream hold)
//!   and by long-polling side by side, with a form to change the value.
//!
//! The origin (examples/value_origin, also run on its own by the `origin` example) is an ordinary HTTP server:
//! it only adds GRIP headers to its "nothing new" answer, and publishes to the control API when its data changes.

#[path = "value_origin/mod.rs"]
mod value_origin;

use std::net::SocketAddr;

use tokio::net::TcpListener;

use grip_proxy::config::{Config, Overrides};
use grip_proxy::App;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let origin_addr: SocketAddr = "127.0.0.1:8080".parse()?;
    let listener = TcpListener::bind(origin_addr).await?;
    let config = Config::load(
        None,
        &Overrides {
            origin: Some(format!("http://{origin_addr}")),
            listen: Some("127.0.0.1:7999".into()),
            control_listen: Some("127.0.0.1:5561".into()),
            ..Overrides::default()
        },
    )?;
    let app = App::start(config).await?;
    let control = format!("http://{}/publish/", app.control_addr());
    println!(
        "example origin on http://{origin_addr}, grip-proxy on http://{}",
        app.proxy_addr()
    );
    println!(
        "try: curl -i -H 'If-None-Match: \"1\"' http://{}/value",
        app.proxy_addr()
    );
    println!(
        "or open http://{}/ in a browser: the value's updates over SSE and by long-polling",
        app.proxy_addr()
    );

    let origin = tokio::spawn(value_origin::serve(listener, control));
    tokio::signal::ctrl_c().await?;
    origin.abort();
    app.shutdown().await;
    Ok(())
}
