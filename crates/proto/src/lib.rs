//! firstmile's wire types: identifiers, the HTTP API contract and the native stream frame codec.
//!
//! **What.** [`ids`] holds the validated names every component shares ([`StreamId`],
//! [`ServerId`], [`PopId`], [`BroadcastId`], [`Role`], [`Protocol`]) and [`key`] the publisher's
//! secret ([`StreamKey`]); [`api`] is every HTTP message between the director, the entry servers
//! and the clients — **the API reference** (`cargo doc -p proto --open`, then `proto::api`);
//! [`frame`] is the native upload protocol — its module docs are the protocol specification, and
//! `PROTOCOL.md` beside this crate's manifest has the byte layout tables.
//!
//! **Why here.** The director, the entry servers and the client never import each other; this
//! crate is the contract between them, so it is small, pure (layer L0: no sockets, files, clocks
//! or env) and exhaustively tested.
//!
//! **What not.** No session logic, transports, token signing or HTTP: those live in the service
//! crates and wrap these types.

pub mod api;
pub mod frame;
pub mod ids;
pub mod key;

pub use frame::{
    DATA_OVERHEAD, Data, DataFlags, Decoder, ErrorCode, ErrorFrame, Frame, FrameError, FrameType,
    HEADER_LEN, Hello, Limits, MAGIC, MAX_ERROR_MESSAGE, MAX_SERVER_ID, VERSION, Welcome, encode,
};
pub use ids::{
    BroadcastId, MAX_NAME_LEN, MAX_SEQ, MAX_STREAM_ID_LEN, NAME_ACCEPTED, NameError,
    ParseProtocolError, ParseRoleError, PopId, Protocol, Role, ServerId, StreamId, StreamIdError,
};
pub use key::{KEY_ACCEPTED, StreamKey, StreamKeyError};
