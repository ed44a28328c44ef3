//! The NBD protocol, server side, sans-IO.
//!
//! This module turns bytes received from an NBD client into events and
//! decoded requests, and turns the caller's answers into bytes to send. It
//! never touches a socket, never spawns, never reads a clock and never
//! blocks: the proxy's connection loop does the I/O and the export lookup.
//!
//! It speaks fixed newstyle negotiation only (no oldstyle, no TLS, no
//! extended headers, no metadata contexts) and the transmission commands
//! `READ`, `WRITE`, `DISC`, `FLUSH`, `TRIM` and `WRITE_ZEROES`, with simple or
//! structured replies.
//!
//! # Main types
//!
//! - [`Handshake`]: the option-haggling state machine. It asks the caller
//!   which export a name means ([`Event::Export`]) and which exports exist
//!   ([`Event::List`]), and ends in [`Event::Ready`] (then call
//!   [`Handshake::into_transmission`]), [`Event::Aborted`] or
//!   [`Event::Failed`] (then close).
//! - [`Transmission`]: the request decoder. [`Transmission::poll_request`]
//!   yields [`Incoming`] items: a [`Request`] to execute, a [`Refusal`] to
//!   answer with an error, a disconnect, or a fatal protocol error.
//! - [`ReplyEncoder`]: encodes replies, simple or structured depending on
//!   what was negotiated.
//!
//! # How to drive it
//!
//! The shell does four things: read, feed, drain, write.
//!
//! 1. Create a [`Handshake`] and write what [`Handshake::poll_transmit`]
//!    gives (the greeting).
//! 2. For every read from the socket: [`Handshake::handle_input`], then
//!    [`Handshake::poll_event`] until `None`, answering each
//!    [`Event::Export`] with [`Handshake::answer_export`] and each
//!    [`Event::List`] with [`Handshake::answer_list`] (answers may produce
//!    further events, so keep polling), then write what
//!    [`Handshake::poll_transmit`] gives.
//! 3. On [`Event::Aborted`] or [`Event::Failed`], write the pending output
//!    and close. On [`Event::Ready`], write the pending output and call
//!    [`Handshake::into_transmission`].
//! 4. For every read: [`Transmission::handle_input`], then
//!    [`Transmission::poll_request`] until `None`, answering requests with
//!    [`ReplyEncoder`] (from [`Transmission::replies`]).
//!
//! Memory stays bounded as long as the shell drains events or requests
//! before feeding more bytes: then the state machines hold at most one
//! partial message plus the last read. A partial option is under
//! `option_len_max + 16` bytes (the handshake fails if a client sends more
//! while it must wait for a reply; oversized and unknown options are skipped
//! unread); a partial request is under `payload_len_max + 28` bytes (refused
//! writes are skipped unread). See [`Config`].
//!
//! The decoder never trusts the client: every failure is an [`Event`] or an
//! [`Incoming`] value. Panics are kept for the caller's programmer errors
//! (answering a question that was not asked, an invalid [`ExportInfo`]).
//!
//! # Example
//!
//! ```
//! use palisade_fencing_proxy::nbd::{
//!     transmission_flags, wire, Command, Config, Event, ExportInfo, Handshake, Incoming,
//! };
//!
//! let mut handshake = Handshake::new(Config::default());
//! let mut to_client = Vec::new();
//! handshake.poll_transmit(&mut to_client); // NBDMAGIC, IHAVEOPT, handshake flags
//! assert_eq!(to_client.len(), 18);
//!
//! // The client's flags, then NBD_OPT_GO for export "disk0" with no info requests.
//! let mut from_client = Vec::new();
//! from_client.extend_from_slice(&(wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES).to_be_bytes());
//! from_client.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
//! from_client.extend_from_slice(&wire::OPT_GO.to_be_bytes());
//! from_client.extend_from_slice(&(4u32 + 5 + 2).to_be_bytes());
//! from_client.extend_from_slice(&5u32.to_be_bytes());
//! from_client.extend_from_slice(b"disk0");
//! from_client.extend_from_slice(&0u16.to_be_bytes());
//!
//! handshake.handle_input(&from_client);
//! let mut ready = false;
//! while let Some(event) = handshake.poll_event() {
//!     match event {
//!         Event::Export { name, go } => {
//!             assert_eq!((name.as_str(), go), ("disk0", true));
//!             let flags = transmission_flags::SEND_FLUSH | transmission_flags::SEND_FUA;
//!             handshake.answer_export(Ok(ExportInfo::new(1 << 20, flags)));
//!         }
//!         Event::List => handshake.answer_list(Ok(Vec::new())),
//!         Event::Ready { export, structured_replies } => {
//!             assert_eq!((export.as_str(), structured_replies), ("disk0", false));
//!             ready = true;
//!         }
//!         Event::Aborted | Event::Failed(_) => unreachable!("the client behaved"),
//!     }
//! }
//! to_client.clear();
//! handshake.poll_transmit(&mut to_client); // NBD_REP_INFO x2, NBD_REP_ACK: write it
//! assert!(ready);
//! let mut transmission = handshake.into_transmission();
//!
//! // A READ of 512 bytes at offset 4096, cookie 7.
//! let mut request = Vec::new();
//! request.extend_from_slice(&wire::REQUEST_MAGIC.to_be_bytes());
//! request.extend_from_slice(&0u16.to_be_bytes()); // command flags
//! request.extend_from_slice(&wire::CMD_READ.to_be_bytes());
//! request.extend_from_slice(&7u64.to_be_bytes());
//! request.extend_from_slice(&4096u64.to_be_bytes());
//! request.extend_from_slice(&512u32.to_be_bytes());
//! transmission.handle_input(&request);
//! let Some(Incoming::Request(read)) = transmission.poll_request() else { unreachable!() };
//! assert_eq!((read.command, read.offset, read.length), (Command::Read, 4096, 512));
//! assert!(transmission.poll_request().is_none());
//!
//! let mut reply = Vec::new();
//! transmission.replies().read(&mut reply, read.cookie, read.offset, &[0u8; 512]);
//! assert_eq!(reply.len(), 16 + 512); // a simple reply: structured replies were not asked for
//! ```

