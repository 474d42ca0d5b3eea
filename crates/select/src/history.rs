//! Per-network history: what earlier sessions and probes from the same client network measured
//! to each POP, used in place of the estimate for later assignments from that network.
//!
//! **Why.** The routing detours that make "nearest" wrong are specific to a client network
//! (Shenzhen → Hong Kong 217 ms while Shanghai is 31 ms; Winnipeg → Chicago 86 ms while
//! Vancouver is 28 ms), so neighbouring cities do not predict them and [`crate::learned`] cannot
//! see them. The same network's own earlier sessions can: on the shipped data, a network's sixth
//! session has a mean primary regret well under a millisecond (`firstmile sim`, policy
//! `history`). It needs nothing from the device, but does nothing for a network's first session
//! (probes do: see [`crate::probe`]).
//!
//! **Evidence and attribution.** Each observation is one RTT from a client network to a POP:
//! the smoothed RTT (TCP_INFO `tcpi_rtt`, not `tcpi_min_rtt`: the minimum hides the persistent
//! queueing a stream lives with) an entry server measured on a real session — primary *and*
//! backup sessions, both are paths of that network — or the median of a device's probes to a
//! server of that POP. It is attributed to the network **as the director or the entry server
//! sees it: the socket's address**, never to a location the client typed, so a client cannot
//! steer other people's assignments by claiming to be elsewhere; at worst it misleads the picks of
//! its own network.
//!
//! **Keys.** A client network is its IPv4 /24 or IPv6 /48 ([`Prefix`]; IPv4-mapped IPv6
//! addresses count as IPv4) and, where the director has an ASN database, its autonomous system.
//! Every observation updates the prefix's record and, with an ASN, the ASN's record too. A prefix
//! record is used first. An ASN record is a fall-back for prefixes not yet seen (mobile carriers
//! spread their users over many /24s) and is used only when its samples agree: a large ASN spans
//! a continent, and its average RTT to a POP is then nobody's RTT. "Agree" means an EW mean
//! absolute deviation of at most `max(5 ms, asn_max_spread × RTT)`.
//!
//! **The estimate per (network, POP)** is an EWMA with a half-life, on irregular arrivals: each
//! record keeps a weight `W` (decayed by `2^(−Δt / half_life)` as time passes) and a mean `m`;
//! an observation `x` of weight 1 (less if it is older than the record) does
//! `W' = W + 1`, `m += (x − m) / W'`, and then `W = min(W', max_weight)`. So a mean is the
//! average of its first few samples, a fresh sample never counts less than `1 / (max_weight + 1)`
//! (with the default 7: TCP's own SRTT gain of 1/8, so a route change shows within a few
//! sessions), and a network that stops coming fades out. The deviation is tracked the same way
//! (RFC 6298's RTTVAR, with the same gain), and a sample count is kept for the explanation
//! ("learned from N sessions").
//!
//! **When it is used** (see [`HistoryParams`]): a (network, POP) entry replaces the estimate when
//! it holds at least `min_samples` observations (default **1**) and its decayed weight is at
//! least `min_weight` (default 0.25: one sample stays usable for two half-lives, 14 days). One
//! is enough because one observation is already a measurement of this network's real path —
//! an entry server's smoothed RTT averages the whole session, a probe is the median of several
//! samples — and the model it replaces is off by 17.7 % at the median and by hundreds of
//! milliseconds on exactly the detoured paths history is for. A single bad observation is not
//! sticky: the next session's measurement moves the mean (with weight 1/2 for the second
//! sample). `firstmile sim` measures both choices: with 2 the sixth session's regret is higher,
//! because each POP has to be tried twice before its figure counts.
//!
//! **Memory budget.** At most `max_networks` records (prefixes and ASNs together; default
//! 100,000), each with at most `max_pops_per_network` POPs (default 8; beyond it the entry with
//! the least decayed weight goes). A new network beyond the budget evicts the least recently
//! updated one, and records not updated for `half_life × log₂(max_weight / 0.01)` (about 59
//! days with the defaults: by then every weight is below 0.01) are dropped as observations
//! arrive. POP names are interned. [`History::approx_bytes`] adds up what is held: about
//! 48 bytes per (network, POP) entry and 120 per network, so **at most about 50 MB** with the
//! defaults (100,000 × (120 + 8 × 48) bytes), and what a director really holds is usually far less.
//!
//! **Sharing.** `History` serialises (serde) to a document of its parameters and records
//! (networks as `"203.0.113.0/24"`, `"2001:db8:1::/48"`, `"AS64500"`); reading one checks every
//! value as hostile input and trims it to the budget, so directors can exchange or persist it.
//!
//! What it is not: a clock or a store. Time (`at`, `now`: Unix seconds) is an argument; where
//! the document is kept, and how directors share it, is the caller's business.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

