//! Held responses shared between clients: the clients of one endpoint are mostly held with the same timeout
//! response, and keep one shared copy of it rather than one each (its header map and body are a few hundred bytes
//! per held client), which also lets a release recognise them by pointer. Only a response not seen before is
//! copied out of the origin connection's buffers.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use parking_lot::Mutex;

use crate::grip::ResponseParts;

/// How many distinct held responses are remembered. Each costs at most `hold.max_body` plus its headers while
/// remembered, after its last client has gone too.
const SLOTS: usize = 8;

/// The most recently held distinct responses.
#[derive(Default)]
pub(super) struct Interned {
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    held: [Option<Arc<ResponseParts>>; SLOTS],
    /// The slot the next new response replaces (round robin).
    next: usize,
}

impl Interned {
    /// The shared copy of `parts`: one remembered that is equal, or a copy of `parts` that owns its bytes,
    /// remembered from now on.
    pub(super) fn intern(&self, parts: ResponseParts) -> Arc<ResponseParts> {
        let mut slots = self.slots.lock();
        if let Some(same) = slots.held.iter().flatten().find(|h| ***h == parts) {
            return same.clone();
        }
        let shared = Arc::new(owned(&parts));
        let next = slots.next;
        slots.held[next] = Some(shared.clone());
        slots.next = (next + 1) % SLOTS;
        shared
    }
}

/// A copy of `parts` whose header values and body own their bytes. The origin client's values are zero-copy
/// slices of the connection's read buffer (8 KiB), which a held response would otherwise keep alive for the whole
/// hold. Measured: 11.3 KB per held client before these copies, see docs/performance.md.
fn owned(parts: &ResponseParts) -> ResponseParts {
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        let mut copy = HeaderValue::from_bytes(value.as_bytes())
            .expect("a valid header value stays valid when copied");
        copy.set_sensitive(value.is_sensitive());
        headers.append(name.clone(), copy);
    }
    ResponseParts {
        status: parts.status,
        reason: parts.reason.as_deref().map(Bytes::copy_from_slice),
        headers,
        body: Bytes::copy_from_slice(&parts.body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    fn parts(etag: &'static str) -> ResponseParts {
        let mut headers = HeaderMap::new();
        headers.insert("etag", HeaderValue::from_static(etag));
        ResponseParts {
            status: StatusCode::OK,
            reason: None,
            headers,
            body: Bytes::from_static(b"timeout\n"),
        }
    }

    #[test]
    fn equal_responses_share_one_copy_and_different_ones_do_not() {
        let interned = Interned::default();
        let a = interned.intern(parts("\"1\""));
        let b = interned.intern(parts("\"1\""));
        let c = interned.intern(parts("\"2\""));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(*c, parts("\"2\""));
    }

    #[test]
    fn only_the_most_recent_distinct_responses_are_remembered() {
        let interned = Interned::default();
        let first = interned.intern(parts("\"0\""));
        let tags: Vec<&'static str> = vec!["a", "b", "c", "d", "e", "f", "g", "h"];
        for tag in tags {
            interned.intern(parts(tag));
        }
        // Pushed out by eight newer ones: an equal response gets a copy of its own.
        assert!(!Arc::ptr_eq(&first, &interned.intern(parts("\"0\""))));
    }
}
