//! A dual-path RTMP publish whose path to this server broke, rejoining while the other ingest
//! server (the *peer*) kept receiving: how this server gets back in step without ever numbering a
//! message differently from the peer.
//!
//! **Mirror.** From the moment the publish is accepted, this server pulls the peer's chunks from
//! its own log's end (`GET {peer}/v1/streams/{id}/chunks?from=`, as relays do) and appends them
//! as they are: its log is then a byte-for-byte copy of the peer's, whatever the encoder sends
//! here. The encoder's messages on this connection are not stored; each audio or video message
//! (not codec configuration) is looked up, by its bytes, among the peer's recent chunks — found
//! means *matched*: that message is already in the log under the peer's sequence number, and the
//! difference between the peer's time and this connection's (an encoder restarts its RTMP clock
//! on a new connection) is learned. Messages not matched yet are kept in order after the last
//! matched one: the peer has not delivered them yet, or never will.
//!
//! **Take over.** When the peer's pull ends (the server died, or its publisher ended), this
//! server continues on its own from its log's end: encoder messages already in the log (matched
//! against the peer's recent chunks) are skipped, the first one that is not and every one after
//! it are appended, with the learned time difference applied so the timeline runs on. As both
//! servers got the same messages in the same order from one encoder, this numbers them as the
//! peer did: the merge key holds.
//!
//! **Both paths at once.** When the encoder's own uplink blips, both outputs reconnect and each
//! server finds the other holding the stream: both mirror, neither copy grows. A mirror whose
//! peer's copy has stood still for [`STALL`] while its own connection kept delivering asks the
//! peer (`GET /v1/streams`): no publisher there, or the peer is itself mirroring and this
//! server's id is the smaller → this server takes over (without a match: from the next
//! keyframe) and leads; the other keeps mirroring it and aligns with it. A peer with a publisher
//! of its own that is not mirroring is waited for: it is the one that numbers the stream.
//!
//! **Matching** is per media kind (audio, video), and only moves forward within a kind: a
//! separate connection may interleave audio and video a little differently from the peer's, and
//! a repeated frame (a silent audio frame) must not match an old copy of itself.
//!
//! **Limits.** Matching looks at the peer's last [`WINDOW`] chunks: an encoder path more than
//! that behind the peer never matches. A take-over without any match cannot tell which of this
//! connection's messages the log already has, so it drops them up to the next video keyframe
//! and continues from there, its times placed after the log's end by the stream's own frame
//! interval: a jump in the picture at most, never a corruption of what is stored.
//!
//! While mirroring, this server's copy depends on the peer's path: if that path dies but the
//! peer server does not, this server takes over only once the peer has noticed its publisher is
//! gone (at once on a reset connection; a half-open one takes its 15 s read timeout, or 2 s of
//! silence when a new publish arrives there). Viewers then see a stall of that length, not a
//! gap or a duplicate.
//!
//! The state shows in `GET /v1/streams` (`rejoin`: "mirroring fra-1, not aligned yet",
//! "mirroring fra-1, aligned", "continuing alone after fra-1 stopped").

use crate::flv;
use crate::hub::Chunk;
use crate::node::Node;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::sync::mpsc;

/// How long the peer's copy may stand still, while this connection delivers, before the peer is
/// asked whether it still has a publisher.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(3);

/// What to do about a stalled peer.
#[derive(Debug)]
pub enum Verdict {
    /// Continue from this connection: why.
    TakeOver(String),
    /// The peer has a publisher of its own: keep mirroring.
    Wait,
}

/// How many of the peer's recent chunks are kept for matching (~100 s of a 30 fps stream with
/// audio).
pub const WINDOW: usize = 8192;

/// What the pull from the peer delivers.
#[derive(Debug)]
pub enum PeerEvent {
    Chunk(Chunk),
    /// The peer's stream ended cleanly after this sequence number.
    Ended(u64),
    /// The pull failed: why.
    Gone(String),
}

/// A message of this connection: (tag type, stream time in ms on this connection, body).
pub type Message = (u8, i64, Bytes);

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// The peer feeds the log; the encoder's messages are only matched.
    Mirror,
    /// The peer is gone: skip what the log already has, then append.
    Settling,
}

/// Rejoin state of one publish (see the module docs).
#[derive(Debug)]
pub struct Rejoin {
    pub peer: String,
    /// The peer's HTTP base URL.
    pub base: String,
    /// When the peer's copy last grew (or the rejoin began).
    peer_at: tokio::time::Instant,
    /// This connection delivered audio or video since then.
    media_since_peer: bool,
    /// When to look at the peer's progress next.
    pub check_at: tokio::time::Instant,
    rx: mpsc::Receiver<PeerEvent>,
    task: tokio::task::JoinHandle<()>,
    state: State,
    /// Content key → (sequence number, peer's time in ms), for the last [`WINDOW`] chunks.
    window: HashMap<(u8, u64), (u64, i64)>,
    order: VecDeque<(u8, u64)>,
    /// Encoder messages after the last matched one, in order.
    unmatched: VecDeque<Message>,
    /// Per media kind (audio, video): sequence number of the last matched message (matches only
    /// move forward), and whether settling is over for it. Kinds are kept apart because a
    /// separate connection may interleave audio and video a little differently.
    last_match: [Option<u64>; 2],
    settled: [bool; 2],
    /// Peer time minus this connection's time, from the last match.
    pub delta_ms: Option<i64>,
    /// Taken over without any match: nothing of this connection lines up with the log, so it
    /// continues from the next video keyframe (fresh content) rather than replay a backlog.
    need_keyframe: bool,
}

