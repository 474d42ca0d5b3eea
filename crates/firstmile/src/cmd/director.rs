//! `firstmile director` and `firstmile check-config`: run the assignment service, or validate
//! its configuration and print the effective result.
//!
//! Configuration layers (see `director::config`): defaults < `--config` file < environment
//! (`FIRSTMILE_DIRECTOR_*`) < flags (`--listen`, `--set key.path=value`). Everything that can be
//! wrong with it — syntax, unknown keys, ranges, the signing key, the MMDB files, TLS material —
//! is found before the port is bound, and exits 64.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use director::{Director, DirectorConfig, LogFormat};

use crate::Failure;
use crate::cmd::serve::{init_tracing, runtime, terminated};

#[derive(Debug, Args)]
pub struct DirectorArgs {
    /// TOML configuration file (see examples/director.toml).
    #[arg(long, env = "FIRSTMILE_DIRECTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen address (overrides `listen`).
    #[arg(long)]
    pub listen: Option<String>,
    /// Set any configuration key: `--set heartbeat.interval_ms=500` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Benchmarks only: register N synthetic entry servers in-process and keep them heartbeating.
    #[arg(long, hide = true, default_value_t = 0)]
    pub fake_fleet: u32,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "FIRSTMILE_DIRECTOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Set any configuration key (as for `firstmile director`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

fn load(
    config: &Option<PathBuf>,
    listen: Option<&str>,
    set: &[String],
) -> Result<DirectorConfig, Failure> {
    let text = match config {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))
                .map_err(Failure::usage)?,
        ),
        None => None,
    };
    let mut overrides = Vec::new();
    if let Some(l) = listen {
        overrides.push(format!("listen={l}"));
    }
    overrides.extend(set.iter().cloned());
    let c = DirectorConfig::load(text.as_deref(), std::env::vars(), &overrides)
        .map_err(Failure::usage)?;
    // The examples' placeholder secrets are refused here, not in `DirectorConfig::validate`:
    // the examples must stay loadable (tests check them), a director must not serve with them.
    c.check_secrets().map_err(Failure::usage)?;
    Ok(c)
}

/// `firstmile check-config`.
pub fn check(a: CheckConfigArgs) -> Result<(), Failure> {
    let config = load(&a.config, None, &a.set)?;
    let printed = config.to_redacted_toml();
    let d = Director::from_config(config).map_err(Failure::usage)?;
    print!("{printed}");
    eprintln!(
        "configuration OK; token public key:\n{}",
        d.public_key().to_pem()
    );
    Ok(())
}

/// `firstmile director`.
pub fn run(a: DirectorArgs) -> Result<(), Failure> {
    let config = load(&a.config, a.listen.as_deref(), &a.set)?;
    init_tracing("info", config.log_format == LogFormat::Json);
    let listen = config.listen;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let d = Director::from_config(config).map_err(Failure::usage)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))
            .map_err(Failure::usage)?;
        if let Ok(addr) = listener.local_addr() {
            // One machine-readable line when ready (scripts wait for it).
            println!("director {scheme}://{addr}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
        if a.fake_fleet > 0 {
            tokio::spawn(fake_fleet(d.clone(), a.fake_fleet));
        }
        director::run(d, listener, terminated())
            .await
            .context("director failed")
            .map_err(Failure::other)
    })
}

/// Synthetic servers spread over the inhabited latitudes, four per POP, heartbeating in-process
/// every interval (so the registry carries the heartbeat load of a real fleet of that size).
async fn fake_fleet(d: Director, n: u32) {
    use rand::{Rng, SeedableRng};
    use select::{Capacity, Load, Protocol};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let now = tokio::time::Instant::now();
    let mut ids = Vec::with_capacity(n as usize);
    for i in 0..n {
        let lat = rng.random_range(-45.0..60.0);
        let lon = rng.random_range(-180.0..180.0);
        let id = format!("fake-{i}");
        let urls = Protocol::ALL
            .iter()
            .map(|p| (p.as_str().to_string(), format!("{p}://{id}.invalid:7001")))
            .collect();
        let r = director::registry::Registration {
            id: id.clone(),
            pop: format!("pop-{}", i / 4),
            city: format!("{lat:.2},{lon:.2}"),
            location: geo::Location { lat, lon },
            capacity: Capacity {
                streams: 1_000_000,
                mbps: 1e9,
            },
            protocols: Protocol::ALL.to_vec(),
            urls,
        };
        if let Err(e) = d.registry().register(r, now) {
            tracing::error!(error = %e, "fake fleet");
            return;
        }
        ids.push(id);
    }
    tracing::info!(servers = n, "fake fleet registered");
    let mut tick = tokio::time::interval(Duration::from_millis(d.config().heartbeat.interval_ms));
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        for id in &ids {
            let hb = director::registry::Heartbeat {
                load: Load {
                    streams: 1,
                    mbps: 2.0,
                    cpu: 0.1,
                },
                state: director::registry::ServerState::Ready,
                disk: proto::api::DiskState::Ok,
                streams: Vec::new(),
            };
            let _ = d.registry().heartbeat(id, hb, now);
        }
    }
}
