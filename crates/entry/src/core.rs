//! The ingest core: the rules every ingest protocol follows, written once.
//!
//! Native (TCP, TLS, WebSocket), RTMP and HTTP push differ only in their framing; admission,
//! opening a broadcast's log, session accounting, append-and-publish and END are here:
//!
//! - [`admit`]: the credential — the director's ingest token (signature, scope, expiry, this
//!   server, the stream, the role) or a stream key, which the director authorizes for this
//!   server ([`authorize_key`]: `POST /v1/entry-servers/{id}/publishes`, answered with the
//!   broadcast and role and a token) — then the server's state: draining, a full or failing
//!   disk, a broadcast the director superseded. The result is an [`Admission`]: stream,
//!   broadcast, role, privacy.
//! - [`open`]: the broadcast's log (`<data_dir>/<stream>/<broadcast>/`), created or recovered,
//!   registered in the hub. A session of one broadcast can never write into another's log: the
//!   broadcast comes from the signed token, not from the client.
//! - [`Session`]: counts the session for as long as it lives (node and broadcast), and releases
//!   it on drop, whatever path the protocol's code leaves by.
//! - [`append_next`] (server-numbered: RTMP, HTTP push) and the native session's numbered
//!   appends publish to viewers only what the log accepted; [`end`] writes END, syncs, and ends
//!   the broadcast for its viewers.
//!
//! **One error type**, [`IngestError`], says who is at fault and whether retrying helps; each
//! protocol maps it once: [`IngestError::native_code`] (the ERROR frame),
//! [`IngestError::rtmp_status`] (`NetStream.Publish.*`), [`IngestError::http_status`]. Adding a
//! protocol (SRT, WHIP) means writing its framing and calling these.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use chunklog::StreamLog;
use proto::api::{ErrorBody, PublishGrant, PublishRequest};
use proto::{BroadcastId, ErrorCode, Protocol, Role, ServerId, StreamId, StreamKey};

use crate::hub::{Chunk, Source, Stream};
use crate::node::Node;

/// Why an ingest is refused or ended (see the module docs for the mappings).
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("this entry server is draining: ask the director for another")]
    Draining,
    #[error("this entry server cannot store streams now ({0}): ask the director for another")]
    Storage(String),
    #[error(
        "no credential: publish with the director's token (?token=) or the stream's key (?key=)"
    )]
    NoCredential,
    #[error("token refused: {0}")]
    Token(token::TokenError),
    #[error("token is for stream {stream} at server {server} as {role}, not {want}")]
    Misdirected {
        stream: String,
        server: String,
        role: Role,
        want: String,
    },
    #[error("stream key refused: {0}")]
    Key(String),
    #[error("cannot ask the director about this stream key now ({0}): retry shortly")]
    DirectorUnavailable(String),
    #[error(
        "broadcast {0} of this stream was superseded (its owner went live again): ask the director"
    )]
    Superseded(BroadcastId),
    #[error("{0}")]
    Busy(String),
    #[error(
        "this broadcast ended here (final sequence number {0}): go live again for a new broadcast"
    )]
    Ended(u64),
    #[error("this server needs sequence {need} next but the client holds only {have} onward")]
    Resume { need: u64, have: u64 },
    #[error("{0}")]
    Protocol(String),
    #[error("log: {0}")]
    Log(String),
}

impl IngestError {
    /// The native protocol's ERROR code.
    pub fn native_code(&self) -> ErrorCode {
        match self {
            IngestError::Draining | IngestError::Storage(_) | IngestError::Superseded(_) => {
                ErrorCode::GoingAway
            }
            IngestError::NoCredential
            | IngestError::Token(_)
            | IngestError::Misdirected { .. }
            | IngestError::Key(_) => ErrorCode::Unauthorized,
            IngestError::Resume { .. } => ErrorCode::ResumeUnavailable,
            IngestError::Protocol(_) | IngestError::Busy(_) | IngestError::Ended(_) => {
                ErrorCode::Protocol
            }
            IngestError::DirectorUnavailable(_) | IngestError::Log(_) => ErrorCode::Internal,
        }
    }

