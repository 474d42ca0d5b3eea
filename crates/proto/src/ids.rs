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

/// The longest stream id accepted anywhere, in bytes (the wire's hard maximum).
pub const MAX_STREAM_ID_LEN: usize = 128;

/// What [`StreamId::parse`] accepts, for error messages.
const STREAM_ID_ACCEPTED: &str =
    "1 to 128 characters from [A-Za-z0-9._-], starting with a letter or digit";

/// The name of one live stream: 1..=128 bytes of `[A-Za-z0-9._-]`, first byte a letter or digit.
///
/// Serializes as a plain string; deserializing validates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
