//! The NBD handshake (fixed newstyle option haggling), sans-IO:
//! `palisade_fencing_proxy::nbd::Handshake` on an arbitrary client byte stream,
//! answered the way the proxy's shell answers (accept or refuse an export,
//! list exports), then, if the client got in, the transmission phase on
//! the rest of the stream.
//!
//! Input: limits, a seed for how the stream is cut into reads, a block of
//! answers (one choice per question the handshake asks), then the client's
//! byte stream.
//!
//! Asserts (fencing-proxy/src/nbd/ module docs):
//! - no panic on any stream, when every question is answered as documented;
//! - the greeting is exactly NBDMAGIC, IHAVEOPT and the server flags;
//! - everything else sent during haggling is a sequence of well-formed
//!   option replies (magic, option, type, length, data), except the one
//!   NBD_OPT_EXPORT_NAME answer (size, flags, optional 124 zeroes), which
//!   can only come last;
//! - export names handed to the caller are at most 4096 bytes, without NUL;
//! - after Ready, Aborted or Failed no further event ever comes;
//! - while haggling, at most one partial option plus the last read is
//!   buffered (option_len_max + 16);
//! - after Ready, `into_transmission` keeps the bytes the client sent
//!   early, for the export the client selected, and the transmission phase
//!   holds every promise checked by the nbd_transmission target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::nbd;
use palisade_fuzz::{Chunks, Input};
use palisade_fencing_proxy::nbd::{
    wire, Event, ExportEntry, Handshake, OptionError, RepError, STRING_LEN_MAX,
};

const GREETING_LEN: usize = 18;

fn check_output(out: &[u8], ready: bool) {
    let mut greeting = Vec::new();
    greeting.extend_from_slice(&wire::NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(wire::FLAG_FIXED_NEWSTYLE | wire::FLAG_NO_ZEROES).to_be_bytes());
    assert_eq!(&out[..GREETING_LEN], &greeting[..], "greeting");
    let mut rest = &out[GREETING_LEN..];
    while rest.len() >= 20 && rest[..8] == wire::OPTION_REPLY_MAGIC.to_be_bytes() {
        let len = u32::from_be_bytes(rest[16..20].try_into().expect("4 bytes")) as usize;
        assert!(
            rest.len() >= 20 + len,
            "option reply shorter than its length field"
        );
        rest = &rest[20 + len..];
    }
    if ready {
        // GO ends with its ACK reply; EXPORT_NAME's answer is raw.
        assert!(
            rest.is_empty() || rest.len() == 10 || rest.len() == 10 + wire::EXPORT_NAME_ZEROES_LEN,
            "NBD_OPT_EXPORT_NAME answer of {} bytes",
            rest.len()
        );
    } else {
        assert!(
            rest.is_empty(),
            "{} bytes that are not an option reply",
            rest.len()
        );
    }
}

fn answer(answers: &mut Input) -> Result<palisade_fencing_proxy::nbd::ExportInfo, OptionError> {
    match answers.byte() % 4 {
        0 | 1 => Ok(nbd::export_info(answers)),
        2 => Err(OptionError::new(RepError::Unknown, "no such export")),
        _ => Err(OptionError::new(
            RepError::Policy,
            "a write token is required",
        )),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let config = nbd::config(&mut input);
    let seed = input.byte();
    let answers_len = usize::from(input.byte());
    let mut answers = Input::new(input.bytes(answers_len));
    let stream = input.rest();

    let mut handshake = Handshake::new(config);
    let mut out = Vec::new();
    handshake.poll_transmit(&mut out);
    assert_eq!(out.len(), GREETING_LEN);

    let mut chunks = Chunks::new(u32::from(seed).wrapping_mul(2246822519), 40);
    let mut fed = 0;
    let mut ended = false;
    let mut ready: Option<(String, bool)> = None;
    let mut last_export_go = false;
    while fed < stream.len() && ready.is_none() {
        let n = chunks.next_len().min(stream.len() - fed);
        handshake.handle_input(&stream[fed..fed + n]);
        fed += n;
        while let Some(event) = handshake.poll_event() {
            assert!(
                !ended && ready.is_none(),
                "an event after the end: {event:?}"
            );
            match event {
                Event::Export { name, go } => {
                    assert!(name.len() <= STRING_LEN_MAX);
                    assert!(!name.contains('\0'));
                    last_export_go = go;
                    handshake.answer_export(answer(&mut answers));
                }
                Event::List => {
                    let entries = match answers.byte() % 3 {
                        0 => Ok(vec![]),
                        1 => Ok(vec![
                            ExportEntry {
                                name: "disk0".into(),
                                description: "first".into(),
                            },
                            ExportEntry {
                                name: "ü".repeat(2048),
                                description: "d".repeat(5000),
                            },
                        ]),
                        _ => Err(OptionError::new(RepError::Policy, "listing is off")),
                    };
                    handshake.answer_list(entries);
                }
                Event::Ready {
                    export,
                    structured_replies,
                } => {
                    assert!(last_export_go, "Ready without a GO or EXPORT_NAME");
                    ready = Some((export, structured_replies));
                }
                Event::Aborted | Event::Failed(_) => ended = true,
            }
        }
        handshake.poll_transmit(&mut out);
        if ready.is_none() && !ended {
            assert!(
                handshake.buffered_len() <= 16 + config.option_len_max as usize + n,
                "buffered {} bytes while haggling",
                handshake.buffered_len()
            );
        }
        if ended {
            // Whatever comes next is dropped, and asks nothing.
            handshake.handle_input(&stream[fed..]);
            assert!(handshake.poll_event().is_none(), "an event after the end");
            assert_eq!(handshake.buffered_len(), 0);
            fed = stream.len();
        }
    }
    check_output(&out, ready.is_some());

    if let Some((export, structured)) = ready {
        let early = handshake.buffered_len();
        let mut transmission = handshake.into_transmission();
        assert_eq!(transmission.export_name(), export);
        assert_eq!(transmission.structured_replies(), structured);
        assert_eq!(transmission.buffered_len(), early, "early bytes lost");
        nbd::drive(&mut transmission, &stream[fed..], Some(chunks));
    }
});
