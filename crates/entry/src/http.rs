//! The entry server's HTTP API: viewers, relay feeds, WebSocket ingest, HTTP push, health and
//! metrics. The OpenAPI document ([`openapi`], served at `/openapi.json`) is generated from these
//! handlers' annotations and the contract types (`proto::api`).
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/streams/{id}/live?from=&broadcast=&token=` | the payload bytes, chunked, live (any node: relays if needed) |
//! | `GET /v1/streams/{id}/live/ws?…` | the same as WebSocket binary messages |
//! | `GET /live/{id}.flv?…` | HTTP-FLV of an RTMP-ingested stream (any node: relays if needed) |
//! | `GET /v1/streams/{id}/chunks?broadcast=&from=` | DATA frames then END (relay feed; sequence numbers kept) |
//! | `GET /v1/streams/{id}/flv-head?broadcast=` | a broadcast's cached onMetaData + codec configuration tags |
//! | `GET /v1/streams` | the broadcasts held here (own credential or peer token) |
//! | `GET /v1/ingest` | WebSocket ingest (native frames, one per binary message) |
//! | `POST`/`PUT /v1/streams/{id}/push?token=` or `?key=` | HTTP push: the body's bytes become a broadcast's chunks |
//! | `GET /v1/probe` | 204 at once: devices time it to measure their RTT to this server |
//! | `GET /hls/{id}/index.m3u8?broadcast=&token=&_HLS_msn=&_HLS_part=` | LL-HLS playlist ([`crate::hls`]; any node: relays if needed) |
//! | `GET /hls/{id}/classic.m3u8?…` | plain HLS playlist of the same segments |
//! | `GET /hls/{id}/{broadcast}/{file}?token=` | `init-<hex>.mp4`, `<msn>.m4s`, `<msn>.<part>.m4s` (immutable) |
//! | `GET /v1/streams/{id}/path` | whether this node ingests or relays the broadcast, and from which upstreams |
//! | `GET /`, `/watch/{id}`, `/web/{asset}` | the index and player pages (hls.js vendored, served from the binary) |
//! | `GET /healthz`, `/readyz`, `/metrics`, `/openapi.json` | |
//!
//! **Which broadcast a viewer gets.** The stream's current broadcast as the director says
//! (`GET /v1/streams/{id}`, cached one second), or the one named with `?broadcast=` (catch-up of
//! a past broadcast); a node without a director serves the newest broadcast it ingested. A
//! viewer attached when a broadcast ends gets its end.
//!
//! **Not live yet.** Every playback endpoint follows one rule: a stream that exists but has
//! nothing to play yet (assigned and its encoder not started, or between broadcasts) makes the
//! viewer wait up to `viewer_wait_ms` for it; then `503 Service Unavailable`, `Retry-After: 2`,
//! `{"code": "not_live_yet"}`. An unknown stream is `404`.
//!
//! **Private streams** (the director's flag, carried in the ingest token's claims and its stream
//! info): every playback endpoint needs `?token=<playback token>` (or `Authorization: Bearer`);
//! without one, or with an expired one, `401` — and no relay pull is started. Relay feeds
//! (`chunks`, `flv-head`) of a private broadcast take a playback token, a peer token or the server's own credential.

use crate::core::{self, IngestError};
use crate::hub::{SlowViewer, Stream};
use crate::ingest::{self, WsFrames};
use crate::node::Node;
use crate::relay::RelayError;
use crate::viewer::{Cursor, From, Stop};
use axum::Router;
use axum::body::Body;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use proto::api::{
    EntryReadiness, EntryStream, EntryStreams, ErrorBody, PlaybackPath, StreamSource,
};
use proto::{BroadcastId, StreamId, StreamKey};
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

// A refusal is an HTTP response, built once; these handlers return it as their error.
#[allow(clippy::result_large_err)]
fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (status, axum::Json(ErrorBody::new(code, message))).into_response()
}

/// The header naming the broadcast a playback response carries.
pub const BROADCAST_HEADER: &str = "x-firstmile-broadcast";

fn ingest_error(e: &IngestError) -> Response {
    error(e.http_status(), e.code(), e.to_string())
}

fn not_live(stream: &str) -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_live_yet",
        format!("stream {stream} is not live yet: retry shortly"),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

/// Query of every playback endpoint.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ViewQuery {
    /// Where to start: `live` (default: the newest keyframe), `start`, a sequence number,
    /// `time:PTS_US`, or `-30s`.
    from: Option<String>,
    /// A broadcast of the stream (default: its current one).
    broadcast: Option<String>,
    /// A playback token (private streams).
    token: Option<String>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The request comes from this server's operator (its own credential) or another entry server
/// of the fleet (a peer token the director signed).
fn is_peer(node: &Node, headers: &HeaderMap) -> bool {
    bearer(headers).is_some_and(|t| node.trusts_bearer(t))
}

/// A playback token for `stream`, from `?token=` or the bearer.
#[allow(clippy::result_large_err)]
fn may_watch(
    node: &Node,
    stream: &str,
    q: &ViewQuery,
    headers: &HeaderMap,
) -> Result<(), Response> {
    let t = q.token.as_deref().or_else(|| bearer(headers)).unwrap_or("");
    if t.is_empty() {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "playback_token_required",
            format!("stream {stream} is private: add ?token=<playback token from the director>"),
        ));
    }
    match node.verifier.verify_play(t, node.now_unix()) {
        Ok(c) if c.stream.as_str() == stream => Ok(()),
        Ok(c) => Err(error(
            StatusCode::UNAUTHORIZED,
            "bad_playback_token",
            format!(
                "the playback token is for stream {}, not {stream}",
                c.stream
            ),
        )),
        Err(e) => Err(error(
            StatusCode::UNAUTHORIZED,
            "bad_playback_token",
            format!("playback token refused: {e}"),
        )),
    }
}

/// Which broadcast a viewer gets, and whether it is private (see the module docs). Waits
/// (bounded) for a stream that is not live yet.
#[allow(clippy::result_large_err)]
async fn resolve(
    node: &Arc<Node>,
    id: &StreamId,
    q: &ViewQuery,
    headers: &HeaderMap,
    client: IpAddr,
) -> Result<Arc<Stream>, Response> {
    resolve_with(node, id, q, headers, client, None).await
}

/// [`resolve`], with where a relay created for this viewer starts (`relay_from`, default: the
/// viewer's `from`): HLS asks for the last segments' worth of history.
#[allow(clippy::result_large_err)]
async fn resolve_with(
    node: &Arc<Node>,
    id: &StreamId,
    q: &ViewQuery,
    headers: &HeaderMap,
    client: IpAddr,
    relay_from: Option<&str>,
) -> Result<Arc<Stream>, Response> {
    let from_s = q.from.as_deref().unwrap_or("live");
    let from: From = from_s
        .parse()
        .map_err(|e: String| error(StatusCode::BAD_REQUEST, "bad_from", e))?;
    let explicit = match &q.broadcast {
        Some(b) => Some(
            b.parse::<BroadcastId>()
                .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_broadcast", e.to_string()))?,
        ),
        None => None,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_millis(node.cfg.viewer_wait_ms);
    let mut authorized = false;
    loop {
        // The broadcast and its privacy: the director's word, else what this node holds.
        let (broadcast, private, has_data) =
            match crate::relay::info(node, id.as_str(), explicit.as_ref()).await {
                Ok(info) => {
                    let b = info.broadcast.as_ref();
                    let ended = b.is_some_and(|b| b.state == proto::api::BroadcastState::Ended);
                    let usable = match b {
                        None => None,
                        // A live viewer of an ended broadcast waits for the next one.
                        Some(_) if ended && explicit.is_none() && from == From::Live => None,
                        Some(b) => Some(b.id.clone()),
                    };
                    let data = info
                        .ingest
                        .iter()
                        .any(|i| i.next_seq.is_some_and(|n| n > 0))
                        || ended;
                    (usable, info.private, data)
                }
                Err(RelayError::Unknown(_)) | Err(RelayError::NoDirector(_)) => {
                    let local = match &explicit {
                        Some(b) => match node.hub.get_ingest(id.as_str(), b) {
                            Some(s) => Some(s),
                            None => crate::open_from_disk(node, id.as_str(), b).await,
                        },
                        None => node.hub.latest_ingest(id.as_str()),
                    };
                    match local {
                        Some(s) => {
                            let e = s.edge();
                            (
                                Some(s.broadcast.clone()),
                                s.is_private(),
                                e.next_seq > 0 || e.ended.is_some(),
                            )
                        }
                        None if node.cfg.director.is_some() => {
                            return Err(error(
                                StatusCode::NOT_FOUND,
                                "not_found",
                                format!("stream {id} is unknown"),
                            ));
                        }
                        None => (None, false, false),
                    }
                }
                Err(e @ RelayError::Director(_)) => {
                    // The director cannot be asked: serve what this node ingests, if anything.
                    match node.hub.latest_ingest(id.as_str()) {
                        Some(s) => (Some(s.broadcast.clone()), s.is_private(), true),
                        None => {
                            return Err(error(
                                StatusCode::BAD_GATEWAY,
                                "director_unavailable",
                                e.to_string(),
                            ));
                        }
                    }
                }
                Err(e) => return Err(error(StatusCode::NOT_FOUND, "not_found", e.to_string())),
            };
        if private && !authorized {
            may_watch(node, id.as_str(), q, headers)?;
            authorized = true;
        }
        if let Some(b) = broadcast {
            let local = node.hub.get(id.as_str(), &b);
            let local_has_data = local.as_ref().is_some_and(|s| {
                let e = s.edge();
                e.next_seq > 0 || e.ended.is_some() || s.first_seq() > 0
            });
            if has_data || local_has_data {
                match crate::relay::ensure(
                    node,
                    id.as_str(),
                    &b,
                    private,
                    relay_from.unwrap_or(from_s),
                    Some(client),
                )
                .await
                {
                    // A live viewer does not get a broadcast that has ended here (the director
                    // may not have heard of its END yet): it waits for the next one.
                    Ok(s) if live_ended(&s, explicit.as_ref(), from) => {}
                    Ok(s) => {
                        if wait_for_data(&s, deadline).await
                            && !live_ended(&s, explicit.as_ref(), from)
                        {
                            return Ok(s);
                        }
                    }
                    Err(RelayError::NoUpstream(_)) => {}
                    Err(e @ RelayError::Capacity) => {
                        node.metrics.relays_refused.fetch_add(1, Ordering::Relaxed);
                        let mut r = error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "relay_capacity",
                            e.to_string(),
                        );
                        r.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                        return Err(r);
                    }
                    Err(e @ RelayError::TooMany(_)) => {
                        node.metrics.relays_refused.fetch_add(1, Ordering::Relaxed);
                        let RelayError::TooMany(wait) = e else {
                            unreachable!()
                        };
                        let mut r = error(
                            StatusCode::TOO_MANY_REQUESTS,
                            "too_many_relays",
                            e.to_string(),
                        );
                        r.headers_mut()
                            .insert(header::RETRY_AFTER, HeaderValue::from(wait));
                        return Err(r);
                    }
                    Err(e @ RelayError::Director(_)) => {
                        return Err(error(
                            StatusCode::BAD_GATEWAY,
                            "director_unavailable",
                            e.to_string(),
                        ));
                    }
                    Err(e) => return Err(error(StatusCode::NOT_FOUND, "not_found", e.to_string())),
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(not_live(id.as_str()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A live viewer (no broadcast named, from the live edge) is not given a broadcast that has
/// ended: it waits for the stream's next one.
fn live_ended(s: &Stream, explicit: Option<&BroadcastId>, from: From) -> bool {
    explicit.is_none() && from == From::Live && s.edge().ended.is_some()
}

/// Wait (until `deadline`) for the first chunk of a broadcast; true when there is something to
/// read (or its end).
async fn wait_for_data(s: &Arc<Stream>, deadline: tokio::time::Instant) -> bool {
    let mut rx = s.subscribe();
    loop {
        let e = *rx.borrow_and_update();
        if e.next_seq > 0 || e.ended.is_some() || e.lost {
            return true;
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return false;
        }
    }
}

/// Resolve the stream and `from` into a cursor, or an error response.
#[allow(clippy::result_large_err)]
async fn open(
    node: &Arc<Node>,
    id: &str,
    q: &ViewQuery,
    headers: &HeaderMap,
    client: IpAddr,
) -> Result<Cursor, Response> {
    let id = StreamId::parse(id)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_stream", e.to_string()))?;
    let from: From = q
        .from
        .as_deref()
        .unwrap_or("live")
        .parse()
        .map_err(|e: String| error(StatusCode::BAD_REQUEST, "bad_from", e))?;
    let stream = resolve(node, &id, q, headers, client).await?;
    if !stream.is_ingest() {
        // A catch-up viewer on a relay: fetch what the relay started after.
        let want = match from {
            From::Start => Some(0),
            From::Seq(s) => Some(s),
            _ => None,
        };
        if let Some(w) = want {
            crate::relay::backfill(node, &stream, w, Some(client)).await;
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
            "gone",
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

/// A stream's payload bytes, live, as a chunked HTTP body (works with curl and ffplay).
#[utoipa::path(get, path = "/v1/streams/{id}/live", tag = "viewers",
    params(("id" = StreamId, Path, description = "The stream"), ViewQuery),
    responses(
        (status = 200, description = "The payload bytes, until the broadcast ends", content_type = "application/octet-stream"),
        (status = 400, body = ErrorBody), (status = 401, description = "Private stream: a playback token is needed", body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody),
        (status = 503, description = "Not live yet (Retry-After)", body = ErrorBody),
    ))]
async fn live(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(q): Query<ViewQuery>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let cursor = match open(&node, &id, &q, &headers, peer.ip()).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let broadcast = cursor.stream().broadcast.clone();
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
    if let Ok(v) = HeaderValue::from_str(broadcast.as_str()) {
        r.headers_mut().insert(BROADCAST_HEADER, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChunksQuery {
    /// The broadcast (default: the newest one ingested here).
    broadcast: Option<String>,
    /// Where to start (as for viewers).
    from: Option<String>,
    /// A playback token (private broadcasts, unless a peer token or own credential is sent).
    token: Option<String>,
}

/// The broadcast ingested here for a relay feed, with the private check.
#[allow(clippy::result_large_err)]
async fn held(
    node: &Arc<Node>,
    id: &str,
    broadcast: Option<&str>,
    token: Option<&str>,
    headers: &HeaderMap,
) -> Result<Arc<Stream>, Response> {
    let Ok(sid) = StreamId::parse(id) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_stream",
            "bad stream id",
        ));
    };
    let stream = match broadcast {
        Some(b) => {
            let b = b
                .parse::<BroadcastId>()
                .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_broadcast", e.to_string()))?;
            match node.hub.get_ingest(sid.as_str(), &b) {
                Some(s) => Some(s),
                None => crate::open_from_disk(node, sid.as_str(), &b).await,
            }
        }
        None => node.hub.latest_ingest(sid.as_str()),
    };
    let Some(stream) = stream else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("stream {sid} (that broadcast) is not ingested here"),
        ));
    };
    if stream.is_private() && !is_peer(node, headers) {
        let q = ViewQuery {
            token: token.map(str::to_string),
            ..Default::default()
        };
        may_watch(node, sid.as_str(), &q, headers)?;
    }
    Ok(stream)
}

/// The relay feed between nodes: native DATA frames (sequence numbers kept), then END.
#[utoipa::path(get, path = "/v1/streams/{id}/chunks", tag = "relays",
    params(("id" = StreamId, Path, description = "The stream"), ChunksQuery),
    responses(
        (status = 200, description = "Native DATA frames, then END", content_type = "application/octet-stream"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 410, body = ErrorBody),
    ))]
async fn chunks(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(q): Query<ChunksQuery>,
    headers: HeaderMap,
) -> Response {
    // Relay feeds come from the broadcast held here only: relays never chain.
    let stream = match held(
        &node,
        &id,
        q.broadcast.as_deref(),
        q.token.as_deref(),
        &headers,
    )
    .await
    {
        Ok(s) => s,
        Err(r) => return r,
    };
    let from_s = q.from.as_deref().unwrap_or("live");
    let from: From = match from_s.parse() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_from", e),
    };
    if let From::Seq(s) = from
        && s < stream.first_seq()
    {
        return error(
            StatusCode::GONE,
            "gone",
            format!(
                "sequence {s} is no longer retained here (oldest: {})",
                stream.first_seq()
            ),
        );
    }
    // A relay for a live viewer of a broadcast that has ended here gets the end at once, not
    // its last moments (the viewer wants the stream's next broadcast).
    if from == From::Live
        && let Some(final_seq) = stream.edge().ended
    {
        let mut buf = BytesMut::new();
        let _ = proto::encode(&proto::Frame::End { final_seq }, &mut buf);
        return Body::from(buf.freeze()).into_response();
    }
    // How far this node has got now: a relay knows when it has caught up with the history it
    // asked for (its HLS waits for that before its first playlist).
    let next_seq = stream.edge().next_seq;
    // Relays must never skip: a relay that falls behind is cut and reconnects.
    let cursor = Cursor::new(stream, from, u64::MAX, SlowViewer::Cut);
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
    let mut r = Body::from_stream(body).into_response();
    r.headers_mut()
        .insert(NEXT_SEQ_HEADER, HeaderValue::from(next_seq));
    r
}

/// On `chunks` answers: the holder's next sequence number when it answered.
pub const NEXT_SEQ_HEADER: &str = "x-firstmile-next-seq";

/// The same bytes as `/live`, as WebSocket binary messages.
#[utoipa::path(get, path = "/v1/streams/{id}/live/ws", tag = "viewers",
    params(("id" = StreamId, Path, description = "The stream"), ViewQuery),
    responses(
        (status = 101, description = "WebSocket: one binary message per chunk"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, description = "Not live yet (Retry-After)", body = ErrorBody),
    ))]
async fn live_ws(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(q): Query<ViewQuery>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let mut cursor = match open(&node, &id, &q, &headers, peer.ip()).await {
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

/// WebSocket ingest: native frames, one per binary message (browsers).
#[utoipa::path(get, path = "/v1/ingest", tag = "ingest",
    responses((status = 101, description = "WebSocket: native frames, HELLO first")))]
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

/// The broadcasts held here (operators and peers: own credential or a peer token).
#[utoipa::path(get, path = "/v1/streams", tag = "operations",
    security(("peer" = [])),
    responses((status = 200, body = EntryStreams), (status = 401, body = ErrorBody)))]
async fn list(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    if !is_peer(&node, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <cluster credential>",
        );
    }
    let streams: Vec<EntryStream> = node
        .hub
        .all()
        .iter()
        .filter_map(|s| {
            let e = s.edge();
            Some(EntryStream {
                stream: StreamId::parse(&s.name).ok()?,
                broadcast: s.broadcast.clone(),
                source: if s.is_ingest() {
                    StreamSource::Ingest
                } else {
                    StreamSource::Relay
                },
                role: *s.role.lock().unwrap_or_else(|e| e.into_inner()),
                first_seq: s.first_seq(),
                next_seq: e.next_seq,
                ended: e.ended,
                live_sessions: s.live_sessions.load(Ordering::SeqCst),
                rejoin: s.rejoin.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            })
        })
        .collect();
    axum::Json(EntryStreams {
        server_id: core::server_id(&node)
            .unwrap_or_else(|| proto::ServerId::parse("unknown").expect("literal")),
        streams,
    })
    .into_response()
}

/// Readiness: 503 while draining or when the log storage cannot take new broadcasts.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = EntryReadiness), (status = 503, body = EntryReadiness)))]
async fn readyz(State(node): State<Arc<Node>>) -> Response {
    let (code, status, reason) = if node.draining.load(Ordering::SeqCst) {
        (StatusCode::SERVICE_UNAVAILABLE, "draining", None)
    } else if let Some(why) = node.storage_problem() {
        let s = if why.starts_with("disk full") {
            "disk_full"
        } else {
            "disk_failing"
        };
        (StatusCode::SERVICE_UNAVAILABLE, s, Some(why))
    } else {
        (StatusCode::OK, "ready", None)
    };
    (
        code,
        axum::Json(EntryReadiness {
            status: status.into(),
            reason,
        }),
    )
        .into_response()
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "ok", content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
async fn metrics(
    State(node): State<Arc<Node>>,
    axum::Extension(hls): axum::Extension<Arc<crate::hls::Hls>>,
) -> Response {
    let m = &node.metrics;
    let g = |v: &std::sync::atomic::AtomicU64| v.load(Ordering::Relaxed);
    let (ingest, relay) = node.hub.counts();
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
         # TYPE firstmile_entry_draining gauge\nfirstmile_entry_draining {}\n\
         # TYPE firstmile_entry_storage_ok gauge\nfirstmile_entry_storage_ok {}\n\
         # TYPE firstmile_entry_relays_refused_total counter\nfirstmile_entry_relays_refused_total {}\n\
         # TYPE firstmile_entry_heartbeat_bytes gauge\nfirstmile_entry_heartbeat_bytes {}\n\
         # TYPE firstmile_entry_storage_checks_total counter\nfirstmile_entry_storage_checks_total {}\n\
         # TYPE firstmile_entry_disk_free_bytes gauge\nfirstmile_entry_disk_free_bytes {}\n\
         # TYPE firstmile_entry_log_bytes gauge\nfirstmile_entry_log_bytes {}\n\
         # TYPE firstmile_entry_broadcasts_on_disk gauge\nfirstmile_entry_broadcasts_on_disk {}\n\
         # TYPE firstmile_entry_retention_deleted_total counter\nfirstmile_entry_retention_deleted_total {}\n\
         # TYPE firstmile_entry_retention_deleted_bytes_total counter\nfirstmile_entry_retention_deleted_bytes_total {}\n\
         # TYPE firstmile_entry_hls_packagers gauge\nfirstmile_entry_hls_packagers {}\n\
         # TYPE firstmile_entry_hls_dropped_tags_total counter\nfirstmile_entry_hls_dropped_tags_total {}\n\
         # TYPE firstmile_entry_hls_ts_errors_total counter\nfirstmile_entry_hls_ts_errors_total {}\n{}",
        g(&m.sessions),
        ingest,
        relay,
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
        u8::from(node.storage_problem().is_none()),
        g(&m.relays_refused),
        g(&m.heartbeat_bytes),
        g(&m.storage_checks),
        g(&m.disk_free_bytes),
        g(&m.log_bytes),
        g(&m.broadcasts_on_disk),
        g(&m.retention_deleted),
        g(&m.retention_deleted_bytes),
        hls.len(),
        g(&m.hls_dropped_tags),
        g(&m.hls_ts_errors),
        m.listeners.prometheus_text(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HeadQuery {
    /// The broadcast (default: the newest one ingested here).
    broadcast: Option<String>,
    /// A playback token (private broadcasts, unless a peer token or own credential is sent).
    token: Option<String>,
}

/// The cached FLV head of a broadcast held here (relays fetch it to serve HTTP-FLV from the live
/// edge: the configuration tags are at the broadcast's start, before the relay began).
#[utoipa::path(get, path = "/v1/streams/{id}/flv-head", tag = "relays",
    params(("id" = StreamId, Path, description = "The stream"), HeadQuery),
    responses(
        (status = 200, description = "FLV tags: onMetaData and the codec configuration", content_type = "application/octet-stream"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
    ))]
async fn flv_head(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(q): Query<HeadQuery>,
    headers: HeaderMap,
) -> Response {
    let stream = match held(
        &node,
        &id,
        q.broadcast.as_deref(),
        q.token.as_deref(),
        &headers,
    )
    .await
    {
        Ok(s) => s,
        Err(r) => return r,
    };
    ensure_head(&node, &stream).await;
    let (b, ts_origin, neither) = {
        let h = stream.flv.lock().unwrap_or_else(|e| e.into_inner());
        (h.tags_bytes(), h.ts_origin, h.neither)
    };
    let mut r = ([(header::CONTENT_TYPE, "application/octet-stream")], b).into_response();
    if let Some(o) = ts_origin {
        r.headers_mut()
            .insert(TS_ORIGIN_HEADER, HeaderValue::from(o));
    }
    if neither {
        r.headers_mut()
            .insert(NOT_MEDIA_HEADER, HeaderValue::from_static("1"));
    }
    r
}

/// On `flv-head` answers for a broadcast whose first chunks are neither FLV nor MPEG-TS (so a
/// relay stops asking): `1`.
pub const NOT_MEDIA_HEADER: &str = "x-firstmile-not-media";

/// On `flv-head` answers for an MPEG-TS broadcast: the origin of its decode times (90 kHz), so
/// a relay packages it for HLS on the same timeline as its ingest servers.
pub const TS_ORIGIN_HEADER: &str = "x-firstmile-ts-origin";

/// Fill an empty FLV head: from the log's first chunks (a broadcast recovered after a restart),
/// or from an upstream (a relay that started mid-broadcast).
pub async fn ensure_head(node: &Arc<Node>, stream: &Arc<Stream>) {
    ensure_head_with(node, stream, true).await
}

/// [`ensure_head`]; `gated`: at most one lookup a second per broadcast (requests from viewers);
/// a broadcast's HLS feed, a single task that paces itself, looks up when it needs to.
pub async fn ensure_head_with(node: &Arc<Node>, stream: &Arc<Stream>, gated: bool) {
    {
        let mut h = stream.flv.lock().unwrap_or_else(|e| e.into_inner());
        if !h.is_empty() || h.ts_origin.is_some() || h.neither {
            return;
        }
        let now = crate::hub::mono_ms();
        if gated && now < h.retry_at_ms {
            return;
        }
        h.retry_at_ms = now.saturating_add(1000);
    }
    if stream.is_ingest() {
        let s = stream.clone();
        let (first, ts_origin, neither) = tokio::task::spawn_blocking(move || {
            let mut h = crate::flv::Head::default();
            let (mut ts_origin, mut neither) = (None, false);
            if let Ok(chunks) = s.read(s.first_seq(), 64 * 1024) {
                for c in chunks.iter().take(8) {
                    h.observe(&c.payload);
                }
                if h.tags == 0 && !chunks.is_empty() {
                    let complete = s
                        .edge()
                        .ended
                        .is_some_and(|f| chunks.last().is_some_and(|c| c.seq >= f));
                    (ts_origin, neither) = crate::flv::Head::ts_of(&chunks, complete);
                }
            }
            (h.tags_bytes(), ts_origin, neither)
        })
        .await
        .unwrap_or_default();
        let mut h = stream.flv.lock().unwrap_or_else(|e| e.into_inner());
        h.fill_missing(&first);
        h.ts_origin = h.ts_origin.or(ts_origin);
        h.neither |= neither;
    } else {
        crate::relay::fetch_flv_head(node, stream).await;
    }
}

/// HTTP-FLV: the FLV header, then (when starting mid-broadcast) the cached metadata and codec
/// configuration, then the broadcast's tags from the latest keyframe (or `from`).
#[utoipa::path(get, path = "/live/{file}", tag = "viewers",
    params(("file" = String, Path, description = "<stream>.flv"), ViewQuery),
    responses(
        (status = 200, description = "An FLV file, live", content_type = "video/x-flv"),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 415, description = "Not an RTMP (FLV) stream", body = ErrorBody),
        (status = 503, description = "Not live yet (Retry-After)", body = ErrorBody),
    ))]
async fn http_flv(
    State(node): State<Arc<Node>>,
    Path(file): Path<String>,
    Query(q): Query<ViewQuery>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    // Browser players of HTTP-FLV (flv.js, mpegts.js) are pages on other origins.
    with_cors(http_flv_inner(node, file, q, headers, peer).await)
}

async fn http_flv_inner(
    node: Arc<Node>,
    file: String,
    q: ViewQuery,
    headers: HeaderMap,
    peer: SocketAddr,
) -> Response {
    let Some(id) = file.strip_suffix(".flv") else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "HTTP-FLV is at /live/<stream>.flv",
        );
    };
    let cursor = match open(&node, id, &q, &headers, peer.ip()).await {
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
            "not_flv",
            format!("stream {id} is not an FLV (RTMP) stream: use /v1/streams/{id}/live"),
        );
    }
    let broadcast = cursor.stream().broadcast.clone();
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
                    // The broadcast's own start carries its metadata and configuration: only
                    // the file header goes first. Mid-broadcast, the cached ones go first.
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
    if let Ok(v) = HeaderValue::from_str(broadcast.as_str()) {
        r.headers_mut().insert(BROADCAST_HEADER, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PushQuery {
    /// The director's ingest token for this server (from an assignment).
    token: Option<String>,
    /// Or the stream's key: the director then authorizes the push and picks the broadcast.
    key: Option<String>,
}

/// Bytes per HTTP-push chunk: 174 MPEG-TS packets. Fixed, so the same bytes pushed to the
/// primary and the backup are numbered identically (chunk n = bytes [n·SIZE, (n+1)·SIZE)) and
/// the relay merge works for HTTP push as for the native protocol.
pub const PUSH_CHUNK: usize = 188 * 174;

/// HTTP push: the request body's bytes (chunked or not) become a broadcast's chunks of
/// [`PUSH_CHUNK`] bytes; the end of the body ends the broadcast. Only into an empty broadcast.
#[utoipa::path(post, path = "/v1/streams/{id}/push", tag = "ingest",
    params(("id" = StreamId, Path, description = "The stream"), PushQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "Any bytes (MPEG-TS from ffmpeg, ...)"),
    responses(
        (status = 200, description = "The push ended; the broadcast with it", body = proto::api::PushResult),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody),
    ))]
async fn push(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(q): Query<PushQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Response {
    let sid = match StreamId::parse(&id) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_stream", e.to_string()),
    };
    let token = q.token.unwrap_or_default();
    let cred = match &q.key {
        Some(k) if token.is_empty() => match StreamKey::parse(k) {
            Ok(key) => core::Credential::Key {
                stream: sid.clone(),
                key,
            },
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_key", e.to_string()),
        },
        _ => core::Credential::Token(&token),
    };
    let a = match core::admit(
        &node,
        cred,
        core::Expect {
            stream: Some(sid.as_str()),
            role: None,
            continue_after_expiry: false,
        },
        proto::Protocol::Http,
        Some(peer.ip()),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => return ingest_error(&e),
    };
    let stream = match core::open(&node, &a, None).await {
        Ok(s) => s,
        Err(e) => return ingest_error(&e),
    };
    let session = {
        let _one = node.opening.lock().await;
        let e = stream.edge();
        if stream.live_sessions.load(Ordering::SeqCst) > 0 {
            return ingest_error(&IngestError::Busy(format!(
                "stream {id} (broadcast {}) is being pushed here already",
                a.broadcast
            )));
        }
        if e.next_seq > 0 || e.ended.is_some() {
            return ingest_error(&IngestError::Busy(format!(
                "broadcast {} of stream {id} already holds data here: go live again (a new assignment, or push with the key) for a new broadcast",
                a.broadcast
            )));
        }
        core::Session::start(&node, &stream, a.role)
    };
    // In its own task: hyper drops the handler when the client half-closes right after the last
    // chunk (ffmpeg does), and the broadcast must still be ended and its session released.
    tokio::spawn(push_body(node, session, id, body))
        .await
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

async fn push_body(node: Arc<Node>, session: core::Session, id: String, body: Body) -> Response {
    use futures_util::StreamExt;
    let stream = session.stream().clone();
    let start = tokio::time::Instant::now();
    let mut body = body.into_data_stream();
    let mut pending = BytesMut::new();
    let mut total = 0u64;
    let mut synced = crate::logio::UnackedSync::new();
    let result: Result<(), IngestError> = loop {
        if stream.is_superseded() {
            break Err(IngestError::Superseded(stream.broadcast.clone()));
        }
        let next = body.next().await;
        let done = !matches!(next, Some(Ok(_)));
        match next {
            Some(Ok(b)) => pending.extend_from_slice(&b),
            Some(Err(e)) => break Err(IngestError::Protocol(e.to_string())),
            None => {}
        }
        let mut ready = Vec::new();
        while pending.len() >= PUSH_CHUNK || (done && !pending.is_empty()) {
            let n = pending.len().min(PUSH_CHUNK);
            ready.push(pending.split_to(n).freeze());
        }
        if !ready.is_empty() {
            total += ready.iter().map(|b| b.len() as u64).sum::<u64>();
            let pts = i64::try_from(start.elapsed().as_micros()).unwrap_or(i64::MAX);
            let recs = ready
                .into_iter()
                .map(|payload| chunklog::Record {
                    seq: 0,
                    pts,
                    flags: 0,
                    payload,
                })
                .collect();
            if let Err(e) = core::append_next(&node, &stream, recs).await {
                break Err(e);
            }
            if let Err(e) = synced.tick(&node, &stream).await {
                break Err(IngestError::Log(e));
            }
        }
        if done {
            break Ok(());
        }
    };
    let final_seq = match &result {
        Ok(()) => core::end(&stream, None).await.ok().flatten(),
        Err(_) => {
            let _ = crate::logio::sync(&node, &stream).await;
            None
        }
    };
    drop(session);
    match result {
        Ok(()) => match id.parse() {
            Ok(stream_id) => axum::Json(proto::api::PushResult {
                stream: stream_id,
                broadcast: stream.broadcast.clone(),
                bytes: total,
                final_seq,
            })
            .into_response(),
            Err(e) => ingest_error(&IngestError::Protocol(format!("stream id: {e}"))),
        },
        Err(e) => ingest_error(&IngestError::Protocol(format!("push interrupted: {e}"))),
    }
}

/// A probe target: answers at once, so a device can time it (RTT to this server). Browsers may
/// time it too (`Timing-Allow-Origin: *`). Rate-limited per client address.
#[utoipa::path(get, path = "/v1/probe", tag = "devices",
    responses(
        (status = 204, description = "Nothing: time the request"),
        (status = 429, description = "Too many probes from this address"),
    ))]
async fn probe(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    let ok = node.probe_limiter.check(peer.ip()).is_ok();
    let mut r = if ok {
        StatusCode::NO_CONTENT.into_response()
    } else {
        StatusCode::TOO_MANY_REQUESTS.into_response()
    };
    let h = r.headers_mut();
    h.insert("timing-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if !ok {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

// ---------------------------------------------------------------------------------------------
// HLS and LL-HLS (crate::hls), the player page, the playback path.

/// Query of the HLS playlists.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HlsQuery {
    /// A broadcast of the stream (default: its current one).
    broadcast: Option<String>,
    /// A playback token (private streams); carried into every URI of the playlist.
    token: Option<String>,
    /// Blocking reload: answer once the playlist holds this Media Sequence Number.
    #[serde(rename = "_HLS_msn")]
    #[param(rename = "_HLS_msn")]
    hls_msn: Option<String>,
    /// Blocking reload: and this part of it (needs `_HLS_msn`).
    #[serde(rename = "_HLS_part")]
    #[param(rename = "_HLS_part")]
    hls_part: Option<String>,
    /// Delta updates are not offered (no CAN-SKIP-UNTIL): ignored.
    #[serde(rename = "_HLS_skip")]
    #[param(rename = "_HLS_skip")]
    hls_skip: Option<String>,
}

/// Query of HLS media resources.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HlsMediaQuery {
    /// A playback token (private streams).
    token: Option<String>,
}

/// `Access-Control-*` for players on other origins (hls.js reads playlists and segments with
/// XHR/fetch), and the media type.
fn hls_headers(r: &mut Response, content_type: &'static str, cache: String) {
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Age, Date, Content-Length, x-firstmile-broadcast"),
    );
    if let Ok(v) = HeaderValue::from_str(&cache) {
        h.insert(header::CACHE_CONTROL, v);
    }
}

/// An HLS error: JSON with CORS, never cached (the resource may exist a moment later).
fn hls_error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let mut r = error(status, code, message);
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn with_cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

#[allow(clippy::result_large_err)]
fn hls_directive(name: &str, v: Option<&str>) -> Result<Option<u64>, Response> {
    match v {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            hls_error(
                StatusCode::BAD_REQUEST,
                "bad_directive",
                format!("{name}={v:?}: a decimal integer is expected"),
            )
        }),
    }
}

/// How far back the packager of a new broadcast starts (its relay too): the window.
fn hls_history(node: &Node) -> String {
    let secs = (node.cfg.hls_window as u64 * u64::from(node.cfg.hls_segment_ms)).div_ceil(1000) + 1;
    format!("-{secs}s")
}

async fn hls_playlist(
    node: Arc<Node>,
    hls: Arc<crate::hls::Hls>,
    id: String,
    q: HlsQuery,
    headers: HeaderMap,
    client: IpAddr,
    flavor: ::hls::Flavor,
) -> Response {
    // Delta updates are not offered (no CAN-SKIP-UNTIL): `_HLS_skip` is ignored (§6.2.5.1).
    let _ = q.hls_skip;
    let sid = match StreamId::parse(&id) {
        Ok(s) => s,
        Err(e) => return hls_error(StatusCode::BAD_REQUEST, "bad_stream", e.to_string()),
    };
    let msn = match hls_directive("_HLS_msn", q.hls_msn.as_deref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let part = match hls_directive("_HLS_part", q.hls_part.as_deref()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if part.is_some() && msn.is_none() {
        return hls_error(
            StatusCode::BAD_REQUEST,
            "bad_directive",
            "_HLS_part needs _HLS_msn (RFC 8216bis 6.2.5.2)",
        );
    }
    let vq = ViewQuery {
        from: None,
        broadcast: q.broadcast.clone(),
        token: q.token.clone(),
    };
    let stream = match resolve_with(
        &node,
        &sid,
        &vq,
        &headers,
        client,
        Some(&hls_history(&node)),
    )
    .await
    {
        Ok(s) => s,
        Err(r) => return with_cors(r),
    };
    // Chunks that are not FLV tags: MPEG-TS? (Looked up once; nothing to look up before the
    // first chunk or for an RTMP stream.)
    let undecided = {
        let h = stream.flv.lock().unwrap_or_else(|e| e.into_inner());
        h.is_not_flv() && h.ts_origin.is_none() && !h.neither
    };
    if undecided {
        ensure_head(&node, &stream).await;
    }
    let (packageable, neither) = {
        let h = stream.flv.lock().unwrap_or_else(|e| e.into_inner());
        (h.packageable(), h.neither)
    };
    if !packageable && !neither {
        // Not FLV, and not known yet to be MPEG-TS or not (only its first packets so far, or an
        // upstream that did not answer): like a stream that is not live yet.
        return with_cors(not_live(&id));
    }
    if !packageable {
        return hls_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_flv",
            format!(
                "stream {id} is neither RTMP (FLV) nor MPEG-TS: HLS needs H.264/AAC in one of \
                 them; use /v1/streams/{id}/live"
            ),
        );
    }
    let m = hls.get_or_start(&node, &stream);
    drop(stream);
    let cfg = crate::hls::config(&node);
    let td = cfg.target_duration_s();
    // The first playlist of a broadcast waits for its first part (the not-live-yet rule), and
    // for the packager to have caught up with what the node held when it started (a relay's
    // history): a playlist of one part, then one whose live edge jumped seconds ahead, costs
    // hls.js seconds before its first frame (4.1 s on a cold relay, `bench/browser.sh`).
    let first = tokio::time::Instant::now() + Duration::from_millis(node.cfg.viewer_wait_ms);
    if m.wait_for(first, |p| {
        p.filter(|p| (p.has_media() && m.caught_up()) || p.is_ended())
            .map(|_| ())
    })
    .await
    .is_none()
    {
        return with_cors(not_live(&id));
    }
    let blocking = flavor == ::hls::Flavor::LowLatency && msn.is_some();
    if let (true, Some(msn)) = (blocking, msn) {
        let wait = tokio::time::Instant::now() + Duration::from_secs(3 * td);
        let r = m
            .wait_for(wait, |p| match p.map(|p| p.reload(msn, part)) {
                Some(::hls::Reload::Ready) => Some(Ok(())),
                Some(::hls::Reload::TooFar(why)) => Some(Err(why)),
                _ => None,
            })
            .await;
        match r {
            Some(Ok(())) => {}
            Some(Err(why)) => return hls_error(StatusCode::BAD_REQUEST, "too_far_ahead", why),
            None => {
                let mut r = hls_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_yet",
                    format!("segment {msn} did not come within three target durations"),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
        }
    }
    let uri = crate::hls::uri_fn(&m.broadcast, q.token.as_deref());
    let Some(text) = m.playlist(flavor, &uri) else {
        return with_cors(not_live(&id));
    };
    let ended = text.ends_with("#EXT-X-ENDLIST\n");
    let scope = if m.private { "private" } else { "public" };
    // Blocking responses are the same for every client asking that msn/part: cacheable (RFC
    // 8216bis appendix B.1: six target durations); others are short-lived.
    let cache = if ended {
        format!("{scope}, max-age={td}")
    } else if blocking {
        format!("{scope}, max-age={}", 6 * td)
    } else {
        format!("{scope}, max-age=1")
    };
    let mut r = text.into_response();
    hls_headers(&mut r, "application/vnd.apple.mpegurl", cache);
    if let Ok(v) = HeaderValue::from_str(m.broadcast.as_str()) {
        r.headers_mut().insert(BROADCAST_HEADER, v);
    }
    r
}

/// The LL-HLS media playlist of a stream's current broadcast (or `?broadcast=`): CMAF parts,
/// preload hint, blocking reload (`_HLS_msn`, `_HLS_part`).
#[utoipa::path(get, path = "/hls/{id}/index.m3u8", tag = "viewers",
    params(("id" = StreamId, Path, description = "The stream"), HlsQuery),
    responses(
        (status = 200, description = "An LL-HLS media playlist", content_type = "application/vnd.apple.mpegurl"),
        (status = 400, description = "Malformed or too-far-ahead blocking directives", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 415, description = "Neither RTMP (FLV) nor MPEG-TS", body = ErrorBody),
        (status = 503, description = "Not live yet, or a blocking reload not satisfied within three target durations (Retry-After)", body = ErrorBody),
    ))]
async fn hls_index(
    State(node): State<Arc<Node>>,
    axum::Extension(hls): axum::Extension<Arc<crate::hls::Hls>>,
    Path(id): Path<String>,
    Query(q): Query<HlsQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    hls_playlist(
        node,
        hls,
        id,
        q,
        headers,
        peer.ip(),
        ::hls::Flavor::LowLatency,
    )
    .await
}

/// The plain HLS media playlist (RFC 8216: whole segments only) of the same segments, for
/// players without LL-HLS.
#[utoipa::path(get, path = "/hls/{id}/classic.m3u8", tag = "viewers",
    params(("id" = StreamId, Path, description = "The stream"), HlsQuery),
    responses(
        (status = 200, description = "An HLS media playlist", content_type = "application/vnd.apple.mpegurl"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 503, description = "Not live yet (Retry-After)", body = ErrorBody),
    ))]
async fn hls_classic(
    State(node): State<Arc<Node>>,
    axum::Extension(hls): axum::Extension<Arc<crate::hls::Hls>>,
    Path(id): Path<String>,
    Query(q): Query<HlsQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    hls_playlist(node, hls, id, q, headers, peer.ip(), ::hls::Flavor::Classic).await
}

/// An HLS resource of a broadcast: `init-<id>.mp4` (CMAF header), `<msn>.m4s` (segment),
/// `<msn>.<part>.m4s` (LL-HLS part; the hinted next part is answered once complete). Immutable:
/// the same URL is the same bytes on every node.
#[utoipa::path(get, path = "/hls/{id}/{broadcast}/{file}", tag = "viewers",
    params(
        ("id" = StreamId, Path, description = "The stream"),
        ("broadcast" = BroadcastId, Path, description = "The broadcast"),
        ("file" = String, Path, description = "init-<hex>.mp4, <msn>.m4s or <msn>.<part>.m4s"),
        HlsMediaQuery,
    ),
    responses(
        (status = 200, description = "CMAF (fragmented MP4)", content_type = "video/mp4"),
        (status = 400, description = "Not a stream id, a broadcast id or an HLS resource name (bad_stream, bad_broadcast, bad_file)", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "Not (or no longer) there", body = ErrorBody),
        (status = 503, description = "Not ready within three target durations (Retry-After)", body = ErrorBody),
    ))]
async fn hls_media(
    State(node): State<Arc<Node>>,
    axum::Extension(hls): axum::Extension<Arc<crate::hls::Hls>>,
    Path((id, broadcast, file)): Path<(String, String, String)>,
    Query(q): Query<HlsMediaQuery>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let sid = match StreamId::parse(&id) {
        Ok(s) => s,
        Err(e) => return hls_error(StatusCode::BAD_REQUEST, "bad_stream", e.to_string()),
    };
    let b = match broadcast.parse::<BroadcastId>() {
        Ok(b) => b,
        Err(e) => return hls_error(StatusCode::BAD_REQUEST, "bad_broadcast", e.to_string()),
    };
    let Some(res) = ::hls::parse_resource(&file) else {
        // Never a name this server makes (a traversal, a typo): the request is at fault.
        return hls_error(
            StatusCode::BAD_REQUEST,
            "bad_file",
            format!(
                "{file:?} is not an HLS resource name: init-<8 hex digits>.mp4, <msn>.m4s or \
                 <msn>.<part>.m4s"
            ),
        );
    };
    let vq = ViewQuery {
        from: None,
        broadcast: Some(b.to_string()),
        token: q.token.clone(),
    };
    let m = match hls.get(sid.as_str(), &b) {
        Some(m) => {
            if m.private
                && let Err(r) = may_watch(&node, sid.as_str(), &vq, &headers)
            {
                return with_cors(r);
            }
            m
        }
        // Asked here first (a CDN, a player that moved): package the broadcast here too.
        None => match resolve_with(
            &node,
            &sid,
            &vq,
            &headers,
            peer.ip(),
            Some(&hls_history(&node)),
        )
        .await
        {
            Ok(s) => hls.get_or_start(&node, &s),
            Err(r) => return with_cors(r),
        },
    };
    let td = crate::hls::config(&node).target_duration_s();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3 * td);
    let found = m
        .wait_for(deadline, |p| match crate::hls::lookup_in(p, res) {
            ::hls::Lookup::Pending => None,
            other => Some(other),
        })
        .await;
    match found {
        Some(::hls::Lookup::Ready(bytes)) => {
            let scope = if m.private { "private" } else { "public" };
            let mut r = Body::from(bytes).into_response();
            hls_headers(
                &mut r,
                "video/mp4",
                format!("{scope}, max-age=31536000, immutable"),
            );
            r
        }
        Some(_) => hls_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{file} of broadcast {b} is not held here (not yet made, or expired)"),
        ),
        None => {
            let mut r = hls_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_yet",
                format!("{file} was not ready within three target durations"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
    }
}

/// Query of the playback-path endpoint.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PathQuery {
    /// A broadcast of the stream (default: its current one).
    broadcast: Option<String>,
    /// A playback token (private streams).
    token: Option<String>,
}

/// How this node gets the broadcast it serves: it ingests it (which path), or relays it from
/// the ingest servers (and which of them answer it now).
#[utoipa::path(get, path = "/v1/streams/{id}/path", tag = "viewers",
    params(("id" = StreamId, Path, description = "The stream"), PathQuery),
    responses(
        (status = 200, body = PlaybackPath), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "This node holds no broadcast of the stream", body = ErrorBody),
    ))]
async fn playback_path(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
) -> Response {
    let sid = match StreamId::parse(&id) {
        Ok(s) => s,
        Err(e) => return with_cors(error(StatusCode::BAD_REQUEST, "bad_stream", e.to_string())),
    };
    let explicit = match q.broadcast.as_deref().map(str::parse::<BroadcastId>) {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => {
            return with_cors(error(
                StatusCode::BAD_REQUEST,
                "bad_broadcast",
                e.to_string(),
            ));
        }
    };
    let info = crate::relay::info(&node, sid.as_str(), explicit.as_ref())
        .await
        .ok();
    let b = explicit.or_else(|| {
        info.as_ref()
            .and_then(|i| i.broadcast.as_ref().map(|b| b.id.clone()))
    });
    let stream = match &b {
        Some(b) => node.hub.get(sid.as_str(), b),
        None => node.hub.latest_ingest(sid.as_str()),
    };
    let Some(s) = stream else {
        return with_cors(error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("this node holds no broadcast of stream {sid} now: watch it here first"),
        ));
    };
    if s.is_private() {
        let vq = ViewQuery {
            token: q.token.clone(),
            ..Default::default()
        };
        if let Err(r) = may_watch(&node, sid.as_str(), &vq, &headers) {
            return with_cors(r);
        }
    }
    let e = s.edge();
    let mut upstreams = Vec::new();
    if !s.is_ingest()
        && let Ok(i) = crate::relay::info(&node, sid.as_str(), Some(&s.broadcast)).await
    {
        let probes = i
            .ingest
            .iter()
            .filter(|x| x.server_id.as_str() != node.cfg.id)
            .map(|x| {
                let url = x.urls.as_ref().and_then(|u| u.http.clone());
                let http = node.http.clone();
                async move {
                    match url {
                        Some(u) => http
                            .get(format!("{}/healthz", u.trim_end_matches('/')))
                            .timeout(Duration::from_millis(800))
                            .send()
                            .await
                            .is_ok_and(|r| r.status().is_success()),
                        None => false,
                    }
                }
            });
        let reachable = futures_util::future::join_all(probes).await;
        upstreams = i
            .ingest
            .iter()
            .filter(|x| x.server_id.as_str() != node.cfg.id)
            .zip(reachable)
            .map(|(x, ok)| proto::api::PathUpstream {
                server_id: x.server_id.clone(),
                role: x.role,
                city: x.city.clone(),
                reachable: ok,
                next_seq: x.next_seq,
            })
            .collect();
    }
    let body = proto::api::PlaybackPath {
        server_id: core::server_id(&node)
            .unwrap_or_else(|| proto::ServerId::parse("unknown").expect("literal")),
        stream: sid,
        broadcast: s.broadcast.clone(),
        source: if s.is_ingest() {
            StreamSource::Ingest
        } else {
            StreamSource::Relay
        },
        role: *s.role.lock().unwrap_or_else(|e| e.into_inner()),
        next_seq: e.next_seq,
        ended: e.ended,
        upstreams,
    };
    with_cors(axum::Json(body).into_response())
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The index page: the public streams held on this node, and a form to watch any stream.
#[utoipa::path(get, path = "/", tag = "viewers",
    responses((status = 200, description = "HTML", content_type = "text/html")))]
async fn index_page(State(node): State<Arc<Node>>) -> Response {
    let mut names = std::collections::BTreeMap::new();
    for s in node.hub.all() {
        if !s.is_private() && s.edge().ended.is_none() {
            names.insert(s.name.clone(), s.is_ingest());
        }
    }
    let id = core::server_id(&node)
        .map(|s| s.to_string())
        .unwrap_or_default();
    let mut list = String::new();
    for (n, ingest) in &names {
        let n = html_escape(n);
        list.push_str(&format!(
            "<li><a href=\"/watch/{n}\">{n}</a> ({})</li>\n",
            if *ingest {
                "ingested here"
            } else {
                "relayed here"
            }
        ));
    }
    if list.is_empty() {
        list.push_str("<li>none right now</li>\n");
    }
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>firstmile {id}</title><link rel=\"stylesheet\" href=\"/web/style.css\"></head>\
         <body><header><a href=\"/\">firstmile</a> entry server {id}</header><main>\
         <h2>Streams live here</h2><ul class=\"streams\">\n{list}</ul>\
         <h2>Watch a stream</h2><form action=\"/watch\" method=\"get\">\
         <input name=\"stream\" placeholder=\"stream id\" required> \
         <input name=\"token\" placeholder=\"playback token (private streams)\"> \
         <button>Watch</button></form>\
         <p class=\"hint\">Any entry server plays any stream: one it does not hold is relayed \
         from its ingest servers. HLS: <code>/hls/&lt;stream&gt;/index.m3u8</code> (LL-HLS), \
         <code>/hls/&lt;stream&gt;/classic.m3u8</code>; HTTP-FLV: \
         <code>/live/&lt;stream&gt;.flv</code>.</p></main></body></html>\n",
        id = html_escape(&id),
    );
    let mut r = Html(page).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Query of the watch form.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WatchQuery {
    /// The stream to watch.
    stream: Option<String>,
    /// A playback token (private streams).
    token: Option<String>,
}

/// The index page's form: redirects to `/watch/{stream}`.
#[utoipa::path(get, path = "/watch", tag = "viewers",
    params(WatchQuery),
    responses(
        (status = 303, description = "To /watch/{stream}"),
        (status = 400, body = ErrorBody),
    ))]
async fn watch_form(Query(q): Query<WatchQuery>) -> Response {
    let Some(Ok(sid)) = q.stream.as_deref().map(|s| StreamId::parse(s.trim())) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_stream",
            "?stream=<stream id> is needed: 1 to 128 characters from [A-Za-z0-9._-]",
        );
    };
    let mut to = format!("/watch/{sid}");
    if let Some(t) = q.token.as_deref().filter(|t| !t.is_empty()) {
        to.push_str("?token=");
        to.push_str(&crate::hls::encode_query(t));
    }
    (
        StatusCode::SEE_OTHER,
        [(
            header::LOCATION,
            HeaderValue::from_str(&to).unwrap_or(HeaderValue::from_static("/")),
        )],
    )
        .into_response()
}

/// The player page of a stream: LL-HLS with hls.js (served by this server, like every asset of
/// the page), native HLS where there is no MSE; shows the live delay and the node's ingest path.
/// `?mode=classic` plays the plain HLS playlist, `?token=` a private stream.
#[utoipa::path(get, path = "/watch/{id}", tag = "viewers",
    params(("id" = StreamId, Path, description = "The stream")),
    responses(
        (status = 200, description = "HTML", content_type = "text/html"),
        (status = 400, body = ErrorBody),
    ))]
async fn watch_page(Path(id): Path<String>) -> Response {
    if let Err(e) = StreamId::parse(&id) {
        return error(StatusCode::BAD_REQUEST, "bad_stream", e.to_string());
    }
    let mut r = Html(include_str!("../web/watch.html")).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// The page's assets, built into the binary: `hls.min.js` (hls.js, vendored from npm, Apache
/// 2.0: `hls.js-LICENSE`), `player.js`, `style.css`.
#[utoipa::path(get, path = "/web/{asset}", tag = "viewers",
    params(("asset" = String, Path, description = "hls.min.js, hls.js-LICENSE, player.js or style.css")),
    responses(
        (status = 200, description = "The asset"),
        (status = 404, body = ErrorBody),
    ))]
async fn web_asset(Path(asset): Path<String>) -> Response {
    let (body, ct): (&'static [u8], &'static str) = match asset.as_str() {
        "hls.min.js" => (
            include_bytes!("../web/vendor/hls.min.js"),
            "text/javascript; charset=utf-8",
        ),
        "hls.js-LICENSE" => (
            include_bytes!("../web/vendor/hls.js-LICENSE"),
            "text/plain; charset=utf-8",
        ),
        "player.js" => (
            include_bytes!("../web/player.js"),
            "text/javascript; charset=utf-8",
        ),
        "style.css" => (
            include_bytes!("../web/style.css"),
            "text/css; charset=utf-8",
        ),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{asset:?} is not an asset of the player page"),
            );
        }
    };
    (
        [
            (header::CONTENT_TYPE, ct),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "firstmile entry server",
        description = "Ingest (native over WebSocket, HTTP push; native TCP/TLS and RTMP on their own ports), viewers (chunked HTTP, WebSocket, HTTP-FLV), relay feeds between nodes. Types: the `proto::api` module (cargo doc).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&Security),
    tags(
        (name = "viewers", description = "Playback; private streams need ?token="),
        (name = "ingest", description = "Publishing with a token or a stream key"),
        (name = "relays", description = "Feeds between nodes"),
        (name = "devices", description = "Probes"),
        (name = "operations", description = "Health, readiness, metrics, the broadcasts held"),
    )
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "peer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A peer token the director signed (scp \"peer\"), or this server's own \
                         credential"
                            .to_string(),
                    ))
                    .build(),
            ),
        );
        for (name, schema) in proto::api::schemas() {
            c.schemas.entry(name).or_insert(schema);
        }
    }
}

fn routes() -> OpenApiRouter<Arc<Node>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(ws_ingest))
        .routes(routes!(list))
        .routes(routes!(live))
        .routes(routes!(live_ws))
        .routes(routes!(chunks))
        .routes(routes!(flv_head))
        .routes(routes!(http_flv))
        .routes(routes!(probe))
        .routes(routes!(push))
        .routes(routes!(hls_index))
        .routes(routes!(hls_classic))
        .routes(routes!(hls_media))
        .routes(routes!(playback_path))
        .routes(routes!(index_page))
        .routes(routes!(watch_form))
        .routes(routes!(watch_page))
        .routes(routes!(web_asset))
}

/// The entry server's OpenAPI 3.1 document (served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut api) = routes().split_for_parts();
    api.info.version = env!("CARGO_PKG_VERSION").into();
    for item in api.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post, &mut item.put]
            .into_iter()
            .flatten()
        {
            for (status, r) in op.responses.responses.iter_mut() {
                if let utoipa::openapi::RefOr::T(r) = r
                    && r.description.is_empty()
                {
                    r.description = status
                        .parse::<u16>()
                        .ok()
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("Response")
                        .to_string();
                }
            }
        }
    }
    api
}

pub fn router(node: Arc<Node>) -> Router {
    let doc = Arc::new(serde_json::to_string_pretty(&openapi()).unwrap_or_else(|_| "{}".into()));
    let (r, _) = routes().split_for_parts();
    r.route("/v1/streams/{id}/push", axum::routing::put(push))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move {
                    ([(header::CONTENT_TYPE, "application/json")], (*doc).clone()).into_response()
                }
            }),
        )
        .layer(axum::Extension(Arc::new(crate::hls::Hls::default())))
        .with_state(node)
}
