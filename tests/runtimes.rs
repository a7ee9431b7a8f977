//! Per-core mode (`proxy.runtime = "per-core"`), over real sockets: clients spread over the runtimes' listeners,
//! one publish releases clients on every runtime, each runtime reuses origin connections of its own, shutdown
//! drains every runtime within the grace period, and `proxy.threads` at, below and above its bounds.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use support::*;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::Instant;

/// `[proxy]` for per-core mode with `threads` runtimes.
fn per_core(threads: usize) -> String {
    format!("[proxy]\nruntime = \"per-core\"\nthreads = {threads}")
}

/// One scrape of `/metrics`: the value of each series named `name{...}` or `name`, by its labels.
async fn series(proxy: &Proxy, name: &str) -> Vec<(String, f64)> {
    let resp = within(LIMIT, get(proxy.control_addr(), "/metrics")).await;
    assert_eq!(resp.status, 200);
    resp.text()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let labels = key.strip_prefix(name)?;
            (labels.is_empty() || labels.starts_with('{'))
                .then(|| (labels.to_owned(), value.parse().unwrap()))
        })
        .collect()
}

/// Open client connections of each runtime, from `grip_proxy_client_connections{runtime="i"}`.
async fn connections_per_runtime(proxy: &Proxy) -> Vec<usize> {
    let found = series(proxy, "grip_proxy_client_connections").await;
    (0..found.len())
        .map(|i| {
            let label = format!("{{runtime=\"{i}\"}}");
            let (_, value) = found
                .iter()
                .find(|(l, _)| *l == label)
                .unwrap_or_else(|| panic!("no {label} in {found:?}"));
            *value as usize
        })
        .collect()
}

/// An origin that holds `/hold` on channel `c` (answering the timeout with `304` and `ETag: "v1"`), answers
/// `/slow` after a second, and `pong` to anything else.
async fn origin() -> Origin {
    Origin::start(|req| match req.path() {
        "/hold" => Reply::hold("c")
            .header("Grip-Timeout", "60")
            .header("Grip-Status", "304")
            .header("ETag", "\"v1\""),
        "/slow" => Reply::text("late but whole").delay(Duration::from_secs(1)),
        "/never" => Reply::text("never").delay(Duration::from_secs(600)),
        _ => Reply::text("pong"),
    })
    .await
}

#[tokio::test]
async fn clients_spread_over_the_runtimes_and_one_publish_releases_them_all() {
    let origin = origin().await;
    let proxy = Proxy::to(origin.addr()).toml(&per_core(4)).start().await;
    // 64 connections over 4 listeners: the chance that the kernel's hash leaves one runtime without any is
    // 4 × (3/4)^64, about 4 in 100 million.
    let clients: Vec<Pending> = (0..64)
        .map(|_| Pending::get(proxy.addr(), "/hold"))
        .collect();
    proxy.wait_held(64).await;

    let per_runtime = connections_per_runtime(&proxy).await;
    assert_eq!(per_runtime.len(), 4, "{per_runtime:?}");
    assert_eq!(per_runtime.iter().sum::<usize>(), 64, "{per_runtime:?}");
    assert!(
        per_runtime.iter().all(|&n| n > 0),
        "a runtime has no client: {per_runtime:?}"
    );

    let published = publish(&proxy, items(&[item("c", "news")])).await;
    assert_eq!(published.status, 200, "{}", published.text());
    for client in clients {
        let resp = client.response().await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "news");
    }
    proxy.wait_held(0).await;
}

#[tokio::test]
async fn each_runtime_reuses_origin_connections_of_its_own() {
    let origin = ScriptOrigin::start(|_, _| {
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec(),
            After::KeepOpen,
        )
    })
    .await;
    let proxy = Proxy::to(origin.addr()).toml(&per_core(2)).start().await;
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(Conn::open(proxy.addr()).await);
    }
    // One request at a time, over every client connection in turn, three times over: each runtime needs one
    // origin connection, and takes it back from its pool for each of its clients' requests.
    for _ in 0..3 {
        for client in &mut clients {
            let resp = within(
                LIMIT,
                client.send(request("GET", "/").body(empty()).unwrap()),
            )
            .await;
            assert_eq!(resp.text(), "ok");
        }
    }
    let per_runtime = connections_per_runtime(&proxy).await;
    assert_eq!(per_runtime.iter().sum::<usize>(), 16, "{per_runtime:?}");
    let serving = per_runtime.iter().filter(|&&n| n > 0).count();
    // 16 connections over 2 listeners all on one: 2 × (1/2)^16.
    assert_eq!(serving, 2, "{per_runtime:?}");
    assert_eq!(
        origin.connections(),
        serving,
        "one origin connection per runtime that has clients"
    );
    let idle = series(&proxy, "grip_proxy_origin_idle_connections").await;
    assert_eq!(idle, [(String::new(), serving as f64)]);
}

