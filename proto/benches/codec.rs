//! Criterion benchmarks of the frame codec: what each request costs the
//! data plane before and after the lease table.
//!
//! `cargo bench -p palisade-proto --bench codec`
//!
//! - `encode_request/acquire`: an Acquire into a reused frame buffer (the
//!   client's send path).
//! - `decode_frame+access_request/acquire`: header validation and the
//!   checked zero-copy view of the payload (the server's receive path).
//! - `encode_response/granted` and `decode_frame+access_response/granted`:
//!   the same for the answer.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use palisade_proto::frame::decode_frame;
use palisade_proto::{
    access_request, access_response, encode_request, encode_response, Decoded, FrameBuf, Request,
    Response,
};

const PAYLOAD_MAX: u32 = 16 << 10;

fn acquire() -> Request {
    Request::Acquire {
        resource: "orders/shard-0042".into(),
        holder: 0x1234_5678,
        ttl_ms: 10_000,
        lock_delay_ms: 0,
        wait_ms: 0,
    }
}

fn granted() -> Response {
    Response::Granted {
        token: (7 << 32) | 42,
        ttl_ms: 10_000,
        waited_ms: 0,
    }
}

fn payload_of(frame: &[u8]) -> &[u8] {
    match decode_frame(frame, PAYLOAD_MAX) {
        Ok(Decoded::Frame { payload, .. }) => payload,
        other => panic!("not a frame: {other:?}"),
    }
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    let request = acquire();
    let mut buf = FrameBuf::with_capacity(256);
    group.bench_function("encode_request/acquire", |b| {
        b.iter(|| {
            buf.clear();
            encode_request(&mut buf, black_box(9), 0, PAYLOAD_MAX, black_box(&request)).unwrap();
            black_box(buf.len())
        });
    });
    let mut frame = FrameBuf::new();
    encode_request(&mut frame, 9, 0, PAYLOAD_MAX, &request).unwrap();
    group.bench_function("decode_frame+access_request/acquire", |b| {
        b.iter(|| {
            let payload = payload_of(black_box(&frame));
            black_box(access_request(payload).unwrap());
        });
    });
    let response = granted();
    group.bench_function("encode_response/granted", |b| {
        b.iter(|| {
            buf.clear();
            encode_response(&mut buf, black_box(9), 0, PAYLOAD_MAX, black_box(&response)).unwrap();
            black_box(buf.len())
        });
    });
    let mut frame = FrameBuf::new();
    encode_response(&mut frame, 9, 0, PAYLOAD_MAX, &response).unwrap();
    group.bench_function("decode_frame+access_response/granted", |b| {
        b.iter(|| {
            let payload = payload_of(black_box(&frame));
            black_box(access_response(payload).unwrap());
        });
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
