//! The entry-server registry: who is registered, their load, state, health and live streams.
//!
//! **What.** [`Registry`] is the store behind the director's entry-server API; [`MemoryRegistry`]
//! keeps it in this process. The shared store ([`crate::etcd::EtcdRegistry`]) implements the same
//! trait: its methods are synchronous because it keeps a local view fed by a watch and writes
//! through in the background, exactly as the selection wants to read it.
//!
//! **Versions.** Every change bumps a counter: `structure` for changes that alter which servers
//! can be picked (register, deregister, drain, state, health), `load` for heartbeat numbers. The
//! director compares them with its fleet snapshot's to decide when to rebuild (see
//! [`crate::state`]); readers never hold the registry's lock while they select.
//!
//! **What not.** No selection, no HTTP, no clock reads: `now` is an argument (tokio's
//! [`Instant`], so expiry tests run on a paused clock).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use geo::Location;
use proto::Role;
use select::{Capacity, Health, Load, Protocol};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// What an entry server says about itself when it registers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub id: String,
    pub pop: String,
    pub city: String,
    pub location: Location,
    pub capacity: Capacity,
    pub protocols: Vec<Protocol>,
    /// Protocol name → URL.
    pub urls: BTreeMap<String, String>,
}

/// The state an entry server reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    #[default]
    Ready,
    /// Shutting down or otherwise refusing new streams; existing ones continue.
    Draining,
}

/// One broadcast an entry server is ingesting, from its heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReport {
    pub stream: String,
    /// The broadcast (empty when a shared registry's older record has none).
    #[serde(default)]
    pub broadcast: String,
    pub role: Role,
    pub next_seq: u64,
    pub live: bool,
    /// The final sequence number once the broadcast ended there.
    #[serde(default)]
    pub ended: Option<u64>,
}

/// What a heartbeat carries for the registry (measurements go to the learner instead).
#[derive(Clone, Debug, PartialEq)]
pub struct Heartbeat {
    pub load: Load,
    pub state: ServerState,
    /// Its log storage (a server with a full or failing disk reports itself draining too).
    pub disk: proto::api::DiskState,
    pub streams: Vec<StreamReport>,
}

/// A registered server with everything the director knows about it.
#[derive(Clone, Debug, Serialize)]
pub struct ServerRecord {
    #[serde(flatten)]
    pub registration: Registration,
    pub load: Load,
    pub state: ServerState,
    pub disk: proto::api::DiskState,
    pub health: Health,
    /// Operator drain (admin API), separate from the server's own state and from health.
    pub admin_drained: bool,
    pub heartbeats: u64,
    #[serde(skip)]
    pub last_heartbeat: Instant,
    /// Milliseconds since the last heartbeat (or registration), when listed.
    pub last_heartbeat_age_ms: u64,
    /// Streams reported in the last heartbeat.
    pub streams: usize,
}

impl ServerRecord {
    /// Whether the selection should treat it as draining.
    pub fn draining(&self) -> bool {
        self.admin_drained
            || self.state == ServerState::Draining
            || self.disk != proto::api::DiskState::Ok
    }

    /// The selection's view.
    pub fn entry_server(&self) -> select::EntryServer {
        let r = &self.registration;
        select::EntryServer {
            id: r.id.clone(),
            pop: r.pop.clone(),
            city: r.city.clone(),
            location: r.location,
            capacity: r.capacity,
            load: self.load,
            health: self.health,
            draining: self.draining(),
            protocols: r.protocols.clone(),
        }
    }
}

/// One server's report of a stream, for `GET /v1/streams/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    pub server_id: String,
    /// The broadcast reported (None when unknown).
    pub broadcast: Option<String>,
    pub role: Role,
    pub next_seq: u64,
    pub live: bool,
    pub ended: Option<u64>,
}

/// The change counters (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Versions {
    pub structure: u64,
    pub load: u64,
}

/// What [`Registry::expire`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    /// Servers newly marked unhealthy.
    pub unhealthy: Vec<String>,
    /// Servers forgotten.
    pub forgotten: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Unknown or forgotten server id: the entry server should register (again).
    #[error(
        "entry server {0:?} is not registered (unknown, deregistered or expired): register again"
    )]
    NotFound(String),
    /// The registry holds as many servers as configured.
    #[error("the registry is full ({0} entry servers): raise limits.max_servers")]
    Full(usize),
}

