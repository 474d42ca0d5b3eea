//! The client over real loopback sockets: fake entry servers speaking the native protocol with
//! `proto` on `127.0.0.1:0`, a fake director and a fake playback server (axum). No fixed ports, no
//! sleeping for start-up; every wait is bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use client::core::{FailoverPolicy, PathState, PathTarget};
use client::push::DirectorReassign;
use client::{
    AssignRequest, ClientError, Director, LocationInput, PlayError, PlayOptions, PushConfig,
    Pusher, StartAt,
};
use proto::{Decoder, ErrorCode, ErrorFrame, Frame, Protocol, Role, StreamId, Welcome, encode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{sleep, timeout};

const BOUND: Duration = Duration::from_secs(30);

/// A fake entry server's log: what it holds of the stream.
#[derive(Debug, Default)]
struct Log {
    base: Option<u64>,
    next: u64,
    payload: Vec<u8>,
    ended: Option<u64>,
    duplicates: u32,
    gaps: u32,
    welcomes: u32,
}

/// A fake entry server on 127.0.0.1; `kill` drops its listener and every connection.
struct FakeEntry {
    id: String,
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    /// Kill itself once the log holds this seq.
    kill_at: Arc<Mutex<Option<u64>>>,
    down: watch::Sender<bool>,
}

impl FakeEntry {
    async fn start(id: &str) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (down, _) = watch::channel(false);
        let e = Arc::new(FakeEntry {
            id: id.into(),
            addr,
            log: Arc::default(),
            kill_at: Arc::default(),
            down,
        });
        e.clone().accept(listener);
        e
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }

    fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    fn kill(&self) {
        self.down.send_replace(true);
    }

    /// Listens again on the same address with the same log.
    async fn restart(self: &Arc<Self>) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.down.send_replace(false);
        self.clone().accept(listener);
    }

    async fn wait_down(&self) {
        let mut rx = self.down.subscribe();
        timeout(BOUND, rx.wait_for(|d| *d)).await.unwrap().unwrap();
    }

    fn accept(self: Arc<Self>, listener: TcpListener) {
        let mut down = self.down.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = down.wait_for(|d| *d) => return,
                    r = listener.accept() => {
                        let Ok((conn, _)) = r else { return };
                        let me = self.clone();
                        let mut down = self.down.subscribe();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = down.wait_for(|d| *d) => {}
                                () = me.serve(conn) => {}
                            }
                        });
                    }
                }
            }
        });
    }

    async fn serve(&self, conn: TcpStream) {
        let (mut rd, mut wr) = conn.into_split();
        let mut buf = BytesMut::new();
        let mut dec = Decoder::default();
        let Some(Frame::Hello(h)) = next_frame(&mut rd, &mut buf, &mut dec).await else {
            return;
        };
        assert_eq!(
            h.token,
            Bytes::from(format!("tok-{}", self.id)),
            "the token for this server"
        );
        let next = {
            let mut log = self.log();
            log.welcomes += 1;
            // The resume rule for a server that holds nothing of the stream.
            if log.base.is_none() {
                let start = h.resume_from.unwrap_or(0);
                log.base = Some(start);
                log.next = start;
            }
            log.next
        };
        let w = Frame::Welcome(Welcome {
            next_seq: next,
            server_id: self.id.clone(),
            max_payload: 1 << 20,
            max_frame_len: (1 << 20) + 65536,
            ack_interval_ms: 10,
        });
        if send(&mut wr, &w).await.is_err() {
            return;
        }
        while let Some(f) = next_frame(&mut rd, &mut buf, &mut dec).await {
            let reply = match f {
                Frame::Data(d) => {
                    let mut log = self.log();
                    if d.seq > log.next {
                        log.gaps += 1;
                        Frame::Error(ErrorFrame {
                            code: ErrorCode::Protocol,
                            message: format!("gap: expected {}, got {}", log.next, d.seq),
                        })
                    } else {
                        if d.seq == log.next {
                            log.payload.extend_from_slice(&d.payload);
                            log.next += 1;
                        } else {
                            log.duplicates += 1;
                        }
                        let mut kill = self.kill_at.lock().unwrap();
                        if kill.is_some_and(|k| log.next > k) {
                            *kill = None;
                            self.kill();
                            return;
                        }
                        Frame::Ack {
                            through: log.next - 1,
                        }
                    }
                }
                Frame::End { final_seq } => {
                    self.log().ended = Some(final_seq);
                    let _ = send(&mut wr, &Frame::Ack { through: final_seq }).await;
                    return;
                }
                Frame::Ping(n) => Frame::Pong(n),
                _ => return,
            };
            let stop = matches!(reply, Frame::Error(_));
            if send(&mut wr, &reply).await.is_err() || stop {
                return;
            }
        }
    }
}

