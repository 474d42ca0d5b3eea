//! The director's HTTP/JSON API (`/v1`): parse, call the use case, serialize.
//!
//! **Shape.** Every handler parses its input (bodies as bytes through `serde_path_to_error`, so an
//! error names the field), calls one method of [`Director`] (the use cases live in
//! [`crate::assign`] and [`crate::broadcasts`], testable without HTTP), and serializes the
//! contract type it got back (`proto::api`). Every failure becomes an [`ApiError`]: a status, a
//! stable `code`, the `field` at fault and what is `accepted` ([`proto::api::ErrorBody`]).
//! Syntax errors are 400, well-formed but unacceptable values 422, oversized bodies 413, missing
//! credentials 401, wrong ones 403. A panic is caught and answered 500 (and is a bug).
//!
//! **OpenAPI.** The router is built with `utoipa_axum`: each route is registered together with
//! its `#[utoipa::path]` description, so the document served at `/openapi.json` ([`openapi`]) is
//! generated from the same code that routes, and its schemas from the contract's types. A test
//! compares it with the copy checked in beside this crate (`openapi.json`), and validates it as
//! OpenAPI 3.1.
//!
//! **What not.** No selection logic (that is `select`), no registry logic (`registry`), no
//! use-case logic (`assign`, `broadcasts`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use proto::api::{
    Assignment, AssignmentRequest, BroadcastList, ErrorBody, Heartbeat, HeartbeatAnswer, Liveness,
    LocationInput, PlaybackToken, PlaybackTokenRequest, ProbeTargets, PublishGrant, PublishRequest,
    RankedList, Readiness, ReadinessStatus, Registered, Registration, ServerList, ServerRecord,
    StreamCreate, StreamInfo, StreamKeyIssued, StreamList, StreamRecord, StreamUpdate,
};
use proto::{BroadcastId, Protocol, ServerId, StreamId, StreamKey};
use serde::de::DeserializeOwned;
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::assign::{AssignError, FieldError};
use crate::broadcasts::{AdminError, PlaybackAuth, PlaybackError};
pub use crate::clientip::{ClientIp, client_ip};
use crate::publish::PublishError;
use crate::registry::{Heartbeat as RegHeartbeat, Registration as RegRegistration, RegistryError};
use crate::state::Director;

/// Longest city name accepted at registration.
const MAX_CITY_LEN: usize = 100;
/// Longest URL accepted at registration.
const MAX_URL_LEN: usize = 512;

// ---------------------------------------------------------------------------------------------
// Errors

/// An error answer ([`ErrorBody`]), with its status and an optional `Retry-After`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody::new(code, message),
            retry_after_s: None,
        }
    }

    fn field(field: &str, message: impl Into<String>, accepted: Option<String>) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message);
        e.body.field = Some(field.to_string());
        e.body.accepted = accepted;
        e
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn unauthorized(what: &str) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            format!("missing or wrong credential: send Authorization: Bearer <{what}>"),
        )
    }

    fn retry_after(mut self, s: u64) -> Self {
        self.retry_after_s = Some(s.max(1));
        self
    }

    /// The machine-readable code.
    pub fn code(&self) -> &str {
        &self.body.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(self.body)).into_response();
        if let Some(s) = self.retry_after_s
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(RETRY_AFTER, v);
        }
        resp
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(_) => ApiError::not_found(e.to_string()),
            RegistryError::Full(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "registry_full",
                e.to_string(),
            ),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::field(&e.field, e.message, e.accepted)
    }
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> Self {
        let msg = e.to_string();
        match e {
            PublishError::StreamRequired(_) => ApiError::field("stream", msg, Some(
                "a stream id: 1 to 128 characters from [A-Za-z0-9._-], starting with a letter or digit".into(),
            )),
            PublishError::KeyRequired(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "stream_key_required", msg)
            }
            PublishError::WrongKey(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "wrong_stream_key", msg)
            }
            PublishError::Denied { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "publish_denied", msg)
            }
            PublishError::HookUnavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "publish_hook_unavailable", msg)
                    .retry_after(5)
            }
            PublishError::Continue(_) => {
                ApiError::new(StatusCode::CONFLICT, "broadcast_ended", msg)
            }
            PublishError::Join(_) => ApiError::new(StatusCode::CONFLICT, "stream_busy", msg),
            PublishError::Store(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", msg)
                    .retry_after(2)
            }
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        let msg = e.to_string();
        match e {
            AdminError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "exists", msg),
            AdminError::NotFound(_) => ApiError::not_found(msg),
            AdminError::Store(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", msg)
                    .retry_after(2)
            }
            AdminError::Invalid(f) => f.into(),
        }
    }
}

impl From<PlaybackError> for ApiError {
    fn from(e: PlaybackError) -> Self {
        let msg = e.to_string();
        match e {
            PlaybackError::NotFound(_) => ApiError::not_found(msg),
            PlaybackError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", msg),
            PlaybackError::Invalid(f) => f.into(),
            PlaybackError::Store(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", msg)
                    .retry_after(2)
            }
        }
    }
}

