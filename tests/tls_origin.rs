//! HTTPS origins over real sockets, with certificates made at test time: a private CA (`tls_ca`), holds released
//! through an HTTPS origin, kept-alive TLS connections and resumed sessions, refused certificates (self-signed,
//! expired, wrong name) unless verification is skipped, `tls_server_name`, and the config's errors.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use grip_proxy::Config;
use support::tls::{self, Ca, Handshakes, Leaf, TempDir, TlsOrigin};
use support::*;

/// The origin of these tests: `/hold/<channel>` holds, `/close` answers with `Connection: close`, anything else
/// answers `hello <path>`.
fn answer(req: &Recorded) -> Reply {
    if let Some(channel) = req.path().strip_prefix("/hold/") {
        return Reply::hold(channel);
    }
    if req.path() == "/close" {
        return Reply::text("bye").header("Connection", "close");
    }
    Reply::text(&format!("hello {}", req.path()))
}

/// An HTTPS origin presenting `leaf`.
async fn origin(leaf: &Leaf) -> TlsOrigin {
    TlsOrigin::start(leaf.server_config(), answer).await
}

/// A route to `https://{origin}` with these extra keys.
fn route(origin: &TlsOrigin, keys: &str) -> String {
    format!("[[routes]]\norigin = \"https://{}\"\n{keys}", origin.addr())
}

/// `GET path` on `client`, within the limit.
async fn get_on(client: &mut Conn, path: &str) -> Resp {
    let req = request("GET", path).body(empty()).unwrap();
    within(LIMIT, client.send(req)).await
}

/// `tls_ca = "file:..."` naming `ca`'s certificate, written in `dir`.
fn ca_key(dir: &TempDir, ca: &Ca) -> String {
    let path = dir.file("ca.pem", &ca.pem());
    format!("tls_ca = \"file:{}\"", path.display())
}

#[tokio::test]
async fn an_https_origin_with_a_private_ca_gets_the_request_and_answers() {
    let dir = TempDir::new("tls-origin");
    let ca = Ca::new("private CA");
    let origin = origin(&ca.leaf(&["127.0.0.1", "localhost"])).await;
    let proxy = Proxy::with_routes(&route(&origin, &ca_key(&dir, &ca)))
        .start()
        .await;

    let resp = proxy.get("/a?b=c").await;
    assert_eq!((resp.status.as_u16(), resp.text()), (200, "hello /a"));
    let req = proxy
        .send(
            request("POST", "/p")
                .header("content-type", "text/plain")
                .body(full("body bytes"))
                .unwrap(),
        )
        .await;
    assert_eq!((req.status.as_u16(), req.text()), (200, "hello /p"));

    let seen = origin.nth(1).await;
    assert_eq!(seen.uri, "/p");
    assert_eq!(&seen.body[..], b"body bytes");
    assert!(seen.header("grip-sig").is_some(), "signed as over http");
    assert_eq!(origin.nth(0).await.uri, "/a?b=c");
}

#[tokio::test]
async fn a_hold_through_an_https_origin_is_released_by_a_publish() {
    let dir = TempDir::new("tls-origin");
    let ca = Ca::new("private CA");
    let origin = origin(&ca.leaf(&["127.0.0.1"])).await;
    let proxy = Proxy::with_routes(&route(&origin, &ca_key(&dir, &ca)))
        .start()
        .await;

    let client = Pending::get(proxy.addr(), "/hold/news");
    proxy.wait_held(1).await;
    publish(&proxy, items(&[item("news", "released\n")])).await;
    let resp = within(LIMIT, client.response()).await;

    assert_eq!((resp.status.as_u16(), resp.text()), (200, "released\n"));
    proxy.wait_held(0).await;
}

#[tokio::test]
async fn tls_connections_are_kept_alive_and_a_new_one_resumes_the_session() {
    let dir = TempDir::new("tls-origin");
    let ca = Ca::new("private CA");
    let origin = origin(&ca.leaf(&["127.0.0.1"])).await;
    let proxy = Proxy::with_routes(&route(&origin, &ca_key(&dir, &ca)))
        .start()
        .await;
    // One client connection: in per-core mode each runtime pools origin connections of its own.
    let mut client = Conn::open(proxy.addr()).await;

    assert_eq!(get_on(&mut client, "/1").await.text(), "hello /1");
    assert_eq!(get_on(&mut client, "/2").await.text(), "hello /2");
    let one = Handshakes {
        full: 1,
        resumed: 0,
        failed: 0,
    };
    assert_eq!(
        origin.handshakes(),
        one,
        "both requests on one TLS connection"
    );

    // The origin closes this one after answering; the next request needs a new connection.
    assert_eq!(get_on(&mut client, "/close").await.text(), "bye");
    assert_eq!(get_on(&mut client, "/3").await.text(), "hello /3");
    assert_eq!(
        origin.handshakes(),
        Handshakes {
            full: 1,
            resumed: 1,
            failed: 0,
        },
        "the new connection resumed the first one's session"
    );
    assert_eq!(origin.count(), 4);
}

