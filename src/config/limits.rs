//! `[limits]`: fair use: per-client concurrent holds and request rate, the table of clients they are counted in,
//! the most holds on one channel, and the proxies trusted to name the client in `X-Forwarded-For`.

use std::net::IpAddr;

use serde::Deserialize;

use super::check::{invalid, positive};
use super::ConfigError;

/// `[limits]` as written. Every limit is off (0) by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Most holds (response holds and streams) one client may have at once; 0: no limit.
    pub client_max_holds: u32,
    /// Requests per second one client may send, on average; 0: no limit. Fractions allowed (0.1: one per 10 s).
    pub client_requests_per_sec: f64,
    /// Requests one client may send at once beyond its rate (the token bucket's size); 0: one second's worth of
    /// `client_requests_per_sec`, at least 1.
    pub client_burst: u32,
    /// Most clients tracked at once (memory bound of the per-client limits).
    pub max_clients_tracked: usize,
    /// Most holds (response holds and streams) on one channel; 0: no limit.
    pub channel_max_holds: usize,
    /// Peers (addresses or CIDR ranges) whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<String>,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            client_max_holds: 0,
            client_requests_per_sec: 0.0,
            client_burst: 0,
            max_clients_tracked: 100_000,
            channel_max_holds: 0,
            trusted_proxies: Vec::new(),
        }
    }
}

/// An address range: an address and the number of leading bits that must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The range's first address (host bits cleared).
    pub addr: IpAddr,
    /// Leading bits that must match (32 for one IPv4 address, 128 for one IPv6 address).
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the range. An IPv4-mapped IPv6 address is matched as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask32(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask128(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }

    fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, bits)) => {
                let addr: IpAddr = addr.parse().ok()?;
                // Digits only: no sign, no spaces.
                if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (addr, bits.parse::<u8>().ok()?)
            }
            None => {
                let addr: IpAddr = text.parse().ok()?;
                (addr, if addr.is_ipv4() { 32 } else { 128 })
            }
        };
        let addr = addr.to_canonical();
        let addr = match addr {
            IpAddr::V4(a) if prefix <= 32 => IpAddr::V4(mask32(u32::from(a), prefix).into()),
            IpAddr::V6(a) if prefix <= 128 => IpAddr::V6(mask128(u128::from(a), prefix).into()),
            _ => return None,
        };
        Some(Cidr { addr, prefix })
    }
}

fn mask32(v: u32, prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        v & (u32::MAX << (32 - u32::from(prefix)))
    }
}

fn mask128(v: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        v & (u128::MAX << (128 - u32::from(prefix)))
    }
}

/// Validated `[limits]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Most holds per client (`None`: no limit).
    pub client_max_holds: Option<u32>,
    /// Requests per second per client and the burst (`None`: no limit).
    pub client_rate: Option<Rate>,
    /// Most clients tracked.
    pub max_clients_tracked: usize,
    /// Most holds per channel (`None`: no limit).
    pub channel_max_holds: Option<usize>,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<Cidr>,
}

// The rate is a finite positive number (checked), so equality is total.
impl Eq for LimitsConfig {}

impl LimitsConfig {
    /// Whether any per-client limit is on (otherwise clients are not tracked at all).
    pub fn per_client(&self) -> bool {
        self.client_max_holds.is_some() || self.client_rate.is_some()
    }
}

/// A token bucket's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: f64,
    /// The bucket's size: requests allowed at once.
    pub burst: u32,
}

/// The lowest rate accepted (one request per 1,000 s): below it the interval between tokens is too long to mean
/// anything but a typo.
const MIN_RATE: f64 = 0.001;

/// The highest rate accepted: far above what a per-client limit is for, low enough to keep the arithmetic exact.
const MAX_RATE: f64 = 1_000_000.0;