/// What a field accepts, for error messages.
fn accepted_for(field: &str, d: &Director) -> Option<String> {
    let top = field.split(['.', '[']).next().unwrap_or(field);
    Some(match top {
        "stream" => proto::ids::NAME_ACCEPTED.replace("64", "128"),
        "location" => proto::api::place::LOCATION_ACCEPTED.into(),
        "protocol" | "urls" => "native, websocket, rtmp, http".into(),
        "bitrate_kbps" => format!(
            "an integer from 1 to {} (kbit/s)",
            d.config().max_bitrate_kbps
        ),
        "id" | "pop" | "server_id" | "broadcast" => proto::ids::NAME_ACCEPTED.into(),
        "key" => proto::KEY_ACCEPTED.into(),
        "role" | "replace" => "primary, backup".into(),
        "state" => "ready, draining".into(),
        "disk" => "ok, full, failing".into(),
        _ => return None,
    })
}

/// Parse a JSON body into `T`, naming the field at fault.
fn parse_json<T: DeserializeOwned>(
    d: &Director,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "request body is larger than {} bytes",
                    d.config().http.body_limit_bytes
                ),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", rej.body_text())
        }
    })?;
    let mut de = serde_json::Deserializer::from_slice(&body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| json_error(d, e))?;
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("malformed JSON: {e}"),
        )
    })?;
    Ok(value)
}

fn json_error(d: &Director, e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("malformed JSON: {inner}"),
        ),
        _ => {
            if path == "." {
                let mut e = ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    format!("request body: {inner}"),
                );
                e.body.accepted = Some("a JSON object as described in /openapi.json".into());
                e
            } else {
                // Unknown fields are reported at the parent's path; the message names the key.
                let accepted = accepted_for(&path, d);
                ApiError::field(&path, format!("{path}: {inner}"), accepted)
            }
        }
    }
}

fn path_id<T: std::str::FromStr>(
    path: Result<Path<String>, PathRejection>,
    what: &str,
) -> Result<T, ApiError> {
    let Path(id) =
        path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text()))?;
    id.parse::<T>()
        .map_err(|_| ApiError::not_found(format!("no {what} has that id")))
}

fn path_two(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    let Path(p) =
        path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text()))?;
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// Credentials

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

fn bearer_ok(headers: &HeaderMap, secret: &str) -> bool {
    bearer(headers).is_some_and(|t| constant_time_eq(t.as_bytes(), secret.as_bytes()))
}

/// The request carries the credential of entry server `id` itself (see `token::entry_credential`):
/// a credential of another server is refused, so one leaked credential acts for one server only.
fn require_entry(d: &Director, headers: &HeaderMap, id: &str, what: &str) -> Result<(), ApiError> {
    match bearer(headers).and_then(|b| token::check_entry_credential(&d.config().auth.entry_key, b))
    {
        Some(s) if s.as_str() == id => Ok(()),
        Some(s) => {
            tracing::warn!(call = what, credential = %s, server = id, "entry-server call with another server's credential");
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("this credential belongs to entry server {s}, not {id}"),
            ))
        }
        None => {
            tracing::warn!(
                call = what,
                server = id,
                "entry-server call with a bad or missing credential"
            );
            Err(ApiError::unauthorized("the entry server's own credential"))
        }
    }
}

/// The entry server a request's credential proves, if any.
fn entry_credential_id(d: &Director, headers: &HeaderMap) -> Option<ServerId> {
    bearer(headers).and_then(|b| token::check_entry_credential(&d.config().auth.entry_key, b))
}

pub(crate) fn require_admin(d: &Director, headers: &HeaderMap) -> Result<(), ApiError> {
    if bearer_ok(headers, &d.config().auth.admin_token) {
        Ok(())
    } else {
        tracing::warn!("admin call with a bad or missing admin credential");
        Err(ApiError::unauthorized("admin token"))
    }
}

fn rate_limit(d: &Director, ip: ClientIp) -> Result<(), ApiError> {
    let key = ip.0.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    d.inner.limiter.check(key, Instant::now()).map_err(|wait| {
        d.inner.metrics.assignment("rate_limited");
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests from {key}: retry after {secs} s"),
        )
        .retry_after(secs)
    })
}

// ---------------------------------------------------------------------------------------------
// Devices

/// Ask for a primary and a backup entry server for a stream.
///
/// Starts a broadcast of the stream (or continues the one named in `broadcast`); needs the
/// stream's key unless `open` mode creates the stream with this request.
#[utoipa::path(post, path = "/v1/assignments", tag = "devices",
    request_body = AssignmentRequest,
    responses(
        (status = 200, description = "Primary and backup, each with a token", body = Assignment),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "The stream has a key and none was sent", body = ErrorBody),
        (status = 403, description = "Wrong key, or denied by the platform's hook", body = ErrorBody),
        (status = 409, description = "`broadcast` ended, or both paths taken", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "A field is not acceptable", body = ErrorBody),
        (status = 429, description = "Rate limited (Retry-After)", body = ErrorBody),
        (status = 503, description = "No entry server can take the stream, or the hook is down (Retry-After)", body = ErrorBody),
    ))]
async fn assign(
    State(d): State<Director>,
    ip: ClientIp,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Assignment>, ApiError> {
    rate_limit(&d, ip)?;
    let req: AssignmentRequest = parse_json(&d, body).inspect_err(|_| {
        d.inner.metrics.assignment("invalid");
    })?;
    match d.assign(req, ip.0).await {
        Ok(a) => Ok(Json(a)),
        Err(e) => {
            let (outcome, err): (&'static str, ApiError) = match e {
                AssignError::Invalid(f) => ("invalid", f.into()),
                AssignError::NoServer(s) => (
                    "no_server",
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no_entry_server",
                        s.to_string(),
                    )
                    .retry_after(d.config().heartbeat.interval_ms.div_ceil(1000)),
                ),
                AssignError::Publish(p) => ("refused", p.into()),
            };
            d.inner.metrics.assignment(outcome);
            Err(err)
        }
    }
}

