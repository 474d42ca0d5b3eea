//! Primary and backup selection, with the explanation of each pick.
//!
//! 1. **Where from.** The primary is scored from the *typed* location, the backup from the *IP*
//!    location. If one is unknown both use the other; if both are unknown both use the configured
//!    default place, and the answer says so ([`BasisKind`]).
//! 2. **Candidates.** Eligible servers (healthy, not draining, accepting the protocol, with room for
//!    the bitrate) nearest to the location, up to `Params::candidates` of them, found by walking
//!    the fleet's spatial index outward; ineligible servers are counted for the error message.
//! 3. **Primary**: the lowest score among the typed location's candidates.
//! 4. **Backup**: the lowest score among the IP location's candidates in a *different POP* than the
//!    primary; only if none exists, the best other server in the primary's POP (and the pick says
//!    so); if there is no other server at all, no backup, with the reason.
//!
//! Ties are broken by server id, and the fleet is sorted by id, so the result does not depend on
//! the order servers were registered in. There is no randomness.

use crate::estimate::{Estimate, Params};
use crate::learned::Corrections;
use crate::server::{EntryServer, Fleet, Ineligible, Protocol};
use geo::Location;
use serde::{Deserialize, Serialize};

/// What the device asked for, with its two locations resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Where the user says the device is (resolved typed place), if known.
    pub typed: Option<Location>,
    /// Where its IP address says it is, if known.
    pub ip: Option<Location>,
    pub protocol: Protocol,
    pub bitrate_kbps: u32,
}

/// Which location a pick was scored from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BasisKind {
    Typed,
    Ip,
    Default,
}

/// The location a pick was scored from, and why that one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Basis {
    pub kind: BasisKind,
    pub location: Location,
    pub note: Option<String>,
}

/// A chosen server with its estimate and explanation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pick {
    pub server_id: String,
    pub pop: String,
    pub city: String,
    pub estimate: Estimate,
    pub scored_from: Basis,
    /// Next best candidates from the same location, best first.
    pub runners_up: Vec<RunnerUp>,
    /// Anything the caller should know (e.g. "backup shares the primary's POP").
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunnerUp {
    pub server_id: String,
    pub pop: String,
    pub estimate: Estimate,
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    pub primary: Pick,
    pub backup: Option<Pick>,
    /// Why `backup` is `None`.
    pub backup_reason: Option<String>,
}

/// No server can take the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no entry server can take a {protocol} stream at {bitrate_kbps} kbit/s: {total} registered, \
     {unhealthy} unhealthy, {draining} draining, {protocol_mismatch} without {protocol}, {full} full"
)]
pub struct SelectError {
    pub protocol: Protocol,
    pub bitrate_kbps: u32,
    pub total: usize,
    pub unhealthy: usize,
    pub draining: usize,
    pub protocol_mismatch: usize,
    pub full: usize,
}

struct Scored<'a> {
    server: &'a EntryServer,
    estimate: Estimate,
}

/// The one ranking of candidates from `from`: eligible servers (healthy, not draining, speaking
/// `protocol`, with room for `bitrate_kbps`) nearest `from`, at most `max(limit, 1)`, each with
/// its estimate (prior + learned corrections + load), best score first, ties by id. The
/// selection ranks its candidates with it, and so do the director's ranked list and probe
/// targets.
#[allow(clippy::too_many_arguments)]
pub fn rank<'a>(
    fleet: &'a Fleet,
    from: &Location,
    protocol: Protocol,
    bitrate_kbps: u32,
    params: &Params,
    learned: Option<&Corrections>,
    now: u64,
    limit: usize,
) -> Vec<(&'a EntryServer, Estimate)> {
    rank_where(
        fleet,
        from,
        protocol,
        bitrate_kbps,
        params,
        learned,
        now,
        limit,
        |_| true,
    )
}

#[allow(clippy::too_many_arguments)]
fn rank_where<'a>(
    fleet: &'a Fleet,
    from: &Location,
    protocol: Protocol,
    bitrate_kbps: u32,
    params: &Params,
    learned: Option<&Corrections>,
    now: u64,
    limit: usize,
    keep: impl Fn(&EntryServer) -> bool,
) -> Vec<(&'a EntryServer, Estimate)> {
    let mut out: Vec<(&'a EntryServer, Estimate)> = fleet
        .nearest(from)
        .filter(|s| s.ineligibility(protocol, bitrate_kbps).is_none() && keep(s))
        .take(limit.max(1))
        .map(|s| {
            let c = learned.and_then(|l| l.correction(from, &s.id, &s.location, params, now));
            (s, params.estimate(from, s, bitrate_kbps, c.as_ref()))
        })
        .collect();
    out.sort_by(|a, b| {
        a.1.score
            .total_cmp(&b.1.score)
            .then_with(|| a.0.id.cmp(&b.0.id))
    });
    out
}

fn gather<'a>(
    fleet: &'a Fleet,
    from: &Location,
    req: &Request,
    params: &Params,
    learned: Option<&Corrections>,
    now: u64,
    keep: impl Fn(&EntryServer) -> bool,
) -> Vec<Scored<'a>> {
    rank_where(
        fleet,
        from,
        req.protocol,
        req.bitrate_kbps,
        params,
        learned,
        now,
        params.candidates,
        keep,
    )
    .into_iter()
    .map(|(server, estimate)| Scored { server, estimate })
    .collect()
}

