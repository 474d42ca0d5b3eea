//! An entry server's configuration and shared state.

use crate::hub::{Hub, SlowViewer};
use crate::tcpinfo::TcpInfo;
use chunklog::{FsyncPolicy, LogConfig};
pub use plumbing::ConfigError;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

/// Configuration of one entry server (`firstmile entry`). Defaults < TOML file < env
/// (`FIRSTMILE_ENTRY_<KEY>`) < flags (`--set key=value`); see `examples/entry.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntryConfig {
    /// Unique id of this entry server.
    pub id: String,
    /// Point of presence (failure domain).
    pub pop: String,
    /// Where this server is: a place as a user would type it, or "lat,lon".
    pub location: String,
    /// Native protocol listener.
    pub native_listen: SocketAddr,
    /// TLS on the native listener (`native_tls = { cert_file = "...", key_file = "..." }`, PEM);
    /// none = plain TCP. With it the advertised native URL is `tls://host:port`.
    pub native_tls: Option<NativeTls>,
    /// HTTP listener: viewers, relays, WebSocket ingest, HTTP push, HTTP-FLV, health, metrics.
    pub http_listen: SocketAddr,
    /// RTMP ingest listener (OBS, ffmpeg); none = no RTMP. Advertised as
    /// `rtmp://<advertise>:<port>/live`.
    pub rtmp_listen: Option<SocketAddr>,
    /// Host name or address devices and other nodes use to reach this server
    /// (default: the listen address).
    pub advertise: Option<String>,
    /// Director base URL (`http://host:port` or `https://host:port`); none = standalone (no
    /// registration, no relay).
    pub director: Option<String>,
    /// Extra CA certificates (PEM file) trusted for an `https://` director, besides the public
    /// web roots (a private CA or a self-signed director).
    pub director_ca_file: Option<PathBuf>,
    /// This server's own credential toward the director, `<id>:<64 hex digits>`
    /// (HMAC-SHA256 of the id under the director's `auth.entry_key`: it proves this id and no
    /// other). Prefer the environment: `FIRSTMILE_ENTRY_CREDENTIAL`.
    pub credential: String,
    /// The director's token public key (PEM, inline or a path).
    pub token_public_key: String,
    /// Directory of the chunk logs.
    pub data_dir: PathBuf,
    /// When a chunk counts as durable before it is acknowledged: always (fsync every chunk),
    /// interval:MS (fsync every MS ms, ACK after it), never (ACK after write(2): survives a crash
    /// of the server process, not of the machine).
    #[serde(with = "fsync_serde")]
    pub fsync: FsyncPolicy,
    /// Retention by age (0 = keep): a broadcast whose newest data is older than this many
    /// seconds and that nobody uses is deleted entirely; a long broadcast in use loses its
    /// segments older than this (never its active one).
    pub retention_secs: u64,
    /// Keep at most this many bytes per broadcast log (0 = no limit): its oldest segments go.
    pub retention_bytes: u64,
    /// Total bytes of every log on this server (0 = no budget): over it, the broadcasts nobody
    /// uses are deleted, oldest first, until it fits.
    pub disk_budget_bytes: u64,
    /// Free space the log filesystem must keep. Below it the server takes no new broadcast
    /// (readiness 503, heartbeat `disk: full`), retention deletes unused broadcasts, oldest
    /// first, to get it back, and broadcasts are taken again once it is back.
    pub min_free_bytes: u64,
    /// How often the storage is checked (free space, and a small write and fsync that must
    /// succeed) and retention runs; a server that could not store recovers by itself when a
    /// check passes.
    pub storage_check_ms: u64,
    /// How often retention runs while the storage is fine (at every storage check while it is
    /// short of space).
    pub retention_interval_ms: u64,
    /// Relayed broadcasts this node pulls at once (viewers of a stream it does not hold); over
    /// it, a viewer of another stream gets 503 with Retry-After.
    pub max_relays: usize,
    /// Relay pulls and backfills one client address (IPv6: its /64) may start per minute (a
    /// burst of as many); viewers joining a relay already running cost nothing. Over it: 429.
    pub relay_starts_per_ip_per_min: u32,
    /// Backfills (a relay fetching older chunks for a catch-up viewer) running at once; over it,
    /// the viewer starts at the relay's oldest chunk instead.
    pub max_backfills: usize,
    /// Concurrent ingest streams this server takes.
    pub capacity_streams: u32,
    /// Ingress bandwidth in Mbit/s.
    pub capacity_mbps: f64,
    /// ACK interval hint and timer, ms.
    pub ack_interval_ms: u32,
    /// Bytes of recent chunks kept in memory per stream for viewers.
    pub tail_bytes: usize,
    /// A viewer more than this many bytes behind the live edge is skipped forward or cut.
    pub max_viewer_lag_bytes: u64,
    /// What happens to such a viewer.
    pub slow_viewer: SlowViewer,
    /// A relayed stream with no upstream for this long ends for its viewers.
    pub relay_give_up_ms: u64,
    /// Seconds a draining server waits for its sessions to finish on SIGTERM.
    pub drain_secs: u64,
    /// Worker threads of the server's async runtime; 0 = one per CPU core. `firstmile up`, which
    /// runs six servers and a director on one machine, gives each server one.
    pub threads: usize,
    /// Seconds between path samples of a session.
    pub sample_secs: u64,
    /// Report this process's CPU use as load (turn off when several servers share a process,
    /// as in tests, where the figure would be the sum of all of them).
    pub report_cpu: bool,
    /// A viewer who asks for a stream that is not live yet (assigned, or between broadcasts)
    /// waits this long for it before getting 503 with Retry-After.
    pub viewer_wait_ms: u64,
    /// A broadcast that ended (or whose publishers are gone) and has no viewer is released from
    /// memory, its files closed, after this many seconds.
    pub release_after_s: u64,
    /// HLS: the segment window, ms — segments start at the first keyframe of each window and are
    /// numbered by it (README "Watching in a browser"); EXT-X-TARGETDURATION is twice this.
    pub hls_segment_ms: u32,
    /// HLS: the Part Target Duration of LL-HLS partial segments, ms.
    pub hls_part_ms: u32,
    /// HLS: segments listed in a playlist (twice as many are kept for late fetches).
    pub hls_window: usize,
    /// HLS: a broadcast's segments are released this many seconds after its last HLS request.
    pub hls_idle_s: u64,
    // Listener caps and timeouts (`plumbing::listen`; README "Limits and timeouts of the
    // listeners"). Per-address caps count connections that have not authenticated (a WELCOME
    // sent, an RTMP publish accepted); on HTTP, requests with `Authorization: Bearer
    // <credential>` (its own) or a valid peer token.
    /// HTTP connections open at once (viewers, relays, WebSocket ingest, push).
    pub http_max_connections: usize,
    /// HTTP connections from one address (IPv6: one /64). Viewers behind one NAT and relaying
    /// nodes count here: keep it generous.
    pub http_max_connections_per_ip: usize,
    /// A new HTTP connection must send a complete first request head within this.
    pub http_header_timeout_ms: u64,
    /// After a response, the next request head must be complete within this (≥ the header
    /// timeout). Never applies while a request or response streams.
    pub http_idle_timeout_ms: u64,
    /// Largest HTTP request head (request line and headers), bytes.
    pub http_max_header_bytes: usize,
    /// Native-protocol connections open at once (TCP or TLS).
    pub native_max_connections: usize,
    /// Native connections from one address that have not been welcomed (HELLO with a valid
    /// token). The TLS handshake (10 s) and the HELLO (10 s) have their own deadlines.
    pub native_max_connections_per_ip: usize,
    /// RTMP connections open at once.
    pub rtmp_max_connections: usize,
    /// RTMP connections from one address whose publish has not been accepted.
    pub rtmp_max_connections_per_ip: usize,
    /// An RTMP connection must complete its handshake, `connect`, `createStream` and `publish`
    /// within this, or it is closed.
    pub rtmp_connect_timeout_ms: u64,
}

