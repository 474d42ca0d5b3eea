//! The description of a bed: its hosts and the paths between them, read from TOML and checked.
//!
//! ```toml
//! prefix = "fm"              # namespaces are named PREFIX-HOST (here fm-dev, fm-fra, …)
//! subnet = "10.77.0.0/16"    # every host's address lies in it (default 10.77.0.0/16)
//! mtu = 1500                 # of each host's link (default 1500)
//! seed = 1                   # of the loss draws (default 0)
//!
//! [default]                  # every pair of hosts not listed under [[path]]
//! rtt_ms = 20
//!
//! [[host]]
//! name = "dev"
//! address = "10.77.1.1"
//! city = "Paris, FR"         # optional; `firstmile up --wan` places servers and clients there
//! role = "client"            # optional: client (default), director, entry (for `firstmile up --wan`)
//!
//! [[host]]
//! name = "fra"
//! address = "10.77.0.2"
//!
//! [[path]]
//! between = ["dev", "fra"]
//! rtt_ms = 150               # round-trip time; each direction is delayed by half
//! loss = 0.01                # probability that a packet is dropped, each direction (default 0)
//! rate_mbit = 50             # bottleneck rate, each direction (default: none)
//! queue_ms = 100             # bottleneck buffer, as the time to drain it (default 100)
//! ```
//!
//! Paths are symmetric: one entry describes both directions. A path's numbers describe the
//! whole way between the two hosts (no hop-by-hop model): RTT, random loss, and a bottleneck
//! with a drop-tail queue. Not modelled: jitter (it would reorder packets within a path, which
//! the forwarder keeps in order), asymmetric delays, correlated (bursty) loss.
//!
//! Everything is checked before anything is created, and each mistake is an error naming the
//! field, the value and what is accepted.

use ipnet::Ipv4Net;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

/// Limits of what a spec may ask for (beyond them a bed is a mistake, not an experiment).
const MAX_HOSTS: usize = 250;
const MAX_RTT_MS: f64 = 10_000.0;
const MAX_RATE_MBIT: f64 = 100_000.0;
const MAX_QUEUE_MS: f64 = 10_000.0;
const DEFAULT_QUEUE_MS: f64 = 100.0;

/// What a host is for, as `firstmile up --wan` reads it. The bed itself treats all alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A device or viewer: commands are run here by hand.
    #[default]
    Client,
    /// Runs the director.
    Director,
    /// Runs an entry server.
    Entry,
}

/// One host: a network namespace with one link to the forwarder.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub name: String,
    pub address: Ipv4Addr,
    pub city: Option<String>,
    pub role: Role,
}

/// One direction of a path, as the forwarder applies it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Link {
    /// One-way propagation delay (half the configured RTT).
    pub delay: Duration,
    /// Probability that a packet is dropped, 0 to 1.
    pub loss: f64,
    /// Bottleneck rate in bits per second, if any.
    pub rate_bps: Option<u64>,
    /// The most a packet may wait for the bottleneck before it is dropped.
    pub queue: Duration,
}

/// A checked bed description.
#[derive(Debug, Clone)]
pub struct Spec {
    prefix: String,
    subnet: Ipv4Net,
    mtu: u16,
    seed: u64,
    hosts: Vec<Host>,
    /// `links[from * n + to]`; the diagonal is unused (a host's own traffic stays on its `lo`).
    links: Vec<Link>,
    /// The configured RTT per pair, for printing.
    rtts: Vec<f64>,
}

