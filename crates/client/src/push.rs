//! Dual upload: one source, two entry servers, no loss when either path dies.
//!
//! **What.** [`Pusher::run`] reads an [`AsyncRead`] source, cuts it into chunks
//! ([`crate::chunker`]), numbers them, and sends every chunk on every path concurrently. Each
//! path is a task with its own connection speaking the native protocol
//! (`crates/proto/PROTOCOL.md`): HELLO → WELCOME → DATA… ← ACK, PING when idle, END at the end.
//! All decisions — what to send, what to keep, when to reconnect or ask for a replacement — are
//! taken by the pure [`PushCore`](crate::core::PushCore); this module only moves bytes and
//! waits.
//!
//! **Concurrency.** The core sits behind one `std::sync::Mutex`, held for microseconds and never
//! across an await. Every change bumps a `watch` counter (`epoch`); whoever waits for something
//! (a writer for a chunk, the reader for ring space, `run` for the end) re-checks the core after
//! each bump. Spurious wake-ups are cheap; lost ones are impossible because each waiter marks
//! the counter seen *before* checking the core. Within a session, the reading half and the
//! writing half run as two futures; PONGs go from the reader to the writer over a small channel.
//!
//! **Transports.** [`Connect`] opens a byte stream for a [`PathTarget`]; [`TcpConnect`] handles
//! `tcp://host:port` and `tls://host:port` (TLS verified against the webpki roots plus
//! [`PushConfig::ca_file`]). Tests plug in `tokio::io::duplex` or real loopback sockets.
//!
//! **What not.** No terminal output (the binary renders [`PushProgress`]); no WebSocket transport
//! yet.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proto::{
    Decoder, ErrorCode, ErrorFrame, Frame, FrameError, Hello, Limits, Protocol, Role, StreamId,
    encode,
};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};

use crate::chunker::{Align, Chunker};
use crate::core::{
    AckError, FailoverPolicy, Next, Outgoing, PathState, PathTarget, PushCore, WelcomeError,
};
use crate::director::{AssignRequest, Assignment, Director, REQUEST_TIMEOUT, url_for};
use crate::error::{ClientError, PushError};
use proto::BroadcastId;

/// Knobs of a push. `Default` is what `firstmile push` uses.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Largest chunk payload.
    pub chunk_max: usize,
    /// Longest a byte waits in the chunker before its chunk is cut.
    pub chunk_window: Duration,
    /// Chunk alignment (MPEG-TS detection).
    pub align: Align,
    /// Byte budget of the ring of unacknowledged chunks.
    pub ring_bytes: usize,
    /// Backoff and replacement timing.
    pub policy: FailoverPolicy,
    /// Connect + HELLO → WELCOME must take at most this.
    pub connect_timeout: Duration,
    /// PING after this long without writing anything.
    pub ping_interval: Duration,
    /// A session with no frame from the server for this long is dead.
    pub idle_timeout: Duration,
    /// The push fails if no path is welcomed within this.
    pub start_timeout: Duration,
    /// After the input ends, wait at most this for the paths to finish.
    pub end_timeout: Duration,
    /// The protocol whose URL paths use (only native is implemented).
    pub protocol: Protocol,
    /// Extra CA certificates (PEM file) trusted for `tls://` servers, besides the webpki roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            chunk_max: 64 * 1024,
            chunk_window: Duration::from_millis(20),
            align: Align::Auto,
            ring_bytes: 512 * 1024 * 1024,
            policy: FailoverPolicy::default(),
            connect_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(8),
            start_timeout: Duration::from_secs(30),
            end_timeout: Duration::from_secs(30),
            protocol: Protocol::Native,
            ca_file: None,
        }
    }
}

/// After END's ACK, how long to wait for the server to close before closing ourselves.
const END_LINGER: Duration = Duration::from_secs(2);