/// Below this decayed weight an entry is dead and may be dropped.
const DEAD_WEIGHT: f64 = 0.01;
/// An ASN record's deviation may always be this large (ms), whatever its RTT.
const ASN_DEV_FLOOR_MS: f64 = 5.0;
/// Largest accepted RTT (ms), as for learned measurements.
pub const MAX_RTT_MS: f64 = 10_000.0;
/// Longest accepted POP name.
const MAX_POP_LEN: usize = 64;
/// Records dropped for age per observation at most (keeps an observation's cost bounded).
const EXPIRE_PER_OBSERVE: usize = 64;

/// A client's network prefix: its IPv4 /24 or IPv6 /48.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Prefix {
    V4([u8; 3]),
    V6([u8; 6]),
}

impl Prefix {
    /// The prefix of a socket address's IP (an IPv4-mapped IPv6 address is IPv4).
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let o = a.octets();
                Prefix::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(a) => {
                let o = a.octets();
                Prefix::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
            }
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prefix::V4(o) => write!(f, "{}/24", Ipv4Addr::new(o[0], o[1], o[2], 0)),
            Prefix::V6(o) => {
                let mut b = [0u8; 16];
                b[..6].copy_from_slice(o);
                write!(f, "{}/48", Ipv6Addr::from(b))
            }
        }
    }
}

/// The key of a history record: a prefix, or an autonomous system.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NetworkKey {
    Prefix(Prefix),
    Asn(u32),
}

impl fmt::Display for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkKey::Prefix(p) => p.fmt(f),
            NetworkKey::Asn(a) => write!(f, "AS{a}"),
        }
    }
}

impl FromStr for NetworkKey {
    type Err = HistoryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || HistoryError::Network(s.chars().take(64).collect());
        if let Some(n) = s.strip_prefix("AS") {
            return n.parse().map(NetworkKey::Asn).map_err(|_| bad());
        }
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        match (addr.parse::<IpAddr>().map_err(|_| bad())?, len) {
            (IpAddr::V4(a), "24") if a.octets()[3] == 0 => {
                Ok(NetworkKey::Prefix(Prefix::of(IpAddr::V4(a))))
            }
            (IpAddr::V6(a), "48") if a.octets()[6..].iter().all(|b| *b == 0) => {
                Ok(NetworkKey::Prefix(Prefix::of(IpAddr::V6(a))))
            }
            _ => Err(bad()),
        }
    }
}

impl Serialize for NetworkKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetworkKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The network a client is in, as the director (or an entry server) sees its socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientNetwork {
    pub prefix: Prefix,
    /// Its autonomous system, where an ASN database is configured.
    pub asn: Option<u32>,
}

impl ClientNetwork {
    pub fn new(ip: IpAddr, asn: Option<u32>) -> Self {
        Self {
            prefix: Prefix::of(ip),
            asn,
        }
    }
}

/// Tunables of the history; the defaults are the documented ones (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryParams {
    /// Age at which an observation counts half, in seconds (default 7 days).
    pub half_life_s: f64,
    /// Cap on an entry's weight: a fresh sample counts at least `1 / (max_weight + 1)`.
    pub max_weight: f64,
    /// Observations an entry needs before it replaces the estimate.
    pub min_samples: u32,
    /// Decayed weight an entry needs before it replaces the estimate (freshness).
    pub min_weight: f64,
    /// Observations an ASN entry needs before it stands in for an unseen prefix.
    pub asn_min_samples: u32,
    /// Largest deviation of an ASN entry, as a fraction of its RTT (at least 5 ms is allowed).
    pub asn_max_spread: f64,
    /// Records kept at most (prefixes and ASNs together).
    pub max_networks: usize,
    /// POPs kept per record at most.
    pub max_pops_per_network: usize,
}

