//! Private, loopback-only nginx configs (plain keep-alive reverse proxy, or with Nchan) and
//! Nchan's publish request.

use crate::children::Result;
use crate::http::PUBLISHED_BODY;
use crate::tls::Certs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Where Debian's packages put the Nchan module.
const NCHAN_MODULES: [&str; 2] = [
    "/usr/lib/nginx/modules/ngx_nchan_module.so",
    "/usr/share/nginx/modules/ngx_nchan_module.so",
];

/// The Nchan module's path, if installed.
pub(crate) fn nchan_module() -> Option<&'static str> {
    NCHAN_MODULES
        .iter()
        .copied()
        .find(|p| Path::new(p).exists())
}

/// Write `dir/nginx.conf`: 2 workers, pid, logs and temp files in `dir`, one listener on
/// `listen` (127.0.0.1) proxying to the origin through a keep-alive upstream pool; with `nchan`,
/// also `/sub/<channel>` (long-poll subscriber) and `/pub/<channel>` (publisher); with `tls`,
/// the same server also on an HTTPS listener (`listen ... ssl`, the run's certificate, TLS 1.2
/// and 1.3).
pub(crate) fn write_config(
    dir: &Path,
    listen: SocketAddr,
    origin_port: u16,
    nchan: bool,
    tls: Option<(&Certs, SocketAddr)>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let d = dir.display();
    let (load, nchan_locations) = if nchan {
        let module = nchan_module()
            .ok_or("the Nchan module was not found: apt-get install -y libnginx-mod-nchan")?;
        (
            format!("load_module {module};\n"),
            "        location ~ ^/sub/([^/]+)$ {
            nchan_subscriber longpoll;
            nchan_channel_id $1;
            nchan_subscriber_timeout 300s;
            nchan_subscriber_first_message newest;
        }
        location ~ ^/pub/([^/]+)$ {
            nchan_publisher;
            nchan_channel_id $1;
        }
",
        )
    } else {
        (String::new(), "")
    };
    let tls_listen = match tls {
        Some((certs, a)) => format!(
            "        listen {a} ssl;
        ssl_certificate {};
        ssl_certificate_key {};
        ssl_protocols TLSv1.2 TLSv1.3;
",
            certs.cert.display(),
            certs.key.display()
        ),
        None => String::new(),
    };
    // `user` only applies when started as root (workers then run as nobody); otherwise nginx
    // ignores it with a warning.
    let conf = format!(
        "{load}daemon off;
master_process on;
worker_processes 2;
user nobody nogroup;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_rlimit_nofile 45000;
events {{
    worker_connections 40000;
}}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream bench_origin {{
        server 127.0.0.1:{origin_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
{tls_listen}{nchan_locations}        location / {{
            proxy_pass http://bench_origin;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// `POST /pub/<channel>` carrying the published body (Nchan's publisher endpoint).
pub(crate) fn publish_request(host: &str, channel: &str) -> Vec<u8> {
    let mut r = format!(
        "POST /pub/{channel} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        PUBLISHED_BODY.len()
    )
    .into_bytes();
    r.extend_from_slice(PUBLISHED_BODY);
    r
}
