//! `[shutdown]`: how long in-flight requests get to finish after a stop signal.

use std::time::Duration;

use serde::Deserialize;

use super::check::secs;
use super::ConfigError;

/// `[shutdown]` as written.
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

/// Validates `[shutdown]`: the grace period.
pub(super) fn validate(s: &RawShutdown) -> Result<Duration, ConfigError> {
    secs("shutdown.grace_secs", s.grace_secs)
}

#[cfg(test)]
mod tests {
    use super::super::rule_error as err;

    #[test]
    fn rule_messages() {
        assert_eq!(
            err("[shutdown]\ngrace_secs = 0"),
            "shutdown.grace_secs: 0 is not a positive number of seconds"
        );
    }
}
