//! Publish authentication (optional): `Authorization: Bearer <JWT>` (HS256 with a shared key, or RS256/ES256
//! with a public key; `iss` checked, `exp` required), a static `Bearer <key>`, or `Basic`. With nothing
//! configured every request is accepted, whatever its `Authorization` header (some client libraries always send
//! one, possibly empty).

use base64::Engine as _;
use http::{header, HeaderMap, HeaderValue};
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;

use crate::config::AuthConfig;
use crate::secret;

/// Why a request was refused. Never carries the secret or the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// No `Authorization` header, or an empty one.
    #[error("no credentials")]
    Missing,
    /// A scheme other than Bearer or Basic, or a malformed value.
    #[error("unsupported or malformed Authorization header")]
    Malformed,
    /// A bearer token that is neither the key nor a valid JWT.
    #[error("invalid bearer token: {0}")]
    Bearer(String),
    /// Wrong user or password.
    #[error("invalid basic credentials")]
    Basic,
}

/// Checks publish requests against the configured credentials.
pub(crate) struct Auth {
    bearer_key: Option<Vec<u8>>,
    jwt: Vec<(DecodingKey, Validation)>,
    basic: Option<(String, Vec<u8>)>,
}

#[derive(Deserialize)]
struct Claims {}

impl Auth {
    /// Builds the checker from validated credentials (their keys were built with the config).
    pub(crate) fn new(cfg: &AuthConfig) -> Auth {
        let jwt = cfg
            .jwt
            .iter()
            .map(|(key, alg)| {
                let mut v = Validation::new(*alg);
                v.set_required_spec_claims(&["exp", "iss"]);
                // jsonwebtoken's default is 60 s after `exp`, and `nbf` unchecked.
                v.leeway = cfg.jwt_leeway;
                v.validate_nbf = true;
                if let Some(iss) = &cfg.jwt_iss {
                    v.set_issuer(&[iss]);
                }
                (key.clone(), v)
            })
            .collect();
        Auth {
            bearer_key: cfg.bearer_key.clone(),
            jwt,
            basic: cfg.basic.clone(),
        }
    }

    /// Whether any credentials are configured.
    pub(crate) fn is_required(&self) -> bool {
        self.bearer_key.is_some() || !self.jwt.is_empty() || self.basic.is_some()
    }

    /// Accepts or refuses a request by its headers.
    pub(crate) fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        if !self.is_required() {
            return Ok(());
        }
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .unwrap_or("");
        if value.is_empty() {
            return Err(AuthError::Missing);
        }
        let (scheme, rest) = value.split_once(' ').ok_or(AuthError::Malformed)?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            self.check_bearer(rest)
        } else if scheme.eq_ignore_ascii_case("basic") {
            self.check_basic(rest)
        } else {
            Err(AuthError::Malformed)
        }
    }

    fn check_bearer(&self, token: &str) -> Result<(), AuthError> {
        if let Some(key) = &self.bearer_key {
            if secret::equal(key, token.as_bytes()) {
                return Ok(());
            }
        }
        if self.jwt.is_empty() {
            return Err(AuthError::Bearer("not the configured key".into()));
        }
        let mut last = String::new();
        for (key, validation) in &self.jwt {
            match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(_) => return Ok(()),
                Err(e) => last = jwt_reason(&e),
            }
        }
        Err(AuthError::Bearer(last))
    }

    fn check_basic(&self, encoded: &str) -> Result<(), AuthError> {
        let Some((user, password)) = &self.basic else {
            return Err(AuthError::Malformed);
        };
        // Python's pubcontrol (3.5.0) on Python 3 sends `Basic b'dXNlcjpwYXNz'`: the repr of the base64 bytes.
        // Accepted as what it means, so that the library works unchanged.
        let encoded = encoded
            .strip_prefix("b'")
            .and_then(|e| e.strip_suffix('\''))
            .unwrap_or(encoded);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| AuthError::Malformed)?;
        let colon = decoded
            .iter()
            .position(|b| *b == b':')
            .ok_or(AuthError::Malformed)?;
        let (u, p) = (&decoded[..colon], &decoded[colon + 1..]);
        if secret::equal(u, user.as_bytes()) & secret::equal(p, password) {
            Ok(())
        } else {
            Err(AuthError::Basic)
        }
    }

    /// The `WWW-Authenticate` challenge of a 401.
    pub(crate) fn challenge(&self) -> HeaderValue {
        if self.basic.is_some() && self.bearer_key.is_none() && self.jwt.is_empty() {
            HeaderValue::from_static("Basic realm=\"grip-proxy\"")
        } else {
            HeaderValue::from_static("Bearer realm=\"grip-proxy\"")
        }
    }
}

