//! Listeners that survive the open internet: connection caps, opening deadlines, bounded reads
//! before authentication, and (in [`http`]) a hardened HTTP serve loop.
//!
//! **Why.** A server that accepts every connection and waits forever for its first bytes hands
//! its file descriptors to whoever opens sockets fastest: a thousand idle sockets exhausted the
//! director's descriptors, its heartbeats failed and the whole fleet went unhealthy. Every
//! listener of every service goes through one [`Gate`], so the rule is written once.
//!
//! **What.** A [`Gate`] wraps a bound `TcpListener`. Each accepted connection is admitted or
//! refused by one rule set (a pure core, `Table::decide`):
//!
//! 1. from one address (IPv4: the address; IPv6: its /64, which one subscriber usually holds), at
//!    most `max_per_ip` connections that have not **authenticated**; addresses in
//!    `per_ip_exempt` (the operator's load balancers) are not counted. Over it: refused;
//! 2. at most `max_connections` open at once. When full, a newcomer takes the place of the
//!    connection that has waited longest without finishing its **opening** (TLS handshake and
//!    first request head, HELLO, RTMP publish), which is closed; when every connection is past
//!    its opening, the newcomer is refused.
//!
//! A refused connection is handed back ([`Admission::Refused`]) for the protocol to answer
//! cheaply ([`Refused::answer`]: write a fixed message without reading the request, close) or to
//! close. An admitted connection is a [`Limited`] stream that holds its place until it is dropped
//! — wherever it went, so a WebSocket upgrade keeps counting — and until its protocol marks it
//! opened ([`ConnHandle::opened`]) fails its reads once the opening deadline has passed or it has
//! been evicted; until it is marked authenticated ([`ConnHandle::authenticate`]) it may read at
//! most `pre_auth_bytes` bytes.
//!
//! **Phases.** *Opening*: accepted, the peer has not yet finished the part of the protocol that
//! any honest client finishes within a round trip or two (slowloris and idle sockets stay here):
//! deadline, evictable, counted per address. *Opened*: the protocol saw a complete request;
//! no deadline here (the protocol's own idle rules apply), not evictable, still counted per
//! address. *Authenticated*: the peer proved a credential (the cluster secret, a valid stream
//! token): no longer counted per address, so a fleet of entry servers behind one NAT, or many
//! encoders at one venue, are not refused, and the read budget is lifted. Only a credential
//! lifts the per-address count, never a path or a header an attacker can send.
//!
//! **Why eviction.** Caps alone turn a flood into a denial of service for everyone: an attacker
//! with enough addresses holds every place with silent sockets, re-opening each as its deadline
//! closes it (`max_connections / opening_timeout` new connections a second: 400/s for 4096 places
//! and 10 s). With eviction a silent socket keeps its place only until the next newcomer, so
//! crowding out a client that sends its request within a round trip takes `max_connections` new
//! connections per round trip instead. Connections that have sent a request (viewers, heartbeats
//! on kept-alive connections) are never evicted.
//!
//! **What not.** No request rate limiting (the director's `ratelimit`), no TLS configuration
//! (`tls`), no HTTP/2. The caps count connections on this listener only.

pub mod http;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Sleep;

/// The caps and deadlines of one listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections from one address (IPv6: one /64) that have not authenticated.
    pub max_per_ip: usize,
    /// Peers not counted per address (load balancers whose connections carry many clients).
    pub per_ip_exempt: Vec<IpNet>,
    /// From accept until the protocol marks the connection opened; `None` = no deadline (the
    /// protocol keeps its own).
    pub opening_timeout: Option<Duration>,
    /// Bytes a connection may read before it authenticates; `None` = no budget.
    pub pre_auth_bytes: Option<u64>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds `max_connections` and none of them is still opening.
    Full,
    /// The peer's address holds `max_per_ip` unauthenticated connections.
    PerIp,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::PerIp => "per_ip",
        }
    }
}

/// The key an address is counted under: IPv4 (also IPv4-mapped IPv6) by address, IPv6 by /64.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

// ------------------------------------------------------------------------------------------
// Statistics

/// Counters of one listener, for the services' metrics.
#[derive(Debug, Default)]
pub struct ListenStats {
    open: AtomicU64,
    refused_full: AtomicU64,
    refused_per_ip: AtomicU64,
    evicted: AtomicU64,
    timed_out_opening: AtomicU64,
    timed_out_idle: AtomicU64,
}

