//! The Redis bus over TLS (`rediss://`): a real `redis-server` serving TLS only, with a certificate of a CA made at
//! test time that `bus.tls_ca` names; a publish to one instance releases a client held on the other. Without a
//! `redis-server` on PATH the test says so on stderr and passes (except under CI).

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is how a test fails

mod support;

use std::process::{Child, Command, Stdio};

use support::redis_server::RedisServer;
use support::tls::{Ca, TempDir};
use support::*;

/// A `redis-server` listening with TLS only on a free loopback port; killed by its pid on drop.
struct TlsRedis {
    port: u16,
    child: Child,
}

impl TlsRedis {
    fn start(dir: &TempDir, ca: &Ca) -> TlsRedis {
        let leaf = ca.leaf(&["127.0.0.1"]);
        let cert = dir.file("redis.pem", &leaf.cert_pem);
        let key = dir.file("redis.key", &leaf.key_pem);
        let ca_file = dir.file("ca.pem", &ca.pem());
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--tls-auth-clients", "no"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key)
            .arg("--tls-ca-cert-file")
            .arg(&ca_file)
            .arg("--dir")
            .arg(dir.path(""))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        TlsRedis { port, child }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hold_on_path(req: &Recorded) -> Reply {
    match req.path().strip_prefix("/hold/") {
        Some(channel) => Reply::hold(channel),
        None => Reply::text("plain"),
    }
}

#[tokio::test]
async fn two_instances_share_publishes_over_rediss_with_a_private_ca() {
    if !RedisServer::available() {
        let _ = RedisServer::start_or_skip(
            "bus_rediss::two_instances_share_publishes_over_rediss_with_a_private_ca",
        )
        .await;
        return;
    }
    let dir = TempDir::new("rediss");
    let ca = Ca::new("redis CA");
    let redis = TlsRedis::start(&dir, &ca);
    let ca_path = dir.path("ca.pem");
    let bus = format!(
        "[bus]\nurl = \"rediss://127.0.0.1:{}/0\"\ntls_ca = \"file:{}\"\n\
         reconnect_min_secs = 0.02\nreconnect_max_secs = 0.2",
        redis.port,
        ca_path.display()
    );
    let origin = Origin::start(hold_on_path).await;
    let a = Proxy::to(origin.addr()).toml(&bus).start().await;
    let b = Proxy::to(origin.addr()).toml(&bus).start().await;
    // Subscribed over TLS (redis-server may still be starting: the bus retries meanwhile).
    a.wait_bus(true).await;
    b.wait_bus(true).await;

    let client = Pending::get(a.addr(), "/hold/news");
    a.wait_held(1).await;
    let resp = publish(&b, items(&[item("news", "over tls\n")])).await;

    assert_eq!(resp.status, 200, "{:?}", resp.body);
    assert_eq!(within(LIMIT, client.response()).await.text(), "over tls\n");
    a.shutdown().await;
    b.shutdown().await;
}
