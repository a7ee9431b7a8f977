//! The HTTPS listeners' side: certificates chosen by SNI and swapped on reload ([`Certificates`], [`Resolver`]),
//! the server config, and [`Session`], a connection on rustls's unbuffered API whose record buffers are the
//! proxy's own, so that a parked HTTPS client keeps none.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::BytesMut;
use rustls::server::{ClientHello, ResolvesServerCert, UnbufferedServerConnection};
use rustls::sign::CertifiedKey;
use rustls::unbuffered::{ConnectionState, EncryptError, InsufficientSizeError};

use super::pem::{self, PemError};

/// One certificate chain and its key, as loaded from PEM text.
#[derive(Clone)]
pub struct Certificate {
    key: Arc<CertifiedKey>,
    /// The PEM text both came from (compared on reload; never shown).
    source: Arc<[u8]>,
}

/// Why a certificate could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateError {
    /// The PEM text is not usable.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// rustls refused the key, or the key does not belong to the certificate.
    #[error("{0}")]
    Key(String),
}

impl Certificate {
    /// A certificate from the PEM text of its chain (end-entity first) and of its private key.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Self, CertificateError> {
        let certs = pem::certificates(chain)?;
        let private = pem::private_key(key)?;
        let certified =
            CertifiedKey::from_der(certs, private, &super::provider()).map_err(|e| {
                CertificateError::Key(match e {
                    rustls::Error::InconsistentKeys(_) => {
                        "the private key does not belong to the certificate".to_owned()
                    }
                    other => format!("unusable private key or certificate: {other}"),
                })
            })?;
        let mut source = chain.to_vec();
        source.extend_from_slice(key);
        Ok(Certificate {
            key: Arc::new(certified),
            source: source.into(),
        })
    }
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Certificate {}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Certificate(..)")
    }
}

/// A host name pattern of a certificate: `api.example.com`, or `*.example.com` for any one label before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern(String);

impl HostPattern {
    /// A pattern from its text (lower-cased). `None`: not a host name or a `*.` wildcard over one.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim().to_ascii_lowercase();
        let name = text.strip_prefix("*.").unwrap_or(&text);
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        valid.then_some(HostPattern(text))
    }

    fn matches(&self, host: &str) -> bool {
        match self.0.strip_prefix("*.") {
            Some(suffix) => host
                .split_once('.')
                .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
            None => self.0 == host,
        }
    }
}

/// The certificates of the HTTPS listeners: a default, and others chosen by the name the client asks for (SNI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificates {
    default: Certificate,
    by_host: Vec<(Vec<HostPattern>, Certificate)>,
}

impl Certificates {
    /// The default certificate, for clients whose name matches no other (or that send none).
    pub fn new(default: Certificate) -> Self {
        Certificates {
            default,
            by_host: Vec::new(),
        }
    }

    /// Adds a certificate for `hosts`. Exact names are preferred to wildcards; among equals, the first added wins.
    pub fn add(&mut self, hosts: Vec<HostPattern>, certificate: Certificate) {
        self.by_host.push((hosts, certificate));
    }

    /// The certificate for the name a client asked for.
    fn choose(&self, server_name: Option<&str>) -> &Certificate {
        let Some(name) = server_name.map(str::to_ascii_lowercase) else {
            return &self.default;
        };
        let exact = self.by_host.iter().find(|(hosts, _)| {
            hosts
                .iter()
                .any(|h| !h.0.starts_with("*.") && h.matches(&name))
        });
        let wildcard = || {
            self.by_host
                .iter()
                .find(|(hosts, _)| hosts.iter().any(|h| h.matches(&name)))
        };
        exact.or_else(wildcard).map_or(&self.default, |(_, c)| c)
    }
}

/// Picks each handshake's certificate from the certificates in force; a reload swaps them for new handshakes.
#[derive(Debug)]
pub struct Resolver {
    current: ArcSwap<Certificates>,
}

impl Resolver {
    /// A resolver serving `certificates`.
    pub fn new(certificates: Certificates) -> Arc<Self> {
        Arc::new(Resolver {
            current: ArcSwap::from_pointee(certificates),
        })
    }

    /// Serves `certificates` to every handshake from now on; connections already open keep theirs.
    pub fn swap(&self, certificates: Certificates) {
        self.current.store(Arc::new(certificates));
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().choose(hello.server_name()).key.clone())
    }
}

