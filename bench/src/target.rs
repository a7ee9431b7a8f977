//! The proxy under test: starting grip-proxy or a private, loopback-only Pushpin, nginx or
//! nginx with Nchan, probing readiness, measuring its process tree, and stopping it by pid.

pub(crate) mod nginx;

use crate::children::Result;
use crate::http::{get_request, post_request, publish_body, simple_request};
use crate::procfs::process_tree;
use crate::sys::signal_pid;
use crate::tls::Certs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// Which proxy is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Kind {
    GripProxy,
    Pushpin,
    /// Debian's nginx as a plain keep-alive reverse proxy (pass-through only).
    Nginx,
    /// Debian's nginx with the Nchan module: long-poll `/sub/<channel>`, publish `/pub/<channel>`.
    Nchan,
}

impl Kind {
    /// True for the GRIP proxies (holds and publishes go through the origin and `/publish/`).
    pub(crate) fn is_grip(self) -> bool {
        matches!(self, Kind::GripProxy | Kind::Pushpin)
    }

    /// Its name in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::GripProxy => "grip-proxy",
            Kind::Pushpin => "Pushpin",
            Kind::Nginx => "nginx",
            Kind::Nchan => "Nchan",
        }
    }

    /// The Debian package a peer comes from (None: grip-proxy, built from this workspace).
    pub(crate) fn package(self) -> Option<&'static str> {
        match self {
            Kind::GripProxy => None,
            Kind::Pushpin => Some("pushpin"),
            Kind::Nginx => Some("nginx"),
            Kind::Nchan => Some("libnginx-mod-nchan"),
        }
    }

    /// Why this target cannot be started from `bin` on this machine (None: everything it needs
    /// is installed).
    pub(crate) fn missing(self, bin: &Path) -> Option<String> {
        let hint = match self {
            Kind::GripProxy => "build it with `cargo build --release`",
            Kind::Pushpin => "apt-get install -y pushpin",
            Kind::Nginx => "apt-get install -y nginx",
            Kind::Nchan => "apt-get install -y nginx libnginx-mod-nchan",
        };
        let needs: Vec<PathBuf> = match self {
            Kind::GripProxy | Kind::Nginx => vec![bin.into()],
            Kind::Pushpin => vec![bin.into(), PUSHPIN_INTERNAL_CONF.into()],
            Kind::Nchan => match nginx::nchan_module() {
                Some(m) => vec![bin.into(), m.into()],
                None => return Some(format!("the Nchan module was not found ({hint})")),
            },
        };
        needs
            .iter()
            .find(|p| !p.exists())
            .map(|p| format!("{} not found ({hint})", p.display()))
    }

    /// Default binary of this target (grip-proxy: `release/grip-proxy` under `CARGO_TARGET_DIR`
    /// if set, else under the workspace's `target`).
    pub(crate) fn default_bin(self, root: &Path) -> PathBuf {
        match self {
            Kind::GripProxy => std::env::var_os("CARGO_TARGET_DIR")
                .filter(|d| !d.is_empty())
                .map_or_else(|| root.join("target"), PathBuf::from)
                .join("release/grip-proxy"),
            Kind::Pushpin => PathBuf::from("/usr/bin/pushpin"),
            Kind::Nginx | Kind::Nchan => PathBuf::from("/usr/sbin/nginx"),
        }
    }
}

/// A running proxy.
pub(crate) struct Target {
    pub kind: Kind,
    pub listen: SocketAddr,
    pub control: SocketAddr,
    /// The HTTPS listener, if started with one (grip-proxy's `[tls]`, nginx's `listen ... ssl`).
    pub tls_listen: Option<SocketAddr>,
    /// What a TLS handshake with it negotiated (version, suite, group, ALPN), read once at start.
    pub tls_session: Option<String>,
    pub log: PathBuf,
    child: Option<Child>,
    tmpdir: Option<PathBuf>,
}

