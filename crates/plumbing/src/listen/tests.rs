//! The admission rule as a pure table, the gate over real sockets, and the HTTP serve loop's
//! timeouts on a paused clock (tokio advances it only when every task waits, so a deadline fires
//! exactly when nothing else can happen first).

use super::http::{HttpOptions, bearer_authenticator, serve};
use super::*;
use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::Instant;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn limits(max_connections: usize, max_per_ip: usize) -> Limits {
    Limits {
        max_connections,
        max_per_ip,
        per_ip_exempt: Vec::new(),
        opening_timeout: None,
        pre_auth_bytes: None,
    }
}

// ------------------------------------------------------------------------------------------
// The pure rule

#[test]
fn the_table_refuses_per_address_then_evicts_the_oldest_opening_then_refuses_when_full() {
    let mut t = Table::default();
    let (a, b) = (Some(ip("192.0.2.1")), Some(ip("192.0.2.2")));
    assert_eq!(t.decide(a, 3, 2), Decision::Admit);
    let id1 = t.add(a);
    t.opening.insert(id1, Weak::new());
    let id2 = t.add(a);
    t.opening.insert(id2, Weak::new());
    // A third from the same address: refused however much room there is.
    assert_eq!(t.decide(a, 3, 2), Decision::Refuse(Refusal::PerIp));
    // An exempt peer is never refused per address.
    assert_eq!(t.decide(None, 3, 2), Decision::Admit);
    let id3 = t.add(b);
    t.opening.insert(id3, Weak::new());
    // Full: the oldest opening connection makes room.
    assert_eq!(t.decide(None, 3, 2), Decision::Evict(id1));
    // Once it has opened, the next oldest.
    t.opening.remove(&id1);
    assert_eq!(t.decide(None, 3, 2), Decision::Evict(id2));
    t.opening.clear();
    assert_eq!(t.decide(None, 3, 2), Decision::Refuse(Refusal::Full));
    // Releases give places back; the per-address map forgets empty addresses.
    t.release(id1, a);
    t.release(id2, a);
    assert_eq!((t.open, t.per_ip.get(&ip("192.0.2.1"))), (1, None));
    assert_eq!(t.decide(a, 3, 2), Decision::Admit);
}

