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
//! the sequence number = the index of the message since the stream's first publish on this
//! server (0, 1, 2, …): an encoder's `tee` outputs send the same messages in the same order to
//! the primary and the backup, so both logs number them identically and the relay merge (first
//! arrival per sequence number wins) works unchanged. The metadata tag is rebuilt from the parsed
//! `onMetaData` fields in a fixed order, so both servers store the same bytes.
//!
//! **Re-publish rule.** A publish is accepted only into a stream log that is empty: a stream that
//! already holds chunks here (an earlier publish that dropped, or a native stream) is refused
//! with `NetStream.Publish.BadName` — continuing it could number messages differently from the
//! other server (the messages lost in the gap exist there), which would corrupt the merge. An
//! encoder that lost a path asks the director for a new stream id; the other path keeps the
//! stream alive for viewers meanwhile. A clean unpublish (`deleteStream`/`closeStream`) ends the
//! stream (END at the last sequence number); a dropped connection does not.
//!
//! **Refusals.** Wrong app → `NetConnection.Connect.Rejected`; bad, expired or misdirected token
//! → `NetStream.Publish.Denied`; a second publisher for a stream that has one here, or a stream
//! with data → `NetStream.Publish.BadName`; play → `NetStream.Play.Failed` (play over HTTP-FLV).
//! Every library error, and any panic inside the library (it indexes into hostile AMF arrays),
//! ends that connection only.
//!
//! What this is not: an RTMP player endpoint, or a transcoder.

use crate::flv::{self, MetaValue};
use crate::hub::{Chunk, Source, Stream};
use crate::node::Node;
use chunklog::{Record, StreamLog};
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

/// Serve one RTMP connection until it ends. Never panics; every error closes only this
/// connection.
pub async fn serve(sock: TcpStream, node: Arc<Node>, peer: SocketAddr) {
    let _ = sock.set_nodelay(true);
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
    sock: TcpStream,
    node: Arc<Node>,
    peer: SocketAddr,
    publishing: Option<Publishing>,
}

/// A publish in progress.
struct Publishing {
    stream: Arc<Stream>,
    /// Extends 32-bit RTMP timestamps across wrap-around.
    ts_high: i64,
    last_ts: u32,
    /// Messages received but not yet appended.
    batch: Vec<(u8, u32, bytes::Bytes)>,
}

impl Publishing {
    fn pts_us(&mut self, ts: u32) -> i64 {
        if ts < self.last_ts && self.last_ts - ts > 1 << 31 {
            self.ts_high += 1 << 32;
        }
        self.last_ts = ts;
        (self.ts_high + i64::from(ts)) * 1000
    }

    /// Append the batch to the log, then publish it to viewers.
    async fn flush(&mut self) -> Result<(), RtmpError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let recs: Vec<(Record, u8)> = batch
            .into_iter()
            .map(|(kind, ts, data)| {
                let payload = flv::tag(kind, ts, &data);
                let class = flv::parse(&payload).map(|t| flv::classify(&t));
                let flags = if class == Some(flv::Class::VideoKeyframe) {
                    proto::DataFlags::KEYFRAME.bits()
                } else {
                    0
                };
                let pts = self.pts_us(ts);
                let rec = Record {
                    seq: 0,
                    pts,
                    flags,
                    payload,
                };
                (rec, flags)
            })
            .collect();
        let s = self.stream.clone();
        let out = tokio::task::spawn_blocking(move || {
            let Source::Ingest(log) = &s.source else {
                return Err("not an ingest stream".to_string());
            };
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            let mut chunks = Vec::with_capacity(recs.len());
            for (mut rec, _) in recs {
                rec.seq = log.next_seq();
                log.append(&rec).map_err(|e| e.to_string())?;
                chunks.push(Chunk {
                    seq: rec.seq,
                    pts: rec.pts,
                    flags: rec.flags,
                    payload: rec.payload,
                });
            }
            if log.needs_sync() {
                log.sync().map_err(|e| e.to_string())?;
            }
            Ok(chunks)
        })
        .await
        .map_err(|e| RtmpError::Log(e.to_string()))?
        .map_err(RtmpError::Log)?;
        self.stream.publish(out);
        Ok(())
    }

    /// The publish is over: a clean unpublish ends the stream; a drop leaves it open.
    async fn finish(mut self, node: &Arc<Node>, clean: bool) {
        let _ = self.flush().await;
        self.stream.live_sessions.fetch_sub(1, Ordering::SeqCst);
        node.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
        let s = self.stream.clone();
        let ended = tokio::task::spawn_blocking(move || {
            let Source::Ingest(log) = &s.source else {
                return None;
            };
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            let next = log.next_seq();
            if clean && next > 0 && log.ended().is_none() {
                log.end(next - 1).and_then(|_| log.sync()).ok()?;
                return Some(next - 1);
            }
            let _ = log.sync();
            None
        })
        .await
        .ok()
        .flatten();
        if let Some(f) = ended {
            self.stream.end(f);
            tracing::info!(stream = %self.stream.name, final_seq = f, "rtmp stream ended");
        }
    }
}

