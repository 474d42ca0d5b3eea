//! The log storage over months: checking that it can take new broadcasts, and deleting what is
//! no longer needed.
//!
//! **Storage check.** Every `storage_check_ms` the server checks the filesystem of its logs:
//! free space (`statvfs`) must be at least `min_free_bytes`, and a small file must be written,
//! fsynced and removed. While a check fails — or after a log write or fsync failed with
//! `ENOSPC`, `EDQUOT`, `EIO` or `EROFS` ([`crate::node::Node::note_storage_error`]) — the
//! server takes no new broadcast (ERROR `going_away` / RTMP and HTTP refusals naming the
//! reason), `/readyz` answers 503, and its heartbeat says `disk: full|failing` with
//! `state: draining`, so the director assigns it nothing. Sessions whose writes fail end with
//! that error and their devices carry on over their other path; sessions whose writes still
//! succeed go on. The first check that passes again clears the state: the server recovers by
//! itself. Logs that a failure left in an unknown state (a failed fsync poisons a log) and that
//! no session uses are released then, so a device resuming them reopens them from disk, where
//! recovery keeps exactly the records that were durable — the ones acknowledged.
//!
//! **Retention.** Each log on disk is one broadcast, `<data_dir>/<stream>/<broadcast>/`. A
//! broadcast *in use* is one loaded in the hub: a publisher's session, a viewer or a relay feed
//! on it, or released less than `release_after_s` ago ([`crate::release_idle`]). Retention never
//! touches a broadcast in use as a whole (a long one loses whole segments older than
//! `retention_secs` or over `retention_bytes`, never its active segment, as before). A
//! broadcast not in use is deleted entirely when its newest data is older than
//! `retention_secs`; and while the logs exceed `disk_budget_bytes`, or the filesystem has less
//! than `min_free_bytes` free, the broadcasts not in use are deleted oldest first until it fits.
//! Deletion holds the node's opening lock (the one every open from disk takes), so a viewer or
//! device cannot open a broadcast while it goes: the directory is renamed away under the lock
//! and removed after.
//!
//! **What not.** No archive: logs are the ingest network's buffer for catch-up and failover,
//! not a recording service.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::hub;
use crate::node::Node;

/// Prefix of directories on their way out (renamed under the opening lock, removed after).
const TRASH: &str = ".deleting-";
/// Name of the storage check's probe file.
const PROBE: &str = ".storage-check";

/// Free bytes for unprivileged writers on the filesystem of `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// One storage check (blocking): `Ok(free bytes)` or why new broadcasts cannot be stored,
/// starting with `disk full` or `disk failing` (the heartbeat's `disk` field is read from it).
pub fn check(dir: &Path, min_free: u64) -> Result<u64, String> {
    let failing = |what: &str, e: std::io::Error| {
        let full = matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT));
        format!(
            "disk {}: {what} in {}: {e}",
            if full { "full" } else { "failing" },
            dir.display()
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| failing("creating the data directory", e))?;
    let free = free_bytes(dir).map_err(|e| failing("statvfs", e))?;
    if free < min_free {
        return Err(format!(
            "disk full: {free} bytes free in {}, below min_free_bytes ({min_free})",
            dir.display()
        ));
    }
    let probe = dir.join(PROBE);
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&probe)?;
        f.write_all(&[0u8; 4096])?;
        f.sync_all()?;
        Ok(())
    };
    let r = write();
    let _ = std::fs::remove_file(&probe);
    r.map_err(|e| failing("test write", e))?;
    Ok(free)
}

/// Run the storage check and apply its verdict. Returns the free bytes when it passed.
pub fn check_and_apply(node: &Node) -> Option<u64> {
    let verdict = check(&node.cfg.data_dir, node.cfg.min_free_bytes);
    node.metrics.storage_checks.fetch_add(1, Ordering::Relaxed);
    let mut g = node.storage.lock().unwrap_or_else(|e| e.into_inner());
    match verdict {
        Ok(free) => {
            node.metrics.disk_free_bytes.store(free, Ordering::Relaxed);
            if let Some(was) = g.take() {
                drop(g);
                tracing::warn!(was = %was, free, "log storage recovered: taking broadcasts again");
                release_poisoned(node);
            }
            Some(free)
        }
        Err(why) => {
            if let Ok(free) = free_bytes(&node.cfg.data_dir) {
                node.metrics.disk_free_bytes.store(free, Ordering::Relaxed);
            }
            if g.as_deref() != Some(why.as_str()) {
                tracing::error!(reason = %why, "log storage cannot take new broadcasts");
            }
            *g = Some(why);
            None
        }
    }
}

/// Release the logs a storage failure poisoned and that no session uses: the next open recovers
/// them from disk.
fn release_poisoned(node: &Node) {
    for s in node.hub.ingested() {
        let poisoned = match &s.source {
            hub::Source::Ingest(log) => log.lock().unwrap_or_else(|e| e.into_inner()).is_poisoned(),
            hub::Source::Relay => false,
        };
        if poisoned && s.live_sessions.load(Ordering::SeqCst) == 0 && node.hub.remove_ingest(&s) {
            tracing::info!(stream = %s.name, broadcast = %s.broadcast, "released a log left unknown by a storage failure");
        }
    }
}

