//! The entry server's link to the director: registration, heartbeats (load, state, the streams
//! held here) and the path measurements of ingest sessions, which feed the director's learned
//! corrections.
//!
//! A heartbeat answered 404 means the director forgot this server (it restarted, or we missed too
//! many beats): register again. The director being unreachable is logged and retried; ingest and
//! viewers go on regardless.

use crate::node::Node;
use proto::api::{
    BroadcastRef, Capacity, DiskState, ErrorBody, Heartbeat, HeartbeatAnswer, Load, LocationInput,
    Measurement, Point, Registered, Registration, ServerState, StreamReport, Urls,
};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The location to register: "lat,lon" as given, else the place resolved by the gazetteer.
pub fn resolve_location(s: &str) -> Result<(geo::Location, String), String> {
    let r = geo::gazetteer::Gazetteer::embedded()
        .resolve(s)
        .map_err(|e| format!("location: {e}"))?;
    Ok((r.place.location, r.place.label()))
}

fn register_body(node: &Node) -> Result<Registration, String> {
    let (loc, label) = resolve_location(&node.cfg.location)?;
    let urls = node.urls();
    Ok(Registration {
        id: node
            .cfg
            .id
            .parse()
            .map_err(|e: proto::NameError| format!("id: {e}"))?,
        pop: node
            .cfg
            .pop
            .parse()
            .map_err(|e: proto::NameError| format!("pop: {e}"))?,
        city: Some(label.chars().take(100).collect()),
        location: LocationInput::Point(Point {
            lat: loc.lat,
            lon: loc.lon,
        }),
        capacity: Capacity {
            streams: node.cfg.capacity_streams,
            mbps: node.cfg.capacity_mbps,
        },
        urls: Urls {
            native: Some(urls.native),
            websocket: Some(urls.websocket),
            http: Some(urls.http),
            rtmp: urls.rtmp,
        },
    })
}

fn director_url(node: &Node, path: &str) -> Option<String> {
    node.cfg
        .director
        .as_ref()
        .map(|d| format!("{}{path}", d.trim_end_matches('/')))
}

/// Register once. Returns the heartbeat interval the director asks for.
pub async fn register(node: &Node) -> Result<Duration, String> {
    let Some(url) = director_url(node, "/v1/entry-servers") else {
        return Err("no director configured".into());
    };
    let resp = node
        .http
        .post(&url)
        .bearer_auth(&node.cfg.credential)
        .json(&register_body(node)?)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        let why = resp
            .json::<ErrorBody>()
            .await
            .map(|e| e.error)
            .unwrap_or_default();
        return Err(format!("{url}: {status}: {why}"));
    }
    let r: Registered = resp
        .json()
        .await
        .map_err(|e| format!("{url}: the answer: {e}"))?;
    *node.peer_token.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((r.peer_token, r.peer_token_expires_at));
    Ok(Duration::from_millis(
        r.heartbeat_interval_ms.clamp(50, 60_000),
    ))
}

/// How long an ended broadcast is still reported (so every director sees its END).
pub const REPORT_ENDED_FOR: Duration = Duration::from_secs(60);
/// At most this many broadcasts per heartbeat (live ones first): the body's size does not grow
/// with history.
pub const MAX_REPORTS: usize = 2_000;

/// The heartbeat: load, state, disk, the broadcasts that are live or changed recently (live
/// first, then those ended within [`REPORT_ENDED_FOR`]), and the path samples.
pub fn heartbeat_body(node: &Node, cpu: f64, mbps: f64) -> Heartbeat {
    let now_ms = crate::hub::mono_ms();
    let recent = REPORT_ENDED_FOR.as_millis() as u64;
    let mut live = Vec::new();
    let mut ended = Vec::new();
    for s in node.hub.ingested() {
        let Some(role) = *s.role.lock().unwrap_or_else(|e| e.into_inner()) else {
            continue;
        };
        let Ok(stream) = s.name.parse() else { continue };
        let edge = s.edge();
        let is_live = s.live_sessions.load(Ordering::SeqCst) > 0 && edge.ended.is_none();
        let changed = now_ms.saturating_sub(s.active_ms.load(Ordering::Relaxed)) < recent;
        let r = StreamReport {
            stream,
            broadcast: s.broadcast.clone(),
            role,
            next_seq: edge.next_seq,
            live: is_live,
            ended: edge.ended,
        };
        if is_live {
            live.push(r);
        } else if changed {
            ended.push(r);
        }
    }
    let load_streams = u32::try_from(live.len()).unwrap_or(u32::MAX);
    live.extend(ended);
    live.truncate(MAX_REPORTS);
    let measurements = node
        .take_samples()
        .into_iter()
        .filter(|m| m.info.rtt_ms > 0.0)
        .filter_map(|m| {
            Some(Measurement {
                stream: m.stream.parse().ok()?,
                role: m.role,
                client_ip: m.client_ip,
                rtt_ms: m.info.rtt_ms,
                min_rtt_ms: Some(m.info.min_rtt_ms),
                loss: Some(m.info.loss()),
                throughput_mbps: (m.secs > 0.0).then(|| m.bytes as f64 * 8.0 / m.secs / 1e6),
                at: node.now_unix(),
            })
        })
        .collect();
    let disk = match node.storage_problem() {
        None => DiskState::Ok,
        Some(w) if w.starts_with("disk full") => DiskState::Full,
        Some(_) => DiskState::Failing,
    };
    Heartbeat {
        load: Load {
            streams: load_streams,
            mbps,
            cpu,
        },
        state: if node.draining.load(Ordering::SeqCst) || disk != DiskState::Ok {
            ServerState::Draining
        } else {
            ServerState::Ready
        },
        disk,
        streams: live,
        measurements,
        // A fresh peer token when the one held expires within 5 minutes.
        want_peer_token: node
            .peer_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_none_or(|(_, exp)| *exp < node.now_unix() + 300),
    }
}

