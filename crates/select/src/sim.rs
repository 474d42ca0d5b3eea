//! `firstmile sim`: replay measured latency data to see how good the selection is.
//!
//! Input is the format of `shared/data/latency/wonderproxy-2020-dev/`: `servers.csv` (id, name,
//! …, latitude, longitude) and `pings.csv` (source, destination, min_ms, avg_ms, …). Entry
//! servers are placed at the POP cities (one idle server per POP). Every other city with a
//! measurement to every POP (in either direction; both directions are averaged) is a client. A
//! seeded fraction of the clients are *training* clients: their measurements to every POP feed
//! the learned corrections. The rest are evaluated, each with its city as both its typed and its
//! IP location.
//!
//! Policies: `nearest` (great-circle nearest POP, as GeoDNS does; backup = second nearest),
//! `estimate` (the selection with the prior alone), `learned` (prior + corrections from the
//! training clients), `probe` (learned, and the device probes the top `probe_targets`
//! candidates by that estimate with `probe_samples` samples each; the selection ranks probed
//! servers by the median), `history` (learned, and each evaluated city is a client network whose
//! sessions arrive one a day; each session's primary and backup report a smoothed RTT into the
//! network's history; the figure is the session after `history_sessions` of them), `oracle`
//! (the measured best; regret 0 by definition, a sanity check). The primary's *regret* is its
//! measured RTT minus the best POP's; the backup's is its RTT minus the best POP other than the
//! primary's. The RTT of a pair is `avg_ms` (both directions averaged).
//!
//! # Samples
//! The data set has per-pair statistics, not samples: `min_ms`, `avg_ms`, `max_ms` and
//! `mdev_ms` (ping's standard deviation), per direction. A probe sample or a session's smoothed
//! RTT is drawn from one direction chosen at random, normal around its `avg_ms` with its
//! `mdev_ms`, clamped to its `[min_ms, max_ms]`. A session's smoothed RTT is drawn like a single
//! probe sample, which is noisier than a real SRTT (an average over the whole session): the
//! figures err on the pessimistic side. Files without those columns give samples equal to
//! `avg_ms`. Draws come from a SplitMix64 stream seeded by the seed, the city and the policy, so
//! each policy sees the same draws whatever else runs.
//!
//! Pure: the caller reads the files and passes their text.

use crate::choose::{Evidence, Request, select, select_with};
use crate::estimate::Params;
use crate::history::{ClientNetwork, History, HistoryParams, Prefix};
use crate::learned::{Corrections, Measurement};
use crate::probe::{Probes, probe_targets};
use crate::server::{Capacity, EntryServer, Fleet, Health, Load, Protocol};
use geo::Location;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// A city of the data set.
#[derive(Clone, Debug, PartialEq)]
pub struct City {
    pub id: String,
    pub name: String,
    pub location: Location,
}

/// What one directed pair's pings measured, in ms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairStats {
    pub min: f64,
    pub avg: f64,
    pub max: f64,
    /// Standard deviation (ping's `mdev`).
    pub mdev: f64,
}

/// Parsed input.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub cities: BTreeMap<String, City>,
    /// (source, destination) → avg RTT in ms.
    pub rtt: HashMap<(String, String), f64>,
    /// (source, destination) → min / avg / max / mdev; without those columns, all `avg`.
    pub stats: HashMap<(String, String), PairStats>,
}

/// Bad input data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    #[error("{file} line {line}: {reason}")]
    Parse {
        file: &'static str,
        line: usize,
        reason: String,
    },
    #[error("{file}: missing column {column:?} (the header must name it)")]
    MissingColumn {
        file: &'static str,
        column: &'static str,
    },
    #[error("POP {0:?} is not a server id in servers.csv")]
    UnknownPop(String),
    #[error("POP {0:?} is listed twice")]
    DuplicatePop(String),
    #[error("at least 2 POPs are needed to pick a primary and a backup, got {0}")]
    TooFewPops(usize),
    #[error("train fraction {0} must be in [0, 1)")]
    TrainFraction(f64),
    #[error("no client city has measurements to every POP, so nothing can be evaluated")]
    NoClients,
    #[error(
        "probe samples {0} must be 1 to {max}",
        max = crate::probe::MAX_PROBE_SAMPLES
    )]
    ProbeSamples(u32),
    #[error(
        "probe targets {0} must be 1 to {max} (per location)",
        max = crate::probe::MAX_PROBED_SERVERS / 2
    )]
    ProbeTargets(usize),
    #[error("history sessions {0} must be at most 1000")]
    HistorySessions(u32),
    #[error("{0}")]
    History(#[from] crate::history::HistoryError),
}

