//! A client connection's transport: its TCP socket, plain or under TLS. Plain sockets are read and written
//! directly (and lent to releases, `DirectWrite`); a TLS session turns ciphertext into plaintext and back with
//! buffers that exist only while bytes are in flight, so that a parked HTTPS connection keeps none.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::h1::{socket, DirectWrite};
use crate::tls::server::{Handshakes, Progress, Session};

/// Bytes read from the socket per read: a stack buffer, so that an idle connection owns no read buffer at all.
pub(super) const READ_CHUNK: usize = 8192;

/// Plaintext encrypted before the ciphertext is written out, at most: bounds the ciphertext buffer of a large
/// response.
const ENCRYPT_BATCH: usize = 64 * 1024;

/// The transport of a client connection.
pub(super) enum Io {
    /// Plain HTTP: shared with the registry while a request is parked ([`DirectWrite`]), written only by the
    /// connection's task otherwise.
    Plain(Arc<TcpStream>),
    /// HTTPS: the socket and its session, the connection's alone.
    Tls(Box<Tls>),
}

/// A TLS connection: the socket and the session over it.
pub(super) struct Tls {
    tcp: TcpStream,
    session: Session,
    /// Where the handshake's outcome is counted.
    handshakes: Arc<Handshakes>,
}

impl Io {
    /// A TLS connection over `tcp`, before its handshake.
    pub(super) fn tls(tcp: TcpStream, session: Session, handshakes: Arc<Handshakes>) -> Io {
        Io::Tls(Box::new(Tls {
            tcp,
            session,
            handshakes,
        }))
    }

    /// Counts the handshake's outcome (TLS only).
    pub(super) fn handshake_done(&self, completed: bool) {
        if let Io::Tls(tls) = self {
            tls.handshakes.record(completed);
        }
    }

