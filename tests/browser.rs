//! The example page (examples/value_origin/live.html) in a real browser, through the proxy: headless Chromium
//! opens it, and an update published after it loaded shows in both panes, the `EventSource` one (a stream hold)
//! and the long-poll one (a response hold); then the same for a change made with the page's own form.
//!
//! Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON messages ending in a
//! NUL byte, written to its fd 3 and read from its fd 4), so the test waits on what the page shows rather than
//! on time. It needs `chromium` (Debian package `chromium`) on the PATH, or `GRIP_PROXY_CHROMIUM`; without it the
//! test says loudly that it was skipped, except under CI (`CI` set), where it fails.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

#[path = "../examples/value_origin/mod.rs"]
mod value_origin;

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The bound on one browser step (start, load, an update showing): generous, a browser on a loaded 2-core
/// machine is slow to start, and a failure still ends the test in bounded time.
const BROWSER_LIMIT: Duration = Duration::from_secs(30);

/// The Chromium binary, or `None` after saying loudly on stderr that the test is skipped (a failure under CI).
fn chromium_or_skip(test: &str) -> Option<PathBuf> {
    let found = match std::env::var_os("GRIP_PROXY_CHROMIUM") {
        Some(path) => Some(PathBuf::from(path)).filter(|p| p.is_file()),
        None => std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("chromium"))
                .find(|p| p.is_file())
        }),
    };
    if found.is_some() {
        return found;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: no `chromium` on the PATH (GRIP_PROXY_CHROMIUM), and CI must run the browser test \
         (.ci/run and scripts/test install the Debian package chromium)"
    );
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED browser::{test}: no `chromium` on the PATH. Install it (`apt-get install chromium`) or set \
         GRIP_PROXY_CHROMIUM ***\n"
    );
    None
}

/// Whether this process runs as root (its real uid, from /proc: no command needed).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().next())
            == Some("0")
    })
}

/// Headless Chromium, spoken to over the DevTools protocol on a pipe. Dropping it kills the browser's process
/// group (the browser is its leader, so the group id is its process id) and removes its profile directory.
struct Browser {
    child: Child,
    pid: u32,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
    next_id: u64,
    /// Events read while waiting for a reply, oldest first.
    events: VecDeque<Value>,
    profile: PathBuf,
}

