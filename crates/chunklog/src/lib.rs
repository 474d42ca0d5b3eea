//! # chunklog — the entry server's durable per-stream chunk log
//!
//! **What.** An append-only log of one live stream's chunks (`seq`, `pts`, `flags`, payload), kept
//! in files under `<dir>/<stream>/`, split into segments, each record framed with its length and a
//! CRC32C. [`StreamLog`] is the single writer of one stream; [`LogReader`] handles (cheap clones)
//! read it from other threads while appends go on, from the files, not from a copy in memory.
//!
//! **Why.** An entry server acknowledges a chunk to the device only once the chunk is in this log
//! under the configured [`FsyncPolicy`], and the promise is that *nothing already acknowledged is
//! ever lost*: a restarted entry server [`open`](StreamLog::open)s the log again, which validates
//! every record, cuts a torn or corrupt tail, and restores `next_seq`, `first_seq` and the END
//! state, so the device resumes from the first unacknowledged chunk without loss or duplicates.
//!
//! **What it is not.** Not a database or a general queue: one writer per stream (enforced with an
//! advisory `flock` on `<dir>/<stream>/LOCK`, so a second writer gets [`LogError::Locked`]),
//! strictly consecutive sequence numbers (no holes), whole-segment retention only, blocking
//! `std::fs` I/O (no async runtime here), and Unix only (`pread`/`pwrite`, `flock`). An append
//! without fsync is one `pwrite(2)` into the page cache, short enough for an async task to make
//! inline; fsyncs belong off async workers: [`StreamLog::begin_sync`] hands out a [`SyncJob`] to
//! run on a blocking thread while appends go on.
//!
//! # Durability: the fsync trade-off
//!
//! | policy | [`append`](StreamLog::append) returns after | [`durable_through`](StreamLog::durable_through) advances | survives a process crash | survives a power loss | cost |
//! |---|---|---|---|---|---|
//! | [`Always`](FsyncPolicy::Always) | `write(2)` + `fdatasync(2)` (and the directory on a new segment) | on append | yes | yes, for every acked chunk | one fsync per chunk: throughput bound by the disk's flush latency |
//! | [`Interval`](FsyncPolicy::Interval) | `write(2)` | on [`sync`](StreamLog::sync), which the caller runs on a timer of that period | yes | yes, for every acked chunk, because the ACK is only sent for `seq <= durable_through`; unacked chunks may be lost and the device resends them | one fsync per period per stream; ACK latency up to one period |
//! | [`Never`](FsyncPolicy::Never) | `write(2)` | on append | yes (data is in the kernel's page cache) | **no**: the last seconds of acked chunks can be lost | no fsync at all |
//!
//! With `Interval`, ACK `durable_through()` after each `sync()`: the window of data that can be
//! lost is then zero for acknowledged chunks. An END marker is always fsync'd (whatever the policy),
//! and so is every repair that [`open`](StreamLog::open) makes.
//!
//! # On-disk format
//!
//! A stream is the directory `<dir>/<stream>/` holding segments named `<first_seq:020>.seg`
//! (e.g. `00000000000000000100.seg`), the `LOCK` file, and possibly `*.orphan*` files (segments that
//! recovery moved aside, see below). Other files are ignored and reported. All integers are
//! little-endian.
//!
//! Segment header (28 bytes, at offset 0):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `FMCLSEG1` |
//! | 8 | 8 | `first_seq` u64 (must match the file name) |
//! | 16 | 8 | created at, wall clock, ms since the Unix epoch, i64 |
//! | 24 | 4 | CRC32C of bytes 0..24 |
//!
//! Then records, back to back (34 bytes of framing plus the payload):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | `len`: payload length, u32 (≤ [`MAX_PAYLOAD`]) |
//! | 4 | 1 | kind: `D` (0x44) data, `E` (0x45) END marker (END has `len` 0) |
//! | 5 | 8 | `seq` u64 (END: the final seq, `u64::MAX` for an empty stream) |
//! | 13 | 8 | `pts` i64, microseconds (END: 0) |
//! | 21 | 1 | `flags` u8 (END: 0) |
//! | 22 | 8 | written at, wall clock, ms since the Unix epoch, i64 (drives age retention) |
//! | 30 | `len` | payload |
//! | 30+`len` | 4 | CRC32C of bytes 0..30+`len` |
//!
//! Within a segment the data records' `seq` are consecutive from `first_seq`; the next segment's
//! `first_seq` is the previous one's last `seq + 1`. A segment is closed ("sealed") when the next
//! record would take it past `segment_bytes` (a single record larger than that gets a segment of its
//! own). An END marker, if any, is the last record of the last segment.
//!
//! # Recovery
//!
//! [`StreamLog::open`] reads every segment in order and checks each record (kind, length, CRC,
//! consecutive `seq`). What it does with what it finds, reported in [`RecoveryReport`] and logged
//! with `tracing::warn!`:
//!
//! * a torn or corrupt record in the **last** segment: the file is truncated just before it (this is
//!   the normal result of a crash mid-write; those chunks were never acknowledged, unless the disk
//!   itself lost fsync'd data);
//! * a torn or corrupt tail in an earlier segment: truncated the same way; if that leaves a hole in
//!   the sequence numbers before the next segment, every segment before the hole is renamed
//!   `<name>.orphan[.N]` (kept on disk for an operator, no longer part of the log) so that the log
//!   continues with the newest contiguous run, which is what the device resumes against;
//! * a segment with a bad header: the last one is reset to an empty segment starting at the seq in
//!   its file name; an earlier one is treated as a hole, as above;
//! * unknown files: ignored and listed.
//!
//! Nothing on disk can make this crate panic: every length is bounded before it is trusted.
//!
//! # Memory
//!
//! Per segment the log keeps the `pts` of every record (8 bytes per chunk, so
//! [`seek_time`](StreamLog::seek_time) is exact and needs no I/O) and a sparse offset index (one entry per
//! 64 KiB of segment), so a read seeks to within 64 KiB of its first record: reading the last 10
//! records of a 1 GB log reads a few tens of KiB, not the log.

mod config;
mod error;
mod format;
mod log;
mod reader;
mod state;

pub use config::{FsyncPolicy, LogConfig, ParseFsyncPolicyError, validate_stream_name};
pub use error::LogError;
pub use format::MAX_PAYLOAD;
pub use log::{AppendOutcome, RecoveryReport, RetentionReport, StreamLog, SyncJob, Truncation};
pub use reader::LogReader;

/// One chunk of a stream, as appended and as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number, consecutive from 0 per stream.
    pub seq: u64,
    /// Presentation time in microseconds (may be negative).
    pub pts: i64,
    /// The protocol's DATA flags (keyframe, discontinuity, ...), stored as given.
    pub flags: u8,
    /// The chunk.
    pub payload: bytes::Bytes,
}
