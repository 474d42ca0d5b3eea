//! The director's state: the fleet snapshot, learned corrections, assignments, and upkeep.
//!
//! **Concurrency.** The request path reads an immutable [`Snapshot`] (a `select::Fleet` plus each
//! server's URLs) through an `ArcSwap`: a lock-free load, then selection with no lock held.
//! Snapshots are rebuilt by whoever notices they are stale, one at a time (a rebuild mutex), and
//! only when the registry changed:
//! - a *structural* change (register, deregister, drain, state or health flip) is seen by the next
//!   request, which rebuilds before selecting, so a registration is visible immediately and a
//!   burst of registrations costs one rebuild;
//! - a *load* change (heartbeat numbers) waits for the upkeep task, which rebuilds at most every
//!   `heartbeat.load_refresh_ms`; with 10,000 servers heartbeating every second, rebuilding per
//!   heartbeat would cost more than serving.
//!
//! Learned corrections follow the same pattern: heartbeats feed a master copy under a mutex, and
//! the upkeep task publishes a clone every `learning.publish_ms` when it changed.
//!
//! **What not.** No HTTP here (see [`crate::api`]).

use std::collections::HashMap;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use geo::Location;
use geo::ip::IpLocator;
use select::{Corrections, Fleet, Health, Measurement, Params};
use tokio::time::Instant;

use crate::config::{DirectorConfig, RegistryBackend};
use crate::etcd::EtcdRegistry;
use crate::etcd_streams::EtcdStreams;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::registry::{MemoryRegistry, Registry};
use crate::streams::{MemoryStreams, StreamStore};
use proto::{BroadcastId, StreamId};

/// Unix time for tokens and `expires_at`. Injectable so tests control it.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn unix_s(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_s(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// Unix time that starts at `base` and advances with tokio's clock (so a paused test clock moves
/// token expiry too).
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base_unix: u64,
    base: Instant,
}

