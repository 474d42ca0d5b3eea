//! `firstmile sim`: replay measured latency data through the selection policies.

use crate::Failure;
use anyhow::Context;
use select::sim::{Dataset, POLICIES, Report, SimConfig, run as simulate};
use std::path::PathBuf;

/// The 40 POPs of the README's figures: world cities of the WonderProxy set, spread over the
/// continents the way a real ingest footprint is (12 Europe, 10 North America, 9 Asia, 3 South
/// America, 3 Oceania, 3 Africa).
pub const DEFAULT_POPS: &str = "6,36,72,95,180,57,64,112,56,107,169,139,175,243,115,11,7,210,54,\
94,27,10,206,20,67,34,214,114,2,22,18,39,37,100,24,97,53,213,108,238";

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Directory with servers.csv and pings.csv (the wonderproxy-2020-dev format).
    #[arg(long)]
    pub data: PathBuf,
    /// Comma-separated server ids (from servers.csv) where POPs sit.
    #[arg(long, default_value = DEFAULT_POPS, value_delimiter = ',')]
    pub pops: Vec<String>,
    /// Fraction of client cities whose measurements train the learned corrections, in [0, 1).
    #[arg(long, default_value_t = 0.5)]
    pub train_fraction: f64,
    /// Seed of the train/evaluate split and of the probe and session draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Policy `probe`: candidates probed per location (K; the top K by estimate).
    #[arg(long, default_value_t = select::probe::DEFAULT_PROBE_TARGETS)]
    pub probe_targets: usize,
    /// Policy `probe`: RTT samples per probed server (N; ranked by their median).
    #[arg(long, default_value_t = select::probe::DEFAULT_PROBE_SAMPLES)]
    pub probe_samples: u32,
    /// Policy `history`: sessions of a client network before the one evaluated (S).
    #[arg(long, default_value_t = 5)]
    pub history_sessions: u32,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: SimArgs) -> Result<(), Failure> {
    let read = |name: &str| {
        let p = a.data.join(name);
        std::fs::read_to_string(&p)
            .with_context(|| format!("cannot read {}", p.display()))
            .map_err(Failure::no_input)
    };
    let ds = Dataset::parse(&read("servers.csv")?, &read("pings.csv")?).map_err(Failure::data)?;
    let cfg = SimConfig {
        train_fraction: a.train_fraction,
        probe_targets: a.probe_targets,
        probe_samples: a.probe_samples,
        history_sessions: a.history_sessions,
        ..SimConfig::new(
            a.pops.iter().map(|p| p.trim().to_string()).collect(),
            a.seed,
        )
    };
    let report = simulate(&ds, &cfg).map_err(Failure::usage)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| Failure::data(anyhow::anyhow!(e)))?
        );
    } else {
        print!("{}", human(&report));
    }
    Ok(())
}

fn human(r: &Report) -> String {
    let mut s = format!(
        "{} POPs, {} client cities: {} train the learned corrections, {} evaluated\n\
         probe: top {} candidates per location, median of {} samples; history: the session \
         after {}\n\n",
        r.pops,
        r.clients,
        r.train_clients,
        r.evaluated(),
        r.probe_targets,
        r.probe_samples,
        r.history_sessions,
    );
    s.push_str(
        "policy     primary regret ms (mean / median / p90)   within 10 ms   backup regret ms (mean / median / p90)\n",
    );
    for name in POLICIES {
        if let Some(p) = r.policies.get(name) {
            s.push_str(&format!(
                "{:<10} {:>8.1} / {:>6.1} / {:>6.1}                 {:>5.1} %       {:>8.1} / {:>6.1} / {:>6.1}\n",
                name,
                p.primary_regret_ms.mean,
                p.primary_regret_ms.median,
                p.primary_regret_ms.p90,
                p.primary_within_10ms * 100.0,
                p.backup_regret_ms.mean,
                p.backup_regret_ms.median,
                p.backup_regret_ms.p90,
            ));
        }
    }
    s
}
