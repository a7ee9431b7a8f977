//! The HTTP/1.1 codec shared by the two roles, the client-facing server (`front`) and the origin client
//! (`origin`): heads, body framing and decoding, encoding, and the socket IO they need. No role logic.

pub(crate) mod decode;
mod direct;
pub(crate) mod encode;
mod framing;
mod hop;
mod pre_encoded;
#[cfg(test)]
mod props;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod socket;

pub(crate) use decode::{Decoded, Decoder};
pub(crate) use direct::{DirectWrite, Written};
pub(crate) use framing::Framing;
pub(crate) use hop::{is_hop_by_hop, strip_hop_by_hop};
pub(crate) use pre_encoded::PreEncoded;

/// Most header fields in a head, request or response (hyper's default).
pub(crate) const MAX_HEADERS: usize = 100;
