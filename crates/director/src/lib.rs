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
pub mod etcd;
pub mod metrics;
pub mod publish;
pub mod ratelimit;
pub mod registry;
pub mod state;
pub mod streams;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;

pub use api::router;
pub use config::{ConfigError, DirectorConfig, LogFormat};
pub use etcd::EtcdRegistry;
pub use registry::{MemoryRegistry, Registry, RegistryError, RegistryStatus};
pub use state::{Clock, Director, InitError, SystemClock, TokioClock};

/// Serve the director on `listener` (HTTPS when `tls` is configured) until `shutdown` resolves,
/// running the upkeep task (heartbeat expiry, snapshot refresh, corrections) alongside. In-flight
/// requests finish before it returns.
pub async fn run(
    director: Director,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let upkeep = tokio::spawn(director.clone().upkeep());
    let app = router(director.clone());
    let addr = listener.local_addr()?;
    let result = match &director.config().tls {
        Some(tls) => {
            let cfg =
                tls::server_config(&tls.cert_file, &tls.key_file).map_err(std::io::Error::other)?;
            let l = tls::TlsListener::new(listener, cfg)?;
            tracing::info!(%addr, "director listening (https)");
            axum::serve(l, app.into_make_service_with_connect_info::<tls::TlsPeer>())
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            tracing::info!(%addr, "director listening (http)");
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
    };
    upkeep.abort();
    result
}