    /// The RTMP `onStatus` code of a refused publish.
    pub fn rtmp_status(&self) -> &'static str {
        match self {
            IngestError::Busy(_) | IngestError::Ended(_) | IngestError::Superseded(_) => {
                "NetStream.Publish.BadName"
            }
            _ => "NetStream.Publish.Denied",
        }
    }

    /// The HTTP status of a refused push.
    pub fn http_status(&self) -> StatusCode {
        match self {
            IngestError::Draining
            | IngestError::Storage(_)
            | IngestError::DirectorUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            IngestError::NoCredential | IngestError::Token(_) => StatusCode::UNAUTHORIZED,
            IngestError::Misdirected { .. } | IngestError::Key(_) => StatusCode::FORBIDDEN,
            IngestError::Superseded(_) | IngestError::Busy(_) | IngestError::Ended(_) => {
                StatusCode::CONFLICT
            }
            IngestError::Resume { .. } | IngestError::Protocol(_) => StatusCode::BAD_REQUEST,
            IngestError::Log(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The machine-readable code of the HTTP error body.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::Draining => "draining",
            IngestError::Storage(_) => "storage_unavailable",
            IngestError::NoCredential => "unauthorized",
            IngestError::Token(_) | IngestError::Misdirected { .. } => "bad_token",
            IngestError::Key(_) => "wrong_stream_key",
            IngestError::DirectorUnavailable(_) => "director_unavailable",
            IngestError::Superseded(_) => "superseded",
            IngestError::Busy(_) => "busy",
            IngestError::Ended(_) => "ended",
            IngestError::Resume { .. } => "resume_unavailable",
            IngestError::Protocol(_) => "protocol",
            IngestError::Log(_) => "log",
        }
    }

    /// Counted as an authentication failure.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            IngestError::NoCredential
                | IngestError::Token(_)
                | IngestError::Misdirected { .. }
                | IngestError::Key(_)
        )
    }
}

/// What a publisher presented.
#[derive(Debug, Clone)]
pub enum Credential<'a> {
    /// The director's ingest token (assignment, or a grant).
    Token(&'a str),
    /// The stream's key (RTMP with a fixed server URL, HTTP push `?key=`).
    Key { stream: StreamId, key: StreamKey },
}

/// Who may publish what, here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub stream: StreamId,
    pub broadcast: BroadcastId,
    pub role: Role,
    pub private: bool,
    /// The token's expiry (Unix seconds).
    pub exp: u64,
}

/// What the protocol expects of a token.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expect<'a> {
    /// The stream the client names (None: take it from the token).
    pub stream: Option<&'a str>,
    /// The role the client names (native HELLO).
    pub role: Option<Role>,
    /// An expired token may continue a broadcast this server holds, not ended (encoders
    /// reconnect hours in with the URL they were given).
    pub continue_after_expiry: bool,
}

/// Check the server's state, then the credential (see the module docs).
pub async fn admit(
    node: &Arc<Node>,
    cred: Credential<'_>,
    expect: Expect<'_>,
    protocol: Protocol,
    peer: Option<IpAddr>,
) -> Result<Admission, IngestError> {
    if node.draining.load(Ordering::SeqCst) {
        return Err(IngestError::Draining);
    }
    if let Some(why) = node.storage_problem() {
        return Err(IngestError::Storage(why));
    }
    let r = match cred {
        Credential::Token("") => Err(IngestError::NoCredential),
        Credential::Token(t) => check_token(node, t, expect),
        Credential::Key { stream, key } => authorize_key(node, stream, key, protocol, peer).await,
    };
    let a = match r {
        Ok(a) => a,
        Err(e) => {
            if e.is_auth() {
                node.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            }
            return Err(e);
        }
    };
    if node.is_superseded(a.stream.as_str(), &a.broadcast) {
        return Err(IngestError::Superseded(a.broadcast));
    }
    Ok(a)
}

