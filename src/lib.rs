//! grip-proxy: a GRIP long-poll reverse proxy. It forwards every request to an origin; when the origin answers
//! with GRIP instructions (`Grip-Hold: response`, `Grip-Channel`, ...), it parks the client until an item is
//! published to one of its channels on the control API, or the hold times out.
//!
//! # Layout
//! In dependency order: each module uses only those after it (docs/architecture.md has the map, and
//! `scripts/check-layers` checks it).
//! - `app`: binds the listeners, builds the shared state, runs and stops everything.
//! - [`cli`]: the binary's subcommands besides running the proxy (`grip-proxy publish`).
//! - `reload`: live reload (SIGHUP) of routes and the other reloadable settings.
//! - `runtimes`: per-core mode: client connections served by one current-thread runtime per thread.
//! - `control`: the control API (publish, recover, health, readiness, metrics, channels) and its server.
//! - `proxy`: the request phases (route, prepare, forward, inspect, park, respond).
//! - `metrics`: Prometheus counters and histograms (atomics on the hot path), encoded at scrape time.
//! - `error`: `ProxyError`, every way a proxied request fails, and its answer.
//! - [`front`]: the client-facing HTTP/1.1 server (our own: a parked request keeps no buffers).
//! - `origin`: the HTTP/1.1 client toward origins (pooled keep-alive connections, run in the caller's task).
//! - `routes`: (host, path prefix) to origin and `Grip-Sig` signer.
//! - `bus`: where publishes go: this process's registry (memory), or Redis shared by every instance.
//! - `hold`: the registry of parked clients and last ids per channel.
//! - [`config`]: the TOML file and flags into a validated [`Config`], one section per file.
//! - `item`: publish items, validated from their JSON form.
//! - `grip`: GRIP instructions (headers and instruct bodies), `Grip-Sig`, held response parts.
//! - `h1`: the HTTP/1.1 codec both roles use (heads, one framing type, bodies, encoding, socket IO).
//! - `jwt`: JWT keys shared by publish credentials and `Grip-Sig`.
//! - `secret`, `accept`, `body`: keys from the environment or files, accepting connections, the body type.
//!
//! # Errors
//! Each module has its own `thiserror` enum; every failure on the request path becomes a response in
//! `ProxyError::into_response` and is logged once, in `proxy::serve`.

#![warn(missing_docs)]

mod accept;
mod app;
mod body;
mod bus;
pub mod cli;
pub mod config;
mod control;
mod error;
pub mod front;
mod grip;
mod h1;
mod hold;
mod item;
mod jwt;
mod limits;
mod metrics;
mod origin;
mod proxy;
mod reload;
mod routes;
mod runtimes;
mod secret;
pub mod tls;

pub use app::App;
pub use bus::Status as BusStatus;
pub use config::{Config, Overrides};
pub use grip::sig::verify as verify_grip_sig;
pub use hold::Registry;
