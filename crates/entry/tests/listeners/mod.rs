//! The entry server's listeners under slow, idle and too many clients (`plumbing::listen`):
//! streams that last longer than every timeout are not cut, idle and silent connections are
//! closed, over-cap connections get the documented refusal per protocol, welcomed sessions do
//! not count against their address. 127.0.0.0/8 addresses play different hosts.

use super::*;
use futures_util::StreamExt;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

fn path_from(sock: TcpStream) -> Path {
    Path {
        sock,
        buf: BytesMut::new(),
        dec: Decoder::default(),
    }
}

/// The peer closed within `limit` (a read gives 0 bytes or a reset), without sending anything.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, s.read(&mut [0u8; 64])).await,
        Ok(Ok(0) | Err(_))
    )
}

/// One HTTP response with a content-length body: the whole text.
async fn http_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
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
                return text;
            }
        }
    }
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
}

/// RTMP's C0 and C1: what every publisher sends first.
fn rtmp_c0_c1() -> Vec<u8> {
    let mut b = vec![3u8];
    b.extend(std::iter::repeat_n(0u8, 1536));
    b
}

/// Timeouts far shorter than the streams: a native push paced over about two seconds, an HTTP
/// push whose chunked body trickles for as long, and a chunked-HTTP and a WebSocket viewer
/// reading the native stream from its start all complete with every byte, while a silent HTTP
/// connection, a kept-alive idle one and a silent RTMP connection are closed by their timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_outlast_the_timeouts_while_idle_and_silent_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EntryConfig {
        http_header_timeout_ms: 300,
        http_idle_timeout_ms: 600,
        rtmp_connect_timeout_ms: 300,
        ..entry_config("lim-1", "lim", "Paris", dir.path(), None)
    };
    let s = Server::start(cfg, "127.0.0.31");
    let key = token::SigningKey::from_bytes(&[7u8; 32]);
    let chunks = source(24);

    // The native push starts; once its first chunk is stored, viewers join from the start.
    let tok = token_for(&key, "long", "lim-1", Role::Primary, far_future());
    let mut p = Path::connect(&s.native.to_string()).await.unwrap();
    assert!(matches!(
        p.hello("long", Role::Primary, &tok, None).await.unwrap(),
        Frame::Welcome(_)
    ));
    p.data(0, chunks[0].clone()).await.unwrap();
    p.until_ack(0).await.unwrap();
    let http = s.http;
    let chunked = tokio::spawn(async move { read_live(http, "long", "start").await });
    let ws = tokio::spawn(async move {
        let (mut v, _) = tokio_tungstenite::connect_async(format!(
            "ws://{http}/v1/streams/long/live/ws?from=start"
        ))
        .await
        .unwrap();
        let mut got = Vec::new();
        while let Some(Ok(m)) = v.next().await {
            match m {
                Message::Binary(b) => got.extend_from_slice(&b),
                Message::Close(_) => break,
                _ => {}
            }
        }
        got
    });
    // An HTTP push whose body trickles in over the same two seconds.
    let push_tok = token_for(&key, "pushed", "lim-1", Role::Primary, far_future());
    let pushed: Vec<u8> = (0..20u32).flat_map(|i| [i as u8; 1000]).collect();
    let uploader = tokio::spawn({
        let pushed = pushed.clone();
        async move {
            let mut c = TcpStream::connect(http).await.unwrap();
            c.write_all(
                format!(
                    "POST /v1/streams/pushed/push?token={push_tok} HTTP/1.1\r\nhost: x\r\n\
                     transfer-encoding: chunked\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            for piece in pushed.chunks(1000) {
                c.write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .await
                    .unwrap();
                c.write_all(piece).await.unwrap();
                c.write_all(b"\r\n").await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            c.write_all(b"0\r\n\r\n").await.unwrap();
            http_response(&mut c).await
        }
    });

    // Meanwhile: a silent HTTP connection, a kept-alive one after one request, a silent RTMP one.
    let t0 = std::time::Instant::now();
    let mut silent = TcpStream::connect(s.http).await.unwrap();
    let mut kept = TcpStream::connect(s.http).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(http_response(&mut kept).await.starts_with("HTTP/1.1 200"));
    let answered = std::time::Instant::now();
    let mut rtmp_silent = TcpStream::connect(s.rtmp).await.unwrap();

    for seq in 1..24u64 {
        tokio::time::sleep(Duration::from_millis(90)).await;
        p.data(seq, chunks[seq as usize].clone()).await.unwrap();
    }
    p.send(&Frame::End { final_seq: 23 }).await.unwrap();
    p.until_ack(23).await.unwrap();
    assert!(
        t0.elapsed() > Duration::from_millis(1500),
        "the push outlasted the timeouts"
    );

    let got = tokio::time::timeout(Duration::from_secs(30), chunked)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(got == concat(&chunks), "the chunked viewer's bytes differ");
    let got = tokio::time::timeout(Duration::from_secs(30), ws)
        .await
        .unwrap()
        .unwrap();
    assert!(
        got == concat(&chunks),
        "the WebSocket viewer's bytes differ"
    );
    let r = tokio::time::timeout(Duration::from_secs(30), uploader)
        .await
        .unwrap()
        .unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("\"bytes\":20000"), "{r}");
    assert!(read_live(s.http, "pushed", "start").await.unwrap() == pushed);

    assert!(closed_within(&mut silent, Duration::from_secs(20)).await);
    assert!(t0.elapsed() >= Duration::from_millis(300));
    assert!(closed_within(&mut kept, Duration::from_secs(20)).await);
    assert!(answered.elapsed() >= Duration::from_millis(600));
    assert!(closed_within(&mut rtmp_silent, Duration::from_secs(20)).await);

    let m = get(format!("http://{}/metrics", s.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "firstmile_entry_connections_timed_out_total{listener=\"http\",phase=\"opening\"} ",
        "firstmile_entry_connections_timed_out_total{listener=\"http\",phase=\"idle\"} ",
        "firstmile_entry_connections_timed_out_total{listener=\"rtmp\",phase=\"opening\"} ",
    ] {
        assert!(metric(&m, line) >= 1, "{line}\n{m}");
    }
}

/// Per-address caps: a native connection over its address's cap gets ERROR `overloaded` (then
/// the connection closes), an RTMP one is closed before its handshake, an HTTP one gets 503;
/// welcomed native sessions no longer count, so the address can open more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_caps_each_protocol_refuses_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = EntryConfig {
        native_max_connections_per_ip: 2,
        rtmp_max_connections_per_ip: 1,
        http_max_connections_per_ip: 2,
        ..entry_config("cap-1", "cap", "Paris", dir.path(), None)
    };
    let s = Server::start(cfg, "127.0.0.32");
    let key = token::SigningKey::from_bytes(&[7u8; 32]);

    // Three welcomed sessions from one address, one after the other: more than the cap, but
    // each stops counting once welcomed.
    let mut sessions = Vec::new();
    for stream in ["cap-a", "cap-b", "cap-c"] {
        let mut p = path_from(connect_from("127.0.6.1", s.native).await);
        let tok = token_for(&key, stream, "cap-1", Role::Primary, far_future());
        let f = p.hello(stream, Role::Primary, &tok, None).await.unwrap();
        assert!(matches!(f, Frame::Welcome(_)), "{stream}: {f:?}");
        sessions.push(p);
    }
    // Two silent connections fill the address's cap; a third is told to go elsewhere.
    let _silent1 = connect_from("127.0.6.1", s.native).await;
    let _silent2 = connect_from("127.0.6.1", s.native).await;
    let mut third = path_from(connect_from("127.0.6.1", s.native).await);
    let (code, message) = expect_error(&mut third).await;
    assert_eq!(code, ErrorCode::Overloaded, "{message}");
    assert!(message.contains("director"), "{message}");
    assert!(matches!(third.recv().await, Ok(None) | Err(_)));
    // The welcomed sessions carry on.
    for (i, p) in sessions.iter_mut().enumerate() {
        p.data(0, Bytes::from_static(b"still here")).await.unwrap();
        p.until_ack(0)
            .await
            .unwrap_or_else(|e| panic!("session {i}: {e}"));
    }

    // RTMP: one unpublished connection per address; the next is closed without a byte.
    let mut first = connect_from("127.0.6.2", s.rtmp).await;
    first.write_all(&rtmp_c0_c1()).await.unwrap();
    let mut s0s1 = [0u8; 1537];
    first.read_exact(&mut s0s1).await.unwrap();
    assert_eq!(s0s1[0], 3, "the admitted connection gets its handshake");
    let mut second = connect_from("127.0.6.2", s.rtmp).await;
    let _ = second.write_all(&rtmp_c0_c1()).await;
    assert!(closed_within(&mut second, Duration::from_secs(10)).await);

    // HTTP: 503 with Retry-After.
    let _h1 = connect_from("127.0.6.3", s.http).await;
    let _h2 = connect_from("127.0.6.3", s.http).await;
    let mut h3 = connect_from("127.0.6.3", s.http).await;
    h3.write_all(b"GET /v1/streams HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let r = http_response(&mut h3).await;
    assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
    assert!(r.contains("\r\nretry-after: 5\r\n"), "{r}");
    assert!(r.contains("\"code\":\"overloaded\""), "{r}");

    let m = get(format!("http://{}/metrics", s.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for l in ["native", "rtmp", "http"] {
        let line = format!(
            "firstmile_entry_connections_refused_total{{listener=\"{l}\",reason=\"per_ip\"}} "
        );
        assert_eq!(metric(&m, &line), 1, "{line}\n{m}");
    }
}

#[test]
fn bad_listener_settings_name_the_key_and_the_range() {
    let text = include_str!("../../../../examples/entry.toml");
    for (o, key) in [
        ("http_max_connections=0", "http_max_connections"),
        (
            "native_max_connections_per_ip=2000",
            "native_max_connections_per_ip",
        ),
        (
            "rtmp_max_connections_per_ip=0",
            "rtmp_max_connections_per_ip",
        ),
        ("http_header_timeout_ms=50", "http_header_timeout_ms"),
        ("http_idle_timeout_ms=5000", "http_idle_timeout_ms"),
        ("http_max_header_bytes=100", "http_max_header_bytes"),
        ("rtmp_connect_timeout_ms=0", "rtmp_connect_timeout_ms"),
    ] {
        let e = EntryConfig::load(Some(text), Vec::new(), &[o.into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{o}: {e}");
    }
    let c = EntryConfig::load(Some(text), Vec::new(), &[]).unwrap();
    assert_eq!(
        (c.http_max_connections_per_ip, c.rtmp_connect_timeout_ms),
        (512, 10_000)
    );
}
