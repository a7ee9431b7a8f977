//! `Grip-Sig`: the JWT (`iss`, `exp = now + 3600`; HS256, or RS256/ES256 with a PEM key) that proves to an origin
//! a request came through us, and the check of one from a trusted GRIP proxy in front of us.

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

use crate::jwt::{JwtVerifier, KeyError, Rules};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// How long a signature stays valid, as Pushpin signs.
const SIG_LIFETIME_SECS: u64 = 3600;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    exp: u64,
}

/// Signs requests for one route. Cheap to share behind an `Arc`.
pub(crate) struct Signer {
    iss: String,
    alg: Algorithm,
    key: EncodingKey,
    /// The token issued in the current second, reused for every request in that second: signing costs about
    /// 2 µs, a lock and a clone about 50 ns.
    cached: Mutex<Option<(u64, HeaderValue)>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("iss", &self.iss)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for issuer `iss`: `key` is the HS256 secret, or the PEM private key for RS256/ES256.
    pub(crate) fn new(iss: &str, alg: Algorithm, key: &[u8]) -> Result<Self, KeyError> {
        let key = match alg {
            Algorithm::HS256 => EncodingKey::from_secret(key),
            Algorithm::RS256 => EncodingKey::from_rsa_pem(key)
                .map_err(|e| KeyError::NotRsaPrivateKey(e.to_string()))?,
            Algorithm::ES256 => EncodingKey::from_ec_pem(&super::pem::normalize_ec_key(key)?)
                .map_err(|e| KeyError::NotEcPrivateKey(e.to_string()))?,
            other => return Err(KeyError::Algorithm(format!("{other:?}"))),
        };
        let signer = Signer {
            iss: iss.to_owned(),
            alg,
            key,
            cached: Mutex::new(None),
        };
        // Sign once now, so that a key that cannot sign fails at start-up rather than on a request.
        signer.try_header()?;
        Ok(signer)
    }

    /// The `Grip-Sig` header value for a request sent now. The key signed at start-up ([`Signer::new`]); an
    /// error here would be the JWT library's.
    pub(crate) fn header(&self) -> Result<HeaderValue, KeyError> {
        self.try_header()
    }

    fn try_header(&self) -> Result<HeaderValue, KeyError> {
        let now = now_secs();
        let mut cached = self.cached.lock();
        if let Some((at, value)) = &*cached {
            if *at == now {
                return Ok(value.clone());
            }
        }
        let claims = Claims {
            iss: self.iss.clone(),
            exp: now + SIG_LIFETIME_SECS,
        };
        let token = jsonwebtoken::encode(&Header::new(self.alg), &claims, &self.key)
            .map_err(|e| KeyError::Sign(e.to_string()))?;
        let value = HeaderValue::from_str(&token)
            .map_err(|_| KeyError::Sign("a JWT is not a valid header value".into()))?;
        *cached = Some((now, value.clone()));
        Ok(value)
    }
}

/// Checks `Grip-Sig` tokens from a trusted GRIP proxy in front: valid signature under one of its keys, not expired.
#[derive(Debug, Clone)]
pub(crate) struct Verifier(JwtVerifier);

impl Verifier {
    /// From an HS256 secret and/or a PEM public key (ES256 or RS256). A token is accepted up to `leeway`
    /// seconds after its `exp` and before its `nbf` (checked when present).
    pub(crate) fn new(
        secret: Option<&[u8]>,
        public_pem: Option<&[u8]>,
        leeway: u64,
    ) -> Result<Self, KeyError> {
        let rules = Rules {
            required: &["exp"],
            issuer: None,
            leeway,
        };
        JwtVerifier::new(secret, public_pem, rules).map(Verifier)
    }

    /// Whether `token` is valid under one of the keys.
    pub(crate) fn verify(&self, token: &[u8]) -> bool {
        std::str::from_utf8(token).is_ok_and(|t| self.0.check(t).is_ok())
    }
}

/// Checks a `Grip-Sig` token against a shared secret: valid HS256, not expired. Returns its issuer.
pub fn verify(token: &str, key: &[u8]) -> Option<String> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims = ["exp"].into_iter().map(String::from).collect();
    jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key), &validation)
        .ok()
        .map(|data| data.claims.iss)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies() {
        let s = Signer::new("pushpin", Algorithm::HS256, b"changeme").unwrap();
        let token = s.header().unwrap();
        assert_eq!(
            verify(token.to_str().unwrap(), b"changeme").as_deref(),
            Some("pushpin")
        );
        assert!(verify(token.to_str().unwrap(), b"other").is_none());
        assert_eq!(s.header().unwrap(), token, "reused within the same second");
        let v = Verifier::new(Some(b"changeme"), None, 5).unwrap();
        assert!(v.verify(token.as_bytes()));
        assert!(!Verifier::new(Some(b"x"), None, 5)
            .unwrap()
            .verify(token.as_bytes()));
    }
}