/// Where the registry's view comes from and whether it is current, for `/readyz` and metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RegistryStatus {
    /// `memory` or `etcd`.
    pub backend: &'static str,
    /// The view has been loaded from the shared store at least once (always true in memory).
    pub synced: bool,
    /// The shared store cannot be reached: answers come from the last view, and changes made
    /// through this director are written when the store returns.
    pub degraded: bool,
    /// Why it is degraded or not synced yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Key writes this director made to the shared store since it started (puts and
    /// transactions; lease renewals are not writes). Always 0 in memory.
    pub writes: u64,
}

/// The registry's interface (see the module docs).
pub trait Registry: Send + Sync + std::fmt::Debug + 'static {
    /// Add a server, or replace the one with the same id. It is healthy from now.
    fn register(&self, r: Registration, now: Instant) -> Result<(), RegistryError>;
    /// Record a heartbeat; a server marked unhealthy becomes healthy again.
    fn heartbeat(&self, id: &str, hb: Heartbeat, now: Instant) -> Result<(), RegistryError>;
    fn deregister(&self, id: &str) -> Result<(), RegistryError>;
    /// Operator drain (true) or undrain (false).
    fn set_admin_drain(&self, id: &str, drained: bool) -> Result<ServerRecord, RegistryError>;
    /// Mark servers silent for longer than `unhealthy_after` unhealthy, and forget those silent
    /// for longer than `forget_after`.
    fn expire(&self, now: Instant, unhealthy_after: Duration, forget_after: Duration) -> Expiry;
    /// Every server, sorted by id, with ages computed at `now`.
    fn servers(&self, now: Instant) -> Vec<ServerRecord>;
    fn server(&self, id: &str, now: Instant) -> Option<ServerRecord>;
    /// Which servers report ingesting `stream`.
    fn ingest_of(&self, stream: &str) -> Vec<IngestReport>;
    fn versions(&self) -> Versions;
    /// Where the view comes from and whether it is current. In memory: always current.
    fn status(&self) -> RegistryStatus {
        RegistryStatus {
            backend: "memory",
            synced: true,
            degraded: false,
            detail: None,
            writes: 0,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    servers: HashMap<String, ServerRecord>,
    /// stream → (server id, role, broadcast) → report.
    streams: HashMap<String, HashMap<(String, Role, String), StreamReport>>,
    /// server id → the (stream, role, broadcast) it reported last.
    reported: HashMap<String, Vec<(String, Role, String)>>,
    versions: Versions,
}

impl Inner {
    fn drop_reports(&mut self, id: &str) {
        for (stream, role, broadcast) in self.reported.remove(id).unwrap_or_default() {
            if let Some(m) = self.streams.get_mut(&stream) {
                m.remove(&(id.to_string(), role, broadcast));
                if m.is_empty() {
                    self.streams.remove(&stream);
                }
            }
        }
    }
}

/// The in-process registry.
#[derive(Debug)]
pub struct MemoryRegistry {
    inner: Mutex<Inner>,
    max_servers: usize,
    /// Copies of `Inner::versions`, readable without the lock (the request path reads them on
    /// every assignment).
    structure: AtomicU64,
    load: AtomicU64,
}

impl MemoryRegistry {
    pub fn new(max_servers: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_servers,
            structure: AtomicU64::new(0),
            load: AtomicU64::new(0),
        }
    }

    /// Publish the versions after a change (called with the lock held).
    fn publish(&self, g: &Inner) {
        self.structure
            .store(g.versions.structure, Ordering::Release);
        self.load.store(g.versions.load, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent in a way that matters
        // more than stopping service would; keep going with the data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn aged(r: &ServerRecord, now: Instant) -> ServerRecord {
    let mut r = r.clone();
    r.last_heartbeat_age_ms =
        u64::try_from(now.saturating_duration_since(r.last_heartbeat).as_millis())
            .unwrap_or(u64::MAX);
    r
}

impl Registry for MemoryRegistry {
    fn register(&self, r: Registration, now: Instant) -> Result<(), RegistryError> {
        let mut g = self.lock();
        if !g.servers.contains_key(&r.id) && g.servers.len() >= self.max_servers {
            return Err(RegistryError::Full(self.max_servers));
        }
        let id = r.id.clone();
        let admin_drained = g.servers.get(&id).is_some_and(|old| old.admin_drained);
        g.drop_reports(&id);
        g.servers.insert(
            id,
            ServerRecord {
                registration: r,
                load: Load::default(),
                state: ServerState::Ready,
                disk: proto::api::DiskState::Ok,
                health: Health::Healthy,
                // An operator's drain survives the server re-registering.
                admin_drained,
                heartbeats: 0,
                last_heartbeat: now,
                last_heartbeat_age_ms: 0,
                streams: 0,
            },
        );
        g.versions.structure += 1;
        self.publish(&g);
        Ok(())
    }

    fn heartbeat(&self, id: &str, hb: Heartbeat, now: Instant) -> Result<(), RegistryError> {
        let mut g = self.lock();
        let Some(rec) = g.servers.get_mut(id) else {
            return Err(RegistryError::NotFound(id.to_string()));
        };
        let structural =
            rec.health != Health::Healthy || rec.state != hb.state || rec.disk != hb.disk;
        rec.health = Health::Healthy;
        rec.state = hb.state;
        rec.disk = hb.disk;
        rec.load = hb.load;
        rec.last_heartbeat = now;
        rec.heartbeats += 1;
        rec.streams = hb.streams.len();
        g.drop_reports(id);
        let mut keys = Vec::with_capacity(hb.streams.len());
        for s in hb.streams {
            let key = (id.to_string(), s.role, s.broadcast.clone());
            keys.push((s.stream.clone(), s.role, s.broadcast.clone()));
            g.streams
                .entry(s.stream.clone())
                .or_default()
                .insert(key, s);
        }
        g.reported.insert(id.to_string(), keys);
        if structural {
            g.versions.structure += 1;
        } else {
            g.versions.load += 1;
        }
        self.publish(&g);
        Ok(())
    }

    fn deregister(&self, id: &str) -> Result<(), RegistryError> {
        let mut g = self.lock();
        if g.servers.remove(id).is_none() {
            return Err(RegistryError::NotFound(id.to_string()));
        }
        g.drop_reports(id);
        g.versions.structure += 1;
        self.publish(&g);
        Ok(())
    }

    fn set_admin_drain(&self, id: &str, drained: bool) -> Result<ServerRecord, RegistryError> {
        let mut g = self.lock();
        let Some(rec) = g.servers.get_mut(id) else {
            return Err(RegistryError::NotFound(id.to_string()));
        };
        rec.admin_drained = drained;
        let out = rec.clone();
        g.versions.structure += 1;
        self.publish(&g);
        Ok(out)
    }

    fn expire(&self, now: Instant, unhealthy_after: Duration, forget_after: Duration) -> Expiry {
        let mut g = self.lock();
        let mut out = Expiry::default();
        for rec in g.servers.values_mut() {
            let silent = now.saturating_duration_since(rec.last_heartbeat);
            if silent > forget_after {
                out.forgotten.push(rec.registration.id.clone());
            } else if silent > unhealthy_after && rec.health == Health::Healthy {
                rec.health = Health::Unhealthy;
                out.unhealthy.push(rec.registration.id.clone());
            }
        }
        for id in &out.forgotten {
            g.servers.remove(id);
            g.drop_reports(id);
        }
        if !out.unhealthy.is_empty() || !out.forgotten.is_empty() {
            g.versions.structure += 1;
            self.publish(&g);
        }
        out.unhealthy.sort();
        out.forgotten.sort();
        out
    }

    fn servers(&self, now: Instant) -> Vec<ServerRecord> {
        let g = self.lock();
        let mut v: Vec<ServerRecord> = g.servers.values().map(|r| aged(r, now)).collect();
        v.sort_by(|a, b| a.registration.id.cmp(&b.registration.id));
        v
    }

    fn server(&self, id: &str, now: Instant) -> Option<ServerRecord> {
        self.lock().servers.get(id).map(|r| aged(r, now))
    }

    fn ingest_of(&self, stream: &str) -> Vec<IngestReport> {
        self.lock()
            .streams
            .get(stream)
            .map(|m| {
                let mut v: Vec<IngestReport> = m
                    .iter()
                    .map(|((server, role, broadcast), r)| IngestReport {
                        server_id: server.clone(),
                        broadcast: (!broadcast.is_empty()).then(|| broadcast.clone()),
                        role: *role,
                        next_seq: r.next_seq,
                        live: r.live,
                        ended: r.ended,
                    })
                    .collect();
                v.sort_by(|a, b| {
                    (a.role.as_str(), &a.server_id).cmp(&(b.role.as_str(), &b.server_id))
                });
                v
            })
            .unwrap_or_default()
    }

    fn versions(&self) -> Versions {
        Versions {
            structure: self.structure.load(Ordering::Acquire),
            load: self.load.load(Ordering::Acquire),
        }
    }
}
