//! Reading a stream live: the cursor every viewer, WebSocket viewer and relay feed is built on.
//!
//! A [`Cursor`] holds one reader's position. It reads from the stream's in-memory tail, falls
//! back to the log on disk for catch-up, waits on the stream's edge when it is caught up, and ends
//! when the stream ends (or is lost). It enforces the slow-viewer rule: a reader further behind
//! the live edge than `max_viewer_lag_bytes` (estimated from the stream's mean chunk size) is
//! skipped to the newest keyframe (or the live edge), or cut.

use crate::hub::{Chunk, ReadError, SlowViewer, Stream};
use std::sync::Arc;
use tokio::sync::watch;

/// Where a reader starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum From {
    /// The newest keyframe in memory, else the next chunk to arrive.
    Live,
    /// The oldest chunk held.
    Start,
    /// A sequence number.
    Seq(u64),
    /// The first chunk whose pts is at or after this (µs).
    Pts(i64),
    /// This many seconds before the live edge (by pts).
    Back(u64),
}

impl std::str::FromStr for From {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || {
            format!(
                "from={s:?}: accepted values are live, start, a sequence number (1234), \
                 time:PTS_US (time:5000000) or -SECONDSs (-30s)"
            )
        };
        match s {
            "" | "live" => Ok(Self::Live),
            "start" => Ok(Self::Start),
            _ => {
                if let Some(p) = s.strip_prefix("time:") {
                    p.parse().map(Self::Pts).map_err(|_| bad())
                } else if let Some(b) = s.strip_prefix('-').and_then(|b| b.strip_suffix('s')) {
                    b.parse().map(Self::Back).map_err(|_| bad())
                } else {
                    s.parse().map(Self::Seq).map_err(|_| bad())
                }
            }
        }
    }
}

/// How a cursor stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The stream ended; everything up to its final chunk was delivered.
    Ended,
    /// The stream is gone without an end (every upstream lost).
    Lost,
    /// This reader was too slow and was cut.
    Cut,
    /// The data at the cursor is no longer held and the policy is to cut.
    Gone(String),
    /// The log could not be read.
    Failed(String),
}

/// One reader's position in a stream.
#[derive(Debug)]
pub struct Cursor {
    stream: Arc<Stream>,
    rx: watch::Receiver<crate::hub::Edge>,
    next: u64,
    pending: std::collections::VecDeque<Chunk>,
    max_lag_bytes: u64,
    policy: SlowViewer,
    /// Times this reader was skipped forward.
    pub skipped: u64,
}

impl Cursor {
    pub fn new(stream: Arc<Stream>, from: From, max_lag_bytes: u64, policy: SlowViewer) -> Self {
        let edge = stream.edge();
        let next = match from {
            From::Live => stream.latest_keyframe().unwrap_or(edge.next_seq),
            From::Start => stream.first_seq(),
            From::Seq(s) => s,
            From::Pts(p) => stream.seek_pts(p).unwrap_or(edge.next_seq),
            From::Back(secs) => match stream.latest_pts() {
                Some(latest) => stream
                    .seek_pts(
                        latest.saturating_sub(
                            i64::try_from(secs)
                                .unwrap_or(i64::MAX)
                                .saturating_mul(1_000_000),
                        ),
                    )
                    .unwrap_or(edge.next_seq),
                None => edge.next_seq,
            },
        };
        let rx = stream.subscribe();
        Self {
            stream,
            rx,
            next,
            pending: Default::default(),
            max_lag_bytes,
            policy,
            skipped: 0,
        }
    }

    /// The sequence number this cursor delivers next.
    pub fn position(&self) -> u64 {
        self.pending.front().map_or(self.next, |c| c.seq)
    }

    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    fn lag_bytes(&self, edge: u64) -> u64 {
        let behind = edge.saturating_sub(self.next);
        if behind == 0 {
            return 0;
        }
        let total = self
            .stream
            .bytes_in
            .load(std::sync::atomic::Ordering::Relaxed);
        let n = edge.max(1);
        behind.saturating_mul(total / n)
    }

    fn skip_forward(&mut self) {
        let edge = self.stream.edge().next_seq;
        self.next = self
            .stream
            .latest_keyframe()
            .filter(|k| *k >= self.next)
            .unwrap_or(edge);
        self.pending.clear();
        self.skipped += 1;
    }

