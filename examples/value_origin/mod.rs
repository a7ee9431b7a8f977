//! The example origin shared by the `demo` and `origin` examples: an ordinary HTTP server holding one value.
//!
//! GRIP mode ([`serve`], the default):
//! - `GET /value`: the value and its version (`ETag`). A client that already has the current version
//!   (`If-None-Match`) is answered with GRIP headers, so the proxy holds it on channel `value` (long-polling).
//! - `GET /events`: Server-Sent Events. The origin answers with the current value as a first event and
//!   `Grip-Hold: stream`, so the proxy keeps the response open on channel `value` (an `EventSource` reads it).
//! - `POST /value`: stores a new value and publishes it to the proxy's control API as one item with two formats:
//!   `http-response` (releases the long-polling clients) and `http-stream` (an SSE event appended to every
//!   stream).
//! - `GET /` (or `/live.html`): a page showing the value's updates both ways side by side, with a form to change
//!   it (live.html beside this file).
//!
//! No-GRIP mode ([`serve_no_grip`], the `origin` example's `--no-grip`): an API that knows nothing of GRIP, for
//! the proxy's conditional-request holds (`[routes.conditional]`).
//! - `GET /value` (and `HEAD`): `200` with the value and its `ETag`, or `304 Not Modified` with the `ETag` when
//!   `If-None-Match` names the current version. No `Grip-*` header, ever.
//! - `POST /value`: stores a new value. Publishes nothing, unless a publish URL was given: then it publishes the
//!   new value (as an `http-response` with its `ETag`) to channel `/value`, the channel that `channel = "{path}"`
//!   names for `GET /value`, without `id` or `prev-id` (replicas of this origin each count their own versions).
//! - Nothing else: `/events` and the page need GRIP.

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

/// The origin's data: a value and its version (the version is the ETag and, in GRIP mode, the publish id).
struct State {
    version: u64,
    value: String,
    /// Whether the origin speaks GRIP (holds with `Grip-*` headers, streams) or is a plain HTTP API.
    grip: bool,
    /// The control API's publish URL, e.g. `http://127.0.0.1:5561/publish/`. Always set in GRIP mode; in no-GRIP
    /// mode only when publishing was asked for.
    control: Option<String>,
}

/// Serves the origin in GRIP mode on `listener` until the task is aborted, publishing changes to `control`.
pub(crate) async fn serve(listener: TcpListener, control: String) {
    run(listener, true, Some(control)).await;
}

/// Serves the origin in no-GRIP mode on `listener` until the task is aborted: plain `ETag` / `304` answers, and
/// changes published to `publish` only when it is given.
#[allow(dead_code)] // the `demo` example and the browser test include this file too, and serve GRIP mode only
pub(crate) async fn serve_no_grip(listener: TcpListener, publish: Option<String>) {
    run(listener, false, publish).await;
}

