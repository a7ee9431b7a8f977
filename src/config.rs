//! Configuration: `RawConfig` mirrors the TOML file, `Config` is the typed, validated form everything else uses.
//! Validation binds nothing; each error names the key and the reason.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::uri::{Authority, Scheme, Uri};
use serde::Deserialize;

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

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
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
    /// `[shutdown]`
    pub shutdown: RawShutdown,
    /// `[bus]`
    pub bus: crate::bus::config::RawBus,
    /// `[metrics]`
    pub metrics: RawMetrics,
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
            shutdown: RawShutdown::default(),
            bus: crate::bus::config::RawBus::default(),
            metrics: RawMetrics::default(),
            routes: vec![RawRoute::default()],
        }
    }
}

/// `[metrics]`: `GET /metrics` is always on the control listener; this adds a listener of its own.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Address of a listener serving only `/metrics`, `/health` and `/ready` (none by default).
    pub listen: Option<String>,
}

/// `[proxy]`: the client-facing listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProxy {
    /// Address for clients. Pushpin's default port.
    pub listen: String,
    /// Append the client's address to `X-Forwarded-For`.
    pub x_forwarded_for: bool,
    /// Set `X-Forwarded-Proto` to the scheme the client used.
    pub x_forwarded_proto: bool,
    /// Largest request head (request line and headers), in bytes; larger is answered 431.
    pub max_request_head: usize,
    /// Largest request body, in bytes; larger is answered 413.
    pub max_request_body: u64,
    /// Most clients held at once; beyond it a new hold is answered 503 with `Retry-After`.
    pub max_held: usize,
    /// Longest wait for the next bytes of a request body, in seconds; then the client gets 408.
    pub body_read_timeout_secs: f64,
    /// Longest wait for a client to take more of its response, in seconds; then the connection is closed.
    pub write_timeout_secs: f64,
    /// Request bodies up to this many bytes are read whole before the origin is contacted.
    pub request_buffer_size: usize,
    /// Seconds a trusted upstream's `Grip-Sig` is still accepted after its `exp` (and before its `nbf`).
    pub upstream_sig_leeway_secs: u64,
    /// Key (HS256 secret) of a trusted GRIP proxy in front: requests with a valid `Grip-Sig` under it keep their
    /// `Grip-*` headers. Secret forms: literal, `env:NAME`, `file:PATH`, then optionally `base64:...`.
    pub upstream_sig_key: Option<String>,
    /// Or the PEM public key (ES256 or RS256) of that proxy, as a secret spec (usually `file:PATH`).
    pub upstream_sig_public_key: Option<String>,
}

impl Default for RawProxy {
    fn default() -> Self {
        RawProxy {
            listen: "0.0.0.0:7999".into(),
            x_forwarded_for: true,
            x_forwarded_proto: true,
            max_request_head: 64 * 1024,
            max_request_body: 10_000_000,
            max_held: 100_000,
            body_read_timeout_secs: 30.0,
            write_timeout_secs: 60.0,
            request_buffer_size: 65_536,
            upstream_sig_leeway_secs: 5,
            upstream_sig_key: None,
            upstream_sig_public_key: None,
        }
    }
}

/// `[control]`: the publish API listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawControl {
    /// Address of the control API. Loopback by default: anyone who reaches it can publish.
    pub listen: String,
    /// Largest publish body accepted, in bytes (Pushpin's limit).
    pub max_body: usize,
    /// `[control.auth]`: credentials publishers must present (none by default).
    pub auth: RawAuth,
}

impl Default for RawControl {
    fn default() -> Self {
        RawControl {
            listen: "127.0.0.1:5561".into(),
            max_body: 1_000_000,
            auth: RawAuth::default(),
        }
    }
}

