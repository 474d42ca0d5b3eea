//! Relaying: a node that does not hold a stream pulls it from BOTH ingest servers at once and
//! merges the two copies by sequence number, first arrival wins.
//!
//! One relay per stream per node, whatever the number of local viewers ([`ensure`] creates it
//! under the hub's lock). Each upstream is a task pulling `GET {upstream}/v1/streams/{id}/chunks`
//! (DATA frames, CRC-checked, then END) from the merged position on, so when one upstream dies
//! the other has already delivered — or will deliver — every chunk: viewers see no gap and no
//! duplicate. A dead upstream is retried with backoff, asking the director again each time
//! (it may have been replaced). When no upstream has been reachable for `relay_give_up_ms`, the
//! stream is *lost*: its viewers get the end of their response instead of a hang. A relay with no
//! viewers left stops after a grace period.

use crate::hub::{Chunk, Source, Stream};
use crate::node::Node;
use bytes::BytesMut;
use futures_util::StreamExt;
use proto::api::StreamInfo;
use proto::{BroadcastId, Decoder, Frame};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a stream cannot be relayed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("stream {0} is not known here and no director is configured to find it")]
    NoDirector(String),
    #[error("stream {0} is unknown to the director")]
    Unknown(String),
    #[error("stream {0} has no reachable ingest server yet")]
    NoUpstream(String),
    #[error("stream {0} is not live yet")]
    NotLive(String),
    #[error("director unreachable: {0}")]
    Director(String),
    #[error("this node relays as many streams as it may (max_relays): try another node or later")]
    Capacity,
    #[error("too many relays started from this address: retry in {0} s")]
    TooMany(u64),
}

/// What the director says of a stream: its current broadcast (or the one asked for), its
/// privacy and its ingest servers. Cached for [`INFO_TTL`] per (stream, broadcast) so a burst of
/// viewers costs one question.
pub async fn info(
    node: &Node,
    stream: &str,
    broadcast: Option<&BroadcastId>,
) -> Result<StreamInfo, RelayError> {
    let Some(dir) = &node.cfg.director else {
        return Err(RelayError::NoDirector(stream.into()));
    };
    let key = (stream.to_string(), broadcast.map(|b| b.to_string()));
    if let Some((at, i)) = node
        .info_cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        && crate::hub::mono_ms().saturating_sub(*at) < INFO_TTL.as_millis() as u64
    {
        return Ok(i.clone());
    }
    let url = match broadcast {
        Some(b) => format!(
            "{}/v1/streams/{stream}/broadcasts/{b}",
            dir.trim_end_matches('/')
        ),
        None => format!("{}/v1/streams/{stream}", dir.trim_end_matches('/')),
    };
    let resp = node
        .http
        .get(&url)
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .map_err(|e| RelayError::Director(e.to_string()))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(RelayError::Unknown(stream.into()));
    }
    if !resp.status().is_success() {
        return Err(RelayError::Director(format!("{url}: {}", resp.status())));
    }
    let i: StreamInfo = resp
        .json()
        .await
        .map_err(|e| RelayError::Director(e.to_string()))?;
    // Only a broadcast in progress is cached: between broadcasts (none yet, or ended) the next
    // go-live must be seen at once.
    let in_progress = i
        .broadcast
        .as_ref()
        .is_some_and(|b| b.state != proto::api::BroadcastState::Ended);
    if in_progress {
        let mut cache = node.info_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= 10_000 {
            cache.clear();
        }
        cache.insert(key, (crate::hub::mono_ms(), i.clone()));
    }
    Ok(i)
}

/// How long a director's answer about a stream is reused.
pub const INFO_TTL: Duration = Duration::from_secs(1);

/// HTTP base URLs of the broadcast's ingest servers other than this node.
async fn upstreams(
    node: &Node,
    stream: &str,
    broadcast: &BroadcastId,
) -> Result<Vec<(String, String)>, RelayError> {
    let info = info(node, stream, Some(broadcast)).await?;
    Ok(info
        .ingest
        .into_iter()
        .filter(|i| i.server_id.as_str() != node.cfg.id)
        .filter_map(|i| Some((i.server_id.to_string(), i.urls?.http?)))
        .collect())
}

