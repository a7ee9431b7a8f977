//! The HTTP/1.1 client toward origins. An exchange runs entirely in the calling task (the client's connection
//! task): it writes the request and reads the response head on a pooled keep-alive connection, and the response
//! body reads from that connection as the caller polls it. No dispatch task or channel sits in between.
//!
//! An `https` origin is reached over TLS (rustls), with the setting its route gives in the request's extensions
//! ([`OriginTls`]), else the system's roots; plain `http` connections are read and written readiness-based on
//! the socket, with no TLS cost.
//!
//! Idle connections are pooled per runtime in per-core mode (a socket belongs to the runtime that registered it):
//! a thread that serves one of those runtimes says so once ([`use_local_pool`]); every other thread shares one pool.

mod body;
mod pool;
mod transport;

use std::borrow::Cow;
use std::cell::Cell;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};
use crate::h1::{encode, response, Framing};
use crate::tls::client::{self as tls_client, OriginTls};
pub(crate) use body::OriginBody;
use pool::{Conn, Pool};
use transport::Transport;

/// Why an exchange with an origin failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OriginError {
    /// The origin could not be connected to (refused, unresolvable, or not within the connect timeout).
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: Box<str>,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake with an `https` origin failed: most often its certificate could not be verified (the
    /// reason is rustls's, e.g. `invalid peer certificate: UnknownIssuer`).
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        /// The address connected to.
        addr: Box<str>,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The connection failed while the request was written or the response head read.
    #[error("connection failed: {0}")]
    Io(#[source] io::Error),
    /// The origin closed the connection before sending a whole response head.
    #[error("origin closed the connection before a complete response head")]
    Closed,
    /// The response head is not valid HTTP/1.x, or its framing is ambiguous.
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    /// The client's request body failed while it was streamed to the origin.
    #[error("request body failed: {0}")]
    RequestBody(#[source] BoxError),
}

impl From<response::HeadError> for OriginError {
    fn from(e: response::HeadError) -> Self {
        OriginError::Invalid(e.0)
    }
}

/// Settings of the client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
    /// Idle connections kept per origin (host and port), by the whole client: with local pools, each pool keeps
    /// its share (rounded up).
    pub max_idle_per_host: usize,
    /// Longest wait for the next bytes of a response body; then the body fails and its connection is closed.
    pub body_read_timeout: Duration,
    /// Pools of their own, one per per-core runtime (0 in shared mode), beside the shared one.
    pub local_pools: usize,
}

/// The origin client. Cheap to clone (the pools are shared).
#[derive(Clone)]
pub(crate) struct Client {
    pools: Arc<Pools>,
    connect_timeout: Duration,
    body_read_timeout: Duration,
}

/// The idle connections: the pool of each per-core runtime, and one for every other thread.
struct Pools {
    shared: Arc<Pool>,
    local: Box<[Arc<Pool>]>,
}

thread_local! {
    /// The local pool that origin requests made on this thread use; `None`: the shared one.
    static LOCAL_POOL: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Makes the origin requests of this thread use local pool `index` (of any [`Client`] that has one): called once
/// by the thread of a per-core runtime, before it serves anything. Its connections are then registered with that
/// runtime and used only by its tasks; the pool's lock is uncontended but for the idle sweeper.
pub(crate) fn use_local_pool(index: usize) {
    LOCAL_POOL.with(|local| local.set(Some(index)));
}

/// A failed attempt, and whether the request may be sent again on a new connection.
struct Failed {
    error: OriginError,
    /// Nothing of the request's body was consumed and nothing of a response was received.
    retryable: bool,
}

impl Client {
    /// A client with empty pools.
    pub(crate) fn new(settings: Settings) -> Self {
        // Per-core mode splits the idle bound between the runtimes: the whole process keeps about as many idle
        // connections (and their read buffers) per origin as in shared mode.
        let max_idle = match settings.local_pools {
            0 => settings.max_idle_per_host,
            pools => settings.max_idle_per_host.div_ceil(pools),
        };
        let pool = || Arc::new(Pool::new(max_idle, settings.idle_timeout));
        Client {
            pools: Arc::new(Pools {
                shared: pool(),
                local: (0..settings.local_pools).map(|_| pool()).collect(),
            }),
            connect_timeout: settings.connect_timeout,
            body_read_timeout: settings.body_read_timeout,
        }
    }

    /// The pool of the calling thread.
    fn pool(&self) -> &Arc<Pool> {
        LOCAL_POOL
            .with(Cell::get)
            .and_then(|i| self.pools.local.get(i))
            .unwrap_or(&self.pools.shared)
    }

    /// Every pool.
    fn all_pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        std::iter::once(&self.pools.shared).chain(self.pools.local.iter())
    }

    /// Closes idle connections that have been idle longer than the idle timeout, in every pool.
    pub(crate) fn sweep_idle(&self) {
        let now = tokio::time::Instant::now();
        self.all_pools().for_each(|pool| pool.sweep(now));
    }

    /// Closes every idle connection of local pool `index`: its runtime is stopping.
    pub(crate) fn close_local(&self, index: usize) {
        if let Some(pool) = self.pools.local.get(index) {
            pool.close_all();
        }
    }

    /// Idle pooled connections, over all origins and pools.
    pub(crate) fn idle_connections(&self) -> usize {
        self.all_pools().map(|pool| pool.len()).sum()
    }

    /// Sends a request (its URI carries the origin's scheme and authority) and waits for the response head. An
    /// `https` request is sent over TLS with the [`OriginTls`] in its extensions (its route's), else verified
    /// against the system's roots.
    ///
    /// A request without a body that fails on a reused connection before any response byte arrived (the origin
    /// closed it while it was idle) is sent again on a new connection.
    ///
    /// # Cancel safety
    /// Dropping the future abandons the request; its connection is closed, not pooled.
    pub(crate) async fn send(
        &self,
        req: Request<Body>,
    ) -> Result<Response<OriginBody>, OriginError> {
        let (parts, body) = req.into_parts();
        let authority = parts
            .uri
            .authority()
            .cloned()
            .ok_or(OriginError::Invalid("request URI has no authority"))?;
        let framing = if body.is_end_stream() {
            if parts.headers.contains_key(http::header::CONTENT_LENGTH) {
                Framing::Length(0)
            } else {
                Framing::Empty
            }
        } else {
            match body.size_hint().exact() {
                Some(n) => Framing::Length(n),
                None => Framing::Chunked,
            }
        };
        let mut head = Vec::with_capacity(512);
        encode::request_head(&mut head, &parts, &authority, framing);
        let is_head = parts.method == http::Method::HEAD;
        let tls = match parts.uri.scheme_str() {
            Some("https") => Some(TlsTarget::of(&parts.extensions, &authority)?),
            _ => None,
        };
        let key: Cow<'_, str> = match &tls {
            None => Cow::Borrowed(authority.as_str()),
            // Never equal to an authority (it has a '/'): TLS and plain connections to a host:port stay apart,
            // and so do those of different settings.
            Some(t) => Cow::Owned(format!(
                "https://{authority}/{:x}/{:?}",
                t.id, t.server_name
            )),
        };
        let key = &*key;
        let mut body = (!matches!(framing, Framing::Empty | Framing::Length(0))).then_some(body);
        let pool = self.pool();
        loop {
            let (conn, reused) = match pool.checkout(key) {
                Some(conn) => (conn, true),
                None => (self.connect(&authority, tls.as_ref()).await?, false),
            };
            let sending = exchange(
                conn,
                &head,
                body.as_mut(),
                framing,
                is_head,
                self.body_read_timeout,
            );
            match sending.await {
                Ok((parts, reading)) => {
                    let body = OriginBody::new(reading, pool.clone(), key);
                    return Ok(Response::from_parts(parts, body));
                }
                Err(Failed { error, retryable }) if reused && retryable => {
                    // The other idle connections to this origin are likely from before the same restart.
                    tracing::debug!(origin = key, %error, "pooled origin connection was closed; retrying on a new one");
                    pool.clear(key);
                }
                Err(Failed { error, .. }) => return Err(error),
            }
        }
    }

    /// A new connection: TCP, and for `https` the TLS handshake, both within the connect timeout.
    async fn connect(
        &self,
        authority: &Authority,
        tls: Option<&TlsTarget>,
    ) -> Result<Conn, OriginError> {
        let addr: Box<str> = match (authority.port(), tls) {
            (Some(_), _) => authority.as_str().into(),
            (None, None) => format!("{}:80", authority.host()).into(),
            (None, Some(_)) => format!("{}:443", authority.host()).into(),
        };
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let connected = tokio::time::timeout_at(deadline, TcpStream::connect(&*addr)).await;
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(OriginError::Connect { addr, source }),
            Err(_) => {
                let source = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                return Err(OriginError::Connect { addr, source });
            }
        };
        // Small requests and responses: no Nagle delay.
        let _ = stream.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(Conn::new(Transport::Plain(stream)));
        };
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        let handshake = connector.connect(tls.server_name.clone(), stream);
        match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(stream)) => Ok(Conn::new(Transport::Tls(Box::new(stream)))),
            Ok(Err(source)) => Err(OriginError::Tls { addr, source }),
            Err(_) => {
                let source = io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake not done within the connect timeout",
                );
                Err(OriginError::Tls { addr, source })
            }
        }
    }
}

