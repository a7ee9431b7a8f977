//! `[publish]`: ordering of published items (by `prev-id`) and duplicate detection.

use std::time::Duration;

use serde::Deserialize;

use super::check::secs;
use super::ConfigError;

/// `[publish]` as written.
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

/// Validated `[publish]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishConfig {
    /// Wait for a missing predecessor this long.
    pub ordering_wait: Duration,
    /// Most items waiting per channel.
    pub ordering_max_pending: usize,
    /// Duplicate window.
    pub duplicate_window: Duration,
}

/// Validates `[publish]`.
pub(super) fn validate(p: &RawPublish) -> Result<PublishConfig, ConfigError> {
    Ok(PublishConfig {
        ordering_wait: secs("publish.ordering_wait_secs", p.ordering_wait_secs)?,
        ordering_max_pending: p.ordering_max_pending,
        duplicate_window: secs("publish.duplicate_window_secs", p.duplicate_window_secs)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::rule_error as err;

    #[test]
    fn rule_messages() {
        assert_eq!(
            err("[publish]\nordering_wait_secs = 0"),
            "publish.ordering_wait_secs: 0 is not a positive number of seconds"
        );
        assert_eq!(
            err("[publish]\nduplicate_window_secs = -1"),
            "publish.duplicate_window_secs: -1 is not a positive number of seconds"
        );
    }
}