impl Default for EntryConfig {
    fn default() -> Self {
        Self {
            id: String::new(),
            pop: String::new(),
            location: String::new(),
            native_listen: "127.0.0.1:7001".parse().expect("literal"),
            http_listen: "127.0.0.1:8001".parse().expect("literal"),
            native_tls: None,
            rtmp_listen: None,
            advertise: None,
            director: None,
            director_ca_file: None,
            credential: String::new(),
            token_public_key: String::new(),
            data_dir: PathBuf::from("firstmile-data"),
            fsync: FsyncPolicy::Interval(Duration::from_millis(20)),
            retention_secs: 24 * 3600,
            retention_bytes: 0,
            disk_budget_bytes: 0,
            min_free_bytes: 256 << 20,
            storage_check_ms: 2000,
            retention_interval_ms: 30_000,
            max_relays: 1000,
            relay_starts_per_ip_per_min: 120,
            max_backfills: 16,
            capacity_streams: 100,
            capacity_mbps: 1000.0,
            ack_interval_ms: 20,
            tail_bytes: 64 << 20,
            max_viewer_lag_bytes: 32 << 20,
            slow_viewer: SlowViewer::Skip,
            relay_give_up_ms: 5000,
            drain_secs: 30,
            threads: 0,
            sample_secs: 5,
            report_cpu: true,
            viewer_wait_ms: 10_000,
            release_after_s: 60,
            hls_segment_ms: 2000,
            hls_part_ms: 500,
            hls_window: 8,
            hls_idle_s: 30,
            http_max_connections: 8192,
            http_max_connections_per_ip: 512,
            http_header_timeout_ms: 10_000,
            http_idle_timeout_ms: 60_000,
            http_max_header_bytes: 32 * 1024,
            native_max_connections: 1024,
            native_max_connections_per_ip: 32,
            rtmp_max_connections: 1024,
            rtmp_max_connections_per_ip: 32,
            rtmp_connect_timeout_ms: 10_000,
        }
    }
}