/// `[control.auth]`: any configured method is accepted; with none, the control API is open.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// A static key: `Authorization: Bearer <key>`. Secret spec.
    pub bearer_key: Option<String>,
    /// HS256 secret for `Authorization: Bearer <JWT>`. Secret spec.
    pub jwt_key: Option<String>,
    /// PEM public key (ES256 or RS256) for `Bearer <JWT>`. Secret spec, usually `file:PATH`.
    pub jwt_public_key: Option<String>,
    /// The `iss` a JWT must carry (required with a JWT key).
    pub jwt_iss: Option<String>,
    /// Seconds a JWT is still accepted after its `exp` (and before its `nbf`): clock skew between hosts.
    pub jwt_leeway_secs: u64,
    /// `Authorization: Basic` user.
    pub basic_user: Option<String>,
    /// `Authorization: Basic` password. Secret spec.
    pub basic_password: Option<String>,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            bearer_key: None,
            jwt_key: None,
            jwt_public_key: None,
            jwt_iss: None,
            jwt_leeway_secs: 5,
            basic_user: None,
            basic_password: None,
        }
    }
}

/// `[hold]`: response holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHold {
    /// Timeout when the origin gives no `Grip-Timeout` (Pushpin: 55 s, under common 60 s idle cut-offs).
    pub default_timeout_secs: u64,
    /// Smaller `Grip-Timeout` values are raised to this (Pushpin: 5 s).
    pub min_timeout_secs: u64,
    /// Larger `Grip-Timeout` values are lowered to this.
    pub max_timeout_secs: u64,
    /// Largest origin body that may be held, in bytes (Pushpin: 100,000).
    pub max_body: usize,
    /// Most channels one hold may name (Pushpin: 20).
    pub max_channels: usize,
}

impl Default for RawHold {
    fn default() -> Self {
        RawHold {
            default_timeout_secs: 55,
            min_timeout_secs: 5,
            max_timeout_secs: 3600,
            max_body: 100_000,
            max_channels: crate::grip::DEFAULT_MAX_CHANNELS,
        }
    }
}

/// `[publish]`: ordering and duplicate detection of published items.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPublish {
    /// An item whose `prev-id` is not the channel's last id waits this long for its predecessor (Pushpin: 5 s).
    pub ordering_wait_secs: f64,
    /// Most items waiting per channel; one more sends the oldest out anyway (Pushpin: 100).
    pub ordering_max_pending: usize,
    /// An item whose (channel, id) was published this recently is dropped as a duplicate.
    pub duplicate_window_secs: f64,
}

impl Default for RawPublish {
    fn default() -> Self {
        RawPublish {
            ordering_wait_secs: 5.0,
            ordering_max_pending: 100,
            duplicate_window_secs: 60.0,
        }
    }
}

/// `[origin]`: the client side toward origins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawOrigin {
    /// Time allowed to connect to an origin.
    pub connect_timeout_secs: f64,
    /// Time allowed for an origin to send its response head (and a held body) after the request was sent.
    pub response_timeout_secs: f64,
    /// How long an idle pooled origin connection is kept.
    pub pool_idle_timeout_secs: f64,
    /// Longest wait for the next bytes of a response body, in seconds.
    pub body_read_timeout_secs: f64,
    /// Idle pooled connections kept per origin.
    pub pool_max_idle_per_host: usize,
    /// A request body up to this size is kept so the request can be re-sent on a prev-id mismatch.
    pub max_replay_body: usize,
    /// Requests waiting for an origin's response head at once (more wait their turn): bounds the origin
    /// connections a burst of clients opens.
    pub max_concurrent_requests: usize,
}

impl Default for RawOrigin {
    fn default() -> Self {
        RawOrigin {
            connect_timeout_secs: 5.0,
            response_timeout_secs: 30.0,
            pool_idle_timeout_secs: 90.0,
            body_read_timeout_secs: 60.0,
            pool_max_idle_per_host: 256,
            max_replay_body: 65_536,
            max_concurrent_requests: 512,
        }
    }
}

