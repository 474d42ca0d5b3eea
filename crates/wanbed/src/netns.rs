//! Network namespaces: named ones made and removed with iproute2's `ip netns` (so people can
//! `ip netns exec NAME …` into a host by hand), entered with setns(2) on a thread or in a child
//! before it execs.
//!
//! A named namespace is a bind mount at `/run/netns/NAME`; it lasts until `ip netns del` and
//! while any process or open file refers to it. `ip netns add` and `del` are serialised within
//! this process: iproute2 makes `/run/netns` a shared mount on first use, and two first uses at
//! once (parallel tests) could stack mounts.
//!
//! Not here: mount namespaces. `ip netns exec` also bind-mounts `/etc/netns/NAME/*` over
//! `/etc` and remounts `/sys`; commands started by [`crate::Bed::command`] only change their
//! network namespace, which is all the bed needs.

use crate::BedError;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

static NETNS_LOCK: Mutex<()> = Mutex::new(());

/// Where iproute2 keeps named namespaces.
pub fn path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Run `ip ARGS`; its standard output, or an error with its standard error.
pub fn ip(args: &[&str]) -> Result<String, BedError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| BedError::Unavailable(format!("cannot run `ip` (iproute2): {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(BedError::Ip {
            command: format!("ip {}", args.join(" ")),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// Create a named namespace; an error if one of that name exists already.
pub fn add(name: &str) -> Result<(), BedError> {
    let _g = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if path(name).exists() {
        return Err(BedError::NamespaceExists(name.into()));
    }
    ip(&["netns", "add", name]).map(drop)
}

/// Remove a named namespace (the namespace itself ends when nothing refers to it any more).
pub fn delete(name: &str) -> Result<(), BedError> {
    let _g = NETNS_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    ip(&["netns", "del", name]).map(drop)
}

/// Open a named namespace, to enter it later.
pub fn open(name: &str) -> Result<File, BedError> {
    File::open(path(name)).map_err(|e| BedError::Io {
        what: format!(
            "cannot open network namespace {name} ({})",
            path(name).display()
        ),
        source: e,
    })
}

/// Move the calling thread into a namespace. Only for a thread of its own: it never goes back.
pub fn enter(ns: &File) -> std::io::Result<()> {
    // SAFETY: setns takes a descriptor we own (borrowed for the call) and a constant.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Run `f` on a new thread that has entered `ns`. Sockets and devices it creates belong to
/// that namespace for good, whichever thread uses them afterwards.
pub fn run_in<T: Send, F: FnOnce() -> T + Send>(ns: &File, f: F) -> std::io::Result<T> {
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            enter(ns)?;
            Ok(f())
        });
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The processes whose network namespace is `name` (`ip netns pids`).
pub fn pids(name: &str) -> Result<Vec<i32>, BedError> {
    Ok(ip(&["netns", "pids", name])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}
