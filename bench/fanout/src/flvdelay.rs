//! `flvdelay`: glass-to-glass delay of an FLV stream read from stdin (`rtmpdump -o -`) or an
//! HTTP-FLV URL. The publisher (`ffmpeg -re`) was launched at `--t0-ns` (ns since the Unix epoch)
//! and paces tags by their timestamps, so a tag with timestamp `ts` left the encoder at about
//! `t0 + ts`; its delay is its arrival time minus that. The offset of ffmpeg's own start-up is
//! included, and is the same for every server measured this way. Prints p50/p99 in ms.

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn main() {
    let mut t0: Option<u64> = None;
    let mut url: Option<String> = None;
    let mut skip_s = 3u64;
    let mut seconds = u64::MAX;
    let started = std::time::Instant::now();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--t0-ns" => t0 = args.next().and_then(|v| v.parse().ok()),
            "--url" => url = args.next(),
            "--skip-s" => skip_s = args.next().and_then(|v| v.parse().ok()).unwrap_or(3),
            "--seconds" => seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(u64::MAX),
            _ => {}
        }
    }
    let Some(t0) = t0 else {
        eprintln!(
            "usage: flvdelay --t0-ns NS [--url URL] [--skip-s 3] (FLV on stdin without --url)"
        );
        std::process::exit(64);
    };
    let mut input: Box<dyn Read> = match url {
        Some(u) => {
            // A plain HTTP/1.0 GET; the body is the FLV stream.
            let rest = u.trim_start_matches("http://");
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            let mut s = std::net::TcpStream::connect(host).expect("connect");
            use std::io::Write;
            write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").expect("request");
            // Skip the response head.
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if s.read(&mut b).unwrap_or(0) == 0 {
                    std::process::exit(1);
                }
                head.push(b[0]);
            }
            Box::new(s)
        }
        None => Box::new(std::io::stdin()),
    };
    let mut delays: Vec<f64> = Vec::new();
    let mut hdr = [0u8; 13];
    if input.read_exact(&mut hdr).is_err() {
        std::process::exit(1);
    }
    let mut tag = [0u8; 11];
    loop {
        if started.elapsed().as_secs() >= seconds {
            break;
        }
        if input.read_exact(&mut tag).is_err() {
            break;
        }
        let arrival = now_ns();
        let size = u32::from_be_bytes([0, tag[1], tag[2], tag[3]]) as usize;
        let ts = u32::from_be_bytes([tag[7], tag[4], tag[5], tag[6]]) as u64;
        let mut body = vec![0u8; size + 4];
        if input.read_exact(&mut body).is_err() {
            break;
        }
        if (tag[0] == 8 || tag[0] == 9) && ts >= skip_s * 1000 {
            let sent = t0 + ts * 1_000_000;
            delays.push(arrival.saturating_sub(sent) as f64 / 1e6);
        }
    }
    delays.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if delays.is_empty() {
            f64::NAN
        } else {
            delays[((delays.len() - 1) as f64 * p).round() as usize]
        }
    };
    println!("{:.1} {:.1} {}", q(0.5), q(0.99), delays.len());
}