fn pick(ranked: &[Scored<'_>], basis: &Basis, params: &Params, note: Option<String>) -> Pick {
    let best = &ranked[0];
    Pick {
        server_id: best.server.id.clone(),
        pop: best.server.pop.clone(),
        city: best.server.city.clone(),
        estimate: best.estimate.clone(),
        scored_from: basis.clone(),
        runners_up: ranked[1..]
            .iter()
            .take(params.runners_up)
            .map(|s| RunnerUp {
                server_id: s.server.id.clone(),
                pop: s.server.pop.clone(),
                estimate: s.estimate.clone(),
            })
            .collect(),
        note,
    }
}

fn no_candidate(fleet: &Fleet, req: &Request) -> SelectError {
    let mut e = SelectError {
        protocol: req.protocol,
        bitrate_kbps: req.bitrate_kbps,
        total: fleet.len(),
        unhealthy: 0,
        draining: 0,
        protocol_mismatch: 0,
        full: 0,
    };
    for s in fleet.servers() {
        match s.ineligibility(req.protocol, req.bitrate_kbps) {
            Some(Ineligible::Unhealthy) => e.unhealthy += 1,
            Some(Ineligible::Draining) => e.draining += 1,
            Some(Ineligible::Protocol) => e.protocol_mismatch += 1,
            Some(Ineligible::Full) => e.full += 1,
            None => {}
        }
    }
    e
}

/// Choose a primary and a backup. `learned` adds measured corrections (None = prior alone);
/// `default_place` is used when neither location is known. `now` is Unix seconds.
pub fn select(
    fleet: &Fleet,
    req: &Request,
    params: &Params,
    learned: Option<&Corrections>,
    default_place: &Location,
    now: u64,
) -> Result<Selection, SelectError> {
    let (primary_basis, backup_basis) = match (req.typed, req.ip) {
        (Some(t), Some(i)) => (
            Basis {
                kind: BasisKind::Typed,
                location: t,
                note: None,
            },
            Basis {
                kind: BasisKind::Ip,
                location: i,
                note: None,
            },
        ),
        (Some(t), None) => {
            let b = Basis {
                kind: BasisKind::Typed,
                location: t,
                note: Some("IP location unknown: both picks scored from the typed location".into()),
            };
            (b.clone(), b)
        }
        (None, Some(i)) => {
            let b = Basis {
                kind: BasisKind::Ip,
                location: i,
                note: Some("no typed location: both picks scored from the IP location".into()),
            };
            (b.clone(), b)
        }
        (None, None) => {
            let b = Basis {
                kind: BasisKind::Default,
                location: *default_place,
                note: Some(
                    "neither a typed location nor an IP location is known: both picks scored \
                     from the configured default place"
                        .into(),
                ),
            };
            (b.clone(), b)
        }
    };

    let ranked = gather(
        fleet,
        &primary_basis.location,
        req,
        params,
        learned,
        now,
        |_| true,
    );
    if ranked.is_empty() {
        return Err(no_candidate(fleet, req));
    }
    let primary = pick(&ranked, &primary_basis, params, None);

    let other_pop = gather(
        fleet,
        &backup_basis.location,
        req,
        params,
        learned,
        now,
        |s| s.pop != primary.pop,
    );
    let (backup, backup_reason) = if !other_pop.is_empty() {
        (Some(pick(&other_pop, &backup_basis, params, None)), None)
    } else {
        let same_pop = gather(
            fleet,
            &backup_basis.location,
            req,
            params,
            learned,
            now,
            |s| s.id != primary.server_id,
        );
        if same_pop.is_empty() {
            (
                None,
                Some(format!(
                    "no other entry server can take a {} stream at {} kbit/s",
                    req.protocol, req.bitrate_kbps
                )),
            )
        } else {
            let note = format!(
                "no server outside POP {} qualifies: the backup shares the primary's failure domain",
                primary.pop
            );
            (
                Some(pick(&same_pop, &backup_basis, params, Some(note))),
                None,
            )
        }
    };
    Ok(Selection {
        primary,
        backup,
        backup_reason,
    })
}
