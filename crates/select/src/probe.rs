//! The device's own measurements of its paths: which servers it should probe, and what its
//! probes say.
//!
//! **Why.** On the shipped WonderProxy data the regret of "nearest" comes from client-specific
//! routing detours (Shenzhen → Hong Kong 217 ms while Shanghai is 31 ms) that no geographic model
//! predicts, while the best POP is among the five best candidates by estimate for about 98 % of
//! clients. So the director names those candidates ([`probe_targets`]: the top `k` from the typed
//! location for the primary and from the IP location for the backup, deduplicated), the device
//! times a few requests to each, and the selection uses the **median** of each server's samples
//! in place of the estimate ([`Probes`], used through [`crate::Evidence`]).
//!
//! **Median, not minimum.** The minimum RTT is the path without queueing; a stream lives with the
//! queueing that is there. Zurich → Roubaix has a minimum of 13.7 ms and an average of 42.9 ms on
//! the shipped data: ranked by the minimum it looks like the best path, and it is not. The median
//! of a handful of samples is robust to one slow sample (a retransmitted SYN, a scheduler hiccup)
//! and still sees persistent queueing.
//!
//! **Hostile input.** Probe results come from the device, over the network. [`Probes::new`]
//! accepts at most [`MAX_PROBED_SERVERS`] servers with 1 to [`MAX_PROBE_SAMPLES`] samples each,
//! every sample a finite number of milliseconds in `0 ≤ rtt < MAX_PROBE_RTT_MS`, each server
//! once; anything else is an error that names the field at fault and says what is accepted.
//! Servers the fleet does not know are ignored (a device may have probed a server that left), and
//! counted. A device that lies about its probes only changes its own assignment; when the director
//! keeps probe results as history they are attributed to the device's network as the director
//! sees it (its socket address), never to a location it typed (see [`crate::history`]).
//!
//! What it is not: a prober. Timing requests is the device's job (`firstmile push`, `assign`).

use crate::choose::{Evidence, Request, bases, rank_with};
use crate::estimate::Params;
use crate::server::{EntryServer, Fleet};
use geo::Location;
pub use proto::Role;
pub use proto::api::{MAX_PROBE_SAMPLES, MAX_PROBED_SERVERS};

/// How many candidates per location the director asks a device to probe, by default.
pub const DEFAULT_PROBE_TARGETS: usize = 5;
/// How many RTT samples per target the director asks for, by default.
pub const DEFAULT_PROBE_SAMPLES: u32 = 5;
/// A probe sample must be below this many milliseconds (the contract's bound).
pub const MAX_PROBE_RTT_MS: f64 = 10_000.0;

/// What a device's probes say about one server.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Probed {
    /// The median of the samples, in milliseconds.
    pub median_ms: f64,
    /// How many samples it is the median of.
    pub samples: u32,
}

/// Validated probe results of one request: server id → median of its samples.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Probes {
    /// Sorted by server id.
    by_server: Vec<(String, Probed)>,
    ignored: usize,
}

/// Probe results that cannot be used. The device is at fault; retrying the same request fails
/// the same way.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProbeError {
    #[error("probes: {count} servers, at most {MAX_PROBED_SERVERS} are accepted")]
    TooManyServers { count: usize },
    #[error(
        "probes[{index}].rtt_ms: {count} samples, 1 to {MAX_PROBE_SAMPLES} samples are accepted"
    )]
    SampleCount { index: usize, count: usize },
    #[error(
        "probes[{index}].rtt_ms[{sample}]: {value} is not a round-trip time: milliseconds, \
         at least 0 and less than 10000, are accepted"
    )]
    BadSample {
        index: usize,
        sample: usize,
        value: f64,
    },
    #[error(
        "probes[{index}].server_id: {server_id:?} is listed twice, each server once is accepted"
    )]
    Duplicate { index: usize, server_id: String },
}

impl ProbeError {
    /// The request field at fault, as a path (`probes[2].rtt_ms`), for the error body.
    pub fn field(&self) -> String {
        match self {
            ProbeError::TooManyServers { .. } => "probes".into(),
            ProbeError::SampleCount { index, .. } | ProbeError::BadSample { index, .. } => {
                format!("probes[{index}].rtt_ms")
            }
            ProbeError::Duplicate { index, .. } => format!("probes[{index}].server_id"),
        }
    }
}