/// A reading of [`ListenStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Connections open now.
    pub open: u64,
    /// Refused because the listener was full (none evictable).
    pub refused_full: u64,
    /// Refused because their address held `max_per_ip` unauthenticated connections.
    pub refused_per_ip: u64,
    /// Closed while opening to make room for a newcomer.
    pub evicted: u64,
    /// Closed because the opening deadline passed (or a protocol's handshake timed out).
    pub timed_out_opening: u64,
    /// Closed because a kept-alive connection sent no next request in time.
    pub timed_out_idle: u64,
}

impl ListenStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            open: g(&self.open),
            refused_full: g(&self.refused_full),
            refused_per_ip: g(&self.refused_per_ip),
            evicted: g(&self.evicted),
            timed_out_opening: g(&self.timed_out_opening),
            timed_out_idle: g(&self.timed_out_idle),
        }
    }

    /// Count a connection closed by an opening timeout the protocol enforces itself.
    pub fn opening_timed_out(&self) {
        self.timed_out_opening.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a kept-alive connection closed for idling.
    pub fn idle_timed_out(&self) {
        self.timed_out_idle.fetch_add(1, Ordering::Relaxed);
    }
}

/// Prometheus text lines for several listeners of one service:
/// `<prefix>_connections{listener}` (gauge), `<prefix>_connections_refused_total{listener,reason}`,
/// `<prefix>_connections_evicted_total{listener}`, `<prefix>_connections_timed_out_total{listener,phase}`
/// (`opening` or `idle`).
pub fn prometheus_text(prefix: &str, listeners: &[(&str, StatsSnapshot)]) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "# TYPE {prefix}_connections gauge");
    for (l, s) in listeners {
        let _ = writeln!(o, "{prefix}_connections{{listener=\"{l}\"}} {}", s.open);
    }
    let _ = writeln!(o, "# TYPE {prefix}_connections_refused_total counter");
    for (l, s) in listeners {
        for (reason, n) in [("full", s.refused_full), ("per_ip", s.refused_per_ip)] {
            let _ = writeln!(
                o,
                "{prefix}_connections_refused_total{{listener=\"{l}\",reason=\"{reason}\"}} {n}"
            );
        }
    }
    let _ = writeln!(o, "# TYPE {prefix}_connections_evicted_total counter");
    for (l, s) in listeners {
        let _ = writeln!(
            o,
            "{prefix}_connections_evicted_total{{listener=\"{l}\"}} {}",
            s.evicted
        );
    }
    let _ = writeln!(o, "# TYPE {prefix}_connections_timed_out_total counter");
    for (l, s) in listeners {
        for (phase, n) in [("opening", s.timed_out_opening), ("idle", s.timed_out_idle)] {
            let _ = writeln!(
                o,
                "{prefix}_connections_timed_out_total{{listener=\"{l}\",phase=\"{phase}\"}} {n}"
            );
        }
    }
    o
}

// ------------------------------------------------------------------------------------------
// The admission core

#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Admit,
    /// Admit after closing the opening connection with this id.
    Evict(u64),
    Refuse(Refusal),
}

/// Who is open: counts and the opening connections in arrival order (ids only grow).
#[derive(Debug, Default)]
struct Table {
    open: usize,
    /// Unauthenticated connections per address key (entries at zero are removed, so the map
    /// holds at most `max_connections` keys).
    per_ip: HashMap<IpAddr, usize>,
    opening: BTreeMap<u64, Weak<Slot>>,
    next_id: u64,
}

impl Table {
    /// The rule of the module docs, for a newcomer counted under `key` (`None`: exempt).
    fn decide(&self, key: Option<IpAddr>, max_connections: usize, max_per_ip: usize) -> Decision {
        if let Some(k) = key
            && self.per_ip.get(&k).copied().unwrap_or(0) >= max_per_ip
        {
            return Decision::Refuse(Refusal::PerIp);
        }
        if self.open >= max_connections {
            return match self.opening.keys().next() {
                Some(&id) => Decision::Evict(id),
                None => Decision::Refuse(Refusal::Full),
            };
        }
        Decision::Admit
    }

    /// Count a newcomer; its id.
    fn add(&mut self, key: Option<IpAddr>) -> u64 {
        self.open += 1;
        if let Some(k) = key {
            *self.per_ip.entry(k).or_insert(0) += 1;
        }
        self.next_id += 1;
        self.next_id
    }