/// Outcome of one heartbeat.
#[derive(Debug, PartialEq, Eq)]
pub enum Beat {
    Ok,
    /// The director does not know us: register again.
    Unknown,
}

pub async fn heartbeat(node: &Node, cpu: f64, mbps: f64) -> Result<Beat, String> {
    let Some(url) = director_url(
        node,
        &format!("/v1/entry-servers/{}/heartbeat", node.cfg.id),
    ) else {
        return Err("no director configured".into());
    };
    let resp = node
        .http
        .put(&url)
        .bearer_auth(&node.cfg.credential)
        .json(&heartbeat_body(node, cpu, mbps))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    match resp.status() {
        s if s.is_success() => {
            if let Ok(a) = resp.json::<HeartbeatAnswer>().await {
                for b in a.superseded {
                    end_superseded(node, &b);
                }
                if let (Some(t), Some(e)) = (a.peer_token, a.peer_token_expires_at) {
                    *node.peer_token.lock().unwrap_or_else(|e| e.into_inner()) = Some((t, e));
                }
            }
            Ok(Beat::Ok)
        }
        reqwest::StatusCode::NOT_FOUND => Ok(Beat::Unknown),
        s => Err(format!(
            "{url}: {s}: {}",
            resp.text().await.unwrap_or_default()
        )),
    }
}

/// The director says this broadcast must end here (the owner went live again, or the stream was
/// revoked): its sessions end at once and new ones are refused.
fn end_superseded(node: &Node, b: &BroadcastRef) {
    node.supersede(b.stream.as_str(), &b.broadcast);
    if let Some(s) = node.hub.get_ingest(b.stream.as_str(), &b.broadcast)
        && !s.is_superseded()
    {
        tracing::info!(stream = %b.stream, broadcast = %b.broadcast, "broadcast superseded: ending its sessions");
        s.superseded.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        s.takeover.notify_waiters();
    }
}

pub async fn deregister(node: &Node) {
    if let Some(url) = director_url(node, &format!("/v1/entry-servers/{}", node.cfg.id)) {
        let _ = node
            .http
            .delete(&url)
            .bearer_auth(&node.cfg.credential)
            .timeout(Duration::from_secs(3))
            .send()
            .await;
    }
}

/// CPU time of this process in seconds (Linux `/proc/self/stat`, utime + stime).
fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Register and heartbeat until `stop` fires (then one last heartbeat in the current state).
pub async fn run(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    if node.cfg.director.is_none() {
        return;
    }
    let mut interval = Duration::from_secs(1);
    let mut registered = false;
    let mut backoff = Duration::from_millis(100);
    let cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let mut last = (
        tokio::time::Instant::now(),
        cpu_seconds().unwrap_or(0.0),
        0u64,
    );
    loop {
        if !registered {
            match register(&node).await {
                Ok(i) => {
                    interval = i;
                    registered = true;
                    backoff = Duration::from_millis(100);
                    tracing::info!(?interval, "registered with the director");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registration failed; retrying");
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        if registered {
            let now = tokio::time::Instant::now();
            let secs = now.duration_since(last.0).as_secs_f64().max(1e-3);
            let cpu_now = cpu_seconds().unwrap_or(last.1);
            let bytes: u64 = node
                .hub
                .ingested()
                .iter()
                .map(|s| s.bytes_in.load(Ordering::Relaxed))
                .sum();
            let cpu = if node.cfg.report_cpu {
                ((cpu_now - last.1) / secs / cores).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let mbps = bytes.saturating_sub(last.2) as f64 * 8.0 / secs / 1e6;
            last = (now, cpu_now, bytes);
            match heartbeat(&node, cpu, mbps).await {
                Ok(Beat::Ok) => {}
                Ok(Beat::Unknown) => {
                    tracing::info!("the director does not know this server: registering again");
                    registered = false;
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
        let wait = if registered { interval } else { backoff };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {
                if registered {
                    let _ = heartbeat(&node, 0.0, 0.0).await;
                }
                return;
            }
        }
    }
}
