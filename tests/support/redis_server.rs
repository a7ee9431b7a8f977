//! A real `redis-server` for the bus tests: started on a free 127.0.0.1 port with its own temporary directory,
//! ready once it answers PING, killed by process id (SIGKILL, as a crash) on drop, and restartable on the same
//! port mid-test. Also the bus side of the in-process proxy handle: waiting on its status.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use grip_proxy::BusStatus as Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{free_port, within, Proxy, LIMIT};

const BINARY: &str = "redis-server";

/// The running Redis, or return from the test after saying loudly that it was skipped (named by its test file and
/// `$test`).
#[allow(unused_macros)] // only the Redis bus tests use it
macro_rules! redis_or_skip {
    ($test:literal) => {
        match $crate::support::redis_server::RedisServer::start_or_skip(concat!(
            module_path!(),
            "::",
            $test
        ))
        .await
        {
            Some(redis) => redis,
            None => return,
        }
    };
}
#[allow(unused_imports)] // only the Redis bus tests use it
pub(crate) use redis_or_skip;

/// A `redis-server` process this test started.
pub(crate) struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Every write appended to a file and synced before it is answered (`appendfsync always`): a restart on
    /// the same directory has all the data that was acknowledged.
    persistent: bool,
}

impl RedisServer {
    /// Whether `redis-server` is on PATH.
    pub(crate) fn available() -> bool {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(BINARY).is_file()))
    }

    /// Starts a server, or returns `None` after saying loudly on stderr that `test` is skipped because there is
    /// no `redis-server`. Under CI (`CI` set) a missing server fails the test instead: CI must run these.
    pub(crate) async fn start_or_skip(test: &str) -> Option<RedisServer> {
        if !Self::available() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: `{BINARY}` is not on PATH, and CI must run the Redis bus tests (.ci/run installs it)"
            );
            // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED {test}: `{BINARY}` is not on PATH. Install the Debian package redis-server \
                 (apt-get install redis-server) to run the Redis bus tests. ***\n"
            );
            return None;
        }
        Some(Self::start().await)
    }

    /// As `start_or_skip`, with persistence on: a kill and restart keeps what Redis acknowledged.
    pub(crate) async fn persistent_or_skip(test: &str) -> Option<RedisServer> {
        let mut server = Self::start_or_skip(test).await?;
        server.persistent = true;
        server.restart().await;
        Some(server)
    }

    /// Starts a server on a free port (another port is tried if that one is taken meanwhile).
    pub(crate) async fn start() -> RedisServer {
        let mut last_error = String::new();
        for _ in 0..5 {
            match Self::start_on(free_port()).await {
                Ok(server) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// Starts a server on `port`.
    pub(crate) async fn start_on(port: u16) -> Result<RedisServer, String> {
        static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "grip-proxy-redis-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut server = RedisServer {
            port,
            dir,
            child: None,
            persistent: false,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// `redis://127.0.0.1:<port>/0`
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL by pid: Redis gets no chance to say goodbye) and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP by pid): its connections stay open but nothing is answered, as when a host
    /// vanishes from the network. `resume` undoes it.
    pub(crate) fn pause(&self) {
        self.signal("-STOP");
    }

    /// Undoes `pause` (SIGCONT).
    pub(crate) fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = Command::new("kill")
            .args([which, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {which} {pid}: {status}");
    }

    /// Starts the server again on the same port.
    pub(crate) async fn restart(&mut self) {
        self.kill();
        self.spawn()
            .await
            .unwrap_or_else(|e| panic!("redis-server did not restart: {e}"));
    }

    /// PUBLISHes `payload` on `channel` straight into Redis, as a publisher without grip-proxy would; returns
    /// how many subscribers got it.
    pub(crate) async fn publish(&self, channel: &str, payload: &str) -> i64 {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = within(LIMIT, client.get_multiplexed_async_connection())
            .await
            .unwrap();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(payload);
        within(LIMIT, cmd.query_async::<i64>(&mut conn))
            .await
            .unwrap()
    }

    /// Sends one command straight to Redis on a connection of its own, and returns the reply.
    pub(crate) async fn command(&self, args: &[&str]) -> redis::Value {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = within(LIMIT, client.get_multiplexed_async_connection())
            .await
            .unwrap();
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        within(LIMIT, cmd.query_async::<redis::Value>(&mut conn))
            .await
            .unwrap()
    }

    async fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.join("redis.log")).map_err(|e| e.to_string())?;
        let child = Command::new(BINARY)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--daemonize", "no"])
            .args(if self.persistent {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "no"]
            })
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {BINARY}: {e}"))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Polls PING every 10 ms, for at most `LIMIT`: redis-server has no readiness signal to await. Fails early
    /// if the process exits (e.g. its port was taken).
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("exited with {status}: {}", self.log_tail()));
            }
            if ping(self.port).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("no PONG within {LIMIT:?}: {}", self.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server would not die of SIGKILL until continued on some systems; continue it first.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
        remove_dir(&self.dir);
    }
}

fn remove_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Whether a Redis answers PING on this port now.
async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).await.ok()?;
        Some(buf[..n].starts_with(b"+PONG"))
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

// === the proxy's bus ===

impl Proxy {
    /// The bus status now.
    pub(crate) fn bus_status(&self) -> Status {
        *self.app().bus_status().borrow()
    }

    /// Waits (within `LIMIT`) until the bus is connected (or not).
    #[track_caller]
    pub(crate) fn wait_bus(&self, connected: bool) -> impl Future<Output = ()> + Send + 'static {
        self.wait_status(move |s| s.connected == connected)
    }

    /// Waits (within `LIMIT`) until the bus has received at least `n` messages from Redis.
    #[track_caller]
    pub(crate) fn wait_received(&self, n: u64) -> impl Future<Output = ()> + Send + 'static {
        self.wait_status(move |s| s.received >= n)
    }

    /// Waits (within `LIMIT`) until the bus status satisfies `pred`.
    #[track_caller]
    pub(crate) fn wait_status(
        &self,
        pred: impl Fn(&Status) -> bool + Send + Sync + 'static,
    ) -> impl Future<Output = ()> + Send + 'static {
        let mut status = self.app().bus_status();
        within(LIMIT, async move {
            status
                .wait_for(|s| pred(s))
                .await
                .expect("the bus status outlives the proxy");
        })
    }
}

/// Requests an origin received, per path.
pub(crate) type Seen = std::sync::Arc<parking_lot::Mutex<std::collections::HashMap<String, usize>>>;

/// An origin that holds the first request of each path on channel `c`, and answers later ones with
/// `fresh <path>`; it records how many requests each path got (a re-fetch after the bus recovers is the second).
pub(crate) fn first_holds_then_fresh() -> (
    Seen,
    impl Fn(&super::Recorded) -> super::Reply + Send + Sync + 'static,
) {
    let seen = Seen::default();
    let counts = seen.clone();
    let handler = move |req: &super::Recorded| {
        let mut seen = counts.lock();
        let n = seen.entry(req.path().to_owned()).or_default();
        *n += 1;
        if *n == 1 {
            super::Reply::hold("c")
        } else {
            super::Reply::text(&format!("fresh {}", req.path()))
        }
    };
    (seen, handler)
}