/// `[last_ids]`: the per-channel memory of the last published id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLastIds {
    /// Most channels whose last id is remembered (Pushpin: 1,000,000); the least recently published go first.
    pub capacity: usize,
    /// A last id not published to for this long is forgotten.
    pub ttl_secs: u64,
}

impl Default for RawLastIds {
    fn default() -> Self {
        RawLastIds {
            capacity: 1_000_000,
            ttl_secs: 3600,
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawShutdown {
    /// After a stop signal, in-flight requests get this long to finish.
    pub grace_secs: f64,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown { grace_secs: 10.0 }
    }
}

/// `[[routes]]`: which origin serves which host and path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRoute {
    /// Host to match, without port (`*` matches any).
    pub host: String,
    /// Path prefix to match (empty matches any).
    pub path_prefix: String,
    /// `http://host:port` of the origin.
    pub origin: String,
    /// `iss` claim of the `Grip-Sig` sent to this origin.
    pub sig_iss: String,
    /// Key of the `Grip-Sig`: the HS256 secret (the client libraries' local default is `changeme`), or for
    /// RS256/ES256 the PEM private key. Secret spec: literal, `env:NAME`, `file:PATH`, then optionally `base64:`.
    pub sig_key: String,
    /// `HS256` (default), `RS256` or `ES256`.
    pub sig_alg: String,
}

impl Default for RawRoute {
    fn default() -> Self {
        RawRoute {
            host: "*".into(),
            path_prefix: String::new(),
            origin: "http://127.0.0.1:8080".into(),
            sig_iss: "pushpin".into(),
            sig_key: DEFAULT_SIG_KEY.into(),
            sig_alg: "HS256".into(),
        }
    }
}

/// The `Grip-Sig` key client libraries assume for a local proxy.
pub const DEFAULT_SIG_KEY: &str = "changeme";

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

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client-facing listener.
    pub listen: SocketAddr,
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
    /// Grace period for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
    /// The publish bus (memory, or Redis).
    pub bus: crate::bus::config::BusConfig,
    /// A listener of its own for `/metrics`, `/health` and `/ready`, if configured.
    pub metrics_listen: Option<SocketAddr>,
    /// Routes, in file order (the table sorts them by specificity).
    pub routes: Vec<RouteConfig>,
}

/// Validated `[control.auth]`, secrets resolved.
#[derive(Clone, Default)]
pub struct AuthConfig {
    /// Static bearer key.
    pub bearer_key: Option<Vec<u8>>,
    /// HS256 JWT secret.
    pub jwt_key: Option<Vec<u8>>,
    /// PEM public key for ES256/RS256 JWTs.
    pub jwt_public_key: Option<Vec<u8>>,
    /// Required JWT issuer.
    pub jwt_iss: Option<String>,
    /// Accepted clock skew on `exp` and `nbf`, in seconds.
    pub jwt_leeway: u64,
    /// Basic user and password.
    pub basic: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for AuthConfig {
    // Never prints a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("bearer_key", &self.bearer_key.is_some())
            .field("jwt_key", &self.jwt_key.is_some())
            .field("jwt_public_key", &self.jwt_public_key.is_some())
            .field("jwt_iss", &self.jwt_iss)
            .field("basic_user", &self.basic.as_ref().map(|b| &b.0))
            .finish()
    }
}

/// Validated client-listener bounds.
#[derive(Debug, Clone)]
pub struct ProxyLimits {
    /// Largest request head.
    pub max_request_head: usize,
    /// Largest request body.
    pub max_request_body: u64,
    /// Most held clients.
    pub max_held: usize,
    /// Longest wait for the next bytes of a request body.
    pub body_read_timeout: Duration,
    /// Longest wait for a client to take more of its response.
    pub write_timeout: Duration,
}

/// A trusted GRIP proxy in front.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// HS256 secret, if given.
    pub sig_key: Option<Vec<u8>>,
    /// PEM public key, if given.
    pub sig_public_key: Option<Vec<u8>>,
    /// Accepted clock skew on `exp` and `nbf`, in seconds.
    pub leeway: u64,
}

