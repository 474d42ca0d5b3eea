//! `firstmile`: one binary, one subcommand per job.
//!
//! This is L3 in DESIGN.md: it parses arguments, reads files, calls the library crates and maps
//! their errors to exit codes (64 usage or configuration, 65 bad input data, 66 missing input,
//! 1 anything else). It holds no domain logic of its own.

mod cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Live streams into the best entry servers, with a hot backup path.
#[derive(Debug, Parser)]
#[command(name = "firstmile", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resolve a typed place or an IP address to a location.
    Geo(cmd::geo::GeoArgs),
    /// Evaluate selection policies on measured latency data.
    Sim(cmd::sim::SimArgs),
    /// Run an entry server.
    Entry(cmd::entry::EntryArgs),
    /// Run a whole network locally: a director and entry servers in world cities.
    Up(cmd::up::UpArgs),
    /// Run the director: the assignment service entry servers register with and devices ask.
    Director(cmd::director::DirectorArgs),
    /// Validate a director configuration and print the effective result.
    CheckConfig(cmd::director::CheckConfigArgs),
    /// Make an Ed25519 key pair for the director's assignment tokens.
    Keygen(cmd::keygen::KeygenArgs),
    /// Upload a stream to a primary and a backup entry server at once.
    Push(cmd::push::PushArgs),
    /// Write a stream's bytes to standard output (pipe into a player).
    Play(cmd::play::PlayArgs),
    /// Ask the director for an assignment and show why.
    Assign(cmd::assign::AssignArgs),
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    /// Refused for lack of permission: a missing or wrong stream key (sysexits EX_NOPERM).
    pub fn denied(e: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 77,
            error: e.into(),
        }
    }
    pub fn usage(e: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 64,
            error: e.into(),
        }
    }
    pub fn data(e: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 65,
            error: e.into(),
        }
    }
    pub fn other(e: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 1,
            error: e.into(),
        }
    }
    pub fn no_input(e: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 66,
            error: e.into(),
        }
    }
    /// A server (director, entry) could not be reached or is unavailable (EX_UNAVAILABLE).
    pub fn unavailable(e: impl Into<anyhow::Error>) -> Self {
        Self {
            code: 69,
            error: e.into(),
        }
    }
}

fn main() -> ExitCode {
    // One rustls provider for the whole process (ring): any TLS config or HTTP client built
    // without naming one finds it.
    plumbing::tls::install_default_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Geo(a) => cmd::geo::run(a),
        Command::Sim(a) => cmd::sim::run(a),
        Command::Entry(a) => cmd::entry::run(a),
        Command::Up(a) => cmd::up::run(a),
        Command::Director(a) => cmd::director::run(a),
        Command::CheckConfig(a) => cmd::director::check(a),
        Command::Keygen(a) => cmd::keygen::run(a),
        Command::Push(a) => cmd::push::run(a),
        Command::Play(a) => cmd::play::run(a),
        Command::Assign(a) => cmd::assign::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("firstmile: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}
