//! HLS and LL-HLS end to end: a finite RTMP publish by ffmpeg (`tee` to the primary and the
//! backup), read back by ffprobe/ffmpeg from an ingest node and from a relay node, LL-HLS and
//! plain playlists alike, with the source's packets; the HTTP rules of the playlists and
//! resources (blocking reload refusals, CORS, cache headers, content types).

use super::rtmp::{assign_rtmp, make_source, need_ffmpeg, packet_md5s, publish_tee, run, wait_seq};
use super::*;
use std::process::Command;

mod failover;

/// Packets per codec as ffprobe counts them in `url`.
fn probe_counts(url: &str) -> std::collections::BTreeMap<String, usize> {
    let out = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=codec_type",
            "-of",
            "csv=p=0",
        ])
        .arg(url));
    let mut m = std::collections::BTreeMap::new();
    // One line per packet (`video`, or `video,` with side data such as MPEG-TS's); side data
    // of its own gives blank lines.
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let kind = l.trim().split(',').next().unwrap_or_default();
        if !kind.is_empty() {
            *m.entry(kind.to_string()).or_insert(0) += 1;
        }
    }
    m
}

/// Wait (bounded) until every server in `https` has seen `stream`'s broadcast end.
async fn wait_ended(https: &[SocketAddr], stream: &str) {
    for http in https {
        for _ in 0..500 {
            if !super::rtmp::stream_row(*http, stream).await["ended"].is_null() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Segment `msn` of a broadcast is the same bytes (and not empty) on nodes `x` and `y`.
async fn assert_same_segment(x: SocketAddr, y: SocketAddr, stream: &str, b: &str, msn: u64) {
    let seg = |n| format!("http://{n}/hls/{stream}/{b}/{msn}.m4s");
    let (x, y) = (
        get(seg(x)).await.unwrap().bytes().await.unwrap(),
        get(seg(y)).await.unwrap().bytes().await.unwrap(),
    );
    assert!(
        !x.is_empty() && x == y,
        "segment {msn} differs between nodes"
    );
}

async fn get_text(url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = http_client()
        .get(url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let (s, h) = (r.status().as_u16(), r.headers().clone());
    (s, h, r.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ll_hls_and_hls_from_ingest_and_relay_nodes_carry_the_sources_packets() {
    need_ffmpeg();
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let dp = dir.path().to_path_buf();
    let servers = three_servers(&d, &dp).await;
    let src = make_source(&dp, 6);
    let stream = "hls-dual";
    let a = assign_rtmp(&d, stream).await;
    let broadcast = a["broadcast"].as_str().unwrap().to_string();
    let (pu, bu) = (
        a["primary"]["url"].as_str().unwrap().to_string(),
        a["backup"]["url"].as_str().unwrap().to_string(),
    );
    let publisher = publish_tee(&src, &[&pu, &bu]);
    for s in &servers[..2] {
        wait_seq(s.http, stream, 10).await;
    }
    let (lon, nyc) = (servers[0].http, servers[2].http);
    // While live: the relay node packages the merged stream (its first playlist waits for the
    // first part).
    let (status, h, ll) = get_text(&format!("http://{nyc}/hls/{stream}/index.m3u8")).await;
    assert_eq!(status, 200, "{ll}");
    assert_eq!(h["content-type"], "application/vnd.apple.mpegurl");
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["cache-control"], "public, max-age=1");
    assert_eq!(h["x-firstmile-broadcast"], broadcast.as_str());
    for tag in [
        "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=",
        "#EXT-X-PART-INF:PART-TARGET=0.50000",
        "#EXT-X-PART:DURATION=",
        "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=",
        "#EXT-X-PROGRAM-DATE-TIME:",
        &format!("#EXT-X-MAP:URI=\"{broadcast}/init-"),
    ] {
        assert!(ll.contains(tag), "no {tag:?} in\n{ll}");
    }
    // Blocking reload: the next part is answered once it exists; absurd values are refused.
    let hint = ll
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let (msn, part) = {
        let f = hint.rsplit('/').next().unwrap();
        let mut it = f.trim_end_matches(".m4s").split('.');
        (
            it.next().unwrap().to_string(),
            it.next().unwrap().to_string(),
        )
    };
    let url = format!("http://{nyc}/hls/{stream}/index.m3u8?_HLS_msn={msn}&_HLS_part={part}");
    let (status, h, blocked) = get_text(&url).await;
    assert_eq!(status, 200);
    assert!(blocked.contains(&format!("{msn}.{part}.m4s")), "{blocked}");
    assert_eq!(h["cache-control"], "public, max-age=24");
    let part_url = format!("http://{nyc}/hls/{stream}/{hint}");
    let r = get(&part_url).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "video/mp4");
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let part_bytes = r.bytes().await.unwrap();
    assert_eq!(&part_bytes[4..8], b"moof");
    let far = format!("http://{nyc}/hls/{stream}/index.m3u8?_HLS_msn=99999");
    assert_eq!(get_text(&far).await.0, 400);
    let no_msn = format!("http://{nyc}/hls/{stream}/index.m3u8?_HLS_part=1");
    assert_eq!(get_text(&no_msn).await.0, 400);
    let junk = format!("http://{nyc}/hls/{stream}/index.m3u8?_HLS_msn=x");
    assert_eq!(get_text(&junk).await.0, 400);
    // Encoded, or the client would resolve the dot segments itself (failover.rs has more).
    let bad = format!("http://{nyc}/hls/{stream}/{broadcast}/..%2F..%2Fetc.m4s");
    assert_eq!(get_text(&bad).await.0, 400);
    let unknown = format!("http://{nyc}/hls/no-such-stream/index.m3u8");
    let (status, _, body) = get_text(&unknown).await;
    assert_eq!(status, 404, "{body}");
    let missing = format!("http://{nyc}/hls/{stream}/{broadcast}/999999.m4s");
    let (status, h, _) = get_text(&missing).await;
    assert_eq!(
        (status, h["cache-control"].to_str().unwrap()),
        (404, "no-store")
    );

    let out = publisher.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_ended(&[servers[0].http, servers[1].http], stream).await;
    let want = packet_md5s(&src);
    let want_counts = probe_counts(src.to_str().unwrap());
    assert!(want.len() > 250, "source has {} packets", want.len());
    for (node, name) in [(lon, "ingest"), (nyc, "relay")] {
        for playlist in ["index.m3u8", "classic.m3u8"] {
            let url = format!("http://{node}/hls/{stream}/{playlist}?broadcast={broadcast}");
            let (status, _, text) = get_text(&url).await;
            assert_eq!(status, 200, "{name} {playlist}: {text}");
            assert!(
                text.ends_with("#EXT-X-ENDLIST\n"),
                "{name} {playlist}:\n{text}"
            );
            assert!(
                text.contains("#EXT-X-MEDIA-SEQUENCE:0\n"),
                "{name} {playlist}:\n{text}"
            );
            let counts = probe_counts(&url);
            assert_eq!(
                counts, want_counts,
                "ffprobe on the {name} node's {playlist}"
            );
            let have = packet_md5s(std::path::Path::new(&url));
            if have != want {
                let first = want.iter().zip(&have).position(|(a, b)| a != b);
                panic!(
                    "{name} {playlist}: {} packets, source {}; first difference at {first:?}",
                    have.len(),
                    want.len()
                );
            }
        }
    }
    // The same segment is the same bytes on the ingest and the relay node.
    assert_same_segment(lon, nyc, stream, &broadcast, 1).await;
}

/// MPEG-TS pushed over HTTP (the bytes ffmpeg `-f mpegts` writes, with B-frames) to the primary
/// and the backup: LL-HLS and HLS from an ingest node and from a relay node carry the source's
/// packets, and the relay's segments are the ingest's bytes (one timeline: the broadcast's TS
/// origin travels with its head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpeg_ts_pushed_over_http_plays_as_hls_from_ingest_and_relay_nodes() {
    need_ffmpeg();
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let dp = dir.path().to_path_buf();
    let servers = three_servers(&d, &dp).await;
    let ts = dp.join("src.ts");
    run(Command::new("ffmpeg")
        .arg("-nostdin")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=330:sample_rate=48000"])
        .args(["-t", "6", "-c:v", "libx264", "-g", "25", "-bf", "2"])
        .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "mpegts"])
        .arg(&ts));
    let bytes = std::fs::read(&ts).unwrap();
    let stream = "hls-ts";
    let r = http_client()
        .post(format!("{}/v1/assignments", d.url))
        .json(&json!({"stream": stream, "location": "Paris, FR", "protocol": "http"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    let broadcast = a["broadcast"].as_str().unwrap().to_string();
    let a0_primary = a["primary"]["server_id"].clone();
    for role in ["primary", "backup"] {
        let (id, tok) = (
            a[role]["server_id"].as_str().unwrap(),
            a[role]["token"].as_str().unwrap(),
        );
        let http = servers
            .iter()
            .find(|s| id == s.cfg.id.as_str())
            .unwrap_or_else(|| panic!("{id} is not one of the three"))
            .http;
        let r = http_client()
            .post(format!(
                "http://{http}/v1/streams/{stream}/push?token={tok}"
            ))
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "{role}: {}",
            r.text().await.unwrap()
        );
    }
    let relay = servers
        .iter()
        .find(|s| {
            a["primary"]["server_id"] != s.cfg.id.as_str()
                && a["backup"]["server_id"] != s.cfg.id.as_str()
        })
        .unwrap()
        .http;
    let ingest = servers
        .iter()
        .find(|s| a["primary"]["server_id"] == s.cfg.id.as_str())
        .unwrap()
        .http;
    let ingests: Vec<SocketAddr> = servers
        .iter()
        .map(|s| s.http)
        .filter(|h| *h != relay)
        .collect();
    wait_ended(&ingests, stream).await;
    let want = probe_counts(ts.to_str().unwrap());
    assert!(want["video"] == 150 && want["audio"] > 200, "{want:?}");
    for (node, name) in [(ingest, "ingest"), (relay, "relay")] {
        for playlist in ["index.m3u8", "classic.m3u8"] {
            let url = format!("http://{node}/hls/{stream}/{playlist}?broadcast={broadcast}");
            let (status, _, text) = get_text(&url).await;
            assert_eq!(status, 200, "{name} {playlist}: {text}");
            assert!(
                text.ends_with("#EXT-X-ENDLIST\n"),
                "{name} {playlist}:\n{text}"
            );
            assert_eq!(
                probe_counts(&url),
                want,
                "ffprobe on the {name} node's {playlist}"
            );
        }
    }
    assert_same_segment(ingest, relay, stream, &broadcast, 1).await;
    // What an operator watches: a packager on each node, and clean input.
    for node in [ingest, relay] {
        assert_eq!(metric(node, "firstmile_entry_hls_packagers").await, 1);
        assert_eq!(metric(node, "firstmile_entry_hls_ts_errors_total").await, 0);
        assert_eq!(
            metric(node, "firstmile_entry_hls_dropped_tags_total").await,
            0
        );
    }
    // The same TS with packets lost on the way: still HLS, and the damage is counted.
    let mut bad = bytes.clone();
    bad.drain(188 * 300..188 * 303);
    let r = http_client()
        .post(format!("{}/v1/assignments", d.url))
        .json(&json!({"stream": "hls-ts-bad", "location": "Paris, FR", "protocol": "http"}))
        .send()
        .await
        .unwrap();
    let a: Value = r.json().await.unwrap();
    let tok = a["primary"]["token"].as_str().unwrap();
    let b = a["broadcast"].as_str().unwrap();
    assert_eq!(a["primary"]["server_id"], a0_primary, "{a}");
    let r = http_client()
        .post(format!(
            "http://{ingest}/v1/streams/hls-ts-bad/push?token={tok}"
        ))
        .body(bad)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let url = format!("http://{ingest}/hls/hls-ts-bad/classic.m3u8?broadcast={b}");
    let (status, _, text) = get_text(&url).await;
    assert_eq!(status, 200, "{text}");
    assert!(probe_counts(&url)["video"] > 100);
    assert!(metric(ingest, "firstmile_entry_hls_ts_errors_total").await >= 1);
}

/// A relay node asked for a live stream's LL-HLS playlist for the first time (no relay, no
/// packager yet) answers with the history it pulled — whole segments — not with the first part
/// it packaged: a playlist of one part, then one whose live edge jumped seconds ahead, cost
/// hls.js 4 s before its first frame (`bench/browser.sh`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_relays_first_playlist_has_the_history() {
    // Five seconds in (about 70 tags a second): two whole 2 s segments on the ingest servers.
    let stream = "hls-cold";
    let run = super::rtmp::tee_run(stream, 10, [false, false], 350).await;
    let relay = run.servers[2].http;
    let (status, _, ll) = get_text(&format!("http://{relay}/hls/{stream}/index.m3u8")).await;
    assert_eq!(status, 200, "{ll}");
    assert!(
        ll.matches("#EXTINF:").count() >= 2,
        "the first playlist lacks the history:\n{ll}"
    );
    assert!(!ll.contains("#EXT-X-ENDLIST"), "{ll}");
    let out = run.publisher.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A native stream of bytes that are neither FLV nor MPEG-TS: its playlists are refused with 415
/// `not_flv` saying what HLS needs, on the ingest node and on a relay node, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_other_bytes_gets_415_for_hls() {
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let servers = three_servers(&d, dir.path()).await;
    let stream = "not-media";
    let r = http_client()
        .post(format!("{}/v1/assignments", d.url))
        .json(&json!({"stream": stream, "location": "Paris, FR"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    let (id, addr, tok) = pick(&a, "primary");
    // 70 KB: enough to be sure it is not MPEG-TS either (no sync bytes 188 apart).
    let chunks: Arc<Vec<Bytes>> = Arc::new(
        (0..120)
            .map(|i| Bytes::from(format!("not a media file, chunk {i:03}").repeat(20)))
            .collect(),
    );
    push(addr, stream.into(), Role::Primary, tok, chunks, 120, false)
        .await
        .unwrap();
    let ingest = servers.iter().find(|s| s.cfg.id == id).unwrap().http;
    let relay = servers
        .iter()
        .find(|s| s.cfg.id != id && a["backup"]["server_id"] != s.cfg.id.as_str())
        .unwrap()
        .http;
    for node in [ingest, relay, ingest, relay] {
        let (status, h, body) = get_text(&format!("http://{node}/hls/{stream}/index.m3u8")).await;
        assert_eq!(status, 415, "{body}");
        assert_eq!(h["access-control-allow-origin"], "*");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["code"], "not_flv", "{v}");
        assert!(v["error"].as_str().unwrap().contains("MPEG-TS"), "{v}");
    }
}

/// An MPEG-TS broadcast whose first chunk holds only its first packets (SDT, PAT, PMT: no
/// timestamp yet): its playlist is "not live yet" (503, Retry-After), not refused for good; once
/// the rest comes it plays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ts_broadcast_seen_before_its_first_timestamp_plays_once_it_comes() {
    need_ffmpeg();
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let servers = three_servers(&d, dir.path()).await;
    let ts = run(Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
        .args([
            "-t", "4", "-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p",
        ])
        .args(["-f", "mpegts", "-"]))
    .stdout;
    let mut chunks = vec![Bytes::copy_from_slice(&ts[..188 * 3])];
    chunks.extend(ts[188 * 3..].chunks(188 * 40).map(Bytes::copy_from_slice));
    let n = chunks.len();
    let chunks = Arc::new(chunks);
    let stream = "ts-late";
    let r = http_client()
        .post(format!("{}/v1/assignments", d.url))
        .json(&json!({"stream": stream, "location": "Paris, FR"}))
        .send()
        .await
        .unwrap();
    let a: Value = r.json().await.unwrap();
    let (id, addr, tok) = pick(&a, "primary");
    let http = servers.iter().find(|s| s.cfg.id == id).unwrap().http;
    push(
        addr.clone(),
        stream.into(),
        Role::Primary,
        tok.clone(),
        chunks.clone(),
        1,
        false,
    )
    .await
    .unwrap();
    let url = format!("http://{http}/hls/{stream}/classic.m3u8");
    let (status, h, body) = get_text(&url).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(h["retry-after"], "2");
    push(addr, stream.into(), Role::Primary, tok, chunks, n, false)
        .await
        .unwrap();
    // The next lookup is at most a second later.
    let mut last = String::new();
    for _ in 0..40 {
        let (status, _, body) = get_text(&url).await;
        if status == 200 && body.contains("#EXTINF:") {
            return;
        }
        last = format!("{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, _, ll) = get_text(&format!("http://{http}/hls/{stream}/index.m3u8")).await;
    let m = get_text(&format!("http://{http}/metrics")).await.2;
    let m: Vec<&str> = m.lines().filter(|l| l.contains("hls")).collect();
    panic!("never played: {last}\nLL: {ll}\n{m:?}");
}
