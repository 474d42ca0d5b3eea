//! The native protocol over WebSocket (browsers) and the WebSocket viewer, end to end.

use super::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn frame_bytes(f: &Frame) -> Vec<u8> {
    let mut b = BytesMut::new();
    proto::encode(f, &mut b).unwrap();
    b.to_vec()
}

async fn ws_recv_frame(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Frame {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("ok");
        if let Message::Binary(b) = m {
            return Decoder::default()
                .decode_message(BytesMut::from(&b[..]))
                .unwrap();
        }
    }
}

/// A browser pushes over WebSocket (one frame per binary message); a WebSocket viewer and an
/// HTTP viewer get exactly the pushed bytes; text messages and junk end only their session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_ingest_and_viewer() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        entry_config("ws-1", "ws", "Paris", dir.path(), None),
        "127.0.0.9",
    );
    let key = token::SigningKey::from_bytes(&[7u8; 32]);
    let tok = token_for(&key, "browser", "ws-1", Role::Primary, far_future());
    let chunks = source(120);

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ingest", s.http))
        .await
        .unwrap();
    ws.send(Message::Binary(
        frame_bytes(&Frame::Hello(Hello {
            max_version: 1,
            role: Role::Primary,
            stream: StreamId::parse("browser").unwrap(),
            token: Bytes::from(tok.clone()),
            resume_from: None,
        }))
        .into(),
    ))
    .await
    .unwrap();
    assert!(matches!(ws_recv_frame(&mut ws).await, Frame::Welcome(w) if w.next_seq == 0));

    // A WebSocket viewer from the start, while the push goes on.
    let http = s.http;
    let viewer = tokio::spawn(async move {
        let (mut v, _) = tokio_tungstenite::connect_async(format!(
            "ws://{http}/v1/streams/browser/live/ws?from=start"
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
    for seq in 0..120u64 {
        let f = Frame::Data(Data {
            seq,
            pts: seq as i64,
            flags: DataFlags::NONE,
            payload: chunks[seq as usize].clone(),
        });
        ws.send(Message::Binary(frame_bytes(&f).into()))
            .await
            .unwrap();
    }
    ws.send(Message::Binary(
        frame_bytes(&Frame::End { final_seq: 119 }).into(),
    ))
    .await
    .unwrap();
    loop {
        match ws_recv_frame(&mut ws).await {
            Frame::Ack { through: 119 } => break,
            Frame::Ack { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    let got = tokio::time::timeout(Duration::from_secs(10), viewer)
        .await
        .unwrap()
        .unwrap();
    assert!(got == concat(&chunks), "WebSocket viewer bytes differ");
    assert!(read_live(s.http, "browser", "start").await.unwrap() == concat(&chunks));

    // A text message is refused with an ERROR frame; the server goes on.
    let (mut bad, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ingest", s.http))
        .await
        .unwrap();
    bad.send(Message::Text("hello".into())).await.unwrap();
    assert!(
        matches!(ws_recv_frame(&mut bad).await, Frame::Error(e) if e.code == ErrorCode::Protocol)
    );
    // Two frames in one message is a protocol error too.
    let (mut two, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ingest", s.http))
        .await
        .unwrap();
    let mut both = frame_bytes(&Frame::Ping(1));
    both.extend(frame_bytes(&Frame::Ping(2)));
    two.send(Message::Binary(both.into())).await.unwrap();
    assert!(matches!(ws_recv_frame(&mut two).await, Frame::Error(_)));
    assert_eq!(
        get(format!("http://{}/healthz", s.http))
            .await
            .unwrap()
            .status(),
        200
    );
}
