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
//!
//! # Measured RTTs in place of the estimate
//! Each candidate's RTT has a source ([`RttSource`], the contract's type): `estimated` (the
//! model with learned corrections, [`crate::estimate`], [`crate::learned`]), `learned from N
//! sessions` (this client network's own history, [`crate::history`]) or `probed: median of N`
//! (this device's probes in this request, [`crate::probe`]). A probe replaces the estimate for
//! its server; otherwise history replaces it for the server's POP when it has enough evidence;
//! otherwise the estimate stands. Probes win over history because they are this device, now.
//! Loss, throughput and the score then follow from the RTT used, as they do from the model's.
//!
//! A measured RTT includes the device's own access link (Wi-Fi, DSL, LTE: often 5 to 40 ms);
//! the model, fitted on server-to-server pings, does not, and it also runs low for whole regions
//! (on the shipped data, the 3 nearest POPs of 11 % of client cities all measure more than
//! 15 ms over the model). Compared raw, every measured server would look worse than an unmeasured
//! one the model thinks is a little farther, and the pick would go to a server nobody measured.
//! So once at least `Params::access_excess_min_measured` (4) candidates of a ranking are
//! measured, the *least* excess of a measured RTT over its model estimate, if positive and at
//! most `Params::access_excess_cap_ms` (30 ms), is added to the estimates of the unmeasured ones:
//! - the least, because detours only ever add: the smallest excess is the part every path shares;
//! - at least 4 measured, because with fewer, all of them may be detoured (the 3 nearest POPs of
//!   11 % of cities, the 4 nearest of 5 %), and taking a detour for the access link would keep a
//!   network's history from ever trying another POP;
//! - at most 30 ms, an LTE link's worth: more than that is a route, not an access link.
//!
//! It never makes an unmeasured server look better, and the pick says so in its note. Without
//! measurements nothing changes. On the shipped data (`firstmile sim`, seeds 1–20) the excess
//! takes `probe`'s mean primary regret from 1.06 to 0.45 ms; the README lists the other
//! settings tried.

use crate::estimate::{Estimate, Params};
use crate::history::NetworkView;
use crate::learned::{Correction, Corrections};
use crate::probe::Probes;
use crate::server::{EntryServer, Fleet, Ineligible, Protocol};
use geo::Location;
pub use proto::api::{RttSource, RttSourceKind};
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
    /// Where `estimate.rtt_ms` came from (`estimated`, `learned from N sessions`, `probed:
    /// median of N`; its `Display` says it in those words).
    pub rtt_source: RttSource,
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
    pub rtt_source: RttSource,
}

/// The RTT source of an estimate nobody measured.
pub const ESTIMATED: RttSource = RttSource {
    kind: RttSourceKind::Estimated,
    samples: 0,
};

/// Measured evidence for one request, beyond the geographic model. `Default` is none at all.
#[derive(Clone, Copy, Debug, Default)]
pub struct Evidence<'a> {
    /// Corrections learned from sessions of nearby clients (by location).
    pub learned: Option<&'a Corrections>,
    /// This client network's history (by socket address: [`crate::History::view`]).
    pub history: Option<NetworkView<'a>>,
    /// This device's probes in this request.
    pub probes: Option<&'a Probes>,
}

/// One ranked candidate.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked<'a> {
    pub server: &'a EntryServer,
    pub estimate: Estimate,
    pub rtt_source: RttSource,
    /// For an unmeasured candidate ranked beside measured ones: what was added to its modelled
    /// RTT, the least excess of the measured candidates over the model (see the module docs).
    pub measured_excess_ms: Option<f64>,
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

/// The one ranking of candidates from `from`: eligible servers (healthy, not draining, speaking
/// `protocol`, with room for `bitrate_kbps`) nearest `from`, at most `max(limit, 1)`, each with
/// its estimate (prior + learned corrections + load), best score first, ties by id. The
/// selection ranks its candidates with it, and so do the director's ranked list and probe
/// targets. [`rank_with`] is the same with every kind of evidence and each RTT's source.
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
    let evidence = Evidence {
        learned,
        ..Evidence::default()
    };
    rank_with(
        fleet,
        from,
        protocol,
        bitrate_kbps,
        params,
        &evidence,
        now,
        limit,
    )
    .into_iter()
    .map(|r| (r.server, r.estimate))
    .collect()
}