/// PEM certificate chain and private key of the native listener's TLS.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NativeTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Parse `always`, `never` or `interval:MS`.
pub fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    match s.trim() {
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        other => other
            .strip_prefix("interval:")
            .and_then(|ms| ms.trim_end_matches("ms").parse::<u64>().ok())
            .filter(|ms| *ms > 0 && *ms <= 60_000)
            .map(|ms| FsyncPolicy::Interval(Duration::from_millis(ms)))
            .ok_or_else(|| {
                format!("fsync policy {other:?}: accepted values are always, never, interval:MS (1..=60000)")
            }),
    }
}

pub fn fsync_string(p: &FsyncPolicy) -> String {
    match p {
        FsyncPolicy::Always => "always".into(),
        FsyncPolicy::Never => "never".into(),
        FsyncPolicy::Interval(d) => format!("interval:{}", d.as_millis()),
    }
}

mod fsync_serde {
    use chunklog::FsyncPolicy;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(p: &FsyncPolicy, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::fsync_string(p))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FsyncPolicy, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_fsync(&s).map_err(serde::de::Error::custom)
    }
}

impl EntryConfig {
    pub fn sample_interval(&self) -> Duration {
        Duration::from_secs(self.sample_secs.max(1))
    }

    /// Merge defaults < `file` (TOML text) < `env` (`FIRSTMILE_ENTRY_<KEY>`) < `overrides`
    /// (`key=value`), then validate.
    pub fn load(
        file: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        let c: Self = plumbing::layered(
            file,
            env,
            "FIRSTMILE_ENTRY_",
            &["FIRSTMILE_ENTRY_CONFIG"],
            overrides,
        )?;
        c.validate()?;
        Ok(c)
    }