impl std::fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConfig").finish_non_exhaustive()
    }
}

/// Validated `[publish]`.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    /// Wait for a missing predecessor this long.
    pub ordering_wait: Duration,
    /// Most items waiting per channel.
    pub ordering_max_pending: usize,
    /// Duplicate window.
    pub duplicate_window: Duration,
}

/// Validated `[hold]`.
#[derive(Debug, Clone)]
pub struct HoldConfig {
    /// Used when the origin gives no timeout.
    pub default_timeout: Duration,
    /// Floor for the origin's timeout.
    pub min_timeout: Duration,
    /// Ceiling for the origin's timeout.
    pub max_timeout: Duration,
    /// Largest held body.
    pub max_body: usize,
    /// Most channels per hold.
    pub max_channels: usize,
}

impl HoldConfig {
    /// The timeout a hold gets: the origin's (or the default), within the floor and ceiling.
    pub fn effective_timeout(&self, asked: Option<Duration>) -> Duration {
        asked
            .unwrap_or(self.default_timeout)
            .clamp(self.min_timeout, self.max_timeout)
    }
}

/// Validated `[origin]`.
#[derive(Debug, Clone)]
pub struct OriginConfig {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Response-head timeout.
    pub response_timeout: Duration,
    /// Pool idle timeout.
    pub pool_idle_timeout: Duration,
    /// Longest wait for the next bytes of a response body.
    pub body_read_timeout: Duration,
    /// Pool size per origin.
    pub pool_max_idle_per_host: usize,
    /// Largest request body kept for a re-send.
    pub max_replay_body: usize,
    /// Requests waiting for origin response heads at once.
    pub max_concurrent_requests: usize,
}

