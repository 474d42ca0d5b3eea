//! `soak`: many broadcasts of mixed length, with viewers, at a steady rate, for a long time —
//! the load of `bench/soak.sh`, which samples the servers meanwhile. Not a test.
//!
//! A pool of `--streams` stream ids goes live again and again with their keys (the first
//! go-live of each gets its key in `open` mode), `--broadcasts` times in all, spread evenly over
//! `--minutes`. Each broadcast is pushed through the director's primary and backup (the client
//! library, as `firstmile push` does) at `--kbps` for a length drawn from a mix: 80 % 1–5 s,
//! 18 % 10–40 s, 2 % 60–180 s. A share of them (`--viewer-share`) get one or two viewers on a
//! random entry server (most of them relay it), reading the broadcast by id from its start to
//! its end; each viewer's byte count is compared with what was pushed. Progress goes to stderr
//! every 10 s; a JSON summary to stdout at the end.

use clap::Parser;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Parser)]
struct Args {
    /// Director base URL.
    #[arg(long)]
    director: String,
    /// Entry servers' HTTP base URLs for viewers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    views: Vec<String>,
    /// How long the load runs.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Broadcasts in all, spread evenly over the run.
    #[arg(long, default_value_t = 10_000)]
    broadcasts: u64,
    /// Stream ids in the pool (each goes live again and again with its key).
    #[arg(long, default_value_t = 300)]
    streams: usize,
    /// Bitrate of each broadcast.
    #[arg(long, default_value_t = 200)]
    kbps: u32,
    /// Share of broadcasts that get viewers.
    #[arg(long, default_value_t = 0.3)]
    viewer_share: f64,
    /// Typed location of the devices.
    #[arg(long, default_value = "Paris, FR")]
    location: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// xorshift64*: a small deterministic generator (no dependency for a bench tool).
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
}

#[derive(Debug, Default)]
struct Counts {
    started: AtomicU64,
    completed: AtomicU64,
    complete_everywhere: AtomicU64,
    failed: AtomicU64,
    /// Start times at which every stream of the pool was live (nothing started).
    pool_busy: AtomicU64,
    viewers: AtomicU64,
    viewers_exact: AtomicU64,
    viewers_short: AtomicU64,
    viewers_failed: AtomicU64,
}

fn length(rng: &mut Rng) -> Duration {
    let u = rng.unit();
    let s = if u < 0.80 {
        rng.range(1.0, 5.0)
    } else if u < 0.98 {
        rng.range(10.0, 40.0)
    } else {
        rng.range(60.0, 180.0)
    };
    Duration::from_secs_f64(s)
}

/// The address a pool slot's device asks the director from: each its own, on 127.0.0.0/8 (a
/// device per stream, as on a real platform, where the director's per-address rate limit
/// applies to each device alone).
fn device_address(slot: usize) -> std::net::IpAddr {
    let [_, _, hi, lo] = (slot as u32).to_be_bytes();
    std::net::Ipv4Addr::new(127, 1, hi, lo).into()
}

/// One broadcast: assign (with the stream's key once known), push `len` at `kbps`, END.
/// `on_start` gets the broadcast id and the bytes that will be pushed.
#[allow(clippy::too_many_arguments)]
async fn broadcast(
    director: &str,
    device: std::net::IpAddr,
    stream: &proto::StreamId,
    key: Option<proto::StreamKey>,
    location: &str,
    kbps: u32,
    len: Duration,
    keys: &Mutex<HashMap<String, proto::StreamKey>>,
    on_start: impl FnOnce(proto::BroadcastId, u64),
) -> anyhow::Result<client::PushSummary> {
    let d = client::Director::from_address(director, device)?;
    let req = client::AssignRequest {
        stream: Some(stream.clone()),
        key: key.clone(),
        location: Some(client::LocationInput::Place(location.to_string())),
        protocol: Some(proto::Protocol::Native),
        bitrate_kbps: Some(kbps),
        ..Default::default()
    };
    // Do what a device does with a 429: wait and ask again (the error says "retry after N s";
    // 1 s is the limiter's granularity).
    let mut tries = 0;
    let a = loop {
        match d.assign(&req).await {
            Ok(a) => break a,
            Err(client::ClientError::Status { status: 429, .. }) if tries < 30 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
            Err(e) => return Err(anyhow::Error::new(e).context("assignment")),
        }
    };
    let key = match (&a.stream_key, key) {
        (Some(k), _) => {
            keys.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(stream.to_string(), k.clone());
            k.clone()
        }
        (None, Some(k)) => k,
        (None, None) => anyhow::bail!("no key for {stream}"),
    };
    let total = (f64::from(kbps) * 1000.0 / 8.0 * len.as_secs_f64()) as u64;
    on_start(a.broadcast.clone(), total);
    let pusher = client::Pusher::from_assignment(&a, client::PushConfig::default())?.with_reassign(
        client::push::DirectorReassign {
            director: d.clone(),
            request: client::AssignRequest {
                key: Some(key),
                ..req
            },
            broadcast: a.broadcast.clone(),
        },
    );
    let (mut tx, rx) = tokio::io::duplex(1 << 20);
    let push = tokio::spawn(pusher.run(rx));
    let per_tick = (total as f64 / (len.as_secs_f64() / 0.05)).max(1.0) as usize;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut n = 0u64;
    while sent < total {
        tick.tick().await;
        let k = per_tick.min((total - sent) as usize);
        let chunk: Vec<u8> = (0..k).map(|i| ((n + i as u64) % 251) as u8).collect();
        n += k as u64;
        if tx.write_all(&chunk).await.is_err() {
            break;
        }
        sent += k as u64;
    }
    let _ = tx.shutdown().await;
    drop(tx);
    Ok(push.await??)
}

