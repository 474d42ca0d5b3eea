//! RTMP ingest, HTTP-FLV and HTTP push, proven with real ffmpeg (installed by
//! `scripts/media-deps.sh`), plus hostile RTMP at the socket level.

use super::*;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Command, Stdio};

/// ffmpeg and ffprobe, or a failure that says how to get them.
pub(crate) fn need_ffmpeg() {
    for tool in ["ffmpeg", "ffprobe"] {
        let ok = Command::new(tool)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "{tool} is missing: run scripts/media-deps.sh (scripts/test runs it)"
        );
    }
}

pub(crate) fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A short test pattern with sound, H.264 + AAC in FLV (a keyframe every second).
/// ffmpeg publishing `src` in real time (`-re`) to every RTMP URL at once (`tee`, each output
/// failing alone), in the background: its output once it ends.
pub(crate) fn publish_tee(
    src: &FsPath,
    urls: &[&str],
) -> tokio::task::JoinHandle<std::process::Output> {
    let tee = urls
        .iter()
        .map(|u| format!("[f=flv:onfail=ignore]{u}"))
        .collect::<Vec<_>>()
        .join("|");
    let src = src.to_path_buf();
    tokio::task::spawn_blocking(move || {
        Command::new("ffmpeg")
            .arg("-nostdin")
            .args(["-hide_banner", "-loglevel", "error", "-re", "-i"])
            .arg(&src)
            .args(["-map", "0", "-c", "copy", "-f", "tee", &tee])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
}

pub(crate) fn make_source(dir: &FsPath, secs: u32) -> PathBuf {
    make_pattern(dir, "src.flv", secs, "testsrc2", 440)
}

/// [`make_source`] with a chosen file name, lavfi video source and tone (so two patterns have
/// different packets).
pub(crate) fn make_pattern(dir: &FsPath, name: &str, secs: u32, video: &str, hz: u32) -> PathBuf {
    let p = dir.join(name);
    run(Command::new("ffmpeg")
        .arg("-nostdin")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            &format!("{video}=size=320x240:rate=25"),
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency={hz}:sample_rate=44100"),
            "-t",
            &secs.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "25",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-f",
            "flv",
        ])
        .arg(&p));
    p
}

/// Per-packet checksums of a media file via ffmpeg's framemd5, per stream (named by codec, as
/// demuxers number streams in the order their first packets come): "codec,size,md5".
pub(crate) fn packet_md5s(file: &FsPath) -> Vec<String> {
    let out = run(Command::new("ffmpeg")
        .arg("-nostdin")
        .args(["-hide_banner", "-loglevel", "error", "-i"])
        .arg(file)
        .args(["-map", "0", "-c", "copy", "-f", "framemd5", "-"]));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut codec = std::collections::BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("#codec_id ")
            && let Some((i, c)) = rest.split_once(':')
        {
            codec.insert(i.trim().to_string(), c.trim().to_string());
        }
    }
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            // stream_index, dts, pts, duration, size, hash
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let c = codec.get(f[0]).cloned().unwrap_or_else(|| f[0].to_string());
            // dts left out: the publishing ffmpeg re-bases timestamps when it remuxes.
            format!("{c},{},{}", f[4], f[5])
        })
        .collect();
    // Group by stream, keeping each stream's packet order.
    lines.sort_by(|a, b| a.split(',').next().cmp(&b.split(',').next()));
    lines
}

