//! The client side of TLS: the rustls configs of HTTPS origins, `grip-proxy publish` and the Redis bus, verified
//! against the system's roots (loaded once), a given CA bundle, or (on request) not at all.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Makes ring the process's default crypto provider, for code that builds rustls configs without naming one
/// (redis-rs's `rediss://`). Idempotent: a provider already installed stays.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Which certificates a client trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The system's roots (the OS store), loaded once per process.
    System,
    /// These roots only (a private CA bundle).
    Roots(Arc<RootCertStore>),
    /// None: any certificate is accepted (its handshake signatures are still checked). For tests and debugging.
    Insecure,
}

/// A client config for HTTP/1.1 over TLS 1.3 or 1.2 (ALPN `http/1.1`) trusting `trust`. Its in-memory session
/// store is kept: connections made with the same config resume earlier sessions.
pub fn http1_config(trust: &Trust) -> Result<Arc<ClientConfig>, rustls::Error> {
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_protocol_versions(super::VERSIONS)?;
    let mut config = match trust {
        Trust::System => builder
            .with_root_certificates(system_roots())
            .with_no_client_auth(),
        Trust::Roots(roots) => builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(super::provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The config trusting the system's roots, built once and shared (so its sessions are too).
pub fn system_http1_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, rustls::Error>> = OnceLock::new();
    CONFIG.get_or_init(|| http1_config(&Trust::System)).clone()
}

/// The system's trusted roots, loaded on first use. An empty or unreadable store is logged (once) and gives an
/// empty root store: every certificate then fails verification (`UnknownIssuer`), nothing panics.
pub fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "could not read part of the system's trusted root certificates");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if ignored > 0 {
                tracing::debug!(ignored, "system root certificates rustls cannot use were skipped");
            }
            if added == 0 {
                tracing::warn!(
                    "no usable trusted root certificates in the system store: TLS peers verified against it \
                     will all fail (give a CA bundle, e.g. routes[].tls_ca)"
                );
            }
            Arc::new(roots)
        })
        .clone()
}

/// The name a TLS peer is verified against (and sent as SNI): a DNS name, or an IP address (`[v6]` accepted).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned())
        .map_err(|_| format!("{host:?} is not a valid DNS name or IP address"))
}

/// The TLS setting of an HTTPS origin: the shared client config and the name verified. Compared by what was
/// configured (the CA bundle's bytes, the name, the skip switch), never by the config's identity.
#[derive(Clone)]
pub struct OriginTls {
    inner: Arc<OriginTlsInner>,
}

struct OriginTlsInner {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    /// The CA bundle as given (`None`: the system's roots).
    ca: Option<Box<[u8]>>,
    skip_verify: bool,
}

impl OriginTls {
    /// A setting of `config` (built for `ca` and `skip_verify`) verifying `server_name`.
    pub fn new(
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
        ca: Option<Box<[u8]>>,
        skip_verify: bool,
    ) -> Self {
        OriginTls {
            inner: Arc::new(OriginTlsInner {
                config,
                server_name,
                ca,
                skip_verify,
            }),
        }
    }

    /// The client config (shared by every route with the same trust, so that their sessions resume).
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.inner.config
    }

    /// The name sent as SNI and verified.
    pub fn server_name(&self) -> &ServerName<'static> {
        &self.inner.server_name
    }

    /// Certificates are not verified.
    pub fn skips_verify(&self) -> bool {
        self.inner.skip_verify
    }

    /// Identifies the client config among those alive (for keeping connections of different settings apart).
    pub fn config_id(&self) -> usize {
        Arc::as_ptr(&self.inner.config) as usize
    }
}

impl PartialEq for OriginTls {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&*self.inner, &*other.inner);
        a.server_name == b.server_name && a.ca == b.ca && a.skip_verify == b.skip_verify
    }
}

impl Eq for OriginTls {}

impl std::fmt::Debug for OriginTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &*self.inner;
        f.debug_struct("OriginTls")
            .field("server_name", &i.server_name)
            .field("roots", &if i.ca.is_some() { "tls_ca" } else { "system" })
            .field("skip_verify", &i.skip_verify)
            .finish()
    }
}

/// Accepts any certificate chain; still checks that the peer holds the key of the certificate it sent.
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        assert!(matches!(server_name("a.test"), Ok(ServerName::DnsName(_))));
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(server_name("[::1]"), Ok(ServerName::IpAddress(_))));
        assert_eq!(
            server_name("bad name").unwrap_err(),
            "\"bad name\" is not a valid DNS name or IP address"
        );
    }

    #[test]
    fn settings_compare_by_what_was_configured() {
        let config = |t: &Trust| http1_config(t).unwrap();
        let name = server_name("a.test").unwrap();
        let a = OriginTls::new(config(&Trust::Insecure), name.clone(), None, true);
        let b = OriginTls::new(config(&Trust::Insecure), name.clone(), None, true);
        assert_eq!(a, b);
        assert_ne!(a.config_id(), b.config_id());
        let c = OriginTls::new(
            config(&Trust::Insecure),
            name,
            Some(b"x".to_vec().into()),
            true,
        );
        assert_ne!(a, c);
        assert_eq!(a.config().alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}
