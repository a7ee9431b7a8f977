//! GRIP instructions: what an origin asks of the proxy (hold, channels, timeout, status), parsed from response
//! headers or an `application/grip-instruct` body, and the response parts a hold answers with.

pub(crate) mod instruct;
pub(crate) mod json;
pub(crate) mod parse;
pub(crate) mod sig;
pub(crate) mod stream;

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::body::{self, Body};

/// Pushpin's cap on channels per hold; a hold naming more is an origin error.
pub(crate) const DEFAULT_MAX_CHANNELS: usize = 20;

/// An invalid GRIP instruction. Names the header (or instruct field) and the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason} (value {value:?})")]
pub(crate) struct GripError {
    /// The header or instruct field, e.g. `Grip-Timeout` or `hold.channels[0].name`.
    pub field: String,
    /// The value as received (truncated to 100 bytes).
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl GripError {
    pub(crate) fn new(field: impl Into<String>, value: &str, reason: impl Into<String>) -> Self {
        let value = match value.char_indices().nth(100) {
            Some((i, _)) => format!("{}…", &value[..i]),
            None => value.to_owned(),
        };
        GripError {
            field: field.into(),
            value,
            reason: reason.into(),
        }
    }
}

/// The first character of the channels the proxy makes for itself (a group of conditional holds re-checked
/// together). No origin instruction, `Grip-Channel` header or publish may name one (each is refused), so only the
/// proxy can hold clients on them or release them; listings leave them out.
pub(crate) const OWN_CHANNEL: char = '\u{1}';

/// One channel a hold subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelSub {
    /// Channel name, as published to.
    pub name: Box<str>,
    /// The id of the last item the origin knows on this channel, if it said.
    pub prev_id: Option<Box<str>>,
    /// Filter names (parsed and kept; response holds do not apply any).
    pub filters: Vec<Box<str>>,
}

/// Collects a hold's channels: de-duplicated by name (the first mention wins), refused as soon as there are
/// more distinct names than allowed. Linear in the names given, however many: a list of thousands costs no more
/// than reading it.
pub(crate) struct Channels {
    list: Vec<ChannelSub>,
    /// Names in `list`, once it is too long to scan (a handful of channels is the common case).
    seen: Option<std::collections::HashSet<Box<str>>>,
    max: usize,
}

/// A hold naming more distinct channels than allowed (the limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many channels (more than {0}, at most hold.max_channels)")]
pub(crate) struct TooManyChannels(pub(crate) usize);

/// Channels scanned one by one for duplicates; past this many, a set is built.
const SCAN_UP_TO: usize = 8;

impl Channels {
    pub(crate) fn new(max: usize) -> Self {
        Channels {
            list: Vec::new(),
            seen: None,
            max,
        }
    }

    /// Adds one channel unless its name is already there. `Err`: one distinct name too many.
    pub(crate) fn add(&mut self, sub: ChannelSub) -> Result<(), TooManyChannels> {
        let known = match &self.seen {
            Some(set) => set.contains(&sub.name),
            None => self.list.iter().any(|c| c.name == sub.name),
        };
        if known {
            return Ok(());
        }
        if self.list.len() >= self.max {
            return Err(TooManyChannels(self.max));
        }
        if let Some(set) = &mut self.seen {
            set.insert(sub.name.clone());
        } else if self.list.len() >= SCAN_UP_TO {
            let mut set: std::collections::HashSet<Box<str>> =
                self.list.iter().map(|c| c.name.clone()).collect();
            set.insert(sub.name.clone());
            self.seen = Some(set);
        }
        self.list.push(sub);
        Ok(())
    }

    /// The channels, in the order first given. `Err`: there were none.
    pub(crate) fn finish(self) -> Result<Vec<ChannelSub>, &'static str> {
        if self.list.is_empty() {
            return Err("needs at least one channel");
        }
        Ok(self.list)
    }
}

/// How a hold treats the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HoldMode {
    /// One published item, or the timeout, ends the request.
    Response,
    /// The response stays open and published content is appended.
    Stream,
}