#[tokio::test]
async fn a_self_signed_origin_is_refused_unless_verification_is_skipped() {
    let origin = origin(&tls::self_signed(&["127.0.0.1"])).await;

    let verified = Proxy::with_routes(&route(&origin, "")).start().await;
    let resp = verified.get("/x").await;
    assert_eq!(resp.status, 502);
    assert_eq!(resp.text(), "Bad Gateway: origin unreachable\n");

    // A CA that did not issue it does not help either.
    let dir = TempDir::new("tls-origin");
    let other = Proxy::with_routes(&route(&origin, &ca_key(&dir, &Ca::new("other CA"))))
        .start()
        .await;
    assert_eq!(other.get("/x").await.status, 502);
    assert_eq!(
        origin.count(),
        0,
        "no request went over an unverified connection"
    );

    let skipping = Proxy::with_routes(&route(&origin, "tls_skip_verify = true"))
        .start()
        .await;
    let resp = skipping.get("/x").await;
    assert_eq!((resp.status.as_u16(), resp.text()), (200, "hello /x"));
    assert_eq!(origin.count(), 1);
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let dir = TempDir::new("tls-origin");
    let ca = Ca::new("private CA");
    let origin = origin(&ca.expired_leaf(&["127.0.0.1"])).await;
    let proxy = Proxy::with_routes(&route(&origin, &ca_key(&dir, &ca)))
        .start()
        .await;

    assert_eq!(proxy.get("/x").await.status, 502);
    assert_eq!(origin.count(), 0);
}

#[tokio::test]
async fn tls_server_name_is_the_name_verified_in_place_of_the_origin_host() {
    let dir = TempDir::new("tls-origin");
    let ca = Ca::new("private CA");
    let origin = origin(&ca.leaf(&["origin.test"])).await;
    let ca = ca_key(&dir, &ca);

    let without = Proxy::with_routes(&route(&origin, &ca)).start().await;
    assert_eq!(
        without.get("/x").await.status,
        502,
        "127.0.0.1 is not in the certificate"
    );
    assert_eq!(origin.count(), 0);

    let named = format!("{ca}\ntls_server_name = \"origin.test\"");
    let with = Proxy::with_routes(&route(&origin, &named)).start().await;
    let resp = with.get("/x").await;
    assert_eq!((resp.status.as_u16(), resp.text()), (200, "hello /x"));
}

#[tokio::test]
async fn routes_of_different_tls_settings_to_one_origin_do_not_share_connections() {
    let dir = TempDir::new("tls-origin");
    let ca = Ca::new("private CA");
    let origin = origin(&ca.leaf(&["127.0.0.1"])).await;
    let routes = format!(
        "{}\npath_prefix = \"/a/\"\n{}\npath_prefix = \"/b/\"\ntls_skip_verify = true",
        route(&origin, &ca_key(&dir, &ca)),
        route(&origin, "")
    );
    let proxy = Proxy::with_routes(&routes).start().await;
    let mut client = Conn::open(proxy.addr()).await;

    for path in ["/a/1", "/b/1", "/a/2", "/b/2"] {
        let resp = get_on(&mut client, path).await;
        assert_eq!(resp.text(), format!("hello {path}"));
    }
    let h = origin.handshakes();
    assert_eq!(h.full + h.resumed, 2, "one connection per setting: {h:?}");
}

#[test]
fn config_errors_name_the_key() {
    let dir = TempDir::new("tls-origin-config");
    let err = |toml: &str| Config::from_toml_str(toml).unwrap_err().to_string();
    let missing = dir.path("missing.pem");
    let e = err(&format!(
        "[[routes]]\norigin = \"https://a:1\"\ntls_ca = \"file:{}\"",
        missing.display()
    ));
    assert!(e.starts_with("routes[0].tls_ca: cannot read "), "{e}");

    let not_pem = dir.file("not.pem", "hello");
    let e = err(&format!(
        "[[routes]]\norigin = \"https://a:1\"\ntls_ca = \"file:{}\"",
        not_pem.display()
    ));
    assert_eq!(
        e,
        "routes[0].tls_ca: no PEM certificate (-----BEGIN CERTIFICATE-----) found"
    );

    let e = err("[[routes]]\norigin = \"http://a:1\"\ntls_skip_verify = true");
    assert_eq!(
        e,
        r#"routes[0].tls_skip_verify: only for an https:// origin (origin is "http://a:1")"#
    );
}
