//! The writer: [`StreamLog`], its recovery at open, appends, syncs, END and retention.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::validate_stream_name;
use crate::format::{
    self, Cursor, KIND_DATA, KIND_END, MAX_PAYLOAD, REC_OVERHEAD, SEG_HEADER_LEN, Step,
};
use crate::reader::LogReader;
use crate::state::{Segment, Shared, State};
use crate::{FsyncPolicy, LogConfig, LogError, Record};

const LOCK_FILE: &str = "LOCK";
const SEG_EXT: &str = ".seg";

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The record was written (and fsync'd under [`FsyncPolicy::Always`]).
    Appended,
    /// The log already has this seq (a resend after reconnect); nothing was written.
    Duplicate,
}

/// Part of a file that recovery cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// The segment file.
    pub path: PathBuf,
    /// Where the file now ends (the first bad byte).
    pub offset: u64,
    /// How many bytes were dropped.
    pub dropped_bytes: u64,
    /// What was wrong there.
    pub reason: &'static str,
}

/// What [`StreamLog::open`] found and repaired. Everything non-empty here is also logged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments in the log after recovery.
    pub segments: usize,
    /// Data records in the log after recovery.
    pub records: u64,
    /// Torn or corrupt tails that were cut off (and segment headers that were reset).
    pub truncated: Vec<Truncation>,
    /// Segments moved aside (renamed `*.orphan*`) because a hole separates them from the newest
    /// data; `(old path, new path, why)`.
    pub orphaned: Vec<(PathBuf, PathBuf, String)>,
    /// Files in the stream directory that are not part of the log (left alone).
    pub ignored: Vec<PathBuf>,
    /// Other things worth knowing (an END marker dropped because data follows it, ...).
    pub notes: Vec<String>,
}

impl RecoveryReport {
    /// Whether recovery found nothing to repair or report.
    pub fn is_clean(&self) -> bool {
        self.truncated.is_empty()
            && self.orphaned.is_empty()
            && self.ignored.is_empty()
            && self.notes.is_empty()
    }
}

/// What [`StreamLog::enforce_retention`] deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segment files deleted, oldest first.
    pub removed: Vec<PathBuf>,
    /// Their total size.
    pub removed_bytes: u64,
    /// The lowest retained seq afterwards.
    pub first_seq: u64,
}

/// The single writer of one stream's log. See the crate docs.
#[derive(Debug)]
pub struct StreamLog {
    shared: Arc<Shared>,
    cfg: LogConfig,
    /// Write handle of the active (last) segment.
    active: File,
    /// Sealed segments with data not yet fsync'd (Interval only).
    pending: Vec<File>,
    /// The active segment has data not yet fsync'd.
    unsynced: bool,
    /// The directory has entries not yet fsync'd.
    dir_dirty: bool,
    poisoned: Option<String>,
    buf: Vec<u8>,
    recovery: RecoveryReport,
    _lock: File,
}

fn wall_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

fn seg_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEG_EXT}")
}

fn parse_seg_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEG_EXT)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn fsync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(LogError::io("fsync directory", dir))
}

fn lock(dir: &Path) -> Result<File, LogError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(LogError::io("open lock file", &path))?;
    // SAFETY: flock on a valid, open file descriptor owned by `f`; no memory is passed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.kind() == io::ErrorKind::WouldBlock {
            LogError::Locked { path }
        } else {
            LogError::Io {
                op: "lock",
                path,
                source: e,
            }
        });
    }
    Ok(f)
}

/// Creates a segment file with its header; fsyncs it if `sync`.
fn create_segment(
    dir: &Path,
    first_seq: u64,
    now_ms: i64,
    sync: bool,
) -> Result<(File, Segment), LogError> {
    let path = dir.join(seg_name(first_seq));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(LogError::io("create segment", &path))?;
    f.write_all_at(&format::encode_header(first_seq, now_ms), 0)
        .map_err(LogError::io("write segment header", &path))?;
    if sync {
        f.sync_data().map_err(LogError::io("fsync", &path))?;
    }
    Ok((f, Segment::new(first_seq, path, now_ms)))
}