/// One broadcast's log on disk.
#[derive(Clone, Debug)]
pub struct OnDisk {
    pub stream: String,
    pub broadcast: proto::BroadcastId,
    pub bytes: u64,
    /// When its newest file was last written.
    pub newest: SystemTime,
}

/// Every broadcast log under the data directory, with its size and age (blocking).
pub fn scan(node: &Node) -> Vec<OnDisk> {
    let Ok(list) = crate::broadcasts_on_disk(&node.log_config) else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|(stream, broadcast)| {
            let dir = node.cfg.data_dir.join(&stream).join(broadcast.as_str());
            let (bytes, newest) = dir_usage(&dir).ok()?;
            Some(OnDisk {
                stream,
                broadcast,
                bytes,
                newest,
            })
        })
        .collect()
}

fn dir_usage(dir: &Path) -> std::io::Result<(u64, SystemTime)> {
    let mut bytes = 0u64;
    let mut newest = SystemTime::UNIX_EPOCH;
    for e in std::fs::read_dir(dir)? {
        let m = e?.metadata()?;
        if m.is_file() {
            bytes = bytes.saturating_add(m.len());
            newest = newest.max(m.modified()?);
        }
    }
    Ok((bytes, newest))
}

/// What one retention pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub deleted: usize,
    pub deleted_bytes: u64,
    /// Bytes of logs left.
    pub bytes: u64,
    /// Broadcasts left on disk.
    pub broadcasts: usize,
}

/// Which broadcasts not in use to delete: too old, then oldest first while over the budget or
/// short of free space. `free` is the filesystem's free bytes (None: unknown, not used).
pub fn victims(
    on_disk: &[OnDisk],
    in_use: impl Fn(&OnDisk) -> bool,
    now: SystemTime,
    retention: Option<Duration>,
    budget: Option<u64>,
    min_free: u64,
    free: Option<u64>,
) -> Vec<usize> {
    let mut idle: Vec<usize> = (0..on_disk.len())
        .filter(|&i| !in_use(&on_disk[i]))
        .collect();
    idle.sort_by_key(|&i| on_disk[i].newest);
    let mut total: u64 = on_disk.iter().map(|d| d.bytes).sum();
    let mut free = free;
    let mut out = Vec::new();
    for i in idle {
        let d = &on_disk[i];
        let too_old =
            retention.is_some_and(|r| now.duration_since(d.newest).is_ok_and(|age| age > r));
        let over_budget = budget.is_some_and(|b| total > b);
        let short = free.is_some_and(|f| f < min_free);
        if !(too_old || over_budget || short) {
            // Sorted oldest first: nothing younger is too old, and the space is enough.
            break;
        }
        out.push(i);
        total = total.saturating_sub(d.bytes);
        free = free.map(|f| f.saturating_add(d.bytes));
    }
    out
}

/// One retention pass: per-log segment retention of the broadcasts in use, then whole
/// broadcasts not in use (see the module doc). `free`: the last storage check's free bytes.
pub async fn retention_pass(node: &Arc<Node>, free: Option<u64>) -> Pass {
    // Segment retention inside the logs held (long broadcasts).
    for s in node.hub.ingested() {
        let s2 = s.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let hub::Source::Ingest(log) = &s2.source {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = log.enforce_retention(SystemTime::now()) {
                    tracing::warn!(stream = %s2.name, error = %e, "retention failed");
                }
            }
        })
        .await;
    }
    let n2 = node.clone();
    let Ok(on_disk) = tokio::task::spawn_blocking(move || scan(&n2)).await else {
        return Pass::default();
    };
    let cfg = &node.cfg;
    let picked = victims(
        &on_disk,
        |d| node.hub.get_ingest(&d.stream, &d.broadcast).is_some(),
        SystemTime::now(),
        (cfg.retention_secs > 0).then(|| Duration::from_secs(cfg.retention_secs)),
        (cfg.disk_budget_bytes > 0).then_some(cfg.disk_budget_bytes),
        cfg.min_free_bytes,
        free,
    );
    let mut pass = Pass {
        bytes: on_disk.iter().map(|d| d.bytes).sum(),
        broadcasts: on_disk.len(),
        ..Pass::default()
    };
    for i in picked {
        let d = &on_disk[i];
        if delete(node, &d.stream, &d.broadcast).await {
            node.metrics
                .retention_deleted
                .fetch_add(1, Ordering::Relaxed);
            node.metrics
                .retention_deleted_bytes
                .fetch_add(d.bytes, Ordering::Relaxed);
            pass.deleted += 1;
            pass.deleted_bytes += d.bytes;
            pass.bytes = pass.bytes.saturating_sub(d.bytes);
            pass.broadcasts -= 1;
            tracing::info!(stream = %d.stream, broadcast = %d.broadcast, bytes = d.bytes, "retention deleted a broadcast");
        }
    }
    let m = &node.metrics;
    m.log_bytes.store(pass.bytes, Ordering::Relaxed);
    m.broadcasts_on_disk
        .store(pass.broadcasts as u64, Ordering::Relaxed);
    pass
}

