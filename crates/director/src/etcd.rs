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
//!   and applies each event to the local view; after a compaction (`compact_revision`), a
//!   cancelled or a broken watch it resyncs again;
//! - writes what the trait's methods queued: they apply a change to the local view at once (the
//!   director that took a registration sees it immediately) and hand the etcd write to the task
//!   through a bounded channel, so they never block on etcd;
//! - when etcd cannot be reached, marks the director *degraded* and retries with backoff
//!   (100 ms doubling to `registry.etcd.retry_max_ms`). Meanwhile the view stays as it was plus
//!   the changes this director takes itself; registrations, deregistrations, drains and
//!   assignments are kept (up to 10,000) and written when etcd returns, then the view is
//!   resynced. Heartbeats are not kept: the next one carries the same news.
//!
//! **Keys** (all under `registry.etcd.prefix`, so fleets can share one etcd):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `{prefix}/servers/{id}` | JSON: registration, load, state, `written_ms` | the server's |
//! | `{prefix}/ingest/{id}/{stream}/{role}` | JSON: `next_seq`, `live` | the server's |
//! | `{prefix}/drain/{id}` | `1` (operator drain) | none: survives re-registration |
//! | `{prefix}/assignments/{stream}` | JSON: primary and backup picks, times | per director, `tokens.ttl_s` + 60 s, renewed each minute |
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
//! | assignment | one put (+ one lease grant per director per minute) | the assignment rate |
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
use crate::state::AssignmentRecord;

/// Changes kept while etcd is unreachable, at most (the oldest are dropped first).
const MAX_PENDING: usize = 10_000;
/// Changes queued for the writer at most; beyond, new ones are dropped (and counted).
const QUEUE: usize = 65_536;
/// Operations per etcd transaction (etcd's default `--max-txn-ops` is 128).
const TXN_OPS: usize = 128;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The assignment lease is replaced this often (so it outlives every assignment by at most this).
const ASSIGNMENT_LEASE_EVERY: Duration = Duration::from_secs(60);

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
    Beat {
        id: String,
        hb: Heartbeat,
    },
    Deregister(String),
    Drain {
        id: String,
        drained: bool,
    },
    Assign {
        stream: String,
        rec: AssignmentRecord,
    },
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
    /// Unix milliseconds of this write (for the load write interval).
    written_ms: u64,
}

/// `{prefix}/ingest/{id}/{stream}/{role}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ReportDoc {
    next_seq: u64,
    live: bool,
}

/// What etcd holds, as last seen (the local registry is rebuilt from it).
#[derive(Debug, Default)]
struct View {
    /// id → (document, lease id).
    servers: HashMap<String, (ServerDoc, i64)>,
    /// server id → (stream, role) → report.
    reports: HashMap<String, HashMap<(String, Role), ReportDoc>>,
    drained: HashSet<String>,
    assignments: HashMap<String, AssignmentRecord>,
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
    assignment_ttl_s: i64,
    load_write_ms: u64,
}

