//! The binary: config errors exit 64 before binding anything, `--check-config`, and a run with flags that
//! proxies a request and exits 0 on SIGTERM.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use support::*;
use tokio::process::Command;

/// The built binary, with no config from the environment.
fn grip_proxy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_grip-proxy"));
    cmd.env_remove("GRIP_PROXY_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// A file in the temp dir, unique to this test process.
fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("grip-proxy-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn an_invalid_config_exits_64_with_one_line_naming_the_key_before_binding() {
    let path = temp_file("invalid.toml", "[[routes]]\norigin = \"htp://app:8080\"\n");
    // The binary is told to listen where we already do: binding first would fail differently.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let taken_too = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control = taken_too.local_addr().unwrap().to_string();

    let out = within(
        LIMIT,
        grip_proxy()
            .arg("--config")
            .arg(&path)
            .args(["--listen", &listen, "--control-listen", &control])
            .output(),
    )
    .await
    .unwrap();
    std::fs::remove_file(&path).unwrap();

    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("routes[0].origin"), "{stderr}");
    assert!(stderr.contains("htp"), "{stderr}");
}

#[tokio::test]
async fn check_config_accepts_the_shipped_config() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/grip-proxy.toml");

    let out = within(
        LIMIT,
        grip_proxy()
            .args(["--check-config", "--config", shipped])
            .output(),
    )
    .await
    .unwrap();

    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_binary_proxies_with_flags_and_exits_0_on_sigterm() {
    let origin = Origin::start(|req| Reply::text(&format!("origin saw {}", req.uri))).await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = grip_proxy()
        .args(["--origin", &format!("http://{}", origin.addr())])
        .args(["--listen", &listen.to_string()])
        .args(["--control-listen", &control.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(listen, &mut child).await;

    let resp = within(LIMIT, get(listen, "/through?x=1")).await;
    assert_eq!(resp.text(), "origin saw /through?x=1");
    wait_listening(control, &mut child).await;

    signal(&child, "TERM");
    let status = within(LIMIT, child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}
