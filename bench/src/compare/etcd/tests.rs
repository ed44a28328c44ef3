//! The etcd codec and its HTTP/2 and protobuf layers, on byte strings.

use super::http2::{
    flag, frame, hpack_str, put_frame, request_header_block, setting, PREFACE, RECV_WINDOW,
};
use super::*;
use crate::compare::peer_tests::decode_every_split;

const LEASE: i64 = 0x694d_1a2b_3c4d;

fn cfg(ttl_ms: u32) -> CodecConfig {
    CodecConfig {
        ttl_ms,
        tenant: "t".into(),
        echo_size: 0,
        secret: None,
    }
}

fn frame_bytes(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    put_frame(&mut v, kind, flags, stream, payload);
    v
}

/// Splits a byte string into frames: (type, flags, stream, payload).
fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut v = Vec::new();
    while !b.is_empty() {
        let len = usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]);
        let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
        v.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
        b = &b[9 + len..];
    }
    v
}

fn grpc(message: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend_from_slice(&(message.len() as u32).to_be_bytes());
    v.extend_from_slice(message);
    v
}

/// `:status 200` and content-type added to the dynamic table (entry 62).
const FIRST_RESPONSE_HEADERS: &[u8] = &[
    0x88, 0x5f, 16, b'a', b'p', b'p', b'l', b'i', b'c', b'a', b't', b'i', b'o', b'n', b'/', b'g',
    b'r', b'p', b'c',
];
/// `:status 200` and content-type from the dynamic table.
const RESPONSE_HEADERS: &[u8] = &[0x88, 0xbe];

fn trailers(status: &str, message: &str) -> Vec<u8> {
    let mut b = vec![0x00];
    hpack_str(&mut b, b"grpc-status");
    hpack_str(&mut b, status.as_bytes());
    if !message.is_empty() {
        b.push(0x00);
        hpack_str(&mut b, b"grpc-message");
        hpack_str(&mut b, message.as_bytes());
    }
    b
}

/// A complete unary response on `stream`.
fn unary(stream: u32, headers: &[u8], message: &[u8]) -> Vec<u8> {
    [
        frame_bytes(frame::HEADERS, flag::END_HEADERS, stream, headers),
        frame_bytes(frame::DATA, 0, stream, &grpc(message)),
        frame_bytes(
            frame::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            stream,
            &trailers("0", ""),
        ),
    ]
    .concat()
}

fn header(revision: i64) -> Vec<u8> {
    let mut h = Vec::new();
    pb::put_varint_field(&mut h, 1, 0xc1);
    pb::put_varint_field(&mut h, 3, revision as u64);
    h
}

fn txn_reply(succeeded: bool, revision: i64) -> Vec<u8> {
    let mut m = Vec::new();
    pb::put_bytes_field(&mut m, 1, &header(revision));
    if succeeded {
        pb::put_varint_field(&mut m, 2, 1);
    }
    m
}

fn range_reply(create_revision: Option<i64>) -> Vec<u8> {
    let mut m = Vec::new();
    pb::put_bytes_field(&mut m, 1, &header(50));
    if let Some(rev) = create_revision {
        let mut kv = Vec::new();
        pb::put_bytes_field(&mut kv, 1, b"/palisade-bench/lock/1");
        pb::put_varint_field(&mut kv, 2, rev as u64);
        pb::put_varint_field(&mut kv, 3, rev as u64);
        pb::put_bytes_field(&mut kv, 5, b"77");
        pb::put_bytes_field(&mut m, 2, &kv);
        pb::put_varint_field(&mut m, 4, 1);
    }
    m
}

fn keepalive_reply(ttl: i64) -> Vec<u8> {
    let mut m = Vec::new();
    pb::put_bytes_field(&mut m, 1, &header(50));
    pb::put_varint_field(&mut m, 2, LEASE as u64);
    pb::put_varint_field(&mut m, 3, ttl as u64);
    m
}

