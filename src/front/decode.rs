//! Message body decoding (`Content-Length` and `chunked`) over a connection's read buffer: request bodies here,
//! response bodies in the origin client. Pure: it takes
//! bytes out of a `BytesMut` and says what it needs next; the connection does the reading.

use bytes::{Buf, Bytes, BytesMut};

use super::head::Framing;

/// Longest chunk-size line (size, extensions) accepted; longer is an attack or a broken client.
const MAX_CHUNK_LINE: usize = 4096;
/// Most bytes of trailer fields accepted (they are read and dropped).
const MAX_TRAILERS: usize = 16 * 1024;

/// A broken body: the connection cannot be used further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body: {0}")]
pub(crate) struct DecodeError(&'static str);

/// What one decode step produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// Nothing can be produced from the buffer as it is: read more.
    NeedMore,
    /// The body is complete; the buffer now starts after it.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers(usize),
    Done,
}

/// Decodes one request body.
#[derive(Debug)]
pub(crate) struct Decoder {
    state: State,
}

impl Decoder {
    pub(crate) fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
        };
        Decoder { state }
    }

    /// Whether the whole body has been decoded.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes still expected, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of body out of `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(0) => {
                    self.state = State::Done;
                    return Ok(Decoded::End);
                }
                State::Length(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = take_len(n, buf.len());
                    self.state = State::Length(n - take as u64);
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::ChunkSize => {
                    let Some(line) = line(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(n) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = take_len(n, buf.len());
                    let rest = n - take as u64;
                    self.state = if rest == 0 {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(rest)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::ChunkDataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(DecodeError("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers(seen) => {
                    let Some(line) = line(buf, MAX_TRAILERS - seen)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if line.is_empty() {
                        self.state = State::Done;
                        return Ok(Decoded::End);
                    }
                    self.state = State::Trailers(seen + line.len() + 2);
                }
            }
        }
    }
}

fn take_len(want: u64, have: usize) -> usize {
    usize::try_from(want).map_or(have, |w| w.min(have))
}

/// Takes one CRLF-terminated line (without the CRLF) off the front of `buf`.
fn line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, DecodeError> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(pos) if pos <= max => {
            let line = buf.split_to(pos);
            buf.advance(2);
            Ok(Some(line))
        }
        Some(_) => Err(DecodeError("line too long")),
        None if buf.len() > max => Err(DecodeError("line too long")),
        None => Ok(None),
    }
}

/// `chunk-size [ BWS ";" ext ]`: hex digits, at most 16 of them.
fn chunk_size(line: &[u8]) -> Result<u64, DecodeError> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits_end == 0 {
        return Err(DecodeError("missing chunk size"));
    }
    if digits_end > 16 {
        return Err(DecodeError("chunk size too large"));
    }
    let rest = &line[digits_end..];
    let rest_trimmed: &[u8] = {
        let start = rest
            .iter()
            .position(|b| *b != b' ' && *b != b'\t')
            .unwrap_or(rest.len());
        &rest[start..]
    };
    if !rest_trimmed.is_empty() && rest_trimmed[0] != b';' {
        return Err(DecodeError("invalid chunk size"));
    }
    if rest_trimmed
        .iter()
        .any(|b| *b == b'\r' || *b == b'\n' || *b == 0)
    {
        return Err(DecodeError("invalid chunk extension"));
    }
    let hex =
        std::str::from_utf8(&line[..digits_end]).map_err(|_| DecodeError("invalid chunk size"))?;
    u64::from_str_radix(hex, 16).map_err(|_| DecodeError("chunk size too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` one byte at a time (the worst split) and collects the body.
    fn decode_all(framing: Framing, input: &[u8]) -> Result<(Vec<u8>, Vec<u8>), DecodeError> {
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::End => return Ok((out, buf.to_vec())),
                Decoded::NeedMore => {
                    if fed == input.len() {
                        return Err(DecodeError("eof"));
                    }
                    buf.extend_from_slice(&input[fed..fed + 1]);
                    fed += 1;
                }
            }
        }
    }

    #[test]
    fn table() {
        type Case<'a> = (Framing, &'a [u8], Result<(&'a [u8], &'a [u8]), &'a str>);
        let cases: &[Case<'_>] = &[
            (Framing::Length(5), b"helloNEXT", Ok((b"hello", b""))),
            (
                Framing::Chunked,
                b"5\r\nhello\r\n0\r\n\r\n",
                Ok((b"hello", b"")),
            ),
            (
                Framing::Chunked,
                b"2;ext=1\r\nhe\r\n3 ; x\r\nllo\r\n0\r\nTrailer: x\r\n\r\n",
                Ok((b"hello", b"")),
            ),
            (
                Framing::Chunked,
                b"A\r\n0123456789\r\n0\r\n\r\n",
                Ok((b"0123456789", b"")),
            ),
            (
                Framing::Chunked,
                b"5\r\nhelloXX0\r\n\r\n",
                Err("chunk data not followed by CRLF"),
            ),
            (Framing::Chunked, b"x\r\n", Err("missing chunk size")),
            (Framing::Chunked, b"5x\r\n", Err("invalid chunk size")),
            (
                Framing::Chunked,
                b"fffffffffffffffff\r\n",
                Err("chunk size too large"),
            ),
            (Framing::Chunked, b"5\r\nhel", Err("eof")),
        ];
        for (framing, input, want) in cases {
            let got = decode_all(*framing, input);
            match (got, want) {
                (Ok((body, _)), Ok((want_body, _))) => assert_eq!(&body, want_body, "{input:?}"),
                (Err(e), Err(msg)) => assert_eq!(e.0, *msg, "{input:?}"),
                (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn leaves_the_next_request_in_the_buffer() {
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n"[..]);
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from_static(b"abc"))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::End);
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn long_lines_are_refused() {
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&vec![b'1'; 5000][..]);
        assert!(d.decode(&mut buf).is_err());
    }
}
