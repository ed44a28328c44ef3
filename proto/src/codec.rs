//! Encoding frames into, and reading frames out of, aligned byte buffers.

use rkyv::rancor::Failure;
use rkyv::util::AlignedVec;

use crate::frame::{
    decode_frame, padded_len, Decoded, FrameError, FrameHeader, FrameKind, FRAME_ALIGN, HEADER_LEN,
};
use crate::msg::{ArchivedRequest, ArchivedResponse, Request, Response};

/// Alignment of the buffers frames are written into and read from.
pub const BUF_ALIGN: usize = 16;
/// An output or input buffer whose base is [`BUF_ALIGN`]-aligned.
pub type FrameBuf = AlignedVec<BUF_ALIGN>;

const _: () = assert!(core::mem::align_of::<ArchivedRequest>() <= FRAME_ALIGN);
const _: () = assert!(core::mem::align_of::<ArchivedResponse>() <= FRAME_ALIGN);

/// Failure to encode a frame. Programmer errors (a message above the hard
/// size bound) are reported rather than truncated.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The serialized payload exceeds the limit.
    #[error("encoded payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Serialized length.
        len: usize,
        /// Limit.
        max: u32,
    },
    /// rkyv failed to serialize (allocation failure).
    #[error("serialization failed")]
    Serialize,
}

fn encode<T>(
    out: &mut FrameBuf,
    kind: FrameKind,
    request_id: u64,
    group: u32,
    payload_len_max: u32,
    value: &T,
    validates: fn(&[u8]) -> bool,
) -> Result<usize, EncodeError>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            &'a mut FrameBuf,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    let start = out.len();
    assert_eq!(
        start % FRAME_ALIGN,
        0,
        "frames start 8-aligned in the buffer"
    );
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let serialized = rkyv::util::with_arena(|arena| {
        rkyv::api::high::to_bytes_in_with_alloc::<_, _, rkyv::rancor::Error>(
            value,
            &mut *out,
            arena.acquire(),
        )
        .map(|_| ())
    });
    if serialized.is_err() {
        out.resize(start, 0);
        return Err(EncodeError::Serialize);
    }
    let payload_len = out.len() - start - HEADER_LEN;
    if payload_len > payload_len_max as usize {
        out.resize(start, 0);
        return Err(EncodeError::TooLarge {
            len: payload_len,
            max: payload_len_max,
        });
    }
    let header = FrameHeader {
        payload_len: u32::try_from(payload_len).expect("bounded by payload_len_max"),
        kind,
        request_id,
        group,
    };
    let mut head = [0u8; HEADER_LEN];
    header.write(&mut head);
    out[start..start + HEADER_LEN].copy_from_slice(&head);
    out.resize(start + HEADER_LEN + padded_len(payload_len), 0);
    // Pair assertion: what we wrote decodes to the same header and validates.
    debug_assert!(matches!(
        decode_frame(&out[start..], payload_len_max),
        Ok(Decoded::Frame { header: h, payload, .. }) if h == header && validates(payload)
    ));
    Ok(out.len() - start)
}

/// Appends one request frame to `out`. Returns the bytes written.
pub fn encode_request(
    out: &mut FrameBuf,
    request_id: u64,
    group: u32,
    payload_len_max: u32,
    request: &Request,
) -> Result<usize, EncodeError> {
    encode(
        out,
        FrameKind::Request,
        request_id,
        group,
        payload_len_max,
        request,
        |payload| access_request(payload).is_ok(),
    )
}

/// Appends one response frame to `out`. Returns the bytes written.
pub fn encode_response(
    out: &mut FrameBuf,
    request_id: u64,
    group: u32,
    payload_len_max: u32,
    response: &Response,
) -> Result<usize, EncodeError> {
    encode(
        out,
        FrameKind::Response,
        request_id,
        group,
        payload_len_max,
        response,
        |payload| access_response(payload).is_ok(),
    )
}

/// Validates `payload` (bytecheck) and returns the archived request in place.
/// No field is read before validation succeeds.
pub fn access_request(payload: &[u8]) -> Result<&ArchivedRequest, FrameError> {
    rkyv::access::<ArchivedRequest, Failure>(payload).map_err(|_| FrameError::Invalid)
}

