//! The in-memory picture of one stream's log, shared between its writer and its readers.
//!
//! Concurrency: one writer ([`StreamLog`](crate::StreamLog)) mutates [`State`] under the write
//! lock only *after* the bytes are in the file, so a reader that copies a segment's `len` under the
//! read lock and then `pread`s up to it never sees a partial record. Locks are never held during
//! I/O.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// One sparse index entry per this many bytes of segment.
pub(crate) const INDEX_STRIDE: u64 = 64 << 10;

#[derive(Debug)]
pub(crate) struct Segment {
    pub first_seq: u64,
    pub path: PathBuf,
    /// Valid bytes: header plus whole records.
    pub len: u64,
    /// `pts` of each data record; record `i` has seq `first_seq + i`.
    pub pts: Vec<i64>,
    pub max_pts: i64,
    /// Whether `pts` is non-decreasing (then `seek_time` binary-searches).
    pub pts_sorted: bool,
    /// `(seq, offset)` every [`INDEX_STRIDE`] bytes, ascending.
    pub index: Vec<(u64, u64)>,
    /// Wall clock (ms since the epoch) of the last record's write, or of creation while empty.
    pub last_wall_ms: i64,
}

impl Segment {
    pub(crate) fn new(first_seq: u64, path: PathBuf, created_ms: i64) -> Segment {
        Segment {
            first_seq,
            path,
            len: crate::format::SEG_HEADER_LEN,
            pts: Vec::new(),
            max_pts: i64::MIN,
            pts_sorted: true,
            index: Vec::new(),
            last_wall_ms: created_ms,
        }
    }

    /// One past the last data record's seq.
    pub(crate) fn end_seq(&self) -> u64 {
        self.first_seq + self.pts.len() as u64
    }

    pub(crate) fn records(&self) -> u64 {
        self.pts.len() as u64
    }

    /// Notes a data record written at `offset` with `size` bytes.
    pub(crate) fn push(&mut self, seq: u64, pts: i64, wall_ms: i64, offset: u64, size: u64) {
        debug_assert_eq!(seq, self.end_seq());
        let due = self
            .index
            .last()
            .is_none_or(|&(_, o)| offset - o >= INDEX_STRIDE);
        if due {
            self.index.push((seq, offset));
        }
        if let Some(&last) = self.pts.last() {
            self.pts_sorted &= pts >= last;
        }
        self.pts.push(pts);
        self.max_pts = self.max_pts.max(pts);
        self.last_wall_ms = wall_ms;
        self.len = offset + size;
    }

    /// Offset to start scanning at for `seq` (at or before its record).
    pub(crate) fn offset_for(&self, seq: u64) -> u64 {
        let i = self.index.partition_point(|&(s, _)| s <= seq);
        if i == 0 {
            crate::format::SEG_HEADER_LEN
        } else {
            self.index[i - 1].1
        }
    }
}

#[derive(Debug)]
pub(crate) struct State {
    /// Oldest first; the last one is the active segment. Never empty.
    pub segments: VecDeque<Segment>,
    pub next_seq: u64,
    pub durable_through: Option<u64>,
    pub ended: Option<u64>,
    pub total_bytes: u64,
}

impl State {
    pub(crate) fn first_seq(&self) -> u64 {
        self.segments.front().map_or(self.next_seq, |s| s.first_seq)
    }

    pub(crate) fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .back_mut()
            .expect("a stream log always has an active segment")
    }

    pub(crate) fn seek_time(&self, pts: i64) -> Option<u64> {
        let seg = self
            .segments
            .iter()
            .find(|s| !s.pts.is_empty() && s.max_pts >= pts)?;
        let i = if seg.pts_sorted {
            seg.pts.partition_point(|&p| p < pts)
        } else {
            seg.pts.iter().position(|&p| p >= pts)?
        };
        Some(seg.first_seq + i as u64)
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub stream: String,
    pub dir: PathBuf,
    state: RwLock<State>,
    /// Bytes read from segment files by reads (a metric, and how tests check the index works).
    pub bytes_read: AtomicU64,
}

impl Shared {
    pub(crate) fn new(stream: String, dir: PathBuf, state: State) -> Shared {
        Shared {
            stream,
            dir,
            state: RwLock::new(state),
            bytes_read: AtomicU64::new(0),
        }
    }

    // A panic while holding the lock cannot leave `State` half-updated in a way that matters more
    // than the panic itself, so a poisoned lock is taken over rather than propagated.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}
