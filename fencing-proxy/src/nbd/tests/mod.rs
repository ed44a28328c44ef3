//! Tests of the NBD state machines, fed bytes as a client would send them.

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

mod handshake;
mod transmission;
