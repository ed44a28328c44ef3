use super::*;

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
