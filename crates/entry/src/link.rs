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

/// Live broadcasts per heartbeat. A server with more reports them in turns (a window that moves
/// every beat), so each is reported every `ceil(live / MAX_LIVE_REPORTS)` beats — well within
/// the director's `publisher_gone_s` — and the body stays under the director's 64 KiB limit.
pub const MAX_LIVE_REPORTS: usize = 120;
/// Ended broadcasts per heartbeat, oldest first; each is reported until a heartbeat carrying it
/// is answered 2xx, then never again.
pub const MAX_ENDED_REPORTS: usize = 64;
/// Broadcasts whose publisher left without ending them are still reported (not live) while
/// they changed within [`REPORT_IDLE_FOR`] — so viewers elsewhere still find them while the
/// device reconnects — at most this many per heartbeat, newest first.
pub const MAX_IDLE_REPORTS: usize = 32;
/// See [`MAX_IDLE_REPORTS`].
pub const REPORT_IDLE_FOR: Duration = Duration::from_secs(60);
/// Path samples per heartbeat: the newest (older ones taken with them are dropped; samples are
/// a learning signal, not a record).
pub const MAX_MEASUREMENTS: usize = 32;

/// A heartbeat and the ended broadcasts it reports (marked reported once it is answered 2xx).
#[derive(Debug)]
pub struct HeartbeatBody {
    pub body: Heartbeat,
    pub ended: Vec<Arc<crate::hub::Stream>>,
}

