//! Transmission: [`Transmission`] decodes requests ([`Request`],
//! [`Incoming`]) and refuses what the export does not allow.

use super::*;

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
    pub(super) config: Config,
    export_name: String,
    export: ExportInfo,
    structured_replies: bool,
    pub(super) input: Vec<u8>,
    pub(super) input_start: usize,
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