async fn next_frame(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
    dec: &mut Decoder,
) -> Option<Frame> {
    loop {
        if let Some(f) = dec.decode(buf).ok()? {
            return Some(f);
        }
        if rd.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

async fn send(wr: &mut tokio::net::tcp::OwnedWriteHalf, f: &Frame) -> std::io::Result<()> {
    let mut b = BytesMut::new();
    encode(f, &mut b).map_err(std::io::Error::other)?;
    wr.write_all(&b).await
}

fn input(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + i / 509) as u8).collect()
}

/// A source that trickles `data` in 2 KiB pieces, one per millisecond.
fn trickle(data: Vec<u8>) -> DuplexStream {
    let (mut w, r) = tokio::io::duplex(8192);
    tokio::spawn(async move {
        for piece in data.chunks(2048) {
            if w.write_all(piece).await.is_err() {
                return;
            }
            sleep(Duration::from_millis(1)).await;
        }
    });
    r
}

fn target(role: Role, e: &FakeEntry) -> PathTarget {
    PathTarget {
        role,
        server_id: e.id.clone(),
        url: e.url(),
        token: format!("tok-{}", e.id),
    }
}

fn stream() -> StreamId {
    StreamId::parse("cam-42").unwrap()
}

fn config() -> PushConfig {
    PushConfig {
        chunk_max: 8192,
        end_timeout: Duration::from_secs(10),
        policy: FailoverPolicy {
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            replace_after: Duration::from_millis(400),
        },
        ..PushConfig::default()
    }
}

#[tokio::test]
async fn dual_upload_survives_a_killed_server_and_resumes_it_after_restart() {
    timeout(BOUND, async {
        let (a, b) = (FakeEntry::start("a").await, FakeEntry::start("b").await);
        *b.kill_at.lock().unwrap() = Some(40);
        let data = input(1_500_000);
        let paths = vec![
            (Role::Primary, target(Role::Primary, &a)),
            (Role::Backup, target(Role::Backup, &b)),
        ];
        let push = tokio::spawn(Pusher::new(stream(), paths, config()).run(trickle(data.clone())));
        b.wait_down().await;
        let held_when_killed = b.log().next;
        assert!(held_when_killed > 40);
        b.restart().await;
        let s = push.await.unwrap().unwrap();
        assert!(s.complete_everywhere, "{s:#?}");
        for e in [&a, &b] {
            let log = e.log();
            assert_eq!(log.payload.len(), data.len(), "server {}", e.id);
            assert!(
                log.payload == data,
                "server {} holds every byte once, in order",
                e.id
            );
            assert_eq!((log.duplicates, log.gaps), (0, 0), "server {}", e.id);
            assert_eq!(log.ended, Some(log.next - 1));
        }
        assert!(b.log().welcomes >= 2);
        assert!(s.progress.paths[1].reconnects >= 1);
        assert_eq!(s.progress.paths[0].reconnects, 0);
        assert!(
            s.progress
                .paths
                .iter()
                .all(|p| p.state == PathState::Finished)
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_server_that_stays_dead_does_not_stop_the_push() {
    timeout(BOUND, async {
        let (a, b) = (FakeEntry::start("a").await, FakeEntry::start("b").await);
        *a.kill_at.lock().unwrap() = Some(30);
        let data = input(600_000);
        let cfg = PushConfig {
            end_timeout: Duration::from_secs(1),
            ..config()
        };
        let paths = vec![
            (Role::Primary, target(Role::Primary, &a)),
            (Role::Backup, target(Role::Backup, &b)),
        ];
        let s = Pusher::new(stream(), paths, cfg)
            .run(trickle(data.clone()))
            .await
            .unwrap();
        assert_eq!(s.complete_paths, 1);
        assert!(!s.complete_everywhere);
        assert!(b.log().payload == data);
        assert_eq!(b.log().duplicates, 0);
        let got = a.log().payload.clone();
        assert!(got.len() < data.len() && data.starts_with(&got));
        assert_ne!(s.progress.paths[0].state, PathState::Finished);
    })
    .await
    .unwrap();
}

/// A fake director: answers assignments from a fixed script and counts requests.
#[derive(Clone)]
struct FakeDirector {
    answer: Arc<Mutex<Value>>,
    requests: Arc<Mutex<Vec<Value>>>,
}

async fn assign_handler(State(d): State<FakeDirector>, Json(body): Json<Value>) -> Response {
    d.requests.lock().unwrap().push(body.clone());
    if body.get("bitrate_kbps") == Some(&json!(0)) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "bitrate_kbps: 0 is out of range", "code": "invalid_field", "accepted": "1 to 100000"})),
        )
            .into_response();
    }
    Json(d.answer.lock().unwrap().clone()).into_response()
}

