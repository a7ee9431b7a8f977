//! `[proxy]`: the client-facing listener, its bounds, and the trusted GRIP proxy in front, if any.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::check::{addr, at_least, invalid, opt_secret, positive, secs};
use super::ConfigError;
use crate::grip::sig::Verifier;
use crate::jwt::DecodingKeys;

/// `[proxy]` as written.
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
    /// How client connections are served: `"shared"` or `"per-core"` (see [`RuntimeMode`]). Not set: the value of
    /// the environment variable [`RUNTIME_ENV`] if set, else [`RuntimeMode::DEFAULT`].
    pub runtime: Option<String>,
    /// Threads serving clients: the worker threads of the shared runtime, or the number of per-core runtimes.
    /// Not set: the number of cores available to the process.
    pub threads: Option<i64>,
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
            runtime: None,
            threads: None,
        }
    }
}

/// How client connections are served (`proxy.runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeMode {
    /// One multi-thread tokio runtime (work stealing) runs everything: a connection's task may run on any of its
    /// `proxy.threads` workers, and one listener accepts every client.
    Shared,
    /// `proxy.threads` current-thread runtimes, one OS thread each, each accepting on its own `SO_REUSEPORT`
    /// listener on the proxy address: a client connection, the origin connections it uses (pooled per runtime)
    /// and its parked state stay on one thread. The control listener, the bus and the sweepers run on a runtime
    /// of their own.
    PerCore,
}

impl RuntimeMode {
    /// The mode when neither the file nor [`RUNTIME_ENV`] says.
    pub const DEFAULT: RuntimeMode = RuntimeMode::PerCore;

    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeMode::Shared => "shared",
            RuntimeMode::PerCore => "per-core",
        }
    }

    fn parse(name: &str) -> Option<RuntimeMode> {
        [RuntimeMode::Shared, RuntimeMode::PerCore]
            .into_iter()
            .find(|m| m.as_str() == name)
    }
}

/// The environment variable that gives `proxy.runtime` when the file does not set it (empty: not set). The test
/// suite is run in both modes this way.
pub const RUNTIME_ENV: &str = "GRIP_PROXY_RUNTIME";

/// The most threads `proxy.threads` accepts: far above any core count this is built for, low enough that a typo
/// (an extra digit) is an error rather than thousands of threads and listeners.
pub const MAX_THREADS: usize = 1024;

/// Validated client-listener bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// A trusted GRIP proxy in front: its `Grip-Sig` checker, keys built. `Debug` never shows a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Checks the `Grip-Sig` of requests (keys and leeway; compared by the bytes the keys came from).
    pub verifier: Verifier,
}

/// What `[proxy]` yields; [`super::Config`] keeps these fields at its top level.
pub(super) struct Proxy {
    pub(super) listen: SocketAddr,
    pub(super) runtime: RuntimeMode,
    pub(super) threads: usize,
    pub(super) x_forwarded_for: bool,
    pub(super) x_forwarded_proto: bool,
    pub(super) request_buffer_size: usize,
    pub(super) limits: ProxyLimits,
    pub(super) upstream: Option<UpstreamConfig>,
}

/// Validates `[proxy]`.
pub(super) fn validate(p: &RawProxy) -> Result<Proxy, ConfigError> {
    let listen = addr("proxy.listen", &p.listen)?;
    at_least("proxy.max_request_head", p.max_request_head, 1024)?;
    positive("proxy.max_held", p.max_held)?;
    let limits = ProxyLimits {
        max_request_head: p.max_request_head,
        max_request_body: p.max_request_body,
        max_held: p.max_held,
        body_read_timeout: secs("proxy.body_read_timeout_secs", p.body_read_timeout_secs)?,
        write_timeout: secs("proxy.write_timeout_secs", p.write_timeout_secs)?,
    };
    Ok(Proxy {
        listen,
        runtime: runtime(p.runtime.as_deref())?,
        threads: threads(p.threads)?,
        x_forwarded_for: p.x_forwarded_for,
        x_forwarded_proto: p.x_forwarded_proto,
        request_buffer_size: p.request_buffer_size,
        limits,
        upstream: upstream(p)?,
    })
}

/// `proxy.runtime`, else [`RUNTIME_ENV`], else the default.
fn runtime(written: Option<&str>) -> Result<RuntimeMode, ConfigError> {
    let (key, name) = match written {
        Some(name) => ("proxy.runtime", name.to_owned()),
        None => match std::env::var(RUNTIME_ENV) {
            Ok(name) if !name.is_empty() => (RUNTIME_ENV, name),
            Ok(_) | Err(std::env::VarError::NotPresent) => return Ok(RuntimeMode::DEFAULT),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(invalid(RUNTIME_ENV, "is not valid UTF-8"))
            }
        },
    };
    RuntimeMode::parse(&name)
        .ok_or_else(|| invalid(key, format!("{name:?} is not \"shared\" or \"per-core\"")))
}

