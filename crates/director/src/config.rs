//! The director's configuration: typed, layered, validated before anything binds.
//!
//! **Layers.** Built-in defaults < a TOML file < environment variables < command-line overrides.
//! [`DirectorConfig::load`] merges them on a TOML tree and then deserializes once, so every
//! layer is checked by the same rules (`deny_unknown_fields`, types, ranges):
//! - the file is the `[director]`-less TOML of `examples/director.toml`;
//! - an environment variable `FIRSTMILE_DIRECTOR_<KEY>` sets `<key>` (lowercased); nested keys
//!   join with a double underscore: `FIRSTMILE_DIRECTOR_HEARTBEAT__INTERVAL_MS=500`. Values are
//!   TOML literals when they parse as one (`500`, `true`, `["10.0.0.0/8"]`, `"12345"`), else
//!   plain strings (`0.0.0.0:7000`, `Frankfurt`). `FIRSTMILE_DIRECTOR_CONFIG` names the file and is
//!   not a key;
//! - overrides are `key.path=value` pairs with the same value rules (the binary's flags).
//!
//! The environment is an argument ([`DirectorConfig::load`] never reads it), so the layering is
//! tested without touching the process environment.
//!
//! **What not.** This module reads no files except in [`crate::Director::from_config`] (the key,
//! the MMDB images, TLS material), and binds nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "FIRSTMILE_DIRECTOR_";
/// The environment variable naming the config file (not a key).
pub const ENV_CONFIG_FILE: &str = "FIRSTMILE_DIRECTOR_CONFIG";

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Compact,
    /// One JSON object per line.
    Json,
}

/// Everything the director needs. See `examples/director.toml` for every key, commented.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DirectorConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Where picks are scored from when neither a typed place nor the IP location is known:
    /// a place name the gazetteer resolves, or "lat,lon".
    pub default_place: String,
    /// Bitrate assumed when a request gives none (kbit/s).
    pub default_bitrate_kbps: u32,
    /// Largest bitrate a request may ask for (kbit/s).
    pub max_bitrate_kbps: u32,
    pub log_format: LogFormat,
    pub auth: AuthConfig,
    pub tokens: TokensConfig,
    pub geoip: GeoIpConfig,
    /// Network → place name: addresses in these networks are located there (office, lab and
    /// private ranges). Longest prefix wins.
    pub sites: BTreeMap<IpNet, String>,
    pub heartbeat: HeartbeatConfig,
    pub http: HttpConfig,
    pub tls: Option<TlsConfig>,
    /// Estimation and scoring weights (select::Params); unset keys keep the documented model.
    pub scoring: select::Params,
    pub learning: LearningConfig,
    pub limits: LimitsConfig,
    /// Where the fleet view lives: in this process, or shared with other directors on etcd.
    pub registry: RegistryConfig,
    /// Who may publish a stream, and how broadcasts begin and end.
    pub publish: PublishConfig,
}

impl Default for DirectorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7000)),
            default_place: "Frankfurt, DE".into(),
            default_bitrate_kbps: 2500,
            max_bitrate_kbps: 200_000,
            log_format: LogFormat::Compact,
            auth: AuthConfig::default(),
            tokens: TokensConfig::default(),
            geoip: GeoIpConfig::default(),
            sites: BTreeMap::new(),
            heartbeat: HeartbeatConfig::default(),
            http: HttpConfig::default(),
            tls: None,
            scoring: select::Params::default(),
            learning: LearningConfig::default(),
            limits: LimitsConfig::default(),
            registry: RegistryConfig::default(),
            publish: PublishConfig::default(),
        }
    }
}

/// Secrets. The director holds the entry key; each entry server holds only its own credential,
/// derived from it (`firstmile keygen --entry ID`).
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The key entry servers' credentials are derived from: an entry server presents
    /// `Authorization: Bearer <id>:<HMAC-SHA256(entry_key, id)>`, which proves that id and no
    /// other. At least 32 characters; never given to an entry server.
    pub entry_key: String,
    /// Operators present this on `/v1/admin/...`.
    pub admin_token: String,
}

