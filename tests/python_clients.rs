//! The Python GRIP client libraries against grip-proxy, unchanged: an origin written with `gripcontrol`
//! (examples/python/origin.py: holds with `create_hold_response` and `create_grip_channel_header`, checks
//! `Grip-Sig` with `validate_sig`, publishes with `GripPubControl`) behind the proxy, and `GripPubControl`
//! publishing (examples/python/publish.py) with no credentials, a JWT, a bearer key and Basic; and streams: the
//! origin's Server-Sent Events held open with `create_hold_stream` (or `Grip-Hold: stream`), read through the
//! proxy by the `sseclient-py` library (examples/python/sse_client.py), while `GripPubControl` publishes
//! `HttpStreamFormat` items.
//!
//! They need a Python with the pinned packages of examples/python/requirements.txt: `GRIP_PROXY_PYTHON`, else
//! `target/pyenv/bin/python` (`scripts/test` and `.ci/run` create it). Without one the tests say loudly that
//! they were skipped, except under CI (`CI` set), where they fail: CI must run them.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinHandle;

/// The `Grip-Sig` key shared by the proxy's route and the origin.
const SIG_KEY: &str = "a long shared secret for Grip-Sig";

/// The virtualenv's Python, or `None` after saying loudly on stderr that `test` is skipped (a failure under CI).
fn python_or_skip(test: &str) -> Option<PathBuf> {
    let candidate = std::env::var_os("GRIP_PROXY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python"));
    let usable = std::process::Command::new(&candidate)
        .args(["-c", "import gripcontrol"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if usable {
        return Some(candidate);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: no Python with gripcontrol at {} (GRIP_PROXY_PYTHON), and CI must run the Python client tests \
         (.ci/run and scripts/test create target/pyenv)",
        candidate.display()
    );
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED python_clients::{test}: no Python with gripcontrol at {}. Run `bash scripts/test`, or \
         `python3 -m venv target/pyenv && target/pyenv/bin/pip install -r examples/python/requirements.txt` ***\n",
        candidate.display()
    );
    None
}

macro_rules! python_or_skip {
    ($test:literal) => {
        match python_or_skip($test) {
            Some(python) => python,
            None => return,
        }
    };
}

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/python")
        .join(name)
}

/// examples/python/origin.py, running.
struct PyOrigin {
    _child: Child,
}

impl PyOrigin {
    /// Starts the origin on `port`, publishing to `control`; returns once it listens.
    async fn start(python: &Path, port: u16, control: SocketAddr, hold_timeout: u32) -> PyOrigin {
        let mut child = Command::new(python)
            .arg(example("origin.py"))
            .args(["--port", &port.to_string()])
            .env("GRIP_URL", format!("http://{control}"))
            .env("GRIP_SIG_KEY", SIG_KEY)
            .env("HOLD_TIMEOUT", hold_timeout.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = within(LIMIT, BufReader::new(stdout).lines().next_line())
            .await
            .unwrap()
            .expect("origin.py exited before listening");
        assert_eq!(line, format!("listening on http://127.0.0.1:{port}"));
        PyOrigin { _child: child }
    }
}

/// A proxy whose one route goes to 127.0.0.1:`port`, signing with `SIG_KEY`.
fn proxy_to_port(port: u16) -> ProxyBuilder {
    Proxy::with_routes(&format!(
        "[[routes]]\norigin = \"http://127.0.0.1:{port}\"\nsig_key = \"{SIG_KEY}\""
    ))
}

/// A GET with `If-None-Match`, running in its own task (a client about to be held).
fn conditional_get(proxy: &Proxy, path: &str, etag: &str) -> JoinHandle<Resp> {
    let req = request("GET", path)
        .header("if-none-match", etag)
        .body(empty())
        .unwrap();
    tokio::spawn(send(proxy.addr(), req))
}

async fn response(client: JoinHandle<Resp>) -> Resp {
    within(LIMIT, client).await.unwrap()
}

#[tokio::test]
async fn a_gripcontrol_origin_holds_clients_both_ways_and_its_grippubcontrol_publish_releases_them()
{
    let python = python_or_skip!(
        "a_gripcontrol_origin_holds_clients_both_ways_and_its_grippubcontrol_publish_releases_them"
    );
    let port = free_port();
    let proxy = proxy_to_port(port).start().await;
    let _origin = PyOrigin::start(&python, port, proxy.control_addr(), 55).await;

    let now = proxy.get("/value").await;
    assert_eq!(now.status, 200);
    assert_eq!(now.text(), "first value\n");
    assert_eq!(now.header("etag"), Some("\"1\""));

    let by_instruct = conditional_get(&proxy, "/value", "\"1\"");
    let by_headers = conditional_get(&proxy, "/value?via=headers", "\"1\"");
    proxy.wait_held(2).await;

    // The origin publishes the new value itself, through GripPubControl (blocking), before answering the POST.
    let post = proxy
        .send(
            request("POST", "/value")
                .body(full("second value\n"))
                .unwrap(),
        )
        .await;
    assert_eq!(post.status, 200, "{}", post.text());
    for client in [by_instruct, by_headers] {
        let resp = response(client).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "second value\n");
        assert_eq!(resp.header("etag"), Some("\"2\""));
        resp.assert_no_grip_headers();
    }
    assert_eq!(proxy.registry().last_id("value").as_deref(), Some("2"));

