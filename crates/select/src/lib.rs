//! The decision core of firstmile: which entry server gets a device's stream, and which one is its
//! hot backup.
//!
//! This is the patent's central step (US 9,137,163, claim 1): from the metadata of an assignment
//! request — the location the user *typed* and the location of the device's *IP address* — identify
//! candidate entry servers, estimate the path performance from each location to each candidate,
//! and pick a **primary** (best estimate from the typed location) and a **backup** (best estimate
//! from the IP location, in another failure domain).
//!
//! - [`server`]: what an entry server is ([`EntryServer`]) and an immutable, indexed snapshot of
//!   the fleet ([`Fleet`]) that stays fast at 100,000 servers.
//! - [`estimate`]: the path model — RTT prior from great-circle distance calibrated on measured
//!   data, loss prior, throughput by the Mathis relation capped by the server's headroom, and the
//!   score that folds in load.
//! - [`learned`]: corrections learned from measured sessions ([`Corrections`]), weighted by
//!   evidence, distance and age.
//! - [`history`]: per client network (prefix, ASN) and POP, the RTT real sessions and probes
//!   measured ([`History`]), bounded and shareable.
//! - [`probe`]: which servers a device should probe ([`probe_targets`]) and what its probes say
//!   ([`Probes`]: the median per server, after checking hostile input).
//! - [`choose`]: candidates, primary, backup, and the explanation of each pick, with measured
//!   RTTs (probes, history) in place of estimates where they exist ([`select_with`], [`Evidence`]).
//! - [`sim`]: replay of measured latency data to compare selection policies (`firstmile sim`).
//!
//! What this crate is not: it does no I/O, reads no clock and no environment, and has no global
//! state. Time (`now`, Unix seconds) is an argument; the same inputs give the same answer.

pub mod choose;
pub mod estimate;
pub mod history;
pub mod learned;
pub mod probe;
pub mod server;
pub mod sim;

pub use choose::{
    Basis, BasisKind, ESTIMATED, Evidence, Pick, Ranked, Request, RttSource, RttSourceKind,
    RunnerUp, SelectError, Selection, rank, rank_with, select, select_with,
};
pub use estimate::{Estimate, Params, RttModel};
pub use history::{
    ClientNetwork, History, HistoryError, HistoryParams, Learned, NetworkView, Prefix,
};
pub use learned::{Corrections, Measurement};
pub use probe::{ProbeError, ProbeTarget, Probed, Probes, probe_targets};
pub use server::{Capacity, EntryServer, Fleet, Health, Load, Protocol};