/// Secrets shipped in `examples/` (and their obvious shape): a director refuses to serve with
/// them ([`DirectorConfig::check_secrets`]); `firstmile up` makes random ones.
const EXAMPLE_SECRETS: &[&str] = &[
    "change-me-entry-key-0123456789abcdef",
    "change-me-admin-token",
    "change-me",
];

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// PKCS#8 PEM Ed25519 private key file (`firstmile keygen`).
    pub signing_key_file: Option<PathBuf>,
    /// The same PEM inline (for the environment); wins over the file.
    pub signing_key_pem: Option<String>,
    /// How long an assignment and its tokens are valid, in seconds.
    pub ttl_s: u64,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            signing_key_file: None,
            signing_key_pem: None,
            ttl_s: 3600,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct GeoIpConfig {
    /// City MMDB (GeoIP2/GeoLite2/DB-IP City or ip-location-db). None: IP locations unknown.
    pub city_db: Option<PathBuf>,
    /// Optional GeoLite2-ASN MMDB.
    pub asn_db: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    /// How often entry servers heartbeat (told to them at registration).
    pub interval_ms: u64,
    /// A server that misses this many intervals is unhealthy (excluded) until it heartbeats.
    pub missed_allowed: u32,
    /// A server silent for this many intervals is forgotten; its heartbeats then get 404 and it
    /// registers again.
    pub forget_after_missed: u32,
    /// Load-only changes (heartbeat numbers) reach the selection snapshot at most this often.
    pub load_refresh_ms: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval_ms: 1000,
            missed_allowed: 3,
            forget_after_missed: 300,
            load_refresh_ms: 500,
        }
    }
}

/// The HTTP(S) listener and API limits. The connection caps and timeouts are
/// `plumbing::listen`'s (README: "Limits and timeouts of the listeners").
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Peers whose X-Forwarded-For / Forwarded headers are believed (load balancers). Their
    /// connections are not counted per address either.
    pub trusted_proxies: Vec<IpNet>,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// Requests taking longer are answered 408.
    pub request_timeout_ms: u64,
    pub rate_limit: RateLimitConfig,
    /// Connections open at once. When full, a newcomer replaces the connection that has waited
    /// longest without sending a complete request; when none has, it is refused (HTTP: 503 with
    /// Retry-After; HTTPS: closed).
    pub max_connections: usize,
    /// Connections from one address (IPv6: one /64) that have not sent an entry-server or admin
    /// credential. Over it: refused the same way.
    pub max_connections_per_ip: usize,
    /// A new connection must finish its TLS handshake and send a complete first request head
    /// within this, or it is closed.
    pub header_timeout_ms: u64,
    /// After a response, the next request head must be complete within this, or the kept-alive
    /// connection is closed. At least `header_timeout_ms`.
    pub idle_timeout_ms: u64,
    /// Largest request head (request line and headers), bytes.
    pub max_header_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            body_limit_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            rate_limit: RateLimitConfig::default(),
            max_connections: 4096,
            max_connections_per_ip: 128,
            header_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            max_header_bytes: 32 * 1024,
        }
    }
}

impl HttpConfig {
    /// Check the listener's caps and timeouts (no I/O).
    fn validate_listener(&self) -> Result<(), ConfigError> {
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(key_err(
                "http.max_connections",
                "must be between 1 and 1000000",
            ));
        }
        if self.max_connections_per_ip == 0 || self.max_connections_per_ip > self.max_connections {
            return Err(key_err(
                "http.max_connections_per_ip",
                "must be between 1 and http.max_connections",
            ));
        }
        if !(100..=300_000).contains(&self.header_timeout_ms) {
            return Err(key_err(
                "http.header_timeout_ms",
                "must be between 100 and 300000",
            ));
        }
        if self.idle_timeout_ms < self.header_timeout_ms || self.idle_timeout_ms > 3_600_000 {
            return Err(key_err(
                "http.idle_timeout_ms",
                "must be at least http.header_timeout_ms and at most 3600000",
            ));
        }
        if !(8192..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(key_err(
                "http.max_header_bytes",
                "must be between 8192 and 1048576",
            ));
        }
        Ok(())
    }
}

