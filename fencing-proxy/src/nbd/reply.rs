//! Transmission replies, simple or structured: [`ReplyEncoder`].

use super::*;

/// Encodes transmission replies, simple or structured as negotiated. Cheap
/// to copy: keep one per connection and use it from anywhere.
///
/// Every method appends to `out`; the caller writes `out` in order. Each
/// request gets exactly one complete reply: [`ReplyEncoder::ok`],
/// [`ReplyEncoder::read`], [`ReplyEncoder::read_header`] plus the data,
/// [`ReplyEncoder::error`], or (structured only) [`ReplyEncoder::read_chunk`]s
/// closed by `ok` or `error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyEncoder {
    structured_replies: bool,
}

impl ReplyEncoder {
    /// An encoder; `structured_replies` as negotiated in the handshake.
    #[must_use]
    pub fn new(structured_replies: bool) -> Self {
        ReplyEncoder { structured_replies }
    }

    /// Whether this encoder sends structured replies.
    #[must_use]
    pub fn structured_replies(&self) -> bool {
        self.structured_replies
    }

    /// Success without data (write, flush, trim, write zeroes), or the end
    /// of a read sent as chunks.
    pub fn ok(&self, out: &mut Vec<u8>, cookie: u64) {
        if self.structured_replies {
            chunk_header(out, wire::REPLY_FLAG_DONE, wire::REPLY_TYPE_NONE, cookie, 0);
        } else {
            simple_header(out, 0, cookie);
        }
    }

    /// A complete successful read of `data` at `offset`.
    pub fn read(&self, out: &mut Vec<u8>, cookie: u64, offset: u64, data: &[u8]) {
        let data_len = u32::try_from(data.len()).expect("read length fits the request's u32");
        self.read_header(out, cookie, offset, data_len);
        out.extend_from_slice(data);
    }

    /// The header of a complete successful read; the caller then sends
    /// exactly `data_len` bytes of data itself (to avoid a copy).
    pub fn read_header(&self, out: &mut Vec<u8>, cookie: u64, offset: u64, data_len: u32) {
        if !self.structured_replies {
            simple_header(out, 0, cookie);
        } else if data_len == 0 {
            // An OFFSET_DATA chunk must carry data.
            self.ok(out, cookie);
        } else {
            let payload_len = data_len
                .checked_add(8)
                .expect("read length below 4 GiB - 8");
            chunk_header(
                out,
                wire::REPLY_FLAG_DONE,
                wire::REPLY_TYPE_OFFSET_DATA,
                cookie,
                payload_len,
            );
            out.extend_from_slice(&offset.to_be_bytes());
        }
    }

    /// A non-final chunk of a read (structured replies only); finish the
    /// reply with [`ReplyEncoder::ok`] or [`ReplyEncoder::error`]. Panics
    /// without structured replies or with empty `data`.
    pub fn read_chunk(&self, out: &mut Vec<u8>, cookie: u64, offset: u64, data: &[u8]) {
        assert!(
            self.structured_replies,
            "read chunks need structured replies"
        );
        assert!(!data.is_empty(), "an OFFSET_DATA chunk must carry data");
        let payload_len = u32::try_from(data.len())
            .ok()
            .and_then(|len| len.checked_add(8))
            .expect("chunk below 4 GiB - 8");
        chunk_header(out, 0, wire::REPLY_TYPE_OFFSET_DATA, cookie, payload_len);
        out.extend_from_slice(&offset.to_be_bytes());
        out.extend_from_slice(data);
    }

    /// A failure. With structured replies `message` (truncated to 4096
    /// bytes) reaches the client; with simple replies only `error` does.
    pub fn error(&self, out: &mut Vec<u8>, cookie: u64, error: Errno, message: &str) {
        if !self.structured_replies {
            simple_header(out, error.to_wire(), cookie);
            return;
        }
        let message = truncate_str(message, STRING_LEN_MAX);
        let message_len = u16::try_from(message.len()).expect("truncated to 4096");
        chunk_header(
            out,
            wire::REPLY_FLAG_DONE,
            wire::REPLY_TYPE_ERROR,
            cookie,
            6 + u32::from(message_len),
        );
        out.extend_from_slice(&error.to_wire().to_be_bytes());
        out.extend_from_slice(&message_len.to_be_bytes());
        out.extend_from_slice(message.as_bytes());
    }

    /// The error reply for a [`Refusal`].
    pub fn refuse(&self, out: &mut Vec<u8>, refusal: &Refusal) {
        self.error(out, refusal.request.cookie, refusal.error, refusal.reason);
    }
}

fn simple_header(out: &mut Vec<u8>, error: u32, cookie: u64) {
    out.extend_from_slice(&wire::SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

fn chunk_header(out: &mut Vec<u8>, flags: u16, reply_type: u16, cookie: u64, payload_len: u32) {
    out.extend_from_slice(&wire::STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&payload_len.to_be_bytes());
}