/// Split one CSV line, honouring double quotes.
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

struct Table<'a> {
    file: &'static str,
    header: Vec<String>,
    rows: Box<dyn Iterator<Item = (usize, &'a str)> + 'a>,
}

impl<'a> Table<'a> {
    fn new(file: &'static str, text: &'a str) -> Self {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
            .filter(|(_, l)| !l.trim().is_empty());
        let header = lines
            .next()
            .map(|(_, h)| {
                split_csv(h)
                    .into_iter()
                    .map(|s| s.trim().to_string())
                    .collect()
            })
            .unwrap_or_default();
        Self {
            file,
            header,
            rows: Box::new(lines),
        }
    }

    fn column(&self, name: &'static str) -> Result<usize, SimError> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or(SimError::MissingColumn {
                file: self.file,
                column: name,
            })
    }
}

fn field<'f>(
    file: &'static str,
    line: usize,
    fields: &'f [String],
    i: usize,
) -> Result<&'f str, SimError> {
    fields
        .get(i)
        .map(|s| s.trim())
        .ok_or_else(|| SimError::Parse {
            file,
            line,
            reason: format!("expected at least {} fields, found {}", i + 1, fields.len()),
        })
}

fn number(file: &'static str, line: usize, what: &str, s: &str) -> Result<f64, SimError> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| SimError::Parse {
            file,
            line,
            reason: format!("{what} {s:?} is not a number"),
        })
}

impl Dataset {
    /// Parse the text of `servers.csv` and `pings.csv`.
    pub fn parse(servers_csv: &str, pings_csv: &str) -> Result<Self, SimError> {
        let mut ds = Dataset::default();
        let t = Table::new("servers.csv", servers_csv);
        let (ci, cn, clat, clon) = (
            t.column("id")?,
            t.column("name")?,
            t.column("latitude")?,
            t.column("longitude")?,
        );
        for (line, text) in t.rows {
            let f = split_csv(text);
            let id = field(t.file, line, &f, ci)?.to_string();
            let lat = number(t.file, line, "latitude", field(t.file, line, &f, clat)?)?;
            let lon = number(t.file, line, "longitude", field(t.file, line, &f, clon)?)?;
            let location = Location::new(lat, lon).map_err(|e| SimError::Parse {
                file: t.file,
                line,
                reason: e.to_string(),
            })?;
            let name = field(t.file, line, &f, cn)?.to_string();
            ds.cities.insert(id.clone(), City { id, name, location });
        }
        let t = Table::new("pings.csv", pings_csv);
        let (cs, cd, ca) = (
            t.column("source")?,
            t.column("destination")?,
            t.column("avg_ms")?,
        );
        let (cmin, cmax, cdev) = (
            t.column("min_ms").ok(),
            t.column("max_ms").ok(),
            t.column("mdev_ms").ok(),
        );
        for (line, text) in t.rows {
            let f = split_csv(text);
            let s = field(t.file, line, &f, cs)?.to_string();
            let d = field(t.file, line, &f, cd)?.to_string();
            let rtt = number(t.file, line, "avg_ms", field(t.file, line, &f, ca)?)?;
            if rtt <= 0.0 {
                return Err(SimError::Parse {
                    file: t.file,
                    line,
                    reason: format!("avg_ms {rtt} must be positive"),
                });
            }
            let opt = |c: Option<usize>, what: &str, default: f64| match c {
                Some(i) => number(t.file, line, what, field(t.file, line, &f, i)?),
                None => Ok(default),
            };
            let st = PairStats {
                min: opt(cmin, "min_ms", rtt)?,
                avg: rtt,
                max: opt(cmax, "max_ms", rtt)?,
                mdev: opt(cdev, "mdev_ms", 0.0)?,
            };
            if !(st.min > 0.0 && st.min <= st.avg && st.avg <= st.max && st.mdev >= 0.0) {
                return Err(SimError::Parse {
                    file: t.file,
                    line,
                    reason: format!(
                        "expected 0 < min_ms <= avg_ms <= max_ms and mdev_ms >= 0, got {} / {} / {} / {}",
                        st.min, st.avg, st.max, st.mdev
                    ),
                });
            }
            ds.stats.insert((s.clone(), d.clone()), st);
            ds.rtt.insert((s, d), rtt);
        }
        Ok(ds)
    }

