//! `grip-proxy publish` (the binary, spawned) to an `https://` URL: an in-test HTTPS server with a certificate of
//! a private CA records the publish; `--cacert` trusts that CA, the system's roots do not, `--insecure` skips
//! verification with a warning.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::process::{Output, Stdio};

use support::tls::{Ca, TempDir, TlsOrigin};
use support::*;
use tokio::process::Command;

/// `grip-proxy publish --url https://{server} ARGS`, with no config or URL from the environment.
fn publish_cmd(server: &TlsOrigin, args: &[&str]) -> Command {
    publish_to(server.addr(), args)
}

/// `grip-proxy publish --url https://{addr} ARGS`.
fn publish_to(addr: std::net::SocketAddr, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_grip-proxy"));
    cmd.env_remove("GRIP_PROXY_CONFIG")
        .env_remove("GRIP_URL")
        .arg("publish")
        .arg("--url")
        .arg(format!("https://{addr}"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn run(mut cmd: Command) -> Output {
    within(LIMIT, cmd.output()).await.unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A control API stand-in over HTTPS that accepts every publish.
async fn server(ca: &Ca) -> TlsOrigin {
    let leaf = ca.leaf(&["127.0.0.1", "localhost"]);
    TlsOrigin::start(leaf.server_config(), |_| {
        Reply::text("{}").header("content-type", "application/json")
    })
    .await
}

#[tokio::test]
async fn publishes_over_https_to_a_server_of_the_given_ca() {
    let dir = TempDir::new("tls-publish");
    let ca = Ca::new("private CA");
    let cacert = dir.file("ca.pem", &ca.pem());
    let server = server(&ca).await;

    let cacert = cacert.to_str().unwrap();
    let out = run(publish_cmd(&server, &["--cacert", cacert, "news", "hello"])).await;

    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Published\n");
    let seen = server.nth(0).await;
    assert_eq!((seen.method.as_str(), seen.path()), ("POST", "/publish/"));
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    assert_eq!(body["items"][0]["channel"], "news");
    assert_eq!(
        body["items"][0]["formats"]["http-response"]["body"],
        "hello\n"
    );
}

#[tokio::test]
async fn a_server_the_system_does_not_trust_is_refused_with_the_reason() {
    let ca = Ca::new("private CA");
    let server = server(&ca).await;

    let out = run(publish_cmd(&server, &["news", "hello"])).await;

    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("TLS handshake with {} failed", server.addr())),
        "{err}"
    );
    assert!(err.contains("invalid peer certificate"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert_eq!(server.count(), 0, "nothing was sent");
}

#[tokio::test]
async fn insecure_skips_verification_and_warns() {
    let server = server(&Ca::new("private CA")).await;

    let out = run(publish_cmd(&server, &["--insecure", "news", "hello"])).await;

    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: --insecure: the certificate of"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.nth(0).await.path(), "/publish/");
}

#[tokio::test]
async fn an_unusable_cacert_is_a_usage_error() {
    let dir = TempDir::new("tls-publish");
    let server = server(&Ca::new("private CA")).await;
    let missing = dir.path("missing.pem");
    let not_pem = dir.file("not.pem", "hello");

    let out = run(publish_cmd(
        &server,
        &["--cacert", missing.to_str().unwrap(), "news", "x"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--cacert "), "{}", stderr(&out));

    let out = run(publish_cmd(
        &server,
        &["--cacert", not_pem.to_str().unwrap(), "news", "x"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no PEM certificate"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.count(), 0);
}

/// The proxy's own control API over HTTPS (`control.tls_cert`): a publish from the command line releases a client.
#[tokio::test]
async fn publishes_to_the_proxys_own_https_control_api() {
    let dir = TempDir::new("tls-control");
    let ca = Ca::new("control CA");
    let leaf = ca.leaf(&["127.0.0.1"]);
    let cert = dir.file("control.crt", &leaf.cert_pem);
    let key = dir.file("control.key", &leaf.key_pem);
    let cacert = dir.file("ca.pem", &ca.pem());
    let origin = Origin::start(|_| Reply::hold("over-https")).await;
    let proxy = Proxy::to(origin.addr())
        .toml(&format!(
            "[control]\ntls_cert = \"file:{}\"\ntls_key = \"file:{}\"",
            cert.display(),
            key.display()
        ))
        .start()
        .await;
    let held = Pending::get(proxy.addr(), "/wait");
    proxy.wait_held(1).await;

    let cacert = cacert.to_str().unwrap();
    let out = run(publish_to(
        proxy.control_addr(),
        &["--cacert", cacert, "over-https", "released"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(held.response().await.text(), "released\n");

    // The control listener speaks only HTTPS now: a plain request gets a TLS alert and the connection closes.
    let answer = within(LIMIT, async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(proxy.control_addr())
            .await
            .unwrap();
        tcp.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        answer
    })
    .await;
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "a TLS alert record, not HTTP: {answer:?}"
    );
}
