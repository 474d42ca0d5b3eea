//! What a path does to a packet, and the queue that holds packets until they are due.
//!
//! Pure: the time and the random draws are arguments, so every rule is tested without sockets
//! or clocks. The forwarder (`forward.rs`) calls [`admit`] once per packet read and keeps one
//! [`DelayQueue`] for all packets in flight.
//!
//! The model of one direction of a path, in this order:
//! 1. **loss**: the packet is dropped with probability `loss` (independent draws);
//! 2. **bottleneck** (when `rate_bps` is set): packets leave one after another at the rate; one
//!    that would wait longer than `queue` for its turn is dropped (drop-tail), so a sender that
//!    overruns the rate sees loss and queueing delay as behind a real bottleneck;
//! 3. **propagation**: the packet is delivered `delay` (half the RTT) after it left.
//!
//! Packets of one direction of one path are never reordered: they arrive in order, the
//! bottleneck serves them in order, and the delay is constant, so their due times never go
//! down; the queue breaks ties in arrival order.
//!
//! Why one heap for all packets and not a timer per packet: a push and a pop cost O(log n)
//! comparisons and no allocation beyond the heap's own growth, and the forwarder sleeps until
//! exactly one deadline, the earliest.

use crate::spec::Link;
use rand::Rng;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// The state of one direction of a path: when its bottleneck is free again.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkState {
    busy_until: Option<Instant>,
}

/// What happens to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it at this time.
    Deliver(Instant),
    /// Dropped by the path's random loss.
    Lost,
    /// Dropped because the bottleneck's queue is full.
    QueueFull,
}

/// Decide the fate of a packet of `len` bytes entering `link` at `now`.
pub fn admit(
    link: &Link,
    state: &mut LinkState,
    len: usize,
    now: Instant,
    rng: &mut impl Rng,
) -> Verdict {
    if link.loss > 0.0 && rng.random::<f64>() < link.loss {
        return Verdict::Lost;
    }
    let left = match link.rate_bps {
        None => now,
        Some(rate) => {
            let start = state.busy_until.map_or(now, |b| b.max(now));
            if start - now > link.queue {
                return Verdict::QueueFull;
            }
            let nanos = (len as u128 * 8 * 1_000_000_000).div_ceil(u128::from(rate.max(1)));
            let end = start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
            state.busy_until = Some(end);
            end
        }
    };
    Verdict::Deliver(left + link.delay)
}

struct Slot<T> {
    due: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Slot<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl<T> Eq for Slot<T> {}
impl<T> PartialOrd for Slot<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Slot<T> {
    // Reversed: BinaryHeap is a max-heap, the earliest due (then the first pushed) comes first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// Items waiting for their due time; equal times come out in the order they went in.
pub struct DelayQueue<T> {
    heap: BinaryHeap<Slot<T>>,
    seq: u64,
}

impl<T> std::fmt::Debug for DelayQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayQueue")
            .field("len", &self.heap.len())
            .field("next_due", &self.next_due())
            .finish()
    }
}

impl<T> Default for DelayQueue<T> {
    fn default() -> Self {
        DelayQueue {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<T> DelayQueue<T> {
    /// Add an item; true when it is now the earliest (a sleeper must wake up sooner).
    pub fn push(&mut self, due: Instant, item: T) -> bool {
        let earliest = self.next_due().is_none_or(|d| due < d);
        self.seq += 1;
        self.heap.push(Slot {
            due,
            seq: self.seq,
            item,
        });
        earliest
    }

    /// The earliest item if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.heap.peek()?.due <= now {
            self.heap.pop().map(|s| s.item)
        } else {
            None
        }
    }

    /// When the earliest item is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|s| s.due)
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Remove everything.
    pub fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.heap.drain().map(|s| s.item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn link(delay_ms: u64, loss: f64, rate_bps: Option<u64>, queue_ms: u64) -> Link {
        Link {
            delay: Duration::from_millis(delay_ms),
            loss,
            rate_bps,
            queue: Duration::from_millis(queue_ms),
        }
    }

    #[test]
    fn without_a_bottleneck_a_packet_is_due_one_delay_later() {
        let l = link(40, 0.0, None, 100);
        let mut st = LinkState::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let t0 = Instant::now();
        for k in 0..100u64 {
            let now = t0 + Duration::from_micros(k);
            assert_eq!(
                admit(&l, &mut st, 1500, now, &mut rng),
                Verdict::Deliver(now + Duration::from_millis(40))
            );
        }
    }

    #[test]
    fn loss_drops_about_the_configured_share_and_all_when_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let t0 = Instant::now();
        let l = link(5, 0.1, None, 100);
        let mut st = LinkState::default();
        let lost = (0..20_000)
            .filter(|_| admit(&l, &mut st, 100, t0, &mut rng) == Verdict::Lost)
            .count();
        assert!(
            (1_600..2_400).contains(&lost),
            "{lost} of 20000 lost at 10 %"
        );
        let dead = link(5, 1.0, None, 100);
        assert!((0..1000).all(|_| admit(&dead, &mut st, 100, t0, &mut rng) == Verdict::Lost));
    }

    #[test]
    fn a_bottleneck_spaces_packets_at_its_rate_and_drops_past_its_queue() {
        // 1 Mbit/s: a 1250-byte packet takes 10 ms to leave; the queue holds 25 ms.
        let l = link(20, 0.0, Some(1_000_000), 25);
        let mut st = LinkState::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let burst: Vec<Verdict> = (0..5)
            .map(|_| admit(&l, &mut st, 1250, t0, &mut rng))
            .collect();
        assert_eq!(
            burst,
            vec![
                Verdict::Deliver(t0 + ms(30)),
                Verdict::Deliver(t0 + ms(40)),
                Verdict::Deliver(t0 + ms(50)),
                // waits 30 ms > 25 ms: dropped, and it does not occupy the bottleneck
                Verdict::QueueFull,
                Verdict::QueueFull,
            ]
        );
        // Once drained, the bottleneck is free again.
        let later = t0 + ms(100);
        assert_eq!(
            admit(&l, &mut st, 1250, later, &mut rng),
            Verdict::Deliver(later + ms(30))
        );
    }

    #[test]
    fn the_queue_gives_items_in_due_order_and_ties_in_arrival_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = DelayQueue::default();
        assert!(q.push(t0 + ms(50), "c"));
        assert!(q.push(t0 + ms(10), "a"));
        assert!(!q.push(t0 + ms(10), "b"));
        assert!(!q.push(t0 + ms(60), "d"));
        assert_eq!(q.next_due(), Some(t0 + ms(10)));
        assert_eq!(q.pop_due(t0 + ms(9)), None);
        assert_eq!(q.pop_due(t0 + ms(10)), Some("a"));
        assert_eq!(q.pop_due(t0 + ms(10)), Some("b"));
        assert_eq!(q.pop_due(t0 + ms(10)), None);
        assert_eq!(q.pop_due(t0 + ms(100)), Some("c"));
        assert_eq!(q.len(), 1);
        assert_eq!(q.drain().collect::<Vec<_>>(), vec!["d"]);
        assert!(q.is_empty());
    }
}
