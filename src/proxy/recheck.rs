//! Coalesced re-checks of held conditional requests (`[routes.conditional] recheck_secs`): held requests that
//! agree on everything the origin's answer depends on form a group; one origin request per interval answers them all.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use http::{header, HeaderMap, HeaderName, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use tokio::time::{Instant, MissedTickBehavior};

use super::{conditional, headers, ProxyState};
use crate::body;
use crate::grip::{self, ResponseParts};
use crate::hold::OWN_CHANNEL;
use crate::item::{Action, HttpResponse, Item};
use crate::metrics::Recheck;
use crate::tls::client::OriginTls;

/// Numbers groups (their channel names) and makes unshareable keys unique: one count for the process, so that the
/// groups of states before and after a reload, which share one registry, never share a channel.
static NEXT_GROUP: AtomicU64 = AtomicU64::new(0);

/// The groups of one proxy state, by key.
#[derive(Default)]
pub(crate) struct Rechecks {
    groups: DashMap<Box<[u8]>, Arc<Group>, ahash::RandomState>,
    /// The answers groups were just released with, by route and target: what their clients ask next.
    fresh: DashMap<Box<[u8]>, Vec<Fresh>, ahash::RandomState>,
}

/// A shared answer a group was just released with, as the `304` its members' next requests would get: those
/// requests (their conditional headers now naming its validators) are held without asking the origin, until
/// `until`. A change after it is found by the next group's first re-check, one interval after it is formed.
struct Fresh {
    /// The answer's `Vary`, to compute a request's group key as the origin would vary it.
    vary: HeaderMap,
    /// The group key of the members' next requests.
    key: Vec<u8>,
    /// The `304` they would get: the answer's validators and caching headers.
    held: Arc<ResponseParts>,
    until: Instant,
}

/// The headers a `304` carries from the `200` it stands for (RFC 9110, 15.4.5).
const NOT_MODIFIED_HEADERS: [HeaderName; 7] = [
    header::ETAG,
    header::LAST_MODIFIED,
    header::CACHE_CONTROL,
    header::VARY,
    header::EXPIRES,
    header::CONTENT_LOCATION,
    header::DATE,
];

/// Held requests answered by one re-check.
struct Group {
    /// The registry channel its members wait on besides their own: a re-check's answer is published there.
    channel: Box<str>,
    /// Members held now. Raised under the map's entry lock (join) and checked under it (removal), so that a group
    /// is removed only when empty, and a member never joins a group that is gone.
    members: AtomicUsize,
}