    /// The next chunk, waiting for it if need be; `Err(stop)` when the reader is done.
    pub async fn next(&mut self) -> Result<Chunk, Stop> {
        loop {
            if let Some(c) = self.pending.pop_front() {
                return Ok(c);
            }
            let edge = *self.rx.borrow_and_update();
            if edge.next_seq > self.next && self.lag_bytes(edge.next_seq) > self.max_lag_bytes {
                match self.policy {
                    SlowViewer::Skip => self.skip_forward(),
                    SlowViewer::Cut => return Err(Stop::Cut),
                }
            }
            match self.stream.read(self.next, 256 * 1024) {
                Ok(chunks) if !chunks.is_empty() => {
                    self.next = chunks.last().map_or(self.next, |c| c.seq.saturating_add(1));
                    self.pending.extend(chunks);
                    continue;
                }
                Ok(_) => {}
                Err(ReadError::Gone { from, first }) => match self.policy {
                    SlowViewer::Skip => {
                        self.next = first.max(from);
                        if self
                            .stream
                            .read(self.next, 1)
                            .map(|c| c.is_empty())
                            .unwrap_or(true)
                        {
                            self.skip_forward();
                        }
                        continue;
                    }
                    SlowViewer::Cut => {
                        return Err(Stop::Gone(format!(
                            "sequence {from} is no longer held (oldest held: {first})"
                        )));
                    }
                },
                Err(ReadError::Log(e)) => return Err(Stop::Failed(e.to_string())),
            }
            // Caught up with an ended broadcast (also one ended empty, at `u64::MAX`).
            if let Some(f) = edge.ended
                && (self.next > f || (self.next >= edge.next_seq && f == u64::MAX))
            {
                return Err(Stop::Ended);
            }
            if edge.lost {
                return Err(Stop::Lost);
            }
            if self.rx.changed().await.is_err() {
                return Err(Stop::Lost);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_parses_every_form_and_explains_errors() {
        assert_eq!("live".parse::<From>(), Ok(From::Live));
        assert_eq!("start".parse::<From>(), Ok(From::Start));
        assert_eq!("42".parse::<From>(), Ok(From::Seq(42)));
        assert_eq!("time:5000".parse::<From>(), Ok(From::Pts(5000)));
        assert_eq!("-30s".parse::<From>(), Ok(From::Back(30)));
        // Hostile values parse but cannot overflow the arithmetic (see Cursor::new).
        assert_eq!(
            format!("-{}s", u64::MAX).parse::<From>(),
            Ok(From::Back(u64::MAX))
        );
        let e = "yesterday".parse::<From>().unwrap_err();
        assert!(e.contains("accepted values"), "{e}");
    }
}

#[cfg(test)]
mod slow_viewer_tests {
    use super::*;
    use crate::hub::{Source, Stream};
    use bytes::Bytes;

    fn chunk(seq: u64) -> Chunk {
        Chunk {
            seq,
            pts: seq as i64 * 1000,
            flags: if seq.is_multiple_of(10) {
                proto::DataFlags::KEYFRAME.bits()
            } else {
                0
            },
            payload: Bytes::from(vec![b'x'; 1000]),
        }
    }

    fn stream_with(n: u64) -> Arc<Stream> {
        let s = Stream::new(
            "s".into(),
            proto::BroadcastId::parse("b1").unwrap(),
            Source::Relay,
            1 << 20,
        );
        s.set_start(0);
        s.publish((0..n).map(chunk));
        s
    }

    #[tokio::test]
    async fn a_viewer_too_far_behind_is_skipped_to_the_newest_keyframe() {
        let s = stream_with(100);
        let mut c = Cursor::new(s.clone(), From::Start, 20_000, SlowViewer::Skip);
        // 100 chunks of 1000 bytes behind, 20 kB allowed: skipped to keyframe 90.
        let first = c.next().await.unwrap();
        assert_eq!(first.seq, 90);
        assert_eq!(c.skipped, 1);
        for want in 91..100 {
            assert_eq!(c.next().await.unwrap().seq, want);
        }
    }

    #[tokio::test]
    async fn a_viewer_too_far_behind_is_cut_when_so_configured() {
        let s = stream_with(100);
        let mut c = Cursor::new(s, From::Start, 20_000, SlowViewer::Cut);
        assert_eq!(c.next().await, Err(Stop::Cut));
    }

    #[tokio::test]
    async fn a_viewer_within_the_lag_gets_everything_then_the_end() {
        let s = stream_with(10);
        let mut c = Cursor::new(s.clone(), From::Start, 1 << 20, SlowViewer::Cut);
        for want in 0..10 {
            assert_eq!(c.next().await.unwrap().seq, want);
        }
        s.end(9);
        assert_eq!(c.next().await, Err(Stop::Ended));
    }

    #[tokio::test]
    async fn a_lost_stream_ends_its_viewers_instead_of_hanging() {
        let s = stream_with(3);
        let mut c = Cursor::new(s.clone(), From::Live, 1 << 20, SlowViewer::Skip);
        // From::Live starts at the newest keyframe (0 here) and delivers what follows.
        assert_eq!(c.next().await.unwrap().seq, 0);
        let waiter = tokio::spawn(async move {
            let mut c = c;
            let mut seqs = Vec::new();
            loop {
                match c.next().await {
                    Ok(ch) => seqs.push(ch.seq),
                    Err(stop) => return (seqs, stop),
                }
            }
        });
        s.lose();
        let (seqs, stop) = waiter.await.unwrap();
        assert_eq!(seqs, vec![1, 2]);
        assert_eq!(stop, Stop::Lost);
    }
}