    /// RTT between two cities: the mean of the directions measured.
    pub fn pair_rtt(&self, a: &str, b: &str) -> Option<f64> {
        let ab = self.rtt.get(&(a.to_string(), b.to_string()));
        let ba = self.rtt.get(&(b.to_string(), a.to_string()));
        match (ab, ba) {
            (Some(x), Some(y)) => Some((x + y) / 2.0),
            (Some(x), None) | (None, Some(x)) => Some(*x),
            (None, None) => None,
        }
    }
}

/// How to run a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Server ids (from servers.csv) where POPs sit.
    pub pops: Vec<String>,
    /// Fraction of clients whose measurements train the corrections.
    pub train_fraction: f64,
    pub seed: u64,
    pub params: Params,
    /// `probe`: candidates probed per location (K).
    pub probe_targets: usize,
    /// `probe`: samples per probed server (N).
    pub probe_samples: u32,
    /// `history`: sessions of a network before the one evaluated (S).
    pub history_sessions: u32,
    /// `history`: the history's parameters.
    pub history: HistoryParams,
}

impl SimConfig {
    /// The documented defaults (K = 5, N = 5, S = 5) for these POPs and seed.
    pub fn new(pops: Vec<String>, seed: u64) -> Self {
        Self {
            pops,
            train_fraction: 0.5,
            seed,
            params: Params::default(),
            probe_targets: crate::probe::DEFAULT_PROBE_TARGETS,
            probe_samples: crate::probe::DEFAULT_PROBE_SAMPLES,
            history_sessions: 5,
            history: HistoryParams::default(),
        }
    }
}

/// Distribution of regrets in ms.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stats {
    pub mean: f64,
    pub median: f64,
    pub p90: f64,
}

/// One policy's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PolicyReport {
    pub primary_regret_ms: Stats,
    /// Share of evaluated clients whose primary is within 10 ms of the best POP.
    pub primary_within_10ms: f64,
    pub backup_regret_ms: Stats,
}

/// The result; serialises to exactly the `firstmile sim --json` shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub clients: usize,
    pub train_clients: usize,
    pub pops: usize,
    /// `probe`: candidates probed per location.
    pub probe_targets: usize,
    /// `probe`: samples per probed server.
    pub probe_samples: u32,
    /// `history`: sessions before the evaluated one.
    pub history_sessions: u32,
    pub policies: BTreeMap<String, PolicyReport>,
}

impl Report {
    pub fn evaluated(&self) -> usize {
        self.clients - self.train_clients
    }
}

/// Policy names, in report order.
pub const POLICIES: [&str; 6] = [
    "nearest", "estimate", "learned", "probe", "history", "oracle",
];

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seeded stream of uniform and normal draws (SplitMix64, Box–Muller).
struct Draws(u64);

