//! Differential test of the client-facing HTTP/1.1 server against hyper's: the same raw requests go to both,
//! each serving the same echo handler, and what comes back must agree (or, where noted, ours is stricter).
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Answers `METHOD URI\n<body>` so both servers' views of a request can be compared.
async fn echo<B>(req: Request<B>) -> Response<Full<Bytes>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let head = format!("{} {}\n", req.method(), req.uri());
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Response::builder()
                .status(400)
                .body(Full::new(Bytes::from("body error")))
                .unwrap()
        }
    };
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    Response::new(Full::new(Bytes::from(out)))
}

async fn start_ours() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(grip_proxy::front::serve(
        "proxy",
        listener,
        None,
        tokio_util::task::TaskTracker::new(),
        CancellationToken::new(),
        Duration::from_secs(1),
        grip_proxy::front::Limits::default(),
        |req, _peer| async move {
            echo(req)
                .await
                .map(|b| b.map_err(|never| match never {}).boxed())
        },
    ));
    addr
}

async fn start_hyper() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req| async move { Ok::<_, Infallible>(echo(req).await) });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Sends `raw`, reads until the server closes (or 2 s pass), returns the (status, body) of each response.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut got)).await;
    parse_responses(&got)
}

fn parse_responses(mut buf: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let Ok(httparse::Status::Complete(len)) = resp.parse(buf) else {
            return out;
        };
        let code = resp.code.unwrap();
        let mut content_length = None;
        let mut chunked = false;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                content_length = std::str::from_utf8(h.value).unwrap().parse::<usize>().ok();
            }
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = true;
            }
        }
        buf = &buf[len..];
        if code == 100 {
            continue;
        }
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let line_end = buf.windows(2).position(|w| w == b"\r\n").unwrap();
                let size =
                    usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16)
                        .unwrap();
                buf = &buf[line_end + 2..];
                if size == 0 {
                    buf = &buf[2..];
                    break;
                }
                body.extend_from_slice(&buf[..size]);
                buf = &buf[size + 2..];
            }
            body
        } else {
            let n = content_length.unwrap_or(0).min(buf.len());
            let body = buf[..n].to_vec();
            buf = &buf[n..];
            body
        };
        out.push((code, body));
    }
}

enum Expect {
    /// Exactly the same responses.
    Same,
    /// Both refuse: no 2xx response.
    BothRefuse,
    /// Ours refuses where hyper is lenient (a documented choice for a proxy: ambiguity is refused).
    OursStricter,
}

#[tokio::test]
async fn same_answers_as_hyper() {
    let ours = start_ours().await;
    let hyper = start_hyper().await;
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("simple GET", b"GET /a?b=c HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(), Expect::Same),
        ("HTTP/1.0 closes", b"GET / HTTP/1.0\r\n\r\n".to_vec(), Expect::Same),
        ("content-length body", b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_vec(), Expect::Same),
        (
            "chunked body with extensions and trailers",
            b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n".to_vec(),
            Expect::Same,
        ),
        (
            "pipelined requests",
            b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(),
            Expect::Same,
        ),
        (
            "HTTP/1.0 keep-alive",
            b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n".to_vec(),
            Expect::Same,
        ),
        (
            "expect 100-continue",
            b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc".to_vec(),
            Expect::Same,
        ),
        ("conflicting content-length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".to_vec(), Expect::BothRefuse),
        ("invalid content-length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n".to_vec(), Expect::BothRefuse),
        ("bad chunk size", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(), Expect::BothRefuse),
        ("invalid header name", b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n".to_vec(), Expect::BothRefuse),
        ("obsolete line folding", b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n".to_vec(), Expect::BothRefuse),
        ("garbage", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(), Expect::BothRefuse),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), Expect::BothRefuse),
        ("head over our 64 KiB limit (hyper allows about 400 KiB)", long_header.into_bytes(), Expect::OursStricter),
        (
            "chunked plus content-length",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n".to_vec(),
            Expect::OursStricter,
        ),
    ];
    for (name, raw, expect) in cases {
        let a = exchange(ours, &raw).await;
        let b = exchange(hyper, &raw).await;
        let refused = |r: &Vec<(u16, Vec<u8>)>| r.iter().all(|(code, _)| *code >= 400);
        match expect {
            Expect::Same => assert_eq!(a, b, "{name}: ours vs hyper"),
            Expect::BothRefuse => {
                assert!(refused(&a), "{name}: ours answered {a:?}");
                assert!(refused(&b), "{name}: hyper answered {b:?}");
            }
            Expect::OursStricter => {
                assert!(refused(&a), "{name}: ours answered {a:?}");
                assert!(
                    !refused(&b),
                    "{name}: hyper refused too; make this case BothRefuse"
                );
            }
        }
        if matches!(expect, Expect::Same) {
            assert!(!a.is_empty(), "{name}: no response");
        }
    }
}
