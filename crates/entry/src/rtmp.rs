//! RTMP ingest: what OBS and ffmpeg push (`rtmp://host:port/live/<stream>?token=<jwt>`).
//!
//! One tokio task per connection drives `rml_rtmp`'s sans-IO handshake and server session:
//! handshake → `connect` (app `live`) → `createStream` → `publish` → `@setDataFrame onMetaData`,
//! audio and video messages → `deleteStream`. The publish name carries the director's token,
//! either as a query (`<stream>?token=<jwt>`) or as the whole key (the stream then comes from
//! the token's claims); it is checked like the native HELLO: signature, expiry, this server's
//! id, the stream. The role comes from the claims.
//!
//! **Chunks.** Every audio, video and metadata message becomes one FLV tag, one chunk (see
//! [`crate::flv`]), appended to the stream's durable log. **The merge key** of a dual publish is
//! the sequence number = the index of the message in the stream's log on this server (0, 1, 2,
//! …, continuing across re-publishes): an encoder's `tee` outputs send the same messages in the
//! same order to the primary and the backup, so both logs number them identically and the relay
//! merge (first arrival per sequence number wins) works unchanged. The metadata tag is rebuilt
//! from the parsed `onMetaData` fields in a fixed order, with tag timestamp 0 (its chunk's pts
//! is the time of the media message before it, in message order), so both servers store the
//! same bytes.
//!
//! **Re-publish rule.** An encoder that reconnects with the same key continues its stream when
//! that cannot make the merge key diverge:
//!
//! - *Single path* (the common OBS case: one output, this server is the only one holding the
//!   stream): the publish is accepted, sequence numbers continue from the log's next one, and
//!   the new connection's timestamps are rebased onto the stream's timeline ([`Timeline`]): when
//!   the first new timestamp goes backwards (OBS and ffmpeg restart near 0), every timestamp of
//!   the connection is shifted so it lands one frame interval (estimated from the last stored
//!   tags, [`resume_point`]) after the last stored tag; when it already continues, it is kept.
//!   The new publish's metadata and sequence headers are stored as the tags they are, so
//!   HTTP-FLV viewers and relays just keep reading across the join.
//! - *Dual path* (another ingest server of the stream holds chunks of it too, and kept
//!   receiving): the publish is accepted and **rejoins** ([`crate::rejoin`]): this server mirrors
//!   the other one's log from its own log's end, byte for byte, while it finds this connection's
//!   messages in that copy (learning which sequence numbers and times they have there); when the
//!   other server's copy stops (it died, or its publisher ended), this one continues from this
//!   connection's messages after the last one the log has, numbering them as the other server
//!   did. Numbering the new messages from this log's end instead would give one sequence number
//!   to different messages on the two servers, and the relay merge would splice them. A clean
//!   unpublish while still mirroring ends the stream here only where the other server's log
//!   ends (its END is awaited, 5 s at most). An other server that the director lists without an
//!   address is a refusal (`BadName`, saying what to do).
//!
//! Whether another server holds the stream is asked of the director (`GET /v1/streams/{id}`:
//! the assigned and the reporting servers) and then of each listed server that has not
//! reported chunks (its `GET /v1/streams`: a restarted server holds chunks without reporting
//! them). A listed server that cannot be asked refuses the publish with a "retry shortly"
//! description rather than risk it; one the director no longer knows an address for counts as
//! not holding the stream (relays cannot reach it either). A standalone server (no director)
//! has no peer. A stream that has ended (clean unpublish) or that holds non-FLV data (a native
//! or HTTP-push stream) is refused as before. A clean unpublish (`deleteStream`/`closeStream`)
//! ends the stream (END at the last sequence number); a dropped connection does not.
//!
//! **A silent old connection gives way.** After a network blip the server often still holds
//! the encoder's old connection, half-open: nothing arrives on it, and its read would only time
//! out after 15 s. A new publish of the stream takes over from a publisher that has sent nothing
//! for [`TAKEOVER_SILENCE_MS`] (nginx-rtmp's `drop_idle_publisher`, applied when someone is
//! waiting): the stream's epoch moves on, the old connection is woken and closed, and once it
//! has flushed and synced the new one continues the stream. A publisher that is sending is never
//! displaced: a second publisher of an active stream is refused (`BadName`).
//!
//! **Expired tokens.** A token is needed to *start* a stream; the signed token of a stream this
//! server holds (with data, not ended) still continues it after its expiry, because encoders
//! (OBS) reconnect hours into a stream with the URL they were given. The signature, the stream
//! and the server are checked as always.
//!
//! Not covered: a *first* publish into an empty log is not checked against peers, so an encoder
//! that switches from one server to the other mid-stream, or a second output that starts
//! publishing later than the first (two separately started OBS outputs, rather than one `tee`),
//! starts a numbering of its own there that differs from the other server's. Rejoining there
//! too (mirror the other's log from 0) would fix it; it is not built.
//!
//! **Refusals.** Wrong app → `NetConnection.Connect.Rejected`; bad, expired or misdirected token
//! (an expired one only starts nothing) → `NetStream.Publish.Denied`; a second publisher for a
//! stream whose publisher here is sending, an ended
//! stream, or a re-publish the rule above refuses → `NetStream.Publish.BadName`; play →
//! `NetStream.Play.Failed` (play over HTTP-FLV). Every library error, and any panic inside the
//! library (it indexes into hostile AMF arrays), ends that connection only.
//!
//! What this is not: an RTMP player endpoint, or a transcoder.

