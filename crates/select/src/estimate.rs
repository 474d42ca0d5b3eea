//! Path estimates from a client location to an entry server, and the score that ranks them.
//!
//! # RTT prior
//! `rtt_ms = base_ms + per_1000km_ms × d / 1000`, with `d` the great-circle distance in km.
//! The constants are fitted on the WonderProxy 2020 server-to-server pings shipped in
//! `shared/data/latency/wonderproxy-2020-dev` (14,631 directed pairs, per-pair average of hourly
//! `ping -c 30`), by minimising the **median absolute log error** rather than squared error: RTT
//! errors are multiplicative (a bad route doubles RTT, it does not add a constant), and the median
//! ignores the few pairs routed around the world. The fit gives `base_ms = 13`,
//! `per_1000km_ms = 16.4` (fibre light speed is 10 ms per 1000 km round trip; the rest is route
//! inflation). Its median absolute error is 17.7 % (a least-squares line, 30.0 + 17.3 ms/1000 km,
//! has 22.9 %). On the AWS and Azure inter-region data (also shipped) the same model's median
//! relative error is 16.0 % and 17.2 %. The test `calibration` in
//! `tests/integration.rs` re-fits the constants from the data and fails if they drift.
//!
//! # Loss prior
//! No shipped data measures loss, so the prior is an assumption, stated here: 0.05 % plus 0.02 %
//! per 1000 km (longer paths cross more queues). Learned measurements (retransmit ratios from
//! TCP_INFO) replace it where there is evidence.
//!
//! # Throughput
//! Mathis et al. (1997): a single TCP flow achieves about `MSS / RTT × C / √p` with `C = √(3/2)`,
//! MSS 1460 bytes. The estimate is the minimum of that and the server's free ingress bandwidth.
//!
//! # Score (lower is better, in milliseconds of "effective latency")
//! `score = rtt + w_loss × loss% + w_load × u³ / (1 − u) + shortfall`, where `u` is the server's
//! utilisation (tightest of streams, bandwidth, CPU). The load term is ~0 for an idle server, 2.5 ms
//! at half load, 146 ms at 90 %: a nearly full server loses to a slightly farther idle one, while
//! moderately loaded servers still win on distance. `shortfall` adds `w_shortfall × (1 − t / need)`
//! when the estimated throughput `t` is below `need` = 1.25 × the requested bitrate, because a path
//! that cannot carry the stream is worse than a longer one that can.

use crate::learned::Correction;
use crate::server::EntryServer;
use geo::Location;
use serde::{Deserialize, Serialize};

/// The distance → RTT prior.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RttModel {
    pub base_ms: f64,
    pub per_1000km_ms: f64,
}

impl Default for RttModel {
    fn default() -> Self {
        Self {
            base_ms: 13.0,
            per_1000km_ms: 16.4,
        }
    }
}

impl RttModel {
    pub fn rtt_ms(&self, distance_km: f64) -> f64 {
        self.base_ms + self.per_1000km_ms * distance_km / 1000.0
    }
}

/// Tunables of estimation and scoring. The defaults are the documented model.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    pub rtt: RttModel,
    /// Loss prior: fraction at zero distance.
    pub loss_base: f64,
    /// Loss prior: added fraction per 1000 km.
    pub loss_per_1000km: f64,
    /// Score milliseconds per percent of loss.
    pub w_loss_ms_per_pct: f64,
    /// Score milliseconds of the load term's scale.
    pub w_load_ms: f64,
    /// Score milliseconds added when the path cannot carry the stream at all.
    pub w_shortfall_ms: f64,
    /// How many eligible servers nearest to each location are scored.
    pub candidates: usize,
    /// How many runners-up each pick's explanation lists.
    pub runners_up: usize,
    /// Learned corrections: smallest kernel length in km for "nearby clients" (L₀).
    pub learn_radius_km: f64,
    /// Learned corrections: kernel length as a fraction of the client–server distance (a).
    pub learn_reach: f64,
    /// Learned corrections: pseudo-count of the prior (evidence needed to move halfway).
    pub learn_prior_weight: f64,
    /// Learned corrections: age at which a measurement counts half, in seconds.
    pub learn_half_life_s: f64,
    /// Measured RTTs beside estimates: the most that is added to an unmeasured candidate's
    /// estimate for the client's access link (see [`crate::choose`], "Measured RTTs").
    pub access_excess_cap_ms: f64,
    /// Measured candidates a ranking needs before their least excess over the model is added
    /// to the unmeasured ones (same section).
    pub access_excess_min_measured: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            rtt: RttModel::default(),
            loss_base: 0.0005,
            loss_per_1000km: 0.0002,
            w_loss_ms_per_pct: 10.0,
            w_load_ms: 20.0,
            w_shortfall_ms: 200.0,
            candidates: 32,
            runners_up: 3,
            learn_radius_km: 200.0,
            learn_reach: 0.5,
            learn_prior_weight: 3.0,
            learn_half_life_s: 7.0 * 86_400.0,
            access_excess_cap_ms: 30.0,
            access_excess_min_measured: 4,
        }
    }
}

/// The estimated path from a client location to one server, and its score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub distance_km: f64,
    pub rtt_ms: f64,
    /// Loss as a fraction in [0, 1].
    pub loss: f64,
    pub throughput_mbps: f64,
    pub utilization: f64,
    /// Lower is better (see the module docs).
    pub score: f64,
    /// How much measured evidence moved this estimate (0 = prior alone).
    pub evidence: f64,
}

const MSS_BITS: f64 = 1460.0 * 8.0;
const MATHIS_C: f64 = 1.224_744_871_391_589; // sqrt(3/2)