/// Validated `[last_ids]`.
#[derive(Debug, Clone)]
pub struct LastIdsConfig {
    /// Most channels remembered.
    pub capacity: usize,
    /// Forget after this long without a publish.
    pub ttl: Duration,
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Lower-case host, or `None` for `*`.
    pub host: Option<String>,
    /// Path prefix (empty matches all).
    pub path_prefix: String,
    /// Origin scheme (http).
    pub scheme: Scheme,
    /// Origin host and port.
    pub authority: Authority,
    /// `Grip-Sig` issuer.
    pub sig_iss: String,
    /// `Grip-Sig` key: HS256 secret or PEM private key.
    pub sig_key: Vec<u8>,
    /// `Grip-Sig` algorithm.
    pub sig_alg: jsonwebtoken::Algorithm,
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
                .any(|r| r.sig_key == DEFAULT_SIG_KEY.as_bytes())
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

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        let listen = addr("proxy.listen", &raw.proxy.listen)?;
        let control_listen = addr("control.listen", &raw.control.listen)?;
        if listen == control_listen && listen.port() != 0 {
            return Err(invalid("control.listen", "must differ from proxy.listen"));
        }
        positive("control.max_body", raw.control.max_body)?;
        let h = &raw.hold;
        positive("hold.max_body", h.max_body)?;
        positive("hold.max_channels", h.max_channels)?;
        if h.min_timeout_secs > h.max_timeout_secs {
            return Err(invalid(
                "hold.min_timeout_secs",
                format!(
                    "{} is above hold.max_timeout_secs ({})",
                    h.min_timeout_secs, h.max_timeout_secs
                ),
            ));
        }
        if h.max_timeout_secs == 0 {
            return Err(invalid("hold.max_timeout_secs", "must be at least 1"));
        }
        let hold = HoldConfig {
            default_timeout: Duration::from_secs(h.default_timeout_secs),
            min_timeout: Duration::from_secs(h.min_timeout_secs),
            max_timeout: Duration::from_secs(h.max_timeout_secs),
            max_body: h.max_body,
            max_channels: h.max_channels,
        };
        let o = &raw.origin;
        let origin = OriginConfig {
            connect_timeout: secs("origin.connect_timeout_secs", o.connect_timeout_secs)?,
            response_timeout: secs("origin.response_timeout_secs", o.response_timeout_secs)?,
            pool_idle_timeout: secs("origin.pool_idle_timeout_secs", o.pool_idle_timeout_secs)?,
            body_read_timeout: secs("origin.body_read_timeout_secs", o.body_read_timeout_secs)?,
            pool_max_idle_per_host: o.pool_max_idle_per_host,
            max_replay_body: o.max_replay_body,
            max_concurrent_requests: o.max_concurrent_requests,
        };
        positive(
            "origin.max_concurrent_requests",
            origin.max_concurrent_requests,
        )?;
        positive("last_ids.capacity", raw.last_ids.capacity)?;
        if raw.last_ids.ttl_secs == 0 {
            return Err(invalid("last_ids.ttl_secs", "must be at least 1"));
        }
        let last_ids = LastIdsConfig {
            capacity: raw.last_ids.capacity,
            ttl: Duration::from_secs(raw.last_ids.ttl_secs),
        };
        let shutdown_grace = secs("shutdown.grace_secs", raw.shutdown.grace_secs)?;
        let control_auth = auth(&raw.control.auth)?;
        let p = &raw.proxy;
        if p.max_request_head < 1024 {
            return Err(invalid("proxy.max_request_head", "must be at least 1024"));
        }
        positive("proxy.max_held", p.max_held)?;
        let limits = ProxyLimits {
            max_request_head: p.max_request_head,
            max_request_body: p.max_request_body,
            max_held: p.max_held,
            body_read_timeout: secs("proxy.body_read_timeout_secs", p.body_read_timeout_secs)?,
            write_timeout: secs("proxy.write_timeout_secs", p.write_timeout_secs)?,
        };
        let upstream = upstream(p)?;
        let publish = PublishConfig {
            ordering_wait: secs("publish.ordering_wait_secs", raw.publish.ordering_wait_secs)?,
            ordering_max_pending: raw.publish.ordering_max_pending,
            duplicate_window: secs(
                "publish.duplicate_window_secs",
                raw.publish.duplicate_window_secs,
            )?,
        };
        let bus = crate::bus::config::validate(&raw.bus)?;
        let metrics_listen = raw
            .metrics
            .listen
            .as_deref()
            .map(|l| addr("metrics.listen", l))
            .transpose()?;
        if let Some(m) = metrics_listen {
            if m.port() != 0 && (m == listen || m == control_listen) {
                return Err(invalid(
                    "metrics.listen",
                    "must differ from proxy.listen and control.listen",
                ));
            }
        }
        if raw.routes.is_empty() {
            return Err(invalid(
                "routes",
                "at least one route is needed (or give --origin)",
            ));
        }
        let routes = raw
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| route(i, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Config {
            listen,
            control_listen,
            x_forwarded_for: raw.proxy.x_forwarded_for,
            x_forwarded_proto: raw.proxy.x_forwarded_proto,
            request_buffer_size: raw.proxy.request_buffer_size,
            control_max_body: raw.control.max_body,
            control_auth,
            limits,
            upstream,
            hold,
            publish,
            origin,
            last_ids,
            shutdown_grace,
            bus,
            metrics_listen,
            routes,
        })
    }
}

fn addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an IP address and port (e.g. 127.0.0.1:7999)"),
        )
    })
}

fn positive(key: &str, value: usize) -> Result<(), ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be at least 1"))
    } else {
        Ok(())
    }
}

fn secs(key: &str, value: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| invalid(key, format!("{value} is not a positive number of seconds")))
}

fn secret(key: &str, spec: &str) -> Result<Vec<u8>, ConfigError> {
    crate::secret::resolve(spec).map_err(|e| invalid(key, e.to_string()))
}

fn opt_secret(key: &str, spec: &Option<String>) -> Result<Option<Vec<u8>>, ConfigError> {
    spec.as_deref().map(|s| secret(key, s)).transpose()
}

