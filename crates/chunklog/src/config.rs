//! Configuration: where logs live, the fsync policy, segment size and retention.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::LogError;

/// When appended data is forced to stable storage. See the crate docs for the trade-off.
///
/// Text form ([`FromStr`]/[`Display`](fmt::Display)): `always`, `never`, `interval:100ms`
/// (`ms` or `s`; a bare number is milliseconds). Serde form: `"always"`, `"never"`,
/// `{"interval_ms": 100}` (the text form is accepted as a string too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// fsync before every append returns: every ACK is on stable storage; one fsync per chunk.
    #[default]
    Always,
    /// Appends only `write(2)`; the caller calls [`sync`](crate::StreamLog::sync) every period and
    /// acknowledges up to [`durable_through`](crate::StreamLog::durable_through).
    Interval(Duration),
    /// Appends only `write(2)` and count as durable at once: survives a process crash, not a power
    /// loss.
    Never,
}

/// Error parsing an [`FsyncPolicy`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad fsync policy {input:?}: expected \"always\", \"never\" or \"interval:<N>ms\" (N > 0)")]
pub struct ParseFsyncPolicyError {
    /// What was given.
    pub input: String,
}

impl FromStr for FsyncPolicy {
    type Err = ParseFsyncPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseFsyncPolicyError {
            input: s.to_owned(),
        };
        let t = s.trim();
        match t {
            "always" => return Ok(FsyncPolicy::Always),
            "never" => return Ok(FsyncPolicy::Never),
            _ => {}
        }
        let rest = t.strip_prefix("interval:").ok_or_else(err)?.trim();
        let d = if let Some(ms) = rest.strip_suffix("ms") {
            Duration::from_millis(ms.trim().parse().map_err(|_| err())?)
        } else if let Some(secs) = rest.strip_suffix('s') {
            Duration::from_secs(secs.trim().parse().map_err(|_| err())?)
        } else {
            Duration::from_millis(rest.parse().map_err(|_| err())?)
        };
        if d.is_zero() {
            return Err(err());
        }
        Ok(FsyncPolicy::Interval(d))
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(d) => write!(f, "interval:{}ms", d.as_millis()),
        }
    }
}

impl Serialize for FsyncPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FsyncPolicy::Always => s.serialize_str("always"),
            FsyncPolicy::Never => s.serialize_str("never"),
            FsyncPolicy::Interval(d) => IntervalRepr {
                interval_ms: u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            }
            .serialize(s),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntervalRepr {
    interval_ms: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Repr {
    Text(String),
    Interval(IntervalRepr),
}

impl<'de> Deserialize<'de> for FsyncPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(t) => t.parse().map_err(serde::de::Error::custom),
            Repr::Interval(IntervalRepr { interval_ms: 0 }) => Err(serde::de::Error::custom(
                "fsync interval_ms must be greater than 0",
            )),
            Repr::Interval(IntervalRepr { interval_ms }) => {
                Ok(FsyncPolicy::Interval(Duration::from_millis(interval_ms)))
            }
        }
    }
}

/// Where and how stream logs are kept. Shared by all streams of one entry server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Root directory; each stream gets `dir/<stream>/`.
    pub dir: PathBuf,
    /// When data reaches stable storage.
    pub fsync: FsyncPolicy,
    /// A segment is sealed once the next record would take it past this size (default 64 MiB).
    pub segment_bytes: u64,
    /// Delete sealed segments whose last record was written longer ago than this.
    pub retention_age: Option<Duration>,
    /// Delete the oldest sealed segments while the stream's files take more than this.
    pub retention_bytes: Option<u64>,
}

impl LogConfig {
    /// Default segment size: 64 MiB.
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

    /// A config for `dir` with `fsync = always`, 64 MiB segments and no retention.
    pub fn new(dir: impl Into<PathBuf>) -> LogConfig {
        LogConfig {
            dir: dir.into(),
            fsync: FsyncPolicy::Always,
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            retention_age: None,
            retention_bytes: None,
        }
    }
}

/// Checks that `name` is usable as a stream directory name: 1 to 128 characters from
/// `[A-Za-z0-9._-]`, not starting with `.` (so never `.` or `..`).
pub fn validate_stream_name(name: &str) -> Result<(), LogError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(LogError::BadStreamName(name.to_owned()))
    }
}