    /// Checks that need no I/O.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |k: &str, m: &str| Err(ConfigError::key(k, m));
        if self.id.is_empty() || self.id.len() > 64 {
            return bad("id", "required, 1 to 64 characters");
        }
        if self.pop.is_empty() {
            return bad(
                "pop",
                "required: the failure domain (POP) this server is in",
            );
        }
        if self.location.is_empty() {
            return bad(
                "location",
                "required: a place such as \"Frankfurt\" or \"50.11,8.68\"",
            );
        }
        if self.token_public_key.is_empty() {
            return bad(
                "token_public_key",
                "required: the director's token public key, PEM inline or a path to it",
            );
        }
        if self.director.is_some() && self.credential.is_empty() {
            return bad(
                "credential",
                "required when a director is configured: this server's own credential, \
                 <id>:<64 hex digits> (`firstmile keygen --entry ID --entry-key KEY` on the \
                 director's side prints it)",
            );
        }
        if self.director.is_some() && !self.credential.starts_with(&format!("{}:", self.id)) {
            return bad(
                "credential",
                &format!(
                    "is not entry server {}'s credential (it starts with the server's id)",
                    self.id
                ),
            );
        }
        if let Some(d) = &self.director
            && !(d.starts_with("http://") || d.starts_with("https://"))
        {
            return bad(
                "director",
                "expected the director's base URL, http://host:port or https://host:port",
            );
        }
        if let Some(ca) = &self.director_ca_file
            && let Err(e) = plumbing::tls::client_config(Some(ca))
        {
            return bad("director_ca_file", &e.to_string());
        }
        if self.threads > 1024 {
            return bad("threads", "at most 1024 (0 = one per CPU core)");
        }
        if self.capacity_streams == 0 {
            return bad("capacity_streams", "must be at least 1");
        }
        if self.capacity_mbps.is_nan() || self.capacity_mbps <= 0.0 {
            return bad("capacity_mbps", "must be positive");
        }
        if self.ack_interval_ms == 0 || self.ack_interval_ms > 10_000 {
            return bad("ack_interval_ms", "1 to 10000");
        }
        if self.tail_bytes < 1 << 16 {
            return bad("tail_bytes", "at least 65536");
        }
        if self.viewer_wait_ms > 300_000 {
            return bad("viewer_wait_ms", "at most 300000 (5 minutes)");
        }
        if self.release_after_s == 0 || self.release_after_s > 86_400 {
            return bad("release_after_s", "1 to 86400");
        }
        if !(500..=10_000).contains(&self.hls_segment_ms) {
            return bad("hls_segment_ms", "500 to 10000");
        }
        if self.hls_part_ms < 100 || self.hls_part_ms > self.hls_segment_ms {
            return bad("hls_part_ms", "100 to hls_segment_ms");
        }
        if !(3..=100).contains(&self.hls_window)
            || (self.hls_window as u64) * u64::from(self.hls_segment_ms)
                < 3_000 * (2 * u64::from(self.hls_segment_ms)).div_ceil(1000)
        {
            return bad(
                "hls_window",
                "3 to 100, and hls_window × hls_segment_ms must cover three target durations (6 × hls_segment_ms)",
            );
        }
        if !(1..=3600).contains(&self.hls_idle_s) {
            return bad("hls_idle_s", "1 to 3600");
        }
        if !(100..=60_000).contains(&self.storage_check_ms) {
            return bad("storage_check_ms", "100 to 60000");
        }
        if !(100..=3_600_000).contains(&self.retention_interval_ms) {
            return bad("retention_interval_ms", "100 to 3600000");
        }
        if self.disk_budget_bytes != 0 && self.disk_budget_bytes < 16 << 20 {
            return bad(
                "disk_budget_bytes",
                "0 (no budget) or at least 16777216 (16 MiB)",
            );
        }
        if !(1..=1_000_000).contains(&self.max_relays) {
            return bad("max_relays", "1 to 1000000");
        }
        if !(1..=1_000_000).contains(&self.relay_starts_per_ip_per_min) {
            return bad("relay_starts_per_ip_per_min", "1 to 1000000");
        }
        if !(1..=10_000).contains(&self.max_backfills) {
            return bad("max_backfills", "1 to 10000");
        }
        for (max, per_ip, key) in [
            (
                self.http_max_connections,
                self.http_max_connections_per_ip,
                "http",
            ),
            (
                self.native_max_connections,
                self.native_max_connections_per_ip,
                "native",
            ),
            (
                self.rtmp_max_connections,
                self.rtmp_max_connections_per_ip,
                "rtmp",
            ),
        ] {
            if !(1..=1_000_000).contains(&max) {
                return bad(&format!("{key}_max_connections"), "1 to 1000000");
            }
            if per_ip == 0 || per_ip > max {
                return bad(
                    &format!("{key}_max_connections_per_ip"),
                    &format!("1 to {key}_max_connections"),
                );
            }
        }
        if !(100..=300_000).contains(&self.http_header_timeout_ms) {
            return bad("http_header_timeout_ms", "100 to 300000");
        }
        if self.http_idle_timeout_ms < self.http_header_timeout_ms
            || self.http_idle_timeout_ms > 3_600_000
        {
            return bad(
                "http_idle_timeout_ms",
                "at least http_header_timeout_ms and at most 3600000",
            );
        }
        if !(8192..=1024 * 1024).contains(&self.http_max_header_bytes) {
            return bad("http_max_header_bytes", "8192 to 1048576");
        }
        if !(100..=300_000).contains(&self.rtmp_connect_timeout_ms) {
            return bad("rtmp_connect_timeout_ms", "100 to 300000");
        }
        Ok(())
    }
}

