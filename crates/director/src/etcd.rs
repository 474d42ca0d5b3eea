//! The registry shared by several directors on etcd (v3 API): one fleet view, no single point of
//! failure.
//!
//! **What.** [`EtcdRegistry`] implements [`Registry`] for directors run side by side behind DNS or
//! anycast. Entry servers may register and heartbeat through any of them; every director answers
//! assignments and `GET /v1/streams/{id}` from the same fleet.
//!
//! **How.** Each director keeps a local view, a [`MemoryRegistry`], which the request path reads
//! as before: assignment never waits on etcd. One background task per director owns the etcd
//! client and does three things in turn:
//! - loads every key under the prefix (a *resync*), then watches the prefix from that revision
//!   and applies each event to the local view; after a compaction (`compact_revision`) or a
//!   cancelled watch it resyncs again. A resync replaces the view in place: the director keeps
//!   answering from the previous view meanwhile and stays ready;
//! - writes what the trait's methods queued: they apply a change to the local view at once (the
//!   director that took a registration sees it immediately) and hand the etcd write to the task
//!   through a bounded channel, so they never block on etcd. Each write, however many requests
//!   it takes, gives up after `registry.etcd.request_timeout_ms`. Heartbeats (lease renewals)
//!   have a lane of their own, written before anything else: the latest per server, so it never
//!   grows past the fleet and never drops one; a renewal that failed is written first on the
//!   next member. A renewal that waits longer than half a lease makes the director *degraded*
//!   in `/readyz` ("lease renewals are late"), before any lease can run out;
//! - when no member of the cluster can be reached, marks the director *degraded* and retries
//!   with backoff (100 ms doubling to `registry.etcd.retry_max_ms`). Meanwhile the view stays as
//!   it was plus the changes this director takes itself; registrations, deregistrations, drains
//!   are kept (up to 10,000) and written when etcd returns. Heartbeats are not
//!   kept: the next one carries the same news.
//!
//! **Failover between members.** The task talks to one member at a time, starting with the first
//! of `registry.etcd.endpoints` (list them in different orders on different directors to spread
//! the load). When that member fails — a request errors or times out, the watch breaks — the
//! task moves to the next member at once, writes first the change that failed (a heartbeat too:
//! its lease renewal must not be lost), checks with a linearizable read that the member is in a
//! quorum, and resumes the watch from the last revision it applied, so nothing is missed and
//! nothing is reloaded (unless that revision was compacted meanwhile). The view is not touched
//! and the director is neither not-ready nor degraded during a failover: only when every member
//! failed in a row is it degraded. Why one member and not the client's balancing over all of
//! them: the etcd client (tonic's balanced channel) keeps a stopped member in its rotation and
//! sends it a share of the requests, which fail; lease renewals failing for seconds let leases
//! run out, and entry servers vanished from every director (issue 6). A member that is cut off
//! from the quorum but still answers is left when a write or lease renewal through it times out
//! (heartbeats keep writes flowing); a stopped leader costs one election, during which requests
//! time out (at most one request timeout per member tried). etcd's new leader extends every
//! lease by its TTL, so an election alone does not expire servers.
//!
//! **Keys** (all under `registry.etcd.prefix`, so fleets can share one etcd):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `{prefix}/servers/{id}` | JSON: registration, load, state, `written_ms` | the server's |
//! | `{prefix}/ingest/{id}/{stream}/{role}` | JSON: `next_seq`, `live` | the server's |
//! | `{prefix}/drain/{id}` | `1` (operator drain) | none: survives re-registration |
//! | `{prefix}/streams/{id}` | JSON: the stream's document (key hash, broadcasts): [`crate::etcd_streams`], which loads and watches these keys itself (the registry's range ends before them) | none |
//!
//! **Liveness: the lease is authoritative.** Registration grants a lease of
//! `ceil(heartbeat.interval_ms × heartbeat.missed_allowed)` seconds and puts the server's keys
//! under it; every heartbeat, through whichever director, renews it (the lease id is in the
//! watched key). A server that stops heartbeating loses its lease, etcd deletes its keys, and
//! every director drops it on the delete event; its next heartbeat gets 404 and it registers
//! again, as with one director. The local expiry of [`MemoryRegistry`] is therefore off
//! ([`Registry::expire`] does nothing here): two clocks deciding liveness would disagree, and a
//! director only sees the heartbeats sent to it. While etcd is unreachable nothing expires (etcd
//! itself extends every lease by its TTL when it comes back), so an outage never empties the
//! fleet; the price is that a server dying during the outage stays listed until etcd returns.
//!
//! **Write budget.** Lease renewals are not key writes: in etcd 3.4 the leader serves them from
//! memory (no raft proposal, no fsync). Key writes are bounded by `load_write_interval_ms`,
//! checked against the `written_ms` of the key (so the bound holds whichever directors the
//! heartbeats go through). For 1,000 entry servers with the defaults (1 s heartbeats, 3 missed
//! allowed, 5 s load interval):
//!
//! | what | when | per second, 1,000 servers |
//! |---|---|---|
//! | lease renewal (not a write) | every heartbeat | 1,000 |
//! | server key (load) | load changed, at most every 5 s | ≤ 200 |
//! | server key (state) | ready ↔ draining | rare |
//! | ingest keys | a stream starts, stops, goes live (next_seq rides with the load write) | one per change |
//! | registration | lease grant + one transaction | rare |
//! | stream document | one compare-and-swap per go-live, continuation, end (not per assignment of an existing broadcast's path) | the go-live rate |
//!
//! so about 200 writes per second plus stream churn, whatever the number of directors.
//!
//! **What not.** No leader election and no writes on behalf of entry servers that nobody hears
//! from. Measurements and learned corrections stay per director. Lease renewals go through the
//! directors rather than from entry servers to etcd directly: entry servers then need no etcd
//! credentials or reachability, and etcd's clients stay a handful of directors.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, KeyValue, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions,
};
use proto::Role;
use select::Load;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{DirectorConfig, EtcdConfig};
use crate::registry::{
    Expiry, Heartbeat, IngestReport, MemoryRegistry, Registration, Registry, RegistryError,
    RegistryStatus, ServerRecord, ServerState, StreamReport, Versions,
};