fn check_token(node: &Node, token: &str, expect: Expect<'_>) -> Result<Admission, IngestError> {
    let now = node.now_unix();
    // Signature, scope and claims first; expiry below (a held broadcast may continue).
    let c = node
        .verifier
        .verify_with_leeway(token, now, u64::MAX)
        .map_err(IngestError::Token)?;
    let want_stream = expect.stream.unwrap_or(c.stream.as_str());
    let role_ok = expect.role.is_none_or(|r| r == c.role);
    if c.stream.as_str() != want_stream || c.server.as_str() != node.cfg.id || !role_ok {
        return Err(IngestError::Misdirected {
            stream: c.stream.to_string(),
            server: c.server.to_string(),
            role: c.role,
            want: format!(
                "stream {want_stream} at server {}{}",
                node.cfg.id,
                expect.role.map(|r| format!(" as {r}")).unwrap_or_default()
            ),
        });
    }
    if now >= c.exp {
        let continues = expect.continue_after_expiry
            && node
                .hub
                .get_ingest(c.stream.as_str(), &c.broadcast)
                .is_some_and(|s| {
                    let e = s.edge();
                    e.next_seq > 0 && e.ended.is_none()
                });
        if !continues {
            return Err(IngestError::Token(token::TokenError::Expired {
                exp: c.exp,
                now,
            }));
        }
    }
    Ok(Admission {
        stream: c.stream,
        broadcast: c.broadcast,
        role: c.role,
        private: c.private,
        exp: c.exp,
    })
}

/// Ask the director whether `key` may publish `stream` here (see the module docs).
pub async fn authorize_key(
    node: &Arc<Node>,
    stream: StreamId,
    key: StreamKey,
    protocol: Protocol,
    peer: Option<IpAddr>,
) -> Result<Admission, IngestError> {
    let Some(dir) = &node.cfg.director else {
        return Err(IngestError::Key(
            "this server has no director to check stream keys with: publish with a token".into(),
        ));
    };
    let url = format!(
        "{}/v1/entry-servers/{}/publishes",
        dir.trim_end_matches('/'),
        node.cfg.id
    );
    let req = PublishRequest {
        stream,
        key,
        client_ip: peer.unwrap_or(IpAddr::from([0, 0, 0, 0])),
        protocol,
    };
    let resp = node
        .http
        .post(&url)
        .bearer_auth(&node.cfg.credential)
        .json(&req)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| IngestError::DirectorUnavailable(e.to_string()))?;
    let status = resp.status();
    if !status.is_success() {
        let body: Option<ErrorBody> = resp.json().await.ok();
        let why = body
            .map(|b| b.error)
            .unwrap_or_else(|| format!("the director answered {status}"));
        return Err(match status.as_u16() {
            401 | 403 => IngestError::Key(why),
            409 => IngestError::Busy(why),
            404 => IngestError::DirectorUnavailable(format!("{why} (this server re-registers)")),
            _ => IngestError::DirectorUnavailable(why),
        });
    }
    let g: PublishGrant = resp
        .json()
        .await
        .map_err(|e| IngestError::DirectorUnavailable(format!("the director's answer: {e}")))?;
    // The grant carries a token like an assignment's: check it as one (it binds this server).
    let a = check_token(
        node,
        &g.token,
        Expect {
            stream: Some(g.stream.as_str()),
            role: Some(g.role),
            continue_after_expiry: false,
        },
    )?;
    if a.broadcast != g.broadcast {
        return Err(IngestError::DirectorUnavailable(
            "the director's grant and its token disagree".into(),
        ));
    }
    Ok(a)
}

/// The directory of a stream's broadcast logs, and the log config for it.
pub fn log_config(node: &Node, stream: &str) -> chunklog::LogConfig {
    let mut c = node.log_config.clone();
    c.dir = node.log_config.dir.join(stream);
    c
}

