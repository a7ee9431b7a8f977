//! `[hold]`: response holds: their timeouts (the origin's, within a floor and a ceiling) and bounds.

use std::time::Duration;

use serde::Deserialize;

use super::check::{min_max, positive};
use super::ConfigError;

/// `[hold]` as written.
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
    /// Most bytes published to a stream and not yet taken by its client; past it the client is disconnected.
    pub max_stream_queue: usize,
}

impl Default for RawHold {
    fn default() -> Self {
        RawHold {
            default_timeout_secs: 55,
            min_timeout_secs: 5,
            max_timeout_secs: 3600,
            max_body: 100_000,
            max_channels: crate::grip::DEFAULT_MAX_CHANNELS,
            max_stream_queue: 1024 * 1024,
        }
    }
}

/// Validated `[hold]`.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Most bytes queued for one stream client.
    pub max_stream_queue: usize,
}

impl HoldConfig {
    /// The timeout a hold gets: the origin's (or the default), within the floor and ceiling.
    pub fn effective_timeout(&self, asked: Option<Duration>) -> Duration {
        asked
            .unwrap_or(self.default_timeout)
            .clamp(self.min_timeout, self.max_timeout)
    }
}

/// Validates `[hold]`.
pub(super) fn validate(h: &RawHold) -> Result<HoldConfig, ConfigError> {
    positive("hold.max_body", h.max_body)?;
    positive("hold.max_channels", h.max_channels)?;
    positive("hold.max_stream_queue", h.max_stream_queue)?;
    min_max(
        (
            "hold.min_timeout_secs",
            h.min_timeout_secs,
            h.min_timeout_secs,
        ),
        (
            "hold.max_timeout_secs",
            h.max_timeout_secs,
            h.max_timeout_secs,
        ),
    )?;
    positive("hold.max_timeout_secs", h.max_timeout_secs)?;
    Ok(HoldConfig {
        default_timeout: Duration::from_secs(h.default_timeout_secs),
        min_timeout: Duration::from_secs(h.min_timeout_secs),
        max_timeout: Duration::from_secs(h.max_timeout_secs),
        max_body: h.max_body,
        max_channels: h.max_channels,
        max_stream_queue: h.max_stream_queue,
    })
}

#[cfg(test)]
mod tests {
    use super::super::rule_error as err;
    use super::super::Config;
    use std::time::Duration;

    #[test]
    fn rule_messages() {
        let cases = [
            (
                "[hold]\nmin_timeout_secs = 10\nmax_timeout_secs = 5",
                "hold.min_timeout_secs: 10 is above hold.max_timeout_secs (5)",
            ),
            ("[hold]\nmax_body = 0", "hold.max_body: must be at least 1"),
            (
                "[hold]\nmax_channels = 0",
                "hold.max_channels: must be at least 1",
            ),
            (
                "[hold]\nmin_timeout_secs = 0\nmax_timeout_secs = 0",
                "hold.max_timeout_secs: must be at least 1",
            ),
        ];
        for (toml, want) in cases {
            assert_eq!(err(toml), want, "{toml}");
        }
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
