//! A private, loopback-only `redis-server` for the cross-instance scenario: no persistence,
//! its files in a temp dir, stopped by pid (also when dropped).

use crate::sys::signal_pid;
use crate::target::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// A running redis-server.
pub(crate) struct Redis {
    pub port: u16,
    pub version: String,
    pub log: PathBuf,
    child: Option<Child>,
    dir: PathBuf,
}

/// `redis-server` on PATH, if any.
pub(crate) fn find_on_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `Redis server v=7.0.15 sha=...` -> `7.0.15` (at most 5 s; the child is killed after that).
async fn version_of(bin: &Path) -> String {
    let child = tokio::process::Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(child) = child else {
        return "unknown".into();
    };
    let text = match tokio::time::timeout(Duration::from_secs(5), child.wait_with_output()).await {
        Ok(Ok(o)) => String::from_utf8_lossy(&o.stdout).into_owned(),
        _ => String::new(),
    };
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .unwrap_or("unknown")
        .to_string()
}

impl Redis {
    /// Start `bin` on a free port of 127.0.0.1 (no RDB, no AOF, files in a temp dir) and wait
    /// until it answers PING (at most 10 s). Errors are environment problems: the caller
    /// skips the scenario.
    pub(crate) async fn start(bin: &Path, log: PathBuf) -> Result<Self, String> {
        Self::start_within(bin, log, Duration::from_secs(10)).await
    }

    async fn start_within(bin: &Path, log: PathBuf, limit: Duration) -> Result<Self, String> {
        let version = version_of(bin).await;
        let port = free_port()?;
        // One folder per server: servers started at once in one process (the tests do) must not share one.
        let dir =
            std::env::temp_dir().join(format!("grip-bench-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let log_file = std::fs::File::create(&log).map_err(|e| format!("create log: {e}"))?;
        let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .arg("--port")
            .arg(port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let mut r = Redis {
            port,
            version,
            log,
            child: Some(child),
            dir,
        };
        r.wait_ping(limit).await?;
        Ok(r)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn wait_ping(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "redis-server exited ({status}) during start-up; see {}",
                    self.log.display()
                ));
            }
            if tokio::time::timeout(Duration::from_secs(1), ping(self.port))
                .await
                .is_ok_and(|ok| ok)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not answer PING on port {} within {limit:?}; see {}",
                    self.port,
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL; remove the temp dir.
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal_pid(child.id(), false);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !matches!(child.try_wait(), Ok(Some(_))) {
            signal_pid(child.id(), true);
        }
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True if 127.0.0.1:port answers an inline `PING` with `+PONG`.
async fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 7 {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => n += k,
        }
    }
    buf.starts_with(b"+PONG\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, body: &str) -> PathBuf {
        std::fs::create_dir_all(dir).unwrap();
        let p = dir.join("redis-server");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("grip-bench-test-{name}-{}", std::process::id()))
    }

    #[tokio::test]
    async fn exiting_server_is_an_error() {
        let dir = tmp("exit");
        let bin = script(&dir, "exit 3");
        let e = Redis::start_within(&bin, dir.join("log"), Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(e.contains("exited"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn silent_server_times_out_and_is_stopped() {
        let dir = tmp("silent");
        let bin = script(
            &dir,
            r#"case "$1" in --version) echo "Redis server v=9.9.9";; *) exec sleep 30;; esac"#,
        );
        assert_eq!(version_of(&bin).await, "9.9.9");
        let started = Instant::now();
        let e = Redis::start_within(&bin, dir.join("log"), Duration::from_millis(300))
            .await
            .err()
            .unwrap();
        assert!(e.contains("did not answer PING"), "{e}");
        // Dropped on the error path: stopped by pid, well before the sleep would end.
        assert!(started.elapsed() < Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn real_server_answers_and_stops() {
        let Some(bin) = find_on_path() else {
            eprintln!("redis-server not on PATH: skipped");
            return;
        };
        let dir = tmp("real");
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis::start(&bin, dir.join("log")).await.unwrap();
        assert!(ping(r.port).await);
        assert!(r.url().starts_with("redis://127.0.0.1:"));
        let (pid, port) = (r.pid(), r.port);
        r.stop();
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(!ping(port).await);
        let _ = std::fs::remove_dir_all(dir);
    }
}