/// A held request's place in its group; leaving the hold (answer, timeout, client gone) drops it.
pub(crate) struct Member {
    group: Arc<Group>,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.group.members.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Member {
    /// The group's channel, to hold on beside the request's own.
    pub(crate) fn channel(&self) -> &str {
        &self.group.channel
    }
}

/// The request a group's re-checks send: the first member's, as it went to the origin.
pub(crate) struct Probe {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub tls: Option<OriginTls>,
    /// The route's index (its `Grip-Sig` signer, fresh for each re-check).
    pub route: usize,
    /// Interval between re-checks.
    pub every: Duration,
}

impl Rechecks {
    /// The `304` for a conditional `GET` whose validators are those of an answer a group of equal requests was
    /// just released with (at most half an interval ago): held without asking the origin. `None`: ask it.
    pub(crate) fn unasked(
        &self,
        route: usize,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Option<Arc<ResponseParts>> {
        if *method != Method::GET {
            return None;
        }
        let now = Instant::now();
        let fresh = self.fresh.get(&*target_key(route, uri, headers))?;
        fresh
            .iter()
            .filter(|f| f.until > now)
            .find(|f| {
                conditional::group_key(route, method, uri, headers, &f.vary).as_ref()
                    == Some(&f.key)
            })
            .map(|f| f.held.clone())
    }

    /// Records what the members of a group released with `answer` will ask next (see [`Fresh`]); returns its key,
    /// for [`Rechecks::forget`].
    fn remember(&self, probe: &Probe, answer: &ResponseParts) -> Option<Vec<u8>> {
        let mut next = probe.headers.clone();
        for (asked, validator) in [
            (header::IF_NONE_MATCH, header::ETAG),
            (header::IF_MODIFIED_SINCE, header::LAST_MODIFIED),
        ] {
            if next.contains_key(&asked) {
                match answer.headers.get(&validator) {
                    Some(value) => next.insert(asked, value.clone()),
                    // The next request's validator cannot be known: it is asked of the origin.
                    None => return None,
                };
            }
        }
        let key = conditional::group_key(
            probe.route,
            &probe.method,
            &probe.uri,
            &next,
            &answer.headers,
        )?;
        let mut held = HeaderMap::new();
        for name in &NOT_MODIFIED_HEADERS {
            for value in answer.headers.get_all(name) {
                held.append(name.clone(), value.clone());
            }
        }
        let vary = answer
            .headers
            .get_all(header::VARY)
            .iter()
            .map(|v| (header::VARY, v.clone()))
            .collect();
        let now = Instant::now();
        let fresh = Fresh {
            vary,
            key,
            held: Arc::new(ResponseParts {
                status: StatusCode::NOT_MODIFIED,
                reason: None,
                headers: held,
                body: Bytes::new(),
            }),
            until: now + probe.every / 2,
        };
        let kept = fresh.key.clone();
        let mut list = self
            .fresh
            .entry(target_key(probe.route, &probe.uri, &probe.headers))
            .or_default();
        list.retain(|f| f.until > now && f.key != fresh.key);
        list.push(fresh);
        Some(kept)
    }

    /// Forgets the answer a group recorded with [`Rechecks::remember`] (the group moves on, or ends): each entry
    /// lives at most as long as the group that made it.
    fn forget(&self, probe: &Probe, key: &[u8]) {
        self.fresh.remove_if_mut(
            &*target_key(probe.route, &probe.uri, &probe.headers),
            |_, list| {
                list.retain(|f| f.key != key);
                list.is_empty()
            },
        );
    }

    /// Joins the group of `key` (`None`: a request that may share with no other, in a group of its own), making
    /// it, and starting its re-checks on this runtime, if it is new.
    pub(crate) fn join(
        state: &Arc<ProxyState>,
        key: Option<Vec<u8>>,
        probe: impl FnOnce() -> Option<Probe>,
    ) -> Option<Member> {
        let this = &state.rechecks;
        let key: Box<[u8]> = match key {
            Some(key) => key.into(),
            None => {
                let mut unique = b"unshared:".to_vec();
                unique.extend_from_slice(&NEXT_GROUP.fetch_add(1, Ordering::Relaxed).to_le_bytes());
                unique.into()
            }
        };
        // The count is raised while the entry is locked: the group's task removes it under the same lock only
        // when it finds no member.
        let group = match this.groups.entry(key.clone()) {
            dashmap::Entry::Occupied(e) => {
                e.get().members.fetch_add(1, Ordering::AcqRel);
                e.get().clone()
            }
            dashmap::Entry::Vacant(e) => {
                let probe = probe()?;
                let n = NEXT_GROUP.fetch_add(1, Ordering::Relaxed);
                let group = Arc::new(Group {
                    channel: format!("{OWN_CHANNEL}recheck:{n}").into(),
                    members: AtomicUsize::new(1),
                });
                e.insert(group.clone());
                tokio::spawn(run(state.clone(), key, group.clone(), probe));
                group
            }
        };
        Some(Member { group })
    }
}

/// A group's re-checks: every `probe.every`, until it has no member left.
async fn run(state: Arc<ProxyState>, key: Box<[u8]>, group: Arc<Group>, probe: Probe) {
    let mut tick = tokio::time::interval_at(Instant::now() + probe.every, probe.every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let groups = &state.rechecks.groups;
    // The answer this group last left for its clients' next requests, taken back when it ends.
    let mut remembered: Option<Vec<u8>> = None;
    loop {
        tick.tick().await;
        // Only this group, and only when empty; a group that is no longer in the map (shutdown) ends too.
        let ours = |g: &Arc<Group>| Arc::ptr_eq(g, &group);
        let empty = groups.remove_if(&key, |_, g| {
            ours(g) && (g.members.load(Ordering::Acquire) == 0 || state.registry.is_closed())
        });
        let gone = empty.is_some() || !groups.get(&key).is_some_and(|g| ours(&g));
        if gone {
            if let Some(fresh) = remembered.take() {
                state.rechecks.forget(&probe, &fresh);
            }
            return;
        }
        let (result, action) = check(&state, &key, &probe).await;
        state.metrics.recheck(result);
        let released = match action {
            Some(action) => {
                if result == Recheck::Shared {
                    // Before the release: the released clients' next requests find it.
                    if let Some(fresh) = remembered.take() {
                        state.rechecks.forget(&probe, &fresh);
                    }
                    remembered = state.rechecks.remember(&probe, &action.parts);
                }
                let item = Arc::new(Item {
                    channel: group.channel.clone(),
                    id: None,
                    prev_id: None,
                    no_seq: true,
                    http_response: Some(action),
                    http_stream: None,
                    accepted: Instant::now(),
                });
                state.registry.publish(&item)
            }
            None => 0,
        };
        state.metrics.recheck_released(released);
        tracing::debug!(
            channel = %&group.channel[1..], result = ?result, released,
            members = group.members.load(Ordering::Relaxed), "conditional holds re-checked"
        );
    }
}

/// One re-check: the probe sent to the origin, and what to release the group with (`None`: nothing).
async fn check(state: &ProxyState, key: &[u8], probe: &Probe) -> (Recheck, Option<HttpResponse>) {
    let mut req = Request::new(body::empty());
    *req.method_mut() = probe.method.clone();
    *req.uri_mut() = probe.uri.clone();
    *req.headers_mut() = probe.headers.clone();
    if let Some(route) = state.routes.by_index(probe.route) {
        req.headers_mut()
            .insert(HeaderName::from_static("grip-sig"), route.signer.header());
    }
    if let Some(tls) = &probe.tls {
        req.extensions_mut().insert(tls.clone());
    }
    let sent = Instant::now();
    let resp = match state.forwarder.send(req).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(uri = %probe.uri, error = %e, "conditional re-check failed; clients stay held");
            return (Recheck::Failed, None);
        }
    };
    state.metrics.origin_latency(sent.elapsed());
    let (mut parts, body) = resp.into_parts();
    if parts.status == StatusCode::NOT_MODIFIED {
        return (Recheck::Unchanged, None);
    }
    if parts.status.is_server_error() {
        tracing::warn!(uri = %probe.uri, status = parts.status.as_u16(), "conditional re-check answered with a server error; clients stay held");
        return (Recheck::Failed, None);
    }
    let hint = HttpResponse {
        action: Action::Hint,
        parts: ResponseParts {
            status: StatusCode::OK,
            reason: None,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        },
    };
    // A `HEAD` answer's framing headers describe a body it does not have: each client asks for its own. So does
    // an answer whose `Vary` differs from the `304`'s the group was formed by: its members may differ in a header
    // it varies on.
    let same_vary = conditional::group_key(
        probe.route,
        &probe.method,
        &probe.uri,
        &probe.headers,
        &parts.headers,
    )
    .is_some_and(|k| k == key);
    if !shareable(&parts.headers) || probe.method == Method::HEAD || !same_vary {
        return (Recheck::Refetched, Some(hint));
    }
    let limit = state.hold.max_body;
    let read = tokio::time::timeout(
        state.forwarder.response_timeout(),
        Limited::new(body, limit).collect(),
    )
    .await;
    let body = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        // Too large to keep for everyone, or cut short: each client asks for its own.
        _ => return (Recheck::Refetched, Some(hint)),
    };
    headers::to_client(&mut parts.headers);
    parts.headers.remove(header::CONTENT_LENGTH);
    let reason = headers::reason(&parts);
    let answer = HttpResponse {
        action: Action::Send,
        parts: ResponseParts {
            status: parts.status,
            reason,
            headers: parts.headers,
            body,
        },
    };
    (Recheck::Shared, Some(answer))
}

