//! Head encoding: a response's status line and headers, or a request's, with our own framing (`Content-Length`,
//! `chunked`, or close-delimited), and chunk framing. Pure functions writing into a `Vec<u8>`.

use http::header::{self, HeaderMap};
use http::uri::Authority;
use http::{StatusCode, Version};

use super::Framing;

/// Chooses the framing for a response to a request of `version` (and `head` = HEAD method): no body for HEAD,
/// 1xx, 204 and 304 (headers are written as given); for an HTTP/1.0 client of unknown length, until close.
pub(crate) fn response_framing(
    status: StatusCode,
    head: bool,
    exact_len: Option<u64>,
    version: Version,
) -> Framing {
    if head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::Empty
    } else if let Some(n) = exact_len {
        Framing::Length(n)
    } else if version == Version::HTTP_11 {
        Framing::Chunked
    } else {
        Framing::Close
    }
}

/// Writes the status line and headers. Framing and connection headers in `headers` are replaced by ours;
/// with `Empty` a given `Content-Length` is kept (it describes the body a GET would get), except for 204.
pub(crate) fn response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    reason: Option<&[u8]>,
    headers: &HeaderMap,
    framing: Framing,
    keep_alive: bool,
    version: Version,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        reason.unwrap_or_else(|| status.canonical_reason().unwrap_or("Unknown").as_bytes()),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING || name == "keep-alive" {
            continue;
        }
        if name == header::CONTENT_LENGTH
            && (framing != Framing::Empty || status == StatusCode::NO_CONTENT)
        {
            continue;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    framing_field(out, framing);
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The field that says how a body is delimited: `Content-Length` or `Transfer-Encoding: chunked`; nothing for
/// no body or a close-delimited one.
fn framing_field(out: &mut Vec<u8>, framing: Framing) {
    match framing {
        Framing::Empty | Framing::Close => {}
        Framing::Length(n) => field(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        ),
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
}

/// Writes `METHOD target HTTP/1.1`, the headers (with our framing in place of any given), and `Host` when the
/// request has none (an HTTP/1.0 client's). `Empty` writes no `Content-Length`; a request is never
/// close-delimited, so `Close` writes no framing either.
pub(crate) fn request_head(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    authority: &Authority,
    framing: Framing,
) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parts.headers.contains_key(header::HOST) {
        field(out, b"host", authority.as_str().as_bytes());
    }
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    framing_field(out, framing);
    out.extend_from_slice(b"\r\n");
}

/// One header field line.
pub(crate) fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A chunk header for `len` bytes of data.
pub(crate) fn chunk_header(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(format!("{len:x}\r\n").as_bytes());
}

/// The last chunk, with no trailers.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `data` as one whole chunk (size line, data, CRLF). Empty data would end the body, so it is refused by callers.
pub(crate) fn chunk(data: &[u8]) -> bytes::Bytes {
    let mut out = Vec::with_capacity(data.len() + 20);
    chunk_header(&mut out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn encode(status: u16, headers: &[(&str, &str)], framing: Framing, keep_alive: bool) -> String {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let mut out = Vec::new();
        response_head(
            &mut out,
            StatusCode::from_u16(status).unwrap(),
            None,
            &map,
            framing,
            keep_alive,
            Version::HTTP_11,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn framing_headers_are_ours() {
        let s = encode(
            200,
            &[
                ("content-length", "99"),
                ("transfer-encoding", "gzip"),
                ("x", "1"),
            ],
            Framing::Length(5),
            true,
        );
        assert_eq!(s, "HTTP/1.1 200 OK\r\nx: 1\r\ncontent-length: 5\r\n\r\n");
        let s = encode(
            200,
            &[("connection", "keep-alive")],
            Framing::Chunked,
            false,
        );
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let s = encode(
            304,
            &[("etag", "\"v1\""), ("content-length", "12")],
            Framing::Empty,
            true,
        );
        assert_eq!(
            s,
            "HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 12\r\n\r\n"
        );
        let s = encode(204, &[("content-length", "0")], Framing::Empty, true);
        assert_eq!(s, "HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[test]
    fn choose_framing() {
        assert_eq!(
            response_framing(StatusCode::OK, true, Some(5), Version::HTTP_11),
            Framing::Empty
        );
        assert_eq!(
            response_framing(StatusCode::NOT_MODIFIED, false, Some(5), Version::HTTP_11),
            Framing::Empty
        );
        assert_eq!(
            response_framing(StatusCode::OK, false, Some(5), Version::HTTP_11),
            Framing::Length(5)
        );
        assert_eq!(
            response_framing(StatusCode::OK, false, None, Version::HTTP_11),
            Framing::Chunked
        );
        assert_eq!(
            response_framing(StatusCode::OK, false, None, Version::HTTP_10),
            Framing::Close
        );
        let mut out = Vec::new();
        chunk_header(&mut out, 255);
        assert_eq!(out, b"ff\r\n");
    }

    #[test]
    fn request_head() {
        let req = http::Request::builder()
            .method("POST")
            .uri("http://127.0.0.1:8080/a?b=1")
            .header("x-one", "1")
            .header("content-length", "999")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let authority = parts.uri.authority().unwrap().clone();
        let mut out = Vec::new();
        super::request_head(&mut out, &parts, &authority, Framing::Length(3));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a?b=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\nx-one: 1\r\ncontent-length: 3\r\n\r\n"
        );
    }
}