impl TokioClock {
    pub fn starting_at(base_unix: u64) -> Self {
        Self {
            base_unix,
            base: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn unix_s(&self) -> u64 {
        self.base_unix
            + Instant::now()
                .saturating_duration_since(self.base)
                .as_secs()
    }
}

/// One immutable view of the fleet for selection.
#[derive(Debug)]
pub struct Snapshot {
    pub fleet: Fleet,
    /// Server id → its URLs.
    pub urls: HashMap<String, Arc<proto::api::Urls>>,
    pub structure_version: u64,
    pub load_version: u64,
    pub healthy: usize,
}

impl Snapshot {
    fn empty() -> Self {
        Self {
            fleet: Fleet::new(Vec::new()),
            urls: HashMap::new(),
            structure_version: 0,
            load_version: 0,
            healthy: 0,
        }
    }
}

/// Shared state of one director. Cheap to clone (an `Arc`).
#[derive(Clone, Debug)]
pub struct Director {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub config: DirectorConfig,
    pub key: token::SigningKey,
    pub locator: IpLocator,
    pub default_location: Location,
    pub registry: Arc<dyn Registry>,
    snapshot: ArcSwap<Snapshot>,
    rebuild: Mutex<()>,
    learned_master: Mutex<Corrections>,
    learned: ArcSwap<Corrections>,
    learned_dirty: AtomicBool,
    /// Per client network and POP: RTTs measured by entry servers and probes (select::history).
    pub history: Mutex<select::History>,
    /// The latest assignments, newest first (the dashboard's ring).
    pub recent: Mutex<std::collections::VecDeque<crate::dashboard::RecentAssignment>>,
    /// Streams, their keys and broadcasts.
    pub streams: StreamStore,
    /// (stream, broadcast) → Unix time an entry server last reported its publisher.
    pub live_seen: Mutex<HashMap<(StreamId, BroadcastId), u64>>,
    /// Broadcasts whose entry servers must end them (superseded, revoked) → when noted.
    pub ending: Mutex<HashMap<proto::api::BroadcastRef, u64>>,
    /// Unix time of the last sweep of idle claims and old history.
    pub streams_swept: AtomicU64,
    /// HTTP client for the publish hook.
    pub http: reqwest::Client,
    pub limiter: RateLimiter,
    pub metrics: Metrics,
    pub clock: Arc<dyn Clock>,
    /// Milliseconds since `started` at the last upkeep round (0 = never).
    last_upkeep_ms: AtomicU64,
    started: Instant,
}

/// Why a [`Director`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{what} {path}: {message}")]
    File {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error(transparent)]
    Key(#[from] token::KeyError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
    #[error("HTTP client: {0}")]
    Http(String),
}

impl Director {
    /// A director from a validated config, a signing key and an IP locator, with the in-memory
    /// registry and the system clock. Nothing is read from disk: this is the constructor for
    /// embedding (`firstmile up`) and tests. See [`Director::from_config`] for the file-reading
    /// one.
    pub fn new(
        config: DirectorConfig,
        key: token::SigningKey,
        locator: IpLocator,
    ) -> Result<Self, InitError> {
        Self::with_parts(config, key, locator, None, Arc::new(SystemClock))
    }

    /// As [`Director::new`], with a registry of your choice (None = in memory) and a clock.
    pub fn with_parts(
        config: DirectorConfig,
        key: token::SigningKey,
        mut locator: IpLocator,
        registry: Option<Arc<dyn Registry>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, InitError> {
        config.validate()?;
        let default_location = config.default_location()?;
        for (net, place) in &config.sites {
            // validate() resolved every site already.
            if let Ok(p) = crate::config::resolve_place(place) {
                locator = locator.with_site(*net, p);
            }
        }
        let rl = &config.http.rate_limit;
        let limiter = RateLimiter::new(rl.per_second, rl.burst, rl.max_clients);
        let registry: Arc<dyn Registry> = match (registry, config.registry.backend) {
            (Some(r), _) => r,
            (None, RegistryBackend::Memory) => {
                Arc::new(MemoryRegistry::new(config.limits.max_servers))
            }
            (None, RegistryBackend::Etcd) => Arc::new(EtcdRegistry::from_config(&config)?),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                key,
                locator,
                default_location,
                registry,
                snapshot: ArcSwap::from_pointee(Snapshot::empty()),
                rebuild: Mutex::new(()),
                learned_master: Mutex::new(Corrections::new()),
                learned: ArcSwap::from_pointee(Corrections::new()),
                learned_dirty: AtomicBool::new(false),
                history: Mutex::new(select::History::new()),
                recent: crate::dashboard::ring(),
                streams: match config.registry.backend {
                    RegistryBackend::Memory => {
                        StreamStore::Memory(MemoryStreams::new(config.limits.max_tracked_streams))
                    }
                    RegistryBackend::Etcd => StreamStore::Etcd(EtcdStreams::from_config(&config)?),
                },
                live_seen: Mutex::new(HashMap::new()),
                ending: Mutex::new(HashMap::new()),
                streams_swept: AtomicU64::new(0),
                http: reqwest::Client::builder()
                    .connect_timeout(Duration::from_millis(config.publish.webhook.timeout_ms))
                    .tls_backend_preconfigured(
                        (*plumbing::tls::client_config(None)
                            .map_err(|e| InitError::Http(e.to_string()))?)
                        .clone(),
                    )
                    .build()
                    .map_err(|e| InitError::Http(e.to_string()))?,
                limiter,
                metrics: Metrics::new(),
                clock,
                last_upkeep_ms: AtomicU64::new(0),
                started: Instant::now(),
                config,
            }),
        })
    }