impl Default for HistoryParams {
    fn default() -> Self {
        Self {
            half_life_s: 7.0 * 86_400.0,
            max_weight: 7.0,
            min_samples: 1,
            min_weight: 0.25,
            asn_min_samples: 5,
            asn_max_spread: 0.2,
            max_networks: 100_000,
            max_pops_per_network: 8,
        }
    }
}

impl HistoryParams {
    /// Check the parameters (they may come from a configuration file or a shared document).
    pub fn check(&self) -> Result<(), HistoryError> {
        let bad = |what: &'static str, expected: &'static str| {
            Err(HistoryError::Params { what, expected })
        };
        if !(self.half_life_s.is_finite() && self.half_life_s >= 1.0) {
            return bad("half_life_s", "a number of seconds, at least 1");
        }
        if !(self.max_weight.is_finite() && (1.0..=1e6).contains(&self.max_weight)) {
            return bad("max_weight", "a number from 1 to 1000000");
        }
        if !(self.min_weight.is_finite() && (0.0..=self.max_weight).contains(&self.min_weight)) {
            return bad("min_weight", "a number from 0 to max_weight");
        }
        if !(self.asn_max_spread.is_finite() && self.asn_max_spread >= 0.0) {
            return bad("asn_max_spread", "a fraction, at least 0");
        }
        if !(1..=100_000_000).contains(&self.max_networks) {
            return bad("max_networks", "1 to 100000000");
        }
        if !(1..=1024).contains(&self.max_pops_per_network) {
            return bad("max_pops_per_network", "1 to 1024");
        }
        Ok(())
    }

    /// How long a record may go without an observation before every weight in it is dead.
    fn expiry_s(&self) -> u64 {
        (self.half_life_s * (self.max_weight / DEAD_WEIGHT).log2()).ceil() as u64
    }
}

/// A rejected observation, parameter or shared document.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HistoryError {
    #[error("rtt_ms {0} is not a plausible round-trip time: expected 0 < rtt_ms <= 10000")]
    Rtt(f64),
    #[error("POP name {0:?} is not accepted: expected 1 to 64 bytes")]
    Pop(String),
    #[error(
        "network {0:?} is not accepted: expected an IPv4 /24 (\"203.0.113.0/24\"), an IPv6 /48 (\"2001:db8:1::/48\") or an ASN (\"AS64500\")"
    )]
    Network(String),
    #[error("history parameter {what}: expected {expected}")]
    Params {
        what: &'static str,
        expected: &'static str,
    },
    #[error("history document, network {network}, POP {pop:?}: {reason}")]
    Entry {
        network: String,
        pop: String,
        reason: String,
    },
    #[error("history document: network {0} is listed twice")]
    DuplicateNetwork(String),
}

#[derive(Clone, Debug)]
struct Entry {
    pop: Arc<str>,
    rtt_ms: f64,
    dev_ms: f32,
    /// Decayed to `at`.
    weight: f32,
    samples: u32,
    at: u64,
}

fn decay(from: u64, to: u64, half_life_s: f64) -> f64 {
    if to > from {
        0.5f64.powf((to - from) as f64 / half_life_s)
    } else {
        1.0
    }
}

impl Entry {
    fn weight_at(&self, now: u64, half_life_s: f64) -> f64 {
        f64::from(self.weight) * decay(self.at, now, half_life_s)
    }
}

#[derive(Clone, Debug)]
struct Record {
    entries: Vec<Entry>,
    /// Last update.
    at: u64,
}

/// What history says about one (network, POP).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Learned {
    /// The EWMA of the measured RTTs, in ms.
    pub rtt_ms: f64,
    /// Observations taken in (sessions and probe rounds).
    pub samples: u32,
    /// Decayed weight now.
    pub weight: f64,
    /// EW mean absolute deviation of the samples, in ms.
    pub dev_ms: f64,
    /// `Some` when it comes from the network's ASN, not its prefix.
    pub asn: Option<u32>,
}

/// Per client network and POP, the RTT measured on real sessions and by probes.
#[derive(Clone, Debug)]
pub struct History {
    params: HistoryParams,
    records: BTreeMap<NetworkKey, Record>,
    /// (last update, key): the least recently updated first.
    lru: BTreeSet<(u64, NetworkKey)>,
    /// Interned POP names.
    pops: BTreeSet<Arc<str>>,
    /// Interned names kept before unused ones are dropped.
    pops_gc_at: usize,
    observations: u64,
}