/// Delete one broadcast's log unless it is in use: renamed away under the opening lock, then
/// removed. Returns whether it was deleted.
pub async fn delete(node: &Arc<Node>, stream: &str, broadcast: &proto::BroadcastId) -> bool {
    let stream_dir = node.cfg.data_dir.join(stream);
    let dir = stream_dir.join(broadcast.as_str());
    let trash = {
        let _one = node.opening.lock().await;
        if node.hub.get_ingest(stream, broadcast).is_some() {
            return false;
        }
        let trash = node
            .cfg
            .data_dir
            .join(format!("{TRASH}{stream}-{broadcast}"));
        if let Err(e) = std::fs::rename(&dir, &trash) {
            tracing::warn!(dir = %dir.display(), error = %e, "retention could not delete a broadcast");
            return false;
        }
        // The stream's directory goes with its last broadcast (fails harmlessly otherwise).
        let _ = std::fs::remove_dir(&stream_dir);
        trash
    };
    let _ = tokio::task::spawn_blocking(move || remove_trash(&trash)).await;
    true
}

fn remove_trash(p: &PathBuf) {
    if let Err(e) = std::fs::remove_dir_all(p) {
        tracing::warn!(dir = %p.display(), error = %e, "could not remove a deleted broadcast's files");
    }
}

/// Remove what a deletion interrupted by a crash left (at start-up).
pub fn clean_trash(data_dir: &Path) {
    let Ok(rd) = std::fs::read_dir(data_dir) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(TRASH) {
            remove_trash(&e.path());
        }
    }
}

/// The server's housekeeping until `stop`: the storage check every `storage_check_ms`, idle
/// broadcasts released every 5 s, retention every `retention_interval_ms` — at every check
/// while the storage is short.
pub async fn run(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let period = Duration::from_millis(node.cfg.storage_check_ms);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_release = tokio::time::Instant::now();
    let mut last_retention: Option<tokio::time::Instant> = None;
    let every = Duration::from_millis(node.cfg.retention_interval_ms);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let n2 = node.clone();
        let free = tokio::task::spawn_blocking(move || check_and_apply(&n2))
            .await
            .ok()
            .flatten();
        let short = free.is_none_or(|f| f < node.cfg.min_free_bytes);
        if last_release.elapsed() >= Duration::from_secs(5).min(every) || short {
            last_release = tokio::time::Instant::now();
            let n2 = node.clone();
            let _ = tokio::task::spawn_blocking(move || crate::release_idle(&n2)).await;
        }
        if short || last_retention.is_none_or(|t| t.elapsed() >= every) {
            last_retention = Some(tokio::time::Instant::now());
            let free = match free {
                Some(f) => Some(f),
                None => free_bytes(&node.cfg.data_dir).ok(),
            };
            let pass = retention_pass(&node, free).await;
            if pass.deleted > 0 {
                // Space came back: check again now rather than at the next tick.
                let n2 = node.clone();
                let _ = tokio::task::spawn_blocking(move || check_and_apply(&n2)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u64, bytes: u64, age_s: u64, now: SystemTime) -> OnDisk {
        OnDisk {
            stream: format!("s{n}"),
            broadcast: proto::BroadcastId::new(n, n as u32),
            bytes,
            newest: now - Duration::from_secs(age_s),
        }
    }

    #[test]
    fn victims_are_old_or_over_budget_oldest_first_and_never_in_use() {
        let now = SystemTime::now();
        let disk = vec![
            d(0, 100, 5000, now), // old, in use
            d(1, 100, 4000, now), // old
            d(2, 100, 50, now),
            d(3, 100, 10, now),
            d(4, 100, 100, now),
        ];
        let in_use = |x: &OnDisk| x.stream == "s0";
        let hour = Some(Duration::from_secs(3600));
        // Age alone: only the old one not in use.
        assert_eq!(victims(&disk, in_use, now, hour, None, 0, None), vec![1]);
        // A budget of 250 bytes of 500: three go, oldest first, never the one in use.
        assert_eq!(
            victims(&disk, in_use, now, hour, Some(250), 0, None),
            vec![1, 4, 2]
        );
        // Free space short by 150 bytes: two go.
        assert_eq!(
            victims(&disk, in_use, now, None, None, 1000, Some(850)),
            vec![1, 4]
        );
        // Everything in use: nothing, whatever the pressure.
        assert!(victims(&disk, |_| true, now, hour, Some(1), u64::MAX, Some(0)).is_empty());
        // No retention, no budget, enough space: nothing.
        assert!(victims(&disk, in_use, now, None, None, 10, Some(10)).is_empty());
    }

    #[test]
    fn the_storage_check_reports_short_space_as_full() {
        let dir = tempfile::tempdir().unwrap();
        let free = check(dir.path(), 0).unwrap();
        assert!(free > 0);
        let e = check(dir.path(), u64::MAX).unwrap_err();
        assert!(
            e.starts_with("disk full") && e.contains("min_free_bytes"),
            "{e}"
        );
        assert!(!dir.path().join(PROBE).exists());
    }
}
