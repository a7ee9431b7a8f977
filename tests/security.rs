//! Security: publish authentication (static bearer key, HS256 and ES256 JWTs with `iss` and `exp`, Basic; keys
//! from the config, the environment, a file, base64), `Grip-Sig` signed with ES256, trusted upstream proxies, and
//! the limits on held clients, request bodies and request heads.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use support::*;

// === Keys and tokens ===

/// A file under `tests/data/`, as an absolute path.
fn data(name: &str) -> String {
    format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A JWT signed ES256 with the PKCS#8 PEM private key in `tests/data/<pem>`.
fn es256(pem: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(&read(pem)).unwrap(),
    )
    .unwrap()
}

/// An unsigned JWT (`alg: none`).
fn unsigned(claims: Value) -> String {
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        url.encode(r#"{"alg":"none","typ":"JWT"}"#),
        url.encode(claims.to_string())
    )
}

/// Claims a publisher sends: `iss`, and `exp` this many seconds from now.
fn claims(iss: &str, exp_in: i64) -> Value {
    json!({ "iss": iss, "exp": now().checked_add_signed(exp_in).unwrap() })
}

fn bearer(token: &str) -> Option<String> {
    Some(format!("Bearer {token}"))
}

fn basic(user_pass: &str) -> Option<String> {
    Some(format!("Basic {}", b64(user_pass)))
}

// === Control API helpers ===

/// POSTs `body` to `path` on the control API with this `Authorization` header (none if `None`).
async fn control_post(
    proxy: &Proxy,
    path: &str,
    authorization: Option<&str>,
    body: String,
) -> Resp {
    let mut req = request("POST", path).header("content-type", "application/json");
    if let Some(value) = authorization {
        req = req.header("authorization", value);
    }
    within(
        LIMIT,
        send(proxy.control_addr(), req.body(full(body)).unwrap()),
    )
    .await
}

/// A proxy with this `[control.auth]` in front of an origin that holds every request on channel `c`.
async fn auth_proxy(origin: &Origin, auth_toml: &str) -> Proxy {
    Proxy::to(origin.addr())
        .toml(&format!("[control.auth]\n{auth_toml}"))
        .start()
        .await
}

/// With a client held on `c`: every refused credential gets `401` with a `WWW-Authenticate` challenge of
/// `scheme` and delivers nothing; then every accepted credential gets `200` and releases a held client.
async fn check_credentials(
    proxy: &Proxy,
    scheme: &str,
    refused: &[(&str, Option<String>)],
    accepted: &[(&str, Option<String>)],
) {
    let mut client = Some(Pending::get(proxy.addr(), "/"));
    proxy.wait_held(1).await;
    for (what, auth) in refused {
        let body = items(&[item("c", what)]).to_string();
        let resp = control_post(proxy, "/publish/", auth.as_deref(), body).await;
        assert_eq!(resp.status, 401, "{what} was not refused: {}", resp.text());
        let challenge = resp
            .header("www-authenticate")
            .unwrap_or_else(|| panic!("{what}: 401 without WWW-Authenticate"));
        assert!(
            challenge.starts_with(scheme),
            "{what}: WWW-Authenticate {challenge:?}"
        );
        if let Some(secret) = auth.as_ref().filter(|s| !s.is_empty()) {
            assert!(!resp.text().contains(secret.as_str()), "{what}: echoed");
        }
        assert_eq!(
            proxy.registry().held_on("c"),
            1,
            "{what}: the item was delivered"
        );
    }
    for (what, auth) in accepted {
        let client = match client.take() {
            Some(client) => client,
            None => {
                let client = Pending::get(proxy.addr(), "/");
                proxy.wait_held(1).await;
                client
            }
        };
        let body = items(&[item("c", what)]).to_string();
        let resp = control_post(proxy, "/publish/", auth.as_deref(), body).await;
        assert_eq!(resp.status, 200, "{what} was refused: {}", resp.text());
        assert_eq!(client.response().await.text(), *what, "{what}");
        proxy.wait_held(0).await;
    }
}

fn holding_origin() -> impl std::future::Future<Output = Origin> {
    Origin::start(|_| Reply::hold("c"))
}

// === Publish authentication ===