use std::collections::VecDeque;
use std::ops::Range;

/// Numbers on the wire, named as in the NBD protocol document (without the
/// `NBD_` prefix).
pub mod wire {
    /// `NBDMAGIC`: the first eight bytes the server sends.
    pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
    /// `IHAVEOPT`: the second greeting word, and the magic of every option.
    pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
    /// Magic of every option reply.
    pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
    /// Magic of every transmission request.
    pub const REQUEST_MAGIC: u32 = 0x2560_9513;
    /// Magic of a simple reply.
    pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
    /// Magic of a structured reply chunk.
    pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

    /// Handshake flag: the server speaks fixed newstyle.
    pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
    /// Handshake flag: the server can omit the 124 zeroes after `EXPORT_NAME`.
    pub const FLAG_NO_ZEROES: u16 = 1 << 1;
    /// Client flag: the client speaks fixed newstyle.
    pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
    /// Client flag: omit the 124 zeroes after `EXPORT_NAME`.
    pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

    /// Option: select an export and enter transmission (no error possible).
    pub const OPT_EXPORT_NAME: u32 = 1;
    /// Option: the client ends the session.
    pub const OPT_ABORT: u32 = 2;
    /// Option: list exports.
    pub const OPT_LIST: u32 = 3;
    /// Option: upgrade to TLS (not supported here).
    pub const OPT_STARTTLS: u32 = 5;
    /// Option: describe an export without selecting it.
    pub const OPT_INFO: u32 = 6;
    /// Option: select an export and enter transmission.
    pub const OPT_GO: u32 = 7;
    /// Option: use structured replies in transmission.
    pub const OPT_STRUCTURED_REPLY: u32 = 8;
    /// Option: list metadata contexts (not supported here).
    pub const OPT_LIST_META_CONTEXT: u32 = 9;
    /// Option: select metadata contexts (not supported here).
    pub const OPT_SET_META_CONTEXT: u32 = 10;
    /// Option: use extended headers (not supported here).
    pub const OPT_EXTENDED_HEADERS: u32 = 11;

    /// Option reply: success, or the end of a multi-reply answer.
    pub const REP_ACK: u32 = 1;
    /// Option reply: one export of an `NBD_OPT_LIST` answer.
    pub const REP_SERVER: u32 = 2;
    /// Option reply: one piece of information about an export.
    pub const REP_INFO: u32 = 3;
    /// Bit set in every error option reply.
    pub const REP_FLAG_ERROR: u32 = 1 << 31;

    /// `NBD_REP_INFO` type: export size and transmission flags.
    pub const INFO_EXPORT: u16 = 0;
    /// `NBD_REP_INFO` type: the export's canonical name.
    pub const INFO_NAME: u16 = 1;
    /// `NBD_REP_INFO` type: a human-readable description.
    pub const INFO_DESCRIPTION: u16 = 2;
    /// `NBD_REP_INFO` type: block size constraints.
    pub const INFO_BLOCK_SIZE: u16 = 3;

    /// Command: read.
    pub const CMD_READ: u16 = 0;
    /// Command: write (a payload follows the request).
    pub const CMD_WRITE: u16 = 1;
    /// Command: disconnect.
    pub const CMD_DISC: u16 = 2;
    /// Command: flush.
    pub const CMD_FLUSH: u16 = 3;
    /// Command: trim (discard).
    pub const CMD_TRIM: u16 = 4;
    /// Command: write zeroes.
    pub const CMD_WRITE_ZEROES: u16 = 6;