/// Split a publish name into (stream, token): `stream?token=JWT` (other query keys ignored),
/// or the bare token.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once('?') {
        Some((stream, query)) => {
            let token = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .unwrap_or("");
            (Some(stream), token)
        }
        None if key.matches('.').count() == 2 && key.len() > 64 => (None, key),
        None => (Some(key), ""),
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
                    p.flush().await?;
                }
                if clean {
                    return Ok(true);
                }
            }
            if !out.is_empty() {
                self.sock.write_all(&out).await?;
                out.clear();
            }
            let n = match tokio::time::timeout(Duration::from_secs(15), self.sock.read(&mut buf))
                .await
            {
                Ok(r) => r?,
                Err(_) => return Err(RtmpError::Timeout),
            };
            if n == 0 {
                return Ok(false);
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
            } => match self.authorize(&stream_key).await {
                Ok(p) => {
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
            },
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
                    let ts = p.last_ts;
                    p.batch
                        .push((flv::SCRIPT, ts, metadata_tag(&metadata).into()));
                }
                Ok(Vec::new())
            }
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => {
                if let Some(p) = &mut self.publishing {
                    p.batch.push((flv::AUDIO, timestamp.value, data));
                }
                Ok(Vec::new())
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => {
                if let Some(p) = &mut self.publishing {
                    p.batch.push((flv::VIDEO, timestamp.value, data));
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

    /// Check the publish name's token and open the stream; Err((status code, why)).
    async fn authorize(&mut self, key: &str) -> Result<Publishing, (&'static str, String)> {
        const DENIED: &str = "NetStream.Publish.Denied";
        const BAD_NAME: &str = "NetStream.Publish.BadName";
        let node = self.node.clone();
        if self.publishing.is_some() {
            return Err((BAD_NAME, "this connection already publishes".into()));
        }
        if node.draining.load(Ordering::SeqCst) {
            return Err((
                DENIED,
                "this entry server is draining: ask the director for another".into(),
            ));
        }
        let (stream, token) = split_key(key);
        if token.is_empty() {
            node.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            return Err((
                DENIED,
                "no token: publish to live/<stream>?token=<token from the director>".into(),
            ));
        }
        let claims = node.verifier.verify(token, node.now_unix()).map_err(|e| {
            node.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            (DENIED, format!("token refused: {e}"))
        })?;
        let name = stream.unwrap_or(&claims.stream).to_string();
        if claims.stream != name || claims.server != node.cfg.id {
            node.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            return Err((
                DENIED,
                format!(
                    "token is for stream {:?} at server {:?}, not stream {name:?} at {:?}",
                    claims.stream, claims.server, node.cfg.id
                ),
            ));
        }
        if proto::StreamId::parse(&name).is_err() {
            return Err((BAD_NAME, format!("bad stream id {name:?}")));
        }
        // Under the opening lock: one publisher per stream, and only into an empty log.
        let _one = node.opening.lock().await;
        let s = match node.hub.get_ingest(&name) {
            Some(s) => s,
            None => {
                let cfg = node.log_config.clone();
                let n = name.clone();
                let log = tokio::task::spawn_blocking(move || StreamLog::open(&cfg, &n))
                    .await
                    .map_err(|e| (DENIED, e.to_string()))?
                    .map_err(|e| (DENIED, format!("cannot open the stream log: {e}")))?;
                let s = Stream::new(
                    name.clone(),
                    Source::Ingest(std::sync::Mutex::new(log)),
                    node.cfg.tail_bytes,
                );
                node.hub.insert_ingest(s.clone());
                s
            }
        };
        if s.live_sessions.load(Ordering::SeqCst) > 0 {
            return Err((
                BAD_NAME,
                format!("stream {name} already has a publisher on this server"),
            ));
        }
        let edge = s.edge();
        if edge.next_seq > 0 || edge.ended.is_some() {
            return Err((
                BAD_NAME,
                format!(
                    "stream {name} already holds {} chunks here{}: publish under a new stream id",
                    edge.next_seq,
                    if edge.ended.is_some() {
                        " and ended"
                    } else {
                        ""
                    }
                ),
            ));
        }
        s.live_sessions.fetch_add(1, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        node.metrics.sessions.fetch_add(1, Ordering::Relaxed);
        *s.role.lock().unwrap_or_else(|e| e.into_inner()) = Some(claims.role);
        tracing::info!(stream = %name, role = %claims.role, peer = %self.peer, "rtmp publish started");
        Ok(Publishing {
            stream: s,
            ts_high: 0,
            last_ts: 0,
            batch: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_names_carry_the_token_as_a_query_or_as_the_key() {
        assert_eq!(split_key("cam1?token=abc"), (Some("cam1"), "abc"));
        assert_eq!(split_key("cam1?x=1&token=abc"), (Some("cam1"), "abc"));
        assert_eq!(split_key("cam1"), (Some("cam1"), ""));
        let jwt = format!("{}.{}.{}", "a".repeat(30), "b".repeat(40), "c".repeat(20));
        assert_eq!(split_key(&jwt), (None, jwt.as_str()));
    }

    #[test]
    fn timestamps_extend_across_the_32_bit_wrap() {
        let mut p = Publishing {
            stream: Stream::new("s".into(), Source::Relay, 1 << 16),
            ts_high: 0,
            last_ts: 0,
            batch: Vec::new(),
        };
        assert_eq!(p.pts_us(u32::MAX - 10), (i64::from(u32::MAX) - 10) * 1000);
        assert_eq!(p.pts_us(5), ((1i64 << 32) + 5) * 1000);
    }
}
