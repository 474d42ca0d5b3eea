//! Cutting the source's bytes into chunks (pure: the clock is an argument).
//!
//! **Rule.** A chunk is cut when `max` bytes are buffered, or when the oldest buffered byte has
//! waited `window` (so latency stays near the window at low bitrates), or at end of input. For
//! MPEG-TS input (detected by a sync byte 0x47 at offsets 0 and 188, or forced) a window cut
//! takes whole 188-byte packets only and leaves the rest for the next chunk; size cuts are
//! multiples of 188 too. End of input flushes everything, aligned or not.

use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::time::Instant;

/// MPEG-TS packet size.
pub const TS_PACKET: usize = 188;

/// How chunk boundaries are aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Align {
    /// MPEG-TS when the first bytes look like it, else none.
    #[default]
    Auto,
    /// Any byte boundary.
    None,
    /// 188-byte MPEG-TS packets.
    Ts,
}

/// Buffers input and cuts chunks; see the module docs.
#[derive(Debug)]
pub struct Chunker {
    buf: BytesMut,
    max: usize,
    window: Duration,
    align: Align,
    first_at: Option<Instant>,
}

impl Chunker {
    /// A chunker cutting at most `max` bytes (at least one TS packet), waiting at most `window`.
    pub fn new(max: usize, window: Duration, align: Align) -> Self {
        Chunker {
            buf: BytesMut::new(),
            max: max.max(TS_PACKET),
            window,
            align,
            first_at: None,
        }
    }

    /// Bytes buffered.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Adds input that arrived at `now`.
    pub fn feed(&mut self, data: &[u8], now: Instant) {
        if data.is_empty() {
            return;
        }
        if self.buf.is_empty() {
            self.first_at = Some(now);
        }
        self.buf.extend_from_slice(data);
        if self.align == Align::Auto && self.buf.len() > TS_PACKET {
            self.align = if self.buf[0] == 0x47 && self.buf[TS_PACKET] == 0x47 {
                Align::Ts
            } else {
                Align::None
            };
        }
    }

    fn unit(&self) -> usize {
        if self.align == Align::Ts {
            TS_PACKET
        } else {
            1
        }
    }

    /// When the window of the buffered bytes ends (`None`: nothing to cut on time).
    pub fn deadline(&self) -> Option<Instant> {
        if self.buf.len() < self.unit() {
            return None;
        }
        self.first_at.map(|t| t + self.window)
    }

    /// The next chunk due at `now` (`eof`: flush whatever is left), with the arrival time of
    /// its first byte.
    pub fn take(&mut self, now: Instant, eof: bool) -> Option<(Instant, Bytes)> {
        let first_at = self.first_at?;
        let unit = self.unit();
        let len = if self.buf.len() >= self.max {
            self.max - self.max % unit
        } else if eof {
            self.buf.len()
        } else if now >= first_at + self.window {
            self.buf.len() - self.buf.len() % unit
        } else {
            0
        };
        if len == 0 {
            return None;
        }
        let chunk = self.buf.split_to(len).freeze();
        self.first_at = (!self.buf.is_empty()).then_some(now);
        Some((first_at, chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_size_window_and_eof() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = Chunker::new(200, ms(20), Align::None);
        c.feed(&[1; 150], t0);
        assert_eq!(c.take(t0 + ms(5), false), None);
        assert_eq!(c.deadline(), Some(t0 + ms(20)));
        c.feed(&[2; 100], t0 + ms(6));
        let (at, ch) = c.take(t0 + ms(6), false).unwrap();
        assert_eq!((at, ch.len()), (t0, 200));
        assert_eq!(c.take(t0 + ms(7), false), None);
        let (_, ch) = c.take(t0 + ms(26), false).unwrap();
        assert_eq!(ch.len(), 50);
        assert_eq!(c.deadline(), None);
        c.feed(&[3; 7], t0 + ms(30));
        assert_eq!(c.take(t0 + ms(31), true).map(|(_, b)| b.len()), Some(7));
        assert_eq!(c.take(t0 + ms(99), true), None);
    }

    #[test]
    fn mpeg_ts_is_detected_and_window_cuts_keep_whole_packets() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut ts = vec![0u8; TS_PACKET * 3 + 100];
        for k in 0..4 {
            ts[k * TS_PACKET] = 0x47;
        }
        let mut c = Chunker::new(64 * 1024, ms(20), Align::Auto);
        c.feed(&ts, t0);
        let (_, ch) = c.take(t0 + ms(20), false).unwrap();
        assert_eq!(ch.len(), TS_PACKET * 3);
        assert_eq!(c.buffered(), 100);
        assert_eq!(
            c.deadline(),
            None,
            "less than a packet: wait for more input"
        );
        assert_eq!(c.take(t0 + ms(99), false), None);
        assert_eq!(c.take(t0 + ms(99), true).map(|(_, b)| b.len()), Some(100));
    }

    #[test]
    fn size_cuts_are_packet_multiples_for_ts() {
        let t0 = Instant::now();
        let mut c = Chunker::new(1000, Duration::from_millis(20), Align::Ts);
        c.feed(&[0x47; 2000], t0);
        assert_eq!(c.take(t0, false).map(|(_, b)| b.len()), Some(5 * TS_PACKET));
    }

    #[test]
    fn non_ts_input_is_not_aligned() {
        let t0 = Instant::now();
        let mut c = Chunker::new(64 * 1024, Duration::from_millis(20), Align::Auto);
        c.feed(&[0x47; 150], t0);
        c.feed(&[0x00; 150], t0);
        let (_, ch) = c.take(t0 + Duration::from_millis(20), false).unwrap();
        assert_eq!(ch.len(), 300);
    }
}