async fn run(listener: TcpListener, grip: bool, control: Option<String>) {
    let state = Arc::new(Mutex::new(State {
        version: 1,
        value: "first value\n".into(),
        grip,
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

/// The page served at `/` and `/live.html`: plain HTML and inline JavaScript, nothing loaded from elsewhere.
const PAGE: &str = include_str!("live.html");

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !state.lock().grip {
        return Ok(handle_no_grip(&state, req).await);
    }
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/value") => get(&state, &req),
        (&Method::POST, "/value") => post(&state, req).await,
        (_, "/value") => reply(StatusCode::METHOD_NOT_ALLOWED, "GET or POST\n"),
        (&Method::GET, "/events") => events(&state, &req),
        (&Method::GET, "/" | "/live.html") => {
            let mut resp = reply(StatusCode::OK, PAGE);
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                "text/html; charset=utf-8".parse().expect("static"),
            );
            h.insert(header::CACHE_CONTROL, "no-cache".parse().expect("static"));
            resp
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n"),
    })
}

/// No-GRIP mode: `/value` only, with plain conditional requests.
async fn handle_no_grip(state: &Mutex<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/value") => get_no_grip(state, &req),
        (&Method::POST, "/value") => post(state, req).await,
        (_, "/value") => {
            let mut resp = reply(StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD or POST\n");
            resp.headers_mut()
                .insert(header::ALLOW, "GET, HEAD, POST".parse().expect("static"));
            resp
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "not found (without GRIP this origin serves /value only)\n",
        ),
    }
}

/// No-GRIP mode: the value with its `ETag`, or `304 Not Modified` (no body, the same `ETag`) when the client
/// already has the current version. A proxy with `[routes.conditional]` holds such a request itself.
fn get_no_grip(state: &Mutex<State>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let s = state.lock();
    let etag = format!("\"{}\"", s.version);
    let not_modified = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .any(|v| if_none_match_names(v.as_bytes(), &etag));
    let mut resp = if not_modified {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        resp
    } else {
        reply(StatusCode::OK, &s.value)
    };
    resp.headers_mut().insert(
        header::ETAG,
        etag.parse().expect("a quoted number is a valid header"),
    );
    resp
}

/// Whether an `If-None-Match` value (`*`, or a list of entity tags) names `etag`, compared weakly as RFC 9110
/// says for `If-None-Match` (`W/"1"` matches `"1"`).
fn if_none_match_names(value: &[u8], etag: &str) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// An SSE stream: the current value as its first event, then (held open by the proxy on channel `value`) each
/// event published. An SSE comment is written after 20 s without an event, so that idle connections stay up.
///
/// The stream is held after the current version (`prev-id`), with a `rel=next` link: if a change is published
/// between this answer and the proxy subscribing the stream, or the stream misses one, the proxy asks the link
/// (`/events?after=N`), which answers what came after N (here: the current value, if newer) and holds again.
fn events(state: &Mutex<State>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let after = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("after=")))
        .and_then(|n| n.parse::<u64>().ok());
    // A reconnecting EventSource says which event it had last.
    let reconnected = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|n| n.parse::<u64>().ok());
    let (version, body) = {
        let s = state.lock();
        let body = match after {
            // A link fetch: only what the stream has not had.
            Some(n) if n >= s.version => String::new(),
            Some(_) => sse_event(s.version, &s.value),
            None if reconnected.is_some_and(|n| n >= s.version) => "retry: 2000\n".to_owned(),
            None => format!("retry: 2000\n{}", sse_event(s.version, &s.value)),
        };
        (s.version, body)
    };
    let mut resp = reply(StatusCode::OK, &body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        "text/event-stream".parse().expect("static"),
    );
    h.insert(header::CACHE_CONTROL, "no-cache".parse().expect("static"));
    h.insert("Grip-Hold", "stream".parse().expect("static"));
    h.insert(
        "Grip-Channel",
        format!("value; prev-id={version}")
            .parse()
            .expect("channel and number"),
    );
    h.insert(
        "Grip-Link",
        format!("</events?after={version}>; rel=next")
            .parse()
            .expect("a path and a number"),
    );
    // `\n` here is two characters, backslash and n: the proxy decodes the cstring into ":" and two newlines.
    h.insert(
        "Grip-Keep-Alive",
        r":\n\n; format=cstring; timeout=20"
            .parse()
            .expect("static"),
    );
    resp
}

/// One SSE event: the version as its `id`, the value as its `data` (one `data:` line per line of the value).
fn sse_event(version: u64, value: &str) -> String {
    let mut event = format!("id: {version}\n");
    let value = value.strip_suffix('\n').unwrap_or(value);
    for line in value.split('\n') {
        event.push_str("data: ");
        event.push_str(&line.replace('\r', "")); // a CR would end the SSE line
        event.push('\n');
    }
    event.push('\n');
    event
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

/// A new value: store it, then publish it so every held client and every stream gets it now (in no-GRIP mode,
/// only when a publish URL was given).
async fn post(state: &Mutex<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "at most 64 KiB\n"),
    };
    let value = String::from_utf8_lossy(&body).into_owned();
    let (version, grip, control) = {
        let mut s = state.lock();
        s.version += 1;
        s.value = value.clone();
        (s.version, s.grip, s.control.clone())
    };
    let Some(control) = control else {
        return reply(StatusCode::OK, &format!("stored version {version}\n"));
    };
    let item = if grip {
        serde_json::json!({ "items": [{
            "channel": "value",
            "id": version.to_string(),
            "prev-id": (version - 1).to_string(),
            "formats": {
                "http-response": {
                    "headers": { "ETag": format!("\"{version}\"") },
                    "body": value,
                },
                "http-stream": { "content": sse_event(version, &value) },
            },
        }]})
    } else {
        // The channel `{path}` makes of `/value`. No id or prev-id: replicas of this origin, each counting its own
        // versions, would otherwise publish one id for different values (dropped as duplicates) or make items
        // wait for a predecessor that another replica numbered.
        serde_json::json!({ "items": [{
            "channel": "/value",
            "formats": {
                "http-response": {
                    "headers": { "ETag": format!("\"{version}\"") },
                    "body": value,
                },
            },
        }]})
    };
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
