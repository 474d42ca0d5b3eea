//! HLS and LL-HLS on an entry server: one packager per broadcast, built lazily, fed from the
//! broadcast's chunks, released when nobody asks.
//!
//! The packaging itself (segments, parts, numbering, playlists, blocking-reload rules) is the
//! pure `hls` crate; this module is its I/O shell:
//!
//! - **Lazily built.** The first HLS request for a broadcast (playlist, or a segment a CDN sent
//!   here) creates its [`Muxer`]: a task reads the broadcast with a [`Cursor`] from
//!   `hls_window × hls_segment_ms` before the live edge (the tail in memory, else the log) and
//!   pushes every chunk's FLV tag into the packager. On a relay node the cursor reads the merged
//!   stream, so losing either ingest path changes nothing for HLS viewers; the numbering is the
//!   same on every node (see `hls::packager`).
//! - **Released.** The task holds the broadcast (an `Arc` of it) only while HLS viewers come: no
//!   request for `hls_idle_s` and the muxer is dropped, its segments freed, and the broadcast can
//!   be released by the hub like any other (ingest: `release_after_s`; relay: its idle stop).
//! - **Bounded.** A packager keeps at most `2 × hls_window` segments (their parts are slices of
//!   them) and a bounded queue of frames.
//! - **Waiting.** Requests that must wait (a blocking playlist reload, the hinted part, the first
//!   playlist of a broadcast) wait on the muxer's version channel, bounded by the caller.
//!
//! What this is not: a CDN or a cache in front of other nodes; each node packages what it holds.

use crate::hub::{SlowViewer, Stream};
use crate::node::Node;
use crate::viewer::{Cursor, From};
use bytes::Bytes;
use hls::{Config, Flavor, Lookup, Packager, Reload};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Every broadcast packaged on this node: (stream, broadcast) → its muxer.
#[derive(Debug, Default)]
pub struct Hls {
    muxers: Mutex<HashMap<crate::hub::Key, Arc<Muxer>>>,
}