/// Opens a byte stream to a path's server.
pub trait Connect: Send + Sync + 'static {
    /// The stream type.
    type Io: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    /// Connects to `target`.
    fn connect<'a>(
        &'a self,
        target: &'a PathTarget,
    ) -> Pin<Box<dyn Future<Output = io::Result<Self::Io>> + Send + 'a>>;
}

/// Native protocol over plain TCP (`tcp://host:port`) or TLS on TCP (`tls://host:port`; the
/// server is verified against the webpki roots plus the optional extra CA, for the URL's host).
#[derive(Debug, Clone, Default)]
pub struct TcpConnect {
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Why the configured CA file cannot be used (then `tls://` connections fail with it).
    ca_error: Option<String>,
}

impl TcpConnect {
    /// A connector trusting the webpki roots and the CA certificates in `ca_file` (PEM) if given.
    pub fn new(ca_file: Option<&Path>) -> io::Result<Self> {
        Ok(TcpConnect {
            tls: Some(tls_client_config(ca_file)?),
            ca_error: None,
        })
    }
}

use tokio_rustls::rustls;

/// A rustls client config (ring provider) trusting the webpki roots and `ca_file`'s certificates.
pub fn tls_client_config(ca_file: Option<&Path>) -> io::Result<Arc<rustls::ClientConfig>> {
    plumbing::tls::client_config(ca_file)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
}

/// A native-protocol connection: plain TCP or TLS on TCP.
#[derive(Debug)]
pub enum NativeStream {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl AsyncRead for NativeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            NativeStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            NativeStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NativeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            NativeStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            NativeStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            NativeStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            NativeStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            NativeStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            NativeStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connect for TcpConnect {
    type Io = NativeStream;
    fn connect<'a>(
        &'a self,
        target: &'a PathTarget,
    ) -> Pin<Box<dyn Future<Output = io::Result<Self::Io>> + Send + 'a>> {
        Box::pin(async move {
            let (addr, tls) = native_addr(&target.url)?;
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            if !tls {
                return Ok(NativeStream::Tcp(s));
            }
            if let Some(e) = &self.ca_error {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, e.clone()));
            }
            let config = match &self.tls {
                Some(c) => c.clone(),
                None => tls_client_config(None)?,
            };
            let name = server_name(addr)?;
            let s = tokio_rustls::TlsConnector::from(config)
                .connect(name, s)
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("TLS handshake with {addr}: {e}")))?;
            Ok(NativeStream::Tls(Box::new(s)))
        })
    }
}

/// The TLS server name of `host:port` (a DNS name or an IP address, `[v6]` allowed).
pub fn server_name(addr: &str) -> io::Result<rustls_pki_types::ServerName<'static>> {
    let host = match addr.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => addr,
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a valid TLS server name: {e}"),
        )
    })
}

/// `host:port` of a `tcp://host:port` or `tls://host:port` URL, and whether it is TLS.
pub fn native_addr(url: &str) -> io::Result<(&str, bool)> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("tls://") {
        (Some(r), true)
    } else {
        (url.strip_prefix("tcp://"), false)
    };
    rest.map(|a| a.trim_end_matches('/'))
        .filter(|a| !a.is_empty())
        .map(|a| (a, tls))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{url:?} is not a tcp://host:port or tls://host:port URL"),
            )
        })
}

/// `host:port` of a `tcp://host:port` (or `tls://host:port`) URL.
pub fn tcp_addr(url: &str) -> io::Result<&str> {
    native_addr(url).map(|(a, _)| a)
}

/// Asks for a replacement of one path of a stream's broadcast (the director, or a test double).
pub trait Reassign: Send + Sync {
    /// A fresh assignment for `stream` in which path `slot` is replaced.
    fn reassign<'a>(
        &'a self,
        stream: &'a StreamId,
        slot: Role,
    ) -> Pin<Box<dyn Future<Output = Result<Assignment, ClientError>> + Send + 'a>>;
}

