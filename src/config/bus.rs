//! `[bus]`: the raw TOML section and its validated form. Without `url` the bus is in memory (one process); with
//! a Redis URL, every instance naming the same Redis and `prefix` shares its publishes.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use super::check::{invalid, min_max, positive, secret, secs};
use super::ConfigError;

/// The value of `--bus` (or `bus.url`) that selects the in-memory bus.
const MEMORY: &str = "memory";

/// URL schemes the Redis client accepts. `rediss`/`valkeys` are TLS.
const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "valkey",
    "valkeys",
    "unix",
    "redis+unix",
    "valkey+unix",
];

/// What to do when Redis cannot be reached at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Startup {
    /// Start anyway and keep trying in the background; publishes answer 503 until subscribed.
    Retry,
    /// Exit with an error (one line, exit code 1).
    Fail,
}

/// How the Redis bus carries publishes between instances (docs/scaling.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Redis pub/sub (`PUBLISH`/`SUBSCRIBE` on `<prefix>:publish`): keeps nothing; after a lost connection
    /// every held client is re-fetched.
    Pubsub,
    /// A Redis stream (`XADD`/`XREAD` on `<prefix>:items`): after a lost connection an instance resumes from
    /// the last entry it applied; held clients are re-fetched only when that entry is no longer there.
    Stream,
}

/// `[bus]` as written.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBus {
    /// `redis://[user][:password@]host[:port][/db]`, `rediss://...` (TLS) or `unix:///path`; absent or
    /// `"memory"`: the in-memory bus.
    pub url: Option<String>,
    /// Redis password, overriding the URL's: literal, `env:NAME` or `file:PATH` (see `secret`).
    pub password: Option<String>,
    /// The Redis pub/sub channel is `<prefix>:publish`; instances share publishes when they share it.
    pub prefix: String,
    /// Redis unreachable at start-up: `retry` (default) or `fail`.
    pub startup: Startup,
    /// `pubsub` (default) or `stream` (checked by `validate`, which names the key in its error).
    pub transport: String,
    /// With `transport = "stream"`: the stream keeps about this many entries (`XADD MAXLEN ~`).
    pub stream_max_len: u64,
    /// Time allowed to connect (and subscribe) to Redis.
    pub connect_timeout_secs: f64,
    /// Time allowed for Redis to answer a PUBLISH or a PING.
    pub command_timeout_secs: f64,
    /// First delay before reconnecting; doubled after each failure ...
    pub reconnect_min_secs: f64,
    /// ... up to this.
    pub reconnect_max_secs: f64,
    /// The subscription is checked with a PING this often (catches a Redis that vanished without closing).
    pub ping_interval_secs: f64,
    /// `Retry-After` of the 503 a publish gets while the bus is down.
    pub retry_after_secs: u64,
    /// For a `rediss://` URL: the CA bundle (PEM) Redis's certificate is verified against, in place of the
    /// system's trusted roots. Secret spec (`file:PATH`, `env:NAME` or the PEM text).
    pub tls_ca: Option<String>,
}

impl Default for RawBus {
    fn default() -> Self {
        RawBus {
            url: None,
            password: None,
            prefix: "grip-proxy".into(),
            startup: Startup::Retry,
            transport: "pubsub".into(),
            stream_max_len: 100_000,
            connect_timeout_secs: 2.0,
            command_timeout_secs: 2.0,
            reconnect_min_secs: 0.1,
            reconnect_max_secs: 5.0,
            ping_interval_secs: 5.0,
            retry_after_secs: 1,
            tls_ca: None,
        }
    }
}

impl fmt::Debug for RawBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawBus")
            .field("url", &self.url.as_deref().map(redact))
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("prefix", &self.prefix)
            .field("startup", &self.startup)
            .field("transport", &self.transport)
            .field("stream_max_len", &self.stream_max_len)
            .finish_non_exhaustive()
    }
}

/// The validated `[bus]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusConfig {
    /// `None`: the in-memory bus.
    pub redis: Option<RedisConfig>,
}

