//! Learned corrections: what measured sessions taught about paths, applied to later estimates.
//!
//! Entry servers measure each ingest session on its socket (TCP_INFO: RTT, retransmits, delivery
//! rate) and report it. A [`Measurement`] says: a client at this place reached this server with
//! this RTT, loss and throughput at this time. The prior (see [`crate::estimate`]) knows distance
//! only; measurements know the real route.
//!
//! # Model
//! Each measurement becomes a *residual* `rᵢ = measured RTT − prior RTT` in milliseconds, kept
//! per server in cells of about 0.5° × 0.5° (evidence from one city stays one record; memory is
//! bounded by [`MAX_CELLS_PER_SERVER`]). A cell holds time-decayed sums of residuals, loss and
//! throughput. The RTT estimate for a client at `x` and server `s` at distance `d` is
//!
//! `rtt = prior(d) + Σ kᵢ wᵢ rᵢ / (Σ kᵢ wᵢ + n₀)`,  `kᵢ = exp(−(dist(x, cellᵢ) / L)²)`,
//! `L = max(L₀, a · d)`
//!
//! - `wᵢ` is the evidence (number of measurements) decayed with a half-life
//!   (`Params::learn_half_life_s`): old routes fade.
//! - `n₀` (`Params::learn_prior_weight`) is how much evidence it takes to move halfway from the
//!   prior, so one odd sample does not flip a decision.
//! - The kernel length grows with the distance to the server (`a`, `Params::learn_reach`): a
//!   client 300 km from a measured one shares its long-haul route to a server 8,000 km away, but
//!   not its last-mile route to a server 50 km away. `L₀` is `Params::learn_radius_km`.
//! - Residuals are additive, not ratios: a client's own access latency is the same constant for
//!   every server, so it cancels when servers are ranked.
//!
//! There is deliberately no server-wide bias term: fitted on the shipped WonderProxy data it made
//! decisions worse (residuals depend on distance, so a server's average residual over far
//! clients says little about near ones). Loss and throughput are blended with the same kernel and
//! used when their evidence weight is at least `n₀`. `firstmile sim` measures all of this.
//!
//! What it is not: a clock reader or a store. `now` is an argument, persistence is the caller's.

use crate::estimate::Params;
use geo::Location;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bound on cells kept per server; the least recently updated cell is evicted beyond it.
pub const MAX_CELLS_PER_SERVER: usize = 4096;

/// Cell size in degrees.
const CELL_DEG: f64 = 0.5;

/// One measured session (or an aggregate of samples from one session).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Where the client was (its resolved location).
    pub client: Location,
    pub server_id: String,
    pub rtt_ms: f64,
    /// Loss (retransmit) fraction, if measured.
    pub loss: Option<f64>,
    /// Delivery rate in Mbit/s, if measured.
    pub throughput_mbps: Option<f64>,
    /// Unix seconds.
    pub at: u64,
}

/// What the corrections say about one (client, server) pair.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Correction {
    /// Add this to the prior RTT (ms).
    pub rtt_offset_ms: f64,
    pub loss: Option<f64>,
    pub throughput_mbps: Option<f64>,
    /// Effective evidence behind the correction (decayed, kernel-weighted measurements).
    pub evidence: f64,
}

#[derive(Clone, Debug, Default)]
struct Cell {
    /// Evidence-weighted centroid, as a running mean.
    lat: f64,
    lon: f64,
    /// Sums decayed to `at`.
    w: f64,
    w_r: f64,
    w_loss: f64,
    n_loss: f64,
    w_tput: f64,
    n_tput: f64,
    at: u64,
}

impl Cell {
    fn decay_to(&mut self, now: u64, half_life_s: f64) {
        let f = half_life_factor(self.at, now, half_life_s);
        if f < 1.0 {
            self.w *= f;
            self.w_r *= f;
            self.w_loss *= f;
            self.n_loss *= f;
            self.w_tput *= f;
            self.n_tput *= f;
        }
        self.at = self.at.max(now);
    }
}

/// Learned corrections for all servers. Clone it only to publish a snapshot, not per request.
#[derive(Clone, Debug, Default)]
pub struct Corrections {
    servers: BTreeMap<String, BTreeMap<(i32, i32), Cell>>,
    measurements: u64,
}

/// A rejected measurement (the report was nonsense).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MeasurementError {
    #[error("rtt_ms {0} is not a plausible round-trip time: expected 0 < rtt_ms <= 10000")]
    Rtt(f64),
    #[error("loss {0} is not a fraction: expected 0 <= loss <= 1")]
    Loss(f64),
    #[error("throughput_mbps {0} is not plausible: expected 0 <= throughput_mbps <= 1000000")]
    Throughput(f64),
}