/// How an `https` request's connection is made: the client config, the name verified, and the config's identity
/// (part of the pool key).
struct TlsTarget {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    id: usize,
}

impl TlsTarget {
    /// The route's setting if the request carries one; else the system's roots and the URI's host.
    fn of(extensions: &http::Extensions, authority: &Authority) -> Result<Self, OriginError> {
        if let Some(tls) = extensions.get::<OriginTls>() {
            return Ok(TlsTarget {
                config: tls.config().clone(),
                server_name: tls.server_name().clone(),
                id: tls.config_id(),
            });
        }
        let failed = |e: String| OriginError::Tls {
            addr: authority.as_str().into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        };
        let config = tls_client::system_http1_config().map_err(|e| failed(e.to_string()))?;
        let server_name = tls_client::server_name(authority.host()).map_err(failed)?;
        Ok(TlsTarget {
            id: Arc::as_ptr(&config) as usize,
            config,
            server_name,
        })
    }
}

/// One attempt on one connection: write the request, read the response head.
async fn exchange(
    mut conn: Conn,
    head: &[u8],
    body: Option<&mut Body>,
    framing: Framing,
    is_head: bool,
    read_timeout: Duration,
) -> Result<(http::response::Parts, body::Reading), Failed> {
    let mut body_touched = false;
    // A write that fails once the body has begun may be the origin closing after an early answer (a 413 or 401
    // before the whole body): its answer may still be readable, and is used if so.
    let mut write_failed = None;
    match write_request(&mut conn, head, body, framing, is_head, &mut body_touched).await {
        Ok(Sent::Whole) => {}
        Ok(Sent::AnsweredEarly(parsed)) => {
            // The rest of the request was never sent: the connection cannot carry another one.
            let reading = body::Reading::new(conn, parsed.framing, false, read_timeout);
            return Ok((parsed.parts, reading));
        }
        Err(error @ OriginError::Io(_)) if body_touched => write_failed = Some(error),
        Err(error) => {
            let retryable = !body_touched && matches!(error, OriginError::Io(_));
            return Err(Failed { error, retryable });
        }
    }
    loop {
        if let Some(parsed) = response::parse(&mut conn.buf, is_head).map_err(|error| Failed {
            error: error.into(),
            retryable: false,
        })? {
            let reusable = parsed.reusable && write_failed.is_none();
            let reading = body::Reading::new(conn, parsed.framing, reusable, read_timeout);
            return Ok((parsed.parts, reading));
        }
        let received_before = !conn.buf.is_empty();
        conn.buf.reserve(pool::READ_CHUNK);
        let error = match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) if received_before => {
                OriginError::Invalid("connection closed in the middle of the response head")
            }
            Ok(0) => OriginError::Closed,
            Ok(_) => continue,
            Err(e) => OriginError::Io(e),
        };
        return Err(match write_failed {
            // No answer after all: the write's failure is what happened.
            Some(error) => Failed {
                error,
                retryable: false,
            },
            None => Failed {
                error,
                retryable: !received_before && !body_touched,
            },
        });
    }
}