/// A validated Redis bus. Its URL and password never appear in `Debug` or logs; they are compared, so a new
/// password (in the URL or in `password`) is a change.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// As given (may hold a password): only `client()` reads it.
    url: String,
    /// Resolved `password`, if given.
    password: Option<String>,
    /// The pub/sub channel: `<prefix>:publish`.
    pub channel: String,
    /// Redis unreachable at start-up.
    pub startup: Startup,
    /// Pub/sub or stream.
    pub transport: Transport,
    /// The stream's key (`transport = "stream"`): `<prefix>:items`.
    pub stream_key: String,
    /// Approximate `MAXLEN` of the stream.
    pub stream_max_len: u64,
    /// Connect and subscribe timeout.
    pub connect_timeout: Duration,
    /// PUBLISH and PING timeout.
    pub command_timeout: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// Health check period of the subscription.
    pub ping_interval: Duration,
    /// `Retry-After` of a 503.
    pub retry_after: Duration,
    /// The CA bundle (PEM) of a `rediss://` Redis, if given.
    tls_ca: Option<Vec<u8>>,
}

impl RedisConfig {
    /// The Redis client for this URL (and password). Validation made one already, so this does not fail in
    /// practice.
    pub fn client(&self) -> redis::RedisResult<redis::Client> {
        use redis::IntoConnectionInfo as _;
        let mut info = self.url.as_str().into_connection_info()?;
        // Each PUBLISH is one small write that waits for its answer: Nagle's algorithm would only add delay.
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        info = info.set_tcp_settings(tcp);
        if let Some(password) = &self.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        match &self.tls_ca {
            None => redis::Client::open(info),
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            ),
        }
    }

    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("channel", &self.channel)
            .field("startup", &self.startup)
            .field("transport", &self.transport)
            .field("stream_key", &self.stream_key)
            .field("stream_max_len", &self.stream_max_len)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("ping_interval", &self.ping_interval)
            .field("retry_after", &self.retry_after)
            .field("tls_ca", &self.tls_ca.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Validates `[bus]`. The URL is parsed by the Redis client here, so a bad one fails before anything binds.
pub(super) fn validate(raw: &RawBus) -> Result<BusConfig, ConfigError> {
    let transport = match raw.transport.as_str() {
        "pubsub" => Transport::Pubsub,
        "stream" => Transport::Stream,
        other => {
            return Err(invalid(
                "bus.transport",
                format!("{other:?}: expected \"pubsub\" or \"stream\""),
            ))
        }
    };
    positive("bus.stream_max_len", raw.stream_max_len)?;
    let url = match raw.url.as_deref().map(str::trim) {
        None | Some(MEMORY) => return Ok(BusConfig { redis: None }),
        Some("") => {
            return Err(invalid(
                "bus.url",
                "empty (leave it out for the in-memory bus)",
            ))
        }
        Some(url) => url,
    };
    let shown = redact(url);
    let scheme = url.split_once("://").map(|(s, _)| s);
    match scheme {
        Some(s) if SCHEMES.contains(&s) => {}
        Some(s) => {
            return Err(invalid(
                "bus.url",
                format!("{shown:?}: unsupported scheme {s:?} (expected redis, rediss or unix)"),
            ))
        }
        None => {
            return Err(invalid(
                "bus.url",
                format!("{shown:?}: expected redis://host:port/db"),
            ))
        }
    }
    if raw.prefix.is_empty() {
        return Err(invalid("bus.prefix", "must not be empty"));
    }
    let password = match &raw.password {
        None => None,
        Some(spec) => {
            let bytes = secret("bus.password", spec)?;
            Some(String::from_utf8(bytes).map_err(|_| invalid("bus.password", "not UTF-8"))?)
        }
    };
    let reconnect_min = secs("bus.reconnect_min_secs", raw.reconnect_min_secs)?;
    let reconnect_max = secs("bus.reconnect_max_secs", raw.reconnect_max_secs)?;
    min_max(
        (
            "bus.reconnect_min_secs",
            reconnect_min,
            raw.reconnect_min_secs,
        ),
        (
            "bus.reconnect_max_secs",
            reconnect_max,
            raw.reconnect_max_secs,
        ),
    )?;
    positive("bus.retry_after_secs", raw.retry_after_secs)?;
    let tls = matches!(scheme, Some("rediss" | "valkeys"));
    let tls_ca = match &raw.tls_ca {
        None => None,
        Some(_) if !tls => {
            return Err(invalid(
                "bus.tls_ca",
                format!("only for a rediss:// URL (bus.url is {shown:?})"),
            ))
        }
        Some(spec) => {
            let pem = secret("bus.tls_ca", spec)?;
            crate::tls::pem::roots(&pem).map_err(|e| invalid("bus.tls_ca", e.to_string()))?;
            Some(pem)
        }
    };
    if tls {
        // redis-rs builds its rustls config with the process's default provider.
        crate::tls::client::install_provider();
    }
    let config = RedisConfig {
        url: url.to_owned(),
        password,
        channel: format!("{}:publish", raw.prefix),
        startup: raw.startup,
        transport,
        stream_key: format!("{}:items", raw.prefix),
        stream_max_len: raw.stream_max_len,
        connect_timeout: secs("bus.connect_timeout_secs", raw.connect_timeout_secs)?,
        command_timeout: secs("bus.command_timeout_secs", raw.command_timeout_secs)?,
        reconnect_min,
        reconnect_max,
        ping_interval: secs("bus.ping_interval_secs", raw.ping_interval_secs)?,
        retry_after: Duration::from_secs(raw.retry_after_secs),
        tls_ca,
    };
    config.client().map_err(|e| {
        invalid(
            "bus.url",
            format!("{shown:?}: {}", one_line(&e.to_string())),
        )
    })?;
    Ok(BusConfig {
        redis: Some(config),
    })
}

/// Replaces the password of a URL's user info (and a query, which for `unix:` URLs may carry one) with `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, _)) => format!("{path}?***"),
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

fn one_line(s: &str) -> String {
    s.trim().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(url: &str) -> RawBus {
        RawBus {
            url: Some(url.into()),
            ..RawBus::default()
        }
    }

    fn err(raw: RawBus) -> String {
        validate(&raw).unwrap_err().to_string()
    }

    #[test]
    fn no_url_or_memory_is_the_memory_bus() {
        assert!(validate(&RawBus::default()).unwrap().redis.is_none());
        assert!(validate(&raw("memory")).unwrap().redis.is_none());
    }

    #[test]
    fn a_redis_url_with_defaults() {
        let c = validate(&raw("redis://127.0.0.1:6379/0"))
            .unwrap()
            .redis
            .unwrap();
        assert_eq!(c.channel, "grip-proxy:publish");
        assert_eq!(c.startup, Startup::Retry);
        assert_eq!(c.transport, Transport::Pubsub);
        assert_eq!(c.stream_key, "grip-proxy:items");
        assert_eq!(c.stream_max_len, 100_000);
        assert_eq!(c.reconnect_min, Duration::from_millis(100));
        assert_eq!(c.reconnect_max, Duration::from_secs(5));
        assert_eq!(c.retry_after, Duration::from_secs(1));
        let info = c.client().unwrap().get_connection_info().clone();
        assert_eq!(info.addr().to_string(), "127.0.0.1:6379");
    }

    #[test]
    fn rule_messages() {
        let cases = [
            (
                raw(""),
                "bus.url: empty (leave it out for the in-memory bus)",
            ),
            (
                raw("http://h:1"),
                r#"bus.url: "http://h:1": unsupported scheme "http" (expected redis, rediss or unix)"#,
            ),
            (
                raw("localhost:6379"),
                r#"bus.url: "localhost:6379": expected redis://host:port/db"#,
            ),
            (
                RawBus {
                    prefix: String::new(),
                    ..raw("redis://h")
                },
                "bus.prefix: must not be empty",
            ),
            (
                RawBus {
                    reconnect_min_secs: 10.0,
                    ..raw("redis://h")
                },
                "bus.reconnect_min_secs: 10 is above bus.reconnect_max_secs (5)",
            ),
            (
                RawBus {
                    connect_timeout_secs: 0.0,
                    ..raw("redis://h")
                },
                "bus.connect_timeout_secs: 0 is not a positive number of seconds",
            ),
            (
                RawBus {
                    retry_after_secs: 0,
                    ..raw("redis://h")
                },
                "bus.retry_after_secs: must be at least 1",
            ),
            (
                RawBus {
                    transport: "kafka".into(),
                    ..raw("redis://h")
                },
                r#"bus.transport: "kafka": expected "pubsub" or "stream""#,
            ),
            (
                RawBus {
                    transport: "stream".into(),
                    stream_max_len: 0,
                    ..raw("redis://h")
                },
                "bus.stream_max_len: must be at least 1",
            ),
            (
                RawBus {
                    password: Some("env:GRIP_PROXY_TEST_UNSET_VARIABLE".into()),
                    ..raw("redis://h")
                },
                "bus.password: environment variable GRIP_PROXY_TEST_UNSET_VARIABLE is not set",
            ),
            (
                RawBus {
                    tls_ca: Some("hello".into()),
                    ..raw("redis://h")
                },
                r#"bus.tls_ca: only for a rediss:// URL (bus.url is "redis://h")"#,
            ),
            (
                RawBus {
                    tls_ca: Some("hello".into()),
                    ..raw("rediss://h")
                },
                "bus.tls_ca: no PEM certificate (-----BEGIN CERTIFICATE-----) found",
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(err(raw.clone()), want, "{raw:?}");
        }
        let e = err(raw("redis://:secret@h:notaport/0"));
        assert!(
            e.starts_with(r#"bus.url: "redis://:***@h:notaport/0": "#),
            "{e}"
        );
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn rediss_with_a_ca_bundle() {
        let ca = rcgen::generate_simple_self_signed(vec!["redis.test".into()]).unwrap();
        let c = validate(&RawBus {
            tls_ca: Some(ca.cert.pem()),
            ..raw("rediss://redis.test:6380/0")
        })
        .unwrap()
        .redis
        .unwrap();
        assert!(c.client().is_ok());
        assert!(format!("{c:?}").contains("tls_ca: Some(\"<set>\")"));
    }

    #[test]
    fn the_stream_transport_from_toml() {
        use crate::config::{Config, RawConfig};
        let toml = "[bus]\nurl = \"redis://h:6379/0\"\nprefix = \"p\"\ntransport = \"stream\"\nstream_max_len = 500";
        let raw = RawConfig::from_toml(toml, "<string>").unwrap();
        let redis = Config::try_from(raw).unwrap().bus.redis.unwrap();
        assert_eq!(redis.transport, Transport::Stream);
        assert_eq!(redis.stream_key, "p:items");
        assert_eq!(redis.stream_max_len, 500);
        // Checked with the in-memory bus too: a typo is not silently ignored.
        let raw = RawConfig::from_toml("[bus]\ntransport = \"streams\"", "<string>").unwrap();
        let e = Config::try_from(raw).err().unwrap().to_string();
        assert_eq!(
            e,
            r#"bus.transport: "streams": expected "pubsub" or "stream""#
        );
    }

    #[test]
    fn the_bus_flag_overrides_the_file() {
        use crate::config::{Config, Overrides, RawConfig};
        let mut raw =
            RawConfig::from_toml("[bus]\nurl = \"redis://file:6379/0\"", "<string>").unwrap();
        raw.apply(&Overrides {
            bus: Some("redis://flag:6380/1".into()),
            ..Overrides::default()
        });
        let redis = Config::try_from(raw.clone()).unwrap().bus.redis.unwrap();
        assert_eq!(redis.redacted_url(), "redis://flag:6380/1");
        raw.apply(&Overrides {
            bus: Some("memory".into()),
            ..Overrides::default()
        });
        assert!(Config::try_from(raw).unwrap().bus.redis.is_none());
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("redis://user:pw@h:1/0"), "redis://user:***@h:1/0");
        assert_eq!(redact("redis://:pw@h"), "redis://:***@h");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(
            redact("unix:///run/r.sock?pass=pw"),
            "unix:///run/r.sock?***"
        );
        let c = validate(&RawBus {
            password: Some("other".into()),
            ..raw("redis://u:pw@h:1/2")
        })
        .unwrap()
        .redis
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("pw") && !shown.contains("other"), "{shown}");
        let info = c.client().unwrap().get_connection_info().clone();
        assert_eq!(info.redis_settings().password(), Some("other"));
        assert_eq!(info.redis_settings().db(), 2);
    }
}
