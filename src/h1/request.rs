//! Request heads: parsed with `httparse`, then checked for RFC 9112 message framing (one unambiguous body
//! length, `chunked` as the only transfer coding) and connection persistence. Pure functions, no IO.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

use super::framing::{content_length, Framing};
use super::MAX_HEADERS;

/// A parsed, checked request head.
#[derive(Debug)]
pub(crate) struct Head {
    /// Method, URI, version, headers (hop-by-hop ones still there: the proxy strips them).
    pub(crate) parts: http::request::Parts,
    /// Body delimitation: `Empty`, `Length(n)` with n > 0, or `Chunked` (never `Close`).
    pub(crate) framing: Framing,
    /// The connection may carry another request after this one.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue` was sent with a body.
    pub(crate) expect_continue: bool,
}

/// A request we refuse before it reaches the proxy: answered with `status`, then the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reject {
    pub(crate) status: StatusCode,
    pub(crate) reason: &'static str,
}

const fn reject(status: StatusCode, reason: &'static str) -> Reject {
    Reject { status, reason }
}

/// Parses a head at the start of `buf`. `Ok(None)`: incomplete, read more (unless `buf` already holds
/// `max_head` bytes, which is a 431). `Ok(Some((head, len)))`: `len` bytes were the head.
pub(crate) fn parse(buf: &[u8], max_head: usize) -> Result<Option<(Head, usize)>, Reject> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_head {
                Err(reject(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request head too large",
                ))
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(reject(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many header fields",
            ))
        }
        Err(httparse::Error::Version) => {
            return Err(reject(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "unsupported HTTP version",
            ))
        }
        Err(_) => return Err(reject(StatusCode::BAD_REQUEST, "malformed request head")),
    };
    if len > max_head {
        return Err(reject(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        ));
    }
    let bad = |reason| reject(StatusCode::BAD_REQUEST, reason);
    let method = Method::from_bytes(req.method.unwrap_or("").as_bytes())
        .map_err(|_| bad("invalid method"))?;
    let uri: Uri = req
        .path
        .unwrap_or("")
        .parse()
        .map_err(|_| bad("invalid request target"))?;
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name =
            HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad("invalid header name"))?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| bad("invalid header value"))?;
        headers.append(name, value);
    }
    check_host(&headers, &uri, version)?;
    let framing = framing(&headers, version)?;
    let keep_alive = keep_alive(&headers, version);
    let expect_continue = version == Version::HTTP_11
        && framing != Framing::Empty
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut builder = Request::new(());
    *builder.method_mut() = method;
    *builder.uri_mut() = uri;
    *builder.version_mut() = version;
    *builder.headers_mut() = headers;
    let (parts, ()) = builder.into_parts();
    Ok(Some((
        Head {
            parts,
            framing,
            keep_alive,
            expect_continue,
        },
        len,
    )))
}

/// RFC 9112 section 3.2: an HTTP/1.1 request carries exactly one `Host`, a valid `uri-host [":" port]`; with an
/// absolute-form target the two must name the same authority. The proxy routes by `Host` and forwards it, so
/// a second or malformed one could route a request one way while the origin reads it another.
fn check_host(headers: &HeaderMap, uri: &Uri, version: Version) -> Result<(), Reject> {
    let bad = |reason| reject(StatusCode::BAD_REQUEST, reason);
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_10 => return Ok(()),
        (None, _) => return Err(bad("missing Host header")),
        (Some(_), Some(_)) => return Err(bad("more than one Host header")),
        (Some(host), None) => host.as_bytes(),
    };
    if !valid_host(host) {
        return Err(bad("invalid Host header"));
    }
    if let Some(authority) = uri.authority() {
        if !same_authority(authority.as_str().as_bytes(), host, uri.scheme_str()) {
            return Err(bad("request target and Host header disagree"));
        }
    }
    Ok(())
}

/// `uri-host [":" port]` (RFC 3986 section 3.2.2): an IP literal in brackets, or a reg-name (an IPv4 address is
/// one too), then an optional port of digits. Never empty, no user info.
fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(close) = value.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &value[1..close];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.' | b'v' | b'V'))
        {
            return false;
        }
        match &value[close + 1..] {
            [] => (&value[..=close], None),
            [b':', port @ ..] => (&value[..=close], Some(port)),
            _ => return false,
        }
    } else {
        let (host, port) = match value.iter().rposition(|b| *b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        };
        let reg_name = |b: &u8| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        };
        if !host.iter().all(reg_name) {
            return false;
        }
        (host, port)
    };
    !host.is_empty() && port.is_none_or(|p| p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
}

/// Whether an absolute-form target's authority and the `Host` header name the same host and port (any case; a
/// port left out is the scheme's default).
fn same_authority(target: &[u8], host: &[u8], scheme: Option<&str>) -> bool {
    if target.eq_ignore_ascii_case(host) {
        return true;
    }
    let default = match scheme {
        Some(s) if s.eq_ignore_ascii_case("https") => b":443".as_slice(),
        _ => b":80".as_slice(),
    };
    let strip = |a: &'_ [u8]| -> Vec<u8> {
        let lower = a.to_ascii_lowercase();
        match lower.strip_suffix(default) {
            Some(bare) => bare.to_vec(),
            None => lower,
        }
    };
    strip(target) == strip(host)
}

