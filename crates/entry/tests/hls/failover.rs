//! HLS on a relay node when the primary ingest server dies mid-broadcast: the relay's segments
//! are numbered, timed and muxed exactly as the surviving ingest server's (the same playlist,
//! the same bytes per URL, no discontinuity, no gap), and ffprobe reads the source's packets
//! from it with the source's codecs and timestamps. Before that, what a viewer sees for a
//! stream that is not live yet (503 + Retry-After) and the refusals of hostile directives and
//! resource names, each with its error code.

use super::super::rtmp::{assign_rtmp, make_source, packet_md5s, publish_tee, run, wait_seq};
use super::super::*;
use super::get_text;
use std::collections::BTreeMap;
use std::process::Command;

/// Decode times (s) per codec type (`video`, `audio`) as ffprobe reads them in `url`.
fn packet_dts(url: &str) -> BTreeMap<String, Vec<f64>> {
    let out = run(Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "packet=codec_type,dts_time"])
        .args(["-of", "csv=p=0"])
        .arg(url));
    let mut m: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        let mut it = l.trim().split(',');
        let (Some(kind), Some(t)) = (it.next(), it.next()) else {
            continue;
        };
        let t: f64 = t
            .parse()
            .unwrap_or_else(|_| panic!("ffprobe dts {t:?} in {l:?}"));
        m.entry(kind.to_string()).or_default().push(t);
    }
    m
}

/// The codec names of the streams ffprobe finds in `url`, sorted (each stream once: the HLS
/// demuxer lists them under its program too).
fn codecs(url: &str) -> Vec<String> {
    let out = run(Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "stream=index,codec_name"])
        .args(["-of", "csv=p=0"])
        .arg(url));
    let streams: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().split_once(','))
        .map(|(i, c)| (i.to_string(), c.to_string()))
        .collect();
    let mut v: Vec<String> = streams.into_values().collect();
    v.sort();
    v
}

/// A playlist's media lines (sequence, map, durations, gaps, discontinuities, URIs): all but
/// EXT-X-PROGRAM-DATE-TIME, which each node anchors on its own clock.
fn media_lines(playlist: &str) -> Vec<&str> {
    playlist
        .lines()
        .filter(|l| !l.starts_with("#EXT-X-PROGRAM-DATE-TIME"))
        .collect()
}

/// The error code of a JSON error body.
fn code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("<not an error body: {body}>"))
}