/// Fetch chunks `[from, stream.first_seq())` from an upstream and put them before the relay's
/// tail, so a catch-up viewer on this node gets them. Best effort, bounded by the tail size.
///
/// Bounded: at most `max_backfills` at once on the node, and each counts against the client's
/// relay starts (`client`: the viewer's address); over either, nothing is fetched.
pub async fn backfill(node: &Arc<Node>, stream: &Arc<Stream>, from: u64, client: Option<IpAddr>) {
    let first = stream.first_seq();
    if from >= first || stream.is_ingest() {
        return;
    }
    let Ok(_slot) = node.backfills.try_acquire() else {
        node.metrics.relays_refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(stream = %stream.name, "backfill skipped: max_backfills running");
        return;
    };
    if let Some(ip) = client
        && node.relay_limiter.check(ip).is_err()
    {
        node.metrics.relays_refused.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(stream = %stream.name, %ip, "backfill skipped: the client's relay starts are used up");
        return;
    }
    let Ok(ups) = upstreams(node, &stream.name, &stream.broadcast).await else {
        return;
    };
    for (_, base) in ups {
        let url = format!(
            "{}/v1/streams/{}/chunks?broadcast={}&from={from}",
            base.trim_end_matches('/'),
            stream.name,
            stream.broadcast
        );
        let Ok(resp) = node
            .http
            .get(&url)
            .bearer_auth(node.peer_bearer())
            .send()
            .await
        else {
            continue;
        };
        if !resp.status().is_success() {
            continue;
        }
        let mut body = resp.bytes_stream();
        let mut buf = BytesMut::new();
        let mut dec = Decoder::new(node.limits);
        let mut got = Vec::new();
        let mut budget = node.cfg.tail_bytes / 2;
        'read: loop {
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(Frame::Data(d))) if d.seq < first => {
                        budget = budget.saturating_sub(d.payload.len());
                        got.push(Chunk {
                            seq: d.seq,
                            pts: d.pts,
                            flags: d.flags.bits(),
                            payload: d.payload,
                        });
                        if budget == 0 {
                            break 'read;
                        }
                    }
                    Ok(Some(_)) => break 'read,
                    Ok(None) => break,
                    Err(_) => break 'read,
                }
            }
            match body.next().await {
                Some(Ok(b)) => buf.extend_from_slice(&b),
                _ => break,
            }
        }
        // Only a run that reaches the relay front is usable.
        if got
            .last()
            .is_some_and(|c| c.seq.checked_add(1) == Some(first))
        {
            let n = stream.prepend(got);
            tracing::debug!(stream = %stream.name, from, added = n, "backfilled relay");
            return;
        }
    }
}

/// Fill a relayed stream's empty FLV head from an upstream's (best effort).
pub async fn fetch_flv_head(node: &Arc<Node>, stream: &Arc<Stream>) {
    let Ok(ups) = upstreams(node, &stream.name, &stream.broadcast).await else {
        return;
    };
    for (_, base) in ups {
        let url = format!(
            "{}/v1/streams/{}/flv-head?broadcast={}",
            base.trim_end_matches('/'),
            stream.name,
            stream.broadcast
        );
        let Ok(resp) = node
            .http
            .get(&url)
            .bearer_auth(node.peer_bearer())
            .timeout(Duration::from_secs(3))
            .send()
            .await
        else {
            continue;
        };
        if !resp.status().is_success() {
            continue;
        }
        let ts_origin = resp
            .headers()
            .get(crate::http::TS_ORIGIN_HEADER)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let not_media = resp
            .headers()
            .get(crate::http::NOT_MEDIA_HEADER)
            .is_some_and(|v| v == "1");
        if let Ok(b) = resp.bytes().await {
            let mut h = stream.flv.lock().unwrap_or_else(|e| e.into_inner());
            if !b.is_empty() || ts_origin.is_some() {
                h.fill_missing(&b);
                h.ts_origin = h.ts_origin.or(ts_origin);
                return;
            }
            // The upstream holds the start and says it is neither FLV nor MPEG-TS.
            if not_media {
                h.neither = true;
                return;
            }
        }
    }
}

/// The merge point of one relayed stream.
#[derive(Debug)]
struct Merge {
    stream: Arc<Stream>,
    started: Mutex<bool>,
    /// Upstreams with an open response right now.
    connected: AtomicUsize,
}

enum Merged {
    Accepted,
    Duplicate,
    /// This upstream is ahead of the merged position: reconnect from it.
    Ahead,
}

