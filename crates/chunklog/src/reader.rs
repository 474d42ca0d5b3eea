//! Reading a stream log from the files while its writer goes on appending.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::format::{Cursor, KIND_DATA, Step};
use crate::state::Shared;
use crate::{LogError, Record};

/// A read handle on one stream's log: cheap to clone, `Send + Sync`, usable from any thread while
/// the [`StreamLog`](crate::StreamLog) it came from appends. It sees every record written (not only
/// the durable ones: compare with [`durable_through`](Self::durable_through) if that matters).
/// Each read opens the segment files it needs, so it holds no file descriptors between reads.
#[derive(Debug, Clone)]
pub struct LogReader {
    pub(crate) shared: Arc<Shared>,
}

/// One segment's part of a read, copied out from under the lock.
struct Part {
    path: PathBuf,
    start: u64,
    end: u64,
}

impl LogReader {
    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.shared.stream
    }

    /// The sequence number the log accepts next.
    pub fn next_seq(&self) -> u64 {
        self.shared.read().next_seq
    }

    /// The lowest sequence number still retained (`== next_seq` when the log is empty).
    pub fn first_seq(&self) -> u64 {
        self.shared.read().first_seq()
    }

    /// The highest sequence number that is durable under the fsync policy.
    pub fn durable_through(&self) -> Option<u64> {
        self.shared.read().durable_through
    }

    /// The final sequence number, once the stream has an END marker.
    pub fn ended(&self) -> Option<u64> {
        self.shared.read().ended
    }

    /// The first retained seq whose `pts >= pts`, if any (no I/O).
    pub fn seek_time(&self, pts: i64) -> Option<u64> {
        self.shared.read().seek_time(pts)
    }

    /// Bytes read from segment files by all reads of this stream so far.
    pub fn disk_bytes_read(&self) -> u64 {
        self.shared.bytes_read.load(Ordering::Relaxed)
    }

    /// Records with `seq >= from_seq`, in order, at most `max_records` of them, stopping before a
    /// record whose payload would take the total past `max_bytes` (but always returning at least
    /// one record when there is one and `max_records > 0`). Empty when `from_seq >= next_seq`.
    /// `from_seq < first_seq` is [`LogError::Trimmed`].
    pub fn read(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        // A segment can be deleted by retention between planning and opening it; then the seq is
        // trimmed (or, if not, one more try sees the new picture).
        for _ in 0..3 {
            match self.try_read(from_seq, max_records, max_bytes)? {
                Some(records) => return Ok(records),
                None => continue,
            }
        }
        Err(LogError::Trimmed {
            first_seq: self.first_seq(),
        })
    }

    fn plan(&self, from_seq: u64, max_records: usize) -> Result<Vec<Part>, LogError> {
        let st = self.shared.read();
        let first = st.first_seq();
        if from_seq < first {
            return Err(LogError::Trimmed { first_seq: first });
        }
        if from_seq >= st.next_seq || max_records == 0 {
            return Ok(Vec::new());
        }
        let i = st
            .segments
            .partition_point(|s| s.first_seq <= from_seq)
            .saturating_sub(1);
        let mut parts = Vec::new();
        let mut count = 0u64;
        for (k, seg) in st.segments.iter().enumerate().skip(i) {
            if seg.records() == 0 {
                continue;
            }
            let start = if k == i {
                seg.offset_for(from_seq)
            } else {
                crate::format::SEG_HEADER_LEN
            };
            parts.push(Part {
                path: seg.path.clone(),
                start,
                end: seg.len,
            });
            count += seg.end_seq() - from_seq.max(seg.first_seq);
            if count >= max_records as u64 {
                break;
            }
        }
        Ok(parts)
    }

    /// `None`: a planned file vanished (retention) and the read should be planned again.
    fn try_read(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Option<Vec<Record>>, LogError> {
        let parts = self.plan(from_seq, max_records)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for part in parts {
            let file = match File::open(&part.path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let first = self.first_seq();
                    if from_seq < first {
                        return Err(LogError::Trimmed { first_seq: first });
                    }
                    return Ok(None);
                }
                Err(e) => return Err(LogError::io("open", &part.path)(e)),
            };
            let mut cur = Cursor::new(&file, part.start, part.end);
            let done = loop {
                let step = cur.next().map_err(LogError::io("read", &part.path))?;
                match step {
                    Step::Eof => break false,
                    Step::Bad { offset, reason } => {
                        return Err(LogError::Corrupt {
                            path: part.path.clone(),
                            offset,
                            reason,
                        });
                    }
                    Step::Record { rec, .. } => {
                        if rec.kind != KIND_DATA || rec.seq < from_seq {
                            continue;
                        }
                        if !out.is_empty() && bytes + rec.payload.len() > max_bytes {
                            break true;
                        }
                        bytes += rec.payload.len();
                        out.push(Record {
                            seq: rec.seq,
                            pts: rec.pts,
                            flags: rec.flags,
                            payload: Bytes::copy_from_slice(rec.payload),
                        });
                        if out.len() >= max_records {
                            break true;
                        }
                    }
                }
            };
            self.shared
                .bytes_read
                .fetch_add(cur.bytes_read, Ordering::Relaxed);
            if done {
                break;
            }
        }
        Ok(Some(out))
    }
}
