//! The forwarder: reads every packet a host sends into its link, applies the path's loss,
//! bottleneck and delay, and writes it into the destination host's link when it is due.
//!
//! Threads, not tasks: one reader per host (poll, then read until the device is empty) and one
//! writer for the whole bed. A reader decides a packet's fate at once ([`crate::shape::admit`])
//! and puts it, copied into a pooled buffer, in the one [`DelayQueue`]; it wakes the writer only
//! when the packet is due before everything already queued. The writer sleeps on a condition
//! variable until the earliest due time — a futex timeout, accurate to tens of microseconds,
//! where an async runtime's timer wheel would round every hop up to the next millisecond — then
//! writes what is due, outside the lock.
//!
//! Limits, each counted in [`Stats`] when it bites: packets in flight are capped at
//! [`MAX_QUEUED_BYTES`] (an overflow drops); a packet whose source address is not its host's is
//! dropped (`spoofed`); one to an address no host has is dropped (`unroutable`: a connection to
//! it times out, as into a black hole — no ICMP is made up).
//!
//! Shutting down: the stop flag is seen by readers within [`POLL`] and by the writer at once
//! (it is woken); packets still queued are dropped. The devices close when the threads are
//! joined, and a TUN device that is not persistent disappears with its last descriptor.

use crate::packet::{self, PacketError};
use crate::shape::{self, DelayQueue, LinkState, Verdict};
use crate::spec::{Link, Spec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The most packet bytes held in flight across the bed.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// How long a reader waits for a packet before it looks at the stop flag again.
pub const POLL: Duration = Duration::from_millis(100);
/// Spare buffers kept for reuse.
const POOL_MAX: usize = 4096;

/// What happened on one direction of one path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathCounters {
    /// Packets written into the destination's link, and their bytes.
    pub delivered_packets: u64,
    pub delivered_bytes: u64,
    /// Dropped by the path's random loss.
    pub lost: u64,
    /// Dropped because the path's bottleneck queue was full.
    pub queue_full: u64,
    /// Dropped because the forwarder held [`MAX_QUEUED_BYTES`] already.
    pub overflow: u64,
    /// Writes into the destination's link that failed.
    pub write_errors: u64,
}

/// What a host sent that could not be forwarded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCounters {
    /// Packets that were not IPv4 (IPv6 from the host's kernel, typically).
    pub not_ipv4: u64,
    /// IPv4 packets with a broken header.
    pub malformed: u64,
    /// Packets whose source address was not the host's.
    pub spoofed: u64,
    /// Packets to an address that no host has (or to the host itself).
    pub unroutable: u64,
    /// Reads from the host's link that failed.
    pub read_errors: u64,
}

/// A snapshot of the forwarder's counters.
#[derive(Debug, Clone)]
pub struct Stats {
    names: Vec<String>,
    paths: Vec<PathCounters>,
    hosts: Vec<HostCounters>,
}

impl Stats {
    fn new(names: Vec<String>) -> Stats {
        let n = names.len();
        Stats {
            names,
            paths: vec![PathCounters::default(); n * n],
            hosts: vec![HostCounters::default(); n],
        }
    }

    fn idx(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The counters of the direction `from` → `to`.
    pub fn path(&self, from: &str, to: &str) -> Option<&PathCounters> {
        let (a, b) = (self.idx(from)?, self.idx(to)?);
        self.paths.get(a * self.names.len() + b)
    }

    /// What host `name` sent that could not be forwarded.
    pub fn host(&self, name: &str) -> Option<&HostCounters> {
        self.hosts.get(self.idx(name)?)
    }

    /// Every direction that carried or dropped something: (from, to, counters).
    pub fn paths(&self) -> impl Iterator<Item = (&str, &str, &PathCounters)> {
        let n = self.names.len();
        self.paths
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != PathCounters::default())
            .map(move |(k, c)| (self.names[k / n].as_str(), self.names[k % n].as_str(), c))
    }

    /// Every host with its counters.
    pub fn hosts(&self) -> impl Iterator<Item = (&str, &HostCounters)> {
        self.names.iter().map(String::as_str).zip(self.hosts.iter())
    }
}

struct Packet {
    from: usize,
    to: usize,
    data: Vec<u8>,
}

struct Core {
    queue: DelayQueue<Packet>,
    links: Vec<LinkState>,
    rng: ChaCha8Rng,
    stats: Stats,
    pool: Vec<Vec<u8>>,
    queued_bytes: usize,
}