    // A client still on version 1 is behind the channel (prev-id 1, last id 2): re-fetched, it gets version 2.
    let behind = proxy
        .send(
            request("GET", "/value")
                .header("if-none-match", "\"1\"")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(behind.text(), "second value\n");
}

#[tokio::test]
async fn a_hold_times_out_with_the_origins_304_both_ways() {
    let python = python_or_skip!("a_hold_times_out_with_the_origins_304_both_ways");
    let port = free_port();
    let proxy = proxy_to_port(port)
        .toml("[hold]\nmin_timeout_secs = 1")
        .start()
        .await;
    let _origin = PyOrigin::start(&python, port, proxy.control_addr(), 1).await;
    let by_instruct = conditional_get(&proxy, "/value", "\"1\"");
    let by_headers = conditional_get(&proxy, "/value?via=headers", "\"1\"");
    for client in [by_instruct, by_headers] {
        let resp = response(client).await;
        assert_eq!(resp.status, 304);
        assert_eq!(resp.header("etag"), Some("\"1\""));
        assert!(resp.body.is_empty());
        resp.assert_no_grip_headers();
    }
}

#[tokio::test]
async fn the_origin_refuses_requests_not_signed_by_the_proxy() {
    let python = python_or_skip!("the_origin_refuses_requests_not_signed_by_the_proxy");
    let port = free_port();
    // This proxy signs with another key than the origin expects.
    let wrong = Proxy::with_routes(&format!(
        "[[routes]]\norigin = \"http://127.0.0.1:{port}\"\nsig_key = \"not the origin's key\""
    ))
    .start()
    .await;
    let _origin = PyOrigin::start(&python, port, wrong.control_addr(), 55).await;
    let origin: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        within(LIMIT, get(origin, "/value")).await.status,
        403,
        "direct"
    );
    assert_eq!(wrong.get("/value").await.status, 403, "wrong key");
    let right = proxy_to_port(port).start().await;
    assert_eq!(right.get("/value").await.status, 200);
}

/// Runs examples/python/publish.py with `GRIP_URL` and these arguments.
async fn publish_py(python: &Path, grip_url: &str, args: &[&str]) -> Output {
    let child = Command::new(python)
        .arg(example("publish.py"))
        .args(args)
        .env("GRIP_URL", grip_url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    within(LIMIT, child).await.unwrap()
}

#[track_caller]
fn assert_published(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "published\n");
}

#[tokio::test]
async fn grippubcontrol_publishes_without_credentials_in_one_batch() {
    let python = python_or_skip!("grippubcontrol_publishes_without_credentials_in_one_batch");
    let origin = Origin::start(|req| Reply::hold(&req.path()[1..])).await;
    let proxy = Proxy::start(origin.addr()).await;
    let a = Pending::get(proxy.addr(), "/a");
    let b = Pending::get(proxy.addr(), "/b");
    proxy.wait_held(2).await;
    // A trailing slash makes the library post to //publish/.
    let url = format!("http://{}/", proxy.control_addr());
    let out = publish_py(&python, &url, &["a", "for a\n", "b", "for b\n"]).await;
    assert_published(&out);
    assert_eq!(a.response().await.text(), "for a\n");
    assert_eq!(b.response().await.text(), "for b\n");
}

