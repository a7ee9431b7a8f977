//! HTTPS for clients (`[tls]`), over real sockets with certificates made at test time: holds and releases over
//! TLS, streams, keep-alive, SNI, a certificate reload while a client stays held, handshake failures, curl as a
//! real client, and the binary's start-up errors.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use grip_proxy::config::Overrides;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;
use support::tls::{Ca, Leaf, TempDir};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// === Certificates ===

/// Writes a leaf's chain and key as `<name>.crt` and `<name>.key` in `dir`; the `cert`/`key` lines naming them.
fn cert_lines(dir: &TempDir, name: &str, leaf: &Leaf) -> String {
    let cert = dir.file(&format!("{name}.crt"), &leaf.cert_pem);
    let key = dir.file(&format!("{name}.key"), &leaf.key_pem);
    format!(
        "cert = \"file:{}\"\nkey = \"file:{}\"",
        cert.display(),
        key.display()
    )
}

// === A TLS client ===

/// The client config trusting `ca_pem`, offering `alpn`.
fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects and completes a handshake asking for `name` (an IP address sends no SNI).
async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// A keep-alive HTTPS client connection (hyper over rustls).
struct HttpsConn {
    sender: hyper::client::conn::http1::SendRequest<Body>,
    /// The certificate the server presented.
    served: CertificateDer<'static>,
}

impl HttpsConn {
    async fn open(addr: SocketAddr, ca_pem: &str, name: &str) -> HttpsConn {
        let tls = handshake(addr, client_config(ca_pem, &[b"http/1.1"]), name)
            .await
            .unwrap();
        let (_, session) = tls.get_ref();
        assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
        let served = session.peer_certificates().unwrap()[0].clone().into_owned();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        HttpsConn { sender, served }
    }

    async fn get(&mut self, path: &str) -> Resp {
        let req = Request::get(path)
            .header("host", "localhost")
            .body(empty())
            .unwrap();
        self.sender.ready().await.unwrap();
        read_body(self.sender.send_request(req).await.unwrap()).await
    }
}

/// A CA, a certificate for localhost and 127.0.0.1 in `dir`, and the `[tls]` section serving it on 127.0.0.1:0.
fn https_section(dir: &TempDir, ca: &Ca) -> String {
    let leaf = ca.leaf(&["localhost", "127.0.0.1"]);
    format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\n{}",
        cert_lines(dir, "server", &leaf)
    )
}

fn tls_addr(proxy: &Proxy) -> SocketAddr {
    proxy.app().tls_addr().expect("the HTTPS listener is bound")
}

// === Tests ===

#[tokio::test]
async fn an_https_client_is_held_and_released_by_a_publish_and_the_origin_is_told_https() {
    let dir = TempDir::new("tls-held");
    let ca = Ca::new("held CA");
    let origin = Origin::start(|r: &Recorded| match r.path() {
        "/plain" => Reply::text("plain\n"),
        _ => Reply::hold("news").header("Grip-Timeout", "30"),
    })
    .await;
    let proxy = Proxy::to(origin.addr())
        .toml(&https_section(&dir, &ca))
        .start()
        .await;
    let addr = tls_addr(&proxy);

    let mut conn = within(LIMIT, HttpsConn::open(addr, &ca.pem(), "localhost")).await;
    let held = tokio::spawn(async move {
        let resp = conn.get("/wait").await;
        // The same connection carries the next request.
        let next = conn.get("/plain").await;
        (resp, next)
    });
    proxy.wait_held(1).await;
    let origin_saw = origin.nth(0).await;
    assert_eq!(origin_saw.header("x-forwarded-proto"), Some("https"));

    let published = publish(&proxy, json!({"items": [item("news", "over TLS\n")]})).await;
    assert_eq!(published.status, 200);
    let (resp, next) = within(LIMIT, held).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "over TLS\n");
    resp.assert_no_grip_headers();
    assert_eq!(next.text(), "plain\n");

    // Plain clients on the plain listener are told http.
    let plain = proxy.get("/plain").await;
    assert_eq!(plain.text(), "plain\n");
    assert_eq!(
        origin.nth(2).await.header("x-forwarded-proto"),
        Some("http")
    );
}

