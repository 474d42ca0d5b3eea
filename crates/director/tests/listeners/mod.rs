//! The director's listener on the open internet (`plumbing::listen` through `director::run`):
//! slow and idle clients do not stop assignments or heartbeats, over-cap clients get the
//! documented 503, entry servers behind one address are not refused, idle connections close.
//! Real sockets; 127.0.0.0/8 addresses play different hosts.

use super::*;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(c: DirectorConfig) -> Self {
        let d = director_with(c);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(director::run(d, listener, async {
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

async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

fn request(method: &str, path: &str, auth: Option<&str>, body: &str) -> String {
    let auth = auth
        .map(|a| format!("authorization: Bearer {a}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} {path} HTTP/1.1\r\nhost: d\r\n{auth}content-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One response (content-length framed) from a kept-alive connection: (status, head, body).
async fn response(s: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed mid-response: {}",
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
                let status = head[9..12].parse().unwrap();
                return (status, head.to_string(), body.to_string());
            }
        }
    }
}

async fn call(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String) {
    s.write_all(request(method, path, auth, body).as_bytes())
        .await
        .unwrap();
    let (status, _, body) = response(s).await;
    (status, body)
}

/// One request on a fresh connection from `from`.
async fn once(
    addr: SocketAddr,
    from: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = connect_from(from, addr).await;
    call(&mut s, method, path, auth, body).await
}

fn registration(id: &str) -> String {
    json!({
        "id": id, "pop": id, "location": "Frankfurt",
        "capacity": {"streams": 100, "mbps": 1000},
        "urls": {"native": format!("tcp://{id}.example:7001")}
    })
    .to_string()
}

fn beat() -> String {
    json!({"load": {"streams": 0, "mbps": 0.0, "cpu": 0.1}, "state": "ready"}).to_string()
}

/// The peer closed within `limit` (a read gives 0 bytes or a reset).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, s.read(&mut [0u8; 64])).await,
        Ok(Ok(0) | Err(_))
    )
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

/// 2,000 silent connections from 20 addresses and a slowloris sending its head a byte a second,
/// under the default caps and timeouts: registrations, heartbeats and assignments are answered
/// at once meanwhile, and every slow connection is closed by the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_2000_idle_connections_do_not_stop_assignments_or_heartbeats() {
    // Both ends of 2,000 connections live in this process.
    let have = plumbing::listen::raise_nofile_limit(6000).unwrap();
    assert!(
        have >= 6000,
        "this test needs 6000 descriptors; the hard limit allows {have}"
    );
    let c = config();
    let header = Duration::from_millis(c.http.header_timeout_ms);
    let srv = Running::start(c).await;
    let mut idle = Vec::new();
    for i in 0..2000 {
        idle.push(connect_from(&format!("127.0.1.{}", 1 + i % 20), srv.addr).await);
    }
    let slowloris = tokio::spawn({
        let addr = srv.addr;
        async move {
            let mut s = connect_from("127.0.2.1", addr).await;
            let head = request("POST", "/v1/assignments", None, r#"{"location":"Berlin"}"#);
            let t0 = std::time::Instant::now();
            for b in head.as_bytes() {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let closed = closed_within(&mut s, Duration::from_secs(60)).await;
            (closed, t0.elapsed())
        }
    });

    let (st, body) = once(
        srv.addr,
        "127.0.0.1",
        "POST",
        "/v1/entry-servers",
        Some(&cred("fra-1")),
        &registration("fra-1"),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let mut fleet = connect_from("127.0.0.1", srv.addr).await;
    for _ in 0..3 {
        let (st, body) = call(
            &mut fleet,
            "PUT",
            "/v1/entry-servers/fra-1/heartbeat",
            Some(&cred("fra-1")),
            &beat(),
        )
        .await;
        assert_eq!(st, 200, "{body}");
    }
    for i in 0..5 {
        let (st, body) = once(
            srv.addr,
            "127.0.0.1",
            "POST",
            "/v1/assignments",
            None,
            &format!(r#"{{"stream":"s{i}","location":"Berlin"}}"#),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        assert!(body.contains("\"fra-1\""), "{body}");
    }
    // They were all held at once.
    let (_, m) = once(srv.addr, "127.0.0.1", "GET", "/metrics", None, "").await;
    assert!(metric(&m, "firstmile_director_connections ") >= 2001, "{m}");

    // The slowloris is cut off by the header timeout, long before its head is complete.
    let (closed, took) = slowloris.await.unwrap();
    assert!(closed, "the slowloris was never closed");
    assert!(took >= header && took < header * 4, "closed after {took:?}");
    // So are the silent ones.
    for s in idle.iter_mut().step_by(97) {
        assert!(closed_within(s, Duration::from_secs(30)).await);
    }
    let (_, m) = once(srv.addr, "127.0.0.1", "GET", "/metrics", None, "").await;
    assert!(
        metric(
            &m,
            "firstmile_director_connections_timed_out_total{phase=\"opening\"} "
        ) >= 2001,
        "{m}"
    );
    // The kept-alive heartbeat connection outlived them all.
    let (st, _) = call(
        &mut fleet,
        "PUT",
        "/v1/entry-servers/fra-1/heartbeat",
        Some(&cred("fra-1")),
        &beat(),
    )
    .await;
    assert_eq!(st, 200);
    srv.stop().await;
}

/// Small caps: an address over its cap gets 503 + Retry-After; ten entry servers behind one
/// address heartbeat anyway (authenticated connections do not count per address); an attacker
/// filling the listener from many addresses does not keep a new heartbeat connection out (it
/// evicts a silent one) nor disturbs the kept-alive ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_caps_refusals_and_the_fleet_behind_one_address() {
    let mut c = config();
    c.http.max_connections = 40;
    c.http.max_connections_per_ip = 4;
    let srv = Running::start(c).await;

    // Four silent connections from one address, then a fifth: refused, and told why.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(connect_from("127.0.3.1", srv.addr).await);
    }
    let mut fifth = connect_from("127.0.3.1", srv.addr).await;
    fifth
        .write_all(request("POST", "/v1/assignments", None, "{}").as_bytes())
        .await
        .unwrap();
    let (st, head, body) = response(&mut fifth).await;
    assert_eq!(st, 503, "{head}{body}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nretry-after: 5"),
        "{head}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], "overloaded", "{body}");

    // Ten entry servers behind one NAT address, each on its own kept-alive connection.
    let mut fleet = Vec::new();
    for i in 0..10 {
        let mut s = connect_from("127.0.3.2", srv.addr).await;
        let (st, body) = call(
            &mut s,
            "POST",
            "/v1/entry-servers",
            Some(&cred(&format!("n{i}"))),
            &registration(&format!("n{i}")),
        )
        .await;
        assert_eq!(st, 200, "server {i}: {body}");
        fleet.push(s);
    }

    // An attacker fills the rest of the listener with silent sockets from many addresses.
    let mut flood = Vec::new();
    for i in 0..40 {
        flood.push(connect_from(&format!("127.0.4.{}", 1 + i / 4), srv.addr).await);
    }
    // A heartbeat on a new connection still gets through, and so do the kept-alive ones.
    let (st, body) = once(
        srv.addr,
        "127.0.3.3",
        "PUT",
        "/v1/entry-servers/n0/heartbeat",
        Some(&cred("n0")),
        &beat(),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    for (i, s) in fleet.iter_mut().enumerate() {
        let (st, body) = call(
            s,
            "PUT",
            &format!("/v1/entry-servers/n{i}/heartbeat"),
            Some(&cred(&format!("n{i}"))),
            &beat(),
        )
        .await;
        assert_eq!(st, 200, "server {i}: {body}");
    }
    let (st, m) = once(srv.addr, "127.0.3.4", "GET", "/metrics", None, "").await;
    assert_eq!(st, 200);
    assert!(
        metric(
            &m,
            "firstmile_director_connections_refused_total{reason=\"per_ip\"} "
        ) >= 1,
        "{m}"
    );
    assert!(
        metric(&m, "firstmile_director_connections_evicted_total ") >= 12,
        "{m}"
    );
    assert!(metric(&m, "firstmile_director_connections ") <= 40, "{m}");
    srv.stop().await;
}

/// A kept-alive connection that sends no next request is closed after `http.idle_timeout_ms`;
/// a silent new one after `http.header_timeout_ms` (short here, on the real clock).
#[tokio::test]
async fn idle_and_silent_connections_are_closed_by_their_timeouts() {
    let mut c = config();
    c.http.header_timeout_ms = 300;
    c.http.idle_timeout_ms = 800;
    let srv = Running::start(c).await;
    let t0 = std::time::Instant::now();
    let mut silent = connect_from("127.0.5.1", srv.addr).await;
    let mut kept = connect_from("127.0.5.1", srv.addr).await;
    let (st, _) = call(&mut kept, "GET", "/healthz", None, "").await;
    assert_eq!(st, 200);
    let answered = std::time::Instant::now();
    assert!(closed_within(&mut silent, Duration::from_secs(20)).await);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(closed_within(&mut kept, Duration::from_secs(20)).await);
    assert!(answered.elapsed() >= Duration::from_millis(800));
    srv.stop().await;
}

#[test]
fn bad_listener_settings_name_the_key_and_the_range() {
    let load = |o: &str| {
        DirectorConfig::load(
            None,
            vec![
                (
                    "FIRSTMILE_DIRECTOR_AUTH__ENTRY_KEY".into(),
                    "entry-key-0123456789abcdef0123456789".into(),
                ),
                ("FIRSTMILE_DIRECTOR_AUTH__ADMIN_TOKEN".into(), "a".into()),
            ],
            &[o.to_string()],
        )
    };
    for (o, key) in [
        ("http.max_connections=0", "http.max_connections"),
        (
            "http.max_connections_per_ip=5000",
            "http.max_connections_per_ip",
        ),
        ("http.header_timeout_ms=50", "http.header_timeout_ms"),
        ("http.idle_timeout_ms=5000", "http.idle_timeout_ms"),
        ("http.max_header_bytes=100", "http.max_header_bytes"),
    ] {
        let e = load(o).unwrap_err().to_string();
        assert!(e.contains(key), "{o}: {e}");
    }
    let c = load("http.idle_timeout_ms=10000").unwrap();
    assert_eq!(
        (c.http.max_connections, c.http.max_connections_per_ip),
        (4096, 128)
    );
}