#[test]
fn ipv6_peers_are_counted_by_slash_64_and_mapped_ipv4_as_ipv4() {
    assert_eq!(
        ip_key(ip("2001:db8:1:2::1")),
        ip_key(ip("2001:db8:1:2:ffff::9"))
    );
    assert_ne!(ip_key(ip("2001:db8:1:2::1")), ip_key(ip("2001:db8:1:3::1")));
    assert_eq!(ip_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
}

#[test]
fn prometheus_text_has_one_type_line_per_family_and_every_label() {
    let s = StatsSnapshot {
        open: 3,
        refused_per_ip: 2,
        timed_out_idle: 1,
        ..Default::default()
    };
    let t = prometheus_text("x", &[("http", s), ("rtmp", StatsSnapshot::default())]);
    assert_eq!(t.matches("# TYPE x_connections gauge").count(), 1);
    assert!(t.contains("x_connections{listener=\"http\"} 3\n"), "{t}");
    assert!(
        t.contains("x_connections_refused_total{listener=\"http\",reason=\"per_ip\"} 2\n"),
        "{t}"
    );
    assert!(
        t.contains("x_connections_timed_out_total{listener=\"http\",phase=\"idle\"} 1\n"),
        "{t}"
    );
    assert!(
        t.contains("x_connections_evicted_total{listener=\"rtmp\"} 0\n"),
        "{t}"
    );
}

// ------------------------------------------------------------------------------------------
// The gate over sockets

async fn gate(l: Limits) -> (Gate, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (Gate::new(listener, l, Arc::default()), addr)
}

/// A client connection from `from` (any 127.0.0.0/8 address plays a host).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

async fn admitted(g: &Gate) -> Limited<TcpStream> {
    match g.accept().await {
        Admission::Admitted(io) => io,
        Admission::Refused(r) => panic!("refused: {:?}", r.reason()),
    }
}

async fn refused(g: &Gate) -> Refusal {
    match g.accept().await {
        Admission::Admitted(io) => panic!("admitted {}", io.conn().peer()),
        Admission::Refused(r) => r.reason(),
    }
}

#[tokio::test]
async fn the_per_address_cap_counts_connections_until_they_authenticate() {
    let (g, addr) = gate(limits(100, 2)).await;
    let _c1 = connect_from("127.0.0.2", addr).await;
    let s1 = admitted(&g).await;
    let _c2 = connect_from("127.0.0.2", addr).await;
    let _s2 = admitted(&g).await;
    let _c3 = connect_from("127.0.0.2", addr).await;
    assert_eq!(refused(&g).await, Refusal::PerIp);
    // Another address is not affected.
    let _c4 = connect_from("127.0.0.3", addr).await;
    let _s4 = admitted(&g).await;
    // An authenticated connection stops counting: its address may open another.
    s1.conn().authenticate();
    let _c5 = connect_from("127.0.0.2", addr).await;
    let s5 = admitted(&g).await;
    let _c6 = connect_from("127.0.0.2", addr).await;
    assert_eq!(refused(&g).await, Refusal::PerIp);
    // A closed connection gives its place back.
    drop(s5);
    let _c7 = connect_from("127.0.0.2", addr).await;
    let _s7 = admitted(&g).await;
    let st = g.stats().snapshot();
    assert_eq!((st.open, st.refused_per_ip, st.refused_full), (4, 2, 0));
}

#[tokio::test]
async fn load_balancers_are_not_counted_per_address() {
    let mut l = limits(100, 1);
    l.per_ip_exempt = vec!["127.0.0.8/31".parse().unwrap()];
    let (g, addr) = gate(l).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from("127.0.0.9", addr).await);
        held.push(connect_from("127.0.0.9", addr).await);
        let _ = admitted(&g).await;
        let _ = admitted(&g).await;
    }
    assert_eq!(g.stats().snapshot().refused_per_ip, 0);
}

#[tokio::test]
async fn a_full_listener_evicts_the_oldest_opening_connection_and_never_an_opened_one() {
    let (g, addr) = gate(limits(2, 10)).await;
    let mut ca = connect_from("127.0.0.2", addr).await;
    let mut a = admitted(&g).await;
    let a_conn = a.conn().clone();
    // `a` waits in a read, as a protocol waiting for its first request does.
    let reader = tokio::spawn(async move {
        let r = a.read(&mut [0u8; 16]).await;
        drop(a);
        r
    });
    let _cb = connect_from("127.0.0.3", addr).await;
    let b = admitted(&g).await;
    b.conn().opened();
    // Full: the newcomer takes the place of `a`, which was still opening; its read wakes up
    // failing and the connection closes.
    let _cc = connect_from("127.0.0.4", addr).await;
    let c = admitted(&g).await;
    assert!(a_conn.is_evicted());
    let e = reader.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
    assert_eq!(ca.read(&mut [0u8; 16]).await.unwrap_or(0), 0);
    assert!(!b.conn().is_evicted());
    // Every connection has opened: the next newcomer is refused.
    c.conn().opened();
    let _cd = connect_from("127.0.0.5", addr).await;
    assert_eq!(refused(&g).await, Refusal::Full);
    let st = g.stats().snapshot();
    assert_eq!((st.open, st.evicted, st.refused_full), (2, 1, 1));
}

