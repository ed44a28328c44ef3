//! The Palisade wire protocol, sans-IO.
//!
//! This crate owns the bytes: the frame header, the rkyv-archived request
//! and response messages, their validation, the closed set of error codes and
//! the credential proof math used at the handshake. It never opens a socket,
//! reads a clock, spawns a task or depends on an async runtime, so clients,
//! servers and tests all drive it directly.
//!
//! Main types: [`Request`], [`Response`], [`FrameHeader`], [`RecvBuf`],
//! [`ErrorCode`]. Servers read requests in place with [`access_request`]
//! after bytecheck validation; nothing is copied into owned structs on the
//! server's hot path.
//!
//! ```
//! use palisade_proto::{encode_request, FrameBuf, RecvBuf, Request, Decoded, access_request, ArchivedRequest};
//!
//! let mut out = FrameBuf::new();
//! encode_request(&mut out, 1, 0, 4096, &Request::Check { resource: "disk0".into(), token: 7 }).unwrap();
//!
//! let mut rx = RecvBuf::new(256, 4096);
//! rx.spare()[..out.len()].copy_from_slice(&out);
//! rx.filled(out.len());
//! let Decoded::Frame { payload, frame_len, .. } = rx.next_frame(4096).unwrap() else { unreachable!() };
//! match access_request(payload).unwrap() {
//!     ArchivedRequest::Check { resource, token } => {
//!         assert_eq!(resource.as_str(), "disk0");
//!         assert_eq!(token.to_native(), 7);
//!     }
//!     _ => unreachable!(),
//! }
//! rx.consume(frame_len);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
mod codec;
mod error;
pub mod frame;
mod msg;

pub use codec::{
    access_request, access_response, decode_request, decode_response, encode_request,
    encode_response, EncodeError, FrameBuf, RecvBuf, BUF_ALIGN,
};
pub use error::{ArchivedErrorCode, ErrorCode};
pub use frame::{Decoded, FrameError, FrameHeader, FrameKind, HEADER_LEN, PROTOCOL_VERSION};
pub use msg::{
    token_epoch, token_seq, validate_resource, validate_tenant, ArchivedListedLease,
    ArchivedRequest, ArchivedResponse, ArchivedRole, ArchivedStatusInfo, ArchivedWelcome,
    ListedLease, Peer, Request, Response, Role, StatusInfo, Welcome, CLIENT_NAME_LEN_MAX,
    LIST_LIMIT_MAX, NONCE_LEN, RESOURCE_LEN_MAX, TENANT_LEN_MAX,
};
