//! Ingest sessions: one state machine for the native protocol, generic over the transport
//! (TCP frames back to back, or one frame per WebSocket binary message).
//!
//! The rules are those of `crates/proto/PROTOCOL.md` ("Session rules"): HELLO with a token the
//! director signed for this stream, broadcast, server and role (admission and opening are the
//! ingest core's, [`crate::core`]) → WELCOME with the next sequence number this server lacks → DATA appended to the durable log, in order → ACK through what is
//! durable → END. Duplicates are ignored (and acknowledged), a gap ends the session, a newer
//! session for the same stream replaces an older one. Any malformed frame ends only its own
//! session, with an ERROR frame saying why.

use crate::core::{self, IngestError};
use crate::hub::{Chunk, Source, Stream};
use crate::node::{Node, SessionSample};
use bytes::BytesMut;
use chunklog::{AppendOutcome, FsyncPolicy, Record};
use proto::{Decoder, ErrorCode, ErrorFrame, Frame, FrameError, Welcome};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::Instrument;

/// A connection that carries whole frames.
pub trait FrameIo: Send {
    /// The next frame; `Ok(None)` when the peer closed cleanly. Must be cancel-safe.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Frame>, SessionError>> + Send;
    fn send(&mut self, f: &Frame) -> impl Future<Output = Result<(), SessionError>> + Send;
    /// A `TCP_INFO` reading of the underlying socket, where there is one.
    fn tcp_info(&self) -> Option<crate::tcpinfo::TcpInfo> {
        None
    }
}

/// Why a session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("websocket: {0}")]
    Ws(String),
}

/// The native protocol over a TCP connection, or over any byte stream on one (TLS).
#[derive(Debug)]
pub struct TcpFrames<S = TcpStream> {
    sock: S,
    /// The underlying TCP socket's descriptor, for `TCP_INFO` (owned by `sock`).
    fd: Option<std::os::fd::RawFd>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    dec: Decoder,
}

impl TcpFrames<TcpStream> {
    pub fn new(sock: TcpStream, limits: proto::Limits) -> Self {
        use std::os::fd::AsRawFd;
        let fd = sock.as_raw_fd();
        Self::with_stream(sock, Some(fd), limits)
    }
}

impl TcpFrames<tokio_rustls::server::TlsStream<TcpStream>> {
    /// The native protocol over TLS on TCP.
    pub fn tls(sock: tokio_rustls::server::TlsStream<TcpStream>, limits: proto::Limits) -> Self {
        use std::os::fd::AsRawFd;
        let fd = sock.get_ref().0.as_raw_fd();
        Self::with_stream(sock, Some(fd), limits)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> TcpFrames<S> {
    /// Frames over `sock`; `fd` is the descriptor of the TCP socket under it (which `sock` must
    /// own for as long as it lives), for `TCP_INFO`.
    pub fn with_stream(sock: S, fd: Option<std::os::fd::RawFd>, limits: proto::Limits) -> Self {
        Self {
            sock,
            fd,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::new(),
            dec: Decoder::new(limits),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> FrameIo for TcpFrames<S> {
    async fn recv(&mut self) -> Result<Option<Frame>, SessionError> {
        loop {
            if let Some(f) = self.dec.decode(&mut self.rbuf)? {
                return Ok(Some(f));
            }
            if self.sock.read_buf(&mut self.rbuf).await? == 0 {
                return match self.dec.decode_eof(&mut self.rbuf)? {
                    Some(f) => Ok(Some(f)),
                    None => Ok(None),
                };
            }
        }
    }

    async fn send(&mut self, f: &Frame) -> Result<(), SessionError> {
        self.wbuf.clear();
        proto::encode(f, &mut self.wbuf)?;
        self.sock.write_all(&self.wbuf).await?;
        self.sock.flush().await?;
        Ok(())
    }

    fn tcp_info(&self) -> Option<crate::tcpinfo::TcpInfo> {
        crate::tcpinfo::read(self.fd?)
    }
}

/// The native protocol over a WebSocket: one frame per binary message.
pub struct WsFrames {
    ws: axum::extract::ws::WebSocket,
    dec: Decoder,
    wbuf: BytesMut,
}

impl std::fmt::Debug for WsFrames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsFrames")
    }
}

impl WsFrames {
    pub fn new(ws: axum::extract::ws::WebSocket, limits: proto::Limits) -> Self {
        Self {
            ws,
            dec: Decoder::new(limits),
            wbuf: BytesMut::new(),
        }
    }
}

impl FrameIo for WsFrames {
    async fn recv(&mut self) -> Result<Option<Frame>, SessionError> {
        use axum::extract::ws::Message;
        loop {
            match self.ws.recv().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(SessionError::Ws(e.to_string())),
                Some(Ok(Message::Binary(b))) => {
                    return Ok(Some(self.dec.decode_message(BytesMut::from(&b[..]))?));
                }
                Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(_))) => {
                    return Err(SessionError::Ws(
                        "text message: the native protocol uses binary messages, one frame each"
                            .into(),
                    ));
                }
                Some(Ok(_)) => continue, // ping/pong handled by the library
            }
        }
    }

