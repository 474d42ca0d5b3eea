//! Identifiers shared by every component: stream ids, upload roles, and ingest protocols.
//!
//! **What.** [`StreamId`] is the name of one live stream, validated once at the edge (HTTP API,
//! HELLO frame, config) so that everything behind it can use it as a map key, a metric label and a
//! file-name component without re-checking. [`Role`] says whether an upload session is the
//! primary or the backup path of a stream. [`Protocol`] names the ways a device can push.
//!
//! **Why validated types.** Entry servers write chunk logs named after the stream id, and the
//! director uses it in URLs: a restricted charset (`[A-Za-z0-9._-]`, starting with a letter or
//! digit, 1 to 128 bytes) rules out path traversal (`..`), hidden files, option-looking names and
//! URL escaping in one place. Deserializing goes through the same check.
//!
//! **What not.** No I/O, no allocation beyond the string itself, and no knowledge of tokens or
//! which server holds which stream.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The longest stream id accepted anywhere, in bytes (the wire's hard maximum).
pub const MAX_STREAM_ID_LEN: usize = 128;

/// What [`StreamId::parse`] accepts, for error messages.
const STREAM_ID_ACCEPTED: &str =
    "1 to 128 characters from [A-Za-z0-9._-], starting with a letter or digit";

/// The name of one live stream: 1..=128 bytes of `[A-Za-z0-9._-]`, first byte a letter or digit.
///
/// Serializes as a plain string; deserializing validates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(
    value_type = String,
    pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
    examples("live1")
)]
pub struct StreamId(String);

