//! `[control]` and `[control.auth]`: the publish API listener, its body limit, and the credentials publishers
//! must present (JWT keys built here, once).

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

use super::check::{addr, invalid, opt_secret, positive, secret};
use super::ConfigError;
use crate::jwt::DecodingKeys;

/// `[control]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawControl {
    /// Address of the control API. Loopback by default: anyone who reaches it can publish.
    pub listen: String,
    /// Largest publish body accepted, in bytes (Pushpin's limit).
    pub max_body: usize,
    /// `[control.auth]`: credentials publishers must present (none by default).
    pub auth: RawAuth,
    /// Serve the control API over HTTPS with this certificate chain (PEM, secret spec); `tls_key` with it.
    pub tls_cert: Option<String>,
    /// The private key of `tls_cert` (PEM, secret spec).
    pub tls_key: Option<String>,
}

impl Default for RawControl {
    fn default() -> Self {
        RawControl {
            listen: "127.0.0.1:5561".into(),
            max_body: 1_000_000,
            auth: RawAuth::default(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// `[control.auth]`: any configured method is accepted; with none, the control API is open.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// A static key: `Authorization: Bearer <key>`. Secret spec.
    pub bearer_key: Option<String>,
    /// HS256 secret for `Authorization: Bearer <JWT>`. Secret spec.
    pub jwt_key: Option<String>,
    /// PEM public key (ES256 or RS256) for `Bearer <JWT>`. Secret spec, usually `file:PATH`.
    pub jwt_public_key: Option<String>,
    /// The `iss` a JWT must carry (required with a JWT key).
    pub jwt_iss: Option<String>,
    /// Seconds a JWT is still accepted after its `exp` (and before its `nbf`): clock skew between hosts.
    pub jwt_leeway_secs: u64,
    /// `Authorization: Basic` user.
    pub basic_user: Option<String>,
    /// `Authorization: Basic` password. Secret spec.
    pub basic_password: Option<String>,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            bearer_key: None,
            jwt_key: None,
            jwt_public_key: None,
            jwt_iss: None,
            jwt_leeway_secs: 5,
            basic_user: None,
            basic_password: None,
        }
    }
}

/// Validated `[control.auth]`: secrets resolved, JWT keys built. Compared by value (secrets included), never
/// printed with its secrets.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    /// Static bearer key.
    pub bearer_key: Option<Vec<u8>>,
    /// JWT keys: the HS256 secret and/or the PEM public key (ES256/RS256).
    pub jwt: DecodingKeys,
    /// Required JWT issuer.
    pub jwt_iss: Option<String>,
    /// Accepted clock skew on `exp` and `nbf`, in seconds.
    pub jwt_leeway: u64,
    /// Basic user and password.
    pub basic: Option<(String, Vec<u8>)>,
}

impl fmt::Debug for AuthConfig {
    // Never prints a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("bearer_key", &self.bearer_key.is_some())
            .field("jwt_key", &self.jwt.has_secret())
            .field("jwt_public_key", &self.jwt.has_public_key())
            .field("jwt_iss", &self.jwt_iss)
            .field("basic_user", &self.basic.as_ref().map(|b| &b.0))
            .finish()
    }
}

/// What `[control]` yields; [`super::Config`] keeps these fields at its top level.
pub(super) struct Control {
    pub(super) listen: SocketAddr,
    pub(super) max_body: usize,
    pub(super) auth: AuthConfig,
    pub(super) tls: Option<crate::tls::server::Certificates>,
}

