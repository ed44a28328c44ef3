//! The frame layer: `decode_frame`, `FrameHeader::parse`/`write` and the
//! receive buffer `RecvBuf`, on an arbitrary byte stream.
//!
//! Input: one byte choosing the payload limit, one byte seeding how the
//! stream is cut into reads, then the stream.
//!
//! Asserts (proto/src/frame.rs, codec.rs, docs/PROTOCOL.md "Frames"):
//! - no panic on any stream, for any limit;
//! - an accepted header re-encodes to the same 24 bytes (it is fully
//!   determined: version, flags and reserved are checked), and parses again
//!   to the same header;
//! - an accepted frame's payload is exactly `payload_len` bytes,
//!   1 ..= min(limit, 1 MiB), starts 8-aligned, and the frame occupies
//!   `24 + padded(payload_len)` bytes, a multiple of 8;
//! - `Incomplete { needed }` only when fewer bytes than needed are there;
//! - a receive buffer fed the same stream in arbitrary pieces yields the
//!   same frames (headers and payload bytes) and the same final error, its
//!   payloads are 8-aligned, and it never runs out of room for a frame the
//!   limit allows (a full buffer with no whole frame would hang a
//!   connection), while it grows and shrinks after each read as the server
//!   fits it (`RecvBuf::adapt`);
//! - the frames `RecvBuf::frame_at` sees ahead (the server's look-ahead)
//!   are the frames then served, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::{Chunks, Input};
use palisade_proto::frame::{padded_len, FRAME_ALIGN, PAYLOAD_LEN_MAX_HARD};
use palisade_proto::{Decoded, FrameBuf, FrameError, FrameHeader, RecvBuf, HEADER_LEN};

const LIMITS: [u32; 8] = [
    0,
    1,
    40,
    4096,
    16 * 1024,
    PAYLOAD_LEN_MAX_HARD,
    PAYLOAD_LEN_MAX_HARD + 8,
    u32::MAX,
];

#[derive(Debug, PartialEq)]
enum End {
    Incomplete,
    Error(FrameError),
}

fn flat(stream: &[u8], limit: u32) -> (Vec<(FrameHeader, Vec<u8>)>, End) {
    let mut buf = FrameBuf::new();
    buf.extend_from_slice(stream);
    let mut frames = Vec::new();
    let mut offset = 0;
    loop {
        let rest = &buf[offset..];
        match palisade_proto::frame::decode_frame(rest, limit) {
            Ok(Decoded::Frame {
                header,
                payload,
                frame_len,
            }) => {
                check_frame(rest, limit, &header, payload, frame_len);
                frames.push((header, payload.to_vec()));
                offset += frame_len;
            }
            Ok(Decoded::Incomplete { needed }) => {
                match needed {
                    None => assert!(rest.len() < HEADER_LEN, "header there but not parsed"),
                    Some(needed) => {
                        assert!(
                            needed > rest.len(),
                            "incomplete with {needed} <= {}",
                            rest.len()
                        );
                        let head = rest.first_chunk::<HEADER_LEN>().expect("a whole header");
                        let header = FrameHeader::parse(head, limit).expect("parsed before");
                        assert_eq!(needed, header.frame_len());
                    }
                }
                return (frames, End::Incomplete);
            }
            Err(error) => {
                let head = rest
                    .first_chunk::<HEADER_LEN>()
                    .expect("errors only come from a whole header");
                assert_eq!(FrameHeader::parse(head, limit), Err(error.clone()));
                return (frames, End::Error(error));
            }
        }
    }
}

fn check_frame(rest: &[u8], limit: u32, header: &FrameHeader, payload: &[u8], frame_len: usize) {
    let max = limit.min(PAYLOAD_LEN_MAX_HARD);
    assert!(header.payload_len >= 1);
    assert!(header.payload_len <= max, "{} > {max}", header.payload_len);
    assert_eq!(payload.len(), header.payload_len as usize);
    assert_eq!(frame_len, HEADER_LEN + padded_len(payload.len()));
    assert_eq!(frame_len, header.frame_len());
    assert_eq!(frame_len % FRAME_ALIGN, 0);
    assert!(frame_len <= rest.len());
    assert_eq!(
        payload.as_ptr() as usize % FRAME_ALIGN,
        0,
        "payload not 8-aligned"
    );
    assert_eq!(payload, &rest[HEADER_LEN..HEADER_LEN + payload.len()]);
    let mut written = [0u8; HEADER_LEN];
    header.write(&mut written);
    assert_eq!(
        &written[..],
        &rest[..HEADER_LEN],
        "header does not re-encode to its bytes"
    );
    assert_eq!(FrameHeader::parse(&written, limit).as_ref(), Ok(header));
}

fn chunked(stream: &[u8], limit: u32, seed: u8) -> (Vec<(FrameHeader, Vec<u8>)>, End) {
    let frame_max = HEADER_LEN + padded_len(limit.min(PAYLOAD_LEN_MAX_HARD) as usize);
    let capacity = 64.max(HEADER_LEN).min(frame_max.max(HEADER_LEN));
    let mut rx = RecvBuf::new(capacity, frame_max.max(capacity));
    let mut chunks = Chunks::new(u32::from(seed).wrapping_mul(2654435761), 97);
    let mut frames = Vec::new();
    let mut fed = 0;
    // How far a read buffer may grow while reads fill it (`RecvBuf::adapt`).
    let burst_max = 64 << (seed % 4 * 3);
    loop {
        // What the server's look-ahead sees: the frames ahead, without
        // consuming; the loop below must find the same ones.
        let mut ahead = Vec::new();
        let mut offset = 0;
        while let Ok(Decoded::Frame {
            header, frame_len, ..
        }) = rx.frame_at(offset, limit)
        {
            ahead.push(header);
            offset += frame_len;
        }
        let seen = frames.len();
        loop {
            match rx.next_frame(limit) {
                Ok(Decoded::Frame {
                    header,
                    payload,
                    frame_len,
                }) => {
                    assert_eq!(
                        payload.as_ptr() as usize % FRAME_ALIGN,
                        0,
                        "payload not 8-aligned"
                    );
                    frames.push((header, payload.to_vec()));
                    rx.consume(frame_len);
                }
                Ok(Decoded::Incomplete { .. }) => break,
                Err(error) => return (frames, End::Error(error)),
            }
        }
        let served: Vec<FrameHeader> = frames[seen..].iter().map(|(h, _)| *h).collect();
        assert_eq!(ahead, served, "the frames looked at ahead are the frames served");
        if fed == stream.len() {
            return (frames, End::Incomplete);
        }
        let spare = rx.spare();
        assert!(
            !spare.is_empty(),
            "receive buffer full ({} bytes buffered) without a whole frame",
            rx.buffered()
        );
        let offered = spare.len();
        let n = offered.min(chunks.next_len()).min(stream.len() - fed);
        spare[..n].copy_from_slice(&stream[fed..fed + n]);
        rx.filled(n);
        fed += n;
        // Fit the buffer as the server does after each read (the server
        // after serving the read's frames, here before: it must keep every
        // byte either way).
        rx.adapt(n, offered, burst_max);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let limit = input.choose(&LIMITS);
    let seed = input.byte();
    let stream = input.rest();

    let (frames, end) = flat(stream, limit);
    let (frames_chunked, end_chunked) = chunked(stream, limit, seed);
    assert_eq!(
        frames.len(),
        frames_chunked.len(),
        "frame count differs when chunked"
    );
    assert!(frames == frames_chunked, "frames differ when chunked");
    assert_eq!(end, end_chunked, "the stream ends differently when chunked");
});
