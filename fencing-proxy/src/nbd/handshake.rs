//! Fixed newstyle negotiation: [`Handshake`], the option-haggling state
//! machine, and what the caller answers it with ([`ExportInfo`],
//! [`OptionError`], [`ExportEntry`]).

use super::*;

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
    pub(super) fn advertised(&self, config: &Config, structured_replies: bool) -> ExportInfo {
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
    pub(super) input: Vec<u8>,
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