/// The rustls config of the HTTPS listeners: TLS 1.3 and 1.2, ALPN `http/1.1`, certificates from `resolver`,
/// and stateless session tickets (resumption costs the server no memory per session, and works on every runtime).
pub fn config(resolver: Arc<Resolver>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(super::provider())
        .with_protocol_versions(super::VERSIONS)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// Handshakes of the HTTPS listeners, by outcome (read at scrape time).
#[derive(Debug, Default)]
pub struct Handshakes {
    completed: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl Handshakes {
    /// Counts one handshake.
    pub fn record(&self, completed: bool) {
        let counter = if completed {
            &self.completed
        } else {
            &self.failed
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Handshakes completed so far.
    pub fn completed(&self) -> u64 {
        self.completed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Handshakes failed so far (refused, broken, or not finished in time).
    pub fn failed(&self) -> u64 {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Largest plaintext encrypted at once: one full TLS record.
const RECORD: usize = 16 * 1024;

/// Bytes a record adds to its plaintext, at most (header, TLS 1.3 content type, AEAD tag, TLS 1.2 nonce).
const RECORD_OVERHEAD: usize = 5 + 1 + 16 + 8;

/// Where a session stands after the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The handshake needs more bytes from the client.
    Handshaking,
    /// Application data flows.
    Open,
    /// The client sent close_notify: it sends nothing more.
    PeerClosed,
}

/// A server-side TLS session on rustls's unbuffered API. The ciphertext buffers are this struct's own: empty
/// (unallocated) once a partial record has been completed and everything encrypted has been taken, which is the
/// state of a parked connection.
pub struct Session {
    conn: UnbufferedServerConnection,
    /// Ciphertext received and not processed yet (a partial record).
    incoming: Vec<u8>,
    /// Ciphertext to be sent.
    outgoing: Vec<u8>,
    peer_closed: bool,
}

impl Session {
    /// A session for a newly accepted connection.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Result<Self, rustls::Error> {
        Ok(Session {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            peer_closed: false,
        })
    }

    /// Takes ciphertext from the client, appending the plaintext it carries to `plain`. Handshake messages and
    /// alerts to send in answer are queued in [`Session::outgoing`].
    pub fn receive(
        &mut self,
        ciphertext: &mut [u8],
        plain: &mut BytesMut,
    ) -> Result<Progress, rustls::Error> {
        if !self.incoming.is_empty() {
            self.incoming.extend_from_slice(ciphertext);
            return self.process(Some(plain));
        }
        // The common case: whole records. Processed where they are (the caller's buffer); only a partial record
        // at the end is kept.
        let (progress, used) = self.process_in(ciphertext, Some(plain));
        if progress.is_ok() {
            self.incoming.extend_from_slice(&ciphertext[used..]);
        }
        progress
    }

    /// Whether the handshake is still under way.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Drives the connection over the buffered ciphertext until it needs more input or can send data.
    fn process(&mut self, plain: Option<&mut BytesMut>) -> Result<Progress, rustls::Error> {
        let mut incoming = std::mem::take(&mut self.incoming);
        let (progress, used) = self.process_in(&mut incoming, plain);
        incoming.drain(..used);
        if !incoming.is_empty() {
            self.incoming = incoming;
        }
        progress
    }

    /// [`Session::process`] over `incoming`; also returns how many of its bytes were used up.
    fn process_in(
        &mut self,
        incoming: &mut [u8],
        mut plain: Option<&mut BytesMut>,
    ) -> (Result<Progress, rustls::Error>, usize) {
        let mut used = 0;
        let progress = loop {
            let status = self.conn.process_tls_records(&mut incoming[used..]);
            let discard = status.discard;
            let state = match status.state {
                Ok(state) => state,
                Err(e) => {
                    self.queue_alert();
                    return (Err(e), used + discard);
                }
            };
            let step = match state {
                ConnectionState::ReadTraffic(mut read) => {
                    while let Some(record) = read.next_record() {
                        let record = match record {
                            Ok(record) => record,
                            Err(e) => return (Err(e), used + discard),
                        };
                        if let Some(plain) = plain.as_deref_mut() {
                            plain.extend_from_slice(record.payload);
                        }
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    if let Err(e) = encode_into(&mut encode, &mut self.outgoing) {
                        return (Err(e), used + discard);
                    }
                    None
                }
                // What was encoded is in `outgoing`, which the connection sends before anything it writes later.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::BlockedHandshake => Some(Progress::Handshaking),
                ConnectionState::WriteTraffic(_) => Some(if self.peer_closed {
                    Progress::PeerClosed
                } else {
                    Progress::Open
                }),
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.peer_closed = true;
                    Some(Progress::PeerClosed)
                }
                // Early data is not enabled (`max_early_data_size` is 0); anything else is newer than this code.
                _ => Some(Progress::Open),
            };
            used += discard;
            if let Some(progress) = step {
                break progress;
            }
        };
        (Ok(progress), used)
    }

    /// After a failure: queues the alert rustls prepared for the peer (e.g. `no_application_protocol`,
    /// `handshake_failure`), so that the client learns why before the connection closes.
    fn queue_alert(&mut self) {
        for _ in 0..4 {
            let status = self.conn.process_tls_records(&mut []);
            match status.state {
                Ok(ConnectionState::EncodeTlsData(mut encode)) => {
                    if encode_into(&mut encode, &mut self.outgoing).is_err() {
                        return;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(transmit)) => transmit.done(),
                _ => return,
            }
        }
    }

    /// Encrypts `plain` into [`Session::outgoing`]. Only once the handshake is done.
    pub fn encrypt(&mut self, plain: &[u8]) -> Result<(), rustls::Error> {
        for piece in plain.chunks(RECORD) {
            self.with_write_traffic(|write, outgoing| {
                let start = outgoing.len();
                outgoing.resize(start + piece.len() + RECORD_OVERHEAD, 0);
                let written = match write.encrypt(piece, &mut outgoing[start..]) {
                    Ok(n) => n,
                    Err(EncryptError::InsufficientSize(InsufficientSizeError {
                        required_size,
                    })) => {
                        outgoing.resize(start + required_size, 0);
                        write
                            .encrypt(piece, &mut outgoing[start..])
                            .map_err(|e| rustls::Error::General(e.to_string()))?
                    }
                    Err(e) => return Err(rustls::Error::General(e.to_string())),
                };
                outgoing.truncate(start + written);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Queues a close_notify alert (best effort: nothing is queued when the session cannot send).
    pub fn close_notify(&mut self) {
        let _ = self.with_write_traffic(|write, outgoing| {
            let start = outgoing.len();
            outgoing.resize(start + 64, 0);
            let written = write
                .queue_close_notify(&mut outgoing[start..])
                .map_err(|e| rustls::Error::General(e.to_string()))?;
            outgoing.truncate(start + written);
            Ok(())
        });
    }

    /// Runs `f` with the connection in its write state (after queueing whatever the connection had to send).
    fn with_write_traffic(
        &mut self,
        f: impl FnOnce(
            &mut rustls::unbuffered::WriteTraffic<'_, rustls::server::ServerConnectionData>,
            &mut Vec<u8>,
        ) -> Result<(), rustls::Error>,
    ) -> Result<(), rustls::Error> {
        // Anything pending first (a handshake message, a key update): into `outgoing`, in order.
        let progress = self.process(None)?;
        if progress == Progress::Handshaking {
            return Err(rustls::Error::HandshakeNotComplete);
        }
        let status = self.conn.process_tls_records(&mut self.incoming);
        debug_assert_eq!(status.discard, 0, "everything was processed just before");
        match status.state? {
            ConnectionState::WriteTraffic(mut write) => f(&mut write, &mut self.outgoing),
            _ => Err(rustls::Error::General(
                "the TLS session cannot send application data now".into(),
            )),
        }
    }

    /// Ciphertext waiting to be sent.
    pub fn outgoing(&self) -> &[u8] {
        &self.outgoing
    }

    /// Drops the first `n` bytes of [`Session::outgoing`] (they were sent); frees the buffer once it is empty.
    pub fn sent(&mut self, n: usize) {
        self.outgoing.drain(..n.min(self.outgoing.len()));
        if self.outgoing.is_empty() {
            self.outgoing = Vec::new();
        }
    }
}

/// Appends a handshake record to `outgoing`.
fn encode_into(
    encode: &mut rustls::unbuffered::EncodeTlsData<'_, rustls::server::ServerConnectionData>,
    outgoing: &mut Vec<u8>,
) -> Result<(), rustls::Error> {
    let failed = |e: rustls::unbuffered::EncodeError| {
        rustls::Error::General(format!("encoding a handshake record: {e}"))
    };
    let start = outgoing.len();
    outgoing.resize(start + 2048, 0);
    let written = match encode.encode(&mut outgoing[start..]) {
        Ok(n) => n,
        Err(rustls::unbuffered::EncodeError::InsufficientSize(InsufficientSizeError {
            required_size,
        })) => {
            outgoing.resize(start + required_size, 0);
            encode.encode(&mut outgoing[start..]).map_err(failed)?
        }
        Err(e) => return Err(failed(e)),
    };
    outgoing.truncate(start + written);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn certificate(names: &[&str]) -> (Certificate, rustls::pki_types::CertificateDer<'static>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let made = rcgen::generate_simple_self_signed(names).unwrap();
        let cert = Certificate::from_pem(
            made.cert.pem().as_bytes(),
            made.key_pair.serialize_pem().as_bytes(),
        )
        .unwrap();
        (cert, made.cert.der().clone())
    }

    fn client(root: rustls::pki_types::CertificateDer<'static>) -> rustls::ClientConnection {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(super::super::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
        rustls::ClientConnection::new(Arc::new(config), name).unwrap()
    }

    /// Moves what the client has to send into the session, `piece` bytes at a time.
    fn to_server(
        client: &mut rustls::ClientConnection,
        session: &mut Session,
        piece: usize,
    ) -> (Progress, BytesMut) {
        let mut wire = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let mut plain = BytesMut::new();
        let mut progress = session.receive(&mut [], &mut plain).unwrap();
        for chunk in wire.chunks(piece) {
            progress = session.receive(&mut chunk.to_vec(), &mut plain).unwrap();
        }
        (progress, plain)
    }

    /// Moves what the session has to send into the client.
    fn to_client(session: &mut Session, client: &mut rustls::ClientConnection) {
        let mut wire = session.outgoing().to_vec();
        session.sent(wire.len());
        let mut reader = &wire[..];
        while !reader.is_empty() {
            client.read_tls(&mut reader).unwrap();
            client.process_new_packets().unwrap();
        }
        wire.clear();
    }

    #[test]
    fn records_split_anywhere_are_put_together_and_nothing_is_kept_once_idle() {
        for piece in [1, 7, 300, 100_000] {
            let (cert, root) = certificate(&["a.test"]);
            let mut certs = Certificates::new(certificate(&["default.test"]).0);
            certs.add(vec![HostPattern::parse("a.test").unwrap()], cert);
            let config = config(Resolver::new(certs)).unwrap();
            let mut session = Session::new(config).unwrap();
            let mut client = client(root);
            while client.is_handshaking() || session.is_handshaking() {
                to_server(&mut client, &mut session, piece);
                to_client(&mut session, &mut client);
            }
            assert!(!session.is_handshaking(), "piece {piece}");
            assert_eq!(client.alpn_protocol(), Some(&b"http/1.1"[..]));

            let request = vec![b'q'; 40_000];
            client.writer().write_all(&request).unwrap();
            let (progress, plain) = to_server(&mut client, &mut session, piece);
            assert_eq!(progress, Progress::Open);
            assert_eq!(&plain[..], &request[..], "piece {piece}");
            assert!(
                session.incoming.capacity() == 0,
                "no buffer kept once every record is read"
            );

            session.encrypt(b"answer").unwrap();
            to_client(&mut session, &mut client);
            let mut got = [0u8; 6];
            client.reader().read_exact(&mut got).unwrap();
            assert_eq!(&got, b"answer");
            assert!(
                session.outgoing.capacity() == 0,
                "no buffer kept once everything is sent"
            );

            client.send_close_notify();
            let (progress, plain) = to_server(&mut client, &mut session, piece);
            assert_eq!((progress, plain.len()), (Progress::PeerClosed, 0));
        }
    }

    #[test]
    fn host_patterns() {
        let p = |t: &str| HostPattern::parse(t);
        assert!(p("*.a.test").unwrap().matches("x.a.test"));
        assert!(!p("*.a.test").unwrap().matches("a.test"));
        assert!(!p("*.a.test").unwrap().matches("y.x.a.test"));
        assert!(p("A.Test").unwrap().matches("a.test"));
        for bad in ["", "a..b", "*.", "a b", "*.*.a", "-.a/b"] {
            assert!(p(bad).is_none(), "{bad:?}");
        }
    }
}
