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
//! training clients), `oracle` (the measured best; regret 0 by definition, a sanity check).
//! The primary's *regret* is its measured RTT minus the best POP's; the backup's is its RTT minus
//! the best POP other than the primary's. The RTT of a pair is `avg_ms`.
//!
//! Pure: the caller reads the files and passes their text.

use crate::choose::{Request, select};
use crate::estimate::Params;
use crate::learned::{Corrections, Measurement};
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

/// Parsed input.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub cities: BTreeMap<String, City>,
    /// (source, destination) → avg RTT in ms.
    pub rtt: HashMap<(String, String), f64>,
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
    pub policies: BTreeMap<String, PolicyReport>,
}

impl Report {
    pub fn evaluated(&self) -> usize {
        self.clients - self.train_clients
    }
}

/// Policy names, in report order.
pub const POLICIES: [&str; 4] = ["nearest", "estimate", "learned", "oracle"];

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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

/// Run the simulation.
pub fn run(ds: &Dataset, cfg: &SimConfig) -> Result<Report, SimError> {
    if !(0.0..1.0).contains(&cfg.train_fraction) {
        return Err(SimError::TrainFraction(cfg.train_fraction));
    }
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
    let mut clients: Vec<(&City, BTreeMap<&str, f64>)> = ds
        .cities
        .values()
        .filter(|c| !seen.contains(&c.id))
        .filter_map(|c| {
            let row: Option<BTreeMap<&str, f64>> = cfg
                .pops
                .iter()
                .map(|p| ds.pair_rtt(&c.id, p).map(|r| (p.as_str(), r)))
                .collect();
            row.map(|r| (c, r))
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
    for (c, row) in train {
        for (pop, rtt) in row {
            let m = Measurement {
                client: c.location,
                server_id: (*pop).to_string(),
                rtt_ms: *rtt,
                loss: None,
                throughput_mbps: None,
                at: SIM_NOW,
            };
            let server = fleet.get(pop).map(|s| s.location).unwrap_or(c.location);
            // Data was validated above (positive, finite); a rejected sample is skipped.
            let _ = learned.observe(&m, &server, &cfg.params);
        }
    }

    let mut policies = BTreeMap::new();
    for name in POLICIES {
        let (mut prim, mut back, mut within) = (Vec::new(), Vec::new(), 0usize);
        for (c, row) in eval {
            let (p, b) = match name {
                "nearest" => {
                    let mut it = fleet.nearest(&c.location);
                    let p = it.next().map(|s| s.id.clone());
                    let b = it.next().map(|s| s.id.clone());
                    (p, b)
                }
                "oracle" => {
                    let mut ranked: Vec<(&str, f64)> = row.iter().map(|(k, v)| (*k, *v)).collect();
                    ranked.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(b.0)));
                    (
                        ranked.first().map(|r| r.0.to_string()),
                        ranked.get(1).map(|r| r.0.to_string()),
                    )
                }
                _ => {
                    let req = Request {
                        typed: Some(c.location),
                        ip: Some(c.location),
                        protocol: Protocol::Native,
                        bitrate_kbps: 4000,
                    };
                    let l = (name == "learned").then_some(&learned);
                    match select(&fleet, &req, &cfg.params, l, &c.location, SIM_NOW) {
                        Ok(s) => (Some(s.primary.server_id), s.backup.map(|b| b.server_id)),
                        Err(_) => (None, None),
                    }
                }
            };
            let (Some(p), Some(b)) = (p, b) else { continue };
            let best = row.values().copied().fold(f64::INFINITY, f64::min);
            let best_other = row
                .iter()
                .filter(|(k, _)| **k != p)
                .map(|(_, v)| *v)
                .fold(f64::INFINITY, f64::min);
            let pr = row[p.as_str()] - best;
            prim.push(pr);
            back.push(row[b.as_str()] - best_other);
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
        policies,
    })
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