use crate::core::{self, IngestError};
use crate::flv::{self, MetaValue};
use crate::hub::{Chunk, Source, Stream};
use crate::node::Node;
use chunklog::Record;
use plumbing::listen::Limited;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult, StreamMetadata,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The RTMP application name devices publish to.
pub const APP: &str = "live";

/// Why a connection ended abnormally (logged, never sent: RTMP has its status messages).
#[derive(Debug, thiserror::Error)]
pub enum RtmpError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("rtmp session: {0}")]
    Session(String),
    #[error("timed out")]
    Timeout,
    #[error("refused: {0}")]
    Refused(String),
    #[error("log: {0}")]
    Log(String),
}

/// Serve one RTMP connection, admitted by the listener's gate, until it ends. Never panics;
/// every error closes only this connection.
///
/// Until its publish is accepted the gate bounds it: the handshake, `connect`, `createStream`
/// and `publish` must arrive within `rtmp_connect_timeout_ms` (reads fail after; the time the
/// server then spends authorizing the publish is not counted) and within a small read budget,
/// and it counts against its address's cap. An accepted publish is authenticated: no longer
/// counted per address, no budget.
pub async fn serve(sock: Limited<TcpStream>, node: Arc<Node>, peer: SocketAddr) {
    let _ = sock.get_ref().set_nodelay(true);
    let mut c = Conn {
        sock,
        node,
        peer,
        publishing: None,
    };
    let r = c.run().await;
    let ended_cleanly = matches!(r, Ok(true));
    if let Some(p) = c.publishing.take() {
        p.finish(&c.node, ended_cleanly).await;
    }
    match r {
        Ok(_) => tracing::info!(%peer, "rtmp connection closed"),
        Err(e) => tracing::info!(%peer, error = %e, "rtmp connection ended"),
    }
}

struct Conn {
    sock: Limited<TcpStream>,
    node: Arc<Node>,
    peer: SocketAddr,
    publishing: Option<Publishing>,
}

/// A publish in progress.
struct Publishing {
    stream: Arc<Stream>,
    /// Counts this publisher until the publish is over.
    session: core::Session,
    /// This connection's timestamps on the stream's timeline.
    clock: Timeline,
    /// Messages received but not yet appended: (tag type, stream time in ms, body).
    batch: Vec<(u8, i64, bytes::Bytes)>,
    /// When the log is fsync'd for this publish (see [`crate::logio::UNACKED_SYNC`]).
    synced: crate::logio::UnackedSync,
    /// The stream's epoch this publish started; a newer one means it was taken over.
    epoch: u64,
    /// A dual-path publish rejoining while the other server carries the stream
    /// ([`crate::rejoin`]).
    rejoin: Option<crate::rejoin::Rejoin>,
    /// Added to this connection's times once it continues a rejoined stream on its own.
    shift_ms: i64,
    /// The shift is still to be worked out from the stored tags (no message matched).
    shift_pending: bool,
}

/// Where a re-published stream's timeline left off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// Time of the last stored tag, ms (extended past 32 bits).
    pub last_ms: i64,
    /// One frame interval: where the first new message lands after `last_ms` when rebased.
    pub gap_ms: i64,
}

/// Frame interval assumed when the stored tags do not show one (one video frame at 25 fps,
/// more than one AAC frame at 44.1 kHz).
pub const DEFAULT_GAP_MS: i64 = 40;

/// Where a re-publish continues, from the last stored tags of the stream as (tag type, time in
/// ms), oldest first: after the latest one, by the longest of the last audio and the last video
/// frame intervals (each taken when it is within (0, 1000] ms).
pub fn resume_point(stored: &[(u8, i64)]) -> Resume {
    let last_ms = stored.iter().map(|&(_, t)| t).max().unwrap_or(0);
    let interval = |kind: u8| {
        let mut it = stored.iter().rev().filter(|&&(k, _)| k == kind);
        let (b, a) = (it.next()?.1, it.next()?.1);
        Some(b - a).filter(|d| (1..=1000).contains(d))
    };
    let gap_ms = [interval(flv::AUDIO), interval(flv::VIDEO)]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(DEFAULT_GAP_MS);
    Resume { last_ms, gap_ms }
}

/// Maps one connection's RTMP timestamps (32-bit ms, restarting wherever the encoder likes) to
/// the stream's timeline (ms, extended across the 32-bit wrap). Fresh publish: the identity
/// (plus the wrap extension). Re-publish ([`Resume`]): the offset is fixed by the first media
/// message — shifted to land `gap_ms` after the stored end when it goes backwards, kept as it is
/// when it already continues — and applies to the whole connection, so the encoder's own
/// spacing is preserved.
#[derive(Clone, Debug)]
pub struct Timeline {
    ts_high: i64,
    last_raw: u32,
    resume: Option<Resume>,
    offset: Option<i64>,
    last_out: i64,
}

impl Timeline {
    pub fn new(resume: Option<Resume>) -> Self {
        Self {
            ts_high: 0,
            last_raw: 0,
            resume,
            offset: None,
            last_out: resume.map_or(0, |r| r.last_ms),
        }
    }