/// Validates `payload` (bytecheck) and returns the archived response in place.
pub fn access_response(payload: &[u8]) -> Result<&ArchivedResponse, FrameError> {
    rkyv::access::<ArchivedResponse, Failure>(payload).map_err(|_| FrameError::Invalid)
}

/// Decodes an owned response (client side; the server never does this).
pub fn decode_response(payload: &[u8]) -> Result<Response, FrameError> {
    let archived = access_response(payload)?;
    rkyv::deserialize::<Response, Failure>(archived).map_err(|_| FrameError::Invalid)
}

/// Decodes an owned request (tests and tools; the server reads in place).
pub fn decode_request(payload: &[u8]) -> Result<Request, FrameError> {
    let archived = access_request(payload)?;
    rkyv::deserialize::<Request, Failure>(archived).map_err(|_| FrameError::Invalid)
}

/// A receive buffer: bytes arrive at the end, frames are read in place from
/// the front. Its base is 16-aligned and frames are 8-padded, so every
/// payload it hands out is 8-aligned as rkyv requires.
#[derive(Debug)]
pub struct RecvBuf {
    data: FrameBuf,
    start: usize,
    end: usize,
    capacity_max: usize,
    /// The size it starts with and returns to ([`RecvBuf::adapt`]).
    initial: usize,
}

impl RecvBuf {
    /// A buffer of `capacity` bytes that may grow to `capacity_max` when a
    /// single frame needs it.
    #[must_use]
    pub fn new(capacity: usize, capacity_max: usize) -> RecvBuf {
        assert!(capacity >= HEADER_LEN);
        assert!(capacity <= capacity_max);
        let mut data = FrameBuf::with_capacity(capacity);
        data.resize(capacity, 0);
        RecvBuf {
            data,
            start: 0,
            end: 0,
            capacity_max,
            initial: capacity,
        }
    }

    /// Bytes the buffer holds room for now.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Fits the buffer to how its peer sends, after a read of `read` bytes
    /// into `offered` bytes of [`RecvBuf::spare`] and the frames served: a
    /// read that filled all it was offered doubles the buffer (up to
    /// `burst_max`, never past `capacity_max`), so that a pipelining peer's
    /// burst is taken in fewer reads; an empty buffer after a read of less
    /// than a quarter of it goes back to its initial size, so that a quiet
    /// connection does not keep a burst's memory.
    pub fn adapt(&mut self, read: usize, offered: usize, burst_max: usize) {
        let size = self.data.len();
        let burst_max = burst_max.min(self.capacity_max);
        if read == offered && size < burst_max {
            let grown = (size * 2).min(burst_max);
            self.data.resize(grown, 0);
        } else if self.start == self.end && size > self.initial && read < size / 4 {
            let mut data = FrameBuf::with_capacity(self.initial);
            data.resize(self.initial, 0);
            self.data = data;
            self.start = 0;
            self.end = 0;
        }
    }

