//! Entry servers: where devices' streams land and where viewers get them.
//!
//! An entry server (`firstmile entry`):
//! - accepts **ingest sessions** of the native protocol over TCP and over WebSocket
//!   ([`ingest`]), verifying the director's token with its public key only, appending chunks to a
//!   **durable per-stream log** (`chunklog`) and acknowledging what is durable;
//! - accepts **RTMP** publishes (OBS, ffmpeg; [`rtmp`]) and **HTTP push** (chunked POST), storing
//!   RTMP media as FLV tags ([`flv`]) and serving them as **HTTP-FLV** (`GET /live/<id>.flv`);
//! - serves **viewers** the stream's payload bytes live over chunked HTTP or WebSocket, from the
//!   live edge or from any retained sequence number or time ([`viewer`]);
//! - serves other nodes the chunks themselves, and **relays** streams it does not hold by pulling
//!   them from both ingest servers at once and merging by sequence number ([`relay`]);
//! - **registers and heartbeats** with the director (load, streams, path measurements from
//!   `TCP_INFO`), and drains gracefully ([`link`]).
//!
//! What it is not: a selection engine (the director chooses) or a transcoder (payload bytes pass
//! through untouched).

pub mod core;
pub mod flv;
pub mod hls;
pub mod http;
pub mod hub;
pub mod ingest;
pub mod link;
pub mod logio;
pub mod node;
pub mod rejoin;
pub mod relay;
pub mod rtmp;
pub mod storage;
pub mod tcpinfo;
pub mod viewer;

pub use node::{EntryConfig, NativeTls, Node, parse_fsync};

use chunklog::{LogConfig, StreamLog};
use plumbing::listen::{Admission, Gate, Limited, Limits, Refusal};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// A configuration or start-up problem (exit 64 for configuration).
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Invalid(#[from] node::ConfigError),
    #[error("token public key: {0}")]
    Key(String),
    #[error("chunk logs in {dir}: {message}")]
    Logs { dir: String, message: String },
}

/// A ready-to-run entry server.
#[derive(Debug, Clone)]
pub struct Entry {
    node: Arc<Node>,
    /// TLS of the native listener (`native_tls`).
    native_tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
}

/// How long a native connection may take to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes a native connection may send before its HELLO is welcomed (a HELLO is at most about
/// 4.3 KiB: a 4 KiB token and a 128-byte stream id).
const NATIVE_PRE_AUTH_BYTES: u64 = 64 * 1024;
/// Bytes an RTMP connection may send before its publish is accepted (handshake 3 KiB, then
/// `connect`, `createStream` and `publish`, usually under 2 KiB). Without it the RTMP library
/// would buffer a message of up to 16 MiB for anyone.
const RTMP_PRE_AUTH_BYTES: u64 = 128 * 1024;
/// Descriptors kept free beyond the listeners' caps: logs, outgoing connections.
const DESCRIPTOR_HEADROOM: u64 = 1024;

/// What a plain-TCP native connection over a cap gets before it is closed: ERROR `overloaded`
/// ("ask the director again"), written without waiting for its HELLO.
fn native_refusal(reason: Refusal) -> Arc<[u8]> {
    static ANSWERS: std::sync::LazyLock<[Arc<[u8]>; 2]> = std::sync::LazyLock::new(|| {
        let frame = |message: &str| -> Arc<[u8]> {
            let mut b = bytes::BytesMut::new();
            let f = proto::Frame::Error(proto::ErrorFrame {
                code: proto::ErrorCode::Overloaded,
                message: message.into(),
            });
            proto::encode(&f, &mut b).expect("a short ERROR frame encodes");
            b.to_vec().into()
        };
        [
            frame(
                "this entry server has too many connections open: ask the director for \
                 another, or retry in a few seconds",
            ),
            frame(
                "too many connections from your address that have not been welcomed yet: \
                 close some, or ask the director for another server",
            ),
        ]
    });
    match reason {
        Refusal::Full => ANSWERS[0].clone(),
        Refusal::PerIp => ANSWERS[1].clone(),
    }
}

/// The listeners' caps and deadlines from the configuration.
struct ListenerLimits {
    http: Limits,
    native: Limits,
    rtmp: Limits,
}