    /// Stream time (ms) of an audio or video message with this RTMP timestamp.
    pub fn media(&mut self, ts: u32) -> i64 {
        if ts < self.last_raw && self.last_raw - ts > 1 << 31 {
            self.ts_high += 1 << 32;
        }
        self.last_raw = ts;
        let ext = self.ts_high + i64::from(ts);
        let resume = self.resume;
        let off = *self.offset.get_or_insert_with(|| match resume {
            Some(r) if ext < r.last_ms => r.last_ms + r.gap_ms - ext,
            _ => 0,
        });
        self.last_out = ext + off;
        self.last_out
    }

    /// Stream time of a metadata message: that of the media message before it (where the
    /// stream left off, before the first one).
    pub fn metadata(&self) -> i64 {
        self.last_out
    }
}

impl Publishing {
    /// Append the batch to the log, then publish it to viewers.
    async fn flush(&mut self, node: &Node) -> Result<(), RtmpError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(&mut self.batch);
        if let Some(r) = &mut self.rejoin {
            if r.mirroring() {
                r.encoder_messages(batch);
                self.show_rejoin();
                return Ok(());
            }
            let (kept, settled) = r.settle(batch);
            batch = kept;
            if settled {
                self.rejoin = None;
                self.show_rejoin();
            }
            if batch.is_empty() {
                return Ok(());
            }
        }
        if self.shift_pending {
            let r = stored_resume(&self.stream).await.map_err(RtmpError::Log)?;
            self.shift_ms = r.last_ms + r.gap_ms - batch[0].1;
            self.shift_pending = false;
        }
        let shift = self.shift_ms;
        let recs: Vec<Record> = batch
            .into_iter()
            .map(|(kind, ms, data)| {
                let ms = ms + shift;
                // The tag carries the low 32 bits of the time (as RTMP does), the chunk pts the
                // whole of it. Metadata tags carry 0, as players expect of `onMetaData`
                // (ffmpeg's FLV demuxer takes one with another timestamp for a subtitle packet,
                // which a re-publish's metadata, mid-stream, would otherwise become).
                let tag_ms = if kind == flv::SCRIPT { 0 } else { ms as u32 };
                let flags = if flv::classify_body(kind, &data) == flv::Class::VideoKeyframe {
                    proto::DataFlags::KEYFRAME.bits()
                } else {
                    0
                };
                Record {
                    seq: 0,
                    pts: ms * 1000,
                    flags,
                    payload: flv::tag(kind, tag_ms, &data),
                }
            })
            .collect();
        let out = crate::logio::with_log(node, &self.stream, move |log| {
            let mut chunks = Vec::with_capacity(recs.len());
            for mut rec in recs {
                rec.seq = log.next_seq();
                log.append(&rec).map_err(|e| e.to_string())?;
                chunks.push(Chunk {
                    seq: rec.seq,
                    pts: rec.pts,
                    flags: rec.flags,
                    payload: rec.payload,
                });
            }
            Ok::<_, String>(chunks)
        })
        .await
        .and_then(|r| r)
        .map_err(RtmpError::Log)?;
        self.stream.publish(out);
        self.synced
            .tick(node, &self.stream)
            .await
            .map_err(RtmpError::Log)
    }

    /// Publish the rejoin's state in the stream's row (`GET /v1/streams`) when it changed.
    fn show_rejoin(&self) {
        let now = self.rejoin.as_ref().map(crate::rejoin::Rejoin::status);
        *self.stream.rejoin.lock().unwrap_or_else(|e| e.into_inner()) = now;
    }

    /// A rejoin whose peer's copy stands still: ask the peer, and take over if it says so.
    async fn check_stall(&mut self, node: &Node) -> Result<(), RtmpError> {
        let Some(r) = self.rejoin.as_mut() else {
            return Ok(());
        };
        r.check_at = tokio::time::Instant::now() + Duration::from_millis(500);
        if !r.stalled() {
            return Ok(());
        }
        match r
            .verdict(node, &self.stream.name, &self.stream.broadcast)
            .await
        {
            crate::rejoin::Verdict::TakeOver(why) => self.take_over(node, why).await,
            crate::rejoin::Verdict::Wait => Ok(()),
        }
    }

    /// An event of a rejoin's pull from the other server (see [`crate::rejoin`]).
    async fn on_peer(
        &mut self,
        node: &Node,
        ev: crate::rejoin::PeerEvent,
    ) -> Result<(), RtmpError> {
        match ev {
            crate::rejoin::PeerEvent::Chunk(c) => {
                let rec = Record {
                    seq: c.seq,
                    pts: c.pts,
                    flags: c.flags,
                    payload: c.payload.clone(),
                };
                let appended = crate::logio::with_log(node, &self.stream, move |log| {
                    log.append(&rec).map_err(|e| e.to_string())
                })
                .await
                .and_then(|r| r)
                .map_err(RtmpError::Log)?;
                if let Some(r) = &mut self.rejoin {
                    r.peer_chunk(&c);
                    self.show_rejoin();
                }
                if appended == chunklog::AppendOutcome::Appended {
                    self.stream.publish([c]);
                }
                self.synced
                    .tick(node, &self.stream)
                    .await
                    .map_err(RtmpError::Log)
            }
            crate::rejoin::PeerEvent::Ended(f) => {
                self.take_over(node, format!("its stream ended at {f}"))
                    .await
            }
            crate::rejoin::PeerEvent::Gone(why) => self.take_over(node, why).await,
        }
    }

    /// The other server's copy stopped: continue from this connection (see [`crate::rejoin`]).
    async fn take_over(&mut self, node: &Node, why: String) -> Result<(), RtmpError> {
        let Some(r) = &mut self.rejoin else {
            return Ok(());
        };
        let waiting = r.take_over();
        match r.delta_ms {
            Some(d) => self.shift_ms = d,
            None => self.shift_pending = true,
        }
        tracing::info!(
            stream = %self.stream.name, peer = %r.peer, why = %why,
            matched = r.delta_ms.is_some(), waiting = waiting.len(),
            "rtmp rejoin: the other server's copy stopped; continuing from this encoder"
        );
        self.show_rejoin();
        let later = std::mem::take(&mut self.batch);
        self.batch = waiting;
        self.batch.extend(later);
        self.flush(node).await
    }

    /// The publish is over: a clean unpublish ends the stream; a drop leaves it open.
    async fn finish(mut self, node: &Arc<Node>, mut clean: bool) {
        // A rejoin still mirroring the other server: this log may only END where the other one
        // does. On a clean end take in its copy until its END (bounded, 5 s); no END here
        // otherwise.
        let mirroring = self.rejoin.as_ref().is_some_and(|r| r.mirroring());
        if mirroring {
            // This connection's own messages are in the other server's copy, or never will be.
            self.batch.clear();
        }
        if clean && mirroring {
            let until = tokio::time::Instant::now() + Duration::from_secs(5);
            let mut peer_end = None;
            while let Some(r) = self.rejoin.as_mut() {
                let ev = match tokio::time::timeout_at(until, r.next()).await {
                    Ok(Some(ev)) => ev,
                    _ => break,
                };
                match ev {
                    crate::rejoin::PeerEvent::Chunk(c) => {
                        let chunk = crate::rejoin::PeerEvent::Chunk(c);
                        if self.on_peer(node, chunk).await.is_err() {
                            break;
                        }
                    }
                    crate::rejoin::PeerEvent::Ended(f) => {
                        peer_end = Some(f);
                        break;
                    }
                    crate::rejoin::PeerEvent::Gone(_) => break,
                }
            }
            clean = peer_end.is_some_and(|f| Some(self.stream.edge().next_seq) == f.checked_add(1));
        }
        self.rejoin = None;
        self.show_rejoin();
        let _ = self.flush(node).await;
        // The END (or the sync) before the session counts as gone: a new publish waiting to
        // take over must find the log as this session left it.
        let ended = if clean {
            let s = self.stream.clone();
            tokio::task::spawn_blocking(move || {
                let Source::Ingest(log) = &s.source else {
                    return None;
                };
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                let next = log.next_seq();
                if next > 0 && log.ended().is_none() {
                    log.end(next - 1).and_then(|_| log.sync()).ok()?;
                    return Some(next - 1);
                }
                None
            })
            .await
            .ok()
            .flatten()
        } else {
            let _ = crate::logio::sync(node, &self.stream).await;
            None
        };
        if let Some(f) = ended {
            self.stream.end(f);
            tracing::info!(stream = %self.stream.name, broadcast = %self.stream.broadcast, final_seq = f, "rtmp broadcast ended");
        }
        drop(self.session);
    }
}