/// One broadcast's packager and what waits on it.
#[derive(Debug)]
pub struct Muxer {
    pub stream: String,
    pub broadcast: proto::BroadcastId,
    /// Viewers need a playback token (from the broadcast when the muxer was made).
    pub private: bool,
    packager: Mutex<Option<Packager>>,
    version: watch::Sender<u64>,
    used_ms: AtomicU64,
    /// The feed has packaged everything the broadcast held when it reached it (the history a
    /// new muxer starts with): a first playlist waits for this, not just for the first part,
    /// or a player would start from a playlist of one part and then see the live edge jump.
    caught_up: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The packaging parameters of this node.
pub fn config(node: &Node) -> Config {
    Config {
        segment_ms: node.cfg.hls_segment_ms,
        part_ms: node.cfg.hls_part_ms,
        window: node.cfg.hls_window,
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Hls {
    /// The muxer of a broadcast if one runs here.
    pub fn get(&self, stream: &str, b: &proto::BroadcastId) -> Option<Arc<Muxer>> {
        let m = lock(&self.muxers)
            .get(&(stream.to_string(), b.clone()))
            .cloned()?;
        m.touch();
        Some(m)
    }

    /// The muxer of `stream`'s broadcast, made (and its feeding task started) if none runs.
    pub fn get_or_start(self: &Arc<Self>, node: &Arc<Node>, stream: &Arc<Stream>) -> Arc<Muxer> {
        let key = (stream.name.clone(), stream.broadcast.clone());
        let mut g = lock(&self.muxers);
        if let Some(m) = g.get(&key) {
            m.touch();
            return m.clone();
        }
        let m = Arc::new(Muxer {
            stream: stream.name.clone(),
            broadcast: stream.broadcast.clone(),
            private: stream.is_private(),
            packager: Mutex::new(None),
            version: watch::channel(0).0,
            used_ms: AtomicU64::new(crate::hub::mono_ms()),
            caught_up: Default::default(),
        });
        g.insert(key, m.clone());
        tracing::debug!(stream = %stream.name, broadcast = %stream.broadcast, "hls packaging");
        tokio::spawn(feed(node.clone(), self.clone(), m.clone(), stream.clone()));
        m
    }

    /// Broadcasts packaged right now.
    pub fn len(&self) -> usize {
        lock(&self.muxers).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remove `m` if it is still the registered muxer and idle; true when removed.
    fn remove_if_idle(&self, m: &Arc<Muxer>, idle_ms: u64) -> bool {
        let mut g = lock(&self.muxers);
        let key = (m.stream.clone(), m.broadcast.clone());
        let same = g.get(&key).is_some_and(|x| Arc::ptr_eq(x, m));
        if same && m.idle_for() >= idle_ms {
            g.remove(&key);
            return true;
        }
        !same
    }
}

impl Muxer {
    fn touch(&self) {
        self.used_ms.store(crate::hub::mono_ms(), Ordering::Relaxed);
    }

    /// Whether the feed has caught up with the broadcast's live edge once (see `caught_up`).
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::SeqCst)
    }

    fn idle_for(&self) -> u64 {
        crate::hub::mono_ms().saturating_sub(self.used_ms.load(Ordering::Relaxed))
    }

    /// Run `f` on the packager (None before the first chunk).
    pub fn with<R>(&self, f: impl FnOnce(Option<&Packager>) -> R) -> R {
        f(lock(&self.packager).as_ref())
    }

    /// Wait until `ready` says yes on the packager, or `deadline`; the last answer.
    pub async fn wait_for<R>(
        &self,
        deadline: tokio::time::Instant,
        mut ready: impl FnMut(Option<&Packager>) -> Option<R>,
    ) -> Option<R> {
        let mut rx = self.version.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(r) = self.with(&mut ready) {
                return Some(r);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
            self.touch();
        }
    }

    /// The playlist, rendered with `uri` (None before the first part).
    pub fn playlist(&self, flavor: Flavor, uri: &dyn Fn(&str) -> String) -> Option<String> {
        self.with(|p| p.and_then(|p| hls::render(p, flavor, uri)))
    }

    /// A blocking reload's state (`Wait` before the first chunk).
    pub fn reload(&self, msn: u64, part: Option<u64>) -> Reload {
        self.with(|p| p.map_or(Reload::Wait, |p| p.reload(msn, part)))
    }

    /// A resource of this broadcast.
    pub fn lookup(&self, r: hls::Resource) -> Lookup {
        self.with(|p| lookup_in(p, r))
    }

    fn publish(&self, v: u64) {
        self.version.send_replace(v);
    }
}

/// A resource in a packager (`Pending` before the first chunk). For use inside
/// [`Muxer::with`]/[`Muxer::wait_for`], which hold the packager's lock: calling
/// [`Muxer::lookup`] there would lock it twice.
pub fn lookup_in(p: Option<&Packager>, r: hls::Resource) -> Lookup {
    let Some(p) = p else {
        return Lookup::Pending;
    };
    match r {
        hls::Resource::Init(id) => p.init(id).map_or(Lookup::Missing, Lookup::Ready),
        hls::Resource::Segment(msn) => p.segment(msn),
        hls::Resource::Part(msn, i) => p.part(msn, i),
        hls::Resource::Gap(_) => Lookup::Missing,
    }
}

/// Feed one broadcast's packager until the broadcast ends (or is lost), then keep its segments
/// until nobody has asked for `hls_idle_s`.
async fn feed(node: Arc<Node>, hls: Arc<Hls>, m: Arc<Muxer>, stream: Arc<Stream>) {
    let idle_ms = node.cfg.hls_idle_s.saturating_mul(1000);
    let cfg = config(&node);
    // Codec configuration from the stream's cached head (a start mid-broadcast).
    crate::http::ensure_head(&node, &stream).await;
    let head: Vec<Bytes> = {
        let h = stream.flv.lock().unwrap_or_else(|e| e.into_inner());
        [&h.video_config, &h.audio_config]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    };
    let back = (cfg.window as u64 * u64::from(cfg.segment_ms)).div_ceil(1000) + 1;
    // The window's worth of history; all of it when the node holds less (a relay that has just
    // started holds only what it pulled: `From::Back` would start at its live edge).
    let from = match stream.latest_pts() {
        Some(latest) => stream
            .seek_pts(latest.saturating_sub((back as i64).saturating_mul(1_000_000)))
            .map_or(From::Start, From::Seq),
        None => From::Start,
    };
    let mut cursor = Some(Cursor::new(
        stream.clone(),
        from,
        node.cfg.max_viewer_lag_bytes,
        SlowViewer::Skip,
    ));
    drop(stream);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut version = 0u64;
    // What the chunks are: FLV tags (RTMP), or MPEG-TS bytes (demuxed into the same tags);
    // decided at the first chunk.
    let mut input: Option<Input> = None;
    let mut next_try = tokio::time::Instant::now();
    // A chunk that came before its broadcast's kind was known, to try again at `next_try`.
    let mut pending: Option<crate::hub::Chunk> = None;
    loop {
        let next = async {
            if let Some(c) = pending.take() {
                tokio::time::sleep_until(next_try).await;
                return Some(Ok(c));
            }
            match cursor.as_mut() {
                Some(c) => Some(c.next().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = next => match r {
                Some(Ok(chunk)) => {
                    if input.is_none() {
                        input = match (crate::flv::parse(&chunk.payload), cursor.as_ref()) {
                            (Some(_), _) | (None, None) => Some(Input::Flv),
                            (None, Some(c)) => ts_input(&node, c.stream()).await,
                        };
                    }
                    if input.is_none() {
                        // Not FLV, and not known yet to be MPEG-TS or not (only its first
                        // packets, an upstream that did not answer): this chunk again in a second.
                        next_try = tokio::time::Instant::now() + Duration::from_secs(1);
                        pending = Some(chunk);
                        continue;
                    }
                    // Demuxed before the packager's lock: playlist requests wait on that lock.
                    let ts_tags = match &mut input {
                        Some(Input::Ts(t)) => Some(t.push(&chunk, &node.metrics)),
                        _ => None,
                    };
                    let mut g = lock(&m.packager);
                    let p = g.get_or_insert_with(|| {
                        let s = cursor.as_ref().map(|c| c.stream().clone());
                        let anchor = match s {
                            Some(s) if s.edge().ended.is_some() => (0, s.broadcast.unix_ms().map_or(0, |x| x as i64)),
                            Some(s) => (s.latest_pts().unwrap_or(chunk.pts), now_unix_ms()),
                            None => (chunk.pts, now_unix_ms()),
                        };
                        let mut p = Packager::new(cfg, anchor);
                        for t in &head {
                            if let Some(tag) = crate::flv::parse(t) {
                                p.push_config_tag(tag.kind, &t.slice_ref(tag.data));
                            }
                        }
                        p
                    });
                    let dropped_before = p.dropped;
                    match ts_tags {
                        Some(tags) => {
                            for t in tags {
                                p.push_tag(t.seq, t.dts_us, t.kind, &t.body);
                            }
                        }
                        None => {
                            if let Some(tag) = crate::flv::parse(&chunk.payload) {
                                let body = chunk.payload.slice_ref(tag.data);
                                p.push_tag(chunk.seq, chunk.pts, tag.kind, &body);
                            }
                        }
                    }
                    node.metrics
                        .hls_dropped_tags
                        .fetch_add(p.dropped.saturating_sub(dropped_before), Ordering::Relaxed);
                    let first_catch_up = !m.caught_up()
                        && cursor.as_ref().is_none_or(|c| {
                            let s = c.stream();
                            let edge = s.edge().next_seq.max(s.catch_up_to.load(Ordering::Relaxed));
                            chunk.seq.saturating_add(1) >= edge
                        });
                    if first_catch_up {
                        m.caught_up.store(true, Ordering::SeqCst);
                    }
                    if p.version() != version || first_catch_up {
                        version = p.version();
                        drop(g);
                        m.publish(version);
                    }
                }
                Some(Err(stop)) => {
                    tracing::debug!(stream = %m.stream, ?stop, "hls input ended");
                    let mut g = lock(&m.packager);
                    if let Some(p) = g.as_mut() {
                        if let Some(Input::Ts(t)) = &mut input {
                            for t in t.demux.finish() {
                                p.push_tag(t.seq, t.dts_us, t.kind, &t.body);
                            }
                            let st = t.demux.stats();
                            tracing::debug!(stream = %m.stream, stats = ?st, "hls: mpeg-ts input done");
                        }
                        p.finish();
                        version = p.version();
                    }
                    drop(g);
                    m.publish(version.wrapping_add(1));
                    // Let the broadcast go: only the segments stay.
                    cursor = None;
                }
                None => {}
            },
            _ = tick.tick() => {
                if m.idle_for() >= idle_ms && hls.remove_if_idle(&m, idle_ms) {
                    tracing::debug!(stream = %m.stream, broadcast = %m.broadcast, "hls released (idle)");
                    return;
                }
            }
        }
    }
}

/// The damage an MPEG-TS demuxer has met so far (for `firstmile_entry_hls_ts_errors_total`).
fn ts_errors(s: &hls::TsStats) -> u64 {
    s.resyncs + s.bad_packets + s.cc_errors + s.pes_dropped + s.psi_errors
}

/// What a broadcast's chunks are, for its packager.
enum Input {
    /// One FLV tag per chunk (RTMP ingest).
    Flv,
    /// MPEG-TS bytes in any split, demuxed on the broadcast's timeline.
    Ts(Box<TsInput>),
}

/// An MPEG-TS broadcast's demuxer, and where it started reading.
struct TsInput {
    demux: hls::TsDemuxer,
    /// Nothing fed yet (None); started at the broadcast's first chunk and no tag out yet (true).
    from_start: Option<bool>,
}

impl TsInput {
    /// The tags `chunk` completes, for the packager. Its first chunk gives the demuxer its time
    /// hint (which 26.5 h period the timestamps are in, for a late start); from the broadcast's
    /// first chunk, the first tag carries sequence 0 — it tells the packager it saw the start,
    /// even when that chunk held only PAT/PMT and the first PES began later. Damage met goes to
    /// `firstmile_entry_hls_ts_errors_total`.
    fn push(
        &mut self,
        chunk: &crate::hub::Chunk,
        metrics: &crate::node::Metrics,
    ) -> Vec<hls::TsTag> {
        let d = &mut self.demux;
        let before = ts_errors(&d.stats());
        if self.from_start.is_none() {
            d.time_hint(chunk.pts);
        }
        let mut tags = d.push(chunk.seq, &chunk.payload);
        let from_start = self.from_start.get_or_insert(chunk.seq == 0);
        if *from_start && let Some(first) = tags.first_mut() {
            first.seq = 0;
            *from_start = false;
        }
        metrics.hls_ts_errors.fetch_add(
            ts_errors(&d.stats()).saturating_sub(before),
            Ordering::Relaxed,
        );
        tags
    }
}

/// A broadcast whose first chunk is not an FLV tag: MPEG-TS if its head (from the log's first
/// chunks, or from an ingest server) gives a TS origin; else nothing to package (FLV rules:
/// tags that do not parse are skipped).
async fn ts_input(node: &Arc<Node>, stream: &Arc<Stream>) -> Option<Input> {
    crate::http::ensure_head_with(node, stream, false).await;
    let h = stream.flv.lock().unwrap_or_else(|e| e.into_inner());
    match (h.ts_origin, h.neither) {
        (Some(o), _) => Some(Input::Ts(Box::new(TsInput {
            demux: hls::TsDemuxer::with_origin(o),
            from_start: None,
        }))),
        // Neither FLV nor MPEG-TS: the FLV path skips what does not parse.
        (None, true) => Some(Input::Flv),
        (None, false) => None,
    }
}

/// The playlist URIs of a broadcast's resources: relative to `/hls/{stream}/`, with the
/// viewer's playback token carried along (hls.js requests exactly these URIs).
pub fn uri_fn(broadcast: &proto::BroadcastId, token: Option<&str>) -> impl Fn(&str) -> String {
    let b = broadcast.to_string();
    let q = token
        .filter(|t| !t.is_empty())
        .map(|t| format!("?token={}", encode_query(t)))
        .unwrap_or_default();
    move |name: &str| format!("{b}/{name}{q}")
}

/// Percent-encode a query value (tokens are base64url and dots, but encode anything else).
pub fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