/// One segment as recovery found it.
struct Scanned {
    seg: Segment,
    /// Bytes in the file.
    file_len: u64,
    /// First bad byte and why, if the file does not end cleanly.
    bad: Option<(u64, &'static str)>,
    /// The header itself is bad.
    bad_header: bool,
    /// END marker found (its final seq).
    end: Option<u64>,
}

fn scan_segment(path: &Path, name_seq: u64) -> Result<Scanned, LogError> {
    let f = File::open(path).map_err(LogError::io("open segment", path))?;
    let file_len = f.metadata().map_err(LogError::io("stat", path))?.len();
    let mut head = [0u8; SEG_HEADER_LEN as usize];
    let header = if file_len < SEG_HEADER_LEN {
        Err("segment shorter than its header")
    } else {
        f.read_exact_at(&mut head, 0)
            .map_err(LogError::io("read segment header", path))?;
        format::decode_header(&head).and_then(|(seq, created)| {
            if seq == name_seq {
                Ok(created)
            } else {
                Err("segment header's first seq does not match its file name")
            }
        })
    };
    let created = match header {
        Ok(c) => c,
        Err(reason) => {
            return Ok(Scanned {
                seg: Segment::new(name_seq, path.to_owned(), 0),
                file_len,
                bad: Some((0, reason)),
                bad_header: true,
                end: None,
            });
        }
    };
    let mut seg = Segment::new(name_seq, path.to_owned(), created);
    let mut bad = None;
    let mut end = None;
    let mut cur = Cursor::new(&f, SEG_HEADER_LEN, file_len);
    loop {
        match cur.next().map_err(LogError::io("read segment", path))? {
            Step::Eof => break,
            Step::Bad { offset, reason } => {
                bad = Some((offset, reason));
                break;
            }
            Step::Record { rec, offset, size } => {
                if end.is_some() {
                    bad = Some((offset, "record after the END marker"));
                    break;
                }
                let expected = seg.end_seq();
                if rec.kind == KIND_END {
                    if rec.seq.wrapping_add(1) != expected {
                        bad = Some((offset, "END marker does not follow the last record"));
                        break;
                    }
                    end = Some(rec.seq);
                    seg.len = offset + size;
                    seg.last_wall_ms = rec.wall_ms;
                } else if rec.kind == KIND_DATA {
                    if rec.seq != expected {
                        bad = Some((offset, "record out of sequence"));
                        break;
                    }
                    seg.push(rec.seq, rec.pts, rec.wall_ms, offset, size);
                }
            }
        }
    }
    Ok(Scanned {
        seg,
        file_len,
        bad,
        bad_header: false,
        end,
    })
}

/// Renames `path` to a free `<path>.orphan[.N]`.
fn orphan(path: &Path) -> Result<PathBuf, LogError> {
    let base = path.as_os_str().to_owned();
    for n in 0u32.. {
        let mut name = base.clone();
        if n == 0 {
            name.push(".orphan");
        } else {
            name.push(format!(".orphan.{n}"));
        }
        let to = PathBuf::from(name);
        if !to.exists() {
            fs::rename(path, &to).map_err(LogError::io("rename", path))?;
            return Ok(to);
        }
    }
    unreachable!("u32 orphan names exhausted")
}

fn truncate_file(path: &Path, len: u64) -> Result<(), LogError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(LogError::io("open", path))?;
    f.set_len(len).map_err(LogError::io("truncate", path))?;
    f.sync_all().map_err(LogError::io("fsync", path))
}