/// How much of a request went out.
enum Sent {
    /// All of it.
    Whole,
    /// The origin answered before the whole body was sent; the rest was not.
    AnsweredEarly(response::Head),
}

/// Writes the head and the body, coalescing small pieces into one write. While it waits for the client's next
/// body bytes it watches the origin too: an origin may answer (and stop reading) before the body is complete.
async fn write_request(
    conn: &mut Conn,
    head: &[u8],
    body: Option<&mut Body>,
    framing: Framing,
    is_head: bool,
    body_touched: &mut bool,
) -> Result<Sent, OriginError> {
    let Some(body) = body else {
        conn.stream.write_all(head).await.map_err(OriginError::Io)?;
        return Ok(Sent::Whole);
    };
    let chunked = framing == Framing::Chunked;
    let mut out = Vec::with_capacity(head.len() + 1024);
    out.extend_from_slice(head);
    loop {
        *body_touched = true;
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            early = answered_early(conn, is_head) => match early? {
                Some(parsed) => return Ok(Sent::AnsweredEarly(parsed)),
                None => continue,
            },
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Err(OriginError::RequestBody(e)),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let more = !body.is_end_stream();
        conn.stream
            .put_body_piece(&mut out, &data, chunked, more)
            .await
            .map_err(OriginError::Io)?;
    }
    if chunked {
        out.extend_from_slice(encode::LAST_CHUNK);
    }
    if !out.is_empty() {
        conn.stream.write_all(&out).await.map_err(OriginError::Io)?;
    }
    Ok(Sent::Whole)
}

/// Waits until the origin sends something while the request body is still being sent. `Some`: a whole final
/// response head (interim responses are skipped); `None`: nothing usable yet, keep sending.
///
/// # Cancel safety
/// Cancel safe: bytes read are kept in the connection's buffer.
async fn answered_early(
    conn: &mut Conn,
    is_head: bool,
) -> Result<Option<response::Head>, OriginError> {
    match conn.stream.read_some(&mut conn.buf, pool::READ_CHUNK).await {
        Ok(Some(0)) => Err(OriginError::Closed),
        Ok(Some(_)) => Ok(response::parse(&mut conn.buf, is_head)?),
        Ok(None) => Ok(None),
        Err(e) => Err(OriginError::Io(e)),
    }
}
