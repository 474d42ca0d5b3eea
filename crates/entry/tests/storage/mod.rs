//! The log storage over months: a disk that fills up mid-broadcast, retention, and a server
//! that recovers by itself. The full disk is a real one: a small tmpfs mounted for the test
//! (the tests run as root, like CI; `scripts/test` says so).

use super::*;
use client::{PushConfig, Pusher};
use std::path::PathBuf;

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount(8) runs");
        assert!(
            out.status.success(),
            "mounting a tmpfs for the disk-full test needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn readyz(http: SocketAddr) -> (u16, Value) {
    let r = get(format!("http://{http}/readyz")).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Wait (bounded) until `f` holds.
async fn until<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn assignment(d: &Director, stream: &str) -> proto::api::Assignment {
    serde_json::from_value(assign(d, stream, "Paris").await).unwrap()
}

fn push_config() -> PushConfig {
    PushConfig {
        chunk_max: 16 * 1024,
        end_timeout: Duration::from_secs(3),
        ..PushConfig::default()
    }
}

/// The disk of the primary fills up mid-broadcast: it stops taking the broadcast (its writes
/// fail with ENOSPC, the session ends with `going_away`), says so (`/readyz` 503 `disk_full`,
/// heartbeat `draining`), and the device's push completes on the backup, whose viewer gets
/// every byte. What the full server acknowledged stays readable, byte-exact, and retention does
/// not delete it while a viewer is on it. When that viewer leaves, retention deletes the
/// unused broadcast to get free space back, the server takes broadcasts again by itself, and a
/// new broadcast goes through it end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_broadcasts_the_push_completes_on_the_backup_and_the_server_recovers()
 {
    let fs = Tmpfs::mount("8m");
    let dir = tempfile::tempdir().unwrap();
    let d = start_director();
    let mut full_cfg = testkit::entry_config("full-1", "par", "Paris", &fs.path(), Some(&d));
    full_cfg.min_free_bytes = 2 << 20;
    full_cfg.storage_check_ms = 100;
    full_cfg.release_after_s = 1;
    full_cfg.fsync = chunklog::FsyncPolicy::Always;
    let full = Server::start(full_cfg, "127.0.0.61");
    let ok = Server::start(
        testkit::entry_config("ok-1", "lon", "London", dir.path(), Some(&d)),
        "127.0.0.62",
    );
    wait_registered(&d, 2).await;
    assert_eq!(readyz(full.http).await.0, 200);

    // 12 MiB into a filesystem of 8: the primary fills up part-way.
    let data: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 251) as u8).collect();
    let a = assignment(&d, "filler").await;
    assert_eq!(a.primary.server_id.as_str(), "full-1", "{a:?}");
    assert_eq!(a.backup.as_ref().unwrap().server_id.as_str(), "ok-1");
    let summary = tokio::time::timeout(
        Duration::from_secs(120),
        Pusher::from_assignment(&a, push_config())
            .unwrap()
            .run(&data[..]),
    )
    .await
    .expect("the push ends in time")
    .expect("the push completes on the backup");
    assert_eq!(summary.complete_paths, 1, "{summary:?}");
    assert!(!summary.complete_everywhere);

    // The full server says why it takes nothing; the director stops assigning it.
    let (code, body) = readyz(full.http).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["status"], "disk_full", "{body}");
    until("the director sees full-1 draining", 10, || async {
        admin_servers(&d).await["entry_servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "full-1" && s["state"] == "draining")
    })
    .await;
    // ok-1 took the whole push at full speed: until a heartbeat reports its load back down it
    // may count as full for a 1,000 kbit/s stream (the director then answers 503), so ask until
    // it is assignable; the pick must never be full-1.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let a2 = loop {
        let r = http_client()
            .post(format!("{}/v1/assignments", d.url))
            .json(&json!({"stream": "while-full", "location": "Paris", "bitrate_kbps": 1000}))
            .send()
            .await
            .unwrap();
        if r.status().is_success() {
            break r.json::<proto::api::Assignment>().await.unwrap();
        }
        let why = r.text().await.unwrap_or_default();
        assert!(
            tokio::time::Instant::now() < deadline,
            "never assignable: {why}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(a2.primary.server_id.as_str(), "ok-1", "{a2:?}");
    // A device holding a token for it is refused with going_away, before any write.
    let tok = token_for(
        &testkit::key(),
        "direct",
        "full-1",
        Role::Primary,
        far_future(),
    );
    let mut p = Path::connect(&full.native.to_string()).await.unwrap();
    let (code, msg) = match p.hello("direct", Role::Primary, &tok, None).await {
        Ok(Frame::Error(e)) => (e.code, e.message),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(code, ErrorCode::GoingAway, "{msg}");
    assert!(msg.contains("disk full"), "{msg}");

    // The backup's viewer gets every byte.
    let b = a.broadcast.to_string();
    let url =
        |http: SocketAddr| format!("http://{http}/v1/streams/filler/live?from=start&broadcast={b}");
    let got = read_url_all(&url(ok.http)).await;
    assert!(
        got == data,
        "the backup's copy differs ({} bytes)",
        got.len()
    );

    // What the full server acknowledged is a byte-exact prefix, and stays while read.
    let mut viewer = http_client().get(url(full.http)).send().await.unwrap();
    assert_eq!(viewer.status(), 200);
    let mut prefix = Vec::new();
    while prefix.len() < 1 << 20 {
        prefix.extend_from_slice(&viewer.chunk().await.unwrap().expect("more bytes"));
    }
    assert!(prefix[..] == data[..prefix.len()]);
    let on_disk = fs.path().join("full-1").join("filler").join(&b);
    let checks = metric(full.http, "firstmile_entry_storage_checks_total").await;
    until("three more storage checks", 10, || async {
        metric(full.http, "firstmile_entry_storage_checks_total").await >= checks + 3
    })
    .await;
    assert!(
        on_disk.is_dir(),
        "retention deleted a broadcast a viewer is on"
    );
    assert_eq!(
        metric(full.http, "firstmile_entry_retention_deleted_total").await,
        0
    );
    assert_eq!(readyz(full.http).await.0, 503);

    // The viewer leaves: the unused broadcast goes, space comes back, the server recovers.
    drop(viewer);
    until("full-1 recovers by itself", 30, || async {
        readyz(full.http).await.0 == 200
    })
    .await;
    assert!(!on_disk.exists());
    assert_eq!(
        metric(full.http, "firstmile_entry_retention_deleted_total").await,
        1
    );
    until("the director sees full-1 ready", 10, || async {
        admin_servers(&d).await["entry_servers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "full-1" && s["state"] == "ready")
    })
    .await;
    // A viewer of the deleted broadcast on full-1 is relayed from the backup, which has it.
    let got = read_url_all(&url(full.http)).await;
    assert!(got == data, "relayed copy differs ({} bytes)", got.len());

    // A new broadcast goes through the recovered server, both paths complete.
    let small: Vec<u8> = (0..300_000u32).map(|i| (i % 7) as u8).collect();
    let a3 = assignment(&d, "after").await;
    assert_eq!(a3.primary.server_id.as_str(), "full-1", "{a3:?}");
    let s = Pusher::from_assignment(&a3, push_config())
        .unwrap()
        .run(&small[..])
        .await
        .unwrap();
    assert!(s.complete_everywhere, "{s:?}");
    let got = read_url_all(&format!(
        "http://{}/v1/streams/after/live?from=start&broadcast={}",
        full.http, a3.broadcast
    ))
    .await;
    assert!(got == small);
}

async fn read_url_all(url: &str) -> Vec<u8> {
    let r = http_client()
        .get(url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.bytes().await.unwrap().to_vec()
}

/// `n` chunks of 64 KiB whose bytes name their broadcast.
fn payload(tag: &str, n: usize) -> Arc<Vec<Bytes>> {
    Arc::new(
        (0..n)
            .map(|i| {
                let mark = format!("<{tag}:{i:05}>");
                Bytes::from(mark.repeat(64 * 1024 / mark.len() + 1)[..64 * 1024].to_string())
            })
            .collect(),
    )
}

/// Push broadcast `b` of `stream` (ended if `end`) to the server and wait for its ACKs.
async fn broadcast(s: &Server, stream: &str, b: &str, chunks: &Arc<Vec<Bytes>>, end: bool) {
    let tok = token_for_broadcast(
        &testkit::key(),
        stream,
        b,
        &s.cfg.id,
        Role::Primary,
        far_future(),
    );
    push(
        s.native.to_string(),
        stream.into(),
        Role::Primary,
        tok,
        chunks.clone(),
        chunks.len(),
        end,
    )
    .await
    .unwrap();
}

/// A live viewer on broadcast `b` that has read its first bytes (it holds the broadcast).
async fn hold(s: &Server, stream: &str, b: &str) -> reqwest::Response {
    let mut r = http_client()
        .get(format!(
            "http://{}/v1/streams/{stream}/live?from=start&broadcast={b}",
            s.http
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.chunk().await.unwrap().unwrap().is_empty());
    r
}

/// Retention deletes whole broadcasts nobody uses — over the disk budget oldest first, and by
/// age — and never one a viewer is on, however old; the stream's directory goes with its last
/// broadcast; what is deleted is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_unused_broadcasts_by_budget_oldest_first_and_by_age_never_one_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = testkit::entry_config("keep-1", "par", "Paris", dir.path(), None);
    cfg.disk_budget_bytes = 16 << 20;
    cfg.retention_secs = 0;
    cfg.release_after_s = 1;
    cfg.storage_check_ms = 100;
    cfg.retention_interval_ms = 100;
    cfg.min_free_bytes = 0;
    let s = Server::start(cfg, "127.0.0.63");
    let logs = dir.path().join("keep-1");

    // Three broadcasts of 6 MiB: b1 (its publisher gone, a viewer on it), then b2, b3 ended.
    let six = |t| payload(t, 96);
    broadcast(&s, "one", "b1", &six("b1"), false).await;
    let viewer = hold(&s, "one", "b1").await;
    broadcast(&s, "two", "b2", &six("b2"), true).await;
    broadcast(&s, "three", "b3", &six("b3"), true).await;
    // 18 MiB over a 16 MiB budget: the oldest unused one goes (b2), not b1 (in use).
    until(
        "a broadcast deleted and the logs under budget",
        20,
        || async {
            metric(s.http, "firstmile_entry_retention_deleted_total").await >= 1
                && metric(s.http, "firstmile_entry_log_bytes").await <= 16 << 20
        },
    )
    .await;
    assert!(!logs.join("two").exists());
    assert!(logs.join("one").join("b1").is_dir());
    assert!(logs.join("three").join("b3").is_dir());
    assert_eq!(
        metric(s.http, "firstmile_entry_retention_deleted_total").await,
        1
    );
    let bytes = metric(s.http, "firstmile_entry_log_bytes").await;
    assert!((10 << 20..=16 << 20).contains(&bytes), "{bytes}");
    // Under the budget now: the rest stays, also once the viewer has gone.
    drop(viewer);
    let checks = metric(s.http, "firstmile_entry_storage_checks_total").await;
    until("a few more passes", 20, || async {
        metric(s.http, "firstmile_entry_storage_checks_total").await >= checks + 15
    })
    .await;
    assert!(logs.join("one").join("b1").is_dir());
    assert!(logs.join("three").join("b3").is_dir());
    drop(s);

    // By age: a server keeping broadcasts 1 s deletes the unused ones and keeps the one in use.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = testkit::entry_config("age-1", "par", "Paris", dir.path(), None);
    cfg.retention_secs = 1;
    cfg.release_after_s = 1;
    cfg.storage_check_ms = 100;
    cfg.retention_interval_ms = 100;
    cfg.min_free_bytes = 0;
    let s = Server::start(cfg, "127.0.0.64");
    let logs = dir.path().join("age-1");
    let small = |t| payload(t, 4);
    broadcast(&s, "old", "b1", &small("o1"), true).await;
    broadcast(&s, "old", "b2", &small("o2"), true).await;
    broadcast(&s, "held", "b1", &small("h1"), false).await;
    let viewer = hold(&s, "held", "b1").await;
    until("the unused broadcasts deleted", 20, || async {
        metric(s.http, "firstmile_entry_retention_deleted_total").await >= 2
    })
    .await;
    assert!(!logs.join("old").exists());
    assert_eq!(
        metric(s.http, "firstmile_entry_retention_deleted_total").await,
        2
    );
    let checks = metric(s.http, "firstmile_entry_storage_checks_total").await;
    until("a few more passes", 20, || async {
        metric(s.http, "firstmile_entry_storage_checks_total").await >= checks + 15
    })
    .await;
    assert!(
        logs.join("held").join("b1").is_dir(),
        "deleted while a viewer is on it"
    );
    drop(viewer);
    until("the last broadcast deleted once unused", 20, || async {
        !logs.join("held").exists()
    })
    .await;
}
