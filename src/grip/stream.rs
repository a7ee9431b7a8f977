//! What a stream hold adds to a hold: `Grip-Keep-Alive` (data written when the stream is idle) and `Grip-Link`
//! (`rel=next`: where the stream continues; `rel=gone`: told when the client leaves). Pure parsing, no IO.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::HeaderMap;

use super::parse::{params_of, unquote};
use super::GripError;

/// Pushpin's keep-alive timeout when the origin gives none, in seconds.
pub(crate) const DEFAULT_KEEP_ALIVE_SECS: u64 = 55;

/// The shortest keep-alive timeout: a smaller one is raised to it (as Pushpin does).
pub(crate) const MIN_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Pushpin's `rel=next` timeout when the link gives none, in seconds.
pub(crate) const DEFAULT_LINK_TIMEOUT_SECS: u64 = 120;

/// The stream-only parts of a hold. Boxed in [`super::Hold`]: response holds, the common case, carry a null pointer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct StreamInstruction {
    /// `Grip-Keep-Alive`.
    pub keep_alive: Option<KeepAlive>,
    /// `Grip-Link: <uri>; rel=next`.
    pub next: Option<NextLink>,
    /// `Grip-Link: <uri>; rel=gone`: a best-effort `POST` when the client disconnects.
    pub gone: Option<Box<str>>,
}

impl StreamInstruction {
    /// Whether any stream instruction was given.
    pub(crate) fn is_empty(&self) -> bool {
        self.keep_alive.is_none() && self.next.is_none() && self.gone.is_none()
    }
}

/// What to write into an idle stream, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeepAlive {
    /// The bytes written (already decoded from their `format`).
    pub data: Bytes,
    /// Idle time before they are written (at least [`MIN_KEEP_ALIVE`]).
    pub timeout: Duration,
    /// Idle or interval.
    pub mode: KeepAliveMode,
}

/// When keep-alive data is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeepAliveMode {
    /// After `timeout` with nothing written (the default).
    Idle,
    /// Every `timeout`, whatever else was written.
    Interval,
}

/// Where a stream continues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NextLink {
    /// The link as given: an absolute path (same origin) or an absolute `http(s)` URL.
    pub uri: Box<str>,
    /// Fetched when nothing was delivered for this long.
    pub timeout: Duration,
}

/// Parses `Grip-Keep-Alive` and `Grip-Link` from an origin's response headers.
pub(crate) fn from_headers(headers: &HeaderMap) -> Result<StreamInstruction, GripError> {
    let mut out = StreamInstruction::default();
    if let Some(v) = headers.get("grip-keep-alive") {
        let text = std::str::from_utf8(v.as_bytes())
            .map_err(|_| GripError::new("Grip-Keep-Alive", "", "not UTF-8"))?;
        out.keep_alive = Some(keep_alive_header(text)?);
    }
    for v in headers.get_all("grip-link") {
        let text = std::str::from_utf8(v.as_bytes())
            .map_err(|_| GripError::new("Grip-Link", "", "not UTF-8"))?;
        links(text, &mut out)?;
    }
    Ok(out)
}

/// `DATA; format=raw|cstring|base64; timeout=N; mode=idle|interval`.
fn keep_alive_header(value: &str) -> Result<KeepAlive, GripError> {
    let mut parts = value.split(';');
    let data = unquote(parts.next().unwrap_or("").trim());
    let (mut format, mut timeout, mut mode) = (None, None, None);
    for (key, val) in params_of(parts) {
        match key {
            "format" => format = Some(val),
            "timeout" => timeout = Some(seconds("Grip-Keep-Alive", value, val)?),
            "mode" => mode = Some(val),
            _ => {} // unknown parameters are ignored, as Pushpin does
        }
    }
    keep_alive(data, format, timeout, mode)
        .map_err(|reason| GripError::new("Grip-Keep-Alive", value, reason))
}

/// A keep-alive from its parts, as the header and the instruct body give them.
pub(crate) fn keep_alive(
    data: &str,
    format: Option<&str>,
    timeout: Option<u64>,
    mode: Option<&str>,
) -> Result<KeepAlive, String> {
    let data = match format.unwrap_or("raw") {
        "raw" => Bytes::copy_from_slice(data.as_bytes()),
        "cstring" => cstring(data)?.into(),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("invalid base64 data: {e}"))?
            .into(),
        other => {
            return Err(format!(
                "unknown format {other:?} (expected raw, cstring or base64)"
            ))
        }
    };
    if data.is_empty() {
        return Err("empty keep-alive data".into());
    }
    let mode = match mode.unwrap_or("idle") {
        "idle" => KeepAliveMode::Idle,
        "interval" => KeepAliveMode::Interval,
        other => {
            return Err(format!(
                "unknown mode {other:?} (expected idle or interval)"
            ))
        }
    };
    let timeout =
        Duration::from_secs(timeout.unwrap_or(DEFAULT_KEEP_ALIVE_SECS)).max(MIN_KEEP_ALIVE);
    Ok(KeepAlive {
        data,
        timeout,
        mode,
    })
}

/// Decodes C-style escapes: `\\`, `\"`, `\r`, `\n`, `\t`, `\0`.
fn cstring(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match bytes.next() {
            Some(b'\\') => b'\\',
            Some(b'"') => b'"',
            Some(b'r') => b'\r',
            Some(b'n') => b'\n',
            Some(b't') => b'\t',
            Some(b'0') => 0,
            Some(other) => {
                return Err(format!(
                    "unknown escape \\{} in cstring data",
                    other as char
                ))
            }
            None => return Err("cstring data ends with a lone backslash".into()),
        });
    }
    Ok(out)
}

