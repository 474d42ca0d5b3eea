//! The log's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong with a stream log. Each message says what and where.
///
/// Who is at fault: `Gap`, `Ended`, `EndMismatch`, `TooLarge` are the sender's (the protocol layer
/// maps them to a protocol error); `Trimmed` is the reader's (restart from `first_seq`);
/// `BadStreamName` is the caller's; `Locked` means another handle already writes this stream;
/// `Io`, `Corrupt` and `Poisoned` are the server's (retrying the same call does not help; reopening
/// the stream may).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file system call failed.
    #[error("chunk log: could not {op} {path}: {source}")]
    Io {
        /// What was being done ("open", "write", "fsync", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An append skipped sequence numbers.
    #[error("chunk log: sequence gap: expected seq {expected}, got {got}")]
    Gap {
        /// The next sequence number the log accepts.
        expected: u64,
        /// What was offered.
        got: u64,
    },
    /// The stream has an END marker; nothing new can be appended.
    #[error("chunk log: stream already ended at seq {final_seq}")]
    Ended {
        /// The final sequence number recorded by END.
        final_seq: u64,
    },
    /// `end(final_seq)` does not match what the log holds.
    #[error(
        "chunk log: END at final seq {final_seq} does not match the log, whose next seq is {next_seq} \
         (final_seq must be next_seq - 1, or u64::MAX for an empty stream)"
    )]
    EndMismatch {
        /// What was offered.
        final_seq: u64,
        /// The log's next sequence number.
        next_seq: u64,
    },
    /// A read asked for records that retention already deleted.
    #[error("chunk log: seq trimmed by retention; the first retained seq is {first_seq}")]
    Trimmed {
        /// The lowest sequence number still in the log.
        first_seq: u64,
    },
    /// The stream name cannot be used as a directory name.
    #[error(
        "chunk log: bad stream name {0:?}: use 1 to 128 characters from [A-Za-z0-9._-], not starting with '.'"
    )]
    BadStreamName(String),
    /// A payload is larger than the format allows.
    #[error("chunk log: payload of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// The payload's length.
        len: usize,
        /// [`MAX_PAYLOAD`](crate::MAX_PAYLOAD).
        max: usize,
    },
    /// Data that was valid when written no longer is (found by a read, not by recovery, which
    /// repairs instead).
    #[error("chunk log: corrupt data in {path} at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad record.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// [`StreamLog::start_at`](crate::StreamLog::start_at) on a log that already has records.
    #[error(
        "chunk log: cannot move the start of a stream that already holds records (next sequence {next_seq})"
    )]
    NotEmpty {
        /// Where the log continues.
        next_seq: u64,
    },
    /// Another handle (in this or another process) holds the stream's write lock.
    #[error("chunk log: stream is already open for writing ({path} is locked)")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An earlier write or fsync failed, so what is on disk is unknown; reopen the stream to
    /// recover from the files.
    #[error(
        "chunk log: stream {stream:?} is unusable after an earlier failure ({cause}); reopen it"
    )]
    Poisoned {
        /// The stream.
        stream: String,
        /// The first failure.
        cause: String,
    },
}

impl LogError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> LogError {
        let path = path.into();
        move |source| LogError::Io { op, path, source }
    }
}
