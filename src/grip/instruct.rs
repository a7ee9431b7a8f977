//! GRIP instructions in an `application/grip-instruct` JSON body (`{"hold": {...}, "response": {...}}`), the
//! form Python's `gripcontrol` emits.

use std::time::Duration;

use serde::Deserialize;

use super::json::{Str, WireResponse};
use super::{ChannelSub, GripError, Hold, HoldMode, ResponseParts};

/// The media type that marks an instruct body.
pub(crate) const CONTENT_TYPE: &str = "application/grip-instruct";

/// A parsed instruct body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instruct {
    /// The hold, if the body asks for one.
    pub hold: Option<Hold>,
    /// The response to give: the timeout response for a hold, else the answer itself.
    pub response: ResponseParts,
}

#[derive(Deserialize)]
struct WireInstruct<'a> {
    #[serde(borrow)]
    hold: Option<WireHold<'a>>,
    #[serde(borrow, default)]
    response: Option<WireResponse<'a>>,
}

#[derive(Deserialize)]
struct WireHold<'a> {
    #[serde(borrow)]
    mode: Option<Str<'a>>,
    #[serde(borrow, default)]
    channels: Vec<WireChannel<'a>>,
    timeout: Option<u64>,
    #[serde(borrow, rename = "keep-alive")]
    keep_alive: Option<WireKeepAlive<'a>>,
}

#[derive(Deserialize)]
struct WireKeepAlive<'a> {
    #[serde(borrow)]
    data: Str<'a>,
    #[serde(borrow)]
    format: Option<Str<'a>>,
    timeout: Option<u64>,
    #[serde(borrow)]
    mode: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct WireChannel<'a> {
    #[serde(borrow)]
    name: Str<'a>,
    #[serde(borrow, rename = "prev-id")]
    prev_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    filters: Vec<Str<'a>>,
}

/// Parses an instruct body.
pub(crate) fn from_body(body: &[u8], max_channels: usize) -> Result<Instruct, GripError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    let wire: WireInstruct<'_> = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "instruct".to_owned()
        } else {
            format!("instruct {path}")
        };
        GripError::new(field, "", e.into_inner().to_string())
    })?;
    let hold = match wire.hold {
        None => None,
        Some(h) => Some(hold(h, max_channels)?),
    };
    let response = wire
        .response
        .unwrap_or_default()
        .into_parts()
        .map_err(|e| GripError::new(format!("instruct response.{}", e.field), "", e.reason))?;
    Ok(Instruct { hold, response })
}

fn hold(h: WireHold<'_>, max_channels: usize) -> Result<Hold, GripError> {
    let mode = match h.mode.as_ref().map(|m| m.0.as_ref()) {
        None | Some("response") => HoldMode::Response,
        Some("stream") => HoldMode::Stream,
        Some(other) => {
            return Err(GripError::new(
                "instruct hold.mode",
                other,
                "unknown hold mode (expected response or stream)",
            ))
        }
    };
    let mut channels = super::Channels::new(max_channels);
    for (i, c) in h.channels.into_iter().enumerate() {
        if c.name.0.trim().is_empty() {
            return Err(GripError::new(
                format!("instruct hold.channels[{i}].name"),
                "",
                "empty channel name",
            ));
        }
        if c.name.0.starts_with(super::OWN_CHANNEL) {
            return Err(GripError::new(
                format!("instruct hold.channels[{i}].name"),
                "",
                "a name starting with U+0001 is the proxy's own",
            ));
        }
        channels
            .add(ChannelSub {
                name: c.name.0.as_ref().into(),
                prev_id: c.prev_id.map(|p| p.0.as_ref().into()),
                filters: c.filters.into_iter().map(|f| f.0.as_ref().into()).collect(),
            })
            .map_err(|e| GripError::new("instruct hold.channels", "", e.to_string()))?;
    }
    let channels = channels.finish().map_err(|reason| {
        GripError::new("instruct hold.channels", "[]", format!("a hold {reason}"))
    })?;
    let keep_alive = match (&mode, h.keep_alive) {
        (HoldMode::Stream, Some(k)) => Some(
            super::stream::keep_alive(
                &k.data.0,
                k.format.as_ref().map(|f| f.0.as_ref()),
                k.timeout,
                k.mode.as_ref().map(|m| m.0.as_ref()),
            )
            .map_err(|reason| GripError::new("instruct hold.keep-alive", &k.data.0, reason))?,
        ),
        _ => None,
    };
    Ok(Hold {
        mode,
        channels,
        timeout: h.timeout.map(Duration::from_secs),
        stream: keep_alive.map(|k| {
            Box::new(super::stream::StreamInstruction {
                keep_alive: Some(k),
                ..Default::default()
            })
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gripcontrol_hold_response() {
        let body = br#"{"hold": {"mode": "response", "channels": [{"name": "c", "prev-id": "7"}], "timeout": 30},
            "response": {"code": 304, "headers": {"ETag": "\"v1\""}, "body": "nothing\n"}}"#;
        let i = from_body(body, 20).unwrap();
        let hold = i.hold.unwrap();
        assert_eq!(hold.channels[0].name.as_ref(), "c");
        assert_eq!(hold.channels[0].prev_id.as_deref(), Some("7"));
        assert_eq!(hold.timeout, Some(Duration::from_secs(30)));
        assert_eq!(i.response.status, 304);
        assert_eq!(i.response.headers["etag"], "\"v1\"");
    }

    #[test]
    fn errors_name_the_field() {
        let cases: [(&[u8], &str); 7] = [
            (b"not json", "instruct"),
            (
                br#"{"hold": {"channels": [{"name": 5}]}}"#,
                "instruct hold.channels[0].name",
            ),
            (
                br#"{"hold": {"mode": "x", "channels": [{"name": "a"}]}}"#,
                "instruct hold.mode",
            ),
            (br#"{"hold": {"channels": []}}"#, "instruct hold.channels"),
            (
                br#"{"hold": {"channels": [{"name": "a"}], "timeout": "x"}}"#,
                "instruct hold.timeout",
            ),
            (
                br#"{"hold": {"channels": [{"name": "a"}]}, "response": {"code": 42}}"#,
                "instruct response.code",
            ),
            (
                br#"{"hold": {"channels": [{"name": "a"}]}, "response": {"code": 101}}"#,
                "instruct response.code",
            ),
        ];
        for (body, field) in cases {
            let err = from_body(body, 20).unwrap_err();
            assert_eq!(err.field, field, "{}", String::from_utf8_lossy(body));
        }
        // Repeated names count once against the limit.
        let abac = br#"{"hold": {"channels": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}}"#;
        assert_eq!(from_body(abac, 2).unwrap().hold.unwrap().channels.len(), 2);
        let abac = br#"{"hold": {"channels": [{"name": "a"}, {"name": "b"}, {"name": "a"}, {"name": "c"}]}}"#;
        assert_eq!(
            from_body(abac, 2).unwrap_err().field,
            "instruct hold.channels"
        );
    }

    #[test]
    fn no_hold_is_a_plain_response() {
        let i = from_body(br#"{"response": {"body": "hi"}}"#, 20).unwrap();
        assert!(i.hold.is_none());
        assert_eq!(i.response.body, "hi");
    }
}