/// [`Reassign`] through the director: the original request (with the stream's key) for the same
/// stream, continuing the same broadcast, replacing only the dead path.
#[derive(Debug, Clone)]
pub struct DirectorReassign {
    /// The director.
    pub director: Director,
    /// The request (its stream id is replaced by the pushed stream's).
    pub request: AssignRequest,
    /// The broadcast being pushed (from the first assignment).
    pub broadcast: BroadcastId,
}

impl Reassign for DirectorReassign {
    fn reassign<'a>(
        &'a self,
        stream: &'a StreamId,
        slot: Role,
    ) -> Pin<Box<dyn Future<Output = Result<Assignment, ClientError>> + Send + 'a>> {
        Box::pin(async move {
            let mut req = self.request.clone();
            req.stream = Some(stream.clone());
            req.broadcast = Some(self.broadcast.clone());
            req.replace = Some(slot);
            req.probes.clear();
            self.director.assign(&req).await
        })
    }
}

/// The replacement for path `slot` from a fresh assignment: the new pick for the same role
/// unless it is a server another path is using, else the other pick under the same condition.
/// The HELLO role is the pick's (the token is signed for it). `None`: nothing usable.
pub fn choose_replacement(
    a: &Assignment,
    slot: Role,
    in_use: &[String],
    protocol: Protocol,
) -> Option<PathTarget> {
    let same = match slot {
        Role::Primary => Some((Role::Primary, &a.primary)),
        Role::Backup => a.backup.as_ref().map(|b| (Role::Backup, b)),
    };
    let other = match slot {
        Role::Primary => a.backup.as_ref().map(|b| (Role::Backup, b)),
        Role::Backup => Some((Role::Primary, &a.primary)),
    };
    [same, other].into_iter().flatten().find_map(|(_, p)| {
        if in_use.iter().any(|u| u == p.server_id.as_str()) || p.token.is_empty() {
            return None;
        }
        Some(PathTarget {
            role: p.role,
            server_id: p.server_id.to_string(),
            url: url_for(p, protocol)?.to_owned(),
            token: p.token.clone(),
        })
    })
}

/// The paths of an assignment: primary, and backup when there is one.
pub fn targets_of(
    a: &Assignment,
    protocol: Protocol,
) -> Result<Vec<(Role, PathTarget)>, PushError> {
    let mut out = Vec::new();
    for (role, p) in [
        (Role::Primary, Some(&a.primary)),
        (Role::Backup, a.backup.as_ref()),
    ] {
        let Some(p) = p else { continue };
        let url = url_for(p, protocol).ok_or_else(|| {
            PushError::Assignment(format!(
                "the {role} pick {} has no {protocol} URL",
                p.server_id
            ))
        })?;
        out.push((
            role,
            PathTarget {
                role: p.role,
                server_id: p.server_id.to_string(),
                url: url.to_owned(),
                token: p.token.clone(),
            },
        ));
    }
    Ok(out)
}

/// A path's state for progress display.
#[derive(Debug, Clone, Serialize)]
pub struct PathProgress {
    /// Which path.
    pub slot: Role,
    /// Its current server.
    pub server_id: String,
    /// Its current URL.
    pub url: String,
    /// Its state.
    pub state: PathState,
    /// Highest sequence number its server acknowledged.
    pub acked_through: Option<u64>,
    /// Payload bytes written (resends included).
    pub sent_bytes: u64,
    /// Sessions re-established.
    pub reconnects: u32,
    /// Servers replaced.
    pub replacements: u32,
    /// Last error.
    pub last_error: Option<String>,
}