/// What a publish name carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishName<'a> {
    /// The stream id, when named.
    pub stream: Option<&'a str>,
    /// The director's ingest token (`?token=`, or the whole name when it is a token).
    pub token: Option<&'a str>,
    /// The stream's key (`?key=`): the director then authorizes the publish.
    pub key: Option<&'a str>,
}

/// Parse a publish name (the part after `rtmp://host/live/`): `<stream>?token=<jwt>`,
/// `<stream>?key=<stream key>` (what OBS's "Stream Key" field holds day after day), or a bare
/// token. Other query keys are ignored.
pub fn parse_publish_name(name: &str) -> PublishName<'_> {
    match name.split_once('?') {
        Some((stream, query)) => {
            let get = |k: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                    .filter(|v| !v.is_empty())
            };
            PublishName {
                stream: Some(stream),
                token: get("token"),
                key: get("key"),
            }
        }
        None if name.matches('.').count() == 2 && name.len() > 64 => PublishName {
            stream: None,
            token: Some(name),
            key: None,
        },
        None => PublishName {
            stream: Some(name),
            token: None,
            key: None,
        },
    }
}

fn metadata_tag(m: &StreamMetadata) -> Vec<u8> {
    let mut f: Vec<(&str, MetaValue)> = Vec::new();
    let mut num = |k: &'static str, v: Option<f64>| {
        if let Some(v) = v {
            f.push((k, MetaValue::Number(v)));
        }
    };
    num("width", m.video_width.map(f64::from));
    num("height", m.video_height.map(f64::from));
    num("videocodecid", m.video_codec_id.map(f64::from));
    num("framerate", m.video_frame_rate.map(f64::from));
    num("videodatarate", m.video_bitrate_kbps.map(f64::from));
    num("audiocodecid", m.audio_codec_id.map(f64::from));
    num("audiodatarate", m.audio_bitrate_kbps.map(f64::from));
    num("audiosamplerate", m.audio_sample_rate.map(f64::from));
    num("audiochannels", m.audio_channels.map(f64::from));
    if let Some(s) = m.audio_is_stereo {
        f.push(("stereo", MetaValue::Bool(s)));
    }
    if let Some(e) = &m.encoder {
        f.push(("encoder", MetaValue::Text(e.clone())));
    }
    flv::on_metadata(&f)
}