fn jwt_reason(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::ImmatureSignature => "not valid yet".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("missing claim {c}"),
        ErrorKind::InvalidAlgorithm => "wrong algorithm".into(),
        _ => "not a valid JWT".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::DecodingKeys;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use std::time::{SystemTime, UNIX_EPOCH};

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn jwt(key: &[u8], iss: &str, exp: u64) -> String {
        let claims = serde_json::json!({ "iss": iss, "exp": exp });
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key),
        )
        .unwrap()
    }

    fn jwt_nbf(key: &[u8], nbf: u64) -> String {
        let claims = serde_json::json!({ "iss": "publisher", "exp": now() + 600, "nbf": nbf });
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(key),
        )
        .unwrap()
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn none_configured_accepts_anything() {
        let auth = Auth::new(&AuthConfig::default());
        assert!(auth.check(&HeaderMap::new()).is_ok());
        assert!(auth.check(&headers("")).is_ok());
        assert!(auth.check(&headers("Bearer whatever")).is_ok());
    }

    #[test]
    fn table() {
        let cfg = AuthConfig {
            bearer_key: Some(b"static-key".to_vec()),
            jwt: DecodingKeys::new(Some(b"jwt-secret".to_vec()), None).unwrap(),
            jwt_iss: Some("publisher".into()),
            jwt_leeway: 5,
            basic: Some(("user".into(), b"pass".to_vec())),
        };
        let auth = Auth::new(&cfg);
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let cases: Vec<(String, Result<(), AuthError>)> = vec![
            ("Bearer static-key".into(), Ok(())),
            (
                format!("Bearer {}", jwt(b"jwt-secret", "publisher", now() + 600)),
                Ok(()),
            ),
            (format!("Basic {}", b64("user:pass")), Ok(())),
            (format!("Basic b'{}'", b64("user:pass")), Ok(())),
            ("".into(), Err(AuthError::Missing)),
            ("Digest x".into(), Err(AuthError::Malformed)),
            (
                "Bearer nope".into(),
                Err(AuthError::Bearer("not a valid JWT".into())),
            ),
            (
                format!("Bearer {}", jwt(b"jwt-secret", "publisher", now() - 600)),
                Err(AuthError::Bearer("expired".into())),
            ),
            // The leeway (5 s) after `exp`, and no more.
            (
                format!("Bearer {}", jwt(b"jwt-secret", "publisher", now() - 2)),
                Ok(()),
            ),
            (
                format!("Bearer {}", jwt(b"jwt-secret", "publisher", now() - 30)),
                Err(AuthError::Bearer("expired".into())),
            ),
            // `nbf` is checked when present.
            (
                format!("Bearer {}", jwt_nbf(b"jwt-secret", now() + 60)),
                Err(AuthError::Bearer("not valid yet".into())),
            ),
            (
                format!("Bearer {}", jwt_nbf(b"jwt-secret", now() - 60)),
                Ok(()),
            ),
            (
                format!("Bearer {}", jwt(b"jwt-secret", "someone", now() + 600)),
                Err(AuthError::Bearer("wrong issuer".into())),
            ),
            (
                format!("Bearer {}", jwt(b"other", "publisher", now() + 600)),
                Err(AuthError::Bearer("bad signature".into())),
            ),
            (
                format!("Basic {}", b64("user:wrong")),
                Err(AuthError::Basic),
            ),
            ("Basic !!".into(), Err(AuthError::Malformed)),
        ];
        for (value, want) in cases {
            let got = if value.is_empty() {
                auth.check(&HeaderMap::new())
            } else {
                auth.check(&headers(&value))
            };
            assert_eq!(got, want, "{value}");
        }
    }
}