/// The heartbeat: load, state, disk, the broadcasts that are live (at most
/// [`MAX_LIVE_REPORTS`], in turns) and those that ended and were not reported yet (at most
/// [`MAX_ENDED_REPORTS`]), and at most [`MAX_MEASUREMENTS`] path samples. Its size does not grow
/// with history: it is bounded whatever the number of broadcasts this server ever ingested.
pub fn heartbeat_body(node: &Node, cpu: f64, mbps: f64) -> HeartbeatBody {
    let now_ms = crate::hub::mono_ms();
    let mut live = Vec::new();
    let mut ended = Vec::new();
    let mut idle = Vec::new();
    for s in node.hub.ingested() {
        let Some(role) = *s.role.lock().unwrap_or_else(|e| e.into_inner()) else {
            continue;
        };
        let Ok(stream) = s.name.parse() else { continue };
        let edge = s.edge();
        let is_live = s.live_sessions.load(Ordering::SeqCst) > 0 && edge.ended.is_none();
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
        } else if edge.ended.is_some() {
            if !s.end_reported.load(Ordering::SeqCst) {
                ended.push((s.active_ms.load(Ordering::Relaxed), r, s.clone()));
            }
        } else {
            let at = s.active_ms.load(Ordering::Relaxed);
            if now_ms.saturating_sub(at) < REPORT_IDLE_FOR.as_millis() as u64 {
                idle.push((at, r));
            }
        }
    }
    let load_streams = u32::try_from(live.len()).unwrap_or(u32::MAX);
    if live.len() > MAX_LIVE_REPORTS {
        // Stable order, then a window that moves by MAX_LIVE_REPORTS every beat.
        live.sort_by(|a, b| (&a.stream, &a.broadcast).cmp(&(&b.stream, &b.broadcast)));
        let turn = node.report_turn.fetch_add(1, Ordering::Relaxed);
        let start = (turn.wrapping_mul(MAX_LIVE_REPORTS)) % live.len();
        live.rotate_left(start);
        live.truncate(MAX_LIVE_REPORTS);
    }
    idle.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    live.extend(idle.into_iter().take(MAX_IDLE_REPORTS).map(|(_, r)| r));
    ended.sort_by_key(|(at, _, _)| *at);
    ended.truncate(MAX_ENDED_REPORTS);
    let mut reported = Vec::with_capacity(ended.len());
    for (_, r, s) in ended {
        live.push(r);
        reported.push(s);
    }
    let mut samples = node.take_samples();
    let newest = samples.split_off(samples.len().saturating_sub(MAX_MEASUREMENTS));
    drop(samples);
    let measurements = newest
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
    let body = Heartbeat {
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
    };
    HeartbeatBody {
        body,
        ended: reported,
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
    let beat = heartbeat_body(node, cpu, mbps);
    let json = serde_json::to_vec(&beat.body).map_err(|e| format!("heartbeat body: {e}"))?;
    node.metrics
        .heartbeat_bytes
        .store(json.len() as u64, Ordering::Relaxed);
    let resp = node
        .http
        .put(&url)
        .bearer_auth(&node.cfg.credential)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(json)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    match resp.status() {
        s if s.is_success() => {
            for s in &beat.ended {
                s.end_reported.store(true, Ordering::SeqCst);
            }
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

/// CPU share and ingest rate between heartbeats. A window shorter than [`LoadMeter::MIN_WINDOW`]
/// (the first heartbeat right after registering, a few ms after start-up work on every thread)
/// says nothing: the last figures are reported again and the window goes on. Before, a fresh
/// server's first heartbeat could say 97 % CPU (its start-up over 30 ms), and the director kept
/// devices off it for a heartbeat interval.
#[derive(Debug, Clone)]
pub struct LoadMeter {
    at: tokio::time::Instant,
    cpu_s: f64,
    bytes: u64,
    cores: f64,
    last: (f64, f64),
}

impl LoadMeter {
    pub const MIN_WINDOW: Duration = Duration::from_millis(500);

    pub fn new(at: tokio::time::Instant, cpu_s: f64, bytes: u64, cores: f64) -> Self {
        Self {
            at,
            cpu_s,
            bytes,
            cores: cores.max(1.0),
            last: (0.0, 0.0),
        }
    }

    /// (CPU share of the machine's cores in 0..=1, ingest Mbit/s) since the window began.
    pub fn sample(&mut self, now: tokio::time::Instant, cpu_s: f64, bytes: u64) -> (f64, f64) {
        let window = now.saturating_duration_since(self.at);
        if window < Self::MIN_WINDOW {
            return self.last;
        }
        let secs = window.as_secs_f64();
        let cpu = ((cpu_s - self.cpu_s) / secs / self.cores).clamp(0.0, 1.0);
        let mbps = bytes.saturating_sub(self.bytes) as f64 * 8.0 / secs / 1e6;
        *self = Self {
            at: now,
            cpu_s,
            bytes,
            cores: self.cores,
            last: (cpu, mbps),
        };
        self.last
    }
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
    let mut meter = LoadMeter::new(
        tokio::time::Instant::now(),
        cpu_seconds().unwrap_or(0.0),
        0,
        cores,
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
            let bytes: u64 = node
                .hub
                .ingested()
                .iter()
                .map(|s| s.bytes_in.load(Ordering::Relaxed))
                .sum();
            let (cpu, mbps) = meter.sample(
                tokio::time::Instant::now(),
                cpu_seconds().unwrap_or(meter.cpu_s),
                bytes,
            );
            let cpu = if node.cfg.report_cpu { cpu } else { 0.0 };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_window_repeats_the_last_figures_and_goes_on() {
        let t0 = tokio::time::Instant::now();
        let mut m = LoadMeter::new(t0, 10.0, 0, 2.0);
        // 30 ms after start: 0.058 s of CPU on two cores would read 97 %. Not a measurement.
        assert_eq!(
            m.sample(t0 + Duration::from_millis(30), 10.058, 0),
            (0.0, 0.0)
        );
        // One second in: the whole window counts (0.5 s of CPU over 1 s on 2 cores = 25 %;
        // 1 MB = 8 Mbit/s).
        let (cpu, mbps) = m.sample(t0 + Duration::from_secs(1), 10.5, 1_000_000);
        assert!((cpu - 0.25).abs() < 1e-9, "{cpu}");
        assert!((mbps - 8.0).abs() < 1e-9, "{mbps}");
        // A short window again: the figures of the last one.
        assert_eq!(
            m.sample(t0 + Duration::from_millis(1100), 10.9, 2_000_000),
            (cpu, mbps)
        );
        // Counters that went backwards (a restart of the accounting) never give negatives.
        let (cpu, mbps) = m.sample(t0 + Duration::from_secs(3), 1.0, 0);
        assert_eq!((cpu, mbps), (0.0, 0.0));
    }
}
