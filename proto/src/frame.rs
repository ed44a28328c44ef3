//! The frame: a fixed 24-byte header followed by an rkyv payload.
//!
//! ```text
//! offset size field
//!  0     4    payload_len   u32 LE, exact length of the rkyv payload
//!  4     1    version       protocol version (PROTOCOL_VERSION)
//!  5     1    kind          1 = request, 2 = response
//!  6     2    flags         reserved, must be 0
//!  8     8    request_id    u64 LE, echoed in the response (pipelining)
//! 16     4    group         u32 LE, resource group (always 0 until sharding)
//! 20     4    reserved      must be 0
//! 24     ...  payload, then zero padding up to a multiple of 8
//! ```
//!
//! Frames are padded to 8 bytes so that, in a receive buffer whose base is
//! 8-aligned, every payload starts 8-aligned: rkyv reads archived values in
//! place and needs that alignment.

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 24;
/// Alignment of frames on the wire and of payloads in receive buffers.
pub const FRAME_ALIGN: usize = 8;
/// Hard upper bound on any payload, whatever a server is configured to.
pub const PAYLOAD_LEN_MAX_HARD: u32 = 1 << 20;

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Client to server.
    Request = 1,
    /// Server to client.
    Response = 2,
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Exact payload length in bytes (without padding).
    pub payload_len: u32,
    /// Request or response.
    pub kind: FrameKind,
    /// Chosen by the client, echoed by the server.
    pub request_id: u64,
    /// Resource group the request is for (always 0 for now).
    pub group: u32,
}

impl FrameHeader {
    /// Bytes this frame occupies on the wire, header and padding included.
    #[must_use]
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + padded_len(self.payload_len as usize)
    }

    /// Writes the header into `out` (exactly [`HEADER_LEN`] bytes).
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..4].copy_from_slice(&self.payload_len.to_le_bytes());
        out[4] = PROTOCOL_VERSION;
        out[5] = self.kind as u8;
        out[6..8].copy_from_slice(&0u16.to_le_bytes());
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out[16..20].copy_from_slice(&self.group.to_le_bytes());
        out[20..24].copy_from_slice(&0u32.to_le_bytes());
    }

    /// Parses and validates a header: version, kind, reserved fields and the
    /// payload bound are checked before anything else is read.
    pub fn parse(bytes: &[u8; HEADER_LEN], payload_len_max: u32) -> Result<Self, FrameError> {
        let version = bytes[4];
        if version != PROTOCOL_VERSION {
            return Err(FrameError::UnsupportedVersion { got: version });
        }
        let kind = match bytes[5] {
            1 => FrameKind::Request,
            2 => FrameKind::Response,
            other => return Err(FrameError::BadKind { got: other }),
        };
        let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
        let reserved = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
        if flags != 0 || reserved != 0 {
            return Err(FrameError::ReservedNotZero);
        }
        let payload_len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let max = payload_len_max.min(PAYLOAD_LEN_MAX_HARD);
        if payload_len > max {
            return Err(FrameError::TooLarge {
                len: payload_len,
                max,
            });
        }
        if payload_len == 0 {
            return Err(FrameError::EmptyPayload);
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[8..16]);
        Ok(FrameHeader {
            payload_len,
            kind,
            request_id: u64::from_le_bytes(id),
            group: u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
        })
    }
}

/// `len` rounded up to a multiple of [`FRAME_ALIGN`].
#[must_use]
pub const fn padded_len(len: usize) -> usize {
    (len + FRAME_ALIGN - 1) & !(FRAME_ALIGN - 1)
}

/// A frame whose header is not acceptable. Always the sender's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header's version byte is not [`PROTOCOL_VERSION`].
    #[error("unsupported protocol version {got} (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version byte received.
        got: u8,
    },
    /// The kind byte is neither request nor response.
    #[error("unknown frame kind {got}")]
    BadKind {
        /// The kind byte received.
        got: u8,
    },
    /// Reserved header fields are not zero.
    #[error("reserved header fields are not zero")]
    ReservedNotZero,
    /// The payload is larger than allowed.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Announced payload length.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// A frame must carry a message.
    #[error("empty payload")]
    EmptyPayload,
    /// The payload does not hold a valid archived message.
    #[error("payload failed validation")]
    Invalid,
    /// The peer closed the stream in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
}