/// Per-client-IP token bucket on the assignment and ranking endpoints (IPv6 keyed by /64).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained requests per second per client.
    pub per_second: f64,
    /// Requests a client may make at once after being idle.
    pub burst: u32,
    /// Clients tracked at once; beyond that, idle ones are forgotten first.
    pub max_clients: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 5.0,
            burst: 20,
            max_clients: 100_000,
        }
    }
}

/// Serve HTTPS (rustls, ring provider) instead of HTTP.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearningConfig {
    /// Measurements from heartbeats reach the selection at most this often.
    pub publish_ms: u64,
    /// Measurements taken from one heartbeat at most.
    pub max_measurements_per_heartbeat: usize,
}

impl Default for LearningConfig {
    fn default() -> Self {
        Self {
            publish_ms: 5000,
            max_measurements_per_heartbeat: 1000,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Entry servers registered at most.
    pub max_servers: usize,
    /// Assignments remembered for GET /v1/streams/{id}; the oldest expire first.
    pub max_tracked_streams: usize,
    /// Stream reports per heartbeat at most.
    pub max_streams_per_heartbeat: usize,
    /// Entries listed by GET /v1/entry-servers at most.
    pub max_ranked: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_servers: 100_000,
            max_tracked_streams: 1_000_000,
            max_streams_per_heartbeat: 10_000,
            max_ranked: 100,
        }
    }
}

/// Which registry backend holds the fleet view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RegistryBackend {
    /// In this process: one director (the default).
    #[default]
    Memory,
    /// Shared on etcd (v3 API) by several directors: see [`crate::etcd`].
    Etcd,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    pub backend: RegistryBackend,
    /// Used when `backend = "etcd"`.
    pub etcd: EtcdConfig,
}

/// How to reach etcd and how much to write to it (see [`crate::etcd`] for the key layout).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members (`http://` or `https://`), all of one cluster. The
    /// director talks to one at a time, the first listed first, and moves to the next when it
    /// fails: list them in different orders on different directors to spread the load.
    pub endpoints: Vec<String>,
    /// Every key of this fleet starts with `<prefix>/`: several fleets can share one etcd.
    pub prefix: String,
    /// etcd user (etcd's auth), with `password`.
    pub username: Option<String>,
    pub password: Option<String>,
    /// PEM CA bundle that signed the etcd members' certificates (`https://` endpoints).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, when etcd asks for client certificates.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Connecting to an endpoint gives up after this long.
    pub connect_timeout_ms: u64,
    /// Each etcd request gives up after this long (then the director is degraded and retries).
    pub request_timeout_ms: u64,
    /// Longest wait between reconnection attempts (the backoff doubles from 100 ms up to this).
    pub retry_max_ms: u64,
    /// A server's load (and its streams' sequence numbers) is written at most this often;
    /// registration, state changes and streams starting, stopping or going live are written at
    /// once. With 1,000 servers and 5000 ms: at most 200 load writes per second.
    pub load_write_interval_ms: u64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/firstmile/default".into(),
            username: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            connect_timeout_ms: 2000,
            request_timeout_ms: 2000,
            retry_max_ms: 5000,
            load_write_interval_ms: 5000,
        }
    }
}

