//! A wide-area test bed on one machine: hosts in network namespaces, joined by a user-space
//! forwarder that gives every pair of hosts its own round-trip time, loss and bottleneck.
//!
//! **Why.** Everything else in firstmile runs on 127.0.0.x, where every path takes microseconds,
//! so no test can show steering at work: that the nearest entry server may be badly routed and a
//! farther one fast, that the devices' probes see it, that the entry servers' TCP_INFO records
//! it. Kernel netem is not available on the machines this project runs on, so the delays are
//! made in user space — at the packet level, so TCP stays end to end: a connection's handshake,
//! congestion control, TCP_INFO on both ends and any probe see the emulated path. (A TCP proxy
//! would terminate TCP, and TCP_INFO would measure the proxy hop.)
//!
//! **How.** Each host is a network namespace `PREFIX-NAME` with a loopback and one TUN device,
//! `wan0`, holding the host's address in the bed's subnet (10.77.0.0/16 by default), so every
//! other host is reached through `wan0`. The TUN devices are created inside their namespaces by
//! a thread that has entered them, and their descriptors are all held by this process: the
//! [`forward`] module reads each packet a host sends, looks up the destination host by address,
//! and writes the packet into that host's `wan0` after the path's one-way delay (half the RTT),
//! unless the path's loss or bottleneck drops it. Nothing is configured in the machine's own
//! namespace: no routes, no veth pairs, no iptables.
//!
//! ```text
//!  fm-dev (10.77.1.1)        this process              fm-fra (10.77.0.2)
//!   app ─ wan0 ═══ read ─► admit ─► delay queue ─► write ═══ wan0 ─ firstmile entry
//!                 (per host)   (loss, rate, delay)   (one writer)
//! ```
//!
//! **Use.** [`Spec`] reads a bed description (TOML; see [`spec`]). [`Bed::up`] creates it;
//! dropping the [`Bed`] (or [`Bed::down`]) stops the forwarder, kills what still runs in the
//! hosts and removes the namespaces. [`Bed::command`] gives a `std::process::Command` that runs
//! in a host; [`Bed::enter`] runs a closure on a thread inside a host, so sockets it makes live
//! there. The `wanbed` binary does the same by hand (`wanbed up beds/steering.toml`, then
//! `ip netns exec fm-dev …`).
//!
//! **Needs** root (or CAP_NET_ADMIN and CAP_SYS_ADMIN), `/dev/net/tun` and iproute2's `ip`.
//! [`check_support`] says whether this machine has them, and why not.
//!
//! **Not here:** IPv6 (dropped and counted), jitter and reordering, asymmetric paths, a link
//! from the machine's own namespace into the bed (run clients inside a host instead), more than
//! more than one forwarder thread for writing (one TCP flow reached 3.1 Gbit/s, 270,000 packets
//! a second, in a release build on a 2-core machine: enough for a test bed, not for line-rate
//! benchmarks).

pub mod forward;
pub mod netns;
pub mod packet;
pub mod shape;
pub mod spec;

pub use forward::{HostCounters, PathCounters, Stats};
pub use spec::{Host, Link, Role, Spec, SpecError};

use std::ffi::OsStr;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The name of every host's link to the forwarder.
pub const LINK: &str = "wan0";

/// Why a bed cannot be made or used. Errors that wrap another give it as their `source()`
/// (not in their own message): print the chain.
#[derive(Debug, thiserror::Error)]
pub enum BedError {
    #[error("cannot read the bed description {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad bed description{}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Spec {
        path: Option<PathBuf>,
        source: SpecError,
    },
    /// This machine (or this user) cannot host a bed; nothing the description can change.
    #[error("this machine cannot host a wide-area bed: {0}")]
    Unavailable(String),
    #[error(
        "network namespace {0} exists already: another bed with this prefix is running, or one was killed without tearing down (`wanbed down FILE` or `ip netns del {0}` removes it)"
    )]
    NamespaceExists(String),
    #[error("`{command}` failed: {detail}")]
    Ip { command: String, detail: String },
    #[error("cannot create the link of host {host:?}: {detail}")]
    Tun { host: String, detail: String },
    #[error("{what}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("no host {0:?} in this bed")]
    UnknownHost(String),
}