/// A port that was free a moment ago on 127.0.0.1.
pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl Target {
    /// Start the proxy in front of the origin on `origin_port` and wait until it proxies.
    pub(crate) async fn start(
        kind: Kind,
        bin: &Path,
        origin_port: u16,
        out_dir: &Path,
    ) -> Result<Self> {
        let log = out_dir.join(match kind {
            Kind::GripProxy => "grip-proxy.log",
            Kind::Pushpin => "pushpin.log",
            Kind::Nginx => "nginx.log",
            Kind::Nchan => "nchan.log",
        });
        Self::start_with(kind, bin, origin_port, log, None, None, None).await
    }

    /// Start grip-proxy or nginx with an HTTPS listener besides the plain one, serving the run's
    /// certificate (`certs`), logging to `log`, and wait until both listeners answer `GET /plain`
    /// (grip-proxy: and its publishes are accepted).
    pub(crate) async fn start_tls(
        kind: Kind,
        bin: &Path,
        origin_port: u16,
        log: PathBuf,
        certs: &Certs,
    ) -> Result<Self> {
        let mut t = Self::start_with(kind, bin, origin_port, log, None, Some(certs), None).await?;
        if kind == Kind::GripProxy {
            t.wait_publish_ready(Duration::from_secs(30)).await?;
        }
        Ok(t)
    }

    /// Start a grip-proxy on the publish bus at `bus_url` (`redis://...`; None: the memory
    /// bus), logging to `log`, and wait until it proxies and its publishes are accepted (on the
    /// Redis bus: once it has subscribed).
    pub(crate) async fn start_instance(
        bin: &Path,
        origin_port: u16,
        log: PathBuf,
        bus_url: Option<&str>,
    ) -> Result<Self> {
        let mut t =
            Self::start_with(Kind::GripProxy, bin, origin_port, log, bus_url, None, None).await?;
        t.wait_publish_ready(Duration::from_secs(30)).await?;
        Ok(t)
    }

    /// A grip-proxy instance like [`Target::start_instance`], with these config file settings
    /// (written next to its log): the memory bus unless they have a `[bus]` section.
    pub(crate) async fn start_instance_with(
        bin: &Path,
        origin_port: u16,
        log: PathBuf,
        toml: &str,
    ) -> Result<Self> {
        let conf = log.with_extension("toml");
        std::fs::write(&conf, toml).map_err(|e| format!("write {}: {e}", conf.display()))?;
        let mut t = Self::start_with(
            Kind::GripProxy,
            bin,
            origin_port,
            log,
            None,
            None,
            Some(&conf),
        )
        .await?;
        t.wait_publish_ready(Duration::from_secs(30)).await?;
        Ok(t)
    }

    async fn start_with(
        kind: Kind,
        bin: &Path,
        origin_port: u16,
        log: PathBuf,
        bus_url: Option<&str>,
        tls: Option<&Certs>,
        config: Option<&Path>,
    ) -> Result<Self> {
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let mut control: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        while control == listen {
            control = ([127, 0, 0, 1], free_port()?).into();
        }
        let mut tls_listen: Option<SocketAddr> = None;
        if tls.is_some() {
            let mut a: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
            while a == listen || a == control {
                a = ([127, 0, 0, 1], free_port()?).into();
            }
            tls_listen = Some(a);
        }
        if !kind.is_grip() {
            // nginx has no control port: Nchan publishes on the same listener.
            control = listen;
        }
        let log_file = std::fs::File::create(&log).map_err(|e| format!("create log: {e}"))?;
        let log_err = log_file.try_clone().map_err(|e| e.to_string())?;
        let (mut cmd, tmpdir) = match kind {
            Kind::GripProxy => {
                if !bin.exists() {
                    return Err(format!(
                        "proxy binary {} not found: build it with `cargo build --release`",
                        bin.display()
                    ));
                }
                let mut c = Command::new(bin);
                c.arg("--origin")
                    .arg(format!("http://127.0.0.1:{origin_port}"))
                    .arg("--listen")
                    .arg(listen.to_string())
                    .arg("--control-listen")
                    .arg(control.to_string())
                    .env("RUST_LOG", "warn");
                if let Some(url) = bus_url {
                    c.arg("--bus").arg(url);
                }
                if let Some(conf) = config {
                    c.arg("--config").arg(conf);
                }
                if let (Some(certs), Some(a)) = (tls, tls_listen) {
                    let stem = log
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .unwrap_or("grip-proxy");
                    let conf = write_grip_tls_config(certs, a, stem)?;
                    c.arg("--config").arg(conf);
                }
                (c, None)
            }
            Kind::Pushpin => {
                let dir =
                    std::env::temp_dir().join(format!("grip-bench-pushpin-{}", std::process::id()));
                let conf = write_pushpin_config(&dir, listen, control, origin_port)?;
                let mut c = Command::new(bin);
                c.arg("--config").arg(conf);
                (c, Some(dir))
            }
            Kind::Nginx | Kind::Nchan => {
                let dir =
                    std::env::temp_dir().join(format!("grip-bench-nginx-{}", std::process::id()));
                let tls = tls.zip(tls_listen);
                let conf =
                    nginx::write_config(&dir, listen, origin_port, kind == Kind::Nchan, tls)?;
                let mut c = Command::new(bin);
                c.arg("-c")
                    .arg(conf)
                    .arg("-p")
                    .arg(&dir)
                    .arg("-e")
                    .arg(dir.join("error.log"));
                (c, Some(dir))
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .process_group(0);
        let child = cmd.spawn().map_err(|e| {
            if let Some(dir) = &tmpdir {
                let _ = std::fs::remove_dir_all(dir);
            }
            let hint = match kind {
                Kind::Nginx => " (apt-get install -y nginx)",
                Kind::Nchan => " (apt-get install -y nginx libnginx-mod-nchan)",
                _ => "",
            };
            format!("start {}: {e}{hint}", bin.display())
        })?;
        let mut t = Target {
            kind,
            listen,
            control,
            tls_listen,
            tls_session: None,
            log,
            child: Some(child),
            tmpdir,
        };
        t.wait_ready().await?;
        if let Some(certs) = tls {
            t.wait_tls_ready(certs).await?;
        }
        Ok(t)
    }

    /// A request publishing `body` (a GRIP publish body) to `channel` on the control port
    /// `control`: `POST /publish/` for the GRIP proxies, `POST /pub/<channel>` with the
    /// published body for Nchan.
    pub(crate) fn publish_request(
        &self,
        control: SocketAddr,
        channel: &str,
        body: &[u8],
    ) -> Vec<u8> {
        match self.kind {
            Kind::Nchan => nginx::publish_request(&control.to_string(), channel),
            _ => post_request(&control.to_string(), "/publish/", body),
        }
    }

    /// Whether a publish answer's status means accepted (Nchan: 201 with subscribers, 202
    /// without).
    pub(crate) fn publish_accepted(&self, status: u16) -> bool {
        match self.kind {
            Kind::Nchan => (200..300).contains(&status),
            _ => status == 200,
        }
    }

    /// A request for the held-client count of `channel`, if the target may answer one
    /// (`GET /channels/<name>` on the control port). None for nginx and Nchan: Nchan's channel
    /// info counts only part of the subscribers held by a worker that does not own the channel.
    pub(crate) fn channel_info_request(&self, channel: &str) -> Option<Vec<u8>> {
        let host = self.control.to_string();
        self.kind
            .is_grip()
            .then(|| get_request(&host, &format!("/channels/{channel}")))
    }

    /// Path segment of held clients when it is not the origin's `hold` (Nchan: `sub`).
    pub(crate) fn hold_route(&self) -> Option<&'static str> {
        (self.kind == Kind::Nchan).then_some("sub")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let req = get_request(&self.listen.to_string(), "/plain");
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "proxy exited ({status}) during start-up; see {}",
                    self.log.display()
                ));
            }
            let ok = tokio::time::timeout(
                Duration::from_secs(2),
                simple_request(&self.listen.to_string(), &req),
            )
            .await
            .is_ok_and(|r| matches!(r, Ok((200, _))));
            let ctl = tokio::net::TcpStream::connect(self.control).await.is_ok();
            if ok && ctl {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "proxy did not start proxying GET /plain within 30 s; see {}",
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until the HTTPS listener answers `GET /plain` 200 (a new TLS connection trusting the
    /// run's CA), and keep what the handshake negotiated.
    async fn wait_tls_ready(&mut self, certs: &Certs) -> Result<()> {
        let Some(addr) = self.tls_listen else {
            return Ok(());
        };
        let connector = crate::tls::connector(&certs.ca)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "proxy exited ({status}) during start-up; see {}",
                    self.log.display()
                ));
            }
            let last = match crate::tls::probe(addr, &connector).await {
                Ok((200, session)) => {
                    self.tls_session = Some(session);
                    return Ok(());
                }
                Ok((status, _)) => format!("answered {status}"),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "HTTPS listener {addr} did not answer GET /plain within 30 s (last: {last}); see {}",
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until `POST /publish/` (one item on a channel nobody holds) is answered 200: a
    /// proxy on the Redis bus answers 503 until it has subscribed.
    async fn wait_publish_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let addr = self.control.to_string();
        let req = post_request(&addr, "/publish/", &publish_body(&["bench-bus-ready"]));
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "proxy exited ({status}) while joining the bus; see {}",
                    self.log.display()
                ));
            }
            let last =
                match tokio::time::timeout(Duration::from_secs(2), simple_request(&addr, &req))
                    .await
                {
                    Ok(Ok((200, _))) => return Ok(()),
                    Ok(Ok((status, body))) => format!("{status} {}", body.trim()),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer within 2 s".into(),
                };
            if Instant::now() > deadline {
                return Err(format!(
                    "proxy on the bus did not accept a publish within {limit:?} (last answer: {last:.200}); see {}",
                    self.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Processes making up the proxy (Pushpin runs several).
    pub(crate) fn processes(&self) -> Vec<u32> {
        process_tree(self.pid())
    }

    /// Stop the whole process tree: SIGTERM, wait up to 5 s, then SIGKILL what is left.
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let tree = process_tree(child.id());
        signal_pid(child.id(), false);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let root_done = matches!(child.try_wait(), Ok(Some(_)));
            if root_done && tree.iter().skip(1).all(|&p| !alive(p)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for &p in tree.iter().rev() {
            if alive(p) {
                signal_pid(p, true);
            }
        }
        let _ = child.wait();
        if let Some(dir) = self.tmpdir.take() {
            // nginx writes its error log into its temp dir: keep it next to the other logs
            // (`nginx.log` -> `nginx-error.log`, `nchan.log` -> `nchan-error.log`).
            let err = dir.join("error.log");
            if err.exists() {
                let stem = self
                    .log
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("nginx");
                let _ = std::fs::copy(&err, self.log.with_file_name(format!("{stem}-error.log")));
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True if the process exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s.get(i + 2..i + 3))
            .is_some_and(|st| st != "Z"),
        Err(_) => false,
    }
}

/// Write grip-proxy's config file for an instance with an HTTPS listener (`[tls]` on `listen`, the
/// run's certificate chain and key as `file:` secrets) next to the certificates; the other
/// settings stay on the command line. Returns its path.
fn write_grip_tls_config(certs: &Certs, listen: SocketAddr, stem: &str) -> Result<PathBuf> {
    let conf = format!(
        "[tls]\nlisten = \"{listen}\"\ncert = \"file:{}\"\nkey = \"file:{}\"\n",
        certs.cert.display(),
        certs.key.display()
    );
    let path = certs.dir.join(format!("{stem}.toml"));
    std::fs::write(&path, conf).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// The packaged internal config of Pushpin, included by the private one.
const PUSHPIN_INTERNAL_CONF: &str = "/usr/lib/pushpin/internal.conf";

/// Write a private Pushpin config (every listener on 127.0.0.1, zmq over ipc in `dir`).
/// `message_rate`/`message_hwm` are left unset (unlimited): the packaged 2,500 deliveries/s
/// throttle would cap fan-out and sustained figures at that rate instead of measuring capacity.
fn write_pushpin_config(
    dir: &Path,
    listen: SocketAddr,
    control: SocketAddr,
    origin_port: u16,
) -> Result<PathBuf> {
    let run = dir.join("run");
    let logdir = dir.join("log");
    for d in [&run, &logdir] {
        std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    let internal_src = std::fs::read_to_string(PUSHPIN_INTERNAL_CONF)
        .map_err(|e| format!("read {PUSHPIN_INTERNAL_CONF} (is pushpin installed?): {e}"))?;
    // The packaged internal.conf expects a system zurl; run our own zurl inside rundir.
    let internal = internal_src.replace(
        "ipc:///var/run/zurl/zurl-",
        "ipc://{rundir}/{ipc_prefix}zurl-",
    );
    let internal_path = dir.join("internal.conf");
    let routes_path = dir.join("routes");
    let conf_path = dir.join("pushpin.conf");
    let ipc = |name: &str| format!("ipc://{}/gbp-{name}", run.display());
    let conf = format!(
        "[global]
include={internal}
rundir={run}
ipc_prefix=gbp-
port_offset=0
stats_connection_ttl=120

[runner]
services=condure,zurl,pushpin-proxy,pushpin-handler
http_port={listen}
logdir={logdir}
log_level=1
client_buffer_size=8192
client_maxconn=50000
condure_bin=condure
mongrel2_bin=mongrel2
m2sh_bin=m2sh
zurl_bin=zurl

[proxy]
routesfile={routes}
debug=false
auto_cross_origin=false
accept_x_forwarded_protocol=false
set_x_forwarded_protocol=proto-only
x_forwarded_for=
x_forwarded_for_trusted=
orig_headers_need_mark=
accept_pushpin_route=false
log_from=false
log_user_agent=false
sig_iss=pushpin
sig_key=changeme
upstream_key=
updates_check=off
organization_name=

[handler]
push_in_spec={push_in}
push_in_sub_specs={push_in_sub}
push_in_sub_connect=false
push_in_http_addr=127.0.0.1
push_in_http_port={cport}
push_in_http_max_headers_size=10000
push_in_http_max_body_size=1000000
stats_spec={stats}
command_spec={command}
message_wait=5000
id_cache_ttl=60
connection_subscription_max=20
subscription_linger=60
stats_subscription_ttl=60
stats_report_interval=10
stats_format=tnetstring
",
        internal = internal_path.display(),
        run = run.display(),
        logdir = logdir.display(),
        routes = routes_path.display(),
        push_in = ipc("push-in"),
        push_in_sub = ipc("push-in-sub"),
        stats = ipc("stats"),
        command = ipc("command"),
        cport = control.port(),
    );
    let write =
        |p: &Path, s: &str| std::fs::write(p, s).map_err(|e| format!("write {}: {e}", p.display()));
    write(&internal_path, &internal)?;
    write(&routes_path, &format!("* 127.0.0.1:{origin_port}\n"))?;
    write(&conf_path, &conf)?;
    Ok(conf_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_reported_with_its_package() {
        let why = Kind::Nginx.missing(Path::new("/nonexistent/nginx"));
        assert_eq!(
            why.as_deref(),
            Some("/nonexistent/nginx not found (apt-get install -y nginx)")
        );
        assert_eq!(Kind::GripProxy.missing(Path::new("/")), None);
    }
}