impl EtcdConfig {
    /// Check the etcd settings (no I/O): every error names its key.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(key_err(
                "registry.etcd.endpoints",
                "is required with registry.backend = \"etcd\": the client URLs of the etcd members",
            ));
        }
        for e in &self.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://"))
                || e.chars().any(char::is_whitespace)
            {
                return Err(key_err(
                    "registry.etcd.endpoints",
                    format!(
                        "{e:?} is not an etcd client URL (http://host:port or https://host:port)"
                    ),
                ));
            }
        }
        let p = &self.prefix;
        if !p.starts_with('/')
            || p.ends_with('/')
            || p.len() > 200
            || p.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(key_err(
                "registry.etcd.prefix",
                "must start with '/', not end with '/', and have no spaces (e.g. /firstmile/prod)",
            ));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(key_err(
                "registry.etcd.username",
                "username and password go together",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(key_err(
                "registry.etcd.cert_file",
                "cert_file and key_file go together",
            ));
        }
        let tls = self.ca_file.is_some() || self.cert_file.is_some();
        if tls && self.endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(key_err(
                "registry.etcd.endpoints",
                "use https:// endpoints with ca_file / cert_file",
            ));
        }
        if self.connect_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return Err(key_err(
                "registry.etcd.request_timeout_ms",
                "connect_timeout_ms and request_timeout_ms must be positive",
            ));
        }
        if self.retry_max_ms < 100 {
            return Err(key_err(
                "registry.etcd.retry_max_ms",
                "must be at least 100",
            ));
        }
        if self.load_write_interval_ms < 100 {
            return Err(key_err(
                "registry.etcd.load_write_interval_ms",
                "must be at least 100",
            ));
        }
        Ok(())
    }
}

/// Who decides that someone may publish a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Streams and their keys are provisioned by the operator (`[[publish.streams]]` and the
    /// admin API); an assignment or a publish needs the stream's key.
    #[default]
    Keys,
    /// The platform's own backend decides: the director POSTs each publish to
    /// `publish.webhook.url` and a 2xx allows it.
    Webhook,
    /// For demos and `firstmile up`: the first publisher of a new stream id gets (or chooses) its
    /// key and owns the id; later assignments for it need that key.
    Open,
}

/// What the director does when the publish hook cannot be asked (timeout, refused, 5xx...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnHookError {
    /// Refuse the publish (503 with Retry-After): nothing goes live while the platform is down.
    #[default]
    Deny,
    /// Allow it (and log a warning): streams keep going live while the platform is down.
    Allow,
}

/// `[publish.webhook]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// The platform's publish hook (http:// or https://).
    pub url: Option<String>,
    /// Sent as `Authorization: Bearer <secret>` so the platform knows it is the director.
    pub secret: Option<String>,
    /// How long to wait for its answer.
    pub timeout_ms: u64,
    /// What to do when it cannot be asked.
    pub on_error: OnHookError,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: None,
            secret: None,
            timeout_ms: 2000,
            on_error: OnHookError::Deny,
        }
    }
}

/// A stream provisioned in the config file (`[[publish.streams]]`, `keys` mode).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisionedStream {
    /// The stream id.
    pub stream: proto::StreamId,
    /// Its key in clear (prefer `key_sha256`, so the file holds no secret).
    #[serde(default)]
    pub key: Option<proto::StreamKey>,
    /// SHA-256 of its key, 64 hex digits (`printf %s KEY | sha256sum`).
    #[serde(default)]
    pub key_sha256: Option<String>,
    /// Viewers need a playback token.
    #[serde(default)]
    pub private: bool,
}

/// `[publish]`: stream ownership and broadcasts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    pub mode: PublishMode,
    pub webhook: WebhookConfig,
    /// Streams provisioned by this file (loaded at start; the admin API adds more).
    pub streams: Vec<ProvisionedStream>,
    /// A broadcast that went live ends when no entry server has reported its publisher for this
    /// long; the next publish then starts a new broadcast.
    pub publisher_gone_s: u64,
    /// Ended broadcasts stay listed (and their ingest servers known, for catch-up) this long.
    pub history_s: u64,
    /// A stream claimed in `open` mode is forgotten after this long without a broadcast.
    pub claim_ttl_s: u64,
    /// The longest lifetime of a playback token.
    pub max_playback_ttl_s: u64,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self {
            mode: PublishMode::Keys,
            webhook: WebhookConfig::default(),
            streams: Vec::new(),
            publisher_gone_s: 30,
            history_s: 7 * 86_400,
            claim_ttl_s: 30 * 86_400,
            max_playback_ttl_s: 86_400,
        }
    }
}