#[tokio::test]
async fn reads_before_authenticating_are_bounded() {
    let mut l = limits(10, 10);
    l.pre_auth_bytes = Some(100);
    let (g, addr) = gate(l).await;
    let mut c = connect_from("127.0.0.2", addr).await;
    let mut s = admitted(&g).await;
    c.write_all(&[7u8; 64]).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    let err = loop {
        match s.read(&mut buf).await {
            Ok(0) => panic!("closed"),
            Ok(n) => {
                got += n;
                if got == 64 {
                    c.write_all(&[7u8; 64]).await.unwrap();
                }
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("100 bytes"), "{err}");
    // It sticks.
    assert!(s.read(&mut buf).await.is_err());

    // Authenticated, the budget is gone.
    let mut c = connect_from("127.0.0.2", addr).await;
    let mut s = admitted(&g).await;
    s.conn().authenticate();
    c.write_all(&[1u8; 4096]).await.unwrap();
    drop(c);
    let mut all = Vec::new();
    s.read_to_end(&mut all).await.unwrap();
    assert_eq!(all.len(), 4096);
}

#[tokio::test(start_paused = true)]
async fn reads_fail_once_the_opening_deadline_passes_unless_opened() {
    let mut l = limits(10, 10);
    l.opening_timeout = Some(Duration::from_secs(10));
    let (g, addr) = gate(l).await;
    let t0 = Instant::now();
    let _c = connect_from("127.0.0.2", addr).await;
    let mut s = admitted(&g).await;
    let e = s.read(&mut [0u8; 8]).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "{waited:?}"
    );
    assert_eq!(g.stats().snapshot().timed_out_opening, 1);

    // Opened in time: the deadline no longer applies.
    let mut c = connect_from("127.0.0.2", addr).await;
    let mut s = admitted(&g).await;
    s.conn().opened();
    tokio::time::sleep(Duration::from_secs(60)).await;
    c.write_all(b"late").await.unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"late");
}

// ------------------------------------------------------------------------------------------
// The HTTP serve loop

const HEADER: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(60);

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/ip",
            get(|ConnectInfo(p): ConnectInfo<SocketAddr>| async move { p.ip().to_string() }),
        )
        .route(
            // One line a second for ten minutes: far longer than both timeouts.
            "/stream",
            get(|| async {
                let s = futures_util::stream::unfold(0u32, |n| async move {
                    if n == 600 {
                        return None;
                    }
                    if n > 0 {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Some((Ok::<_, io::Error>(bytes::Bytes::from("tick\n")), n + 1))
                });
                Body::from_stream(s)
            }),
        )
        .route(
            "/upload",
            post(|body: Body| async move {
                use futures_util::StreamExt;
                let mut s = body.into_data_stream();
                let mut n = 0usize;
                while let Some(Ok(b)) = s.next().await {
                    n += b.len();
                }
                n.to_string()
            }),
        )
}

struct Server {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<io::Result<()>>,
}

impl Server {
    async fn start(l: Limits, options: HttpOptions, router: Router) -> Self {
        let (g, addr) = gate(l).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(g, router, options, async {
            let _ = rx.await;
        }));
        Self {
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn http_limits(max_connections: usize, max_per_ip: usize) -> Limits {
    Limits {
        opening_timeout: Some(HEADER),
        ..limits(max_connections, max_per_ip)
    }
}

fn options() -> HttpOptions {
    HttpOptions {
        idle_timeout: IDLE,
        max_header_bytes: 16 * 1024,
        tls: None,
        authenticate: None,
    }
}

/// Read one response whose body has a content-length; the whole text.
async fn response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before a whole response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return text;
            }
        }
    }
}