fn listener_limits(cfg: &EntryConfig) -> ListenerLimits {
    let limits = |max_connections, max_per_ip, opening_ms: Option<u64>, pre_auth| Limits {
        max_connections,
        max_per_ip,
        per_ip_exempt: Vec::new(),
        opening_timeout: opening_ms.map(Duration::from_millis),
        pre_auth_bytes: pre_auth,
    };
    ListenerLimits {
        http: limits(
            cfg.http_max_connections,
            cfg.http_max_connections_per_ip,
            Some(cfg.http_header_timeout_ms),
            None,
        ),
        // The TLS handshake and the HELLO keep their own deadlines (10 s each).
        native: limits(
            cfg.native_max_connections,
            cfg.native_max_connections_per_ip,
            None,
            Some(NATIVE_PRE_AUTH_BYTES),
        ),
        rtmp: limits(
            cfg.rtmp_max_connections,
            cfg.rtmp_max_connections_per_ip,
            Some(cfg.rtmp_connect_timeout_ms),
            Some(RTMP_PRE_AUTH_BYTES),
        ),
    }
}

/// Serve one admitted native connection (plain or TLS) as an ingest session.
async fn serve_native(
    io: Limited<TcpStream>,
    node: Arc<Node>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    use std::os::fd::AsRawFd;
    let _ = io.get_ref().set_nodelay(true);
    let (conn, peer) = (io.conn().clone(), io.conn().peer());
    let fd = io.get_ref().as_raw_fd();
    match tls {
        None => {
            let frames = ingest::TcpFrames::with_stream(io, Some(fd), node.limits);
            ingest::serve(Welcomed::new(frames, conn), node, Some(peer.ip())).await;
        }
        Some(acceptor) => {
            // The handshake runs in the connection's own task: a slow or silent client holds
            // up nobody else.
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                Ok(Ok(s)) => {
                    let frames = ingest::TcpFrames::with_stream(s, Some(fd), node.limits);
                    ingest::serve(Welcomed::new(frames, conn), node, Some(peer.ip())).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    conn.stats().opening_timed_out();
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
}

/// A native session's frames, telling the gate how far the session got: opened at its first
/// frame, authenticated when it is welcomed (WELCOME follows a verified token).
struct Welcomed<F> {
    frames: F,
    conn: plumbing::listen::ConnHandle,
}

impl<F> Welcomed<F> {
    fn new(frames: F, conn: plumbing::listen::ConnHandle) -> Self {
        Self { frames, conn }
    }
}

impl<F: ingest::FrameIo> ingest::FrameIo for Welcomed<F> {
    async fn recv(&mut self) -> Result<Option<proto::Frame>, ingest::SessionError> {
        let r = self.frames.recv().await;
        if let Ok(Some(_)) = &r {
            self.conn.opened();
        }
        r
    }

    async fn send(&mut self, f: &proto::Frame) -> Result<(), ingest::SessionError> {
        if matches!(f, proto::Frame::Welcome(_)) {
            self.conn.authenticate();
        }
        self.frames.send(f).await
    }

    fn tcp_info(&self) -> Option<tcpinfo::TcpInfo> {
        self.frames.tcp_info()
    }
}

fn load_native_tls(
    tls: &node::NativeTls,
) -> Result<Arc<tokio_rustls::rustls::ServerConfig>, InitError> {
    use plumbing::tls::TlsError;
    plumbing::tls::server_config(&tls.cert_file, &tls.key_file, &[]).map_err(|e| {
        let key = match &e {
            TlsError::Cert { .. } => "native_tls.cert_file",
            TlsError::Key { .. } => "native_tls.key_file",
            TlsError::Config(_) | TlsError::Ca { .. } => "native_tls",
        };
        InitError::Invalid(node::ConfigError::key(key, e.to_string()))
    })
}

fn read_key(s: &str) -> Result<token::VerifyingKey, InitError> {
    let pem = if s.contains("-----BEGIN") {
        s.to_string()
    } else {
        std::fs::read_to_string(s).map_err(|e| InitError::Key(format!("cannot read {s}: {e}")))?
    };
    token::VerifyingKey::from_pem(&pem).map_err(|e| InitError::Key(e.to_string()))
}

impl Entry {
    /// Validate the configuration, load the key and recover the logs on disk (what this server
    /// acknowledged before a restart is served again).
    pub fn init(cfg: EntryConfig) -> Result<Self, InitError> {
        cfg.validate()?;
        link::resolve_location(&cfg.location).map_err(InitError::Config)?;
        let verifier = read_key(&cfg.token_public_key)?;
        let native_tls = cfg.native_tls.as_ref().map(load_native_tls).transpose()?;
        let log_config = LogConfig {
            dir: cfg.data_dir.clone(),
            fsync: cfg.fsync,
            segment_bytes: 64 << 20,
            retention_age: (cfg.retention_secs > 0)
                .then(|| Duration::from_secs(cfg.retention_secs)),
            retention_bytes: (cfg.retention_bytes > 0).then_some(cfg.retention_bytes),
        };
        let dir = cfg.data_dir.display().to_string();
        let logs_err = |e: &dyn std::fmt::Display| InitError::Logs {
            dir: dir.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| logs_err(&e))?;
        storage::clean_trash(&cfg.data_dir);
        let node = Node {
            hub: Default::default(),
            verifier,
            limits: proto::Limits::default(),
            draining: Default::default(),
            metrics: Default::default(),
            samples: Default::default(),
            urls: Default::default(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(3))
                .tls_backend_preconfigured(
                    (*plumbing::tls::client_config(cfg.director_ca_file.as_deref())
                        .map_err(|e| InitError::Config(e.to_string()))?)
                    .clone(),
                )
                .build()
                .map_err(|e| InitError::Config(e.to_string()))?,
            clock_override: None,
            opening: Default::default(),
            storage: Default::default(),
            superseded: Default::default(),
            info_cache: Default::default(),
            peer_token: Default::default(),
            probe_limiter: node::ClientLimiter::probes(),
            relay_limiter: node::ClientLimiter::new(
                f64::from(cfg.relay_starts_per_ip_per_min) / 60.0,
                f64::from(cfg.relay_starts_per_ip_per_min),
            ),
            backfills: tokio::sync::Semaphore::new(cfg.max_backfills),
            report_turn: Default::default(),
            log_config,
            cfg,
        };
        // Recover the broadcasts that had not ended (their devices resume); ended ones stay on
        // disk for catch-up and are opened when a viewer asks for them.
        for (stream, broadcast) in broadcasts_on_disk(&node.log_config).map_err(|e| logs_err(&e))? {
            let cfg = core::log_config(&node, &stream);
            match StreamLog::open(&cfg, broadcast.as_str()) {
                Ok(log) if log.ended().is_none() => {
                    tracing::info!(%stream, %broadcast, next_seq = log.next_seq(), "recovered broadcast log");
                    node.hub.insert_ingest(hub::Stream::new(
                        stream,
                        broadcast,
                        hub::Source::Ingest(std::sync::Mutex::new(log)),
                        node.cfg.tail_bytes,
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%stream, %broadcast, error = %e, "cannot recover broadcast log")
                }
            }
        }
        Ok(Self {
            node: Arc::new(node),
            native_tls,
        })
    }

    /// Test hook: check tokens against this Unix time instead of the clock.
    pub fn with_clock(mut self, unix_s: u64) -> Self {
        if let Some(n) = Arc::get_mut(&mut self.node) {
            n.clock_override = Some(unix_s);
        }
        self
    }

    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Serve on the bound listeners until `shutdown` completes, then drain: refuse new
    /// sessions, tell the director, let in-flight sessions finish (up to `drain_secs`),
    /// deregister.
    pub async fn run(
        self,
        native: TcpListener,
        http_listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.run_with(native, http_listener, None, shutdown).await
    }

    /// [`Entry::run`] with an RTMP ingest listener too (when `rtmp` is given).
    pub async fn run_with(
        self,
        native: TcpListener,
        http_listener: TcpListener,
        rtmp: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let node = self.node;
        let tls = self.native_tls.map(tokio_rustls::TlsAcceptor::from);
        let host = |a: SocketAddr| match &node.cfg.advertise {
            Some(h) => format!("{h}:{}", a.port()),
            None => a.to_string(),
        };
        let (n_addr, h_addr) = (native.local_addr()?, http_listener.local_addr()?);
        *node.urls.lock().unwrap_or_else(|e| e.into_inner()) = node::Urls {
            native: format!(
                "{}://{}",
                if tls.is_some() { "tls" } else { "tcp" },
                host(n_addr)
            ),
            websocket: format!("ws://{}/v1/ingest", host(h_addr)),
            http: format!("http://{}", host(h_addr)),
            rtmp: match &rtmp {
                Some(l) => Some(format!("rtmp://{}/{}", host(l.local_addr()?), rtmp::APP)),
                None => None,
            },
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let link = tokio::spawn(link::run(node.clone(), stop_rx.clone()));
        let retention = tokio::spawn(storage::run(node.clone(), stop_rx.clone()));

        let limits = listener_limits(&node.cfg);
        let stats = &node.metrics.listeners;
        let descriptors = limits.http.max_connections
            + limits.native.max_connections
            + if rtmp.is_some() {
                limits.rtmp.max_connections
            } else {
                0
            };
        plumbing::listen::ensure_descriptors(
            descriptors as u64 + DESCRIPTOR_HEADROOM,
            "entry server",
        );
        let native = Gate::new(native, limits.native, stats.native.clone());
        let http_gate = Gate::new(http_listener, limits.http, stats.http.clone());
        let rtmp = rtmp.map(|l| Gate::new(l, limits.rtmp, stats.rtmp.clone()));

        let accept_node = node.clone();
        let mut accept_stop = stop_rx.clone();
        let accept = tokio::spawn(async move {
            loop {
                tokio::select! {
                    a = native.accept() => match a {
                        Admission::Admitted(io) => {
                            tokio::spawn(serve_native(io, accept_node.clone(), tls.clone()));
                        }
                        // Over TLS, answering would cost the handshake the cap sheds.
                        Admission::Refused(r) if tls.is_some() => r.close(),
                        Admission::Refused(r) => {
                            let answer = native_refusal(r.reason());
                            r.answer(answer);
                        }
                    },
                    _ = accept_stop.changed() => return,
                }
            }
        });

        let rtmp_accept = rtmp.map(|l| {
            let node = node.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        a = l.accept() => match a {
                            Admission::Admitted(io) => {
                                let peer = io.conn().peer();
                                tokio::spawn(rtmp::serve(io, node.clone(), peer));
                            }
                            // RTMP has no message before its handshake and `connect`: close.
                            Admission::Refused(r) => r.close(),
                        },
                        _ = stop.changed() => return,
                    }
                }
            })
        });

        let router = http::router(node.clone());
        let mut http_stop = stop_rx.clone();
        let http_options = plumbing::listen::http::HttpOptions {
            idle_timeout: Duration::from_millis(node.cfg.http_idle_timeout_ms),
            max_header_bytes: node.cfg.http_max_header_bytes,
            tls: None,
            authenticate: Some({
                let n = node.clone();
                std::sync::Arc::new(move |h: &axum::http::HeaderMap| {
                    h.get(axum::http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .is_some_and(|b| n.trusts_bearer(b.trim()))
                })
            }),
        };
        let server = tokio::spawn(plumbing::listen::http::serve(
            http_gate,
            router,
            http_options,
            async move {
                let _ = http_stop.changed().await;
            },
        ));

        shutdown.await;
        tracing::info!("draining");
        node.draining.store(true, Ordering::SeqCst);
        // Tell the director at once, then let sessions finish.
        let _ = link::heartbeat(&node, 0.0, 0.0).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(node.cfg.drain_secs);
        while node.metrics.sessions.load(Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Stop the heartbeat task first: a heartbeat in flight when we deregister would be
        // answered 404 and make it register the server again.
        let _ = stop_tx.send(true);
        accept.abort();
        if let Some(a) = rtmp_accept {
            a.abort();
        }
        let _ = link.await;
        link::deregister(&node).await;
        let _ = retention.await;
        // Viewers' responses end with the process; don't wait for them.
        server.abort();
        // Make what was written durable before exiting.
        for s in node.hub.all() {
            if let hub::Source::Ingest(log) = &s.source {
                let _ = log.lock().unwrap_or_else(|e| e.into_inner()).sync();
            }
        }
        Ok(())
    }
}

/// Every (stream, broadcast) with a log under `cfg.dir` (`<dir>/<stream>/<broadcast>/`).
pub fn broadcasts_on_disk(
    cfg: &LogConfig,
) -> Result<Vec<(String, proto::BroadcastId)>, std::io::Error> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&cfg.dir)? {
        let entry = entry?;
        let Ok(stream) = entry.file_name().into_string() else {
            continue;
        };
        if proto::StreamId::parse(&stream).is_err() || !entry.path().is_dir() {
            continue;
        }
        let mut c = cfg.clone();
        c.dir = entry.path();
        let Ok(names) = StreamLog::list(&c) else {
            continue;
        };
        for b in names {
            if let Ok(b) = b.parse::<proto::BroadcastId>() {
                out.push((stream.clone(), b));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Open a broadcast's log from disk (an ended one a viewer asks for), if it is there.
pub async fn open_from_disk(
    node: &Arc<Node>,
    stream: &str,
    broadcast: &proto::BroadcastId,
) -> Option<Arc<hub::Stream>> {
    let _one = node.opening.lock().await;
    if let Some(s) = node.hub.get_ingest(stream, broadcast) {
        return Some(s);
    }
    let cfg = core::log_config(node, stream);
    if !cfg.dir.join(broadcast.as_str()).is_dir() {
        return None;
    }
    let b = broadcast.to_string();
    let log = tokio::task::spawn_blocking(move || StreamLog::open(&cfg, &b))
        .await
        .ok()?
        .ok()?;
    let s = hub::Stream::new(
        stream.to_string(),
        broadcast.clone(),
        hub::Source::Ingest(std::sync::Mutex::new(log)),
        node.cfg.tail_bytes,
    );
    node.hub.insert_ingest(s.clone());
    Some(s)
}

/// Ended broadcasts whose end the director has not heard yet that a server keeps in memory (it
/// is unreachable); beyond, the oldest are released anyway (the director then ends them as
/// gone after `publish.publisher_gone_s`).
pub const MAX_UNREPORTED_ENDS: usize = 1_000;

/// Broadcasts with no publisher and no reader for `release_after_s` (ended, or their publisher
/// gone) are released: out of the hub, their files closed. One that comes back (a device
/// resuming, a viewer of a past broadcast) is opened from disk again. An ended broadcast waits
/// until a heartbeat has told the director of its end (see [`MAX_UNREPORTED_ENDS`]) — unless
/// it has no role here (opened from disk again), so no heartbeat would ever carry it.
pub fn release_idle(node: &Node) -> usize {
    let after = node.cfg.release_after_s.saturating_mul(1000);
    let now = hub::mono_ms();
    let mut n = 0;
    let ingested = node.hub.ingested();
    let mut unreported: Vec<(u64, &Arc<hub::Stream>)> = ingested
        .iter()
        .filter(|s| s.edge().ended.is_some() && !s.end_reported.load(Ordering::SeqCst))
        // Only what a heartbeat would report: broadcasts opened from disk again have no role.
        .filter(|s| s.role.lock().unwrap_or_else(|e| e.into_inner()).is_some())
        .map(|s| (s.active_ms.load(Ordering::Relaxed), s))
        .collect();
    let overflow: std::collections::HashSet<*const hub::Stream> =
        if node.cfg.director.is_some() && unreported.len() > MAX_UNREPORTED_ENDS {
            unreported.sort_by_key(|(at, _)| *at);
            let extra = unreported.len() - MAX_UNREPORTED_ENDS;
            unreported[..extra]
                .iter()
                .map(|(_, s)| Arc::as_ptr(s))
                .collect()
        } else {
            Default::default()
        };
    drop(unreported);
    for s in ingested {
        // The hub's reference and this loop's: nobody else (no session, viewer or relay feed).
        let unused = Arc::strong_count(&s) <= 2;
        let idle = now.saturating_sub(s.active_ms.load(Ordering::Relaxed)) >= after;
        // A broadcast without a role (opened from disk again: a replay, a relay catching up,
        // a publisher resuming that never got in) is in no heartbeat: nothing to wait for.
        let no_role = s.role.lock().unwrap_or_else(|e| e.into_inner()).is_none();
        let told = node.cfg.director.is_none()
            || s.edge().ended.is_none()
            || s.end_reported.load(Ordering::SeqCst)
            || no_role
            || overflow.contains(&Arc::as_ptr(&s));
        if unused
            && idle
            && told
            && s.live_sessions.load(Ordering::SeqCst) == 0
            && node.hub.remove_ingest(&s)
        {
            let _ = crate::logio::sync_blocking(&s);
            n += 1;
        }
    }
    if n > 0 {
        tracing::debug!(released = n, "idle broadcasts released");
    }
    n
}