impl PublishConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == PublishMode::Webhook {
            let Some(url) = &self.webhook.url else {
                return Err(key_err(
                    "publish.webhook.url",
                    "is required with publish.mode = \"webhook\": the platform's publish hook",
                ));
            };
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || url.chars().any(char::is_whitespace)
            {
                return Err(key_err(
                    "publish.webhook.url",
                    "expected an http:// or https:// URL",
                ));
            }
        }
        if !(50..=60_000).contains(&self.webhook.timeout_ms) {
            return Err(key_err(
                "publish.webhook.timeout_ms",
                "must be between 50 and 60000",
            ));
        }
        if !(1..=86_400).contains(&self.publisher_gone_s) {
            return Err(key_err(
                "publish.publisher_gone_s",
                "must be between 1 and 86400",
            ));
        }
        if self.claim_ttl_s < 60 || self.history_s < 60 {
            return Err(key_err(
                "publish.claim_ttl_s / publish.history_s",
                "must be at least 60 seconds",
            ));
        }
        if !(10..=30 * 86_400).contains(&self.max_playback_ttl_s) {
            return Err(key_err(
                "publish.max_playback_ttl_s",
                "must be between 10 and 2592000",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.streams.iter().enumerate() {
            let at = format!("publish.streams[{i}]");
            if !seen.insert(s.stream.clone()) {
                return Err(key_err(&at, format!("stream {} is listed twice", s.stream)));
            }
            match (&s.key, &s.key_sha256) {
                (Some(_), None) => {}
                (None, Some(h)) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {}
                (None, Some(_)) => {
                    return Err(key_err(
                        &format!("{at}.key_sha256"),
                        "expected 64 hex digits (the SHA-256 of the key)",
                    ));
                }
                _ => {
                    return Err(key_err(
                        &at,
                        "give exactly one of key and key_sha256 (make a key with `firstmile keygen --stream-key`)",
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A configuration that cannot be used (shared with the entry server's configuration).
pub use plumbing::ConfigError;

fn key_err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::key(key, message)
}

impl DirectorConfig {
    /// Merge the layers and validate. `file` is the TOML text of the config file, `env` the
    /// process environment (only `FIRSTMILE_DIRECTOR_*` is looked at), `overrides` the
    /// `key.path=value` pairs from flags.
    pub fn load(
        file: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        let config: DirectorConfig =
            plumbing::layered(file, env, ENV_PREFIX, &[ENV_CONFIG_FILE], overrides)?;
        config.validate()?;
        Ok(config)
    }

    /// Check ranges and cross-field rules (no I/O). [`DirectorConfig::load`] calls it; call it
    /// yourself on a config built in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.auth.entry_key.trim().chars().count() < 32 {
            return Err(key_err(
                "auth.entry_key",
                "is required, at least 32 characters: the key each entry server's own credential \
                 is derived from (`firstmile keygen --entry ID --entry-key KEY` prints one); \
                 it replaces the shared auth.cluster_token of earlier versions",
            ));
        }
        if self.auth.admin_token.trim().is_empty() {
            return Err(key_err(
                "auth.admin_token",
                "is required: the secret operators present on /v1/admin",
            ));
        }
        self.publish.validate()?;
        if self.auth.admin_token == self.auth.entry_key {
            return Err(key_err(
                "auth.admin_token",
                "must differ from auth.entry_key",
            ));
        }
        if !(10..=7 * 86_400).contains(&self.tokens.ttl_s) {
            return Err(key_err(
                "tokens.ttl_s",
                "must be between 10 and 604800 seconds",
            ));
        }
        if !(10..=600_000).contains(&self.heartbeat.interval_ms) {
            return Err(key_err(
                "heartbeat.interval_ms",
                "must be between 10 and 600000",
            ));
        }
        if self.heartbeat.missed_allowed == 0 {
            return Err(key_err("heartbeat.missed_allowed", "must be at least 1"));
        }
        if self.heartbeat.forget_after_missed <= self.heartbeat.missed_allowed {
            return Err(key_err(
                "heartbeat.forget_after_missed",
                "must be greater than heartbeat.missed_allowed",
            ));
        }
        if self.heartbeat.load_refresh_ms == 0 || self.learning.publish_ms == 0 {
            return Err(key_err(
                "heartbeat.load_refresh_ms / learning.publish_ms",
                "must be positive",
            ));
        }
        if self.default_bitrate_kbps == 0 || self.default_bitrate_kbps > self.max_bitrate_kbps {
            return Err(key_err(
                "default_bitrate_kbps",
                "must be between 1 and max_bitrate_kbps",
            ));
        }
        let rl = &self.http.rate_limit;
        if !(rl.per_second.is_finite() && rl.per_second > 0.0) || rl.burst == 0 {
            return Err(key_err(
                "http.rate_limit",
                "per_second must be a positive number and burst at least 1",
            ));
        }
        if rl.max_clients == 0 {
            return Err(key_err("http.rate_limit.max_clients", "must be at least 1"));
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.http.body_limit_bytes) {
            return Err(key_err(
                "http.body_limit_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if self.http.request_timeout_ms == 0 {
            return Err(key_err("http.request_timeout_ms", "must be positive"));
        }
        self.http.validate_listener()?;
        if self.limits.max_servers == 0
            || self.limits.max_tracked_streams == 0
            || self.limits.max_ranked == 0
        {
            return Err(key_err("limits", "every limit must be at least 1"));
        }
        let p = &self.scoring;
        if p.candidates == 0 || !(p.rtt.per_1000km_ms.is_finite() && p.rtt.base_ms.is_finite()) {
            return Err(key_err(
                "scoring",
                "candidates must be at least 1 and the RTT model finite",
            ));
        }
        if self.registry.backend == RegistryBackend::Etcd {
            self.registry.etcd.validate()?;
        }
        self.default_location()?;
        for (net, place) in &self.sites {
            resolve_place(place).map_err(|m| key_err(&format!("sites.\"{net}\""), m))?;
        }
        Ok(())
    }

    /// The resolved default place.
    pub fn default_location(&self) -> Result<geo::Location, ConfigError> {
        resolve_place(&self.default_place)
            .map(|p| p.location)
            .map_err(|m| key_err("default_place", m))
    }

    /// Refuse the example secrets (and anything starting with `change-me`): a director that
    /// serves with them can be driven by anyone who read the examples.
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("auth.entry_key", &self.auth.entry_key),
            ("auth.admin_token", &self.auth.admin_token),
        ] {
            if EXAMPLE_SECRETS.contains(&v.as_str()) || v.starts_with("change-me") {
                return Err(key_err(
                    key,
                    "is the example's placeholder: set a secret of your own \
                     (e.g. `openssl rand -hex 32`), in the environment rather than the file",
                ));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets replaced by `"<redacted>"`.
    pub fn to_redacted_toml(&self) -> String {
        let mut c = self.clone();
        let redact = |s: &mut String| {
            if !s.is_empty() {
                *s = "<redacted>".into();
            }
        };
        redact(&mut c.auth.entry_key);
        redact(&mut c.auth.admin_token);
        if c.registry.etcd.password.is_some() {
            c.registry.etcd.password = Some("<redacted>".into());
        }
        if c.tokens.signing_key_pem.is_some() {
            c.tokens.signing_key_pem = Some("<redacted>".into());
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

/// Resolve a configured place name with the embedded gazetteer.
pub(crate) fn resolve_place(s: &str) -> Result<geo::gazetteer::Place, String> {
    geo::gazetteer::Gazetteer::embedded()
        .resolve(s)
        .map(|r| r.place)
        .map_err(|e| e.to_string())
}