/// A snapshot of a push.
#[derive(Debug, Clone, Serialize)]
pub struct PushProgress {
    /// Time since the push started.
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    /// Input bytes taken.
    pub input_bytes: u64,
    /// Chunks cut.
    pub chunks: u64,
    /// First sequence number of this push.
    pub first_seq: Option<u64>,
    /// Next sequence number to be produced.
    pub next_seq: u64,
    /// Bytes held in the ring.
    pub ring_bytes: usize,
    /// Final sequence number, once the input ended.
    pub final_seq: Option<u64>,
    /// Per path.
    pub paths: Vec<PathProgress>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The end of a push: the last progress snapshot plus the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct PushSummary {
    /// The stream.
    pub stream: StreamId,
    /// True when both (all) paths' servers acknowledged END.
    pub complete_everywhere: bool,
    /// Paths whose server holds the whole stream.
    pub complete_paths: usize,
    /// Everything else.
    #[serde(flatten)]
    pub progress: PushProgress,
}

/// Reads progress snapshots of a running push.
#[derive(Debug, Clone)]
pub struct ProgressHandle {
    core: Arc<Mutex<PushCore>>,
    start: Instant,
}

impl ProgressHandle {
    /// The current state.
    pub fn snapshot(&self) -> PushProgress {
        snapshot(&lock(&self.core), self.start.elapsed())
    }
}

fn snapshot(c: &PushCore, elapsed: Duration) -> PushProgress {
    let (input_bytes, chunks) = c.input_totals();
    PushProgress {
        elapsed,
        input_bytes,
        chunks,
        first_seq: c.first_seq(),
        next_seq: c.ring().next_seq(),
        ring_bytes: c.ring().bytes(),
        final_seq: c.final_seq(),
        paths: c
            .paths()
            .iter()
            .map(|p| PathProgress {
                slot: p.slot,
                server_id: p.target.server_id.clone(),
                url: p.target.url.clone(),
                state: p.state,
                acked_through: p.acked_through(),
                sent_bytes: p.sent_bytes,
                reconnects: p.reconnects,
                replacements: p.replacements,
                last_error: p.last_error.clone(),
            })
            .collect(),
    }
}

fn lock(m: &Mutex<PushCore>) -> MutexGuard<'_, PushCore> {
    // A panic while holding the lock cannot leave the core half-updated in a way that matters
    // more than losing the push; keep going with what is there.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One push; see the module docs.
pub struct Pusher<C: Connect = TcpConnect> {
    stream: StreamId,
    config: PushConfig,
    connect: Arc<C>,
    reassign: Option<Arc<dyn Reassign>>,
    core: Arc<Mutex<PushCore>>,
    start: Instant,
}

impl<C: Connect> std::fmt::Debug for Pusher<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("stream", &self.stream)
            .field("config", &self.config)
            .field("reassign", &self.reassign.is_some())
            .finish_non_exhaustive()
    }
}

impl Pusher<TcpConnect> {
    /// A push of `stream` over the given paths (one or two) on TCP.
    ///
    /// `config.ca_file` is read here; when it cannot be used, `tls://` paths fail to connect
    /// with that error ([`from_assignment`](Self::from_assignment) reports it up front).
    pub fn new(stream: StreamId, paths: Vec<(Role, PathTarget)>, config: PushConfig) -> Self {
        let connect = match &config.ca_file {
            None => TcpConnect::default(),
            Some(ca) => TcpConnect::new(Some(ca)).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "CA file unusable; TLS paths will fail");
                TcpConnect {
                    tls: None,
                    ca_error: Some(e.to_string()),
                }
            }),
        };
        Pusher::with_connector(stream, paths, config, connect)
    }

    /// A push over an assignment's primary and backup.
    pub fn from_assignment(a: &Assignment, config: PushConfig) -> Result<Self, PushError> {
        if config.protocol != Protocol::Native {
            return Err(PushError::Assignment(format!(
                "pushing over {} is not implemented; use native",
                config.protocol
            )));
        }
        let paths = targets_of(a, config.protocol)?;
        Ok(Pusher::new(a.stream.clone(), paths, config))
    }
}

impl<C: Connect> Pusher<C> {
    /// A push using `connect` to open connections.
    pub fn with_connector(
        stream: StreamId,
        paths: Vec<(Role, PathTarget)>,
        config: PushConfig,
        connect: C,
    ) -> Self {
        let core = PushCore::new(paths, config.ring_bytes, config.policy);
        Pusher {
            stream,
            config,
            connect: Arc::new(connect),
            reassign: None,
            core: Arc::new(Mutex::new(core)),
            start: Instant::now(),
        }
    }