fn auth(a: &RawAuth) -> Result<AuthConfig, ConfigError> {
    let cfg = AuthConfig {
        bearer_key: opt_secret("control.auth.bearer_key", &a.bearer_key)?,
        jwt_key: opt_secret("control.auth.jwt_key", &a.jwt_key)?,
        jwt_public_key: opt_secret("control.auth.jwt_public_key", &a.jwt_public_key)?,
        jwt_iss: a.jwt_iss.clone(),
        jwt_leeway: a.jwt_leeway_secs,
        basic: match (&a.basic_user, &a.basic_password) {
            (None, None) => None,
            (Some(user), Some(pass)) => {
                Some((user.clone(), secret("control.auth.basic_password", pass)?))
            }
            (Some(_), None) => {
                return Err(invalid(
                    "control.auth.basic_password",
                    "needed with basic_user",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "control.auth.basic_user",
                    "needed with basic_password",
                ))
            }
        },
    };
    if (cfg.jwt_key.is_some() || cfg.jwt_public_key.is_some())
        && cfg.jwt_iss.as_deref().unwrap_or("").is_empty()
    {
        return Err(invalid(
            "control.auth.jwt_iss",
            "needed with a JWT key: tokens must name their issuer",
        ));
    }
    crate::publish::auth::Auth::new(&cfg)
        .map_err(|e| invalid("control.auth.jwt_public_key", e.to_string()))?;
    Ok(cfg)
}

fn upstream(p: &RawProxy) -> Result<Option<UpstreamConfig>, ConfigError> {
    let sig_key = opt_secret("proxy.upstream_sig_key", &p.upstream_sig_key)?;
    let sig_public_key = opt_secret("proxy.upstream_sig_public_key", &p.upstream_sig_public_key)?;
    if sig_key.is_none() && sig_public_key.is_none() {
        return Ok(None);
    }
    crate::jwt::DecodingKeys::new(sig_key.clone(), sig_public_key.clone())
        .map_err(|e| invalid("proxy.upstream_sig_public_key", e.to_string()))?;
    Ok(Some(UpstreamConfig {
        sig_key,
        sig_public_key,
        leeway: p.upstream_sig_leeway_secs,
    }))
}

