//! Fair use per client: who the client is (its address, or the one a trusted proxy names in `X-Forwarded-For`),
//! and a bounded, sharded table of clients with a token bucket (request rate) and a count of holds each.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Cidr, LimitsConfig};

/// Most shards of the table; fewer for a small table, so that each shard still holds a useful number of clients.
const MAX_SHARDS: usize = 64;

/// Clients per shard below which the table uses fewer shards.
const MIN_PER_SHARD: usize = 64;

/// Which limit refused a request: the `reason` label of `grip_proxy_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `limits.client_requests_per_sec`
    ClientRate,
    /// `limits.client_max_holds`
    ClientHolds,
    /// `limits.channel_max_holds`
    ChannelHolds,
}

impl Refused {
    /// Every kind, in label order.
    pub(crate) const ALL: [Refused; 3] = [
        Refused::ClientRate,
        Refused::ClientHolds,
        Refused::ChannelHolds,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refused::ClientRate => "client_rate",
            Refused::ClientHolds => "client_holds",
            Refused::ChannelHolds => "channel_holds",
        }
    }

    /// The setting.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Refused::ClientRate => "limits.client_requests_per_sec",
            Refused::ClientHolds => "limits.client_max_holds",
            Refused::ChannelHolds => "limits.channel_max_holds",
        }
    }
}

/// A request refused by a limit: what for, whom, the limit, and when to retry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refusal {
    /// The limit.
    pub(crate) kind: Refused,
    /// The client's address, or the channel's name.
    pub(crate) who: Box<str>,
    /// The limit's value.
    pub(crate) limit: f64,
    /// Seconds to wait (`Retry-After`), at least 1.
    pub(crate) retry_after: u64,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match self.kind {
            Refused::ChannelHolds => "channel",
            Refused::ClientRate | Refused::ClientHolds => "client",
        };
        write!(
            f,
            "{} limit for {who} {}: {} = {}",
            self.kind.label(),
            self.who,
            self.kind.key(),
            self.limit
        )
    }
}