fn query_location(q: &HashMap<String, String>) -> Result<Option<LocationInput>, ApiError> {
    match q.get("location") {
        None => Ok(None),
        Some(s) => serde_json::from_value::<LocationInput>(serde_json::Value::String(s.clone()))
            .map(Some)
            .map_err(|e| {
                ApiError::field(
                    "location",
                    format!("location: {e}"),
                    Some(proto::api::place::LOCATION_ACCEPTED.into()),
                )
            }),
    }
}

fn query_common(
    d: &Director,
    q: &HashMap<String, String>,
    allowed: &[&str],
) -> Result<(Protocol, u32), ApiError> {
    for k in q.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::field(
                k.chars().take(40).collect::<String>().as_str(),
                "unknown query parameter",
                Some(allowed.join(", ")),
            ));
        }
    }
    let protocol = match q.get("protocol") {
        None => Protocol::Native,
        Some(p) => p
            .parse::<Protocol>()
            .map_err(|e| ApiError::field("protocol", e.to_string(), accepted_for("protocol", d)))?,
    };
    let bitrate_kbps = match q.get("bitrate_kbps") {
        None => d.bitrate(None)?,
        Some(b) => d.bitrate(Some(b.parse::<u64>().map_err(|_| {
            ApiError::field(
                "bitrate_kbps",
                "bitrate_kbps: not an integer",
                accepted_for("bitrate_kbps", d),
            )
        })?))?,
    };
    Ok((protocol, bitrate_kbps))
}

/// The ranked list of entry servers for a place or the caller's IP (like Twitch's ingest list).
#[utoipa::path(get, path = "/v1/entry-servers", tag = "devices",
    params(
        ("location" = Option<String>, Query, description = "A place as typed, or \"lat,lon\"; default: the caller's IP location"),
        ("protocol" = Option<Protocol>, Query, description = "Default native"),
        ("bitrate_kbps" = Option<u32>, Query, description = "Default: the director's"),
        ("limit" = Option<u32>, Query, description = "1 to limits.max_ranked, default 10"),
    ),
    responses(
        (status = 200, body = RankedList),
        (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody),
    ))]
async fn ranked(
    State(d): State<Director>,
    ip: ClientIp,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<RankedList>, ApiError> {
    rate_limit(&d, ip)?;
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let (protocol, bitrate_kbps) =
        query_common(&d, &q, &["location", "protocol", "bitrate_kbps", "limit"])?;
    let max = d.config().limits.max_ranked;
    let limit = match q.get("limit") {
        None => 10.min(max),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| {
                ApiError::field(
                    "limit",
                    "limit: out of range",
                    Some(format!("an integer from 1 to {max}")),
                )
            })?,
    };
    let loc = query_location(&q)?;
    Ok(Json(d.ranked_list(
        loc.as_ref(),
        protocol,
        bitrate_kbps,
        limit,
        ip.0,
    )?))
}

/// Entry servers a device should probe (RTT, several samples) before asking for an assignment.
///
/// The best candidates, best first, from the typed location (for the primary) and from the IP
/// location (for the backup), by today's estimate and what this director learned of the
/// caller's network. Send the results as `probes` with the assignment request.
#[utoipa::path(get, path = "/v1/probe-targets", tag = "devices",
    params(
        ("location" = Option<String>, Query, description = "A place as typed, or \"lat,lon\""),
        ("protocol" = Option<Protocol>, Query, description = "Default native"),
        ("bitrate_kbps" = Option<u32>, Query, description = "Default: the director's"),
    ),
    responses(
        (status = 200, body = ProbeTargets),
        (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody),
    ))]
async fn probe_targets(
    State(d): State<Director>,
    ip: ClientIp,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<ProbeTargets>, ApiError> {
    rate_limit(&d, ip)?;
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let (protocol, bitrate_kbps) = query_common(&d, &q, &["location", "protocol", "bitrate_kbps"])?;
    let loc = query_location(&q)?;
    Ok(Json(d.probe_targets(
        loc.as_ref(),
        protocol,
        bitrate_kbps,
        ip.0,
        5,
        5,
    )?))
}

/// Where a stream's current (or last) broadcast is ingested: what relays pull and players ask.
#[utoipa::path(get, path = "/v1/streams/{id}", tag = "viewers",
    params(("id" = StreamId, Path, description = "The stream")),
    responses(
        (status = 200, body = StreamInfo),
        (status = 404, description = "No such stream", body = ErrorBody),
    ))]
async fn stream_info(
    State(d): State<Director>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<StreamInfo>, ApiError> {
    let id: StreamId = path_id(path, "stream")?;
    d.stream_info(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("stream {id} is unknown")))
}

/// The recent broadcasts of a stream, newest first (catch-up by broadcast id).
#[utoipa::path(get, path = "/v1/streams/{id}/broadcasts", tag = "viewers",
    params(("id" = StreamId, Path, description = "The stream")),
    responses(
        (status = 200, body = BroadcastList),
        (status = 404, body = ErrorBody),
    ))]