impl Browser {
    async fn launch(binary: &Path) -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "grip-proxy-browser-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let log = std::fs::File::create(profile.join("chromium.log")).unwrap();
        let mut args = vec![
            "--headless".to_owned(),
            "--remote-debugging-pipe".to_owned(),
            format!("--user-data-dir={}", profile.join("data").display()),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--no-proxy-server".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
        ];
        if running_as_root() {
            args.push("--no-sandbox".to_owned()); // Chromium refuses to start its sandbox as root
        }
        args.push("about:blank".to_owned());
        // The pipe is fds 3 (commands in) and 4 (replies and events out): a shell maps our stdin and stdout onto
        // them, then `exec`s the browser, which keeps the shell's process id.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(binary)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let to = child.stdin.take().unwrap();
        let from = BufReader::new(child.stdout.take().unwrap());
        Browser {
            child,
            pid,
            to,
            from,
            next_id: 0,
            events: VecDeque::new(),
            profile,
        }
    }

    /// The next message from the browser.
    async fn read(&mut self) -> Value {
        let mut buf = Vec::new();
        let n = self.from.read_until(0, &mut buf).await.unwrap();
        assert!(
            n > 0 && buf.last() == Some(&0),
            "the browser closed its DevTools pipe"
        );
        buf.pop();
        serde_json::from_slice(&buf).unwrap()
    }

    /// Sends a DevTools command (to a page's `session`, or to the browser) and returns its result. Events read
    /// meanwhile are kept for `event`. Unbounded: see `call`.
    async fn command(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        let mut bytes = command.to_string().into_bytes();
        bytes.push(0);
        self.to.write_all(&bytes).await.unwrap();
        self.to.flush().await.unwrap();
        loop {
            let mut message = self.read().await;
            if message["id"] == json!(id) {
                if let Some(error) = message.get("error") {
                    panic!("DevTools {method}: {error}");
                }
                return message["result"].take();
            }
            self.events.push_back(message);
        }
    }

    /// `command`, within `BROWSER_LIMIT`.
    #[track_caller]
    fn call<'a>(
        &'a mut self,
        session: Option<&'a str>,
        method: &'a str,
        params: Value,
    ) -> impl std::future::Future<Output = Value> + 'a {
        within(BROWSER_LIMIT, self.command(session, method, params))
    }

    /// Waits for the next event `method` on `session`, within `BROWSER_LIMIT`.
    #[track_caller]
    fn event<'a>(
        &'a mut self,
        session: &'a str,
        method: &'a str,
    ) -> impl std::future::Future<Output = Value> + 'a {
        within(BROWSER_LIMIT, async move {
            let matches =
                |m: &Value| m["method"] == json!(method) && m["sessionId"] == json!(session);
            if let Some(i) = self.events.iter().position(matches) {
                return self.events.remove(i).unwrap();
            }
            loop {
                let message = self.read().await;
                if matches(&message) {
                    return message;
                }
                self.events.push_back(message);
            }
        })
    }

    /// Opens a tab on `url` and waits for its load event; returns the tab's session.
    async fn open(&mut self, url: &str) -> String {
        let target = self
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        self.call(Some(&session), "Page.enable", json!({})).await;
        let nav = self
            .call(Some(&session), "Page.navigate", json!({"url": url}))
            .await;
        assert!(nav.get("errorText").is_none(), "navigating to {url}: {nav}");
        self.event(&session, "Page.loadEventFired").await;
        session
    }

    /// Evaluates `expression` in the tab (awaiting it if it is a promise) and returns its value, within
    /// `BROWSER_LIMIT`.
    async fn eval(&mut self, session: &str, expression: &str) -> Value {
        within(BROWSER_LIMIT, self.eval_unbounded(session, expression)).await
    }

    async fn eval_unbounded(&mut self, session: &str, expression: &str) -> Value {
        let mut out = self
            .command(
                Some(session),
                "Runtime.evaluate",
                json!({"expression": expression, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(
            out.get("exceptionDetails").is_none(),
            "{expression}: {}",
            out["exceptionDetails"]
        );
        out["result"]["value"].take()
    }

    /// Waits until both panes of the page show `version` with `text`: a promise in the page resolves when its
    /// DOM does (a MutationObserver), so nothing polls. On timeout, fails with what the panes show.
    async fn wait_shown(&mut self, session: &str, version: u64, text: &str) {
        let expression = format!(
            r#"new Promise((resolve) => {{
                const shown = () => ["stream", "poll"].every((pane) =>
                    document.querySelector(`#${{pane}} li[data-version="{version}"]`)?.textContent === {text});
                if (shown()) return resolve(true);
                new MutationObserver((_, observer) => {{
                    if (shown()) {{ observer.disconnect(); resolve(true); }}
                }}).observe(document.body, {{ childList: true, subtree: true, characterData: true }});
            }})"#,
            text = json!(text),
        );
        let shown =
            tokio::time::timeout(BROWSER_LIMIT, self.eval_unbounded(session, &expression)).await;
        if shown.is_err() {
            // The timed-out evaluation's reply may still come; `call` matches replies by id.
            let panes = self
                .eval(session, "document.querySelector('main').innerText")
                .await;
            let panes = panes.as_str().unwrap_or_default();
            panic!(
                "version {version} ({text:?}) not shown in both panes; the page shows:\n{panes}"
            );
        }
    }

    /// Closes the browser and waits for it to exit (the guard kills it if it does not).
    async fn close(mut self) {
        // The browser may exit before it replies.
        let _ = tokio::time::timeout(LIMIT, async {
            self.next_id += 1;
            let command = json!({"id": self.next_id, "method": "Browser.close"});
            let mut bytes = command.to_string().into_bytes();
            bytes.push(0);
            let _ = self.to.write_all(&bytes).await;
            let _ = self.to.flush().await;
            let _ = self.child.wait().await;
        })
        .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.profile.join("chromium.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            let _ = writeln!(
                std::io::stderr(),
                "chromium's stderr, last lines:\n{}",
                tail.join("\n")
            );
        }
        // The whole process group: the browser and the renderer, GPU and utility processes it started.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pid)])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Aborts the example origin when the test ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_each_update_over_sse_and_by_long_polling() {
    let Some(chromium) =
        chromium_or_skip("the_live_page_shows_each_update_over_sse_and_by_long_polling")
    else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy::start(listener.local_addr().unwrap()).await;
    let control = format!("http://{}/publish/", proxy.control_addr());
    let _origin = AbortOnDrop(tokio::spawn(value_origin::serve(listener, control)));

    let mut browser = Browser::launch(&chromium).await;
    let page = browser
        .open(&format!("http://{}/live.html", proxy.addr()))
        .await;
    browser.wait_shown(&page, 1, "first value").await;
    // The page's EventSource is a stream on channel `value`, and its long-poll is held there with version 1.
    proxy.wait_held(2).await;
    assert_eq!(proxy.registry().streams_on("value"), 1);

    // A change made elsewhere, after the page loaded: the origin publishes one item with both formats.
    let post = proxy
        .send(
            request("POST", "/value")
                .body(full("published after the page loaded"))
                .unwrap(),
        )
        .await;
    assert_eq!(post.status, 200, "{}", post.text());
    browser
        .wait_shown(&page, 2, "published after the page loaded")
        .await;

    // A change made with the page's own form.
    proxy.wait_held(2).await; // the long-poll, held again with version 2
    browser
        .eval(
            &page,
            r#"document.querySelector('#change input').value = "from the page's form";
               document.querySelector('#change button').click();"#,
        )
        .await;
    browser.wait_shown(&page, 3, "from the page's form").await;
    let panes = browser
        .eval(&page, "document.querySelector('main').innerText")
        .await;
    let panes = panes.as_str().unwrap();
    assert_eq!(
        panes.matches("from the page's form").count(),
        2,
        "each update once per pane:\n{panes}"
    );
    browser.close().await;
}
