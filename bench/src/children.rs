//! Child processes of the orchestrator: re-executed `origin`/`worker` subcommands with a line
//! protocol on stdin/stdout, and a registry that stops every child by pid when dropped.

use crate::sys::signal_pid;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

pub(crate) type Result<T> = std::result::Result<T, String>;

/// A re-executed copy of this binary speaking the line protocol.
pub(crate) struct LineChild {
    pub name: String,
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl LineChild {
    /// Start `grip-bench ARGS...` (stderr goes to `stderr_path`).
    pub(crate) fn spawn(
        name: &str,
        args: &[String],
        stderr_path: &std::path::Path,
    ) -> Result<Self> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let err = std::fs::File::create(stderr_path)
            .map_err(|e| format!("create {}: {e}", stderr_path.display()))?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {name}: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        Ok(Self {
            name: name.to_string(),
            child,
            stdin,
            stdout,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub(crate) async fn send(&mut self, line: &str) -> Result<()> {
        let msg = format!("{line}\n");
        self.stdin
            .write_all(msg.as_bytes())
            .await
            .map_err(|e| format!("{}: write command: {e}", self.name))?;
        self.stdin
            .flush()
            .await
            .map_err(|e| format!("{}: flush: {e}", self.name))
    }

    /// Next reply line, within `limit`.
    pub(crate) async fn recv(&mut self, limit: Duration) -> Result<String> {
        match tokio::time::timeout(limit, self.stdout.next_line()).await {
            Ok(Ok(Some(l))) if l.starts_with("error ") => Err(format!("{}: {l}", self.name)),
            Ok(Ok(Some(l))) => Ok(l),
            Ok(Ok(None)) => Err(format!("{} exited unexpectedly", self.name)),
            Ok(Err(e)) => Err(format!("{}: read reply: {e}", self.name)),
            Err(_) => Err(format!("{}: no reply within {limit:?}", self.name)),
        }
    }

    /// Stop the child: close stdin (it exits by itself), then SIGTERM/SIGKILL by pid.
    pub(crate) async fn stop(mut self) {
        let pid = self.pid();
        let _ = self.stdin.shutdown().await;
        drop(self.stdin);
        if tokio::time::timeout(Duration::from_secs(2), self.child.wait())
            .await
            .is_err()
        {
            signal_pid(pid, false);
            if tokio::time::timeout(Duration::from_secs(2), self.child.wait())
                .await
                .is_err()
            {
                signal_pid(pid, true);
                let _ = self.child.wait().await;
            }
        }
    }
}

/// Send a command to every worker, then gather one reply from each (they work in parallel).
pub(crate) async fn broadcast(
    workers: &mut [LineChild],
    cmds: &[String],
    limit: Duration,
) -> Result<Vec<String>> {
    for (w, c) in workers.iter_mut().zip(cmds) {
        w.send(c).await?;
    }
    let mut replies = Vec::new();
    for w in workers.iter_mut().take(cmds.len()) {
        replies.push(w.recv(limit).await?);
    }
    Ok(replies)
}
