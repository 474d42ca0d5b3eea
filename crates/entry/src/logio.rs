//! Writing an ingest stream's durable log from async code, cheaply.
//!
//! **Appends** are `write(2)`s into the page cache (a few µs): they run inline on the calling
//! task, holding the stream's log mutex only for that. Under `fsync = "always"` an append also
//! fsyncs, so it goes to a blocking thread instead. Before this, every chunk (native) or every
//! read batch (RTMP, HTTP push) took a trip to a blocking thread and back — two thread wake-ups
//! per chunk, the largest CPU cost of an ingest server after the kernel's own TCP work.
//!
//! **Syncs** (`sync`) fsync what was written on a blocking thread *without* holding the log
//! ([`StreamLog::begin_sync`] → [`chunklog::SyncJob::run`] → [`StreamLog::finish_sync`]), so
//! appends and viewers' reads go on during the fsync.
//!
//! **How often.** Native sessions sync every `fsync` interval and acknowledge what is durable:
//! the device keeps everything unacknowledged and resends it, so nothing acknowledged is lost.
//! RTMP and HTTP push have no acknowledgement that waits on the disk (an encoder never resends),
//! so under `interval` their logs sync every [`UNACKED_SYNC`] instead of every interval: a crash
//! of the *machine* (not of the process: written data is in the kernel) can lose up to that much
//! of such a stream at this server, which the other path of a dual publish still holds.

use crate::hub::{Source, Stream};
use crate::node::Node;
use chunklog::{FsyncPolicy, StreamLog};
use std::time::Duration;

/// How often the logs of protocols without acknowledgements (RTMP, HTTP push) are fsync'd under
/// the `interval` policy.
pub const UNACKED_SYNC: Duration = Duration::from_secs(1);

/// Run `f` on the stream's log: inline, or on a blocking thread when every append fsyncs.
pub(crate) async fn with_log<R: Send + 'static>(
    node: &Node,
    stream: &std::sync::Arc<Stream>,
    f: impl FnOnce(&mut StreamLog) -> R + Send + 'static,
) -> Result<R, String> {
    let run = |s: &Stream, f: Box<dyn FnOnce(&mut StreamLog) -> R + Send>| match &s.source {
        Source::Ingest(log) => Ok(f(&mut log.lock().unwrap_or_else(|e| e.into_inner()))),
        Source::Relay => Err("the stream is not ingested here".to_string()),
    };
    if node.log_config.fsync == FsyncPolicy::Always {
        let s = stream.clone();
        tokio::task::spawn_blocking(move || run(&s, Box::new(f)))
            .await
            .map_err(|e| format!("log task failed: {e}"))?
    } else {
        run(stream, Box::new(f))
    }
}

/// Under the `interval` policy, fsync what the stream's log holds so far, off the async workers
/// and without holding the log (the other policies need no sync: `always` fsyncs each append,
/// `never` none). Returns the last durable sequence number.
pub(crate) async fn sync(node: &Node, stream: &Stream) -> Result<Option<u64>, String> {
    let Source::Ingest(log) = &stream.source else {
        return Err("the stream is not ingested here".into());
    };
    let job = {
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(node.log_config.fsync, FsyncPolicy::Interval(_)) {
            return Ok(log.durable_through());
        }
        match log.begin_sync().map_err(|e| e.to_string())? {
            Some(job) => job,
            None => return Ok(log.durable_through()),
        }
    };
    let result = tokio::task::spawn_blocking(move || job.run())
        .await
        .map_err(|e| format!("log sync task failed: {e}"))?;
    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
    log.finish_sync(result).map_err(|e| e.to_string())?;
    Ok(log.durable_through())
}

/// The fsync clock of a protocol without acknowledgements (RTMP, HTTP push): under `interval`,
/// its stream's log is synced every [`UNACKED_SYNC`].
#[derive(Debug)]
pub(crate) struct UnackedSync(tokio::time::Instant);

impl UnackedSync {
    pub fn new() -> Self {
        Self(tokio::time::Instant::now())
    }

    /// Sync `stream`'s log if the policy is `interval` and [`UNACKED_SYNC`] has passed.
    pub async fn tick(&mut self, node: &Node, stream: &Stream) -> Result<(), String> {
        if matches!(node.log_config.fsync, FsyncPolicy::Interval(_))
            && self.0.elapsed() >= UNACKED_SYNC
        {
            sync(node, stream).await?;
            self.0 = tokio::time::Instant::now();
        }
        Ok(())
    }
}

/// Fsync a broadcast's log from a blocking context (release, shutdown).
pub(crate) fn sync_blocking(stream: &Stream) -> Result<(), String> {
    match &stream.source {
        Source::Ingest(log) => log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sync()
            .map_err(|e| e.to_string()),
        Source::Relay => Ok(()),
    }
}