    /// Structured reply flag: the last chunk of a reply.
    pub const REPLY_FLAG_DONE: u16 = 1 << 0;
    /// Structured reply type: no payload (success, or the end of a read).
    pub const REPLY_TYPE_NONE: u16 = 0;
    /// Structured reply type: data read at an offset.
    pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
    /// Structured reply type: an error with a message.
    pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

    /// Zero bytes that end an `NBD_OPT_EXPORT_NAME` reply unless the client
    /// set [`FLAG_C_NO_ZEROES`].
    pub const EXPORT_NAME_ZEROES_LEN: usize = 124;
}

/// Transmission flags: what the server tells the client about an export.
pub mod transmission_flags {
    /// Always set (the encoder sets it for you).
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Writes, trims and zeroing are refused with `EPERM`.
    pub const READ_ONLY: u16 = 1 << 1;
    /// The client may send `FLUSH`.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// The client may set the `FUA` command flag.
    pub const SEND_FUA: u16 = 1 << 3;
    /// The export behaves like a rotational medium.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// The client may send `TRIM`.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// The client may send `WRITE_ZEROES`.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// The client may set `DF` on reads. Cleared unless structured replies
    /// were negotiated, as the protocol requires.
    pub const SEND_DF: u16 = 1 << 7;
    /// Flushes and FUA writes are visible across connections to the export.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;

    /// Every flag this implementation can honour.
    pub const SUPPORTED: u16 = HAS_FLAGS
        | READ_ONLY
        | SEND_FLUSH
        | SEND_FUA
        | ROTATIONAL
        | SEND_TRIM
        | SEND_WRITE_ZEROES
        | SEND_DF
        | CAN_MULTI_CONN;
}

/// Command flags: set by the client on one request.
pub mod command_flags {
    /// Force unit access: persist before replying.
    pub const FUA: u16 = 1 << 0;
    /// `WRITE_ZEROES` must allocate, not punch a hole.
    pub const NO_HOLE: u16 = 1 << 1;
    /// Do not fragment the read reply.
    pub const DF: u16 = 1 << 2;
    /// Block status: one extent only (not supported here).
    pub const REQ_ONE: u16 = 1 << 3;
    /// `WRITE_ZEROES` must fail rather than be slow (not supported here).
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Longest export name (and any other protocol string), in bytes.
pub const STRING_LEN_MAX: usize = 4096;

const GREETING_LEN: usize = 18;
const OPTION_HEADER_LEN: usize = 16;
/// Length of a transmission request header (before any write payload).
pub const REQUEST_HEADER_LEN: usize = 28;
const BLOCK_SIZE_MIN_MAX: u32 = 64 * 1024;

/// Limits for one connection, sized at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Largest `NBD_OPT_INFO`/`NBD_OPT_GO` payload we buffer. Larger ones are
    /// skipped unread and answered with `NBD_REP_ERR_TOO_BIG`. At least
    /// [`Config::OPTION_LEN_MAX_MIN`].
    pub option_len_max: u32,
    /// Options one connection may send before we hang up on it.
    pub options_count_max: u32,
    /// Largest read or write, in bytes; the advertised maximum block size is
    /// capped to it. A larger `WRITE` is fatal (see [`Incoming::Fatal`]). At
    /// least [`Config::PAYLOAD_LEN_MAX_MIN`].
    pub payload_len_max: u32,
}

impl Config {
    /// Smallest allowed `option_len_max`: a longest name plus room for
    /// information requests.
    pub const OPTION_LEN_MAX_MIN: u32 = STRING_LEN_MAX as u32 + 64;
    /// Smallest allowed `payload_len_max` (the largest legal minimum block
    /// size, so the advertised maximum is always a multiple of it).
    pub const PAYLOAD_LEN_MAX_MIN: u32 = BLOCK_SIZE_MIN_MAX;

    fn assert_valid(&self) {
        assert!(self.option_len_max >= Self::OPTION_LEN_MAX_MIN);
        assert!(self.options_count_max > 0);
        assert!(self.payload_len_max >= Self::PAYLOAD_LEN_MAX_MIN);
    }

    fn input_handshake_max(&self) -> usize {
        OPTION_HEADER_LEN + self.option_len_max as usize
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            option_len_max: 64 * 1024,
            options_count_max: 1024,
            payload_len_max: 32 * 1024 * 1024,
        }
    }
}

mod handshake;
mod reply;
mod transmission;

pub use handshake::*;
pub use reply::*;
pub use transmission::*;

/// The longest prefix of `s` of at most `max` bytes that ends on a char
/// boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// Readers for fixed-width big-endian fields; callers check lengths first.
fn read_u16(bytes: &[u8], at: usize) -> u16 {
    let mut field = [0u8; 2];
    field.copy_from_slice(&bytes[at..at + 2]);
    u16::from_be_bytes(field)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut field = [0u8; 4];
    field.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(field)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut field = [0u8; 8];
    field.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(field)
}

#[cfg(test)]
mod tests;
