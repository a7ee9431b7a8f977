//! `grip-proxy publish`: posts one item to a control API, like Pushpin's `pushpin-publish`. The URL comes from
//! `--url`, else `GRIP_URL`, else `http://127.0.0.1:5561`; as with the GRIP client libraries, a `GRIP_URL` may carry
//! `?iss=..&key=..` (a JWT is then signed with that key) or `user:password@` (Basic). An `https://` URL is reached
//! over TLS (rustls), verified against the system's roots or `--cacert`. Exit codes: 0 published, 1 refused or
//! failed (the reason on stderr), 2 usage.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};

use crate::tls::client::{self as tls_client, Trust};

/// The control API of a local grip-proxy (and Pushpin's).
pub const DEFAULT_URL: &str = "http://127.0.0.1:5561";

/// Time allowed to connect and for the whole exchange.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes of an error answer read (and shown).
const MAX_ANSWER: usize = 64 * 1024;

/// Lifetime of the JWT signed for a `GRIP_URL` with `iss` and `key` (the Python library's choice).
const JWT_LIFETIME: Duration = Duration::from_secs(3600);

/// Exit code: published.
pub const EXIT_OK: u8 = 0;
/// Exit code: the control API refused the publish, or could not be reached.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the command line is wrong (as clap's own usage errors).
pub const EXIT_USAGE: u8 = 2;

/// `grip-proxy publish [OPTIONS] CHANNEL [CONTENT]`
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
CONTENT is sent as the body of held responses (and as http-stream content), with a newline added unless \
--no-eol is given; without CONTENT, standard input is sent as it is.

By default the item carries both formats: http-response (releases response holds) and http-stream (appended to \
streams). --stream sends the http-stream format only, so response holds on the channel stay held. --close \
publishes an http-stream close action: it ends the streams on the channel.

An https:// URL is verified against the system's trusted roots, or only against the CA bundle given with \
--cacert; --insecure skips verification (for tests only: anyone on the path could read the credentials).

Exit codes: 0 published, 1 refused or failed (the reason on stderr), 2 usage.")]
pub struct Args {
    /// Channel to publish to.
    #[arg(value_name = "CHANNEL")]
    pub channel: String,
    /// Body of the released responses (default: standard input).
    #[arg(value_name = "CONTENT")]
    pub content: Option<String>,
    /// Item id (remembered as the channel's last id).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Id of the item before this one on the channel: clients behind it are re-fetched instead.
    #[arg(long = "prev-id", value_name = "ID")]
    pub prev_id: Option<String>,
    /// Status code of the released responses.
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u16).range(100..=999))]
    pub code: u16,
    /// Header of the released responses, as 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "'Name: value'")]
    pub headers: Vec<String>,
    /// Send a hint: held clients are re-fetched from their origin instead of given content.
    #[arg(long, conflicts_with = "close")]
    pub hint: bool,
    /// Publish an http-stream close action: ends the streams on the channel.
    #[arg(long)]
    pub close: bool,
    /// Publish the http-stream format only (streams get CONTENT; response holds stay held).
    #[arg(long)]
    pub stream: bool,
    /// Deliver at once, even if the item's predecessor (--prev-id) has not arrived.
    #[arg(long = "no-seq")]
    pub no_seq: bool,
    /// Do not add a newline to CONTENT.
    #[arg(long = "no-eol")]
    pub no_eol: bool,
    /// Control API base URL (also GRIP_URL, which may carry ?iss=..&key=.. for a JWT, or user:password@).
    #[arg(long, value_name = "URL", env = "GRIP_URL", hide_env_values = true, default_value = DEFAULT_URL)]
    pub url: String,
    /// Authorization: Bearer TOKEN (a static key, or a JWT). Note: a command line is visible to other users.
    #[arg(long, value_name = "TOKEN", conflicts_with = "user")]
    pub bearer: Option<String>,
    /// Authorization: Basic, as USER:PASSWORD.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub user: Option<String>,
    /// For an https:// URL: trust the CA certificates in this PEM file (in place of the system's roots).
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// For an https:// URL: do not verify the server's certificate (prints a warning).
    #[arg(short = 'k', long, conflicts_with = "cacert")]
    pub insecure: bool,
}

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line (or the URL) is unusable.
    #[error("{0}")]
    Usage(String),
    /// Standard input could not be read.
    #[error("cannot read the content from standard input: {0}")]
    Stdin(#[source] std::io::Error),
    /// The control API could not be reached.
    #[error("cannot connect to the control API at {addr}: {source}")]
    Connect {
        /// host:port tried.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake with an `https://` URL's server failed (e.g. its certificate could not be verified).
    #[error("TLS handshake with {addr} failed: {source}")]
    Tls {
        /// host:port.
        addr: String,
        /// Why (rustls's reason, e.g. `invalid peer certificate: UnknownIssuer`).
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed after connecting.
    #[error("request to the control API at {addr} failed: {source}")]
    Http {
        /// host:port.
        addr: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// No answer in time.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// host:port.
        addr: String,
        /// The limit.
        timeout: Duration,
    },
    /// The control API answered something other than 200.
    #[error("publish refused: {status}: {message}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// Its reason, from the answer's body.
        message: String,
    },
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_USAGE,
            _ => EXIT_FAILED,
        }
    }
}

