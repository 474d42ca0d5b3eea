//! The push I/O loop against in-memory fake entry servers (`tokio::io::duplex`), on a paused
//! clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use proto::Welcome;
use tokio::io::DuplexStream;

use super::*;
use proto::api::Pick;

/// What a fake server's log holds.
#[derive(Debug, Default)]
struct Log {
    base: Option<u64>,
    next: u64,
    payload: Vec<u8>,
    ended: Option<u64>,
    sessions: u32,
}

#[derive(Debug)]
struct Fake {
    id: String,
    log: Mutex<Log>,
    up: AtomicBool,
    /// Drop the connection and go down once the log reaches this seq.
    kill_at: Mutex<Option<u64>>,
    welcomes: AtomicU32,
}

impl Fake {
    fn new(id: &str) -> Arc<Self> {
        Arc::new(Fake {
            id: id.into(),
            log: Mutex::default(),
            up: AtomicBool::new(true),
            kill_at: Mutex::new(None),
            welcomes: AtomicU32::new(0),
        })
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }

    async fn serve(self: Arc<Self>, io: DuplexStream) {
        let (rd, mut wr) = tokio::io::split(io);
        let mut r = FrameReader {
            rd,
            buf: BytesMut::new(),
            dec: Decoder::default(),
        };
        let Ok(Some(Frame::Hello(h))) = r.next().await else {
            return;
        };
        let next = {
            let mut log = self.log();
            log.sessions += 1;
            // The resume rule for a server that holds nothing of the stream.
            if log.base.is_none() {
                let start = h.resume_from.unwrap_or(0);
                log.base = Some(start);
                log.next = start;
            }
            log.next
        };
        self.welcomes.fetch_add(1, Ordering::SeqCst);
        let w = Frame::Welcome(Welcome {
            next_seq: next,
            server_id: self.id.clone(),
            max_payload: 1 << 20,
            max_frame_len: (1 << 20) + 65536,
            ack_interval_ms: 10,
        });
        if write_frame(&mut wr, &w).await.is_err() {
            return;
        }
        while let Ok(Some(f)) = r.next().await {
            let reply = match f {
                Frame::Data(d) => {
                    let mut log = self.log();
                    if d.seq > log.next {
                        Frame::Error(ErrorFrame {
                            code: ErrorCode::Protocol,
                            message: format!("gap: expected {}, got {}", log.next, d.seq),
                        })
                    } else {
                        if d.seq == log.next {
                            log.payload.extend_from_slice(&d.payload);
                            log.next += 1;
                        }
                        let kill = *self.kill_at.lock().unwrap();
                        if kill.is_some_and(|k| log.next > k) {
                            *self.kill_at.lock().unwrap() = None;
                            self.up.store(false, Ordering::SeqCst);
                            return;
                        }
                        Frame::Ack {
                            through: log.next - 1,
                        }
                    }
                }
                Frame::End { final_seq } => {
                    self.log().ended = Some(final_seq);
                    let _ = write_frame(&mut wr, &Frame::Ack { through: final_seq }).await;
                    return;
                }
                Frame::Ping(n) => Frame::Pong(n),
                _ => return,
            };
            let stop = matches!(reply, Frame::Error(_));
            if write_frame(&mut wr, &reply).await.is_err() || stop {
                return;
            }
        }
    }
}

struct DuplexConnect {
    servers: HashMap<String, Arc<Fake>>,
}

impl Connect for DuplexConnect {
    type Io = DuplexStream;
    fn connect<'a>(
        &'a self,
        target: &'a PathTarget,
    ) -> Pin<Box<dyn Future<Output = io::Result<DuplexStream>> + Send + 'a>> {
        Box::pin(async move {
            let srv = self
                .servers
                .get(&target.server_id)
                .filter(|s| s.up.load(Ordering::SeqCst))
                .cloned()
                .ok_or_else(|| io::Error::from(io::ErrorKind::ConnectionRefused))?;
            let (a, b) = tokio::io::duplex(64 * 1024);
            tokio::spawn(srv.serve(b));
            Ok(a)
        })
    }
}

fn target(role: Role, id: &str) -> PathTarget {
    PathTarget {
        role,
        server_id: id.into(),
        url: format!("tcp://{id}:1"),
        token: "tok".into(),
    }
}