fn route(i: usize, r: &RawRoute) -> Result<RouteConfig, ConfigError> {
    let key = |k: &str| format!("routes[{i}].{k}");
    let uri: Uri = r
        .origin
        .parse()
        .map_err(|e| invalid(key("origin"), format!("{:?}: {e}", r.origin)))?;
    let scheme = match uri.scheme() {
        Some(s) if *s == Scheme::HTTP => s.clone(),
        Some(s) => {
            return Err(invalid(
                key("origin"),
                format!(
                    "{:?}: unsupported scheme {:?} (expected http)",
                    r.origin,
                    s.as_str()
                ),
            ))
        }
        None => {
            return Err(invalid(
                key("origin"),
                format!("{:?}: expected http://host:port", r.origin),
            ))
        }
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| invalid(key("origin"), format!("{:?}: no host", r.origin)))?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid(
            key("origin"),
            format!(
                "{:?}: an origin is scheme://host:port, without a path",
                r.origin
            ),
        ));
    }
    let host = match r.host.trim() {
        "" => return Err(invalid(key("host"), "empty (use \"*\" to match any host)")),
        "*" => None,
        h => Some(h.to_ascii_lowercase()),
    };
    if !r.path_prefix.is_empty() && !r.path_prefix.starts_with('/') {
        return Err(invalid(
            key("path_prefix"),
            format!("{:?} must start with /", r.path_prefix),
        ));
    }
    if r.sig_iss.is_empty() {
        return Err(invalid(key("sig_iss"), "must not be empty"));
    }
    let sig_key = secret(&key("sig_key"), &r.sig_key)?;
    let sig_alg = match r.sig_alg.as_str() {
        "HS256" => jsonwebtoken::Algorithm::HS256,
        "RS256" => jsonwebtoken::Algorithm::RS256,
        "ES256" => jsonwebtoken::Algorithm::ES256,
        other => {
            return Err(invalid(
                key("sig_alg"),
                format!("{other:?} is not supported (expected HS256, RS256 or ES256)"),
            ))
        }
    };
    crate::grip::sig::Signer::new(&r.sig_iss, sig_alg, &sig_key)
        .map_err(|e| invalid(key("sig_key"), e.to_string()))?;
    Ok(RouteConfig {
        host,
        path_prefix: r.path_prefix.clone(),
        scheme,
        authority,
        sig_iss: r.sig_iss.clone(),
        sig_key,
        sig_alg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(toml: &str) -> String {
        Config::from_toml_str(toml).unwrap_err().to_string()
    }

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
        let text = include_str!("../config/grip-proxy.toml");
        let file = Config::from_toml_str(text).unwrap();
        assert_eq!(format!("{file:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn rule_messages() {
        let cases = [
            (
                r#"[[routes]]
origin = "htp://app:8080""#,
                r#"routes[0].origin: "htp://app:8080": unsupported scheme "htp" (expected http)"#,
            ),
            (
                r#"[[routes]]
origin = "app:8080""#,
                r#"routes[0].origin: "app:8080": expected http://host:port"#,
            ),
            (
                r#"[[routes]]
origin = "http://app:8080/api""#,
                r#"routes[0].origin: "http://app:8080/api": an origin is scheme://host:port, without a path"#,
            ),
            (
                r#"[[routes]]
origin = "http://a:1"
path_prefix = "api""#,
                r#"routes[0].path_prefix: "api" must start with /"#,
            ),
            (
                "[proxy]\nlisten = \"nope\"",
                r#"proxy.listen: "nope" is not an IP address and port (e.g. 127.0.0.1:7999)"#,
            ),
            (
                "[hold]\nmin_timeout_secs = 10\nmax_timeout_secs = 5",
                "hold.min_timeout_secs: 10 is above hold.max_timeout_secs (5)",
            ),
            (
                "[proxy]\nwrite_timeout_secs = 0",
                "proxy.write_timeout_secs: 0 is not a positive number of seconds",
            ),
            (
                "[proxy]\nbody_read_timeout_secs = -1",
                "proxy.body_read_timeout_secs: -1 is not a positive number of seconds",
            ),
            (
                "[origin]\nbody_read_timeout_secs = 0",
                "origin.body_read_timeout_secs: 0 is not a positive number of seconds",
            ),
            ("[hold]\nmax_body = 0", "hold.max_body: must be at least 1"),
            (
                "[origin]\nresponse_timeout_secs = -1",
                "origin.response_timeout_secs: -1 is not a positive number of seconds",
            ),
            (
                "routes = []",
                "routes: at least one route is needed (or give --origin)",
            ),
            (
                "[control]\nlisten = \"0.0.0.0:7999\"",
                "control.listen: must differ from proxy.listen",
            ),
            (
                "[metrics]\nlisten = \"127.0.0.1:5561\"",
                "metrics.listen: must differ from proxy.listen and control.listen",
            ),
            (
                "[metrics]\nlisten = \"localhost:9090\"",
                r#"metrics.listen: "localhost:9090" is not an IP address and port (e.g. 127.0.0.1:7999)"#,
            ),
        ];
        for (toml, want) in cases {
            assert_eq!(err(toml), want, "{toml}");
        }
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

    #[test]
    fn timeout_clamp() {
        let h = Config::default().hold;
        assert_eq!(h.effective_timeout(None), Duration::from_secs(55));
        assert_eq!(
            h.effective_timeout(Some(Duration::from_secs(1))),
            Duration::from_secs(5)
        );
        assert_eq!(
            h.effective_timeout(Some(Duration::from_secs(99_999))),
            Duration::from_secs(3600)
        );
    }
}