impl Draws {
    fn new(parts: &[u64]) -> Self {
        let mut st = 0x5EED_F1E5_7A11_u64;
        for p in parts {
            st ^= *p;
            st = splitmix64(&mut st);
        }
        Draws(st)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((splitmix64(&mut self.0) >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// One RTT sample of a pair (see the module docs).
    fn rtt(&mut self, dirs: &[PairStats]) -> f64 {
        let i = ((self.uniform() * dirs.len() as f64).ceil() as usize).clamp(1, dirs.len()) - 1;
        let d = dirs[i];
        (d.avg + d.mdev * self.normal()).clamp(d.min, d.max)
    }
}

fn name_hash(s: &str) -> u64 {
    // FNV-1a: a stable hash of a city id (std's hasher is not stable across releases).
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Fisher–Yates with a seeded SplitMix64: the same seed gives the same split everywhere.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

fn stats(mut v: Vec<f64>) -> Stats {
    if v.is_empty() {
        return Stats {
            mean: 0.0,
            median: 0.0,
            p90: 0.0,
        };
    }
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        // Linear interpolation between closest ranks.
        let pos = p * (v.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
    };
    Stats {
        mean: v.iter().sum::<f64>() / v.len() as f64,
        median: q(0.5),
        p90: q(0.9),
    }
}

/// The simulated time: measurements and decisions all happen "now".
const SIM_NOW: u64 = 1_600_000_000;

/// One session a day for the `history` policy.
const SESSION_INTERVAL_S: u64 = 86_400;

/// A client city with its measured row to every POP.
struct Client<'a> {
    city: &'a City,
    /// POP → RTT (avg of both directions).
    row: BTreeMap<&'a str, f64>,
    /// POP → the measured directions' statistics.
    stats: BTreeMap<&'a str, Vec<PairStats>>,
}

/// Run the simulation.
pub fn run(ds: &Dataset, cfg: &SimConfig) -> Result<Report, SimError> {
    if !(0.0..1.0).contains(&cfg.train_fraction) {
        return Err(SimError::TrainFraction(cfg.train_fraction));
    }
    if !(1..=crate::probe::MAX_PROBE_SAMPLES as u32).contains(&cfg.probe_samples) {
        return Err(SimError::ProbeSamples(cfg.probe_samples));
    }
    if !(1..=crate::probe::MAX_PROBED_SERVERS / 2).contains(&cfg.probe_targets) {
        return Err(SimError::ProbeTargets(cfg.probe_targets));
    }
    if cfg.history_sessions > 1000 {
        return Err(SimError::HistorySessions(cfg.history_sessions));
    }
    cfg.history.check()?;
    let mut seen = std::collections::BTreeSet::new();
    for p in &cfg.pops {
        if !ds.cities.contains_key(p) {
            return Err(SimError::UnknownPop(p.clone()));
        }
        if !seen.insert(p) {
            return Err(SimError::DuplicatePop(p.clone()));
        }
    }
    if cfg.pops.len() < 2 {
        return Err(SimError::TooFewPops(cfg.pops.len()));
    }
    let servers: Vec<EntryServer> = cfg
        .pops
        .iter()
        .map(|p| {
            let c = &ds.cities[p];
            EntryServer {
                id: p.clone(),
                pop: p.clone(),
                city: c.name.clone(),
                location: c.location,
                capacity: Capacity {
                    streams: 1000,
                    mbps: 10_000.0,
                },
                load: Load::default(),
                health: Health::Healthy,
                draining: false,
                protocols: vec![Protocol::Native],
            }
        })
        .collect();
    let fleet = Fleet::new(servers);

    // Clients: every non-POP city measured to every POP, with its RTT row.
    let mut clients: Vec<Client<'_>> = ds
        .cities
        .values()
        .filter(|c| !seen.contains(&c.id))
        .filter_map(|c| {
            let row: Option<BTreeMap<&str, f64>> = cfg
                .pops
                .iter()
                .map(|p| ds.pair_rtt(&c.id, p).map(|r| (p.as_str(), r)))
                .collect();
            let stats = cfg
                .pops
                .iter()
                .map(|p| {
                    let dirs = [(c.id.clone(), p.clone()), (p.clone(), c.id.clone())]
                        .iter()
                        .filter_map(|k| ds.stats.get(k).copied())
                        .collect();
                    (p.as_str(), dirs)
                })
                .collect();
            row.map(|row| Client {
                city: c,
                row,
                stats,
            })
        })
        .collect();
    if clients.is_empty() {
        return Err(SimError::NoClients);
    }
    shuffle(&mut clients, cfg.seed);
    let n_train = ((clients.len() as f64) * cfg.train_fraction).round() as usize;
    let n_train = n_train.min(clients.len() - 1);
    let (train, eval) = clients.split_at(n_train);

    let mut learned = Corrections::new();
    for c in train {
        for (pop, rtt) in &c.row {
            let m = Measurement {
                client: c.city.location,
                server_id: (*pop).to_string(),
                rtt_ms: *rtt,
                loss: None,
                throughput_mbps: None,
                at: SIM_NOW,
            };
            let server = fleet
                .get(pop)
                .map(|s| s.location)
                .unwrap_or(c.city.location);
            // Data was validated above (positive, finite); a rejected sample is skipped.
            let _ = learned.observe(&m, &server, &cfg.params);
        }
    }

    let mut policies = BTreeMap::new();
    for (pi, name) in POLICIES.iter().enumerate() {
        let (mut prim, mut back, mut within) = (Vec::new(), Vec::new(), 0usize);
        for (ci, c) in eval.iter().enumerate() {
            let mut draws = Draws::new(&[cfg.seed, name_hash(&c.city.id), pi as u64]);
            let (p, b) = match *name {
                "nearest" => {
                    let mut it = fleet.nearest(&c.city.location);
                    let p = it.next().map(|s| s.id.clone());
                    let b = it.next().map(|s| s.id.clone());
                    (p, b)
                }
                "oracle" => {
                    let mut ranked: Vec<(&str, f64)> =
                        c.row.iter().map(|(k, v)| (*k, *v)).collect();
                    ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)));
                    (
                        ranked.first().map(|r| r.0.to_string()),
                        ranked.get(1).map(|r| r.0.to_string()),
                    )
                }
                "probe" => probe_policy(&fleet, c, cfg, &learned, &mut draws),
                "history" => history_policy(&fleet, c, ci, cfg, &learned, &mut draws)?,
                _ => {
                    let l = (*name == "learned").then_some(&learned);
                    match select(
                        &fleet,
                        &request(c),
                        &cfg.params,
                        l,
                        &c.city.location,
                        SIM_NOW,
                    ) {
                        Ok(s) => (Some(s.primary.server_id), s.backup.map(|b| b.server_id)),
                        Err(_) => (None, None),
                    }
                }
            };
            let (Some(p), Some(b)) = (p, b) else { continue };
            let best = c.row.values().copied().fold(f64::INFINITY, f64::min);
            let best_other = c
                .row
                .iter()
                .filter(|(k, _)| **k != p)
                .map(|(_, v)| *v)
                .fold(f64::INFINITY, f64::min);
            let pr = c.row[p.as_str()] - best;
            prim.push(pr);
            back.push(c.row[b.as_str()] - best_other);
            if pr <= 10.0 {
                within += 1;
            }
        }
        let n = prim.len().max(1);
        policies.insert(
            name.to_string(),
            PolicyReport {
                primary_within_10ms: within as f64 / n as f64,
                primary_regret_ms: stats(prim),
                backup_regret_ms: stats(back),
            },
        );
    }
    Ok(Report {
        clients: clients.len(),
        train_clients: n_train,
        pops: cfg.pops.len(),
        probe_targets: cfg.probe_targets,
        probe_samples: cfg.probe_samples,
        history_sessions: cfg.history_sessions,
        policies,
    })
}

