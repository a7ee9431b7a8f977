//! The example origin shared by the `demo` and `origin` examples: an ordinary HTTP server holding one value at
//! `/value`. A client that already has the current version (`If-None-Match`) is answered with GRIP headers, so
//! the proxy holds it on channel `value`; a POST stores a new value and publishes it to the proxy's control API.

use std::convert::Infallible;
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

/// The origin's data: a value and its version (the version is the ETag and the publish id).
struct State {
    version: u64,
    value: String,
    /// The control API's publish URL, e.g. `http://127.0.0.1:5561/publish/`.
    control: String,
}

/// Serves the origin on `listener` until the task is aborted, publishing changes to `control`.
pub(crate) async fn serve(listener: TcpListener, control: String) {
    let state = Arc::new(Mutex::new(State {
        version: 1,
        value: "first value\n".into(),
        control,
    }));
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
