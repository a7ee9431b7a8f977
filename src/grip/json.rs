//! JSON wire forms shared by publish items and `application/grip-instruct` bodies: a status code given as a
//! number or a numeric string, headers as an object or a list of pairs, and a response (`code`, `reason`,
//! `headers`, `body` / `body-bin`) validated into [`ResponseParts`].

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::{is_grip_header, ResponseParts};
use crate::h1::is_hop_by_hop;

/// A field that failed validation: its path relative to the object validated, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub(crate) field: String,
    pub(crate) reason: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// `code`: a JSON number, or a string holding one (Node's client sends `"202"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireCode(pub(crate) i64);

impl<'de> Deserialize<'de> for WireCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = WireCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a status code as a number or a numeric string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WireCode, E> {
                Ok(WireCode(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WireCode, E> {
                Ok(WireCode(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<WireCode, E> {
                if v.fract() == 0.0 && v.abs() < 1e9 {
                    Ok(WireCode(v as i64))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(v), &self))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WireCode, E> {
                v.trim()
                    .parse::<i64>()
                    .map(WireCode)
                    .map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// `headers`: `{"Name": "value"}` or `[["Name", "value"], ...]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WireHeaders<'a>(pub(crate) Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for WireHeaders<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = WireHeaders<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "an object of header names to string values, or a list of [name, value] pairs",
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<Str<'a>, Str<'a>>()? {
                    out.push((k.0, v.0));
                }
                Ok(WireHeaders(out))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = seq.next_element::<(Str<'a>, Str<'a>)>()? {
                    out.push((k.0, v.0));
                }
                Ok(WireHeaders(out))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// A string borrowed from the input when it has no escapes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub(crate) struct Str<'a>(#[serde(borrow)] pub(crate) Cow<'a, str>);

/// A response in its JSON form (the publish `http-response` format, and the instruct `response`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct WireResponse<'a> {
    pub(crate) code: Option<WireCode>,
    #[serde(borrow)]
    pub(crate) reason: Option<Str<'a>>,
    #[serde(borrow)]
    pub(crate) headers: Option<WireHeaders<'a>>,
    #[serde(borrow)]
    pub(crate) body: Option<Str<'a>>,
    #[serde(borrow, rename = "body-bin")]
    pub(crate) body_bin: Option<Str<'a>>,
    #[serde(borrow)]
    pub(crate) action: Option<Str<'a>>,
}

/// Headers a published or instructed response may not set: framing is ours, `Grip-*` never reaches a client.
fn is_dropped_header(name: &HeaderName) -> bool {
    is_grip_header(name) || is_hop_by_hop(name) || name == http::header::CONTENT_LENGTH
}

impl WireResponse<'_> {
    /// Validates into response parts; errors name the field (`code`, `headers[1]`, `body-bin`).
    pub(crate) fn into_parts(self) -> Result<ResponseParts, FieldError> {
        let status = match self.code {
            None => StatusCode::OK,
            Some(WireCode(c)) => u16::try_from(c)
                .ok()
                .filter(|c| (200..=599).contains(c))
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| {
                    // 1xx are interim responses: written as the answer, the client would read the next response on
                    // its connection as this one's (or wait for a protocol switch that never comes).
                    FieldError::new("code", format!("{c} is not a final status code (200-599)"))
                })?,
        };
        let reason = match &self.reason {
            None => None,
            Some(r) if r.0.is_empty() => None,
            Some(r) => {
                let bytes = Bytes::copy_from_slice(r.0.as_bytes());
                hyper::ext::ReasonPhrase::try_from(bytes.clone())
                    .map_err(|_| FieldError::new("reason", "not a valid reason phrase"))?;
                Some(bytes)
            }
        };
        let mut headers = HeaderMap::new();
        if let Some(list) = &self.headers {
            for (i, (name, value)) in list.0.iter().enumerate() {
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    FieldError::new(
                        format!("headers[{i}]"),
                        format!("invalid header name {name:?}"),
                    )
                })?;
                let value = HeaderValue::from_str(value).map_err(|_| {
                    FieldError::new(
                        format!("headers[{i}]"),
                        format!("invalid value for header {name}"),
                    )
                })?;
                if !is_dropped_header(&name) {
                    headers.append(name, value);
                }
            }
        }
        let body = match (self.body_bin, self.body) {
            (Some(bin), _) => Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(bin.0.as_bytes())
                    .map_err(|e| FieldError::new("body-bin", format!("invalid base64: {e}")))?,
            ),
            // A body with escapes (`"hello\n"`) was already copied out of the input: keep that copy.
            (None, Some(Str(Cow::Owned(text)))) => Bytes::from(text),
            (None, Some(Str(Cow::Borrowed(text)))) => Bytes::copy_from_slice(text.as_bytes()),
            (None, None) => Bytes::new(),
        };
        Ok(ResponseParts {
            status,
            reason,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ResponseParts, FieldError> {
        let wire: WireResponse<'_> = serde_json::from_str(json).unwrap();
        wire.into_parts()
    }

    #[test]
    fn table() {
        struct Case {
            json: &'static str,
            want: Result<(u16, &'static str), &'static str>,
        }
        let cases = [
            Case {
                json: r#"{}"#,
                want: Ok((200, "")),
            },
            Case {
                json: r#"{"code": 201, "body": "x"}"#,
                want: Ok((201, "x")),
            },
            Case {
                json: r#"{"code": "202", "body": "y"}"#,
                want: Ok((202, "y")),
            },
            Case {
                json: r#"{"code": 99}"#,
                want: Err("code"),
            },
            Case {
                json: r#"{"code": "abc"}"#,
                want: Err("parse"),
            },
            Case {
                json: r#"{"code": 1000}"#,
                want: Err("code"),
            },
            Case {
                json: r#"{"code": 100}"#,
                want: Err("code"),
            },
            Case {
                json: r#"{"code": 101}"#,
                want: Err("code"),
            },
            Case {
                json: r#"{"code": 103}"#,
                want: Err("code"),
            },
            Case {
                json: r#"{"code": 199}"#,
                want: Err("code"),
            },
            Case {
                json: r#"{"code": 599}"#,
                want: Ok((599, "")),
            },
            Case {
                json: r#"{"body-bin": "aGk="}"#,
                want: Ok((200, "hi")),
            },
            Case {
                json: r#"{"body": "a", "body-bin": "aGk="}"#,
                want: Ok((200, "hi")),
            },
            Case {
                json: r#"{"body-bin": "!!"}"#,
                want: Err("body-bin"),
            },
            Case {
                json: r#"{"headers": {"Bad Name": "x"}}"#,
                want: Err("headers[0]"),
            },
            Case {
                json: r#"{"headers": [["X-A", "1"], ["X-A", "2"]]}"#,
                want: Ok((200, "")),
            },
            Case {
                json: r#"{"reason": "Bad\nReason"}"#,
                want: Err("reason"),
            },
        ];
        for c in cases {
            let got = serde_json::from_str::<WireResponse<'_>>(c.json)
                .map_err(|_| FieldError::new("parse", ""))
                .and_then(|w| w.into_parts());
            match (got, c.want) {
                (Ok(p), Ok((code, body))) => {
                    assert_eq!(p.status.as_u16(), code, "{}", c.json);
                    assert_eq!(p.body, body.as_bytes(), "{}", c.json);
                }
                (Err(e), Err(field)) => assert_eq!(e.field, field, "{}", c.json),
                (got, want) => panic!("{}: got {got:?}, want {want:?}", c.json),
            }
        }
    }

    #[test]
    fn drops_grip_and_framing_headers() {
        let p = parse(r#"{"headers": {"Grip-Hold": "x", "Content-Length": "9", "Connection": "close", "X-Ok": "1"}}"#)
            .unwrap();
        assert_eq!(p.headers.len(), 1);
        assert_eq!(p.headers["x-ok"], "1");
    }
}
