//! The one body type every response of ours carries, and small constructors for it.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

/// Errors a streamed body can yield (origin or client IO).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed body: origin bodies stream through it, our own answers are `Full`.
pub(crate) type Body = BoxBody<Bytes, BoxError>;

/// A body holding `bytes` in one chunk.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body with nothing in it.
pub(crate) fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}