/// A client's request: its city is both its typed and its IP location.
fn request(c: &Client<'_>) -> Request {
    Request {
        typed: Some(c.city.location),
        ip: Some(c.city.location),
        protocol: Protocol::Native,
        bitrate_kbps: 4000,
    }
}

type Picks = (Option<String>, Option<String>);

/// `probe`: targets by today's estimate, `probe_samples` draws each, select on their medians.
fn probe_policy(
    fleet: &Fleet,
    c: &Client<'_>,
    cfg: &SimConfig,
    learned: &Corrections,
    draws: &mut Draws,
) -> Picks {
    let req = request(c);
    let evidence = Evidence {
        learned: Some(learned),
        ..Evidence::default()
    };
    let targets = probe_targets(
        fleet,
        &req,
        &cfg.params,
        &evidence,
        &c.city.location,
        SIM_NOW,
        cfg.probe_targets,
    );
    let results: Vec<(&str, Vec<f64>)> = targets
        .iter()
        .map(|t| {
            let dirs = &c.stats[t.server.id.as_str()];
            let samples = (0..cfg.probe_samples).map(|_| draws.rtt(dirs)).collect();
            (t.server.id.as_str(), samples)
        })
        .collect();
    let Ok(probes) = Probes::new(results.iter().map(|(s, v)| (*s, v)), fleet) else {
        return (None, None);
    };
    let evidence = Evidence {
        probes: Some(&probes),
        ..evidence
    };
    match select_with(
        fleet,
        &req,
        &cfg.params,
        &evidence,
        &c.city.location,
        SIM_NOW,
    ) {
        Ok(s) => (Some(s.primary.server_id), s.backup.map(|b| b.server_id)),
        Err(_) => (None, None),
    }
}

