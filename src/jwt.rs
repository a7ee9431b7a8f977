//! JWT keys shared by the publish credentials and `Grip-Sig`: verifying keys built once from an HS256 secret or a
//! PEM public key (ES256 or RS256), each with its validation rules, and the typed error of a key that cannot be
//! used.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::IgnoredAny;

/// A key that cannot be used, or a token that cannot be made. The text names no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    /// A public key that is neither a PEM EC nor a PEM RSA key.
    #[error("not a PEM EC (ES256) or RSA (RS256) public key")]
    NotPublicKey,
    /// An RS256 private key that does not parse.
    #[error("not a PEM RSA private key: {0}")]
    NotRsaPrivateKey(String),
    /// An ES256 private key that does not parse.
    #[error("not a PEM EC private key: {0}")]
    NotEcPrivateKey(String),
    /// A SEC1 EC key whose base64 is broken.
    #[error("invalid base64 in EC PRIVATE KEY")]
    EcBase64,
    /// A SEC1 EC key on another curve than P-256.
    #[error("EC PRIVATE KEY is not a P-256 (prime256v1) key in SEC1 form")]
    NotP256,
    /// An algorithm other than HS256, RS256 and ES256.
    #[error("unsupported algorithm {0}")]
    Algorithm(String),
    /// Signing failed (at start-up, with the key just built).
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules<'a> {
    /// Claims that must be present (`exp`, `iss`).
    pub(crate) required: &'a [&'a str],
    /// The `iss` it must carry, if any.
    pub(crate) issuer: Option<&'a str>,
    /// Seconds accepted after `exp` and before `nbf` (which is checked when present).
    pub(crate) leeway: u64,
}

/// Checks tokens against one or two keys (a shared secret and a public key), each with the same rules. Cheap to
/// clone.
#[derive(Clone)]
pub(crate) struct JwtVerifier {
    keys: Arc<[(DecodingKey, Validation)]>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Builds the keys: HS256 for `secret`, ES256 or RS256 for `public_pem` (whichever it is).
    pub(crate) fn new(
        secret: Option<&[u8]>,
        public_pem: Option<&[u8]>,
        rules: Rules<'_>,
    ) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        if let Some(s) = secret {
            keys.push((DecodingKey::from_secret(s), Algorithm::HS256));
        }
        if let Some(pem) = public_pem {
            if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                keys.push((k, Algorithm::ES256));
            } else if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                keys.push((k, Algorithm::RS256));
            } else {
                return Err(KeyError::NotPublicKey);
            }
        }
        let keys = keys
            .into_iter()
            .map(|(key, alg)| {
                let mut v = Validation::new(alg);
                v.set_required_spec_claims(rules.required);
                if let Some(iss) = rules.issuer {
                    v.set_issuer(&[iss]);
                }
                // jsonwebtoken's default is 60 s after `exp`, and `nbf` unchecked.
                v.leeway = rules.leeway;
                v.validate_nbf = true;
                (key, v)
            })
            .collect();
        Ok(JwtVerifier { keys })
    }

    /// `Ok` when `token` is valid under one of the keys; otherwise why it failed under the last one tried.
    pub(crate) fn check(&self, token: &str) -> Result<(), jsonwebtoken::errors::Error> {
        let mut last = jsonwebtoken::errors::ErrorKind::InvalidToken.into();
        for (key, validation) in self.keys.iter() {
            match jsonwebtoken::decode::<IgnoredAny>(token, key, validation) {
                Ok(_) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