    /// Stop counting `key` for one connection.
    fn uncount(&mut self, key: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&key);
            }
        }
    }

    /// A connection is gone (closed or evicted).
    fn release(&mut self, id: u64, key: Option<IpAddr>) {
        self.open = self.open.saturating_sub(1);
        self.opening.remove(&id);
        if let Some(k) = key {
            self.uncount(k);
        }
    }
}

const OPENED: u8 = 1;
const AUTHENTICATED: u8 = 2;
const GONE: u8 = 4;

#[derive(Debug)]
struct Shared {
    limits: Limits,
    table: Mutex<Table>,
    stats: Arc<ListenStats>,
    /// Refusals being answered now.
    answering: AtomicUsize,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_open(&self, t: &Table) {
        self.stats.open.store(t.open as u64, Ordering::Relaxed);
    }
}

/// One admitted connection's place. Flags change only under the table lock; reads of them are
/// lock-free.
#[derive(Debug)]
struct Slot {
    id: u64,
    /// The per-address key it is counted under while unauthenticated (`None`: exempt).
    key: Option<IpAddr>,
    peer: SocketAddr,
    flags: AtomicU8,
    evicted: Arc<Notify>,
    shared: Arc<Shared>,
}

impl Slot {
    fn has(&self, flag: u8) -> bool {
        self.flags.load(Ordering::Acquire) & flag != 0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.shared.table();
        let f = self.flags.load(Ordering::Acquire);
        if f & GONE == 0 {
            let key = if f & AUTHENTICATED == 0 {
                self.key
            } else {
                None
            };
            t.release(self.id, key);
            self.shared.publish_open(&t);
        }
    }
}

/// A handle on an admitted connection's place, for its protocol to say how far it got.
#[derive(Clone, Debug)]
pub struct ConnHandle(Arc<Slot>);

impl ConnHandle {
    /// The peer finished its opening (a complete request, HELLO, publish request): no deadline
    /// and no eviction from now on. Cheap when already opened.
    pub fn opened(&self) {
        let s = &self.0;
        if s.has(OPENED) {
            return;
        }
        let mut t = s.shared.table();
        if s.has(OPENED | GONE) {
            return;
        }
        s.flags.fetch_or(OPENED, Ordering::AcqRel);
        t.opening.remove(&s.id);
    }

    /// The peer proved a credential: no longer counted per address, no read budget. Implies
    /// [`ConnHandle::opened`].
    pub fn authenticate(&self) {
        let s = &self.0;
        if s.has(AUTHENTICATED) {
            return;
        }
        let mut t = s.shared.table();
        if s.has(AUTHENTICATED | GONE) {
            return;
        }
        s.flags.fetch_or(OPENED | AUTHENTICATED, Ordering::AcqRel);
        t.opening.remove(&s.id);
        if let Some(k) = s.key {
            t.uncount(k);
        }
    }

    pub fn is_opened(&self) -> bool {
        self.0.has(OPENED)
    }

    pub fn is_authenticated(&self) -> bool {
        self.0.has(AUTHENTICATED)
    }

    /// Closed to make room for a newcomer.
    pub fn is_evicted(&self) -> bool {
        self.0.has(GONE)
    }

    pub fn peer(&self) -> SocketAddr {
        self.0.peer
    }

    /// This connection's number on its listener (for log spans).
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The listener's counters.
    pub fn stats(&self) -> &Arc<ListenStats> {
        &self.0.shared.stats
    }
}

// ------------------------------------------------------------------------------------------
// The gate