impl Default for History {
    fn default() -> Self {
        Self {
            params: HistoryParams::default(),
            records: BTreeMap::new(),
            lru: BTreeSet::new(),
            pops: BTreeSet::new(),
            pops_gc_at: 1024,
            observations: 0,
        }
    }
}

/// One network's records, for the selection of one request (see [`History::view`]).
#[derive(Clone, Copy, Debug)]
pub struct NetworkView<'a> {
    params: &'a HistoryParams,
    prefix: Option<&'a Record>,
    asn: Option<(u32, &'a Record)>,
}

impl<'a> NetworkView<'a> {
    /// The network's measured RTT to `pop`, when there is enough fresh evidence (module docs).
    pub fn rtt(&self, pop: &str, now: u64) -> Option<Learned> {
        let p = self.params;
        let find = |r: &'a Record| {
            r.entries
                .iter()
                .find(|e| &*e.pop == pop)
                .map(|e| (e, e.weight_at(now, p.half_life_s)))
        };
        if let Some((e, w)) = self.prefix.and_then(find)
            && e.samples >= p.min_samples.max(1)
            && w >= p.min_weight
        {
            return Some(Learned {
                rtt_ms: e.rtt_ms,
                samples: e.samples,
                weight: w,
                dev_ms: f64::from(e.dev_ms),
                asn: None,
            });
        }
        let (asn, r) = self.asn?;
        let (e, w) = find(r)?;
        let dev = f64::from(e.dev_ms);
        (e.samples >= p.asn_min_samples.max(p.min_samples).max(1)
            && w >= p.min_weight
            && dev <= ASN_DEV_FLOOR_MS.max(p.asn_max_spread * e.rtt_ms))
        .then_some(Learned {
            rtt_ms: e.rtt_ms,
            samples: e.samples,
            weight: w,
            dev_ms: dev,
            asn: Some(asn),
        })
    }

    /// Whether history knows anything about this network at all.
    pub fn is_empty(&self) -> bool {
        self.prefix.is_none() && self.asn.is_none()
    }
}

impl History {
    /// An empty history with the default parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty history with `params` (checked).
    pub fn with_params(params: HistoryParams) -> Result<Self, HistoryError> {
        params.check()?;
        Ok(Self {
            params,
            ..Self::default()
        })
    }

    pub fn params(&self) -> &HistoryParams {
        &self.params
    }

    /// Records held (prefixes and ASNs).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Observations taken in so far.
    pub fn observations(&self) -> u64 {
        self.observations
    }

    /// About how many bytes the history holds (from the sizes of its parts; allocator overhead
    /// not counted).
    pub fn approx_bytes(&self) -> usize {
        // A B-tree entry costs about its key and value plus a share of the node: ~1.5×.
        let record = (std::mem::size_of::<NetworkKey>() + std::mem::size_of::<Record>()) * 3 / 2
            + (std::mem::size_of::<(u64, NetworkKey)>()) * 3 / 2;
        let entries: usize = self.records.values().map(|r| r.entries.capacity()).sum();
        let names: usize = self.pops.iter().map(|p| p.len() + 16 + 16).sum();
        self.records.len() * record + entries * std::mem::size_of::<Entry>() + names
    }

