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
//! use palisade_proxy::nbd::{
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

/// What the caller tells the client about an export it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export size in bytes.
    pub size_bytes: u64,
    /// [`transmission_flags`]; only those in [`transmission_flags::SUPPORTED`].
    pub flags: u16,
    /// Minimum block size: a power of two, at most 64 KiB. Requests not
    /// aligned to it are refused with `EINVAL`.
    pub block_size_min: u32,
    /// Preferred block size: a power of two, at least
    /// `max(block_size_min, 512)`.
    pub block_size_preferred: u32,
    /// Maximum block size: a multiple of `block_size_min` and at least
    /// `block_size_preferred`, or `u32::MAX` for "no limit of my own".
    /// Advertised capped to [`Config::payload_len_max`].
    pub block_size_max: u32,
}

impl ExportInfo {
    /// An export with no alignment needs: minimum 1, preferred 4096, maximum
    /// [`Config::payload_len_max`].
    #[must_use]
    pub fn new(size_bytes: u64, flags: u16) -> Self {
        ExportInfo {
            size_bytes,
            flags,
            block_size_min: 1,
            block_size_preferred: 4096,
            block_size_max: u32::MAX,
        }
    }

    /// The info as the client sees it: `HAS_FLAGS` set, `SEND_DF` cleared
    /// without structured replies, block sizes capped to the payload limit.
    /// Panics if the caller passed an invalid info (a programmer error).
    fn advertised(&self, config: &Config, structured_replies: bool) -> ExportInfo {
        assert!(
            self.flags & !transmission_flags::SUPPORTED == 0,
            "unsupported transmission flags {:#x}",
            self.flags & !transmission_flags::SUPPORTED
        );
        assert!(self.block_size_min.is_power_of_two());
        assert!(self.block_size_min <= BLOCK_SIZE_MIN_MAX);
        assert!(self.block_size_preferred.is_power_of_two());
        assert!(self.block_size_preferred >= self.block_size_min.max(512));
        assert!(self.block_size_max >= self.block_size_min);
        // Below the preferred size the preferred one would be cut under 512
        // (found by the nbd_transmission fuzz target).
        assert!(
            self.block_size_max >= self.block_size_preferred,
            "block_size_max must be at least block_size_preferred"
        );
        assert!(
            self.block_size_max == u32::MAX || self.block_size_max % self.block_size_min == 0,
            "block_size_max must be a multiple of block_size_min"
        );

        let mut flags = self.flags | transmission_flags::HAS_FLAGS;
        if !structured_replies {
            flags &= !transmission_flags::SEND_DF;
        }
        let capped = self.block_size_max.min(config.payload_len_max);
        let block_size_max = capped - capped % self.block_size_min;
        // The payload limit can be below the preferred size; the preferred
        // size must stay a power of two no larger than the maximum.
        let block_size_preferred = if self.block_size_preferred <= block_size_max {
            self.block_size_preferred
        } else {
            1 << (31 - block_size_max.leading_zeros())
        };
        let advertised = ExportInfo {
            size_bytes: self.size_bytes,
            flags,
            block_size_min: self.block_size_min,
            block_size_preferred,
            block_size_max,
        };
        debug_assert!(advertised.block_size_max >= advertised.block_size_min);
        debug_assert!(advertised.block_size_max % advertised.block_size_min == 0);
        debug_assert!(advertised.block_size_preferred >= advertised.block_size_min.max(512));
        advertised
    }
}