async fn broadcasts(
    State(d): State<Director>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<BroadcastList>, ApiError> {
    let id: StreamId = path_id(path, "stream")?;
    d.broadcasts(&id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("stream {id} is unknown")))
}

/// Where one broadcast (current or past) of a stream was ingested.
#[utoipa::path(get, path = "/v1/streams/{id}/broadcasts/{broadcast}", tag = "viewers",
    params(
        ("id" = StreamId, Path, description = "The stream"),
        ("broadcast" = BroadcastId, Path, description = "The broadcast"),
    ),
    responses(
        (status = 200, body = StreamInfo),
        (status = 404, body = ErrorBody),
    ))]
async fn broadcast_info(
    State(d): State<Director>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<StreamInfo>, ApiError> {
    let (s, b) = path_two(path)?;
    let (Ok(s), Ok(b)) = (s.parse::<StreamId>(), b.parse::<BroadcastId>()) else {
        return Err(ApiError::not_found("no such stream or broadcast"));
    };
    d.broadcast_info(&s, &b)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("stream {s} has no broadcast {b}")))
}

/// A playback token for a private stream.
///
/// Authorization: `Bearer <the stream's key>` (the publisher) or `Bearer <admin token>` (the
/// platform's backend, which decides who may watch).
#[utoipa::path(post, path = "/v1/streams/{id}/playback-tokens", tag = "viewers",
    params(("id" = StreamId, Path, description = "The stream")),
    request_body = PlaybackTokenRequest,
    security(("stream_key" = []), ("admin" = [])),
    responses(
        (status = 200, body = PlaybackToken),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn playback_token(
    State(d): State<Director>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PlaybackToken>, ApiError> {
    let id: StreamId = path_id(path, "stream")?;
    let body = body.unwrap_or_default();
    let req: PlaybackTokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PlaybackTokenRequest::default()
    } else {
        parse_json(&d, Ok(body))?
    };
    let auth = if bearer_ok(&headers, &d.config().auth.admin_token) {
        PlaybackAuth::Admin
    } else {
        match bearer(&headers).map(StreamKey::parse) {
            Some(Ok(k)) => {
                return Ok(Json(
                    d.playback_token(&id, PlaybackAuth::Key(&k), req.ttl_s)
                        .await?,
                ));
            }
            _ => {
                return Err(ApiError::unauthorized(
                    "the stream's key or the admin token",
                ));
            }
        }
    };
    Ok(Json(d.playback_token(&id, auth, req.ttl_s).await?))
}

// ---------------------------------------------------------------------------------------------
// Entry servers

fn check_text(field: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(ApiError::field(
            field,
            format!("{field}: too long or contains control characters"),
            Some(format!("at most {max} printable characters")),
        ));
    }
    Ok(())
}

fn check_number(field: &str, v: f64, min: f64, max: f64) -> Result<(), ApiError> {
    if v.is_finite() && (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!("{field}: {v} is out of range"),
            Some(format!("a number from {min} to {max}")),
        ))
    }
}

/// An entry server joins the fleet (or re-registers).
#[utoipa::path(post, path = "/v1/entry-servers", tag = "entry servers",
    request_body = Registration,
    security(("entry_server" = [])),
    responses(
        (status = 200, body = Registered),
        (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 503, description = "The registry is full", body = ErrorBody),
    ))]