/// Validates `[control]`. Its listener must not take the proxy's address (`proxy_listen`).
pub(super) fn validate(c: &RawControl, proxy_listen: SocketAddr) -> Result<Control, ConfigError> {
    let listen = addr("control.listen", &c.listen)?;
    if listen == proxy_listen && listen.port() != 0 {
        return Err(invalid("control.listen", "must differ from proxy.listen"));
    }
    positive("control.max_body", c.max_body)?;
    let tls = match (&c.tls_cert, &c.tls_key) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some(crate::tls::server::Certificates::new(
            super::tls::certificate(("control.tls_cert", cert), ("control.tls_key", key))?,
        )),
        (Some(_), None) => return Err(invalid("control.tls_key", "needed with tls_cert")),
        (None, Some(_)) => return Err(invalid("control.tls_cert", "needed with tls_key")),
    };
    Ok(Control {
        listen,
        max_body: c.max_body,
        auth: auth(&c.auth)?,
        tls,
    })
}

fn auth(a: &RawAuth) -> Result<AuthConfig, ConfigError> {
    let bearer_key = opt_secret("control.auth.bearer_key", a.bearer_key.as_deref())?;
    let jwt_key = opt_secret("control.auth.jwt_key", a.jwt_key.as_deref())?;
    let jwt_public_key = opt_secret("control.auth.jwt_public_key", a.jwt_public_key.as_deref())?;
    let basic = match (&a.basic_user, &a.basic_password) {
        (None, None) => None,
        (Some(user), Some(pass)) => {
            Some((user.clone(), secret("control.auth.basic_password", pass)?))
        }
        (Some(_), None) => {
            return Err(invalid(
                "control.auth.basic_password",
                "needed with basic_user",
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                "control.auth.basic_user",
                "needed with basic_password",
            ))
        }
    };
    if (jwt_key.is_some() || jwt_public_key.is_some())
        && a.jwt_iss.as_deref().unwrap_or("").is_empty()
    {
        return Err(invalid(
            "control.auth.jwt_iss",
            "needed with a JWT key: tokens must name their issuer",
        ));
    }
    let jwt = DecodingKeys::new(jwt_key, jwt_public_key)
        .map_err(|e| invalid("control.auth.jwt_public_key", e.to_string()))?;
    Ok(AuthConfig {
        bearer_key,
        jwt,
        jwt_iss: a.jwt_iss.clone(),
        jwt_leeway: a.jwt_leeway_secs,
        basic,
    })
}

#[cfg(test)]
mod tests {
    use super::super::rule_error as err;
    use super::super::Config;

    #[test]
    fn rule_messages() {
        let cases = [
            (
                "[control]\nlisten = \"0.0.0.0:7999\"",
                "control.listen: must differ from proxy.listen",
            ),
            (
                "[control]\nmax_body = 0",
                "control.max_body: must be at least 1",
            ),
            (
                "[control.auth]\nbasic_user = \"u\"",
                "control.auth.basic_password: needed with basic_user",
            ),
            (
                "[control.auth]\nbasic_password = \"p\"",
                "control.auth.basic_user: needed with basic_password",
            ),
            (
                "[control.auth]\njwt_key = \"k\"",
                "control.auth.jwt_iss: needed with a JWT key: tokens must name their issuer",
            ),
            (
                "[control.auth]\njwt_public_key = \"not a pem\"\njwt_iss = \"i\"",
                "control.auth.jwt_public_key: not a PEM EC (ES256) or RSA (RS256) public key",
            ),
            (
                "[control.auth]\nbearer_key = \"env:GRIP_PROXY_TEST_UNSET_VARIABLE\"",
                "control.auth.bearer_key: environment variable GRIP_PROXY_TEST_UNSET_VARIABLE is not set",
            ),
        ];
        for (toml, want) in cases {
            assert_eq!(err(toml), want, "{toml}");
        }
    }

    #[test]
    fn keys_are_built_and_secrets_never_show() {
        let c = Config::from_toml_str(
            "[control.auth]\nbearer_key = \"b-s3cret\"\njwt_key = \"j-s3cret\"\njwt_iss = \"pub\"\n\
             basic_user = \"u\"\nbasic_password = \"p-s3cret\"",
        )
        .unwrap();
        assert_eq!(c.control_auth.jwt.iter().count(), 1);
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
