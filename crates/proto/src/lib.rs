//! firstmile's wire types: identifiers and the native stream frame codec.
//!
//! **What.** [`ids`] holds the validated names every component shares ([`StreamId`], [`Role`],
//! [`Protocol`]); [`frame`] is the native upload protocol — its module docs are the protocol
//! specification, and `PROTOCOL.md` beside this crate's manifest has the byte layout tables.
//!
//! **Why here.** The director, the entry servers and the client never import each other; this
//! crate is the contract between them, so it is small, pure (layer L0: no sockets, files, clocks
//! or env) and exhaustively tested.
//!
//! **What not.** No session logic, transports, token signing or HTTP: those live in the service
//! crates and wrap these types.

pub mod frame;
pub mod ids;

pub use frame::{
    DATA_OVERHEAD, Data, DataFlags, Decoder, ErrorCode, ErrorFrame, Frame, FrameError, FrameType,
    HEADER_LEN, Hello, Limits, MAGIC, MAX_ERROR_MESSAGE, MAX_SERVER_ID, VERSION, Welcome, encode,
};
pub use ids::{
    MAX_STREAM_ID_LEN, ParseProtocolError, ParseRoleError, Protocol, Role, StreamId, StreamIdError,
};