#[derive(Debug)]
struct Shared {
    local: MemoryRegistry,
    view: Mutex<View>,
    cfg: Settings,
    synced: AtomicBool,
    degraded: AtomicBool,
    detail: Mutex<Option<String>>,
    dropped: AtomicU64,
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
        let hb = &config.heartbeat;
        let ttl_ms = hb.interval_ms.saturating_mul(u64::from(hb.missed_allowed));
        let cfg = Settings {
            endpoints: e.endpoints.clone(),
            root: format!("{}/", e.prefix),
            options,
            request_timeout: Duration::from_millis(e.request_timeout_ms),
            retry_max: Duration::from_millis(e.retry_max_ms),
            lease_ttl_s: i64::try_from(ttl_ms.div_ceil(1000).max(1)).unwrap_or(i64::MAX),
            assignment_ttl_s: i64::try_from(config.tokens.ttl_s.saturating_add(60))
                .unwrap_or(i64::MAX),
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
            }),
            tx,
            rx: Mutex::new(Some(rx)),
            started: AtomicBool::new(false),
            task: Mutex::new(None),
        };
        r.ensure_started();
        Ok(r)
    }

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

    fn send(&self, op: Op) {
        self.ensure_started();
        if self.tx.try_send(op).is_err() {
            let n = self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n + 1,
                    "etcd writer queue full: changes dropped (etcd slow or unreachable)"
                );
            }
        }
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
        self.shared.local.register(r.clone(), now)?;
        self.send(Op::Register(r));
        Ok(())
    }

    fn heartbeat(&self, id: &str, hb: Heartbeat, now: Instant) -> Result<(), RegistryError> {
        self.shared.local.heartbeat(id, hb.clone(), now)?;
        self.send(Op::Beat {
            id: id.to_string(),
            hb,
        });
        Ok(())
    }

    fn deregister(&self, id: &str) -> Result<(), RegistryError> {
        self.shared.local.deregister(id)?;
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
        let degraded = s.degraded.load(Ordering::Acquire);
        RegistryStatus {
            backend: "etcd",
            synced,
            degraded,
            detail: if synced && !degraded {
                None
            } else {
                s.detail.lock().unwrap_or_else(|p| p.into_inner()).clone()
            },
        }
    }

    fn remember_assignment(&self, stream: &str, rec: &AssignmentRecord) {
        self.send(Op::Assign {
            stream: stream.to_string(),
            rec: rec.clone(),
        });
    }

    fn assignment(&self, stream: &str) -> Option<AssignmentRecord> {
        self.shared
            .view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assignments
            .get(stream)
            .cloned()
    }
}

/// How a session with etcd ended.
enum Ended {
    /// The registry was dropped.
    Closed,
    /// The watch was compacted or cancelled: resync now.
    Resync,
    /// etcd failed after the view was loaded: try again at once before calling it degraded.
    Lost(String),
    /// etcd could not be reached or loaded.
    Failed(String),
}

/// The writer's per-session state.
struct Writer {
    client: Client,
    /// (lease id, granted at) used for assignments.
    assignment_lease: Option<(i64, Instant)>,
}

type EtcdResult<T> = Result<T, String>;