    async fn send(&mut self, f: &Frame) -> Result<(), SessionError> {
        self.wbuf.clear();
        proto::encode(f, &mut self.wbuf)?;
        let msg = axum::extract::ws::Message::Binary(self.wbuf.split().freeze());
        self.ws
            .send(msg)
            .await
            .map_err(|e| SessionError::Ws(e.to_string()))
    }
}

async fn refuse<T: FrameIo>(io: &mut T, code: ErrorCode, message: impl Into<String>) {
    let message: String = message.into();
    tracing::info!(%code, %message, "refusing session");
    let mut m = message;
    m.truncate(proto::frame::MAX_ERROR_MESSAGE);
    let _ = io
        .send(&Frame::Error(ErrorFrame { code, message: m }))
        .await;
}

/// Serve one ingest connection until it ends.
pub async fn serve<T: FrameIo>(mut io: T, node: Arc<Node>, peer: Option<IpAddr>) {
    let hello = match tokio::time::timeout(Duration::from_secs(10), io.recv()).await {
        Ok(Ok(Some(Frame::Hello(h)))) => h,
        Ok(Ok(Some(other))) => {
            return refuse(
                &mut io,
                ErrorCode::Protocol,
                format!(
                    "expected HELLO as the first frame, got {}",
                    other.frame_type().name()
                ),
            )
            .await;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            let code = match &e {
                SessionError::Frame(f) => f.code(),
                _ => ErrorCode::Protocol,
            };
            return refuse(&mut io, code, e.to_string()).await;
        }
        Err(_) => {
            return refuse(&mut io, ErrorCode::Protocol, "no HELLO within 10 s").await;
        }
    };
    if let Some(r) = hello.resume_from
        && r > proto::MAX_SEQ
    {
        let e = IngestError::Protocol(format!(
            "resume_from {r} is beyond the largest sequence number ({})",
            proto::MAX_SEQ
        ));
        return refuse(&mut io, e.native_code(), e.to_string()).await;
    }
    let token = String::from_utf8_lossy(&hello.token).into_owned();
    let admitted = core::admit(
        &node,
        core::Credential::Token(&token),
        core::Expect {
            stream: Some(hello.stream.as_str()),
            role: Some(hello.role),
            continue_after_expiry: false,
        },
        proto::Protocol::Native,
        peer,
    )
    .await;
    let a = match admitted {
        Ok(a) => a,
        Err(e) => return refuse(&mut io, e.native_code(), e.to_string()).await,
    };
    let stream = match core::open(&node, &a, hello.resume_from).await {
        Ok(s) => s,
        Err(e) => return refuse(&mut io, e.native_code(), e.to_string()).await,
    };
    let epoch = stream.epoch.fetch_add(1, Ordering::SeqCst) + 1;
    let edge = stream.edge();
    if let Some(f) = edge.ended {
        // Already complete: tell the client everything is durable.
        let _ = io
            .send(&Frame::Welcome(welcome(&node, f.saturating_add(1))))
            .await;
        let _ = io.send(&Frame::Ack { through: f }).await;
        return;
    }
    if let Some(r) = hello.resume_from
        && r > edge.next_seq
    {
        let e = IngestError::Resume {
            need: edge.next_seq,
            have: r,
        };
        return refuse(&mut io, e.native_code(), e.to_string()).await;
    }
    if io
        .send(&Frame::Welcome(welcome(&node, edge.next_seq)))
        .await
        .is_err()
    {
        return;
    }
    // The session's span is attached to its future, never entered across an await: a guard held
    // over an await stays entered on the worker thread while other tasks run there, and every
    // span they open becomes its child — a chain that grows with each session, in memory and in
    // every log line (the soak of 2026-12-05 wrote 650 MB of log in 5 minutes that way).
    let span = tracing::info_span!("ingest", stream = %a.stream, broadcast = %a.broadcast, role = %a.role, ?peer);
    async {
        tracing::info!(next_seq = edge.next_seq, "session started");
        let session = core::Session::start(&node, &stream, a.role);
        let result = session_loop(&mut io, &node, &stream, epoch, a.role, peer).await;
        drop(session);
        if let Some(info) = io.tcp_info()
            && let Some(ip) = peer
        {
            node.record_sample(SessionSample {
                stream: stream.name.clone(),
                role: a.role,
                client_ip: ip,
                info,
                bytes: 0,
                secs: 0.0,
            });
        }
        match result {
            Ok(()) => tracing::info!("session ended"),
            Err((code, msg)) => {
                tracing::info!(%code, %msg, "session failed");
                refuse(&mut io, code, msg).await;
            }
        }
    }
    .instrument(span)
    .await
}