    /// Lets paths that stay down ask for replacements.
    pub fn with_reassign(mut self, r: impl Reassign + 'static) -> Self {
        self.reassign = Some(Arc::new(r));
        self
    }

    /// A handle to read progress while [`run`](Self::run) goes on.
    pub fn progress(&self) -> ProgressHandle {
        ProgressHandle {
            core: self.core.clone(),
            start: self.start,
        }
    }

    /// Pushes `source` to the end. `Ok` when at least one path's server acknowledged the whole
    /// stream (see [`PushSummary::complete_everywhere`] for both).
    pub async fn run<R: AsyncRead + Unpin + Send>(
        self,
        source: R,
    ) -> Result<PushSummary, PushError> {
        let (epoch, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            core: self.core.clone(),
            epoch,
            stream: self.stream.clone(),
            config: self.config.clone(),
            connect: self.connect.clone(),
            reassign: self.reassign.clone(),
            start: self.start,
        });
        let n = lock(&self.core).paths().len();
        let mut tasks = JoinSet::new();
        for i in 0..n {
            tasks.spawn(path_task(shared.clone(), i));
        }
        let result = feed(&shared, source).await;
        let result = match result {
            Ok(()) => finish(&shared).await,
            Err(e) => Err(e),
        };
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        result.map(|()| {
            let core = lock(&self.core);
            let complete_paths = (0..n).filter(|&i| core.path_complete(i)).count();
            PushSummary {
                stream: self.stream.clone(),
                complete_everywhere: complete_paths == n,
                complete_paths,
                progress: snapshot(&core, self.start.elapsed()),
            }
        })
    }
}

struct Shared<C> {
    core: Arc<Mutex<PushCore>>,
    epoch: watch::Sender<u64>,
    stream: StreamId,
    config: PushConfig,
    connect: Arc<C>,
    reassign: Option<Arc<dyn Reassign>>,
    start: Instant,
}

impl<C> Shared<C> {
    fn bump(&self) {
        self.epoch.send_modify(|e| *e = e.wrapping_add(1));
    }

    fn pts(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.start).as_micros()).unwrap_or(i64::MAX)
    }
}