/// Runs the subcommand: prints `Published` or the error, and returns the exit code.
pub fn main(args: Args) -> u8 {
    tls_client::install_provider();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the runtime: {e}")))
        .and_then(|rt| rt.block_on(run(&args, read_stdin)));
    match result {
        Ok(()) => {
            println!("Published");
            EXIT_OK
        }
        Err(e) => {
            eprintln!("grip-proxy publish: {e}");
            e.exit_code()
        }
    }
}

fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!(
            "grip-proxy publish: reading the content from standard input (end it with Ctrl-D)"
        );
    }
    let mut content = Vec::new();
    stdin.read_to_end(&mut content).map_err(CliError::Stdin)?;
    Ok(content)
}

/// Builds the item and posts it. `stdin` is read only when the content is needed and not given.
pub async fn run(
    args: &Args,
    stdin: impl FnOnce() -> Result<Vec<u8>, CliError>,
) -> Result<(), CliError> {
    let target = Target::parse(&args.url)?;
    let trust = trust(args, &target)?;
    let authorization = authorization(args, &target)?;
    let content = if args.hint || args.close {
        None
    } else {
        Some(match &args.content {
            Some(c) if args.no_eol => c.clone().into_bytes(),
            Some(c) => format!("{c}\n").into_bytes(),
            None => stdin()?,
        })
    };
    let item = item(args, content.as_deref())?;
    let body = json!({ "items": [item] }).to_string();
    post(&target, trust, authorization, body).await
}

/// What an `https://` URL's certificate is verified against (`None` for `http://`, where --cacert and --insecure
/// mean nothing).
fn trust(args: &Args, target: &Target) -> Result<Option<Trust>, CliError> {
    if !target.tls {
        return Ok(None);
    }
    if args.insecure {
        eprintln!(
            "grip-proxy publish: warning: --insecure: the certificate of {} is not verified",
            target.addr
        );
        return Ok(Some(Trust::Insecure));
    }
    let Some(path) = &args.cacert else {
        return Ok(Some(Trust::System));
    };
    let usage = |why: String| CliError::Usage(format!("--cacert {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| usage(e.to_string()))?;
    let roots = crate::tls::pem::roots(&pem).map_err(|e| usage(e.to_string()))?;
    Ok(Some(Trust::Roots(Arc::new(roots))))
}

/// The one item, in the format Pushpin's `pushpin-publish` sends (formats nested under `formats`).
pub fn item(args: &Args, content: Option<&[u8]>) -> Result<Value, CliError> {
    let mut formats = Map::new();
    if args.close {
        formats.insert("http-stream".into(), json!({ "action": "close" }));
    } else if args.hint {
        if !args.stream {
            formats.insert("http-response".into(), json!({ "action": "hint" }));
        }
        formats.insert("http-stream".into(), json!({ "action": "hint" }));
    } else {
        let content = content.unwrap_or_default();
        let mut response = Map::new();
        response.insert("code".into(), json!(args.code));
        if !args.headers.is_empty() {
            let headers = args
                .headers
                .iter()
                .map(|h| header_pair(h))
                .collect::<Result<Vec<_>, _>>()?;
            response.insert("headers".into(), json!(headers));
        }
        let mut stream = Map::new();
        match std::str::from_utf8(content) {
            Ok(text) => {
                response.insert("body".into(), json!(text));
                stream.insert("content".into(), json!(text));
            }
            Err(_) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(content);
                response.insert("body-bin".into(), json!(b64));
                stream.insert("content-bin".into(), json!(b64));
            }
        }
        if !args.stream {
            formats.insert("http-response".into(), Value::Object(response));
        }
        formats.insert("http-stream".into(), Value::Object(stream));
    }
    let mut item = Map::new();
    item.insert("channel".into(), json!(args.channel));
    if let Some(id) = &args.id {
        item.insert("id".into(), json!(id));
    }
    if let Some(prev) = &args.prev_id {
        item.insert("prev-id".into(), json!(prev));
    }
    if args.no_seq {
        item.insert("no-seq".into(), json!(true));
    }
    item.insert("formats".into(), Value::Object(formats));
    Ok(Value::Object(item))
}

/// `Name: value` into `[name, value]`.
fn header_pair(h: &str) -> Result<[String; 2], CliError> {
    let (name, value) = h.split_once(':').ok_or_else(|| {
        CliError::Usage(format!("header {h:?} must be in the form \"Name: value\""))
    })?;
    let name = name.trim();
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(CliError::Usage(format!(
            "header {h:?}: {name:?} is not a header name"
        )));
    }
    Ok([name.to_owned(), value.trim().to_owned()])
}