/// The median of `v` (the mean of the middle two for an even count); `None` when empty.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(s[n / 2]),
        _ => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

impl Probes {
    /// Check a device's probe results (server id, RTT samples in ms) against the limits in the
    /// module docs and keep the median per server. Servers `fleet` does not know are ignored.
    pub fn new<'s, S>(
        results: impl IntoIterator<Item = (&'s str, S)>,
        fleet: &Fleet,
    ) -> Result<Self, ProbeError>
    where
        S: AsRef<[f64]>,
    {
        let results: Vec<(&'s str, S)> = results.into_iter().collect();
        if results.len() > MAX_PROBED_SERVERS {
            return Err(ProbeError::TooManyServers {
                count: results.len(),
            });
        }
        let mut by_server: Vec<(String, Probed)> = Vec::new();
        let mut seen: Vec<&str> = Vec::with_capacity(results.len());
        let mut ignored = 0;
        for (index, (id, samples)) in results.iter().enumerate() {
            let id: &str = id;
            let samples = samples.as_ref();
            if samples.is_empty() || samples.len() > MAX_PROBE_SAMPLES {
                return Err(ProbeError::SampleCount {
                    index,
                    count: samples.len(),
                });
            }
            if let Some((sample, &value)) = samples
                .iter()
                .enumerate()
                .find(|(_, x)| !(x.is_finite() && **x >= 0.0 && **x < MAX_PROBE_RTT_MS))
            {
                return Err(ProbeError::BadSample {
                    index,
                    sample,
                    value,
                });
            }
            if seen.contains(&id) {
                return Err(ProbeError::Duplicate {
                    index,
                    server_id: id.to_string(),
                });
            }
            seen.push(id);
            if fleet.get(id).is_none() {
                ignored += 1;
                continue;
            }
            let median_ms = median(samples).unwrap_or_default();
            by_server.push((
                id.to_string(),
                Probed {
                    median_ms,
                    samples: samples.len() as u32,
                },
            ));
        }
        by_server.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { by_server, ignored })
    }

    /// The same from the contract's request field (`AssignmentRequest::probes`).
    pub fn from_api(
        results: &[proto::api::ProbeResult],
        fleet: &Fleet,
    ) -> Result<Self, ProbeError> {
        Self::new(
            results
                .iter()
                .map(|p| (p.server_id.as_str(), p.rtt_ms.as_slice())),
            fleet,
        )
    }

    /// What the probes say about `server_id`.
    pub fn get(&self, server_id: &str) -> Option<Probed> {
        self.by_server
            .binary_search_by(|(s, _)| s.as_str().cmp(server_id))
            .ok()
            .map(|i| self.by_server[i].1)
    }

    /// Probed servers the fleet knows, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Probed)> + '_ {
        self.by_server.iter().map(|(s, p)| (s.as_str(), *p))
    }

    pub fn len(&self) -> usize {
        self.by_server.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_server.is_empty()
    }

    /// How many results named a server the fleet does not know.
    pub fn ignored(&self) -> usize {
        self.ignored
    }
}

/// A server a device should probe, and which picks it is a candidate for.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeTarget<'a> {
    pub server: &'a EntryServer,
    /// `Primary` when it is among the top `k` from the primary's location, `Backup` when among
    /// the top `k` from the backup's (both when both).
    pub roles: Vec<Role>,
}