#[tokio::test]
async fn a_static_bearer_key_is_required_to_publish() {
    let origin = holding_origin().await;
    let proxy = auth_proxy(&origin, "bearer_key = \"static-publish-key\"").await;
    let key = "static-publish-key";
    check_credentials(
        &proxy,
        "Bearer",
        &[
            ("no header", None),
            ("an empty header", Some(String::new())),
            ("a wrong key", bearer("static-publish-kez")),
            ("a prefix of the key", bearer("static-publish-ke")),
            ("the key and more", bearer("static-publish-key2")),
            ("the key without a scheme", Some(key.into())),
            ("the key as Basic", basic("static-publish-key:")),
            ("the key as Basic password", basic(":static-publish-key")),
            (
                "a JWT signed with the key",
                bearer(&hs256(key.as_bytes(), claims("x", 600))),
            ),
        ],
        &[
            ("the key", bearer(key)),
            (
                "the key, scheme in lower case",
                Some(format!("bearer {key}")),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn an_hs256_jwt_with_the_right_issuer_and_a_future_exp_is_required_to_publish() {
    let origin = holding_origin().await;
    let proxy = auth_proxy(&origin, "jwt_key = \"jwt-secret\"\njwt_iss = \"publisher\"").await;
    let key = b"jwt-secret";
    check_credentials(
        &proxy,
        "Bearer",
        &[
            ("no header", None),
            ("expired", bearer(&hs256(key, claims("publisher", -600)))),
            (
                "a wrong issuer",
                bearer(&hs256(key, claims("someone", 600))),
            ),
            (
                "no issuer",
                bearer(&hs256(key, json!({ "exp": now() + 600 }))),
            ),
            (
                "a wrong key",
                bearer(&hs256(b"jwt-secreT", claims("publisher", 600))),
            ),
            ("no exp", bearer(&hs256(key, json!({ "iss": "publisher" })))),
            ("alg none", bearer(&unsigned(claims("publisher", 600)))),
            ("the key itself", bearer("jwt-secret")),
            ("garbage", bearer("not.a.jwt")),
            (
                "a valid JWT as Basic",
                Some(format!("Basic {}", hs256(key, claims("publisher", 600)))),
            ),
            (
                "an ES256 JWT",
                bearer(&es256("ec-private-pkcs8.pem", claims("publisher", 600))),
            ),
        ],
        &[
            (
                "ten minutes (Node)",
                bearer(&hs256(key, claims("publisher", 600))),
            ),
            (
                "an hour (Python)",
                bearer(&hs256(key, claims("publisher", 3600))),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn basic_credentials_are_required_to_publish() {
    let origin = holding_origin().await;
    let proxy = auth_proxy(
        &origin,
        "basic_user = \"publisher\"\nbasic_password = \"s3cret:pw\"",
    )
    .await;
    check_credentials(
        &proxy,
        "Basic",
        &[
            ("no header", None),
            ("a wrong password", basic("publisher:s3cret:pX")),
            ("a wrong user", basic("publisheR:s3cret:pw")),
            ("no password", basic("publisher:")),
            ("the user only", basic("publisher")),
            ("a password prefix", basic("publisher:s3cret")),
            ("the password as bearer", bearer("s3cret:pw")),
            ("not base64", Some("Basic !!!".into())),
            ("unencoded", Some("Basic publisher:s3cret:pw".into())),
        ],
        &[("the user and password", basic("publisher:s3cret:pw"))],
    )
    .await;
}

#[tokio::test]
async fn an_es256_jwt_verified_with_a_public_key_file_is_required_to_publish() {
    let origin = holding_origin().await;
    let proxy = auth_proxy(
        &origin,
        &format!(
            "jwt_public_key = \"file:{}\"\njwt_iss = \"publisher\"",
            data("ec-public.pem")
        ),
    )
    .await;
    let public_pem = read("ec-public.pem");
    check_credentials(
        &proxy,
        "Bearer",
        &[
            ("no header", None),
            (
                "another key",
                bearer(&es256("ec-other-private.pem", claims("publisher", 600))),
            ),
            (
                "expired",
                bearer(&es256("ec-private-pkcs8.pem", claims("publisher", -600))),
            ),
            (
                "a wrong issuer",
                bearer(&es256("ec-private-pkcs8.pem", claims("someone", 600))),
            ),
            (
                "no exp",
                bearer(&es256(
                    "ec-private-pkcs8.pem",
                    json!({ "iss": "publisher" }),
                )),
            ),
            // The classic confusion: HS256 with the public key (known to all) as the shared secret.
            (
                "HS256 keyed with the public key",
                bearer(&hs256(&public_pem, claims("publisher", 600))),
            ),
            ("alg none", bearer(&unsigned(claims("publisher", 600)))),
        ],
        &[(
            "signed with the private key",
            bearer(&es256("ec-private-pkcs8.pem", claims("publisher", 600))),
        )],
    )
    .await;
}

#[tokio::test]
async fn keys_come_from_the_environment_a_file_and_base64() {
    let env_name = format!("GRIP_PROXY_TEST_SECURITY_BEARER_{}", std::process::id());
    std::env::set_var(&env_name, "key-from-the-env");
    let binary_key: Vec<u8> = vec![0, 1, 2, 0xfe, 0xff, b'\n', 0x80, 42];
    let key_file = std::env::temp_dir().join(format!("grip-proxy-{}-jwt-key", std::process::id()));
    std::fs::write(&key_file, format!("base64:{}\n", b64(&binary_key))).unwrap();

    let origin = holding_origin().await;
    let proxy = auth_proxy(
        &origin,
        &format!(
            "bearer_key = \"env:{env_name}\"\njwt_key = \"file:{}\"\njwt_iss = \"publisher\"\n\
             basic_user = \"u\"\nbasic_password = \"base64:{}\"",
            key_file.display(),
            b64("pass")
        ),
    )
    .await;
    std::fs::remove_file(&key_file).unwrap();

    let b64_text = format!("base64:{}", b64(&binary_key));
    check_credentials(
        &proxy,
        "Bearer",
        &[
            ("the env spec itself", bearer(&format!("env:{env_name}"))),
            ("the variable's name", bearer(&env_name)),
            (
                "the file's text as the key",
                bearer(&hs256(b64_text.as_bytes(), claims("publisher", 600))),
            ),
            (
                "the base64 text as the password",
                basic(&format!("u:base64:{}", b64("pass"))),
            ),
        ],
        &[
            ("the key from the env", bearer("key-from-the-env")),
            (
                "a JWT under the binary key from the file",
                bearer(&hs256(&binary_key, claims("publisher", 600))),
            ),
            ("the decoded password", basic("u:pass")),
        ],
    )
    .await;
}

#[tokio::test]
async fn recover_requires_credentials_too() {
    let origin = Origin::start(|req| match req.seq {
        0 => Reply::hold("c"),
        _ => Reply::text("re-fetched"),
    })
    .await;
    let proxy = auth_proxy(&origin, "bearer_key = \"recover-key\"").await;
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;

    for auth in [None, Some("Bearer wrong"), Some("")] {
        let resp = control_post(&proxy, "/recover", auth, String::new()).await;
        assert_eq!(resp.status, 401, "{auth:?}: {}", resp.text());
        assert!(resp.header("www-authenticate").is_some(), "{auth:?}");
        assert_eq!(proxy.registry().held_on("c"), 1, "{auth:?}: recovered");
    }
    assert_eq!(origin.count(), 1);

    let resp = control_post(
        &proxy,
        "/recover",
        Some("Bearer recover-key"),
        String::new(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(client.response().await.text(), "re-fetched");
}

#[tokio::test]
async fn without_auth_configured_any_authorization_header_is_accepted() {
    let origin = holding_origin().await;
    let proxy = Proxy::start(origin.addr()).await;
    // (An empty header: tests/publish_api.rs.)
    check_credentials(
        &proxy,
        "",
        &[],
        &[
            ("a bearer token", bearer("whatever")),
            ("basic", basic("a:b")),
            ("an unknown scheme", Some("Digest x=1".into())),
            ("no header", None),
        ],
    )
    .await;
}

/// Runs the binary with this config until `publish_with` is refused, then stops it and returns its log.
async fn log_of_a_refused_publish(config: &str, authorization: &str) -> String {
    let path = std::env::temp_dir().join(format!("grip-proxy-{}-auth.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let control: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_grip-proxy"))
        .env_remove("GRIP_PROXY_CONFIG")
        .env("RUST_LOG", "info")
        .arg("--config")
        .arg(&path)
        .args([
            "--listen",
            &listen,
            "--control-listen",
            &control.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(control, &mut child).await;
    std::fs::remove_file(&path).unwrap();

    let req = request("POST", "/publish/")
        .header("authorization", authorization)
        .body(full(items(&[item("c", "x")]).to_string()))
        .unwrap();
    assert_eq!(within(LIMIT, send(control, req)).await.status, 401);

    signal(&child, "TERM");
    let out = within(LIMIT, child.wait_with_output()).await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test]
async fn a_refused_publish_is_logged_without_the_secret_or_the_credentials() {
    let config = "[control.auth]\nbearer_key = \"the-real-key-1234\"\n\
                  basic_user = \"publisher\"\nbasic_password = \"the-real-password-5678\"\n";
    let log = log_of_a_refused_publish(config, "Bearer the-wrong-key-9999").await;
    assert!(log.contains("authentication failed"), "no log line:\n{log}");
    for secret in [
        "the-real-key-1234",
        "the-real-password-5678",
        "the-wrong-key-9999",
    ] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
    let wrong_basic = format!("Basic {}", b64("publisher:the-wrong-password-0000"));
    let log = log_of_a_refused_publish(config, &wrong_basic).await;
    assert!(log.contains("authentication failed"), "no log line:\n{log}");
    for secret in [
        "the-real-password-5678",
        "the-wrong-password-0000",
        &wrong_basic[6..],
    ] {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }
}

// === Grip-Sig ===

fn es256_claims_of(token: &str) -> Value {
    let key = DecodingKey::from_ec_pem(&read("ec-public.pem")).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_required_spec_claims(&["exp", "iss"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap_or_else(|e| panic!("Grip-Sig does not verify with the public key: {e}"))
        .claims
}

/// The origin gets a `Grip-Sig` that verifies (ES256) with `tests/data/ec-public.pem`.
async fn check_es256_grip_sig(private_key_file: &str) {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::with_routes(&format!(
        "[[routes]]\norigin = \"http://{}\"\nsig_iss = \"edge\"\nsig_alg = \"ES256\"\nsig_key = \"file:{}\"",
        origin.addr(),
        data(private_key_file)
    ))
    .start()
    .await;

    assert_eq!(proxy.get("/").await.status, 200);

    let got = origin.nth(0).await;
    let sig = got.header("grip-sig").unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(sig).unwrap().alg,
        Algorithm::ES256
    );
    let claims = es256_claims_of(sig);
    assert_eq!(claims["iss"], "edge");
    let exp = claims["exp"].as_u64().unwrap();
    assert!(exp.abs_diff(now() + 3600) <= 5, "exp {exp}");
    assert_eq!(grip_proxy::verify_grip_sig(sig, b"changeme"), None);
}

#[tokio::test]
async fn a_route_signs_grip_sig_with_an_es256_pkcs8_key_file() {
    check_es256_grip_sig("ec-private-pkcs8.pem").await;
}

#[tokio::test]
async fn a_route_signs_grip_sig_with_an_es256_key_from_openssl_ecparam() {
    // `openssl ecparam -genkey` writes SEC1 ("BEGIN EC PRIVATE KEY"), the form most EC keys are found in.
    check_es256_grip_sig("ec-private.pem").await;
}

/// Sends requests carrying `Grip-Last` and these client `Grip-Sig`s; returns what the origin saw of each:
/// whether `Grip-Last` was kept, and the `Grip-Sig` it got.
async fn upstream_cases(proxy_toml: &str, sigs: &[(&str, Option<String>)]) -> Vec<(bool, String)> {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::to(origin.addr()).toml(proxy_toml).start().await;
    let mut seen = Vec::new();
    for (i, (what, sig)) in sigs.iter().enumerate() {
        let mut req = request("GET", "/").header("Grip-Last", "c; last-id=1");
        if let Some(sig) = sig {
            req = req.header("Grip-Sig", sig.as_str());
        }
        assert_eq!(
            proxy.send(req.body(empty()).unwrap()).await.status,
            200,
            "{what}"
        );
        let got = origin.nth(i).await;
        let origin_sig = got.header("grip-sig").unwrap().to_owned();
        assert_ne!(
            Some(&origin_sig),
            sig.as_ref(),
            "{what}: the client's Grip-Sig was passed on"
        );
        assert_eq!(
            grip_proxy::verify_grip_sig(&origin_sig, b"changeme").as_deref(),
            Some("pushpin"),
            "{what}: the origin's Grip-Sig is not the proxy's own"
        );
        let kept = got.header("grip-last");
        if let Some(kept) = kept {
            assert_eq!(kept, "c; last-id=1", "{what}");
        }
        seen.push((kept.is_some(), origin_sig));
    }
    seen
}

/// Upstream `Grip-Sig`: one expired 30 s ago or not valid for 60 s is not trusted (the client's `Grip-*` headers
/// are stripped); a valid one, or one expired 2 s ago (within the default 5 s leeway), is (they are kept).
#[tokio::test]
async fn an_upstream_grip_sig_is_checked_for_exp_and_nbf_with_a_5_second_leeway() {
    let up = b"up-secret";
    let at = |delta: i64| now().checked_add_signed(delta).unwrap();
    let cases = [
        ("valid", json!({"iss": "up", "exp": at(600)}), true),
        (
            "expired 30 s ago",
            json!({"iss": "up", "exp": at(-30)}),
            false,
        ),
        (
            "not valid for 60 s",
            json!({"iss": "up", "exp": at(600), "nbf": at(60)}),
            false,
        ),
        ("expired 2 s ago", json!({"iss": "up", "exp": at(-2)}), true),
    ];
    let sigs: Vec<(&str, Option<String>)> = cases
        .iter()
        .map(|(what, claims, _)| (*what, Some(hs256(up, claims.clone()))))
        .collect();

    let seen = upstream_cases("[proxy]\nupstream_sig_key = \"up-secret\"", &sigs).await;

    for ((what, _, trusted), (kept, _)) in cases.iter().zip(seen) {
        assert_eq!(
            kept, *trusted,
            "{what}: client Grip-* headers kept = {kept}"
        );
    }
}

/// `proxy.upstream_sig_leeway_secs` sets the leeway: with 0, a `Grip-Sig` expired 2 s ago is not trusted.
#[tokio::test]
async fn the_upstream_grip_sig_leeway_is_a_setting() {
    let up = b"up-secret";
    let sigs = [
        ("valid", Some(hs256(up, claims("up", 600)))),
        ("expired 2 s ago", Some(hs256(up, claims("up", -2)))),
    ];

    let seen = upstream_cases(
        "[proxy]\nupstream_sig_key = \"up-secret\"\nupstream_sig_leeway_secs = 0",
        &sigs,
    )
    .await;

    let kept: Vec<bool> = seen.iter().map(|(kept, _)| *kept).collect();
    assert_eq!(kept, [true, false]);
}

#[tokio::test]
async fn a_trusted_upstream_proxy_keeps_its_grip_headers_and_others_do_not() {
    let up = b"up-secret";
    let cases = [
        (
            "a valid upstream signature",
            Some(hs256(up, claims("upstream", 600))),
            true,
        ),
        ("no signature", None, false),
        (
            "signed with the route key",
            Some(hs256(b"changeme", claims("pushpin", 600))),
            false,
        ),
        (
            "signed with a wrong key",
            Some(hs256(b"up-secreT", claims("upstream", 600))),
            false,
        ),
        ("expired", Some(hs256(up, claims("upstream", -600))), false),
        (
            "no exp",
            Some(hs256(up, json!({ "iss": "upstream" }))),
            false,
        ),
        ("alg none", Some(unsigned(claims("upstream", 600))), false),
        ("garbage", Some("not-a-jwt".into()), false),
    ];
    let sigs: Vec<(&str, Option<String>)> = cases.iter().map(|(w, s, _)| (*w, s.clone())).collect();
    let seen = upstream_cases("[proxy]\nupstream_sig_key = \"up-secret\"", &sigs).await;
    for ((what, _, trusted), (kept, _)) in cases.iter().zip(seen) {
        assert_eq!(kept, *trusted, "{what}: Grip-Last kept = {kept}");
    }
}

#[tokio::test]
async fn a_trusted_upstream_proxy_can_sign_with_es256() {
    let public_pem = read("ec-public.pem");
    let cases = [
        (
            "signed with its private key",
            Some(es256("ec-private-pkcs8.pem", claims("up", 600))),
            true,
        ),
        (
            "another key",
            Some(es256("ec-other-private.pem", claims("up", 600))),
            false,
        ),
        (
            "HS256 keyed with the public key",
            Some(hs256(&public_pem, claims("up", 600))),
            false,
        ),
        (
            "expired",
            Some(es256("ec-private-pkcs8.pem", claims("up", -600))),
            false,
        ),
        ("no signature", None, false),
    ];
    let sigs: Vec<(&str, Option<String>)> = cases.iter().map(|(w, s, _)| (*w, s.clone())).collect();
    let toml = format!(
        "[proxy]\nupstream_sig_public_key = \"file:{}\"",
        data("ec-public.pem")
    );
    let seen = upstream_cases(&toml, &sigs).await;
    for ((what, _, trusted), (kept, _)) in cases.iter().zip(seen) {
        assert_eq!(kept, *trusted, "{what}: Grip-Last kept = {kept}");
    }
}

// === Limits ===

#[tokio::test]
async fn beyond_max_held_a_hold_is_a_503_with_retry_after_and_a_freed_place_is_reused() {
    let origin = Origin::start(|req| {
        Reply::hold(&req.path()[1..])
            .header("Grip-Timeout", "60")
            .body("the origin's held body")
    })
    .await;
    let proxy = Proxy::to(origin.addr())
        .toml("[proxy]\nmax_held = 2")
        .start()
        .await;
    let a = Pending::get(proxy.addr(), "/a");
    proxy.wait_held(1).await;
    let b = Pending::get(proxy.addr(), "/b");
    proxy.wait_held(2).await;

    let third = proxy.get("/c").await;
    third.assert_proxy_error(503);
    let retry: u64 = third
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1);
    assert!(!third.text().contains("held body"), "{}", third.text());
    assert_eq!(
        origin.nth(2).await.path(),
        "/c",
        "the origin saw the third request"
    );
    assert_eq!(proxy.registry().held(), 2);
    assert_eq!(proxy.registry().held_on("c"), 0);

    publish(&proxy, items(&[item("a", "for a")])).await;
    assert_eq!(a.response().await.text(), "for a");
    proxy.wait_held(1).await;
    let again = Pending::get(proxy.addr(), "/c");
    proxy.wait_held(2).await;
    assert_eq!(proxy.registry().held_on("c"), 1);

    publish(&proxy, items(&[item("c", "for c"), item("b", "for b")])).await;
    assert_eq!(again.response().await.text(), "for c");
    assert_eq!(b.response().await.text(), "for b");
}

/// A proxy with small request limits in front of an origin that echoes the body length.
async fn limited() -> (Origin, Proxy) {
    let origin = Origin::start(|req| Reply::text(&format!("got {} bytes", req.body.len()))).await;
    let proxy = Proxy::to(origin.addr())
        .toml("[proxy]\nmax_request_body = 100\nmax_request_head = 1024")
        .start()
        .await;
    (origin, proxy)
}

async fn raw_exchange(proxy: &Proxy, bytes: &[u8]) -> Resp {
    let mut conn = within(LIMIT, RawConn::open(proxy.addr())).await;
    within(LIMIT, conn.write(bytes)).await;
    within(LIMIT, conn.read_response()).await
}

fn chunked_post(chunks: &[usize]) -> Vec<u8> {
    let mut out = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for len in chunks {
        out.extend_from_slice(format!("{len:x}\r\n").as_bytes());
        out.resize(out.len() + *len, b'x');
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test]
async fn a_declared_body_over_max_request_body_is_a_413_before_the_origin_sees_anything() {
    let (origin, proxy) = limited().await;

    let resp = raw_exchange(
        &proxy,
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n",
    )
    .await;
    resp.assert_proxy_error(413);
    let resp = raw_exchange(
        &proxy,
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n",
    )
    .await;
    resp.assert_proxy_error(413);
    assert_eq!(origin.count(), 0);

    let at_limit = request("POST", "/up").body(full("x".repeat(100))).unwrap();
    let resp = proxy.send(at_limit).await;
    assert_eq!(
        resp.text(),
        "got 100 bytes",
        "a body of exactly the limit passes"
    );
}

#[tokio::test]
async fn a_chunked_body_growing_past_max_request_body_is_a_413() {
    let (origin, proxy) = limited().await;

    let resp = raw_exchange(&proxy, &chunked_post(&[60, 60])).await;
    resp.assert_proxy_error(413);
    for req in origin.requests() {
        assert!(
            req.body.len() <= 100,
            "the origin got {} bytes",
            req.body.len()
        );
    }

    let resp = raw_exchange(&proxy, &chunked_post(&[60, 40])).await;
    assert_eq!(
        resp.text(),
        "got 100 bytes",
        "a body of exactly the limit passes"
    );
}

#[tokio::test]
async fn a_head_over_max_request_head_is_a_431() {
    let (origin, proxy) = limited().await;
    let head = |header_len: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(header_len)
        )
        .into_bytes()
    };

    let resp = raw_exchange(&proxy, &head(2000)).await;
    resp.assert_proxy_error(431);
    assert_eq!(origin.count(), 0);

    let resp = raw_exchange(&proxy, &head(500)).await;
    assert_eq!(resp.status, 200, "a head under the limit passes");
}
