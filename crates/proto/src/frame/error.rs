//! Typed codec errors and the ERROR-frame codes they map to.

use std::fmt;

use super::{FrameType, HEADER_LEN, MAGIC, VERSION};
use crate::ids::StreamIdError;

/// Everything that can be wrong with bytes offered to the [`Decoder`](super::Decoder), or with a
/// [`Frame`](super::Frame) offered to [`encode`](super::encode).
///
/// Every variant is the peer's fault (or, from `encode`, the caller's): none is transient, and a
/// retry with the same bytes fails the same way. After a decode error the byte stream cannot be
/// resynchronised: send an ERROR frame with [`FrameError::code`] and close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A header byte is not the magic `"FM"` (0x46 0x4D).
    #[error(
        "bad magic byte {got:#04x} at offset {offset}: firstmile frames start with 0x46 0x4D (\"FM\")"
    )]
    BadMagic {
        /// Offset of the bad byte (0 or 1).
        offset: usize,
        /// The byte found.
        got: u8,
    },
    /// The header's version byte is not one this codec speaks.
    #[error("unsupported protocol version {got}; this codec speaks version {supported}")]
    UnsupportedVersion {
        /// The version found.
        got: u8,
        /// The version supported.
        supported: u8,
    },
    /// The header's type byte names no frame type.
    #[error("unknown frame type {0:#04x}; accepted: 0x01 HELLO .. 0x08 PONG")]
    UnknownType(u8),
    /// The header's flags byte has bits set that this frame type does not define.
    #[error("{frame} frame has reserved flag bits {flags:#04x} set; accepted mask: {allowed:#04x}")]
    ReservedFlags {
        /// The frame type.
        frame: FrameType,
        /// The flags byte found.
        flags: u8,
        /// The bits this frame type defines.
        allowed: u8,
    },
    /// The frame (header + body) is longer than the configured maximum.
    #[error("frame of {len} bytes (header + body) exceeds the limit of {max} bytes")]
    TooLarge {
        /// Total frame length announced by the header.
        len: u64,
        /// `Limits::max_frame_len`.
        max: u32,
    },
    /// A field is longer than allowed (payload, token, stream id, server id, error message).
    #[error("{field} is {len} bytes long; the limit is {max} bytes")]
    FieldTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The body ends before a field that it must contain.
    #[error("{frame} body truncated: {field} needs {needed} more bytes, only {available} remain")]
    Truncated {
        /// The frame type.
        frame: FrameType,
        /// The field that does not fit.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the body.
        available: usize,
    },
    /// The body goes on after its last field.
    #[error("{frame} body has {extra} bytes after its last field")]
    TrailingBytes {
        /// The frame type.
        frame: FrameType,
        /// Number of unexpected bytes.
        extra: usize,
    },
    /// The input ended (end of stream, or end of a WebSocket message) in the middle of a frame.
    #[error(
        "input ended inside a frame: {got} bytes of {needed} (a frame is a {HEADER_LEN}-byte header and its body)"
    )]
    Incomplete {
        /// Bytes needed to finish the frame (or the header, if it was incomplete).
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// A WebSocket message held more than one frame.
    #[error(
        "{extra} bytes follow the frame in one WebSocket message; a message carries exactly one frame"
    )]
    ExtraBytesInMessage {
        /// Bytes after the first frame.
        extra: usize,
    },
    /// The DATA frame's CRC32C does not match its contents.
    #[error("DATA frame CRC32C mismatch: computed {expected:#010x}, frame carries {got:#010x}")]
    BadCrc {
        /// CRC32C computed over the received header, seq, pts and payload.
        expected: u32,
        /// CRC32C carried in the frame.
        got: u32,
    },
    /// The HELLO frame's stream id is not valid.
    #[error("bad stream id in HELLO: {reason}")]
    BadStreamId {
        /// What is wrong with it.
        reason: StreamIdError,
    },
    /// A text field is not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    BadUtf8 {
        /// Which field.
        field: &'static str,
    },
    /// A field holds a value outside its accepted set.
    #[error("{field} has value {got}; accepted: {accepted}")]
    BadValue {
        /// Which field.
        field: &'static str,
        /// The value found.
        got: u64,
        /// The accepted values.
        accepted: &'static str,
    },
}

