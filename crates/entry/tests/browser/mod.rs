//! The player page in a real headless Chromium (Debian `chromium`, installed by
//! `scripts/browser-deps.sh`), driven over the DevTools protocol with a small client on the
//! WebSocket crate: a live RTMP test pattern plays on a relay node's `/watch/{stream}` (hls.js,
//! LL-HLS), and keeps playing when the primary ingest server is killed. Screenshots go to
//! `target/test-artifacts/`.

use super::rtmp::need_ffmpeg;
use super::*;
use futures_util::{SinkExt, StreamExt};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use tokio_tungstenite::tungstenite::Message;

/// The chromium binary, or a failure that says how to get it.
fn chromium() -> String {
    for c in ["chromium", "chromium-browser"] {
        let ok = Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return c.to_string();
        }
    }
    panic!("chromium is missing: run scripts/browser-deps.sh (scripts/test runs it)");
}

/// Where test artefacts (screenshots) go: `target/test-artifacts/`.
fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let d = target.join("test-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A headless Chromium, killed on drop.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws_url: String,
}

impl Browser {
    async fn launch() -> Browser {
        let bin = chromium();
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--autoplay-policy=no-user-gesture-required",
                "--remote-debugging-port=0",
                "--window-size=1000,800",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Chromium writes its DevTools port and browser path once it listens.
        let file = profile.path().join("DevToolsActivePort");
        let mut text = String::new();
        for _ in 0..400 {
            if let Ok(t) = std::fs::read_to_string(&file)
                && t.lines().count() >= 2
            {
                text = t;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut lines = text.lines();
        let (port, path) = (
            lines.next().expect("chromium did not start"),
            lines.next().unwrap(),
        );
        Browser {
            child,
            _profile: profile,
            ws_url: format!("ws://127.0.0.1:{port}{path}"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools-protocol session on one page.
struct Page {
    ws: Ws,
    id: u64,
    session: String,
}

impl Page {
    async fn open(b: &Browser, url: &str) -> Page {
        let (ws, _) = tokio_tungstenite::connect_async(&b.ws_url).await.unwrap();
        let mut p = Page {
            ws,
            id: 0,
            session: String::new(),
        };
        let t = p
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target = t["targetId"].as_str().unwrap().to_string();
        let a = p
            .call(
                "Target.attachToTarget",
                json!({"targetId": target, "flatten": true}),
            )
            .await;
        p.session = a["sessionId"].as_str().unwrap().to_string();
        p.call("Page.enable", json!({})).await;
        p.call("Page.navigate", json!({"url": url})).await;
        p
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.id += 1;
        let mut msg = json!({"id": self.id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("DevTools answers")
                .expect("DevTools connection open")
                .unwrap();
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == json!(self.id) {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluate a JavaScript expression in the page; its JSON value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        r["result"]["value"].clone()
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        use base64::Engine;
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        let path = artifacts().join(name);
        std::fs::write(&path, png).unwrap();
        path
    }

    /// What the player shows: `{t, paused, fatal, errors, engine, path}`.
    async fn state(&mut self) -> Value {
        self.eval(
            "(() => { const v = document.getElementById('video'); const f = window.firstmile || {}; \
             const q = v.getVideoPlaybackQuality(); \
             return {t: v.currentTime, paused: v.paused, ready: v.readyState, fatal: f.fatal || [], \
             frames: q.totalVideoFrames, width: v.videoWidth, \
             errors: f.errors || [], engine: f.engine, path: f.path, delay: f.delay}; })()",
        )
        .await
    }
}

/// A live test pattern (25 fps, a keyframe a second, a 440 Hz tone), published with `tee` to
/// the assignment's primary and backup for `secs` seconds.
fn publish_live(primary: &str, backup: &str, secs: u32) -> Child {
    let tee = format!("[f=flv:onfail=ignore]{primary}|[f=flv:onfail=ignore]{backup}");
    Command::new("ffmpeg")
        .arg("-nostdin")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-t", &secs.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args([
            "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k",
        ])
        .args(["-map", "0:v", "-map", "1:a", "-f", "tee", &tee])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// A child process killed (and reaped) on drop, so a failing test leaves no publisher behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll the page until `t` has advanced by `by` seconds from `from` (bounded by `within`).
async fn advances(p: &mut Page, from: f64, by: f64, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let s = p.state().await;
        if s["t"].as_f64().unwrap_or(0.0) >= from + by {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "playback did not advance by {by} s from {from}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_page_plays_ll_hls_on_a_relay_and_survives_the_primary_dying() {
    need_ffmpeg();
    let _ = chromium();
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let dp = dir.path().to_path_buf();
    let mut servers = three_servers(&d, &dp).await;
    let stream = "browser-live";
    let a = super::rtmp::assign_rtmp(&d, stream).await;
    let _publisher = KillOnDrop(publish_live(
        a["primary"]["url"].as_str().unwrap(),
        a["backup"]["url"].as_str().unwrap(),
        60,
    ));
    for s in &servers[..2] {
        super::rtmp::wait_seq(s.http, stream, 10).await;
    }
    let browser = Browser::launch().await;
    let nyc = servers[2].http;
    let mut page = Page::open(&browser, &format!("http://{nyc}/watch/{stream}")).await;
    // It starts (hls.js, LL-HLS) and plays for several seconds.
    let s = advances(&mut page, 0.0, 0.5, Duration::from_secs(40)).await;
    assert!(
        s["engine"].as_str().unwrap_or("").starts_with("hls.js"),
        "{s}"
    );
    let t0 = s["t"].as_f64().unwrap();
    let s = advances(&mut page, t0, 4.0, Duration::from_secs(20)).await;
    page.screenshot("hls-player-relay.png").await;
    assert!(
        s["fatal"].as_array().unwrap().is_empty(),
        "fatal errors: {s}"
    );
    assert_eq!(s["path"]["source"], "relay", "{s}");
    // Pictures, not only a clock: frames were decoded at the source's size.
    assert!(
        s["frames"].as_u64().unwrap_or(0) > 25,
        "no decoded video frames: {s}"
    );
    assert_eq!(s["width"], 320, "{s}");
    // The primary ingest server dies; the relay carries on from the backup.
    servers[0].kill();
    let t1 = s["t"].as_f64().unwrap();
    let s = advances(&mut page, t1, 8.0, Duration::from_secs(30)).await;
    page.screenshot("hls-player-relay-primary-killed.png").await;
    assert!(
        s["fatal"].as_array().unwrap().is_empty(),
        "fatal hls.js errors after the primary died: {s}"
    );
    assert!(!s["paused"].as_bool().unwrap_or(true), "{s}");
    // The page says so: the primary is unreachable, the backup receiving.
    let mut shown = Value::Null;
    for _ in 0..40 {
        shown = page.state().await["path"].clone();
        let ups = shown["upstreams"].as_array().cloned().unwrap_or_default();
        if ups
            .iter()
            .any(|u| u["role"] == "primary" && u["reachable"] == false)
            && ups
                .iter()
                .any(|u| u["role"] == "backup" && u["reachable"] == true)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ups = shown["upstreams"].as_array().cloned().unwrap_or_default();
    assert!(
        ups.iter()
            .any(|u| u["role"] == "primary" && u["reachable"] == false),
        "{shown}"
    );
}