/// Poll `url` (a playlist of an ended broadcast on a node) until it says `#EXT-X-ENDLIST`.
async fn ended_playlist(url: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, text) = get_text(url).await;
        if status == 200 && text.ends_with("#EXT-X-ENDLIST\n") {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} did not end within 30 s: {status}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_on_a_relay_survives_the_primary_dying_with_the_same_segments() {
    super::super::rtmp::need_ffmpeg();
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let dp = dir.path().to_path_buf();
    let mut servers = {
        // The relay node answers a viewer of a stream that is not live within a second.
        let mut nyc = testkit::entry_config("nyc-1", "nyc", "New York City", &dp, Some(&d));
        nyc.viewer_wait_ms = 1000;
        [
            Server::start(
                testkit::entry_config("lon-1", "lon", "London", &dp, Some(&d)),
                "127.0.0.2",
            ),
            Server::start(
                testkit::entry_config("fra-1", "fra", "Frankfurt", &dp, Some(&d)),
                "127.0.0.3",
            ),
            Server::start(nyc, "127.0.0.4"),
        ]
    };
    wait_registered(&d, 3).await;
    let (fra, nyc) = (servers[1].http, servers[2].http);
    let src = make_source(&dp, 10);
    let stream = "hls-failover";
    let a = assign_rtmp(&d, stream).await;
    let broadcast = a["broadcast"].as_str().unwrap().to_string();
    assert_eq!(a["primary"]["server_id"], "lon-1", "{a}");
    assert_eq!(a["backup"]["server_id"], "fra-1", "{a}");

    // Assigned, not published yet: a viewer is told to come back, in both flavours.
    for playlist in ["index.m3u8", "classic.m3u8"] {
        let (status, h, body) = get_text(&format!("http://{nyc}/hls/{stream}/{playlist}")).await;
        assert_eq!(
            (status, code(&body).as_str()),
            (503, "not_live_yet"),
            "{body}"
        );
        assert_eq!(h["retry-after"], "2", "{playlist}");
        assert_eq!(h["access-control-allow-origin"], "*", "{playlist}");
        assert_eq!(h["cache-control"], "no-store", "{playlist}");
    }

    let publisher = publish_tee(
        &src,
        &[
            a["primary"]["url"].as_str().unwrap(),
            a["backup"]["url"].as_str().unwrap(),
        ],
    );
    for s in &servers[..2] {
        wait_seq(s.http, stream, 10).await;
    }
    // The relay packages the merged stream; a blocking reload returns once segment 1 is
    // complete (a keyframe a second, 2 s windows: about 4 s into the broadcast).
    let ll = format!("http://{nyc}/hls/{stream}/index.m3u8");
    let (status, _, first) = get_text(&format!("{ll}?_HLS_msn=1")).await;
    assert_eq!(status, 200, "{first}");
    assert!(
        first.contains("\n1.m4s\n") || first.contains("/1.m4s"),
        "{first}"
    );

    // Hostile directives and resource names, while live: a 4xx that says what was wrong.
    let hint = first
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))
        .expect("a preload hint while live")
        .trim_end_matches('"')
        .to_string();
    let f = hint.rsplit('/').next().unwrap().split('?').next().unwrap();
    let (msn, part): (u64, u64) = {
        let mut it = f.trim_end_matches(".m4s").split('.');
        (
            it.next().unwrap().parse().unwrap(),
            it.next().unwrap().parse().unwrap(),
        )
    };
    let refusals = [
        // Parts further ahead than the Advance Part Limit (3 s of parts: 6 at 500 ms).
        (
            format!("{ll}?_HLS_msn={msn}&_HLS_part={}", part + 6),
            400,
            "too_far_ahead",
        ),
        (format!("{ll}?_HLS_msn={}", msn + 3), 400, "too_far_ahead"),
        (
            format!("{ll}?_HLS_msn={msn}&_HLS_part=-1"),
            400,
            "bad_directive",
        ),
        (format!("{ll}?_HLS_msn=1e3"), 400, "bad_directive"),
        (
            format!("{ll}?_HLS_msn=99999999999999999999999"),
            400,
            "bad_directive",
        ),
        (format!("{ll}?_HLS_part=0"), 400, "bad_directive"),
        (
            format!("http://{nyc}/hls/{stream}/{broadcast}/..%2F..%2F..%2Fetc%2Fpasswd"),
            400,
            "bad_file",
        ),
        (
            format!("http://{nyc}/hls/{stream}/{broadcast}/1.m4s%00.mp4"),
            400,
            "bad_file",
        ),
        (
            format!("http://{nyc}/hls/{stream}/{broadcast}/init-zzzzzzzz.mp4"),
            400,
            "bad_file",
        ),
        (
            format!("http://{nyc}/hls/{stream}/..%2F{broadcast}/1.m4s"),
            400,
            "bad_broadcast",
        ),
        (
            format!("http://{nyc}/hls/..%2Fetc/{broadcast}/1.m4s"),
            400,
            "bad_stream",
        ),
        (
            format!("http://{nyc}/hls/a%20b/index.m3u8"),
            400,
            "bad_stream",
        ),
        (format!("http://{nyc}/hls/.x/index.m3u8"), 400, "bad_stream"),
        (
            format!("http://{nyc}/hls/no-such-stream/index.m3u8"),
            404,
            "not_found",
        ),
    ];
    for (url, want, want_code) in &refusals {
        let (status, h, body) = get_text(url).await;
        assert_eq!(
            (status, code(&body).as_str()),
            (*want, *want_code),
            "{url}: {body}"
        );
        let message = serde_json::from_str::<Value>(&body).unwrap()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.len() > 10, "{url}: no explanation in {body}");
        assert_eq!(h["access-control-allow-origin"], "*", "{url}");
    }

    // The primary dies; the relay goes on from the backup, the publisher too.
    servers[0].kill();
    let out = publisher.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q = format!("broadcast={broadcast}");
    let relay = ended_playlist(&format!("http://{nyc}/hls/{stream}/classic.m3u8?{q}")).await;
    let backup = ended_playlist(&format!("http://{fra}/hls/{stream}/classic.m3u8?{q}")).await;
    // The same segments, numbered from 0, with no discontinuity and no gap.
    assert_eq!(
        media_lines(&relay),
        media_lines(&backup),
        "relay:\n{relay}\nbackup:\n{backup}"
    );
    assert!(relay.contains("#EXT-X-MEDIA-SEQUENCE:0\n"), "{relay}");
    for bad in ["#EXT-X-DISCONTINUITY", "#EXT-X-GAP"] {
        assert!(!relay.contains(bad), "{bad} in\n{relay}");
    }
    let uris: Vec<&str> = relay.lines().filter(|l| !l.starts_with('#')).collect();
    // 10 s in 2 s windows: five segments (msn 0 to 4).
    let names: Vec<&str> = uris.iter().map(|u| u.rsplit('/').next().unwrap()).collect();
    assert_eq!(
        names,
        ["0.m4s", "1.m4s", "2.m4s", "3.m4s", "4.m4s"],
        "{relay}"
    );
    let map = relay
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MAP:URI=\""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    for uri in uris.iter().copied().chain([map.as_str()]) {
        let (x, y) = (
            get(format!("http://{nyc}/hls/{stream}/{uri}"))
                .await
                .unwrap(),
            get(format!("http://{fra}/hls/{stream}/{uri}"))
                .await
                .unwrap(),
        );
        assert_eq!(
            (x.status().as_u16(), y.status().as_u16()),
            (200, 200),
            "{uri}"
        );
        let (x, y) = (x.bytes().await.unwrap(), y.bytes().await.unwrap());
        assert!(
            !x.is_empty() && x == y,
            "{uri} differs between the relay and the backup"
        );
    }

    // ffprobe on the relay: the source's codecs, packets and timestamps (LL-HLS and plain).
    for playlist in ["index.m3u8", "classic.m3u8"] {
        let url = format!("http://{nyc}/hls/{stream}/{playlist}?{q}");
        assert_eq!(codecs(&url), ["aac", "h264"], "{playlist}");
        let (have, want) = (packet_dts(&url), packet_dts(src.to_str().unwrap()));
        assert_eq!(
            have.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "{playlist}"
        );
        // 10 s at 25 fps and 44.1 kHz AAC (1024 samples a frame).
        assert!(
            want["video"].len() >= 250 && want["audio"].len() >= 400,
            "{want:?}"
        );
        for (kind, w) in &want {
            let h = &have[kind];
            assert_eq!(h.len(), w.len(), "{playlist} {kind} packets");
            // Strictly increasing, and at the source's distances from the first packet
            // (FLV has millisecond timestamps; fMP4 audio counts samples: 2 ms of slack).
            for (i, pair) in h.windows(2).enumerate() {
                assert!(
                    pair[1] > pair[0],
                    "{playlist} {kind} dts goes back at {i}: {pair:?}"
                );
            }
            for (i, (x, y)) in h.iter().zip(w).enumerate() {
                let (dx, dy) = (x - h[0], y - w[0]);
                assert!(
                    (dx - dy).abs() <= 0.002,
                    "{playlist} {kind} packet {i}: {dx:.4} s after the first, source {dy:.4} s"
                );
            }
        }
        assert_eq!(
            packet_md5s(std::path::Path::new(&url)),
            packet_md5s(&src),
            "{playlist}: the relay's packets are not the source's"
        );
    }
}