/// `history`: `history_sessions` daily sessions of the city's network report their primary's and
/// backup's smoothed RTT; the next session is the one evaluated.
fn history_policy(
    fleet: &Fleet,
    c: &Client<'_>,
    index: usize,
    cfg: &SimConfig,
    learned: &Corrections,
    draws: &mut Draws,
) -> Result<Picks, SimError> {
    let req = request(c);
    let mut history = History::with_params(cfg.history)?;
    // A network of its own per city (TEST-NET-style numbering, any distinct /24 would do).
    let net = ClientNetwork {
        prefix: Prefix::V4([10, (index >> 8) as u8, index as u8]),
        asn: None,
    };
    let s = u64::from(cfg.history_sessions);
    for i in 0..=s {
        let now = SIM_NOW - (s - i) * SESSION_INTERVAL_S;
        let evidence = Evidence {
            learned: Some(learned),
            history: Some(history.view(&net)),
            probes: None,
        };
        let Ok(sel) = select_with(fleet, &req, &cfg.params, &evidence, &c.city.location, now)
        else {
            return Ok((None, None));
        };
        if i == s {
            return Ok((Some(sel.primary.server_id), sel.backup.map(|b| b.server_id)));
        }
        for pick in std::iter::once(&sel.primary).chain(sel.backup.as_ref()) {
            let srtt = draws.rtt(&c.stats[pick.server_id.as_str()]);
            history.observe(&net, &pick.pop, srtt, now)?;
        }
    }
    Ok((None, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes() {
        assert_eq!(
            split_csv(r#"a,"b,c","d""e",,"#),
            vec!["a", "b,c", "d\"e", "", ""]
        );
    }

    #[test]
    fn shuffle_is_seeded() {
        let mut a: Vec<u32> = (0..50).collect();
        let mut b = a.clone();
        shuffle(&mut a, 7);
        shuffle(&mut b, 7);
        assert_eq!(a, b);
        let mut c: Vec<u32> = (0..50).collect();
        shuffle(&mut c, 8);
        assert_ne!(a, c);
        c.sort();
        assert_eq!(c, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn stats_interpolate() {
        let s = stats((1..=10).map(f64::from).collect());
        assert_eq!(s.mean, 5.5);
        assert_eq!(s.median, 5.5);
        assert!((s.p90 - 9.1).abs() < 1e-9);
    }

    #[test]
    fn bad_input_names_file_and_line() {
        let e = Dataset::parse(
            "id,name,latitude,longitude\n1,A,x,2\n",
            "source,destination,avg_ms\n",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "servers.csv line 2: latitude \"x\" is not a number"
        );
        let e = Dataset::parse("id,name,lat,longitude\n", "").unwrap_err();
        assert!(matches!(
            e,
            SimError::MissingColumn {
                column: "latitude",
                ..
            }
        ));
    }
}