/// Mathis throughput in Mbit/s for an RTT in ms and a loss fraction.
pub fn mathis_mbps(rtt_ms: f64, loss: f64) -> f64 {
    let rtt_s = (rtt_ms / 1000.0).max(1e-4);
    let p = loss.max(1e-6);
    MSS_BITS / rtt_s * MATHIS_C / p.sqrt() / 1e6
}

impl Params {
    /// The prior estimate alone.
    pub fn prior(&self, from: &Location, server: &EntryServer, bitrate_kbps: u32) -> Estimate {
        self.estimate(from, server, bitrate_kbps, None)
    }

    /// Prior plus an optional learned correction.
    pub fn estimate(
        &self,
        from: &Location,
        server: &EntryServer,
        bitrate_kbps: u32,
        correction: Option<&Correction>,
    ) -> Estimate {
        self.estimate_inner(from, server, bitrate_kbps, correction, None)
    }

    /// The estimate with a measured RTT (`rtt_ms`, backed by `evidence` samples or sessions) in
    /// place of the modelled one: loss, throughput and score follow from it as they would from
    /// the model's. Used for probed servers and for history (see [`crate::choose`]).
    pub fn with_rtt(
        &self,
        from: &Location,
        server: &EntryServer,
        bitrate_kbps: u32,
        correction: Option<&Correction>,
        rtt_ms: f64,
        evidence: f64,
    ) -> Estimate {
        self.estimate_inner(
            from,
            server,
            bitrate_kbps,
            correction,
            Some((rtt_ms, evidence)),
        )
    }

    fn estimate_inner(
        &self,
        from: &Location,
        server: &EntryServer,
        bitrate_kbps: u32,
        correction: Option<&Correction>,
        measured: Option<(f64, f64)>,
    ) -> Estimate {
        let distance_km = from.distance_km(&server.location);
        let mut rtt_ms = self.rtt.rtt_ms(distance_km);
        let mut loss = self.loss_base + self.loss_per_1000km * distance_km / 1000.0;
        let mut path_mbps = None;
        let mut evidence = 0.0;
        if let Some(c) = correction {
            // Never below the speed of light in fibre (100 km per ms round trip).
            rtt_ms = (rtt_ms + c.rtt_offset_ms).max(distance_km / 100.0).max(0.1);
            if let Some(l) = c.loss {
                loss = l;
            }
            path_mbps = c.throughput_mbps;
            evidence = c.evidence;
        }
        if let Some((measured_ms, n)) = measured {
            // What the client's own path measured; the fibre bound is the model's, not the
            // measurement's (the location it would apply to may be wrong).
            rtt_ms = measured_ms.max(0.01);
            evidence = n;
        }
        let loss = loss.clamp(0.0, 1.0);
        let mathis = mathis_mbps(rtt_ms, loss);
        // A measured delivery rate is a lower bound (live streams are application-limited).
        let path = path_mbps.map_or(mathis, |m| mathis.max(m));
        let throughput_mbps = path.min(server.headroom_mbps());
        let utilization = server.utilization();
        let u = utilization.min(0.999);
        let load_term = self.w_load_ms * u.powi(3) / (1.0 - u);
        let need = 1.25 * f64::from(bitrate_kbps) / 1000.0;
        let shortfall = if need > 0.0 && throughput_mbps < need {
            self.w_shortfall_ms * (1.0 - throughput_mbps / need)
        } else {
            0.0
        };
        let score = rtt_ms + self.w_loss_ms_per_pct * loss * 100.0 + load_term + shortfall;
        Estimate {
            distance_km,
            rtt_ms,
            loss,
            throughput_mbps,
            utilization,
            score,
            evidence,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{Capacity, Health, Load, Protocol};

    fn server(lat: f64, lon: f64, load: f64) -> EntryServer {
        EntryServer {
            id: "s".into(),
            pop: "p".into(),
            city: "c".into(),
            location: Location::new(lat, lon).unwrap(),
            capacity: Capacity {
                streams: 100,
                mbps: 1000.0,
            },
            load: Load {
                streams: (load * 100.0) as u32,
                mbps: load * 1000.0,
                cpu: load,
            },
            health: Health::Healthy,
            draining: false,
            protocols: vec![Protocol::Native],
        }
    }

    #[test]
    fn mathis_is_about_nine_mbit_at_50ms_and_0_1_percent() {
        let t = mathis_mbps(50.0, 0.001);
        assert!((t - 9.04).abs() < 0.1, "{t}");
    }

    #[test]
    fn nearly_full_server_loses_to_slightly_farther_idle_one() {
        let p = Params::default();
        let client = Location::new(50.0, 8.0).unwrap();
        let near_full = p.prior(&client, &server(50.1, 8.6, 0.92), 4000);
        let far_idle = p.prior(&client, &server(48.8, 2.35, 0.0), 4000);
        assert!(near_full.rtt_ms < far_idle.rtt_ms);
        assert!(
            near_full.score > far_idle.score,
            "{near_full:?} {far_idle:?}"
        );
        // ...but a moderately loaded one still wins on distance.
        let near_half = p.prior(&client, &server(50.1, 8.6, 0.5), 4000);
        assert!(near_half.score < far_idle.score);
    }

    #[test]
    fn a_path_that_cannot_carry_the_stream_is_penalised() {
        let p = Params::default();
        let client = Location::new(0.0, 0.0).unwrap();
        let s = server(0.0, 100.0, 0.0);
        let small = p.prior(&client, &s, 1000);
        let huge = p.prior(&client, &s, 500_000);
        assert!(huge.score > small.score + 100.0);
    }
}