/// Why a string is not a valid [`StreamId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    /// The id is empty.
    #[error("stream id is empty; accepted: {STREAM_ID_ACCEPTED}")]
    Empty,
    /// The id is longer than allowed.
    #[error("stream id is {len} bytes long, the limit is {max}; accepted: {STREAM_ID_ACCEPTED}")]
    TooLong {
        /// Length of the rejected id, in bytes.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The id contains a character outside the accepted set.
    #[error("stream id has {ch:?} at byte {at}; accepted: {STREAM_ID_ACCEPTED}")]
    BadChar {
        /// The offending character (a replacement character for invalid UTF-8).
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// The id starts with `.`, `_` or `-`.
    #[error("stream id starts with {ch:?}; accepted: {STREAM_ID_ACCEPTED}")]
    BadStart {
        /// The first character.
        ch: char,
    },
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

impl StreamId {
    /// Validates `s` as a stream id.
    pub fn parse(s: &str) -> Result<Self, StreamIdError> {
        Self::check_bytes(s.as_bytes(), MAX_STREAM_ID_LEN)?;
        Ok(Self(s.to_owned()))
    }

    /// Validates raw bytes (as they arrive in a HELLO frame) against the charset and a length
    /// limit of `min(max, 128)`.
    pub fn from_bytes(bytes: &[u8], max: usize) -> Result<Self, StreamIdError> {
        Self::check_bytes(bytes, max.min(MAX_STREAM_ID_LEN))?;
        // All bytes are ASCII after the check, so this cannot fail; map defensively anyway.
        let s = std::str::from_utf8(bytes).map_err(|e| StreamIdError::BadChar {
            ch: char::REPLACEMENT_CHARACTER,
            at: e.valid_up_to(),
        })?;
        Ok(Self(s.to_owned()))
    }

    fn check_bytes(bytes: &[u8], max: usize) -> Result<(), StreamIdError> {
        let Some(&first) = bytes.first() else {
            return Err(StreamIdError::Empty);
        };
        if bytes.len() > max {
            return Err(StreamIdError::TooLong {
                len: bytes.len(),
                max,
            });
        }
        if let Some(at) = bytes.iter().position(|&b| !is_id_byte(b)) {
            return Err(StreamIdError::BadChar {
                ch: char_at(bytes, at),
                at,
            });
        }
        if !first.is_ascii_alphanumeric() {
            return Err(StreamIdError::BadStart {
                ch: char::from(first),
            });
        }
        Ok(())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Length in bytes (1..=128).
    #[allow(clippy::len_without_is_empty)] // never empty
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// The character starting at byte `at`, or U+FFFD when the bytes there are not valid UTF-8.
fn char_at(bytes: &[u8], at: usize) -> char {
    let end = (at + 4).min(bytes.len());
    (at + 1..=end)
        .find_map(|e| std::str::from_utf8(&bytes[at..e]).ok())
        .and_then(|s| s.chars().next())
        .unwrap_or(char::REPLACEMENT_CHARACTER)
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for StreamId {
    type Err = StreamIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for StreamId {
    type Error = StreamIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::check_bytes(s.as_bytes(), MAX_STREAM_ID_LEN)?;
        Ok(Self(s))
    }
}

impl From<StreamId> for String {
    fn from(id: StreamId) -> Self {
        id.0
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Which of a stream's two upload paths a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The path chosen from the typed location.
    Primary,
    /// The hot backup, chosen from the IP location in another failure domain.
    Backup,
}

impl Role {
    /// Every role, in wire-code order.
    pub const ALL: [Role; 2] = [Role::Primary, Role::Backup];

    /// The lowercase name used in JSON, config and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Backup => "backup",
        }
    }

    /// The byte carried in a HELLO frame: primary = 1, backup = 2 (0 is never valid).
    pub fn wire_code(self) -> u8 {
        match self {
            Role::Primary => 1,
            Role::Backup => 2,
        }
    }

    /// The role for a HELLO role byte, if it is one.
    pub fn from_wire_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Role::Primary),
            2 => Some(Role::Backup),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a [`Role`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {got:?}; accepted: primary, backup")]
pub struct ParseRoleError {
    /// The rejected input.
    pub got: String,
}

impl FromStr for Role {
    type Err = ParseRoleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| ParseRoleError { got: s.to_owned() })
    }
}

/// How a device pushes a stream to an entry server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// firstmile's framed protocol over TCP (optionally TLS): see [`crate::frame`].
    Native,
    /// The same frames, one per binary WebSocket message (browsers).
    Websocket,
    /// RTMP ingest (OBS, ffmpeg).
    Rtmp,
    /// HTTP push (chunked POST).
    Http,
}

impl Protocol {
    /// Every protocol.
    pub const ALL: [Protocol; 4] = [
        Protocol::Native,
        Protocol::Websocket,
        Protocol::Rtmp,
        Protocol::Http,
    ];

    /// The lowercase name used in JSON, config and URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Native => "native",
            Protocol::Websocket => "websocket",
            Protocol::Rtmp => "rtmp",
            Protocol::Http => "http",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not a [`Protocol`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {got:?}; accepted: native, websocket, rtmp, http")]
pub struct ParseProtocolError {
    /// The rejected input.
    pub got: String,
}

impl FromStr for Protocol {
    type Err = ParseProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ParseProtocolError { got: s.to_owned() })
    }
}

/// The largest sequence number a broadcast may reach (2^62): a resume point or a chunk beyond
/// it is refused, so no arithmetic on sequence numbers from the network can overflow.
pub const MAX_SEQ: u64 = 1 << 62;

/// The longest entry-server id, POP name or broadcast id accepted anywhere, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// What a [`ServerId`], [`PopId`] or [`BroadcastId`] accepts, for error messages.
pub const NAME_ACCEPTED: &str =
    "1 to 64 characters from [A-Za-z0-9._-], starting with a letter or digit";

/// Why a string is not a valid name ([`ServerId`], [`PopId`], [`BroadcastId`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {got:?} is not valid: {NAME_ACCEPTED}")]
pub struct NameError {
    /// Which kind of name.
    pub what: &'static str,
    /// The rejected input (cut to 80 characters).
    pub got: String,
}

fn check_name(what: &'static str, s: &str) -> Result<(), NameError> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b.iter().all(|&c| is_id_byte(c))
        && b[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(NameError {
            what,
            got: s.chars().take(80).collect(),
        })
    }
}

/// A validated name: 1..=64 bytes of `[A-Za-z0-9._-]`, first a letter or digit. Serializes as a
/// plain string; deserializing validates.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $example:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schema(
            value_type = String,
            pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
            examples($example)
        )]
        pub struct $name(String);

        impl $name {
            /// Validates `s`.
            pub fn parse(s: &str) -> Result<Self, NameError> {
                check_name($what, s)?;
                Ok(Self(s.to_owned()))
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                check_name($what, &s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

name_type!(
    /// The id of one entry server (unique in a fleet), e.g. `fra-1`.
    ServerId,
    "entry-server id",
    "fra-1"
);
name_type!(
    /// A point of presence: the failure domain an entry server is in, e.g. `fra`.
    PopId,
    "POP",
    "fra"
);
name_type!(
    /// One go-live of a stream (see `DESIGN.md`: stream, broadcast, publisher). The director
    /// makes them ([`BroadcastId::new`]): the Unix time in milliseconds, then random bits, so
    /// they sort by start time and never repeat for a stream.
    BroadcastId,
    "broadcast id",
    "b19a2f3c4d5e-7f3a9c21"
);

impl BroadcastId {
    /// A fresh id for a broadcast starting at `unix_ms`, made unique by `random`.
    pub fn new(unix_ms: u64, random: u32) -> Self {
        Self(format!("b{unix_ms:012x}-{random:08x}"))
    }

    /// The start time encoded by [`BroadcastId::new`], if this id has that form.
    pub fn unix_ms(&self) -> Option<u64> {
        let hex = self.0.strip_prefix('b')?.split('-').next()?;
        u64::from_str_radix(hex, 16).ok()
    }
}

impl PartialEq<str> for StreamId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl std::borrow::Borrow<str> for StreamId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_accepts_the_charset() {
        for ok in ["a", "Z9", "cam-01.main_hd", &"x".repeat(128)] {
            assert_eq!(StreamId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn stream_id_rejections_say_what_is_accepted() {
        assert_eq!(StreamId::parse(""), Err(StreamIdError::Empty));
        assert_eq!(
            StreamId::parse(&"x".repeat(129)),
            Err(StreamIdError::TooLong { len: 129, max: 128 })
        );
        assert_eq!(
            StreamId::parse("a/b"),
            Err(StreamIdError::BadChar { ch: '/', at: 1 })
        );
        assert_eq!(
            StreamId::parse("aé"),
            Err(StreamIdError::BadChar { ch: 'é', at: 1 })
        );
        assert_eq!(
            StreamId::parse(".."),
            Err(StreamIdError::BadStart { ch: '.' })
        );
        assert_eq!(
            StreamId::parse("-x"),
            Err(StreamIdError::BadStart { ch: '-' })
        );
        let msg = StreamId::parse("a b").unwrap_err().to_string();
        assert!(msg.contains("[A-Za-z0-9._-]"), "{msg}");
    }

    #[test]
    fn stream_id_from_bytes_applies_the_smaller_limit() {
        assert!(StreamId::from_bytes(b"abcd", 4).is_ok());
        assert_eq!(
            StreamId::from_bytes(b"abcde", 4),
            Err(StreamIdError::TooLong { len: 5, max: 4 })
        );
        assert_eq!(
            StreamId::from_bytes(&[b'a', 0xff], 10),
            Err(StreamIdError::BadChar {
                ch: char::REPLACEMENT_CHARACTER,
                at: 1
            })
        );
    }

    #[test]
    fn stream_id_serde_validates() {
        let id: StreamId = serde_json::from_str("\"cam-1\"").unwrap();
        assert_eq!(id.to_string(), "cam-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"cam-1\"");
        let err = serde_json::from_str::<StreamId>("\"../etc\"").unwrap_err();
        assert!(err.to_string().contains("accepted"), "{err}");
    }

    #[test]
    fn names_validate_and_broadcast_ids_sort_by_time() {
        for ok in ["fra-1", "a", "POP_9.x"] {
            assert_eq!(ServerId::parse(ok).unwrap().as_str(), ok);
            assert_eq!(PopId::parse(ok).unwrap(), ok);
        }
        for bad in ["", "-a", "a/b", "a b", &"x".repeat(65)] {
            let e = ServerId::parse(bad).unwrap_err().to_string();
            assert!(e.contains("[A-Za-z0-9._-]"), "{e}");
        }
        let e = serde_json::from_str::<PopId>("\"../x\"").unwrap_err();
        assert!(e.to_string().contains("POP"), "{e}");
        let a = BroadcastId::new(1_700_000_000_000, 7);
        let b = BroadcastId::new(1_700_000_000_001, 1);
        assert!(a < b, "ids sort by start time");
        assert_eq!(a.unix_ms(), Some(1_700_000_000_000));
        assert_eq!(BroadcastId::parse(a.as_str()).unwrap(), a);
        assert_eq!(BroadcastId::new(u64::MAX, u32::MAX).as_str().len(), 26);
    }

    #[test]
    fn role_and_protocol_names() {
        assert_eq!(serde_json::to_string(&Role::Backup).unwrap(), "\"backup\"");
        assert_eq!(
            serde_json::from_str::<Role>("\"primary\"").unwrap(),
            Role::Primary
        );
        for r in Role::ALL {
            assert_eq!(r.to_string().parse::<Role>().unwrap(), r);
            assert_eq!(Role::from_wire_code(r.wire_code()), Some(r));
        }
        assert_eq!(Role::from_wire_code(0), None);
        for p in Protocol::ALL {
            assert_eq!(p.to_string().parse::<Protocol>().unwrap(), p);
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{p}\""));
        }
        let err = "srt".parse::<Protocol>().unwrap_err().to_string();
        assert!(
            err.contains("native, websocket, rtmp, http") && err.contains("srt"),
            "{err}"
        );
        assert!("Primary".parse::<Role>().is_err());
    }
}