impl Drop for Rejoin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(kind: u8, data: &[u8]) -> (u8, u64) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    (kind, h.finish())
}

/// Audio or video that is not codec configuration: what matching uses.
fn matchable(kind: u8, data: &[u8]) -> bool {
    matches!(
        flv::classify_body(kind, data),
        flv::Class::Video | flv::Class::VideoKeyframe | flv::Class::Audio
    )
}

/// How a mirroring rejoin's state begins in `GET /v1/streams` (the `rejoin` field); peers
/// recognise a mirroring server by it.
pub const MIRRORING: &str = "mirroring";

impl Rejoin {
    /// Start pulling the broadcast from the peer at `base` (its HTTP URL) from sequence `from`.
    pub fn start(
        node: Arc<Node>,
        peer: String,
        base: String,
        stream: String,
        broadcast: proto::BroadcastId,
        from: u64,
    ) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let base = base.trim_end_matches('/').to_string();
        let url = format!("{base}/v1/streams/{stream}/chunks?broadcast={broadcast}&from={from}");
        let task = tokio::spawn(async move {
            let ev = match pull(&node, &url, &tx).await {
                Ok(Some(f)) => PeerEvent::Ended(f),
                Ok(None) => return,
                Err(e) => PeerEvent::Gone(e),
            };
            let _ = tx.send(ev).await;
        });
        Rejoin {
            peer,
            base,
            peer_at: tokio::time::Instant::now(),
            media_since_peer: false,
            check_at: tokio::time::Instant::now(),
            rx,
            task,
            state: State::Mirror,
            window: HashMap::new(),
            order: VecDeque::new(),
            unmatched: VecDeque::new(),
            last_match: [None; 2],
            settled: [false; 2],
            delta_ms: None,
            need_keyframe: false,
        }
    }

    /// The next event from the peer (pending forever once it is gone and settled).
    pub async fn next(&mut self) -> Option<PeerEvent> {
        if self.state == State::Mirror {
            self.rx.recv().await
        } else {
            std::future::pending().await
        }
    }

    pub fn mirroring(&self) -> bool {
        self.state == State::Mirror
    }

    /// The peer's copy has not grown for [`STALL`] while this connection kept delivering media:
    /// the peer may have no publisher any more (see [`Verdict`]).
    pub fn stalled(&self) -> bool {
        self.state == State::Mirror && self.media_since_peer && self.peer_at.elapsed() >= STALL
    }

    /// Ask the peer about a stall (its `GET /v1/streams` row for `stream`): take over when it has
    /// no publisher, or is itself rejoining and this server's id is the smaller (both paths
    /// dropped at once: exactly one of the two servers must lead, the other then mirrors it).
    pub async fn verdict(
        &mut self,
        node: &Node,
        stream: &str,
        broadcast: &proto::BroadcastId,
    ) -> Verdict {
        self.peer_at = tokio::time::Instant::now();
        let url = format!("{}/v1/streams", self.base);
        let list = match node
            .http
            .get(&url)
            .bearer_auth(node.peer_bearer())
            .timeout(STALL)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r.json::<proto::api::EntryStreams>().await.ok(),
            _ => None,
        };
        let Some(list) = list else {
            return Verdict::TakeOver("the other server does not answer".into());
        };
        let row = list.streams.iter().find(|r| {
            r.stream.as_str() == stream
                && &r.broadcast == broadcast
                && r.source == proto::api::StreamSource::Ingest
        });
        let Some(row) = row else {
            return Verdict::TakeOver("the other server no longer holds the broadcast".into());
        };
        if row.live_sessions == 0 {
            return Verdict::TakeOver("the other server has no publisher".into());
        }
        if row
            .rejoin
            .as_deref()
            .is_some_and(|r| r.starts_with(MIRRORING))
            && node.cfg.id < self.peer
        {
            return Verdict::TakeOver(
                "both paths are rejoining: the server with the smaller id leads".into(),
            );
        }
        Verdict::Wait
    }

    /// Some message of this connection was found in the peer's copy.
    pub fn aligned(&self) -> bool {
        self.last_match.iter().any(Option::is_some)
    }

    /// For `GET /v1/streams`.
    pub fn status(&self) -> String {
        match (&self.state, self.aligned()) {
            (State::Mirror, true) => format!("{MIRRORING} {}, aligned", self.peer),
            (State::Mirror, false) => format!("{MIRRORING} {}, not aligned yet", self.peer),
            (State::Settling, _) => format!("continuing alone after {} stopped", self.peer),
        }
    }

    /// A chunk of the peer's, appended to the log: remember it and match it against the
    /// encoder's messages waiting.
    pub fn peer_chunk(&mut self, c: &Chunk) {
        let Some(t) = flv::parse(&c.payload) else {
            return;
        };
        if !matchable(t.kind, t.data) {
            return;
        }
        self.peer_at = tokio::time::Instant::now();
        self.media_since_peer = false;
        let k = key(t.kind, t.data);
        let peer_ms = c.pts.div_euclid(1000);
        self.window.insert(k, (c.seq, peer_ms));
        self.order.push_back(k);
        while self.order.len() > WINDOW {
            if let Some(old) = self.order.pop_front() {
                self.window.remove(&old);
            }
        }
        let i = kind_index(t.kind);
        if self.last_match[i].is_none_or(|l| c.seq > l)
            && let Some(at) = self
                .unmatched
                .iter()
                .position(|(kind, _, data)| *kind == t.kind && key(*kind, data) == k)
        {
            let (_, ms, _) = self.unmatched[at];
            self.matched(t.kind, at, c.seq, peer_ms - ms);
        }
    }

    /// The message of `kind` at `at` in the waiting queue is the peer's `seq`: it and every
    /// earlier waiting message of its kind are in the log (or never will be).
    fn matched(&mut self, kind: u8, at: usize, seq: u64, delta: i64) {
        self.last_match[kind_index(kind)] = Some(seq);
        self.delta_ms = Some(delta);
        let mut i = 0;
        self.unmatched.retain(|(k, _, data)| {
            let keep = i > at || *k != kind || !matchable(*k, data);
            i += 1;
            keep
        });
    }

    /// Messages of this connection while mirroring: matched ones are in the log already; the
    /// rest wait, in order.
    pub fn encoder_messages(&mut self, batch: Vec<Message>) {
        for m in batch {
            let (kind, ms, data) = &m;
            self.media_since_peer |= matches!(*kind, flv::AUDIO | flv::VIDEO);
            let i = kind_index(*kind);
            if matchable(*kind, data)
                && let Some(&(seq, peer_ms)) = self.window.get(&key(*kind, data))
                && self.last_match[i].is_none_or(|l| seq > l)
            {
                let (kind, delta) = (*kind, peer_ms - ms);
                self.unmatched.push_back(m);
                let at = self.unmatched.len() - 1;
                self.matched(kind, at, seq, delta);
                continue;
            }
            self.unmatched.push_back(m);
            if self.unmatched.len() > WINDOW {
                self.unmatched.pop_front();
            }
        }
    }

    /// The peer is gone: from now on this connection's messages go to the log, minus those the
    /// log already has. Returns the waiting messages to append first.
    pub fn take_over(&mut self) -> Vec<Message> {
        self.state = State::Settling;
        if self.aligned() {
            self.unmatched.drain(..).collect()
        } else {
            self.need_keyframe = true;
            self.unmatched.clear();
            Vec::new()
        }
    }

    /// While settling: drop the messages the log already has (found among the peer's recent
    /// chunks), per media kind until the first that it does not have; `true` once settled
    /// (window dropped).
    pub fn settle(&mut self, batch: Vec<Message>) -> (Vec<Message>, bool) {
        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            let (kind, _, data) = &m;
            // Configuration and metadata are kept (a re-sent sequence header is harmless; the
            // media after it needs it).
            if self.need_keyframe {
                match flv::classify_body(*kind, data) {
                    flv::Class::VideoKeyframe => {
                        self.need_keyframe = false;
                        self.settled = [true; 2];
                    }
                    flv::Class::Video | flv::Class::Audio => continue,
                    _ => {}
                }
            } else if matchable(*kind, data) {
                let i = kind_index(*kind);
                if !self.settled[i] {
                    match self.window.get(&key(*kind, data)) {
                        Some(&(seq, _)) if self.last_match[i].is_none_or(|l| seq > l) => {
                            self.last_match[i] = Some(seq);
                            continue;
                        }
                        _ => self.settled[i] = true,
                    }
                }
            }
            out.push(m);
        }
        let settled = !self.need_keyframe && (self.settled == [true; 2] || self.window.is_empty());
        if settled {
            self.window.clear();
            self.order.clear();
        }
        (out, settled)
    }
}

/// 0 for audio, 1 for anything else (video).
fn kind_index(kind: u8) -> usize {
    usize::from(kind != flv::AUDIO)
}

/// Ok(Some(final sequence number)) at the peer's END; Ok(None) when nobody listens any more.
async fn pull(node: &Node, url: &str, tx: &mpsc::Sender<PeerEvent>) -> Result<Option<u64>, String> {
    let resp = node
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("peer unreachable: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("peer answered {}", resp.status()));
    }
    crate::relay::read_chunks(node, resp, |c| {
        let tx = tx.clone();
        async move { Ok(tx.send(PeerEvent::Chunk(c)).await.is_ok()) }
    })
    .await
}