#[tokio::test]
async fn the_runtimes_share_the_idle_origin_connection_bound() {
    let origin = origin().await;
    let proxy = Proxy::to(origin.addr())
        .toml(&per_core(2))
        .toml("[origin]\npool_max_idle_per_host = 4")
        .start()
        .await;
    // 24 requests at once, each on a connection of its own: each runtime opens an origin connection per request
    // it serves, and keeps 2 of them (4 split between 2 runtimes) once they are answered. That one runtime
    // serves fewer than 2 of them: 2 × 25 / 2^24.
    let slow: Vec<Pending> = (0..24)
        .map(|_| Pending::get(proxy.addr(), "/slow"))
        .collect();
    for client in slow {
        assert_eq!(client.response().await.text(), "late but whole");
    }
    let idle = series(&proxy, "grip_proxy_origin_idle_connections").await;
    assert_eq!(idle, [(String::new(), 4.0)]);
}

#[tokio::test]
async fn shutdown_answers_the_held_clients_of_every_runtime_and_lets_each_finish_its_requests() {
    let origin = origin().await;
    let proxy = Proxy::to(origin.addr())
        .toml(&per_core(4))
        .toml("[shutdown]\ngrace_secs = 30")
        .start()
        .await;
    let addr = proxy.addr();
    let held: Vec<Pending> = (0..32).map(|_| Pending::get(addr, "/hold")).collect();
    proxy.wait_held(32).await;
    let slow: Vec<Pending> = (0..16).map(|_| Pending::get(addr, "/slow")).collect();
    origin.nth(47).await;
    let per_runtime = connections_per_runtime(&proxy).await;
    assert_eq!(per_runtime.iter().sum::<usize>(), 48, "{per_runtime:?}");
    // 48 connections over 4 listeners: 4 × (3/4)^48 that one has none.
    assert!(per_runtime.iter().all(|&n| n > 0), "{per_runtime:?}");

    let started = Instant::now();
    proxy.shutdown().await;
    let took = started.elapsed();

    for client in held {
        let resp = client.response().await;
        assert_eq!(resp.status, 304, "{resp:?}");
        assert_eq!(resp.header("etag"), Some("\"v1\""));
    }
    for client in slow {
        let resp = client.response().await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), "late but whole");
    }
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?}, the slowest request 1 s"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a listener is still open"
    );
}

#[tokio::test]
async fn after_the_grace_period_every_runtime_drops_its_remaining_connections() {
    let origin = origin().await;
    let proxy = Proxy::to(origin.addr())
        .toml(&per_core(2))
        .toml("[shutdown]\ngrace_secs = 1")
        .start()
        .await;
    let mut stuck = Vec::new();
    for _ in 0..16 {
        let mut conn = RawConn::open(proxy.addr()).await;
        conn.write(b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n").await;
        stuck.push(conn);
    }
    origin.nth(15).await;
    let per_runtime = connections_per_runtime(&proxy).await;
    // 16 connections over 2 listeners all on one: 2 × (1/2)^16.
    assert!(per_runtime.iter().all(|&n| n > 0), "{per_runtime:?}");

    let started = Instant::now();
    proxy.shutdown().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "shutdown returned after {took:?}, before the grace period was over"
    );
    for conn in &mut stuck {
        assert!(
            within(LIMIT, conn.closed()).await,
            "a connection stayed open"
        );
    }
}

