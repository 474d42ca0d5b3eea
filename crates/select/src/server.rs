//! Entry servers and the fleet snapshot.
//!
//! A [`Fleet`] is immutable: the director rebuilds one when registrations, heartbeats or health
//! change and swaps it in atomically, so the request path never holds a lock while it selects.
//! Building sorts servers by id and bulk-loads an R-tree of unit vectors (see
//! [`geo::Location::unit_vector`]), so nearest-server queries are logarithmic, have no
//! antimeridian or pole special cases, and do not depend on the order servers were given in.

use geo::Location;
use rstar::{RTree, primitives::GeomWithData};
use serde::{Deserialize, Serialize};

/// Ingest protocols (the wire-level enum lives in `proto`).
pub use proto::Protocol;

/// Health as observed by the director (heartbeats). Operator drain is separate: see
/// [`EntryServer::draining`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Unhealthy,
}

/// What a server can carry.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Capacity {
    /// Concurrent ingest streams.
    pub streams: u32,
    /// Ingress bandwidth in Mbit/s.
    pub mbps: f64,
}

/// What a server carries now (from its last heartbeat).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub streams: u32,
    /// Ingress in Mbit/s.
    pub mbps: f64,
    /// CPU busy fraction in [0, 1].
    pub cpu: f64,
}

/// An entry server as the selection sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntryServer {
    /// Unique id ("fra-1").
    pub id: String,
    /// Point of presence: the failure domain. Primary and backup should not share one.
    pub pop: String,
    /// Human label of where it is ("Frankfurt am Main, DE").
    pub city: String,
    pub location: Location,
    pub capacity: Capacity,
    pub load: Load,
    pub health: Health,
    /// Operator drain: takes no new streams, whatever its health.
    pub draining: bool,
    /// Accepted ingest protocols.
    pub protocols: Vec<Protocol>,
}

impl EntryServer {
    /// Utilisation in [0, 1]: the tightest of streams, bandwidth and CPU.
    pub fn utilization(&self) -> f64 {
        let streams = if self.capacity.streams == 0 {
            1.0
        } else {
            f64::from(self.load.streams) / f64::from(self.capacity.streams)
        };
        let mbps = if self.capacity.mbps <= 0.0 {
            1.0
        } else {
            self.load.mbps / self.capacity.mbps
        };
        streams.max(mbps).max(self.load.cpu).clamp(0.0, 1.0)
    }

    /// Free ingress bandwidth in Mbit/s.
    pub fn headroom_mbps(&self) -> f64 {
        (self.capacity.mbps - self.load.mbps).max(0.0)
    }

    /// Why this server cannot take a stream of `protocol` at `bitrate_kbps`, if it cannot.
    pub fn ineligibility(&self, protocol: Protocol, bitrate_kbps: u32) -> Option<Ineligible> {
        if self.health != Health::Healthy {
            Some(Ineligible::Unhealthy)
        } else if self.draining {
            Some(Ineligible::Draining)
        } else if !self.protocols.contains(&protocol) {
            Some(Ineligible::Protocol)
        } else if self.load.streams >= self.capacity.streams
            || self.headroom_mbps() < f64::from(bitrate_kbps) / 1000.0
        {
            Some(Ineligible::Full)
        } else {
            None
        }
    }
}

/// Why a server is not a candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ineligible {
    Unhealthy,
    Draining,
    Protocol,
    Full,
}

type Node = GeomWithData<[f64; 3], usize>;

/// An immutable, indexed snapshot of the entry servers.
#[derive(Debug, Clone)]
pub struct Fleet {
    servers: Vec<EntryServer>,
    tree: RTree<Node>,
}

impl Fleet {
    /// Build a snapshot. Servers are sorted by id; a later duplicate id replaces an earlier one.
    pub fn new(mut servers: Vec<EntryServer>) -> Self {
        servers.reverse();
        servers.sort_by(|a, b| a.id.cmp(&b.id));
        servers.dedup_by(|later, earlier| later.id == earlier.id);
        let nodes = servers
            .iter()
            .enumerate()
            .map(|(i, s)| Node::new(s.location.unit_vector(), i))
            .collect();
        Self {
            servers,
            tree: RTree::bulk_load(nodes),
        }
    }

    /// All servers, sorted by id.
    pub fn servers(&self) -> &[EntryServer] {
        &self.servers
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&EntryServer> {
        self.servers
            .binary_search_by(|s| s.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.servers[i])
    }

    /// Servers in order of increasing great-circle distance from `from` (ties by id).
    pub fn nearest(&self, from: &Location) -> impl Iterator<Item = &EntryServer> + '_ {
        let mut it = self
            .tree
            .nearest_neighbor_iter_with_distance_2(from.unit_vector());
        let mut pending: Option<(usize, f64)> = None;
        // Group equal-distance neighbours and order each group by id, so ties never depend on
        // the tree's internal layout.
        let mut group: Vec<usize> = Vec::new();
        std::iter::from_fn(move || {
            loop {
                if let Some(i) = group.pop() {
                    return Some(&self.servers[i]);
                }
                let (first, d0) = match pending.take() {
                    Some(p) => p,
                    None => {
                        let (n, d) = it.next()?;
                        (n.data, d)
                    }
                };
                group.push(first);
                for (n, d) in it.by_ref() {
                    if d == d0 {
                        group.push(n.data);
                    } else {
                        pending = Some((n.data, d));
                        break;
                    }
                }
                // Indices follow id order; pop from the back, so sort descending.
                group.sort_unstable_by(|a, b| b.cmp(a));
            }
        })
    }
}
