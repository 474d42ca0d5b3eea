//! `firstmile geo`: resolve a typed place or an IP address.

use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct GeoArgs {
    /// What a user would type ("Paris, TX", "SFO", "48.85,2.35", "Germany") or an IP address.
    pub query: String,
    #[arg(long)]
    pub json: bool,
}

pub fn run(_a: GeoArgs) -> Result<(), Failure> {
    Err(Failure::usage(anyhow::anyhow!("not yet")))
}