    /// The socket (for readiness waits and its addresses).
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Io::Plain(tcp) => tcp,
            Io::Tls(tls) => &tls.tcp,
        }
    }

    /// Whether the client connected with TLS.
    pub(super) fn is_tls(&self) -> bool {
        matches!(self, Io::Tls(_))
    }

    /// The socket, lent to a release that writes its answer itself: plain connections only (a TLS session's
    /// bytes must go through the session, in order).
    pub(super) fn lend(&self) -> Option<DirectWrite> {
        match self {
            Io::Plain(tcp) => Some(DirectWrite::new(tcp.clone())),
            Io::Tls(_) => None,
        }
    }

    /// Runs the TLS handshake to its end (no-op for plain connections). Application data that came with the
    /// client's last handshake flight is appended to `buf`. Bounded by the caller.
    pub(super) async fn handshake(&mut self, buf: &mut BytesMut) -> io::Result<()> {
        let Io::Tls(tls) = self else {
            return Ok(());
        };
        let mut progress = tls.session.receive(&mut [], buf).map_err(tls_error)?;
        loop {
            tls.flush().await?;
            if progress != Progress::Handshaking {
                return Ok(());
            }
            socket::read_ready(&tls.tcp).await?;
            let mut chunk = [0u8; READ_CHUNK];
            let n = match socket::try_read(&tls.tcp, &mut chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "client closed the connection during the TLS handshake",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            progress = match tls.session.receive(&mut chunk[..n], buf) {
                Ok(progress) => progress,
                Err(e) => {
                    // The alert that says why, if the socket takes it now.
                    let _ = tls.flush_now();
                    return Err(tls_error(e));
                }
            };
        }
    }

    /// One read without waiting, appending what the client sent (plaintext) to `buf`. `Some(0)`: the client
    /// closed its side; `None`: nothing there after all.
    pub(super) fn read_some(&mut self, buf: &mut BytesMut) -> io::Result<Option<usize>> {
        let mut chunk = [0u8; READ_CHUNK];
        let tcp = self.tcp();
        let n = match socket::try_read(tcp, &mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        match self {
            Io::Plain(_) => {
                buf.extend_from_slice(&chunk[..n]);
                Ok(Some(n))
            }
            Io::Tls(tls) => {
                if n == 0 {
                    return Ok(Some(0));
                }
                let before = buf.len();
                let progress = match tls.session.receive(&mut chunk[..n], buf) {
                    Ok(progress) => progress,
                    Err(e) => {
                        let _ = tls.flush_now();
                        return Err(tls_error(e));
                    }
                };
                // A key update or an alert to answer: sent now if the socket takes it, else before the next write.
                tls.flush_now()?;
                match buf.len() - before {
                    0 if progress == Progress::PeerClosed => Ok(Some(0)),
                    0 => Ok(None),
                    got => Ok(Some(got)),
                }
            }
        }
    }

    /// Writes all of `bytes`, waiting whenever the socket is full.
    pub(super) async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Io::Plain(tcp) => socket::write_all(tcp, bytes).await,
            Io::Tls(tls) => {
                for batch in bytes.chunks(ENCRYPT_BATCH) {
                    tls.session.encrypt(batch).map_err(tls_error)?;
                    tls.flush().await?;
                }
                Ok(())
            }
        }
    }

    /// Writes what the socket takes now of `bytes`, without waiting. `Err(WouldBlock)`: nothing was taken. A TLS
    /// connection takes at most one record's plaintext, and only once what it encrypted before has been sent; the
    /// ciphertext the socket did not take is sent first by the next write or [`Io::flush_now`].
    pub(super) fn try_write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Io::Plain(tcp) => tcp.try_write(bytes),
            Io::Tls(tls) => {
                tls.flush_now()?;
                if !tls.session.outgoing().is_empty() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let n = bytes.len().min(16 * 1024);
                tls.session.encrypt(&bytes[..n]).map_err(tls_error)?;
                tls.flush_now()?;
                Ok(n)
            }
        }
    }

    /// Sends what the socket takes now of the ciphertext not sent yet (TLS only; plain connections have none).
    pub(super) fn flush_now(&mut self) -> io::Result<()> {
        match self {
            Io::Plain(_) => Ok(()),
            Io::Tls(tls) => tls.flush_now(),
        }
    }

    /// Bytes taken from the connection's writers but not handed to the socket yet (TLS ciphertext).
    pub(super) fn unsent(&self) -> usize {
        match self {
            Io::Plain(_) => 0,
            Io::Tls(tls) => tls.session.outgoing().len(),
        }
    }

    /// Ends the sending side: TLS says close_notify first (if the socket takes it now), then the socket's sending
    /// side is shut down. Errors are ignored: the client may have gone already.
    pub(super) fn shutdown_write(&mut self) {
        if let Io::Tls(tls) = self {
            tls.session.close_notify();
            let _ = tls.flush_now();
        }
        socket::shutdown_write(self.tcp());
    }
}

impl socket::WriteAll for Io {
    fn write_all(
        &mut self,
        bytes: &[u8],
    ) -> impl std::future::Future<Output = io::Result<()>> + Send {
        Io::write_all(self, bytes)
    }
}

impl Tls {
    /// Sends what the socket takes now of the pending ciphertext.
    fn flush_now(&mut self) -> io::Result<()> {
        while !self.session.outgoing().is_empty() {
            match self.tcp.try_write(self.session.outgoing()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.session.sent(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends all the pending ciphertext, waiting whenever the socket is full.
    async fn flush(&mut self) -> io::Result<()> {
        let pending = self.session.outgoing().len();
        if pending > 0 {
            socket::write_all(&self.tcp, self.session.outgoing()).await?;
            self.session.sent(pending);
        }
        Ok(())
    }
}

/// A TLS failure as the connection's IO error (logged by the connection, at debug level: scanners and clients
/// that give up are common, and nothing an operator can fix).
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {e}"))
}
