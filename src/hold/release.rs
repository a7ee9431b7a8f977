//! What a publish hands to each client held on a channel: the item, and the response it makes of a held
//! response, merged and encoded once for every client whose held response is the same (a fan-out to N clients of
//! one endpoint writes the same bytes N times instead of building them N times).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::Response;

use crate::body::{self, Body};
use crate::grip::ResponseParts;
use crate::h1::{PreEncoded, Written};
use crate::item::{HttpStream, Item};

/// One item on its way to the clients of one channel.
#[derive(Debug)]
pub(crate) struct Release {
    /// The item published.
    pub item: Arc<Item>,
    /// The held response of the first client that asked, and the release built from it.
    first: OnceLock<(Arc<ResponseParts>, PreEncoded)>,
    /// The `http-stream` content framed as one HTTP/1.1 chunk, built by the first stream that writes it.
    chunk: OnceLock<Bytes>,
}

impl Release {
    /// A release of `item`, nothing built yet.
    pub(crate) fn new(item: Arc<Item>) -> Self {
        Release {
            item,
            first: OnceLock::new(),
            chunk: OnceLock::new(),
        }
    }

    /// The item's `http-stream` content as a stream writes it: framed as one chunk when `chunked`, else as is.
    /// Framed once for every stream on the channel. `None`: the item has no content.
    pub(crate) fn stream_bytes(&self, chunked: bool) -> Option<Bytes> {
        let Some(HttpStream::Content(content)) = &self.item.http_stream else {
            return None;
        };
        if content.is_empty() {
            return None; // an empty chunk would end the response
        }
        if !chunked {
            return Some(content.clone());
        }
        Some(
            self.chunk
                .get_or_init(|| crate::h1::encode::chunk(content))
                .clone(),
        )
    }

    /// Bytes of `http-stream` content this item adds to a stream's queue.
    pub(crate) fn stream_len(&self) -> usize {
        match &self.item.http_stream {
            Some(HttpStream::Content(c)) => c.len(),
            _ => 0,
        }
    }

    /// Whether the item is the one a client held after `mine` (its prev-id on the item's channel, if it gave one)
    /// takes. Such a client takes only the item that names `mine` as its predecessor: any other item, one without
    /// a prev-id too (it cannot show that nothing came in between), means it may have missed one.
    pub(crate) fn follows(&self, mine: Option<&str>) -> bool {
        mine.is_none_or(|mine| self.item.prev_id.as_deref() == Some(mine))
    }

    /// The release encoded once for every client held with the same response as the first client that asked:
    /// `Some` when `held` is that response. Built by the first caller.
    pub(crate) fn encoded_for(
        &self,
        held: &Arc<ResponseParts>,
        published: &ResponseParts,
    ) -> Option<&PreEncoded> {
        let (key, shared) = self.first.get_or_init(|| {
            let merged = held.merge(published);
            let body = merged.body.clone();
            (
                held.clone(),
                PreEncoded::new(merged.into_response().map(|_| body)),
            )
        });
        // Held responses are shared between clients (`proxy::interned`): mostly the same pointer.
        (Arc::ptr_eq(key, held) || key == held).then_some(shared)
    }

    /// The response for a client held with `held`, released by `published` (the item's `http-response`): the
    /// published one merged into the held one. Built and encoded once for every client whose held response equals
    /// the first client's; any other client gets its own.
    pub(crate) fn response_for(
        &self,
        held: &Arc<ResponseParts>,
        published: &ResponseParts,
    ) -> Response<Body> {
        match self.encoded_for(held, published) {
            Some(shared) => shared_response(shared, None),
            None => held.merge(published).into_response(),
        }
    }
}

/// A response that carries its shared encoding for the connection to write; `written`: the first bytes of it a
/// release already wrote to the client's socket (by [`super::Waiter`]), so that the connection writes the rest.
pub(crate) fn shared_response(shared: &PreEncoded, written: Option<Written>) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = shared.status();
    resp.extensions_mut().insert(shared.clone());
    if let Some(written) = written {
        resp.extensions_mut().insert(written);
    }
    resp
}