/// Counters exported at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub sessions: AtomicU64,
    pub chunks_in: AtomicU64,
    pub duplicates: AtomicU64,
    pub bad_frames: AtomicU64,
    pub auth_failures: AtomicU64,
    pub viewers: AtomicU64,
    pub viewer_bytes: AtomicU64,
    pub viewers_skipped: AtomicU64,
    pub viewers_cut: AtomicU64,
    pub relay_upstream_failures: AtomicU64,
    /// Viewers refused a relay or backfill by `max_relays` or the per-address limit.
    pub relays_refused: AtomicU64,
    /// Bytes of the last heartbeat's body.
    pub heartbeat_bytes: AtomicU64,
    /// Storage checks run (passed or not).
    pub storage_checks: AtomicU64,
    /// Free bytes of the log filesystem at the last storage check.
    pub disk_free_bytes: AtomicU64,
    /// Bytes of every log on disk at the last retention pass.
    pub log_bytes: AtomicU64,
    /// Broadcast logs on disk at the last retention pass.
    pub broadcasts_on_disk: AtomicU64,
    /// Broadcasts retention deleted, and their bytes.
    pub retention_deleted: AtomicU64,
    pub retention_deleted_bytes: AtomicU64,
    /// HLS: tags the packagers could not use (malformed bodies), and damage the MPEG-TS
    /// demuxers met (lost sync, bad packets, continuity gaps, dropped PES, bad PSI sections).
    pub hls_dropped_tags: AtomicU64,
    pub hls_ts_errors: AtomicU64,
    /// Counters of the listeners, kept by their gates.
    pub listeners: ListenerStats,
}

/// Counters of each listener (`plumbing::listen`).
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub http: std::sync::Arc<plumbing::listen::ListenStats>,
    pub native: std::sync::Arc<plumbing::listen::ListenStats>,
    pub rtmp: std::sync::Arc<plumbing::listen::ListenStats>,
}

impl ListenerStats {
    /// Prometheus text lines (`firstmile_entry_connections{listener}` etc.).
    pub fn prometheus_text(&self) -> String {
        plumbing::listen::prometheus_text(
            "firstmile_entry",
            &[
                ("http", self.http.snapshot()),
                ("native", self.native.snapshot()),
                ("rtmp", self.rtmp.snapshot()),
            ],
        )
    }
}

/// A path sample of an ingest session, to be reported to the director.
#[derive(Clone, Debug)]
pub struct SessionSample {
    pub stream: String,
    pub role: proto::Role,
    pub client_ip: IpAddr,
    pub info: TcpInfo,
    /// Bytes received over `secs` seconds (0 when unknown).
    pub bytes: u64,
    pub secs: f64,
}