/// `proxy.threads`, else the cores available to the process (at most [`MAX_THREADS`]).
fn threads(written: Option<i64>) -> Result<usize, ConfigError> {
    let Some(n) = written else {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        return Ok(cores.min(MAX_THREADS));
    };
    usize::try_from(n)
        .ok()
        .filter(|n| (1..=MAX_THREADS).contains(n))
        .ok_or_else(|| {
            invalid(
                "proxy.threads",
                format!("{n} is not between 1 and {MAX_THREADS}"),
            )
        })
}

fn upstream(p: &RawProxy) -> Result<Option<UpstreamConfig>, ConfigError> {
    let sig_key = opt_secret("proxy.upstream_sig_key", p.upstream_sig_key.as_deref())?;
    let sig_public_key = opt_secret(
        "proxy.upstream_sig_public_key",
        p.upstream_sig_public_key.as_deref(),
    )?;
    if sig_key.is_none() && sig_public_key.is_none() {
        return Ok(None);
    }
    let keys = DecodingKeys::new(sig_key, sig_public_key)
        .map_err(|e| invalid("proxy.upstream_sig_public_key", e.to_string()))?;
    Ok(Some(UpstreamConfig {
        verifier: Verifier::new(keys, p.upstream_sig_leeway_secs),
    }))
}

#[cfg(test)]
mod tests {
    use super::super::rule_error as err;
    use super::super::Config;

    #[test]
    fn rule_messages() {
        let cases = [
            (
                "[proxy]\nlisten = \"nope\"",
                r#"proxy.listen: "nope" is not an IP address and port (e.g. 127.0.0.1:7999)"#,
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
                "[proxy]\nmax_request_head = 1000",
                "proxy.max_request_head: must be at least 1024",
            ),
            (
                "[proxy]\nmax_held = 0",
                "proxy.max_held: must be at least 1",
            ),
            (
                "[proxy]\nthreads = 0",
                "proxy.threads: 0 is not between 1 and 1024",
            ),
            (
                "[proxy]\nthreads = -1",
                "proxy.threads: -1 is not between 1 and 1024",
            ),
            (
                "[proxy]\nthreads = 1025",
                "proxy.threads: 1025 is not between 1 and 1024",
            ),
            (
                "[proxy]\nruntime = \"percore\"",
                "proxy.runtime: \"percore\" is not \"shared\" or \"per-core\"",
            ),
            (
                "[proxy]\nupstream_sig_public_key = \"not a pem\"",
                "proxy.upstream_sig_public_key: not a PEM EC (ES256) or RSA (RS256) public key",
            ),
        ];
        for (toml, want) in cases {
            assert_eq!(err(toml), want, "{toml}");
        }
    }

    #[test]
    fn threads_and_runtime_at_their_bounds() {
        use super::RuntimeMode;
        let c = |toml: &str| Config::from_toml_str(toml).unwrap();
        for n in [1, 2, 3, 1022, 1023, 1024] {
            assert_eq!(c(&format!("[proxy]\nthreads = {n}")).threads, n);
        }
        for n in [1025, 1026, 0, -1] {
            assert!(Config::from_toml_str(&format!("[proxy]\nthreads = {n}")).is_err());
        }
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(
            c("").threads,
            cores.min(1024),
            "default: the cores available"
        );
        for mode in [RuntimeMode::Shared, RuntimeMode::PerCore] {
            let written = c(&format!("[proxy]\nruntime = \"{}\"", mode.as_str()));
            assert_eq!(written.runtime, mode, "the file wins over the environment");
        }
    }

    #[test]
    fn the_upstream_verifier_is_built_once_and_compared_by_key() {
        let c = |toml: &str| Config::from_toml_str(toml).unwrap().upstream;
        assert!(c("").is_none());
        let a = c("[proxy]\nupstream_sig_key = \"up-secret\"").unwrap();
        assert_eq!(
            Some(&a),
            c("[proxy]\nupstream_sig_key = \"up-secret\"").as_ref()
        );
        assert_ne!(
            Some(&a),
            c("[proxy]\nupstream_sig_key = \"other\"").as_ref()
        );
        assert!(!format!("{a:?}").contains("up-secret"));
    }
}
