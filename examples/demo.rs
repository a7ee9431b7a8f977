//! A complete long-poll setup in one process, to try grip-proxy with curl: a small example origin on
//! 127.0.0.1:8080 that speaks GRIP, and grip-proxy in front of it on 127.0.0.1:7999 (control API 127.0.0.1:5561).
//!
//! Run: `cargo run --release --example demo`, then (see README.md):
//! - `curl -i http://127.0.0.1:7999/value` answers at once with the value and its ETag;
//! - `curl -i -H 'If-None-Match: "1"' http://127.0.0.1:7999/value` waits (held by the proxy) ...
//! - ... until `curl -X POST -d 'new value' http://127.0.0.1:7999/value` changes the value: the origin publishes
//!   it, and every waiting client gets it at once; after 30 s without a change a waiting client gets `304`.
//!
//! The origin is an ordinary HTTP server: it only adds GRIP headers to its "nothing new" answer, and publishes
//! to the control API when its data changes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpListener;

use grip_proxy::config::{Config, Overrides};
use grip_proxy::App;

/// The origin's data: a value and its version (the version is the ETag and the publish id).
struct State {
    version: u64,
    value: String,
    control: String,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let origin_addr: SocketAddr = "127.0.0.1:8080".parse()?;
    let listener = TcpListener::bind(origin_addr).await?;
    let config = Config::load(
        None,
        &Overrides {
            origin: Some(format!("http://{origin_addr}")),
            listen: Some("127.0.0.1:7999".into()),
            control_listen: Some("127.0.0.1:5561".into()),
        },
    )?;
    let app = App::start(config).await?;
    let state = Arc::new(Mutex::new(State {
        version: 1,
        value: "first value\n".into(),
        control: format!("http://{}/publish/", app.control_addr()),
    }));
    println!(
        "example origin on http://{origin_addr}, grip-proxy on http://{}",
        app.proxy_addr()
    );
    println!(
        "try: curl -i -H 'If-None-Match: \"1\"' http://{}/value",
        app.proxy_addr()
    );

    let origin = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(state.clone(), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    tokio::signal::ctrl_c().await?;
    origin.abort();
    app.shutdown().await;
    Ok(())
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/value" {
        return Ok(reply(StatusCode::NOT_FOUND, "not found\n"));
    }
    match *req.method() {
        Method::GET => Ok(get(&state, &req)),
        Method::POST => Ok(post(&state, req).await),
        _ => Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n")),
    }
}

/// A client that already has the current version is told "nothing new" with GRIP headers: the proxy holds it on
/// channel `value` until the next version is published, or answers 304 after 30 s.
fn get(state: &Mutex<State>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let s = state.lock();
    let etag = format!("\"{}\"", s.version);
    let has_current = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut resp = reply(StatusCode::OK, &s.value);
    resp.headers_mut().insert(
        header::ETAG,
        etag.parse().expect("a quoted number is a valid header"),
    );
    if has_current {
        let h = resp.headers_mut();
        h.insert("Grip-Hold", "response".parse().expect("static"));
        h.insert(
            "Grip-Channel",
            format!("value; prev-id={}", s.version)
                .parse()
                .expect("channel and number"),
        );
        h.insert("Grip-Timeout", "30".parse().expect("static"));
        h.insert("Grip-Status", "304".parse().expect("static"));
    }
    resp
}

/// A new value: store it, then publish it so every held client gets it now.
async fn post(state: &Mutex<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "at most 64 KiB\n"),
    };
    let value = String::from_utf8_lossy(&body).into_owned();
    let (version, control) = {
        let mut s = state.lock();
        s.version += 1;
        s.value = value.clone();
        (s.version, s.control.clone())
    };
    let item = serde_json::json!({ "items": [{
        "channel": "value",
        "id": version.to_string(),
        "prev-id": (version - 1).to_string(),
        "formats": { "http-response": {
            "headers": { "ETag": format!("\"{version}\"") },
            "body": value,
        }},
    }]});
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let publish = Request::post(control)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(item.to_string())))
        .expect("a valid request");
    match client.request(publish).await {
        Ok(r) if r.status().is_success() => {
            reply(StatusCode::OK, &format!("stored version {version}\n"))
        }
        Ok(r) => reply(
            StatusCode::BAD_GATEWAY,
            &format!("publish answered {}\n", r.status()),
        ),
        Err(e) => reply(StatusCode::BAD_GATEWAY, &format!("publish failed: {e}\n")),
    }
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, "text/plain".parse().expect("static"));
    resp
}
