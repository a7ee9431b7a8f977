//! Configuration: `RawConfig` mirrors the TOML file, `Config` is the typed, validated form everything else uses.
//! Validation binds nothing; each error names the key and the reason.
//!
//! Each section has a file of its own (`proxy`, `control` with `[control.auth]`, `hold`, `publish`, `origin`,
//! `last_ids`, `history`, `shutdown`, `bus`, `metrics`, `tls`, `limits`, `routes`) that owns its raw form (serde, defaults), its typed form,
//! its validation and its rule tests; the checks they share are in `check`. This file puts them together.
//! Keys are built here, once (route signers, the upstream `Grip-Sig` verifier, control API JWT keys), and the
//! typed form carries them: nothing after validation parses a key again.

mod bus;
mod check;
mod conditional;
mod control;
mod history;
mod hold;
mod last_ids;
mod limits;
mod metrics;
mod origin;
mod proxy;
mod publish;
mod routes;
mod shutdown;
mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use bus::{BusConfig, RawBus, RedisConfig, Startup, Transport};
pub use conditional::{ChannelTemplate, ConditionalConfig, RawConditional, MIN_RECHECK};
pub use control::{AuthConfig, RawAuth, RawControl};
pub use history::{HistoryConfig, RawHistory, MAX_HISTORY_ITEMS};
pub use hold::{HoldConfig, RawHold};
pub use last_ids::{LastIdsConfig, RawLastIds};
pub use limits::{Cidr, LimitsConfig, Rate, RawLimits};
pub use metrics::RawMetrics;
pub use origin::{OriginConfig, RawOrigin};
pub use proxy::{ProxyLimits, RawProxy, RuntimeMode, UpstreamConfig, MAX_THREADS, RUNTIME_ENV};
pub use publish::{PublishConfig, RawPublish};
pub use routes::{RawRoute, RouteConfig, DEFAULT_SIG_KEY};
pub use shutdown::RawShutdown;
pub use tls::{RawSni, RawTls, TlsConfig};

/// A config that cannot be used: the key path and the reason, printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or has unknown keys or wrongly typed values.
    #[error("config file {path}: {message}")]
    Syntax {
        /// The path given (or `<string>`).
        path: String,
        /// toml's message, with the line and column.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("{key}: {reason}")]
    Invalid {
        /// The dotted key path, e.g. `routes[1].origin`.
        key: String,
        /// What is wrong with the value.
        reason: String,
    },
}

// === Raw form: what the TOML file says ===

/// The config file as written. Every section and key is optional; defaults match `config/grip-proxy.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[proxy]`
    pub proxy: RawProxy,
    /// `[control]`
    pub control: RawControl,
    /// `[hold]`
    pub hold: RawHold,
    /// `[publish]`
    pub publish: RawPublish,
    /// `[origin]`
    pub origin: RawOrigin,
    /// `[last_ids]`
    pub last_ids: RawLastIds,
    /// `[history]`
    pub history: RawHistory,
    /// `[shutdown]`
    pub shutdown: RawShutdown,
    /// `[bus]`
    pub bus: RawBus,
    /// `[metrics]`
    pub metrics: RawMetrics,
    /// `[tls]`
    pub tls: RawTls,
    /// `[limits]`
    pub limits: RawLimits,
    /// `[[routes]]`
    pub routes: Vec<RawRoute>,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            proxy: RawProxy::default(),
            control: RawControl::default(),
            hold: RawHold::default(),
            publish: RawPublish::default(),
            origin: RawOrigin::default(),
            last_ids: RawLastIds::default(),
            history: RawHistory::default(),
            shutdown: RawShutdown::default(),
            bus: RawBus::default(),
            metrics: RawMetrics::default(),
            tls: RawTls::default(),
            limits: RawLimits::default(),
            routes: vec![RawRoute::default()],
        }
    }
}

/// Values given on the command line, applied over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--origin URL`: route everything to this origin.
    pub origin: Option<String>,
    /// `--listen ADDR`
    pub listen: Option<String>,
    /// `--control-listen ADDR`
    pub control_listen: Option<String>,
    /// `--bus URL`: a Redis URL, or `memory`.
    pub bus: Option<String>,
}