impl Shared {
    fn lock_view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
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
            tracing::info!("etcd reachable again: fleet view resynced");
        }
        *self.detail.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn timed<T, E: std::fmt::Display>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, E>>,
    ) -> EtcdResult<T> {
        match tokio::time::timeout(self.cfg.request_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!(
                "{what}: no answer within {:?}",
                self.cfg.request_timeout
            )),
        }
    }

    /// The task: sessions, with backoff between failed ones.
    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Op>) {
        let mut pending: VecDeque<Op> = VecDeque::new();
        let mut backoff = MIN_BACKOFF;
        let mut retry_at_once = true;
        loop {
            let why = match self.session(&mut rx, &mut pending, &mut backoff).await {
                Ended::Closed => return,
                Ended::Resync => {
                    tracing::info!("etcd watch compacted or cancelled: resyncing");
                    continue;
                }
                Ended::Lost(why) if retry_at_once => {
                    // One member gone, a connection reset: reconnecting usually works at once,
                    // and clients should not see a flicker of "degraded" for it.
                    tracing::info!(error = %why, "etcd session lost: reconnecting");
                    retry_at_once = false;
                    continue;
                }
                Ended::Lost(why) | Ended::Failed(why) => why,
            };
            retry_at_once = true;
            self.set_degraded(why);
            let until = Instant::now() + backoff;
            loop {
                tokio::select! {
                    op = rx.recv() => match op {
                        Some(op) => keep(&mut pending, op),
                        None => return,
                    },
                    _ = tokio::time::sleep_until(until) => break,
                }
            }
            backoff = (backoff * 2).min(self.cfg.retry_max);
        }
    }

    /// Connect, write what was kept, load the view, then watch and write until something fails.
    async fn session(
        &self,
        rx: &mut mpsc::Receiver<Op>,
        pending: &mut VecDeque<Op>,
        backoff: &mut Duration,
    ) -> Ended {
        let client = match self
            .timed(
                "connect",
                Client::connect(&self.cfg.endpoints, Some(self.cfg.options.clone())),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => return Ended::Failed(e),
        };
        let mut w = Writer {
            client,
            assignment_lease: None,
        };
        while let Some(op) = pending.pop_front() {
            if let Err(e) = self.execute(&mut w, &op).await {
                pending.push_front(op);
                return Ended::Failed(e);
            }
        }
        let root = self.cfg.root.clone();
        let got = self
            .timed(
                "load",
                w.client
                    .get(root.as_bytes(), Some(GetOptions::new().with_prefix())),
            )
            .await;
        let mut got = match got {
            Ok(g) => g,
            Err(e) => return Ended::Failed(e),
        };
        let rev = got.header().map(|h| h.revision()).unwrap_or(0);
        self.replace_view(got.take_kvs());
        let watch = self
            .timed(
                "watch",
                w.client.watch(
                    root.as_bytes(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(rev + 1),
                    ),
                ),
            )
            .await;
        let mut watch = match watch {
            Ok(s) => s,
            Err(e) => return Ended::Failed(e),
        };
        self.set_healthy();
        *backoff = MIN_BACKOFF;
        tracing::debug!(revision = rev, "etcd fleet view loaded; watching");
        loop {
            tokio::select! {
                msg = watch.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() || resp.compact_revision() > 0 {
                            return Ended::Resync;
                        }
                        let mut touched = HashSet::new();
                        for ev in resp.events() {
                            if let Some(kv) = ev.kv() {
                                self.apply_event(kv, ev.event_type(), &mut touched);
                            }
                        }
                        let now = Instant::now();
                        for id in touched {
                            self.apply_server(&id, now);
                        }
                    }
                    Ok(None) => return Ended::Lost("watch closed".into()),
                    Err(e) => return Ended::Lost(format!("watch: {e}")),
                },
                op = rx.recv() => match op {
                    None => return Ended::Closed,
                    Some(op) => {
                        // One retry: with several members, a request may meet a dead one first.
                        let r = match self.execute(&mut w, &op).await {
                            Ok(()) => Ok(()),
                            Err(_) => self.execute(&mut w, &op).await,
                        };
                        if let Err(e) = r {
                            if op.keep() {
                                keep(pending, op);
                            }
                            return Ended::Lost(e);
                        }
                    }
                },
            }
        }
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        format!("{}{kind}/{rest}", self.cfg.root)
    }

    /// Write one change to etcd, and into the view (the watch echo then changes nothing).
    async fn execute(&self, w: &mut Writer, op: &Op) -> EtcdResult<()> {
        match op {
            Op::Register(r) => {
                let lease = self
                    .timed(
                        "lease grant",
                        w.client.lease_grant(self.cfg.lease_ttl_s, None),
                    )
                    .await?
                    .id();
                let doc = ServerDoc {
                    registration: r.clone(),
                    load: Load::default(),
                    state: ServerState::Ready,
                    written_ms: now_ms(),
                };
                let value = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
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
                self.timed("register", w.client.txn(txn)).await?;
                let mut v = self.lock_view();
                v.servers.insert(r.id.clone(), (doc, lease));
                v.reports.remove(&r.id);
            }
            Op::Beat { id, hb } => self.beat(w, id, hb).await?,
            Op::Deregister(id) => {
                let txn = Txn::new().and_then(vec![
                    TxnOp::delete(
                        self.key("ingest", &format!("{id}/")),
                        Some(etcd_client::DeleteOptions::new().with_prefix()),
                    ),
                    TxnOp::delete(self.key("servers", id), None),
                ]);
                self.timed("deregister", w.client.txn(txn)).await?;
                let mut v = self.lock_view();
                v.servers.remove(id);
                v.reports.remove(id);
            }
            Op::Drain { id, drained } => {
                let key = self.key("drain", id);
                if *drained {
                    self.timed("drain", w.client.put(key, "1", None)).await?;
                    self.lock_view().drained.insert(id.clone());
                } else {
                    self.timed("undrain", w.client.delete(key, None)).await?;
                    self.lock_view().drained.remove(id);
                }
            }
            Op::Assign { stream, rec } => {
                let lease = match w.assignment_lease {
                    Some((l, at)) if at.elapsed() < ASSIGNMENT_LEASE_EVERY => l,
                    _ => {
                        let l = self
                            .timed(
                                "lease grant",
                                w.client.lease_grant(self.cfg.assignment_ttl_s, None),
                            )
                            .await?
                            .id();
                        w.assignment_lease = Some((l, Instant::now()));
                        l
                    }
                };
                let value = serde_json::to_vec(rec).map_err(|e| e.to_string())?;
                let put = self
                    .timed(
                        "assignment",
                        w.client.put(
                            self.key("assignments", stream),
                            value,
                            Some(PutOptions::new().with_lease(lease)),
                        ),
                    )
                    .await;
                if let Err(e) = put {
                    // Perhaps the lease is gone (etcd restored from a snapshot): grant anew.
                    w.assignment_lease = None;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Renew the server's lease; write its load and streams when due (see the write budget).
    async fn beat(&self, w: &mut Writer, id: &str, hb: &Heartbeat) -> EtcdResult<()> {
        let (doc, lease, reports) = {
            let v = self.lock_view();
            let Some((doc, lease)) = v.servers.get(id) else {
                // Not (yet) in etcd: its registration is still queued or it expired there.
                return Ok(());
            };
            (
                doc.clone(),
                *lease,
                v.reports.get(id).cloned().unwrap_or_default(),
            )
        };
        match tokio::time::timeout(self.cfg.request_timeout, w.client.lease_keep_alive(lease)).await
        {
            Ok(Ok(_)) => {}
            // The lease expired: etcd deleted the keys and the watch tells every director.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => return Ok(()),
            Ok(Err(e)) => return Err(format!("lease keep-alive: {e}")),
            Err(_) => return Err("lease keep-alive: no answer".into()),
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
            };
            match reports.get(&k) {
                None => puts.push((k.clone(), new)),
                Some(old) if old.live != new.live => puts.push((k.clone(), new)),
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
        let write_doc = hb.state != doc.state || (due && (hb.load != doc.load || seq_changed));
        let mut ops = Vec::new();
        let new_doc = ServerDoc {
            load: hb.load,
            state: hb.state,
            written_ms: now,
            ..doc
        };
        if write_doc {
            let value = serde_json::to_vec(&new_doc).map_err(|e| e.to_string())?;
            ops.push(TxnOp::put(
                self.key("servers", id),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ));
        }
        for ((stream, role), r) in &puts {
            let value = serde_json::to_vec(r).map_err(|e| e.to_string())?;
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
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(TXN_OPS));
            self.timed("heartbeat", w.client.txn(Txn::new().and_then(rest)))
                .await?;
            rest = tail;
        }
        let mut v = self.lock_view();
        if write_doc && let Some(entry) = v.servers.get_mut(id) {
            entry.0 = new_doc;
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
        tracing::info!(
            servers = v.servers.len(),
            assignments = v.assignments.len(),
            "etcd fleet view loaded"
        );
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
                if put {
                    match serde_json::from_slice::<ServerDoc>(kv.value()) {
                        Ok(doc) if doc.registration.id == rest => {
                            v.servers.insert(rest.to_string(), (doc, kv.lease()));
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
            "assignments" => {
                if put {
                    match serde_json::from_slice::<AssignmentRecord>(kv.value()) {
                        Ok(a) => {
                            v.assignments.insert(rest.to_string(), a);
                        }
                        Err(e) => {
                            tracing::warn!(key, error = %e, "bad assignment in etcd: skipped")
                        }
                    }
                } else {
                    v.assignments.remove(rest);
                }
            }
            _ => {}
        }
    }

    /// Make the local registry's record of `id` what the view says.
    fn apply_server(&self, id: &str, now: Instant) {
        let (doc, streams, drained) = {
            let v = self.lock_view();
            let Some((doc, _)) = v.servers.get(id) else {
                drop(v);
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
                            role: *role,
                            next_seq: r.next_seq,
                            live: r.live,
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
fn keep(pending: &mut VecDeque<Op>, op: Op) {
    if !op.keep() {
        return;
    }
    if pending.len() >= MAX_PENDING {
        pending.pop_front();
        tracing::warn!(
            kept = MAX_PENDING,
            "too many changes kept while etcd is unreachable: the oldest dropped"
        );
    }
    pending.push_back(op);
}