#[tokio::test]
async fn an_app_dropped_without_shutdown_stops_its_runtimes() {
    let origin = origin().await;
    let proxy = Proxy::to(origin.addr()).toml(&per_core(3)).start().await;
    let addr = proxy.addr();
    assert_eq!(proxy.get("/").await.text(), "pong");
    let mut idle = RawConn::open(addr).await;
    drop(proxy);
    assert!(within(LIMIT, idle.closed()).await);
    within(LIMIT, async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn any_thread_count_in_bounds_serves_on_one_port() {
    let origin = origin().await;
    for threads in [1, 2, 3, 5] {
        let proxy = Proxy::to(origin.addr())
            .toml(&per_core(threads))
            .start()
            .await;
        let mut clients = Vec::new();
        for _ in 0..8 {
            let mut conn = Conn::open(proxy.addr()).await;
            let resp = within(LIMIT, conn.send(request("GET", "/").body(empty()).unwrap())).await;
            assert_eq!(resp.text(), "pong");
            clients.push(conn);
        }
        let per_runtime = connections_per_runtime(&proxy).await;
        assert_eq!(per_runtime.len(), threads);
        assert_eq!(per_runtime.iter().sum::<usize>(), 8, "{per_runtime:?}");
        proxy.shutdown().await;
    }
}

#[tokio::test]
async fn a_taken_port_fails_the_start_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = grip_proxy::Config::from_toml_str(&per_core(2)).unwrap();
    config.listen = taken.local_addr().unwrap();
    config.control_listen = "127.0.0.1:0".parse().unwrap();
    let err = within(LIMIT, grip_proxy::App::start(config))
        .await
        .err()
        .unwrap();
    let message = err.to_string();
    assert!(message.contains("(proxy)"), "{message}");
    assert!(
        message.contains(&taken.local_addr().unwrap().to_string()),
        "{message}"
    );
}

// === the binary ===

/// The built binary, with no config from the environment.
fn grip_proxy() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_grip-proxy"));
    cmd.env_remove("GRIP_PROXY_CONFIG")
        .env_remove("GRIP_PROXY_RUNTIME")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Writes `text` to a config file unique to this test process and `name`.
fn config_file(name: &str, text: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("grip-proxy-{}-rt-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// `grip-proxy --check-config` with this file: its exit code and its stderr.
async fn check(name: &str, text: &str, env: Option<&str>) -> (Option<i32>, String) {
    let path = config_file(name, text);
    let mut cmd = grip_proxy();
    cmd.arg("--check-config").arg("--config").arg(&path);
    if let Some(value) = env {
        cmd.env("GRIP_PROXY_RUNTIME", value);
    }
    let out = within(LIMIT, cmd.output()).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[tokio::test]
async fn the_thread_count_is_checked_at_and_beyond_its_bounds() {
    for threads in ["1", "2", "1023", "1024"] {
        let (code, stderr) = check(
            &format!("ok-{threads}"),
            &format!("[proxy]\nthreads = {threads}\n"),
            None,
        )
        .await;
        assert_eq!(code, Some(0), "threads = {threads}: {stderr}");
    }
    for threads in ["0", "-1", "1025", "1026", "100000"] {
        let (code, stderr) = check(
            &format!("bad-{threads}"),
            &format!("[proxy]\nruntime = \"per-core\"\nthreads = {threads}\n"),
            None,
        )
        .await;
        assert_eq!(code, Some(64), "threads = {threads}: {stderr}");
        assert_eq!(
            stderr.trim(),
            format!(
                "grip-proxy: invalid configuration: proxy.threads: {threads} is not between 1 and 1024"
            )
        );
    }
    let (code, stderr) = check("type", "[proxy]\nthreads = \"many\"\n", None).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("line 2, column 11"), "{stderr}");
}

#[tokio::test]
async fn the_runtime_mode_is_checked_in_the_file_and_in_the_environment() {
    for mode in ["shared", "per-core"] {
        let (code, stderr) = check(mode, &format!("[proxy]\nruntime = \"{mode}\"\n"), None).await;
        assert_eq!(code, Some(0), "{mode}: {stderr}");
        let (code, stderr) = check(&format!("env-{mode}"), "", Some(mode)).await;
        assert_eq!(code, Some(0), "{mode}: {stderr}");
    }
    let (code, stderr) = check("bad-mode", "[proxy]\nruntime = \"percore\"\n", None).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(r#"proxy.runtime: "percore" is not "shared" or "per-core""#),
        "{stderr}"
    );
    let (code, stderr) = check("bad-env", "", Some("threads")).await;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(r#"GRIP_PROXY_RUNTIME: "threads" is not "shared" or "per-core""#),
        "{stderr}"
    );
    // The file wins over the environment.
    let (code, stderr) = check(
        "file-wins",
        "[proxy]\nruntime = \"shared\"\n",
        Some("bogus"),
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
}

#[tokio::test]
async fn the_binary_in_per_core_mode_proxies_releases_and_stops_on_sigterm() {
    let origin = origin().await;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = config_file("run", &per_core(3));
    let mut child = grip_proxy()
        .arg("--config")
        .arg(&path)
        .args(["--origin", &format!("http://{}", origin.addr())])
        .args(["--listen", &listen.to_string()])
        .args(["--control-listen", &control.to_string()])
        .spawn()
        .unwrap();
    wait_listening(listen, &mut child).await;
    wait_listening(control, &mut child).await;

    assert_eq!(within(LIMIT, get(listen, "/")).await.text(), "pong");
    let held: Vec<Pending> = (0..12).map(|_| Pending::get(listen, "/hold")).collect();
    origin.nth(12).await;
    // The binary cannot be asked whether the clients are parked: publish until each has its item (an item sent
    // before a client parked is not delivered to it; each publish goes to every client parked by then).
    let released = within(LIMIT, async {
        loop {
            let req = request("POST", "/publish/")
                .header("content-type", "application/json")
                .body(full(items(&[item("c", "news")]).to_string()))
                .unwrap();
            assert_eq!(send(control, req).await.status, 200);
            if held.iter().all(Pending::is_finished) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    released.await;
    for client in held {
        assert_eq!(client.response().await.text(), "news");
    }

    signal(&child, "TERM");
    let status = within(LIMIT, child.wait()).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(status.code(), Some(0));
}
