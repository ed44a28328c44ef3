use super::*;

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
