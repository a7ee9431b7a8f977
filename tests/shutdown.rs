//! Graceful shutdown of the binary: SIGTERM answers held clients at once with their timeout response, lets
//! in-flight requests finish within the grace period and exits 0; a second signal exits at once with 130.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

/// The binary, running, with its stderr collected line by line.
struct Running {
    child: Child,
    listen: SocketAddr,
    log: Arc<Mutex<String>>,
    lines: watch::Receiver<usize>,
    /// `true` once stderr has ended.
    log_ended: watch::Receiver<bool>,
    config: Option<PathBuf>,
}

impl Running {
    /// Starts the binary in front of `origin` (with this config file text, if any) on free ports, and waits
    /// until it accepts connections; if it exits first, fails with its log.
    async fn start(origin: SocketAddr, config: Option<&str>) -> Running {
        let mut running = Running::spawn(origin, config);
        let listen = running.listen;
        let up = within(LIMIT, async {
            loop {
                if TcpStream::connect(listen).await.is_ok() {
                    return true;
                }
                if running.child.try_wait().unwrap().is_some() {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if !up {
            running.wait_log_end().await;
            panic!("grip-proxy exited early:\n{}", running.log());
        }
        running
    }

    fn spawn(origin: SocketAddr, config: Option<&str>) -> Running {
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let control = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_grip-proxy"));
        cmd.env_remove("GRIP_PROXY_CONFIG")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .args(["--origin", &format!("http://{origin}")])
            .args(["--listen", &listen.to_string()])
            .args(["--control-listen", &control])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let config = config.map(|text| {
            let path = std::env::temp_dir().join(format!(
                "grip-proxy-{}-shutdown-{}.toml",
                std::process::id(),
                listen.port()
            ));
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(&path);
            path
        });
        let mut child = cmd.spawn().unwrap();

        let log = Arc::new(Mutex::new(String::new()));
        let (count, lines) = watch::channel(0);
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        let (ended, log_ended) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                let mut log = sink.lock();
                log.push_str(&strip_ansi(&line));
                log.push('\n');
                count.send_modify(|n| *n += 1);
            }
            ended.send_replace(true);
        });
        Running {
            child,
            listen,
            log,
            lines,
            log_ended,
            config,
        }
    }

    /// Waits (within `LIMIT`) until the process's stderr has been read to its end.
    async fn wait_log_end(&mut self) {
        let _ = within(LIMIT, self.log_ended.wait_for(|ended| *ended)).await;
    }

    fn signal(&self, name: &str) {
        signal(&self.child, name);
    }

    /// Waits (within `LIMIT`) for a log line containing `text`.
    async fn wait_log(&mut self, text: &str) {
        let log = self.log.clone();
        let found = within(LIMIT, self.lines.wait_for(|_| log.lock().contains(text)))
            .await
            .is_ok();
        assert!(found, "the log ended without {text:?}:\n{}", self.log());
    }

    fn log(&self) -> String {
        self.log.lock().clone()
    }

    /// Waits for the process to exit, within `limit`.
    async fn exit(&mut self, limit: Duration) -> ExitStatus {
        within(limit, self.child.wait()).await.unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(path) = &self.config {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The text of a log line without terminal colour codes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends a GET on a raw connection and keeps it open (the answer, if any, is never read).
async fn send_raw_get(addr: SocketAddr, path: &str) -> TcpStream {
    let mut stream = within(LIMIT, TcpStream::connect(addr)).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    within(LIMIT, stream.write_all(req.as_bytes()))
        .await
        .unwrap();
    stream
}

#[tokio::test]
async fn sigterm_answers_held_clients_with_their_timeout_response_and_exits_0() {
    let origin = Origin::start(|req| match req.path() {
        "/hold" => Reply::hold("c")
            .header("Grip-Timeout", "60")
            .header("Grip-Status", "304")
            .header("ETag", "\"v1\""),
        _ => Reply::text("pong"),
    })
    .await;
    let mut proxy = Running::start(origin.addr(), None).await;
    let client = Pending::get(proxy.listen, "/hold");
    origin.nth(0).await;
    // The binary cannot be asked whether the client is parked; a full round trip through it after the origin
    // answered the hold leaves ample time (and the log line below checks it).
    assert_eq!(
        within(LIMIT, get(proxy.listen, "/ping")).await.text(),
        "pong"
    );

    proxy.signal("TERM");
    let signalled = Instant::now();
    let resp = client.response().await;
    let answered = signalled.elapsed();

    assert_eq!(resp.status, 304, "{resp:?}");
    assert_eq!(resp.header("etag"), Some("\"v1\""));
    assert!(resp.body.is_empty());
    assert!(
        answered < Duration::from_secs(2),
        "the held client was answered after {answered:?}"
    );
    let status = proxy.exit(LIMIT).await;
    assert_eq!(status.code(), Some(0), "{}", proxy.log());
    proxy.wait_log("stopped").await;
    let log = proxy.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    let shutting_down = log
        .lines()
        .find(|l| l.contains("shutting down"))
        .unwrap_or_else(|| panic!("no shutdown line:\n{log}"));
    assert!(
        shutting_down.contains("held=1"),
        "the client was not parked at shutdown: {shutting_down}"
    );
    assert_eq!(origin.count(), 2, "the held client was not re-requested");
}

#[tokio::test]
async fn sigterm_ends_each_stream_with_its_last_chunk_and_exits() {
    let origin = Origin::start(|_| {
        Reply::text("open\n")
            .header("Grip-Hold", "stream")
            .header("Grip-Channel", "live")
    })
    .await;
    let mut proxy = Running::start(origin.addr(), Some("[shutdown]\ngrace_secs = 30\n")).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut conn = RawConn::open(proxy.listen).await;
        conn.write(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(within(LIMIT, conn.read_head()).await.status, 200);
        assert_eq!(within(LIMIT, conn.next_chunk()).await.unwrap(), "open\n");
        streams.push(conn);
    }
    proxy.signal("TERM");
    let signalled = Instant::now();
    for conn in &mut streams {
        assert_eq!(
            within(LIMIT, conn.next_chunk()).await,
            None,
            "the last chunk"
        );
        assert!(within(LIMIT, conn.closed()).await);
    }
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "{:?}",
        signalled.elapsed()
    );
    let status = proxy.exit(LIMIT).await;
    assert_eq!(status.code(), Some(0), "{}", proxy.log());
}

#[tokio::test]
async fn in_flight_requests_finish_within_the_grace_period_and_new_connections_are_refused() {
    let origin =
        Origin::start(|_| Reply::text("late but whole").delay(Duration::from_millis(1500))).await;
    let mut proxy = Running::start(origin.addr(), Some("[shutdown]\ngrace_secs = 30\n")).await;
    let client = Pending::get(proxy.listen, "/slow");
    origin.nth(0).await;

    proxy.signal("TERM");
    proxy.wait_log("shutting down").await;
    let listen = proxy.listen;
    within(LIMIT, async {
        while TcpStream::connect(listen).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let resp = client.response().await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "late but whole");
    let status = proxy.exit(LIMIT).await;
    assert_eq!(status.code(), Some(0), "{}", proxy.log());
}

#[tokio::test]
async fn after_the_grace_period_the_process_exits_0() {
    let origin = Origin::start(|_| Reply::text("never").delay(Duration::from_secs(600))).await;
    let mut proxy = Running::start(origin.addr(), Some("[shutdown]\ngrace_secs = 1\n")).await;
    let _in_flight = send_raw_get(proxy.listen, "/never").await;
    origin.nth(0).await;

    proxy.signal("TERM");
    let signalled = Instant::now();
    let status = proxy.exit(LIMIT).await;

    assert_eq!(status.code(), Some(0), "{}", proxy.log());
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "exited after {:?}, before the grace period was over",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn a_second_signal_exits_at_once_with_130() {
    let origin = Origin::start(|_| Reply::text("never").delay(Duration::from_secs(600))).await;
    let mut proxy = Running::start(origin.addr(), Some("[shutdown]\ngrace_secs = 30\n")).await;
    let _in_flight = send_raw_get(proxy.listen, "/never").await;
    origin.nth(0).await;

    proxy.signal("TERM");
    proxy.wait_log("shutting down").await;
    assert!(
        proxy.child.try_wait().unwrap().is_none(),
        "exited before the in-flight request was done: {}",
        proxy.log()
    );
    proxy.signal("INT");
    let signalled = Instant::now();
    let status = proxy.exit(LIMIT).await;

    assert_eq!(status.code(), Some(130), "{}", proxy.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "exited {:?} after the second signal",
        signalled.elapsed()
    );
}

#[tokio::test]
async fn two_signals_in_quick_succession_exit_at_once_with_130() {
    // An operator pressing Ctrl-C twice, or a supervisor sending TERM then INT: the second signal may arrive
    // while the first is being handled. Several processes, so that an unlucky timing cannot hide a lost signal.
    const TRIALS: usize = 5;
    let origin = Origin::start(|_| Reply::text("never").delay(Duration::from_secs(600))).await;
    for trial in 0..TRIALS {
        let mut proxy = Running::start(origin.addr(), Some("[shutdown]\ngrace_secs = 30\n")).await;
        let _in_flight = send_raw_get(proxy.listen, "/never").await;
        origin.nth(trial).await;

        let pid = proxy.child.id().unwrap();
        let sent = std::process::Command::new("sh")
            .args(["-c", &format!("kill -TERM {pid}; kill -INT {pid}")])
            .status()
            .unwrap();
        assert!(sent.success());
        let signalled = Instant::now();
        let status = tokio::time::timeout(Duration::from_secs(2), proxy.child.wait()).await;

        let Ok(status) = status else {
            panic!(
                "trial {trial}: still running 2 s after TERM then INT (the second signal was lost):\n{}",
                proxy.log()
            );
        };
        assert_eq!(
            status.unwrap().code(),
            Some(130),
            "trial {trial}: {}",
            proxy.log()
        );
        assert!(signalled.elapsed() < Duration::from_secs(2));
    }
}