/// The peer closed: a read gives 0 bytes or a reset (within 20 minutes of the test's clock, so a
/// missing timeout fails instead of hanging).
async fn closed(s: &mut TcpStream) -> bool {
    match tokio::time::timeout(Duration::from_secs(1200), s.read(&mut [0u8; 64])).await {
        Ok(r) => matches!(r, Ok(0) | Err(_)),
        Err(_) => false,
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    let srv = Server::start(http_limits(100, 100), options(), app()).await;
    let t0 = Instant::now();
    let mut c = connect_from("127.0.0.2", srv.addr).await;
    assert!(closed(&mut c).await);
    let waited = t0.elapsed();
    assert!(
        waited >= HEADER && waited < HEADER + Duration::from_secs(1),
        "{waited:?}"
    );
    srv.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_slowloris_sending_a_byte_a_second_is_closed_after_the_header_timeout() {
    let srv = Server::start(http_limits(100, 100), options(), app()).await;
    let t0 = Instant::now();
    let mut c = connect_from("127.0.0.2", srv.addr).await;
    let head =
        b"GET / HTTP/1.1\r\nhost: x\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut sent = 0;
    for b in head {
        if c.write_all(&[*b]).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(sent < head.len(), "the whole head went through");
    assert!(closed(&mut c).await);
    let waited = t0.elapsed();
    assert!(
        waited >= HEADER && waited < HEADER + Duration::from_secs(3),
        "{waited:?}"
    );
    srv.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let srv = Server::start(http_limits(100, 100), options(), app()).await;
    let mut c = connect_from("127.0.0.2", srv.addr).await;
    for _ in 0..3 {
        // Requests spaced under the idle timeout keep the connection.
        c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let r = response(&mut c).await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok"), "{r}");
        tokio::time::sleep(IDLE / 2).await;
    }
    let t0 = Instant::now();
    assert!(closed(&mut c).await);
    let waited = t0.elapsed() + IDLE / 2;
    assert!(
        waited >= IDLE && waited < IDLE + Duration::from_secs(1),
        "{waited:?}"
    );
    srv.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_response_streamed_for_ten_minutes_is_not_cut() {
    let srv = Server::start(http_limits(100, 100), options(), app()).await;
    let t0 = Instant::now();
    let mut c = connect_from("127.0.0.2", srv.addr).await;
    c.write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    c.read_to_end(&mut all).await.unwrap();
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("tick\n").count(), 600, "{text}");
    assert!(
        text.ends_with("0\r\n\r\n"),
        "the chunked body ended cleanly"
    );
    assert!(t0.elapsed() >= Duration::from_secs(599));
    srv.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_request_body_streamed_for_ten_minutes_is_not_cut() {
    let srv = Server::start(http_limits(100, 100), options(), app()).await;
    let mut c = connect_from("127.0.0.2", srv.addr).await;
    c.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..600 {
        c.write_all(b"5\r\nhello\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    c.write_all(b"0\r\n\r\n").await.unwrap();
    let r = response(&mut c).await;
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("3000"), "{r}");
    srv.stop().await;
}

#[tokio::test]
async fn over_a_cap_plain_http_gets_503_with_retry_after_and_the_peer_address_is_connect_info() {
    let srv = Server::start(http_limits(100, 1), options(), app()).await;
    let mut first = connect_from("127.0.0.2", srv.addr).await;
    first
        .write_all(b"GET /ip HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let r = response(&mut first).await;
    assert!(r.ends_with("\r\n\r\n127.0.0.2"), "{r}");
    // The first connection (opened, not authenticated) still counts: a second is refused, with
    // an answer it can read even though it sent its request.
    let mut second = connect_from("127.0.0.2", srv.addr).await;
    second
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let r = response(&mut second).await;
    assert!(r.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{r}");
    assert!(r.contains("\r\nretry-after: 5\r\n"), "{r}");
    let body: &str = r.split("\r\n\r\n").nth(1).unwrap();
    assert!(body.contains("\"code\":\"overloaded\""), "{body}");
    assert!(closed(&mut second).await);
    // Another address is served.
    let mut other = connect_from("127.0.0.3", srv.addr).await;
    other
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(response(&mut other).await.starts_with("HTTP/1.1 200"));
    srv.stop().await;
}

#[tokio::test]
async fn a_request_head_over_the_limit_gets_431() {
    let srv = Server::start(http_limits(100, 100), options(), app()).await;
    let mut c = connect_from("127.0.0.2", srv.addr).await;
    let big = "a".repeat(20 * 1024);
    let _ = c
        .write_all(format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await;
    let r = response(&mut c).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    srv.stop().await;
}

#[tokio::test]
async fn a_credential_lifts_the_per_address_cap_for_its_connection() {
    let mut o = options();
    o.authenticate = Some(bearer_authenticator(vec!["s3cret".into()]));
    let srv = Server::start(http_limits(100, 1), o, app()).await;
    // A fleet behind one address: each connection authenticates on its first request.
    let mut fleet = Vec::new();
    for _ in 0..5 {
        let mut c = connect_from("127.0.0.2", srv.addr).await;
        c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer s3cret\r\n\r\n")
            .await
            .unwrap();
        assert!(response(&mut c).await.starts_with("HTTP/1.1 200"));
        fleet.push(c);
    }
    // A wrong credential does not: the first such connection takes the address's one place.
    let mut c = connect_from("127.0.0.2", srv.addr).await;
    c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer guess\r\n\r\n")
        .await
        .unwrap();
    assert!(response(&mut c).await.starts_with("HTTP/1.1 200"));
    let mut d = connect_from("127.0.0.2", srv.addr).await;
    d.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(response(&mut d).await.starts_with("HTTP/1.1 503"));
    // The fleet's kept-alive connections still work.
    for c in &mut fleet {
        c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(response(c).await.starts_with("HTTP/1.1 200"));
    }
    srv.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let release = Arc::new(Mutex::new(Some(release_rx)));
    let entered = Arc::new(Notify::new());
    let in_handler = entered.clone();
    let router = Router::new().route(
        "/slow",
        get(move || {
            let rx = release.lock().unwrap().take();
            in_handler.notify_one();
            async move {
                if let Some(rx) = rx {
                    let _ = rx.await;
                }
                "done"
            }
        }),
    );
    let srv = Server::start(http_limits(100, 100), options(), router).await;
    let mut idle = connect_from("127.0.0.2", srv.addr).await;
    let mut c = connect_from("127.0.0.2", srv.addr).await;
    c.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    entered.notified().await;
    let addr = srv.addr;
    let stopping = tokio::spawn(srv.stop());
    // The idle connection is closed, the one in flight is answered, then serve returns.
    assert!(closed(&mut idle).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !stopping.is_finished(),
        "serve returned with a request in flight"
    );
    release_tx.send(()).unwrap();
    let r = response(&mut c).await;
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("done"), "{r}");
    stopping.await.unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

// ------------------------------------------------------------------------------------------
// HTTPS

fn tls_pair(
    dir: &std::path::Path,
) -> (Arc<tokio_rustls::rustls::ServerConfig>, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (
        crate::tls::server_config(&cert, &key, &[b"http/1.1"]).unwrap(),
        cert,
    )
}

#[tokio::test]
async fn https_serves_requests_closes_silent_handshakes_and_refuses_without_a_word() {
    let dir = tempfile::tempdir().unwrap();
    let (server_tls, ca) = tls_pair(dir.path());
    let mut o = options();
    o.tls = Some(server_tls);
    let l = Limits {
        // Short: the test waits it out on the real clock (a TLS handshake on a paused clock
        // would race its own deadline).
        opening_timeout: Some(Duration::from_millis(300)),
        ..limits(100, 2)
    };
    let srv = Server::start(l, o, app()).await;
    let connector = tokio_rustls::TlsConnector::from(crate::tls::client_config(Some(&ca)).unwrap());
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tcp = connect_from("127.0.0.2", srv.addr).await;
    let mut tls = connector.connect(name.clone(), tcp).await.unwrap();
    tls.write_all(b"GET /ip HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("127.0.0.2"),
        "{out}"
    );

    // Silent: closed after the header timeout (generous bound).
    let t0 = std::time::Instant::now();
    let mut silent = connect_from("127.0.0.3", srv.addr).await;
    let mut silent2 = connect_from("127.0.0.3", srv.addr).await;
    // A third from the address is over its cap: closed without a byte (no handshake).
    let mut third = connect_from("127.0.0.3", srv.addr).await;
    let mut buf = [0u8; 64];
    assert!(matches!(third.read(&mut buf).await, Ok(0) | Err(_)));
    assert!(closed(&mut silent).await);
    assert!(closed(&mut silent2).await);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
    srv.stop().await;
}
