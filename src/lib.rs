//! grip-proxy: a GRIP long-poll reverse proxy. It forwards every request to an origin; when the origin answers
//! with GRIP instructions (`Grip-Hold: response`, `Grip-Channel`, ...), it parks the client until an item is
//! published to one of its channels on the control API, or the hold times out.
//!
//! # Layout
//! - [`app`]: binds the listeners, builds shared state, runs and stops everything.
//! - [`front`]: the client-facing HTTP/1.1 server (our own: a parked request keeps no buffers).
//! - [`origin`]: the HTTP/1.1 client toward origins (pooled keep-alive connections, run in the caller's task).
//! - `h1`: the HTTP/1.1 codec both use (heads, one framing type, body decoding, encoding, socket IO, hop-by-hop).
//! - [`server`]: the control API's accept loop (hyper) and its graceful drain.
//! - [`config`]: TOML file and CLI overrides into a validated [`config::Config`], one file per section; it
//!   builds the keys (route signers, the upstream verifier, control API JWT keys) once.
//! - [`routes`]: (host, path prefix) to origin and `Grip-Sig` signer.
//! - [`proxy`]: the request phases (route, prepare, forward, inspect, park, respond); [`proxy::headers`] rewrites
//!   headers, [`proxy::forward`] talks to origins.
//! - [`grip`]: parsing GRIP instructions (headers and instruct bodies), `Grip-Sig`, held response parts.
//! - [`hold`]: the registry of parked clients and last ids per channel.
//! - [`publish`]: the control API and publish item parsing.
//! - [`bus`]: where publishes go: this process's registry (memory), or Redis pub/sub shared by every instance.
//! - [`metrics`]: Prometheus counters and histograms (atomics on the hot path), encoded at scrape time.
//! - [`ops`]: health, readiness, `/metrics` and channel introspection on the control listener.
//! - [`reload`]: live reload (SIGHUP) of routes and the other reloadable settings.
//! - [`cli`]: the binary's subcommands other than running the proxy (`grip-proxy publish`).
//! - [`secret`]: keys given literally, by environment variable or file.
//! - [`jwt`]: JWT signing and checking keys from those secrets (HS256, or PEM for RS256/ES256).
//! - [`error`], [`body`]: the proxy error type and the body type.
//!
//! # Errors
//! Each module has its own `thiserror` enum; every failure on the request path becomes a response in
//! [`error::ProxyError::into_response`] and is logged once, in [`proxy::serve`].

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
mod metrics;
mod origin;
mod proxy;
mod reload;
mod routes;
mod secret;

pub use app::App;
pub use bus::Status as BusStatus;
pub use config::{Config, Overrides};
pub use grip::sig::verify as verify_grip_sig;
pub use hold::Registry;
