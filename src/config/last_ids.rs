//! `[last_ids]`: bounds of the per-channel memory of the last published id.

use std::time::Duration;

use serde::Deserialize;

use super::check::positive;
use super::ConfigError;

/// `[last_ids]` as written.
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

/// Validated `[last_ids]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastIdsConfig {
    /// Most channels remembered.
    pub capacity: usize,
    /// Forget after this long without a publish.
    pub ttl: Duration,
}

/// Validates `[last_ids]`.
pub(super) fn validate(l: &RawLastIds) -> Result<LastIdsConfig, ConfigError> {
    positive("last_ids.capacity", l.capacity)?;
    positive("last_ids.ttl_secs", l.ttl_secs)?;
    Ok(LastIdsConfig {
        capacity: l.capacity,
        ttl: Duration::from_secs(l.ttl_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::super::rule_error as err;

    #[test]
    fn rule_messages() {
        assert_eq!(
            err("[last_ids]\ncapacity = 0"),
            "last_ids.capacity: must be at least 1"
        );
        assert_eq!(
            err("[last_ids]\nttl_secs = 0"),
            "last_ids.ttl_secs: must be at least 1"
        );
    }
}
