//! `[origin]`: the client side toward origins: timeouts, the connection pool, concurrency.

use std::time::Duration;

use serde::Deserialize;

use super::check::{positive, secs};
use super::ConfigError;

/// `[origin]` as written.
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

/// Validated `[origin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Validates `[origin]`.
pub(super) fn validate(o: &RawOrigin) -> Result<OriginConfig, ConfigError> {
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
    Ok(origin)
}

#[cfg(test)]
mod tests {
    use super::super::rule_error as err;

    #[test]
    fn rule_messages() {
        let cases = [
            (
                "[origin]\nbody_read_timeout_secs = 0",
                "origin.body_read_timeout_secs: 0 is not a positive number of seconds",
            ),
            (
                "[origin]\nresponse_timeout_secs = -1",
                "origin.response_timeout_secs: -1 is not a positive number of seconds",
            ),
            (
                "[origin]\nmax_concurrent_requests = 0",
                "origin.max_concurrent_requests: must be at least 1",
            ),
        ];
        for (toml, want) in cases {
            assert_eq!(err(toml), want, "{toml}");
        }
    }
}
