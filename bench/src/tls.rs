//! HTTPS for the benchmark: the run's CA and leaf certificate (rcgen, PEM in a temp dir), the
//! clients' rustls connector trusting that CA, and a client connection that is plain TCP or TLS.

use crate::children::Result;
use crate::http::{get_request, RespReader};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The run's certificates: a CA, and a leaf for `127.0.0.1` and `localhost` signed by it (ECDSA
/// P-256, rcgen's default), as PEM files in a temp dir that is removed when this is dropped.
pub(crate) struct Certs {
    pub dir: PathBuf,
    /// The CA certificate the clients trust.
    pub ca: PathBuf,
    /// The leaf's chain (the leaf, then the CA) and its private key, for the servers.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Certs {
    /// Make the CA and the leaf and write them into `grip-bench-tls-<pid>` under the system temp
    /// dir.
    pub(crate) fn make() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("grip-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let certs = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        let e = |e: rcgen::Error| format!("making the run's certificates: {e}");
        let ca_key = rcgen::KeyPair::generate().map_err(e)?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "grip-bench CA");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
        let leaf_key = rcgen::KeyPair::generate().map_err(e)?;
        // "127.0.0.1" becomes an IP address SAN, "localhost" a DNS name.
        let mut leaf =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .map_err(e)?;
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "grip-bench server");
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).map_err(e)?;
        let write = |p: &Path, s: &str| {
            std::fs::write(p, s).map_err(|e| format!("write {}: {e}", p.display()))
        };
        write(&certs.ca, &ca_cert.pem())?;
        write(
            &certs.cert,
            &format!("{}{}", leaf_cert.pem(), ca_cert.pem()),
        )?;
        write(&certs.key, &leaf_key.serialize_pem())?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&certs.key, std::fs::Permissions::from_mode(0o600));
        }
        Ok(certs)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client connector trusting only the CA in the PEM file `ca`: rustls with ring, TLS 1.2 and
/// 1.3 (rustls's default cipher suites, in its order of preference: TLS 1.3 AES-256-GCM first),
/// ALPN `http/1.1`, and no session resumption (every connection makes a full handshake).
pub(crate) fn connector(ca: &Path) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("read {}: {e}", ca.display()))? {
        let c = c.map_err(|e| format!("read {}: {e}", ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("CA in {}: {e}", ca.display()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS client config: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A client's connection: plain TCP or TLS over TCP.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    /// Connect to `addr` (with `nodelay`) and, with a connector, make a full TLS handshake for the
    /// server name 127.0.0.1 (the leaf's IP address SAN).
    pub(crate) async fn connect(addr: SocketAddr, tls: Option<&TlsConnector>) -> io::Result<Self> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        match tls {
            None => Ok(Conn::Plain(s)),
            Some(c) => {
                let name = ServerName::from(IpAddr::V4(Ipv4Addr::LOCALHOST));
                Ok(Conn::Tls(Box::new(c.connect(name, s).await?)))
            }
        }
    }

    /// Write all of `buf` and flush it (a TLS stream may keep records until flushed).
    pub(crate) async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_all(buf).await?;
        self.flush().await
    }

    /// What the TLS handshake negotiated: protocol version, cipher suite, key exchange group
    /// and ALPN protocol (None: plain TCP).
    pub(crate) fn session(&self) -> Option<String> {
        let Conn::Tls(s) = self else {
            return None;
        };
        let c = s.get_ref().1;
        let version = c
            .protocol_version()
            .map_or("?".to_string(), |v| format!("{v:?}"));
        let suite = c
            .negotiated_cipher_suite()
            .map_or("?".to_string(), |s| format!("{:?}", s.suite()));
        let group = c
            .negotiated_key_exchange_group()
            .map_or("?".to_string(), |g| format!("{:?}", g.name()));
        let alpn = c.alpn_protocol().map_or("none".to_string(), |a| {
            String::from_utf8_lossy(a).into_owned()
        });
        Some(format!("{version} {suite} {group} ALPN {alpn}"))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One `GET /plain` over a new TLS connection to `addr`: the answer's status and what the
/// handshake negotiated (bounded by 5 s).
pub(crate) async fn probe(addr: SocketAddr, tls: &TlsConnector) -> Result<(u16, String)> {
    let r = async {
        let mut c = Conn::connect(addr, Some(tls)).await?;
        c.send(&get_request(&addr.to_string(), "/plain")).await?;
        let resp = RespReader::new().read_response(&mut c).await?;
        Ok::<_, io::Error>((resp.status, c.session().unwrap_or_default()))
    };
    match tokio::time::timeout(Duration::from_secs(5), r).await {
        Ok(Ok(x)) => Ok(x),
        Ok(Err(e)) => Err(format!("HTTPS GET /plain to {addr}: {e}")),
        Err(_) => Err(format!("HTTPS GET /plain to {addr}: no answer within 5 s")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivateKeyDer;
    use tokio::io::AsyncReadExt;

    /// The run's leaf verifies for 127.0.0.1 under its CA, and the client negotiates TLS 1.3 with
    /// its first-choice suite and ALPN http/1.1 against a rustls server with default settings.
    #[tokio::test]
    async fn clients_trust_the_runs_certificate() {
        let certs = Certs::make().expect("certs");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certs.cert)
            .expect("chain")
            .map(|c| c.expect("cert"))
            .collect();
        assert_eq!(chain.len(), 2);
        let key = PrivateKeyDer::from_pem_file(&certs.key).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let srv = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let mut s = acceptor.accept(s).await.expect("handshake");
            let mut buf = [0u8; 256];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")
                .await
                .expect("write");
            s.flush().await.expect("flush");
        });
        let connector = connector(&certs.ca).expect("connector");
        let (status, session) = probe(addr, &connector).await.expect("probe");
        assert_eq!(status, 200);
        assert!(
            session.starts_with("TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519 ALPN http/1.1"),
            "{session}"
        );
        srv.await.expect("server");
        let dir = certs.dir.clone();
        drop(certs);
        assert!(!dir.exists());
    }
}