/// What is wrong with a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the bed description is not valid TOML or has an unknown or mistyped field")]
    Toml(#[from] toml::de::Error),
    #[error(
        "{field} {value:?} is not accepted: use 1 to {max} characters of a-z, 0-9 and '-', starting with a letter"
    )]
    BadName {
        field: &'static str,
        value: String,
        max: usize,
    },
    #[error(
        "subnet {0:?} is not accepted: use an IPv4 network such as \"10.77.0.0/16\", prefix length 8 to 30"
    )]
    BadSubnet(String),
    #[error("a bed needs 2 to {MAX_HOSTS} hosts; this one has {0}")]
    HostCount(usize),
    #[error("host name {0:?} is used twice")]
    DuplicateHost(String),
    #[error("address {address} of host {host:?} is not an IPv4 address: {reason}")]
    BadAddress {
        host: String,
        address: String,
        reason: String,
    },
    #[error("address {address} is given to both {first:?} and {second:?}")]
    DuplicateAddress {
        address: Ipv4Addr,
        first: String,
        second: String,
    },
    #[error(
        "address {address} of host {host:?} is not a host address in the subnet {subnet} (nor its network or broadcast address)"
    )]
    AddressOutsideSubnet {
        host: String,
        address: Ipv4Addr,
        subnet: Ipv4Net,
    },
    #[error("path {index} names host {name:?}, which is not among the [[host]] entries")]
    UnknownHost { index: usize, name: String },
    #[error("path {index} joins host {name:?} to itself: a path needs two different hosts")]
    SelfPath { index: usize, name: String },
    #[error(
        "the path between {0:?} and {1:?} is given twice (paths are symmetric: one entry covers both directions)"
    )]
    DuplicatePath(String, String),
    #[error("{field} = {value} is out of range: accepted {accepted}")]
    OutOfRange {
        field: String,
        value: f64,
        accepted: &'static str,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(default = "default_prefix")]
    prefix: String,
    #[serde(default = "default_subnet")]
    subnet: String,
    #[serde(default = "default_mtu")]
    mtu: u16,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    default: RawPathValues,
    #[serde(default, rename = "host")]
    hosts: Vec<RawHost>,
    #[serde(default, rename = "path")]
    paths: Vec<RawPath>,
}

fn default_prefix() -> String {
    "fm".into()
}
fn default_subnet() -> String {
    "10.77.0.0/16".into()
}
fn default_mtu() -> u16 {
    1500
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: String,
    address: String,
    #[serde(default)]
    city: Option<String>,
    #[serde(default)]
    role: Role,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPathValues {
    #[serde(default)]
    rtt_ms: Option<f64>,
    #[serde(default)]
    loss: Option<f64>,
    #[serde(default)]
    rate_mbit: Option<f64>,
    #[serde(default)]
    queue_ms: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPath {
    between: [String; 2],
    #[serde(default)]
    rtt_ms: Option<f64>,
    #[serde(default)]
    loss: Option<f64>,
    #[serde(default)]
    rate_mbit: Option<f64>,
    #[serde(default)]
    queue_ms: Option<f64>,
}

impl RawPath {
    fn values(&self) -> RawPathValues {
        RawPathValues {
            rtt_ms: self.rtt_ms,
            loss: self.loss,
            rate_mbit: self.rate_mbit,
            queue_ms: self.queue_ms,
        }
    }
}

fn check_name(field: &'static str, value: &str, max: usize) -> Result<(), SpecError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::BadName {
            field,
            value: value.into(),
            max,
        })
    }
}

fn check_range(
    field: String,
    value: f64,
    ok: impl Fn(f64) -> bool,
    accepted: &'static str,
) -> Result<f64, SpecError> {
    if value.is_finite() && ok(value) {
        Ok(value)
    } else {
        Err(SpecError::OutOfRange {
            field,
            value,
            accepted,
        })
    }
}

