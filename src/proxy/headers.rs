//! Header rewriting on the way to the origin and back: hop-by-hop headers out (by the codec's rule), client
//! `Grip-*` headers out, our `Grip-Sig` and `X-Forwarded-*` in.

use std::net::SocketAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::grip::strip_grip_headers;
use crate::h1::strip_hop_by_hop;

/// What the proxy adds to a request toward the origin.
pub(crate) struct Upstream<'a> {
    /// `Grip-Sig` for the route.
    pub grip_sig: HeaderValue,
    /// The client's address, for `X-Forwarded-For` (when configured).
    pub client_addr: Option<SocketAddr>,
    /// The scheme the client used, for `X-Forwarded-Proto` (when configured).
    pub proto: Option<&'a str>,
    /// The request came from a trusted GRIP proxy (valid `Grip-Sig` under the upstream key): its `Grip-*`
    /// headers are kept (its `Grip-Sig` is still replaced by ours).
    pub trusted: bool,
}

/// Rewrites a client's request headers for the origin: no hop-by-hop, no client `Grip-*` (a client can neither
/// give instructions nor forge a signature), our `Grip-Sig`, and `X-Forwarded-*` as configured. `Host` stays.
pub(crate) fn to_origin(headers: &mut HeaderMap, add: Upstream<'_>) {
    strip_hop_by_hop(headers);
    if !add.trusted {
        strip_grip_headers(headers);
    }
    headers.insert(HeaderName::from_static("grip-sig"), add.grip_sig);
    // What GRIP libraries may rely on: we apply `Grip-Status` (filters and `Grip-Link` are not supported).
    headers.insert(
        HeaderName::from_static("grip-feature"),
        HeaderValue::from_static("status"),
    );
    if let Some(addr) = add.client_addr {
        let ip = addr.ip().to_string();
        // Several header lines are one comma-separated list: keep every line's addresses, in order.
        let prior: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let value = if prior.is_empty() {
            ip
        } else {
            format!("{}, {ip}", prior.join(", "))
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    if let Some(proto) = add.proto {
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(static_proto(proto)),
        );
    }
}

/// The origin's own reason phrase, when it sent one other than the standard one: kept on a held response.
pub(crate) fn reason(parts: &http::response::Parts) -> Option<bytes::Bytes> {
    parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| bytes::Bytes::copy_from_slice(r.as_bytes()))
}

/// Rewrites an origin's response headers for the client: no hop-by-hop, no `Grip-*`.
pub(crate) fn to_client(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    strip_grip_headers(headers);
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

fn static_proto(proto: &str) -> &'static str {
    if proto == "https" {
        "https"
    } else {
        "http"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(list: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (n, v) in list {
            m.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn to_origin_rewrites() {
        let mut h = map(&[
            ("host", "example.com"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("grip-sig", "forged"),
            ("grip-hold", "response"),
            ("grip-last", "c; last-id=1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("accept", "*/*"),
        ]);
        to_origin(
            &mut h,
            Upstream {
                grip_sig: HeaderValue::from_static("signed"),
                client_addr: Some("127.0.0.1:5000".parse().unwrap()),
                proto: Some("http"),
                trusted: false,
            },
        );
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "accept",
                "grip-feature",
                "grip-sig",
                "host",
                "x-forwarded-for",
                "x-forwarded-proto"
            ]
        );
        assert_eq!(h["grip-sig"], "signed");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
    }

    #[test]
    fn to_client_strips() {
        let mut h = map(&[
            ("transfer-encoding", "chunked"),
            ("grip-channel", "a"),
            ("etag", "x"),
        ]);
        to_client(&mut h);
        assert_eq!(h.len(), 1);
    }
}
