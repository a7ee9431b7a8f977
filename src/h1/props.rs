//! Property tests of the request head parser and body decoder: arbitrary bytes never panic them, and every
//! well-formed request (any split of its bytes) parses back to exactly what was sent.

use bytes::BytesMut;
use proptest::prelude::*;

use super::decode::{Decoded, Decoder};
use super::request;
use super::Framing;

/// Feeds `input` to the head parser and body decoder in pieces cut at `cuts`, as a connection would.
fn run(input: &[u8], cuts: &[usize]) -> Result<Option<(request::Head, Vec<u8>)>, String> {
    let mut pieces: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    pieces.sort_unstable();
    pieces.push(input.len());
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut next = pieces.into_iter();
    let mut feed = |buf: &mut BytesMut| -> bool {
        for end in next.by_ref() {
            if end > fed {
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
                return true;
            }
        }
        false
    };
    let head = loop {
        match request::parse(&buf, 64 * 1024) {
            Ok(Some((head, len))) => {
                let _ = buf.split_to(len);
                break head;
            }
            Ok(None) => {
                if !feed(&mut buf) {
                    return Ok(None);
                }
            }
            Err(r) => return Err(r.reason.to_owned()),
        }
    };
    let mut decoder = Decoder::new(head.framing);
    let mut body = Vec::new();
    loop {
        match decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            Decoded::Data(d) => body.extend_from_slice(&d),
            Decoded::End => return Ok(Some((head, body))),
            Decoded::NeedMore => {
                if !feed(&mut buf) {
                    return Ok(None);
                }
            }
        }
    }
}

fn header_name() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9-]{0,15}".prop_filter("framing headers are generated separately", |n| {
        let l = n.to_ascii_lowercase();
        l != "content-length"
            && l != "transfer-encoding"
            && l != "connection"
            && l != "expect"
            && l != "host"
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..600), cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
        let _ = run(&input, &cuts);
    }

    #[test]
    fn mutated_requests_never_panic(
        pos in any::<usize>(),
        byte in any::<u8>(),
        chunked in any::<bool>(),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let mut input = if chunked {
            b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\n".to_vec()
        } else {
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".to_vec()
        };
        let at = pos % input.len();
        input[at] = byte;
        let _ = run(&input, &cuts);
    }

    #[test]
    fn well_formed_requests_parse_back(
        method in prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("DELETE"), Just("PATCH")],
        path in "/[a-z0-9/._~-]{0,40}(\\?[a-z0-9=&]{0,20})?",
        headers in proptest::collection::vec((header_name(), "[ -~]{0,40}"), 0..12),
        body in proptest::collection::vec(any::<u8>(), 0..3000),
        chunked in any::<bool>(),
        chunk_sizes in proptest::collection::vec(1usize..700, 1..8),
        cuts in proptest::collection::vec(any::<usize>(), 0..10),
    ) {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n").into_bytes();
        for (n, v) in &headers {
            raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        if chunked {
            raw.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            let mut rest = &body[..];
            let mut sizes = chunk_sizes.iter().cycle();
            while !rest.is_empty() {
                let n = (*sizes.next().expect("cycle of a non-empty list")).min(rest.len());
                raw.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                raw.extend_from_slice(&rest[..n]);
                raw.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            raw.extend_from_slice(b"0\r\n\r\n");
        } else {
            raw.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            raw.extend_from_slice(&body);
        }
        let (head, got) = run(&raw, &cuts).expect("well-formed").expect("complete");
        prop_assert_eq!(head.parts.method.as_str(), method);
        prop_assert_eq!(head.parts.uri.to_string(), path);
        for (n, v) in &headers {
            let values: Vec<&[u8]> = head.parts.headers.get_all(n.as_str()).iter().map(|v| v.as_bytes()).collect();
            prop_assert!(values.contains(&v.trim().as_bytes()), "header {} lost", n);
        }
        let want_framing = if chunked { Framing::Chunked } else if body.is_empty() { Framing::Empty } else { Framing::Length(body.len() as u64) };
        prop_assert_eq!(head.framing, want_framing);
        prop_assert_eq!(got, body);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Trailer lines and chunk-size lines at each limit, and one and two bytes either side, cut anywhere: the
    /// body decodes exactly when every line is within its limit, and is refused (never read on) otherwise.
    #[test]
    fn lines_at_each_limit_cut_anywhere(
        delta in -2i64..=2,
        split in 0usize..200,
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        use super::decode::tests::{decode_in_pieces, with_chunk_line, with_trailers};
        use super::decode::{MAX_CHUNK_LINE, MAX_TRAILERS};
        // One trailer line, or two sharing the limit.
        let total = (MAX_TRAILERS as i64 + delta) as usize;
        let lines = if split < 8 { vec![total - 2] } else { vec![split, total - split - 4] };
        let got = decode_in_pieces(Framing::Chunked, &with_trailers(&lines), &cuts);
        if delta <= 0 {
            prop_assert_eq!(got, Ok(b"abc".to_vec()));
        } else {
            prop_assert_eq!(got, Err("trailers too large"));
        }
        let len = (MAX_CHUNK_LINE as i64 + delta) as usize;
        let got = decode_in_pieces(Framing::Chunked, &with_chunk_line(len), &cuts);
        if delta <= 0 {
            prop_assert_eq!(got, Ok(b"abc".to_vec()));
        } else {
            prop_assert_eq!(got, Err("chunk size line too long"));
        }
    }

    /// Chunk sizes of 16 hex digits (the most accepted) and 17 digits, with leading zeros so the data stays short.
    #[test]
    fn chunk_size_digits_at_the_limit(digits in 14usize..=18, cuts in proptest::collection::vec(any::<usize>(), 0..4)) {
        use super::decode::tests::decode_in_pieces;
        let raw = format!("{:0>digits$}\r\nabc\r\n0\r\n\r\n", "3").into_bytes();
        let got = decode_in_pieces(Framing::Chunked, &raw, &cuts);
        if digits <= 16 {
            prop_assert_eq!(got, Ok(b"abc".to_vec()));
        } else {
            prop_assert_eq!(got, Err("chunk size too large"));
        }
    }
}