fn input(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A source that trickles `data` in 1 KiB pieces, one per millisecond.
fn trickle(data: Vec<u8>) -> DuplexStream {
    let (mut w, r) = tokio::io::duplex(4096);
    tokio::spawn(async move {
        for piece in data.chunks(1024) {
            if w.write_all(piece).await.is_err() {
                return;
            }
            sleep(Duration::from_millis(1)).await;
        }
    });
    r
}

fn pusher(servers: &[&Arc<Fake>], config: PushConfig) -> Pusher<DuplexConnect> {
    let paths = servers
        .iter()
        .zip(Role::ALL)
        .map(|(s, r)| (r, target(r, &s.id)))
        .collect();
    let connect = DuplexConnect {
        servers: servers
            .iter()
            .map(|s| (s.id.clone(), Arc::clone(s)))
            .collect(),
    };
    Pusher::with_connector(StreamId::parse("cam1").unwrap(), paths, config, connect)
}

fn config() -> PushConfig {
    PushConfig {
        chunk_max: 4096,
        ..PushConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn both_servers_get_every_byte_once_in_order() {
    let (a, b) = (Fake::new("a"), Fake::new("b"));
    let data = input(300_000);
    let p = pusher(&[&a, &b], config());
    let progress = p.progress();
    let s = p.run(trickle(data.clone())).await.unwrap();
    assert!(s.complete_everywhere, "{s:?}");
    for srv in [&a, &b] {
        let log = srv.log();
        assert_eq!(log.payload, data, "server {}", srv.id);
        assert_eq!(log.ended, Some(log.next - 1));
        assert_eq!(log.base, Some(0));
    }
    let snap = progress.snapshot();
    assert_eq!(snap.input_bytes, 300_000);
    assert!(snap.paths.iter().all(|p| p.state == PathState::Finished));
    assert_eq!(snap.ring_bytes, 0);
}

#[tokio::test(start_paused = true)]
async fn a_path_that_dies_and_comes_back_resumes_without_loss_or_duplicates() {
    let (a, b) = (Fake::new("a"), Fake::new("b"));
    *b.kill_at.lock().unwrap() = Some(20);
    let data = input(400_000);
    let b2 = b.clone();
    tokio::spawn(async move {
        while b2.up.load(Ordering::SeqCst) {
            sleep(Duration::from_millis(5)).await;
        }
        sleep(Duration::from_millis(300)).await;
        b2.up.store(true, Ordering::SeqCst);
    });
    let s = pusher(&[&a, &b], config())
        .run(trickle(data.clone()))
        .await
        .unwrap();
    assert!(s.complete_everywhere, "{s:?}");
    assert_eq!(a.log().payload, data);
    assert_eq!(b.log().payload, data);
    assert!(b.welcomes.load(Ordering::SeqCst) >= 2);
    assert!(s.progress.paths[1].reconnects >= 1, "{s:?}");
    assert_eq!(s.progress.paths[0].reconnects, 0);
}

#[tokio::test(start_paused = true)]
async fn a_path_that_stays_dead_does_not_stop_the_push() {
    let (a, b) = (Fake::new("a"), Fake::new("b"));
    *a.kill_at.lock().unwrap() = Some(10);
    let data = input(200_000);
    let cfg = PushConfig {
        end_timeout: Duration::from_secs(3),
        ..config()
    };
    let s = pusher(&[&a, &b], cfg)
        .run(trickle(data.clone()))
        .await
        .unwrap();
    assert!(!s.complete_everywhere);
    assert_eq!(s.complete_paths, 1);
    assert_eq!(b.log().payload, data);
    let a_got = a.log().payload.clone();
    assert_eq!(a_got, data[..a_got.len()]);
    assert_eq!(s.progress.paths[0].state, PathState::Reconnecting);
}

#[tokio::test(start_paused = true)]
async fn no_server_at_all_fails_within_the_start_timeout() {
    let a = Fake::new("a");
    a.up.store(false, Ordering::SeqCst);
    let cfg = PushConfig {
        start_timeout: Duration::from_secs(2),
        ..config()
    };
    let e = pusher(&[&a], cfg)
        .run(trickle(input(10)))
        .await
        .unwrap_err();
    assert!(matches!(e, PushError::NoServer { .. }), "{e}");
    assert!(e.to_string().contains("refused"), "{e}");
}

struct FixedReassign {
    a: Assignment,
    asked: Arc<AtomicU32>,
}

impl Reassign for FixedReassign {
    fn reassign<'a>(
        &'a self,
        stream: &'a StreamId,
        slot: Role,
    ) -> Pin<Box<dyn Future<Output = Result<Assignment, ClientError>> + Send + 'a>> {
        assert_eq!(stream.as_str(), "cam1");
        assert_eq!(slot, Role::Backup, "the dead path is the backup");
        self.asked.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::ready(Ok(self.a.clone())))
    }
}