/// RFC 9112 section 6: `Transfer-Encoding` (HTTP/1.1 only, `chunked` only, never with `Content-Length`), else
/// one `Content-Length` value (repeats must agree), else no body.
fn framing(headers: &HeaderMap, version: Version) -> Result<Framing, Reject> {
    let bad = |reason| reject(StatusCode::BAD_REQUEST, reason);
    let has_te = headers.contains_key(header::TRANSFER_ENCODING);
    let has_cl = headers.contains_key(header::CONTENT_LENGTH);
    if has_te {
        if has_cl {
            return Err(bad("both Transfer-Encoding and Content-Length"));
        }
        if version == Version::HTTP_10 {
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        let codings: Vec<&[u8]> = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(trim)
            .filter(|c| !c.is_empty())
            .collect();
        return match codings.as_slice() {
            [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ => Err(reject(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported Transfer-Encoding (only chunked)",
            )),
        };
    }
    if !has_cl {
        return Ok(Framing::Empty);
    }
    Ok(match content_length(headers).map_err(bad)? {
        Some(0) | None => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

fn keep_alive(headers: &HeaderMap, version: Version) -> bool {
    let mut close = false;
    let mut keep = false;
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|b| *b == b',').map(trim) {
            close |= token.eq_ignore_ascii_case(b"close");
            keep |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    match version {
        Version::HTTP_10 => keep && !close,
        _ => !close,
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(raw: &str) -> Result<Option<(Head, usize)>, Reject> {
        parse(raw.as_bytes(), 8192)
    }

    #[test]
    fn framing_table() {
        let cases: &[(&str, Result<Framing, u16>)] = &[
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Ok(Framing::Empty)),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
                Ok(Framing::Length(5)),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
                Ok(Framing::Empty),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                Ok(Framing::Length(5)),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n",
                Ok(Framing::Length(5)),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                Err(400),
            ),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", Err(400)),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", Err(400)),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
                Err(400),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok(Framing::Chunked),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n",
                Ok(Framing::Chunked),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                Err(400),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                Err(501),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
                Err(501),
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                Err(400),
            ),
            ("GET / HTTP/2.0\r\n\r\n", Err(505)),
            ("GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", Err(400)),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", Err(400)),
            ("GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", Err(400)),
        ];
        for (raw, want) in cases {
            let got = p(raw)
                .map(|o| o.unwrap().0.framing)
                .map_err(|r| r.status.as_u16());
            assert_eq!(&got, want, "{raw:?}");
        }
    }

    #[test]
    fn keep_alive_and_expect() {
        let h = |raw: &str| p(raw).unwrap().unwrap().0;
        assert!(h("GET / HTTP/1.1\r\nHost: a\r\n\r\n").keep_alive);
        assert!(!h("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").keep_alive);
        assert!(!h("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(h("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive);
        assert!(
            h("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expect_continue
        );
        assert!(!h("GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n").expect_continue);
    }

    #[test]
    fn host_header() {
        let cases: &[(&str, Result<(), &str>)] = &[
            ("GET / HTTP/1.1\r\nHost: a.example\r\n\r\n", Ok(())),
            ("GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n", Ok(())),
            ("GET / HTTP/1.1\r\nHost: 127.0.0.1:7999\r\n\r\n", Ok(())),
            ("GET / HTTP/1.1\r\nHost: [::1]:7999\r\n\r\n", Ok(())),
            ("GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n", Ok(())),
            ("GET / HTTP/1.0\r\n\r\n", Ok(())),
            ("GET / HTTP/1.1\r\n\r\n", Err("missing Host header")),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                Err("more than one Host header"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
                Err("more than one Host header"),
            ),
            (
                "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
                Err("more than one Host header"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
                Err("invalid Host header"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
                Err("invalid Host header"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n",
                Err("invalid Host header"),
            ),
            (
                "GET / HTTP/1.1\r\nHost:\r\n\r\n",
                Err("invalid Host header"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a:x\r\n\r\n",
                Err("invalid Host header"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a:1:2\r\n\r\n",
                Err("invalid Host header"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
                Err("invalid Host header"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n",
                Err("invalid Host header"),
            ),
            (
                "GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
                Ok(()),
            ),
            (
                "GET http://A.example:80/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
                Ok(()),
            ),
            (
                "GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n",
                Err("request target and Host header disagree"),
            ),
            (
                "GET http://a.example:8080/x HTTP/1.1\r\nHost: a.example\r\n\r\n",
                Err("request target and Host header disagree"),
            ),
            (
                "GET http://a.example/x HTTP/1.1\r\n\r\n",
                Err("missing Host header"),
            ),
        ];
        for (raw, want) in cases {
            let got = p(raw).map(|_| ()).map_err(|r| r.reason);
            assert_eq!(&got, want, "{raw:?}");
            if let Err(r) = p(raw) {
                assert_eq!(r.status, StatusCode::BAD_REQUEST, "{raw:?}");
            }
        }
    }

    #[test]
    fn partial_and_limits() {
        assert!(p("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(parse(big.as_bytes(), 8192).unwrap_err().status, 431);
        let many: String = (0..101).map(|i| format!("X-{i}: 1\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(parse(raw.as_bytes(), 65536).unwrap_err().status, 431);
        let (head, len) = p("GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\nNEXT")
            .unwrap()
            .unwrap();
        assert_eq!(len, "GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n".len());
        assert_eq!(head.parts.uri, "/a?b=1");
        assert_eq!(head.parts.headers["host"], "x");
    }
}