#[tokio::test]
async fn a_large_response_and_a_stream_cross_tls_whole_and_in_order() {
    let dir = TempDir::new("tls-large");
    let ca = Ca::new("large CA");
    let big: Bytes = (0..3_000_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let body = big.clone();
    let origin = Origin::start(move |r: &Recorded| match r.path() {
        "/big" => Reply::status(200).body(body.clone()),
        _ => Reply::text("")
            .header("Grip-Hold", "stream")
            .header("Grip-Channel", "ticker")
            .header("Content-Type", "text/plain"),
    })
    .await;
    let proxy = Proxy::to(origin.addr())
        .toml(&https_section(&dir, &ca))
        .start()
        .await;
    let addr = tls_addr(&proxy);

    let mut conn = within(LIMIT, HttpsConn::open(addr, &ca.pem(), "localhost")).await;
    let resp = within(LIMIT, conn.get("/big")).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), big.len());
    assert!(resp.body == big, "the body arrived intact");

    // A stream: every published item arrives, in order, over the same TLS session.
    let mut stream = within(LIMIT, HttpsConn::open(addr, &ca.pem(), "localhost")).await;
    let req = Request::get("/stream")
        .header("host", "localhost")
        .body(empty())
        .unwrap();
    stream.sender.ready().await.unwrap();
    let resp = within(LIMIT, stream.sender.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    proxy.wait_held(1).await;
    let mut got = Vec::new();
    for n in 0..20 {
        let content = format!("item {n}\n");
        let item = json!({"channel": "ticker", "formats": {"http-stream": {"content": content}}});
        assert_eq!(publish(&proxy, json!({"items": [item]})).await.status, 200);
    }
    let expected: String = (0..20).map(|n| format!("item {n}\n")).collect();
    while got.len() < expected.len() {
        let frame = within(LIMIT, body.frame()).await.unwrap().unwrap();
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
    }
    assert_eq!(String::from_utf8(got).unwrap(), expected);
}

#[tokio::test]
async fn sni_picks_the_certificate_exact_names_before_wildcards_and_the_default_otherwise() {
    let dir = TempDir::new("tls-sni");
    let ca = Ca::new("sni CA");
    let default = ca.leaf(&["default.test", "other.test", "127.0.0.1"]);
    let api = ca.leaf(&["api.test"]);
    let wild = ca.leaf(&["*.wild.test", "exact.wild.test"]);
    let exact = ca.leaf(&["exact.wild.test"]);
    let origin = Origin::start(|_: &Recorded| Reply::text("ok\n")).await;
    let toml = format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\n{}\n\
         [[tls.sni]]\nhosts = [\"*.wild.test\"]\n{}\n\
         [[tls.sni]]\nhosts = [\"api.test\"]\n{}\n\
         [[tls.sni]]\nhosts = [\"exact.wild.test\"]\n{}\n",
        cert_lines(&dir, "default", &default),
        cert_lines(&dir, "wild", &wild),
        cert_lines(&dir, "api", &api),
        cert_lines(&dir, "exact", &exact),
    );
    let proxy = Proxy::to(origin.addr()).toml(&toml).start().await;
    let addr = tls_addr(&proxy);
    let cases = [
        ("api.test", &api.der, "an exact name"),
        ("API.test", &api.der, "names are case-insensitive"),
        ("a.wild.test", &wild.der, "a wildcard"),
        (
            "exact.wild.test",
            &exact.der,
            "an exact name before a wildcard listed earlier",
        ),
        (
            "other.test",
            &default.der,
            "a name no entry serves: the default",
        ),
        (
            "127.0.0.1",
            &default.der,
            "no SNI (an IP address): the default",
        ),
    ];
    for (name, want, why) in cases {
        let mut conn = within(LIMIT, HttpsConn::open(addr, &ca.pem(), name)).await;
        assert!(&conn.served == want, "{name}: {why}");
        assert_eq!(within(LIMIT, conn.get("/")).await.text(), "ok\n", "{name}");
    }
}

