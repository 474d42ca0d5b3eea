//! `firstmile entry`: run one entry server.

use crate::Failure;
use crate::cmd::serve::{init_tracing, runtime_with, terminated};
use anyhow::Context;
use entry::{Entry, EntryConfig};
use std::io::Write;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct EntryArgs {
    /// TOML configuration file (see examples/entry.toml).
    #[arg(long, env = "FIRSTMILE_ENTRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override any configuration key: --set key=value (repeatable; wins over file and env).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Shorthand for --set id=...
    #[arg(long)]
    pub id: Option<String>,
    /// Shorthand for --set pop=...
    #[arg(long)]
    pub pop: Option<String>,
    /// Shorthand for --set location=... (a place or "lat,lon")
    #[arg(long, allow_hyphen_values = true)]
    pub location: Option<String>,
    /// Shorthand for --set director=...
    #[arg(long)]
    pub director: Option<String>,
    /// Shorthand for --set native_listen=...
    #[arg(long)]
    pub native_listen: Option<String>,
    /// Shorthand for --set http_listen=...
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Shorthand for --set rtmp_listen=... (RTMP ingest; off when absent)
    #[arg(long)]
    pub rtmp_listen: Option<String>,
    /// Shorthand for --set data_dir=...
    #[arg(long)]
    pub data_dir: Option<String>,
    /// Shorthand for --set token_public_key=... (PEM or a path)
    #[arg(long, allow_hyphen_values = true)]
    pub token_public_key: Option<String>,
    /// Shorthand for --set fsync=... (always | never | interval:MS)
    #[arg(long)]
    pub fsync: Option<String>,
    /// Validate the configuration, print it and exit.
    #[arg(long)]
    pub check: bool,
}

/// `key="value"` with the value quoted as a TOML string.
pub fn string_override(key: &str, value: &str) -> String {
    format!(
        "{key}={}",
        serde_json::to_string(value).unwrap_or_else(|_| "\"\"".into())
    )
}

pub fn load_config(a: &EntryArgs) -> Result<EntryConfig, Failure> {
    let file = match &a.config {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config {}", p.display()))
                .map_err(Failure::usage)?,
        ),
        None => None,
    };
    let mut overrides = Vec::new();
    for (k, v) in [
        ("id", &a.id),
        ("pop", &a.pop),
        ("location", &a.location),
        ("director", &a.director),
        ("native_listen", &a.native_listen),
        ("http_listen", &a.http_listen),
        ("rtmp_listen", &a.rtmp_listen),
        ("data_dir", &a.data_dir),
        ("token_public_key", &a.token_public_key),
        ("fsync", &a.fsync),
    ] {
        if let Some(v) = v {
            overrides.push(string_override(k, v));
        }
    }
    overrides.extend(a.set.iter().cloned());
    EntryConfig::load(file.as_deref(), std::env::vars(), &overrides).map_err(Failure::usage)
}

pub fn run(a: EntryArgs) -> Result<(), Failure> {
    let cfg = load_config(&a)?;
    if a.check {
        println!("{}", serde_json::to_string_pretty(&cfg).unwrap_or_default());
        return Ok(());
    }
    init_tracing("info", false);
    let entry = Entry::init(cfg.clone()).map_err(Failure::usage)?;
    let rt = runtime_with(cfg.threads)?;
    rt.block_on(async move {
        let native = tokio::net::TcpListener::bind(cfg.native_listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.native_listen))
            .map_err(Failure::usage)?;
        let http = tokio::net::TcpListener::bind(cfg.http_listen)
            .await
            .with_context(|| format!("cannot listen on {}", cfg.http_listen))
            .map_err(Failure::usage)?;
        let rtmp = match cfg.rtmp_listen {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("cannot listen on {a}"))
                    .map_err(Failure::usage)?,
            ),
            None => None,
        };
        let (n, h) = (
            native.local_addr().map_err(Failure::other)?,
            http.local_addr().map_err(Failure::other)?,
        );
        let r = match &rtmp {
            Some(l) => format!(
                " rtmp rtmp://{}/live",
                l.local_addr().map_err(Failure::other)?
            ),
            None => String::new(),
        };
        // One machine-readable line when ready (scripts and tests wait for it).
        println!("entry {} native tcp://{n} http http://{h}{r}", cfg.id);
        let _ = std::io::stdout().flush();
        entry
            .run_with(native, http, rtmp, terminated())
            .await
            .map_err(Failure::other)
    })
}