fn pick(id: &str, role: Role) -> Pick {
    serde_json::from_value(serde_json::json!({
        "role": role, "server_id": id, "pop": id, "city": "", "location": {"lat": 0.0, "lon": 0.0},
        "protocol": "native", "url": format!("tcp://{id}:1"), "urls": {},
        "token": format!("tok-{id}"),
        "estimate": {"distance_km": 0.0, "rtt_ms": 1.0, "loss": 0.0, "throughput_mbps": 1.0,
                     "utilization": 0.0, "score": 1.0, "evidence": 0.0,
                     "rtt_source": {"kind": "estimated", "samples": 0}},
        "scored_from": {"kind": "typed", "location": {"lat": 0.0, "lon": 0.0}},
        "runners_up": []
    }))
    .unwrap()
}

fn assignment(stream: &str, primary: Pick, backup: Option<Pick>) -> Assignment {
    Assignment {
        stream: StreamId::parse(stream).unwrap(),
        broadcast: "b1".parse().unwrap(),
        new_broadcast: false,
        stream_key: None,
        protocol: Protocol::Native,
        bitrate_kbps: 1000,
        client_ip: None,
        locations: Default::default(),
        primary,
        backup,
        backup_reason: None,
        issued_at: 0,
        expires_at: 0,
    }
}

#[tokio::test(start_paused = true)]
async fn a_path_down_too_long_is_replaced_by_the_directors_new_pick() {
    let (a, b, c) = (Fake::new("a"), Fake::new("b"), Fake::new("c"));
    *b.kill_at.lock().unwrap() = Some(15);
    let data = input(600_000);
    let asked = Arc::new(AtomicU32::new(0));
    let reassign = FixedReassign {
        // The director now says: primary a (the survivor), backup c.
        a: assignment(
            "cam1",
            pick("a", Role::Primary),
            Some(pick("c", Role::Backup)),
        ),
        asked: asked.clone(),
    };
    let cfg = PushConfig {
        policy: FailoverPolicy {
            replace_after: Duration::from_millis(200),
            ..FailoverPolicy::default()
        },
        ..config()
    };
    let paths = vec![
        (Role::Primary, target(Role::Primary, "a")),
        (Role::Backup, target(Role::Backup, "b")),
    ];
    let connect = DuplexConnect {
        servers: [&a, &b, &c]
            .iter()
            .map(|s| (s.id.clone(), Arc::clone(s)))
            .collect(),
    };
    let p = Pusher::with_connector(StreamId::parse("cam1").unwrap(), paths, cfg, connect)
        .with_reassign(reassign);
    let s = p.run(trickle(data.clone())).await.unwrap();
    assert!(s.complete_everywhere, "{s:?}");
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(a.log().payload, data);
    let c_log = c.log();
    let start = c_log.base.unwrap();
    assert!(
        start > 0,
        "the replacement started mid-stream, from the ring's oldest chunk"
    );
    assert_eq!(s.progress.paths[1].server_id, "c");
    assert_eq!(s.progress.paths[1].replacements, 1);
    // c holds everything from its start to the end, contiguous; b holds the start.
    let b_log = b.log();
    assert!(
        b_log.next >= start,
        "no hole between what b has and where c starts"
    );
    assert_eq!(c_log.ended, a.log().ended);
    let whole: Vec<u8> = data.clone();
    assert!(whole.ends_with(&c_log.payload));
    assert!(whole.starts_with(&b_log.payload));
}

#[test]
fn replacement_choice_avoids_the_surviving_server() {
    let a = assignment("s", pick("x", Role::Primary), Some(pick("y", Role::Backup)));
    let t = choose_replacement(&a, Role::Backup, &["z".into()], Protocol::Native).unwrap();
    assert_eq!((t.server_id.as_str(), t.role), ("y", Role::Backup));
    // The director moved the surviving server into the dead role's slot: take the other pick,
    // with the role its token is signed for.
    let t = choose_replacement(&a, Role::Backup, &["y".into()], Protocol::Native).unwrap();
    assert_eq!((t.server_id.as_str(), t.role), ("x", Role::Primary));
    assert!(
        choose_replacement(
            &a,
            Role::Primary,
            &["x".into(), "y".into()],
            Protocol::Native
        )
        .is_none()
    );
}

#[test]
fn tcp_urls() {
    assert_eq!(tcp_addr("tcp://127.0.0.1:7001").unwrap(), "127.0.0.1:7001");
    assert!(tcp_addr("ws://x/v1/ingest").is_err());
    assert!(tcp_addr("tcp://").is_err());
}
