//! The broadcasts this node holds, and the live edge every viewer and relay reads from.
//!
//! A [`Stream`] is one **broadcast** of a stream (one go-live: its own log and sequence
//! numbering, see `DESIGN.md`), either **ingested here** (a device pushes it; chunks are appended
//! to the durable [`chunklog::StreamLog`] first) or **relayed** (pulled from the ingest servers
//! and merged; memory only). The hub keys them by (stream id, broadcast id); broadcast ids sort
//! by start time, so the newest broadcast of a stream held here is the last key. Both publish into the same structure: a bounded in-memory *tail* of the
//! most recent chunks plus a `watch` channel carrying the next sequence number, so:
//!
//! - readers are **cursors**, not queues: each viewer keeps its own next sequence number and
//!   pulls chunks when its socket can take them. A slow viewer costs no memory beyond the shared
//!   tail and never slows the stream or other viewers;
//! - a viewer behind the tail reads from the log on disk (ingested streams) or, when it falls
//!   further behind than the configured lag, is skipped forward or cut ([`SlowViewer`]);
//! - there is one upstream pull per relayed stream, whatever the number of local viewers.

use bytes::Bytes;
use chunklog::{Record, StreamLog};
use proto::BroadcastId;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// One chunk of a stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub seq: u64,
    pub pts: i64,
    pub flags: u8,
    pub payload: Bytes,
}

impl From<Record> for Chunk {
    fn from(r: Record) -> Self {
        Self {
            seq: r.seq,
            pts: r.pts,
            flags: r.flags,
            payload: r.payload,
        }
    }
}

/// What to do with a viewer that falls further behind the live edge than allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowViewer {
    /// Jump to the newest keyframe (or the live edge) and go on.
    Skip,
    /// End the viewer's response.
    Cut,
}

/// Where a stream's chunks come from on this node.
#[derive(Debug)]
pub enum Source {
    /// Pushed by a device to this node; durable.
    Ingest(Mutex<StreamLog>),
    /// Pulled from the ingest servers; memory only.
    Relay,
}

#[derive(Debug, Default)]
struct Tail {
    chunks: VecDeque<Chunk>,
    bytes: usize,
}

/// Progress of a stream, as carried by its watch channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    /// The next sequence number the stream will publish.
    pub next_seq: u64,
    /// The final sequence number, once the stream has ended.
    pub ended: Option<u64>,
    /// Set when the stream is gone for good without an END (relay lost every upstream).
    pub lost: bool,
}

/// One broadcast of a stream on this node.
#[derive(Debug)]
pub struct Stream {
    /// The stream id.
    pub name: String,
    /// The broadcast.
    pub broadcast: BroadcastId,
    pub source: Source,
    tail: Mutex<Tail>,
    tail_max_bytes: usize,
    edge: watch::Sender<Edge>,
    /// Incremented by every new ingest session; an older session that sees a newer epoch stops.
    pub epoch: std::sync::atomic::AtomicU64,
    /// Bytes of payload received (ingest) or merged (relay).
    pub bytes_in: std::sync::atomic::AtomicU64,
    /// Ingest: the role of the last session (reported to the director).
    pub role: Mutex<Option<proto::Role>>,
    /// Ingest sessions connected right now.
    pub live_sessions: std::sync::atomic::AtomicU64,
    /// Ingest: when the publisher last sent anything ([`mono_ms`]); a new publish may take over
    /// from one that has been silent for a while (RTMP).
    pub input_at_ms: std::sync::atomic::AtomicU64,
    /// Ingest: wakes a publisher's connection to check whether a newer publish replaced it.
    pub takeover: tokio::sync::Notify,
    /// Ingest: a rejoining dual-path publish's state, for `GET /v1/streams` ([`crate::rejoin`]).
    pub rejoin: Mutex<Option<String>>,
    /// FLV streams (RTMP ingest): the metadata and codec configuration a player needs first,
    /// kept from the chunks as they are published (on relays too).
    pub flv: Mutex<crate::flv::Head>,
    /// Viewers need a playback token (from the ingest token's claims, or the director).
    pub private: std::sync::atomic::AtomicBool,
    /// The director said this broadcast is no longer its stream's current one (the owner went
    /// live again, or the stream was revoked): its sessions end and new ones are refused.
    pub superseded: std::sync::atomic::AtomicBool,
    /// [`mono_ms`] of the last publish, session start or end: idle broadcasts are released.
    pub active_ms: std::sync::atomic::AtomicU64,
    /// Ingest: a heartbeat answered 2xx carried this broadcast's end (it is not reported again).
    pub end_reported: std::sync::atomic::AtomicBool,
    /// Relay: how far its upstreams had got when they answered its pulls (`x-firstmile-next-seq`),
    /// so a packager knows when it has caught up with the history the relay pulls first.
    pub catch_up_to: std::sync::atomic::AtomicU64,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("sequence {from} is no longer held here (oldest held: {first})")]
    Gone { from: u64, first: u64 },
    #[error("log read failed: {0}")]
    Log(#[from] chunklog::LogError),
}

