//! TLS, on rustls with ring for every role: PEM certificates and keys (`pem`), the configs of the client roles
//! toward origins, `grip-proxy publish` and Redis (`client`), and the HTTPS client listeners (`server`).

pub mod client;
pub mod pem;
pub mod server;

/// The crypto provider every config is built with: ring (also the build's JWT crypto), TLS 1.2 and 1.3 suites.
pub(crate) fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// The protocol versions offered and accepted: TLS 1.3 and 1.2, nothing older.
pub(crate) const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
