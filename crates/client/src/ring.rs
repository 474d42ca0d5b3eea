//! The ring of chunks not yet acknowledged by every upload path (pure: no I/O, no clock).
//!
//! **What.** [`ChunkRing`] holds consecutive chunks `front_seq..next_seq`, bounded by a byte
//! budget. Chunks enter at the back with the next sequence number; they leave at the front only
//! through [`ChunkRing::trim_to`], which the push core calls with the lowest position any path
//! that still counts has reached. Payloads are [`Bytes`], so handing a chunk to both paths is a
//! reference-count bump, not a copy.
//!
//! **What not.** It does not know about paths or acknowledgements: the retention rule (drop only
//! what every live-or-recoverable path acknowledged) lives in [`crate::core`].

use std::collections::VecDeque;

use bytes::Bytes;
use proto::DataFlags;

/// One chunk of the stream, as it goes out in a DATA frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Sequence number.
    pub seq: u64,
    /// Presentation time in microseconds since the push started (monotonic clock).
    pub pts: i64,
    /// DATA flags (the pusher treats input as opaque bytes: none set).
    pub flags: DataFlags,
    /// The bytes.
    pub payload: Bytes,
}

/// Consecutive chunks `front_seq()..next_seq()`, bounded by a byte budget.
#[derive(Debug, Clone)]
pub struct ChunkRing {
    chunks: VecDeque<Chunk>,
    front: u64,
    bytes: usize,
    cap_bytes: usize,
}

impl ChunkRing {
    /// An empty ring whose first chunk will be `start_seq`, holding at most `cap_bytes` of
    /// payload (one chunk is always accepted into an empty ring, whatever its size).
    pub fn new(start_seq: u64, cap_bytes: usize) -> Self {
        ChunkRing {
            chunks: VecDeque::new(),
            front: start_seq,
            bytes: 0,
            cap_bytes,
        }
    }

    /// Restarts an empty ring at `seq` (used once, when the first WELCOME fixes the stream's
    /// starting sequence number). Returns false, changing nothing, if the ring holds chunks.
    pub fn rebase(&mut self, seq: u64) -> bool {
        if !self.chunks.is_empty() {
            return false;
        }
        self.front = seq;
        true
    }

    /// Sequence number of the oldest chunk held (or of the next one, when empty).
    pub fn front_seq(&self) -> u64 {
        self.front
    }

    /// Sequence number the next pushed chunk gets.
    pub fn next_seq(&self) -> u64 {
        self.front + self.chunks.len() as u64
    }

    /// Number of chunks held.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// True when no chunk is held.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The byte budget.
    pub fn capacity(&self) -> usize {
        self.cap_bytes
    }

    /// Whether a payload of `len` bytes fits now.
    pub fn fits(&self, len: usize) -> bool {
        self.chunks.is_empty() || self.bytes.saturating_add(len) <= self.cap_bytes
    }

    /// Appends a chunk with the next sequence number; gives the payload back if it does not fit.
    pub fn push(&mut self, pts: i64, flags: DataFlags, payload: Bytes) -> Result<u64, Bytes> {
        if !self.fits(payload.len()) {
            return Err(payload);
        }
        let seq = self.next_seq();
        self.bytes += payload.len();
        self.chunks.push_back(Chunk {
            seq,
            pts,
            flags,
            payload,
        });
        Ok(seq)
    }

    /// The chunk with sequence number `seq`, if held.
    pub fn get(&self, seq: u64) -> Option<&Chunk> {
        let i = usize::try_from(seq.checked_sub(self.front)?).ok()?;
        self.chunks.get(i)
    }

    /// Drops every chunk below `seq` (no-op when `seq <= front_seq()`); returns how many.
    pub fn trim_to(&mut self, seq: u64) -> usize {
        let mut n = 0;
        while self.front < seq {
            let Some(c) = self.chunks.pop_front() else {
                // Nothing left: the front still advances so that the ring never offers a
                // sequence number every path already has.
                self.front = seq.min(self.next_seq());
                break;
            };
            self.bytes -= c.payload.len();
            self.front += 1;
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: usize) -> Bytes {
        Bytes::from(vec![7u8; n])
    }

    #[test]
    fn push_get_trim_keep_sequence_numbers_consecutive() {
        let mut r = ChunkRing::new(10, 100);
        assert_eq!(r.push(0, DataFlags::NONE, b(10)), Ok(10));
        assert_eq!(r.push(1, DataFlags::NONE, b(20)), Ok(11));
        assert_eq!(r.push(2, DataFlags::NONE, b(30)), Ok(12));
        assert_eq!((r.front_seq(), r.next_seq(), r.bytes()), (10, 13, 60));
        assert_eq!(r.get(11).map(|c| c.payload.len()), Some(20));
        assert_eq!(r.get(9), None);
        assert_eq!(r.get(13), None);
        assert_eq!(r.trim_to(12), 2);
        assert_eq!((r.front_seq(), r.len(), r.bytes()), (12, 1, 30));
        assert_eq!(r.trim_to(5), 0, "trimming backwards is a no-op");
        assert_eq!(r.trim_to(99), 1);
        assert_eq!((r.front_seq(), r.next_seq()), (13, 13));
    }

    #[test]
    fn the_byte_budget_bounds_the_ring_but_one_chunk_always_fits() {
        let mut r = ChunkRing::new(0, 25);
        assert!(
            r.push(0, DataFlags::NONE, b(40)).is_ok(),
            "empty ring takes any chunk"
        );
        assert_eq!(
            r.push(0, DataFlags::NONE, b(1)).map_err(|p| p.len()),
            Err(1)
        );
        r.trim_to(1);
        assert!(r.push(0, DataFlags::NONE, b(20)).is_ok());
        assert!(r.push(0, DataFlags::NONE, b(5)).is_ok());
        assert!(!r.fits(1));
    }

    #[test]
    fn rebase_only_when_empty() {
        let mut r = ChunkRing::new(0, 100);
        assert!(r.rebase(42));
        assert_eq!(r.push(0, DataFlags::NONE, b(1)), Ok(42));
        assert!(!r.rebase(0));
        assert_eq!(r.front_seq(), 42);
    }
}