/// Changes kept while etcd is unreachable, at most (the oldest are dropped first).
const MAX_PENDING: usize = 10_000;
/// Changes queued for the writer at most; beyond, new ones are dropped (and counted).
const QUEUE: usize = 65_536;
/// Operations per etcd transaction (etcd's default `--max-txn-ops` is 128).
const TXN_OPS: usize = 128;
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// Why the etcd registry cannot be built (configuration read at start-up).
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("{key} {path}: {message}")]
    File {
        key: &'static str,
        path: String,
        message: String,
    },
}

/// A change queued for etcd.
#[derive(Debug, Clone)]
enum Op {
    Register(Registration),
    Beat { id: String, hb: Heartbeat },
    Deregister(String),
    Drain { id: String, drained: bool },
}

impl Op {
    /// Kept across an outage (a heartbeat is superseded by the next one).
    fn keep(&self) -> bool {
        !matches!(self, Op::Beat { .. })
    }
}

/// `{prefix}/servers/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ServerDoc {
    registration: Registration,
    load: Load,
    state: ServerState,
    #[serde(default)]
    disk: proto::api::DiskState,
    /// Unix milliseconds of this write (for the load write interval).
    written_ms: u64,
}

/// `{prefix}/ingest/{id}/{stream}/{role}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ReportDoc {
    next_seq: u64,
    live: bool,
    #[serde(default)]
    broadcast: String,
    #[serde(default)]
    ended: Option<u64>,
}

/// What etcd holds, as last seen (the local registry is rebuilt from it).
#[derive(Debug, Default)]
struct View {
    /// id → (document, lease id, revision of the key's last change seen): an older event for
    /// the key (an echo overtaken by this director's own write) is ignored.
    servers: HashMap<String, (ServerDoc, i64, i64)>,
    /// server id → (stream, role) → report.
    reports: HashMap<String, HashMap<(String, Role), ReportDoc>>,
    drained: HashSet<String>,
}

/// Settings resolved from the configuration.
#[derive(Debug, Clone)]
struct Settings {
    endpoints: Vec<String>,
    /// `{prefix}/`.
    root: String,
    options: ConnectOptions,
    request_timeout: Duration,
    retry_max: Duration,
    lease_ttl_s: i64,
    load_write_ms: u64,
}

/// The requests that write keys (counted in `firstmile_director_etcd_writes_total`): what the
/// write budget in the module docs bounds. Lease grants and renewals are not key writes.
const WRITES: [&str; 5] = ["register", "deregister", "drain", "undrain", "heartbeat"];

#[derive(Debug)]
struct Shared {
    local: MemoryRegistry,
    view: Mutex<View>,
    cfg: Settings,
    synced: AtomicBool,
    degraded: AtomicBool,
    detail: Mutex<Option<String>>,
    dropped: AtomicU64,
    /// Key writes that etcd accepted (see [`WRITES`]).
    writes: AtomicU64,
    /// Servers registered through this director whose registration is not in etcd yet: a
    /// reload or a delete event must not drop them from the view meanwhile.
    unwritten: Mutex<HashSet<String>>,
    /// The renewal lane: the latest heartbeat per server not written yet, and when the oldest
    /// of them arrived. Written before anything else (see [`Shared::renewals_first`]).
    beats: Mutex<Beats>,
    beat_wake: tokio::sync::Notify,
}

/// Heartbeats waiting for etcd, one per server (a newer one replaces the older: it renews the
/// same lease and carries newer load), in arrival order.
#[derive(Debug, Default)]
struct Beats {
    latest: HashMap<String, (Heartbeat, Instant)>,
    order: VecDeque<String>,
}