/// Everything the sessions, handlers and background tasks of one entry server share.
#[derive(Debug)]
pub struct Node {
    pub cfg: EntryConfig,
    pub hub: Hub,
    pub verifier: token::VerifyingKey,
    pub log_config: LogConfig,
    pub limits: proto::Limits,
    pub draining: AtomicBool,
    pub metrics: Metrics,
    pub samples: Mutex<Vec<SessionSample>>,
    /// The advertised URLs of this node (filled once listeners are bound).
    pub urls: Mutex<Urls>,
    pub http: reqwest::Client,
    /// Test hook: a fixed Unix time for token checks.
    pub clock_override: Option<u64>,
    /// Serialises opening stream logs (one log handle per stream).
    pub opening: tokio::sync::Mutex<()>,
    /// Why the log storage cannot take new broadcasts (disk full, failing writes), if so.
    pub storage: Mutex<Option<String>>,
    /// Per-client rate limit of `GET /v1/probe`.
    pub probe_limiter: ClientLimiter,
    /// Relay pulls and backfills started per client address.
    pub relay_limiter: ClientLimiter,
    /// Which window of live broadcasts the next heartbeat reports (see `link::MAX_LIVE_REPORTS`).
    pub report_turn: std::sync::atomic::AtomicUsize,
    /// Backfills running now (at most `max_backfills`).
    pub backfills: tokio::sync::Semaphore,
    /// The director's recent answers about streams: (stream, broadcast asked) → (when, answer).
    pub info_cache: Mutex<InfoCache>,
    /// The peer token the director gave this server (for other entry servers), and its expiry.
    pub peer_token: Mutex<Option<(String, u64)>>,
    /// Broadcasts the director said to end (superseded, revoked) → when told ([`crate::hub::mono_ms`]).
    pub superseded: Mutex<std::collections::HashMap<crate::hub::Key, u64>>,
}

/// Where this node is reachable.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Urls {
    pub native: String,
    pub websocket: String,
    pub http: String,
    /// `rtmp://host:port/live`, when RTMP ingest is on.
    pub rtmp: Option<String>,
}

impl Node {
    pub fn now_unix(&self) -> u64 {
        self.clock_override.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        })
    }

    /// Keep a sample for the next heartbeat (bounded: the oldest are dropped).
    pub fn record_sample(&self, s: SessionSample) {
        let mut v = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() >= 1024 {
            v.remove(0);
        }
        v.push(s);
    }

    pub fn take_samples(&self) -> Vec<SessionSample> {
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn urls(&self) -> Urls {
        self.urls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What to present to another entry server (`Authorization: Bearer`): the peer token the
    /// director gave this server (empty without a director).
    pub fn peer_bearer(&self) -> String {
        self.peer_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(t, _)| t.clone())
            .unwrap_or_default()
    }

    /// Whether a request's bearer is this server's own credential (its operator) or a peer
    /// token the director signed (another entry server of the fleet).
    pub fn trusts_bearer(&self, bearer: &str) -> bool {
        let own = self.cfg.credential.as_bytes();
        let is_own = !own.is_empty()
            && bearer.len() == own.len()
            && bearer.bytes().zip(own).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
        is_own || self.verifier.verify_peer(bearer, self.now_unix()).is_ok()
    }

    /// Why new broadcasts cannot be stored now, if so.
    pub fn storage_problem(&self) -> Option<String> {
        self.storage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A log error that means the storage is full or failing (not one stream's problem) makes
    /// the server refuse new broadcasts until the storage check passes again.
    pub fn note_storage_error(&self, e: &chunklog::LogError) {
        if let chunklog::LogError::Io { source, .. } = e {
            let full = matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            );
            let failing = matches!(source.raw_os_error(), Some(libc::EIO) | Some(libc::EROFS));
            if full || failing {
                let why = if full {
                    format!("disk full: {source}")
                } else {
                    format!("disk failing: {source}")
                };
                tracing::error!(error = %e, "log storage problem: refusing new broadcasts");
                *self.storage.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
            }
        }
    }

    /// Whether the director said to end this broadcast.
    pub fn is_superseded(&self, stream: &str, b: &proto::BroadcastId) -> bool {
        self.superseded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&(stream.to_string(), b.clone()))
    }

    /// Remember that the director said to end this broadcast (bounded: the oldest go first).
    pub fn supersede(&self, stream: &str, b: &proto::BroadcastId) {
        let mut g = self.superseded.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() >= 10_000
            && let Some(oldest) = g.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
        {
            g.remove(&oldest);
        }
        g.insert((stream.to_string(), b.clone()), crate::hub::mono_ms());
    }
}