/// [`rank`] with probes and history: measured RTTs replace estimates (see the module docs),
/// and each candidate says where its RTT came from.
#[allow(clippy::too_many_arguments)]
pub fn rank_with<'a>(
    fleet: &'a Fleet,
    from: &Location,
    protocol: Protocol,
    bitrate_kbps: u32,
    params: &Params,
    evidence: &Evidence<'_>,
    now: u64,
    limit: usize,
) -> Vec<Ranked<'a>> {
    rank_where(
        fleet,
        from,
        protocol,
        bitrate_kbps,
        params,
        evidence,
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
    evidence: &Evidence<'_>,
    now: u64,
    limit: usize,
    keep: impl Fn(&EntryServer) -> bool,
) -> Vec<Ranked<'a>> {
    let mut out: Vec<(Ranked<'a>, Option<Correction>)> = Vec::new();
    // The least excess of a measured RTT over the model's estimate for the same server.
    let mut excess = f64::INFINITY;
    let mut measured_count = 0usize;
    for s in fleet
        .nearest(from)
        .filter(|s| s.ineligibility(protocol, bitrate_kbps).is_none() && keep(s))
        .take(limit.max(1))
    {
        let c = evidence
            .learned
            .and_then(|l| l.correction(from, &s.id, &s.location, params, now));
        let model = params.estimate(from, s, bitrate_kbps, c.as_ref());
        let measured = evidence
            .probes
            .and_then(|p| p.get(&s.id))
            .map(|p| {
                let src = RttSource {
                    kind: RttSourceKind::Probed,
                    samples: p.samples,
                };
                (p.median_ms, f64::from(p.samples), src)
            })
            .or_else(|| {
                let l = evidence.history.as_ref()?.rtt(&s.pop, now)?;
                let src = RttSource {
                    kind: RttSourceKind::Learned,
                    samples: l.samples,
                };
                Some((l.rtt_ms, l.weight, src))
            });
        let ranked = match measured {
            Some((rtt, n, rtt_source)) => {
                excess = excess.min(rtt - model.rtt_ms);
                measured_count += 1;
                Ranked {
                    server: s,
                    estimate: params.with_rtt(from, s, bitrate_kbps, c.as_ref(), rtt, n),
                    rtt_source,
                    measured_excess_ms: None,
                }
            }
            None => Ranked {
                server: s,
                estimate: model,
                rtt_source: ESTIMATED,
                measured_excess_ms: None,
            },
        };
        out.push((ranked, c));
    }
    let excess = if measured_count >= params.access_excess_min_measured.max(1) {
        excess.min(params.access_excess_cap_ms)
    } else {
        0.0
    };
    if excess.is_finite() && excess > 0.0 {
        for (r, c) in &mut out {
            if r.rtt_source.kind == RttSourceKind::Estimated {
                r.estimate = params.with_rtt(
                    from,
                    r.server,
                    bitrate_kbps,
                    c.as_ref(),
                    r.estimate.rtt_ms + excess,
                    r.estimate.evidence,
                );
                r.measured_excess_ms = Some(excess);
            }
        }
    }
    let mut out: Vec<Ranked<'a>> = out.into_iter().map(|(r, _)| r).collect();
    out.sort_by(|a, b| {
        a.estimate
            .score
            .total_cmp(&b.estimate.score)
            .then_with(|| a.server.id.cmp(&b.server.id))
    });
    out
}

fn gather<'a>(
    fleet: &'a Fleet,
    from: &Location,
    req: &Request,
    params: &Params,
    evidence: &Evidence<'_>,
    now: u64,
    keep: impl Fn(&EntryServer) -> bool,
) -> Vec<Ranked<'a>> {
    rank_where(
        fleet,
        from,
        req.protocol,
        req.bitrate_kbps,
        params,
        evidence,
        now,
        params.candidates,
        keep,
    )
}

fn pick(ranked: &[Ranked<'_>], basis: &Basis, params: &Params, note: Option<String>) -> Pick {
    let best = &ranked[0];
    let excess = best.measured_excess_ms.map(|x| {
        format!(
            "estimated RTT includes {x:.1} ms this client's measured paths add to the model \
             (the least excess among its measured servers)"
        )
    });
    let note = match (note, excess) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    };
    Pick {
        server_id: best.server.id.clone(),
        pop: best.server.pop.clone(),
        city: best.server.city.clone(),
        estimate: best.estimate.clone(),
        rtt_source: best.rtt_source,
        scored_from: basis.clone(),
        runners_up: ranked[1..]
            .iter()
            .take(params.runners_up)
            .map(|s| RunnerUp {
                server_id: s.server.id.clone(),
                pop: s.server.pop.clone(),
                estimate: s.estimate.clone(),
                rtt_source: s.rtt_source,
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
/// [`select_with`] is the same with probes and history.
pub fn select(
    fleet: &Fleet,
    req: &Request,
    params: &Params,
    learned: Option<&Corrections>,
    default_place: &Location,
    now: u64,
) -> Result<Selection, SelectError> {
    let evidence = Evidence {
        learned,
        ..Evidence::default()
    };
    select_with(fleet, req, params, &evidence, default_place, now)
}

/// Where the primary and the backup are scored from (see the module docs, step 1).
pub(crate) fn bases(req: &Request, default_place: &Location) -> (Basis, Basis) {
    match (req.typed, req.ip) {
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
    }
}

/// Choose a primary and a backup with every kind of evidence: learned corrections, the client
/// network's history and the device's probes (see the module docs). Each pick's `rtt_source`
/// says which one its RTT came from.
pub fn select_with(
    fleet: &Fleet,
    req: &Request,
    params: &Params,
    evidence: &Evidence<'_>,
    default_place: &Location,
    now: u64,
) -> Result<Selection, SelectError> {
    let (primary_basis, backup_basis) = bases(req, default_place);

    let ranked = gather(
        fleet,
        &primary_basis.location,
        req,
        params,
        evidence,
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
        evidence,
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
            evidence,
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