/// The client a request counts against: the peer's address, or, when the peer is a trusted proxy, the right-most
/// address of `X-Forwarded-For` (all its lines, in order) that is not itself trusted. Walking from the right, each
/// trusted hop vouches for the address to its left; an entry that is not an address (`unknown`, a token) stops the
/// walk at the last trusted hop, and a list of trusted addresses only gives its left-most one. Addresses may carry
/// a port (`1.2.3.4:5`, `[::1]:5`); IPv4-mapped IPv6 addresses count as IPv4.
pub(crate) fn identify(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut client = peer.to_canonical();
    if !is_trusted(client) {
        return client;
    }
    for line in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(line) = line.to_str() else {
            return client;
        };
        for entry in line.rsplit(',').map(str::trim) {
            let Some(ip) = address(entry) else {
                return client;
            };
            client = ip.to_canonical();
            if !is_trusted(client) {
                return client;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry's address, with or without a port or brackets.
fn address(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
}

/// A token bucket as a theoretical arrival time (GCRA): each request moves it one interval on; a request that
/// finds it more than `tolerance` ahead of now is over the rate.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Time per token.
    interval: Duration,
    /// How far ahead of now the arrival time may be: `burst - 1` intervals.
    tolerance: Duration,
    /// The rate, for messages.
    per_sec: f64,
}

impl Bucket {
    /// Takes a token at `now` if there is one (moving `tat` on), or says how long until there is.
    fn take(&self, tat: &mut Instant, now: Instant) -> Result<(), Duration> {
        let at = (*tat).max(now);
        let ahead = at - now;
        if ahead > self.tolerance {
            return Err(ahead - self.tolerance);
        }
        *tat = at + self.interval;
        Ok(())
    }
}

/// A client's hold count, shared by the table and the requests in progress. An entry referenced by a request is
/// never evicted, so a count is never lost.
#[derive(Debug)]
struct Entry {
    ip: IpAddr,
    holds: AtomicU32,
    /// `limits.client_max_holds`
    max_holds: u32,
}

/// A request's client, kept while the request may hold (only when `limits.client_max_holds` is set). A response
/// hold marks its place here ([`Client::park`]); a stream takes a [`HoldSlot`] that its body keeps.
#[derive(Debug)]
pub(crate) struct Client {
    entry: Arc<Entry>,
    /// This request holds one of the client's places now (given back by `unpark`, or on drop).
    parked: bool,
}

impl Client {
    fn take_place(&self) -> Result<(), Refusal> {
        let max = self.entry.max_holds;
        self.entry
            .holds
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(drop)
            .map_err(|_| Refusal {
                kind: Refused::ClientHolds,
                who: self.entry.ip.to_string().into(),
                limit: f64::from(max),
                retry_after: 1,
            })
    }

    /// Takes one of the client's places for a stream, or refuses (`Retry-After: 1`).
    pub(crate) fn hold(&self) -> Result<HoldSlot, Refusal> {
        self.take_place()?;
        Ok(HoldSlot(self.entry.clone()))
    }

    /// Takes one of the client's places for this request's response hold, or refuses (`Retry-After: 1`).
    pub(crate) fn park(&mut self) -> Result<(), Refusal> {
        if !self.parked {
            self.take_place()?;
            self.parked = true;
        }
        Ok(())
    }

    /// Gives back the place [`Client::park`] took, if any.
    pub(crate) fn unpark(&mut self) {
        if std::mem::take(&mut self.parked) {
            self.entry.holds.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.unpark();
    }
}

/// One of a client's hold places, given back on drop.
#[derive(Debug)]
pub(crate) struct HoldSlot(Arc<Entry>);

impl Drop for HoldSlot {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client in the table.
struct Slot {
    entry: Arc<Entry>,
    /// The bucket's theoretical arrival time (`now` when new: a full bucket).
    tat: Instant,
    /// Last request.
    seen: Instant,
}

impl Slot {
    /// Nothing refers to it but the table.
    fn idle(&self) -> bool {
        Arc::strong_count(&self.entry) == 1
    }

    /// Idle and its bucket is full again: it says nothing a new entry would not.
    fn spent(&self, now: Instant) -> bool {
        self.idle() && self.tat <= now
    }
}

type Shard = HashMap<IpAddr, Slot, ahash::RandomState>;

/// The per-client limits and the table of clients. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub(crate) struct Clients {
    inner: Arc<Table>,
}

struct Table {
    shards: Box<[Mutex<Shard>]>,
    /// Picks a client's shard.
    hasher: ahash::RandomState,
    /// Most clients per shard: the shards together hold at most `limits.max_clients_tracked`.
    per_shard: usize,
    rate: Option<Bucket>,
    max_holds: Option<u32>,
    trusted: Box<[Cidr]>,
    /// Requests served untracked because their shard was full of clients with requests in progress.
    untracked: std::sync::atomic::AtomicU64,
}

impl Clients {
    /// The table, if a per-client limit is set (otherwise clients are not tracked at all).
    pub(crate) fn new(config: &LimitsConfig) -> Option<Clients> {
        if !config.per_client() {
            return None;
        }
        let max = config.max_clients_tracked;
        let shards = (max / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        let rate = config.client_rate.map(|r| {
            let interval = Duration::from_secs_f64(1.0 / r.per_sec);
            Bucket {
                interval,
                tolerance: interval * (r.burst - 1),
                per_sec: r.per_sec,
            }
        });
        Some(Clients {
            inner: Arc::new(Table {
                shards: (0..shards)
                    .map(|_| Mutex::new(Shard::with_hasher(ahash::RandomState::new())))
                    .collect(),
                hasher: ahash::RandomState::new(),
                per_shard: max / shards,
                rate,
                max_holds: config.client_max_holds,
                trusted: config.trusted_proxies.clone().into(),
                untracked: Default::default(),
            }),
        })
    }

    /// Counts a request from `peer` (or the client a trusted proxy names in `headers`) at `now` against its rate,
    /// and returns the client to count its holds against (when that limit is set).
    pub(crate) fn admit(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        now: Instant,
    ) -> Result<Option<Client>, Refusal> {
        let ip = identify(peer, headers, &self.inner.trusted);
        self.admit_ip(ip, now)
    }

    /// [`Clients::admit`] for a known client address.
    pub(crate) fn admit_ip(&self, ip: IpAddr, now: Instant) -> Result<Option<Client>, Refusal> {
        let t = &*self.inner;
        let index = (t.hasher.hash_one(ip) % t.shards.len() as u64) as usize;
        let mut shard = t.shards[index].lock();
        if !shard.contains_key(&ip)
            && shard.len() >= t.per_shard
            && !make_room(&mut shard, now, t.per_shard)
        {
            drop(shard);
            // Every tracked client of this shard has a request in progress: this one is served untracked (a
            // fresh bucket and hold count of its own), rather than losing another's hold count.
            tracing::debug!(client = %ip, "client table full of clients in progress: not tracked");
            t.untracked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut slot = Slot::new(ip, now, t.max_holds);
            return self.check(&mut slot, now);
        }
        let slot = shard
            .entry(ip)
            .or_insert_with(|| Slot::new(ip, now, t.max_holds));
        slot.seen = now;
        self.check(slot, now)
    }

    fn check(&self, slot: &mut Slot, now: Instant) -> Result<Option<Client>, Refusal> {
        let t = &*self.inner;
        if let Some(rate) = &t.rate {
            if let Err(wait) = rate.take(&mut slot.tat, now) {
                return Err(Refusal {
                    kind: Refused::ClientRate,
                    who: slot.entry.ip.to_string().into(),
                    limit: rate.per_sec,
                    retry_after: whole_secs_up(wait),
                });
            }
        }
        Ok(t.max_holds.map(|_| Client {
            entry: slot.entry.clone(),
            parked: false,
        }))
    }

    /// Requests served untracked so far (their shard full of clients with requests in progress).
    pub(crate) fn untracked(&self) -> u64 {
        self.inner
            .untracked
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Clients tracked now.
    pub(crate) fn tracked(&self) -> usize {
        self.inner.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Removes the clients that say nothing a new entry would not (idle, bucket full again), shard by shard.
    pub(crate) fn sweep(&self, now: Instant) {
        for shard in self.inner.shards.iter() {
            shard.lock().retain(|_, slot| !slot.spent(now));
        }
    }

    /// Sweeps every `every` until `stop`.
    pub(crate) async fn run_sweeper(self, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => self.sweep(Instant::now()),
            }
        }
    }
}

impl Slot {
    fn new(ip: IpAddr, now: Instant, max_holds: Option<u32>) -> Slot {
        Slot {
            entry: Arc::new(Entry {
                ip,
                holds: AtomicU32::new(0),
                max_holds: max_holds.unwrap_or(u32::MAX),
            }),
            tat: now,
            seen: now,
        }
    }
}

/// Frees an eighth of a full shard (at least one place): spent clients first, then the idle ones least recently
/// seen. Clients with a request in progress stay. One pass frees many places, so the cost per new client stays
/// constant on average. `false`: nothing could be freed.
fn make_room(shard: &mut Shard, now: Instant, per_shard: usize) -> bool {
    let mut idle: Vec<(bool, Instant, IpAddr)> = shard
        .iter()
        .filter(|(_, slot)| slot.idle())
        .map(|(ip, slot)| (!slot.spent(now), slot.seen, *ip))
        .collect();
    if idle.is_empty() {
        return false;
    }
    let n = (per_shard / 8).clamp(1, idle.len());
    if n < idle.len() {
        idle.select_nth_unstable(n - 1);
    }
    for (_, _, ip) in &idle[..n] {
        shard.remove(ip);
    }
    true
}

/// A wait in whole seconds, rounded up, at least 1.
fn whole_secs_up(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http::HeaderValue;

    fn clients(toml: &str) -> Clients {
        Clients::new(&Config::from_toml_str(toml).unwrap().fair_use).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_table_without_a_per_client_limit() {
        assert!(Clients::new(&Config::default().fair_use).is_none());
        let c = Config::from_toml_str("[limits]\nchannel_max_holds = 3").unwrap();
        assert!(Clients::new(&c.fair_use).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_allows_the_burst_then_the_rate() {
        let c = clients("[limits]\nclient_requests_per_sec = 0.1\nclient_burst = 3");
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            c.admit_ip(a, Instant::now()).unwrap();
        }
        let refused = c.admit_ip(a, Instant::now()).unwrap_err();
        assert_eq!(refused.kind, Refused::ClientRate);
        assert_eq!(refused.retry_after, 10, "the next token is 10 s away");
        assert_eq!(
            refused.to_string(),
            "client_rate limit for client 192.0.2.1: limits.client_requests_per_sec = 0.1"
        );
        // Another client has its own bucket.
        c.admit_ip(ip("192.0.2.2"), Instant::now()).unwrap();
        tokio::time::advance(Duration::from_millis(2500)).await;
        let refused = c.admit_ip(a, Instant::now()).unwrap_err();
        assert_eq!(refused.retry_after, 8, "7.5 s rounded up");
        tokio::time::advance(Duration::from_millis(7500)).await;
        c.admit_ip(a, Instant::now()).unwrap();
        assert!(
            c.admit_ip(a, Instant::now()).is_err(),
            "one token came back"
        );
        // A long pause refills the bucket to the burst, no more.
        tokio::time::advance(Duration::from_secs(3600)).await;
        for _ in 0..3 {
            c.admit_ip(a, Instant::now()).unwrap();
        }
        assert!(c.admit_ip(a, Instant::now()).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn fast_rates_retry_after_at_least_a_second() {
        let c = clients("[limits]\nclient_requests_per_sec = 1000\nclient_burst = 1");
        let a = ip("192.0.2.1");
        c.admit_ip(a, Instant::now()).unwrap();
        assert_eq!(c.admit_ip(a, Instant::now()).unwrap_err().retry_after, 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        c.admit_ip(a, Instant::now()).unwrap();
    }

    #[tokio::test]
    async fn hold_places_are_counted_and_given_back() {
        let c = clients("[limits]\nclient_max_holds = 2");
        let admit = || {
            c.admit_ip(ip("192.0.2.1"), Instant::now())
                .unwrap()
                .unwrap()
        };
        let mut a = admit();
        a.park().unwrap();
        a.park().unwrap(); // one place per request
        let stream = a.hold().unwrap();
        let refused = a.hold().unwrap_err();
        assert_eq!(
            (refused.kind, refused.retry_after),
            (Refused::ClientHolds, 1)
        );
        let mut b = admit();
        assert!(b.park().is_err(), "the same client, another request");
        a.unpark();
        b.park().unwrap();
        assert!(admit().park().is_err());
        drop(stream);
        let mut d = admit();
        d.park().unwrap();
        drop((b, d)); // a request that ends gives its place back
        assert_eq!(a.entry.holds.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn the_table_stays_bounded_and_keeps_clients_in_progress() {
        // A rate limit, so that a client seen once is not spent at once: eviction is by least recently seen.
        let c = clients(
            "[limits]\nclient_max_holds = 1\nclient_requests_per_sec = 0.001\nclient_burst = 5\n\
             max_clients_tracked = 100000",
        );
        let now = Instant::now();
        // A client holding, then 100,000 others once each.
        let holder = c.admit_ip(ip("10.0.0.1"), now).unwrap().unwrap();
        let slot = holder.hold().unwrap();
        drop(holder);
        for i in 0..100_000u32 {
            let addr = IpAddr::from(u32::to_be_bytes(0x0b00_0000 + i));
            let _ = c.admit_ip(addr, now).unwrap();
        }
        assert!(c.tracked() <= 100_000, "{}", c.tracked());
        assert!(c.tracked() > 50_000, "{}", c.tracked());
        let again = c.admit_ip(ip("10.0.0.1"), now).unwrap().unwrap();
        assert!(
            again.hold().is_err(),
            "the holding client was kept, with its count"
        );
        drop(slot);
        again.hold().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_table_full_of_clients_in_progress_serves_the_next_untracked_and_counts_it() {
        let c = clients("[limits]\nclient_max_holds = 1\nmax_clients_tracked = 16");
        assert_eq!(c.inner.shards.len(), 1);
        // Sixteen clients each with a hold in progress: none may be evicted.
        let held: Vec<_> = (0..16u8)
            .map(|i| {
                let client = c
                    .admit_ip(IpAddr::from([192, 0, 2, i]), Instant::now())
                    .unwrap()
                    .unwrap();
                let slot = client.hold().unwrap();
                (client, slot)
            })
            .collect();
        assert_eq!(c.untracked(), 0);
        let stranger = c.admit_ip(ip("198.51.100.1"), Instant::now()).unwrap();
        assert!(stranger.is_some(), "served, with limits of its own");
        assert_eq!(c.tracked(), 16);
        assert_eq!(c.untracked(), 1);
        drop(held);
        c.admit_ip(ip("198.51.100.1"), Instant::now()).unwrap();
        assert_eq!(c.untracked(), 1, "room again: tracked");
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_takes_the_least_recently_seen_and_the_sweep_the_spent() {
        let c = clients(
            "[limits]\nclient_requests_per_sec = 1\nclient_burst = 1\nmax_clients_tracked = 16",
        );
        assert_eq!(c.inner.shards.len(), 1);
        for i in 0..16u8 {
            c.admit_ip(IpAddr::from([192, 0, 2, i]), Instant::now())
                .unwrap();
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        assert_eq!(c.tracked(), 16);
        // Full: 2 (an eighth) are evicted, the two seen first.
        c.admit_ip(ip("198.51.100.1"), Instant::now()).unwrap();
        assert_eq!(c.tracked(), 15);
        assert!(
            c.admit_ip(IpAddr::from([192, 0, 2, 0]), Instant::now())
                .is_ok(),
            "evicted: a fresh bucket"
        );
        assert!(
            c.admit_ip(IpAddr::from([192, 0, 2, 5]), Instant::now())
                .is_err(),
            "kept: still limited"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        c.sweep(Instant::now());
        assert_eq!(c.tracked(), 0, "every bucket is full again");
    }

    /// The cost of [`Clients::admit`] per request (run with `--release --ignored --nocapture`): one client
    /// (every request on one shard's lock), 100,000 distinct ones through a trusted `X-Forwarded-For` cycling
    /// through a full table, and 50,000 of them that fit.
    #[tokio::test]
    #[ignore = "a measurement, not a check"]
    async fn admit_cost() {
        const N: u32 = 2_000_000;
        let c = clients(
            "[limits]\nclient_max_holds = 100\nclient_requests_per_sec = 1000000\nclient_burst = 100000000\n\
             trusted_proxies = [\"127.0.0.1\"]",
        );
        let none = HeaderMap::new();
        let peer = ip("127.0.0.1");
        let started = Instant::now();
        for _ in 0..N {
            let mut client = c.admit(ip("192.0.2.1"), &none, Instant::now()).ok();
            std::hint::black_box(&mut client);
        }
        let one = started.elapsed() / N;
        let headers: Vec<HeaderMap> = (0..100_000u32)
            .map(|i| {
                let mut h = HeaderMap::new();
                let addr = IpAddr::from(u32::to_be_bytes(0x0b00_0000 + i));
                h.insert(
                    "x-forwarded-for",
                    HeaderValue::from_str(&addr.to_string()).unwrap(),
                );
                h
            })
            .collect();
        let started = Instant::now();
        for i in 0..N {
            let h = &headers[(i % 100_000) as usize];
            let mut client = c.admit(peer, h, Instant::now()).ok();
            std::hint::black_box(&mut client);
        }
        let many = started.elapsed() / N;
        let started = Instant::now();
        for i in 0..N {
            let h = &headers[(i % 50_000) as usize];
            let mut client = c.admit(peer, h, Instant::now()).ok();
            std::hint::black_box(&mut client);
        }
        let fits = started.elapsed() / N;
        let started = Instant::now();
        for _ in 0..N {
            std::hint::black_box(Instant::now());
        }
        let clock = started.elapsed() / N;
        println!(
            "admit: one client {one:?}; 100,000 clients via X-Forwarded-For (the table full: evictions) {many:?}; \
             50,000 of them (no evictions) {fits:?}; a clock read alone {clock:?}; {} tracked",
            c.tracked()
        );
    }

    #[test]
    fn identify_by_trusted_forwarded_for() {
        let trusted =
            [
                Config::from_toml_str("[limits]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]")
                    .unwrap()
                    .fair_use
                    .trusted_proxies,
            ]
            .concat();
        let with = |lines: &[&str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append("x-forwarded-for", HeaderValue::from_str(l).unwrap());
            }
            h
        };
        let id = |peer: &str, lines: &[&str]| identify(ip(peer), &with(lines), &trusted);
        assert_eq!(
            id("192.0.2.9", &["1.2.3.4"]),
            ip("192.0.2.9"),
            "untrusted peer"
        );
        assert_eq!(id("10.1.1.1", &[]), ip("10.1.1.1"), "no header");
        assert_eq!(id("10.1.1.1", &["1.2.3.4"]), ip("1.2.3.4"));
        assert_eq!(
            id("10.1.1.1", &["6.6.6.6, 1.2.3.4, 10.9.9.9"]),
            ip("1.2.3.4"),
            "right-most untrusted"
        );
        assert_eq!(
            id("10.1.1.1", &["6.6.6.6", "1.2.3.4:567"]),
            ip("1.2.3.4"),
            "lines in order, ports"
        );
        assert_eq!(id("::1", &["[2001:db8::1]:80"]), ip("2001:db8::1"));
        assert_eq!(
            id("::ffff:10.0.0.1", &["1.2.3.4"]),
            ip("1.2.3.4"),
            "mapped peer"
        );
        assert_eq!(
            id("10.1.1.1", &["1.2.3.4, unknown, 10.2.2.2"]),
            ip("10.2.2.2"),
            "a non-address stops at the last trusted hop"
        );
        assert_eq!(
            id("10.1.1.1", &["10.3.3.3, 10.2.2.2"]),
            ip("10.3.3.3"),
            "all trusted"
        );
    }
}
