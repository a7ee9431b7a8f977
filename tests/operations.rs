//! Operating the proxy, over real sockets: `/metrics` values after a hold, a publish, a timeout and a
//! disconnect; `/health` and `/ready`; channel introspection (one channel, the busiest list, auth); the metrics
//! listener; live reload in-process (a route swapped while a client stays held) and through SIGHUP to the binary
//! (an invalid file rejected, the old route still serving).

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;

// === helpers ===

/// One scrape of `/metrics`.
struct Scrape(String);

impl Scrape {
    /// The value of one series, e.g. `grip_proxy_holds_ended_total{reason="released"}`; panics if absent.
    #[track_caller]
    fn value(&self, series: &str) -> f64 {
        let prefix = format!("{series} ");
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no series {series} in\n{}", self.0))
            .trim()
            .parse()
            .unwrap()
    }
}

async fn scrape_at(addr: SocketAddr) -> Scrape {
    let resp = within(LIMIT, get(addr, "/metrics")).await;
    assert_eq!(resp.status, 200);
    assert!(
        resp.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        resp.header("content-type")
    );
    Scrape(resp.text().to_owned())
}

async fn scrape(proxy: &Proxy) -> Scrape {
    scrape_at(proxy.control_addr()).await
}

/// GETs `path` on the control API with these headers, within `LIMIT`.
async fn control_get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut req = request("GET", path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    within(
        LIMIT,
        send(proxy.control_addr(), req.body(empty()).unwrap()),
    )
    .await
}