// === the control API's address ===

/// Where to post, and the credentials the URL carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https`: TLS to the server.
    pub tls: bool,
    /// `host:port` to connect to (port 80, or 443 for https, when absent).
    pub addr: String,
    /// The host without its port: for https, the name verified and sent as SNI.
    pub name: String,
    /// The `Host` header.
    pub host: String,
    /// The path of `/publish/` under the URL's path.
    pub path: String,
    /// `user:password@` of the URL.
    pub basic: Option<(String, String)>,
    /// `?iss=..&key=..` of the URL: a JWT is signed with them.
    pub jwt: Option<(String, Vec<u8>)>,
}

impl Target {
    /// Parses `http[s]://[user:password@]host[:port][/path][?iss=..&key=..]`.
    pub fn parse(url: &str) -> Result<Target, CliError> {
        let usage = |why: &str| CliError::Usage(format!("URL {url:?}: {why}"));
        let (tls, rest) = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            _ => return Err(usage("expected http://host:port or https://host:port")),
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return Err(usage("no host"));
        }
        let has_port = match host.rfind(':') {
            Some(i) => !host.ends_with(']') && host[i + 1..].parse::<u16>().is_ok(),
            None => false,
        };
        let (addr, name) = if has_port {
            let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
            (host.to_owned(), name.to_owned())
        } else if host.contains(':') && !host.starts_with('[') {
            return Err(usage("bad port"));
        } else {
            let port = if tls { 443 } else { 80 };
            (format!("{host}:{port}"), host.to_owned())
        };
        let basic = userinfo.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            (decode(user), decode(pass))
        });
        let (mut iss, mut key) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            // As gripcontrol's parse_grip_uri: a '+' in a base64 key is a '+', not a space.
            match k {
                "iss" => iss = Some(decode(v)),
                "key" => key = Some(decode(v)),
                _ => {}
            }
        }
        let jwt = match (iss, key) {
            (Some(iss), Some(key)) => {
                Some((iss, secret_bytes(&key).map_err(|e| usage(&e.to_string()))?))
            }
            (None, None) => None,
            _ => return Err(usage("iss and key go together")),
        };
        Ok(Target {
            tls,
            addr,
            name,
            host: host.to_owned(),
            path: format!("{}/publish/", path.trim_end_matches('/')),
            basic,
            jwt,
        })
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// A key as the client libraries give it: literal, or `base64:...`.
fn secret_bytes(key: &str) -> Result<Vec<u8>, CliError> {
    match key.strip_prefix("base64:") {
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| CliError::Usage("key: invalid base64".to_owned())),
        None => Ok(key.as_bytes().to_vec()),
    }
}