impl RawConfig {
    /// Applies command-line values.
    pub fn apply(&mut self, o: &Overrides) {
        if let Some(origin) = &o.origin {
            self.routes = vec![RawRoute {
                origin: origin.clone(),
                ..RawRoute::default()
            }];
        }
        if let Some(l) = &o.listen {
            self.proxy.listen = l.clone();
        }
        if let Some(l) = &o.control_listen {
            self.control.listen = l.clone();
        }
        if let Some(url) = &o.bus {
            self.bus.url = Some(url.clone());
        }
    }
}

// === Typed form ===

/// The validated configuration. Compared by value on reload (secrets included); `Debug` never shows a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Client-facing listener.
    pub listen: SocketAddr,
    /// How client connections are served: one shared runtime, or one runtime per thread.
    pub runtime: RuntimeMode,
    /// Threads serving clients (the shared runtime's workers, or the per-core runtimes).
    pub threads: usize,
    /// Control API listener.
    pub control_listen: SocketAddr,
    /// Add `X-Forwarded-For`.
    pub x_forwarded_for: bool,
    /// Add `X-Forwarded-Proto`.
    pub x_forwarded_proto: bool,
    /// Request bodies up to this size are read whole before the origin is contacted.
    pub request_buffer_size: usize,
    /// Largest publish body.
    pub control_max_body: usize,
    /// Publish credentials (none: open).
    pub control_auth: AuthConfig,
    /// The control API's certificate, when it is served over HTTPS.
    pub control_tls: Option<crate::tls::server::Certificates>,
    /// Client listener bounds.
    pub limits: ProxyLimits,
    /// A trusted GRIP proxy in front, if any.
    pub upstream: Option<UpstreamConfig>,
    /// Hold settings.
    pub hold: HoldConfig,
    /// Ordering and duplicate detection.
    pub publish: PublishConfig,
    /// Origin client settings.
    pub origin: OriginConfig,
    /// Last-id memory bounds.
    pub last_ids: LastIdsConfig,
    /// Per-channel history (`[history]`).
    pub history: HistoryConfig,
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// The publish bus (memory, or Redis).
    pub bus: BusConfig,
    /// A listener of its own for `/metrics`, `/health` and `/ready`, if configured.
    pub metrics_listen: Option<SocketAddr>,
    /// The HTTPS listener for clients, if configured.
    pub tls: Option<TlsConfig>,
    /// `[limits]`: per-client and per-channel limits (fair use).
    pub fair_use: LimitsConfig,
    /// Routes, in file order (the table sorts them by specificity).
    pub routes: Vec<RouteConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config::try_from(RawConfig::default()).expect("the built-in defaults are valid")
    }
}

impl Config {
    /// Reads, parses and validates a config file, with command-line overrides applied.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut raw = match path {
            None => RawConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                RawConfig::from_toml(&text, &path.display().to_string())?
            }
        };
        raw.apply(overrides);
        Config::try_from(raw)
    }

    /// Parses and validates TOML text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Config::try_from(RawConfig::from_toml(text, "<string>")?)
    }

    /// Risky but valid settings, for a warning at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.listen.ip().is_loopback()
            && self
                .routes
                .iter()
                .any(|r| r.signer.has_key(DEFAULT_SIG_KEY.as_bytes()))
        {
            out.push(format!(
                "routes sign Grip-Sig with the default key {DEFAULT_SIG_KEY:?} while the proxy listens on {}: \
                 set routes[].sig_key so that origins can trust the signature",
                self.listen
            ));
        }
        if !self.control_listen.ip().is_loopback() {
            out.push(format!(
                "the control API listens on {}, not loopback: anyone who reaches it can publish",
                self.control_listen
            ));
        }
        if !self.fair_use.trusted_proxies.is_empty() && !self.fair_use.per_client() {
            out.push(
                "limits.trusted_proxies is set but no per-client limit is (limits.client_max_holds, \
                 limits.client_requests_per_sec): it has no effect"
                    .to_owned(),
            );
        }
        routes::warnings(&self.routes, &mut out);
        out
    }
}

