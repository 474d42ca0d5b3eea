//! Stream keys: the publisher's secret for a stream.
//!
//! **What.** A [`StreamKey`] is what entitles someone to publish a stream (go live with it): the
//! "stream key" of Twitch or YouTube. The director issues or accepts it, stores only its hash,
//! and asks for it on every assignment of the stream; an RTMP encoder sends it in its publish
//! name (`<stream>?key=<key>`), so it must survive in a URL query and in an encoder's text field.
//!
//! **Why a type.** Keys are secrets: this type's `Debug` does not print the key, it has no
//! `Display` (so it cannot end up in a log line by accident), and comparing two keys goes through
//! [`StreamKey::matches_hash`], which compares SHA-256 digests in constant time. The accepted
//! characters are URL-safe (`[A-Za-z0-9._~-]`, RFC 3986 "unreserved"), 16 to 128 of them: long
//! enough that a publisher-chosen key is not guessed by trying, short enough for OBS's field.
//!
//! **What not.** No storage and no random generation here (`proto` is pure: the director makes
//! keys from its RNG with [`StreamKey::from_random`]). Hashing is plain SHA-256 (`sha2`): keys the
//! director makes carry ~190 random bits, and publisher-chosen ones at least 16 characters, so a
//! slow password hash would only slow every assignment down.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Fewest characters a stream key may have.
pub const MIN_KEY_LEN: usize = 16;
/// Most characters a stream key may have.
pub const MAX_KEY_LEN: usize = 128;
/// What a stream key accepts, for error messages.
pub const KEY_ACCEPTED: &str = "16 to 128 characters from [A-Za-z0-9._~-]";

/// A publisher's secret for a stream (see the module docs). Serializes as a string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(
    value_type = String,
    pattern = "^[A-Za-z0-9._~-]{16,128}$",
    examples("sk_4mZ8q2VtY7rLw9Kc3Np6Hx1B")
)]
pub struct StreamKey(String);

/// Why a string is not a usable stream key. Never contains the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamKeyError {
    /// Too short or too long.
    #[error("stream key has {len} characters; accepted: {KEY_ACCEPTED}")]
    Length {
        /// Its length in bytes.
        len: usize,
    },
    /// A character outside the accepted set (its position, not the character: the rest of the
    /// key must not leak through an error message either).
    #[error(
        "stream key has a character outside [A-Za-z0-9._~-] at position {at}; accepted: {KEY_ACCEPTED}"
    )]
    BadChar {
        /// Byte offset.
        at: usize,
    },
}

impl fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamKey(<redacted>)")
    }
}

fn key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-')
}

const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

impl StreamKey {
    /// Validates `s` as a key.
    pub fn parse(s: &str) -> Result<Self, StreamKeyError> {
        Self::check(s)?;
        Ok(Self(s.to_owned()))
    }

    fn check(s: &str) -> Result<(), StreamKeyError> {
        let b = s.as_bytes();
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&b.len()) {
            return Err(StreamKeyError::Length { len: b.len() });
        }
        if let Some(at) = b.iter().position(|&c| !key_byte(c)) {
            return Err(StreamKeyError::BadChar { at });
        }
        Ok(())
    }

    /// A new key from 32 random bytes: `sk_` and 32 characters of [A-Za-z0-9] (about 190 bits).
    pub fn from_random(bytes: [u8; 32]) -> Self {
        let mut s = String::with_capacity(35);
        s.push_str("sk_");
        for b in bytes {
            // 256 is not a multiple of 62: the first 8 letters are slightly likelier. At 32
            // characters that still leaves > 188 bits, far beyond guessing.
            s.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
        }
        Self(s)
    }

    /// The key itself, for the one place that must send it (an answer to its owner, a request
    /// to the director). Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the key: what the director stores.
    pub fn hash(&self) -> [u8; 32] {
        sha256(self.0.as_bytes())
    }

    /// Whether this key's SHA-256 is `stored`, compared in constant time.
    pub fn matches_hash(&self, stored: &[u8; 32]) -> bool {
        let h = self.hash();
        h.iter().zip(stored).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl TryFrom<String> for StreamKey {
    type Error = StreamKeyError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::check(&s)?;
        Ok(Self(s))
    }
}

impl From<StreamKey> for String {
    fn from(k: StreamKey) -> Self {
        k.0
    }
}

/// SHA-256 of `data` (the RustCrypto `sha2` crate).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn sha256_is_sha256() {
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn keys_validate_without_leaking_and_match_only_their_hash() {
        let k = StreamKey::parse("abcdefghijklmnop").unwrap();
        assert_eq!(format!("{k:?}"), "StreamKey(<redacted>)");
        assert!(k.matches_hash(&k.hash()));
        let other = StreamKey::parse("abcdefghijklmnoq").unwrap();
        assert!(!other.matches_hash(&k.hash()));
        assert_eq!(
            StreamKey::parse("short"),
            Err(StreamKeyError::Length { len: 5 })
        );
        let e = StreamKey::parse("abcdefghijklmnop qrst").unwrap_err();
        assert_eq!(e, StreamKeyError::BadChar { at: 16 });
        assert!(!e.to_string().contains("abcdef"), "{e}");
        let e = serde_json::from_str::<StreamKey>("\"secret/secret/secret\"").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let r = StreamKey::from_random([200; 32]);
        assert_eq!(r.expose().len(), 35);
        assert!(StreamKey::parse(r.expose()).is_ok());
    }
}