impl FrameError {
    /// The ERROR-frame code a server sends back for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            FrameError::TooLarge { .. } | FrameError::FieldTooLong { .. } => ErrorCode::TooLarge,
            FrameError::BadCrc { .. } => ErrorCode::BadCrc,
            FrameError::BadStreamId { .. } => ErrorCode::BadStreamId,
            FrameError::BadMagic { .. }
            | FrameError::UnknownType(_)
            | FrameError::ReservedFlags { .. }
            | FrameError::Truncated { .. }
            | FrameError::TrailingBytes { .. }
            | FrameError::Incomplete { .. }
            | FrameError::ExtraBytesInMessage { .. }
            | FrameError::BadUtf8 { .. }
            | FrameError::BadValue { .. } => ErrorCode::Protocol,
        }
    }

    /// A short stable name for the variant (`"bad_magic"`, `"bad_crc"`, ...), for metric labels
    /// and the regression corpus.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::BadMagic { .. } => "bad_magic",
            FrameError::UnsupportedVersion { .. } => "unsupported_version",
            FrameError::UnknownType(_) => "unknown_type",
            FrameError::ReservedFlags { .. } => "reserved_flags",
            FrameError::TooLarge { .. } => "too_large",
            FrameError::FieldTooLong { .. } => "field_too_long",
            FrameError::Truncated { .. } => "truncated",
            FrameError::TrailingBytes { .. } => "trailing_bytes",
            FrameError::Incomplete { .. } => "incomplete",
            FrameError::ExtraBytesInMessage { .. } => "extra_bytes_in_message",
            FrameError::BadCrc { .. } => "bad_crc",
            FrameError::BadStreamId { .. } => "bad_stream_id",
            FrameError::BadUtf8 { .. } => "bad_utf8",
            FrameError::BadValue { .. } => "bad_value",
        }
    }
}

// Keep the documented constants and the messages above in step.
const _: () = assert!(MAGIC[0] == 0x46 && MAGIC[1] == 0x4D && VERSION == 1);

/// The code carried by an ERROR frame: why the sender is closing the session.
///
/// Codes this build does not know are preserved as [`ErrorCode::Unknown`], so a relay can pass
/// them on and a newer peer's reasons are not lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 0x0001: a malformed or unexpected frame. The sender's fault; do not retry as is.
    Protocol,
    /// 0x0002: the header's protocol version is not supported.
    UnsupportedVersion,
    /// 0x0003: a frame or field exceeded the receiver's limits (see WELCOME's limits).
    TooLarge,
    /// 0x0004: a DATA frame failed its CRC32C: corruption on the path. Reconnecting can help.
    BadCrc,
    /// 0x0005: the stream id is not valid.
    BadStreamId,
    /// 0x0006: the token is missing, expired, or not for this stream, server or role.
    Unauthorized,
    /// 0x0007: another session already holds this stream and role on this server.
    StreamTaken,
    /// 0x0008: the requested resume point is no longer (or not yet) available.
    ResumeUnavailable,
    /// 0x0009: the server is overloaded; ask the director for another assignment.
    Overloaded,
    /// 0x000A: the server is shutting down or draining; reconnect (it will not take the stream).
    GoingAway,
    /// 0x000B: an internal error on the server; retrying may help.
    Internal,
    /// A code this build does not know, kept as received.
    Unknown(u16),
}

impl ErrorCode {
    /// The code's value on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Protocol => 0x0001,
            ErrorCode::UnsupportedVersion => 0x0002,
            ErrorCode::TooLarge => 0x0003,
            ErrorCode::BadCrc => 0x0004,
            ErrorCode::BadStreamId => 0x0005,
            ErrorCode::Unauthorized => 0x0006,
            ErrorCode::StreamTaken => 0x0007,
            ErrorCode::ResumeUnavailable => 0x0008,
            ErrorCode::Overloaded => 0x0009,
            ErrorCode::GoingAway => 0x000A,
            ErrorCode::Internal => 0x000B,
            ErrorCode::Unknown(code) => code,
        }
    }

    /// The code for a wire value; values without a name become [`ErrorCode::Unknown`].
    pub fn from_u16(code: u16) -> Self {
        match code {
            0x0001 => ErrorCode::Protocol,
            0x0002 => ErrorCode::UnsupportedVersion,
            0x0003 => ErrorCode::TooLarge,
            0x0004 => ErrorCode::BadCrc,
            0x0005 => ErrorCode::BadStreamId,
            0x0006 => ErrorCode::Unauthorized,
            0x0007 => ErrorCode::StreamTaken,
            0x0008 => ErrorCode::ResumeUnavailable,
            0x0009 => ErrorCode::Overloaded,
            0x000A => ErrorCode::GoingAway,
            0x000B => ErrorCode::Internal,
            other => ErrorCode::Unknown(other),
        }
    }

    /// Whether reconnecting (to the same or, for `Overloaded`/`GoingAway`, another server) can
    /// help. Unknown codes are treated as not retryable.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::BadCrc | ErrorCode::Overloaded | ErrorCode::GoingAway | ErrorCode::Internal
        )
    }

    /// A short stable name (`"protocol"`, `"too_large"`, ..., `"unknown"`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Protocol => "protocol",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::BadCrc => "bad_crc",
            ErrorCode::BadStreamId => "bad_stream_id",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::StreamTaken => "stream_taken",
            ErrorCode::ResumeUnavailable => "resume_unavailable",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::GoingAway => "going_away",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown(_) => "unknown",
        }
    }
}

impl From<u16> for ErrorCode {
    fn from(code: u16) -> Self {
        ErrorCode::from_u16(code)
    }
}

impl From<ErrorCode> for u16 {
    fn from(code: ErrorCode) -> Self {
        code.to_u16()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#06x})", self.as_str(), self.to_u16())
    }
}
