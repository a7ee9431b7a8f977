//! GRIP instructions from response headers (`Grip-Hold`, `Grip-Channel`, `Grip-Timeout`, `Grip-Status`): pure
//! functions over a `HeaderMap`, no IO.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use super::{ChannelSub, GripError, Hold, HoldMode};

/// What the headers of one origin response instruct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderInstruction {
    /// The hold.
    pub hold: Hold,
    /// `Grip-Status`: the status (and reason) to give the client instead of the response's own.
    pub status: Option<(StatusCode, Option<Bytes>)>,
}

/// Parses the hold instructions of a response. `Ok(None)` when there is no `Grip-Hold` header (any other `Grip-*`
/// header is then only stripped).
pub(crate) fn from_headers(
    headers: &HeaderMap,
    max_channels: usize,
) -> Result<Option<HeaderInstruction>, GripError> {
    let Some(hold) = headers.get("grip-hold") else {
        return Ok(None);
    };
    let hold_str = text("Grip-Hold", hold.as_bytes())?;
    let mode = match hold_str.trim() {
        "response" => HoldMode::Response,
        "stream" => HoldMode::Stream,
        other => {
            return Err(GripError::new(
                "Grip-Hold",
                other,
                "unknown hold mode (expected response or stream)",
            ))
        }
    };
    let mut channels = super::Channels::new(max_channels);
    for value in headers.get_all("grip-channel") {
        for sub in channel_list(text("Grip-Channel", value.as_bytes())?)? {
            channels
                .add(sub)
                .map_err(|e| GripError::new("Grip-Channel", "", e.to_string()))?;
        }
    }
    let channels = channels
        .finish()
        .map_err(|reason| GripError::new("Grip-Channel", "", format!("Grip-Hold {reason}")))?;
    let timeout = match headers.get("grip-timeout") {
        None => None,
        Some(v) => Some(timeout(text("Grip-Timeout", v.as_bytes())?)?),
    };
    let status = match headers.get("grip-status") {
        None => None,
        Some(v) => Some(status(text("Grip-Status", v.as_bytes())?)?),
    };
    let stream = match mode {
        HoldMode::Stream => Some(super::stream::from_headers(headers)?).filter(|s| !s.is_empty()),
        HoldMode::Response => None,
    };
    Ok(Some(HeaderInstruction {
        hold: Hold {
            mode,
            channels,
            timeout,
            stream: stream.map(Box::new),
        },
        status,
    }))
}

fn text<'a>(header: &str, bytes: &'a [u8]) -> Result<&'a str, GripError> {
    std::str::from_utf8(bytes)
        .map_err(|_| GripError::new(header, &String::from_utf8_lossy(bytes), "not UTF-8"))
}

/// Parses `name[; prev-id=ID][; filter=F], name2...`.
pub(crate) fn channel_list(value: &str) -> Result<Vec<ChannelSub>, GripError> {
    let mut out = Vec::new();
    for entry in value.split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        let mut params = entry.split(';');
        let name = params.next().unwrap_or("").trim();
        if name.is_empty() {
            return Err(GripError::new("Grip-Channel", value, "empty channel name"));
        }
        if name.starts_with(super::OWN_CHANNEL) {
            return Err(GripError::new(
                "Grip-Channel",
                value,
                "a name starting with U+0001 is the proxy's own",
            ));
        }
        let mut sub = ChannelSub {
            name: name.into(),
            prev_id: None,
            filters: Vec::new(),
        };
        for (key, val) in params_of(params) {
            match key {
                "prev-id" => sub.prev_id = Some(val.into()),
                "filter" => sub.filters.push(val.into()),
                _ => {} // unknown parameters are ignored, as Pushpin does
            }
        }
        out.push(sub);
    }
    Ok(out)
}

/// The `key=value` parameters of a header entry (the parts after its first `;`), keys trimmed, values trimmed
/// and unquoted, empty parts skipped; a key without `=` has an empty value.
pub(super) fn params_of<'a>(
    parts: impl Iterator<Item = &'a str>,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    parts.map(str::trim).filter(|p| !p.is_empty()).map(|p| {
        let (key, val) = p.split_once('=').unwrap_or((p, ""));
        (key.trim(), unquote(val.trim()))
    })
}

pub(super) fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
}

/// Parses `Grip-Timeout`: whole seconds, not negative.
pub(crate) fn timeout(value: &str) -> Result<Duration, GripError> {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| GripError::new("Grip-Timeout", value, "not a whole number of seconds"))
}