/// A viewer of broadcast `b` on `view` from its start: the bytes it got.
async fn viewer(http: reqwest::Client, url: String, limit: Duration) -> anyhow::Result<u64> {
    let r = http.get(&url).timeout(limit).send().await?;
    anyhow::ensure!(r.status().is_success(), "{url}: {}", r.status());
    let mut body = r.bytes_stream();
    let mut n = 0u64;
    while let Some(b) = body.next().await {
        n += b?.len() as u64;
    }
    Ok(n)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    plumbing::tls::install_default_provider();
    let http = reqwest::Client::new();
    let counts = Arc::new(Counts::default());
    let keys: Arc<Mutex<HashMap<String, proto::StreamKey>>> = Arc::default();
    let busy: Arc<Mutex<std::collections::HashSet<usize>>> = Arc::default();
    let mut rng = Rng(a.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let every = Duration::from_secs_f64(a.minutes * 60.0 / a.broadcasts.max(1) as f64);
    let start = Instant::now();
    let progress = {
        let c = counts.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                eprintln!(
                    "{}",
                    serde_json::json!({
                        "t_s": start.elapsed().as_secs(),
                        "started": c.started.load(Ordering::Relaxed),
                        "completed": c.completed.load(Ordering::Relaxed),
                        "failed": c.failed.load(Ordering::Relaxed),
                        "viewers_exact": c.viewers_exact.load(Ordering::Relaxed),
                        "viewers_short": c.viewers_short.load(Ordering::Relaxed),
                        "viewers_failed": c.viewers_failed.load(Ordering::Relaxed),
                    })
                );
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..a.broadcasts {
        tick.tick().await;
        // A stream of the pool that is not live now.
        let slot = {
            let mut b = busy.lock().unwrap_or_else(|e| e.into_inner());
            let mut pick = None;
            for _ in 0..a.streams.max(1) * 2 {
                let s = (rng.next() % a.streams.max(1) as u64) as usize;
                if b.insert(s) {
                    pick = Some(s);
                    break;
                }
            }
            pick
        };
        let Some(slot) = slot else {
            counts.pool_busy.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let len = length(&mut rng);
        let watchers = if rng.unit() < a.viewer_share {
            1 + (rng.next() % 2) as usize
        } else {
            0
        };
        let views: Vec<String> = (0..watchers)
            .filter(|_| !a.views.is_empty())
            .map(|_| a.views[(rng.next() % a.views.len() as u64) as usize].clone())
            .collect();
        let (c, keys, busy, http) = (counts.clone(), keys.clone(), busy.clone(), http.clone());
        let (director, location, kbps) = (a.director.clone(), a.location.clone(), a.kbps);
        tasks.spawn(async move {
            let stream = proto::StreamId::parse(&format!("soak-{slot:04}")).expect("valid id");
            let key = keys
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(stream.as_str())
                .cloned();
            c.started.fetch_add(1, Ordering::Relaxed);
            let mut viewer_tasks = Vec::new();
            let r = broadcast(
                &director,
                device_address(slot),
                &stream,
                key,
                &location,
                kbps,
                len,
                &keys,
                |b, total| {
                    for v in &views {
                        let url = format!(
                            "{}/v1/streams/{stream}/live?broadcast={b}&from=start",
                            v.trim_end_matches('/')
                        );
                        let h = http.clone();
                        let limit = len + Duration::from_secs(60);
                        viewer_tasks.push((total, tokio::spawn(viewer(h, url, limit))));
                    }
                },
            )
            .await;
            match &r {
                Ok(s) => {
                    c.completed.fetch_add(1, Ordering::Relaxed);
                    if s.complete_everywhere {
                        c.complete_everywhere.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    c.failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("{stream}: {e:#}");
                }
            }
            for (total, t) in viewer_tasks {
                c.viewers.fetch_add(1, Ordering::Relaxed);
                match t.await {
                    Ok(Ok(n)) if n == total => {
                        c.viewers_exact.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(_)) => {
                        c.viewers_short.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        c.viewers_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            busy.lock().unwrap_or_else(|e| e.into_inner()).remove(&slot);
        });
        // Reap finished ones so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    progress.abort();
    let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "seconds": start.elapsed().as_secs_f64().round(),
            "broadcasts_started": g(&counts.started),
            "completed": g(&counts.completed),
            "complete_on_both_paths": g(&counts.complete_everywhere),
            "failed": g(&counts.failed),
            "pool_busy": g(&counts.pool_busy),
            "viewers": g(&counts.viewers),
            "viewers_exact": g(&counts.viewers_exact),
            "viewers_short": g(&counts.viewers_short),
            "viewers_failed": g(&counts.viewers_failed),
        })
    );
    Ok(())
}