/// Option error replies (`NBD_REP_ERR_*`) the caller may choose from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepError {
    /// `NBD_REP_ERR_UNSUP`: option unknown to this server.
    Unsupported,
    /// `NBD_REP_ERR_POLICY`: forbidden by server policy.
    Policy,
    /// `NBD_REP_ERR_INVALID`: syntactically invalid.
    Invalid,
    /// `NBD_REP_ERR_PLATFORM`: not supported on this platform.
    Platform,
    /// `NBD_REP_ERR_UNKNOWN`: no such export.
    Unknown,
    /// `NBD_REP_ERR_SHUTDOWN`: the server is shutting down.
    Shutdown,
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`: the client must ask for block sizes.
    BlockSizeRequired,
    /// `NBD_REP_ERR_TOO_BIG`: request or reply too large.
    TooBig,
}

impl RepError {
    /// The reply type on the wire.
    #[must_use]
    pub fn to_wire(self) -> u32 {
        let low = match self {
            RepError::Unsupported => 1,
            RepError::Policy => 2,
            RepError::Invalid => 3,
            RepError::Platform => 4,
            RepError::Unknown => 6,
            RepError::Shutdown => 7,
            RepError::BlockSizeRequired => 8,
            RepError::TooBig => 9,
        };
        wire::REP_FLAG_ERROR | low
    }
}

/// The caller's refusal of an option: sent as an error reply with `message`
/// (truncated to 4096 bytes) for `INFO`, `GO` and `LIST`; for `EXPORT_NAME`
/// the connection is closed instead, as the protocol demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    /// The error reply type.
    pub code: RepError,
    /// Human-readable reason, shown to the client's user.
    pub message: String,
}

impl OptionError {
    /// Builds an option error.
    #[must_use]
    pub fn new(code: RepError, message: impl Into<String>) -> Self {
        OptionError {
            code,
            message: message.into(),
        }
    }
}

/// One export in an `NBD_OPT_LIST` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportEntry {
    /// The name, as the client would pass it to `GO`. At most 4096 bytes.
    pub name: String,
    /// Optional description for humans; empty means none. Truncated to 4096
    /// bytes.
    pub description: String,
}

/// Why a connection must close. Each variant says whose fault it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NbdError {
    /// The client did not set `NBD_FLAG_C_FIXED_NEWSTYLE`; we serve fixed
    /// newstyle only. Client's fault (too old); not retryable.
    #[error("client does not speak fixed newstyle (client flags {flags:#x})")]
    NotFixedNewstyle {
        /// The client flags received.
        flags: u32,
    },
    /// The client set client flags we never offered. Client's fault.
    #[error("client set unknown client flags {flags:#x}")]
    UnknownClientFlags {
        /// The client flags received.
        flags: u32,
    },
    /// An option did not start with `IHAVEOPT`. Client's fault (or not an
    /// NBD client at all).
    #[error("bad option magic {magic:#018x}")]
    BadOptionMagic {
        /// The eight bytes received instead.
        magic: u64,
    },
    /// The client kept haggling past [`Config::options_count_max`]. Client's
    /// fault.
    #[error("client sent more than {max} options")]
    TooManyOptions {
        /// The limit.
        max: u32,
    },
    /// `NBD_OPT_EXPORT_NAME` with a name over 4096 bytes; it cannot be
    /// answered with an error. Client's fault.
    #[error("NBD_OPT_EXPORT_NAME name of {len} bytes is too long")]
    ExportNameTooLong {
        /// The option length received.
        len: u32,
    },
    /// `NBD_OPT_EXPORT_NAME` with a name that is not a valid string. Client's
    /// fault.
    #[error("NBD_OPT_EXPORT_NAME name is invalid: {reason}")]
    ExportNameInvalid {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The caller refused the export selected with `NBD_OPT_EXPORT_NAME`,
    /// which allows no error reply. The caller's decision.
    #[error("export {name:?} refused ({code:?}): {message}", code = .error.code, message = .error.message)]
    ExportRefused {
        /// The export name the client asked for.
        name: String,
        /// The caller's answer.
        error: OptionError,
    },
    /// The client sent data while it had to wait for our reply. Client's
    /// fault.
    #[error("client sent {len} bytes without waiting for a reply")]
    UnexpectedData {
        /// Bytes buffered when we gave up.
        len: usize,
    },
    /// A request did not start with the request magic; the stream cannot be
    /// resynchronised. Client's fault.
    #[error("bad request magic {magic:#010x}")]
    BadRequestMagic {
        /// The four bytes received instead.
        magic: u32,
    },
    /// A `WRITE` longer than [`Config::payload_len_max`]: we will not read
    /// its payload, so the stream is out of sync. Client's fault.
    #[error("write of {length} bytes exceeds the {max}-byte payload limit")]
    PayloadTooLarge {
        /// The request's cookie.
        cookie: u64,
        /// The request's length.
        length: u32,
        /// The limit.
        max: u32,
    },
}

/// What the handshake needs the caller to know or do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The client selected an export. Answer with
    /// [`Handshake::answer_export`]. `go` is false for `NBD_OPT_INFO` (the
    /// client only asks about it) and true for `NBD_OPT_GO` and
    /// `NBD_OPT_EXPORT_NAME` (it will use it if accepted).
    Export {
        /// The export name exactly as the client sent it (valid UTF-8, no
        /// NUL, at most 4096 bytes; may be empty for "the default export").
        name: String,
        /// Whether an accepted answer starts transmission.
        go: bool,
    },
    /// The client asked for the export list. Answer with
    /// [`Handshake::answer_list`].
    List,
    /// The handshake is done: write the pending output, then call
    /// [`Handshake::into_transmission`].
    Ready {
        /// The export the client selected.
        export: String,
        /// Whether replies must be structured.
        structured_replies: bool,
    },
    /// The client sent `NBD_OPT_ABORT`. Write the pending output (its
    /// acknowledgement), then close.
    Aborted,
    /// The connection must close: write the pending output, then close.
    Failed(NbdError),
}

#[derive(Debug)]
enum Phase {
    ClientFlags,
    OptionHeader,
    OptionData {
        option: u32,
        len: u32,
    },
    /// Discard `remaining` bytes of option data, then send the error reply.
    Skip {
        option: u32,
        remaining: u32,
        error: RepError,
        message: &'static str,
    },
    AwaitExport {
        option: u32,
        name: String,
        name_requested: bool,
    },
    AwaitList,
    Ready,
    Closed,
}

/// The option-haggling state machine for one connection. See the module
/// docs for how to drive it.
#[derive(Debug)]
pub struct Handshake {
    config: Config,
    phase: Phase,
    input: Vec<u8>,
    input_start: usize,
    output: Vec<u8>,
    events: VecDeque<Event>,
    no_zeroes: bool,
    structured_replies: bool,
    options_count: u32,
    established: Option<(String, ExportInfo)>,
}

impl Handshake {
    /// Starts a handshake; the greeting is queued, so call
    /// [`Handshake::poll_transmit`] and write it first. Panics if `config` is
    /// out of range.
    #[must_use]
    pub fn new(config: Config) -> Self {
        config.assert_valid();
        let mut output = Vec::with_capacity(GREETING_LEN);
        output.extend_from_slice(&wire::NBDMAGIC.to_be_bytes());
        output.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
        output.extend_from_slice(&(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES).to_be_bytes());
        assert_eq!(output.len(), GREETING_LEN);
        Handshake {
            config,
            phase: Phase::ClientFlags,
            input: Vec::new(),
            input_start: 0,
            output,
            events: VecDeque::new(),
            no_zeroes: false,
            structured_replies: false,
            options_count: 0,
            established: None,
        }
    }

    /// Feeds bytes read from the client, in order. Call
    /// [`Handshake::poll_event`] until `None` afterwards. Bytes after the
    /// handshake ended in failure are dropped; bytes after
    /// [`Event::Ready`] are kept for the [`Transmission`].
    pub fn handle_input(&mut self, bytes: &[u8]) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.compact_input();
        self.input.extend_from_slice(bytes);
        self.advance();
        // While we wait for the caller's answer the client must wait for
        // ours, so anything it sends now is a violation; cap it.
        if matches!(self.phase, Phase::AwaitExport { .. } | Phase::AwaitList) {
            let len = self.buffered_len();
            if len > self.config.input_handshake_max() {
                self.fail(NbdError::UnexpectedData { len });
            }
        }
    }

    /// The next event, if any. Call until `None` after every
    /// [`Handshake::handle_input`], `answer_export` and `answer_list`.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Appends the bytes to send to the client to `out` and returns how many.
    /// Call after handling events, and write them before reading again.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) -> usize {
        let len = self.output.len();
        out.append(&mut self.output);
        len
    }

    /// Answers the pending [`Event::Export`]. On `Ok` for `GO` or
    /// `EXPORT_NAME`, [`Event::Ready`] follows; on `Err` for `EXPORT_NAME`,
    /// [`Event::Failed`] follows (no error reply exists for it); otherwise
    /// haggling goes on. Ignored if the handshake already failed. Panics if
    /// no export question is pending, or if `answer` is an invalid
    /// [`ExportInfo`] (programmer errors).
    pub fn answer_export(&mut self, answer: Result<ExportInfo, OptionError>) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        let Phase::AwaitExport {
            option,
            name,
            name_requested,
        } = std::mem::replace(&mut self.phase, Phase::OptionHeader)
        else {
            panic!("answer_export without a pending Event::Export");
        };
        match answer {
            Ok(info) => {
                let info = info.advertised(&self.config, self.structured_replies);
                if option == wire::OPT_EXPORT_NAME {
                    self.output
                        .extend_from_slice(&info.size_bytes.to_be_bytes());
                    self.output.extend_from_slice(&info.flags.to_be_bytes());
                    if !self.no_zeroes {
                        self.output
                            .extend_from_slice(&[0u8; wire::EXPORT_NAME_ZEROES_LEN]);
                    }
                    self.enter_ready(name, info);
                } else {
                    self.reply_info(option, &name, name_requested, &info);
                    if option == wire::OPT_GO {
                        self.enter_ready(name, info);
                    }
                }
            }
            Err(error) => {
                if option == wire::OPT_EXPORT_NAME {
                    self.fail(NbdError::ExportRefused { name, error });
                } else {
                    self.reply_error(option, error.code, &error.message);
                }
            }
        }
        self.advance();
    }

    /// Answers the pending [`Event::List`] with the exports to show (or an
    /// error such as [`RepError::Policy`]). Ignored if the handshake already
    /// failed. Panics if no list question is pending or a name is longer
    /// than 4096 bytes (programmer errors).
    pub fn answer_list(&mut self, answer: Result<Vec<ExportEntry>, OptionError>) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        assert!(
            matches!(self.phase, Phase::AwaitList),
            "answer_list without a pending Event::List"
        );
        self.phase = Phase::OptionHeader;
        match answer {
            Ok(entries) => {
                for entry in &entries {
                    assert!(entry.name.len() <= STRING_LEN_MAX, "export name too long");
                    let description = truncate_str(&entry.description, STRING_LEN_MAX);
                    let name_len = u32::try_from(entry.name.len()).expect("checked above");
                    let mut data = Vec::with_capacity(4 + entry.name.len() + description.len());
                    data.extend_from_slice(&name_len.to_be_bytes());
                    data.extend_from_slice(entry.name.as_bytes());
                    data.extend_from_slice(description.as_bytes());
                    self.reply(wire::OPT_LIST, wire::REP_SERVER, &data);
                }
                self.reply(wire::OPT_LIST, wire::REP_ACK, &[]);
            }
            Err(error) => self.reply_error(wire::OPT_LIST, error.code, &error.message),
        }
        self.advance();
    }

    /// Ends the handshake after [`Event::Ready`], handing over any bytes the
    /// client already sent. Panics if the handshake is not ready or its
    /// output was not drained with [`Handshake::poll_transmit`] (the export
    /// reply would be lost).
    #[must_use]
    pub fn into_transmission(mut self) -> Transmission {
        assert!(
            matches!(self.phase, Phase::Ready),
            "into_transmission before Event::Ready"
        );
        assert!(
            self.output.is_empty(),
            "write poll_transmit's output (the export reply) before into_transmission"
        );
        self.compact_input();
        let (export_name, export) = self.established.take().expect("Ready implies an export");
        let mut transmission =
            Transmission::new(self.config, export_name, export, self.structured_replies);
        transmission.input = self.input;
        transmission
    }

    /// Bytes received but not yet consumed.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        self.input.len() - self.input_start
    }

    fn compact_input(&mut self) {
        if self.input_start > 0 {
            self.input.drain(..self.input_start);
            self.input_start = 0;
        }
    }

    fn take_array<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.buffered_len() < N {
            return None;
        }
        let mut bytes = [0u8; N];
        bytes.copy_from_slice(&self.input[self.input_start..self.input_start + N]);
        self.input_start += N;
        Some(bytes)
    }

    /// Processes buffered input until more is needed or the caller must act.
    fn advance(&mut self) {
        while self.step() {}
        if self.input_start == self.input.len() {
            self.input.clear();
            self.input_start = 0;
        }
    }

    /// One step of the state machine; false when it cannot go on.
    fn step(&mut self) -> bool {
        match self.phase {
            Phase::ClientFlags => {
                let Some(bytes) = self.take_array::<4>() else {
                    return false;
                };
                self.handle_client_flags(u32::from_be_bytes(bytes));
                true
            }
            Phase::OptionHeader => {
                let Some(bytes) = self.take_array::<OPTION_HEADER_LEN>() else {
                    return false;
                };
                let magic = read_u64(&bytes, 0);
                let option = read_u32(&bytes, 8);
                let len = read_u32(&bytes, 12);
                self.handle_option_header(magic, option, len);
                true
            }
            Phase::OptionData { option, len } => {
                let len = len as usize;
                if self.buffered_len() < len {
                    return false;
                }
                let data = self.input[self.input_start..self.input_start + len].to_vec();
                self.input_start += len;
                self.handle_option_data(option, &data);
                true
            }
            Phase::Skip {
                option,
                remaining,
                error,
                message,
            } => {
                let skipped = self.buffered_len().min(remaining as usize);
                self.input_start += skipped;
                let remaining = remaining - u32::try_from(skipped).expect("at most remaining");
                if remaining > 0 {
                    self.phase = Phase::Skip {
                        option,
                        remaining,
                        error,
                        message,
                    };
                    return false;
                }
                self.reply_error(option, error, message);
                self.phase = Phase::OptionHeader;
                true
            }
            Phase::AwaitExport { .. } | Phase::AwaitList | Phase::Ready | Phase::Closed => false,
        }
    }

    fn handle_client_flags(&mut self, flags: u32) {
        let known = wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES;
        if flags & !known != 0 {
            return self.fail(NbdError::UnknownClientFlags { flags });
        }
        if flags & wire::FLAG_C_FIXED_NEWSTYLE == 0 {
            return self.fail(NbdError::NotFixedNewstyle { flags });
        }
        self.no_zeroes = flags & wire::FLAG_C_NO_ZEROES != 0;
        self.phase = Phase::OptionHeader;
    }

    fn handle_option_header(&mut self, magic: u64, option: u32, len: u32) {
        if magic != wire::IHAVEOPT {
            return self.fail(NbdError::BadOptionMagic { magic });
        }
        self.options_count += 1;
        if self.options_count > self.config.options_count_max {
            return self.fail(NbdError::TooManyOptions {
                max: self.config.options_count_max,
            });
        }
        let skip = |error, message| Phase::Skip {
            option,
            remaining: len,
            error,
            message,
        };
        self.phase = match option {
            wire::OPT_ABORT => {
                // No need to read any data: we close right after the ACK.
                self.reply(option, wire::REP_ACK, &[]);
                self.close(Event::Aborted);
                return;
            }
            wire::OPT_EXPORT_NAME => {
                if len as usize > STRING_LEN_MAX {
                    return self.fail(NbdError::ExportNameTooLong { len });
                }
                Phase::OptionData { option, len }
            }
            wire::OPT_INFO | wire::OPT_GO => {
                if len > self.config.option_len_max {
                    skip(RepError::TooBig, "option data too long")
                } else {
                    Phase::OptionData { option, len }
                }
            }
            wire::OPT_LIST => {
                if len != 0 {
                    skip(RepError::Invalid, "NBD_OPT_LIST takes no data")
                } else {
                    self.events.push_back(Event::List);
                    Phase::AwaitList
                }
            }
            wire::OPT_STRUCTURED_REPLY => {
                if len != 0 {
                    skip(RepError::Invalid, "NBD_OPT_STRUCTURED_REPLY takes no data")
                } else if self.structured_replies {
                    skip(RepError::Invalid, "structured replies already negotiated")
                } else {
                    self.structured_replies = true;
                    self.reply(option, wire::REP_ACK, &[]);
                    Phase::OptionHeader
                }
            }
            wire::OPT_STARTTLS => skip(RepError::Unsupported, "TLS is not supported"),
            _ => skip(RepError::Unsupported, "option not supported"),
        };
    }

    fn handle_option_data(&mut self, option: u32, data: &[u8]) {
        match option {
            wire::OPT_EXPORT_NAME => match parse_name(data) {
                Ok(name) => self.ask_export(option, name, false),
                Err(reason) => self.fail(NbdError::ExportNameInvalid { reason }),
            },
            wire::OPT_INFO | wire::OPT_GO => match parse_info_request(data) {
                Ok((name, name_requested)) => self.ask_export(option, name, name_requested),
                Err(message) => {
                    self.reply_error(option, RepError::Invalid, message);
                    self.phase = Phase::OptionHeader;
                }
            },
            _ => unreachable!("only EXPORT_NAME, INFO and GO buffer option data"),
        }
    }

    fn ask_export(&mut self, option: u32, name: String, name_requested: bool) {
        self.events.push_back(Event::Export {
            name: name.clone(),
            go: option != wire::OPT_INFO,
        });
        self.phase = Phase::AwaitExport {
            option,
            name,
            name_requested,
        };
    }

    fn enter_ready(&mut self, name: String, info: ExportInfo) {
        self.events.push_back(Event::Ready {
            export: name.clone(),
            structured_replies: self.structured_replies,
        });
        self.established = Some((name, info));
        self.phase = Phase::Ready;
    }

    fn fail(&mut self, error: NbdError) {
        self.close(Event::Failed(error));
    }

    fn close(&mut self, event: Event) {
        self.events.push_back(event);
        self.phase = Phase::Closed;
        self.input.clear();
        self.input_start = 0;
    }

    fn reply(&mut self, option: u32, reply_type: u32, data: &[u8]) {
        let len = u32::try_from(data.len()).expect("option replies are small");
        self.output
            .extend_from_slice(&wire::OPTION_REPLY_MAGIC.to_be_bytes());
        self.output.extend_from_slice(&option.to_be_bytes());
        self.output.extend_from_slice(&reply_type.to_be_bytes());
        self.output.extend_from_slice(&len.to_be_bytes());
        self.output.extend_from_slice(data);
    }

    fn reply_error(&mut self, option: u32, error: RepError, message: &str) {
        let message = truncate_str(message, STRING_LEN_MAX);
        self.reply(option, error.to_wire(), message.as_bytes());
    }

    fn reply_info(&mut self, option: u32, name: &str, name_requested: bool, info: &ExportInfo) {
        let mut export = [0u8; 12];
        export[0..2].copy_from_slice(&wire::INFO_EXPORT.to_be_bytes());
        export[2..10].copy_from_slice(&info.size_bytes.to_be_bytes());
        export[10..12].copy_from_slice(&info.flags.to_be_bytes());
        self.reply(option, wire::REP_INFO, &export);
        if name_requested {
            let mut data = Vec::with_capacity(2 + name.len());
            data.extend_from_slice(&wire::INFO_NAME.to_be_bytes());
            data.extend_from_slice(name.as_bytes());
            self.reply(option, wire::REP_INFO, &data);
        }
        // Always sent: the protocol allows it unrequested, and it tells the
        // client the payload limit.
        let mut block_size = [0u8; 14];
        block_size[0..2].copy_from_slice(&wire::INFO_BLOCK_SIZE.to_be_bytes());
        block_size[2..6].copy_from_slice(&info.block_size_min.to_be_bytes());
        block_size[6..10].copy_from_slice(&info.block_size_preferred.to_be_bytes());
        block_size[10..14].copy_from_slice(&info.block_size_max.to_be_bytes());
        self.reply(option, wire::REP_INFO, &block_size);
        self.reply(option, wire::REP_ACK, &[]);
    }
}

/// An export name: UTF-8 without NUL, at most 4096 bytes.
fn parse_name(bytes: &[u8]) -> Result<String, &'static str> {
    if bytes.len() > STRING_LEN_MAX {
        return Err("export name longer than 4096 bytes");
    }
    let name = std::str::from_utf8(bytes).map_err(|_| "export name is not UTF-8")?;
    if name.contains('\0') {
        return Err("export name contains NUL");
    }
    Ok(name.to_owned())
}

/// `NBD_OPT_INFO`/`NBD_OPT_GO` data: name length, name, request count,
/// requests. Returns the name and whether `NBD_INFO_NAME` was requested.
fn parse_info_request(data: &[u8]) -> Result<(String, bool), &'static str> {
    if data.len() < 6 {
        return Err("option data shorter than 6 bytes");
    }
    let name_len = read_u32(data, 0) as usize;
    if name_len > data.len() - 6 {
        return Err("export name length exceeds option length");
    }
    let name = parse_name(&data[4..4 + name_len])?;
    let count_at = 4 + name_len;
    let count = usize::from(read_u16(data, count_at));
    let requests = &data[count_at + 2..];
    if requests.len() != count * 2 {
        return Err("information request count does not match option length");
    }
    let name_requested = requests
        .chunks_exact(2)
        .any(|pair| read_u16(pair, 0) == wire::INFO_NAME);
    Ok((name, name_requested))
}

/// Transmission commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `NBD_CMD_READ`.
    Read,
    /// `NBD_CMD_WRITE`; the payload is in [`Transmission::payload`].
    Write,
    /// `NBD_CMD_DISC`. Never in a [`Request`]: it arrives as
    /// [`Incoming::Disconnect`].
    Disc,
    /// `NBD_CMD_FLUSH`.
    Flush,
    /// `NBD_CMD_TRIM`.
    Trim,
    /// `NBD_CMD_WRITE_ZEROES`.
    WriteZeroes,
    /// Any other command number; always refused with `EINVAL`.
    Other(u16),
}

impl Command {
    /// Decodes a command number.
    #[must_use]
    pub fn from_wire(value: u16) -> Self {
        match value {
            wire::CMD_READ => Command::Read,
            wire::CMD_WRITE => Command::Write,
            wire::CMD_DISC => Command::Disc,
            wire::CMD_FLUSH => Command::Flush,
            wire::CMD_TRIM => Command::Trim,
            wire::CMD_WRITE_ZEROES => Command::WriteZeroes,
            other => Command::Other(other),
        }
    }

    /// The command number on the wire.
    #[must_use]
    pub fn to_wire(self) -> u16 {
        match self {
            Command::Read => wire::CMD_READ,
            Command::Write => wire::CMD_WRITE,
            Command::Disc => wire::CMD_DISC,
            Command::Flush => wire::CMD_FLUSH,
            Command::Trim => wire::CMD_TRIM,
            Command::WriteZeroes => wire::CMD_WRITE_ZEROES,
            Command::Other(other) => other,
        }
    }

    /// Whether the command changes the export's contents.
    #[must_use]
    pub fn writes(self) -> bool {
        matches!(self, Command::Write | Command::Trim | Command::WriteZeroes)
    }
}

/// One decoded transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Opaque value to echo in the reply (the spec's "handle").
    pub cookie: u64,
    /// What to do.
    pub command: Command,
    /// [`command_flags`].
    pub flags: u16,
    /// Byte offset into the export.
    pub offset: u64,
    /// Length in bytes (for `WRITE`, the payload length).
    pub length: u32,
}

impl Request {
    /// Whether the client asked for force unit access.
    #[must_use]
    pub fn fua(&self) -> bool {
        self.flags & command_flags::FUA != 0
    }
}

/// Errors a reply can carry, with their numbers on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Errno {
    /// `EPERM` (1): not permitted (read-only export, stale fencing token).
    Perm,
    /// `EIO` (5): I/O error.
    Io,
    /// `ENOMEM` (12): out of memory.
    NoMem,
    /// `EINVAL` (22): invalid request.
    Inval,
    /// `ENOSPC` (28): write beyond the end, or no space.
    NoSpc,
    /// `EOVERFLOW` (75): length over the maximum block size.
    Overflow,
    /// `ENOTSUP` (95): operation not supported.
    NotSup,
    /// `ESHUTDOWN` (108): server shutting down; the client must disconnect.
    Shutdown,
}

impl Errno {
    /// The error number on the wire.
    #[must_use]
    pub fn to_wire(self) -> u32 {
        match self {
            Errno::Perm => 1,
            Errno::Io => 5,
            Errno::NoMem => 12,
            Errno::Inval => 22,
            Errno::NoSpc => 28,
            Errno::Overflow => 75,
            Errno::NotSup => 95,
            Errno::Shutdown => 108,
        }
    }
}

/// A request the decoder refuses; the caller replies with
/// [`ReplyEncoder::refuse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The request as decoded.
    pub request: Request,
    /// The error to reply with.
    pub error: Errno,
    /// Why, for the structured error message and logs.
    pub reason: &'static str,
}