    /// Build from configuration, reading the signing key, the MMDB images and checking the TLS
    /// material. Everything that can be wrong with the configuration fails here, before any
    /// port is bound.
    pub fn from_config(config: DirectorConfig) -> Result<Self, InitError> {
        config.validate()?;
        let key = match (
            &config.tokens.signing_key_pem,
            &config.tokens.signing_key_file,
        ) {
            (Some(pem), _) => token::SigningKey::from_pem(pem)?,
            (None, Some(path)) => {
                token::SigningKey::from_pem(&read_text("tokens.signing_key_file", path)?)?
            }
            (None, None) => {
                return Err(crate::config::ConfigError::Key {
                    key: "tokens.signing_key_file".into(),
                    message: "is required (or tokens.signing_key_pem): make a key pair with \
                              `firstmile keygen --out director`"
                        .into(),
                }
                .into());
            }
        };
        let mut locator = IpLocator::new();
        if let Some(path) = &config.geoip.city_db {
            let bytes = read_bytes("geoip.city_db", path)?;
            locator = locator.with_city_db(bytes).map_err(|e| InitError::File {
                what: "geoip.city_db",
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        if let Some(path) = &config.geoip.asn_db {
            let bytes = read_bytes("geoip.asn_db", path)?;
            locator = locator.with_asn_db(bytes).map_err(|e| InitError::File {
                what: "geoip.asn_db",
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        if let Some(tls) = &config.tls {
            crate::tls::server_config(&tls.cert_file, &tls.key_file)?;
        }
        Self::new(config, key, locator)
    }

    pub fn config(&self) -> &DirectorConfig {
        &self.inner.config
    }

    /// A peer token for entry server `id` (see `token::PeerClaims`): 15 minutes.
    pub fn peer_token(&self, id: &proto::ServerId) -> (String, u64) {
        let now = self.unix_now();
        let exp = now + 900;
        let t = self.inner.key.sign_peer(&token::PeerClaims {
            scp: token::Scope::Peer,
            server: id.clone(),
            iat: now,
            exp,
        });
        (t, exp)
    }

    /// The public key entry servers verify tokens with.
    pub fn public_key(&self) -> token::VerifyingKey {
        self.inner.key.public_key()
    }

    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.inner.registry
    }

    pub(crate) fn params(&self) -> &Params {
        &self.inner.config.scoring
    }

    /// The current fleet snapshot, rebuilt first if the registry's structure changed.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        let snap = self.inner.snapshot.load_full();
        let v = self.inner.registry.versions();
        if v.structure == snap.structure_version {
            return snap;
        }
        self.rebuild(false)
    }

    /// Rebuild the snapshot if it is stale (structure, or `load_too` and load).
    fn rebuild(&self, load_too: bool) -> Arc<Snapshot> {
        let _g = self.inner.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.inner.snapshot.load_full();
        let v = self.inner.registry.versions();
        if v.structure == current.structure_version && (!load_too || v.load == current.load_version)
        {
            return current;
        }
        let records = self.inner.registry.servers(Instant::now());
        let mut urls = HashMap::with_capacity(records.len());
        let mut servers = Vec::with_capacity(records.len());
        let mut healthy = 0;
        for r in records {
            if r.health == Health::Healthy {
                healthy += 1;
            }
            servers.push(r.entry_server());
            let mut u = proto::api::Urls::default();
            for (p, url) in &r.registration.urls {
                if let Ok(p) = p.parse::<proto::Protocol>() {
                    u.set(p, Some(url.clone()));
                }
            }
            urls.insert(r.registration.id, Arc::new(u));
        }
        let snap = Arc::new(Snapshot {
            fleet: Fleet::new(servers),
            urls,
            structure_version: v.structure,
            load_version: v.load,
            healthy,
        });
        self.inner
            .metrics
            .registered
            .set(i64::try_from(snap.fleet.len()).unwrap_or(i64::MAX));
        self.inner
            .metrics
            .healthy
            .set(i64::try_from(healthy).unwrap_or(i64::MAX));
        self.inner.snapshot.store(snap.clone());
        snap
    }

    /// The published learned corrections.
    pub fn corrections(&self) -> Arc<Corrections> {
        self.inner.learned.load_full()
    }

    pub(crate) fn unix_now(&self) -> u64 {
        self.inner.clock.unix_s()
    }

    /// Take in measurements reported by `server_id`. Each is attributed to the location its pick
    /// was scored from, else to its client IP's location; those with neither are dropped.
    /// Returns (accepted, rejected).
    pub(crate) fn learn(&self, server_id: &str, ms: Vec<proto::api::Measurement>) -> (u64, u64) {
        let snap = self.snapshot();
        let Some(server) = snap.fleet.get(server_id) else {
            return (0, ms.len() as u64);
        };
        let (mut ok, mut bad) = (0u64, 0u64);
        let mut resolved = Vec::with_capacity(ms.len());
        // Per-network history: the session's smoothed RTT, attributed to the device's network as
        // the entry server saw it (its socket address), at the director's time.
        let mut observed = Vec::with_capacity(ms.len());
        for m in ms {
            let ip_location = self.inner.locator.lookup(m.client_ip);
            if crate::assign::measurable(m.client_ip) {
                let asn = crate::assign::asn_of(Some(&ip_location));
                observed.push((select::ClientNetwork::new(m.client_ip, asn), m.rtt_ms));
            }
            let basis = self
                .inner
                .streams
                .cached(&m.stream)
                .and_then(|d| {
                    let b = d.current?;
                    b.pick(m.role)
                        .filter(|p| p.server.as_str() == server_id)
                        .and_then(|p| p.basis)
                })
                .and_then(crate::convert::location)
                .or_else(|| ip_location.location());
            match basis {
                Some(client) => resolved.push(Measurement {
                    client,
                    server_id: server_id.to_string(),
                    rtt_ms: m.rtt_ms,
                    loss: m.loss,
                    throughput_mbps: m.throughput_mbps,
                    at: m.at,
                }),
                None => bad += 1,
            }
        }
        if !observed.is_empty() {
            let now = self.unix_now();
            let mut h = self.inner.history.lock().unwrap_or_else(|p| p.into_inner());
            for (net, rtt_ms) in &observed {
                let _ = h.observe(net, &server.pop, *rtt_ms, now);
            }
        }
        if !resolved.is_empty() {
            let mut master = self
                .inner
                .learned_master
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for m in &resolved {
                match master.observe(m, &server.location, self.params()) {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        tracing::debug!(server = server_id, error = %e, "measurement rejected");
                        bad += 1;
                    }
                }
            }
            if ok > 0 {
                self.inner.learned_dirty.store(true, Ordering::Release);
            }
        }
        self.inner.metrics.measurements("accepted", ok);
        self.inner.metrics.measurements("rejected", bad);
        (ok, bad)
    }

    /// Publish the learned corrections if they changed.
    pub fn publish_corrections(&self) {
        if self.inner.learned_dirty.swap(false, Ordering::AcqRel) {
            let c = self
                .inner
                .learned_master
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            self.inner.learned.store(Arc::new(c));
        }
    }

    /// One round of upkeep at `now`: expire silent servers, refresh the snapshot (load too).
    pub fn upkeep_once(&self, now: Instant) {
        let hb = &self.inner.config.heartbeat;
        let interval = Duration::from_millis(hb.interval_ms);
        let e = self.inner.registry.expire(
            now,
            interval * hb.missed_allowed,
            interval * hb.forget_after_missed,
        );
        for id in &e.unhealthy {
            tracing::warn!(server = %id, missed = hb.missed_allowed, "entry server missed heartbeats: unhealthy");
        }
        for id in &e.forgotten {
            tracing::warn!(server = %id, "entry server silent too long: forgotten");
        }
        self.rebuild(true);
        let ms = u64::try_from(
            now.saturating_duration_since(self.inner.started)
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        self.inner
            .last_upkeep_ms
            .store(ms.max(1), Ordering::Release);
    }

    /// Whether upkeep has run recently (readiness).
    pub fn upkeep_fresh(&self, now: Instant) -> bool {
        let last = self.inner.last_upkeep_ms.load(Ordering::Acquire);
        if last == 0 {
            return false;
        }
        let now_ms = u64::try_from(
            now.saturating_duration_since(self.inner.started)
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        let period = self.upkeep_period().as_millis() as u64;
        now_ms.saturating_sub(last) <= (3 * period).max(5000)
    }

    fn upkeep_period(&self) -> Duration {
        let hb = &self.inner.config.heartbeat;
        Duration::from_millis(hb.interval_ms.min(hb.load_refresh_ms))
    }

    /// Run upkeep forever: expiry and load refresh every `min(interval, load_refresh)`,
    /// corrections every `learning.publish_ms`. [`crate::run`] runs it; embedders that serve the
    /// router themselves must spawn it.
    pub async fn upkeep(self) {
        let mut tick = tokio::time::interval(self.upkeep_period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let publish = Duration::from_millis(self.inner.config.learning.publish_ms);
        let mut last_publish = Instant::now();
        loop {
            let now = tick.tick().await;
            self.upkeep_once(now);
            self.upkeep_streams().await;
            if now.saturating_duration_since(last_publish) >= publish {
                self.publish_corrections();
                last_publish = now;
            }
        }
    }
}

fn read_bytes(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, InitError> {
    std::fs::read(path).map_err(|e| InitError::File {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn read_text(what: &'static str, path: &std::path::Path) -> Result<String, InitError> {
    std::fs::read_to_string(path).map_err(|e| InitError::File {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    })
}