/// Validates `[limits]`.
pub(super) fn validate(l: &RawLimits) -> Result<LimitsConfig, ConfigError> {
    positive("limits.max_clients_tracked", l.max_clients_tracked)?;
    let per_sec = l.client_requests_per_sec;
    if per_sec != 0.0 && !(MIN_RATE..=MAX_RATE).contains(&per_sec) {
        return Err(invalid(
            "limits.client_requests_per_sec",
            format!(
                "{per_sec} is not 0 (no limit) or a number of requests per second from {MIN_RATE} to {MAX_RATE}"
            ),
        ));
    }
    if l.client_burst > 0 && per_sec == 0.0 {
        return Err(invalid(
            "limits.client_burst",
            "is set but limits.client_requests_per_sec is 0 (no rate limit)",
        ));
    }
    let client_rate = (per_sec > 0.0).then(|| Rate {
        per_sec,
        burst: if l.client_burst > 0 {
            l.client_burst
        } else {
            // One second's worth, at least 1.
            (per_sec.ceil() as u32).max(1)
        },
    });
    let trusted_proxies = l
        .trusted_proxies
        .iter()
        .enumerate()
        .map(|(i, text)| {
            Cidr::parse(text.trim()).ok_or_else(|| {
                invalid(
                    format!("limits.trusted_proxies[{i}]"),
                    format!("{text:?} is not an IP address or CIDR range (e.g. 10.0.0.0/8, ::1)"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(LimitsConfig {
        client_max_holds: (l.client_max_holds > 0).then_some(l.client_max_holds),
        client_rate,
        max_clients_tracked: l.max_clients_tracked,
        channel_max_holds: (l.channel_max_holds > 0).then_some(l.channel_max_holds),
        trusted_proxies,
    })
}

#[cfg(test)]
mod tests {
    use super::super::rule_error as err;
    use super::super::Config;
    use super::*;

    #[test]
    fn rule_messages() {
        let cases = [
            (
                "[limits]\nmax_clients_tracked = 0",
                "limits.max_clients_tracked: must be at least 1",
            ),
            (
                "[limits]\nclient_requests_per_sec = -1",
                "limits.client_requests_per_sec: -1 is not 0 (no limit) or a number of requests per second from 0.001 to 1000000",
            ),
            (
                "[limits]\nclient_requests_per_sec = nan",
                "limits.client_requests_per_sec: NaN is not 0 (no limit) or a number of requests per second from 0.001 to 1000000",
            ),
            (
                "[limits]\nclient_burst = 5",
                "limits.client_burst: is set but limits.client_requests_per_sec is 0 (no rate limit)",
            ),
            (
                "[limits]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]",
                "limits.trusted_proxies[1]: \"10.0.0.0/33\" is not an IP address or CIDR range (e.g. 10.0.0.0/8, ::1)",
            ),
            (
                "[limits]\ntrusted_proxies = [\"proxy.local\"]",
                "limits.trusted_proxies[0]: \"proxy.local\" is not an IP address or CIDR range (e.g. 10.0.0.0/8, ::1)",
            ),
            (
                "[limits]\ntrusted_proxies = [\"::1/+8\"]",
                "limits.trusted_proxies[0]: \"::1/+8\" is not an IP address or CIDR range (e.g. 10.0.0.0/8, ::1)",
            ),
        ];
        for (toml, want) in cases {
            assert_eq!(err(toml), want, "{toml}");
        }
    }

    #[test]
    fn defaults_are_off_and_burst_defaults_to_one_second() {
        let c = Config::default().fair_use;
        assert!(!c.per_client());
        assert_eq!(c.channel_max_holds, None);
        assert_eq!(c.max_clients_tracked, 100_000);
        let rate = |toml: &str| {
            Config::from_toml_str(toml)
                .unwrap()
                .fair_use
                .client_rate
                .unwrap()
        };
        assert_eq!(rate("[limits]\nclient_requests_per_sec = 0.1").burst, 1);
        assert_eq!(rate("[limits]\nclient_requests_per_sec = 20").burst, 20);
        assert_eq!(
            rate("[limits]\nclient_requests_per_sec = 2.5\nclient_burst = 7").burst,
            7
        );
    }

    #[test]
    fn trusted_proxies_alone_warn() {
        let warns = |toml: &str| Config::from_toml_str(toml).unwrap().warnings();
        let alone = warns(
            "[proxy]\nlisten = \"127.0.0.1:7999\"\n[limits]\ntrusted_proxies = [\"10.0.0.0/8\"]",
        );
        assert!(
            alone
                .iter()
                .any(|w| w.starts_with("limits.trusted_proxies is set")),
            "{alone:?}"
        );
        let used = warns(
            "[proxy]\nlisten = \"127.0.0.1:7999\"\n[limits]\ntrusted_proxies = [\"10.0.0.0/8\"]\nclient_max_holds = 5",
        );
        assert!(
            !used.iter().any(|w| w.contains("trusted_proxies")),
            "{used:?}"
        );
    }

    #[test]
    fn cidr_ranges() {
        let c = |s: &str| Cidr::parse(s).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(c("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!c("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert_eq!(c("10.1.2.3/8").addr, ip("10.0.0.0"));
        assert!(c("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!c("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(
            c("127.0.0.1").contains(ip("::ffff:127.0.0.1")),
            "IPv4-mapped"
        );
        assert!(c("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(!c("0.0.0.0/0").contains(ip("::1")));
        assert!(c("fd00::/8").contains(ip("fd12::1")));
        assert!(!c("fd00::/8").contains(ip("fe80::1")));
        assert!(c("::1").contains(ip("::1")));
        assert!(c("::/0").contains(ip("2001:db8::1")));
        assert!(c("2001:db8::/127").contains(ip("2001:db8::1")));
        assert!(!c("2001:db8::/128").contains(ip("2001:db8::1")));
        assert!(Cidr::parse("1.2.3.4/").is_none());
        assert!(Cidr::parse("::1/129").is_none());
    }
}
