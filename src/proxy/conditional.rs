//! Conditional holds, for an origin that speaks no GRIP (`[routes.conditional]`): a `GET` or `HEAD` with
//! `If-None-Match` or `If-Modified-Since` that the origin answers `304` is held on a channel named from the request.

use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, Method, Uri};

use crate::config::ConditionalConfig;
use crate::grip::{ChannelSub, Hold, HoldMode};
use crate::hold::OWN_CHANNEL;
use crate::routes::{strip_port, Route};

/// A request that may become a conditional hold: kept on the heap with the request's re-sendable copy.
#[derive(Debug)]
pub(crate) struct Conditional {
    /// The route's settings.
    pub config: Arc<ConditionalConfig>,
    /// The channel it is held on, expanded from the route's template.
    pub channel: Box<str>,
    /// The route's index in the config (re-checks sign with its signer; groups never span routes).
    pub route: usize,
}

/// The conditional hold this request may become: on a route with `[routes.conditional]`, a `GET` or `HEAD`
/// with `If-None-Match` or `If-Modified-Since`. Anything else passes through as ever.
pub(crate) fn of(
    route: &Route,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Option<Box<Conditional>> {
    let config = route.conditional.as_ref()?;
    if *method != Method::GET && *method != Method::HEAD {
        return None;
    }
    if !headers.contains_key(header::IF_NONE_MATCH)
        && !headers.contains_key(header::IF_MODIFIED_SINCE)
    {
        return None;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.host())
        .map_or("", strip_port);
    // A host name or address only: `Host: a.com/items` must not name the channel of `a.com` and `/items/..`.
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
    {
        return None;
    }
    let channel = config
        .channel
        .expand(host, uri.path(), uri.query().unwrap_or(""));
    if channel.starts_with(OWN_CHANNEL) {
        return None; // never one of the proxy's own channels, whatever the request says
    }
    Some(Box::new(Conditional {
        config: config.clone(),
        channel: channel.into(),
        route: route.index,
    }))
}

impl Conditional {
    /// The hold of a request the origin answered `304`: a response hold on its channel for the route's timeout.
    pub(crate) fn hold(&self) -> Hold {
        Hold {
            mode: HoldMode::Response,
            channels: vec![ChannelSub {
                name: self.channel.clone(),
                prev_id: None,
                filters: Vec::new(),
            }],
            timeout: Some(self.config.timeout),
            stream: None,
        }
    }
}

/// The headers requests must agree on to share one re-check: the conditional headers, the credentials
/// (`Authorization`, `Cookie`: a response is never shared across different ones), and every header the origin
/// named in `Vary`. `None` for `Vary: *` (the origin varies on anything: never shared).
pub(crate) fn group_key(
    route: usize,
    method: &Method,
    uri: &Uri,
    request: &HeaderMap,
    vary: &HeaderMap,
) -> Option<Vec<u8>> {
    let mut names: Vec<String> = Vec::new();
    for value in vary.get_all(header::VARY) {
        for name in value.to_str().unwrap_or("*").split(',') {
            let name = name.trim().to_ascii_lowercase();
            if name == "*" {
                return None;
            }
            if !name.is_empty() {
                names.push(name);
            }
        }
    }
    // The host (name-based virtual hosts), the conditional and range headers (a server never lists them in
    // `Vary`), and the credentials.
    for always in [
        "host",
        "if-none-match",
        "if-modified-since",
        "if-match",
        "if-unmodified-since",
        "range",
        "if-range",
        "authorization",
        "cookie",
    ] {
        names.push(always.to_owned());
    }
    names.sort_unstable();
    names.dedup();
    let mut key = Vec::with_capacity(128);
    let mut put = |bytes: &[u8]| {
        key.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        key.extend_from_slice(bytes);
    };
    put(&(route as u64).to_le_bytes());
    put(method.as_str().as_bytes());
    put(uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    for name in &names {
        put(name.as_bytes());
        let values: Vec<&HeaderValue> = request.get_all(name.as_str()).iter().collect();
        put(&(values.len() as u64).to_le_bytes());
        for value in values {
            put(value.as_bytes());
        }
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        list.iter()
            .map(|(n, v)| {
                (
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn requests_share_a_group_only_when_everything_the_answer_depends_on_is_equal() {
        let uri: Uri = "http://o/items?a=1".parse().unwrap();
        let key = |req: &[(&str, &str)], vary: &[(&str, &str)]| {
            group_key(0, &Method::GET, &uri, &headers(req), &headers(vary))
        };
        let base = [("if-none-match", "\"1\""), ("user-agent", "a")];
        let same = key(&base, &[]);
        assert!(same.is_some());
        assert_eq!(
            key(&[("if-none-match", "\"1\""), ("user-agent", "b")], &[]),
            same,
            "a header the origin does not vary on is not part of it"
        );
        assert_ne!(
            key(&[("if-none-match", "\"2\"")], &[]),
            same,
            "another ETag"
        );
        assert_ne!(
            key(
                &[("if-none-match", "\"1\""), ("authorization", "Bearer x")],
                &[]
            ),
            same,
            "other credentials"
        );
        assert_ne!(
            key(&[("if-none-match", "\"1\""), ("cookie", "s=1")], &[]),
            same
        );
        let en = key(
            &[("if-none-match", "\"1\""), ("accept-language", "en")],
            &[("vary", "Accept-Language")],
        );
        let fr = key(
            &[("if-none-match", "\"1\""), ("accept-language", "fr")],
            &[("vary", "accept-encoding, Accept-Language")],
        );
        assert_ne!(en, fr, "a Vary-listed header differs");
        assert_eq!(
            key(&base, &[("vary", "*")]),
            None,
            "Vary: * is never shared"
        );
        let head = group_key(0, &Method::HEAD, &uri, &headers(&base), &HeaderMap::new());
        assert_ne!(head, same, "the method");
        let other_route = group_key(1, &Method::GET, &uri, &headers(&base), &HeaderMap::new());
        assert_ne!(other_route, same, "the route");
    }
}