struct Shared {
    core: Mutex<Core>,
    wake: Condvar,
    stop: AtomicBool,
    devices: Vec<tun::Device>,
    links: Vec<Link>,
    addrs: Vec<Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, usize>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panicking thread leaves counters and a queue, nothing half-updated that matters.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running forwarder; stopping it (or dropping it) closes the hosts' links.
pub struct Forwarder {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("hosts", &self.shared.addrs)
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Forwarder {
    /// Start forwarding between `devices` (index = host index in `spec`).
    pub fn start(spec: &Spec, devices: Vec<tun::Device>) -> std::io::Result<Forwarder> {
        let n = spec.hosts().len();
        assert_eq!(devices.len(), n, "one device per host");
        for d in &devices {
            d.set_nonblock()?;
        }
        let addrs: Vec<Ipv4Addr> = spec.hosts().iter().map(|h| h.address).collect();
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                queue: DelayQueue::default(),
                links: vec![LinkState::default(); n * n],
                rng: ChaCha8Rng::seed_from_u64(spec.seed()),
                stats: Stats::new(spec.hosts().iter().map(|h| h.name.clone()).collect()),
                pool: Vec::new(),
                queued_bytes: 0,
            }),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            devices,
            links: (0..n * n).map(|k| spec.link(k / n, k % n)).collect(),
            by_addr: addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect(),
            addrs,
        });
        let mut f = Forwarder {
            shared,
            threads: Vec::new(),
        };
        let sh = f.shared.clone();
        f.threads.push(
            std::thread::Builder::new()
                .name("wanbed-tx".into())
                .spawn(move || writer(&sh))?,
        );
        for (i, h) in spec.hosts().iter().enumerate() {
            let sh = f.shared.clone();
            let mtu = usize::from(spec.mtu());
            f.threads.push(
                std::thread::Builder::new()
                    .name(format!("wanbed-rx-{}", h.name))
                    .spawn(move || reader(&sh, i, mtu))?,
            );
        }
        Ok(f)
    }

    /// All-zero counters for the hosts of `spec`.
    pub fn empty_stats(spec: &Spec) -> Stats {
        Stats::new(spec.hosts().iter().map(|h| h.name.clone()).collect())
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// Stop all threads and give the final counters. The devices close when `self` is dropped.
    pub fn stop(&mut self) -> Stats {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.lock();
            self.shared.wake.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let mut core = self.shared.lock();
        let Core { queue, .. } = &mut *core;
        queue.drain().for_each(drop);
        core.queued_bytes = 0;
        core.stats.clone()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

fn reader(sh: &Shared, me: usize, mtu: usize) {
    let dev = &sh.devices[me];
    let n = sh.addrs.len();
    // Room for more than the MTU: a packet longer than the buffer would be cut short by read(2).
    let mut buf = vec![0u8; mtu.max(1500) + 256];
    while !sh.stop.load(Ordering::Relaxed) {
        let len = match dev.recv(&mut buf) {
            Ok(len) => len,
            Err(e) if e.kind() == ErrorKind::WouldBlock => match dev.recv_timeout(&mut buf, POLL) {
                Ok(len) => len,
                Err(e) if is_transient(&e) => continue,
                Err(_) => {
                    read_failed(sh, me);
                    continue;
                }
            },
            Err(e) if is_transient(&e) => continue,
            Err(_) => {
                read_failed(sh, me);
                continue;
            }
        };
        let now = Instant::now();
        let p = &buf[..len];
        let to = match packet::ipv4_addrs(p) {
            Ok(a) if a.src != sh.addrs[me] => {
                sh.lock().stats.hosts[me].spoofed += 1;
                continue;
            }
            Ok(a) => match sh.by_addr.get(&a.dst) {
                Some(&to) if to != me => to,
                _ => {
                    sh.lock().stats.hosts[me].unroutable += 1;
                    continue;
                }
            },
            Err(PacketError::NotIpv4(_)) => {
                sh.lock().stats.hosts[me].not_ipv4 += 1;
                continue;
            }
            Err(_) => {
                sh.lock().stats.hosts[me].malformed += 1;
                continue;
            }
        };
        let k = me * n + to;
        let mut guard = sh.lock();
        let core = &mut *guard;
        match shape::admit(&sh.links[k], &mut core.links[k], len, now, &mut core.rng) {
            Verdict::Lost => core.stats.paths[k].lost += 1,
            Verdict::QueueFull => core.stats.paths[k].queue_full += 1,
            Verdict::Deliver(_) if core.queued_bytes + len > MAX_QUEUED_BYTES => {
                core.stats.paths[k].overflow += 1;
            }
            Verdict::Deliver(due) => {
                let mut data = core.pool.pop().unwrap_or_default();
                data.clear();
                data.extend_from_slice(p);
                core.queued_bytes += len;
                if core.queue.push(due, Packet { from: me, to, data }) {
                    sh.wake.notify_one();
                }
            }
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted
    )
}

fn read_failed(sh: &Shared, me: usize) {
    sh.lock().stats.hosts[me].read_errors += 1;
    // A device that keeps failing must not spin a core.
    std::thread::sleep(Duration::from_millis(10));
}

fn writer(sh: &Shared) {
    let n = sh.addrs.len();
    let mut batch: Vec<Packet> = Vec::new();
    let mut done: Vec<(usize, usize, bool)> = Vec::new();
    let mut core = sh.lock();
    loop {
        if sh.stop.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        while let Some(p) = core.queue.pop_due(now) {
            core.queued_bytes -= p.data.len();
            batch.push(p);
        }
        if !batch.is_empty() {
            drop(core);
            for p in &batch {
                let ok = sh.devices[p.to].send(&p.data).is_ok();
                done.push((p.from * n + p.to, p.data.len(), ok));
            }
            core = sh.lock();
            for (k, len, ok) in done.drain(..) {
                let c = &mut core.stats.paths[k];
                if ok {
                    c.delivered_packets += 1;
                    c.delivered_bytes += len as u64;
                } else {
                    c.write_errors += 1;
                }
            }
            for p in batch.drain(..) {
                if core.pool.len() < POOL_MAX {
                    core.pool.push(p.data);
                }
            }
            continue;
        }
        let wait = core
            .queue
            .next_due()
            .map_or(POLL, |due| due.saturating_duration_since(now));
        core = sh
            .wake
            .wait_timeout(core, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}
