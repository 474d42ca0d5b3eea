//! The director: the assignment service entry servers register with and devices ask.
//!
//! **What.** The patent's "first server" (US 9,137,163): it receives an entry-server assignment
//! request with metadata (the place the user typed, the device's IP address), selects a primary
//! and a backup entry server with [`select`], signs a token for each pick ([`token`]), and answers
//! with both. Entry servers register, heartbeat their load, state, live streams and path
//! measurements, and deregister; operators drain and undrain them. The HTTP API is versioned
//! under `/v1` and described by the OpenAPI document at `/openapi.json` (`openapi.json` beside
//! this crate's manifest).
//!
//! **Shape** (STYLE.md): [`DirectorConfig`] (serde, layered: defaults < file < env < flags) →
//! [`Director::from_config`] (reads key and MMDB files; every configuration error surfaces here,
//! before binding) or [`Director::new`] (everything in memory, for embedding and tests) →
//! [`router`] (a plain `axum::Router`, testable with `oneshot`) and [`run`] (serve a bound
//! listener until a shutdown future resolves).
//!
//! - [`config`]: the configuration and its layering;
//! - [`registry`]: the entry-server registry behind a trait ([`Registry`], [`MemoryRegistry`]);
//! - [`etcd`]: the registry shared by several directors on etcd ([`EtcdRegistry`]);
//! - [`etcd_streams`]: the stream documents shared by them (owners, broadcasts);
//! - [`state`]: the fleet snapshot (lock-free reads), learned corrections, remembered
//!   assignments, heartbeat expiry;
//! - [`api`]: the HTTP handlers, input validation, client-IP rules;
//! - [`ratelimit`], [`metrics`], [`tls`]: per-IP limits, Prometheus metrics, HTTPS.
//!
//! **What not.** No ingest (that is the entry servers'), no selection maths (that is `select`),
//! no geography (that is `geo`). The director never imports the entry-server crate; they share
//! `proto` and the JSON contract in `openapi.json`.

pub mod api;
pub mod assign;
pub mod broadcasts;
pub mod clientip;
pub mod config;
pub mod convert;
pub mod dashboard;
pub mod etcd;
pub mod etcd_streams;
pub mod metrics;
pub mod publish;
pub mod ratelimit;
pub mod registry;
pub mod state;
pub mod streams;
pub mod tls;

use std::future::Future;
use std::time::Duration;

pub use api::router;
pub use config::{ConfigError, DirectorConfig, LogFormat};
pub use etcd::EtcdRegistry;
pub use registry::{MemoryRegistry, Registry, RegistryError, RegistryStatus};
pub use state::{Clock, Director, InitError, SystemClock, TokioClock};

/// Descriptors kept free beyond the connection cap: etcd, files, outgoing connections.
const DESCRIPTOR_HEADROOM: u64 = 512;

/// Serve the director on `listener` (HTTPS when `tls` is configured) until `shutdown` resolves,
/// running the upkeep task (heartbeat expiry, snapshot refresh, corrections) alongside. In-flight
/// requests finish before it returns.
///
/// The listener is a `plumbing::listen` gate with the `http.*` caps and timeouts: a connection
/// whose requests carry the an entry server's or the admin credential stops counting against its
/// address's cap, so entry servers behind one NAT are not refused, and kept-alive heartbeat
/// connections are never evicted. Peers in `http.trusted_proxies` are not counted per address.
/// The soft open-file limit is raised to fit the cap (a warning says when it cannot be).
pub async fn run(
    director: Director,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use plumbing::listen::{self, http};
    let cfg = director.config().clone();
    let tls = match &cfg.tls {
        Some(t) => {
            Some(tls::server_config(&t.cert_file, &t.key_file).map_err(std::io::Error::other)?)
        }
        None => None,
    };
    let h = &cfg.http;
    listen::ensure_descriptors(h.max_connections as u64 + DESCRIPTOR_HEADROOM, "director");
    let gate = listen::Gate::new(
        listener,
        listen::Limits {
            max_connections: h.max_connections,
            max_per_ip: h.max_connections_per_ip,
            per_ip_exempt: h.trusted_proxies.clone(),
            opening_timeout: Some(Duration::from_millis(h.header_timeout_ms)),
            pre_auth_bytes: None,
        },
        director.inner.metrics.http_listener.clone(),
    );
    let options = http::HttpOptions {
        idle_timeout: Duration::from_millis(h.idle_timeout_ms),
        max_header_bytes: h.max_header_bytes,
        tls: tls.clone(),
        authenticate: Some({
            let admin = http::bearer_authenticator(vec![cfg.auth.admin_token.clone()]);
            let entry_key = cfg.auth.entry_key.clone();
            std::sync::Arc::new(move |h: &axum::http::HeaderMap| {
                admin(h)
                    || h.get(axum::http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .is_some_and(|b| token::check_entry_credential(&entry_key, b).is_some())
            })
        }),
    };
    let addr = gate.local_addr()?;
    tracing::info!(
        %addr,
        scheme = if tls.is_some() { "https" } else { "http" },
        max_connections = h.max_connections,
        max_connections_per_ip = h.max_connections_per_ip,
        "director listening"
    );
    let upkeep = tokio::spawn(director.clone().upkeep());
    let result = http::serve(gate, router(director.clone()), options, shutdown).await;
    upkeep.abort();
    result
}