impl RawConfig {
    /// Parses TOML text; unknown keys and wrong types are errors with line and column. The message never quotes
    /// the file (toml's own display shows the offending line, which may hold a key): it is printed and logged.
    pub fn from_toml(text: &str, path: &str) -> Result<RawConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.chars().rev().take_while(|c| *c != '\n').count() + 1;
                format!("line {line}, column {column}: ")
            });
            ConfigError::Syntax {
                path: path.to_owned(),
                message: format!(
                    "{}{}",
                    at.unwrap_or_default(),
                    e.message().trim().replace('\n', " ")
                ),
            }
        })
    }
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    /// Validates section by section, in file order; the first error is returned.
    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        let proxy = proxy::validate(&raw.proxy)?;
        let control = control::validate(&raw.control, proxy.listen)?;
        let hold = hold::validate(&raw.hold)?;
        let origin = origin::validate(&raw.origin)?;
        let last_ids = last_ids::validate(&raw.last_ids)?;
        let history = history::validate(&raw.history)?;
        let shutdown_grace = shutdown::validate(&raw.shutdown)?;
        let publish = publish::validate(&raw.publish)?;
        let bus = bus::validate(&raw.bus)?;
        let metrics_listen = metrics::validate(&raw.metrics, proxy.listen, control.listen)?;
        let mut taken = vec![
            ("proxy.listen", proxy.listen),
            ("control.listen", control.listen),
        ];
        taken.extend(metrics_listen.map(|m| ("metrics.listen", m)));
        let tls = tls::validate(&raw.tls, &taken)?;
        let fair_use = limits::validate(&raw.limits)?;
        let routes = routes::validate(&raw.routes)?;
        Ok(Config {
            listen: proxy.listen,
            runtime: proxy.runtime,
            threads: proxy.threads,
            control_listen: control.listen,
            x_forwarded_for: proxy.x_forwarded_for,
            x_forwarded_proto: proxy.x_forwarded_proto,
            request_buffer_size: proxy.request_buffer_size,
            control_max_body: control.max_body,
            control_auth: control.auth,
            control_tls: control.tls,
            limits: proxy.limits,
            upstream: proxy.upstream,
            hold,
            publish,
            origin,
            last_ids,
            history,
            shutdown_grace,
            bus,
            metrics_listen,
            tls,
            fair_use,
            routes,
        })
    }
}

/// The message `toml` is rejected with (for the rule tests of each section).
#[cfg(test)]
fn rule_error(toml: &str) -> String {
    Config::from_toml_str(toml).unwrap_err().to_string()
}

#[cfg(test)]
mod tests {
    use super::rule_error as err;
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::default();
        assert_eq!(c.listen.to_string(), "0.0.0.0:7999");
        assert_eq!(c.control_listen.to_string(), "127.0.0.1:5561");
        assert_eq!(c.hold.default_timeout, Duration::from_secs(55));
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].authority.as_str(), "127.0.0.1:8080");
    }

    #[test]
    fn shipped_default_file_matches_builtin_defaults() {
        let text = include_str!("../../config/grip-proxy.toml");
        let file = Config::from_toml_str(text).unwrap();
        assert_eq!(format!("{file:?}"), format!("{:?}", Config::default()));
        assert_eq!(file, Config::default(), "secrets included");
    }

    #[test]
    fn syntax_errors_keep_position_and_unknown_keys_fail() {
        let e = err("[proxy]\nlisten = ");
        assert!(e.contains("line 2"), "{e}");
        let e = err("[control.auth]\nbearer_key = \"s3cret-value\nx = 1");
        assert!(
            e.starts_with("config file <string>: line 2, column "),
            "{e}"
        );
        assert!(
            !e.contains("s3cret"),
            "the file's text is never quoted: {e}"
        );
        let e = err("[proxy]\nlisen = \"1.2.3.4:5\"");
        assert!(e.contains("unknown field `lisen`"), "{e}");
    }

    #[test]
    fn overrides() {
        let mut raw = RawConfig::default();
        raw.apply(&Overrides {
            origin: Some("http://127.0.0.1:9000".into()),
            listen: Some("127.0.0.1:1".into()),
            control_listen: None,
            bus: None,
        });
        let c = Config::try_from(raw).unwrap();
        assert_eq!(c.routes[0].authority.as_str(), "127.0.0.1:9000");
        assert_eq!(c.listen.to_string(), "127.0.0.1:1");
    }
}
