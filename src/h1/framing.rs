//! How a message body is delimited on the wire (RFC 9112 section 6): one type for requests and responses, read
//! or written, and the `Content-Length` rule both directions share.

use http::header::{self, HeaderMap};

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body follows the head. Written without `Content-Length` (a response keeps one it was given, which
    /// describes the body a GET would get, except a 204).
    Empty,
    /// `Content-Length: n`, then n bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// The body ends when the connection closes. Responses only: a request head never parses to it, and a
    /// request is never written with it.
    Close,
}

/// The body length that the `Content-Length` fields give, if any: every value (fields and comma-separated list
/// members alike) must be a valid length and all must agree. `Err`: why not.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err("invalid Content-Length");
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or("invalid Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values");
            }
            length = Some(n);
        }
    }
    Ok(length)
}