/// Fill a path's values from the default, check them, and give (rtt_ms, one direction).
fn link(
    what: &str,
    values: RawPathValues,
    default: RawPathValues,
) -> Result<(f64, Link), SpecError> {
    let rtt = check_range(
        format!("{what}rtt_ms"),
        values.rtt_ms.or(default.rtt_ms).unwrap_or(0.0),
        |v| (0.0..=MAX_RTT_MS).contains(&v),
        "0 to 10000 (milliseconds)",
    )?;
    let loss = check_range(
        format!("{what}loss"),
        values.loss.or(default.loss).unwrap_or(0.0),
        |v| (0.0..=1.0).contains(&v),
        "0 to 1 (a probability per packet; 1 = the path is down)",
    )?;
    let rate_bps = match values.rate_mbit.or(default.rate_mbit) {
        None => None,
        Some(r) => {
            let r = check_range(
                format!("{what}rate_mbit"),
                r,
                |v| (0.01..=MAX_RATE_MBIT).contains(&v),
                "0.01 to 100000 (megabits per second), or leave it out for no limit",
            )?;
            Some((r * 1e6).round() as u64)
        }
    };
    let queue = check_range(
        format!("{what}queue_ms"),
        values
            .queue_ms
            .or(default.queue_ms)
            .unwrap_or(DEFAULT_QUEUE_MS),
        |v| (1.0..=MAX_QUEUE_MS).contains(&v),
        "1 to 10000 (milliseconds)",
    )?;
    Ok((
        rtt,
        Link {
            delay: Duration::from_secs_f64(rtt / 2000.0),
            loss,
            rate_bps,
            queue: Duration::from_secs_f64(queue / 1000.0),
        },
    ))
}

impl Spec {
    /// Read and check a bed description.
    pub fn from_toml(text: &str) -> Result<Spec, SpecError> {
        let raw: RawSpec = toml::from_str(text)?;
        check_name("prefix", &raw.prefix, 12)?;
        let subnet: Ipv4Net = raw
            .subnet
            .parse()
            .ok()
            .filter(|n: &Ipv4Net| (8..=30).contains(&n.prefix_len()))
            .ok_or_else(|| SpecError::BadSubnet(raw.subnet.clone()))?;
        if subnet.network() != subnet.addr() {
            return Err(SpecError::BadSubnet(raw.subnet));
        }
        check_range(
            "mtu".into(),
            raw.mtu.into(),
            |v| (576.0..=9000.0).contains(&v),
            "576 to 9000 (bytes)",
        )?;
        if !(2..=MAX_HOSTS).contains(&raw.hosts.len()) {
            return Err(SpecError::HostCount(raw.hosts.len()));
        }

        let mut hosts: Vec<Host> = Vec::with_capacity(raw.hosts.len());
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut by_addr: HashMap<Ipv4Addr, usize> = HashMap::new();
        for h in raw.hosts {
            check_name("host name", &h.name, 32)?;
            let address: Ipv4Addr = h.address.parse().map_err(|e| SpecError::BadAddress {
                host: h.name.clone(),
                address: h.address.clone(),
                reason: format!("{e}"),
            })?;
            if !subnet.contains(&address)
                || address == subnet.network()
                || address == subnet.broadcast()
            {
                return Err(SpecError::AddressOutsideSubnet {
                    host: h.name,
                    address,
                    subnet,
                });
            }
            let i = hosts.len();
            if by_name.insert(h.name.clone(), i).is_some() {
                return Err(SpecError::DuplicateHost(h.name));
            }
            if let Some(&first) = by_addr.get(&address) {
                return Err(SpecError::DuplicateAddress {
                    address,
                    first: hosts[first].name.clone(),
                    second: h.name,
                });
            }
            by_addr.insert(address, i);
            hosts.push(Host {
                name: h.name,
                address,
                city: h.city,
                role: h.role,
            });
        }

        let n = hosts.len();
        let (default_rtt, default_link) = link("default.", raw.default, RawPathValues::default())?;
        let mut links = vec![default_link; n * n];
        let mut rtts = vec![default_rtt; n * n];
        let mut seen = vec![false; n * n];
        for (index, p) in raw.paths.into_iter().enumerate() {
            let mut ends = [0usize; 2];
            for (k, name) in p.between.iter().enumerate() {
                ends[k] = *by_name.get(name).ok_or_else(|| SpecError::UnknownHost {
                    index: index + 1,
                    name: name.clone(),
                })?;
            }
            let [a, b] = ends;
            if a == b {
                return Err(SpecError::SelfPath {
                    index: index + 1,
                    name: p.between[0].clone(),
                });
            }
            if seen[a * n + b] {
                return Err(SpecError::DuplicatePath(
                    p.between[0].clone(),
                    p.between[1].clone(),
                ));
            }
            let what = format!("path {:?}–{:?}: ", p.between[0], p.between[1]);
            let (rtt, l) = link(&what, p.values(), raw.default)?;
            for (x, y) in [(a, b), (b, a)] {
                seen[x * n + y] = true;
                links[x * n + y] = l;
                rtts[x * n + y] = rtt;
            }
        }
        Ok(Spec {
            prefix: raw.prefix,
            subnet,
            mtu: raw.mtu,
            seed: raw.seed,
            hosts,
            links,
            rtts,
        })
    }