/// The `Authorization` value: the flags first, then what the URL carries.
fn authorization(args: &Args, target: &Target) -> Result<Option<HeaderValue>, CliError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let value = if let Some(token) = &args.bearer {
        format!("Bearer {token}")
    } else if let Some(user) = &args.user {
        if !user.contains(':') {
            return Err(CliError::Usage("--user must be USER:PASSWORD".into()));
        }
        format!("Basic {}", b64(user))
    } else if let Some((user, pass)) = &target.basic {
        format!("Basic {}", b64(&format!("{user}:{pass}")))
    } else if let Some((iss, key)) = &target.jwt {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            + JWT_LIFETIME;
        let claims = json!({ "iss": iss, "exp": exp.as_secs() });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key),
        )
        .map_err(|e| CliError::Usage(format!("cannot sign a JWT with the URL's key: {e}")))?;
        format!("Bearer {token}")
    } else {
        return Ok(None);
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| {
        CliError::Usage("credentials contain characters not allowed in a header".into())
    })?;
    value.set_sensitive(true);
    Ok(Some(value))
}

// === the exchange ===

async fn post(
    target: &Target,
    trust: Option<Trust>,
    authorization: Option<HeaderValue>,
    body: String,
) -> Result<(), CliError> {
    let addr = target.addr.clone();
    let timed_out = || CliError::Timeout {
        addr: addr.clone(),
        timeout: EXCHANGE_TIMEOUT,
    };
    tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        exchange(target, trust, authorization, body),
    )
    .await
    .map_err(|_| timed_out())?
}

async fn exchange(
    target: &Target,
    trust: Option<Trust>,
    authorization: Option<HeaderValue>,
    body: String,
) -> Result<(), CliError> {
    let addr = &target.addr;
    let connect_err = |source| CliError::Connect {
        addr: addr.clone(),
        source,
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| {
            connect_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {CONNECT_TIMEOUT:?}"),
            ))
        })?
        .map_err(connect_err)?;
    let http_err = |source| CliError::Http {
        addr: addr.clone(),
        source,
    };
    let mut sender = match trust {
        None => {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(http_err)?;
            tokio::spawn(conn);
            sender
        }
        Some(trust) => {
            let stream = tls_handshake(target, &trust, stream).await?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(http_err)?;
            tokio::spawn(conn);
            sender
        }
    };
    let mut req = Request::new(Full::new(Bytes::from(body)));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = target
        .path
        .parse()
        .map_err(|_| CliError::Usage(format!("URL path {:?} is not valid", target.path)))?;
    let headers = req.headers_mut();
    headers.insert(
        header::HOST,
        HeaderValue::from_str(&target.host)
            .map_err(|_| CliError::Usage(format!("host {:?} is not valid", target.host)))?,
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    if let Some(auth) = authorization {
        headers.insert(header::AUTHORIZATION, auth);
    }
    let resp = sender.send_request(req).await.map_err(http_err)?;
    let status = resp.status();
    if status == StatusCode::OK {
        return Ok(());
    }
    let answer = Limited::new(resp.into_body(), MAX_ANSWER)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Err(CliError::Refused {
        status,
        message: message(&answer),
    })
}

/// The TLS session with an `https://` URL's server, verified as `trust` says, within the connect timeout.
async fn tls_handshake(
    target: &Target,
    trust: &Trust,
    stream: tokio::net::TcpStream,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, CliError> {
    let tls_err = |source| CliError::Tls {
        addr: target.addr.clone(),
        source,
    };
    let invalid = |e: String| tls_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e));
    let config = match trust {
        Trust::System => tls_client::system_http1_config(),
        other => tls_client::http1_config(other),
    }
    .map_err(|e| invalid(e.to_string()))?;
    let name = tls_client::server_name(&target.name).map_err(invalid)?;
    let handshake = tokio_rustls::TlsConnector::from(config).connect(name, stream);
    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| {
            tls_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no TLS session within {CONNECT_TIMEOUT:?}"),
            ))
        })?
        .map_err(tls_err)
}