    /// Bytes received and not yet consumed.
    #[must_use]
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Space to receive into. Call before each read; never empty while the
    /// buffer is below `capacity_max` or holds consumed bytes.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end == self.data.len() && self.start > 0 {
            // Moving to offset 0 keeps alignment: frames start 8-aligned.
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() && self.data.len() < self.capacity_max {
            let grown = (self.data.len() * 2).min(self.capacity_max);
            self.data.resize(grown, 0);
        }
        &mut self.data[self.end..]
    }

    /// Records that `n` bytes were written into [`RecvBuf::spare`].
    pub fn filled(&mut self, n: usize) {
        assert!(self.end + n <= self.data.len(), "filled beyond spare space");
        self.end += n;
    }

    /// The next frame at the front, if whole. Consume it with
    /// [`RecvBuf::consume`] before asking again.
    pub fn next_frame(&self, payload_len_max: u32) -> Result<Decoded<'_>, FrameError> {
        debug_assert_eq!(self.start % FRAME_ALIGN, 0);
        decode_frame(&self.data[self.start..self.end], payload_len_max)
    }

    /// The whole frame `offset` bytes past the front, if there is one:
    /// a look ahead at frames not yet consumed (`offset` is the sum of
    /// the `frame_len`s before it), for a server that prepares a batch
    /// before serving it.
    pub fn frame_at(&self, offset: usize, payload_len_max: u32) -> Result<Decoded<'_>, FrameError> {
        assert_eq!(offset % FRAME_ALIGN, 0, "frames are 8-padded");
        let start = (self.start + offset).min(self.end);
        decode_frame(&self.data[start..self.end], payload_len_max)
    }

    /// Drops `n` bytes from the front (a whole frame).
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.buffered(), "consumed more than buffered");
        assert_eq!(n % FRAME_ALIGN, 0, "frames are 8-padded");
        self.start += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::Welcome;
    use crate::ErrorCode;

    fn acquire() -> Request {
        Request::Acquire {
            resource: "disk0".into(),
            holder: 9,
            ttl_ms: 10_000,
            lock_delay_ms: 0,
            wait_ms: 0,
        }
    }

    #[test]
    fn request_round_trip_in_place() {
        let mut out = FrameBuf::new();
        let written = encode_request(&mut out, 5, 0, 4096, &acquire()).expect("encodes");
        assert_eq!(written, out.len());
        assert_eq!(written % FRAME_ALIGN, 0);
        let Ok(Decoded::Frame {
            header, payload, ..
        }) = decode_frame(&out, 4096)
        else {
            panic!("frame expected");
        };
        assert_eq!(header.request_id, 5);
        assert_eq!(header.kind, FrameKind::Request);
        match access_request(payload).expect("valid") {
            ArchivedRequest::Acquire {
                resource,
                holder,
                ttl_ms,
                ..
            } => {
                assert_eq!(resource.as_str(), "disk0");
                assert_eq!(holder.to_native(), 9);
                assert_eq!(ttl_ms.to_native(), 10_000);
            }
            other => panic!("wrong variant {other:?}"),
        }
    }

    #[test]
    fn pipelined_frames_stay_aligned() {
        let mut out = FrameBuf::new();
        for id in 0..10u64 {
            let req = Request::Check {
                resource: "r".repeat(id as usize + 1),
                token: id,
            };
            encode_request(&mut out, id, 0, 4096, &req).expect("encodes");
        }
        let mut buf = RecvBuf::new(64, 1 << 16);
        let mut fed = 0;
        let mut seen = 0u64;
        while seen < 10 {
            // Feed in awkward 13-byte pieces to exercise partial frames.
            let spare = buf.spare();
            let n = spare.len().min(13).min(out.len() - fed);
            spare[..n].copy_from_slice(&out[fed..fed + n]);
            buf.filled(n);
            fed += n;
            while let Decoded::Frame {
                header,
                payload,
                frame_len,
            } = buf.next_frame(4096).expect("valid")
            {
                assert_eq!(payload.as_ptr() as usize % FRAME_ALIGN, 0);
                assert_eq!(header.request_id, seen);
                let req = decode_request(payload).expect("valid");
                assert_eq!(
                    req,
                    Request::Check {
                        resource: "r".repeat(seen as usize + 1),
                        token: seen
                    }
                );
                buf.consume(frame_len);
                seen += 1;
            }
        }
        assert_eq!(buf.buffered(), 0);
    }

    #[test]
    fn frames_ahead_are_seen_without_consuming() {
        let mut out = FrameBuf::new();
        for id in 0..3u64 {
            let req = Request::Check {
                resource: "r".repeat(id as usize * 9 + 1),
                token: id,
            };
            encode_request(&mut out, id, 0, 4096, &req).expect("encodes");
        }
        let mut buf = RecvBuf::new(4096, 1 << 16);
        // Two whole frames and part of the third.
        let n = out.len() - 3;
        buf.spare()[..n].copy_from_slice(&out[..n]);
        buf.filled(n);
        let mut offset = 0;
        let mut ids = Vec::new();
        while let Decoded::Frame {
            header, frame_len, ..
        } = buf.frame_at(offset, 4096).expect("valid")
        {
            ids.push(header.request_id);
            offset += frame_len;
        }
        assert_eq!(ids, [0, 1]);
        assert!(matches!(
            buf.frame_at(offset + 4096, 4096),
            Ok(Decoded::Incomplete { .. })
        ));
        // Nothing was consumed: the front is still the first frame.
        let Ok(Decoded::Frame {
            header, frame_len, ..
        }) = buf.next_frame(4096)
        else {
            panic!("the first frame is still there");
        };
        assert_eq!(header.request_id, 0);
        buf.consume(frame_len);
        let Ok(Decoded::Frame { header, .. }) = buf.frame_at(0, 4096) else {
            panic!("the second frame is at the front now");
        };
        assert_eq!(header.request_id, 1);
    }

    #[test]
    fn a_buffer_grows_for_bursts_and_shrinks_when_quiet() {
        let request = Request::Check {
            resource: "r".into(),
            token: 1,
        };
        let mut one = FrameBuf::new();
        encode_request(&mut one, 2, 0, 4096, &request).expect("encodes");
        let mut out = FrameBuf::new();
        while out.len() < 20_000 {
            out.extend_from_slice(&one);
        }
        let mut buf = RecvBuf::new(1024, 8192);
        let mut fed = 0;
        let mut sizes = Vec::new();
        let mut frames = 0;
        while fed < out.len() {
            let spare = buf.spare();
            let offered = spare.len();
            let n = offered.min(out.len() - fed);
            spare[..n].copy_from_slice(&out[fed..fed + n]);
            buf.filled(n);
            fed += n;
            while let Ok(Decoded::Frame { frame_len, .. }) = buf.next_frame(4096) {
                buf.consume(frame_len);
                frames += 1;
            }
            buf.adapt(n, offered, 4096);
            sizes.push(buf.capacity());
        }
        // Full reads doubled it up to the burst limit, not further.
        assert_eq!(&sizes[..3], &[2048, 4096, 4096]);
        assert_eq!(frames, out.len() / one.len(), "every frame arrived once");
        assert_eq!(buf.buffered(), 0);
        // A small read into the empty buffer: back to the initial size.
        let spare = buf.spare();
        let offered = spare.len();
        spare[..one.len()].copy_from_slice(&one);
        buf.filled(one.len());
        let Ok(Decoded::Frame { frame_len, .. }) = buf.next_frame(4096) else {
            panic!("a whole frame");
        };
        buf.consume(frame_len);
        buf.adapt(one.len(), offered, 4096);
        assert_eq!(buf.capacity(), 1024);
        // Never past the largest frame's size, whatever the burst limit.
        let mut small = RecvBuf::new(1024, 2048);
        for _ in 0..3 {
            let offered = small.spare().len();
            small.adapt(offered, offered, 1 << 20);
        }
        assert_eq!(small.capacity(), 2048);
    }

    #[test]
    fn response_round_trip() {
        let responses = [
            Response::Welcome(Welcome {
                node_id: 1,
                epoch: 3,
                max_ttl_ms: 30_000,
                min_ttl_ms: 100,
                lock_delay_max_ms: 60_000,
                max_drift_ppm: 10_000,
                server_signature: Some([7; 32]),
            }),
            Response::Granted {
                token: (3 << 32) | 1,
                ttl_ms: 10,
                waited_ms: 0,
            },
            Response::Error {
                code: ErrorCode::TableFull,
                retry_after_ms: 5,
                message: "full".into(),
            },
        ];
        for response in responses {
            let mut out = FrameBuf::new();
            encode_response(&mut out, 1, 0, 4096, &response).expect("encodes");
            let Ok(Decoded::Frame { payload, .. }) = decode_frame(&out, 4096) else {
                panic!("frame expected");
            };
            assert_eq!(decode_response(payload).expect("valid"), response);
        }
    }

    #[test]
    fn oversized_payload_is_refused_and_buffer_untouched() {
        let mut out = FrameBuf::new();
        let req = Request::Check {
            resource: "x".repeat(300),
            token: 1,
        };
        let err = encode_request(&mut out, 1, 0, 64, &req).expect_err("too large");
        assert!(matches!(err, EncodeError::TooLarge { .. }));
        assert!(out.is_empty());
    }

    #[test]
    fn garbage_payload_fails_validation() {
        let mut buf = FrameBuf::new();
        buf.extend_from_slice(&[0xff; 64]);
        assert_eq!(access_request(&buf).map(|_| ()), Err(FrameError::Invalid));
        assert_eq!(
            access_response(&buf[..3]).map(|_| ()),
            Err(FrameError::Invalid)
        );
    }
}