async fn control_json(proxy: &Proxy, path: &str) -> Value {
    let resp = control_get(proxy, path, &[]).await;
    assert_eq!(resp.status, 200, "{path}: {}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    serde_json::from_slice(&resp.body).unwrap()
}

/// An origin that holds every request on the channel named by its path (`/news` holds on `news`).
async fn origin_holding_on_path() -> Origin {
    Origin::start(|req| Reply::hold(&req.path()[1..])).await
}

// === metrics ===

#[tokio::test]
async fn metrics_count_a_hold_released_by_a_publish_a_timeout_and_a_disconnect() {
    let origin = Origin::start(|req| match req.path() {
        "/soon" => Reply::hold("m").header("Grip-Timeout", "1"),
        _ => Reply::hold("m"),
    })
    .await;
    let proxy = Proxy::to(origin.addr())
        .toml("[hold]\nmin_timeout_secs = 1")
        .start()
        .await;
    let m = scrape(&proxy).await;
    assert_eq!(m.value("grip_proxy_held_clients"), 0.0);
    assert_eq!(m.value("grip_proxy_holds_started_total"), 0.0);

    // Held, then released by a publish.
    let client = Pending::get(proxy.addr(), "/");
    proxy.wait_held(1).await;
    let m = scrape(&proxy).await;
    assert_eq!(m.value("grip_proxy_held_clients"), 1.0);
    assert_eq!(m.value("grip_proxy_origin_response_seconds_count"), 1.0);
    assert_eq!(
        publish(&proxy, items(&[item("m", "news\n")])).await.status,
        200
    );
    assert_eq!(client.response().await.text(), "news\n");
    proxy.wait_held(0).await;
    let m = scrape(&proxy).await;
    assert_eq!(m.value("grip_proxy_held_clients"), 0.0);
    // Counted just after the client is parked: certain once it was released (in per-core mode the client's
    // thread may not have counted it yet when another thread sees it parked).
    assert_eq!(m.value("grip_proxy_holds_started_total"), 1.0);
    assert_eq!(
        m.value(r#"grip_proxy_holds_ended_total{reason="released"}"#),
        1.0
    );
    assert_eq!(m.value("grip_proxy_deliveries_total"), 1.0);
    assert_eq!(m.value("grip_proxy_published_items_total"), 1.0);
    assert_eq!(
        m.value(r#"grip_proxy_publish_requests_total{status="2xx"}"#),
        1.0
    );
    assert_eq!(m.value("grip_proxy_publish_delivery_seconds_count"), 1.0);
    assert!(m.value("grip_proxy_publish_delivery_seconds_sum") < 5.0);
    assert_eq!(
        m.value(r#"grip_proxy_requests_total{route="*",status="2xx"}"#),
        1.0
    );

    // Held until its 1 s timeout.
    let timed_out = proxy.get("/soon").await;
    assert_eq!(timed_out.text(), "held\n");
    let m = scrape(&proxy).await;
    assert_eq!(
        m.value(r#"grip_proxy_holds_ended_total{reason="timeout"}"#),
        1.0
    );
    assert_eq!(
        m.value(r#"grip_proxy_requests_total{route="*",status="2xx"}"#),
        2.0
    );

    // Held, then the client goes away.
    let mut gone = RawConn::open(proxy.addr()).await;
    gone.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    proxy.wait_held(1).await;
    drop(gone);
    proxy.wait_held(0).await;
    let m = scrape(&proxy).await;
    assert_eq!(
        m.value(r#"grip_proxy_holds_ended_total{reason="disconnect"}"#),
        1.0
    );
    assert_eq!(m.value("grip_proxy_holds_started_total"), 3.0);
    assert_eq!(
        m.value(r#"grip_proxy_holds_ended_total{reason="released"}"#),
        1.0
    );
    assert_eq!(m.value("grip_proxy_deliveries_total"), 1.0);
}

#[tokio::test]
async fn metrics_show_the_origin_connections_idle_in_the_pool() {
    let origin = Origin::start(|_| Reply::text("plain")).await;
    let proxy = Proxy::start(origin.addr()).await;
    assert_eq!(
        scrape(&proxy)
            .await
            .value("grip_proxy_origin_idle_connections"),
        0.0
    );

    // Two requests one after the other: one connection, back in the pool after each. Both on one client
    // connection, so that they are served by the same runtime (and pool) in per-core mode too.
    let mut client = Conn::open(proxy.addr()).await;
    for _ in 0..2 {
        let resp = within(
            LIMIT,
            client.send(request("GET", "/").body(empty()).unwrap()),
        )
        .await;
        assert_eq!(resp.text(), "plain");
    }

    assert_eq!(
        scrape(&proxy)
            .await
            .value("grip_proxy_origin_idle_connections"),
        1.0
    );
}

#[tokio::test]
async fn metrics_count_origin_errors_by_kind_and_requests_by_route() {
    let dead = free_port();
    let proxy = Proxy::with_routes(&format!(
        "[[routes]]\nhost = \"app.test\"\npath_prefix = \"/api/\"\norigin = \"http://127.0.0.1:{dead}\""
    ))
    .start()
    .await;
    let unreachable = proxy
        .send(
            request("GET", "/api/x")
                .header("host", "app.test")
                .body(empty())
                .unwrap(),
        )
        .await;
    unreachable.assert_proxy_error(502);
    let unrouted = proxy
        .send(
            request("GET", "/other")
                .header("host", "app.test")
                .body(empty())
                .unwrap(),
        )
        .await;
    unrouted.assert_proxy_error(502);
    let m = scrape(&proxy).await;
    assert_eq!(
        m.value(r#"grip_proxy_origin_errors_total{kind="connect"}"#),
        1.0
    );
    assert_eq!(
        m.value(r#"grip_proxy_origin_errors_total{kind="timeout"}"#),
        0.0
    );
    assert_eq!(
        m.value(r#"grip_proxy_requests_total{route="app.test/api/",status="5xx"}"#),
        1.0
    );
    assert_eq!(
        m.value(r#"grip_proxy_requests_total{route="(none)",status="5xx"}"#),
        1.0
    );
    assert_eq!(
        m.value(r#"grip_proxy_requests_total{route="app.test/api/",status="2xx"}"#),
        0.0
    );
}

#[tokio::test]
async fn a_refused_publish_is_counted_by_status_class_and_delivers_nothing() {
    let origin = Origin::start(|_| Reply::hold("c")).await;
    let proxy = Proxy::to(origin.addr()).start().await;
    let bad = publish(&proxy, json!({"items": [{"id": "1"}]})).await;
    assert_eq!(bad.status, 400);
    let m = scrape(&proxy).await;
    assert_eq!(
        m.value(r#"grip_proxy_publish_requests_total{status="4xx"}"#),
        1.0
    );
    assert_eq!(m.value("grip_proxy_published_items_total"), 0.0);
}

// === health and readiness ===

#[tokio::test]
async fn health_and_ready_answer_200_and_only_get() {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::start(origin.addr()).await;
    let health = control_get(&proxy, "/health", &[]).await;
    assert_eq!((health.status.as_u16(), health.text()), (200, "ok\n"));
    let ready = control_get(&proxy, "/ready", &[]).await;
    assert_eq!((ready.status.as_u16(), ready.text()), (200, "ready\n"));
    let post = within(
        LIMIT,
        send(
            proxy.control_addr(),
            request("POST", "/ready").body(empty()).unwrap(),
        ),
    )
    .await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn ready_is_503_while_the_redis_bus_is_not_connected_and_metrics_show_it() {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    // Nothing listens there: the bus keeps retrying (bus.startup = "retry").
    let proxy = Proxy::to(origin.addr())
        .toml(&format!(
            "[bus]\nurl = \"redis://127.0.0.1:{}\"",
            free_port()
        ))
        .start()
        .await;
    let ready = control_get(&proxy, "/ready", &[]).await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.text(),
        "not ready: the publish bus (redis) is not connected\n"
    );
    assert_eq!(control_get(&proxy, "/health", &[]).await.status, 200);
    let m = scrape(&proxy).await;
    assert_eq!(m.value("grip_proxy_bus_connected"), 0.0);
    assert_eq!(m.value("grip_proxy_bus_connects_total"), 0.0);
}

// === introspection ===

#[tokio::test]
async fn one_channel_shows_its_held_clients_and_last_id_and_an_unknown_one_is_empty() {
    let origin = origin_holding_on_path().await;
    let proxy = Proxy::start(origin.addr()).await;
    assert_eq!(
        control_json(&proxy, "/channels/news").await,
        json!({"channel": "news", "held": 0, "streams": 0, "last_id": null, "history": {"items": 0, "bytes": 0}})
    );

    let first = Pending::get(proxy.addr(), "/news");
    proxy.wait_held(1).await;
    assert_eq!(
        control_json(&proxy, "/channels/news").await,
        json!({"channel": "news", "held": 1, "streams": 0, "last_id": null, "history": {"items": 0, "bytes": 0}})
    );
    publish(&proxy, items(&[numbered("news", 7, None, "seven\n")])).await;
    assert_eq!(first.response().await.text(), "seven\n");
    proxy.wait_held(0).await;
    assert_eq!(
        control_json(&proxy, "/channels/news").await,
        json!({"channel": "news", "held": 0, "streams": 0, "last_id": "7", "history": {"items": 0, "bytes": 0}})
    );

    // Names are percent-decoded: a channel with a space and a slash.
    publish(&proxy, items(&[numbered("a b/c", 1, None, "x")])).await;
    assert_eq!(
        control_json(&proxy, "/channels/a%20b%2Fc").await,
        json!({"channel": "a b/c", "held": 0, "streams": 0, "last_id": "1", "history": {"items": 0, "bytes": 0}})
    );
}

#[tokio::test]
async fn the_channel_list_is_busiest_first_paged_and_bounded() {
    let origin = origin_holding_on_path().await;
    let proxy = Proxy::start(origin.addr()).await;
    let mut clients = Vec::new();
    for path in ["/busy", "/busy", "/busy", "/quiet", "/mid", "/mid"] {
        clients.push(Pending::get(proxy.addr(), path));
    }
    proxy.wait_held(6).await;
    publish(&proxy, items(&[numbered("idle", 3, None, "x")])).await;

    let all = control_json(&proxy, "/channels").await;
    assert_eq!(all["total"], 4);
    assert_eq!(
        all["channels"],
        json!([
            {"channel": "busy", "held": 3, "streams": 0, "last_id": null},
            {"channel": "mid", "held": 2, "streams": 0, "last_id": null},
            {"channel": "quiet", "held": 1, "streams": 0, "last_id": null},
            {"channel": "idle", "held": 0, "streams": 0, "last_id": "3"},
        ])
    );
    let page = control_json(&proxy, "/channels?limit=2&offset=1").await;
    assert_eq!(
        (page["limit"].clone(), page["offset"].clone()),
        (json!(2), json!(1))
    );
    let names: Vec<&str> = page["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mid", "quiet"]);

    let too_many = control_get(&proxy, "/channels?limit=1001", &[]).await;
    assert_eq!(too_many.status, 400);
    let error: Value = serde_json::from_slice(&too_many.body).unwrap();
    assert_eq!(error["error"], "limit: at most 1000");
    drop(clients);
}

#[tokio::test]
async fn introspection_needs_the_publish_credentials_when_configured_but_probes_do_not() {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::to(origin.addr())
        .toml("[control.auth]\nbearer_key = \"s3cret\"")
        .start()
        .await;
    for path in ["/channels/x", "/channels"] {
        let refused = control_get(&proxy, path, &[]).await;
        assert_eq!(refused.status, 401, "{path}");
        assert!(refused.header("www-authenticate").is_some());
        let wrong = control_get(&proxy, path, &[("authorization", "Bearer nope")]).await;
        assert_eq!(wrong.status, 401, "{path}");
        let allowed = control_get(&proxy, path, &[("authorization", "Bearer s3cret")]).await;
        assert_eq!(allowed.status, 200, "{path}");
    }
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(control_get(&proxy, path, &[]).await.status, 200, "{path}");
    }
}

#[tokio::test]
async fn the_metrics_listener_serves_metrics_and_probes_only() {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::to(origin.addr())
        .toml("[metrics]\nlisten = \"127.0.0.1:0\"")
        .start()
        .await;
    let addr = proxy.app().metrics_addr().unwrap();
    assert_ne!(addr, proxy.control_addr());
    assert_eq!(proxy.get("/").await.text(), "ok");
    let m = scrape_at(addr).await;
    assert_eq!(
        m.value(r#"grip_proxy_requests_total{route="*",status="2xx"}"#),
        1.0
    );
    assert_eq!(within(LIMIT, get(addr, "/health")).await.status, 200);
    assert_eq!(within(LIMIT, get(addr, "/ready")).await.status, 200);
    assert_eq!(within(LIMIT, get(addr, "/channels/x")).await.status, 404);
    let publish = within(
        LIMIT,
        send(addr, request("POST", "/publish/").body(full("{}")).unwrap()),
    )
    .await;
    assert_eq!(publish.status, 404);
}

// === live reload ===

/// The config a reload applies, with the listeners the harness started with (so that nothing needs a restart).
fn reload_config(toml: &str) -> grip_proxy::Config {
    let mut config = grip_proxy::Config::from_toml_str(toml).unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.control_listen = "127.0.0.1:0".parse().unwrap();
    config
}

#[tokio::test]
async fn a_reload_swaps_the_route_for_new_requests_while_a_held_client_stays_held_and_is_released()
{
    let old = Origin::start(|_| Reply::hold("r").body("old timeout\n")).await;
    let new = Origin::start(|_| Reply::hold("r").body("new timeout\n")).await;
    let proxy = Proxy::to(old.addr()).start().await;
    let first = Pending::get(proxy.addr(), "/first");
    proxy.wait_held(1).await;

    let reloaded = proxy.app().reloader().apply(reload_config(&format!(
        "[[routes]]\npath_prefix = \"/\"\norigin = \"http://{}\"",
        new.addr()
    )));
    assert_eq!(reloaded.routes, 1);
    assert!(
        reloaded.needs_restart.is_empty(),
        "{:?}",
        reloaded.needs_restart
    );
    assert_eq!(proxy.registry().held(), 1, "the held client is untouched");

    let second = Pending::get(proxy.addr(), "/second");
    assert_eq!(new.nth(0).await.path(), "/second");
    proxy.wait_held(2).await;
    assert_eq!(old.count(), 1, "the old origin saw only the first request");

    publish(&proxy, items(&[item("r", "released\n")])).await;
    assert_eq!(first.response().await.text(), "released\n");
    assert_eq!(second.response().await.text(), "released\n");
    let m = scrape(&proxy).await;
    assert_eq!(
        m.value(r#"grip_proxy_config_reloads_total{result="ok"}"#),
        1.0
    );
    assert_eq!(
        m.value(r#"grip_proxy_requests_total{route="*",status="2xx"}"#),
        1.0
    );
    assert_eq!(
        m.value(r#"grip_proxy_requests_total{route="*/",status="2xx"}"#),
        1.0
    );
}

#[tokio::test]
async fn a_reload_that_changes_restart_only_settings_applies_the_rest_and_names_them() {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let proxy = Proxy::start(origin.addr()).await;
    let reloaded = proxy.app().reloader().apply(reload_config(&format!(
        "[control]\nmax_body = 10\n[bus]\nurl = \"redis://127.0.0.1:1\"\n[[routes]]\norigin = \"http://{}\"",
        origin.addr()
    )));
    assert_eq!(reloaded.needs_restart, ["control.max_body", "bus"]);
    // The bus did not change: publishing still works in memory.
    assert_eq!(publish(&proxy, items(&[item("x", "y")])).await.status, 200);
}

/// The binary, logging JSON at info, with no config from the environment.
fn grip_proxy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_grip-proxy"));
    cmd.env_remove("GRIP_PROXY_CONFIG")
        .env("RUST_LOG", "info")
        .args(["--log-format", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The binary's JSON log lines, as they come; every line read is kept in `seen`.
struct Log {
    rx: mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
}

impl Log {
    fn of(child: &mut tokio::process::Child) -> Log {
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let value = serde_json::from_str(&line).unwrap_or_else(|_| json!({ "raw": line }));
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Log {
            rx,
            seen: Vec::new(),
        }
    }

    /// The fields of the next line whose message starts with `message`, within `LIMIT`.
    #[track_caller]
    fn next(&mut self, message: &str) -> impl std::future::Future<Output = Value> + '_ {
        let message = message.to_owned();
        within(LIMIT, async move {
            loop {
                let line = self.rx.recv().await.expect("grip-proxy exited");
                let fields = line["fields"].clone();
                self.seen.push(line);
                if fields["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with(&message))
                {
                    return fields;
                }
            }
        })
    }
}

fn hup(child: &tokio::process::Child) {
    signal(child, "HUP");
}

fn temp_config(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("grip-proxy-ops-{}-{name}.toml", std::process::id()))
}

#[tokio::test]
async fn sighup_rejects_an_invalid_file_keeping_the_old_route_then_applies_a_valid_one() {
    let a = Origin::start(|_| Reply::text("from a")).await;
    let b = Origin::start(|_| Reply::text("from b")).await;
    let path = temp_config("sighup");
    let config = |origin: SocketAddr| {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[control]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\norigin = \"http://{origin}\"\n"
        )
    };
    std::fs::write(&path, config(a.addr())).unwrap();
    let mut child = grip_proxy().arg("--config").arg(&path).spawn().unwrap();
    let mut log = Log::of(&mut child);
    let started = log.next("grip-proxy listening").await;
    let proxy: SocketAddr = started["proxy"].as_str().unwrap().parse().unwrap();
    assert_eq!(within(LIMIT, get(proxy, "/x")).await.text(), "from a");
    let line = log.next("request").await;
    assert_eq!(
        (line["route"].as_str(), line["status"].as_u64()),
        (Some("*"), Some(200))
    );

    std::fs::write(&path, "[[routes]]\norigin = \"htp://nowhere\"\n").unwrap();
    hup(&child);
    let rejected = log.next("configuration reload rejected").await;
    assert!(
        rejected["error"]
            .as_str()
            .unwrap()
            .contains("routes[0].origin"),
        "{rejected}"
    );
    assert_eq!(within(LIMIT, get(proxy, "/x")).await.text(), "from a");

    std::fs::write(&path, config(b.addr())).unwrap();
    hup(&child);
    let reloaded = log.next("configuration reloaded").await;
    assert_eq!(reloaded["routes"], 1);
    assert_eq!(within(LIMIT, get(proxy, "/x")).await.text(), "from b");

    signal(&child, "TERM");
    assert_eq!(within(LIMIT, child.wait()).await.unwrap().code(), Some(0));
    std::fs::remove_file(&path).unwrap();
}

/// A self-signed certificate for localhost written to `<name>.crt` and `<name>.key` beside the config: (its DER, the
/// `cert`/`key` lines of a `[tls]` section).
fn self_signed(name: &str) -> (Vec<u8>, String) {
    let made = support::tls::self_signed(&["localhost"]);
    let cert = temp_config(&format!("{name}.crt"));
    let key = temp_config(&format!("{name}.key"));
    std::fs::write(&cert, &made.cert_pem).unwrap();
    std::fs::write(&key, &made.key_pem).unwrap();
    let lines = format!(
        "cert = \"file:{}\"\nkey = \"file:{}\"\n",
        cert.display(),
        key.display()
    );
    (made.der.to_vec(), lines)
}

/// The certificate the HTTPS listener at `addr` presents for localhost (the client trusts `roots`).
async fn served_certificate(addr: SocketAddr, roots: &[&[u8]]) -> Vec<u8> {
    let mut store = rustls::RootCertStore::empty();
    for der in roots {
        store.add(der.to_vec().into()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn sighup_swaps_the_https_certificate_and_refuses_a_broken_one() {
    let origin = Origin::start(|_| Reply::text("ok")).await;
    let path = temp_config("sighup-tls");
    let (first, first_lines) = self_signed("sighup-tls-first");
    let (second, second_lines) = self_signed("sighup-tls-second");
    let config = |cert_lines: &str| {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[control]\nlisten = \"127.0.0.1:0\"\n\
             [tls]\nlisten = \"127.0.0.1:0\"\n{cert_lines}\
             [[routes]]\norigin = \"http://{}\"\n",
            origin.addr()
        )
    };
    std::fs::write(&path, config(&first_lines)).unwrap();
    let mut child = grip_proxy().arg("--config").arg(&path).spawn().unwrap();
    let mut log = Log::of(&mut child);
    let started = log.next("grip-proxy listening").await;
    let https: SocketAddr = started["https"].as_str().unwrap().parse().unwrap();
    let roots: [&[u8]; 2] = [&first, &second];
    assert!(within(LIMIT, served_certificate(https, &roots)).await == first);

    std::fs::write(&path, config(&second_lines)).unwrap();
    hup(&child);
    log.next("HTTPS certificates reloaded").await;
    log.next("configuration reloaded").await;
    assert!(within(LIMIT, served_certificate(https, &roots)).await == second);

    std::fs::write(
        &path,
        config("cert = \"file:/nonexistent.crt\"\nkey = \"k\"\n"),
    )
    .unwrap();
    hup(&child);
    let rejected = log.next("configuration reload rejected").await;
    assert!(
        rejected["error"]
            .as_str()
            .unwrap()
            .starts_with("tls.cert: cannot read /nonexistent.crt"),
        "{rejected}"
    );
    assert!(within(LIMIT, served_certificate(https, &roots)).await == second);

    signal(&child, "TERM");
    assert_eq!(within(LIMIT, child.wait()).await.unwrap().code(), Some(0));
    for name in [
        "sighup-tls",
        "sighup-tls-first.crt",
        "sighup-tls-first.key",
        "sighup-tls-second.crt",
        "sighup-tls-second.key",
    ] {
        let _ = std::fs::remove_file(temp_config(name));
    }
}

// === logs ===

#[tokio::test]
async fn logs_never_contain_bodies_keys_or_tokens() {
    let origin = Origin::start(|_| Reply::hold("c").body("HELD-BODY-MARKER")).await;
    let path = temp_config("secrets");
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[control]\nlisten = \"127.0.0.1:0\"\n\
         [control.auth]\nbearer_key = \"KEY-MARKER\"\n\
         [[routes]]\norigin = \"http://{}\"\nsig_key = \"SIG-KEY-MARKER\"\n",
        origin.addr()
    );
    std::fs::write(&path, &config).unwrap();
    let mut child = grip_proxy()
        .env("RUST_LOG", "grip_proxy=trace")
        .arg("--config")
        .arg(&path)
        .spawn()
        .unwrap();
    let mut log = Log::of(&mut child);
    let started = log.next("grip-proxy listening").await;
    let proxy: SocketAddr = started["proxy"].as_str().unwrap().parse().unwrap();
    let control: SocketAddr = started["control"].as_str().unwrap().parse().unwrap();
    let post = |path: &str, auth: &str, body: &str| {
        request("POST", path)
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(full(body.to_owned()))
            .unwrap()
    };

    // A held client with a query token and credentials of its own, released by an authorized publish.
    let req = request("POST", "/c?token=QUERY-MARKER")
        .header("authorization", "Bearer CLIENT-TOKEN-MARKER")
        .body(full("REQUEST-BODY-MARKER"))
        .unwrap();
    let client = tokio::spawn(send(proxy, req));
    // Wait for the park as a backend would: through introspection (polled; the binary offers no other signal).
    let held = within(LIMIT, async {
        loop {
            let resp = send(
                control,
                request("GET", "/channels/c")
                    .header("authorization", "Bearer KEY-MARKER")
                    .body(empty())
                    .unwrap(),
            )
            .await;
            let v: Value = serde_json::from_slice(&resp.body).unwrap();
            if v["held"] == 1 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
    held.await;
    let body = json!({"items": [{"channel": "c", "formats": {"http-response": {"body": "PUBLISHED-BODY-MARKER"}}}]});
    let published = within(
        LIMIT,
        send(
            control,
            post("/publish/", "Bearer KEY-MARKER", &body.to_string()),
        ),
    )
    .await;
    assert_eq!(published.status, 200);
    assert_eq!(
        within(LIMIT, client).await.unwrap().text(),
        "PUBLISHED-BODY-MARKER"
    );
    let line = log.next("request").await;
    assert_eq!(
        (line["path"].as_str(), line["outcome"].as_str()),
        (Some("/c"), Some("Released"))
    );

    // Refused publishes: a wrong token, and a body whose invalid field holds a value.
    let wrong = within(
        LIMIT,
        send(
            control,
            post("/publish/", "Bearer WRONG-TOKEN-MARKER", "{}"),
        ),
    )
    .await;
    assert_eq!(wrong.status, 401);
    let invalid = json!({"items": [{"channel": "c", "formats": {"http-response": {"headers": "INVALID-VALUE-MARKER"}}}]});
    let invalid = within(
        LIMIT,
        send(
            control,
            post("/publish/", "Bearer KEY-MARKER", &invalid.to_string()),
        ),
    )
    .await;
    assert_eq!(invalid.status, 400);
    assert!(
        invalid.text().contains("INVALID-VALUE-MARKER"),
        "the publisher is told"
    );
    log.next("publish rejected").await;

    // A reload of a file with a syntax error on the line of a key.
    std::fs::write(&path, "[control.auth]\nbearer_key = \"RELOAD-KEY-MARKER\n").unwrap();
    hup(&child);
    log.next("configuration reload rejected").await;

    signal(&child, "TERM");
    assert_eq!(within(LIMIT, child.wait()).await.unwrap().code(), Some(0));
    std::fs::remove_file(&path).unwrap();
    // The reader task ends at the pipe's EOF, after the process exited: drain what it read.
    let mut lines = std::mem::take(&mut log.seen);
    while let Some(line) = within(LIMIT, log.rx.recv()).await {
        lines.push(line);
    }
    assert!(lines.len() > 10, "{lines:?}");
    for line in lines {
        let text = line.to_string();
        assert!(
            !text.contains("MARKER"),
            "a secret or body was logged: {text}"
        );
    }
}