/// The reason in an error answer: `{"error": ..}` or `{"message": ..}` of a JSON body, else its text.
fn message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        for key in ["error", "message"] {
            if let Some(m) = v.get(key).and_then(Value::as_str) {
                return m.to_owned();
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(no reason given)".into()
    } else {
        text.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: Args,
    }

    fn args(line: &[&str]) -> Args {
        Cmd::try_parse_from(std::iter::once("publish").chain(line.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:5561").unwrap();
        assert_eq!(t.addr, "127.0.0.1:5561");
        assert_eq!(t.path, "/publish/");
        assert_eq!((t.basic, t.jwt), (None, None));
        let t =
            Target::parse("http://u:p%40ss@example.com/prefix/?iss=me&key=base64:aGk=").unwrap();
        assert_eq!(t.addr, "example.com:80");
        assert_eq!(t.host, "example.com");
        assert_eq!(t.path, "/prefix/publish/");
        assert_eq!(t.basic, Some(("u".into(), "p@ss".into())));
        assert_eq!(t.jwt, Some(("me".into(), b"hi".to_vec())));
        let t = Target::parse("http://[::1]:5561/").unwrap();
        assert_eq!(t.addr, "[::1]:5561");
        let t = Target::parse("https://example.com/x").unwrap();
        assert!(t.tls);
        assert_eq!(
            (t.addr.as_str(), t.name.as_str(), t.path.as_str()),
            ("example.com:443", "example.com", "/x/publish/")
        );
        let t = Target::parse("https://[::1]:8443").unwrap();
        assert_eq!((t.addr.as_str(), t.name.as_str()), ("[::1]:8443", "[::1]"));
        assert!(!Target::parse("http://a:1").unwrap().tls);
        for (bad, why) in [
            (
                "ftp://a:1",
                "expected http://host:port or https://host:port",
            ),
            ("a:1", "expected http://host:port"),
            ("http://a:x", "bad port"),
            ("http:///x", "no host"),
            ("http://a:1?iss=me", "iss and key go together"),
        ] {
            let e = Target::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn items_as_pushpin_publish_sends_them() {
        let a = args(&[
            "--id",
            "2",
            "--prev-id",
            "1",
            "--code",
            "201",
            "-H",
            "X-A: 1",
            "-H",
            "Content-Type: text/plain",
            "news",
            "hello",
        ]);
        let sent = item(&a, Some(b"hello\n")).unwrap();
        assert_eq!(
            sent,
            json!({"channel": "news", "id": "2", "prev-id": "1", "formats": {
                "http-response": {"code": 201, "headers": [["X-A", "1"], ["Content-Type", "text/plain"]],
                                  "body": "hello\n"},
                "http-stream": {"content": "hello\n"}}})
        );
        let hint = item_of(&["--hint", "news"]);
        assert_eq!(hint["formats"]["http-response"], json!({"action": "hint"}));
        let stream = item_of(&["--stream", "news"]);
        assert_eq!(
            stream["formats"],
            json!({"http-stream": {"content": "x"}}),
            "--stream: the http-stream format only"
        );
        let close = item_of(&["--close", "news"]);
        assert_eq!(
            close["formats"],
            json!({"http-stream": {"action": "close"}})
        );
        let bin = item(&args(&["news"]), Some(&[0xff, 0])).unwrap();
        assert_eq!(bin["formats"]["http-response"]["body-bin"], "/wA=");
        assert!(matches!(
            item(&args(&["-H", "nocolon", "news"]), Some(b"")),
            Err(CliError::Usage(_))
        ));
        // The items parse as the control API parses them.
        let body = json!({"items": [item_of(&["--no-seq", "news"])]}).to_string();
        let parsed = crate::item::parse_body(body.as_bytes()).unwrap();
        assert!(parsed[0].no_seq);
    }

    fn item_of(line: &[&str]) -> Value {
        item(&args(line), Some(b"x")).unwrap()
    }

    #[test]
    fn usage_errors() {
        let parse = |line: &[&str]| {
            Cmd::try_parse_from(std::iter::once("publish").chain(line.iter().copied())).map(|_| ())
        };
        assert!(parse(&["--hint", "--close", "c"]).is_err());
        assert!(parse(&["--bearer", "t", "--user", "u:p", "c"]).is_err());
        assert!(parse(&["--code", "1000", "c"]).is_err());
        assert!(parse(&[]).is_err());
        let a = args(&["--user", "nocolon", "c"]);
        let t = Target::parse(DEFAULT_URL).unwrap();
        assert!(matches!(authorization(&a, &t), Err(CliError::Usage(_))));
    }

    #[test]
    fn error_messages_come_from_the_body() {
        assert_eq!(
            message(br#"{"error": "items[0].channel: missing"}"#),
            "items[0].channel: missing"
        );
        assert_eq!(message(b"Unauthorized\n"), "Unauthorized");
        assert_eq!(message(b""), "(no reason given)");
    }
}
