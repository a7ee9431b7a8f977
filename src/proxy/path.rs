//! The request path as routing sees it and the origin receives it: percent-encoded unreserved characters decoded,
//! repeated slashes merged, `.` and `..` segments resolved (RFC 3986 sections 2.3, 5.2.4), as nginx's `location`
//! matching does. Pure functions, no IO.

use std::borrow::Cow;

use http::uri::{PathAndQuery, Uri};

/// Why a request path cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// A `..` segment climbs above the root.
    AboveRoot,
}

impl PathError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            PathError::BadEscape => "invalid percent-encoding in the request path",
            PathError::AboveRoot => "request path climbs above the root",
        }
    }
}

/// The normal form of `path`. Borrowed when it is already normal (the common case costs one scan). A path that
/// does not start with `/` (`*` of `OPTIONS *`) is left as it is.
pub(crate) fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') || is_normal(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path.as_bytes())?;
    let mut out: Vec<&[u8]> = Vec::new();
    let mut segments = decoded[1..].split(|b| *b == b'/').peekable();
    // Whether the path ends in a slash: after a last segment that is empty, `.` or `..`.
    let mut trailing_slash = false;
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            b"" => trailing_slash = last,
            b"." => trailing_slash = last,
            b".." => {
                out.pop().ok_or(PathError::AboveRoot)?;
                trailing_slash = last;
            }
            name => {
                out.push(name);
                trailing_slash = false;
            }
        }
    }
    let mut normal = Vec::with_capacity(decoded.len());
    for segment in &out {
        normal.push(b'/');
        normal.extend_from_slice(segment);
    }
    if trailing_slash || normal.is_empty() {
        normal.push(b'/');
    }
    // Only ASCII went in (a request target is ASCII) and only unreserved ASCII was decoded.
    Ok(Cow::Owned(String::from_utf8_lossy(&normal).into_owned()))
}

/// No `%`, no empty segment (but a trailing slash), no `.` or `..` segment.
fn is_normal(path: &[u8]) -> bool {
    if path.contains(&b'%') {
        return false;
    }
    let mut segments = path[1..].split(|b| *b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if (segment.is_empty() && !last) || segment == b"." || segment == b".." {
            return false;
        }
    }
    true
}

/// Decodes `%XX` escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`); other escapes are kept as they are
/// (an encoded `/` stays a character of its segment, not a separator).
fn decode_unreserved(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] != b'%' {
            out.push(path[i]);
            i += 1;
            continue;
        }
        let hex = path.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
        let value = std::str::from_utf8(hex)
            .ok()
            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(PathError::BadEscape)?;
        if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
            out.push(value);
        } else {
            out.extend_from_slice(&path[i..i + 3]);
        }
        i += 3;
    }
    Ok(out)
}

/// `uri` with its path normalised and its query unchanged; `None` when the path was normal already.
pub(crate) fn normalize_uri(uri: &Uri) -> Result<Option<Uri>, PathError> {
    let Cow::Owned(path) = normalize(uri.path())? else {
        return Ok(None);
    };
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut parts = uri.clone().into_parts();
    // Built from a valid path with escapes only removed, and a valid query: it parses.
    parts.path_and_query = PathAndQuery::from_maybe_shared(target).ok();
    Ok(Uri::from_parts(parts).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(&str, Result<&str, PathError>)] = &[
            ("/", Ok("/")),
            ("/a/b", Ok("/a/b")),
            ("/a/b/", Ok("/a/b/")),
            ("/public/../private/x", Ok("/private/x")),
            ("//public/x", Ok("/public/x")),
            ("/public//x", Ok("/public/x")),
            ("/%70ublic/x", Ok("/public/x")),
            ("/%2e%2e/x", Err(PathError::AboveRoot)),
            ("/a/%2E%2E/x", Ok("/x")),
            ("/public/./x", Ok("/public/x")),
            ("/a/.", Ok("/a/")),
            ("/a/..", Ok("/")),
            ("/a/b/../..", Ok("/")),
            ("/..", Err(PathError::AboveRoot)),
            ("/../x", Err(PathError::AboveRoot)),
            ("/a/../../x", Err(PathError::AboveRoot)),
            ("/a%2Fb/../c", Ok("/c")),
            ("/a%2Fb", Ok("/a%2Fb")),
            ("/a%20b", Ok("/a%20b")),
            ("/a%", Err(PathError::BadEscape)),
            ("/a%2", Err(PathError::BadEscape)),
            ("/a%zz", Err(PathError::BadEscape)),
            ("/...", Ok("/...")),
            ("/.a/b.", Ok("/.a/b.")),
            ("*", Ok("*")),
        ];
        for (path, want) in cases {
            let got = normalize(path);
            assert_eq!(got.as_deref().map_err(|e| *e), *want, "{path}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in ["/", "/a", "/a/b/", "/a.b/c~d"] {
            assert!(matches!(normalize(path), Ok(Cow::Borrowed(_))), "{path}");
        }
    }

    #[test]
    fn query_is_kept() {
        let uri: Uri = "/a/../b?x=/../&y=%2e".parse().unwrap();
        assert_eq!(
            normalize_uri(&uri).unwrap().unwrap().to_string(),
            "/b?x=/../&y=%2e"
        );
        let uri: Uri = "http://h.example//a?q".parse().unwrap();
        assert_eq!(
            normalize_uri(&uri).unwrap().unwrap().to_string(),
            "http://h.example/a?q"
        );
        assert!(normalize_uri(&"/a?q".parse().unwrap()).unwrap().is_none());
    }
}
