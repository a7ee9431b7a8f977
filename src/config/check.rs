//! The checks every section shares: each turns a raw value into a typed one or a [`ConfigError`] that names the
//! key and the reason, so the same rule always reads the same way.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use super::ConfigError;

/// The error for `key`: `key: reason`.
pub(super) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// An IP address and port (no host names: validation resolves nothing).
pub(super) fn addr(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        invalid(
            key,
            format!("{value:?} is not an IP address and port (e.g. 127.0.0.1:7999)"),
        )
    })
}

/// A count or size that must not be 0.
pub(super) fn positive<T: PartialOrd + Display + From<u8>>(
    key: &str,
    value: T,
) -> Result<(), ConfigError> {
    at_least(key, value, T::from(1))
}

/// A count or size with a floor.
pub(super) fn at_least<T: PartialOrd + Display>(
    key: &str,
    value: T,
    min: T,
) -> Result<(), ConfigError> {
    if value < min {
        Err(invalid(key, format!("must be at least {min}")))
    } else {
        Ok(())
    }
}

/// A positive number of seconds (fractions allowed).
pub(super) fn secs(key: &str, value: f64) -> Result<Duration, ConfigError> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| invalid(key, format!("{value} is not a positive number of seconds")))
}

/// A lower bound that must not be above its upper bound. Each side is `(key, typed value, value as written)`:
/// the typed values are compared, the written ones named in the message.
pub(super) fn min_max<T: PartialOrd, W: Display>(
    (min_key, min, min_written): (&str, T, W),
    (max_key, max, max_written): (&str, T, W),
) -> Result<(), ConfigError> {
    if min > max {
        Err(invalid(
            min_key,
            format!("{min_written} is above {max_key} ({max_written})"),
        ))
    } else {
        Ok(())
    }
}

/// A secret spec (literal, `env:NAME`, `file:PATH`, then optionally `base64:`) resolved to its bytes.
pub(super) fn secret(key: &str, spec: &str) -> Result<Vec<u8>, ConfigError> {
    crate::secret::resolve(spec).map_err(|e| invalid(key, e.to_string()))
}

/// An optional secret spec, resolved if given.
pub(super) fn opt_secret(key: &str, spec: Option<&str>) -> Result<Option<Vec<u8>>, ConfigError> {
    spec.map(|s| secret(key, s)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let e = |r: Result<(), ConfigError>| r.unwrap_err().to_string();
        assert_eq!(e(positive("a.b", 0usize)), "a.b: must be at least 1");
        assert!(positive("a.b", 1u64).is_ok());
        assert_eq!(
            e(at_least("a.b", 1000usize, 1024)),
            "a.b: must be at least 1024"
        );
        assert_eq!(
            e(min_max(("a.min", 10, 10), ("a.max", 5, 5))),
            "a.min: 10 is above a.max (5)"
        );
        assert!(min_max(("a.min", 5, 5), ("a.max", 5, 5)).is_ok());
        assert_eq!(
            secs("a.t", f64::NAN).unwrap_err().to_string(),
            "a.t: NaN is not a positive number of seconds"
        );
        assert_eq!(secs("a.t", 0.5).unwrap(), Duration::from_millis(500));
    }
}