fn server_start(settings: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in settings {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    let mut grant = Vec::new();
    pb::put_bytes_field(&mut grant, 1, &header(1));
    pb::put_varint_field(&mut grant, 2, LEASE as u64);
    pb::put_varint_field(&mut grant, 3, 5);
    [
        frame_bytes(frame::SETTINGS, 0, 0, &p),
        frame_bytes(frame::SETTINGS, flag::ACK, 0, &[]),
        unary(1, FIRST_RESPONSE_HEADERS, &grant),
    ]
    .concat()
}

fn ready_codec_with(settings: &[(u16, u32)]) -> (EtcdCodec, Vec<u8>) {
    let mut c = EtcdCodec::new(&cfg(4_500), "127.0.0.1:2379");
    let mut out = Vec::new();
    c.start(&mut out).unwrap();
    out.clear();
    let input = server_start(settings);
    let mut replies = Vec::new();
    assert_eq!(
        c.decode(&input, &mut replies, &mut out).unwrap(),
        input.len()
    );
    assert!(replies.is_empty());
    assert!(c.ready());
    assert_eq!(c.lease(), Some(LEASE));
    assert_eq!(c.lease_ttl_s(), Some(5));
    (c, out)
}

fn ready_codec() -> EtcdCodec {
    ready_codec_with(&[(setting::MAX_CONCURRENT_STREAMS, 1000)]).0
}

#[test]
fn start_sends_preface_settings_grant_and_keepalive_stream() {
    let mut c = EtcdCodec::new(&cfg(4_500), "127.0.0.1:2379");
    let mut out = Vec::new();
    c.start(&mut out).unwrap();
    assert!(out.starts_with(PREFACE));
    let f = frames(&out[PREFACE.len()..]);
    assert_eq!(f.len(), 5, "{f:?}");
    assert_eq!((f[0].0, f[0].2), (frame::SETTINGS, 0));
    assert_eq!(f[0].3, [0, 2, 0, 0, 0, 0, 0, 4, 0x40, 0, 0, 0]);
    assert_eq!((f[1].0, f[1].2), (frame::WINDOW_UPDATE, 0));
    assert_eq!(f[1].3, (RECV_WINDOW - 65_535).to_be_bytes());
    assert_eq!(
        (f[2].0, f[2].1, f[2].2),
        (frame::HEADERS, flag::END_HEADERS, 1)
    );
    // LeaseGrantRequest{TTL: 5}: 4.5 s rounds up to whole seconds.
    assert_eq!((f[3].0, f[3].1, f[3].2), (frame::DATA, flag::END_STREAM, 1));
    assert_eq!(f[3].3, grpc(&[0x08, 5]));
    // The keepalive stream stays open for our requests.
    assert_eq!(
        (f[4].0, f[4].1, f[4].2),
        (frame::HEADERS, flag::END_HEADERS, 3)
    );
    assert!(!c.ready());
    let err = c
        .encode(
            1,
            &Op::Acquire {
                resource: 1,
                holder: 1,
            },
            &mut out,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("before the session lease"),
        "{err}"
    );
}

#[test]
fn lease_ttl_is_whole_seconds_at_least_one() {
    let first_data = |ttl_ms| {
        let mut c = EtcdCodec::new(&cfg(ttl_ms), "a");
        let mut out = Vec::new();
        c.start(&mut out).unwrap();
        frames(&out[PREFACE.len()..])[3].3.clone()
    };
    assert_eq!(first_data(1), grpc(&[0x08, 1]));
    assert_eq!(first_data(1000), grpc(&[0x08, 1]));
    assert_eq!(first_data(1001), grpc(&[0x08, 2]));
}

#[test]
fn request_headers_decode_to_a_grpc_call() {
    let block = request_header_block(PATH_TXN, "127.0.0.1:2379");
    let got = loona_hpack::Decoder::new().decode(&block).unwrap();
    let want: Vec<(Vec<u8>, Vec<u8>)> = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/etcdserverpb.KV/Txn"),
        (":authority", "127.0.0.1:2379"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    .iter()
    .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
    .collect();
    assert_eq!(got, want);
    // Long values use HPACK's multi-byte integers.
    let long = "x".repeat(300);
    let block = request_header_block(PATH_RANGE, &long);
    let got = loona_hpack::Decoder::new().decode(&block).unwrap();
    assert_eq!(got[3].1, long.as_bytes());
}

#[test]
fn protobuf_varints_and_requests() {
    let mut v = Vec::new();
    pb::put_varint(&mut v, 300);
    assert_eq!(v, [0xac, 0x02]);
    let mut v = Vec::new();
    pb::put_varint_field(&mut v, 3, -1i64 as u64);
    assert_eq!(v.len(), 11);
    let (field, value) = pb::Fields::new(&v).next().unwrap().unwrap();
    assert_eq!((field, value), (3, pb::Value::Varint(u64::MAX)));
    // Acquire's TxnRequest, decoded field by field.
    let mut c = ready_codec();
    let mut out = Vec::new();
    c.encode(
        9,
        &Op::Acquire {
            resource: 1,
            holder: 77,
        },
        &mut out,
    )
    .unwrap();
    let f = frames(&out);
    assert_eq!((f[0].0, f[0].2), (frame::HEADERS, 5));
    assert_eq!((f[1].0, f[1].1, f[1].2), (frame::DATA, flag::END_STREAM, 5));
    let txn = &f[1].3[5..];
    let fields: Vec<_> = pb::Fields::new(txn).map(Result::unwrap).collect();
    assert_eq!(fields.len(), 3);
    let pb::Value::Len(compare) = fields[0].1 else {
        panic!()
    };
    let compare: Vec<_> = pb::Fields::new(compare).map(Result::unwrap).collect();
    assert_eq!(
        compare,
        vec![
            (1, pb::Value::Varint(0)),
            (2, pb::Value::Varint(1)),
            (3, pb::Value::Len(b"/palisade-bench/lock/1")),
            (5, pb::Value::Varint(0)),
        ]
    );
    let pb::Value::Len(success) = fields[1].1 else {
        panic!()
    };
    let (op, pb::Value::Len(put)) = pb::Fields::new(success).next().unwrap().unwrap() else {
        panic!()
    };
    assert_eq!(op, 2, "RequestOp.request_put");
    let put: Vec<_> = pb::Fields::new(put).map(Result::unwrap).collect();
    assert_eq!(
        put,
        vec![
            (1, pb::Value::Len(b"/palisade-bench/lock/1")),
            (2, pb::Value::Len(b"77")),
            (3, pb::Value::Varint(LEASE as u64)),
        ]
    );
    let pb::Value::Len(failure) = fields[2].1 else {
        panic!()
    };
    assert_eq!(
        pb::Fields::new(failure).next().unwrap().unwrap().0,
        1,
        "RequestOp.request_range"
    );
    // Malformed protobuf is an error, not a panic.
    assert!(pb::Fields::new(&[0x0a, 5, 1]).next().unwrap().is_err());
    assert!(pb::Fields::new(&[0x08]).next().unwrap().is_err());
    assert!(pb::Fields::new(&[0x0b]).next().unwrap().is_err());
}

#[test]
fn acknowledges_settings_and_ping() {
    let (mut c, out) = ready_codec_with(&[]);
    let f = frames(&out);
    assert_eq!(f, vec![(frame::SETTINGS, flag::ACK, 0, vec![])]);
    let mut out = Vec::new();
    let ping = frame_bytes(frame::PING, 0, 0, b"12345678");
    let pong = frame_bytes(frame::PING, flag::ACK, 0, b"12345678");
    c.decode(&[ping, pong].concat(), &mut Vec::new(), &mut out)
        .unwrap();
    assert_eq!(
        frames(&out),
        vec![(frame::PING, flag::ACK, 0, b"12345678".to_vec())]
    );
}

#[test]
fn decodes_every_outcome_at_every_split() {
    let held = Held {
        token: 40,
        aux: LEASE as u64,
    };
    let ops = [
        Op::Acquire {
            resource: 1,
            holder: 77,
        }, // stream 5
        Op::Acquire {
            resource: 2,
            holder: 78,
        }, // stream 7
        Op::Check { resource: 1, held }, // stream 9
        Op::Check {
            resource: 1,
            held: Held { token: 39, aux: 0 },
        }, // stream 11
        Op::Renew { resource: 1, held }, // keepalive (3)
        Op::Release { resource: 1, held }, // stream 13
        Op::Renew { resource: 1, held }, // keepalive (3)
        Op::Release { resource: 1, held }, // stream 15
        Op::Check { resource: 1, held }, // stream 17
    ];
    let mut make = || {
        let mut c = ready_codec();
        let mut out = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            c.encode(100 + i as u64, op, &mut out).unwrap();
        }
        c
    };
    // Stream 7's trailers split into HEADERS + CONTINUATION; stream 9's
    // DATA padded; a PING, a WINDOW_UPDATE and a PRIORITY in between.
    let trailers7 = trailers("0", "");
    let mut padded = vec![3];
    padded.extend_from_slice(&grpc(&range_reply(Some(40))));
    padded.extend_from_slice(&[0, 0, 0]);
    let stream = [
        unary(5, RESPONSE_HEADERS, &txn_reply(true, 40)),
        frame_bytes(frame::HEADERS, flag::END_HEADERS, 7, RESPONSE_HEADERS),
        frame_bytes(frame::DATA, 0, 7, &grpc(&txn_reply(false, 40))),
        frame_bytes(frame::PING, 0, 0, b"abcdefgh"),
        frame_bytes(frame::HEADERS, flag::END_STREAM, 7, &trailers7[..5]),
        frame_bytes(frame::CONTINUATION, 0, 7, &trailers7[5..9]),
        frame_bytes(frame::CONTINUATION, flag::END_HEADERS, 7, &trailers7[9..]),
        frame_bytes(frame::HEADERS, flag::END_HEADERS, 9, RESPONSE_HEADERS),
        frame_bytes(frame::DATA, flag::PADDED, 9, &padded),
        frame_bytes(
            frame::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            9,
            &trailers("0", ""),
        ),
        frame_bytes(frame::HEADERS, flag::END_HEADERS, 3, RESPONSE_HEADERS),
        frame_bytes(frame::DATA, 0, 3, &grpc(&keepalive_reply(5))),
        frame_bytes(frame::WINDOW_UPDATE, 0, 0, &100u32.to_be_bytes()),
        frame_bytes(2, 0, 11, &[0, 0, 0, 0, 16]), // PRIORITY: ignored
        unary(11, RESPONSE_HEADERS, &range_reply(Some(40))),
        unary(13, RESPONSE_HEADERS, &txn_reply(true, 41)),
        // The second keepalive answer arrives in two DATA frames.
        frame_bytes(frame::DATA, 0, 3, &grpc(&keepalive_reply(-1))[..4]),
        frame_bytes(frame::DATA, 0, 3, &grpc(&keepalive_reply(-1))[4..]),
        unary(15, RESPONSE_HEADERS, &txn_reply(false, 41)),
        unary(17, RESPONSE_HEADERS, &range_reply(None)),
    ]
    .concat();
    let want = vec![
        (
            100,
            Outcome::Granted(Held {
                token: 40,
                aux: LEASE as u64,
            }),
        ),
        (101, Outcome::Busy),
        (102, Outcome::Done),
        (104, Outcome::Done),
        (103, Outcome::Stale),
        (105, Outcome::Done),
        (106, Outcome::Stale),
        (107, Outcome::Stale),
        (108, Outcome::Stale),
    ];
    decode_every_split(&mut make, &stream, &want);
}

#[test]
fn huffman_coded_headers_are_decoded() {
    // RFC 7541 C.6.1: a Huffman-coded response header block, whose
    // `:status 302` the codec must read (and refuse).
    let block: &[u8] = &[
        0x48, 0x82, 0x64, 0x02, 0x58, 0x85, 0xae, 0xc3, 0x77, 0x1a, 0x4b, 0x61, 0x96, 0xd0, 0x7a,
        0xbe, 0x94, 0x10, 0x54, 0xd4, 0x44, 0xa8, 0x20, 0x05, 0x95, 0x04, 0x0b, 0x81, 0x66, 0xe0,
        0x82, 0xa6, 0x2d, 0x1b, 0xff, 0x6e, 0x91, 0x9d, 0x29, 0xad, 0x17, 0x18, 0x63, 0xc7, 0x8f,
        0x0b, 0x97, 0xc8, 0xe9, 0xae, 0x82, 0xae, 0x43, 0xd3,
    ];
    let mut c = ready_codec();
    let mut out = Vec::new();
    c.encode(
        1,
        &Op::Check {
            resource: 1,
            held: Held::default(),
        },
        &mut out,
    )
    .unwrap();
    let input = frame_bytes(frame::HEADERS, flag::END_HEADERS, 5, block);
    let err = c.decode(&input, &mut Vec::new(), &mut out).unwrap_err();
    assert!(err.to_string().contains("\"302\""), "{err}");
}

#[test]
fn our_data_waits_for_the_servers_window() {
    // A stream window of 10 bytes: the request's DATA must wait.
    let (mut c, _) = ready_codec_with(&[(setting::INITIAL_WINDOW_SIZE, 10)]);
    let mut out = Vec::new();
    c.encode(
        1,
        &Op::Check {
            resource: 1,
            held: Held::default(),
        },
        &mut out,
    )
    .unwrap();
    let f = frames(&out);
    assert_eq!(f.len(), 1, "HEADERS only: {f:?}");
    assert_eq!(f[0].0, frame::HEADERS);
    out.clear();
    let update = frame_bytes(frame::WINDOW_UPDATE, 0, 5, &100u32.to_be_bytes());
    c.decode(&update, &mut Vec::new(), &mut out).unwrap();
    let f = frames(&out);
    assert_eq!(f.len(), 1);
    assert_eq!((f[0].0, f[0].1, f[0].2), (frame::DATA, flag::END_STREAM, 5));

    // The connection window (65,535 until the server raises it).
    let (mut c, _) = ready_codec_with(&[]);
    let mut out = Vec::new();
    let mut id = 0;
    let mut sent = 0usize;
    loop {
        id += 1;
        let before = out.len();
        c.encode(
            id,
            &Op::Check {
                resource: 1,
                held: Held::default(),
            },
            &mut out,
        )
        .unwrap();
        let new = frames(&out[before..]);
        if new.len() == 1 {
            break; // DATA held back
        }
        sent += new[1].3.len();
    }
    // 12 bytes went with the lease grant, 65,535 in all.
    assert!(
        sent + 12 <= 65_535 && sent + 12 + 40 > 65_535,
        "sent {sent}"
    );
    out.clear();
    let update = frame_bytes(frame::WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes());
    c.decode(&update, &mut Vec::new(), &mut out).unwrap();
    let f = frames(&out);
    assert!(
        !f.is_empty() && f.iter().all(|f| f.0 == frame::DATA),
        "{f:?}"
    );
    assert_eq!(
        f[0].2,
        2 * id as u32 + 3,
        "the held-back request goes first"
    );
}

#[test]
fn credit_is_returned_as_data_arrives() {
    let mut c = ready_codec();
    c.conn.recv_credit_threshold = 50;
    let mut out = Vec::new();
    let held = Held::default();
    for id in 0..4 {
        c.encode(id, &Op::Renew { resource: 1, held }, &mut out)
            .unwrap();
    }
    out.clear();
    let reply = frame_bytes(frame::DATA, 0, 3, &grpc(&keepalive_reply(5)));
    let n = reply.len() as u32 - 9;
    let input = [
        frame_bytes(frame::HEADERS, flag::END_HEADERS, 3, RESPONSE_HEADERS),
        reply.clone(),
        reply.clone(),
        reply.clone(),
        reply,
    ]
    .concat();
    let mut replies = Vec::new();
    c.decode(&input, &mut replies, &mut out).unwrap();
    assert_eq!(replies.len(), 4);
    let updates: Vec<_> = frames(&out)
        .into_iter()
        .filter(|f| f.0 == frame::WINDOW_UPDATE)
        .map(|f| (f.2, u32::from_be_bytes(f.3.try_into().unwrap())))
        .collect();
    let credited = |stream| {
        updates
            .iter()
            .filter(|u| u.0 == stream)
            .map(|u| u.1)
            .sum::<u32>()
    };
    // Every byte is credited once the threshold is crossed: the
    // replies are n bytes each, so whole multiples of the threshold.
    let per_credit = n * 50_u32.div_ceil(n);
    assert_eq!(credited(0), 4 * n / per_credit * per_credit, "{updates:?}");
    assert_eq!(credited(3), credited(0), "{updates:?}");
    assert!(credited(0) > 0);
}

#[test]
fn server_errors_are_errors_naming_them() {
    let expect_err = |input: Vec<u8>, needle: &str| {
        let mut c = ready_codec();
        let mut out = Vec::new();
        c.encode(
            1,
            &Op::Check {
                resource: 1,
                held: Held::default(),
            },
            &mut out,
        )
        .unwrap();
        let err = c
            .decode(&input, &mut Vec::new(), &mut out)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    };
    let mut goaway = 5u32.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0xbu32.to_be_bytes());
    goaway.extend_from_slice(b"too_many_pings");
    expect_err(
        frame_bytes(frame::GOAWAY, 0, 0, &goaway),
        "GOAWAY (last stream 5, error code 0xb, \"too_many_pings\")",
    );
    expect_err(
        frame_bytes(frame::RST_STREAM, 0, 5, &8u32.to_be_bytes()),
        "reset stream 5",
    );
    let mut headers = RESPONSE_HEADERS.to_vec();
    headers.extend_from_slice(&trailers("9", "etcdserver: too many requests"));
    expect_err(
        frame_bytes(
            frame::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            5,
            &headers,
        ),
        "grpc-status 9: etcdserver: too many requests",
    );
    expect_err(
        frame_bytes(frame::DATA, 0, 77, &grpc(&[])),
        "stream 77, which is not open",
    );
    expect_err(
        frame_bytes(frame::PUSH_PROMISE, 0, 5, &[0; 4]),
        "PUSH_PROMISE",
    );
    expect_err(
        [
            frame_bytes(frame::HEADERS, 0, 5, RESPONSE_HEADERS),
            frame_bytes(frame::DATA, 0, 5, &[]),
        ]
        .concat(),
        "inside a header block",
    );
    let mut big = vec![0, 0x40, 1, frame::DATA, 0, 0, 0, 0, 5];
    big.resize(9 + 16_385, 0);
    expect_err(big, "over our max frame size");
    expect_err(
        frame_bytes(frame::DATA, flag::PADDED, 5, &[9, 1, 2]),
        "padding",
    );
    expect_err(
        [
            frame_bytes(frame::HEADERS, flag::END_HEADERS, 5, RESPONSE_HEADERS),
            frame_bytes(frame::DATA, 0, 5, &[1, 0, 0, 0, 0]),
            frame_bytes(
                frame::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                5,
                &trailers("0", ""),
            ),
        ]
        .concat(),
        "compressed",
    );
    expect_err(
        [
            frame_bytes(frame::HEADERS, flag::END_HEADERS, 5, RESPONSE_HEADERS),
            frame_bytes(
                frame::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                5,
                &trailers("0", ""),
            ),
        ]
        .concat(),
        "without a complete response message",
    );
    // Not an HTTP/2 server at all.
    let mut c = EtcdCodec::new(&cfg(1000), "a");
    let mut out = Vec::new();
    c.start(&mut out).unwrap();
    let err = c
        .decode(
            b"HTTP/1.1 400 Bad Request\r\n\r\n",
            &mut Vec::new(),
            &mut out,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("SETTINGS") || err.to_string().contains("frame"),
        "{err}"
    );
    // A refused lease grant.
    let mut c = EtcdCodec::new(&cfg(1000), "a");
    c.start(&mut out).unwrap();
    let mut grant = Vec::new();
    pb::put_bytes_field(&mut grant, 4, b"lease too short");
    let input = [
        frame_bytes(frame::SETTINGS, 0, 0, &[]),
        unary(1, FIRST_RESPONSE_HEADERS, &grant),
    ]
    .concat();
    let err = c.decode(&input, &mut Vec::new(), &mut out).unwrap_err();
    assert!(err.to_string().contains("lease too short"), "{err}");
}
