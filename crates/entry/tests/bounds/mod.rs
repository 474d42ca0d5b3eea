//! Resources that have an owner and an end: thousands of short broadcasts leave no descriptors,
//! stream-table entries or heartbeat bytes behind; relays and backfills that viewers trigger are
//! bounded per node and per client.

use super::*;
use std::sync::atomic::Ordering;

/// Descriptors of this process open on files under `dir` (the server runs in this process).
fn open_files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.starts_with(dir))
        .count()
}

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

/// How many broadcasts a server holds in memory (its `GET /v1/streams`).
async fn held(http: SocketAddr) -> usize {
    get_streams(http)
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["streams"]
        .as_array()
        .unwrap()
        .len()
}

/// An entry server `id` on `ip`, registered with `d`, that releases idle broadcasts after 1 s
/// (its housekeeping every 200 ms).
async fn releasing_server(d: &Director, dir: &std::path::Path, id: &str, ip: &str) -> Server {
    let mut cfg = testkit::entry_config(id, "par", "Paris", dir, Some(d));
    cfg.release_after_s = 1;
    cfg.storage_check_ms = 200;
    let s = Server::start(cfg, ip);
    wait_registered(d, 1).await;
    s
}

async fn go_live(d: &Director, stream: &str, key: Option<&str>) -> Value {
    let mut body = json!({"stream": stream, "location": "Paris, FR"});
    if let Some(k) = key {
        body["key"] = json!(k);
    }
    let r = http_client()
        .post(format!("{}/v1/assignments", d.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// 2,000 short broadcasts (20 streams going live 100 times each, with their keys, through the
/// director) on one entry server: afterwards its open log files and its stream table are back
/// where they started, every heartbeat stayed far under the director's 64 KiB body limit, and
/// the last ones are a few hundred bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_short_broadcasts_leave_no_descriptors_streams_or_heartbeat_bytes_behind() {
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let s = releasing_server(&d, dir.path(), "short-1", "127.0.0.81").await;
    let logs = dir.path().join("short-1");
    let fds_before = open_files_under(&logs);
    let streams_before = held(s.http).await;

    let biggest = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watch = {
        let biggest = biggest.clone();
        let http = s.http;
        tokio::spawn(async move {
            loop {
                let b = metric(http, "firstmile_entry_heartbeat_bytes").await;
                biggest.fetch_max(b, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let d = Arc::new(d);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..20 {
        let d = d.clone();
        tasks.spawn(async move {
            let stream = format!("short-{n:02}");
            let mut key: Option<String> = None;
            for i in 0..100 {
                let a = go_live(&d, &stream, key.as_deref()).await;
                if key.is_none() {
                    key = Some(a["stream_key"].as_str().unwrap().to_string());
                }
                let (_, addr, tok) = pick(&a, "primary");
                let chunks: Arc<Vec<Bytes>> = Arc::new(
                    (0..3)
                        .map(|c| Bytes::from(format!("{stream}/{i}/{c}")))
                        .collect(),
                );
                push(addr, stream.clone(), Role::Primary, tok, chunks, 3, true)
                    .await
                    .unwrap_or_else(|e| panic!("{stream} go-live {i}: {e}"));
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }

    // Every end reported, every broadcast released: the table and the files are back.
    until("every broadcast released", 60, || async {
        held(s.http).await <= streams_before
    })
    .await;
    let fds_after = open_files_under(&logs);
    assert!(
        fds_after <= fds_before + 2,
        "log descriptors: {fds_before} before, {fds_after} after 2,000 broadcasts"
    );
    watch.abort();
    let biggest = biggest.load(Ordering::Relaxed);
    assert!(biggest < 60 * 1024, "a heartbeat of {biggest} bytes");
    let last = metric(s.http, "firstmile_entry_heartbeat_bytes").await;
    assert!(last < 2048, "an idle server's heartbeat is {last} bytes");
    // The director saw every broadcast end (none left live or starting).
    let info: Value = get(format!("{}/v1/streams/short-07", d.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["broadcast"]["state"], "ended", "{info}");
}

/// A reqwest client whose connections come from `ip` (a viewer's address on 127.0.0.0/8).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// A viewer on `node` of `stream` (relayed): status, `Retry-After`, error code; the response is
/// kept open (holding the relay) when it is 200.
async fn watch(
    c: &reqwest::Client,
    node: SocketAddr,
    stream: &str,
) -> (u16, Option<String>, Value, Option<reqwest::Response>) {
    let mut r = c
        .get(format!("http://{node}/v1/streams/{stream}/live?from=start"))
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    if code == 200 {
        assert!(!r.chunk().await.unwrap().unwrap().is_empty());
        return (code, retry, Value::Null, Some(r));
    }
    (code, retry, r.json().await.unwrap_or(Value::Null), None)
}

/// Relays are bounded per node (`max_relays`: 503 `relay_capacity` with Retry-After) and per
/// client address (`relay_starts_per_ip_per_min`: 429 `too_many_relays`); joining a relay that
/// runs costs nothing, and another address is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_start_a_bounded_number_of_relays_per_node_and_per_address() {
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let _ingest = Server::start(
        testkit::entry_config("par-1", "par", "Paris", dir.path(), Some(&d)),
        "127.0.0.82",
    );
    let mut cfg = testkit::entry_config("syd-1", "syd", "Sydney", dir.path(), Some(&d));
    cfg.max_relays = 3;
    cfg.relay_starts_per_ip_per_min = 2;
    let relay = Server::start(cfg, "127.0.0.83");
    wait_registered(&d, 2).await;
    // Five live streams on par-1 (their publishers gone, not ended: relays of them stay up).
    for n in 0..5 {
        let stream = format!("live-{n}");
        let a = go_live(&d, &stream, None).await;
        let (id, addr, tok) = pick(&a, "primary");
        assert_eq!(id, "par-1");
        let chunks: Arc<Vec<Bytes>> = Arc::new(
            (0..3)
                .map(|c| Bytes::from(format!("{stream}/{c}")))
                .collect(),
        );
        push(addr, stream, Role::Primary, tok, chunks, 3, false)
            .await
            .unwrap();
    }
    let x = client_from("127.0.0.84");
    let y = client_from("127.0.0.85");
    // X starts two relays; its third start is refused, joining its first again is not.
    let (c, _, _, hold0) = watch(&x, relay.http, "live-0").await;
    assert_eq!(c, 200);
    let (c, _, _, hold1) = watch(&x, relay.http, "live-1").await;
    assert_eq!(c, 200);
    let (c, retry, body, _) = watch(&x, relay.http, "live-2").await;
    assert_eq!(c, 429, "{body}");
    assert_eq!(body["code"], "too_many_relays");
    let secs: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    let (c, _, _, again) = watch(&x, relay.http, "live-0").await;
    assert_eq!(c, 200, "joining a running relay costs nothing");
    // Y is another address: it may start relays, up to the node's cap of three.
    let (c, _, _, hold2) = watch(&y, relay.http, "live-2").await;
    assert_eq!(c, 200);
    let (c, retry, body, _) = watch(&y, relay.http, "live-3").await;
    assert_eq!(c, 503, "{body}");
    assert_eq!(body["code"], "relay_capacity");
    assert_eq!(retry.as_deref(), Some("5"));
    assert_eq!(
        metric(relay.http, "firstmile_entry_relays_refused_total").await,
        2
    );
    // The node relays exactly three streams.
    assert_eq!(held(relay.http).await, 3);
    drop((hold0, hold1, hold2, again));
}

/// A broadcast released after its end, then opened from disk again for a viewer of it (a
/// replay, another node's relay catching up) is released again once the viewer leaves: its end
/// needs no second report. (The soak of 2026-12-05 found such broadcasts held for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_broadcast_opened_again_for_a_viewer_is_released_again() {
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let s = releasing_server(&d, dir.path(), "past-1", "127.0.0.86").await;
    let a = go_live(&d, "past", None).await;
    let broadcast = a["broadcast"].as_str().unwrap().to_string();
    let (_, addr, tok) = pick(&a, "primary");
    let chunks: Arc<Vec<Bytes>> =
        Arc::new((0..3).map(|c| Bytes::from(format!("past/{c}"))).collect());
    push(
        addr,
        "past".into(),
        Role::Primary,
        tok,
        chunks.clone(),
        3,
        true,
    )
    .await
    .unwrap();
    until("the ended broadcast released", 30, || async {
        held(s.http).await == 0
    })
    .await;

    // A viewer of that broadcast: it is opened from disk and read to its end.
    let body = get(format!(
        "http://{}/v1/streams/past/live?from=start&broadcast={broadcast}",
        s.http
    ))
    .await
    .unwrap();
    assert_eq!(body.status(), 200);
    let body = body.bytes().await.unwrap();
    assert_eq!(&body[..], &concat(&chunks)[..]);
    assert_eq!(held(s.http).await, 1, "opened from disk for the viewer");
    until("the reopened broadcast released again", 30, || async {
        held(s.http).await == 0
    })
    .await;
}