/// Result of looking at the front of a receive buffer.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// A whole frame is available.
    Frame {
        /// Its validated header.
        header: FrameHeader,
        /// The exact payload (without padding), 8-aligned if the buffer is.
        payload: &'a [u8],
        /// How many bytes to consume from the buffer.
        frame_len: usize,
    },
    /// More bytes are needed; `needed` is the total the frame will occupy
    /// once known (after the header arrived).
    Incomplete {
        /// Total frame length, if the header has arrived.
        needed: Option<usize>,
    },
}

/// Looks at the front of `buf` for one frame.
///
/// Call repeatedly, consuming `frame_len` bytes after each `Frame`, until it
/// returns `Incomplete`. `buf` must start at an 8-aligned address for the
/// payload to be readable in place.
pub fn decode_frame(buf: &[u8], payload_len_max: u32) -> Result<Decoded<'_>, FrameError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(Decoded::Incomplete { needed: None });
    };
    let header = FrameHeader::parse(head, payload_len_max)?;
    let frame_len = header.frame_len();
    if buf.len() < frame_len {
        return Ok(Decoded::Incomplete {
            needed: Some(frame_len),
        });
    }
    let payload = &buf[HEADER_LEN..HEADER_LEN + header.payload_len as usize];
    Ok(Decoded::Frame {
        header,
        payload,
        frame_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u32) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        FrameHeader {
            payload_len: len,
            kind: FrameKind::Request,
            request_id: 0x0102_0304_0506_0708,
            group: 7,
        }
        .write(&mut out);
        out
    }

    #[test]
    fn header_round_trips() {
        let bytes = header(40);
        let parsed = FrameHeader::parse(&bytes, 1024).expect("valid header");
        assert_eq!(parsed.payload_len, 40);
        assert_eq!(parsed.kind, FrameKind::Request);
        assert_eq!(parsed.request_id, 0x0102_0304_0506_0708);
        assert_eq!(parsed.group, 7);
        assert_eq!(parsed.frame_len(), HEADER_LEN + 40);
    }

    #[test]
    fn padding_keeps_frames_aligned() {
        assert_eq!(padded_len(0), 0);
        assert_eq!(padded_len(1), 8);
        assert_eq!(padded_len(8), 8);
        assert_eq!(padded_len(9), 16);
        let bytes = header(13);
        let parsed = FrameHeader::parse(&bytes, 1024).expect("valid header");
        assert_eq!(parsed.frame_len() % FRAME_ALIGN, 0);
    }

    #[test]
    fn rejects_bad_headers() {
        let mut bytes = header(8);
        bytes[4] = 9;
        assert_eq!(
            FrameHeader::parse(&bytes, 1024),
            Err(FrameError::UnsupportedVersion { got: 9 })
        );
        let mut bytes = header(8);
        bytes[5] = 3;
        assert_eq!(
            FrameHeader::parse(&bytes, 1024),
            Err(FrameError::BadKind { got: 3 })
        );
        let mut bytes = header(8);
        bytes[6] = 1;
        assert_eq!(
            FrameHeader::parse(&bytes, 1024),
            Err(FrameError::ReservedNotZero)
        );
        let mut bytes = header(8);
        bytes[23] = 1;
        assert_eq!(
            FrameHeader::parse(&bytes, 1024),
            Err(FrameError::ReservedNotZero)
        );
        let bytes = header(2048);
        assert_eq!(
            FrameHeader::parse(&bytes, 1024),
            Err(FrameError::TooLarge {
                len: 2048,
                max: 1024
            })
        );
        let bytes = header(0);
        assert_eq!(
            FrameHeader::parse(&bytes, 1024),
            Err(FrameError::EmptyPayload)
        );
    }

    #[test]
    fn hard_cap_applies_over_configured_limit() {
        let bytes = header(PAYLOAD_LEN_MAX_HARD + 8);
        assert!(matches!(
            FrameHeader::parse(&bytes, u32::MAX),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn decode_waits_for_whole_frame() {
        let mut buf = header(8).to_vec();
        assert!(matches!(
            decode_frame(&buf[..10], 1024),
            Ok(Decoded::Incomplete { needed: None })
        ));
        assert!(matches!(
            decode_frame(&buf, 1024),
            Ok(Decoded::Incomplete { needed: Some(32) })
        ));
        buf.extend_from_slice(&[1; 8]);
        match decode_frame(&buf, 1024) {
            Ok(Decoded::Frame {
                payload, frame_len, ..
            }) => {
                assert_eq!(payload, &[1; 8]);
                assert_eq!(frame_len, 32);
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}