async fn start_director(answer: Value) -> (String, FakeDirector) {
    let d = FakeDirector {
        answer: Arc::new(Mutex::new(answer)),
        requests: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/v1/assignments", post(assign_handler))
        .with_state(d.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, d)
}

fn pick(role: &str, e: &FakeEntry) -> Value {
    json!({
        "role": role, "server_id": e.id, "pop": format!("pop-{}", e.id), "city": "Testville",
        "location": {"lat": 1.0, "lon": 2.0}, "protocol": "native", "url": e.url(),
        "urls": {"native": e.url(), "http": "http://127.0.0.1:1"},
        "token": format!("tok-{}", e.id),
        "estimate": {"distance_km": 1.0, "rtt_ms": 2.0, "loss": 0.0, "throughput_mbps": 100.0,
            "utilization": 0.0, "score": 1.0, "evidence": 0.0,
            "rtt_source": {"kind": "estimated", "samples": 0}},
        "scored_from": {"kind": "typed", "location": {"lat": 1.0, "lon": 2.0}, "note": null},
        "runners_up": [], "note": null
    })
}

#[tokio::test]
async fn a_server_that_stays_dead_is_replaced_through_the_director() {
    timeout(BOUND, async {
        let (a, b, c) = (
            FakeEntry::start("a").await,
            FakeEntry::start("b").await,
            FakeEntry::start("c").await,
        );
        *b.kill_at.lock().unwrap() = Some(25);
        // After b's death the director assigns the survivor as primary and c as backup.
        let (url, director) = start_director(json!({
            "stream": "cam-42", "broadcast": "b1", "new_broadcast": false, "protocol": "native",
            "bitrate_kbps": 1000, "client_ip": null, "locations": {"typed": null, "ip": null},
            "primary": pick("primary", &a), "backup": pick("backup", &c),
            "backup_reason": null, "issued_at": 1, "expires_at": 2
        }))
        .await;
        let data = input(2_000_000);
        let paths = vec![
            (Role::Primary, target(Role::Primary, &a)),
            (Role::Backup, target(Role::Backup, &b)),
        ];
        let request = AssignRequest {
            location: Some(LocationInput::Place("Paris, FR".into())),
            protocol: Some(Protocol::Native),
            ..AssignRequest::default()
        };
        let s = Pusher::new(stream(), paths, config())
            .with_reassign(DirectorReassign {
                director: Director::new(&url).unwrap(),
                request,
                broadcast: "b1".parse().unwrap(),
            })
            .run(trickle(data.clone()))
            .await
            .unwrap();
        assert!(s.complete_everywhere, "{s:#?}");
        let reqs = director.requests.lock().unwrap().clone();
        assert!(!reqs.is_empty());
        assert_eq!(
            reqs[0]["stream"], "cam-42",
            "the replacement is for the same stream id"
        );
        assert_eq!(reqs[0]["broadcast"], "b1", "... and the same broadcast");
        assert_eq!(
            reqs[0]["replace"], "backup",
            "... replacing the dead path only"
        );
        assert_eq!(reqs[0]["location"], "Paris, FR");
        assert!(a.log().payload == data);
        let (b_log, c_log) = (b.log(), c.log());
        let start = c_log.base.unwrap();
        assert!(
            start > 0 && start <= b_log.next,
            "c starts where the ring's oldest chunk was, no hole after b"
        );
        assert!(
            data.ends_with(&c_log.payload),
            "c holds the rest of the stream, contiguous"
        );
        assert!(data.starts_with(&b_log.payload));
        assert_eq!((c_log.duplicates, c_log.gaps), (0, 0));
        assert_eq!(c_log.ended, a.log().ended);
        assert_eq!(s.progress.paths[1].server_id, "c");
        assert_eq!(s.progress.paths[1].replacements, 1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn assign_sends_the_request_and_carries_the_directors_errors() {
    timeout(BOUND, async {
        let a = FakeEntry::start("a").await;
        let (url, director) = start_director(json!({
            "stream": "cam-42", "broadcast": "b7", "new_broadcast": true, "protocol": "native",
            "bitrate_kbps": 6000, "client_ip": "127.0.0.1", "locations": {"typed": null, "ip": null},
            "primary": pick("primary", &a), "backup": null,
            "backup_reason": "only one POP is up", "issued_at": 1, "expires_at": 99
        }))
        .await;
        let req = AssignRequest {
            stream: Some(stream()),
            location: Some(LocationInput::Place("Paris, FR".into())),
            protocol: Some(Protocol::Native),
            bitrate_kbps: Some(6000),
            ..Default::default()
        };
        let got = client::assign(&url, &req).await.unwrap();
        assert_eq!(got.primary.server_id.as_str(), "a");
        assert_eq!(
            client::url_for(&got.primary, Protocol::Native),
            Some(a.url().as_str())
        );
        assert_eq!(got.backup_reason.as_deref(), Some("only one POP is up"));
        assert_eq!(got.expires_at, 99);
        assert_eq!(got.broadcast.as_str(), "b7");
        assert_eq!(
            director.requests.lock().unwrap()[0],
            json!({"stream": "cam-42", "location": "Paris, FR", "protocol": "native", "bitrate_kbps": 6000})
        );
        let bad = AssignRequest {
            bitrate_kbps: Some(0),
            ..req
        };
        let e = client::assign(&url, &bad).await.unwrap_err();
        assert_eq!(e.status(), Some(422));
        assert!(e.to_string().contains("bitrate_kbps: 0 is out of range (accepted: 1 to 100000)"), "{e}");
        // Nothing listens on a fresh closed port: unreachable, which the CLI maps to 69.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let e = client::assign(&format!("http://{closed}"), &bad).await.unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }) && e.is_unavailable(), "{e}");
    })
    .await
    .unwrap();
}

/// A fake entry HTTP server: `/v1/streams/{id}/live` is 404 for the first `missing` requests,
/// then streams `body` in pieces.
#[derive(Clone)]
struct FakeLive {
    missing: Arc<AtomicU32>,
    body: Bytes,
    froms: Arc<Mutex<Vec<String>>>,
}

async fn live_handler(
    State(f): State<FakeLive>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    f.froms
        .lock()
        .unwrap()
        .push(q.get("from").cloned().unwrap_or_default());
    if id != "cam-42"
        || f.missing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| m.checked_sub(1))
            .is_ok()
    {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "no such stream"})),
        )
            .into_response();
    }
    let pieces: Vec<Result<Bytes, std::io::Error>> = f
        .body
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    axum::body::Body::from_stream(futures_util::stream::iter(pieces)).into_response()
}

