//! The NBD transmission phase, sans-IO: `palisade_fencing_proxy::nbd::Transmission`
//! on an arbitrary request stream, for an arbitrary (valid) export.
//!
//! Input: limits, the export as the caller describes it (size, flags,
//! block sizes), whether structured replies were negotiated, a seed for how
//! the stream is cut into reads, then the client's byte stream.
//!
//! Asserts (fencing-proxy/src/nbd/ module docs; docs/DESIGN.md S3's premise that
//! no refused request reaches the backend):
//! - no panic on any stream;
//! - every `Incoming::Request` is one the export allows: a command it
//!   advertises, only advertised command flags, no write to a read-only
//!   export, inside the export, aligned to the minimum block size, reads
//!   and writes within the maximum block size; a write carries exactly its
//!   payload, nothing else carries one;
//! - nothing is decoded after a disconnect or a fatal error, and nothing is
//!   kept;
//! - memory stays bounded: after draining, at most one partial request
//!   (header and write payload) plus the last read is buffered;
//! - the reply encoder writes well-formed replies (magic, cookie, error,
//!   length) for every request and refusal;
//! - cutting the stream into different reads changes nothing: the same
//!   items, with the same payloads, as when it arrives in one piece.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::nbd;
use palisade_fuzz::{Chunks, Input};
use palisade_fencing_proxy::nbd::Transmission;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let config = nbd::config(&mut input);
    let info = nbd::export_info(&mut input);
    let structured = input.bool();
    let seed = input.byte();
    let stream = input.rest();

    let mut whole = Transmission::new(config, "disk0".into(), info, structured);
    let seen_whole = nbd::drive(&mut whole, stream, None);
    let mut pieces = Transmission::new(config, "disk0".into(), info, structured);
    let seen_pieces = nbd::drive(
        &mut pieces,
        stream,
        Some(Chunks::new(u32::from(seed) * 40503, 61)),
    );
    assert_eq!(
        seen_whole, seen_pieces,
        "the decoder depends on how the stream was read"
    );
});