fn is_root() -> Result<(), BedError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        Ok(())
    } else {
        Err(BedError::Unavailable(format!(
            "not root (effective uid {euid}): network namespaces and TUN devices need root"
        )))
    }
}

fn has_tun() -> Result<(), BedError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map(drop)
        .map_err(|e| BedError::Unavailable(format!("cannot open /dev/net/tun: {e}")))
}

/// Whether this machine can host a bed: root, `/dev/net/tun`, and `ip netns` able to make and
/// remove a namespace (tried). The error says what is missing.
pub fn check_support() -> Result<(), BedError> {
    static PROBE: AtomicU32 = AtomicU32::new(0);
    is_root()?;
    has_tun()?;
    let name = format!(
        "wanbed-probe-{}-{}",
        std::process::id(),
        PROBE.fetch_add(1, Ordering::Relaxed)
    );
    netns::add(&name).map_err(|e| BedError::Unavailable(format!("{e}")))?;
    netns::delete(&name).map_err(|e| BedError::Unavailable(format!("{e}")))
}

struct Namespace {
    name: String,
    file: Arc<File>,
}

/// A running bed. Dropping it tears it down (see [`Bed::down`]).
pub struct Bed {
    spec: Spec,
    namespaces: Vec<Namespace>,
    forwarder: Option<forward::Forwarder>,
}

impl std::fmt::Debug for Bed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bed")
            .field("prefix", &self.spec.prefix())
            .field(
                "namespaces",
                &self.namespaces.iter().map(|n| &n.name).collect::<Vec<_>>(),
            )
            .field("forwarder", &self.forwarder)
            .finish()
    }
}

impl Bed {
    /// Create the hosts' namespaces and links and start forwarding. On an error, whatever was
    /// created is removed again.
    pub fn up(spec: Spec) -> Result<Bed, BedError> {
        is_root()?;
        has_tun()?;
        let mut bed = Bed {
            spec,
            namespaces: Vec::new(),
            forwarder: None,
        };
        let n = bed.spec.hosts().len();
        for i in 0..n {
            let name = bed.spec.netns(i);
            netns::add(&name)?;
            let file = match netns::open(&name) {
                Ok(f) => Arc::new(f),
                Err(e) => {
                    let _ = netns::delete(&name);
                    return Err(e);
                }
            };
            bed.namespaces.push(Namespace { name, file });
        }
        let mut devices = Vec::with_capacity(n);
        for i in 0..n {
            devices.push(bed.make_link(i)?);
        }
        let forwarder =
            forward::Forwarder::start(&bed.spec, devices).map_err(|e| BedError::Io {
                what: "cannot start the forwarder".into(),
                source: e,
            })?;
        bed.forwarder = Some(forwarder);
        Ok(bed)
    }

    /// Bring up `lo` and create `wan0` inside host `i`.
    fn make_link(&self, i: usize) -> Result<tun::Device, BedError> {
        let host = &self.spec.hosts()[i];
        let ns = &self.namespaces[i];
        netns::ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        let mut cfg = tun::Configuration::default();
        cfg.tun_name(LINK)
            .address(host.address)
            .netmask(self.spec.subnet().netmask())
            .mtu(self.spec.mtu())
            .up();
        let made = netns::run_in(&ns.file, || tun::create(&cfg)).map_err(|e| BedError::Io {
            what: format!("cannot enter network namespace {}", ns.name),
            source: e,
        })?;
        made.map_err(|e| BedError::Tun {
            host: host.name.clone(),
            detail: e.to_string(),
        })
    }