#[tokio::test]
async fn grippubcontrol_publishes_with_a_jwt_a_bearer_key_or_basic_and_is_refused_without() {
    let python = python_or_skip!(
        "grippubcontrol_publishes_with_a_jwt_a_bearer_key_or_basic_and_is_refused_without"
    );
    let origin = Origin::start(|req| Reply::hold(&req.path()[1..])).await;
    let proxy = Proxy::to(origin.addr())
        .toml(
            "[control.auth]\njwt_key = \"a jwt secret of some length\"\njwt_iss = \"backend\"\n\
             bearer_key = \"static-bearer-key\"\nbasic_user = \"publisher\"\nbasic_password = \"pass word\"",
        )
        .start()
        .await;
    let control = proxy.control_addr();
    let clients: Vec<Pending> = ["/jwt", "/bearer", "/basic"]
        .iter()
        .map(|p| Pending::get(proxy.addr(), p))
        .collect();
    proxy.wait_held(3).await;

    for (url, args) in [
        (format!("http://{control}"), vec![]),
        (format!("http://{control}?iss=backend&key=wrong"), vec![]),
        (format!("http://{control}?key=wrong"), vec![]),
        (
            format!("http://{control}"),
            vec!["--basic", "publisher:wrong"],
        ),
    ] {
        let mut argv = args.clone();
        argv.extend(["jwt", "nope"]);
        let out = publish_py(&python, &url, &argv).await;
        assert_eq!(out.status.code(), Some(1), "{url} {args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("401"), "{url} {args:?}: {err}");
    }
    assert_eq!(proxy.registry().held(), 3, "nothing was delivered");

    let jwt = format!("http://{control}?iss=backend&key=a%20jwt%20secret%20of%20some%20length");
    assert_published(&publish_py(&python, &jwt, &["jwt", "by jwt"]).await);
    let bearer = format!("http://{control}?key=static-bearer-key");
    assert_published(&publish_py(&python, &bearer, &["bearer", "by bearer"]).await);
    let plain = format!("http://{control}");
    assert_published(
        &publish_py(
            &python,
            &plain,
            &["--basic", "publisher:pass word", "basic", "by basic"],
        )
        .await,
    );
    let mut bodies = Vec::new();
    for client in clients {
        bodies.push(client.response().await.text().to_owned());
    }
    assert_eq!(bodies, ["by jwt", "by bearer", "by basic"]);
}

/// examples/python/sse_client.py reading a URL: what it printed, a JSON object a line.
struct SseClient {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl SseClient {
    fn start(python: &Path, url: &str) -> SseClient {
        let mut child = Command::new(python)
            .arg(example("sse_client.py"))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        SseClient { child, lines }
    }

    /// The next line it printed (the response head, then one event each), or `None` once the stream ended.
    async fn next(&mut self) -> Option<Value> {
        within(LIMIT, self.lines.next_line())
            .await
            .unwrap()
            .map(|line| serde_json::from_str(&line).unwrap())
    }

    /// Waits for the client to exit after the end of the stream; returns its exit code.
    async fn exit_code(mut self) -> Option<i32> {
        within(LIMIT, self.child.wait()).await.unwrap().code()
    }
}

/// An event as sse_client.py prints it.
fn sse(id: Option<&str>, event: &str, data: &str) -> Value {
    json!({"id": id, "event": event, "data": data})
}

#[tokio::test]
async fn an_sse_client_reads_through_the_proxy_in_order_what_grippubcontrol_publishes_to_streams() {
    let python = python_or_skip!(
        "an_sse_client_reads_through_the_proxy_in_order_what_grippubcontrol_publishes_to_streams"
    );
    let port = free_port();
    let proxy = proxy_to_port(port).start().await;
    let _origin = PyOrigin::start(&python, port, proxy.control_addr(), 55).await;
    let grip_url = format!("http://{}", proxy.control_addr());

    // One stream held by a create_hold_stream instruct body, one by Grip-Hold: stream headers.
    let mut clients = [
        SseClient::start(&python, &format!("http://{}/events", proxy.addr())),
        SseClient::start(
            &python,
            &format!("http://{}/events?via=headers", proxy.addr()),
        ),
    ];
    let mut received: [Vec<Value>; 2] = Default::default();
    for (client, got) in clients.iter_mut().zip(&mut received) {
        assert_eq!(
            client.next().await,
            Some(json!({"status": 200, "content-type": "text/event-stream"}))
        );
        got.push(client.next().await.unwrap()); // the value now, from the origin
    }
    proxy.wait_held(2).await;
    assert_eq!(proxy.registry().streams_on("value"), 2);

    // The origin publishes one item with an HttpResponseFormat and an HttpStreamFormat (an SSE event).
    let post = proxy
        .send(
            request("POST", "/value")
                .body(full("second value\nin two lines\n"))
                .unwrap(),
        )
        .await;
    assert_eq!(post.status, 200, "{}", post.text());
    for (client, got) in clients.iter_mut().zip(&mut received) {
        got.push(client.next().await.unwrap());
    }

    // publish_http_stream: two items in one batch, each an SSE event of its own.
    let out = publish_py(
        &python,
        &grip_url,
        &[
            "--stream",
            "value",
            "event: note\ndata: one\n\n",
            "value",
            "id: x\ndata: two\ndata: lines\n\n",
        ],
    )
    .await;
    assert_published(&out);
    for (client, got) in clients.iter_mut().zip(&mut received) {
        got.push(client.next().await.unwrap());
        got.push(client.next().await.unwrap());
    }

    // HttpStreamFormat(close=True) ends both streams: each client sees the end and exits.
    assert_published(&publish_py(&python, &grip_url, &["--close", "value"]).await);
    let expected = [
        sse(Some("1"), "message", "first value"),
        sse(Some("2"), "message", "second value\nin two lines"),
        sse(None, "note", "one"),
        sse(Some("x"), "message", "two\nlines"),
    ];
    for (mut client, got) in clients.into_iter().zip(received) {
        assert_eq!(client.next().await, None, "the stream ended");
        assert_eq!(client.exit_code().await, Some(0));
        assert_eq!(got, expected);
    }
    proxy.wait_held(0).await;
}