/// `<uri>; rel=next; timeout=N, <uri>; rel=gone`: links with other relations are ignored.
fn links(value: &str, out: &mut StreamInstruction) -> Result<(), GripError> {
    let mut rest = value.trim();
    while !rest.is_empty() {
        let Some(after) = rest.strip_prefix('<') else {
            return Err(GripError::new("Grip-Link", value, "expected <uri>"));
        };
        let Some((uri, after)) = after.split_once('>') else {
            return Err(GripError::new("Grip-Link", value, "unclosed <uri>"));
        };
        let (params, next) = match after.find(',') {
            Some(i) => (&after[..i], after[i + 1..].trim_start()),
            None => (after, ""),
        };
        rest = next;
        let (mut rel, mut timeout) = (None, None);
        for (key, val) in params_of(params.split(';')) {
            match key {
                "rel" => rel = Some(val),
                "timeout" => timeout = Some(seconds("Grip-Link", value, val)?),
                _ => {}
            }
        }
        let uri = uri.trim();
        if !(uri.starts_with('/') || uri.starts_with("http://") || uri.starts_with("https://")) {
            return Err(GripError::new(
                "Grip-Link",
                value,
                "the link must be an absolute path or an http(s) URL",
            ));
        }
        match rel {
            Some("next") => {
                out.next = Some(NextLink {
                    uri: uri.into(),
                    timeout: Duration::from_secs(
                        timeout.unwrap_or(DEFAULT_LINK_TIMEOUT_SECS).max(1),
                    ),
                })
            }
            Some("gone") => out.gone = Some(uri.into()),
            _ => {}
        }
    }
    Ok(())
}

/// A `timeout=` parameter of `header`: whole seconds.
fn seconds(header: &str, value: &str, param: &str) -> Result<u64, GripError> {
    param
        .parse()
        .map_err(|_| GripError::new(header, value, "timeout is not a whole number of seconds"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn parse(pairs: &[(&'static str, &'static str)]) -> Result<StreamInstruction, GripError> {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        from_headers(&h)
    }

    #[test]
    fn keep_alive_forms() {
        let k = parse(&[("grip-keep-alive", r":\n\n; format=cstring; timeout=20")]).unwrap();
        let k = k.keep_alive.unwrap();
        assert_eq!(&k.data[..], b":\n\n");
        assert_eq!(k.timeout, Duration::from_secs(20));
        assert_eq!(k.mode, KeepAliveMode::Idle);
        let k = parse(&[("grip-keep-alive", "aGk=; format=base64; mode=interval")])
            .unwrap()
            .keep_alive
            .unwrap();
        assert_eq!(
            (&k.data[..], k.timeout, k.mode),
            (&b"hi"[..], Duration::from_secs(55), KeepAliveMode::Interval)
        );
        let k = parse(&[("grip-keep-alive", "x; timeout=0")])
            .unwrap()
            .keep_alive
            .unwrap();
        assert_eq!(k.timeout, MIN_KEEP_ALIVE, "raised to the floor");
        for bad in [
            r"x\q; format=cstring",
            "x; format=hex",
            "x; timeout=soon",
            "; timeout=5",
            "x; mode=often",
            "!!; format=base64",
        ] {
            let e = parse(&[("grip-keep-alive", bad)]).unwrap_err();
            assert_eq!(e.field, "Grip-Keep-Alive", "{bad}");
        }
    }

    #[test]
    fn links_next_and_gone() {
        let s = parse(&[(
            "grip-link",
            "</s/?after=3>; rel=next; timeout=30, </s/gone>; rel=gone",
        )])
        .unwrap();
        assert_eq!(
            s.next,
            Some(NextLink {
                uri: "/s/?after=3".into(),
                timeout: Duration::from_secs(30)
            })
        );
        assert_eq!(s.gone.as_deref(), Some("/s/gone"));
        let s = parse(&[
            ("grip-link", "<http://o:1/n>; rel=next"),
            ("grip-link", "</x>; rel=other"),
        ])
        .unwrap();
        assert_eq!(
            s.next.unwrap().timeout,
            Duration::from_secs(DEFAULT_LINK_TIMEOUT_SECS)
        );
        assert!(s.gone.is_none());
        for bad in [
            "/x; rel=next",
            "</x; rel=next",
            "<x>; rel=next",
            "</x>; rel=next; timeout=-1",
        ] {
            assert_eq!(
                parse(&[("grip-link", bad)]).unwrap_err().field,
                "Grip-Link",
                "{bad}"
            );
        }
        assert!(parse(&[]).unwrap().is_empty());
    }

    #[test]
    fn link_timeouts_at_and_around_the_floor() {
        let timeout = |t: &str| {
            let value = format!("</n>; rel=next; timeout={t}");
            let mut h = HeaderMap::new();
            h.insert("grip-link", HeaderValue::from_str(&value).unwrap());
            from_headers(&h).unwrap().next.unwrap().timeout
        };
        assert_eq!(timeout("0"), Duration::from_secs(1), "below: raised");
        assert_eq!(timeout("1"), Duration::from_secs(1), "at");
        assert_eq!(timeout("2"), Duration::from_secs(2), "above");
    }
}