/// The etcd-backed registry (see the module docs). Its background task starts on first use
/// inside a tokio runtime and stops when the registry is dropped.
#[derive(Debug)]
pub struct EtcdRegistry {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Op>,
    rx: Mutex<Option<mpsc::Receiver<Op>>>,
    started: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn read(key: &'static str, path: &std::path::Path) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|e| EtcdError::File {
        key,
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl EtcdRegistry {
    /// Build from a validated configuration: reads the TLS files (so a missing file fails before
    /// anything binds), connects nothing yet.
    pub fn from_config(config: &DirectorConfig) -> Result<Self, EtcdError> {
        let e: &EtcdConfig = &config.registry.etcd;
        let options = connect_options(e)?;
        let hb = &config.heartbeat;
        let ttl_ms = hb.interval_ms.saturating_mul(u64::from(hb.missed_allowed));
        let cfg = Settings {
            endpoints: e.endpoints.clone(),
            root: format!("{}/", e.prefix),
            options,
            request_timeout: Duration::from_millis(e.request_timeout_ms),
            retry_max: Duration::from_millis(e.retry_max_ms),
            lease_ttl_s: i64::try_from(ttl_ms.div_ceil(1000).max(1)).unwrap_or(i64::MAX),
            load_write_ms: e.load_write_interval_ms,
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let r = Self {
            shared: Arc::new(Shared {
                local: MemoryRegistry::new(config.limits.max_servers),
                view: Mutex::new(View::default()),
                cfg,
                synced: AtomicBool::new(false),
                degraded: AtomicBool::new(false),
                detail: Mutex::new(Some("not connected to etcd yet".into())),
                dropped: AtomicU64::new(0),
                writes: AtomicU64::new(0),
                unwritten: Mutex::new(HashSet::new()),
                beats: Mutex::new(Beats::default()),
                beat_wake: tokio::sync::Notify::new(),
            }),
            tx,
            rx: Mutex::new(Some(rx)),
            started: AtomicBool::new(false),
            task: Mutex::new(None),
        };
        r.ensure_started();
        Ok(r)
    }
}

/// The client options of `registry.etcd` (timeouts, credentials, TLS files read now, so a missing
/// file fails before anything binds). Shared by the registry and the stream store.
pub(crate) fn connect_options(e: &EtcdConfig) -> Result<ConnectOptions, EtcdError> {
    {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(e.connect_timeout_ms))
            .with_keep_alive(
                Duration::from_secs(5),
                Duration::from_millis(e.request_timeout_ms),
            )
            .with_keep_alive_while_idle(true);
        if let (Some(u), Some(p)) = (&e.username, &e.password) {
            options = options.with_user(u.clone(), p.clone());
        }
        if e.ca_file.is_some() || e.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &e.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read("registry.etcd.ca_file", ca)?));
            }
            if let (Some(c), Some(k)) = (&e.cert_file, &e.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read("registry.etcd.cert_file", c)?,
                    read("registry.etcd.key_file", k)?,
                ));
            }
            options = options.with_tls(tls);
        }
        Ok(options)
    }
}

impl EtcdRegistry {
    /// Start the background task if it is not running and a tokio runtime is at hand.
    fn ensure_started(&self) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(rx) = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let task = handle.spawn(self.shared.clone().run(rx));
        *self.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// Queue a change for the writer; false if it was dropped (queue full).
    fn send(&self, op: Op) -> bool {
        self.ensure_started();
        let sent = self.tx.try_send(op).is_ok();
        if !sent {
            let n = self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "etcd writer queue full: changes dropped (etcd slow or unreachable)"
                );
            }
        }
        sent
    }
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

impl Registry for EtcdRegistry {
    fn register(&self, r: Registration, now: Instant) -> Result<(), RegistryError> {
        // Noted before the view changes, so that no reload or event in between drops it.
        self.shared.lock_unwritten().insert(r.id.clone());
        if let Err(e) = self.shared.local.register(r.clone(), now) {
            self.shared.lock_unwritten().remove(&r.id);
            return Err(e);
        }
        let id = r.id.clone();
        if !self.send(Op::Register(r)) {
            self.shared.lock_unwritten().remove(&id);
        }
        Ok(())
    }

    fn heartbeat(&self, id: &str, hb: Heartbeat, now: Instant) -> Result<(), RegistryError> {
        self.shared.local.heartbeat(id, hb.clone(), now)?;
        self.ensure_started();
        self.shared.queue_beat(id, hb, now);
        Ok(())
    }

    fn deregister(&self, id: &str) -> Result<(), RegistryError> {
        self.shared.local.deregister(id)?;
        self.shared.lock_unwritten().remove(id);
        self.send(Op::Deregister(id.to_string()));
        Ok(())
    }

    fn set_admin_drain(&self, id: &str, drained: bool) -> Result<ServerRecord, RegistryError> {
        let rec = self.shared.local.set_admin_drain(id, drained)?;
        self.send(Op::Drain {
            id: id.to_string(),
            drained,
        });
        Ok(rec)
    }

    /// Nothing: the lease decides liveness (see the module docs).
    fn expire(&self, _now: Instant, _unhealthy: Duration, _forget: Duration) -> Expiry {
        self.ensure_started();
        Expiry::default()
    }

    fn servers(&self, now: Instant) -> Vec<ServerRecord> {
        self.shared.local.servers(now)
    }

    fn server(&self, id: &str, now: Instant) -> Option<ServerRecord> {
        self.shared.local.server(id, now)
    }

    fn ingest_of(&self, stream: &str) -> Vec<IngestReport> {
        self.shared.local.ingest_of(stream)
    }