async fn start_live(missing: u32, body: Bytes) -> (String, FakeLive) {
    let f = FakeLive {
        missing: Arc::new(AtomicU32::new(missing)),
        body,
        froms: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/v1/streams/{id}/live", get(live_handler))
        .with_state(f.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, f)
}

#[tokio::test]
async fn play_waits_for_the_stream_then_copies_it_to_the_end() {
    timeout(BOUND, async {
        let body = Bytes::from(input(50_000));
        let (url, live) = start_live(2, body.clone()).await;
        let opts = PlayOptions {
            director: None,
            from_url: Some(url.clone()),
            location: None,
            start_at: StartAt::Start,
            wait: Duration::from_secs(10),
            ca_file: None,
            token: None,
            broadcast: None,
            follow: false,
        };
        let mut out = Vec::new();
        let stats = client::play(&stream(), &opts, &mut out).await.unwrap();
        assert_eq!(stats.bytes, 50_000);
        assert!(out == body);
        assert_eq!(live.froms.lock().unwrap().clone(), vec!["start"; 3]);

        let opts = PlayOptions {
            wait: Duration::from_millis(300),
            start_at: StartAt::Seq(7),
            ..opts
        };
        let e = client::play(&StreamId::parse("nope").unwrap(), &opts, Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(e, PlayError::NotFound { .. }), "{e}");
        assert!(live.froms.lock().unwrap().contains(&"7".to_string()));
    })
    .await
    .unwrap();
}

/// Probing: the targets the director names are timed at once, one connection each; a target
/// that answers gives exactly the samples asked for (after one uncounted request that sets the
/// connection up), one that never answers or is rate-limited is left out, and the whole run ends
/// by the budget.
#[tokio::test]
async fn probing_times_the_targets_and_ends_by_the_budget() {
    async fn serve(app: axum::Router) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, app).await });
        addr
    }
    let hits = Arc::new(AtomicU32::new(0));
    let ok = {
        let hits = hits.clone();
        serve(axum::Router::new().route(
            "/v1/probe",
            get(move || {
                hits.fetch_add(1, Ordering::Relaxed);
                async { StatusCode::NO_CONTENT }
            }),
        ))
        .await
    };
    let limited = serve(
        axum::Router::new().route("/v1/probe", get(|| async { StatusCode::TOO_MANY_REQUESTS })),
    )
    .await;
    // Accepts connections and never answers.
    let silent_l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent = silent_l.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent_l.accept().await {
            held.push(s);
        }
    });
    let targets = json!({
        "samples": 5,
        "targets": [
            {"server_id": "ok-1", "pop": "ok", "url": format!("http://{ok}/v1/probe"), "for": ["primary"]},
            {"server_id": "silent-1", "pop": "si", "url": format!("http://{silent}/v1/probe"), "for": ["primary"]},
            {"server_id": "limited-1", "pop": "li", "url": format!("http://{limited}/v1/probe"), "for": ["backup"]},
        ]
    });
    let director = serve(axum::Router::new().route(
        "/v1/probe-targets",
        get(move || {
            let t = targets.clone();
            async move { Json(t) }
        }),
    ))
    .await;
    let d = Director::new(&format!("http://{director}")).expect("director");
    let budget = Duration::from_millis(400);
    let p = d.probe(Some("Paris, FR"), Protocol::Native, budget).await;
    assert_eq!(p.skipped, None);
    assert_eq!(p.targets, 3);
    let by: HashMap<&str, &Vec<f64>> = p
        .results
        .iter()
        .map(|r| (r.server_id.as_str(), &r.rtt_ms))
        .collect();
    // The answering target: the handshake and four timed requests.
    assert_eq!(by["ok-1"].len(), 5, "{:?}", p.results);
    assert_eq!(
        hits.load(Ordering::Relaxed),
        4,
        "the handshake is the first sample"
    );
    // The silent one: its handshake only (the kernel answers it); the rate-limited one: its
    // handshake, then the 429 stops it.
    assert_eq!(by["silent-1"].len(), 1, "{:?}", p.results);
    assert_eq!(by["limited-1"].len(), 1, "{:?}", p.results);
    assert!(
        p.results
            .iter()
            .flat_map(|r| &r.rtt_ms)
            .all(|r| *r > 0.0 && *r < 10_000.0)
    );
    assert!(
        p.took >= budget && p.took < budget + Duration::from_millis(300),
        "the silent target holds the run until the budget, not longer: {:?}",
        p.took
    );

    // A director without probe targets: skipped, never an error.
    let none = serve(axum::Router::new()).await;
    let d = Director::new(&format!("http://{none}")).expect("director");
    let p = d.probe(None, Protocol::Native, budget).await;
    assert!(p.results.is_empty());
    assert!(
        p.skipped
            .as_deref()
            .unwrap_or("")
            .contains("no probe targets"),
        "{p:?}"
    );
}
