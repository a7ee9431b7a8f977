//! PEM certificate chains, private keys and CA bundles, from the bytes of a secret spec (`file:PATH`, `env:NAME`
//! or literal text): errors say what was expected, never echo the key.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why PEM text could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    /// No `CERTIFICATE` block.
    #[error("no PEM certificate (-----BEGIN CERTIFICATE-----) found")]
    NoCertificate,
    /// No private key block of a known kind.
    #[error("no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) found")]
    NoKey,
    /// A block is there but not valid PEM.
    #[error("invalid PEM: {0}")]
    Invalid(String),
}

/// Every certificate in `pem`, in order (a chain: the end-entity certificate first).
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::Invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate);
    }
    Ok(certs)
}

/// The first private key in `pem`.
pub fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PemError::NoKey,
        other => PemError::Invalid(other.to_string()),
    })
}

/// A root store of the certificates in `pem` (a CA bundle). Certificates rustls cannot use as roots are an error.
pub fn roots(pem: &[u8]) -> Result<rustls::RootCertStore, PemError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in certificates(pem)? {
        store
            .add(cert)
            .map_err(|e| PemError::Invalid(format!("unusable CA certificate: {e}")))?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_what_is_missing() {
        assert_eq!(certificates(b"hello"), Err(PemError::NoCertificate));
        assert_eq!(private_key(b"hello"), Err(PemError::NoKey));
        let cert = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let chain = certificates(cert.cert.pem().as_bytes()).unwrap();
        assert_eq!(chain.len(), 1);
        assert!(private_key(cert.key_pair.serialize_pem().as_bytes()).is_ok());
        assert_eq!(
            private_key(cert.cert.pem().as_bytes()),
            Err(PemError::NoKey),
            "a certificate is not a key"
        );
        assert_eq!(roots(cert.cert.pem().as_bytes()).unwrap().len(), 1);
    }
}