/// A bound listener with the caps of [`Limits`].
#[derive(Debug)]
pub struct Gate {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// What became of an accepted connection.
#[derive(Debug)]
pub enum Admission {
    Admitted(Limited<TcpStream>),
    Refused(Refused),
}

/// Refused connections answered at once at most; beyond, they are closed without an answer
/// (each answer may hold its descriptor for up to [`ANSWER_LINGER`]).
pub const MAX_ANSWERING: usize = 64;
/// How long an answered refusal waits for the peer's request bytes before closing (closing with
/// unread bytes makes the kernel send a reset, which can destroy the answer before the peer
/// reads it).
pub const ANSWER_LINGER: Duration = Duration::from_secs(1);

impl Gate {
    pub fn new(listener: TcpListener, limits: Limits, stats: Arc<ListenStats>) -> Self {
        Self {
            listener,
            shared: Arc::new(Shared {
                limits,
                table: Mutex::new(Table::default()),
                stats,
                answering: AtomicUsize::new(0),
            }),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    pub fn stats(&self) -> &Arc<ListenStats> {
        &self.shared.stats
    }

    /// The next connection, admitted or refused. Accept errors (out of descriptors, a connection
    /// reset before it was accepted) are logged and retried, pausing 50 ms after errors that
    /// mean the process is short of resources.
    pub async fn accept(&self) -> Admission {
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => return self.admit(stream, peer),
                Err(e) => {
                    let scarce = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    tracing::warn!(error = %e, "accept failed");
                    if scarce {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    fn admit(&self, stream: TcpStream, peer: SocketAddr) -> Admission {
        let sh = &self.shared;
        let l = &sh.limits;
        let ip = ip_key(peer.ip());
        let key = (!l.per_ip_exempt.iter().any(|n| n.contains(&peer.ip()))).then_some(ip);
        let mut victim: Option<Arc<Slot>> = None;
        let mut t = sh.table();
        match t.decide(key, l.max_connections, l.max_per_ip) {
            Decision::Admit => {}
            Decision::Evict(id) => {
                let weak = t.opening.remove(&id);
                // A slot that cannot be upgraded is being dropped and releases its place as soon
                // as it gets the lock: admit over the cap by that one for a moment.
                if let Some(v) = weak.and_then(|w| w.upgrade()) {
                    let f = v.flags.fetch_or(GONE, Ordering::AcqRel);
                    let k = if f & AUTHENTICATED == 0 { v.key } else { None };
                    t.release(v.id, k);
                    sh.stats.evicted.fetch_add(1, Ordering::Relaxed);
                    victim = Some(v);
                }
            }
            Decision::Refuse(reason) => {
                drop(t);
                let c = match reason {
                    Refusal::Full => &sh.stats.refused_full,
                    Refusal::PerIp => &sh.stats.refused_per_ip,
                };
                c.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, reason = reason.as_str(), "connection refused");
                return Admission::Refused(Refused {
                    stream,
                    peer,
                    reason,
                    shared: sh.clone(),
                });
            }
        }
        let id = t.add(key);
        let slot = Arc::new(Slot {
            id,
            key,
            peer,
            flags: AtomicU8::new(0),
            evicted: Arc::new(Notify::new()),
            shared: sh.clone(),
        });
        t.opening.insert(id, Arc::downgrade(&slot));
        sh.publish_open(&t);
        drop(t);
        if let Some(v) = victim {
            tracing::debug!(peer = %v.peer, "evicted an opening connection for a newcomer");
            v.evicted.notify_one();
            // Dropped outside the lock: its Drop takes it (and finds it gone).
            drop(v);
        }
        Admission::Admitted(Limited::new(stream, ConnHandle(slot), l))
    }
}

/// A refused connection, to be answered or closed.
#[derive(Debug)]
pub struct Refused {
    stream: TcpStream,
    peer: SocketAddr,
    reason: Refusal,
    shared: Arc<Shared>,
}

impl Refused {
    pub fn reason(&self) -> Refusal {
        self.reason
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Close without a word.
    pub fn close(self) {}

    /// Write `answer` without reading the request, half-close, discard what the peer sends for
    /// up to [`ANSWER_LINGER`], close. In its own task; when [`MAX_ANSWERING`] refusals are being
    /// answered already, just close.
    pub fn answer(self, answer: Arc<[u8]>) {
        let shared = self.shared;
        if shared.answering.fetch_add(1, Ordering::AcqRel) >= MAX_ANSWERING {
            shared.answering.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let mut s = self.stream;
        tokio::spawn(async move {
            let _ = tokio::time::timeout(ANSWER_LINGER, async {
                s.write_all(&answer).await?;
                s.shutdown().await?;
                let mut buf = [0u8; 4096];
                let mut seen = 0usize;
                while seen < 64 * 1024 {
                    match s.read(&mut buf).await? {
                        0 => break,
                        n => seen += n,
                    }
                }
                Ok::<_, io::Error>(())
            })
            .await;
            shared.answering.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

// ------------------------------------------------------------------------------------------
// The admitted stream

/// An admitted connection: the stream and its place on the listener.
///
/// Until its protocol marks it opened, its reads fail once the opening deadline has passed
/// (`TimedOut`, counted) or once it has been evicted (`ConnectionAborted`; writes fail too).
/// Until it is marked authenticated, a read that takes the bytes read over `pre_auth_bytes`
/// fails (`InvalidData`; at most one read buffer beyond the budget is ever read). The failures
/// stick: later reads fail the same way.
#[derive(Debug)]
pub struct Limited<IO> {
    io: IO,
    conn: ConnHandle,
    read: u64,
    budget: Option<u64>,
    opening: Option<Opening>,
    failed: Option<io::ErrorKind>,
}

#[derive(Debug)]
struct Opening {
    deadline: Option<Pin<Box<Sleep>>>,
    evicted: Pin<Box<OwnedNotified>>,
}

const EVICTED: &str = "closed to make room for a newcomer: the listener is full and this \
                       connection had not finished its opening";

impl<IO> Limited<IO> {
    fn new(io: IO, conn: ConnHandle, limits: &Limits) -> Self {
        let evicted = Box::pin(conn.0.evicted.clone().notified_owned());
        let deadline = limits
            .opening_timeout
            .map(|d| Box::pin(tokio::time::sleep(d)));
        Self {
            io,
            conn,
            read: 0,
            budget: limits.pre_auth_bytes,
            opening: Some(Opening { deadline, evicted }),
            failed: None,
        }
    }

    pub fn conn(&self) -> &ConnHandle {
        &self.conn
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    fn failure(kind: io::ErrorKind, budget: Option<u64>) -> io::Error {
        match kind {
            io::ErrorKind::TimedOut => io::Error::new(
                kind,
                "the opening deadline passed (handshake or first request too slow)",
            ),
            io::ErrorKind::InvalidData => io::Error::new(
                kind,
                format!(
                    "more than {} bytes before authenticating",
                    budget.unwrap_or(0)
                ),
            ),
            _ => io::Error::new(io::ErrorKind::ConnectionAborted, EVICTED),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(kind) = this.failed {
            return Poll::Ready(Err(Self::failure(kind, this.budget)));
        }
        if let Some(o) = &mut this.opening {
            if this.conn.0.has(GONE) || o.evicted.as_mut().poll(cx).is_ready() {
                this.failed = Some(io::ErrorKind::ConnectionAborted);
                return Poll::Ready(Err(Self::failure(io::ErrorKind::ConnectionAborted, None)));
            }
            if this.conn.0.has(OPENED) {
                this.opening = None;
            } else if let Some(d) = &mut o.deadline
                && d.as_mut().poll(cx).is_ready()
            {
                this.conn.stats().opening_timed_out();
                this.failed = Some(io::ErrorKind::TimedOut);
                return Poll::Ready(Err(Self::failure(io::ErrorKind::TimedOut, None)));
            }
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if let Some(max) = this.budget {
            if this.conn.0.has(AUTHENTICATED) {
                this.budget = None;
            } else {
                this.read += (buf.filled().len() - before) as u64;
                if this.read > max {
                    this.failed = Some(io::ErrorKind::InvalidData);
                    return Poll::Ready(Err(Self::failure(io::ErrorKind::InvalidData, Some(max))));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.conn.0.has(GONE) {
            return Poll::Ready(Err(Self::failure(io::ErrorKind::ConnectionAborted, None)));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.conn.0.has(GONE) {
            return Poll::Ready(Err(Self::failure(io::ErrorKind::ConnectionAborted, None)));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// ------------------------------------------------------------------------------------------
// Descriptors

/// Raise this process's soft limit on open files (`RLIMIT_NOFILE`) to `want`, or as close to it
/// as the hard limit allows (Go's runtime does the same at start-up); never lowers it. Returns
/// the soft limit in force. Services call it with the sum of their listeners' caps plus room for
/// files and outgoing connections, and warn when the answer is lower.
pub fn raise_nofile_limit(want: u64) -> io::Result<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // rlim_t is u64 on Linux.
    if r.rlim_cur >= want {
        return Ok(r.rlim_cur);
    }
    let target = want.min(r.rlim_max);
    if target > r.rlim_cur {
        let new = libc::rlimit {
            rlim_cur: target,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit from the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(target);
    }
    Ok(r.rlim_cur)
}

/// [`raise_nofile_limit`], logging a warning when the limit stays below `want` (`what` names the
/// service for the message).
pub fn ensure_descriptors(want: u64, what: &str) {
    match raise_nofile_limit(want) {
        Ok(have) if have < want => tracing::warn!(
            have,
            want,
            "{what}: the open-file limit (ulimit -n) is below the connection caps plus headroom; \
             raise the hard limit or lower the caps, or the process may run out of descriptors \
             before its caps refuse anyone"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "{what}: cannot read or raise the open-file limit"),
    }
}

#[cfg(test)]
mod tests;