#[tokio::test]
async fn a_reload_swaps_the_certificate_for_new_handshakes_while_a_held_client_stays_held() {
    let dir = TempDir::new("tls-reload");
    let ca = Ca::new("reload CA");
    let origin =
        Origin::start(|_: &Recorded| Reply::hold("reload").header("Grip-Timeout", "30")).await;
    let first = ca.leaf(&["localhost"]);
    let second = ca.leaf(&["localhost"]);
    // The config file the reload reads; the certificate files it names are rewritten between reloads.
    let config = |leaf: &Leaf| -> PathBuf {
        let section = cert_lines(&dir, "server", leaf);
        dir.file(
            "grip-proxy.toml",
            &format!(
                "[[routes]]\norigin = \"http://{}\"\n[tls]\nlisten = \"127.0.0.1:0\"\n{section}\n",
                origin.addr()
            ),
        )
    };
    let path = config(&first);
    let proxy = Proxy::with_routes(&std::fs::read_to_string(&path).unwrap())
        .start()
        .await;
    let addr = tls_addr(&proxy);

    let mut held_conn = within(LIMIT, HttpsConn::open(addr, &ca.pem(), "localhost")).await;
    assert!(held_conn.served == first.der);
    let held = tokio::spawn(async move { held_conn.get("/wait").await });
    proxy.wait_held(1).await;

    config(&second);
    let reloaded = proxy
        .app()
        .reloader()
        .reload_from(Some(&path), &Overrides::default())
        .unwrap();
    assert!(!reloaded.needs_restart.contains(&"tls.listen"));
    let conn = within(LIMIT, HttpsConn::open(addr, &ca.pem(), "localhost")).await;
    assert!(
        conn.served == second.der,
        "a new handshake gets the new certificate"
    );
    assert_eq!(proxy.registry().held(), 1, "the held client is still held");

    // A broken certificate is refused: the reload fails and the certificate in force stays.
    dir.file(
        "server.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    let refused = proxy
        .app()
        .reloader()
        .reload_from(Some(&path), &Overrides::default());
    let message = refused.unwrap_err().to_string();
    assert!(message.starts_with("tls.cert: "), "{message}");
    let conn = within(LIMIT, HttpsConn::open(addr, &ca.pem(), "localhost")).await;
    assert!(
        conn.served == second.der,
        "the old certificate keeps serving"
    );

    // The client held across both reloads is released over its own session.
    let published = publish(&proxy, json!({"items": [item("reload", "still here\n")]})).await;
    assert_eq!(published.status, 200);
    let resp = within(LIMIT, held).await.unwrap();
    assert_eq!(resp.text(), "still here\n");
}

#[tokio::test]
async fn failed_handshakes_close_the_connection_and_never_reach_the_origin() {
    let dir = TempDir::new("tls-refused");
    let ca = Ca::new("refused CA");
    let origin = Origin::start(|_: &Recorded| Reply::text("ok\n")).await;
    let proxy = Proxy::to(origin.addr())
        .toml(&https_section(&dir, &ca))
        .start()
        .await;
    let addr = tls_addr(&proxy);

    // Plain HTTP to the HTTPS port.
    let mut tcp = within(LIMIT, TcpStream::connect(addr)).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = within(LIMIT, tcp.read_to_end(&mut rest)).await;
    assert!(
        rest.first() == Some(&0x15),
        "no HTTP answer in the clear: a TLS alert, then the close: {rest:?}"
    );

    // A client that does not trust the certificate (another CA).
    let other = Ca::new("someone else");
    let untrusted = within(
        LIMIT,
        handshake(addr, client_config(&other.pem(), &[]), "localhost"),
    )
    .await;
    let Err(e) = untrusted else {
        panic!("the client refuses the certificate")
    };
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");

    // A client that speaks only h2: no protocol in common.
    let h2 = within(
        LIMIT,
        handshake(addr, client_config(&ca.pem(), &[b"h2"]), "localhost"),
    )
    .await;
    let Err(e) = h2 else {
        panic!("an h2-only client is refused")
    };
    assert!(
        e.to_string().contains("NoApplicationProtocol"),
        "the client is told why: {e}"
    );

    // Garbage, then EOF.
    let mut tcp = within(LIMIT, TcpStream::connect(addr)).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    tcp.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = within(LIMIT, tcp.read_to_end(&mut rest)).await;

    assert_eq!(origin.count(), 0, "nothing reached the origin");
    // Counted: four failed handshakes (plaintext, untrusted, h2-only, garbage), none completed. A connection
    // counts its handshake as it ends, which the client may not wait for: the scrape is repeated until it does.
    let control = proxy.control_addr();
    let text = within(LIMIT, async {
        loop {
            let text = get(control, "/metrics").await.text().to_owned();
            if text.contains("grip_proxy_tls_handshake_failures_total 4") {
                return text;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(text.contains("grip_proxy_tls_handshakes_total 0"), "{text}");
    // The listener still serves.
    let mut conn = within(LIMIT, HttpsConn::open(addr, &ca.pem(), "localhost")).await;
    assert_eq!(within(LIMIT, conn.get("/")).await.text(), "ok\n");
}

/// `curl --cacert` against the HTTPS listener, as a person would check it.
#[tokio::test]
async fn curl_with_the_ca_gets_through_and_without_it_refuses_the_certificate() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("curl is needed for this test (apt-get install -y curl)");
    }
    let dir = TempDir::new("tls-curl");
    let ca = Ca::new("curl CA");
    let origin = Origin::start(|r: &Recorded| {
        Reply::text(&format!(
            "proto={}\n",
            r.header("x-forwarded-proto").unwrap_or("-")
        ))
    })
    .await;
    let proxy = Proxy::to(origin.addr())
        .toml(&https_section(&dir, &ca))
        .start()
        .await;
    let ca_file = dir.file("ca.pem", &ca.pem());
    let url = format!("https://localhost:{}/hello", tls_addr(&proxy).port());
    let resolve = format!("localhost:{}:127.0.0.1", tls_addr(&proxy).port());
    let curl = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args([
            "--silent",
            "--show-error",
            "--max-time",
            "5",
            "--resolve",
            &resolve,
        ]);
        cmd.args(extra).arg(&url);
        cmd.output()
    };
    let ok = within(LIMIT, curl(&["--cacert", ca_file.to_str().unwrap()]))
        .await
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "proto=https\n");
    let tls13 = within(
        LIMIT,
        curl(&[
            "--cacert",
            ca_file.to_str().unwrap(),
            "--tlsv1.2",
            "--tls-max",
            "1.2",
        ]),
    )
    .await
    .unwrap();
    assert!(
        tls13.status.success(),
        "TLS 1.2: {}",
        String::from_utf8_lossy(&tls13.stderr)
    );
    let old = within(
        LIMIT,
        curl(&[
            "--cacert",
            ca_file.to_str().unwrap(),
            "--tlsv1.0",
            "--tls-max",
            "1.1",
        ]),
    )
    .await
    .unwrap();
    assert!(!old.status.success(), "TLS 1.0 and 1.1 are refused");
    let refused = within(LIMIT, curl(&[])).await.unwrap();
    assert_eq!(refused.status.code(), Some(60), "curl: certificate problem");
}

/// The binary refuses to start with a certificate it cannot read, naming the key.
#[test]
fn a_missing_or_broken_certificate_file_exits_64_naming_the_key() {
    let dir = TempDir::new("tls-exit");
    let ca = Ca::new("exit CA");
    let leaf = ca.leaf(&["localhost"]);
    let key = dir.file("server.key", &leaf.key_pem);
    let broken = dir.file("broken.crt", "not a certificate\n");
    let cases: [(PathBuf, &str); 2] = [
        (
            Path::new("/nonexistent/server.crt").to_path_buf(),
            "tls.cert: cannot read /nonexistent/server.crt",
        ),
        (broken, "tls.cert: no PEM certificate"),
    ];
    for (cert, want) in cases {
        let config = dir.file(
            "grip-proxy.toml",
            &format!(
                "[tls]\nlisten = \"127.0.0.1:0\"\ncert = \"file:{}\"\nkey = \"file:{}\"\n",
                cert.display(),
                key.display()
            ),
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_grip-proxy"))
            .arg("--config")
            .arg(&config)
            .arg("--check-config")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{stderr}");
        assert!(stderr.contains(want), "{stderr}");
    }
}
