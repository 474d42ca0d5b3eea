//! Byte layout of segment headers and records (see the crate docs for the tables), and a cursor
//! that walks the records of one segment file with `pread`, for both recovery and reads.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Segment file magic.
pub(crate) const SEG_MAGIC: [u8; 8] = *b"FMCLSEG1";
/// Segment header length.
pub(crate) const SEG_HEADER_LEN: u64 = 28;
/// Record bytes before the payload.
pub(crate) const REC_HEAD: usize = 30;
/// Record framing: head plus CRC.
pub(crate) const REC_OVERHEAD: usize = REC_HEAD + 4;
/// Largest payload one record may carry (64 MiB). Also bounds what recovery will believe.
pub const MAX_PAYLOAD: usize = 64 << 20;
/// Record kind: data.
pub(crate) const KIND_DATA: u8 = b'D';
/// Record kind: END marker.
pub(crate) const KIND_END: u8 = b'E';

/// How much a cursor reads at a time.
const BLOCK: usize = 64 << 10;

pub(crate) fn encode_header(first_seq: u64, created_ms: i64) -> [u8; SEG_HEADER_LEN as usize] {
    let mut h = [0u8; SEG_HEADER_LEN as usize];
    h[..8].copy_from_slice(&SEG_MAGIC);
    h[8..16].copy_from_slice(&first_seq.to_le_bytes());
    h[16..24].copy_from_slice(&created_ms.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// `(first_seq, created_ms)` or why the header is bad.
pub(crate) fn decode_header(h: &[u8]) -> Result<(u64, i64), &'static str> {
    if h.len() < SEG_HEADER_LEN as usize {
        return Err("segment header is short");
    }
    if h[..8] != SEG_MAGIC {
        return Err("segment header has a bad magic");
    }
    if crc32c::crc32c(&h[..24]) != le_u32(&h[24..28]) {
        return Err("segment header CRC mismatch");
    }
    Ok((le_u64(&h[8..16]), le_u64(&h[16..24]) as i64))
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Appends one encoded record to `out`.
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    kind: u8,
    seq: u64,
    pts: i64,
    flags: u8,
    wall_ms: i64,
    payload: &[u8],
) {
    let start = out.len();
    // Callers check the length against MAX_PAYLOAD first.
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&pts.to_le_bytes());
    out.push(flags);
    out.extend_from_slice(&wall_ms.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// A decoded record borrowing its payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawRecord<'a> {
    pub kind: u8,
    pub seq: u64,
    pub pts: i64,
    pub flags: u8,
    pub wall_ms: i64,
    pub payload: &'a [u8],
}

/// What the bytes at the front of a buffer say about the next record's size.
enum Size {
    /// At least this many bytes are needed to know more.
    Need(usize),
    /// The record is exactly this long.
    Known(usize),
    Bad(&'static str),
}

fn frame_size(b: &[u8]) -> Size {
    if b.len() < REC_HEAD {
        // Check what we can see early so garbage is recognised without reading further.
        if b.len() >= 5 && !matches!(b[4], KIND_DATA | KIND_END) {
            return Size::Bad("unknown record kind");
        }
        return Size::Need(REC_HEAD);
    }
    let len = le_u32(&b[..4]) as usize;
    let kind = b[4];
    if !matches!(kind, KIND_DATA | KIND_END) {
        return Size::Bad("unknown record kind");
    }
    if len > MAX_PAYLOAD {
        return Size::Bad("record length over the limit");
    }
    if kind == KIND_END && len != 0 {
        return Size::Bad("END marker with a payload");
    }
    Size::Known(REC_OVERHEAD + len)
}

fn decode(b: &[u8]) -> Result<RawRecord<'_>, &'static str> {
    let n = b.len();
    if crc32c::crc32c(&b[..n - 4]) != le_u32(&b[n - 4..]) {
        return Err("record CRC mismatch");
    }
    Ok(RawRecord {
        kind: b[4],
        seq: le_u64(&b[5..13]),
        pts: le_u64(&b[13..21]) as i64,
        flags: b[21],
        wall_ms: le_u64(&b[22..30]) as i64,
        payload: &b[REC_HEAD..n - 4],
    })
}

/// One step of a [`Cursor`].
pub(crate) enum Step<'a> {
    Record {
        rec: RawRecord<'a>,
        offset: u64,
        size: u64,
    },
    /// Clean end: the cursor's end offset was reached on a record boundary.
    Eof,
    /// The bytes at `offset` are not a whole valid record.
    Bad { offset: u64, reason: &'static str },
}

/// Walks records of one file from `pos` up to `end` with block-sized `pread`s.
pub(crate) struct Cursor<'f> {
    file: &'f File,
    /// File offset of `buf[start]`.
    pos: u64,
    end: u64,
    buf: Vec<u8>,
    start: usize,
    filled: usize,
    /// Bytes read from the file so far.
    pub bytes_read: u64,
}

impl<'f> Cursor<'f> {
    pub(crate) fn new(file: &'f File, pos: u64, end: u64) -> Cursor<'f> {
        Cursor {
            file,
            pos,
            end,
            buf: Vec::new(),
            start: 0,
            filled: 0,
            bytes_read: 0,
        }
    }

    /// Makes at least `n` bytes available from `start`; false if the file ends first.
    fn fill(&mut self, n: usize) -> io::Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        let want = n.max(BLOCK);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        while self.filled < n {
            let file_off = self.pos + self.filled as u64;
            let left_in_file = self.end.saturating_sub(file_off);
            let room = (self.buf.len() - self.filled) as u64;
            let take = room.min(left_in_file) as usize;
            if take == 0 {
                return Ok(false);
            }
            let got = match self
                .file
                .read_at(&mut self.buf[self.filled..self.filled + take], file_off)
            {
                Ok(0) => return Ok(false),
                Ok(g) => g,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.filled += got;
            self.bytes_read += got as u64;
        }
        Ok(true)
    }

    pub(crate) fn next(&mut self) -> io::Result<Step<'_>> {
        loop {
            let offset = self.pos;
            if offset >= self.end {
                return Ok(Step::Eof);
            }
            let avail = self.filled - self.start;
            let size = frame_size(&self.buf[self.start..self.filled]);
            let need = match size {
                Size::Bad(reason) => return Ok(Step::Bad { offset, reason }),
                Size::Need(n) => n,
                Size::Known(n) if n > avail => n,
                Size::Known(n) => {
                    let s = self.start;
                    self.start += n;
                    self.pos += n as u64;
                    return Ok(match decode(&self.buf[s..s + n]) {
                        Ok(rec) => Step::Record {
                            rec,
                            offset,
                            size: n as u64,
                        },
                        Err(reason) => Step::Bad { offset, reason },
                    });
                }
            };
            if need as u64 > self.end - offset {
                return Ok(Step::Bad {
                    offset,
                    reason: "record runs past the end of the file (torn write)",
                });
            }
            if !self.fill(need)? {
                return Ok(Step::Bad {
                    offset,
                    reason: "file ended inside a record (torn write)",
                });
            }
        }
    }
}