async fn register(
    State(d): State<Director>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Registered>, ApiError> {
    if entry_credential_id(&d, &headers).is_none() {
        return Err(ApiError::unauthorized("the entry server's own credential"));
    }
    let r: Registration = parse_json(&d, body)?;
    require_entry(&d, &headers, r.id.as_str(), "register")?;
    if let Some(c) = &r.city {
        check_text("city", c, MAX_CITY_LEN)?;
    }
    let loc = crate::convert::typed(&r.location, true)
        .map_err(|e| {
            ApiError::field(
                "location",
                format!("location: {e}"),
                accepted_for("location", &d),
            )
        })?
        .ok_or_else(|| {
            ApiError::field(
                "location",
                "location: required",
                accepted_for("location", &d),
            )
        })?;
    let (location, label) = match &loc {
        proto::api::TypedLocation::Resolved {
            location, label, ..
        } => (*location, label.clone()),
        proto::api::TypedLocation::Coordinates { location } => (
            *location,
            format!("{:.4},{:.4}", location.lat, location.lon),
        ),
        proto::api::TypedLocation::Unknown { reason, .. } => {
            return Err(ApiError::field("location", reason.clone(), None));
        }
    };
    if r.capacity.streams == 0 {
        return Err(ApiError::field(
            "capacity.streams",
            "capacity.streams: must be at least 1",
            Some("an integer from 1 to 4294967295".into()),
        ));
    }
    check_number("capacity.mbps", r.capacity.mbps, 0.001, 10_000_000.0)?;
    let protocols = r.urls.protocols();
    if protocols.is_empty() {
        return Err(ApiError::field(
            "urls",
            "urls: at least one protocol's URL is required",
            accepted_for("urls", &d),
        ));
    }
    let mut urls = std::collections::BTreeMap::new();
    for p in &protocols {
        let u = r.urls.get(*p).unwrap_or_default();
        let field = format!("urls.{p}");
        check_text(&field, u, MAX_URL_LEN)?;
        if !u.contains("://") || u.chars().any(char::is_whitespace) {
            return Err(ApiError::field(
                &field,
                format!("{field}: not a URL"),
                Some("scheme://host:port/path, without spaces".into()),
            ));
        }
        urls.insert(p.as_str().to_string(), u.to_string());
    }
    let reg = RegRegistration {
        id: r.id.to_string(),
        pop: r.pop.to_string(),
        city: r.city.unwrap_or(label),
        location: crate::convert::location(location).ok_or_else(|| {
            ApiError::field(
                "location",
                "location: out of range",
                accepted_for("location", &d),
            )
        })?,
        capacity: select::Capacity {
            streams: r.capacity.streams,
            mbps: r.capacity.mbps,
        },
        protocols,
        urls,
    };
    d.registry().register(reg, Instant::now())?;
    tracing::info!(server = %r.id, "entry server registered");
    let hb = &d.config().heartbeat;
    let (peer_token, peer_token_expires_at) = d.peer_token(&r.id);
    Ok(Json(Registered {
        heartbeat_interval_ms: hb.interval_ms,
        missed_heartbeats_allowed: hb.missed_allowed,
        peer_token,
        peer_token_expires_at,
    }))
}

/// An entry server's heartbeat: load, state, broadcasts held, path measurements.
///
/// The answer lists broadcasts the server must end (superseded by the owner's next go-live, or
/// revoked). 404: the director does not know the server; it registers again.
#[utoipa::path(put, path = "/v1/entry-servers/{id}/heartbeat", tag = "entry servers",
    params(("id" = ServerId, Path, description = "The server")),
    request_body = Heartbeat,
    security(("entry_server" = [])),
    responses(
        (status = 200, body = HeartbeatAnswer),
        (status = 401, body = ErrorBody),
        (status = 404, description = "Unknown server: register again", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
async fn heartbeat(
    State(d): State<Director>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    let id = match &path {
        Ok(Path(id)) => id.clone(),
        Err(_) => String::new(),
    };
    if let Err(e) = require_entry(&d, &headers, &id, "heartbeat") {
        d.inner.metrics.heartbeat("unauthorized");
        return Err(e);
    }
    let result = heartbeat_inner(&d, path, body).await;
    match &result {
        Ok(_) => d.inner.metrics.heartbeat("ok"),
        Err(e) if e.status == StatusCode::NOT_FOUND => d.inner.metrics.heartbeat("unknown_server"),
        Err(_) => d.inner.metrics.heartbeat("invalid"),
    }
    result
}

async fn heartbeat_inner(
    d: &Director,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<HeartbeatAnswer>, ApiError> {
    let id: ServerId = path_id(path, "entry server")?;
    let hb: Heartbeat = parse_json(d, body)?;
    check_number("load.mbps", hb.load.mbps, 0.0, 1e9)?;
    check_number("load.cpu", hb.load.cpu, 0.0, 1.0)?;
    let limits = &d.config().limits;
    if hb.streams.len() > limits.max_streams_per_heartbeat {
        return Err(ApiError::field(
            "streams",
            format!("streams: {} reports, too many", hb.streams.len()),
            Some(format!("at most {}", limits.max_streams_per_heartbeat)),
        ));
    }
    let streams = hb
        .streams
        .iter()
        .map(|s| crate::registry::StreamReport {
            stream: s.stream.to_string(),
            broadcast: s.broadcast.to_string(),
            role: s.role,
            next_seq: s.next_seq,
            live: s.live,
            ended: s.ended,
        })
        .collect();
    d.registry().heartbeat(
        id.as_str(),
        RegHeartbeat {
            load: select::Load {
                streams: hb.load.streams,
                mbps: hb.load.mbps,
                cpu: hb.load.cpu,
            },
            state: match hb.state {
                proto::api::ServerState::Ready => crate::registry::ServerState::Ready,
                proto::api::ServerState::Draining => crate::registry::ServerState::Draining,
            },
            // A server that says its disk is not ok is not assigned, whatever state it reports.
            disk: hb.disk,
            streams,
        },
        Instant::now(),
    )?;
    let superseded = d.observe_reports(&id, &hb.streams).await;
    let mut ms = hb.measurements;
    let max = d.config().learning.max_measurements_per_heartbeat;
    if ms.len() > max {
        tracing::debug!(server = %id, dropped = ms.len() - max, "measurements over the per-heartbeat limit dropped");
        ms.truncate(max);
    }
    if !ms.is_empty() {
        d.learn(id.as_str(), ms);
    }
    let (peer_token, peer_token_expires_at) = if hb.want_peer_token {
        let (t, e) = d.peer_token(&id);
        (Some(t), Some(e))
    } else {
        (None, None)
    };
    Ok(Json(HeartbeatAnswer {
        superseded,
        peer_token,
        peer_token_expires_at,
    }))
}

/// An entry server leaves the fleet.
#[utoipa::path(delete, path = "/v1/entry-servers/{id}", tag = "entry servers",
    params(("id" = ServerId, Path, description = "The server")),
    security(("entry_server" = [])),
    responses(
        (status = 204, description = "Deregistered"),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
async fn deregister(
    State(d): State<Director>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id: ServerId = path_id(path, "entry server")?;
    require_entry(&d, &headers, id.as_str(), "deregister")?;
    d.registry().deregister(id.as_str())?;
    tracing::info!(server = %id, "entry server deregistered");
    Ok(StatusCode::NO_CONTENT)
}

/// An encoder at this entry server presented a stream key (RTMP, HTTP push): may it publish,
/// as which broadcast and role?
#[utoipa::path(post, path = "/v1/entry-servers/{id}/publishes", tag = "entry servers",
    params(("id" = ServerId, Path, description = "The entry server the encoder reached")),
    request_body = PublishRequest,
    security(("entry_server" = [])),
    responses(
        (status = 200, body = PublishGrant),
        (status = 401, body = ErrorBody),
        (status = 403, description = "Wrong key, not provisioned, or denied by the platform", body = ErrorBody),
        (status = 409, description = "Live on two other servers already", body = ErrorBody),
        (status = 503, body = ErrorBody),
    ))]
async fn publish(
    State(d): State<Director>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PublishGrant>, ApiError> {
    let id: ServerId = path_id(path, "entry server")?;
    require_entry(&d, &headers, id.as_str(), "publish")?;
    if d.registry().server(id.as_str(), Instant::now()).is_none() {
        return Err(ApiError::not_found(format!(
            "entry server {id} is not registered: register first"
        )));
    }
    let req: PublishRequest = parse_json(&d, body)?;
    let r = d.authorize_publish(&id, req).await;
    d.inner.metrics.assignment(if r.is_ok() {
        "key_publish"
    } else {
        "key_publish_refused"
    });
    Ok(Json(r?))
}

// ---------------------------------------------------------------------------------------------
// Admin

fn server_record(r: crate::registry::ServerRecord) -> ServerRecord {
    let reg = r.registration;
    let mut urls = proto::api::Urls::default();
    for (p, u) in &reg.urls {
        if let Ok(p) = p.parse::<Protocol>() {
            urls.set(p, Some(u.clone()));
        }
    }
    ServerRecord {
        id: crate::assign::server_id(&reg.id),
        pop: crate::assign::pop_id(&reg.pop),
        city: reg.city,
        location: crate::convert::point(reg.location),
        capacity: proto::api::Capacity {
            streams: reg.capacity.streams,
            mbps: reg.capacity.mbps,
        },
        urls,
        load: proto::api::Load {
            streams: r.load.streams,
            mbps: r.load.mbps,
            cpu: r.load.cpu,
        },
        state: match r.state {
            crate::registry::ServerState::Ready => proto::api::ServerState::Ready,
            crate::registry::ServerState::Draining => proto::api::ServerState::Draining,
        },
        disk: r.disk,
        health: match r.health {
            select::Health::Healthy => proto::api::Health::Healthy,
            select::Health::Unhealthy => proto::api::Health::Unhealthy,
        },
        admin_drained: r.admin_drained,
        heartbeats: r.heartbeats,
        last_heartbeat_age_ms: r.last_heartbeat_age_ms,
        streams: u32::try_from(r.streams).unwrap_or(u32::MAX),
    }
}

/// Every registered entry server.
#[utoipa::path(get, path = "/v1/admin/entry-servers", tag = "admin",
    security(("admin" = [])),
    responses((status = 200, body = ServerList), (status = 401, body = ErrorBody)))]
async fn admin_list(
    State(d): State<Director>,
    headers: HeaderMap,
) -> Result<Json<ServerList>, ApiError> {
    require_admin(&d, &headers)?;
    Ok(Json(ServerList {
        entry_servers: admin_servers(&d),
    }))
}

/// Every registered entry server, as the admin API shows them.
pub(crate) fn admin_servers(d: &Director) -> Vec<ServerRecord> {
    d.registry()
        .servers(Instant::now())
        .into_iter()
        .map(server_record)
        .collect()
}

/// Drain an entry server: no new streams; existing ones continue.
#[utoipa::path(post, path = "/v1/admin/entry-servers/{id}/drain", tag = "admin",
    params(("id" = ServerId, Path, description = "The server")),
    security(("admin" = [])),
    responses((status = 200, body = ServerRecord), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn admin_drain(
    State(d): State<Director>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ServerRecord>, ApiError> {
    set_drain(d, headers, path, true)
}

/// Undo a drain.
#[utoipa::path(post, path = "/v1/admin/entry-servers/{id}/undrain", tag = "admin",
    params(("id" = ServerId, Path, description = "The server")),
    security(("admin" = [])),
    responses((status = 200, body = ServerRecord), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn admin_undrain(
    State(d): State<Director>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ServerRecord>, ApiError> {
    set_drain(d, headers, path, false)
}

fn set_drain(
    d: Director,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    drained: bool,
) -> Result<Json<ServerRecord>, ApiError> {
    require_admin(&d, &headers)?;
    let id: ServerId = path_id(path, "entry server")?;
    let rec = d.registry().set_admin_drain(id.as_str(), drained)?;
    tracing::info!(server = %id, drained, "operator drain changed");
    Ok(Json(server_record(rec)))
}

/// Provision a stream and its key (the key is in this answer only).
#[utoipa::path(post, path = "/v1/admin/streams", tag = "admin",
    request_body = StreamCreate,
    security(("admin" = [])),
    responses(
        (status = 200, body = StreamKeyIssued),
        (status = 401, body = ErrorBody),
        (status = 409, description = "The stream exists", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
async fn admin_create_stream(
    State(d): State<Director>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<StreamKeyIssued>, ApiError> {
    require_admin(&d, &headers)?;
    let req: StreamCreate = parse_json(&d, body)?;
    Ok(Json(d.create_stream(req).await?))
}

/// The streams, by id, a page at a time (never their keys).
#[utoipa::path(get, path = "/v1/admin/streams", tag = "admin",
    params(
        ("after" = Option<StreamId>, Query, description = "List streams after this id"),
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100"),
    ),
    security(("admin" = [])),
    responses((status = 200, body = StreamList), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn admin_list_streams(
    State(d): State<Director>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<StreamList>, ApiError> {
    require_admin(&d, &headers)?;
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let after = match q.get("after") {
        Some(a) => Some(
            a.parse::<StreamId>()
                .map_err(|e| ApiError::field("after", e.to_string(), accepted_for("stream", &d)))?,
        ),
        None => None,
    };
    let limit = match q.get("limit") {
        None => 100,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| {
                ApiError::field("limit", "limit: out of range", Some("1 to 1000".into()))
            })?,
    };
    Ok(Json(d.list_streams(after.as_ref(), limit).await?))
}

/// One stream (never its key).
#[utoipa::path(get, path = "/v1/admin/streams/{id}", tag = "admin",
    params(("id" = StreamId, Path, description = "The stream")),
    security(("admin" = [])),
    responses((status = 200, body = StreamRecord), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn admin_get_stream(
    State(d): State<Director>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<StreamRecord>, ApiError> {
    require_admin(&d, &headers)?;
    let id: StreamId = path_id(path, "stream")?;
    Ok(Json(d.stream_record(&id).await?))
}

/// Change a stream's settings (private playback).
#[utoipa::path(patch, path = "/v1/admin/streams/{id}", tag = "admin",
    params(("id" = StreamId, Path, description = "The stream")),
    request_body = StreamUpdate,
    security(("admin" = [])),
    responses((status = 200, body = StreamRecord), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn admin_update_stream(
    State(d): State<Director>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<StreamRecord>, ApiError> {
    require_admin(&d, &headers)?;
    let id: StreamId = path_id(path, "stream")?;
    let u: StreamUpdate = parse_json(&d, body)?;
    Ok(Json(d.update_stream(&id, u).await?))
}

/// Revoke a stream: its key stops working, its live broadcast is ended, its id is free.
#[utoipa::path(delete, path = "/v1/admin/streams/{id}", tag = "admin",
    params(("id" = StreamId, Path, description = "The stream")),
    security(("admin" = [])),
    responses((status = 204, description = "Revoked"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn admin_revoke_stream(
    State(d): State<Director>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    require_admin(&d, &headers)?;
    let id: StreamId = path_id(path, "stream")?;
    d.revoke_stream(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new key for a stream (the old one stops working at once).
#[utoipa::path(post, path = "/v1/admin/streams/{id}/rotate-key", tag = "admin",
    params(("id" = StreamId, Path, description = "The stream")),
    security(("admin" = [])),
    responses((status = 200, body = StreamKeyIssued), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn admin_rotate_key(
    State(d): State<Director>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<StreamKeyIssued>, ApiError> {
    require_admin(&d, &headers)?;
    let id: StreamId = path_id(path, "stream")?;
    Ok(Json(d.rotate_key(&id).await?))
}

// ---------------------------------------------------------------------------------------------
// Operations

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, body = Liveness)))]
async fn healthz() -> Json<Liveness> {
    Json(Liveness {
        status: "ok".into(),
    })
}

/// Readiness.
///
/// Ready when upkeep runs and the registry's view has been loaded. A director whose shared
/// registry (etcd) is unreachable stays ready (200) with `"status": "degraded"`: its last
/// snapshot still assigns well, and taking every director out of a load balancer at once because
/// etcd is down would turn a degraded fleet view into no service at all.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
async fn readyz(State(d): State<Director>) -> Response {
    let snap = d.snapshot();
    let reg = d.registry().status();
    d.inner
        .metrics
        .registry_degraded
        .set(i64::from(reg.degraded));
    let mut b = Readiness {
        status: ReadinessStatus::Ready,
        reason: None,
        registered_entry_servers: u32::try_from(snap.fleet.len()).unwrap_or(u32::MAX),
        healthy_entry_servers: u32::try_from(snap.healthy).unwrap_or(u32::MAX),
        registry: (reg.backend != "memory").then(|| proto::api::RegistryStatus {
            backend: reg.backend.to_string(),
            synced: reg.synced,
            degraded: reg.degraded,
            detail: reg.detail.clone(),
            writes: reg.writes,
        }),
    };
    if !d.upkeep_fresh(Instant::now()) {
        b.status = ReadinessStatus::NotReady;
        b.reason = Some(
            "the upkeep task (heartbeat expiry, snapshot refresh) has not run recently".into(),
        );
        (StatusCode::SERVICE_UNAVAILABLE, Json(b)).into_response()
    } else if !reg.synced {
        b.status = ReadinessStatus::NotReady;
        b.reason = Some("the fleet view has not been loaded from the shared registry yet".into());
        (StatusCode::SERVICE_UNAVAILABLE, Json(b)).into_response()
    } else if !d.inner.streams.complete() {
        b.status = ReadinessStatus::NotReady;
        b.reason = Some("the stream documents have not been loaded from etcd yet".into());
        (StatusCode::SERVICE_UNAVAILABLE, Json(b)).into_response()
    } else {
        if reg.degraded {
            b.status = ReadinessStatus::Degraded;
            b.reason = reg.detail;
        }
        (StatusCode::OK, Json(b)).into_response()
    }
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
async fn metrics(State(d): State<Director>) -> Response {
    // Refresh the gauges if the structure changed since the last snapshot.
    let _ = d.snapshot();
    let status = d.registry().status();
    d.inner
        .metrics
        .registry_degraded
        .set(i64::from(status.degraded));
    d.inner.metrics.etcd_writes(status.writes);
    d.inner
        .metrics
        .stream_conflicts(d.inner.streams.conflicts());
    d.inner
        .metrics
        .streams_unwritten
        .set(i64::try_from(d.inner.streams.unwritten()).unwrap_or(i64::MAX));
    {
        let h = d.inner.history.lock().unwrap_or_else(|p| p.into_inner());
        let m = &d.inner.metrics;
        m.history_networks
            .set(i64::try_from(h.len()).unwrap_or(i64::MAX));
        m.history_bytes
            .set(i64::try_from(h.approx_bytes()).unwrap_or(i64::MAX));
    }
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.inner.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route: see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route: see /openapi.json",
    )
}

/// Request ids: a per-process random prefix and a counter (`x-request-id`, kept when the
/// caller sent one).
#[derive(Clone, Debug)]
struct RequestIds {
    prefix: u32,
    next: Arc<AtomicU64>,
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:08x}-{n}", self.prefix))
            .ok()
            .map(RequestId::new)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "firstmile director",
        description = "Assigns each device a primary and a backup entry server (US patent 9,137,163), owns streams and their broadcasts, and keeps the fleet of entry servers. Types: the `proto::api` module (cargo doc).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    modifiers(&Security),
    tags(
        (name = "devices", description = "What encoders and the firstmile client call"),
        (name = "viewers", description = "Where streams are, and playback tokens"),
        (name = "entry servers", description = "Registration, heartbeats, key publishes (each server's own credential)"),
        (name = "admin", description = "Operators (admin token)"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what.to_string()))
                    .build(),
            )
        };
        c.add_security_scheme(
            "entry_server",
            bearer("The entry server's own credential: <id>:<HMAC-SHA256(entry_key, id)>"),
        );
        c.add_security_scheme("admin", bearer("The operators' admin token"));
        c.add_security_scheme("stream_key", bearer("The stream's key"));
        for (name, schema) in proto::api::schemas() {
            c.schemas.entry(name).or_insert(schema);
        }
    }
}

/// The routes and their OpenAPI descriptions, before middleware.
fn routes() -> OpenApiRouter<Director> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(assign))
        .routes(routes!(ranked, register))
        .routes(routes!(probe_targets))
        .routes(routes!(deregister))
        .routes(routes!(heartbeat))
        .routes(routes!(publish))
        .routes(routes!(stream_info))
        .routes(routes!(broadcasts))
        .routes(routes!(broadcast_info))
        .routes(routes!(playback_token))
        .routes(routes!(admin_list))
        .routes(routes!(admin_drain))
        .routes(routes!(admin_undrain))
        .routes(routes!(admin_create_stream, admin_list_streams))
        .routes(routes!(
            admin_get_stream,
            admin_update_stream,
            admin_revoke_stream
        ))
        .routes(routes!(admin_rotate_key))
        .routes(routes!(crate::dashboard::data))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// The OpenAPI 3.1 document of this director, generated from the routes and the contract types
/// (served at `/openapi.json`; `openapi.json` beside this crate is a checked copy).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut api) = routes().split_for_parts();
    api.paths.paths.insert(
        "/openapi.json".into(),
        utoipa::openapi::PathItem::new(
            utoipa::openapi::HttpMethod::Get,
            utoipa::openapi::path::OperationBuilder::new()
                .tag("operations")
                .summary(Some("This document (OpenAPI 3.1)"))
                .response(
                    "200",
                    utoipa::openapi::ResponseBuilder::new()
                        .description("The OpenAPI document")
                        .content(
                            "application/json",
                            utoipa::openapi::ContentBuilder::new().build(),
                        ),
                ),
        ),
    );
    api.info.version = env!("CARGO_PKG_VERSION").into();
    describe_responses(&mut api);
    api
}

/// Every response object needs a description (OpenAPI 3.1): those the annotations leave
/// empty get the status's reason phrase.
pub fn describe_responses(api: &mut utoipa::openapi::OpenApi) {
    for item in api.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
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
}

/// The director's HTTP API.
pub fn router(d: Director) -> Router {
    let cfg = d.config().clone();
    let panic_response = |_: Box<dyn std::any::Any + Send>| {
        tracing::error!("handler panicked");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the director stays up",
        )
        .into_response()
    };
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(
            request_id.clone(),
            RequestIds {
                prefix: rand::random(),
                next: Arc::new(AtomicU64::new(1)),
            },
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path())
                })
                .on_response(DefaultOnResponse::new().level(tracing::Level::DEBUG)),
        )
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(cfg.http.request_timeout_ms),
        ))
        .layer(DefaultBodyLimit::max(cfg.http.body_limit_bytes));
    let doc = Arc::new(serde_json::to_string_pretty(&openapi()).unwrap_or_else(|_| "{}".into()));
    let (router, _) = routes().split_for_parts();
    router
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { ([(CONTENT_TYPE, "application/json")], (*doc).clone()).into_response() }
            }),
        )
        .route("/", axum::routing::get(crate::dashboard::page))
        .route(
            "/dashboard/{*file}",
            axum::routing::get(crate::dashboard::file),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware)
        .with_state(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