/// Whether one answer may go to every member of a group: not `Cache-Control: private` or `no-store` (a shared
/// cache may not keep those), no `Set-Cookie` (meant for one client), and no GRIP instructions (the origin
/// speaks GRIP after all: each client's own request is sent, and held as the origin says).
fn shareable(headers: &HeaderMap) -> bool {
    let private = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| {
            d.trim()
                .split('=')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        })
        .any(|d| d == "private" || d == "no-store");
    let grip = headers.contains_key("grip-hold")
        || headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with(grip::instruct::CONTENT_TYPE));
    !private && !headers.contains_key(header::SET_COOKIE) && !grip
}

/// The key of a route's target (`Host`, path and query) in [`Rechecks::fresh`].
fn target_key(route: usize, uri: &Uri, headers: &HeaderMap) -> Box<[u8]> {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let host = headers.get(header::HOST).map_or(&b""[..], |h| h.as_bytes());
    let mut key = (route as u64).to_le_bytes().to_vec();
    key.extend_from_slice(&(host.len() as u64).to_le_bytes());
    key.extend_from_slice(host);
    key.extend_from_slice(target.as_bytes());
    key.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_no_store_cookies_and_grip_answers_are_never_shared() {
        let with = |name: &str, value: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
            h
        };
        assert!(shareable(&HeaderMap::new()));
        assert!(shareable(&with("cache-control", "public, max-age=5")));
        assert!(!shareable(&with("cache-control", "max-age=0, Private")));
        assert!(!shareable(&with("cache-control", "no-store")));
        assert!(!shareable(&with("cache-control", "private=\"x\"")));
        assert!(!shareable(&with("set-cookie", "s=1")));
        assert!(!shareable(&with("grip-hold", "response")));
    }
}
