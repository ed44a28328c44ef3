//! The message layer: `access_request` / `access_response` (bytecheck
//! validation, read in place, as the server does) and `decode_request` /
//! `decode_response` (owned, as the client does), on an arbitrary payload.
//!
//! Input: the payload, copied into an aligned buffer (receive buffers are
//! 16-aligned and frames 8-padded, so payloads always start 8-aligned);
//! both directions are tried on the same bytes. A second pass, chosen by
//! the input's length, starts the payload 8 bytes into the buffer (still
//! 8-aligned, the position of every frame after the first).
//!
//! Asserts (proto/src/codec.rs, docs/PROTOCOL.md "Out-of-line data"):
//! - no panic and no UB under ASan on any payload;
//! - validation and decoding agree: a payload that validates in place also
//!   deserializes, and one that does not, does not;
//! - round trip: what decodes re-encodes (`encode_*`, under the hard size
//!   limit), the re-encoded frame decodes to the same message, and encoding
//!   that again gives the same bytes (the encoding is canonical). The input
//!   bytes themselves need not come back: the protocol accepts gaps and
//!   ignores padding, so several payloads mean one message;
//! - a canonical payload is never longer than the payload it came from
//!   (the encoder packs; every accepted layout holds the same objects).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_proto::frame::PAYLOAD_LEN_MAX_HARD;
use palisade_proto::{
    access_request, access_response, decode_request, decode_response, encode_request,
    encode_response, Decoded, FrameBuf, FrameKind,
};

fn canonical_request(request: &palisade_proto::Request) -> Vec<u8> {
    let mut out = FrameBuf::new();
    encode_request(&mut out, 1, 0, PAYLOAD_LEN_MAX_HARD, request)
        .expect("a decoded request re-encodes");
    let Ok(Decoded::Frame {
        header, payload, ..
    }) = palisade_proto::frame::decode_frame(&out, PAYLOAD_LEN_MAX_HARD)
    else {
        panic!("an encoded request is one whole frame");
    };
    assert_eq!(header.kind, FrameKind::Request);
    let again = decode_request(payload).expect("a canonical request decodes");
    assert_eq!(&again, request, "request round trip changed the message");
    payload.to_vec()
}

fn canonical_response(response: &palisade_proto::Response) -> Vec<u8> {
    let mut out = FrameBuf::new();
    encode_response(&mut out, 1, 0, PAYLOAD_LEN_MAX_HARD, response)
        .expect("a decoded response re-encodes");
    let Ok(Decoded::Frame {
        header, payload, ..
    }) = palisade_proto::frame::decode_frame(&out, PAYLOAD_LEN_MAX_HARD)
    else {
        panic!("an encoded response is one whole frame");
    };
    assert_eq!(header.kind, FrameKind::Response);
    let again = decode_response(payload).expect("a canonical response decodes");
    assert_eq!(&again, response, "response round trip changed the message");
    payload.to_vec()
}

fn check(payload: &[u8]) {
    let in_place = access_request(payload).is_ok();
    let owned = decode_request(payload);
    assert_eq!(
        in_place,
        owned.is_ok(),
        "access_request and decode_request disagree"
    );
    if let Ok(request) = owned {
        let canonical = canonical_request(&request);
        assert!(
            canonical.len() <= payload.len(),
            "canonical request is longer than its source"
        );
        let request_again = decode_request(&aligned(&canonical)).expect("canonical decodes");
        assert_eq!(
            canonical_request(&request_again),
            canonical,
            "encoding is not canonical"
        );
    }

    let in_place = access_response(payload).is_ok();
    let owned = decode_response(payload);
    assert_eq!(
        in_place,
        owned.is_ok(),
        "access_response and decode_response disagree"
    );
    if let Ok(response) = owned {
        let canonical = canonical_response(&response);
        assert!(
            canonical.len() <= payload.len(),
            "canonical response is longer than its source"
        );
        let response_again = decode_response(&aligned(&canonical)).expect("canonical decodes");
        assert_eq!(
            canonical_response(&response_again),
            canonical,
            "encoding is not canonical"
        );
    }
}

fn aligned(bytes: &[u8]) -> FrameBuf {
    let mut buf = FrameBuf::new();
    buf.extend_from_slice(bytes);
    buf
}

fuzz_target!(|data: &[u8]| {
    let buf = aligned(data);
    check(&buf);
    if data.len() % 2 == 1 {
        let mut shifted = FrameBuf::new();
        shifted.extend_from_slice(&[0u8; 8]);
        shifted.extend_from_slice(data);
        check(&shifted[8..]);
    }
});
