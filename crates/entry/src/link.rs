//! The entry server's link to the director: registration, heartbeats (load, state, the streams
//! held here) and the path measurements of ingest sessions, which feed the director's learned
//! corrections.
//!
//! A heartbeat answered 404 means the director forgot this server (it restarted, or we missed too
//! many beats): register again. The director being unreachable is logged and retried; ingest and
//! viewers go on regardless.

use crate::node::Node;
use serde_json::{Value, json};
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

fn register_body(node: &Node) -> Result<Value, String> {
    let (loc, label) = resolve_location(&node.cfg.location)?;
    let urls = node.urls();
    let mut protocols = vec!["native", "websocket", "http"];
    let mut url_map =
        json!({"native": urls.native, "websocket": urls.websocket, "http": urls.http});
    if let Some(r) = &urls.rtmp {
        protocols.push("rtmp");
        url_map["rtmp"] = json!(r);
    }
    Ok(json!({
        "id": node.cfg.id,
        "pop": node.cfg.pop,
        "city": label,
        "location": {"lat": loc.lat, "lon": loc.lon},
        "capacity": {"streams": node.cfg.capacity_streams, "mbps": node.cfg.capacity_mbps},
        "protocols": protocols,
        "urls": url_map,
    }))
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
        .bearer_auth(&node.cfg.cluster_secret)
        .json(&register_body(node)?)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!("{url}: {status}: {body}"));
    }
    let ms = body["heartbeat_interval_ms"]
        .as_u64()
        .unwrap_or(1000)
        .clamp(50, 60_000);
    Ok(Duration::from_millis(ms))
}

fn heartbeat_body(node: &Node, cpu: f64, mbps: f64) -> Value {
    let streams: Vec<Value> = node
        .hub
        .ingested()
        .into_iter()
        .filter_map(|s| {
            let role = (*s.role.lock().unwrap_or_else(|e| e.into_inner()))?;
            let edge = s.edge();
            Some(json!({
                "stream": s.name,
                "role": role,
                "next_seq": edge.next_seq,
                "live": s.live_sessions.load(Ordering::SeqCst) > 0 && edge.ended.is_none(),
            }))
        })
        .take(1000)
        .collect();
    let live = streams.iter().filter(|s| s["live"] == true).count();
    let measurements: Vec<Value> = node
        .take_samples()
        .into_iter()
        .filter(|m| m.info.rtt_ms > 0.0)
        .map(|m| {
            let mut v = json!({
                "stream": m.stream,
                "role": m.role,
                "client_ip": m.client_ip.to_string(),
                "rtt_ms": m.info.rtt_ms,
                "min_rtt_ms": m.info.min_rtt_ms,
                "loss": m.info.loss(),
                "at": node.now_unix(),
            });
            if m.secs > 0.0 {
                v["throughput_mbps"] = json!(m.bytes as f64 * 8.0 / m.secs / 1e6);
            }
            v
        })
        .collect();
    json!({
        "load": {"streams": live, "mbps": mbps, "cpu": cpu},
        "state": if node.draining.load(Ordering::SeqCst) { "draining" } else { "ready" },
        "streams": streams,
        "measurements": measurements,
    })
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
        .bearer_auth(&node.cfg.cluster_secret)
        .json(&heartbeat_body(node, cpu, mbps))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    match resp.status() {
        s if s.is_success() => Ok(Beat::Ok),
        reqwest::StatusCode::NOT_FOUND => Ok(Beat::Unknown),
        s => Err(format!(
            "{url}: {s}: {}",
            resp.text().await.unwrap_or_default()
        )),
    }
}

pub async fn deregister(node: &Node) {
    if let Some(url) = director_url(node, &format!("/v1/entry-servers/{}", node.cfg.id)) {
        let _ = node
            .http
            .delete(&url)
            .bearer_auth(&node.cfg.cluster_secret)
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