fn half_life_factor(from: u64, to: u64, half_life_s: f64) -> f64 {
    if to > from {
        0.5f64.powf((to - from) as f64 / half_life_s)
    } else {
        1.0
    }
}

impl Corrections {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of measurements taken in so far.
    pub fn measurements(&self) -> u64 {
        self.measurements
    }

    /// Number of servers with evidence.
    pub fn servers(&self) -> usize {
        self.servers.len()
    }

    /// Take in one measurement of the server at `server_location`. `params` supplies the prior
    /// the measurement is compared against and the half-life.
    pub fn observe(
        &mut self,
        m: &Measurement,
        server_location: &Location,
        params: &Params,
    ) -> Result<(), MeasurementError> {
        if !(m.rtt_ms > 0.0 && m.rtt_ms <= 10_000.0) {
            return Err(MeasurementError::Rtt(m.rtt_ms));
        }
        if let Some(l) = m.loss
            && !(0.0..=1.0).contains(&l)
        {
            return Err(MeasurementError::Loss(l));
        }
        if let Some(t) = m.throughput_mbps
            && !(0.0..=1e6).contains(&t)
        {
            return Err(MeasurementError::Throughput(t));
        }
        let hl = params.learn_half_life_s;
        let r = m.rtt_ms - params.rtt.rtt_ms(m.client.distance_km(server_location));
        let cells = self.servers.entry(m.server_id.clone()).or_default();
        let key = cell_key(&m.client);
        if !cells.contains_key(&key)
            && cells.len() >= MAX_CELLS_PER_SERVER
            && let Some(oldest) = cells.iter().min_by_key(|(_, c)| c.at).map(|(k, _)| *k)
        {
            cells.remove(&oldest);
        }
        let cell = cells.entry(key).or_insert_with(|| Cell {
            at: m.at,
            ..Cell::default()
        });
        cell.decay_to(m.at, hl);
        // A measurement older than the cell's state enters with its own decay.
        let w = half_life_factor(m.at, cell.at, hl);
        let new_w = cell.w + w;
        cell.lat += (m.client.lat - cell.lat) * w / new_w;
        cell.lon += (m.client.lon - cell.lon) * w / new_w;
        cell.w = new_w;
        cell.w_r += w * r;
        if let Some(l) = m.loss {
            cell.w_loss += w * l;
            cell.n_loss += w;
        }
        if let Some(t) = m.throughput_mbps {
            cell.w_tput += w * t;
            cell.n_tput += w;
        }
        self.measurements += 1;
        Ok(())
    }

    /// The correction for a client at `client` to the server `server_id` at `server_location`,
    /// or `None` when there is no evidence for that server.
    pub fn correction(
        &self,
        client: &Location,
        server_id: &str,
        server_location: &Location,
        params: &Params,
        now: u64,
    ) -> Option<Correction> {
        let cells = self.servers.get(server_id)?;
        let hl = params.learn_half_life_s;
        let n0 = params.learn_prior_weight.max(1e-9);
        let l = params
            .learn_radius_km
            .max(params.learn_reach * client.distance_km(server_location))
            .max(1.0);
        // Cells beyond three kernel lengths weigh less than 1e-4: scan only that latitude band.
        let reach_deg = (3.0 * l / 111.0).min(180.0);
        let lo = cell_key(&Location {
            lat: (client.lat - reach_deg).max(-90.0),
            lon: 0.0,
        })
        .0;
        let hi = cell_key(&Location {
            lat: (client.lat + reach_deg).min(90.0),
            lon: 0.0,
        })
        .0;
        let (mut kw, mut kwr) = (0.0, 0.0);
        let (mut kl, mut kln, mut kt, mut ktn) = (0.0, 0.0, 0.0, 0.0);
        for c in cells.range((lo, i32::MIN)..=(hi, i32::MAX)).map(|(_, c)| c) {
            let d = client.distance_km(&Location {
                lat: c.lat,
                lon: c.lon,
            });
            let k = (-(d / l).powi(2)).exp();
            if k < 1e-6 {
                continue;
            }
            let kd = k * half_life_factor(c.at, now, hl);
            kw += kd * c.w;
            kwr += kd * c.w_r;
            kl += kd * c.w_loss;
            kln += kd * c.n_loss;
            kt += kd * c.w_tput;
            ktn += kd * c.n_tput;
        }
        if kw <= 1e-9 {
            return None;
        }
        Some(Correction {
            rtt_offset_ms: kwr / (kw + n0),
            loss: (kln >= n0).then(|| kl / kln),
            throughput_mbps: (ktn >= n0).then(|| kt / ktn),
            evidence: kw,
        })
    }
}

