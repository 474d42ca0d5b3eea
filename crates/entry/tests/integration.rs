//! Entry servers end to end on loopback: a real director, entry servers on 127.0.0.x, a
//! protocol-level pusher, viewers over HTTP. Each entry server runs on its own runtime so it can
//! be killed abruptly (its runtime dropped: every socket closes at once, nothing drains).

use bytes::{Bytes, BytesMut};
use entry::{Entry, EntryConfig};
use proto::{Data, DataFlags, Decoder, ErrorCode, Frame, Hello, Role, StreamId};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod bounds;
mod browser;
mod hls;
mod listeners;
mod openapi;
mod ownership;
mod rtmp;
mod storage;
mod tls;
mod ws;

use testkit::{bind, entry_config};

/// A director and an entry server, as `testkit` runs them (their panics re-raised in the test).
type Director = testkit::TestDirector;
type Server = testkit::TestEntry;

/// An HTTP client for the tests (reqwest is built without a rustls provider: install ring).
fn http_client() -> reqwest::Client {
    plumbing::tls::install_default_provider();
    reqwest::Client::new()
}

/// `reqwest::get` through [`http`].
async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http_client().get(url).send().await
}

/// `GET http://{http}/v1/streams` with the cluster credential (operators and peers only).
async fn get_streams(http: impl std::fmt::Display) -> reqwest::Result<reqwest::Response> {
    http_client()
        .get(format!("http://{http}/v1/streams"))
        .bearer_auth(testkit::peer_token())
        .send()
        .await
}

/// A director in the `open` publish mode with the test secrets (see `testkit`).
fn start_director() -> Director {
    testkit::TestDirector::start(testkit::director_config())
}

/// The director's registry as its admin API shows it (`Null` if it does not answer).
/// One Prometheus value of an entry server.
async fn metric(http: SocketAddr, name: &str) -> u64 {
    let text = get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
        .trim()
        .parse()
        .unwrap()
}

