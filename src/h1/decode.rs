//! Message body decoding (`Content-Length`, `chunked`, until close) over a connection's read buffer, requests and
//! responses alike. Pure: it takes bytes out of a `BytesMut` and says what it needs next; the caller reads.

use bytes::{Buf, Bytes, BytesMut};

use super::Framing;

/// Longest chunk-size line (size, extensions, without its CRLF) accepted; longer is an attack or a broken client.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;
/// Most bytes of trailer fields accepted, each line counted with its CRLF, the blank line that ends them not
/// counted (they are read and dropped).
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;

/// A broken body: the connection cannot be used further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body: {0}")]
pub(crate) struct DecodeError(pub(crate) &'static str);

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
    UntilClose,
    Done,
}

/// Decodes one message body.
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
            Framing::Close => State::UntilClose,
        };
        Decoder { state }
    }

    /// Whether the whole body has been decoded.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the body ends when the connection closes: the caller's EOF is then its end, not a truncation.
    pub(crate) fn is_close_delimited(&self) -> bool {
        self.state == State::UntilClose
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
                // Whatever is buffered, in one piece; never `End`: the connection closing ends it.
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
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
                    let Some(line) = line(buf, MAX_CHUNK_LINE)
                        .map_err(|_| DecodeError("chunk size line too long"))?
                    else {
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
                    // What this line may hold, its CRLF aside: never negative, whatever came before (`seen` never
                    // exceeds the limit, as the line below is refused if it would take it past).
                    let allowance = MAX_TRAILERS.saturating_sub(seen).saturating_sub(2);
                    let Some(line) =
                        line(buf, allowance).map_err(|_| DecodeError("trailers too large"))?
                    else {
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

/// Takes one CRLF-terminated line of at most `max` bytes (without the CRLF) off the front of `buf`. Only the
/// first `max + 2` bytes are looked at, so a caller that keeps reading does not re-scan an ever larger buffer.
fn line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, DecodeError> {
    let window = &buf[..buf.len().min(max.saturating_add(2))];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(pos) => {
            let line = buf.split_to(pos);
            buf.advance(2);
            Ok(Some(line))
        }
        // `max` bytes and a CR may still be a line of `max` bytes whose LF has not arrived yet.
        None if window.len() > max.saturating_add(1)
            || (window.len() == max.saturating_add(1) && window[max] != b'\r') =>
        {
            Err(DecodeError("line too long"))
        }
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
pub(crate) mod tests {
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

    /// Feeds `input` in pieces cut at `cuts` (positions taken modulo the length), then says whether the body
    /// decoded (`Ok`) or why not. `Err("eof")`: it wanted more than there was.
    pub(crate) fn decode_in_pieces(
        framing: Framing,
        input: &[u8],
        cuts: &[usize],
    ) -> Result<Vec<u8>, &'static str> {
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        ends.push(input.len());
        ends.sort_unstable();
        let mut d = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        let mut ends = ends.into_iter();
        loop {
            match d.decode(&mut buf).map_err(|e| e.0)? {
                Decoded::Data(b) => out.extend_from_slice(&b),
                Decoded::End => return Ok(out),
                Decoded::NeedMore => {
                    let Some(end) = ends.find(|e| *e > fed) else {
                        return Err("eof");
                    };
                    buf.extend_from_slice(&input[fed..end]);
                    fed = end;
                }
            }
        }
    }

    /// A chunked body whose trailer section is one line per entry of `lines`, each that many bytes long.
    pub(crate) fn with_trailers(lines: &[usize]) -> Vec<u8> {
        let mut raw = b"3\r\nabc\r\n0\r\n".to_vec();
        for (i, len) in lines.iter().enumerate() {
            let name = format!("T{i}: ");
            let mut line = name.into_bytes();
            line.resize((*len).max(line.len()), b'v');
            line.truncate(*len);
            raw.extend_from_slice(&line);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        raw
    }

    /// A chunked body whose first chunk-size line is `len` bytes long (size, then an extension padded out).
    pub(crate) fn with_chunk_line(len: usize) -> Vec<u8> {
        let mut line = b"3;e=".to_vec();
        line.resize(len, b'x');
        let mut raw = line;
        raw.extend_from_slice(b"\r\nabc\r\n0\r\n\r\n");
        raw
    }

    /// Each limit at its value and one and two bytes either side, whole and cut at awkward places (right before
    /// and after the CR and LF that end the line at the limit).
    #[test]
    fn lines_at_and_around_each_limit() {
        for delta in -2i64..=2 {
            // One trailer line: its bytes and CRLF count against the limit.
            let len = (MAX_TRAILERS as i64 - 2 + delta) as usize;
            let raw = with_trailers(&[len]);
            let line_end = 11 + len;
            for cuts in [
                vec![],
                vec![line_end],
                vec![line_end + 1],
                vec![line_end - 1, line_end + 2],
            ] {
                let got = decode_in_pieces(Framing::Chunked, &raw, &cuts);
                if delta <= 0 {
                    assert_eq!(
                        got,
                        Ok(b"abc".to_vec()),
                        "trailer line {len} cut at {cuts:?}"
                    );
                } else {
                    assert_eq!(
                        got,
                        Err("trailers too large"),
                        "trailer line {len} cut at {cuts:?}"
                    );
                }
            }
            // Two trailer lines sharing the limit.
            let second = (MAX_TRAILERS as i64 - 2 - 100 - 2 + delta) as usize;
            let got = decode_in_pieces(Framing::Chunked, &with_trailers(&[100, second]), &[7, 200]);
            assert_eq!(
                got.is_ok(),
                delta <= 0,
                "trailer lines 100 + {second}: {got:?}"
            );
            // A chunk-size line.
            let len = (MAX_CHUNK_LINE as i64 + delta) as usize;
            let raw = with_chunk_line(len);
            for cuts in [vec![], vec![len], vec![len + 1], vec![len - 1, len + 2]] {
                let got = decode_in_pieces(Framing::Chunked, &raw, &cuts);
                if delta <= 0 {
                    assert_eq!(got, Ok(b"abc".to_vec()), "chunk line {len} cut at {cuts:?}");
                } else {
                    assert_eq!(
                        got,
                        Err("chunk size line too long"),
                        "chunk line {len} cut at {cuts:?}"
                    );
                }
            }
        }
    }

    /// A trailer line that never ends is refused once it passes the limit, however it arrives: before the fix
    /// a first line of 16,383 or 16,384 bytes made the allowance wrap and the rest was read without limit.
    #[test]
    fn endless_trailer_lines_are_refused() {
        for first in [16_380, 16_381, 16_382, 16_383, 16_384, 16_385] {
            let mut raw = with_trailers(&[first]);
            raw.truncate(raw.len() - 2);
            raw.extend(std::iter::repeat_n(b'x', 100_000));
            let got = decode_in_pieces(
                Framing::Chunked,
                &raw,
                &[first + 10, first + 12, first + 5000],
            );
            assert_eq!(got, Err("trailers too large"), "first line {first}");
        }
    }

    #[test]
    fn long_lines_are_refused() {
        let mut d = Decoder::new(Framing::Chunked);
        let mut buf = BytesMut::from(&vec![b'1'; 5000][..]);
        assert!(d.decode(&mut buf).is_err());
    }
}