    fn versions(&self) -> Versions {
        self.shared.local.versions()
    }

    fn status(&self) -> RegistryStatus {
        self.ensure_started();
        let s = &self.shared;
        let synced = s.synced.load(Ordering::Acquire);
        let mut degraded = s.degraded.load(Ordering::Acquire);
        let mut detail = if synced && !degraded {
            None
        } else {
            s.detail.lock().unwrap_or_else(|p| p.into_inner()).clone()
        };
        // Reachable, but renewals wait longer than half a lease: servers are about to expire.
        let lag = s.renewal_lag(Instant::now());
        let half = Duration::from_secs(u64::try_from(s.cfg.lease_ttl_s).unwrap_or(1)) / 2;
        if !degraded && lag > half {
            degraded = true;
            detail = Some(format!(
                "lease renewals are late: the oldest heartbeat waits for etcd since {} ms (leases last {} s)",
                lag.as_millis(),
                s.cfg.lease_ttl_s
            ));
        }
        RegistryStatus {
            backend: "etcd",
            synced,
            degraded,
            detail,
            writes: s.writes.load(Ordering::Relaxed),
        }
    }
}

/// How a session with etcd ended.
enum Ended {
    /// The registry was dropped.
    Closed,
    /// The watch was compacted or cancelled: load everything again (same member).
    Resync,
    /// The session was up (watching) and broke: fail over to the next member at once.
    Lost(String),
    /// The member could not be reached, or failed before the session was up.
    Failed(String),
}

/// What outlives one session: the task's state between members and reconnections.
struct Carry {
    /// Changes not written yet: kept across an outage, retried first on the next member.
    pending: VecDeque<Op>,
    /// The revision the view is current to, when the watch can resume after it (no reload).
    resume: Option<i64>,
    backoff: Duration,
}

/// Why a request to etcd failed, which decides what happens next.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The member did not answer, or cannot serve now (no leader, unavailable, timed out):
    /// another member may, so the session fails over.
    Member(String),
    /// etcd refused this request (a lease gone, a bad argument): any member would. The change
    /// is dropped and the session goes on.
    Refused(String),
}

impl Failure {
    pub(crate) fn of(what: &str, e: &etcd_client::Error) -> Self {
        // gRPC status codes: INVALID_ARGUMENT 3, NOT_FOUND 5, ALREADY_EXISTS 6,
        // PERMISSION_DENIED 7, FAILED_PRECONDITION 9, OUT_OF_RANGE 11.
        let refused = match e {
            etcd_client::Error::GRpcStatus(s) => {
                matches!(i32::from(s.code()), 3 | 5 | 6 | 7 | 9 | 11)
            }
            etcd_client::Error::LeaseKeepAliveError(_) => true,
            _ => false,
        };
        let message = format!("{what}: {e}");
        if refused {
            Failure::Refused(message)
        } else {
            Failure::Member(message)
        }
    }

    fn refused(e: impl std::fmt::Display) -> Self {
        Failure::Refused(e.to_string())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Member(m) | Failure::Refused(m) => f.write_str(m),
        }
    }
}

type EtcdResult<T> = Result<T, Failure>;

impl Shared {
    fn queue_beat(&self, id: &str, hb: Heartbeat, now: Instant) {
        let mut b = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        match b.latest.get_mut(id) {
            // Keep the first arrival time: the lease has waited since then.
            Some(e) => e.0 = hb,
            None => {
                b.latest.insert(id.to_string(), (hb, now));
                b.order.push_back(id.to_string());
            }
        }
        drop(b);
        self.beat_wake.notify_one();
    }

    /// How long the oldest heartbeat not written yet has waited.
    fn renewal_lag(&self, now: Instant) -> Duration {
        let b = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        b.order
            .front()
            .and_then(|id| b.latest.get(id))
            .map_or(Duration::ZERO, |(_, at)| now.saturating_duration_since(*at))
    }

    fn next_beat(&self) -> Option<(String, Heartbeat, Instant)> {
        let mut b = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(id) = b.order.pop_front() {
            if let Some((hb, at)) = b.latest.remove(&id) {
                return Some((id, hb, at));
            }
        }
        None
    }

    /// A heartbeat whose write failed goes back to the front (unless a newer one came).
    fn requeue_beat(&self, id: String, hb: Heartbeat, at: Instant) {
        let mut b = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = b.latest.get_mut(&id) {
            e.1 = e.1.min(at);
            return;
        }
        b.latest.insert(id.clone(), (hb, at));
        b.order.push_front(id);
    }