    /// Read and check a bed description from a file.
    pub fn from_file(path: &std::path::Path) -> Result<Spec, crate::BedError> {
        let text = std::fs::read_to_string(path).map_err(|e| crate::BedError::Read {
            path: path.to_path_buf(),
            source: e,
        })?;
        Spec::from_toml(&text).map_err(|e| crate::BedError::Spec {
            path: Some(path.to_path_buf()),
            source: e,
        })
    }

    /// Use another namespace prefix (for running several beds of one description at once).
    pub fn set_prefix(&mut self, prefix: &str) -> Result<(), SpecError> {
        check_name("prefix", prefix, 12)?;
        self.prefix = prefix.into();
        Ok(())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }
    pub fn mtu(&self) -> u16 {
        self.mtu
    }
    pub fn seed(&self) -> u64 {
        self.seed
    }
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }
    /// The index of a host by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }
    /// The network namespace of host `i`: `PREFIX-NAME`.
    pub fn netns(&self, i: usize) -> String {
        format!("{}-{}", self.prefix, self.hosts[i].name)
    }
    /// The link from host `from` to host `to` (indices).
    pub fn link(&self, from: usize, to: usize) -> Link {
        self.links[from * self.hosts.len() + to]
    }
    /// The configured RTT between two hosts, in milliseconds.
    pub fn rtt_ms(&self, a: usize, b: usize) -> f64 {
        self.rtts[a * self.hosts.len() + b]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        [default]
        rtt_ms = 40
        [[host]]
        name = "a"
        address = "10.77.0.1"
        city = "Paris, FR"
        [[host]]
        name = "b"
        address = "10.77.0.2"
        role = "entry"
        [[host]]
        name = "c"
        address = "10.77.1.3"
    "#;

    /// The error and its sources, as a program shows them.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s += &format!(": {c}");
            cur = c.source();
        }
        s
    }

    fn parse(extra: &str) -> Result<Spec, SpecError> {
        Spec::from_toml(&format!("{BASE}\n{extra}"))
    }

    #[test]
    fn paths_are_symmetric_with_half_the_rtt_each_way_and_the_default_elsewhere() {
        let s = parse(
            r#"
            [[path]]
            between = ["a", "b"]
            rtt_ms = 10
            loss = 0.01
            rate_mbit = 8
            "#,
        )
        .unwrap();
        assert_eq!(s.prefix(), "fm");
        assert_eq!(s.netns(1), "fm-b");
        assert_eq!(s.hosts()[1].role, Role::Entry);
        assert_eq!(s.hosts()[0].role, Role::Client);
        assert_eq!(s.hosts()[0].city.as_deref(), Some("Paris, FR"));
        for (x, y) in [(0, 1), (1, 0)] {
            let l = s.link(x, y);
            assert_eq!(l.delay, Duration::from_millis(5));
            assert_eq!(l.loss, 0.01);
            assert_eq!(l.rate_bps, Some(8_000_000));
            assert_eq!(l.queue, Duration::from_millis(100));
        }
        for (x, y) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
            let l = s.link(x, y);
            assert_eq!(l.delay, Duration::from_millis(20));
            assert_eq!((l.loss, l.rate_bps), (0.0, None));
        }
        assert_eq!(s.rtt_ms(0, 1), 10.0);
        assert_eq!(s.rtt_ms(2, 1), 40.0);
    }

    #[test]
    fn a_path_inherits_what_it_does_not_set_from_the_default() {
        let s = Spec::from_toml(
            r#"
            [default]
            rtt_ms = 30
            loss = 0.5
            [[host]]
            name = "a"
            address = "10.77.0.1"
            [[host]]
            name = "b"
            address = "10.77.0.2"
            [[path]]
            between = ["a", "b"]
            rate_mbit = 1
            "#,
        )
        .unwrap();
        let l = s.link(0, 1);
        assert_eq!(
            (l.delay, l.loss, l.rate_bps),
            (Duration::from_millis(15), 0.5, Some(1_000_000))
        );
    }

    #[test]
    fn mistakes_are_named() {
        let cases: &[(&str, &str)] = &[
            (
                "[[path]]\nbetween = [\"a\", \"x\"]",
                "host \"x\", which is not among",
            ),
            ("[[path]]\nbetween = [\"a\", \"a\"]", "to itself"),
            (
                "[[path]]\nbetween = [\"a\", \"b\"]\n[[path]]\nbetween = [\"b\", \"a\"]",
                "given twice",
            ),
            (
                "[[path]]\nbetween = [\"a\", \"b\"]\nloss = 1.5",
                "loss = 1.5 is out of range",
            ),
            (
                "[[path]]\nbetween = [\"a\", \"b\"]\nrtt_ms = -1",
                "rtt_ms = -1 is out of range",
            ),
            (
                "[[path]]\nbetween = [\"a\", \"b\"]\nrate_mbit = 0",
                "rate_mbit = 0 is out of range",
            ),
            (
                "[[path]]\nbetween = [\"a\", \"b\"]\njitter_ms = 3",
                "unknown field",
            ),
            (
                "[[host]]\nname = \"a\"\naddress = \"10.77.0.9\"",
                "\"a\" is used twice",
            ),
            (
                "[[host]]\nname = \"d\"\naddress = \"10.77.0.1\"",
                "given to both \"a\" and \"d\"",
            ),
            (
                "[[host]]\nname = \"d\"\naddress = \"10.78.0.1\"",
                "not a host address in the subnet",
            ),
            (
                "[[host]]\nname = \"d\"\naddress = \"10.77.255.255\"",
                "not a host address",
            ),
            (
                "[[host]]\nname = \"d\"\naddress = \"10.77.0\"",
                "not an IPv4 address",
            ),
            (
                "[[host]]\nname = \"Bad_Name\"\naddress = \"10.77.0.5\"",
                "host name \"Bad_Name\"",
            ),
            (
                "[[host]]\nname = \"d\"\naddress = \"10.77.0.5\"\nrole = \"server\"",
                "unknown variant",
            ),
        ];
        for (extra, want) in cases {
            let err = chain(&parse(extra).expect_err(extra));
            assert!(err.contains(want), "{extra:?}: {err:?} lacks {want:?}");
        }
        let top: &[(&str, &str)] = &[
            ("subnet = \"10.77.0.0/31\"", "prefix length 8 to 30"),
            ("subnet = \"10.77.0.1/16\"", "subnet \"10.77.0.1/16\""),
            ("prefix = \"-x\"", "prefix \"-x\""),
            ("mtu = 100", "mtu = 100 is out of range"),
        ];
        for (first, want) in top {
            let err = Spec::from_toml(&format!("{first}\n{BASE}"))
                .expect_err(first)
                .to_string();
            assert!(err.contains(want), "{first:?}: {err:?} lacks {want:?}");
        }
        let one = "[[host]]\nname = \"a\"\naddress = \"10.77.0.1\"";
        assert!(matches!(Spec::from_toml(one), Err(SpecError::HostCount(1))));
    }

    #[test]
    fn the_prefix_can_be_changed_but_only_to_a_valid_name() {
        let mut s = parse("").unwrap();
        s.set_prefix("t42").unwrap();
        assert_eq!(s.netns(2), "t42-c");
        assert!(s.set_prefix("no spaces").is_err());
        assert_eq!(s.prefix(), "t42");
    }
}