impl Merge {
    fn offer(&self, c: Chunk) -> Merged {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        let next = self.stream.edge().next_seq;
        if !*started {
            self.stream.set_start(c.seq);
            *started = true;
            self.stream.publish([c]);
            return Merged::Accepted;
        }
        if c.seq < next {
            Merged::Duplicate
        } else if c.seq > next {
            Merged::Ahead
        } else {
            self.stream.publish([c]);
            Merged::Accepted
        }
    }

    fn resume_point(&self, initial: &str) -> String {
        if *self.started.lock().unwrap_or_else(|e| e.into_inner()) {
            self.stream.edge().next_seq.to_string()
        } else {
            initial.to_string()
        }
    }
}

/// The broadcast, relayed if it is not held here. `initial_from` is where the relay starts when
/// it is created (the first viewer's `from`). Relays pull only from the ingest servers the
/// director recorded for this broadcast.
///
/// Starting a relay is bounded: at most `max_relays` on the node ([`RelayError::Capacity`])
/// and `relay_starts_per_ip_per_min` per client address (`client`, the viewer's;
/// [`RelayError::TooMany`]). Joining a relay that runs costs nothing.
pub async fn ensure(
    node: &Arc<Node>,
    name: &str,
    broadcast: &BroadcastId,
    private: bool,
    initial_from: &str,
    client: Option<IpAddr>,
) -> Result<Arc<Stream>, RelayError> {
    if let Some(s) = node.hub.get(name, broadcast) {
        return Ok(s);
    }
    // Ingested here before, released from memory since (ended, or its publisher gone).
    if let Some(s) = crate::open_from_disk(node, name, broadcast).await {
        return Ok(s);
    }
    let ups = upstreams(node, name, broadcast).await?;
    if ups.is_empty() {
        return Err(RelayError::NoUpstream(name.into()));
    }
    if node.hub.get(name, broadcast).is_none() {
        if node.hub.counts().1 >= node.cfg.max_relays {
            return Err(RelayError::Capacity);
        }
        if let Some(ip) = client {
            node.relay_limiter.check(ip).map_err(RelayError::TooMany)?;
        }
    }
    let (s, created) = node.hub.relay_or_insert_with(name, broadcast, || {
        Stream::new(
            name.into(),
            broadcast.clone(),
            Source::Relay,
            node.cfg.tail_bytes,
        )
    });
    if private {
        s.private.store(true, Ordering::Relaxed);
    }
    if created {
        tracing::info!(stream = name, %broadcast, upstreams = ?ups, "relaying");
        tokio::spawn(run(node.clone(), s.clone(), initial_from.to_string(), ups));
    }
    Ok(s)
}

async fn run(
    node: Arc<Node>,
    stream: Arc<Stream>,
    initial_from: String,
    first: Vec<(String, String)>,
) {
    let merge = Arc::new(Merge {
        stream: stream.clone(),
        started: Mutex::new(false),
        connected: AtomicUsize::new(0),
    });
    let give_up = Duration::from_millis(node.cfg.relay_give_up_ms.max(100));
    let mut pullers: BTreeMap<String, tokio::task::JoinHandle<()>> = BTreeMap::new();
    let mut known = first;
    let mut last_ok = tokio::time::Instant::now();
    let mut last_pos = stream.edge().next_seq;
    let mut idle_since: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut refreshed = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        let edge = stream.edge();
        if edge.ended.is_some_and(|f| edge.next_seq > f) || edge.lost {
            break;
        }
        if !node.hub.is_current_relay(&stream) {
            break;
        }
        pullers.retain(|_, h| !h.is_finished());
        if edge.next_seq != last_pos || merge.connected.load(Ordering::SeqCst) > 0 {
            last_pos = edge.next_seq;
            last_ok = tokio::time::Instant::now();
        }
        if last_ok.elapsed() > give_up {
            tracing::warn!(stream = %stream.name, "no upstream reachable: ending the stream for viewers");
            stream.lose();
            break;
        }
        // Re-resolve when an upstream is missing: the director may know a replacement.
        if pullers.len() < 2 && refreshed.elapsed() > Duration::from_millis(500) {
            refreshed = tokio::time::Instant::now();
            if let Ok(u) = upstreams(&node, &stream.name, &stream.broadcast).await {
                known = u;
            }
        }
        for (id, url) in &known {
            if !pullers.contains_key(id) {
                let h = tokio::spawn(pull(
                    node.clone(),
                    merge.clone(),
                    url.clone(),
                    initial_from.clone(),
                ));
                pullers.insert(id.clone(), h);
            }
        }
        // The hub, this task and the merge hold the stream; anything more is a viewer.
        if Arc::strong_count(&stream) <= 3 {
            let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > Duration::from_secs(10) {
                tracing::info!(stream = %stream.name, "no viewers left: stopping the relay");
                break;
            }
        } else {
            idle_since = None;
        }
    }
    for (_, h) in pullers {
        h.abort();
    }
    node.hub.remove_relay(&stream);
}