/// The director's recent answers: (stream, broadcast asked) → (when, [`crate::hub::mono_ms`], answer).
pub type InfoCache =
    std::collections::HashMap<(String, Option<String>), (u64, proto::api::StreamInfo)>;

/// A per-address token bucket (IPv4 by address, IPv6 by /64): `per_second` a second, bursts of
/// `burst`. Bounded: at most [`ClientLimiter::MAX_CLIENTS`] addresses are tracked (beyond, the
/// table starts over; an attacker cycling addresses gets at most a fresh burst each).
#[derive(Debug)]
pub struct ClientLimiter {
    per_second: f64,
    burst: f64,
    clients: Mutex<std::collections::HashMap<IpAddr, (f64, u64)>>,
}

impl ClientLimiter {
    pub const MAX_CLIENTS: usize = 100_000;

    pub fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst: burst.max(1.0),
            clients: Default::default(),
        }
    }

    /// Probes: 20 a second, bursts of 40.
    pub fn probes() -> Self {
        Self::new(20.0, 40.0)
    }

    /// Whether `ip` may go ahead now; if not, the seconds until it may.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let ip = plumbing::listen::ip_key(ip);
        let now = crate::hub::mono_ms();
        let mut g = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() >= Self::MAX_CLIENTS && !g.contains_key(&ip) {
            g.clear();
        }
        let (tokens, at) = g.entry(ip).or_insert((self.burst, now));
        let elapsed = now.saturating_sub(*at) as f64 / 1000.0;
        *tokens = (*tokens + elapsed * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.per_second).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_loads_and_layers_apply_in_order() {
        let text = include_str!("../../../examples/entry.toml");
        let c = EntryConfig::load(Some(text), Vec::new(), &[]).unwrap();
        assert_eq!((c.id.as_str(), c.pop.as_str()), ("fra-1", "fra"));
        assert_eq!(c.fsync, FsyncPolicy::Interval(Duration::from_millis(20)));
        let env = vec![
            ("FIRSTMILE_ENTRY_POP".to_string(), "env-pop".to_string()),
            ("FIRSTMILE_ENTRY_FSYNC".to_string(), "always".to_string()),
        ];
        let c = EntryConfig::load(Some(text), env.clone(), &[]).unwrap();
        assert_eq!((c.pop.as_str(), c.fsync), ("env-pop", FsyncPolicy::Always));
        let c = EntryConfig::load(Some(text), env, &["pop=\"flag-pop\"".into()]).unwrap();
        assert_eq!(c.pop, "flag-pop");
    }

    #[test]
    fn probes_are_rate_limited_per_address() {
        let l = ClientLimiter::probes();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let allowed = (0..100).filter(|_| l.check(a).is_ok()).count();
        assert!((40..=42).contains(&allowed), "{allowed}");
        assert!(l.check(b).is_ok(), "another address is not affected");
        // IPv6 is counted by /64: another address in the prefix shares the bucket.
        let l = ClientLimiter::new(1.0 / 60.0, 2.0);
        let c: IpAddr = "2001:db8::1".parse().unwrap();
        let d: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(l.check(c).is_ok() && l.check(d).is_ok());
        let wait = l.check(c).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
    }

    #[test]
    fn bad_values_name_the_key_and_what_is_accepted() {
        let e = EntryConfig::load(None, Vec::new(), &[]).unwrap_err();
        assert!(e.to_string().contains("id"), "{e}");
        let text = include_str!("../../../examples/entry.toml");
        let e =
            EntryConfig::load(Some(text), Vec::new(), &["fsync=\"sometimes\"".into()]).unwrap_err();
        assert!(e.to_string().contains("always, never, interval:MS"), "{e}");
        let e = EntryConfig::load(Some(text), Vec::new(), &["slow_viewer=\"wait\"".into()])
            .unwrap_err();
        assert!(e.to_string().contains("slow_viewer"), "{e}");
        let e = EntryConfig::load(Some(text), Vec::new(), &["colour=\"red\"".into()]).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
