//! Response heads, parsed with `httparse`, and their RFC 9112 section 6.3 framing (no body for HEAD, 1xx, 204, 304;
//! `chunked` last; one unambiguous `Content-Length`; else until the connection closes). Pure functions, no IO.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use super::framing::{content_length, Framing};
use super::MAX_HEADERS;

/// Largest response head accepted from an origin.
const MAX_HEAD: usize = 64 * 1024;

/// A response head that cannot be used: not valid HTTP/1.x, or its framing is ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid response: {0}")]
pub(crate) struct HeadError(pub(crate) &'static str);

/// A parsed response head.
pub(crate) struct Head {
    pub(crate) parts: http::response::Parts,
    /// Body delimitation: any of the four, `Close` included.
    pub(crate) framing: Framing,
    /// The connection may carry another request once the body is read.
    pub(crate) reusable: bool,
}

/// Parses a response head off the front of `buf`. `Ok(None)`: incomplete, read more. Interim (1xx) responses
/// other than 101 are skipped. Header values are zero-copy slices of the head's bytes.
pub(crate) fn parse(buf: &mut BytesMut, is_head: bool) -> Result<Option<Head>, HeadError> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut fields);
        let len = match resp.parse(buf) {
            // However it arrived: a whole head in one read is held to the same limit as one still arriving.
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
                return Err(HeadError("response head too large"))
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(HeadError("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadError("too many response header fields"))
            }
            Err(_) => return Err(HeadError("malformed response head")),
        };
        let code = resp.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| HeadError("invalid status code"))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(HeadError("protocol upgrades are not supported"));
        }
        if status.is_informational() {
            let _ = buf.split_to(len);
            continue;
        }
        let version = if resp.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let reason = resp.reason.unwrap_or("");
        let custom_reason = !reason.is_empty() && Some(reason) != status.canonical_reason();
        let reason_range = custom_reason.then(|| offset_in(buf, reason.as_bytes()));
        // Offsets of each name and value: the head is frozen into shared bytes after this borrow of `buf` ends,
        // and the values become slices of it (no copy, no allocation per value).
        let mut ranges = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
        let count = resp.headers.len();
        for (range, h) in ranges.iter_mut().zip(resp.headers.iter()) {
            let (ns, ne) = offset_in(buf, h.name.as_bytes());
            let (vs, ve) = offset_in(buf, h.value);
            *range = (ns, ne, vs, ve);
        }
        let head: Bytes = buf.split_to(len).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        for &(ns, ne, vs, ve) in &ranges[..count] {
            let name = HeaderName::from_bytes(&head[ns..ne])
                .map_err(|_| HeadError("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                .map_err(|_| HeadError("invalid header value"))?;
            headers.append(name, value);
        }
        let (framing, framing_reusable) = framing(status, is_head, &headers)?;
        let reusable = framing_reusable && persistent(version, &headers);
        let mut builder = http::Response::builder().status(status).version(version);
        if let Some((start, end)) = reason_range {
            if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(head.slice(start..end)) {
                builder = builder.extension(reason);
            }
        }
        let mut resp = builder
            .body(())
            .map_err(|_| HeadError("invalid response head"))?;
        *resp.headers_mut() = headers;
        let (parts, ()) = resp.into_parts();
        return Ok(Some(Head {
            parts,
            framing,
            reusable,
        }));
    }
}

/// The range of `part` (a slice of `buf`) within `buf`.
fn offset_in(buf: &[u8], part: &[u8]) -> (usize, usize) {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    (start, start + part.len())
}

/// The body's framing, and whether it leaves the connection reusable.
fn framing(
    status: StatusCode,
    is_head: bool,
    headers: &HeaderMap,
) -> Result<(Framing, bool), HeadError> {
    if is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Empty, true));
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|c| !c.is_empty());
        let chunked = last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        // With a Content-Length too, the message is suspect: read it by its coding, then close (RFC 9112 6.3).
        let reusable = chunked && !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked, reusable)
        } else {
            (Framing::Close, false)
        });
    }
    Ok(match content_length(headers).map_err(HeadError)? {
        Some(0) => (Framing::Empty, true),
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

/// Whether the origin keeps the connection open after this response.
fn persistent(version: Version, headers: &HeaderMap) -> bool {
    let has = |token: &[u8]| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
    };
    if version == Version::HTTP_10 {
        has(b"keep-alive")
    } else {
        !has(b"close")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, is_head: bool) -> Result<Option<Head>, HeadError> {
        let mut buf = BytesMut::from(raw.as_bytes());
        super::parse(&mut buf, is_head)
    }

    fn framing_of(raw: &str) -> (Framing, bool) {
        let p = parse(raw, false).unwrap().unwrap();
        (p.framing, p.reusable)
    }

    #[test]
    fn framings() {
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            (Framing::Length(5), true)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n"),
            (Framing::Length(5), true)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n"),
            (Framing::Chunked, true)
        );
        assert_eq!(
            framing_of(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n"
            ),
            (Framing::Chunked, false)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n"),
            (Framing::Close, false)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\n\r\n"),
            (Framing::Close, false)
        );
        assert_eq!(
            framing_of("HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"),
            (Framing::Empty, true)
        );
        assert_eq!(
            framing_of("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
            (Framing::Empty, false)
        );
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n"),
            (Framing::Length(1), false)
        );
        assert_eq!(
            framing_of("HTTP/1.0 200 OK\r\ncontent-length: 1\r\nConnection: Keep-Alive\r\n\r\n"),
            (Framing::Length(1), true)
        );
        let head = parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Empty);
    }

    #[test]
    fn refuses_ambiguous_or_broken_heads() {
        for raw in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(parse(raw, false).is_err(), "{raw:?} was accepted");
        }
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-le", false)
            .unwrap()
            .is_none());
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD + 1));
        assert!(parse(&huge, false).is_err());
    }

    /// The head limit holds for a head that arrives whole, at the limit and one and two bytes either side.
    #[test]
    fn head_limit_applies_to_whole_heads() {
        for delta in -2i64..=2 {
            let size = (MAX_HEAD as i64 + delta) as usize;
            let start = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-pad: ";
            let pad = size - start.len() - 4;
            let raw = format!("{start}{}\r\n\r\n", "p".repeat(pad));
            assert_eq!(raw.len(), size);
            let mut buf = BytesMut::from(raw.as_bytes());
            let got = super::parse(&mut buf, false);
            if delta <= 0 {
                assert!(matches!(got, Ok(Some(_))), "head of {size} bytes");
            } else {
                assert!(
                    matches!(got, Err(HeadError("response head too large"))),
                    "head of {size} bytes"
                );
            }
        }
    }

    #[test]
    fn skips_interim_responses_and_keeps_the_rest() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 299 Fine Thanks\r\nx-a: 1\r\nX-A: 2\r\ncontent-length: 2\r\n\r\nhi"[..],
        );
        let p = super::parse(&mut buf, false).unwrap().unwrap();
        assert_eq!(p.parts.status.as_u16(), 299);
        let reason = p
            .parts
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .unwrap();
        assert_eq!(reason.as_bytes(), b"Fine Thanks");
        let values: Vec<_> = p.parts.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(&buf[..], b"hi");
        let canonical = parse("HTTP/1.1 404 Not Found\r\n\r\n", false)
            .unwrap()
            .unwrap();
        assert!(canonical
            .parts
            .extensions
            .get::<hyper::ext::ReasonPhrase>()
            .is_none());
    }
}