/// A connection silent this long is closed.
const READ_TIMEOUT: Duration = Duration::from_secs(15);

/// Largest read buffered at once; the library holds at most one partial message (≤ 16 MiB,
/// RTMP's 24-bit length) beyond it.
const READ_BUF: usize = 64 * 1024;

impl Conn {
    /// Ok(true) when the peer unpublished cleanly.
    async fn run(&mut self) -> Result<bool, RtmpError> {
        let remaining = tokio::time::timeout(Duration::from_secs(10), self.handshake())
            .await
            .map_err(|_| RtmpError::Timeout)??;
        let (mut session, initial) = ServerSession::new(ServerSessionConfig::new())
            .map_err(|e| RtmpError::Session(e.to_string()))?;
        let mut out = Vec::new();
        let mut clean = false;
        self.handle(&mut session, initial, &mut out, &mut clean)
            .await?;
        let mut input = remaining;
        let mut buf = vec![0u8; READ_BUF];
        loop {
            if !input.is_empty() {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    session.handle_input(&input)
                }));
                let results = match r {
                    Ok(Ok(r)) => r,
                    Ok(Err(e)) => return Err(RtmpError::Session(e.to_string())),
                    Err(_) => return Err(RtmpError::Session("malformed input".into())),
                };
                self.handle(&mut session, results, &mut out, &mut clean)
                    .await?;
                if let Some(p) = &mut self.publishing {
                    p.flush(&self.node).await?;
                }
                if clean {
                    return Ok(true);
                }
            }
            if !out.is_empty() {
                self.sock.write_all(&out).await?;
                out.clear();
            }
            let publishing = self
                .publishing
                .as_ref()
                .map(|p| (p.stream.clone(), p.epoch));
            let read = tokio::time::timeout(READ_TIMEOUT, self.sock.read(&mut buf));
            let n = match publishing {
                None => match read.await {
                    Ok(r) => r?,
                    Err(_) => return Err(RtmpError::Timeout),
                },
                Some((stream, epoch)) => tokio::select! {
                    r = read => match r {
                        Ok(r) => r?,
                        Err(_) => return Err(RtmpError::Timeout),
                    },
                    wake = async {
                        match self.publishing.as_mut().and_then(|p| p.rejoin.as_mut()) {
                            Some(r) if r.mirroring() => {
                                let check_at = r.check_at;
                                tokio::select! {
                                    ev = r.next() => Some(ev),
                                    _ = tokio::time::sleep_until(check_at) => None,
                                }
                            }
                            _ => std::future::pending().await,
                        }
                    } => {
                        if let Some(p) = &mut self.publishing {
                            match wake {
                                Some(ev) => {
                                    let ev = ev.unwrap_or_else(|| {
                                        crate::rejoin::PeerEvent::Gone("the pull stopped".into())
                                    });
                                    p.on_peer(&self.node, ev).await?;
                                }
                                None => p.check_stall(&self.node).await?,
                            }
                            // These wake-ups restart the read's timeout: keep its rule.
                            let idle = crate::hub::mono_ms()
                                .saturating_sub(p.stream.input_at_ms.load(Ordering::Relaxed));
                            if u128::from(idle) > READ_TIMEOUT.as_millis() {
                                return Err(RtmpError::Timeout);
                            }
                        }
                        input.clear();
                        continue;
                    }
                    _ = stream.takeover.notified() => {
                        if stream.epoch.load(Ordering::SeqCst) != epoch {
                            return Err(RtmpError::Refused(
                                "taken over by a new publish after this connection went silent"
                                    .into(),
                            ));
                        }
                        input.clear();
                        continue;
                    }
                },
            };
            if n == 0 {
                return Ok(false);
            }
            if let Some(p) = &self.publishing {
                p.stream
                    .input_at_ms
                    .store(crate::hub::mono_ms(), Ordering::Relaxed);
            }
            input.clear();
            input.extend_from_slice(&buf[..n]);
        }
    }

    async fn handshake(&mut self) -> Result<Vec<u8>, RtmpError> {
        let mut hs = Handshake::new(PeerType::Server);
        let mut buf = vec![0u8; 4096];
        loop {
            let n = self.sock.read(&mut buf).await?;
            if n == 0 {
                return Err(RtmpError::Handshake("closed during the handshake".into()));
            }
            match hs
                .process_bytes(&buf[..n])
                .map_err(|e| RtmpError::Handshake(format!("{e:?}")))?
            {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    self.sock.write_all(&response_bytes).await?;
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    self.sock.write_all(&response_bytes).await?;
                    return Ok(remaining_bytes);
                }
            }
        }
    }

    async fn handle(
        &mut self,
        session: &mut ServerSession,
        results: Vec<ServerSessionResult>,
        out: &mut Vec<u8>,
        clean: &mut bool,
    ) -> Result<(), RtmpError> {
        let mut queue: std::collections::VecDeque<ServerSessionResult> = results.into();
        while let Some(r) = queue.pop_front() {
            match r {
                ServerSessionResult::OutboundResponse(p) => out.extend_from_slice(&p.bytes),
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
                ServerSessionResult::RaisedEvent(ev) => {
                    let more = self.event(session, ev, out, clean).await?;
                    queue.extend(more);
                }
            }
        }
        Ok(())
    }

    /// React to one session event; returns the session's answers.
    async fn event(
        &mut self,
        session: &mut ServerSession,
        ev: ServerSessionEvent,
        out: &mut Vec<u8>,
        clean: &mut bool,
    ) -> Result<Vec<ServerSessionResult>, RtmpError> {
        let lib = |e: rml_rtmp::sessions::ServerSessionError| RtmpError::Session(e.to_string());
        match ev {
            ServerSessionEvent::ConnectionRequested {
                request_id,
                app_name,
            } => {
                if app_name.split('?').next() == Some(APP) {
                    session.accept_request(request_id).map_err(lib)
                } else {
                    let r = session
                        .reject_request(
                            request_id,
                            "NetConnection.Connect.Rejected",
                            &format!("unknown application {app_name:?}: publish to /{APP}/"),
                        )
                        .map_err(lib)?;
                    self.refuse(r, out).await?;
                    Err(RtmpError::Refused(format!("app {app_name:?}")))
                }
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                stream_key,
                ..
            } => {
                // The client's part is done: authorizing (which may ask the director and
                // peers) is not held to the connect deadline.
                self.sock.conn().opened();
                match self.authorize(&stream_key).await {
                    Ok(p) => {
                        self.sock.conn().authenticate();
                        self.publishing = Some(p);
                        session.accept_request(request_id).map_err(lib)
                    }
                    Err((code, why)) => {
                        tracing::info!(peer = %self.peer, code, %why, "refusing rtmp publish");
                        let r = session
                            .reject_request(request_id, code, &why)
                            .map_err(lib)?;
                        self.refuse(r, out).await?;
                        Err(RtmpError::Refused(why))
                    }
                }
            }
            ServerSessionEvent::PlayStreamRequested { request_id, .. } => {
                let r = session
                    .reject_request(
                        request_id,
                        "NetStream.Play.Failed",
                        "RTMP play is not served here: use HTTP-FLV (GET /live/<stream>.flv)",
                    )
                    .map_err(lib)?;
                self.refuse(r, out).await?;
                Err(RtmpError::Refused("play".into()))
            }
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                if let Some(p) = &mut self.publishing {
                    let ms = p.clock.metadata();
                    p.batch
                        .push((flv::SCRIPT, ms, metadata_tag(&metadata).into()));
                }
                Ok(Vec::new())
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                if let Some(p) = &mut self.publishing {
                    let ms = p.clock.media(timestamp.value);
                    p.batch.push((flv::AUDIO, ms, data));
                }
                Ok(Vec::new())
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                if let Some(p) = &mut self.publishing {
                    let ms = p.clock.media(timestamp.value);
                    p.batch.push((flv::VIDEO, ms, data));
                }
                Ok(Vec::new())
            }
            ServerSessionEvent::PublishStreamFinished { .. } => {
                *clean = true;
                Ok(Vec::new())
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Send a refusal now (the connection closes right after).
    async fn refuse(
        &mut self,
        results: Vec<ServerSessionResult>,
        out: &mut Vec<u8>,
    ) -> Result<(), RtmpError> {
        for r in results {
            if let ServerSessionResult::OutboundResponse(p) = r {
                out.extend_from_slice(&p.bytes);
            }
        }
        self.sock.write_all(out).await?;
        out.clear();
        let _ = self.sock.flush().await;
        Ok(())
    }

    /// Check the publish name's credential and open the broadcast; Err((status code, why)).
    async fn authorize(&mut self, key: &str) -> Result<Publishing, (&'static str, String)> {
        const BAD_NAME: &str = "NetStream.Publish.BadName";
        let node = self.node.clone();
        if self.publishing.is_some() {
            return Err((BAD_NAME, "this connection already publishes".into()));
        }
        let refuse = |e: IngestError| (e.rtmp_status(), e.to_string());
        let name = parse_publish_name(key);
        let cred = match (&name.stream, name.token, name.key) {
            (_, Some(t), _) => core::Credential::Token(t),
            (Some(stream), None, Some(k)) => {
                let stream = proto::StreamId::parse(stream)
                    .map_err(|e| (BAD_NAME, format!("bad stream id: {e}")))?;
                let key = proto::StreamKey::parse(k)
                    .map_err(|e| refuse(IngestError::Key(e.to_string())))?;
                core::Credential::Key { stream, key }
            }
            _ => core::Credential::Token(""),
        };
        let a = core::admit(
            &node,
            cred,
            core::Expect {
                stream: name.stream,
                role: None,
                continue_after_expiry: true,
            },
            proto::Protocol::Rtmp,
            Some(self.peer.ip()),
        )
        .await
        .map_err(refuse)?;
        let name = a.stream.to_string();
        // A publisher that has gone silent (a connection the network dropped without a word,
        // which would otherwise hold the broadcast until its 15 s read timeout) gives way to a
        // new publish; an active one does not.
        if let Some(s) = node.hub.get_ingest(&name, &a.broadcast)
            && s.live_sessions.load(Ordering::SeqCst) > 0
        {
            let silent =
                crate::hub::mono_ms().saturating_sub(s.input_at_ms.load(Ordering::Relaxed));
            if silent < TAKEOVER_SILENCE_MS {
                return Err(refuse(IngestError::Busy(format!(
                    "stream {name} already has a publisher on this server (it sent data \
                     {silent} ms ago)"
                ))));
            }
            s.epoch.fetch_add(1, Ordering::SeqCst);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while s.live_sessions.load(Ordering::SeqCst) > 0 {
                if tokio::time::Instant::now() > deadline {
                    return Err(refuse(IngestError::Busy(format!(
                        "stream {name}: the silent publisher did not let go; retry"
                    ))));
                }
                s.takeover.notify_waiters();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tracing::info!(stream = %name, peer = %self.peer, silent_ms = silent, "rtmp publish takes over from a silent connection");
        }
        // A re-publish into a broadcast with data: ask about the other servers first, outside
        // the opening lock (it serialises the opening of every broadcast on this node).
        let mut checked_at = None;
        let mut rejoin = None;
        let existing = match node.hub.get_ingest(&name, &a.broadcast) {
            Some(s) => Some(s),
            None => crate::open_from_disk(&node, &name, &a.broadcast).await,
        };
        if let Some(s) = existing {
            let e = s.edge();
            if e.next_seq > 0 && e.ended.is_none() && s.live_sessions.load(Ordering::SeqCst) == 0 {
                match peer_holding(&node, &name, &a.broadcast).await {
                    Ok(None) => checked_at = Some(e.next_seq),
                    // The other path carries the broadcast: rejoin by mirroring it.
                    Ok(Some((peer, Some(base)))) => {
                        checked_at = Some(e.next_seq);
                        rejoin = Some((peer, base));
                    }
                    // Descriptions stay short: ffmpeg shows only their first 255 bytes.
                    Ok(Some((peer, None))) => {
                        return Err((
                            BAD_NAME,
                            format!(
                                "stream {name} is also ingested at {peer}, which cannot be \
                                 reached from here to rejoin. Keep publishing to {peer}, or go \
                                 live again for a new broadcast"
                            ),
                        ));
                    }
                    Err(why) => {
                        return Err((
                            BAD_NAME,
                            format!(
                                "retry shortly: cannot check whether another server holds \
                                 stream {name} too ({why})"
                            ),
                        ));
                    }
                }
            }
        }
        let s = core::open(&node, &a, None).await.map_err(refuse)?;
        // Under the opening lock: one publisher per broadcast.
        let _one = node.opening.lock().await;
        if s.live_sessions.load(Ordering::SeqCst) > 0 {
            return Err(refuse(IngestError::Busy(format!(
                "stream {name} already has a publisher on this server"
            ))));
        }
        let edge = s.edge();
        if let Some(f) = edge.ended {
            return Err(refuse(IngestError::Ended(f)));
        }
        let resume = if edge.next_seq == 0 {
            None
        } else {
            if checked_at != Some(edge.next_seq) {
                return Err((
                    BAD_NAME,
                    format!("stream {name} changed while this publish was checked: retry"),
                ));
            }
            Some(stored_resume(&s).await.map_err(|why| (BAD_NAME, why))?)
        };
        let session = core::Session::start(&node, &s, a.role);
        let epoch = s.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        match resume {
            None => {
                tracing::info!(stream = %name, broadcast = %a.broadcast, role = %a.role, peer = %self.peer, "rtmp publish started")
            }
            Some(r) => tracing::info!(
                stream = %name, broadcast = %a.broadcast, role = %a.role, peer = %self.peer, next_seq = edge.next_seq,
                last_ms = r.last_ms, gap_ms = r.gap_ms, "rtmp re-publish continues the broadcast"
            ),
        }
        let p = Publishing {
            stream: s,
            session,
            clock: Timeline::new(resume),
            batch: Vec::new(),
            synced: crate::logio::UnackedSync::new(),
            epoch,
            rejoin: rejoin.map(|(peer, base)| {
                crate::rejoin::Rejoin::start(
                    node.clone(),
                    peer,
                    base,
                    name.clone(),
                    a.broadcast.clone(),
                    edge.next_seq,
                )
            }),
            shift_ms: 0,
            shift_pending: false,
        };
        p.show_rejoin();
        if let Some(r) = &p.rejoin {
            tracing::info!(stream = %name, peer = %r.peer, from = edge.next_seq, "rtmp publish rejoins: mirroring the other server's copy");
        }
        Ok(p)
    }
}

/// A publisher silent this long gives way to a new publish of its stream (nginx-rtmp's
/// `drop_idle_publisher`, applied when someone is waiting).
pub const TAKEOVER_SILENCE_MS: u64 = 2_000;

/// How long each question about the other servers may take.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// Another ingest server that holds chunks of this broadcast (see the module docs), `Ok(None)`
/// when none does, `Err` when that cannot be told now.
async fn peer_holding(
    node: &Node,
    stream: &str,
    broadcast: &proto::BroadcastId,
) -> Result<Option<(String, Option<String>)>, String> {
    if node.cfg.director.is_none() {
        return Ok(None);
    }
    let info = match crate::relay::info(node, stream, Some(broadcast)).await {
        Ok(i) => i,
        Err(crate::relay::RelayError::Unknown(_)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    for row in info.ingest {
        if row.server_id.as_str() == node.cfg.id {
            continue;
        }
        let id = row.server_id.to_string();
        let http = row.urls.as_ref().and_then(|u| u.http.clone());
        if row.next_seq.is_some_and(|n| n > 0) {
            return Ok(Some((id, http)));
        }
        // Assigned, but not reporting chunks: ask it (a restarted server does not report the
        // broadcasts it recovered until a publisher reconnects).
        let Some(base) = &http else {
            continue;
        };
        let list = format!("{}/v1/streams", base.trim_end_matches('/'));
        let v: proto::api::EntryStreams = node
            .http
            .get(&list)
            .bearer_auth(node.peer_bearer())
            .timeout(PEER_TIMEOUT)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| format!("server {id} unreachable: {e}"))?
            .json()
            .await
            .map_err(|e| format!("server {id}: {e}"))?;
        let holds = v.streams.iter().any(|s| {
            s.stream.as_str() == stream
                && &s.broadcast == broadcast
                && s.source == proto::api::StreamSource::Ingest
                && s.next_seq > 0
        });
        if holds {
            return Ok(Some((id, http)));
        }
    }
    Ok(None)
}

/// Where a re-publish of `s` continues, from its last stored tags; Err when they are not FLV
/// tags (a native or HTTP-push stream).
async fn stored_resume(s: &Arc<Stream>) -> Result<Resume, String> {
    let s = s.clone();
    tokio::task::spawn_blocking(move || {
        let next = s.edge().next_seq;
        let mut at = next.saturating_sub(64).max(s.first_seq());
        let mut stored = Vec::new();
        while at < next {
            let chunks = s.read(at, 4 << 20).map_err(|e| e.to_string())?;
            let Some(last) = chunks.last() else {
                break;
            };
            at = last.seq + 1;
            for c in chunks {
                let Some(t) = flv::parse(&c.payload) else {
                    return Err(format!(
                        "stream {} holds data that is not RTMP (FLV tags): publish under a new \
                         stream id",
                        s.name
                    ));
                };
                stored.push((t.kind, c.pts.div_euclid(1000)));
            }
        }
        Ok(resume_point(&stored))
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_names_carry_a_token_or_a_stream_key() {
        let p = |stream, token, key| PublishName { stream, token, key };
        assert_eq!(
            parse_publish_name("cam1?token=abc"),
            p(Some("cam1"), Some("abc"), None)
        );
        assert_eq!(
            parse_publish_name("cam1?x=1&token=abc"),
            p(Some("cam1"), Some("abc"), None)
        );
        assert_eq!(
            parse_publish_name("cam1?key=sk_secret"),
            p(Some("cam1"), None, Some("sk_secret"))
        );
        assert_eq!(
            parse_publish_name("cam1?tokenx=1"),
            p(Some("cam1"), None, None)
        );
        assert_eq!(
            parse_publish_name("cam1?token="),
            p(Some("cam1"), None, None)
        );
        assert_eq!(parse_publish_name("cam1"), p(Some("cam1"), None, None));
        let jwt = format!("{}.{}.{}", "a".repeat(30), "b".repeat(40), "c".repeat(20));
        assert_eq!(parse_publish_name(&jwt), p(None, Some(jwt.as_str()), None));
    }

    #[test]
    fn timestamps_extend_across_the_32_bit_wrap() {
        let mut t = Timeline::new(None);
        assert_eq!(t.media(u32::MAX - 10), i64::from(u32::MAX) - 10);
        assert_eq!(t.media(5), (1i64 << 32) + 5);
    }

    #[test]
    fn a_fresh_publish_keeps_its_timestamps() {
        let mut t = Timeline::new(None);
        assert_eq!(t.metadata(), 0);
        assert_eq!(t.media(0), 0);
        assert_eq!(t.media(40), 40);
        assert_eq!(t.metadata(), 40);
    }

    #[test]
    fn a_republish_restarting_near_zero_continues_one_frame_after_the_stored_end() {
        let r = Resume {
            last_ms: 10_000,
            gap_ms: 40,
        };
        let mut t = Timeline::new(Some(r));
        // Metadata before any media lands where the stream left off.
        assert_eq!(t.metadata(), 10_000);
        assert_eq!(t.media(3), 10_040);
        assert_eq!(t.media(3), 10_040);
        assert_eq!(t.media(26), 10_063);
        assert_eq!(t.media(43), 10_080);
        assert_eq!(t.metadata(), 10_080);
    }

    #[test]
    fn a_republish_whose_timestamps_already_continue_is_kept() {
        let r = Resume {
            last_ms: 10_000,
            gap_ms: 40,
        };
        let mut t = Timeline::new(Some(r));
        assert_eq!(t.media(12_500), 12_500);
        assert_eq!(t.media(12_540), 12_540);
        // Exactly at the stored end counts as continuing.
        let mut t = Timeline::new(Some(r));
        assert_eq!(t.media(10_000), 10_000);
    }

    #[test]
    fn the_resume_point_follows_the_last_tag_by_the_longest_frame_interval() {
        use flv::{AUDIO, SCRIPT, VIDEO};
        let stored = [
            (VIDEO, 960),
            (AUDIO, 975),
            (AUDIO, 998),
            (VIDEO, 1000),
            (SCRIPT, 1000),
        ];
        assert_eq!(
            resume_point(&stored),
            Resume {
                last_ms: 1000,
                gap_ms: 40
            }
        );
        // Audio only, 23 ms frames.
        let audio = [(AUDIO, 0), (AUDIO, 23), (AUDIO, 46)];
        assert_eq!(resume_point(&audio).gap_ms, 23);
        // Nothing to go by: the default; a stall is not a frame interval.
        assert_eq!(resume_point(&[]).gap_ms, DEFAULT_GAP_MS);
        assert_eq!(
            resume_point(&[(VIDEO, 0), (VIDEO, 5000)]).gap_ms,
            DEFAULT_GAP_MS
        );
    }
}
