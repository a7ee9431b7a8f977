//! Minimal HTTP/1.1 client pieces: pre-encoded requests, GRIP publish bodies and a small
//! response reader that parses only the status line, Content-Length/chunked and Connection.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Body the benchmark publishes (and the one workers count as a delivery).
pub(crate) const PUBLISHED_BODY: &[u8] = b"hello\n";
/// Body of the origin's hold response, delivered if a hold times out.
pub(crate) const TIMEOUT_BODY: &[u8] = b"timeout\n";
/// Body of the origin's stream hold: the first piece (chunk) of every stream.
pub(crate) const STREAM_START: &[u8] = b"start\n";

/// What a client learned from one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resp {
    pub status: u16,
    pub kind: BodyKind,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// Classification of a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    Published,
    Timeout,
    Other,
}

fn classify(body: &[u8]) -> BodyKind {
    if body == PUBLISHED_BODY {
        BodyKind::Published
    } else if body == TIMEOUT_BODY {
        BodyKind::Timeout
    } else {
        BodyKind::Other
    }
}

/// `GET path` with keep-alive.
pub(crate) fn get_request(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// `POST path` with a JSON body, keep-alive.
pub(crate) fn post_request(host: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// A GRIP publish body with one `http-response` item per channel (no item ids: Pushpin
/// answers an id-carrying item on a hold without prev-id by re-requesting the origin).
pub(crate) fn publish_body<S: AsRef<str>>(channels: &[S]) -> Vec<u8> {
    let body = std::str::from_utf8(PUBLISHED_BODY).unwrap_or("hello\n");
    let items: Vec<serde_json::Value> = channels
        .iter()
        .map(|c| {
            serde_json::json!({
                "channel": c.as_ref(),
                "formats": {"http-response": {"code": 200, "body": body}}
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "items": items })).unwrap_or_default()
}

/// A GRIP publish body with one `http-stream` item per channel, whose content is
/// [`PUBLISHED_BODY`] (one chunk appended to every stream on the channel).
pub(crate) fn stream_publish_body<S: AsRef<str>>(channels: &[S]) -> Vec<u8> {
    let content = std::str::from_utf8(PUBLISHED_BODY).unwrap_or("hello\n");
    let items: Vec<serde_json::Value> = channels
        .iter()
        .map(|c| {
            serde_json::json!({
                "channel": c.as_ref(),
                "formats": {"http-stream": {"content": content}}
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "items": items })).unwrap_or_default()
}

/// Reads responses from one connection with a small reusable buffer.
pub(crate) struct RespReader {
    buf: Vec<u8>,
    len: usize,
    /// Status line and body start of the last response that was neither published nor timeout.
    pub last_other: Option<String>,
    /// The `ETag` of the last response, if it had one.
    pub last_etag: Option<String>,
}

impl Default for RespReader {
    fn default() -> Self {
        Self::new()
    }
}

impl RespReader {
    pub(crate) fn new() -> Self {
        Self {
            buf: vec![0; 512],
            len: 0,
            last_other: None,
            last_etag: None,
        }
    }

    async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<usize> {
        if self.len == self.buf.len() {
            if self.buf.len() >= 1 << 20 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "response too large",
                ));
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = r.read(&mut self.buf[self.len..]).await?;
        self.len += n;
        Ok(n)
    }

    fn consume(&mut self, n: usize) {
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// Read one full response (headers and body). Errors on EOF before it is complete.
    pub(crate) async fn read_response<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> io::Result<Resp> {
        let (resp, body) = self.read_inner(r, false).await?;
        if resp.kind == BodyKind::Other {
            self.last_other = Some(format!(
                "status {} body {:?}",
                resp.status,
                String::from_utf8_lossy(&body[..body.len().min(60)])
            ));
        }
        Ok(resp)
    }

    /// Like `read_response`, also returning the body.
    pub(crate) async fn read_with_body<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> io::Result<(Resp, Vec<u8>)> {
        self.read_inner(r, true).await
    }

    async fn read_inner<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        want_body: bool,
    ) -> io::Result<(Resp, Vec<u8>)> {
        let eof = || io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed");
        // Head.
        let (status, head_len, framing, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf[..self.len]) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    let mut framing = Framing::UntilEof;
                    let mut close = resp.version == Some(0);
                    self.last_etag = None;
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                            framing =
                                Framing::Length(v.parse().map_err(|_| bad("bad content-length"))?);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                            && contains_token(h.value, b"chunked")
                        {
                            framing = Framing::Chunked;
                        } else if h.name.eq_ignore_ascii_case("etag") {
                            self.last_etag = Some(String::from_utf8_lossy(h.value).into_owned());
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            if contains_token(h.value, b"close") {
                                close = true;
                            } else if contains_token(h.value, b"keep-alive") {
                                close = false;
                            }
                        }
                    }
                    if status == 204 || status == 304 || (100..200).contains(&status) {
                        framing = Framing::Length(0);
                    }
                    break (status, n, framing, close);
                }
                Ok(httparse::Status::Partial) => {
                    if self.fill(r).await? == 0 {
                        return Err(eof());
                    }
                }
                Err(e) => return Err(bad(&format!("bad response: {e}"))),
            }
        };
        self.consume(head_len);
        // Body.
        let mut body = Vec::new();
        let kind = match framing {
            Framing::Length(n) => {
                while self.len < n {
                    if self.fill(r).await? == 0 {
                        return Err(eof());
                    }
                }
                let k = classify(&self.buf[..n]);
                if want_body || k == BodyKind::Other {
                    body = self.buf[..n].to_vec();
                }
                self.consume(n);
                k
            }
            Framing::Chunked => {
                body = self.read_chunked(r).await?;
                classify(&body)
            }
            Framing::UntilEof => {
                while self.fill(r).await? > 0 {}
                let k = classify(&self.buf[..self.len]);
                if want_body {
                    body = self.buf[..self.len].to_vec();
                }
                self.len = 0;
                let resp = Resp {
                    status,
                    kind: k,
                    close: true,
                };
                return Ok((resp, body));
            }
        };
        let resp = Resp {
            status,
            kind,
            close,
        };
        Ok((resp, body))
    }

    async fn read_chunked<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = self.buf[..self.len].windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                if self.fill(r).await? == 0 {
                    return Err(bad("eof in chunk size"));
                }
            };
            let size_str = std::str::from_utf8(&self.buf[..line_end]).unwrap_or("");
            let size_str = size_str.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_str, 16).map_err(|_| bad("bad chunk size"))?;
            self.consume(line_end + 2);
            if size == 0 {
                // Trailers end with an empty line.
                loop {
                    if let Some(p) = self.buf[..self.len].windows(2).position(|w| w == b"\r\n") {
                        self.consume(p + 2);
                        if p == 0 {
                            return Ok(body);
                        }
                        continue;
                    }
                    if self.fill(r).await? == 0 {
                        return Err(bad("eof in trailers"));
                    }
                }
            }
            while self.len < size + 2 {
                if self.fill(r).await? == 0 {
                    return Err(bad("eof in chunk"));
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            self.consume(size + 2);
        }
    }
}

enum Framing {
    Length(usize),
    Chunked,
    UntilEof,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// One request/response exchange on a fresh connection; returns status and body text.
pub(crate) async fn simple_request(addr: &str, req: &[u8]) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(req).await?;
    read_full_text(&mut s).await
}

/// Read one response and return its status and body as text (for small control answers).
pub(crate) async fn read_full_text(s: &mut TcpStream) -> io::Result<(u16, String)> {
    let (resp, body) = RespReader::new().read_with_body(s).await?;
    Ok((resp.status, String::from_utf8_lossy(&body).into_owned()))
}