fn welcome(node: &Node, next_seq: u64) -> Welcome {
    Welcome {
        next_seq,
        server_id: node.cfg.id.clone(),
        max_payload: node.limits.max_payload,
        max_frame_len: node.limits.max_frame_len,
        ack_interval_ms: node.cfg.ack_interval_ms,
    }
}

type Fail = (ErrorCode, String);

/// Whether this session must stop: a newer session of the broadcast replaced it, or the
/// director superseded the broadcast.
fn replaced(stream: &Stream, epoch: u64) -> Option<Fail> {
    if stream.is_superseded() {
        let e = IngestError::Superseded(stream.broadcast.clone());
        return Some((e.native_code(), e.to_string()));
    }
    (stream.epoch.load(Ordering::SeqCst) != epoch).then(|| {
        (
            ErrorCode::GoingAway,
            "replaced by a newer session for this broadcast".into(),
        )
    })
}

async fn session_loop<T: FrameIo>(
    io: &mut T,
    node: &Arc<Node>,
    stream: &Arc<Stream>,
    epoch: u64,
    role: proto::Role,
    peer: Option<IpAddr>,
) -> Result<(), Fail> {
    let Source::Ingest(_) = &stream.source else {
        return Err((ErrorCode::Internal, "not an ingest stream".into()));
    };
    let mut tick = tokio::time::interval(Duration::from_millis(node.cfg.ack_interval_ms.into()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut acked: Option<u64> = None;
    let mut last_frame = tokio::time::Instant::now();
    let mut last_sample = tokio::time::Instant::now();
    let mut sample_base = io.tcp_info();
    let idle = Duration::from_secs(15);
    loop {
        tokio::select! {
            f = io.recv() => {
                last_frame = tokio::time::Instant::now();
                match f {
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        let code = match &e { SessionError::Frame(f) => f.code(), _ => ErrorCode::Protocol };
                        node.metrics.bad_frames.fetch_add(1, Ordering::Relaxed);
                        return Err((code, e.to_string()));
                    }
                    Ok(Some(Frame::Data(d))) => {
                        if let Some(e) = replaced(stream, epoch) {
                            return Err(e);
                        }
                        let rec = Record { seq: d.seq, pts: d.pts, flags: d.flags.bits(), payload: d.payload };
                        let out = crate::logio::with_log(node, stream, move |log| {
                            let r = log.append(&rec);
                            (r, log.durable_through(), rec)
                        }).await;
                        let Ok((r, durable, rec)) = out else {
                            return Err((ErrorCode::Internal, "log task failed".into()));
                        };
                        match r {
                            Ok(AppendOutcome::Appended) => {
                                node.metrics.chunks_in.fetch_add(1, Ordering::Relaxed);
                                stream.publish([Chunk { seq: rec.seq, pts: rec.pts, flags: rec.flags, payload: rec.payload }]);
                            }
                            Ok(AppendOutcome::Duplicate) => {
                                node.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(chunklog::LogError::Gap { expected, got }) => {
                                return Err((ErrorCode::Protocol, format!("gap: expected sequence {expected}, got {got}")));
                            }
                            Err(e) => {
                                node.note_storage_error(&e);
                                let code = if node.storage_problem().is_some() { ErrorCode::GoingAway } else { ErrorCode::Internal };
                                return Err((code, format!("log write failed: {e}")));
                            }
                        }
                        if !matches!(node.log_config.fsync, FsyncPolicy::Interval(_)) {
                            // Always/Never: durable_through moved with the append.
                            if let Some(d) = durable && acked != Some(d) {
                                io.send(&Frame::Ack { through: d }).await.map_err(|e| (ErrorCode::Protocol, e.to_string()))?;
                                acked = Some(d);
                            }
                        }
                    }
                    Ok(Some(Frame::End { final_seq })) => {
                        if let Some(e) = replaced(stream, epoch) {
                            return Err(e);
                        }
                        match core::end(stream, Some(final_seq)).await {
                            Ok(_) => {
                                let _ = io.send(&Frame::Ack { through: final_seq }).await;
                                tracing::info!(final_seq, "stream ended");
                                return Ok(());
                            }
                            Err(e) => return Err((e.native_code(), e.to_string())),
                        }
                    }
                    Ok(Some(Frame::Ping(n))) => {
                        io.send(&Frame::Pong(n)).await.map_err(|e| (ErrorCode::Protocol, e.to_string()))?;
                    }
                    Ok(Some(Frame::Pong(_))) => {}
                    Ok(Some(other)) => {
                        return Err((ErrorCode::Protocol, format!("unexpected {} frame during a session", other.frame_type().name())));
                    }
                }
            }
            _ = tick.tick() => {
                if let Some(e) = replaced(stream, epoch) {
                    return Err(e);
                }
                if last_frame.elapsed() > idle {
                    return Err((ErrorCode::Protocol, "no frame for 15 s".into()));
                }
                match crate::logio::sync(node, stream).await {
                    Ok(Some(d)) if acked != Some(d) => {
                        io.send(&Frame::Ack { through: d }).await.map_err(|e| (ErrorCode::Protocol, e.to_string()))?;
                        acked = Some(d);
                    }
                    Err(e) => {
                        let code = if node.storage_problem().is_some() { ErrorCode::GoingAway } else { ErrorCode::Internal };
                        return Err((code, format!("log sync failed: {e}")));
                    }
                    _ => {}
                }
                if last_sample.elapsed() >= node.cfg.sample_interval() {
                    if let (Some(now), Some(ip)) = (io.tcp_info(), peer) {
                        let secs = last_sample.elapsed().as_secs_f64();
                        let bytes = sample_base.map_or(0, |b| now.bytes_received.saturating_sub(b.bytes_received));
                        node.record_sample(SessionSample { stream: stream.name.clone(), role, client_ip: ip, info: now, bytes, secs });
                        sample_base = Some(now);
                    }
                    last_sample = tokio::time::Instant::now();
                }
            }
        }
    }
}