fn cell_key(l: &Location) -> (i32, i32) {
    (
        (l.lat / CELL_DEG).floor() as i32,
        (l.lon / CELL_DEG).floor() as i32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(lat: f64, lon: f64) -> Location {
        Location::new(lat, lon).unwrap()
    }

    fn m(client: Location, rtt: f64, at: u64) -> Measurement {
        Measurement {
            client,
            server_id: "s".into(),
            rtt_ms: rtt,
            loss: Some(0.01),
            throughput_mbps: Some(20.0),
            at,
        }
    }

    #[test]
    fn no_evidence_no_correction() {
        let c = Corrections::new();
        let p = Params::default();
        assert!(
            c.correction(&loc(0.0, 0.0), "s", &loc(1.0, 1.0), &p, 0)
                .is_none()
        );
    }

    #[test]
    fn evidence_moves_nearby_estimates_more_than_far_ones() {
        let p = Params::default();
        let server = loc(40.0, -74.0);
        let client = loc(-23.5, -46.6);
        let prior = p.rtt.rtt_ms(client.distance_km(&server));
        let mut c = Corrections::new();
        for i in 0..20 {
            c.observe(&m(client, prior + 100.0, 1000 + i), &server, &p)
                .unwrap();
        }
        let here = c.correction(&client, "s", &server, &p, 1020).unwrap();
        assert!(
            here.rtt_offset_ms > 80.0 && here.rtt_offset_ms <= 100.0,
            "{here:?}"
        );
        assert!((here.loss.unwrap() - 0.01).abs() < 1e-9);
        // 1,000 km away with the server 7,000 km away: still the same long-haul route.
        let near = c
            .correction(&loc(-30.0, -51.2), "s", &server, &p, 1020)
            .unwrap();
        assert!(near.rtt_offset_ms > 50.0, "{near:?}");
        // Another continent: (almost) no evidence, no correction to speak of.
        let far = c.correction(&loc(52.0, 13.0), "s", &server, &p, 1020);
        assert!(
            far.as_ref().is_none_or(|f| f.rtt_offset_ms.abs() < 0.1),
            "{far:?}"
        );
    }

    #[test]
    fn one_sample_moves_a_quarter_of_the_way() {
        let p = Params::default();
        let server = loc(0.0, 0.0);
        let client = loc(10.0, 10.0);
        let prior = p.rtt.rtt_ms(client.distance_km(&server));
        let mut c = Corrections::new();
        c.observe(&m(client, prior + 80.0, 0), &server, &p).unwrap();
        let k = c.correction(&client, "s", &server, &p, 0).unwrap();
        let expected = 80.0 / (1.0 + p.learn_prior_weight);
        assert!((k.rtt_offset_ms - expected).abs() < 0.5, "{k:?}");
    }

    #[test]
    fn old_evidence_fades() {
        let p = Params::default();
        let server = loc(0.0, 0.0);
        let client = loc(10.0, 10.0);
        let prior = p.rtt.rtt_ms(client.distance_km(&server));
        let mut c = Corrections::new();
        for _ in 0..30 {
            c.observe(&m(client, prior + 100.0, 0), &server, &p)
                .unwrap();
        }
        let fresh = c.correction(&client, "s", &server, &p, 0).unwrap();
        let old = c
            .correction(&client, "s", &server, &p, 10 * 7 * 86_400)
            .unwrap();
        assert!(fresh.rtt_offset_ms > 90.0, "{fresh:?}");
        assert!(old.rtt_offset_ms < 5.0, "{old:?}");
    }

    #[test]
    fn nonsense_is_rejected() {
        let p = Params::default();
        let mut c = Corrections::new();
        let o = loc(1.0, 1.0);
        let mut bad = m(loc(0.0, 0.0), -1.0, 0);
        assert!(matches!(
            c.observe(&bad, &o, &p),
            Err(MeasurementError::Rtt(_))
        ));
        bad.rtt_ms = 10.0;
        bad.loss = Some(2.0);
        assert!(matches!(
            c.observe(&bad, &o, &p),
            Err(MeasurementError::Loss(_))
        ));
        bad.loss = None;
        bad.throughput_mbps = Some(f64::NAN);
        assert!(c.observe(&bad, &o, &p).is_err());
        assert_eq!(c.measurements(), 0);
    }
}
