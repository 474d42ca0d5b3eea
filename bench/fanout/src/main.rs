//! `fanout`: one live stream pushed through firstmile (primary + backup), watched by many HTTP
//! viewers at once; reports end-to-end latency, the longest stall any viewer saw, and whether
//! any viewer missed or repeated a byte. Used by `bench/fanout.sh`; not a test.
//!
//! The source is a paced sequence of fixed-size records `[b"FMBK"][send time, ns since the Unix
//! epoch, u64][record number, u64][zero filler]`. Viewers scan for the marker, so they can join
//! at any byte; latency is arrival time minus send time (same clock: same machine).

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;

#[derive(Debug, Parser)]
struct Args {
    /// Director base URL.
    #[arg(long)]
    director: String,
    /// Stream id.
    #[arg(long, default_value = "bench")]
    stream: String,
    /// Typed location of the device.
    #[arg(long, default_value = "Paris, FR")]
    location: String,
    /// Stream bitrate in Mbit/s.
    #[arg(long, default_value_t = 8.0)]
    mbps: f64,
    /// Record size in bytes.
    #[arg(long, default_value_t = 1000)]
    record: usize,
    /// How long the source runs, seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Number of viewers.
    #[arg(long, default_value_t = 200)]
    viewers: usize,
    /// Entry server HTTP base URL the viewers use (a node that relays the stream).
    #[arg(long)]
    view: String,
    /// Kill this process (SIGKILL) this many seconds into the run.
    #[arg(long)]
    kill_pid: Option<u32>,
    #[arg(long, default_value_t = 10)]
    kill_at: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Default)]
struct ViewerResult {
    bytes: u64,
    records: u64,
    out_of_order: u64,
    latencies_us: Vec<u64>,
    max_stall_ms: f64,
    error: Option<String>,
}

async fn viewer(url: String, record: usize, start_after: Instant) -> ViewerResult {
    let mut r = ViewerResult::default();
    let resp = match {
        plumbing::tls::install_default_provider();
        reqwest::Client::new()
    }
    .get(&url)
    .send()
    .await
    {
        Ok(x) if x.status().is_success() => x,
        Ok(x) => {
            r.error = Some(format!("{}", x.status()));
            return r;
        }
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    };
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut last_seq: Option<u64> = None;
    let mut last_arrival: Option<Instant> = None;
    while let Some(item) = body.next().await {
        let b = match item {
            Ok(b) => b,
            Err(e) => {
                r.error = Some(e.to_string());
                break;
            }
        };
        let now = Instant::now();
        r.bytes += b.len() as u64;
        if let Some(prev) = last_arrival
            && now > start_after
        {
            r.max_stall_ms = r
                .max_stall_ms
                .max(now.duration_since(prev).as_secs_f64() * 1e3);
        }
        last_arrival = Some(now);
        buf.extend_from_slice(&b);
        let arrived = now_ns();
        let mut i = 0;
        while i + record <= buf.len() {
            if &buf[i..i + 4] != b"FMBK" {
                i += 1;
                continue;
            }
            let sent = u64::from_be_bytes(buf[i + 4..i + 12].try_into().unwrap_or_default());
            let seq = u64::from_be_bytes(buf[i + 12..i + 20].try_into().unwrap_or_default());
            if let Some(l) = last_seq
                && seq != l + 1
            {
                r.out_of_order += 1;
            }
            last_seq = Some(seq);
            r.records += 1;
            if now > start_after {
                r.latencies_us.push(arrived.saturating_sub(sent) / 1000);
            }
            i += record;
        }
        buf.drain(..i);
    }
    r
}

fn percentile(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize] as f64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let stream = proto::StreamId::parse(&a.stream).context("stream id")?;
    let director = client::Director::new(&a.director)?;
    let req = client::AssignRequest {
        stream: Some(stream.clone()),
        location: Some(client::LocationInput::Place(a.location.clone())),
        protocol: Some(proto::Protocol::Native),
        bitrate_kbps: Some((a.mbps * 1000.0) as u32),
        ..Default::default()
    };
    let assignment = director.assign(&req).await?;
    let pusher = client::Pusher::from_assignment(&assignment, client::PushConfig::default())?
        .with_reassign(client::push::DirectorReassign {
            director: client::Director::new(&a.director)?,
            request: client::AssignRequest {
                key: assignment.stream_key.clone(),
                ..req.clone()
            },
            broadcast: assignment.broadcast.clone(),
        });
    let (mut tx, rx) = tokio::io::duplex(1 << 20);
    let push = tokio::spawn(pusher.run(rx));

    // The source: `mbps` of records, written every 5 ms.
    let record = a.record.max(32);
    let per_sec = a.mbps * 1e6 / 8.0 / record as f64;
    let sent = Arc::new(AtomicU64::new(0));
    let sent2 = sent.clone();
    let seconds = a.seconds;
    let source = tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        let mut seq = 0u64;
        let mut rec = vec![0u8; record];
        rec[..4].copy_from_slice(b"FMBK");
        while start.elapsed() < Duration::from_secs(seconds) {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * per_sec) as u64;
            let mut out = Vec::new();
            while seq < due {
                rec[4..12].copy_from_slice(&now_ns().to_be_bytes());
                rec[12..20].copy_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&rec);
                seq += 1;
            }
            if tx.write_all(&out).await.is_err() {
                break;
            }
            sent2.store(seq, Ordering::Relaxed);
        }
        let _ = tx.shutdown().await;
    });

    // Viewers join after a second (the relay is up), from the live edge.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let url = format!(
        "{}/v1/streams/{}/live?from=live",
        a.view.trim_end_matches('/'),
        a.stream
    );
    let warm = Instant::now() + Duration::from_secs(2);
    let viewers: Vec<_> = (0..a.viewers)
        .map(|_| tokio::spawn(viewer(url.clone(), record, warm)))
        .collect();
    if let Some(pid) = a.kill_pid {
        tokio::time::sleep(Duration::from_secs(a.kill_at.saturating_sub(1))).await;
        let killed_at = now_ns();
        let ok = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            bail!("could not kill {pid}");
        }
        eprintln!("killed pid {pid} at {killed_at}");
    }
    source.await?;
    let summary = push.await??;
    let mut results = Vec::new();
    for v in viewers {
        results.push(tokio::time::timeout(Duration::from_secs(30), v).await??);
    }
    let mut lat: Vec<u64> = results
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    let bytes: u64 = results.iter().map(|r| r.bytes).sum();
    let max_stall = results.iter().map(|r| r.max_stall_ms).fold(0.0, f64::max);
    let errors: Vec<&String> = results.iter().filter_map(|r| r.error.as_ref()).collect();
    let out_of_order: u64 = results.iter().map(|r| r.out_of_order).sum();
    let out = serde_json::json!({
        "viewers": a.viewers,
        "records_sent": sent.load(Ordering::Relaxed),
        "bytes_delivered": bytes,
        "latency_ms": {"p50": percentile(&mut lat, 0.5) / 1000.0, "p99": percentile(&mut lat, 0.99) / 1000.0, "max": percentile(&mut lat, 1.0) / 1000.0},
        "max_stall_ms": max_stall,
        "viewer_errors": errors.len(),
        "first_error": errors.first(),
        "out_of_order_records": out_of_order,
        "push": format!("{summary:?}").chars().take(300).collect::<String>(),
    });
    println!("{out}");
    Ok(())
}