/// What [`Transmission::poll_request`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A well-formed request within the export: execute it and reply. For
    /// `WRITE`, the payload is [`Transmission::payload`].
    Request(Request),
    /// A request to refuse with an error reply. Decoding goes on (a refused
    /// `WRITE`'s payload is skipped unread).
    Refuse(Refusal),
    /// The client sent `NBD_CMD_DISC`: finish the requests in flight, then
    /// close. No reply. Nothing more is decoded.
    Disconnect,
    /// The stream is broken: if `reply` is set, send that error reply (best
    /// effort), then close. Nothing more is decoded. An oversized `WRITE`
    /// lands here: we do not read its payload, so we cannot find the next
    /// request.
    Fatal {
        /// What went wrong.
        error: NbdError,
        /// The last reply to send before closing, if one is possible.
        reply: Option<Refusal>,
    },
}

/// The request decoder for one connection in the transmission phase. See
/// the module docs for how to drive it.
#[derive(Debug)]
pub struct Transmission {
    config: Config,
    export_name: String,
    export: ExportInfo,
    structured_replies: bool,
    input: Vec<u8>,
    input_start: usize,
    payload: Range<usize>,
    skip_remaining: u32,
    stopped: bool,
}

impl Transmission {
    /// A decoder for `export` as the client was told about it.
    /// [`Handshake::into_transmission`] is the usual way to get one; this is
    /// for tests and for connections negotiated elsewhere. Panics on an
    /// invalid config or info (programmer errors).
    #[must_use]
    pub fn new(
        config: Config,
        export_name: String,
        export: ExportInfo,
        structured_replies: bool,
    ) -> Self {
        config.assert_valid();
        let export = export.advertised(&config, structured_replies);
        Transmission {
            config,
            export_name,
            export,
            structured_replies,
            input: Vec::new(),
            input_start: 0,
            payload: 0..0,
            skip_remaining: 0,
            stopped: false,
        }
    }

    /// Feeds bytes read from the client, in order. Call
    /// [`Transmission::poll_request`] until `None` afterwards, or the buffer
    /// grows with every read. Bytes after a disconnect or a fatal error are
    /// dropped.
    pub fn handle_input(&mut self, mut bytes: &[u8]) {
        self.payload = 0..0;
        if self.stopped {
            return;
        }
        self.compact_input();
        if self.skip_remaining > 0 && self.buffered_len() == 0 {
            // Discard a refused write's payload without buffering it.
            let skipped = bytes.len().min(self.skip_remaining as usize);
            self.skip_remaining -= u32::try_from(skipped).expect("at most skip_remaining");
            bytes = &bytes[skipped..];
        }
        self.input.extend_from_slice(bytes);
    }

    /// Decodes the next request, if a whole one has arrived.
    #[must_use]
    pub fn poll_request(&mut self) -> Option<Incoming> {
        self.payload = 0..0;
        if self.stopped {
            return None;
        }
        if self.skip_remaining > 0 {
            let skipped = self.buffered_len().min(self.skip_remaining as usize);
            self.input_start += skipped;
            self.skip_remaining -= u32::try_from(skipped).expect("at most skip_remaining");
            if self.skip_remaining > 0 {
                return None;
            }
        }
        if self.buffered_len() < REQUEST_HEADER_LEN {
            return None;
        }
        let header = &self.input[self.input_start..self.input_start + REQUEST_HEADER_LEN];
        let magic = read_u32(header, 0);
        if magic != wire::REQUEST_MAGIC {
            self.stop();
            return Some(Incoming::Fatal {
                error: NbdError::BadRequestMagic { magic },
                reply: None,
            });
        }
        let request = Request {
            flags: read_u16(header, 4),
            command: Command::from_wire(read_u16(header, 6)),
            cookie: read_u64(header, 8),
            offset: read_u64(header, 16),
            length: read_u32(header, 24),
        };
        let is_write = request.command == Command::Write;
        if request.command == Command::Disc {
            self.stop();
            return Some(Incoming::Disconnect);
        }
        if is_write && request.length > self.config.payload_len_max {
            self.stop();
            return Some(Incoming::Fatal {
                error: NbdError::PayloadTooLarge {
                    cookie: request.cookie,
                    length: request.length,
                    max: self.config.payload_len_max,
                },
                reply: Some(Refusal {
                    request,
                    error: Errno::Overflow,
                    reason: "write payload too large",
                }),
            });
        }
        if let Err((error, reason)) = self.check(&request) {
            self.input_start += REQUEST_HEADER_LEN;
            if is_write {
                self.skip_remaining = request.length;
            }
            return Some(Incoming::Refuse(Refusal {
                request,
                error,
                reason,
            }));
        }
        if is_write {
            let frame_len = REQUEST_HEADER_LEN + request.length as usize;
            let buffered = self.buffered_len();
            if buffered < frame_len {
                // Make room for the payload once instead of doubling.
                self.compact_input();
                self.input.reserve_exact(frame_len - buffered);
                return None;
            }
            let payload_start = self.input_start + REQUEST_HEADER_LEN;
            self.payload = payload_start..payload_start + request.length as usize;
            self.input_start += frame_len;
        } else {
            self.input_start += REQUEST_HEADER_LEN;
        }
        Some(Incoming::Request(request))
    }