    /// The records of `net`, for one selection.
    pub fn view(&self, net: &ClientNetwork) -> NetworkView<'_> {
        NetworkView {
            params: &self.params,
            prefix: self.records.get(&NetworkKey::Prefix(net.prefix)),
            asn: net
                .asn
                .and_then(|a| self.records.get(&NetworkKey::Asn(a)).map(|r| (a, r))),
        }
    }

    /// Take in one RTT measured from `net` to `pop` at `at` (Unix seconds): an entry server's
    /// smoothed RTT of a session, or the median of a device's probes to a server of `pop`.
    pub fn observe(
        &mut self,
        net: &ClientNetwork,
        pop: &str,
        rtt_ms: f64,
        at: u64,
    ) -> Result<(), HistoryError> {
        if !(rtt_ms.is_finite() && rtt_ms > 0.0 && rtt_ms <= MAX_RTT_MS) {
            return Err(HistoryError::Rtt(rtt_ms));
        }
        if pop.is_empty() || pop.len() > MAX_POP_LEN {
            return Err(HistoryError::Pop(pop.chars().take(MAX_POP_LEN).collect()));
        }
        self.expire(at);
        let pop = self.intern(pop);
        self.update(NetworkKey::Prefix(net.prefix), &pop, rtt_ms, at);
        if let Some(a) = net.asn {
            self.update(NetworkKey::Asn(a), &pop, rtt_ms, at);
        }
        self.observations += 1;
        Ok(())
    }

    /// Drop records not updated for so long that every weight in them is dead.
    pub fn expire(&mut self, now: u64) {
        let expiry = self.params.expiry_s();
        for _ in 0..EXPIRE_PER_OBSERVE {
            match self.lru.first() {
                Some(&(t, k)) if now.saturating_sub(t) > expiry => {
                    self.lru.remove(&(t, k));
                    self.records.remove(&k);
                }
                _ => break,
            }
        }
    }

    fn intern(&mut self, pop: &str) -> Arc<str> {
        if let Some(p) = self.pops.get(pop) {
            return p.clone();
        }
        if self.pops.len() >= self.pops_gc_at {
            // Names no entry holds any more (only this set does).
            self.pops.retain(|p| Arc::strong_count(p) > 1);
            self.pops_gc_at = (self.pops.len() * 2).max(1024);
        }
        let p: Arc<str> = Arc::from(pop);
        self.pops.insert(p.clone());
        p
    }

    fn update(&mut self, key: NetworkKey, pop: &Arc<str>, x: f64, at: u64) {
        let p = self.params;
        let hl = p.half_life_s;
        match self.records.get(&key) {
            Some(r) => {
                self.lru.remove(&(r.at, key));
            }
            None => {
                while self.records.len() >= p.max_networks {
                    let Some((t, k)) = self.lru.pop_first() else {
                        break;
                    };
                    let _ = t;
                    self.records.remove(&k);
                }
                self.records.insert(
                    key,
                    Record {
                        entries: Vec::new(),
                        at,
                    },
                );
            }
        }
        let Some(r) = self.records.get_mut(&key) else {
            return;
        };
        r.at = r.at.max(at);
        self.lru.insert((r.at, key));
        let now = r.at;
        r.entries.retain(|e| e.weight_at(now, hl) >= DEAD_WEIGHT);
        let i = match r.entries.iter().position(|e| e.pop == *pop) {
            Some(i) => i,
            None => {
                if r.entries.len() >= p.max_pops_per_network {
                    // The weakest entry goes (ties: the least recently updated).
                    if let Some(w) = r
                        .entries
                        .iter()
                        .enumerate()
                        .min_by(|a, b| {
                            a.1.weight_at(now, hl)
                                .total_cmp(&b.1.weight_at(now, hl))
                                .then(a.1.at.cmp(&b.1.at))
                        })
                        .map(|(i, _)| i)
                    {
                        r.entries.swap_remove(w);
                    }
                }
                r.entries.push(Entry {
                    pop: pop.clone(),
                    rtt_ms: x,
                    dev_ms: 0.0,
                    weight: 0.0,
                    samples: 0,
                    at,
                });
                r.entries.len() - 1
            }
        };
        let e = &mut r.entries[i];
        let mut weight = f64::from(e.weight);
        if at > e.at {
            weight *= decay(e.at, at, hl);
            e.at = at;
        }
        // An observation older than the entry enters with its own decay.
        let w = decay(at, e.at, hl);
        let total = weight + w;
        let gain = w / total;
        let err = x - e.rtt_ms;
        e.rtt_ms += gain * err;
        let dev = f64::from(e.dev_ms);
        e.dev_ms = (dev + gain * (err.abs() - dev)) as f32;
        e.weight = total.min(p.max_weight) as f32;
        e.samples = e.samples.saturating_add(1);
    }
}

/// The shared form of a [`History`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryDoc {
    pub params: HistoryParams,
    /// Least recently updated first.
    pub networks: Vec<NetworkDoc>,
}

/// One network's record in a [`HistoryDoc`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkDoc {
    pub network: NetworkKey,
    pub pops: Vec<PopDoc>,
}

/// One (network, POP) entry in a [`HistoryDoc`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PopDoc {
    pub pop: String,
    pub rtt_ms: f64,
    pub dev_ms: f64,
    /// Decayed to `at`.
    pub weight: f64,
    pub samples: u32,
    /// Last update, Unix seconds.
    pub at: u64,
}