/// A hold instruction: which channels, for how long. The held response travels beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hold {
    /// Response or stream.
    pub mode: HoldMode,
    /// The channels, deduplicated by name, in the order given.
    pub channels: Vec<ChannelSub>,
    /// The timeout the origin asked for, before the configured floor and ceiling are applied.
    pub timeout: Option<Duration>,
    /// Keep-alive and links of a stream hold, when any were given.
    pub stream: Option<Box<stream::StreamInstruction>>,
}

/// A response in parts: the held (timeout) response, or a published `http-response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResponseParts {
    /// The status code.
    pub status: StatusCode,
    /// A custom reason phrase, already checked to be valid on the wire.
    pub reason: Option<Bytes>,
    /// Headers, with no `Grip-*`, hop-by-hop or framing headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl ResponseParts {
    /// The release of a held response by a published one: the item's status and reason replace the held ones, its
    /// headers replace held headers of the same name (the rest carry over), its body replaces the held body.
    pub(crate) fn merge(&self, item: &ResponseParts) -> ResponseParts {
        let mut headers = self.headers.clone();
        let mut last: Option<&HeaderName> = None;
        for (name, value) in &item.headers {
            if last != Some(name) {
                headers.remove(name);
                last = Some(name);
            }
            headers.append(name.clone(), value.clone());
        }
        ResponseParts {
            status: item.status,
            reason: item.reason.clone(),
            headers,
            body: item.body.clone(),
        }
    }

    /// Builds the HTTP response, with `Content-Length` computed from the body (none, and no body, for statuses
    /// that cannot carry one).
    pub(crate) fn to_response(&self) -> Response<Body> {
        self.clone().into_response()
    }

    /// As [`ResponseParts::to_response`], consuming the parts (no copy of the headers: this is the release path,
    /// run once per released client).
    pub(crate) fn into_response(self) -> Response<Body> {
        let no_body = self.status.is_informational()
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED;
        let mut headers = self.headers;
        if no_body {
            headers.remove(header::CONTENT_LENGTH);
        } else {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        }
        let mut resp = Response::new(if no_body {
            body::empty()
        } else {
            body::full(self.body)
        });
        *resp.status_mut() = self.status;
        *resp.headers_mut() = headers;
        if let Some(reason) = self.reason {
            if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(reason) {
                resp.extensions_mut().insert(phrase);
            }
        }
        resp
    }
}

/// Whether a header is a GRIP instruction or signature (`Grip-*`), which never crosses the proxy.
pub(crate) fn is_grip_header(name: &HeaderName) -> bool {
    name.as_str().starts_with("grip-")
}

/// Removes every `Grip-*` header.
pub(crate) fn strip_grip_headers(headers: &mut HeaderMap) {
    let grip: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_grip_header(n))
        .cloned()
        .collect();
    for name in grip {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(status: u16, headers: &[(&str, &str)], body: &str) -> ResponseParts {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        ResponseParts {
            status: StatusCode::from_u16(status).unwrap(),
            reason: None,
            headers: map,
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn merge_overrides_same_names_and_keeps_the_rest() {
        let held = parts(304, &[("etag", "\"v1\""), ("x-a", "1"), ("x-a", "2")], "");
        let item = parts(200, &[("x-a", "3"), ("content-type", "text/plain")], "new");
        let merged = held.merge(&item);
        assert_eq!(merged.status, StatusCode::OK);
        assert_eq!(merged.headers["etag"], "\"v1\"");
        let xa: Vec<_> = merged.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, vec!["3"]);
        assert_eq!(merged.body, "new");
    }

    #[test]
    fn no_body_statuses_drop_body_and_length() {
        let resp = parts(304, &[("content-length", "5")], "hello").to_response();
        assert!(resp.headers().get("content-length").is_none());
        let resp = parts(200, &[], "hello").to_response();
        assert_eq!(resp.headers()["content-length"], "5");
    }

    #[test]
    fn strips_grip_headers() {
        let mut h = parts(
            200,
            &[("grip-hold", "response"), ("x", "1"), ("Grip-Sig", "a")],
            "",
        )
        .headers;
        strip_grip_headers(&mut h);
        assert_eq!(h.len(), 1);
    }
}