    /// Write every waiting heartbeat (lease renewals) before any other change: a burst of
    /// registrations or drains never makes a lease run out. Err: the member failed (the
    /// heartbeat is back at the front, written first on the next member).
    async fn renewals_first(&self, client: &mut Client) -> Result<(), String> {
        while let Some((id, hb, at)) = self.next_beat() {
            let op = Op::Beat { id, hb };
            match self.write(client, &op).await {
                Ok(()) => {}
                Err(Failure::Refused(e)) => self.refused(&op, &e),
                Err(Failure::Member(e)) => {
                    if let Op::Beat { id, hb } = op {
                        self.requeue_beat(id, hb, at);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn lock_view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_unwritten(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.unwritten.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_degraded(&self, why: String) {
        if !self.degraded.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %why, "etcd unreachable: answering from the last fleet view (degraded)");
        }
        *self.detail.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("etcd unreachable: {why}"));
    }

    fn set_healthy(&self) {
        self.synced.store(true, Ordering::Release);
        if self.degraded.swap(false, Ordering::AcqRel) {
            tracing::info!("etcd reachable again: fleet view current");
        }
        *self.detail.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn timed<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> EtcdResult<T> {
        match tokio::time::timeout(self.cfg.request_timeout, f).await {
            Ok(Ok(v)) => {
                if WRITES.contains(&what) {
                    self.writes.fetch_add(1, Ordering::Relaxed);
                }
                Ok(v)
            }
            Ok(Err(e)) => Err(Failure::of(what, &e)),
            Err(_) => Err(Failure::Member(format!(
                "{what}: no answer within {:?}",
                self.cfg.request_timeout
            ))),
        }
    }

    /// The task: sessions with one member at a time. A member that fails hands over to the next
    /// at once; only when every member failed in a row is the director degraded, and the next
    /// round waits (backoff).
    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Op>) {
        let n = self.cfg.endpoints.len().max(1);
        // The first endpoint listed first (list them in different orders to spread directors).
        let mut at = 0;
        let mut failed_in_a_row = 0;
        let mut carry = Carry {
            pending: VecDeque::new(),
            resume: None,
            backoff: MIN_BACKOFF,
        };
        loop {
            let endpoint = &self.cfg.endpoints[at];
            let why = match self.session(endpoint, &mut rx, &mut carry).await {
                Ended::Closed => return,
                Ended::Resync => {
                    tracing::info!(endpoint, "etcd watch compacted or cancelled: reloading");
                    carry.resume = None;
                    failed_in_a_row = 0;
                    continue;
                }
                Ended::Lost(why) => {
                    // A member stopped or a connection broke: the next member usually answers at
                    // once, and clients should not see a flicker of "degraded" for it.
                    tracing::info!(endpoint, error = %why, "etcd session lost: failing over to the next member");
                    at = (at + 1) % n;
                    failed_in_a_row = 0;
                    continue;
                }
                Ended::Failed(why) => {
                    at = (at + 1) % n;
                    failed_in_a_row += 1;
                    if failed_in_a_row < n {
                        tracing::info!(endpoint, error = %why, "etcd member failed: trying the next one");
                        continue;
                    }
                    failed_in_a_row = 0;
                    why
                }
            };
            // Every member failed in a row.
            self.set_degraded(why);
            carry.pending.retain(Op::keep);
            let until = Instant::now() + carry.backoff;
            loop {
                tokio::select! {
                    op = rx.recv() => match op {
                        Some(op) => keep(&self, &mut carry.pending, op),
                        None => return,
                    },
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
            carry.backoff = (carry.backoff * 2).min(self.cfg.retry_max);
        }
    }

    /// Connect to one member, write what was kept, bring the view up to date (resume the watch
    /// where it broke, or load everything), then watch and write until something fails.
    async fn session(
        &self,
        endpoint: &str,
        rx: &mut mpsc::Receiver<Op>,
        carry: &mut Carry,
    ) -> Ended {
        let mut client = match self
            .timed(
                "connect",
                Client::connect([endpoint], Some(self.cfg.options.clone())),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return Ended::Failed(e.to_string()),
        };
        if let Err(e) = self.renewals_first(&mut client).await {
            return Ended::Failed(e);
        }
        while let Some(op) = carry.pending.pop_front() {
            match self.write(&mut client, &op).await {
                Ok(()) => {}
                Err(Failure::Refused(e)) => self.refused(&op, &e),
                Err(Failure::Member(e)) => {
                    carry.pending.push_front(op);
                    return Ended::Failed(e);
                }
            }
        }
        let root = self.cfg.root.clone();
        let mut resume = carry.resume;
        if let Some(rev) = resume {
            // A linearizable read (so this member is in a quorum) that also checks the store
            // has not gone back in time (restored from an older snapshot): if it has, reload.
            match self.timed("read", client.get(root.as_bytes(), None)).await {
                Ok(r) if r.header().map_or(0, |h| h.revision()) < rev => {
                    tracing::warn!(
                        endpoint,
                        revision = rev,
                        "etcd is at an older revision than the view (restored?): reloading"
                    );
                    resume = None;
                }
                Ok(_) => {}
                Err(e) => return Ended::Failed(e.to_string()),
            }
        }
        let rev = match resume {
            Some(rev) => rev,
            None => {
                let got = self
                    .timed(
                        "load",
                        client.get(
                            root.as_bytes(),
                            Some(GetOptions::new().with_range(self.fleet_end())),
                        ),
                    )
                    .await;
                let mut got = match got {
                    Ok(g) => g,
                    Err(e) => return Ended::Failed(e.to_string()),
                };
                let rev = got.header().map(|h| h.revision()).unwrap_or(0);
                self.replace_view(got.take_kvs());
                carry.resume = Some(rev);
                rev
            }
        };
        let watch = self
            .timed(
                "watch",
                client.watch(
                    root.as_bytes(),
                    Some(
                        WatchOptions::new()
                            .with_range(self.fleet_end())
                            .with_start_revision(rev + 1),
                    ),
                ),
            )
            .await;
        let mut watch = match watch {
            Ok(s) => s,
            Err(e) => return Ended::Failed(e.to_string()),
        };
        // The watch is registered once etcd answers on it (a member may accept the stream and
        // fail it right after): wait for that answer before calling the session up.
        match tokio::time::timeout(self.cfg.request_timeout, watch.message()).await {
            Ok(Ok(Some(resp))) => {
                if resp.canceled() || resp.compact_revision() > 0 {
                    return Ended::Resync;
                }
                self.apply_watch(&resp, carry);
            }
            Ok(Ok(None)) => return Ended::Failed("watch: closed at once".into()),
            Ok(Err(e)) => return Ended::Failed(format!("watch: {e}")),
            Err(_) => return Ended::Failed("watch: not created within the request timeout".into()),
        }
        self.set_healthy();
        carry.backoff = MIN_BACKOFF;
        tracing::debug!(
            endpoint,
            revision = rev,
            "etcd fleet view current; watching"
        );
        if let Err(e) = self.renewals_first(&mut client).await {
            return Ended::Lost(e);
        }
        loop {
            tokio::select! {
                // Lease renewals first, always: other writes wait behind them, never the reverse.
                biased;
                _ = self.beat_wake.notified() => {
                    if let Err(e) = self.renewals_first(&mut client).await {
                        return Ended::Lost(e);
                    }
                }
                msg = watch.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() || resp.compact_revision() > 0 {
                            return Ended::Resync;
                        }
                        self.apply_watch(&resp, carry);
                    }
                    Ok(None) => return Ended::Lost("watch closed".into()),
                    Err(e) => return Ended::Lost(format!("watch: {e}")),
                },
                op = rx.recv() => match op {
                    None => return Ended::Closed,
                    Some(op) => match self.write(&mut client, &op).await {
                        Ok(()) => {}
                        Err(Failure::Refused(e)) => self.refused(&op, &e),
                        Err(Failure::Member(e)) => {
                            // Retried first on the next member (after the waiting renewals).
                            carry.pending.push_front(op);
                            return Ended::Lost(e);
                        }
                    },
                },
            }
        }
    }

    /// Apply one watch message to the view and note the revision it brings the view to.
    fn apply_watch(&self, resp: &etcd_client::WatchResponse, carry: &mut Carry) {
        let mut touched = HashSet::new();
        let mut rev = carry.resume.unwrap_or(0);
        for ev in resp.events() {
            if let Some(kv) = ev.kv() {
                rev = rev.max(kv.mod_revision());
                self.apply_event(kv, ev.event_type(), &mut touched);
            }
        }
        carry.resume = Some(rev);
        let now = Instant::now();
        for id in touched {
            self.apply_server(&id, now);
        }
    }

    /// Write one change, within one request timeout however many requests it takes.
    async fn write(&self, client: &mut Client, op: &Op) -> EtcdResult<()> {
        let timeout = self.cfg.request_timeout;
        match tokio::time::timeout(timeout, self.execute(client, op)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Member(format!(
                "write: no answer within {timeout:?}"
            ))),
        }
    }

    /// etcd refused a change (any member would): drop it, say so.
    fn refused(&self, op: &Op, why: &str) {
        tracing::warn!(error = %why, change = ?op, "etcd refused a change: dropped");
        if let Op::Register(r) = op {
            // Not in etcd: forget it here too, so that its next heartbeat gets 404 and it
            // registers again.
            self.lock_unwritten().remove(&r.id);
            let _ = self.local.deregister(&r.id);
        }
    }

    /// The end of the fleet's key range: `{prefix}/streams/` and after belong to the stream
    /// store ([`crate::etcd_streams`]), which loads and watches its own keys.
    fn fleet_end(&self) -> String {
        format!("{}{}", self.cfg.root, crate::etcd_streams::KIND)
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        format!("{}{kind}/{rest}", self.cfg.root)
    }

    /// Write one change to etcd, and into the view (the watch echo then changes nothing).
    async fn execute(&self, client: &mut Client, op: &Op) -> EtcdResult<()> {
        match op {
            Op::Register(r) => {
                let lease = self
                    .timed(
                        "lease grant",
                        client.lease_grant(self.cfg.lease_ttl_s, None),
                    )
                    .await?
                    .id();
                let doc = ServerDoc {
                    registration: r.clone(),
                    load: Load::default(),
                    state: ServerState::Ready,
                    disk: proto::api::DiskState::Ok,
                    written_ms: now_ms(),
                };
                let value = serde_json::to_vec(&doc).map_err(Failure::refused)?;
                let txn = Txn::new().and_then(vec![
                    TxnOp::delete(
                        self.key("ingest", &format!("{}/", r.id)),
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    ),
                    TxnOp::put(
                        self.key("servers", &r.id),
                        value,
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                ]);
                let done = self.timed("register", client.txn(txn)).await?;
                let rev = done.header().map_or(0, |h| h.revision());
                let mut v = self.lock_view();
                v.servers.insert(r.id.clone(), (doc, lease, rev));
                v.reports.remove(&r.id);
                drop(v);
                self.lock_unwritten().remove(&r.id);
            }
            Op::Beat { id, hb } => self.beat(client, id, hb).await?,
            Op::Deregister(id) => {
                let txn = Txn::new().and_then(vec![
                    TxnOp::delete(
                        self.key("ingest", &format!("{id}/")),
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    ),
                    TxnOp::delete(self.key("servers", id), None),
                ]);
                self.timed("deregister", client.txn(txn)).await?;
                let mut v = self.lock_view();
                v.servers.remove(id);
                v.reports.remove(id);
            }
            Op::Drain { id, drained } => {
                let key = self.key("drain", id);
                if *drained {
                    self.timed("drain", client.put(key, "1", None)).await?;
                    self.lock_view().drained.insert(id.clone());
                } else {
                    self.timed("undrain", client.delete(key, None)).await?;
                    self.lock_view().drained.remove(id);
                }
            }
        }
        Ok(())
    }

    /// Renew the server's lease; write its load and streams when due (see the write budget).
    async fn beat(&self, client: &mut Client, id: &str, hb: &Heartbeat) -> EtcdResult<()> {
        let (doc, lease, reports) = {
            let v = self.lock_view();
            let Some((doc, lease, _)) = v.servers.get(id) else {
                // Not (yet) in etcd: its registration is still queued or it expired there.
                return Ok(());
            };
            (
                doc.clone(),
                *lease,
                v.reports.get(id).cloned().unwrap_or_default(),
            )
        };
        match tokio::time::timeout(self.cfg.request_timeout, client.lease_keep_alive(lease)).await {
            Ok(Ok(_)) => {}
            // The lease expired: etcd deleted the keys and the watch tells every director.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => return Ok(()),
            Ok(Err(e)) => return Err(Failure::of("lease keep-alive", &e)),
            Err(_) => return Err(Failure::Member("lease keep-alive: no answer".into())),
        }
        let now = now_ms();
        let due = now.saturating_sub(doc.written_ms) >= self.cfg.load_write_ms;
        let mut puts: Vec<((String, Role), ReportDoc)> = Vec::new();
        let mut seq_changed = false;
        let mut seen = HashSet::with_capacity(hb.streams.len());
        for s in &hb.streams {
            let k = (s.stream.clone(), s.role);
            let new = ReportDoc {
                next_seq: s.next_seq,
                live: s.live,
                broadcast: s.broadcast.clone(),
                ended: s.ended,
            };
            match reports.get(&k) {
                None => puts.push((k.clone(), new)),
                Some(old)
                    if old.live != new.live
                        || old.broadcast != new.broadcast
                        || old.ended != new.ended =>
                {
                    puts.push((k.clone(), new))
                }
                Some(old) if old.next_seq != new.next_seq => {
                    seq_changed = true;
                    if due {
                        puts.push((k.clone(), new));
                    }
                }
                Some(_) => {}
            }
            seen.insert(k);
        }
        let gone: Vec<(String, Role)> = reports
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        let write_doc = hb.state != doc.state
            || hb.disk != doc.disk
            || (due && (hb.load != doc.load || seq_changed));
        let mut ops = Vec::new();
        let new_doc = ServerDoc {
            load: hb.load,
            state: hb.state,
            disk: hb.disk,
            written_ms: now,
            ..doc
        };
        if write_doc {
            let value = serde_json::to_vec(&new_doc).map_err(Failure::refused)?;
            ops.push(TxnOp::put(
                self.key("servers", id),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        for ((stream, role), r) in &puts {
            let value = serde_json::to_vec(r).map_err(Failure::refused)?;
            ops.push(TxnOp::put(
                self.key("ingest", &format!("{id}/{stream}/{}", role.as_str())),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        for (stream, role) in &gone {
            ops.push(TxnOp::delete(
                self.key("ingest", &format!("{id}/{stream}/{}", role.as_str())),
                None,
            ));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let mut rest = ops;
        let mut rev = 0;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(TXN_OPS));
            let done = self
                .timed("heartbeat", client.txn(Txn::new().and_then(rest)))
                .await?;
            rev = done.header().map_or(0, |h| h.revision());
            rest = tail;
        }
        let mut v = self.lock_view();
        if write_doc && let Some(entry) = v.servers.get_mut(id) {
            entry.0 = new_doc;
            entry.2 = entry.2.max(rev);
        }
        let m = v.reports.entry(id.to_string()).or_default();
        for (k, r) in puts {
            m.insert(k, r);
        }
        for k in &gone {
            m.remove(k);
        }
        Ok(())
    }

    /// Replace the view with a full load and bring the local registry in line.
    fn replace_view(&self, kvs: Vec<KeyValue>) {
        let old_ids: Vec<String> = self
            .local
            .servers(Instant::now())
            .into_iter()
            .map(|r| r.registration.id)
            .collect();
        let mut touched = HashSet::new();
        {
            let mut v = self.lock_view();
            *v = View::default();
        }
        for kv in &kvs {
            self.apply_event(kv, EventType::Put, &mut touched);
        }
        touched.extend(old_ids);
        let now = Instant::now();
        for id in touched {
            self.apply_server(&id, now);
        }
        let v = self.lock_view();
        tracing::info!(servers = v.servers.len(), "etcd fleet view loaded");
    }

    /// Apply one key's change to the view; note which servers need re-applying locally.
    fn apply_event(&self, kv: &KeyValue, ty: EventType, touched: &mut HashSet<String>) {
        let Ok(key) = kv.key_str() else {
            tracing::warn!("etcd key is not UTF-8: skipped");
            return;
        };
        let Some((kind, rest)) = key
            .strip_prefix(self.cfg.root.as_str())
            .and_then(|k| k.split_once('/'))
        else {
            return;
        };
        let put = matches!(ty, EventType::Put);
        let mut v = self.lock_view();
        match kind {
            "servers" => {
                if v.servers.get(rest).is_some_and(|e| e.2 > kv.mod_revision()) {
                    // Older than what this director wrote itself (and already applied).
                    return;
                }
                if put {
                    match serde_json::from_slice::<ServerDoc>(kv.value()) {
                        Ok(doc) if doc.registration.id == rest => {
                            v.servers
                                .insert(rest.to_string(), (doc, kv.lease(), kv.mod_revision()));
                        }
                        Ok(_) => {
                            tracing::warn!(key, "etcd server key names another id: skipped");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(key, error = %e, "bad server document in etcd: skipped");
                            return;
                        }
                    }
                } else {
                    v.servers.remove(rest);
                }
                touched.insert(rest.to_string());
            }
            "ingest" => {
                let mut parts = rest.splitn(3, '/');
                let (Some(id), Some(stream), Some(role)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    tracing::warn!(key, "bad ingest key in etcd: skipped");
                    return;
                };
                let role = match role {
                    "primary" => Role::Primary,
                    "backup" => Role::Backup,
                    _ => {
                        tracing::warn!(key, "bad role in etcd ingest key: skipped");
                        return;
                    }
                };
                let k = (stream.to_string(), role);
                if put {
                    match serde_json::from_slice::<ReportDoc>(kv.value()) {
                        Ok(r) => {
                            v.reports.entry(id.to_string()).or_default().insert(k, r);
                        }
                        Err(e) => {
                            tracing::warn!(key, error = %e, "bad ingest report in etcd: skipped");
                            return;
                        }
                    }
                } else if let Some(m) = v.reports.get_mut(id) {
                    m.remove(&k);
                    if m.is_empty() {
                        v.reports.remove(id);
                    }
                }
                touched.insert(id.to_string());
            }
            "drain" => {
                if put {
                    v.drained.insert(rest.to_string());
                } else {
                    v.drained.remove(rest);
                }
                touched.insert(rest.to_string());
            }
            _ => {}
        }
    }

    /// Make the local registry's record of `id` what the view says.
    fn apply_server(&self, id: &str, now: Instant) {
        let (doc, streams, drained) = {
            let v = self.lock_view();
            let Some((doc, _, _)) = v.servers.get(id) else {
                drop(v);
                if self.lock_unwritten().contains(id) {
                    // Registered through this director, not written yet: keep it.
                    return;
                }
                if self.local.deregister(id).is_ok() {
                    tracing::info!(server = %id, "entry server gone from etcd (lease expired or deregistered)");
                }
                return;
            };
            let streams: Vec<StreamReport> = v
                .reports
                .get(id)
                .map(|m| {
                    m.iter()
                        .map(|((stream, role), r)| StreamReport {
                            stream: stream.clone(),
                            broadcast: r.broadcast.clone(),
                            role: *role,
                            next_seq: r.next_seq,
                            live: r.live,
                            ended: r.ended,
                        })
                        .collect()
                })
                .unwrap_or_default();
            (doc.clone(), streams, v.drained.contains(id))
        };
        let existing = self.local.server(id, now);
        if existing
            .as_ref()
            .is_none_or(|r| r.registration != doc.registration)
            && let Err(e) = self.local.register(doc.registration.clone(), now)
        {
            tracing::warn!(server = %id, error = %e, "cannot add entry server from etcd");
            return;
        }
        let _ = self.local.heartbeat(
            id,
            Heartbeat {
                load: doc.load,
                state: doc.state,
                disk: doc.disk,
                streams,
            },
            now,
        );
        if self
            .local
            .server(id, now)
            .is_some_and(|r| r.admin_drained != drained)
        {
            let _ = self.local.set_admin_drain(id, drained);
        }
    }
}

/// Keep a change for when etcd returns, dropping the oldest beyond [`MAX_PENDING`].
fn keep(shared: &Shared, pending: &mut VecDeque<Op>, op: Op) {
    if !op.keep() {
        return;
    }
    if pending.len() >= MAX_PENDING {
        if let Some(Op::Register(r)) = pending.pop_front() {
            shared.lock_unwritten().remove(&r.id);
        }
        tracing::warn!(
            kept = MAX_PENDING,
            "too many changes kept while etcd is unreachable: the oldest dropped"
        );
    }
    pending.push_back(op);
}