impl Stream {
    pub fn new(
        name: String,
        broadcast: BroadcastId,
        source: Source,
        tail_max_bytes: usize,
    ) -> Arc<Self> {
        let (next_seq, ended) = match &source {
            Source::Ingest(log) => {
                let l = log.lock().unwrap_or_else(|e| e.into_inner());
                (l.next_seq(), l.ended())
            }
            Source::Relay => (0, None),
        };
        let (edge, _) = watch::channel(Edge {
            next_seq,
            ended,
            lost: false,
        });
        Arc::new(Self {
            name,
            broadcast,
            source,
            tail: Mutex::new(Tail::default()),
            tail_max_bytes,
            edge,
            epoch: Default::default(),
            bytes_in: Default::default(),
            role: Mutex::new(None),
            live_sessions: Default::default(),
            input_at_ms: Default::default(),
            takeover: Default::default(),
            rejoin: Default::default(),
            flv: Default::default(),
            private: Default::default(),
            superseded: Default::default(),
            active_ms: std::sync::atomic::AtomicU64::new(mono_ms()),
            end_reported: Default::default(),
            catch_up_to: Default::default(),
        })
    }

    /// Note activity (publish, session start or end) for the release of idle broadcasts.
    pub fn touch(&self) {
        self.active_ms
            .store(mono_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_private(&self) -> bool {
        self.private.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_superseded(&self) -> bool {
        self.superseded.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn edge(&self) -> Edge {
        *self.edge.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Edge> {
        self.edge.subscribe()
    }

    pub fn is_ingest(&self) -> bool {
        matches!(self.source, Source::Ingest(_))
    }

    /// Publish chunks that are now in order after the current edge (caller guarantees
    /// contiguity: `chunks[0].seq == edge.next_seq`).
    pub fn publish(&self, chunks: impl IntoIterator<Item = Chunk>) {
        let mut last = None;
        {
            let mut t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            let mut head = self.flv.lock().unwrap_or_else(|e| e.into_inner());
            for c in chunks {
                head.observe(&c.payload);
                last = Some(c.seq);
                self.bytes_in
                    .fetch_add(c.payload.len() as u64, std::sync::atomic::Ordering::Relaxed);
                t.bytes += c.payload.len();
                t.chunks.push_back(c);
            }
            while t.bytes > self.tail_max_bytes && t.chunks.len() > 1 {
                if let Some(old) = t.chunks.pop_front() {
                    t.bytes -= old.payload.len();
                }
            }
        }
        if let Some(seq) = last {
            self.edge
                .send_modify(|e| e.next_seq = e.next_seq.max(seq.saturating_add(1)));
            self.touch();
        }
    }

    /// Relay only: put older chunks, contiguous with the tail's front, before it (catch-up
    /// viewers asked for data from before the relay started). Returns how many were added.
    pub fn prepend(&self, chunks: Vec<Chunk>) -> usize {
        let mut t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let Some(front) = t.chunks.front().map(|c| c.seq) else {
            return 0;
        };
        let mut added = 0;
        for c in chunks.into_iter().rev() {
            let expected = front.saturating_sub(added as u64);
            if c.seq.checked_add(1) != Some(expected)
                || t.bytes + c.payload.len() > self.tail_max_bytes
            {
                break;
            }
            t.bytes += c.payload.len();
            t.chunks.push_front(c);
            added += 1;
        }
        added
    }

    /// Relay only: the first sequence number the merged stream starts at (before any chunk).
    pub fn set_start(&self, seq: u64) {
        self.edge.send_modify(|e| {
            if e.next_seq == 0 {
                e.next_seq = seq;
            }
        });
    }

    pub fn end(&self, final_seq: u64) {
        self.edge.send_modify(|e| e.ended = Some(final_seq));
    }

    pub fn lose(&self) {
        self.edge.send_modify(|e| e.lost = true);
    }

    /// Oldest sequence number readable here.
    pub fn first_seq(&self) -> u64 {
        match &self.source {
            Source::Ingest(log) => log.lock().unwrap_or_else(|e| e.into_inner()).first_seq(),
            Source::Relay => {
                let t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
                t.chunks.front().map_or(self.edge().next_seq, |c| c.seq)
            }
        }
    }

    /// Sequence number of the newest keyframe in the tail, if any.
    pub fn latest_keyframe(&self) -> Option<u64> {
        let t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        t.chunks
            .iter()
            .rev()
            .find(|c| c.flags & proto::DataFlags::KEYFRAME.bits() != 0)
            .map(|c| c.seq)
    }

    /// First sequence number whose pts is at or after `pts`.
    pub fn seek_pts(&self, pts: i64) -> Option<u64> {
        {
            let t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            if t.chunks.front().is_some_and(|c| c.pts <= pts) {
                return t.chunks.iter().find(|c| c.pts >= pts).map(|c| c.seq);
            }
        }
        match &self.source {
            Source::Ingest(log) => log.lock().unwrap_or_else(|e| e.into_inner()).seek_time(pts),
            Source::Relay => None,
        }
    }

    /// pts of the newest chunk in the tail.
    pub fn latest_pts(&self) -> Option<i64> {
        let t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        t.chunks.back().map(|c| c.pts)
    }

    /// Up to `max_bytes` (at least one chunk) of chunks from `from` on, from memory when the
    /// tail holds them, else from the log. Empty when `from` is at the live edge.
    pub fn read(&self, from: u64, max_bytes: usize) -> Result<Vec<Chunk>, ReadError> {
        {
            let t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(front) = t.chunks.front()
                && from >= front.seq
            {
                let start = (from - front.seq) as usize;
                let mut out = Vec::new();
                let mut bytes = 0;
                for c in t.chunks.iter().skip(start) {
                    if !out.is_empty() && bytes + c.payload.len() > max_bytes {
                        break;
                    }
                    bytes += c.payload.len();
                    out.push(c.clone());
                }
                return Ok(out);
            }
        }
        if from >= self.edge().next_seq {
            return Ok(Vec::new());
        }
        match &self.source {
            Source::Ingest(log) => {
                let log = log.lock().unwrap_or_else(|e| e.into_inner());
                if from < log.first_seq() {
                    return Err(ReadError::Gone {
                        from,
                        first: log.first_seq(),
                    });
                }
                Ok(log
                    .read(from, 1024, max_bytes.max(1))?
                    .into_iter()
                    .map(Chunk::from)
                    .collect())
            }
            Source::Relay => Err(ReadError::Gone {
                from,
                first: self.first_seq(),
            }),
        }
    }
}

/// The key of a broadcast in the hub.
pub type Key = (String, BroadcastId);

/// Every broadcast on this node: those ingested here and those relayed here. A broadcast can be
/// in both for a while — a node relaying it to its viewers can become one of its ingest servers
/// (a replacement the director picked); the relay then serves its existing viewers until they
/// leave, while new viewers and other nodes' relays read the ingested copy.
#[derive(Debug, Default)]
pub struct Hub {
    ingest: Mutex<BTreeMap<Key, Arc<Stream>>>,
    relay: Mutex<BTreeMap<Key, Arc<Stream>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(name: &str, b: &BroadcastId) -> Key {
    (name.to_string(), b.clone())
}

impl Hub {
    /// The broadcast for a viewer: the ingested copy if there is one, else the relay.
    pub fn get(&self, name: &str, b: &BroadcastId) -> Option<Arc<Stream>> {
        self.get_ingest(name, b)
            .or_else(|| lock(&self.relay).get(&key(name, b)).cloned())
    }

    pub fn get_ingest(&self, name: &str, b: &BroadcastId) -> Option<Arc<Stream>> {
        lock(&self.ingest).get(&key(name, b)).cloned()
    }

    /// The newest broadcast of `name` ingested here (ids sort by start time).
    pub fn latest_ingest(&self, name: &str) -> Option<Arc<Stream>> {
        let g = lock(&self.ingest);
        g.range((name.to_string(), BroadcastId::parse("0").expect("literal"))..)
            .take_while(|((n, _), _)| n == name)
            .last()
            .map(|(_, s)| s.clone())
    }

    pub fn is_current_relay(&self, s: &Arc<Stream>) -> bool {
        lock(&self.relay)
            .get(&key(&s.name, &s.broadcast))
            .is_some_and(|x| Arc::ptr_eq(x, s))
    }

    /// The relayed broadcast, or the one `make` creates (under the lock: exactly one is created).
    pub fn relay_or_insert_with(
        &self,
        name: &str,
        b: &BroadcastId,
        make: impl FnOnce() -> Arc<Stream>,
    ) -> (Arc<Stream>, bool) {
        let mut m = lock(&self.relay);
        if let Some(s) = m.get(&key(name, b)) {
            return (s.clone(), false);
        }
        let s = make();
        m.insert(key(name, b), s.clone());
        (s, true)
    }

    /// Register an ingested broadcast (replacing nothing: callers check first, under their own
    /// serialisation).
    pub fn insert_ingest(&self, s: Arc<Stream>) {
        lock(&self.ingest).insert(key(&s.name, &s.broadcast), s);
    }

    /// Remove the relay of `s`'s key if it is still exactly `s`.
    pub fn remove_relay(&self, s: &Arc<Stream>) {
        let mut m = lock(&self.relay);
        let k = key(&s.name, &s.broadcast);
        if m.get(&k).is_some_and(|x| Arc::ptr_eq(x, s)) {
            m.remove(&k);
        }
    }

    /// Forget an ingested broadcast if it is still exactly `s` (its log closes when the last
    /// reader lets go).
    pub fn remove_ingest(&self, s: &Arc<Stream>) -> bool {
        let mut m = lock(&self.ingest);
        let k = key(&s.name, &s.broadcast);
        if m.get(&k).is_some_and(|x| Arc::ptr_eq(x, s)) {
            m.remove(&k);
            return true;
        }
        false
    }

    /// Broadcasts ingested here.
    pub fn ingested(&self) -> Vec<Arc<Stream>> {
        lock(&self.ingest).values().cloned().collect()
    }

    /// Number of broadcasts held (ingested, relayed).
    pub fn counts(&self) -> (usize, usize) {
        (lock(&self.ingest).len(), lock(&self.relay).len())
    }

    /// Every broadcast object: ingested, then relayed.
    pub fn all(&self) -> Vec<Arc<Stream>> {
        let mut v = self.ingested();
        v.extend(lock(&self.relay).values().cloned());
        v
    }
}

/// Milliseconds on this process's monotonic clock (for [`Stream::input_at_ms`]).
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis()
        .try_into()
        .unwrap_or(u64::MAX)
}
