//! `[metrics]`: `GET /metrics` is always on the control listener; this adds a listener of its own.

use std::net::SocketAddr;

use serde::Deserialize;

use super::check::{addr, invalid};
use super::ConfigError;

/// `[metrics]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Address of a listener serving only `/metrics`, `/health` and `/ready` (none by default).
    pub listen: Option<String>,
}

/// Validates `[metrics]`: its listener, which must not take the proxy's or the control API's address.
pub(super) fn validate(
    m: &RawMetrics,
    listen: SocketAddr,
    control_listen: SocketAddr,
) -> Result<Option<SocketAddr>, ConfigError> {
    let metrics_listen = m
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
    Ok(metrics_listen)
}

#[cfg(test)]
mod tests {
    use super::super::rule_error as err;

    #[test]
    fn rule_messages() {
        let cases = [
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
}