/// The servers a device should probe before it asks for an assignment: the best `k` candidates
/// by today's estimate (the model, learned corrections and whatever `evidence` holds) from the
/// location the primary is scored from (typed) and from the backup's (IP), with the same
/// fall-backs as [`crate::select`] when a location is unknown; deduplicated, primary's first, in
/// rank order. At most `2 k` targets.
#[allow(clippy::too_many_arguments)]
pub fn probe_targets<'a>(
    fleet: &'a Fleet,
    req: &Request,
    params: &Params,
    evidence: &Evidence<'_>,
    default_place: &Location,
    now: u64,
    k: usize,
) -> Vec<ProbeTarget<'a>> {
    let (primary, backup) = bases(req, default_place);
    let mut out: Vec<ProbeTarget<'a>> = Vec::new();
    if k == 0 {
        return out;
    }
    for (role, from) in [(Role::Primary, primary), (Role::Backup, backup)] {
        let ranked = rank_with(
            fleet,
            &from.location,
            req.protocol,
            req.bitrate_kbps,
            params,
            evidence,
            now,
            params.candidates.max(k),
        );
        for r in ranked.into_iter().take(k) {
            match out.iter_mut().find(|t| t.server.id == r.server.id) {
                Some(t) => {
                    if !t.roles.contains(&role) {
                        t.roles.push(role);
                    }
                }
                None => out.push(ProbeTarget {
                    server: r.server,
                    roles: vec![role],
                }),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{Capacity, Health, Load, Protocol};

    fn fleet() -> Fleet {
        Fleet::new(
            ["a", "b", "c"]
                .iter()
                .map(|id| EntryServer {
                    id: (*id).into(),
                    pop: (*id).into(),
                    city: String::new(),
                    location: Location::new(0.0, 0.0).unwrap(),
                    capacity: Capacity {
                        streams: 10,
                        mbps: 100.0,
                    },
                    load: Load::default(),
                    health: Health::Healthy,
                    draining: false,
                    protocols: vec![Protocol::Native],
                })
                .collect(),
        )
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        // One wild sample does not move it (the mean would be 2,002).
        assert_eq!(median(&[10.0, 11.0, 9.0, 10_000.0, 10.5]), Some(10.5));
    }

    #[test]
    fn the_median_is_kept_and_unknown_servers_are_ignored() {
        let f = fleet();
        let p = Probes::new(
            [
                ("b", vec![40.0, 13.7, 42.0, 45.0, 41.0]),
                ("gone", vec![1.0]),
                ("a", vec![20.0, 0.0]),
            ],
            &f,
        )
        .unwrap();
        assert_eq!(
            p.get("b"),
            Some(Probed {
                median_ms: 41.0,
                samples: 5
            })
        );
        assert_eq!(p.get("a").unwrap().median_ms, 10.0);
        assert_eq!(p.get("gone"), None);
        assert_eq!((p.len(), p.ignored()), (2, 1));
        assert_eq!(p.iter().map(|(s, _)| s).collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn hostile_input_is_refused_with_the_field_at_fault() {
        let f = fleet();
        let e = Probes::new([("a", vec![1.0, f64::NAN])], &f).unwrap_err();
        assert_eq!(e.field(), "probes[0].rtt_ms");
        assert!(e.to_string().contains("rtt_ms[1]: NaN"), "{e}");
        for bad in [-1.0, f64::INFINITY, 10_000.0, 1e300] {
            assert!(matches!(
                Probes::new([("a", vec![bad])], &f),
                Err(ProbeError::BadSample { .. })
            ));
        }
        assert!(matches!(
            Probes::new([("a", vec![]), ("b", vec![1.0])], &f),
            Err(ProbeError::SampleCount { index: 0, count: 0 })
        ));
        assert!(matches!(
            Probes::new([("a", vec![1.0; MAX_PROBE_SAMPLES + 1])], &f),
            Err(ProbeError::SampleCount { .. })
        ));
        let e =
            Probes::new([("a", vec![1.0]), ("b", vec![1.0]), ("a", vec![2.0])], &f).unwrap_err();
        assert_eq!(e.field(), "probes[2].server_id");
        let many: Vec<(String, Vec<f64>)> = (0..=MAX_PROBED_SERVERS)
            .map(|i| (format!("s{i}"), vec![1.0]))
            .collect();
        let e = Probes::new(many.iter().map(|(s, v)| (s.as_str(), v)), &f).unwrap_err();
        assert!(matches!(e, ProbeError::TooManyServers { .. }), "{e}");
        // Unknown servers still count against the limit (they cost the director work too).
        assert_eq!(e.field(), "probes");
    }
}
