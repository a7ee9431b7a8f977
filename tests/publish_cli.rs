//! `grip-proxy publish` (the binary, spawned) against an in-process proxy: it releases a held client with its
//! content, headers and code, reads the content from standard input, signs a JWT from `GRIP_URL`, sends a hint,
//! and fails with clear messages and exit codes (1 refused or unreachable, 2 usage).

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::process::{Output, Stdio};

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// `grip-proxy publish ARGS` with `GRIP_URL` pointing at `control` (when given), and no config from the
/// environment.
fn publish_cmd(control: Option<std::net::SocketAddr>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_grip-proxy"));
    cmd.env_remove("GRIP_PROXY_CONFIG")
        .env_remove("GRIP_URL")
        .arg("publish")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(addr) = control {
        cmd.env("GRIP_URL", format!("http://{addr}"));
    }
    cmd
}

async fn run(mut cmd: Command) -> Output {
    within(LIMIT, cmd.output()).await.unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn publishes_content_headers_and_code_to_a_held_client() {
    let origin = Origin::start(|_| Reply::hold("news")).await;
    let proxy = Proxy::start(origin.addr()).await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;

    let out = run(publish_cmd(
        Some(proxy.control_addr()),
        &[
            "--id",
            "1",
            "--code",
            "201",
            "-H",
            "X-Source: cli",
            "news",
            "hello",
        ],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Published\n");

    let resp = client.response().await;
    assert_eq!(resp.status, 201);
    assert_eq!(
        resp.text(),
        "hello\n",
        "a newline is added, as pushpin-publish does"
    );
    assert_eq!(resp.header("x-source"), Some("cli"));
    assert_eq!(proxy.registry().last_id("news").as_deref(), Some("1"));
}

#[tokio::test]
async fn stream_appends_to_streams_only_and_close_ends_them() {
    let origin = Origin::start(|req: &Recorded| match req.path() {
        "/poll" => Reply::hold("live"),
        _ => Reply::text("")
            .header("Grip-Hold", "stream")
            .header("Grip-Channel", "live"),
    })
    .await;
    let proxy = Proxy::to(origin.addr())
        .toml("[hold]\nmin_timeout_secs = 1\ndefault_timeout_secs = 60")
        .start()
        .await;
    let mut stream = RawConn::open(proxy.addr()).await;
    stream.write(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n").await;
    within(LIMIT, stream.read_head()).await;
    let poll = Pending::get(proxy.addr(), "/poll");
    proxy.wait_held(2).await;

    let out = run(publish_cmd(
        Some(proxy.control_addr()),
        &["--stream", "live", "piece"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(within(LIMIT, stream.next_chunk()).await.unwrap(), "piece\n");
    assert!(!poll.is_finished(), "the response hold stays held");

    let out = run(publish_cmd(
        Some(proxy.control_addr()),
        &["--close", "live"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(within(LIMIT, stream.next_chunk()).await, None);
    proxy.wait_held(1).await;
}

#[tokio::test]
async fn content_comes_from_standard_input_when_not_given() {
    let origin = Origin::start(|_| Reply::hold("c")).await;
    let proxy = Proxy::start(origin.addr()).await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;

    let mut cmd = publish_cmd(
        None,
        &["--url", &format!("http://{}/", proxy.control_addr()), "c"],
    );
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"line one\nline two").await.unwrap();
    drop(stdin);
    let out = within(LIMIT, child.wait_with_output()).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(client.response().await.text(), "line one\nline two");
}

#[tokio::test]
async fn a_hint_makes_the_held_client_refetch() {
    let origin = Origin::start(|req| {
        if req.seq == 0 {
            Reply::hold("c")
        } else {
            Reply::text("fresh from the origin")
        }
    })
    .await;
    let proxy = Proxy::start(origin.addr()).await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;
    let out = run(publish_cmd(Some(proxy.control_addr()), &["--hint", "c"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(client.response().await.text(), "fresh from the origin");
}

#[tokio::test]
async fn a_jwt_from_grip_url_and_a_bearer_key_are_accepted_and_missing_credentials_refused() {
    let origin = Origin::start(|_| Reply::hold("c")).await;
    let proxy = Proxy::to(origin.addr())
        .toml(
            "[control.auth]\njwt_key = \"jwt-secret\"\njwt_iss = \"cli\"\nbearer_key = \"static\"",
        )
        .start()
        .await;

    let refused = run(publish_cmd(Some(proxy.control_addr()), &["c", "x"])).await;
    assert_eq!(refused.status.code(), Some(1));
    let err = stderr(&refused);
    assert!(err.contains("publish refused: 401 Unauthorized"), "{err}");

    let mut jwt = publish_cmd(None, &["c", "x"]);
    jwt.env(
        "GRIP_URL",
        format!("http://{}?iss=cli&key=jwt-secret", proxy.control_addr()),
    );
    let out = run(jwt).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let out = run(publish_cmd(
        Some(proxy.control_addr()),
        &["--bearer", "static", "c", "x"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[tokio::test]
async fn a_refused_connection_exits_1_and_says_so() {
    let port = free_port();
    let out = run(publish_cmd(
        None,
        &["--url", &format!("http://127.0.0.1:{port}"), "c", "x"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot connect to the control API at 127.0.0.1:{port}"
        )),
        "{err}"
    );
    assert!(err.contains("refused"), "{err}");
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn a_400_exits_1_with_the_control_apis_reason() {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::start(origin.addr()).await;
    let out = run(publish_cmd(Some(proxy.control_addr()), &["", "x"])).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("publish refused: 400 Bad Request: items[0].channel: must not be empty"),
        "{err}"
    );
}

#[tokio::test]
async fn usage_errors_exit_2() {
    for args in [
        &["--hint", "--close", "c"][..],
        &["--code", "1000", "c", "x"],
        &["-H", "no colon", "c", "x"],
        &["--url", "ftp://127.0.0.1:5561", "c", "x"],
        &[],
    ] {
        let out = run(publish_cmd(None, args)).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).is_empty(), "{args:?}");
    }
}

#[tokio::test]
async fn the_proxy_still_runs_without_a_subcommand_and_refuses_flags_with_one() {
    let out = run({
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_grip-proxy"));
        cmd.args(["--origin", "http://127.0.0.1:1", "publish", "c", "x"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    })
    .await;
    assert_eq!(out.status.code(), Some(2));
    let out = run({
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_grip-proxy"));
        cmd.env_remove("GRIP_PROXY_CONFIG")
            .args(["--origin", "http://127.0.0.1:1", "--check-config"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    })
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