impl From<&History> for HistoryDoc {
    fn from(h: &History) -> Self {
        HistoryDoc {
            params: h.params,
            networks: h
                .lru
                .iter()
                .filter_map(|(_, k)| {
                    let r = h.records.get(k)?;
                    Some(NetworkDoc {
                        network: *k,
                        pops: r
                            .entries
                            .iter()
                            .map(|e| PopDoc {
                                pop: e.pop.to_string(),
                                rtt_ms: e.rtt_ms,
                                dev_ms: f64::from(e.dev_ms),
                                weight: f64::from(e.weight),
                                samples: e.samples,
                                at: e.at,
                            })
                            .collect(),
                    })
                })
                .collect(),
        }
    }
}

impl From<History> for HistoryDoc {
    fn from(h: History) -> Self {
        HistoryDoc::from(&h)
    }
}

impl TryFrom<HistoryDoc> for History {
    type Error = HistoryError;

    /// Every value is checked; the document is trimmed to its own budget (the most recently
    /// updated networks, the heaviest POPs of each).
    fn try_from(doc: HistoryDoc) -> Result<Self, HistoryError> {
        let mut h = History::with_params(doc.params)?;
        let p = h.params;
        let skip = doc.networks.len().saturating_sub(p.max_networks);
        let mut networks = doc.networks;
        // Least recently updated first: keep the newest.
        networks.sort_by_key(|n| n.pops.iter().map(|e| e.at).max().unwrap_or(0));
        for n in networks.into_iter().skip(skip) {
            let name = n.network.to_string();
            if h.records.contains_key(&n.network) {
                return Err(HistoryError::DuplicateNetwork(name));
            }
            let mut entries = Vec::with_capacity(n.pops.len().min(p.max_pops_per_network));
            for e in &n.pops {
                let bad = |reason: String| HistoryError::Entry {
                    network: name.clone(),
                    pop: e.pop.chars().take(MAX_POP_LEN).collect(),
                    reason,
                };
                if e.pop.is_empty() || e.pop.len() > MAX_POP_LEN {
                    return Err(bad("a POP name is 1 to 64 bytes".into()));
                }
                if !(e.rtt_ms.is_finite() && e.rtt_ms > 0.0 && e.rtt_ms <= MAX_RTT_MS) {
                    return Err(bad(format!("rtt_ms {} is not in (0, 10000]", e.rtt_ms)));
                }
                if !(e.dev_ms.is_finite() && (0.0..=MAX_RTT_MS).contains(&e.dev_ms)) {
                    return Err(bad(format!("dev_ms {} is not in [0, 10000]", e.dev_ms)));
                }
                if !(e.weight.is_finite() && e.weight > 0.0 && e.weight <= p.max_weight) {
                    return Err(bad(format!(
                        "weight {} is not in (0, max_weight {}]",
                        e.weight, p.max_weight
                    )));
                }
                if e.samples == 0 {
                    return Err(bad("samples must be at least 1".into()));
                }
                if entries.iter().any(|x: &Entry| *x.pop == *e.pop) {
                    return Err(bad("the POP is listed twice".into()));
                }
                entries.push(Entry {
                    pop: h.intern(&e.pop),
                    rtt_ms: e.rtt_ms,
                    dev_ms: e.dev_ms as f32,
                    weight: e.weight as f32,
                    samples: e.samples,
                    at: e.at,
                });
            }
            let at = entries.iter().map(|e| e.at).max().unwrap_or(0);
            entries.sort_by(|a, b| {
                b.weight_at(at, p.half_life_s)
                    .total_cmp(&a.weight_at(at, p.half_life_s))
            });
            entries.truncate(p.max_pops_per_network);
            h.records.insert(n.network, Record { entries, at });
            h.lru.insert((at, n.network));
        }
        Ok(h)
    }
}

impl Serialize for History {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        HistoryDoc::from(self).serialize(s)
    }
}