/// Pull one upstream until it ends, fails for good, or the stream ends. Returns when the
/// upstream is unreachable so the relay can re-resolve it.
async fn pull(node: Arc<Node>, merge: Arc<Merge>, base: String, initial_from: String) {
    let mut failures = 0u32;
    loop {
        let edge = merge.stream.edge();
        if edge.ended.is_some_and(|f| edge.next_seq > f) || edge.lost {
            return;
        }
        let from = merge.resume_point(&initial_from);
        let url = format!(
            "{}/v1/streams/{}/chunks?broadcast={}&from={from}",
            base.trim_end_matches('/'),
            merge.stream.name,
            merge.stream.broadcast
        );
        match pull_once(&node, &merge, &url).await {
            Ok(()) => return,
            Err(e) => {
                node.metrics
                    .relay_upstream_failures
                    .fetch_add(1, Ordering::Relaxed);
                failures += 1;
                tracing::debug!(%url, error = %e, failures, "upstream failed");
                if failures >= 3 {
                    // Let the relay re-resolve: the server may have been replaced.
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100 * u64::from(failures))).await;
            }
        }
    }
}

async fn pull_once(node: &Node, merge: &Merge, url: &str) -> Result<(), String> {
    let resp = node
        .http
        .get(url)
        .bearer_auth(node.peer_bearer())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("{}", resp.status()));
    }
    // Where the upstream was when it answered: the history this pull brings first ends there.
    if let Some(n) = resp
        .headers()
        .get(crate::http::NEXT_SEQ_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        merge.stream.catch_up_to.fetch_max(n, Ordering::Relaxed);
    }
    merge.connected.fetch_add(1, Ordering::SeqCst);
    let r = read_frames(node, merge, resp).await;
    merge.connected.fetch_sub(1, Ordering::SeqCst);
    r
}

async fn read_frames(node: &Node, merge: &Merge, resp: reqwest::Response) -> Result<(), String> {
    let end = read_chunks(node, resp, |c| {
        std::future::ready(match merge.offer(c) {
            Merged::Accepted | Merged::Duplicate => Ok(true),
            Merged::Ahead => Err("upstream ahead of the merge; reconnecting".into()),
        })
    })
    .await?;
    if let Some(final_seq) = end {
        // Wait until the merge has everything up to the end (the other upstream may still be
        // delivering); this upstream has delivered it all by now.
        merge.stream.end(final_seq);
    }
    Ok(())
}

/// Read a `GET …/chunks` response: each DATA frame, as a chunk, goes to `on_chunk` (which
/// answers whether to go on); `Ok(Some(final seq))` at END, `Ok(None)` when `on_chunk` stopped.
pub(crate) async fn read_chunks<F, Fut>(
    node: &Node,
    resp: reqwest::Response,
    mut on_chunk: F,
) -> Result<Option<u64>, String>
where
    F: FnMut(Chunk) -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let mut body = resp.bytes_stream();
    let mut buf = BytesMut::new();
    let mut dec = Decoder::new(node.limits);
    loop {
        while let Some(f) = dec.decode(&mut buf).map_err(|e| e.to_string())? {
            match f {
                Frame::Data(d) => {
                    let c = Chunk {
                        seq: d.seq,
                        pts: d.pts,
                        flags: d.flags.bits(),
                        payload: d.payload,
                    };
                    if !on_chunk(c).await? {
                        return Ok(None);
                    }
                }
                Frame::End { final_seq } => return Ok(Some(final_seq)),
                other => return Err(format!("unexpected {} frame", other.frame_type().name())),
            }
        }
        match body.next().await {
            Some(Ok(b)) => buf.extend_from_slice(&b),
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("upstream closed without END".into()),
        }
    }
}
