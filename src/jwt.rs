//! JWT keys, built once from the config's secrets: an HS256 secret, or a PEM key (EC for ES256, RSA for RS256).
//! Route signers (`Grip-Sig`), the check of a trusted upstream's `Grip-Sig` and control API credentials all take
//! their keys from here, so a key that does not parse is a config error and nothing later parses one again.

mod pem;

use std::fmt;
use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

pub(crate) use pem::PemError;

/// A key that cannot be used. Never carries the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A public key that is neither an EC nor an RSA PEM public key.
    #[error("not a PEM EC (ES256) or RSA (RS256) public key")]
    PublicPem,
    /// An RS256 key that is not a PEM RSA private key.
    #[error("not a PEM RSA private key: {0}")]
    RsaPrivate(#[source] jsonwebtoken::errors::Error),
    /// An ES256 key that is not a PEM EC private key.
    #[error("not a PEM EC private key: {0}")]
    EcPrivate(#[source] jsonwebtoken::errors::Error),
    /// A SEC1 EC key that could not be rewrapped as PKCS#8.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// An algorithm other than HS256, RS256 or ES256.
    #[error("unsupported algorithm {0:?}")]
    Algorithm(Algorithm),
}

/// The signing key for `alg`: `key` is the HS256 secret, or the PEM private key for RS256/ES256 (an EC key in
/// SEC1 form is accepted too).
pub(crate) fn encoding_key(alg: Algorithm, key: &[u8]) -> Result<EncodingKey, KeyError> {
    match alg {
        Algorithm::HS256 => Ok(EncodingKey::from_secret(key)),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(key).map_err(KeyError::RsaPrivate),
        Algorithm::ES256 => {
            EncodingKey::from_ec_pem(&pem::normalize_ec_key(key)?).map_err(KeyError::EcPrivate)
        }
        other => Err(KeyError::Algorithm(other)),
    }
}

/// The keys a JWT may be checked against: a shared HS256 secret and/or a PEM public key (EC for ES256, RSA for
/// RS256). Built once; cheap to clone. Equal when built from the same bytes; `Debug` names only the algorithms.
#[derive(Clone, Default)]
pub struct DecodingKeys {
    /// Each key with the algorithm it checks.
    keys: Arc<[(DecodingKey, Algorithm)]>,
    /// The secret the HS256 key was built from: compared, never shown.
    secret: Option<Arc<[u8]>>,
    /// The PEM the public key was built from.
    public_pem: Option<Arc<[u8]>>,
}

impl DecodingKeys {
    /// Builds the keys. `Err`: the public key is neither an EC nor an RSA PEM public key.
    pub fn new(secret: Option<Vec<u8>>, public_pem: Option<Vec<u8>>) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        if let Some(s) = &secret {
            keys.push((DecodingKey::from_secret(s), Algorithm::HS256));
        }
        if let Some(pem) = &public_pem {
            if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                keys.push((k, Algorithm::ES256));
            } else if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                keys.push((k, Algorithm::RS256));
            } else {
                return Err(KeyError::PublicPem);
            }
        }
        Ok(DecodingKeys {
            keys: keys.into(),
            secret: secret.map(Into::into),
            public_pem: public_pem.map(Into::into),
        })
    }

    /// Each key with the algorithm it checks: the secret's first, then the public key's.
    pub fn iter(&self) -> impl Iterator<Item = &(DecodingKey, Algorithm)> {
        self.keys.iter()
    }

    /// Whether there is no key at all.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether an HS256 secret was given.
    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    /// Whether a PEM public key was given.
    pub fn has_public_key(&self) -> bool {
        self.public_pem.is_some()
    }
}

impl PartialEq for DecodingKeys {
    fn eq(&self, other: &Self) -> bool {
        self.secret == other.secret && self.public_pem == other.public_pem
    }
}

impl Eq for DecodingKeys {}

impl fmt::Debug for DecodingKeys {
    // Never prints a key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithms: Vec<Algorithm> = self.keys.iter().map(|(_, alg)| *alg).collect();
        f.debug_struct("DecodingKeys")
            .field("algorithms", &algorithms)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_by_their_bytes_and_never_show() {
        let a = DecodingKeys::new(Some(b"s3cret".to_vec()), None).unwrap();
        let b = DecodingKeys::new(Some(b"s3cret".to_vec()), None).unwrap();
        let c = DecodingKeys::new(Some(b"other".to_vec()), None).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, DecodingKeys::default());
        assert!(!a.is_empty() && a.has_secret() && !a.has_public_key());
        let shown = format!("{a:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("HS256"), "{shown}");
    }

    fn encoding_error(alg: Algorithm, key: &[u8]) -> String {
        match encoding_key(alg, key) {
            Ok(_) => panic!("{alg:?} key accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn messages() {
        let e = DecodingKeys::new(None, Some(b"not a pem".to_vec())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a PEM EC (ES256) or RSA (RS256) public key"
        );
        let e = encoding_error(Algorithm::RS256, b"nope");
        assert!(e.starts_with("not a PEM RSA private key: "), "{e}");
        let e = encoding_error(Algorithm::ES256, b"nope");
        assert!(e.starts_with("not a PEM EC private key: "), "{e}");
        let e = encoding_error(Algorithm::PS256, b"nope");
        assert_eq!(e, "unsupported algorithm PS256");
        let e = encoding_error(
            Algorithm::ES256,
            b"-----BEGIN EC PRIVATE KEY-----\n!!\n-----END EC PRIVATE KEY-----",
        );
        assert_eq!(e, "invalid base64 in EC PRIVATE KEY");
    }
}
