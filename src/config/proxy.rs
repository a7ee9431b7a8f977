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
        x_forwarded_for: p.x_forwarded_for,
        x_forwarded_proto: p.x_forwarded_proto,
        request_buffer_size: p.request_buffer_size,
        limits,
        upstream: upstream(p)?,
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
                "[proxy]\nupstream_sig_public_key = \"not a pem\"",
                "proxy.upstream_sig_public_key: not a PEM EC (ES256) or RSA (RS256) public key",
            ),
        ];
        for (toml, want) in cases {
            assert_eq!(err(toml), want, "{toml}");
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