async fn admin_servers(d: &Director) -> Value {
    let r = http_client()
        .get(format!("{}/v1/admin/entry-servers", d.url))
        .bearer_auth("admin")
        .send()
        .await;
    match r {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// London, Frankfurt and New York, registered: for "Paris" the primary is lon-1, the backup
/// fra-1, and nyc-1 is the third node viewers use.
async fn three_servers(d: &Director, dp: &std::path::Path) -> [Server; 3] {
    let servers = [
        Server::start(
            entry_config("lon-1", "lon", "London", dp, Some(d)),
            "127.0.0.2",
        ),
        Server::start(
            entry_config("fra-1", "fra", "Frankfurt", dp, Some(d)),
            "127.0.0.3",
        ),
        Server::start(
            entry_config("nyc-1", "nyc", "New York City", dp, Some(d)),
            "127.0.0.4",
        ),
    ];
    wait_registered(d, 3).await;
    servers
}

/// Wait (bounded) until the director has `n` healthy servers.
async fn wait_registered(d: &Director, n: usize) {
    for _ in 0..200 {
        let r = admin_servers(d).await;
        let healthy = r["entry_servers"]
            .as_array()
            .map_or(0, |a| a.iter().filter(|s| s["health"] == "healthy").count());
        if healthy >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("entry servers did not register");
}

async fn assign(d: &Director, stream: &str, location: &str) -> Value {
    let r = http_client()
        .post(format!("{}/v1/assignments", d.url))
        .json(&json!({"stream": stream, "location": location, "bitrate_kbps": 1000}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    r.json().await.unwrap()
}

/// A minimal device side of the native protocol.
struct Path {
    sock: TcpStream,
    buf: BytesMut,
    dec: Decoder,
}

impl Path {
    async fn connect(addr: &str) -> std::io::Result<Path> {
        let a = addr.trim_start_matches("tcp://");
        Ok(Path {
            sock: TcpStream::connect(a).await?,
            buf: BytesMut::new(),
            dec: Decoder::default(),
        })
    }

    async fn send(&mut self, f: &Frame) -> std::io::Result<()> {
        let mut b = BytesMut::new();
        proto::encode(f, &mut b).unwrap();
        self.sock.write_all(&b).await
    }

    async fn recv(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            if let Some(f) = self
                .dec
                .decode(&mut self.buf)
                .map_err(std::io::Error::other)?
            {
                return Ok(Some(f));
            }
            if tokio::time::timeout(Duration::from_secs(10), self.sock.read_buf(&mut self.buf))
                .await
                .map_err(|_| std::io::Error::other("timeout"))??
                == 0
            {
                return Ok(None);
            }
        }
    }

    async fn hello(
        &mut self,
        stream: &str,
        role: Role,
        token: &str,
        resume: Option<u64>,
    ) -> std::io::Result<Frame> {
        self.send(&Frame::Hello(Hello {
            max_version: 1,
            role,
            stream: StreamId::parse(stream).unwrap(),
            token: Bytes::from(token.to_string()),
            resume_from: resume,
        }))
        .await?;
        self.recv()
            .await?
            .ok_or_else(|| std::io::Error::other("closed"))
    }

    async fn data(&mut self, seq: u64, payload: Bytes) -> std::io::Result<()> {
        self.send(&Frame::Data(Data {
            seq,
            pts: seq as i64 * 1000,
            flags: if seq.is_multiple_of(10) {
                DataFlags::KEYFRAME
            } else {
                DataFlags::NONE
            },
            payload,
        }))
        .await
    }

    /// Read frames until ACK through `seq` (or an error frame / close).
    async fn until_ack(&mut self, seq: u64) -> Result<(), String> {
        loop {
            match self.recv().await {
                Ok(Some(Frame::Ack { through })) if through >= seq => return Ok(()),
                Ok(Some(Frame::Ack { .. } | Frame::Pong(_))) => {}
                Ok(Some(Frame::Error(e))) => return Err(format!("{}: {}", e.code, e.message)),
                other => return Err(format!("{other:?}")),
            }
        }
    }
}

fn source(n: usize) -> Arc<Vec<Bytes>> {
    Arc::new(
        (0..n)
            .map(|i| Bytes::from(format!("chunk {i:05} ").repeat(40 + i % 7)))
            .collect(),
    )
}

fn concat(chunks: &[Bytes]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.iter().copied()).collect()
}

/// Push chunks `from..to` on one path (paced), then END if `end`. Returns the error if the path
/// died.
async fn push(
    addr: String,
    stream: String,
    role: Role,
    token: String,
    chunks: Arc<Vec<Bytes>>,
    to: usize,
    end: bool,
) -> Result<u64, String> {
    let mut p = Path::connect(&addr).await.map_err(|e| e.to_string())?;
    let next = match p
        .hello(&stream, role, &token, None)
        .await
        .map_err(|e| e.to_string())?
    {
        Frame::Welcome(w) => w.next_seq,
        other => return Err(format!("{other:?}")),
    };
    for seq in next..to as u64 {
        p.data(seq, chunks[seq as usize].clone())
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if end {
        p.send(&Frame::End {
            final_seq: to as u64 - 1,
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    p.until_ack(to as u64 - 1).await?;
    Ok(next)
}

async fn read_live(http: SocketAddr, stream: &str, from: &str) -> Result<Vec<u8>, String> {
    let r = http_client()
        .get(format!(
            "http://{http}/v1/streams/{stream}/live?from={from}"
        ))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !r.status().is_success() {
        return Err(format!(
            "{}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        ));
    }
    r.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
}

fn pick<'a>(a: &'a Value, role: &str) -> (&'a str, String, String) {
    let p = &a[role];
    (
        p["server_id"].as_str().unwrap(),
        p["urls"]["native"].as_str().unwrap().to_string(),
        p["token"].as_str().unwrap().to_string(),
    )
}

/// The proof of the data path: dual upload, viewers on a third node through the relay, the
/// primary (then in another run the backup) killed abruptly mid-stream; the viewer's bytes equal
/// the source's exactly.
async fn failover_case(kill_role: &str) {
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let dp = dir.path().to_path_buf();
    let mut servers = three_servers(&d, &dp).await;
    let stream = format!("cam-{kill_role}");
    let a = assign(&d, &stream, "Paris, FR").await;
    let (pid, paddr, ptok) = pick(&a, "primary");
    let (bid, baddr, btok) = pick(&a, "backup");
    assert_eq!((pid, bid), ("lon-1", "fra-1"), "{a}");
    let chunks = source(600);
    let n = chunks.len();
    let primary = tokio::spawn(push(
        paddr,
        stream.clone(),
        Role::Primary,
        ptok,
        chunks.clone(),
        n,
        true,
    ));
    let backup = tokio::spawn(push(
        baddr,
        stream.clone(),
        Role::Backup,
        btok,
        chunks.clone(),
        n,
        true,
    ));
    // A viewer on the third node, from the start, while the stream is live.
    let nyc = servers[2].http;
    // Wait until both ingest servers hold data (the director learns it from heartbeats).
    for s in &servers[..2] {
        for _ in 0..200 {
            let v: Value = get_streams(s.http).await.unwrap().json().await.unwrap();
            if v["streams"][0]["next_seq"].as_u64().unwrap_or(0) > 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let viewer = tokio::spawn({
        let stream = stream.clone();
        async move { read_live(nyc, &stream, "start").await }
    });
    let live_viewer = tokio::spawn({
        let stream = stream.clone();
        async move { read_live(nyc, &stream, "live").await }
    });
    // Kill mid-stream.
    let victim = if kill_role == "primary" { 0 } else { 1 };
    loop {
        let v: Value = get_streams(servers[victim].http)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["streams"][0]["next_seq"].as_u64().unwrap_or(0) >= 250 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    servers[victim].kill();
    let (p, b) = (primary.await.unwrap(), backup.await.unwrap());
    let (dead, alive) = if kill_role == "primary" {
        (p, b)
    } else {
        (b, p)
    };
    assert!(dead.is_err(), "the killed path must fail: {dead:?}");
    assert_eq!(alive, Ok(0));
    let got = viewer.await.unwrap().expect("viewer");
    let want = concat(&chunks);
    if got != want {
        let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
        panic!(
            "viewer got {} bytes, source {}; first difference at {first_diff:?}: got {:?} want {:?}",
            got.len(),
            want.len(),
            first_diff
                .map(|i| String::from_utf8_lossy(&got[i..(i + 40).min(got.len())]).into_owned()),
            first_diff.map(|i| String::from_utf8_lossy(&want[i..i + 40]).into_owned()),
        );
    }
    assert!(
        got == concat(&chunks),
        "viewer bytes differ from the source"
    );
    // A live viewer joined mid-stream: what it got is a contiguous run ending at the end.
    let live = live_viewer.await.unwrap().expect("live viewer");
    assert!(!live.is_empty());
    assert!(
        concat(&chunks).ends_with(&live),
        "live viewer bytes are not a suffix of the source"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_mid_stream_loses_nothing_for_viewers() {
    failover_case("primary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_backup_mid_stream_loses_nothing_for_viewers() {
    failover_case("backup").await;
}

/// A restarted entry server keeps what it acknowledged and the device resumes it with no loss
/// and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_from_what_was_acknowledged() {
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let dp = dir.path().to_path_buf();
    let mut s = Server::start(
        entry_config("lon-1", "lon", "London", &dp, Some(&d)),
        "127.0.0.5",
    );
    wait_registered(&d, 1).await;
    let a = assign(&d, "resume", "London").await;
    let (_, _, tok) = pick(&a, "primary");
    let chunks = source(300);
    // Phase 1: 150 chunks, acknowledged.
    let mut p = Path::connect(&s.native.to_string()).await.unwrap();
    assert!(
        matches!(p.hello("resume", Role::Primary, &tok, None).await.unwrap(), Frame::Welcome(w) if w.next_seq == 0)
    );
    for seq in 0..150u64 {
        p.data(seq, chunks[seq as usize].clone()).await.unwrap();
    }
    p.until_ack(149).await.unwrap();
    // Abrupt death, then a restart on the same disk.
    s.restart();
    let mut p = Path::connect(&s.native.to_string()).await.unwrap();
    let next = match p
        .hello("resume", Role::Primary, &tok, Some(120))
        .await
        .unwrap()
    {
        Frame::Welcome(w) => w.next_seq,
        other => panic!("{other:?}"),
    };
    assert_eq!(next, 150, "everything acknowledged survives the restart");
    // The device resends from what it still holds (some duplicates), then the rest.
    for seq in 120..300u64 {
        p.data(seq, chunks[seq as usize].clone()).await.unwrap();
    }
    p.send(&Frame::End { final_seq: 299 }).await.unwrap();
    p.until_ack(299).await.unwrap();
    let got = read_live(s.http, "resume", "start").await.unwrap();
    assert!(got == concat(&chunks), "no loss, no duplicate after resume");
    // Catch-up from a sequence number.
    let tail = read_live(s.http, "resume", "290").await.unwrap();
    assert!(tail == concat(&chunks[290..]));
    // Bad `from` is a clear 400.
    let e = read_live(s.http, "resume", "yesterday").await.unwrap_err();
    assert!(e.contains("400") && e.contains("accepted values"), "{e}");
}

/// The broadcast of tokens made by [`token_for`].
const B1: &str = "b1";

fn token_for(key: &token::SigningKey, stream: &str, server: &str, role: Role, exp: u64) -> String {
    token_for_broadcast(key, stream, B1, server, role, exp)
}

fn token_for_broadcast(
    key: &token::SigningKey,
    stream: &str,
    broadcast: &str,
    server: &str,
    role: Role,
    exp: u64,
) -> String {
    key.sign(&token::Claims {
        scp: token::Scope::Ingest,
        stream: stream.parse().unwrap(),
        broadcast: broadcast.parse().unwrap(),
        server: server.parse().unwrap(),
        role,
        private: false,
        iat: 0,
        exp,
    })
}

fn far_future() -> u64 {
    u64::MAX / 2
}

async fn expect_error(p: &mut Path) -> (ErrorCode, String) {
    loop {
        match p.recv().await {
            Ok(Some(Frame::Error(e))) => return (e.code, e.message),
            Ok(Some(Frame::Ack { .. })) => {}
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
}

/// Hostile input ends only the offending session with a clear ERROR; a good session on the same
/// server carries on and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_corrupt_truncated_and_replayed_frames() {
    let dir = tempfile::tempdir().unwrap();
    let dp = dir.path().to_path_buf();
    let s = Server::start(
        entry_config("solo", "p", "Frankfurt", &dp, None),
        "127.0.0.6",
    );
    let key = token::SigningKey::from_bytes(&[7u8; 32]);
    let addr = s.native.to_string();
    let chunks = source(200);
    // A good session runs through all of it.
    let good = tokio::spawn(push(
        addr.clone(),
        "good".into(),
        Role::Primary,
        token_for(&key, "good", "solo", Role::Primary, far_future()),
        chunks.clone(),
        200,
        true,
    ));

    // Forged: signed by another key.
    let forger = token::SigningKey::from_bytes(&[9u8; 32]);
    let mut p = Path::connect(&addr).await.unwrap();
    let f = p
        .hello(
            "x",
            Role::Primary,
            &token_for(&forger, "x", "solo", Role::Primary, far_future()),
            None,
        )
        .await
        .unwrap();
    assert!(
        matches!(&f, Frame::Error(e) if e.code == ErrorCode::Unauthorized),
        "{f:?}"
    );
    // For another server, another role, another stream, expired, garbage.
    for (tok, stream) in [
        (
            token_for(&key, "x", "other", Role::Primary, far_future()),
            "x",
        ),
        (
            token_for(&key, "x", "solo", Role::Backup, far_future()),
            "x",
        ),
        (
            token_for(&key, "y", "solo", Role::Primary, far_future()),
            "x",
        ),
        (token_for(&key, "x", "solo", Role::Primary, 1), "x"),
        ("not a token".to_string(), "x"),
    ] {
        let mut p = Path::connect(&addr).await.unwrap();
        let f = p.hello(stream, Role::Primary, &tok, None).await.unwrap();
        assert!(
            matches!(&f, Frame::Error(e) if e.code == ErrorCode::Unauthorized),
            "{f:?}"
        );
    }

    // Corrupt: a DATA frame with a flipped payload byte → bad_crc; what was acked survives.
    let tok = token_for(&key, "victim", "solo", Role::Primary, far_future());
    let mut p = Path::connect(&addr).await.unwrap();
    assert!(matches!(
        p.hello("victim", Role::Primary, &tok, None).await.unwrap(),
        Frame::Welcome(_)
    ));
    for seq in 0..10u64 {
        p.data(seq, chunks[seq as usize].clone()).await.unwrap();
    }
    p.until_ack(9).await.unwrap();
    let mut bad = BytesMut::new();
    proto::encode(
        &Frame::Data(Data {
            seq: 10,
            pts: 0,
            flags: DataFlags::NONE,
            payload: chunks[10].clone(),
        }),
        &mut bad,
    )
    .unwrap();
    bad[30] ^= 0x40;
    p.sock.write_all(&bad).await.unwrap();
    let (code, msg) = expect_error(&mut p).await;
    assert_eq!(code, ErrorCode::BadCrc, "{msg}");

    // Replay and resume: duplicates are ignored; a gap is refused.
    let mut p = Path::connect(&addr).await.unwrap();
    let next = match p
        .hello("victim", Role::Primary, &tok, Some(0))
        .await
        .unwrap()
    {
        Frame::Welcome(w) => w.next_seq,
        other => panic!("{other:?}"),
    };
    assert_eq!(next, 10);
    for seq in 0..15u64 {
        p.data(seq, chunks[seq as usize].clone()).await.unwrap();
    }
    p.until_ack(14).await.unwrap();
    p.data(20, chunks[20].clone()).await.unwrap();
    let (code, msg) = expect_error(&mut p).await;
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("gap"), "{msg}");

    // Truncated frame then close; garbage; a frame claiming 4 GiB; DATA before HELLO.
    for junk in [
        {
            let mut b = BytesMut::new();
            proto::encode(
                &Frame::Data(Data {
                    seq: 15,
                    pts: 0,
                    flags: DataFlags::NONE,
                    payload: chunks[15].clone(),
                }),
                &mut b,
            )
            .unwrap();
            b.truncate(b.len() / 2);
            b.to_vec()
        },
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![b'F', b'M', 1, 3, 0, 0xff, 0xff, 0xff, 0xff],
    ] {
        let mut p = Path::connect(&addr).await.unwrap();
        p.sock.write_all(&junk).await.unwrap();
        let _ = p.sock.shutdown().await;
        // The server answers with an ERROR or just closes; either way it must not hang or die.
        let _ = tokio::time::timeout(Duration::from_secs(5), p.recv())
            .await
            .expect("server answered");
    }
    let mut p = Path::connect(&addr).await.unwrap();
    p.data(0, chunks[0].clone()).await.unwrap();
    let (code, msg) = expect_error(&mut p).await;
    assert_eq!(code, ErrorCode::Protocol);
    assert!(msg.contains("HELLO"), "{msg}");

    assert_eq!(good.await.unwrap(), Ok(0));
    assert!(read_live(s.http, "good", "start").await.unwrap() == concat(&chunks));
    // The victim stream holds exactly its acknowledged chunks 0..=14, once each.
    let v = get_streams(s.http)
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let victim = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["stream"] == "victim")
        .unwrap();
    assert_eq!(victim["next_seq"], 15);
    let body = http_client()
        .get(format!(
            "http://{}/v1/streams/victim/live?from=start",
            s.http
        ))
        .send()
        .await
        .unwrap();
    let mut stream = body.bytes_stream();
    let want = concat(&chunks[..15]);
    let mut got = Vec::new();
    use futures_util::StreamExt;
    while got.len() < want.len() {
        got.extend_from_slice(
            &tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    assert!(got == want);
    // Metrics saw it all.
    let m = get(format!("http://{}/metrics", s.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("firstmile_entry_auth_failures_total 6"), "{m}");
}

/// Viewing a stream nobody knows is a clear 404, a bad id a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_streams_and_bad_ids() {
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        entry_config("lon-1", "lon", "London", dir.path(), Some(&d)),
        "127.0.0.7",
    );
    let e = read_live(s.http, "nobody", "live").await.unwrap_err();
    assert!(e.starts_with("404"), "{e}");
    let e = read_live(s.http, "..%2Fetc", "live").await.unwrap_err();
    assert!(e.starts_with("400"), "{e}");
}

/// Hostile values in the protocol's integer fields get a clean answer, never an overflow or a
/// hang: a resume point beyond 2^62, END of an empty stream at `u64::MAX` (viewers then end
/// instead of waiting forever), and huge `from` values for viewers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_overflow_values_get_a_clean_answer() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = entry_config("ovf-1", "ovf", "Paris", dir.path(), None);
    cfg.viewer_wait_ms = 200;
    let s = Server::start(cfg, "127.0.0.10");
    let addr = s.native.to_string();
    let key = testkit::key();
    let tok = |stream: &str| token_for(&key, stream, "ovf-1", Role::Primary, far_future());
    // resume_from at u64::MAX: refused, the server goes on.
    let mut p = Path::connect(&addr).await.unwrap();
    let f = p
        .hello("ovf", Role::Primary, &tok("ovf"), Some(u64::MAX))
        .await
        .unwrap();
    assert!(
        matches!(&f, Frame::Error(e) if e.code == ErrorCode::Protocol && e.message.contains("2^62") || e.message.contains("largest")),
        "{f:?}"
    );
    // END of an empty stream at u64::MAX: accepted, and a viewer gets the end at once.
    let mut p = Path::connect(&addr).await.unwrap();
    assert!(matches!(
        p.hello("empty", Role::Primary, &tok("empty"), None)
            .await
            .unwrap(),
        Frame::Welcome(_)
    ));
    p.send(&Frame::End {
        final_seq: u64::MAX,
    })
    .await
    .unwrap();
    p.until_ack(u64::MAX).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), read_live(s.http, "empty", "start"))
        .await
        .expect("the viewer of an empty ended stream must not hang");
    assert_eq!(got.unwrap(), Vec::<u8>::new());
    // A stream with data, and viewers asking for absurd starting points.
    let chunks = source(20);
    assert_eq!(
        push(
            addr.clone(),
            "some".into(),
            Role::Primary,
            tok("some"),
            chunks.clone(),
            20,
            true
        )
        .await,
        Ok(0)
    );
    for from in [
        format!("-{}s", u64::MAX),
        format!("time:{}", i64::MIN),
        format!("time:{}", i64::MAX),
        u64::MAX.to_string(),
    ] {
        let r = tokio::time::timeout(Duration::from_secs(10), read_live(s.http, "some", &from))
            .await
            .unwrap_or_else(|_| panic!("from={from} hung"));
        match r {
            Ok(b) => assert!(b.len() <= concat(&chunks).len(), "from={from}"),
            Err(e) => assert!(e.starts_with("4"), "from={from}: {e}"),
        }
    }
    let e = read_live(s.http, "some", &format!("-{}0s", u64::MAX))
        .await
        .unwrap_err();
    assert!(e.starts_with("400"), "{e}");
}

/// SIGTERM's path: the server stops taking new sessions (ERROR going_away), tells the director it
/// is draining, lets the session in flight finish, deregisters and stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_refuses_new_sessions_and_lets_current_ones_finish() {
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = entry_config("drn-1", "drn", "Paris", dir.path(), Some(&d));
    cfg.drain_secs = 20;
    let (n, h) = (bind("127.0.0.8:0"), bind("127.0.0.8:0"));
    let addr = n.local_addr().unwrap().to_string();
    let entry = Entry::init(cfg).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let n = tokio::net::TcpListener::from_std(n).unwrap();
        let h = tokio::net::TcpListener::from_std(h).unwrap();
        entry
            .run(n, h, async move {
                let _ = stop_rx.await;
            })
            .await
    });
    wait_registered(&d, 1).await;
    let a = assign(&d, "drain", "Paris").await;
    let (_, _, tok) = pick(&a, "primary");
    let chunks = source(40);
    let mut p = Path::connect(&addr).await.unwrap();
    assert!(matches!(
        p.hello("drain", Role::Primary, &tok, None).await.unwrap(),
        Frame::Welcome(_)
    ));
    for seq in 0..20u64 {
        p.data(seq, chunks[seq as usize].clone()).await.unwrap();
    }
    p.until_ack(19).await.unwrap();

    stop_tx.send(()).unwrap();
    // The director hears about it: the server is no longer selectable.
    let mut drained = false;
    for _ in 0..200 {
        let r = admin_servers(&d).await;
        if r["entry_servers"][0]["state"] == "draining" {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(drained, "the director never saw the drain");
    // A new session is refused with going_away...
    let tok2 = token_for(
        &token::SigningKey::from_bytes(&[7u8; 32]),
        "other",
        "drn-1",
        Role::Primary,
        far_future(),
    );
    let mut q = Path::connect(&addr).await.unwrap();
    let f = q.hello("other", Role::Primary, &tok2, None).await.unwrap();
    assert!(
        matches!(&f, Frame::Error(e) if e.code == ErrorCode::GoingAway),
        "{f:?}"
    );
    // ...while the one in flight finishes normally.
    for seq in 20..40u64 {
        p.data(seq, chunks[seq as usize].clone()).await.unwrap();
    }
    p.send(&Frame::End { final_seq: 39 }).await.unwrap();
    p.until_ack(39).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops once its sessions are done")
        .unwrap()
        .unwrap();
    // Deregistered.
    let r = admin_servers(&d).await;
    assert_eq!(r["entry_servers"].as_array().map(Vec::len), Some(0), "{r}");
    // And what was acknowledged is on disk for the next start.
    let log = chunklog::StreamLog::open(
        &chunklog::LogConfig::new(dir.path().join("drn-1").join("drain")),
        a["broadcast"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!((log.next_seq(), log.ended()), (40, Some(39)));
}
