//! The entry server's HTTP API: viewers, relay feeds, WebSocket ingest, health and metrics.
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/streams/{id}/live?from=` | the payload bytes, chunked, live (any node: relays if needed) |
//! | `GET /v1/streams/{id}/live/ws?from=` | the same as WebSocket binary messages |
//! | `GET /v1/streams/{id}/chunks?from=` | DATA frames then END (for relays; sequence numbers kept) |
//! | `GET /v1/streams` | the streams held here |
//! | `GET /v1/ingest` | WebSocket ingest (native frames, one per binary message) |
//! | `POST`/`PUT /v1/streams/{id}/push?token=` | HTTP push: the body's bytes become the stream's chunks |
//! | `GET /live/{id}.flv?from=` | HTTP-FLV of an RTMP-ingested stream (any node: relays if needed) |
//! | `GET /v1/streams/{id}/flv-head` | the stream's cached onMetaData + codec configuration tags |
//! | `GET /healthz`, `/readyz`, `/metrics` | liveness, readiness (503 when draining), Prometheus |

use crate::hub::Stream;
use crate::ingest::{self, WsFrames};
use crate::node::Node;
use crate::viewer::{Cursor, From, Stop};
use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/ingest", get(ws_ingest))
        .route("/v1/streams", get(list))
        .route("/v1/streams/{id}/live", get(live))
        .route("/v1/streams/{id}/live/ws", get(live_ws))
        .route("/v1/streams/{id}/chunks", get(chunks))
        .route("/v1/streams/{id}/push", axum::routing::post(push).put(push))
        .route("/v1/streams/{id}/flv-head", get(flv_head))
        .route("/live/{file}", get(http_flv))
        .with_state(node)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

#[derive(Debug, Deserialize)]
struct FromQuery {
    from: Option<String>,
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    if node.draining.load(Ordering::SeqCst) {
        error(StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        "ready\n".into_response()
    }
}

async fn list(State(node): State<Arc<Node>>) -> Response {
    let streams: Vec<_> = node
        .hub
        .all()
        .iter()
        .map(|s| {
            let e = s.edge();
            json!({
                "stream": s.name,
                "source": if s.is_ingest() { "ingest" } else { "relay" },
                "first_seq": s.first_seq(),
                "next_seq": e.next_seq,
                "ended": e.ended,
                "live_sessions": s.live_sessions.load(Ordering::SeqCst),
                "rejoin": s.rejoin.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            })
        })
        .collect();
    axum::Json(json!({"server_id": node.cfg.id, "streams": streams})).into_response()
}

/// Resolve `id` and `from` into a cursor (relaying the stream if needed), or an error response.
async fn open(node: &Arc<Node>, id: &str, from: Option<&str>) -> Result<Cursor, Response> {
    let id =
        proto::StreamId::parse(id).map_err(|e| error(StatusCode::BAD_REQUEST, e.to_string()))?;
    let from_s = from.unwrap_or("live");
    let from: From = from_s
        .parse()
        .map_err(|e: String| error(StatusCode::BAD_REQUEST, e))?;
    let stream: Arc<Stream> = crate::relay::ensure(node, id.as_str(), from_s)
        .await
        .map_err(|e| match e {
            crate::relay::RelayError::Director(_) => error(StatusCode::BAD_GATEWAY, e.to_string()),
            _ => error(StatusCode::NOT_FOUND, e.to_string()),
        })?;
    if !stream.is_ingest() {
        // A catch-up viewer on a relay: fetch what the relay started after.
        let want = match from {
            From::Start => Some(0),
            From::Seq(s) => Some(s),
            _ => None,
        };
        if let Some(w) = want {
            // Wait (bounded) for the relay's first chunk, so there is a front to fill up to.
            let mut rx = stream.subscribe();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while stream.edge().next_seq == 0 && !stream.edge().lost {
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
            })
            .await;
            crate::relay::backfill(node, &stream, w).await;
        }
    }
    let cursor = Cursor::new(
        stream,
        from,
        node.cfg.max_viewer_lag_bytes,
        node.cfg.slow_viewer,
    );
    if let From::Seq(s) = from
        && s < cursor.stream().first_seq()
        && cursor.stream().is_ingest()
    {
        return Err(error(
            StatusCode::GONE,
            format!(
                "sequence {s} is no longer retained here (oldest: {})",
                cursor.stream().first_seq()
            ),
        ));
    }
    Ok(cursor)
}

/// Counts a viewer for as long as it lives.
struct ViewerGuard(Arc<Node>);
impl ViewerGuard {
    fn new(node: &Arc<Node>) -> Self {
        node.metrics.viewers.fetch_add(1, Ordering::Relaxed);
        Self(node.clone())
    }
}
impl Drop for ViewerGuard {
    fn drop(&mut self) {
        self.0.metrics.viewers.fetch_sub(1, Ordering::Relaxed);
    }
}

fn note_stop(node: &Node, stop: &Stop) {
    match stop {
        Stop::Cut | Stop::Gone(_) => {
            node.metrics.viewers_cut.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

async fn live(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(q): Query<FromQuery>,
) -> Response {
    let cursor = match open(&node, &id, q.from.as_deref()).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let guard = ViewerGuard::new(&node);
    let body = futures_util::stream::unfold((cursor, guard), |(mut c, g)| async move {
        let before = c.skipped;
        let r = c.next().await;
        if c.skipped > before {
            g.0.metrics.viewers_skipped.fetch_add(1, Ordering::Relaxed);
        }
        match r {
            Ok(chunk) => {
                g.0.metrics
                    .viewer_bytes
                    .fetch_add(chunk.payload.len() as u64, Ordering::Relaxed);
                Some((Ok::<Bytes, std::io::Error>(chunk.payload), (c, g)))
            }
            Err(stop @ (Stop::Ended | Stop::Lost)) => {
                tracing::debug!(?stop, "viewer done");
                None
            }
            Err(stop) => {
                note_stop(&g.0, &stop);
                // Abort the response so the viewer sees it is incomplete.
                Some((Err(std::io::Error::other(format!("{stop:?}"))), (c, g)))
            }
        }
    });
    let mut r = Body::from_stream(body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn chunks(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(q): Query<FromQuery>,
) -> Response {
    // Relay feeds come from the stream held here only: relays never chain.
    let Ok(sid) = proto::StreamId::parse(&id) else {
        return error(StatusCode::BAD_REQUEST, "bad stream id");
    };
    let Some(stream) = node.hub.get_ingest(sid.as_str()) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("stream {sid} is not ingested here"),
        );
    };
    let from_s = q.from.as_deref().unwrap_or("live");
    let from: From = match from_s.parse() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let From::Seq(s) = from
        && s < stream.first_seq()
    {
        return error(
            StatusCode::GONE,
            format!(
                "sequence {s} is no longer retained here (oldest: {})",
                stream.first_seq()
            ),
        );
    }
    // Relays must never skip: a relay that falls behind is cut and reconnects.
    let cursor = Cursor::new(stream, from, u64::MAX, crate::hub::SlowViewer::Cut);
    let body = futures_util::stream::unfold(Some(cursor), |c| async move {
        let mut c = c?;
        let mut buf = BytesMut::new();
        match c.next().await {
            Ok(chunk) => {
                let f = proto::Frame::Data(proto::Data {
                    seq: chunk.seq,
                    pts: chunk.pts,
                    flags: proto::DataFlags::from_bits_truncate(chunk.flags),
                    payload: chunk.payload,
                });
                match proto::encode(&f, &mut buf) {
                    Ok(()) => Some((Ok::<Bytes, std::io::Error>(buf.freeze()), Some(c))),
                    Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
                }
            }
            Err(Stop::Ended) => {
                let final_seq = c.stream().edge().ended.unwrap_or(0);
                let _ = proto::encode(&proto::Frame::End { final_seq }, &mut buf);
                Some((Ok(buf.freeze()), None))
            }
            Err(stop) => Some((Err(std::io::Error::other(format!("{stop:?}"))), None)),
        }
    });
    Body::from_stream(body).into_response()
}

async fn live_ws(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(q): Query<FromQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let mut cursor = match open(&node, &id, q.from.as_deref()).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    ws.on_upgrade(move |mut socket| async move {
        let _guard = ViewerGuard::new(&node);
        loop {
            match cursor.next().await {
                Ok(chunk) => {
                    if socket.send(Message::Binary(chunk.payload)).await.is_err() {
                        return;
                    }
                }
                Err(stop) => {
                    note_stop(&node, &stop);
                    let _ = socket.send(Message::Close(None)).await;
                    return;
                }
            }
        }
    })
}

async fn ws_ingest(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let limits = node.limits;
    ws.max_message_size(limits.max_frame_len as usize)
        .on_upgrade(move |socket| async move {
            ingest::serve(WsFrames::new(socket, limits), node, Some(peer.ip())).await;
        })
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let m = &node.metrics;
    let g = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    let streams = node.hub.all();
    let ingest = streams.iter().filter(|s| s.is_ingest()).count();
    let text = format!(
        "# TYPE firstmile_entry_sessions gauge\nfirstmile_entry_sessions {}\n\
         # TYPE firstmile_entry_streams gauge\nfirstmile_entry_streams{{source=\"ingest\"}} {}\nfirstmile_entry_streams{{source=\"relay\"}} {}\n\
         # TYPE firstmile_entry_chunks_in_total counter\nfirstmile_entry_chunks_in_total {}\n\
         # TYPE firstmile_entry_duplicate_chunks_total counter\nfirstmile_entry_duplicate_chunks_total {}\n\
         # TYPE firstmile_entry_bad_frames_total counter\nfirstmile_entry_bad_frames_total {}\n\
         # TYPE firstmile_entry_auth_failures_total counter\nfirstmile_entry_auth_failures_total {}\n\
         # TYPE firstmile_entry_viewers gauge\nfirstmile_entry_viewers {}\n\
         # TYPE firstmile_entry_viewer_bytes_total counter\nfirstmile_entry_viewer_bytes_total {}\n\
         # TYPE firstmile_entry_viewers_skipped_total counter\nfirstmile_entry_viewers_skipped_total {}\n\
         # TYPE firstmile_entry_viewers_cut_total counter\nfirstmile_entry_viewers_cut_total {}\n\
         # TYPE firstmile_entry_relay_upstream_failures_total counter\nfirstmile_entry_relay_upstream_failures_total {}\n\
         # TYPE firstmile_entry_draining gauge\nfirstmile_entry_draining {}\n{}",
        g(&m.sessions),
        ingest,
        streams.len() - ingest,
        g(&m.chunks_in),
        g(&m.duplicates),
        g(&m.bad_frames),
        g(&m.auth_failures),
        g(&m.viewers),
        g(&m.viewer_bytes),
        g(&m.viewers_skipped),
        g(&m.viewers_cut),
        g(&m.relay_upstream_failures),
        u8::from(node.draining.load(Ordering::SeqCst)),
        m.listeners.prometheus_text(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// The cached FLV head of a stream held here (relays fetch it to serve HTTP-FLV from the live
/// edge: the configuration tags are at the stream's start, before the relay began).
async fn flv_head(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Response {
    let Some(stream) = node.hub.get_ingest(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("stream {id} is not ingested here"),
        );
    };
    ensure_head(&node, &stream).await;
    let b = stream
        .flv
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .tags_bytes();
    ([(header::CONTENT_TYPE, "application/octet-stream")], b).into_response()
}

/// Fill an empty FLV head: from the log's first chunks (a stream recovered after a restart), or
/// from an upstream (a relay that started mid-stream).
pub async fn ensure_head(node: &Arc<Node>, stream: &Arc<Stream>) {
    if !stream
        .flv
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_empty()
    {
        return;
    }
    if stream.is_ingest() {
        let s = stream.clone();
        let first = tokio::task::spawn_blocking(move || {
            let mut h = crate::flv::Head::default();
            if let Ok(chunks) = s.read(s.first_seq(), 64 * 1024) {
                for c in chunks.iter().take(8) {
                    h.observe(&c.payload);
                }
            }
            h.tags_bytes()
        })
        .await
        .unwrap_or_default();
        stream
            .flv
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .fill_missing(&first);
    } else {
        crate::relay::fetch_flv_head(node, stream).await;
    }
}

#[derive(Debug, Deserialize)]
struct FlvQuery {
    from: Option<String>,
}

/// HTTP-FLV: the FLV header, then (when starting mid-stream) the cached metadata and codec
/// configuration, then the stream's tags from the latest keyframe (or `from`).
async fn http_flv(
    State(node): State<Arc<Node>>,
    Path(file): Path<String>,
    Query(q): Query<FlvQuery>,
) -> Response {
    let Some(id) = file.strip_suffix(".flv") else {
        return error(StatusCode::NOT_FOUND, "HTTP-FLV is at /live/<stream>.flv");
    };
    let cursor = match open(&node, id, q.from.as_deref()).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if cursor
        .stream()
        .flv
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .is_not_flv()
    {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("stream {id} is not an FLV (RTMP) stream: use /v1/streams/{id}/live"),
        );
    }
    let guard = ViewerGuard::new(&node);
    let body =
        futures_util::stream::unfold((cursor, guard, true), |(mut c, g, first)| async move {
            match c.next().await {
                Ok(chunk) => {
                    g.0.metrics
                        .viewer_bytes
                        .fetch_add(chunk.payload.len() as u64, Ordering::Relaxed);
                    if !first {
                        return Some((Ok::<Bytes, std::io::Error>(chunk.payload), (c, g, false)));
                    }
                    // The stream's own start carries its metadata and configuration: only the
                    // file header goes first. Mid-stream, the cached ones go first.
                    let mut b = BytesMut::new();
                    let from_start = chunk.seq == 0;
                    if !from_start {
                        ensure_head(&g.0, c.stream()).await;
                    }
                    let head = c
                        .stream()
                        .flv
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    if from_start {
                        let known = head.has_audio || head.has_video;
                        b.extend_from_slice(&crate::flv::header(
                            !known || head.has_audio,
                            !known || head.has_video,
                        ));
                    } else {
                        b.extend_from_slice(&head.prefix());
                    }
                    b.extend_from_slice(&chunk.payload);
                    Some((Ok(b.freeze()), (c, g, false)))
                }
                Err(stop @ (Stop::Ended | Stop::Lost)) => {
                    tracing::debug!(?stop, "flv viewer done");
                    None
                }
                Err(stop) => {
                    note_stop(&g.0, &stop);
                    Some((
                        Err(std::io::Error::other(format!("{stop:?}"))),
                        (c, g, false),
                    ))
                }
            }
        });
    let mut r = Body::from_stream(body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("video/x-flv"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Debug, Deserialize)]
struct PushQuery {
    token: Option<String>,
}

/// Bytes per HTTP-push chunk: 174 MPEG-TS packets. Fixed, so the same bytes pushed to the
/// primary and the backup are numbered identically (chunk n = bytes [n·SIZE, (n+1)·SIZE)) and
/// the relay merge works for HTTP push as for the native protocol.
pub const PUSH_CHUNK: usize = 188 * 174;

/// HTTP push: `POST`/`PUT /v1/streams/{id}/push?token=` with any body (chunked or not); the
/// bytes become the stream's chunks of [`PUSH_CHUNK`] bytes. The end of the body ends the
/// stream. Like RTMP, only into an empty log (see `rtmp` for the re-publish rule).
async fn push(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(q): Query<PushQuery>,
    body: Body,
) -> Response {
    if node.draining.load(Ordering::SeqCst) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    let token = q.token.unwrap_or_default();
    let claims = match node.verifier.verify(&token, node.now_unix()) {
        Ok(c) => c,
        Err(e) => {
            node.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            return error(StatusCode::UNAUTHORIZED, format!("token refused: {e}"));
        }
    };
    if claims.stream != id || claims.server != node.cfg.id {
        node.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "token is for stream {:?} at server {:?}, not stream {id:?} at {:?}",
                claims.stream, claims.server, node.cfg.id
            ),
        );
    }
    if proto::StreamId::parse(&id).is_err() {
        return error(StatusCode::BAD_REQUEST, "bad stream id");
    }
    let stream = {
        let s = match ingest::open_stream(&node, &id, None).await {
            Ok(s) => s,
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        };
        let _one = node.opening.lock().await;
        let e = s.edge();
        if s.live_sessions.load(Ordering::SeqCst) > 0 {
            return error(
                StatusCode::CONFLICT,
                format!("stream {id} is being pushed here already"),
            );
        }
        if e.next_seq > 0 || e.ended.is_some() {
            return error(
                StatusCode::CONFLICT,
                format!("stream {id} already holds data here: push under a new stream id"),
            );
        }
        s.live_sessions.fetch_add(1, Ordering::SeqCst);
        *s.role.lock().unwrap_or_else(|e| e.into_inner()) = Some(claims.role);
        s
    };
    node.metrics.sessions.fetch_add(1, Ordering::Relaxed);
    // In its own task: hyper drops the handler when the client half-closes right after the last
    // chunk (ffmpeg does), and the stream must still be ended and its session released.
    tokio::spawn(push_body(node, stream, id, body))
        .await
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn push_body(node: Arc<Node>, stream: Arc<Stream>, id: String, body: Body) -> Response {
    use futures_util::StreamExt;
    let start = tokio::time::Instant::now();
    let mut body = body.into_data_stream();
    let mut pending = BytesMut::new();
    let mut total = 0u64;
    let mut synced = crate::logio::UnackedSync::new();
    let result: Result<(), String> = loop {
        let next = body.next().await;
        let done = !matches!(next, Some(Ok(_)));
        match next {
            Some(Ok(b)) => pending.extend_from_slice(&b),
            Some(Err(e)) => break Err(e.to_string()),
            None => {}
        }
        let mut ready = Vec::new();
        while pending.len() >= PUSH_CHUNK || (done && !pending.is_empty()) {
            let n = pending.len().min(PUSH_CHUNK);
            ready.push(pending.split_to(n).freeze());
        }
        if !ready.is_empty() {
            total += ready.iter().map(|b| b.len() as u64).sum::<u64>();
            let pts = start.elapsed().as_micros() as i64;
            let r = crate::logio::with_log(&node, &stream, move |log| {
                let mut out = Vec::new();
                for payload in ready {
                    let rec = chunklog::Record {
                        seq: log.next_seq(),
                        pts,
                        flags: 0,
                        payload,
                    };
                    log.append(&rec).map_err(|e| e.to_string())?;
                    out.push(crate::hub::Chunk {
                        seq: rec.seq,
                        pts,
                        flags: 0,
                        payload: rec.payload,
                    });
                }
                Ok(out)
            })
            .await
            .and_then(|r| r);
            match r {
                Ok(chunks) => {
                    node.metrics
                        .chunks_in
                        .fetch_add(chunks.len() as u64, Ordering::Relaxed);
                    stream.publish(chunks);
                }
                Err(e) => break Err(e),
            }
            if let Err(e) = synced.tick(&node, &stream).await {
                break Err(e);
            }
        }
        if done {
            break Ok(());
        }
    };
    let final_seq = if result.is_ok() {
        let s = stream.clone();
        tokio::task::spawn_blocking(move || {
            let crate::hub::Source::Ingest(log) = &s.source else {
                return None;
            };
            let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
            let last = log.next_seq().checked_sub(1)?;
            log.end(last).and_then(|_| log.sync()).ok().map(|_| last)
        })
        .await
        .ok()
        .flatten()
    } else {
        None
    };
    if let Some(f) = final_seq {
        stream.end(f);
    }
    stream.live_sessions.fetch_sub(1, Ordering::SeqCst);
    node.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
    match result {
        Ok(()) => axum::Json(json!({"stream": id, "bytes": total, "final_seq": final_seq}))
            .into_response(),
        Err(e) => error(StatusCode::BAD_REQUEST, format!("push interrupted: {e}")),
    }
}