impl StreamLog {
    /// Opens the log of `stream` under `cfg.dir`, creating it if new, recovering it otherwise
    /// (see "Recovery" in the crate docs; what was repaired is in [`recovery`](Self::recovery)).
    pub fn open(cfg: &LogConfig, stream: &str) -> Result<StreamLog, LogError> {
        validate_stream_name(stream)?;
        let sync = cfg.fsync != FsyncPolicy::Never;
        let dir = cfg.dir.join(stream);
        let existed = dir.is_dir();
        if !existed {
            fs::create_dir_all(&dir).map_err(LogError::io("create directory", &dir))?;
            if sync {
                fsync_dir(&cfg.dir)?;
            }
        }
        let lock = lock(&dir)?;
        let now_ms = wall_ms(SystemTime::now());
        let mut report = RecoveryReport::default();

        // Find the segments.
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        let entries = fs::read_dir(&dir).map_err(LogError::io("list directory", &dir))?;
        for entry in entries {
            let entry = entry.map_err(LogError::io("list directory", &dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            match parse_seg_name(&name) {
                Some(seq) if path.is_file() => found.push((seq, path)),
                _ if name == LOCK_FILE || name.contains(".orphan") => {}
                _ => report.ignored.push(path),
            }
        }
        found.sort();
        report.ignored.sort();

        // Scan them and keep the newest contiguous run.
        let mut kept: Vec<Scanned> = Vec::new();
        let count = found.len();
        for (i, (seq, path)) in found.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let mut s = scan_segment(&path, seq)?;
            if s.bad_header {
                let (_, reason) = s.bad.unwrap_or((0, "bad segment header"));
                if is_last {
                    // Reset it: an empty segment starting where its name says.
                    create_segment(&dir, seq, now_ms, true)?;
                    report.truncated.push(Truncation {
                        path: path.clone(),
                        offset: 0,
                        dropped_bytes: s.file_len,
                        reason,
                    });
                    s = Scanned {
                        seg: Segment::new(seq, path.clone(), now_ms),
                        file_len: SEG_HEADER_LEN,
                        bad: None,
                        bad_header: false,
                        end: None,
                    };
                } else {
                    // Unusable: a hole at this point.
                    let why = format!("segment {} has a bad header ({reason})", path.display());
                    for k in kept.drain(..) {
                        let to = orphan(&k.seg.path)?;
                        report.orphaned.push((k.seg.path, to, why.clone()));
                    }
                    let to = orphan(&path)?;
                    report.orphaned.push((path, to, why));
                    continue;
                }
            }
            if let Some((offset, reason)) = s.bad {
                truncate_file(&path, offset)?;
                report.truncated.push(Truncation {
                    path: path.clone(),
                    offset,
                    dropped_bytes: s.file_len - offset,
                    reason,
                });
                s.bad = None;
            }
            if let Some(prev) = kept.last_mut() {
                if prev.seg.end_seq() != s.seg.first_seq {
                    let why = format!(
                        "hole in the sequence: {} ends before seq {} but {} starts at seq {}",
                        prev.seg.path.display(),
                        prev.seg.end_seq(),
                        path.display(),
                        s.seg.first_seq
                    );
                    for k in kept.drain(..) {
                        let to = orphan(&k.seg.path)?;
                        report.orphaned.push((k.seg.path, to, why.clone()));
                    }
                } else if let Some(end) = prev.end.take() {
                    // Data follows an END marker: only corruption (or a bug) does that. Keep the
                    // data, drop the marker.
                    let at = prev.seg.len - REC_OVERHEAD as u64;
                    truncate_file(&prev.seg.path, at)?;
                    prev.seg.len = at;
                    report.notes.push(format!(
                        "dropped END marker (final seq {end}) in {} because segment {} follows it",
                        prev.seg.path.display(),
                        path.display()
                    ));
                }
            }
            kept.push(s);
        }
        if !report.orphaned.is_empty() {
            fsync_dir(&dir)?;
        }

        // Open (or create) the active segment.
        let (active, ended) = match kept.last() {
            Some(last) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&last.seg.path)
                    .map_err(LogError::io("open segment", &last.seg.path))?;
                (f, last.end)
            }
            None => {
                let (f, seg) = create_segment(&dir, 0, now_ms, sync)?;
                if sync {
                    fsync_dir(&dir)?;
                }
                kept.push(Scanned {
                    seg,
                    file_len: SEG_HEADER_LEN,
                    bad: None,
                    bad_header: false,
                    end: None,
                });
                (f, None)
            }
        };
        let segments: VecDeque<Segment> = kept.into_iter().map(|s| s.seg).collect();
        let next_seq = segments.back().map_or(0, |s| s.end_seq());
        let total_bytes = segments.iter().map(|s| s.len).sum();
        report.segments = segments.len();
        report.records = segments.iter().map(|s| s.records()).sum();
        if !report.is_clean() {
            tracing::warn!(stream, dir = %dir.display(), report = ?report, "chunk log recovered with repairs");
        }
        let state = State {
            segments,
            next_seq,
            durable_through: next_seq.checked_sub(1),
            ended,
            total_bytes,
        };
        Ok(StreamLog {
            shared: Arc::new(Shared::new(stream.to_owned(), dir, state)),
            cfg: cfg.clone(),
            active,
            pending: Vec::new(),
            unsynced: false,
            dir_dirty: false,
            poisoned: None,
            buf: Vec::new(),
            recovery: report,
            _lock: lock,
        })
    }

    /// Names of the streams that have a log under `cfg.dir` (for recovery at start-up). Entries
    /// that are not valid stream directories are skipped. A missing `cfg.dir` is an empty list.
    pub fn list(cfg: &LogConfig) -> Result<Vec<String>, LogError> {
        let entries = match fs::read_dir(&cfg.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(LogError::io("list directory", &cfg.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(LogError::io("list directory", &cfg.dir))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if validate_stream_name(&name).is_ok() && entry.path().is_dir() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.shared.stream
    }

    /// The stream's directory.
    pub fn dir(&self) -> &Path {
        self.shared.dir()
    }

    /// The fsync policy this log was opened with.
    pub fn fsync_policy(&self) -> FsyncPolicy {
        self.cfg.fsync
    }

    /// What recovery found and repaired when this log was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// A read handle for other threads.
    pub fn reader(&self) -> LogReader {
        LogReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// The sequence number the log accepts next (0 for a new stream).
    pub fn next_seq(&self) -> u64 {
        self.shared.read().next_seq
    }

    /// The lowest retained seq (`== next_seq` when the log is empty).
    pub fn first_seq(&self) -> u64 {
        self.shared.read().first_seq()
    }

    /// The highest seq durable under the policy: acknowledge up to here.
    pub fn durable_through(&self) -> Option<u64> {
        self.shared.read().durable_through
    }

    /// The final seq, once [`end`](Self::end) has been recorded.
    pub fn ended(&self) -> Option<u64> {
        self.shared.read().ended
    }

    /// Bytes in the stream's segment files.
    pub fn total_bytes(&self) -> u64 {
        self.shared.read().total_bytes
    }

    /// Whether a [`sync`](Self::sync) would make more data durable: only ever true under
    /// [`FsyncPolicy::Interval`] (under `Never` appends count as durable at once; under `Always`
    /// they are fsync'd already).
    pub fn needs_sync(&self) -> bool {
        matches!(self.cfg.fsync, FsyncPolicy::Interval(_))
            && (self.unsynced || self.dir_dirty || !self.pending.is_empty())
    }

    /// See [`LogReader::read`].
    pub fn read(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        self.reader().read(from_seq, max_records, max_bytes)
    }

    /// See [`LogReader::seek_time`].
    pub fn seek_time(&self, pts: i64) -> Option<u64> {
        self.shared.read().seek_time(pts)
    }

    /// Whether a failure left the files in an unknown state: every write is refused; reopen
    /// the log (recovery keeps what is durable).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    fn check(&self) -> Result<(), LogError> {
        match &self.poisoned {
            None => Ok(()),
            Some(cause) => Err(LogError::Poisoned {
                stream: self.shared.stream.clone(),
                cause: cause.clone(),
            }),
        }
    }

    /// Records the first failure that leaves the files in an unknown state.
    fn poison(&mut self, e: LogError) -> LogError {
        if self.poisoned.is_none() {
            self.poisoned = Some(e.to_string());
        }
        e
    }

    /// Appends `rec`, stamping it with the current wall clock (see [`append_at`](Self::append_at)).
    pub fn append(&mut self, rec: &Record) -> Result<AppendOutcome, LogError> {
        self.append_at(rec, SystemTime::now())
    }

    /// Appends `rec`, stamping it with `now` (the time age-based retention measures from).
    ///
    /// `rec.seq < next_seq`: [`AppendOutcome::Duplicate`], nothing written. `rec.seq > next_seq`:
    /// [`LogError::Gap`]. After END: [`LogError::Ended`]. Otherwise the record is written with
    /// one `pwrite(2)` (so it is in the kernel when this returns) and, under
    /// [`FsyncPolicy::Always`], fsync'd.
    pub fn append_at(&mut self, rec: &Record, now: SystemTime) -> Result<AppendOutcome, LogError> {
        self.check()?;
        let (next, ended, active_len, active_records) = {
            let st = self.shared.read();
            let a = st.segments.back();
            (
                st.next_seq,
                st.ended,
                a.map_or(0, |s| s.len),
                a.map_or(0, |s| s.records()),
            )
        };
        if rec.seq < next {
            return Ok(AppendOutcome::Duplicate);
        }
        if let Some(final_seq) = ended {
            return Err(LogError::Ended { final_seq });
        }
        if rec.seq > next {
            return Err(LogError::Gap {
                expected: next,
                got: rec.seq,
            });
        }
        if rec.payload.len() > MAX_PAYLOAD {
            return Err(LogError::TooLarge {
                len: rec.payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        let now_ms = wall_ms(now);
        let size = (REC_OVERHEAD + rec.payload.len()) as u64;
        let mut offset = active_len;
        if active_records > 0 && active_len + size > self.cfg.segment_bytes {
            self.roll(next, now_ms)?;
            offset = SEG_HEADER_LEN;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        format::encode_record(
            &mut buf,
            KIND_DATA,
            rec.seq,
            rec.pts,
            rec.flags,
            now_ms,
            &rec.payload,
        );
        let written = self.write_at(&buf, offset);
        self.buf = buf;
        written?;
        let always = self.cfg.fsync == FsyncPolicy::Always;
        if always {
            self.fsync_active()?;
        } else {
            self.unsynced = true;
        }
        let durable = !matches!(self.cfg.fsync, FsyncPolicy::Interval(_));
        let mut st = self.shared.write();
        st.active_mut().push(rec.seq, rec.pts, now_ms, offset, size);
        st.next_seq = rec.seq + 1;
        st.total_bytes += size;
        if durable {
            st.durable_through = Some(rec.seq);
        }
        Ok(AppendOutcome::Appended)
    }

    /// Starts an empty log at `seq` instead of 0: an entry server that joins a stream late (the
    /// replacement for a dead path) holds it from the oldest chunk the device still has. Only a
    /// log with no record and no END can move; `seq` equal to the current start is a no-op.
    pub fn start_at(&mut self, seq: u64) -> Result<(), LogError> {
        self.check()?;
        let (records, next, ended) = {
            let st = self.shared.read();
            (
                st.segments.iter().map(Segment::records).sum::<u64>(),
                st.next_seq,
                st.ended,
            )
        };
        if records > 0 || ended.is_some() {
            return Err(LogError::NotEmpty { next_seq: next });
        }
        if seq == next {
            return Ok(());
        }
        self.roll(seq, wall_ms(SystemTime::now()))?;
        self.pending.clear();
        let dropped: Vec<Segment> = {
            let mut st = self.shared.write();
            let mut dropped = Vec::new();
            while st.segments.len() > 1 {
                if let Some(s) = st.segments.pop_front() {
                    st.total_bytes -= s.len;
                    dropped.push(s);
                }
            }
            st.next_seq = seq;
            st.durable_through = seq.checked_sub(1);
            dropped
        };
        for s in dropped {
            fs::remove_file(&s.path).map_err(LogError::io("remove empty segment", &s.path))?;
        }
        let dir = self.shared.dir().to_owned();
        fsync_dir(&dir).map_err(|e| self.poison(e))?;
        self.dir_dirty = false;
        Ok(())
    }

    /// Writes `bytes` at `offset` of the active segment; on failure cuts the file back to
    /// `offset` so no partial record stays, or poisons the log if even that fails.
    fn write_at(&mut self, bytes: &[u8], offset: u64) -> Result<(), LogError> {
        if let Err(e) = self.active.write_all_at(bytes, offset) {
            let path = self.active_path();
            let err = LogError::io("write", &path)(e);
            if self.active.set_len(offset).is_err() {
                return Err(self.poison(err));
            }
            return Err(err);
        }
        Ok(())
    }

    fn active_path(&self) -> PathBuf {
        self.shared
            .read()
            .segments
            .back()
            .map(|s| s.path.clone())
            .unwrap_or_default()
    }

    /// fsync of the active segment. A failed fsync poisons the log: after one, the kernel may
    /// have dropped the dirty pages, so a later fsync succeeding proves nothing.
    fn fsync_active(&mut self) -> Result<(), LogError> {
        if let Err(e) = self.active.sync_data() {
            let err = LogError::io("fsync", self.active_path())(e);
            return Err(self.poison(err));
        }
        self.unsynced = false;
        if self.dir_dirty {
            let dir = self.shared.dir().to_owned();
            fsync_dir(&dir).map_err(|e| self.poison(e))?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// Seals the active segment and starts a new one at `first_seq`.
    fn roll(&mut self, first_seq: u64, now_ms: i64) -> Result<(), LogError> {
        let always = self.cfg.fsync == FsyncPolicy::Always;
        let dir = self.shared.dir().to_owned();
        let (file, seg) =
            create_segment(&dir, first_seq, now_ms, always).map_err(|e| self.poison(e))?;
        let old = std::mem::replace(&mut self.active, file);
        if self.unsynced && matches!(self.cfg.fsync, FsyncPolicy::Interval(_)) {
            self.pending.push(old);
        }
        self.unsynced = !always;
        self.dir_dirty = true;
        if always {
            fsync_dir(&dir).map_err(|e| self.poison(e))?;
            self.dir_dirty = false;
        }
        let mut st = self.shared.write();
        st.total_bytes += seg.len;
        st.segments.push_back(seg);
        Ok(())
    }

    /// Forces everything written so far to stable storage (sealed segments, the active one, new
    /// directory entries) and advances [`durable_through`](Self::durable_through) to the last
    /// record. Under `Interval`, call it every period and then acknowledge. Under `Never` it still
    /// fsyncs the active segment and the directory (useful at shutdown).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.check()?;
        let target = self.shared.read().next_seq.checked_sub(1);
        while let Some(f) = self.pending.pop() {
            if let Err(e) = f.sync_data() {
                let err = LogError::io("fsync sealed segment", self.shared.dir())(e);
                return Err(self.poison(err));
            }
        }
        if self.unsynced || self.cfg.fsync == FsyncPolicy::Never {
            self.fsync_active()?;
        } else if self.dir_dirty {
            let dir = self.shared.dir().to_owned();
            fsync_dir(&dir).map_err(|e| self.poison(e))?;
            self.dir_dirty = false;
        }
        let mut st = self.shared.write();
        if target > st.durable_through {
            st.durable_through = target;
        }
        Ok(())
    }

    /// Starts a sync that runs *without* the log: the fsyncs happen in [`SyncJob::run`] (on a
    /// blocking thread, say) while appends go on, and [`finish_sync`](Self::finish_sync) then
    /// advances [`durable_through`](Self::durable_through) to what the job covered. Everything
    /// appended before this call is covered (the job holds duplicates of the same open files, and
    /// `fdatasync` flushes a file's data whichever descriptor asks). `None` when nothing written
    /// is unsynced. Same effect as [`sync`](Self::sync), without holding the writer meanwhile.
    pub fn begin_sync(&mut self) -> Result<Option<SyncJob>, LogError> {
        self.check()?;
        if !(self.unsynced || self.dir_dirty || !self.pending.is_empty()) {
            return Ok(None);
        }
        let mut files = std::mem::take(&mut self.pending);
        if self.unsynced {
            let dup = self.active.try_clone().map_err(|e| {
                let err = LogError::io("duplicate the segment handle", self.active_path())(e);
                self.poison(err)
            })?;
            files.push(dup);
        }
        let job = SyncJob {
            files,
            dir: self.shared.dir().to_owned(),
            dir_dirty: self.dir_dirty,
            target: self.shared.read().next_seq.checked_sub(1),
        };
        self.unsynced = false;
        self.dir_dirty = false;
        Ok(Some(job))
    }

    /// Ends a sync begun with [`begin_sync`](Self::begin_sync), with the job's result: on success
    /// `durable_through` advances to the job's target; a failed fsync poisons the log (see
    /// [`sync`](Self::sync)).
    pub fn finish_sync(&mut self, result: Result<Option<u64>, LogError>) -> Result<(), LogError> {
        match result {
            Ok(target) => {
                let mut st = self.shared.write();
                if target > st.durable_through {
                    st.durable_through = target;
                }
                Ok(())
            }
            Err(e) => Err(self.poison(e)),
        }
    }

    /// Records a durable END marker: the stream ended after `final_seq`, which must be
    /// `next_seq - 1` (`u64::MAX` for a stream that never had a record). The marker is fsync'd
    /// whatever the policy, along with everything before it. Ending twice with the same
    /// `final_seq` is a no-op; afterwards, appends of new seqs fail with [`LogError::Ended`].
    pub fn end(&mut self, final_seq: u64) -> Result<(), LogError> {
        self.check()?;
        let (next, ended, offset) = {
            let st = self.shared.read();
            (
                st.next_seq,
                st.ended,
                st.segments.back().map_or(SEG_HEADER_LEN, |s| s.len),
            )
        };
        if let Some(f) = ended {
            return if f == final_seq {
                Ok(())
            } else {
                Err(LogError::Ended { final_seq: f })
            };
        }
        if final_seq.wrapping_add(1) != next {
            return Err(LogError::EndMismatch {
                final_seq,
                next_seq: next,
            });
        }
        let now_ms = wall_ms(SystemTime::now());
        let mut buf = Vec::with_capacity(REC_OVERHEAD);
        format::encode_record(&mut buf, KIND_END, final_seq, 0, 0, now_ms, &[]);
        self.write_at(&buf, offset)?;
        self.unsynced = true;
        {
            let mut st = self.shared.write();
            let a = st.active_mut();
            a.len = offset + buf.len() as u64;
            a.last_wall_ms = now_ms;
            st.total_bytes += buf.len() as u64;
            st.ended = Some(final_seq);
        }
        self.sync()
    }

    /// Deletes whole sealed segments, oldest first, while the oldest one's last write is at least
    /// `retention_age` before `now`, or the stream's files exceed `retention_bytes`. The active
    /// segment is never deleted. Advances [`first_seq`](Self::first_seq); readers asking for
    /// older seqs then get [`LogError::Trimmed`].
    pub fn enforce_retention(&mut self, now: SystemTime) -> Result<RetentionReport, LogError> {
        let now_ms = wall_ms(now);
        let age_ms = self
            .cfg
            .retention_age
            .map(|a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX));
        let mut report = RetentionReport::default();
        loop {
            let path = {
                let st = self.shared.read();
                if st.segments.len() < 2 {
                    break;
                }
                let oldest = &st.segments[0];
                let old = age_ms.is_some_and(|a| now_ms.saturating_sub(oldest.last_wall_ms) >= a);
                let big = self.cfg.retention_bytes.is_some_and(|b| st.total_bytes > b);
                if !(old || big) {
                    break;
                }
                oldest.path.clone()
            };
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io("delete segment", &path)(e)),
            }
            let mut st = self.shared.write();
            if let Some(seg) = st.segments.pop_front() {
                st.total_bytes -= seg.len;
                report.removed_bytes += seg.len;
                report.removed.push(seg.path);
            }
        }
        report.first_seq = self.first_seq();
        Ok(report)
    }

    /// Deletes the stream's directory and everything in it.
    pub fn remove(self) -> Result<(), LogError> {
        let dir = self.shared.dir().to_owned();
        drop(self);
        fs::remove_dir_all(&dir).map_err(LogError::io("remove directory", &dir))
    }
}

/// The fsyncs of a [`StreamLog::begin_sync`], to run off the writer (blocking I/O).
#[derive(Debug)]
#[must_use = "run the job, then hand its result to StreamLog::finish_sync"]
pub struct SyncJob {
    files: Vec<File>,
    /// The stream's directory (fsync'd when `dir_dirty`).
    dir: PathBuf,
    dir_dirty: bool,
    target: Option<u64>,
}

impl SyncJob {
    /// fsyncs the files (and the directory, when it has new entries); `Ok(target)` is the last
    /// sequence number now durable, for [`StreamLog::finish_sync`].
    pub fn run(self) -> Result<Option<u64>, LogError> {
        for f in &self.files {
            f.sync_data()
                .map_err(LogError::io("fsync a segment of", &self.dir))?;
        }
        if self.dir_dirty {
            fsync_dir(&self.dir)?;
        }
        Ok(self.target)
    }
}