    /// The description this bed was made from.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    fn index(&self, host: &str) -> Result<usize, BedError> {
        self.spec
            .index(host)
            .ok_or_else(|| BedError::UnknownHost(host.into()))
    }

    /// A host's address.
    pub fn address(&self, host: &str) -> Result<Ipv4Addr, BedError> {
        Ok(self.spec.hosts()[self.index(host)?].address)
    }

    /// A host's network namespace (for `ip netns exec NAME …`).
    pub fn netns(&self, host: &str) -> Result<&str, BedError> {
        Ok(&self.namespaces[self.index(host)?].name)
    }

    /// A command that runs `program` inside `host`'s network namespace (entered between fork and
    /// exec; the command keeps its own handle on the namespace, so it may outlive the bed's
    /// borrow). Its child is the caller's to wait for; whatever still runs in the host when the
    /// bed is torn down is killed.
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> Result<Command, BedError> {
        let ns = self.namespaces[self.index(host)?].file.clone();
        let mut c = Command::new(program);
        // SAFETY: the closure only calls setns(2), which is async-signal-safe, on a descriptor
        // the closure owns (an Arc kept alive by the Command).
        unsafe {
            c.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Ok(c)
    }

    /// Run `f` on a thread inside `host`'s network namespace and give its result. Sockets made
    /// there stay in the host: bind a listener or connect a client this way, then use it from
    /// any thread.
    pub fn enter<T: Send, F: FnOnce() -> T + Send>(&self, host: &str, f: F) -> Result<T, BedError> {
        let ns = &self.namespaces[self.index(host)?];
        netns::run_in(&ns.file, f).map_err(|e| BedError::Io {
            what: format!("cannot enter network namespace {}", ns.name),
            source: e,
        })
    }

    /// The forwarder's counters so far.
    pub fn stats(&self) -> Stats {
        self.forwarder
            .as_ref()
            .map(|f| f.stats())
            .unwrap_or_else(|| forward::Forwarder::empty_stats(&self.spec))
    }

    /// Tear the bed down: stop the forwarder (the links disappear), kill every process still in
    /// a host (SIGKILL: a bed is for tests, and a process left in a namespace would keep it
    /// alive), remove the namespaces. Gives the final counters, or every step that failed.
    pub fn down(mut self) -> Result<Stats, BedError> {
        let (stats, problems) = self.teardown();
        match problems.into_iter().next() {
            None => Ok(stats),
            Some(e) => Err(e),
        }
    }

    fn teardown(&mut self) -> (Stats, Vec<BedError>) {
        let stats = match self.forwarder.take() {
            Some(mut f) => f.stop(),
            None => forward::Forwarder::empty_stats(&self.spec),
        };
        let mut problems = Vec::new();
        let me = std::process::id() as i32;
        for ns in self.namespaces.drain(..) {
            match netns::pids(&ns.name) {
                Ok(pids) => {
                    for pid in pids.into_iter().filter(|&p| p != me && p > 1) {
                        // SAFETY: kill has no memory-safety preconditions.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                Err(e) => problems.push(e),
            }
            drop(ns.file);
            if let Err(e) = netns::delete(&ns.name) {
                problems.push(e);
            }
        }
        (stats, problems)
    }

    /// Remove what a bed of this description left behind when it was killed before tearing
    /// down: processes in its hosts and its namespaces. Gives the namespaces removed.
    pub fn clear(spec: &Spec) -> Result<Vec<String>, BedError> {
        let mut removed = Vec::new();
        for i in 0..spec.hosts().len() {
            let name = spec.netns(i);
            if !netns::path(&name).exists() {
                continue;
            }
            let me = std::process::id() as i32;
            for pid in netns::pids(&name)?
                .into_iter()
                .filter(|&p| p != me && p > 1)
            {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            netns::delete(&name)?;
            removed.push(name);
        }
        Ok(removed)
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if self.forwarder.is_none() && self.namespaces.is_empty() {
            return;
        }
        let (_, problems) = self.teardown();
        for p in problems {
            eprintln!("wanbed: tearing down: {p}");
        }
    }
}
