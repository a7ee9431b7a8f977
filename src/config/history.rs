//! `[history]`: per-channel history, the last items applied to each channel kept in memory so that a client
//! behind the channel's last id catches up from it instead of from the origin. Off unless `items` is set.

use std::time::Duration;

use serde::Deserialize;

use super::check::{invalid, positive, secs};
use super::ConfigError;

/// Most items one channel's history may keep: a client's prev-id is looked up by a scan of it.
pub const MAX_HISTORY_ITEMS: usize = 10_000;

/// `[history]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHistory {
    /// Items kept per channel, the most recent; 0 (the default) turns history off.
    pub items: usize,
    /// Items older than this (since they were published) are dropped from a channel's history.
    pub max_age_secs: f64,
    /// Total bytes of items kept in the history of all channels; past it, the histories of the least recently
    /// published channels are dropped.
    pub max_bytes: usize,
}

impl Default for RawHistory {
    fn default() -> Self {
        RawHistory {
            items: 0,
            max_age_secs: 300.0,
            max_bytes: 67_108_864,
        }
    }
}

/// Validated `[history]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Items kept per channel (0: history off).
    pub items: usize,
    /// Oldest item kept, by its age.
    pub max_age: Duration,
    /// Bytes kept across every channel.
    pub max_bytes: usize,
}

impl HistoryConfig {
    /// Whether any history is kept.
    pub fn enabled(&self) -> bool {
        self.items > 0
    }
}

/// Validates `[history]`.
pub(super) fn validate(h: &RawHistory) -> Result<HistoryConfig, ConfigError> {
    if h.items > MAX_HISTORY_ITEMS {
        return Err(invalid(
            "history.items",
            format!("at most {MAX_HISTORY_ITEMS} (0 turns history off)"),
        ));
    }
    let max_age = secs("history.max_age_secs", h.max_age_secs)?;
    positive("history.max_bytes", h.max_bytes)?;
    Ok(HistoryConfig {
        items: h.items,
        max_age,
        max_bytes: h.max_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::super::rule_error as err;
    use super::super::Config;

    #[test]
    fn rule_messages() {
        assert_eq!(
            err("[history]\nitems = 10001"),
            "history.items: at most 10000 (0 turns history off)"
        );
        assert_eq!(
            err("[history]\nmax_age_secs = 0"),
            "history.max_age_secs: 0 is not a positive number of seconds"
        );
        assert_eq!(
            err("[history]\nmax_bytes = 0"),
            "history.max_bytes: must be at least 1"
        );
        assert!(err("[history]\nitem = 5").contains("unknown field `item`"));
    }

    #[test]
    fn off_by_default_and_read_when_set() {
        assert!(!Config::default().history.enabled());
        let c =
            Config::from_toml_str("[history]\nitems = 20\nmax_age_secs = 1.5\nmax_bytes = 4096")
                .unwrap();
        assert_eq!(c.history.items, 20);
        assert_eq!(c.history.max_age, std::time::Duration::from_millis(1500));
        assert_eq!(c.history.max_bytes, 4096);
    }
}
