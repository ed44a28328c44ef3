//! Property tests: every message round-trips through a frame, and no byte
//! string makes the decoder panic or hand out an invalid message.

use palisade_proto::{
    access_request, access_response, decode_request, decode_response, encode_request,
    encode_response, frame::decode_frame, Decoded, ErrorCode, FrameBuf, RecvBuf, Request, Response,
    Role, StatusInfo, Welcome,
};
use proptest::prelude::*;

const MAX: u32 = 1 << 16;

fn request() -> impl Strategy<Value = Request> {
    let resource = "[a-z0-9/_.-]{1,64}";
    prop_oneof![
        ("[a-z]{1,16}", any::<[u8; 16]>(), "[ -~]{0,32}").prop_map(
            |(tenant, client_nonce, client_name)| Request::Hello {
                tenant,
                client_nonce,
                client_name
            }
        ),
        any::<[u8; 32]>().prop_map(|proof| Request::Auth { proof }),
        (
            resource,
            any::<u64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>()
        )
            .prop_map(|(resource, holder, ttl_ms, lock_delay_ms, wait_ms)| {
                Request::Acquire {
                    resource,
                    holder,
                    ttl_ms,
                    lock_delay_ms,
                    wait_ms,
                }
            }),
        (resource, any::<u64>(), any::<u32>()).prop_map(|(resource, token, ttl_ms)| {
            Request::Renew {
                resource,
                token,
                ttl_ms,
            }
        }),
        (resource, any::<u64>()).prop_map(|(resource, token)| Request::Release { resource, token }),
        (resource, any::<u64>()).prop_map(|(resource, token)| Request::Check { resource, token }),
        Just(Request::Status),
        (resource, any::<u64>(), any::<u32>()).prop_map(|(resource, after, wait_ms)| {
            Request::Watch {
                resource,
                after,
                wait_ms,
            }
        }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            proptest::option::of(any::<[u8; 32]>())
        )
            .prop_map(|(node_id, epoch, ttl, sig)| Response::Welcome(Welcome {
                node_id,
                epoch,
                max_ttl_ms: ttl,
                min_ttl_ms: ttl / 2,
                lock_delay_max_ms: ttl,
                max_drift_ppm: 10_000,
                server_signature: sig,
            })),
        (
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<u32>(),
            any::<[u8; 16]>()
        )
            .prop_map(|(salt, iterations, server_nonce)| Response::Challenge {
                salt,
                iterations,
                server_nonce
            }),
        (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(token, ttl_ms, waited_ms)| {
            Response::Granted {
                token,
                ttl_ms,
                waited_ms,
            }
        }),
        (any::<u64>(), any::<u32>(), any::<bool>(), any::<u32>()).prop_map(
            |(token, remaining_ms, waiters, waited_ms)| Response::Busy {
                token,
                remaining_ms,
                waiters,
                waited_ms
            }
        ),
        (any::<u64>(), any::<u64>()).prop_map(|(current_token, last_token)| Response::Stale {
            current_token,
            last_token
        }),
        (any::<u64>(), any::<u32>()).prop_map(|(token, remaining_ms)| Response::Current {
            token,
            remaining_ms
        }),
        (any::<u64>(), any::<u32>())
            .prop_map(|(token, ttl_ms)| Response::Renewed { token, ttl_ms }),
        any::<u64>().prop_map(|token| Response::Released { token }),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
            |(current_token, last_token, changed)| Response::Watched {
                current_token,
                last_token,
                changed
            }
        ),
        (any::<u16>(), "[0-9.:]{0,21}").prop_map(|(leader_id, endpoint)| Response::Redirect {
            leader_id,
            endpoint
        }),
        (0..ErrorCode::ALL.len(), any::<u32>(), "[ -~]{0,80}").prop_map(|(i, retry, message)| {
            Response::Error {
                code: ErrorCode::ALL[i],
                retry_after_ms: retry,
                message,
            }
        }),
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| Response::Status(StatusInfo {
            node_id: 1,
            role: Role::Leader,
            epoch: 2,
            leader_id: 1,
            cores: 2,
            leases_held: a,
            ops_served: b,
            connections: 3,
            waiters: 4,
            grants_from_unix_ms: a,
            grace_remaining_ms: 0,
            uptime_ms: b,
            table_capacity: 5,
            peers: vec![palisade_proto::Peer {
                id: 1,
                endpoint: "127.0.0.1:7411".into(),
            }],
            version: "0.1.0".into(),
        })),
    ]
}

proptest! {
    #[test]
    fn requests_round_trip(reqs in proptest::collection::vec(request(), 1..8), chunk in 1usize..64) {
        let mut out = FrameBuf::new();
        for (id, req) in reqs.iter().enumerate() {
            encode_request(&mut out, id as u64, 0, MAX, req).unwrap();
        }
        // Deliver in arbitrary chunk sizes; frames come out whole and in order.
        let mut rx = RecvBuf::new(64, 1 << 20);
        let mut fed = 0;
        let mut got = Vec::new();
        while got.len() < reqs.len() {
            let spare = rx.spare();
            let n = spare.len().min(chunk).min(out.len() - fed);
            spare[..n].copy_from_slice(&out[fed..fed + n]);
            rx.filled(n);
            fed += n;
            while let Decoded::Frame { header, payload, frame_len } = rx.next_frame(MAX).unwrap() {
                prop_assert_eq!(header.request_id, got.len() as u64);
                got.push(decode_request(payload).unwrap());
                rx.consume(frame_len);
            }
        }
        prop_assert_eq!(got, reqs);
    }

    #[test]
    fn responses_round_trip(resp in response(), id in any::<u64>()) {
        let mut out = FrameBuf::new();
        encode_response(&mut out, id, 0, MAX, &resp).unwrap();
        let Ok(Decoded::Frame { header, payload, .. }) = decode_frame(&out, MAX) else {
            panic!("whole frame expected");
        };
        prop_assert_eq!(header.request_id, id);
        prop_assert_eq!(decode_response(payload).unwrap(), resp);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = FrameBuf::new();
        buf.extend_from_slice(&bytes);
        let _ = decode_frame(&buf, MAX);
        let _ = access_request(&buf);
        let _ = access_response(&buf);
    }

    #[test]
    fn corrupted_frames_fail_cleanly(req in request(), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut out = FrameBuf::new();
        encode_request(&mut out, 1, 0, MAX, &req).unwrap();
        let i = flip.index(out.len());
        out[i] ^= 1 << bit;
        // Either the header is refused, the payload fails validation, or it
        // decodes to some well-formed message: never a panic.
        if let Ok(Decoded::Frame { payload, .. }) = decode_frame(&out, MAX) {
            let _ = decode_request(payload);
        }
    }
}