/// Parses `Grip-Status: CODE [reason]`.
pub(crate) fn status(value: &str) -> Result<(StatusCode, Option<Bytes>), GripError> {
    let value_t = value.trim();
    let (code, reason) = match value_t.split_once(' ') {
        Some((c, r)) => (c, r.trim()),
        None => (value_t, ""),
    };
    let code = code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| GripError::new("Grip-Status", value, "not a final status code (200-599)"))?;
    let reason = if reason.is_empty() {
        None
    } else {
        let bytes = Bytes::copy_from_slice(reason.as_bytes());
        hyper::ext::ReasonPhrase::try_from(bytes.clone())
            .map_err(|_| GripError::new("Grip-Status", value, "invalid reason phrase"))?;
        Some(bytes)
    };
    Ok((code, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in list {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        map
    }

    #[test]
    fn header_table() {
        // (headers, expected: Ok(Some((channels "name:prev", timeout, status))) / Ok(None) / Err(field))
        type Want = Result<Option<(&'static str, Option<u64>, Option<u16>)>, &'static str>;
        let cases: Vec<(Vec<(&str, &str)>, Want)> = vec![
            (vec![], Ok(None)),
            (vec![("Grip-Channel", "a")], Ok(None)),
            (
                vec![("Grip-Hold", "response"), ("Grip-Channel", "a")],
                Ok(Some(("a:", None, None))),
            ),
            (
                vec![
                    ("Grip-Hold", "response"),
                    ("Grip-Channel", "a; prev-id=1, b;prev-id=\"2\""),
                ],
                Ok(Some(("a:1 b:2", None, None))),
            ),
            (
                vec![
                    ("Grip-Hold", "response"),
                    ("Grip-Channel", "a"),
                    ("Grip-Channel", "b; filter=skip-self; x=y"),
                ],
                Ok(Some(("a: b:", None, None))),
            ),
            (
                vec![
                    ("Grip-Hold", "response"),
                    ("Grip-Channel", "a, a; prev-id=3"),
                ],
                Ok(Some(("a:", None, None))),
            ),
            (
                vec![
                    ("Grip-Hold", " response "),
                    ("Grip-Channel", "a"),
                    ("Grip-Timeout", "120"),
                    ("Grip-Status", "304"),
                ],
                Ok(Some(("a:", Some(120), Some(304)))),
            ),
            (
                vec![
                    ("Grip-Hold", "response"),
                    ("Grip-Channel", "a"),
                    ("Grip-Status", "404 Custom Reason"),
                ],
                Ok(Some(("a:", None, Some(404)))),
            ),
            (
                vec![("Grip-Hold", "stream"), ("Grip-Channel", "a")],
                Ok(Some(("a:", None, None))),
            ),
            (
                vec![("Grip-Hold", "bogus"), ("Grip-Channel", "a")],
                Err("Grip-Hold"),
            ),
            (vec![("Grip-Hold", "response")], Err("Grip-Channel")),
            (
                vec![("Grip-Hold", "response"), ("Grip-Channel", " ; prev-id=1")],
                Err("Grip-Channel"),
            ),
            (
                vec![
                    ("Grip-Hold", "response"),
                    ("Grip-Channel", "a"),
                    ("Grip-Timeout", "abc"),
                ],
                Err("Grip-Timeout"),
            ),
            (
                vec![
                    ("Grip-Hold", "response"),
                    ("Grip-Channel", "a"),
                    ("Grip-Timeout", "-1"),
                ],
                Err("Grip-Timeout"),
            ),
            (
                vec![
                    ("Grip-Hold", "response"),
                    ("Grip-Channel", "a"),
                    ("Grip-Status", "xyz"),
                ],
                Err("Grip-Status"),
            ),
            (
                vec![
                    ("Grip-Hold", "response"),
                    ("Grip-Channel", "a"),
                    ("Grip-Status", "99"),
                ],
                Err("Grip-Status"),
            ),
            (
                vec![
                    ("Grip-Hold", "response"),
                    ("Grip-Channel", "a"),
                    ("Grip-Status", "600"),
                ],
                Err("Grip-Status"),
            ),
            (
                vec![
                    ("Grip-Hold", "response"),
                    ("Grip-Channel", "a"),
                    ("Grip-Status", "100"),
                ],
                Err("Grip-Status"),
            ),
            (
                vec![
                    ("Grip-Hold", "response"),
                    ("Grip-Channel", "a"),
                    ("Grip-Status", "101"),
                ],
                Err("Grip-Status"),
            ),
            (
                vec![
                    ("Grip-Hold", "response"),
                    ("Grip-Channel", "a"),
                    ("Grip-Status", "103"),
                ],
                Err("Grip-Status"),
            ),
            (
                vec![
                    ("Grip-Hold", "response"),
                    ("Grip-Channel", "a"),
                    ("Grip-Status", "199"),
                ],
                Err("Grip-Status"),
            ),
            (
                vec![
                    ("Grip-Hold", "response"),
                    ("Grip-Channel", "a"),
                    ("Grip-Status", "200"),
                ],
                Ok(Some(("a:", None, Some(200)))),
            ),
        ];
        for (list, want) in cases {
            let got = from_headers(&headers(&list), 20);
            match (got, want) {
                (Ok(None), Ok(None)) => {}
                (Ok(Some(i)), Ok(Some((chans, t, s)))) => {
                    let got_chans: Vec<String> = i
                        .hold
                        .channels
                        .iter()
                        .map(|c| format!("{}:{}", c.name, c.prev_id.as_deref().unwrap_or("")))
                        .collect();
                    assert_eq!(got_chans.join(" "), chans, "{list:?}");
                    assert_eq!(i.hold.timeout.map(|d| d.as_secs()), t, "{list:?}");
                    assert_eq!(i.status.map(|(c, _)| c.as_u16()), s, "{list:?}");
                }
                (Err(e), Err(field)) => assert_eq!(e.field, field, "{list:?}"),
                (got, want) => panic!("{list:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn too_many_channels() {
        let names: Vec<String> = (0..21).map(|i| format!("c{i}")).collect();
        let h = headers(&[
            ("Grip-Hold", "response"),
            ("Grip-Channel", &names.join(", ")),
        ]);
        assert_eq!(from_headers(&h, 20).unwrap_err().field, "Grip-Channel");
        assert!(from_headers(&h, 21).unwrap().is_some());
        // Thousands of names (inside the response head limit) are refused at the first one too many.
        let names: Vec<String> = (0..9000).map(|i| format!("c{i}")).collect();
        let h = headers(&[
            ("Grip-Hold", "response"),
            ("Grip-Channel", &names.join(",")),
        ]);
        let e = from_headers(&h, 20).unwrap_err();
        assert_eq!(e.field, "Grip-Channel");
        assert!(e.reason.contains("more than 20"), "{e}");
        // The same name thousands of times is one channel; past the scan threshold, a set de-duplicates.
        let same = vec!["a"; 9000].join(", ");
        let h = headers(&[("Grip-Hold", "response"), ("Grip-Channel", &same)]);
        assert_eq!(
            from_headers(&h, 20).unwrap().unwrap().hold.channels.len(),
            1
        );
        let mixed: Vec<String> = (0..9000).map(|i| format!("c{}", i % 15)).collect();
        let h = headers(&[
            ("Grip-Hold", "response"),
            ("Grip-Channel", &mixed.join(",")),
        ]);
        let got = from_headers(&h, 20).unwrap().unwrap().hold.channels;
        let want: Vec<String> = (0..15).map(|i| format!("c{i}")).collect();
        assert_eq!(
            got.iter().map(|c| c.name.to_string()).collect::<Vec<_>>(),
            want
        );
    }

    #[test]
    fn status_reason_kept() {
        let (code, reason) = status("404 Custom Reason").unwrap();
        assert_eq!(code, 404);
        assert_eq!(reason.unwrap(), "Custom Reason");
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use http::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    fn grip_header() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just("grip-hold"),
            Just("grip-channel"),
            Just("grip-timeout"),
            Just("grip-status"),
            Just("grip-keep-alive"),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        /// Any header values, including non-UTF-8 and separators, give a result or an error: never a panic.
        #[test]
        fn arbitrary_headers_never_panic(
            headers in proptest::collection::vec((grip_header(), proptest::collection::vec(any::<u8>(), 0..80)), 0..8),
            with_hold in any::<bool>(),
        ) {
            let mut map = http::HeaderMap::new();
            if with_hold {
                map.append("grip-hold", HeaderValue::from_static("response"));
            }
            for (name, value) in headers {
                if let Ok(v) = HeaderValue::from_bytes(&value) {
                    map.append(HeaderName::from_static(name), v);
                }
            }
            let _ = from_headers(&map, 20);
        }

        /// Well-formed channel lists parse back to the names and prev-ids given.
        #[test]
        fn channel_lists_parse_back(subs in proptest::collection::vec(("[a-z0-9/_.-]{1,20}", proptest::option::of("[a-zA-Z0-9]{1,12}")), 1..6)) {
            let value = subs
                .iter()
                .map(|(n, p)| match p { Some(p) => format!("{n}; prev-id={p}"), None => n.clone() })
                .collect::<Vec<_>>()
                .join(", ");
            let parsed = channel_list(&value).unwrap();
            prop_assert_eq!(parsed.len(), subs.len());
            for (got, (name, prev)) in parsed.iter().zip(&subs) {
                prop_assert_eq!(&*got.name, name.as_str());
                prop_assert_eq!(got.prev_id.as_deref(), prev.as_deref());
            }
        }
    }
}