/// Open (or recover) the admitted broadcast's log and register it as ingested here. Openings
/// are serialised per node, so two sessions racing for a new broadcast share one log.
/// `resume_from`: a server that joins a broadcast late (a replacement) starts where the client
/// can still supply data.
pub async fn open(
    node: &Arc<Node>,
    a: &Admission,
    resume_from: Option<u64>,
) -> Result<Arc<Stream>, IngestError> {
    let _one_at_a_time = node.opening.lock().await;
    if let Some(s) = node.hub.get_ingest(a.stream.as_str(), &a.broadcast) {
        if a.private {
            s.private.store(true, Ordering::Relaxed);
        }
        return Ok(s);
    }
    let cfg = log_config(node, a.stream.as_str());
    let b = a.broadcast.to_string();
    let log = tokio::task::spawn_blocking(move || -> Result<StreamLog, chunklog::LogError> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| chunklog::LogError::Io {
            op: "create directory",
            path: cfg.dir.clone(),
            source,
        })?;
        let mut log = StreamLog::open(&cfg, &b)?;
        if let Some(r) = resume_from
            && log.next_seq() == 0
            && log.ended().is_none()
            && r > 0
        {
            log.start_at(r)?;
        }
        Ok(log)
    })
    .await
    .map_err(|e| IngestError::Log(format!("log task failed: {e}")))?
    .map_err(|e| {
        node.note_storage_error(&e);
        IngestError::Log(e.to_string())
    })?;
    let s = Stream::new(
        a.stream.to_string(),
        a.broadcast.clone(),
        Source::Ingest(std::sync::Mutex::new(log)),
        node.cfg.tail_bytes,
    );
    s.private.store(a.private, Ordering::Relaxed);
    node.hub.insert_ingest(s.clone());
    Ok(s)
}

/// A publisher's session on a broadcast: counted while it lives.
#[derive(Debug)]
pub struct Session {
    node: Arc<Node>,
    stream: Arc<Stream>,
}

impl Session {
    /// Count a session of `stream` with `role`.
    pub fn start(node: &Arc<Node>, stream: &Arc<Stream>, role: Role) -> Self {
        node.metrics.sessions.fetch_add(1, Ordering::Relaxed);
        stream.live_sessions.fetch_add(1, Ordering::SeqCst);
        *stream.role.lock().unwrap_or_else(|e| e.into_inner()) = Some(role);
        stream
            .input_at_ms
            .store(crate::hub::mono_ms(), Ordering::Relaxed);
        stream.touch();
        Self {
            node: node.clone(),
            stream: stream.clone(),
        }
    }

    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.stream.live_sessions.fetch_sub(1, Ordering::SeqCst);
        self.node.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
        self.stream.touch();
    }
}

/// Server-numbered append (RTMP, HTTP push): each record gets the log's next sequence number;
/// what the log took is published to viewers.
pub async fn append_next(
    node: &Node,
    stream: &Arc<Stream>,
    records: Vec<chunklog::Record>,
) -> Result<usize, IngestError> {
    let n = records.len();
    let out = crate::logio::with_log(node, stream, move |log| {
        let mut chunks = Vec::with_capacity(records.len());
        for mut rec in records {
            rec.seq = log.next_seq();
            log.append(&rec)?;
            chunks.push(Chunk {
                seq: rec.seq,
                pts: rec.pts,
                flags: rec.flags,
                payload: rec.payload,
            });
        }
        Ok::<_, chunklog::LogError>(chunks)
    })
    .await
    .map_err(IngestError::Log)?;
    match out {
        Ok(chunks) => {
            node.metrics
                .chunks_in
                .fetch_add(chunks.len() as u64, Ordering::Relaxed);
            stream.publish(chunks);
            Ok(n)
        }
        Err(e) => {
            node.note_storage_error(&e);
            Err(IngestError::Log(e.to_string()))
        }
    }
}

/// END the broadcast at `final_seq` (None: after its last chunk), fsync, and end it for its
/// viewers. Returns the final sequence number, if the broadcast has any chunk.
pub async fn end(stream: &Arc<Stream>, final_seq: Option<u64>) -> Result<Option<u64>, IngestError> {
    let s = stream.clone();
    let r = tokio::task::spawn_blocking(move || {
        let Source::Ingest(log) = &s.source else {
            return Ok(None);
        };
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = log.ended() {
            return Ok(Some(f));
        }
        let f = match final_seq {
            Some(f) => f,
            None => match log.next_seq().checked_sub(1) {
                Some(f) => f,
                None => return Ok(None),
            },
        };
        log.end(f).and_then(|_| log.sync())?;
        Ok::<_, chunklog::LogError>(Some(f))
    })
    .await
    .map_err(|e| IngestError::Log(format!("log task failed: {e}")))?
    .map_err(|e| IngestError::Protocol(format!("END refused: {e}")))?;
    if let Some(f) = r {
        stream.end(f);
        stream.touch();
    }
    Ok(r)
}

/// The id this node registers as.
pub fn server_id(node: &Node) -> Option<ServerId> {
    node.cfg.id.parse().ok()
}