fn path_errors(core: &PushCore) -> String {
    core.paths()
        .iter()
        .map(|p| {
            format!(
                "{} {} ({}): {}",
                p.slot,
                p.target.server_id,
                p.target.url,
                p.last_error.as_deref().unwrap_or("no error recorded")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads the source into the core until EOF, then ends the input.
async fn feed<C, R: AsyncRead + Unpin>(sh: &Shared<C>, mut source: R) -> Result<(), PushError> {
    let mut epoch = sh.epoch.subscribe();
    // Wait for the first WELCOME: it fixes the first sequence number.
    let deadline = Instant::now() + sh.config.start_timeout;
    loop {
        epoch.borrow_and_update();
        {
            let core = lock(&sh.core);
            if core.started() {
                break;
            }
            if core.all_done() {
                return Err(PushError::NoServer {
                    after: sh.start.elapsed(),
                    detail: path_errors(&core),
                });
            }
        }
        if timeout_at(deadline, epoch.changed()).await.is_err() {
            return Err(PushError::NoServer {
                after: sh.config.start_timeout,
                detail: path_errors(&lock(&sh.core)),
            });
        }
    }
    let mut chunker = Chunker::new(sh.config.chunk_max, sh.config.chunk_window, sh.config.align);
    let mut buf = vec![0u8; sh.config.chunk_max.max(4096)];
    let mut eof = false;
    loop {
        if !eof {
            let n = match chunker.deadline() {
                Some(d) => tokio::select! {
                    r = source.read(&mut buf) => Some(r.map_err(PushError::Input)?),
                    () = sleep_until(d) => None,
                },
                None => Some(source.read(&mut buf).await.map_err(PushError::Input)?),
            };
            match n {
                Some(0) => eof = true,
                Some(n) => chunker.feed(&buf[..n], Instant::now()),
                None => {}
            }
        }
        while let Some((at, chunk)) = chunker.take(Instant::now(), eof) {
            let pts = sh.pts(at);
            let mut chunk = chunk;
            loop {
                epoch.borrow_and_update();
                let r = {
                    let mut core = lock(&sh.core);
                    if core.all_done() {
                        return Err(PushError::AllPathsFailed {
                            detail: path_errors(&core),
                        });
                    }
                    core.push_chunk(pts, chunk)
                };
                match r {
                    Ok(_) => {
                        sh.bump();
                        break;
                    }
                    Err(back) => {
                        chunk = back;
                        // Ring full: wait for an ACK (or a path's death) to make room.
                        let _ = epoch.changed().await;
                    }
                }
            }
        }
        if eof {
            break;
        }
    }
    let pts = sh.pts(Instant::now());
    loop {
        epoch.borrow_and_update();
        let done = lock(&sh.core).end_input(pts).is_some();
        if done {
            sh.bump();
            return Ok(());
        }
        let _ = epoch.changed().await;
    }
}

/// Waits (bounded) for every path to finish or die.
async fn finish<C>(sh: &Shared<C>) -> Result<(), PushError> {
    let mut epoch = sh.epoch.subscribe();
    let deadline = Instant::now() + sh.config.end_timeout;
    loop {
        epoch.borrow_and_update();
        {
            let core = lock(&sh.core);
            if core.all_done() {
                break;
            }
        }
        if timeout_at(deadline, epoch.changed()).await.is_err() {
            break;
        }
    }
    let core = lock(&sh.core);
    let n = core.paths().len();
    if (0..n).any(|i| core.path_complete(i)) {
        Ok(())
    } else {
        Err(PushError::AllPathsFailed {
            detail: path_errors(&core),
        })
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("no WELCOME within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("bad frame from server: {0}")]
    Decode(#[from] FrameError),
    #[error("server said {}: {}", .0.code.as_str(), .0.message)]
    Remote(ErrorFrame),
    #[error(transparent)]
    Welcome(#[from] WelcomeError),
    #[error(transparent)]
    Ack(#[from] AckError),
    #[error("unexpected {0} from server")]
    Unexpected(&'static str),
    #[error("no frame from server for {0:?}")]
    Idle(Duration),
    #[error("server closed the connection")]
    Closed,
    #[error("path stopped")]
    Stopped,
}

impl SessionError {
    /// Retrying the same server cannot help: go to the director at once.
    fn replace_now(&self) -> bool {
        match self {
            SessionError::Remote(e) => matches!(
                e.code,
                ErrorCode::Unauthorized
                    | ErrorCode::BadStreamId
                    | ErrorCode::UnsupportedVersion
                    | ErrorCode::TooLarge
                    | ErrorCode::ResumeUnavailable
                    | ErrorCode::Overloaded
                    | ErrorCode::GoingAway
            ),
            SessionError::Welcome(_) => true,
            _ => false,
        }
    }
}

async fn path_task<C: Connect>(sh: Arc<Shared<C>>, i: usize) {
    loop {
        let target = {
            let mut core = lock(&sh.core);
            let Some(p) = core.paths().get(i) else { return };
            if p.state.is_terminal() {
                return;
            }
            core.on_connecting(i);
            core.paths()[i].target.clone()
        };
        sh.bump();
        let result = session(&sh, i, &target).await;
        let next = {
            let mut core = lock(&sh.core);
            match result {
                Ok(()) => {
                    core.on_finished(i);
                    Next::Stop
                }
                Err(e) => {
                    tracing::info!(path = %core.paths()[i].slot, server = %target.server_id, error = %e, "session lost");
                    let fatal = e.replace_now();
                    core.on_session_lost(
                        i,
                        e.to_string(),
                        fatal,
                        sh.reassign.is_some(),
                        Instant::now(),
                    )
                }
            }
        };
        sh.bump();
        match next {
            Next::Stop => return,
            Next::Retry(d) => sleep(jitter(d)).await,
            Next::Replace => {
                let Some(r) = sh.reassign.clone() else {
                    continue;
                };
                let dead_slot = lock(&sh.core).paths()[i].slot;
                let outcome = timeout(REQUEST_TIMEOUT, r.reassign(&sh.stream, dead_slot)).await;
                let next = {
                    let mut core = lock(&sh.core);
                    let slot = core.paths()[i].slot;
                    let in_use: Vec<String> = core
                        .paths()
                        .iter()
                        .enumerate()
                        .filter(|(k, p)| *k != i && p.state != PathState::Dead)
                        .map(|(_, p)| p.target.server_id.clone())
                        .collect();
                    let picked = match outcome {
                        Ok(Ok(a)) => choose_replacement(&a, slot, &in_use, sh.config.protocol).ok_or_else(|| {
                            format!("the director's new assignment has no server other than {in_use:?}")
                        }),
                        Ok(Err(e)) => Err(format!("asking the director for a replacement: {e}")),
                        Err(_) => Err(format!("the director did not answer within {REQUEST_TIMEOUT:?}")),
                    };
                    match picked {
                        Ok(t) => {
                            tracing::info!(path = %slot, server = %t.server_id, "replacement");
                            core.on_replaced(i, t);
                            None
                        }
                        Err(e) => Some(core.on_replace_failed(i, e)),
                    }
                };
                sh.bump();
                match next {
                    Some(Next::Retry(d)) => sleep(jitter(d)).await,
                    Some(Next::Stop) => return,
                    _ => {}
                }
            }
        }
    }
}

/// Up to 25% less, so that many clients cut off together do not come back in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(1.0 - rand::random::<f64>() * 0.25)
}

struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    dec: Decoder,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// The next frame; `None` at a clean end of stream. Cancel safe.
    async fn next(&mut self) -> Result<Option<Frame>, SessionError> {
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf)? {
                return Ok(Some(f));
            }
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return match self.dec.decode_eof(&mut self.buf)? {
                    Some(f) => Ok(Some(f)),
                    None => Ok(None),
                };
            }
        }
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> Result<(), SessionError> {
    let mut b = BytesMut::new();
    encode(f, &mut b)?;
    w.write_all(&b).await?;
    w.flush().await?;
    Ok(())
}

async fn session<C: Connect>(
    sh: &Shared<C>,
    i: usize,
    target: &PathTarget,
) -> Result<(), SessionError> {
    let cfg = &sh.config;
    let deadline = Instant::now() + cfg.connect_timeout;
    let io = match timeout_at(deadline, sh.connect.connect(target)).await {
        Ok(r) => r.map_err(SessionError::Connect)?,
        Err(_) => return Err(SessionError::HandshakeTimeout(cfg.connect_timeout)),
    };
    let (rd, mut wr) = tokio::io::split(io);
    let mut reader = FrameReader {
        rd,
        buf: BytesMut::with_capacity(4096),
        dec: Decoder::new(Limits::default()),
    };
    let resume_from = lock(&sh.core).resume_from(i);
    let hello = Frame::Hello(Hello {
        max_version: proto::VERSION,
        role: target.role,
        stream: sh.stream.clone(),
        token: Bytes::from(target.token.clone().into_bytes()),
        resume_from,
    });
    let welcome = timeout_at(deadline, async {
        write_frame(&mut wr, &hello).await?;
        match reader.next().await? {
            Some(Frame::Welcome(w)) => Ok(w),
            Some(Frame::Error(e)) => Err(SessionError::Remote(e)),
            Some(f) => Err(SessionError::Unexpected(f.frame_type().name())),
            None => Err(SessionError::Closed),
        }
    })
    .await
    .map_err(|_| SessionError::HandshakeTimeout(cfg.connect_timeout))??;
    lock(&sh.core).on_welcome(i, &welcome, cfg.chunk_max)?;
    sh.bump();
    tracing::debug!(server = %welcome.server_id, next_seq = welcome.next_seq, "welcomed");
    let (ctl_tx, ctl_rx) = mpsc::channel(16);
    tokio::select! {
        r = write_loop(sh, i, &mut wr, ctl_rx) => r,
        r = read_loop(sh, i, &mut reader, ctl_tx) => r,
    }
}

/// Largest batch of DATA frames encoded before one write.
const WRITE_BATCH: usize = 256 * 1024;

async fn write_loop<C, W: AsyncWrite + Unpin>(
    sh: &Shared<C>,
    i: usize,
    wr: &mut W,
    mut ctl: mpsc::Receiver<Frame>,
) -> Result<(), SessionError> {
    let mut epoch = sh.epoch.subscribe();
    let mut out = BytesMut::new();
    let mut last_write = Instant::now();
    let mut nonce = 0u64;
    loop {
        epoch.borrow_and_update();
        while let Ok(f) = ctl.try_recv() {
            encode(&f, &mut out)?;
        }
        let mut end = false;
        {
            let mut core = lock(&sh.core);
            while out.len() < WRITE_BATCH {
                match core.next_out(i) {
                    Some(Outgoing::Data(c)) => encode(
                        &Frame::Data(proto::Data {
                            seq: c.seq,
                            pts: c.pts,
                            flags: c.flags,
                            payload: c.payload,
                        }),
                        &mut out,
                    )?,
                    Some(Outgoing::End(final_seq)) => {
                        encode(&Frame::End { final_seq }, &mut out)?;
                        end = true;
                        break;
                    }
                    None => {
                        if core.paths().get(i).is_none_or(|p| p.state.is_terminal())
                            && out.is_empty()
                        {
                            return Err(SessionError::Stopped);
                        }
                        break;
                    }
                }
            }
        }
        if !out.is_empty() {
            wr.write_all(&out).await?;
            wr.flush().await?;
            out.clear();
            last_write = Instant::now();
            if end {
                lock(&sh.core).on_end_written(i);
            }
            continue;
        }
        tokio::select! {
            _ = epoch.changed() => {}
            f = ctl.recv() => {
                if let Some(f) = f {
                    encode(&f, &mut out)?;
                }
            }
            () = sleep_until(last_write + sh.config.ping_interval) => {
                nonce = nonce.wrapping_add(1);
                encode(&Frame::Ping(nonce), &mut out)?;
            }
        }
    }
}

async fn read_loop<C, R: AsyncRead + Unpin>(
    sh: &Shared<C>,
    i: usize,
    reader: &mut FrameReader<R>,
    ctl: mpsc::Sender<Frame>,
) -> Result<(), SessionError> {
    let idle = sh.config.idle_timeout;
    let mut last_heard = Instant::now();
    let mut complete_at: Option<Instant> = None;
    loop {
        let deadline = match complete_at {
            Some(t) => t + END_LINGER,
            None => last_heard + idle,
        };
        let frame = match timeout_at(deadline, reader.next()).await {
            Err(_) if complete_at.is_some() => return Ok(()),
            Err(_) => return Err(SessionError::Idle(idle)),
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) if complete_at.is_some() => return Ok(()),
            Ok(Ok(None)) => return Err(SessionError::Closed),
            Ok(Err(_)) if complete_at.is_some() => return Ok(()),
            Ok(Err(e)) => return Err(e),
        };
        last_heard = Instant::now();
        match frame {
            Frame::Ack { through } => {
                let done = lock(&sh.core).on_ack(i, through)?;
                sh.bump();
                if done && complete_at.is_none() {
                    complete_at = Some(last_heard);
                }
            }
            Frame::Ping(n) => {
                let _ = ctl.try_send(Frame::Pong(n));
            }
            Frame::Pong(_) => {}
            Frame::Error(_) if complete_at.is_some() => return Ok(()),
            Frame::Error(e) => return Err(SessionError::Remote(e)),
            f => return Err(SessionError::Unexpected(f.frame_type().name())),
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tls_tests;