pub(crate) async fn assign_rtmp(d: &Director, stream: &str) -> Value {
    let r = http_client()
        .post(format!("{}/v1/assignments", d.url))
        .json(&json!({"stream": stream, "location": "Paris, FR", "protocol": "rtmp", "bitrate_kbps": 1000}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    r.json().await.unwrap()
}

pub(crate) async fn next_seq(http: SocketAddr, stream: &str) -> u64 {
    stream_row(http, stream).await["next_seq"]
        .as_u64()
        .unwrap_or(0)
}

pub(crate) async fn wait_seq(http: SocketAddr, stream: &str, at_least: u64) {
    for _ in 0..1000 {
        if next_seq(http, stream).await >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{http} never reached sequence {at_least} of {stream}");
}

async fn fetch(url: String) -> Result<Vec<u8>, String> {
    let r = get(&url).await.map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!("{url}: {}", r.status()));
    }
    r.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
}

/// What a viewer started with [`fetch`] got once the stream ended, written to `dir/name`.
async fn viewer_got(
    viewer: tokio::task::JoinHandle<Result<Vec<u8>, String>>,
    dir: &FsPath,
    name: &str,
) -> (Vec<u8>, PathBuf) {
    let got = tokio::time::timeout(Duration::from_secs(30), viewer)
        .await
        .expect("the viewer ends with the stream")
        .unwrap()
        .expect("viewer");
    let path = dir.join(name);
    std::fs::write(&path, &got).unwrap();
    (got, path)
}

/// Dual RTMP publish with `tee` to the primary and the backup; a viewer on a third node gets
/// HTTP-FLV from the start through the relay, and an ffprobe there plays it from the live edge.
/// Packet checksums equal the source's, with or without the primary killed mid-stream.
async fn dual_publish_case(kill_primary: bool) {
    need_ffmpeg();
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let dp = dir.path().to_path_buf();
    let mut servers = three_servers(&d, &dp).await;
    let src = make_source(&dp, 4);
    let stream = if kill_primary {
        "rtmp-kill"
    } else {
        "rtmp-dual"
    };
    let a = assign_rtmp(&d, stream).await;
    let (pu, bu) = (
        a["primary"]["url"].as_str().unwrap().to_string(),
        a["backup"]["url"].as_str().unwrap().to_string(),
    );
    assert!(
        pu.starts_with(&format!("rtmp://{}/live/{stream}?token=", servers[0].rtmp)),
        "{a}"
    );
    assert!(
        bu.starts_with(&format!("rtmp://{}/live/{stream}?token=", servers[1].rtmp)),
        "{a}"
    );
    let publisher = publish_tee(&src, &[&pu, &bu]);
    for s in &servers[..2] {
        wait_seq(s.http, stream, 10).await;
    }
    // The director learns the ingest servers from heartbeats; give it one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let nyc = servers[2].http;
    let viewer = tokio::spawn(fetch(format!("http://{nyc}/live/{stream}.flv?from=start")));
    let probe_url = format!("http://{nyc}/live/{stream}.flv");
    let probe = tokio::task::spawn_blocking(move || {
        Command::new("ffprobe")
            .stdin(Stdio::null())
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name:packet=stream_index",
                "-of",
                "csv",
            ])
            .arg(&probe_url)
            .output()
            .unwrap()
    });
    if kill_primary {
        let half = next_seq(servers[0].http, stream).await + 60;
        wait_seq(servers[0].http, stream, half).await;
        servers[0].kill();
    }
    let out = publisher.await.unwrap();
    assert!(
        out.status.success() || kill_primary,
        "publisher: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (got, recv) = viewer_got(viewer, &dp, "recv.flv").await;
    assert_eq!(&got[..3], b"FLV");
    let (want, have) = (packet_md5s(&src), packet_md5s(&recv));
    assert!(want.len() > 150, "source has {} packets", want.len());
    if want != have {
        let first = want.iter().zip(&have).position(|(a, b)| a != b);
        panic!(
            "packets differ: source {}, received {}, first difference at {first:?}: {:?} vs {:?}",
            want.len(),
            have.len(),
            first.map(|i| &want[i]),
            first.map(|i| &have[i])
        );
    }
    // ffprobe on the live edge: it started at once (codec configuration first) and saw both
    // streams and packets until the end.
    let p = probe.await.unwrap();
    let text = String::from_utf8_lossy(&p.stdout);
    assert!(
        p.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&p.stderr)
    );
    assert!(
        text.contains("stream,h264") && text.contains("stream,aac"),
        "{text}"
    );
    let packets = text.lines().filter(|l| l.starts_with("packet,")).count();
    assert!(packets > 20, "ffprobe saw {packets} packets");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_dual_publish_plays_on_a_third_node_with_identical_packets() {
    dual_publish_case(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_dual_publish_survives_killing_the_primary() {
    dual_publish_case(true).await;
}

/// One entry server, standalone.
fn standalone(dp: &FsPath) -> Server {
    Server::start(
        entry_config("solo-1", "solo", "Paris", dp, None),
        "127.0.0.1",
    )
}

fn solo_token(stream: &str) -> String {
    token_for(
        &token::SigningKey::from_bytes(&[7u8; 32]),
        stream,
        "solo-1",
        Role::Primary,
        far_future(),
    )
}

/// Does a connection end (EOF or reset) within a few seconds?
async fn closes(sock: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 65536];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// A client handshake by hand (C0 C1, read S0 S1 S2, C2).
async fn handshake(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut c01 = vec![3u8];
    c01.extend((0..1536).map(|i| (i % 251) as u8));
    s.write_all(&c01).await.unwrap();
    let mut s012 = vec![0u8; 1 + 1536 * 2];
    s.read_exact(&mut s012).await.unwrap();
    s.write_all(&s012[1..1537]).await.unwrap();
    s
}

fn ffmpeg_publish(src: &FsPath, url: &str) -> std::process::Child {
    Command::new("ffmpeg")
        .arg("-nostdin")
        .args(["-hide_banner", "-loglevel", "error", "-re", "-i"])
        .arg(src)
        .args(["-map", "0", "-c", "copy", "-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Malformed and hostile RTMP: each is refused cleanly (its own connection closes), nothing
/// panics, and a good publish on the same server carries on to an intact end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_rtmp_is_refused_and_other_sessions_carry_on() {
    need_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let dp = dir.path().to_path_buf();
    let s = standalone(&dp);
    let src = make_source(&dp, 3);
    let good_url = format!("rtmp://{}/live/good?token={}", s.rtmp, solo_token("good"));
    let good = ffmpeg_publish(&src, &good_url);
    wait_seq(s.http, "good", 5).await;

    // Bad handshake: unknown version byte.
    let mut c = TcpStream::connect(s.rtmp).await.unwrap();
    c.write_all(&[0x42; 1537]).await.unwrap();
    assert!(closes(&mut c).await, "bad handshake must close");
    // Truncated chunk: a chunk header cut short, then the client goes away.
    let mut c = handshake(s.rtmp).await;
    c.write_all(&[0x03, 0x00, 0x00]).await.unwrap();
    drop(c);
    // Huge chunk size: Set Chunk Size 0x7fffffff+1 (over the 31-bit limit).
    let mut c = handshake(s.rtmp).await;
    c.write_all(&[0x02, 0, 0, 0, 0, 0, 4, 0x01, 0, 0, 0, 0, 0x80, 0, 0, 0])
        .await
        .unwrap();
    assert!(closes(&mut c).await, "huge chunk size must close");
    // A message header claiming 16 MiB then garbage chunks of another stream id.
    let mut c = handshake(s.rtmp).await;
    let mut junk = vec![0x03, 0, 0, 0, 0xff, 0xff, 0xff, 0x14, 0, 0, 0, 0];
    junk.extend(std::iter::repeat_n(0xAAu8, 128));
    junk.extend([0x04, 0, 0, 0, 0, 0, 1, 0x14, 0, 0, 0, 0, 0x05]);
    let _ = c.write_all(&junk).await;
    drop(c);

    // Wrong token, a token for another stream, and a second publisher of "good".
    let wrong = format!("rtmp://{}/live/other?token=not-a-token", s.rtmp);
    let misdirected = format!("rtmp://{}/live/other?token={}", s.rtmp, solo_token("good"));
    let no_token = format!("rtmp://{}/live/other", s.rtmp);
    for url in [&wrong, &misdirected, &no_token, &good_url] {
        let out = tokio::task::spawn_blocking({
            let (src, url) = (src.clone(), url.clone());
            move || ffmpeg_publish(&src, &url).wait_with_output().unwrap()
        })
        .await
        .unwrap();
        assert!(!out.status.success(), "{url} must be refused");
    }
    // The server is up and the good publish went on to an intact end.
    let st = tokio::task::spawn_blocking(move || {
        let mut g = good;
        g.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(st.success());
    let got = fetch(format!("http://{}/live/good.flv?from=start", s.http))
        .await
        .unwrap();
    let recv = dp.join("good.flv");
    std::fs::write(&recv, &got).unwrap();
    assert_eq!(packet_md5s(&src), packet_md5s(&recv));
    // A stream that already holds data here is not re-published into.
    let out = tokio::task::spawn_blocking({
        let src = src.clone();
        move || ffmpeg_publish(&src, &good_url).wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        !out.status.success(),
        "re-publish into an ended stream must be refused"
    );
    let m = fetch(format!("http://{}/metrics", s.http)).await.unwrap();
    assert!(String::from_utf8_lossy(&m).contains("firstmile_entry_auth_failures_total 3"));
}

/// HTTP push: `curl -T -` (exact bytes back) and `ffmpeg -f mpegts -method POST` (plays).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_push_with_curl_and_ffmpeg() {
    need_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let dp = dir.path().to_path_buf();
    let s = standalone(&dp);
    let src = make_source(&dp, 2);
    let ts = dp.join("src.ts");
    run(Command::new("ffmpeg")
        .arg("-nostdin")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-i"])
        .arg(&src)
        .args(["-map", "0", "-c", "copy", "-f", "mpegts"])
        .arg(&ts));
    let url = format!(
        "http://{}/v1/streams/curl1/push?token={}",
        s.http,
        solo_token("curl1")
    );
    let ts2 = ts.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "60",
                "--fail-with-body",
                "-T",
                "-",
                &url,
            ])
            .stdin(std::fs::File::open(&ts2).unwrap())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "curl: {:?}", out);
    let got = fetch(format!(
        "http://{}/v1/streams/curl1/live?from=start",
        s.http
    ))
    .await
    .unwrap();
    assert!(got == std::fs::read(&ts).unwrap(), "pushed bytes differ");
    // A wrong token is refused.
    let bad = http_client()
        .post(format!("http://{}/v1/streams/curl2/push?token=x", s.http))
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);

    let url = format!(
        "http://{}/v1/streams/ff1/push?token={}",
        s.http,
        solo_token("ff1")
    );
    let src2 = src.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("ffmpeg")
            .arg("-nostdin")
            .args(["-hide_banner", "-loglevel", "error", "-re", "-i"])
            .arg(&src2)
            .args([
                "-map", "0", "-c", "copy", "-f", "mpegts", "-method", "POST", &url,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "ffmpeg push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = fetch(format!("http://{}/v1/streams/ff1/live?from=start", s.http))
        .await
        .unwrap();
    let recv = dp.join("ff1.ts");
    std::fs::write(&recv, &got).unwrap();
    let (want, have) = (packet_md5s(&ts), packet_md5s(&recv));
    assert_eq!(want.len(), have.len());
}

/// A stream's entry in a server's `GET /v1/streams` (Null when it is not there).
pub(crate) async fn stream_row(http: SocketAddr, stream: &str) -> Value {
    let Ok(r) = super::get_streams(http).await else {
        return Value::Null;
    };
    let v: Value = r.json().await.unwrap_or(Value::Null);
    v["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["stream"] == stream)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Wait (bounded) until the server has seen the stream's publisher go.
async fn wait_unpublished(http: SocketAddr, stream: &str) {
    for _ in 0..1000 {
        let r = stream_row(http, stream).await;
        if r["live_sessions"] == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{http} still has a publisher of {stream}");
}

/// Wait (bounded) until the director shows each of `servers` reporting chunks of the stream.
async fn wait_reported(d: &Director, stream: &str, servers: &[&str]) {
    for _ in 0..500 {
        let v: Value = match get(format!("{}/v1/streams/{stream}", d.url)).await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        let reported = |id: &str| {
            v["ingest"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["server_id"] == id && r["next_seq"].as_u64().is_some_and(|n| n > 0))
        };
        if servers.iter().all(|s| reported(s)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the director never saw {servers:?} report {stream}");
}

/// The first `n` chunks of an RTMP-ingested stream (from its plain byte stream, which never
/// ends while the stream is open), as an FLV file.
async fn first_tags(http: SocketAddr, stream: &str, n: u64) -> Vec<u8> {
    let mut r = get(format!("http://{http}/v1/streams/{stream}/live?from=start"))
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let mut body = Vec::new();
    let mut tags = 0u64;
    let mut at = 0usize;
    while tags < n {
        while at + 11 <= body.len() {
            let len = u32::from_be_bytes([0, body[at + 1], body[at + 2], body[at + 3]]) as usize;
            if at + len + 15 > body.len() {
                break;
            }
            at += len + 15;
            tags += 1;
            if tags == n {
                break;
            }
        }
        if tags == n {
            break;
        }
        let more = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .expect("stream data")
            .unwrap()
            .expect("the stream is open");
        body.extend_from_slice(&more);
    }
    let mut f = entry::flv::header(true, true).to_vec();
    f.extend_from_slice(&body[..at]);
    f
}

/// (type, timestamp ms) of every tag of an FLV file.
fn tag_times(file: &[u8]) -> Vec<(u8, u32)> {
    assert_eq!(&file[..3], b"FLV");
    let mut at = 13;
    let mut out = Vec::new();
    while at + 15 <= file.len() {
        let len = u32::from_be_bytes([0, file[at + 1], file[at + 2], file[at + 3]]) as usize + 15;
        let t = entry::flv::parse(&file[at..at + len]).expect("a whole FLV tag");
        out.push((t.kind, t.ts_ms));
        at += len;
    }
    assert_eq!(at, file.len(), "trailing bytes after the last tag");
    out
}

/// Packet checksum lines grouped by codec, each in order.
fn by_codec(lines: Vec<String>) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut m = std::collections::BTreeMap::<String, Vec<String>>::new();
    for l in lines {
        let c = l.split(',').next().unwrap_or("").to_string();
        m.entry(c).or_default().push(l);
    }
    m
}

/// Per-stream packet dts from ffprobe, in file order: (stream index, dts if any).
fn probe_dts(file: &FsPath) -> Vec<(String, Option<i64>)> {
    let out = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "packet=stream_index,dts",
            "-of",
            "csv=p=0",
        ])
        .arg(file));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (i, d) = l.split_once(',').unwrap_or((l, ""));
            (i.to_string(), d.trim().trim_end_matches(',').parse().ok())
        })
        .collect()
}

/// Issue 5, single path: an encoder publishing to one server only is killed mid-stream and a
/// new one publishes again with the same key. The stream continues: a viewer on that server
/// and one on a third node (through the relay), both started before the drop, get every packet
/// of the first publish that reached the server, then every packet of the second, in order,
/// once each, with timestamps that go on from where the first left off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_republish_after_a_drop_continues_the_stream() {
    need_ffmpeg();
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let dp = dir.path().to_path_buf();
    let servers = three_servers(&d, &dp).await;
    let src1 = make_pattern(&dp, "one.flv", 8, "testsrc2", 440);
    let src2 = make_pattern(&dp, "two.flv", 2, "testsrc", 880);
    let stream = "rtmp-again";
    let a = assign_rtmp(&d, stream).await;
    let pu = a["primary"]["url"].as_str().unwrap().to_string();
    let lon = servers[0].http;
    assert!(
        pu.starts_with(&format!("rtmp://{}/", servers[0].rtmp)),
        "{a}"
    );

    let mut first = ffmpeg_publish(&src1, &pu);
    wait_seq(lon, stream, 10).await;
    wait_reported(&d, stream, &["lon-1"]).await;
    let nyc = servers[2].http;
    let relayed = tokio::spawn(fetch(format!("http://{nyc}/live/{stream}.flv?from=start")));
    let local = tokio::spawn(fetch(format!("http://{lon}/live/{stream}.flv?from=start")));
    let mid = next_seq(lon, stream).await + 60;
    wait_seq(lon, stream, mid).await;
    first.kill().unwrap();
    first.wait().unwrap();
    wait_unpublished(lon, stream).await;
    let n1 = next_seq(lon, stream).await;
    let part1 = dp.join("part1.flv");
    std::fs::write(&part1, first_tags(lon, stream, n1).await).unwrap();
    let (src1_p, part1_p) = (by_codec(packet_md5s(&src1)), by_codec(packet_md5s(&part1)));
    for (codec, got) in &part1_p {
        let all = &src1_p[codec];
        assert!(
            !got.is_empty() && got.len() < all.len() && all[..got.len()] == got[..],
            "{codec}: the first publish's {} stored packets are not a strict prefix of its {}",
            got.len(),
            all.len()
        );
    }

    let src2b = src2.clone();
    let pu2 = pu.clone();
    let second = tokio::task::spawn_blocking(move || {
        ffmpeg_publish(&src2b, &pu2).wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        second.status.success(),
        "the re-publish must be accepted: {}",
        String::from_utf8_lossy(&second.stderr)
    );
    // A clean end ends the stream (once the server has seen the connection go).
    let mut row = Value::Null;
    for _ in 0..500 {
        row = stream_row(lon, stream).await;
        if row["ended"].as_u64().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        row["ended"].as_u64().is_some(),
        "the stream never ended: {row}"
    );

    let mut want = part1_p.clone();
    for (codec, lines) in by_codec(packet_md5s(&src2)) {
        want.entry(codec).or_default().extend(lines);
    }
    let want_packets: usize = want.values().map(Vec::len).sum();
    for (name, viewer) in [("local", local), ("relayed", relayed)] {
        let (got, recv) = viewer_got(viewer, &dp, &format!("{name}.flv")).await;
        let have = by_codec(packet_md5s(&recv));
        for (codec, w) in &want {
            let h = have.get(codec).cloned().unwrap_or_default();
            if *w != h {
                let at = w.iter().zip(&h).position(|(a, b)| a != b);
                panic!(
                    "{name} viewer, {codec}: want {} packets (first publish {} + second), got {}, \
                     first difference at {at:?}",
                    w.len(),
                    part1_p[codec].len(),
                    h.len()
                );
            }
        }
        // Timestamps: each tag type's at or after the one before, across the join (an encoder
        // interleaves audio a little ahead of video, so not across types); every tag of the
        // second publish at or after every tag of the first, and the join continuous (the
        // second publish restarted its clock at 0). Metadata tags are stamped 0.
        let times = tag_times(&got);
        for kind in [8u8, 9, 18] {
            let t: Vec<u32> = times.iter().filter(|t| t.0 == kind).map(|t| t.1).collect();
            for w in t.windows(2) {
                assert!(
                    w[1] >= w[0],
                    "{name}: type {kind} timestamps go back: {w:?}"
                );
            }
        }
        let media =
            |t: &[(u8, u32)]| -> Vec<u32> { t.iter().filter(|t| t.0 != 18).map(|t| t.1).collect() };
        let end1 = *media(&times[..n1 as usize]).iter().max().unwrap();
        let start2 = *media(&times[n1 as usize..]).iter().min().unwrap();
        assert!(
            start2 >= end1 && start2 - end1 <= 100,
            "{name}: the join goes from {end1} ms to {start2} ms"
        );
        // ffprobe: the packet count and per-stream decode order.
        let dts = probe_dts(&recv);
        assert_eq!(dts.len(), want_packets, "{name}: ffprobe packet count");
        let mut last = std::collections::BTreeMap::new();
        for (i, t) in dts {
            let t = t.unwrap_or_else(|| panic!("{name}: a packet of stream {i} has no dts"));
            let prev = last.insert(i.clone(), t).unwrap_or(i64::MIN);
            assert!(t >= prev, "{name}: stream {i} dts {t} after {prev}");
        }
    }
}

/// The first chunks of `stream` on `a` (as many as it holds now) are byte for byte those on
/// `b`.
async fn assert_copies(a: SocketAddr, b: SocketAddr, stream: &str) {
    let n = next_seq(a, stream).await;
    let (at_a, at_b) = (
        first_tags(a, stream, n).await,
        first_tags(b, stream, n).await,
    );
    assert!(at_a == at_b, "the first {n} chunks on {a} and {b} differ");
}

/// A dual publish through cuttable proxies: director, three servers (lon-1 primary, fra-1
/// backup, nyc-1), an `ffmpeg` `tee` of `src` to both, each path through a [`proxy_once`]
/// (`Stop::Cut`) when asked, running until both servers hold `at_least` chunks.
pub(crate) struct TeeRun {
    _d: Director,
    _dir: tempfile::TempDir,
    pub(crate) servers: [Server; 3],
    src: PathBuf,
    pu: String,
    bu: String,
    /// The cuts of the proxied paths (primary, backup).
    cuts: [Option<tokio::sync::oneshot::Sender<()>>; 2],
    started: std::time::Instant,
    pub(crate) publisher: tokio::task::JoinHandle<std::process::Output>,
}

pub(crate) async fn tee_run(stream: &str, secs: u32, proxied: [bool; 2], at_least: u64) -> TeeRun {
    need_ffmpeg();
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let servers = three_servers(&d, dir.path()).await;
    let src = make_source(dir.path(), secs);
    let a = assign_rtmp(&d, stream).await;
    let (pu, bu) = (
        a["primary"]["url"].as_str().unwrap().to_string(),
        a["backup"]["url"].as_str().unwrap().to_string(),
    );
    let mut cuts = [None, None];
    let mut outs = Vec::new();
    for (i, url) in [&pu, &bu].into_iter().enumerate() {
        let mut url = url.clone();
        if proxied[i] {
            let (proxy, cut, _) = proxy_once(servers[i].rtmp, Stop::Cut).await;
            url = url.replace(&servers[i].rtmp.to_string(), &proxy.to_string());
            cuts[i] = Some(cut);
        }
        outs.push(url);
    }
    let started = std::time::Instant::now();
    let publisher = publish_tee(&src, &[&outs[0], &outs[1]]);
    for s in &servers[..2] {
        wait_seq(s.http, stream, at_least).await;
    }
    wait_reported(&d, stream, &["lon-1", "fra-1"]).await;
    TeeRun {
        _d: d,
        _dir: dir,
        servers,
        src,
        pu,
        bu,
        cuts,
        started,
        publisher,
    }
}

/// Issue 5, dual path: a `tee` publishes to both servers; the path to the primary is cut
/// mid-stream while the backup keeps receiving. The encoder's primary output reconnects (an
/// `ffmpeg` sending the same packets from a little before where the stream is, its clock
/// restarted, as an encoder's reconnecting output does) and *rejoins*: the primary mirrors the
/// backup's log, byte for byte. Then the backup server dies: the primary goes on from the
/// rejoined encoder alone, and a viewer on a third node gets the whole source, every packet
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_dual_path_rejoins_then_carries_the_stream_when_the_other_server_dies() {
    let stream = "rtmp-rejoin";
    let mut run = tee_run(stream, 8, [true, false], 10).await;
    let (servers, src, pu) = (&mut run.servers, &run.src, &run.pu);
    let (lon, fra) = (servers[0].http, servers[1].http);
    let dp = run._dir.path().to_path_buf();
    let nyc = servers[2].http;
    let viewer = tokio::spawn(fetch(format!("http://{nyc}/live/{stream}.flv?from=start")));
    let mid = next_seq(lon, stream).await + 30;
    wait_seq(lon, stream, mid).await;
    run.cuts[0].take().unwrap().send(()).unwrap();
    wait_unpublished(lon, stream).await;
    let held = next_seq(lon, stream).await;

    // The primary output reconnects: the same packets from where the stream is (ffmpeg -ss
    // starts at the keyframe before, up to a second back), its timestamps from 0 again.
    let rejoined = publish_from(src, run.started.elapsed().as_secs_f64(), pu);
    // The primary mirrors the backup: it finds the reconnected output's packets in the
    // backup's copy, and what it holds is the backup's log, byte for byte.
    let mut row = Value::Null;
    for _ in 0..1000 {
        row = stream_row(lon, stream).await;
        if row["rejoin"]
            .as_str()
            .is_some_and(|r| r.ends_with("aligned"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(row["rejoin"], "mirroring fra-1, aligned", "{row}");
    assert!(next_seq(lon, stream).await > held);
    assert_copies(lon, fra, stream).await;

    // The backup dies mid-stream: the primary carries on from the rejoined encoder.
    servers[1].kill();
    let first = run.publisher.await.unwrap();
    assert!(first.status.success() || !first.stderr.is_empty());
    let out = rejoined.await.unwrap();
    assert!(
        out.status.success(),
        "the rejoined publish runs to its end: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, recv) = viewer_got(viewer, &dp, "recv.flv").await;
    let (want, have) = (by_codec(packet_md5s(src)), by_codec(packet_md5s(&recv)));
    assert!(want.values().map(Vec::len).sum::<usize>() > 300);
    for (codec, w) in &want {
        let h = have.get(codec).cloned().unwrap_or_default();
        let at = w.iter().zip(&h).position(|(a, b)| a != b);
        assert!(
            *w == h,
            "{codec}: the viewer's packets differ from the source's ({} vs {}, first \
             difference at {at:?})",
            w.len(),
            h.len()
        );
    }
}

/// An encoder output reconnecting mid-stream: `src` published from `secs` in (ffmpeg -ss starts
/// at the keyframe before), its timestamps from 0 again.
fn publish_from(
    src: &FsPath,
    secs: f64,
    url: &str,
) -> tokio::task::JoinHandle<std::process::Output> {
    let (src, url) = (src.to_path_buf(), url.to_string());
    tokio::task::spawn_blocking(move || {
        Command::new("ffmpeg")
            .arg("-nostdin")
            .args(["-hide_banner", "-loglevel", "error", "-re", "-ss"])
            .arg(format!("{:.2}", secs.max(0.0)))
            .arg("-i")
            .arg(&src)
            .args(["-map", "0", "-c", "copy", "-f", "flv", &url])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
}

/// Issue 5, both paths of a dual publish drop at once (the encoder's own uplink blipped) and
/// both outputs reconnect: each server finds the other holding the stream, so both start to
/// rejoin, mirroring each other, and neither copy grows. They break the tie: the server with
/// the smaller id leads (continues from its encoder output), the other mirrors it. The stream
/// goes on, and the two logs stay byte-for-byte copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_both_paths_rejoining_at_once_elect_one_leader() {
    let stream = "rtmp-both";
    let mut run = tee_run(stream, 9, [true, true], 40).await;
    let (lon, fra) = (run.servers[0].http, run.servers[1].http);
    let (src, pu, bu) = (&run.src, &run.pu, &run.bu);
    for cut in &mut run.cuts {
        cut.take().unwrap().send(()).unwrap();
    }
    wait_unpublished(lon, stream).await;
    wait_unpublished(fra, stream).await;
    let held = next_seq(lon, stream).await.max(next_seq(fra, stream).await);

    let at = run.started.elapsed().as_secs_f64();
    let (to_lon, to_fra) = (publish_from(src, at, pu), publish_from(src, at, bu));
    // fra-1 < lon-1: fra-1 leads once both have seen the other stand still; lon-1 mirrors it.
    let (mut rl, mut rf) = (Value::Null, Value::Null);
    for _ in 0..2000 {
        rl = stream_row(lon, stream).await;
        rf = stream_row(fra, stream).await;
        if rl["rejoin"] == "mirroring fra-1, aligned"
            && !rf["rejoin"]
                .as_str()
                .is_some_and(|r| r.starts_with("mirroring"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if rl["rejoin"] != "mirroring fra-1, aligned" {
        let (a, b) = (to_lon.await.unwrap(), to_fra.await.unwrap());
        panic!(
            "lon-1: {rl}, fra-1: {rf}; publishers: {} / {}",
            String::from_utf8_lossy(&a.stderr),
            String::from_utf8_lossy(&b.stderr)
        );
    }
    // The stream goes on, through the leader and into the mirror.
    wait_seq(lon, stream, held + 60).await;
    assert_copies(lon, fra, stream).await;
    let _ = run.publisher.await.unwrap();
    for out in [to_lon.await.unwrap(), to_fra.await.unwrap()] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What a [`proxy_once`] does when told to stop forwarding.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    /// Close both connections (a path that fails loudly).
    Cut,
    /// Keep both open and silent, as a network that drops a path without a word does.
    Freeze,
}

/// A TCP forwarder to `to` for one connection; the sender stops it (see [`Stop`]); the receiver
/// fires when the server has closed its side after that.
async fn proxy_once(
    to: SocketAddr,
    stop: Stop,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut a, _) = l.accept().await.unwrap();
        let mut b = TcpStream::connect(to).await.unwrap();
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
            _ = stop_rx => {}
        }
        if stop == Stop::Cut {
            return;
        }
        // Frozen: the publisher's side stays open and silent; drain what the server says
        // until it hangs up.
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = b.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
        let _ = closed_tx.send(());
        drop(a);
    });
    (addr, stop_tx, closed_rx)
}

/// Issue 5, OBS after a network blip: the old connection is silently dead (half-open), the
/// encoder reconnects with the URL it was given — whose token has expired meanwhile. The new
/// publish takes over from the silent connection (which the server then closes) well before
/// that connection's 15 s read timeout, and continues the stream; an expired token cannot
/// start a stream that is not held here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_reconnect_takes_over_a_silent_connection_even_with_an_expired_token() {
    need_ffmpeg();
    let dir = tempfile::tempdir().unwrap();
    let dp = dir.path().to_path_buf();
    let s = standalone(&dp);
    let src1 = make_pattern(&dp, "one.flv", 8, "testsrc2", 440);
    let src2 = make_pattern(&dp, "two.flv", 2, "testsrc", 880);
    let stream = "obs-blip";
    let key = token::SigningKey::from_bytes(&[7u8; 32]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expired = token_for(&key, stream, "solo-1", Role::Primary, now - 60);

    let (proxy, freeze, closed) = proxy_once(s.rtmp, Stop::Freeze).await;
    let mut first = ffmpeg_publish(
        &src1,
        &format!("rtmp://{proxy}/live/{stream}?token={}", solo_token(stream)),
    );
    wait_seq(s.http, stream, 60).await;
    freeze.send(()).unwrap();
    let frozen_at = std::time::Instant::now();
    first.kill().unwrap();
    first.wait().unwrap();

    let publish = |src: PathBuf, url: String| {
        tokio::task::spawn_blocking(move || ffmpeg_publish(&src, &url).wait_with_output().unwrap())
    };
    // An expired token starts nothing.
    let other = token_for(&key, "fresh", "solo-1", Role::Primary, now - 60);
    let out = publish(
        src2.clone(),
        format!("rtmp://{}/live/fresh?token={other}", s.rtmp),
    )
    .await
    .unwrap();
    assert!(!out.status.success(), "an expired token started a stream");
    assert_eq!(stream_row(s.http, "fresh").await, Value::Null);

    // The reconnect: refused while the old connection is only briefly silent, then accepted.
    let url = format!("rtmp://{}/live/{stream}?token={expired}", s.rtmp);
    loop {
        let out = publish(src2.clone(), url.clone()).await.unwrap();
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            frozen_at.elapsed() < Duration::from_secs(10),
            "the reconnect was not accepted within 10 s of the old connection going silent \
             (its read timeout is 15 s): {err}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::timeout(Duration::from_secs(5), closed)
        .await
        .expect("the server closes the silent connection it replaced")
        .unwrap();

    // The stream: the first publish's packets (a prefix of its source), then all of the second.
    let mut row = Value::Null;
    for _ in 0..500 {
        row = stream_row(s.http, stream).await;
        if row["ended"].as_u64().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = row["ended"]
        .as_u64()
        .expect("the clean end ends the stream")
        + 1;
    let stored = first_tags(s.http, stream, total).await;
    let times = tag_times(&stored);
    let join = times
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, t)| t.0 == 18)
        .map(|(i, _)| i)
        .expect("the second publish's metadata tag");
    let part1 = dp.join("part1.flv");
    std::fs::write(&part1, first_tags(s.http, stream, join as u64).await).unwrap();
    let whole = dp.join("whole.flv");
    std::fs::write(&whole, &stored).unwrap();
    let (src1_p, part1_p) = (by_codec(packet_md5s(&src1)), by_codec(packet_md5s(&part1)));
    let mut want = part1_p.clone();
    for (codec, got) in &part1_p {
        let all = &src1_p[codec];
        assert!(
            !got.is_empty() && all[..got.len()] == got[..],
            "{codec}: the first publish's stored packets are not a prefix of its source"
        );
    }
    for (codec, lines) in by_codec(packet_md5s(&src2)) {
        want.entry(codec).or_default().extend(lines);
    }
    assert_eq!(by_codec(packet_md5s(&whole)), want);
}

/// A minimal RTMP publisher driven by hand over `rml_rtmp`'s chunk codec, so the connect command
/// can carry what an enhanced-RTMP encoder sends (`fourCcList`) and the video messages can be
/// enhanced-RTMP (ex-header) ones, which Debian's ffmpeg 5.1 cannot produce.
struct HandPublisher {
    sock: TcpStream,
    ser: rml_rtmp::chunk_io::ChunkSerializer,
    de: rml_rtmp::chunk_io::ChunkDeserializer,
    stream_id: u32,
    /// Bytes read but not yet handed to the deserializer (the handshake's leftovers).
    pending: Vec<u8>,
}

impl HandPublisher {
    async fn send(&mut self, m: rml_rtmp::messages::RtmpMessage, ts: u32, stream_id: u32) {
        let p = m
            .into_message_payload(rml_rtmp::time::RtmpTimestamp::new(ts), stream_id)
            .unwrap();
        let packet = self.ser.serialize(&p, false, false).unwrap();
        self.sock.write_all(&packet.bytes).await.unwrap();
    }

    /// Read messages until a command named `name` arrives; returns its extra arguments.
    async fn until_command(&mut self, name: &str) -> Vec<rml_rtmp::rml_amf0::Amf0Value> {
        use rml_rtmp::messages::RtmpMessage;
        let mut buf = vec![0u8; 65536];
        let mut input: Vec<u8> = std::mem::take(&mut self.pending);
        loop {
            while let Some(p) = self.de.get_next_message(&input).unwrap() {
                input.clear();
                match p.to_rtmp_message().unwrap() {
                    RtmpMessage::SetChunkSize { size } => {
                        self.de.set_max_chunk_size(size as usize).unwrap();
                    }
                    RtmpMessage::Amf0Command {
                        command_name,
                        additional_arguments,
                        ..
                    } if command_name == name => return additional_arguments,
                    _ => {}
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(10), self.sock.read(&mut buf))
                .await
                .expect("an answer from the server")
                .unwrap();
            assert!(n > 0, "the server closed while waiting for {name}");
            input = buf[..n].to_vec();
        }
    }

    async fn publish(addr: SocketAddr, key: &str) -> Self {
        use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
        use rml_rtmp::messages::RtmpMessage;
        use rml_rtmp::rml_amf0::Amf0Value;
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let mut hs = Handshake::new(PeerType::Client);
        sock.write_all(&hs.generate_outbound_p0_and_p1().unwrap())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let rest = loop {
            let n = sock.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed during the handshake");
            match hs.process_bytes(&buf[..n]).unwrap() {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    sock.write_all(&response_bytes).await.unwrap();
                }
                HandshakeProcessResult::Completed {
                    response_bytes,
                    remaining_bytes,
                } => {
                    sock.write_all(&response_bytes).await.unwrap();
                    break remaining_bytes;
                }
            }
        };
        let mut p = HandPublisher {
            sock,
            ser: rml_rtmp::chunk_io::ChunkSerializer::new(),
            de: rml_rtmp::chunk_io::ChunkDeserializer::new(),
            stream_id: 0,
            pending: rest,
        };
        let props: std::collections::HashMap<String, Amf0Value> = [
            ("app", Amf0Value::Utf8String(rtmp_app())),
            (
                "tcUrl",
                Amf0Value::Utf8String(format!("rtmp://{addr}/live")),
            ),
            ("flashVer", Amf0Value::Utf8String("FMLE/3.0".into())),
            (
                "fourCcList",
                Amf0Value::StrictArray(
                    ["av01", "vp09", "hvc1"]
                        .iter()
                        .map(|f| Amf0Value::Utf8String((*f).into()))
                        .collect(),
                ),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let cmd = |name: &str, tx: f64, object: Amf0Value, args: Vec<Amf0Value>| {
            RtmpMessage::Amf0Command {
                command_name: name.into(),
                transaction_id: tx,
                command_object: object,
                additional_arguments: args,
            }
        };
        p.send(cmd("connect", 1.0, Amf0Value::Object(props), vec![]), 0, 0)
            .await;
        p.until_command("_result").await;
        p.send(cmd("createStream", 2.0, Amf0Value::Null, vec![]), 0, 0)
            .await;
        let args = p.until_command("_result").await;
        let Some(Amf0Value::Number(id)) = args.first() else {
            panic!("createStream answered {args:?}");
        };
        p.stream_id = *id as u32;
        let publish = cmd(
            "publish",
            0.0,
            Amf0Value::Null,
            vec![
                Amf0Value::Utf8String(key.into()),
                Amf0Value::Utf8String("live".into()),
            ],
        );
        p.send(publish, 0, p.stream_id).await;
        let status = p.until_command("onStatus").await;
        let code = status.iter().find_map(|v| match v {
            Amf0Value::Object(o) => o.get("code").cloned(),
            _ => None,
        });
        assert_eq!(
            code,
            Some(Amf0Value::Utf8String("NetStream.Publish.Start".into())),
            "{status:?}"
        );
        p
    }

    async fn video(&mut self, ts: u32, body: Vec<u8>) {
        let id = self.stream_id;
        self.send(
            rml_rtmp::messages::RtmpMessage::VideoData { data: body.into() },
            ts,
            id,
        )
        .await;
    }
}

fn rtmp_app() -> String {
    entry::rtmp::APP.to_string()
}

/// Enhanced RTMP (HEVC by FourCC, as OBS 30 and ffmpeg ≥ 6.1 send it): a connect with
/// `fourCcList` is accepted, the ex-header video messages are stored byte for byte, and
/// HTTP-FLV from the live edge starts with the HEVC `SequenceStart` then the newest keyframe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_rtmp_hevc_passes_through_with_its_sequence_start() {
    let dir = tempfile::tempdir().unwrap();
    let s = standalone(dir.path());
    let stream = "hevc-cam";
    let key = format!("{stream}?token={}", solo_token(stream));
    let mut p = HandPublisher::publish(s.rtmp, &key).await;
    // Ex-header video: byte 0 = 0x80 | frame type << 4 | packet type, then the FourCC.
    let ex = |frame: u8, packet: u8, rest: &[u8]| -> Vec<u8> {
        let mut b = vec![0x80 | (frame << 4) | packet];
        b.extend_from_slice(b"hvc1");
        b.extend_from_slice(rest);
        b
    };
    let mut sent = vec![ex(1, 0, b"\x01hvcC-configuration-record")];
    for i in 0..20u8 {
        // Frames 0 and 10 are keyframes; CodedFrames carry a 3-byte composition time.
        let frame = if i % 10 == 0 { 1 } else { 2 };
        sent.push(ex(frame, 1, &[0, 0, 0, 0x26, 0x01, i, i, i]));
    }
    p.video(0, sent[0].clone()).await;
    for (i, body) in sent[1..].iter().enumerate() {
        p.video(i as u32 * 33, body.clone()).await;
    }
    wait_seq(s.http, stream, sent.len() as u64).await;

    // Stored byte for byte, in order, with the keyframes flagged as such for the live edge.
    let stored = first_tags(s.http, stream, sent.len() as u64).await;
    let bodies: Vec<Vec<u8>> = {
        let mut at = 13;
        let mut out = Vec::new();
        while at < stored.len() {
            let len = u32::from_be_bytes([0, stored[at + 1], stored[at + 2], stored[at + 3]])
                as usize
                + 15;
            out.push(
                entry::flv::parse(&stored[at..at + len])
                    .unwrap()
                    .data
                    .to_vec(),
            );
            at += len;
        }
        out
    };
    assert_eq!(bodies, sent);

    // HTTP-FLV from the live edge: the header, the cached SequenceStart, then frame 10 (the
    // newest keyframe) and what follows.
    let mut r = get(format!("http://{}/live/{stream}.flv", s.http))
        .await
        .unwrap();
    assert!(r.status().is_success());
    let mut body = Vec::new();
    let want: Vec<Vec<u8>> = std::iter::once(sent[0].clone())
        .chain(sent[11..].iter().cloned())
        .collect();
    let mut tags = Vec::new();
    while tags.len() < want.len() {
        let more = tokio::time::timeout(Duration::from_secs(10), r.chunk())
            .await
            .expect("HTTP-FLV data")
            .unwrap()
            .expect("the stream is open");
        body.extend_from_slice(&more);
        tags.clear();
        let mut at = 13;
        while at + 15 <= body.len() {
            let len =
                u32::from_be_bytes([0, body[at + 1], body[at + 2], body[at + 3]]) as usize + 15;
            if at + len > body.len() {
                break;
            }
            let t = entry::flv::parse(&body[at..at + len]).unwrap();
            if t.kind == 9 {
                tags.push(t.data.to_vec());
            }
            at += len;
        }
    }
    assert_eq!(&body[..3], b"FLV");
    assert_eq!(tags, want);
}

/// The broadcasts of a stream the director lists, newest first.
async fn broadcast_ids(d: &Director, stream: &str) -> Vec<String> {
    let v: Value = get(format!("{}/v1/streams/{stream}/broadcasts", d.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null);
    v["broadcasts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["id"].as_str().map(str::to_string))
        .collect()
}

/// OBS keeps one server URL and one stream key day after day: `rtmp://host/live/<stream>` and
/// `<stream>?key=<key>`. With the real ffmpeg as the encoder, the same key goes live five times;
/// every publish becomes a new broadcast the director authorized, played back exactly (packet
/// checksums) by broadcast id from another node. A guessed URL or a wrong key is refused and
/// changes nothing; so is an HTTP push with a wrong key, while the right key pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_stream_key_goes_live_five_times_over_rtmp() {
    need_ffmpeg();
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let dp = dir.path().to_path_buf();
    let servers = three_servers(&d, &dp).await;
    let key = "obs-key-0123456789abcdef";
    let lon = servers[0].rtmp;
    let nyc = servers[2].http;
    let mut seen = Vec::new();
    for i in 0..5u32 {
        let src = make_pattern(&dp, &format!("p{i}.flv"), 2, "testsrc2", 300 + 100 * i);
        // In open mode the first publish of a new id with a key claims it with that key.
        let url = format!("rtmp://{lon}/live/obs1?key={key}");
        let out = tokio::task::spawn_blocking({
            let src = src.clone();
            move || {
                Command::new("ffmpeg")
                    .arg("-nostdin")
                    .args(["-hide_banner", "-loglevel", "error", "-re", "-i"])
                    .arg(&src)
                    .args(["-map", "0", "-c", "copy", "-f", "flv", &url])
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "publish {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ids = broadcast_ids(&d, "obs1").await;
        let newest = ids.first().cloned().expect("a broadcast");
        assert!(
            !seen.contains(&newest),
            "publish {i} reused a broadcast: {ids:?}"
        );
        seen.push(newest.clone());
        let got = fetch(format!(
            "http://{nyc}/live/obs1.flv?broadcast={newest}&from=start"
        ))
        .await
        .unwrap();
        let recv = dp.join(format!("recv{i}.flv"));
        std::fs::write(&recv, &got).unwrap();
        let (want, have) = (packet_md5s(&src), packet_md5s(&recv));
        assert!(want.len() > 50, "source has {} packets", want.len());
        assert!(
            want == have,
            "broadcast {i}: packets differ ({} vs {})",
            want.len(),
            have.len()
        );
    }
    assert_eq!(seen.len(), 5);
    // A guessed URL (no key), a wrong key, and another stream's key: refused, nothing new.
    let src = make_pattern(&dp, "evil.flv", 1, "smptebars", 1000);
    for name in [
        "obs1".to_string(),
        "obs1?key=wrong-key-0123456789".to_string(),
        format!("obs1?token={}", "x".repeat(80)),
    ] {
        let url = format!("rtmp://{lon}/live/{name}");
        let out = tokio::task::spawn_blocking({
            let src = src.clone();
            move || {
                Command::new("ffmpeg")
                    .arg("-nostdin")
                    .args(["-hide_banner", "-loglevel", "error", "-i"])
                    .arg(&src)
                    .args(["-map", "0", "-c", "copy", "-f", "flv", &url])
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        assert!(!out.status.success(), "{name} was accepted");
    }
    assert_eq!(
        broadcast_ids(&d, "obs1").await.len(),
        5,
        "a refused publish made a broadcast"
    );
    // HTTP push with the key: a wrong one is refused; the right one pushes a new broadcast.
    let http = servers[1].http;
    let r = http_client()
        .post(format!(
            "http://{http}/v1/streams/obs1/push?key=wrong-key-0123456789"
        ))
        .body(vec![0u8; 50_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http_client()
        .post(format!("http://{http}/v1/streams/obs1/push?key={key}"))
        .body(vec![7u8; 50_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(broadcast_ids(&d, "obs1").await.len(), 6);
}