    /// The payload of the `WRITE` that the last
    /// [`Transmission::poll_request`] returned; empty for anything else.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        &self.input[self.payload.clone()]
    }

    /// The encoder for replies on this connection.
    #[must_use]
    pub fn replies(&self) -> ReplyEncoder {
        ReplyEncoder::new(self.structured_replies)
    }

    /// The export the client selected.
    #[must_use]
    pub fn export_name(&self) -> &str {
        &self.export_name
    }

    /// The export as the client was told about it (flags and block sizes as
    /// advertised).
    #[must_use]
    pub fn export_info(&self) -> &ExportInfo {
        &self.export
    }

    /// Whether structured replies were negotiated.
    #[must_use]
    pub fn structured_replies(&self) -> bool {
        self.structured_replies
    }

    /// Bytes received but not yet consumed.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        self.input.len() - self.input_start
    }

    fn stop(&mut self) {
        self.stopped = true;
        self.input = Vec::new();
        self.input_start = 0;
        self.skip_remaining = 0;
    }

    fn compact_input(&mut self) {
        if self.input_start > 0 {
            self.input.drain(..self.input_start);
            self.input_start = 0;
            self.payload = 0..0;
        }
    }

    /// Checks a request against the export; `Err` is the error to reply.
    fn check(&self, request: &Request) -> Result<(), (Errno, &'static str)> {
        use transmission_flags as tf;
        let export_flags = self.export.flags;
        let mut allowed_flags = 0;
        if export_flags & tf::SEND_FUA != 0 {
            // FUA is valid on every command once advertised.
            allowed_flags |= command_flags::FUA;
        }
        let advertised = match request.command {
            Command::Read => {
                if export_flags & tf::SEND_DF != 0 {
                    allowed_flags |= command_flags::DF;
                }
                true
            }
            Command::Write => true,
            Command::Flush => export_flags & tf::SEND_FLUSH != 0,
            Command::Trim => export_flags & tf::SEND_TRIM != 0,
            Command::WriteZeroes => {
                allowed_flags |= command_flags::NO_HOLE;
                export_flags & tf::SEND_WRITE_ZEROES != 0
            }
            Command::Disc => unreachable!("DISC is handled before checks"),
            Command::Other(_) => return Err((Errno::Inval, "unsupported command")),
        };
        if !advertised {
            return Err((Errno::Inval, "command not advertised for this export"));
        }
        if request.flags & !allowed_flags != 0 {
            return Err((Errno::Inval, "command flags not supported"));
        }
        if request.command == Command::Flush {
            return Ok(());
        }
        if request.command.writes() && export_flags & tf::READ_ONLY != 0 {
            return Err((Errno::Perm, "export is read-only"));
        }
        let Some(end) = request.offset.checked_add(u64::from(request.length)) else {
            return Err((Errno::Inval, "offset + length overflows"));
        };
        if matches!(request.command, Command::Read | Command::Write)
            && request.length > self.export.block_size_max
        {
            return Err((Errno::Overflow, "length exceeds the maximum block size"));
        }
        if end > self.export.size_bytes {
            return Err(if request.command == Command::Write {
                (Errno::NoSpc, "write beyond the end of the export")
            } else {
                (Errno::Inval, "request beyond the end of the export")
            });
        }
        let min = u64::from(self.export.block_size_min);
        if request.offset % min != 0 || u64::from(request.length) % min != 0 {
            return Err((
                Errno::Inval,
                "request not aligned to the minimum block size",
            ));
        }
        Ok(())
    }
}

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
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1024 * 1024;

    // ---- Client-side encoders (what a real client would send) ----

    fn client_flags(flags: u32) -> Vec<u8> {
        flags.to_be_bytes().to_vec()
    }

    fn option(option: u32, data: &[u8]) -> Vec<u8> {
        let mut bytes = wire::IHAVEOPT.to_be_bytes().to_vec();
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut data = u32::try_from(name.len()).unwrap().to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&u16::try_from(infos.len()).unwrap().to_be_bytes());
        for info in infos {
            data.extend_from_slice(&info.to_be_bytes());
        }
        data
    }

    /// An option reply as the server must send it.
    fn rep(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
        let mut bytes = wire::OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&reply_type.to_be_bytes());
        bytes.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn info_export(size: u64, flags: u16) -> Vec<u8> {
        let mut data = wire::INFO_EXPORT.to_be_bytes().to_vec();
        data.extend_from_slice(&size.to_be_bytes());
        data.extend_from_slice(&flags.to_be_bytes());
        data
    }

    fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
        let mut data = wire::INFO_BLOCK_SIZE.to_be_bytes().to_vec();
        data.extend_from_slice(&min.to_be_bytes());
        data.extend_from_slice(&preferred.to_be_bytes());
        data.extend_from_slice(&max.to_be_bytes());
        data
    }

    fn request(flags: u16, command: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
        let mut bytes = wire::REQUEST_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&flags.to_be_bytes());
        bytes.extend_from_slice(&command.to_be_bytes());
        bytes.extend_from_slice(&cookie.to_be_bytes());
        bytes.extend_from_slice(&offset.to_be_bytes());
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes
    }

    fn write_request(flags: u16, cookie: u64, offset: u64, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len()).unwrap();
        let mut bytes = request(flags, wire::CMD_WRITE, cookie, offset, length);
        bytes.extend_from_slice(payload);
        bytes
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    // ---- Handshake helpers ----

    fn greeting() -> Vec<u8> {
        let mut bytes = b"NBDMAGICIHAVEOPT".to_vec();
        bytes.extend_from_slice(&[0, 3]);
        bytes
    }

    /// A handshake with the greeting already taken.
    fn started(config: Config) -> Handshake {
        let mut handshake = Handshake::new(config);
        let mut out = Vec::new();
        handshake.poll_transmit(&mut out);
        assert_eq!(out, greeting());
        handshake
    }

    fn feed(handshake: &mut Handshake, bytes: &[u8]) -> Vec<Event> {
        handshake.handle_input(bytes);
        drain(handshake)
    }

    fn drain(handshake: &mut Handshake) -> Vec<Event> {
        std::iter::from_fn(|| handshake.poll_event()).collect()
    }

    fn output(handshake: &mut Handshake) -> Vec<u8> {
        let mut out = Vec::new();
        handshake.poll_transmit(&mut out);
        out
    }

    fn export(name: &str, go: bool) -> Event {
        Event::Export {
            name: name.to_owned(),
            go,
        }
    }

    fn ready(name: &str, structured_replies: bool) -> Event {
        Event::Ready {
            export: name.to_owned(),
            structured_replies,
        }
    }

    fn disk_info() -> ExportInfo {
        use transmission_flags::*;
        ExportInfo::new(
            MIB,
            SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES | SEND_DF,
        )
    }

    const FIXED: u32 = wire::FLAG_C_FIXED_NEWSTYLE;
    const FIXED_NO_ZEROES: u32 = wire::FLAG_C_FIXED_NEWSTYLE | wire::FLAG_C_NO_ZEROES;
    const PAYLOAD_DEFAULT: u32 = 32 * 1024 * 1024;

    // ---- Handshake tests ----

    #[test]
    fn greeting_is_golden() {
        let mut handshake = Handshake::new(Config::default());
        let mut out = Vec::new();
        assert_eq!(handshake.poll_transmit(&mut out), 18);
        assert_eq!(
            out,
            [
                0x4e, 0x42, 0x44, 0x4d, 0x41, 0x47, 0x49, 0x43, // NBDMAGIC
                0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54, // IHAVEOPT
                0x00, 0x03, // FIXED_NEWSTYLE | NO_ZEROES
            ]
        );
        assert_eq!(handshake.poll_transmit(&mut out), 0);
        assert!(handshake.poll_event().is_none());
    }

    #[test]
    fn go_with_structured_replies() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED_NO_ZEROES);
        bytes.extend(option(wire::OPT_STRUCTURED_REPLY, &[]));
        assert!(feed(&mut handshake, &bytes).is_empty());
        assert_eq!(
            output(&mut handshake),
            rep(wire::OPT_STRUCTURED_REPLY, wire::REP_ACK, &[])
        );

        let go = option(wire::OPT_GO, &go_data("disk0", &[wire::INFO_BLOCK_SIZE]));
        assert_eq!(feed(&mut handshake, &go), vec![export("disk0", true)]);
        assert!(
            output(&mut handshake).is_empty(),
            "nothing before the answer"
        );
        handshake.answer_export(Ok(disk_info()));
        assert_eq!(drain(&mut handshake), vec![ready("disk0", true)]);

        let flags = 0x01 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;
        let mut expected = rep(wire::OPT_GO, wire::REP_INFO, &info_export(MIB, flags));
        expected.extend(rep(
            wire::OPT_GO,
            wire::REP_INFO,
            &info_block_size(1, 4096, PAYLOAD_DEFAULT),
        ));
        expected.extend(rep(wire::OPT_GO, wire::REP_ACK, &[]));
        assert_eq!(output(&mut handshake), expected);

        let transmission = handshake.into_transmission();
        assert_eq!(transmission.export_name(), "disk0");
        assert!(transmission.structured_replies());
        assert_eq!(transmission.export_info().flags, flags);
        assert_eq!(transmission.export_info().block_size_max, PAYLOAD_DEFAULT);
        assert_eq!(transmission.buffered_len(), 0);
    }

    #[test]
    fn go_without_structured_replies_clears_df() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_GO, &go_data("", &[])));
        assert_eq!(feed(&mut handshake, &bytes), vec![export("", true)]);
        handshake.answer_export(Ok(ExportInfo::new(4096, transmission_flags::SEND_DF)));
        assert_eq!(drain(&mut handshake), vec![ready("", false)]);
        let mut expected = rep(wire::OPT_GO, wire::REP_INFO, &info_export(4096, 0x01));
        expected.extend(rep(
            wire::OPT_GO,
            wire::REP_INFO,
            &info_block_size(1, 4096, PAYLOAD_DEFAULT),
        ));
        expected.extend(rep(wire::OPT_GO, wire::REP_ACK, &[]));
        assert_eq!(output(&mut handshake), expected);
    }

    fn export_name_reply(flags: u32) -> Vec<u8> {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(flags);
        bytes.extend(option(wire::OPT_EXPORT_NAME, b"disk0"));
        assert_eq!(feed(&mut handshake, &bytes), vec![export("disk0", true)]);
        handshake.answer_export(Ok(ExportInfo::new(
            0x0102_0304_0506_0708,
            transmission_flags::READ_ONLY,
        )));
        assert_eq!(drain(&mut handshake), vec![ready("disk0", false)]);
        let out = output(&mut handshake);
        let transmission = handshake.into_transmission();
        assert_eq!(transmission.export_info().flags, 0x03);
        out
    }

    #[test]
    fn export_name_with_no_zeroes() {
        assert_eq!(
            export_name_reply(FIXED_NO_ZEROES),
            [1, 2, 3, 4, 5, 6, 7, 8, 0x00, 0x03]
        );
    }

    #[test]
    fn export_name_without_no_zeroes() {
        let mut expected = vec![1, 2, 3, 4, 5, 6, 7, 8, 0x00, 0x03];
        expected.extend([0u8; 124]);
        assert_eq!(export_name_reply(FIXED), expected);
    }

    #[test]
    fn export_name_refused_closes_without_reply() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_EXPORT_NAME, b"nope"));
        assert_eq!(feed(&mut handshake, &bytes), vec![export("nope", true)]);
        let error = OptionError::new(RepError::Unknown, "no such export");
        handshake.answer_export(Err(error.clone()));
        assert_eq!(
            drain(&mut handshake),
            vec![Event::Failed(NbdError::ExportRefused {
                name: "nope".into(),
                error
            })]
        );
        assert!(output(&mut handshake).is_empty());
        // Later input is dropped, and late answers are ignored.
        handshake.handle_input(&[1, 2, 3]);
        assert_eq!(handshake.buffered_len(), 0);
        handshake.answer_export(Ok(disk_info()));
        assert!(drain(&mut handshake).is_empty());
    }

    #[test]
    fn export_name_too_long_or_invalid_closes() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_EXPORT_NAME, &[b'a'; 4097]));
        assert_eq!(
            feed(&mut handshake, &bytes),
            vec![Event::Failed(NbdError::ExportNameTooLong { len: 4097 })]
        );

        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_EXPORT_NAME, &[b'a', 0xff]));
        assert!(matches!(
            feed(&mut handshake, &bytes)[..],
            [Event::Failed(NbdError::ExportNameInvalid { .. })]
        ));

        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_EXPORT_NAME, b"a\0b"));
        assert!(matches!(
            feed(&mut handshake, &bytes)[..],
            [Event::Failed(NbdError::ExportNameInvalid { .. })]
        ));
    }

    #[test]
    fn list_then_go() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_LIST, &[]));
        assert_eq!(feed(&mut handshake, &bytes), vec![Event::List]);
        handshake.answer_list(Ok(vec![
            ExportEntry {
                name: "a".into(),
                description: String::new(),
            },
            ExportEntry {
                name: "bb".into(),
                description: "second".into(),
            },
        ]));
        assert!(drain(&mut handshake).is_empty());
        let mut expected = rep(wire::OPT_LIST, wire::REP_SERVER, &[0, 0, 0, 1, b'a']);
        expected.extend(rep(
            wire::OPT_LIST,
            wire::REP_SERVER,
            b"\x00\x00\x00\x02bbsecond",
        ));
        expected.extend(rep(wire::OPT_LIST, wire::REP_ACK, &[]));
        assert_eq!(output(&mut handshake), expected);

        let go = option(wire::OPT_GO, &go_data("bb", &[]));
        assert_eq!(feed(&mut handshake, &go), vec![export("bb", true)]);
        handshake.answer_export(Ok(disk_info()));
        assert_eq!(drain(&mut handshake), vec![ready("bb", false)]);
    }

    #[test]
    fn list_refused_and_list_with_data() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_LIST, &[]));
        assert_eq!(feed(&mut handshake, &bytes), vec![Event::List]);
        handshake.answer_list(Err(OptionError::new(RepError::Policy, "no listing")));
        assert_eq!(
            output(&mut handshake),
            rep(wire::OPT_LIST, 0x8000_0002, b"no listing")
        );

        assert!(feed(&mut handshake, &option(wire::OPT_LIST, b"xyz")).is_empty());
        assert_eq!(
            output(&mut handshake),
            rep(wire::OPT_LIST, 0x8000_0003, b"NBD_OPT_LIST takes no data")
        );
    }

    #[test]
    fn info_then_go() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED_NO_ZEROES);
        bytes.extend(option(
            wire::OPT_INFO,
            &go_data("disk0", &[wire::INFO_NAME, wire::INFO_DESCRIPTION]),
        ));
        assert_eq!(feed(&mut handshake, &bytes), vec![export("disk0", false)]);
        let mut info = disk_info();
        info.block_size_min = 512;
        info.block_size_max = 1024 * 1024;
        handshake.answer_export(Ok(info));
        assert!(
            drain(&mut handshake).is_empty(),
            "INFO does not end the handshake"
        );
        let flags = 0x01 | 0x04 | 0x08 | 0x20 | 0x40;
        let mut expected = rep(wire::OPT_INFO, wire::REP_INFO, &info_export(MIB, flags));
        expected.extend(rep(wire::OPT_INFO, wire::REP_INFO, b"\x00\x01disk0"));
        expected.extend(rep(
            wire::OPT_INFO,
            wire::REP_INFO,
            &info_block_size(512, 4096, 1024 * 1024),
        ));
        expected.extend(rep(wire::OPT_INFO, wire::REP_ACK, &[]));
        assert_eq!(output(&mut handshake), expected);

        let go = option(wire::OPT_GO, &go_data("disk0", &[]));
        assert_eq!(feed(&mut handshake, &go), vec![export("disk0", true)]);
        handshake.answer_export(Ok(info));
        assert_eq!(drain(&mut handshake), vec![ready("disk0", false)]);
        let out = output(&mut handshake);
        assert!(out.ends_with(&rep(wire::OPT_GO, wire::REP_ACK, &[])));
        let transmission = handshake.into_transmission();
        assert_eq!(transmission.export_info().block_size_min, 512);
    }

    #[test]
    fn go_refused_then_retried() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_GO, &go_data("nope", &[])));
        assert_eq!(feed(&mut handshake, &bytes), vec![export("nope", true)]);
        handshake.answer_export(Err(OptionError::new(RepError::Unknown, "no such export")));
        assert!(drain(&mut handshake).is_empty());
        assert_eq!(
            output(&mut handshake),
            rep(wire::OPT_GO, 0x8000_0006, b"no such export")
        );
        let go = option(wire::OPT_GO, &go_data("disk0", &[]));
        assert_eq!(feed(&mut handshake, &go), vec![export("disk0", true)]);
        handshake.answer_export(Ok(disk_info()));
        assert_eq!(drain(&mut handshake), vec![ready("disk0", false)]);
    }

    #[test]
    fn option_error_message_is_truncated_on_a_char_boundary() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_INFO, &go_data("x", &[])));
        assert_eq!(feed(&mut handshake, &bytes), vec![export("x", false)]);
        let message = format!("a{}", "é".repeat(3000)); // 6001 bytes
        handshake.answer_export(Err(OptionError::new(RepError::Policy, message.clone())));
        let out = output(&mut handshake);
        assert_eq!(read_u32(&out, 16), 4095);
        assert_eq!(&out[20..], &message.as_bytes()[..4095]);
    }

    #[test]
    fn unknown_and_unsupported_options() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(42, &[7u8; 10]));
        assert!(feed(&mut handshake, &bytes).is_empty());
        assert_eq!(
            output(&mut handshake),
            rep(42, 0x8000_0001, b"option not supported")
        );
        for unsupported in [
            wire::OPT_LIST_META_CONTEXT,
            wire::OPT_SET_META_CONTEXT,
            wire::OPT_EXTENDED_HEADERS,
            4, // PEEK_EXPORT, withdrawn
        ] {
            assert!(feed(&mut handshake, &option(unsupported, b"whatever")).is_empty());
            assert_eq!(
                output(&mut handshake),
                rep(unsupported, 0x8000_0001, b"option not supported")
            );
        }
        assert!(feed(&mut handshake, &option(wire::OPT_STARTTLS, &[])).is_empty());
        assert_eq!(
            output(&mut handshake),
            rep(wire::OPT_STARTTLS, 0x8000_0001, b"TLS is not supported")
        );
        let go = option(wire::OPT_GO, &go_data("disk0", &[]));
        assert_eq!(feed(&mut handshake, &go), vec![export("disk0", true)]);
    }

    #[test]
    fn oversize_option_is_skipped_unbuffered() {
        let mut handshake = started(Config::default());
        let len = 100_000u32;
        let mut header = client_flags(FIXED);
        header.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
        header.extend_from_slice(&wire::OPT_GO.to_be_bytes());
        header.extend_from_slice(&len.to_be_bytes());
        assert!(feed(&mut handshake, &header).is_empty());
        let data = vec![0xabu8; len as usize];
        for chunk in data.chunks(999) {
            assert!(feed(&mut handshake, chunk).is_empty());
            assert_eq!(handshake.buffered_len(), 0);
            assert!(handshake.input.capacity() <= 4096);
        }
        assert_eq!(
            output(&mut handshake),
            rep(wire::OPT_GO, 0x8000_0009, b"option data too long")
        );
        let go = option(wire::OPT_GO, &go_data("disk0", &[]));
        assert_eq!(feed(&mut handshake, &go), vec![export("disk0", true)]);
    }

    #[test]
    fn malformed_info_and_go_are_invalid() {
        let mut too_long_name = go_data("abc", &[]);
        too_long_name[3] = 4; // name length 4 but only 3 name bytes + 2 count bytes
        let mut count_mismatch = go_data("abc", &[wire::INFO_NAME]);
        count_mismatch.pop();
        let mut bad_utf8 = go_data("abc", &[]);
        bad_utf8[4] = 0xc3;
        let cases: [(&[u8], &[u8]); 5] = [
            (&[0, 0, 0], b"option data shorter than 6 bytes"),
            (&too_long_name, b"export name length exceeds option length"),
            (
                &count_mismatch,
                b"information request count does not match option length",
            ),
            (&bad_utf8, b"export name is not UTF-8"),
            (&go_data("a\0", &[]), b"export name contains NUL"),
        ];
        for opt in [wire::OPT_INFO, wire::OPT_GO] {
            let mut handshake = started(Config::default());
            assert!(feed(&mut handshake, &client_flags(FIXED)).is_empty());
            for (data, message) in cases {
                assert!(feed(&mut handshake, &option(opt, data)).is_empty());
                assert_eq!(output(&mut handshake), rep(opt, 0x8000_0003, message));
            }
            let mut huge_name = vec![0u8; 4];
            huge_name[..4].copy_from_slice(&5000u32.to_be_bytes());
            huge_name.extend([b'a'; 5000]);
            huge_name.extend([0, 0]);
            assert!(feed(&mut handshake, &option(opt, &huge_name)).is_empty());
            assert_eq!(
                output(&mut handshake),
                rep(opt, 0x8000_0003, b"export name longer than 4096 bytes")
            );
        }
    }

    #[test]
    fn structured_reply_twice_or_with_data_is_invalid() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_STRUCTURED_REPLY, &[]));
        assert!(feed(&mut handshake, &bytes).is_empty());
        assert!(feed(&mut handshake, &option(wire::OPT_STRUCTURED_REPLY, &[])).is_empty());
        assert!(feed(&mut handshake, &option(wire::OPT_STRUCTURED_REPLY, &[1])).is_empty());
        let mut expected = rep(wire::OPT_STRUCTURED_REPLY, wire::REP_ACK, &[]);
        expected.extend(rep(
            wire::OPT_STRUCTURED_REPLY,
            0x8000_0003,
            b"structured replies already negotiated",
        ));
        expected.extend(rep(
            wire::OPT_STRUCTURED_REPLY,
            0x8000_0003,
            b"NBD_OPT_STRUCTURED_REPLY takes no data",
        ));
        assert_eq!(output(&mut handshake), expected);
    }

    #[test]
    fn abort_acks_and_closes() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_ABORT, &[]));
        bytes.extend(option(wire::OPT_LIST, &[])); // ignored
        assert_eq!(feed(&mut handshake, &bytes), vec![Event::Aborted]);
        assert_eq!(
            output(&mut handshake),
            rep(wire::OPT_ABORT, wire::REP_ACK, &[])
        );
        assert!(feed(&mut handshake, &option(wire::OPT_LIST, &[])).is_empty());
        assert!(output(&mut handshake).is_empty());
    }

    #[test]
    fn client_without_fixed_newstyle_is_refused() {
        let mut handshake = started(Config::default());
        assert_eq!(
            feed(&mut handshake, &client_flags(0)),
            vec![Event::Failed(NbdError::NotFixedNewstyle { flags: 0 })]
        );
        let mut handshake = started(Config::default());
        assert_eq!(
            feed(&mut handshake, &client_flags(wire::FLAG_C_NO_ZEROES)),
            vec![Event::Failed(NbdError::NotFixedNewstyle { flags: 2 })]
        );
        let mut handshake = started(Config::default());
        assert_eq!(
            feed(&mut handshake, &client_flags(FIXED | 4)),
            vec![Event::Failed(NbdError::UnknownClientFlags { flags: 5 })]
        );
        assert!(output(&mut handshake).is_empty());
    }

    #[test]
    fn garbage_option_magic_is_fatal() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            feed(&mut handshake, &bytes),
            vec![Event::Failed(NbdError::BadOptionMagic {
                magic: u64::from_be_bytes(*b"GET / HT")
            })]
        );
        assert_eq!(handshake.buffered_len(), 0);
    }

    #[test]
    fn too_many_options_is_fatal() {
        let config = Config {
            options_count_max: 3,
            ..Config::default()
        };
        let mut handshake = started(config);
        let mut bytes = client_flags(FIXED);
        for _ in 0..4 {
            bytes.extend(option(99, &[]));
        }
        assert_eq!(
            feed(&mut handshake, &bytes),
            vec![Event::Failed(NbdError::TooManyOptions { max: 3 })]
        );
        assert_eq!(output(&mut handshake).len(), 3 * (20 + 20));
    }

    #[test]
    fn flooding_while_awaiting_an_answer_is_fatal() {
        let config = Config::default();
        let mut handshake = started(config);
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_GO, &go_data("disk0", &[])));
        assert_eq!(feed(&mut handshake, &bytes), vec![export("disk0", true)]);
        let flood = vec![0u8; config.input_handshake_max() + 1];
        assert_eq!(
            feed(&mut handshake, &flood),
            vec![Event::Failed(NbdError::UnexpectedData { len: flood.len() })]
        );
        // The late answer is ignored rather than panicking.
        handshake.answer_export(Ok(disk_info()));
        assert!(drain(&mut handshake).is_empty());
    }

    /// Drives a handshake the way the shell would, one chunk at a time.
    fn drive_go(chunk_len: usize) -> (Vec<Event>, Vec<u8>, Handshake) {
        let mut handshake = Handshake::new(Config::default());
        let mut bytes = client_flags(FIXED_NO_ZEROES);
        bytes.extend(option(wire::OPT_STRUCTURED_REPLY, &[]));
        bytes.extend(option(wire::OPT_LIST, &[]));
        bytes.extend(option(wire::OPT_INFO, &go_data("disk0", &[])));
        bytes.extend(option(7777, b"unknown"));
        bytes.extend(option(
            wire::OPT_GO,
            &go_data("disk0", &[wire::INFO_BLOCK_SIZE]),
        ));
        let mut events = Vec::new();
        let mut out = Vec::new();
        for chunk in bytes.chunks(chunk_len) {
            handshake.handle_input(chunk);
            while let Some(event) = handshake.poll_event() {
                match &event {
                    Event::Export { .. } => handshake.answer_export(Ok(disk_info())),
                    Event::List => handshake.answer_list(Ok(Vec::new())),
                    _ => {}
                }
                events.push(event);
            }
            handshake.poll_transmit(&mut out);
        }
        (events, out, handshake)
    }

    #[test]
    fn handshake_fed_byte_by_byte_matches_one_chunk() {
        let (events, out, handshake) = drive_go(1);
        assert_eq!(
            events,
            vec![
                Event::List,
                export("disk0", false),
                export("disk0", true),
                ready("disk0", true)
            ]
        );
        let (events_whole, out_whole, _) = drive_go(usize::MAX);
        assert_eq!(events, events_whole);
        assert_eq!(out, out_whole);
        assert!(out.starts_with(&greeting()));
        assert_eq!(handshake.into_transmission().export_name(), "disk0");
    }

    #[test]
    fn bytes_after_go_reach_the_transmission() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_GO, &go_data("disk0", &[])));
        let read = request(0, wire::CMD_READ, 9, 0, 512);
        bytes.extend(&read[..10]);
        assert_eq!(feed(&mut handshake, &bytes), vec![export("disk0", true)]);
        handshake.answer_export(Ok(disk_info()));
        assert_eq!(drain(&mut handshake), vec![ready("disk0", false)]);
        handshake.handle_input(&read[10..20]);
        let _ = output(&mut handshake);
        let mut transmission = handshake.into_transmission();
        assert_eq!(transmission.buffered_len(), 20);
        assert!(transmission.poll_request().is_none());
        transmission.handle_input(&read[20..]);
        assert!(matches!(
            transmission.poll_request(),
            Some(Incoming::Request(Request {
                cookie: 9,
                command: Command::Read,
                ..
            }))
        ));
    }

    #[test]
    #[should_panic(expected = "write poll_transmit's output")]
    fn into_transmission_requires_drained_output() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_GO, &go_data("disk0", &[])));
        let _ = feed(&mut handshake, &bytes);
        handshake.answer_export(Ok(disk_info()));
        let _ = handshake.into_transmission();
    }

    #[test]
    #[should_panic(expected = "without a pending Event::Export")]
    fn answer_without_question_panics() {
        let mut handshake = started(Config::default());
        handshake.answer_export(Ok(disk_info()));
    }

    #[test]
    #[should_panic(expected = "unsupported transmission flags")]
    fn unsupported_transmission_flags_panic() {
        let mut handshake = started(Config::default());
        let mut bytes = client_flags(FIXED);
        bytes.extend(option(wire::OPT_GO, &go_data("disk0", &[])));
        let _ = feed(&mut handshake, &bytes);
        handshake.answer_export(Ok(ExportInfo::new(MIB, 1 << 10))); // SEND_CACHE
    }

    #[test]
    fn advertised_block_sizes_are_capped_and_consistent() {
        let config = Config {
            payload_len_max: 3 * 64 * 1024,
            ..Config::default()
        };
        let mut info = ExportInfo::new(MIB, 0);
        info.block_size_min = 64 * 1024;
        info.block_size_preferred = 1024 * 1024;
        let advertised = info.advertised(&config, false);
        assert_eq!(advertised.block_size_max, 3 * 64 * 1024);
        assert_eq!(advertised.block_size_preferred, 128 * 1024);
        assert_eq!(advertised.flags, transmission_flags::HAS_FLAGS);
        assert_eq!(
            advertised.advertised(&config, false),
            advertised,
            "idempotent"
        );
    }

    // ---- Transmission tests ----

    fn transmission(info: ExportInfo, structured: bool) -> Transmission {
        Transmission::new(Config::default(), "disk0".into(), info, structured)
    }

    /// Feeds `bytes` in chunks of `chunk_len`, draining after each; returns
    /// every item with the write payload it came with.
    fn decode(t: &mut Transmission, bytes: &[u8], chunk_len: usize) -> Vec<(Incoming, Vec<u8>)> {
        let mut decoded = Vec::new();
        for chunk in bytes.chunks(chunk_len) {
            t.handle_input(chunk);
            while let Some(incoming) = t.poll_request() {
                decoded.push((incoming, t.payload().to_vec()));
            }
        }
        decoded
    }

    fn req(command: Command, flags: u16, cookie: u64, offset: u64, length: u32) -> Request {
        Request {
            cookie,
            command,
            flags,
            offset,
            length,
        }
    }

    fn refusal(request: Request, error: Errno) -> Incoming {
        Incoming::Refuse(Refusal {
            request,
            error,
            reason: "",
        })
    }

    /// Blanks refusal reasons so tests can compare items by value.
    fn without_reasons(items: Vec<(Incoming, Vec<u8>)>) -> Vec<(Incoming, Vec<u8>)> {
        items
            .into_iter()
            .map(|(incoming, payload)| match incoming {
                Incoming::Refuse(r) => (Incoming::Refuse(Refusal { reason: "", ..r }), payload),
                other => (other, payload),
            })
            .collect()
    }

    fn every_command_stream() -> (Vec<u8>, Vec<(Incoming, Vec<u8>)>) {
        use command_flags::*;
        let payload = pattern(1024);
        let mut bytes = request(0, wire::CMD_READ, 1, 4096, 512);
        bytes.extend(write_request(FUA, 2, 8192, &payload));
        bytes.extend(request(0, wire::CMD_FLUSH, 3, 0, 0));
        bytes.extend(request(0, wire::CMD_TRIM, 4, 0, 65536));
        bytes.extend(request(NO_HOLE | FUA, wire::CMD_WRITE_ZEROES, 5, 512, 1024));
        bytes.extend(request(0, 5, 6, 0, 512)); // CACHE: not supported
        bytes.extend(write_request(0, 7, 0, &[]));
        bytes.extend(request(0, wire::CMD_DISC, 8, 0, 0));
        bytes.extend(request(0, wire::CMD_READ, 9, 0, 512)); // after DISC: ignored
        let expected = vec![
            (
                Incoming::Request(req(Command::Read, 0, 1, 4096, 512)),
                vec![],
            ),
            (
                Incoming::Request(req(Command::Write, FUA, 2, 8192, 1024)),
                payload,
            ),
            (Incoming::Request(req(Command::Flush, 0, 3, 0, 0)), vec![]),
            (
                Incoming::Request(req(Command::Trim, 0, 4, 0, 65536)),
                vec![],
            ),
            (
                Incoming::Request(req(Command::WriteZeroes, NO_HOLE | FUA, 5, 512, 1024)),
                vec![],
            ),
            (
                refusal(req(Command::Other(5), 0, 6, 0, 512), Errno::Inval),
                vec![],
            ),
            (Incoming::Request(req(Command::Write, 0, 7, 0, 0)), vec![]),
            (Incoming::Disconnect, vec![]),
        ];
        (bytes, expected)
    }

    #[test]
    fn decodes_every_command() {
        let (bytes, expected) = every_command_stream();
        let mut t = transmission(disk_info(), false);
        assert_eq!(
            without_reasons(decode(&mut t, &bytes, bytes.len())),
            expected
        );
        assert!(t.poll_request().is_none());
        assert_eq!(t.buffered_len(), 0);
    }

    #[test]
    fn decodes_byte_by_byte_and_in_odd_chunks() {
        let (bytes, expected) = every_command_stream();
        for chunk_len in [1, 2, 3, 7, 27, 28, 29, 100, 1000] {
            let mut t = transmission(disk_info(), false);
            assert_eq!(
                without_reasons(decode(&mut t, &bytes, chunk_len)),
                expected,
                "chunk_len {chunk_len}"
            );
        }
    }

    #[test]
    fn oversize_write_is_fatal_after_an_eoverflow_reply() {
        let mut t = transmission(disk_info(), false);
        let mut bytes = request(0, wire::CMD_WRITE, 11, 0, PAYLOAD_DEFAULT + 1);
        bytes.extend([0u8; 100]);
        let decoded = decode(&mut t, &bytes, bytes.len());
        let request = req(Command::Write, 0, 11, 0, PAYLOAD_DEFAULT + 1);
        assert_eq!(
            decoded,
            vec![(
                Incoming::Fatal {
                    error: NbdError::PayloadTooLarge {
                        cookie: 11,
                        length: PAYLOAD_DEFAULT + 1,
                        max: PAYLOAD_DEFAULT
                    },
                    reply: Some(Refusal {
                        request,
                        error: Errno::Overflow,
                        reason: "write payload too large"
                    }),
                },
                vec![]
            )]
        );
        t.handle_input(&request_bytes_read());
        assert!(t.poll_request().is_none());
        assert_eq!(t.buffered_len(), 0);
    }

    fn request_bytes_read() -> Vec<u8> {
        request(0, wire::CMD_READ, 1, 0, 512)
    }

    #[test]
    fn write_over_advertised_maximum_is_refused_and_skipped() {
        let mut info = disk_info();
        info.block_size_max = 64 * 1024;
        let mut t = transmission(info, false);
        let payload = pattern(128 * 1024);
        let mut bytes = write_request(0, 12, 0, &payload);
        bytes.extend(request_bytes_read());
        let mut decoded = Vec::new();
        for chunk in bytes.chunks(1000) {
            t.handle_input(chunk);
            while let Some(incoming) = t.poll_request() {
                decoded.push(incoming);
            }
            assert!(t.buffered_len() < 1000 + REQUEST_HEADER_LEN);
        }
        assert_eq!(decoded.len(), 2);
        assert!(matches!(
            decoded[0],
            Incoming::Refuse(Refusal {
                error: Errno::Overflow,
                request: Request { cookie: 12, .. },
                ..
            })
        ));
        assert!(matches!(
            decoded[1],
            Incoming::Request(Request {
                cookie: 1,
                command: Command::Read,
                ..
            })
        ));
    }

    #[test]
    fn overflowing_offsets_are_refused_not_fatal() {
        let mut t = transmission(disk_info(), false);
        let mut bytes = request(0, wire::CMD_READ, 1, u64::MAX - 10, 512);
        bytes.extend(write_request(0, 2, u64::MAX, &pattern(512)));
        bytes.extend(request(0, wire::CMD_TRIM, 3, u64::MAX, 1));
        bytes.extend(request(0, wire::CMD_READ, 4, 0, 512));
        let decoded = without_reasons(decode(&mut t, &bytes, 5));
        assert_eq!(
            decoded,
            vec![
                (
                    refusal(req(Command::Read, 0, 1, u64::MAX - 10, 512), Errno::Inval),
                    vec![]
                ),
                (
                    refusal(req(Command::Write, 0, 2, u64::MAX, 512), Errno::Inval),
                    vec![]
                ),
                (
                    refusal(req(Command::Trim, 0, 3, u64::MAX, 1), Errno::Inval),
                    vec![]
                ),
                (Incoming::Request(req(Command::Read, 0, 4, 0, 512)), vec![]),
            ]
        );
    }

    #[test]
    fn requests_beyond_the_end() {
        let mut t = transmission(disk_info(), false);
        let mut bytes = request(0, wire::CMD_READ, 1, MIB - 256, 512);
        bytes.extend(write_request(0, 2, MIB, &pattern(1)));
        bytes.extend(request(0, wire::CMD_WRITE_ZEROES, 3, MIB, 1));
        bytes.extend(request(0, wire::CMD_READ, 4, MIB - 512, 512)); // exactly to the end
        let decoded = without_reasons(decode(&mut t, &bytes, bytes.len()));
        assert_eq!(
            decoded,
            vec![
                (
                    refusal(req(Command::Read, 0, 1, MIB - 256, 512), Errno::Inval),
                    vec![]
                ),
                (
                    refusal(req(Command::Write, 0, 2, MIB, 1), Errno::NoSpc),
                    vec![]
                ),
                (
                    refusal(req(Command::WriteZeroes, 0, 3, MIB, 1), Errno::Inval),
                    vec![]
                ),
                (
                    Incoming::Request(req(Command::Read, 0, 4, MIB - 512, 512)),
                    vec![]
                ),
            ]
        );
    }

    #[test]
    fn read_only_export_refuses_writes() {
        use transmission_flags::*;
        let info = ExportInfo::new(MIB, READ_ONLY | SEND_TRIM | SEND_WRITE_ZEROES | SEND_FLUSH);
        let mut t = transmission(info, false);
        let mut bytes = write_request(0, 1, 0, &pattern(512));
        bytes.extend(request(0, wire::CMD_TRIM, 2, 0, 512));
        bytes.extend(request(0, wire::CMD_WRITE_ZEROES, 3, 0, 512));
        bytes.extend(request(0, wire::CMD_FLUSH, 4, 0, 0));
        bytes.extend(request(0, wire::CMD_READ, 5, 0, 512));
        let decoded = without_reasons(decode(&mut t, &bytes, 3));
        assert_eq!(
            decoded,
            vec![
                (
                    refusal(req(Command::Write, 0, 1, 0, 512), Errno::Perm),
                    vec![]
                ),
                (
                    refusal(req(Command::Trim, 0, 2, 0, 512), Errno::Perm),
                    vec![]
                ),
                (
                    refusal(req(Command::WriteZeroes, 0, 3, 0, 512), Errno::Perm),
                    vec![]
                ),
                (Incoming::Request(req(Command::Flush, 0, 4, 0, 0)), vec![]),
                (Incoming::Request(req(Command::Read, 0, 5, 0, 512)), vec![]),
            ]
        );
    }

    #[test]
    fn flags_and_commands_must_be_advertised() {
        use command_flags::*;
        let mut t = transmission(ExportInfo::new(MIB, 0), false);
        let mut bytes = request(FUA, wire::CMD_READ, 1, 0, 512);
        bytes.extend(request(DF, wire::CMD_READ, 2, 0, 512));
        bytes.extend(request(0, wire::CMD_FLUSH, 3, 0, 0));
        bytes.extend(request(0, wire::CMD_TRIM, 4, 0, 512));
        bytes.extend(request(0, wire::CMD_WRITE_ZEROES, 5, 0, 512));
        bytes.extend(request(1 << 9, wire::CMD_READ, 6, 0, 512));
        let decoded = decode(&mut t, &bytes, bytes.len());
        assert_eq!(decoded.len(), 6);
        for (incoming, _) in decoded {
            assert!(matches!(
                incoming,
                Incoming::Refuse(Refusal {
                    error: Errno::Inval,
                    ..
                })
            ));
        }

        // DF is allowed once structured replies and SEND_DF are on.
        let mut t = transmission(disk_info(), true);
        let bytes = request(DF | FUA, wire::CMD_READ, 7, 0, 512);
        assert_eq!(
            decode(&mut t, &bytes, 1),
            vec![(
                Incoming::Request(req(Command::Read, DF | FUA, 7, 0, 512)),
                vec![]
            )]
        );
        // FAST_ZERO is never advertised.
        let bytes = request(FAST_ZERO, wire::CMD_WRITE_ZEROES, 8, 0, 512);
        assert!(matches!(
            decode(&mut t, &bytes, 1)[..],
            [(
                Incoming::Refuse(Refusal {
                    error: Errno::Inval,
                    ..
                }),
                _
            )]
        ));
    }

    #[test]
    fn lengths_and_alignment() {
        let mut info = disk_info();
        info.block_size_min = 512;
        info.block_size_max = 64 * 1024;
        let mut t = transmission(info, false);
        let mut bytes = request(0, wire::CMD_READ, 1, 0, 128 * 1024);
        bytes.extend(request(0, wire::CMD_READ, 2, 100, 512));
        bytes.extend(request(0, wire::CMD_READ, 3, 512, 100));
        bytes.extend(request(0, wire::CMD_TRIM, 4, 0, 128 * 1024)); // no payload limit
        let decoded = without_reasons(decode(&mut t, &bytes, bytes.len()));
        assert_eq!(
            decoded,
            vec![
                (
                    refusal(req(Command::Read, 0, 1, 0, 128 * 1024), Errno::Overflow),
                    vec![]
                ),
                (
                    refusal(req(Command::Read, 0, 2, 100, 512), Errno::Inval),
                    vec![]
                ),
                (
                    refusal(req(Command::Read, 0, 3, 512, 100), Errno::Inval),
                    vec![]
                ),
                (
                    Incoming::Request(req(Command::Trim, 0, 4, 0, 128 * 1024)),
                    vec![]
                ),
            ]
        );
    }

    #[test]
    fn bad_request_magic_is_fatal() {
        let mut t = transmission(disk_info(), false);
        let mut bytes = request_bytes_read();
        bytes[0] ^= 0xff;
        bytes.extend(request_bytes_read());
        let decoded = decode(&mut t, &bytes, 1);
        assert_eq!(
            decoded,
            vec![(
                Incoming::Fatal {
                    error: NbdError::BadRequestMagic { magic: 0xda60_9513 },
                    reply: None
                },
                vec![]
            )]
        );
        assert_eq!(t.buffered_len(), 0);
    }

    #[test]
    fn payload_is_only_for_the_last_write() {
        let mut t = transmission(disk_info(), false);
        let mut bytes = write_request(0, 1, 0, &pattern(16));
        bytes.extend(request_bytes_read());
        t.handle_input(&bytes);
        assert!(matches!(t.poll_request(), Some(Incoming::Request(_))));
        assert_eq!(t.payload(), &pattern(16)[..]);
        assert!(matches!(t.poll_request(), Some(Incoming::Request(_))));
        assert!(t.payload().is_empty());
    }

    // ---- Reply encoding golden bytes ----

    const COOKIE: u64 = 0x0102_0304_0506_0708;
    const COOKIE_BYTES: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

    fn concat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn simple_replies_are_golden() {
        let replies = ReplyEncoder::new(false);
        let mut out = Vec::new();
        replies.ok(&mut out, COOKIE);
        assert_eq!(
            out,
            concat(&[&[0x67, 0x44, 0x66, 0x98], &[0, 0, 0, 0], &COOKIE_BYTES])
        );

        out.clear();
        replies.read(&mut out, COOKIE, 4096, b"abc");
        assert_eq!(
            out,
            concat(&[
                &[0x67, 0x44, 0x66, 0x98],
                &[0, 0, 0, 0],
                &COOKIE_BYTES,
                b"abc"
            ])
        );

        out.clear();
        replies.error(&mut out, COOKIE, Errno::Io, "disk on fire");
        assert_eq!(
            out,
            concat(&[&[0x67, 0x44, 0x66, 0x98], &[0, 0, 0, 5], &COOKIE_BYTES])
        );

        out.clear();
        let refusal = Refusal {
            request: req(Command::Write, 0, COOKIE, 0, 1),
            error: Errno::Perm,
            reason: "stale token",
        };
        replies.refuse(&mut out, &refusal);
        assert_eq!(
            out,
            concat(&[&[0x67, 0x44, 0x66, 0x98], &[0, 0, 0, 1], &COOKIE_BYTES])
        );
    }

    #[test]
    fn structured_replies_are_golden() {
        let replies = ReplyEncoder::new(true);
        let magic = [0x66, 0x8e, 0x33, 0xef];
        let mut out = Vec::new();
        replies.ok(&mut out, COOKIE);
        assert_eq!(
            out,
            concat(&[&magic, &[0, 1], &[0, 0], &COOKIE_BYTES, &[0, 0, 0, 0]])
        );

        out.clear();
        replies.read(&mut out, COOKIE, 0x1000, b"abc");
        assert_eq!(
            out,
            concat(&[
                &magic,
                &[0, 1],
                &[0, 1],
                &COOKIE_BYTES,
                &[0, 0, 0, 11],
                &[0, 0, 0, 0, 0, 0, 0x10, 0],
                b"abc"
            ])
        );

        out.clear();
        replies.read(&mut out, COOKIE, 0x1000, b"");
        let mut none = Vec::new();
        replies.ok(&mut none, COOKIE);
        assert_eq!(out, none, "an empty read ends with a NONE chunk");

        out.clear();
        replies.error(&mut out, COOKIE, Errno::Inval, "bad");
        assert_eq!(
            out,
            concat(&[
                &magic,
                &[0, 1],
                &[0x80, 0x01],
                &COOKIE_BYTES,
                &[0, 0, 0, 9],
                &[0, 0, 0, 22],
                &[0, 3],
                b"bad"
            ])
        );

        out.clear();
        replies.read_chunk(&mut out, COOKIE, 0, b"ab");
        replies.read_chunk(&mut out, COOKIE, 2, b"c");
        replies.error(&mut out, COOKIE, Errno::Io, "");
        assert_eq!(
            out,
            concat(&[
                &magic,
                &[0, 0],
                &[0, 1],
                &COOKIE_BYTES,
                &[0, 0, 0, 10],
                &[0; 8],
                b"ab",
                &magic,
                &[0, 0],
                &[0, 1],
                &COOKIE_BYTES,
                &[0, 0, 0, 9],
                &[0, 0, 0, 0, 0, 0, 0, 2],
                b"c",
                &magic,
                &[0, 1],
                &[0x80, 0x01],
                &COOKIE_BYTES,
                &[0, 0, 0, 6],
                &[0, 0, 0, 5],
                &[0, 0],
            ])
        );
    }

    #[test]
    fn read_header_then_data_equals_read() {
        for structured in [false, true] {
            let replies = ReplyEncoder::new(structured);
            let data = pattern(300);
            let mut whole = Vec::new();
            replies.read(&mut whole, COOKIE, 512, &data);
            let mut split = Vec::new();
            replies.read_header(&mut split, COOKIE, 512, 300);
            split.extend_from_slice(&data);
            assert_eq!(whole, split);
        }
    }

    #[test]
    fn structured_error_message_is_truncated() {
        let replies = ReplyEncoder::new(true);
        let mut out = Vec::new();
        let message = format!("a{}", "é".repeat(3000));
        replies.error(&mut out, COOKIE, Errno::Shutdown, &message);
        assert_eq!(read_u32(&out, 16), 6 + 4095);
        assert_eq!(read_u32(&out, 20), 108);
        assert_eq!(read_u16(&out, 24), 4095);
        assert_eq!(out.len(), 20 + 6 + 4095);
    }

    #[test]
    fn errno_numbers_match_the_spec() {
        let numbers: Vec<u32> = [
            Errno::Perm,
            Errno::Io,
            Errno::NoMem,
            Errno::Inval,
            Errno::NoSpc,
            Errno::Overflow,
            Errno::NotSup,
            Errno::Shutdown,
        ]
        .map(Errno::to_wire)
        .to_vec();
        assert_eq!(numbers, vec![1, 5, 12, 22, 28, 75, 95, 108]);
    }

    // ---- Properties ----

    fn small_config() -> Config {
        Config {
            option_len_max: Config::OPTION_LEN_MAX_MIN,
            options_count_max: 64,
            payload_len_max: Config::PAYLOAD_LEN_MAX_MIN,
        }
    }

    /// After the shell drained the decoder, what is left is less than one
    /// whole request.
    fn assert_transmission_bounded(t: &Transmission) {
        let buffered = &t.input[t.input_start..];
        if buffered.len() >= REQUEST_HEADER_LEN {
            assert_eq!(read_u32(buffered, 0), wire::REQUEST_MAGIC);
            assert_eq!(read_u16(buffered, 6), wire::CMD_WRITE);
            let length = read_u32(buffered, 24);
            assert!(length <= t.config.payload_len_max);
            assert!(buffered.len() < REQUEST_HEADER_LEN + length as usize);
        }
    }

    /// Drives a handshake and then a transmission over `input` cut into
    /// `chunks`, as the shell would, checking buffering after every read.
    fn drive(input: &[u8], chunks: &[usize]) {
        let config = small_config();
        let mut handshake = Handshake::new(config);
        let mut transmission: Option<Transmission> = None;
        let mut out = Vec::new();
        let mut answers = 0u32;
        let mut rest = input;
        let mut sizes = chunks.iter().cycle();
        while !rest.is_empty() {
            let size = (*sizes.next().unwrap()).min(rest.len());
            let (chunk, tail) = rest.split_at(size);
            rest = tail;
            if let Some(t) = transmission.as_mut() {
                t.handle_input(chunk);
                while let Some(incoming) = t.poll_request() {
                    let replies = t.replies();
                    match incoming {
                        Incoming::Request(request) => {
                            if request.command == Command::Write {
                                assert_eq!(t.payload().len(), request.length as usize);
                            }
                            replies.ok(&mut out, request.cookie);
                        }
                        Incoming::Refuse(refusal) => replies.refuse(&mut out, &refusal),
                        Incoming::Disconnect | Incoming::Fatal { .. } => {}
                    }
                }
                assert_transmission_bounded(t);
                continue;
            }
            handshake.handle_input(chunk);
            let mut ready = false;
            while let Some(event) = handshake.poll_event() {
                answers += 1;
                match event {
                    Event::Export { name, .. } if answers % 3 == 0 => handshake.answer_export(Err(
                        OptionError::new(RepError::Unknown, format!("no {name}")),
                    )),
                    Event::Export { .. } => handshake.answer_export(Ok(disk_info())),
                    Event::List => handshake.answer_list(Ok(vec![ExportEntry {
                        name: "disk0".into(),
                        description: "d".into(),
                    }])),
                    Event::Ready { .. } => ready = true,
                    Event::Aborted | Event::Failed(_) => {}
                }
            }
            assert!(handshake.buffered_len() <= config.input_handshake_max());
            handshake.poll_transmit(&mut out);
            if ready {
                let t = std::mem::replace(&mut handshake, Handshake::new(config));
                transmission = Some(t.into_transmission());
            }
        }
    }

    /// A prefix that gets through the handshake, so arbitrary bytes after it
    /// exercise the request decoder.
    fn go_prefix() -> Vec<u8> {
        let mut bytes = client_flags(FIXED_NO_ZEROES);
        bytes.extend(option(wire::OPT_STRUCTURED_REPLY, &[]));
        bytes.extend(option(wire::OPT_GO, &go_data("disk0", &[])));
        bytes
    }

    /// Request-shaped bytes: mostly valid headers with random fields, so the
    /// decoder's checks and skips are reached, not just the magic check.
    fn request_soup() -> impl Strategy<Value = Vec<u8>> {
        let one = (
            any::<u16>(),
            0u16..9,
            any::<u64>(),
            prop_oneof![0u64..2 * MIB, any::<u64>()],
            prop_oneof![0u32..4096, 60_000u32..70_000, any::<u32>()],
            0usize..2048,
        )
            .prop_map(|(flags, command, cookie, offset, length, payload_len)| {
                let mut bytes = request(flags & 0x1f, command, cookie, offset, length);
                bytes.extend(pattern(payload_len));
                bytes
            });
        prop::collection::vec(one, 0..16).prop_map(|parts| parts.concat())
    }

    proptest! {
        #[test]
        fn arbitrary_handshake_bytes_never_panic(
            input in prop::collection::vec(any::<u8>(), 0..8192),
            chunks in prop::collection::vec(1usize..600, 1..32),
            with_flags in any::<bool>(),
        ) {
            let mut bytes = if with_flags { client_flags(FIXED) } else { Vec::new() };
            bytes.extend(input);
            drive(&bytes, &chunks);
        }

        #[test]
        fn arbitrary_options_never_panic(
            options in prop::collection::vec(
                (0u32..13, prop::collection::vec(any::<u8>(), 0..64)), 0..12),
            chunks in prop::collection::vec(1usize..600, 1..32),
        ) {
            let mut bytes = client_flags(FIXED);
            for (opt, data) in options {
                bytes.extend(option(opt, &data));
            }
            drive(&bytes, &chunks);
        }

        #[test]
        fn arbitrary_transmission_bytes_never_panic(
            soup in request_soup(),
            garbage in prop::collection::vec(any::<u8>(), 0..512),
            chunks in prop::collection::vec(1usize..3000, 1..32),
        ) {
            let mut bytes = go_prefix();
            bytes.extend(soup);
            bytes.extend(garbage);
            drive(&bytes, &chunks);
        }

        #[test]
        fn valid_requests_round_trip(
            specs in prop::collection::vec((0u8..5, 0u64..1024, 0u32..64, any::<u64>()), 0..20),
            chunks in prop::collection::vec(1usize..200, 1..16),
        ) {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for (kind, block, blocks, cookie) in specs {
                let offset = block * 512;
                let length = blocks * 512;
                let (command, payload) = match kind {
                    0 => (Command::Read, vec![]),
                    1 => (Command::Write, pattern(length as usize)),
                    2 => (Command::Flush, vec![]),
                    3 => (Command::Trim, vec![]),
                    _ => (Command::WriteZeroes, vec![]),
                };
                let (offset, length) = if command == Command::Flush { (0, 0) } else { (offset, length) };
                bytes.extend(request(0, command.to_wire(), cookie, offset, length));
                bytes.extend(&payload);
                expected.push((Incoming::Request(req(command, 0, cookie, offset, length)), payload));
            }
            let mut t = transmission(disk_info(), true);
            let mut decoded = Vec::new();
            let mut rest = &bytes[..];
            let mut sizes = chunks.iter().cycle();
            while !rest.is_empty() {
                let size = (*sizes.next().unwrap()).min(rest.len());
                decoded.extend(decode(&mut t, &rest[..size], size));
                rest = &rest[size..];
                assert_transmission_bounded(&t);
            }
            prop_assert_eq!(decoded, expected);
        }
    }
}