impl<'de> Deserialize<'de> for History {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        History::try_from(HistoryDoc::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;

    fn net(ip: &str) -> ClientNetwork {
        ClientNetwork::new(ip.parse().unwrap(), None)
    }

    #[test]
    fn prefixes_are_slash_24_and_slash_48_and_mapped_v4_is_v4() {
        let a = net("203.0.113.9");
        assert_eq!(a.prefix, net("203.0.113.200").prefix);
        assert_ne!(a.prefix, net("203.0.114.9").prefix);
        assert_eq!(a.prefix, net("::ffff:203.0.113.77").prefix);
        assert_eq!(a.prefix.to_string(), "203.0.113.0/24");
        let b = net("2001:db8:1:2::5");
        assert_eq!(b.prefix, net("2001:db8:1:ffff::1").prefix);
        assert_ne!(b.prefix, net("2001:db8:2::1").prefix);
        assert_eq!(b.prefix.to_string(), "2001:db8:1::/48");
        for s in ["203.0.113.0/24", "2001:db8:1::/48", "AS64500"] {
            assert_eq!(s.parse::<NetworkKey>().unwrap().to_string(), s);
        }
        for s in [
            "203.0.113.1/24",
            "203.0.113.0/16",
            "2001:db8:1::1/48",
            "AS",
            "ASx",
            "x",
        ] {
            assert!(s.parse::<NetworkKey>().is_err(), "{s}");
        }
    }

    #[test]
    fn first_samples_average_then_the_gain_is_at_least_one_eighth() {
        let mut h = History::new();
        let n = net("198.51.100.7");
        h.observe(&n, "hkg", 200.0, 0).unwrap();
        let v = h.view(&n).rtt("hkg", 0).unwrap();
        assert_eq!((v.rtt_ms, v.samples), (200.0, 1));
        h.observe(&n, "hkg", 100.0, 0).unwrap();
        assert_eq!(h.view(&n).rtt("hkg", 0).unwrap().rtt_ms, 150.0);
        for _ in 0..100 {
            h.observe(&n, "hkg", 100.0, 0).unwrap();
        }
        // A route change: 8 fresh samples move a saturated mean most of the way.
        for _ in 0..8 {
            h.observe(&n, "hkg", 300.0, 0).unwrap();
        }
        let v = h.view(&n).rtt("hkg", 0).unwrap();
        assert!(v.rtt_ms > 300.0 - 200.0 * 0.4, "{v:?}");
        assert_eq!(v.samples, 110);
        // Another network, another POP: nothing.
        assert!(h.view(&net("198.51.101.7")).rtt("hkg", 0).is_none());
        assert!(h.view(&n).rtt("sha", 0).is_none());
    }

    #[test]
    fn old_evidence_fades_and_stale_records_go() {
        let mut h = History::new();
        let n = net("198.51.100.7");
        h.observe(&n, "hkg", 200.0, 0).unwrap();
        assert!(h.view(&n).rtt("hkg", 13 * DAY).is_some());
        // Past two half-lives a lone sample no longer replaces the estimate.
        assert!(h.view(&n).rtt("hkg", 15 * DAY).is_none());
        // An observation from elsewhere long after removes the dead record.
        h.observe(&net("192.0.2.1"), "fra", 10.0, 70 * DAY).unwrap();
        assert_eq!(h.len(), 1);
        assert!(h.view(&n).is_empty());
    }

    #[test]
    fn an_out_of_order_report_counts_less() {
        let mut h = History::new();
        let n = net("198.51.100.7");
        h.observe(&n, "p", 100.0, 14 * DAY).unwrap();
        h.observe(&n, "p", 200.0, 0).unwrap(); // two half-lives older: weight 1/4
        let v = h.view(&n).rtt("p", 14 * DAY).unwrap();
        assert!((v.rtt_ms - 120.0).abs() < 1e-9, "{v:?}");
    }

    #[test]
    fn the_budget_holds_and_the_least_recently_updated_network_goes() {
        let mut h = History::with_params(HistoryParams {
            max_networks: 3,
            max_pops_per_network: 2,
            ..HistoryParams::default()
        })
        .unwrap();
        for (i, ip) in ["192.0.2.1", "198.51.100.1", "203.0.113.1"]
            .iter()
            .enumerate()
        {
            h.observe(&net(ip), "a", 10.0, i as u64).unwrap();
        }
        h.observe(&net("192.0.2.1"), "a", 10.0, 5).unwrap(); // refreshed
        h.observe(&net("10.0.0.1"), "a", 10.0, 6).unwrap();
        assert_eq!(h.len(), 3);
        assert!(h.view(&net("198.51.100.1")).is_empty());
        assert!(!h.view(&net("192.0.2.1")).is_empty());
        // POPs per network: the weakest goes.
        let n = net("10.0.0.1");
        h.observe(&n, "a", 10.0, 6).unwrap();
        h.observe(&n, "b", 20.0, 6).unwrap();
        h.observe(&n, "c", 30.0, 6).unwrap();
        let v = h.view(&n);
        assert!(v.rtt("a", 6).is_some() && v.rtt("c", 6).is_some());
        assert!(v.rtt("b", 6).is_none());
        let bytes = h.approx_bytes();
        assert!(bytes > 0 && bytes < 3 * 1024, "{bytes}");
    }

    #[test]
    fn a_full_history_stays_within_the_documented_budget() {
        let p = HistoryParams {
            max_networks: 1000,
            ..HistoryParams::default()
        };
        let mut h = History::with_params(p).unwrap();
        for i in 0..1500u32 {
            let ip = IpAddr::from([10, (i >> 8) as u8, i as u8, 1]);
            for pop in 0..10 {
                h.observe(
                    &ClientNetwork::new(ip, None),
                    &format!("pop{pop}"),
                    20.0,
                    u64::from(i),
                )
                .unwrap();
            }
        }
        assert_eq!(h.len(), 1000);
        // The module docs' figure: about 120 bytes per network and 48 per (network, POP).
        let per_network = h.approx_bytes() / h.len();
        assert!(
            per_network <= 120 + p.max_pops_per_network * 48,
            "{per_network} bytes per network"
        );
        assert_eq!(std::mem::size_of::<Entry>(), 48);
    }

    #[test]
    fn asn_stands_in_for_an_unseen_prefix_only_when_its_samples_agree() {
        let mut h = History::new();
        let agree = ClientNetwork::new("198.51.100.1".parse().unwrap(), Some(64500));
        let spread = ClientNetwork::new("203.0.113.1".parse().unwrap(), Some(64501));
        for i in 0..6 {
            h.observe(&agree, "p", 50.0 + f64::from(i % 2), 0).unwrap();
            h.observe(&spread, "p", if i % 2 == 0 { 20.0 } else { 150.0 }, 0)
                .unwrap();
        }
        let unseen = |asn| ClientNetwork::new("192.0.2.1".parse().unwrap(), Some(asn));
        let v = h.view(&unseen(64500)).rtt("p", 0).unwrap();
        assert_eq!((v.asn, v.samples), (Some(64500), 6));
        assert!(h.view(&unseen(64501)).rtt("p", 0).is_none());
        // The prefix's own record wins over its ASN's.
        let own = h.view(&spread).rtt("p", 0).unwrap();
        assert_eq!(own.asn, None);
    }

    #[test]
    fn nonsense_is_rejected() {
        let mut h = History::new();
        let n = net("192.0.2.1");
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 10_001.0] {
            assert!(
                matches!(h.observe(&n, "p", bad, 0), Err(HistoryError::Rtt(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            h.observe(&n, "", 1.0, 0),
            Err(HistoryError::Pop(_))
        ));
        assert!(matches!(
            h.observe(&n, &"x".repeat(65), 1.0, 0),
            Err(HistoryError::Pop(_))
        ));
        assert_eq!((h.len(), h.observations()), (0, 0));
        assert!(
            HistoryParams {
                half_life_s: f64::NAN,
                ..HistoryParams::default()
            }
            .check()
            .is_err()
        );
    }

    #[test]
    fn the_document_round_trips_and_hostile_documents_are_refused() {
        let mut h = History::new();
        let n = ClientNetwork::new("2001:db8:1::9".parse().unwrap(), Some(64500));
        h.observe(&n, "fra", 12.5, 100).unwrap();
        h.observe(&net("192.0.2.1"), "lon", 30.0, 50).unwrap();
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains("\"2001:db8:1::/48\"") && json.contains("\"AS64500\""));
        let back: History = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        assert_eq!(back.view(&n).rtt("fra", 100), h.view(&n).rtt("fra", 100));

        for (from, to) in [
            ("12.5", "-1.0"),
            ("12.5", "1e400"),
            ("\"fra\"", "\"\""),
            ("\"2001:db8:1::/48\"", "\"2001:db8:1::1/48\""),
        ] {
            let bad = json.replacen(from, to, 1);
            assert!(serde_json::from_str::<History>(&bad).is_err(), "{bad}");
        }
        let twice = json.replacen("\"AS64500\"", "\"2001:db8:1::/48\"", 1);
        let e = serde_json::from_str::<History>(&twice).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
    }
}
