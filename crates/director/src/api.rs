//! The HTTP/JSON API (`/v1`), described by `openapi.json` (served at `/openapi.json`).
//!
//! **Boundaries.** Every handler parses its input itself (bodies as bytes, with
//! `serde_path_to_error` so an error names the field), validates ranges, and maps every failure
//! to an [`ApiError`]: a status, a stable `code`, the `field` at fault and what is `accepted`.
//! Syntax errors are 400, well-formed but unacceptable values 422, oversized bodies 413. No
//! handler unwraps untrusted input; a panic anyway is caught and answered 500 (and is a bug).
//!
//! **Client IP.** From the connection; `Forwarded` / `X-Forwarded-For` are believed only when the
//! peer is in `http.trusted_proxies`, and then the rightmost address that is not itself a trusted
//! proxy is the client (the leftmost entries are whatever the client chose to send).
//!
//! **What not.** No selection logic (that is `select`), no registry logic (`registry`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, MockConnectInfo};
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use geo::Location;
use geo::gazetteer::{Gazetteer, PlaceError};
use ipnet::IpNet;
use proto::{Role, StreamId};
use select::{Capacity, Load, Protocol};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use crate::registry::{Heartbeat, Registration, RegistryError, ServerState, StreamReport};
use crate::state::{AssignmentRecord, Director, MeasurementIn, PickRecord};
use crate::tls::TlsPeer;

/// The OpenAPI 3.1 document.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Longest typed place accepted, in characters.
pub const MAX_PLACE_LEN: usize = 200;
/// Longest entry-server id or POP name.
pub const MAX_SERVER_ID_LEN: usize = 64;
const MAX_CITY_LEN: usize = 100;
const MAX_URL_LEN: usize = 512;
const ID_ACCEPTED: &str = "1 to 64 characters from [A-Za-z0-9._-], starting with a letter or digit";

// ---------------------------------------------------------------------------------------------
// Errors

/// An error answer: `{"error": message, "code": code, "field": field?, "accepted": what?}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub accepted: Option<String>,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            accepted: None,
            retry_after_s: None,
        }
    }

    fn field(field: &str, message: impl Into<String>, accepted: Option<String>) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message);
        e.field = Some(field.to_string());
        e.accepted = accepted;
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
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message, "code": self.code });
        if let Some(f) = self.field {
            body["field"] = Value::String(f);
        }
        if let Some(a) = self.accepted {
            body["accepted"] = Value::String(a);
        }
        let mut resp = (self.status, Json(body)).into_response();
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

/// What a field accepts, for error messages.
fn accepted_for(field: &str, d: &Director) -> Option<String> {
    let top = field.split(['.', '[']).next().unwrap_or(field);
    Some(match top {
        "stream" => {
            "1 to 128 characters from [A-Za-z0-9._-], starting with a letter or digit".into()
        }
        "location" => format!(
            "a place as typed (at most {MAX_PLACE_LEN} characters), or {{\"lat\": -90..90, \"lon\": -180..180}}"
        ),
        "protocol" | "protocols" | "urls" => "native, websocket, rtmp, http".into(),
        "bitrate_kbps" => format!(
            "an integer from 1 to {} (kbit/s)",
            d.config().max_bitrate_kbps
        ),
        "id" | "pop" => ID_ACCEPTED.into(),
        "role" => "primary, backup".into(),
        "state" => "ready, draining".into(),
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
                e.accepted = Some("a JSON object as described in /openapi.json".into());
                e
            } else {
                // Unknown fields are reported at the parent's path; the message names the key.
                let accepted = accepted_for(&path, d);
                ApiError::field(&path, format!("{path}: {inner}"), accepted)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client IP and credentials

/// The client's address as the director believes it (see the module docs). `None` when the
/// router is served without connection info.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|n| n.contains(&ip))
}

/// Parse one address from a Forwarded `for=` value or an X-Forwarded-For entry.
fn parse_forwarded_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    // "[2001:db8::1]" without a port.
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

/// The forwarding chain, client first, from `Forwarded` (preferred) or `X-Forwarded-For`.
/// `None` when a header is present but unparseable (then nothing in it is believed).
fn forwarded_chain(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let mut chain = Vec::new();
    if !forwarded.is_empty() {
        for elem in forwarded.iter().flat_map(|v| v.split(',')) {
            for pair in elem.split(';') {
                if let Some((k, v)) = pair.split_once('=')
                    && k.trim().eq_ignore_ascii_case("for")
                {
                    chain.push(parse_forwarded_addr(v)?);
                }
            }
        }
        return Some(chain);
    }
    for v in headers.get_all("x-forwarded-for") {
        for part in v.to_str().ok()?.split(',') {
            chain.push(parse_forwarded_addr(part)?);
        }
    }
    Some(chain)
}

/// The client IP for a request from `peer` with `headers`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted(peer, proxies) {
        return peer;
    }
    let Some(chain) = forwarded_chain(headers) else {
        return peer;
    };
    let mut client = peer;
    for ip in chain.into_iter().rev().map(canonical) {
        client = ip;
        if !trusted(ip, proxies) {
            break;
        }
    }
    client
}

impl FromRequestParts<Director> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, d: &Director) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .or_else(|| {
                parts
                    .extensions
                    .get::<MockConnectInfo<SocketAddr>>()
                    .map(|c| c.0)
            })
            .or_else(|| {
                parts
                    .extensions
                    .get::<ConnectInfo<TlsPeer>>()
                    .map(|c| c.0.0)
            });
        Ok(ClientIp(peer.map(|p| {
            client_ip(p.ip(), &parts.headers, &d.config().http.trusted_proxies)
        })))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer_ok(headers: &HeaderMap, secret: &str) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), secret.as_bytes()))
}

fn require_cluster(d: &Director, headers: &HeaderMap, what: &str) -> Result<(), ApiError> {
    if bearer_ok(headers, &d.config().auth.cluster_token) {
        Ok(())
    } else {
        tracing::warn!(
            call = what,
            "entry-server call with a bad or missing cluster credential"
        );
        Err(ApiError::unauthorized("cluster credential"))
    }
}

fn require_admin(d: &Director, headers: &HeaderMap) -> Result<(), ApiError> {
    if bearer_ok(headers, &d.config().auth.admin_token) {
        Ok(())
    } else {
        tracing::warn!("admin call with a bad or missing admin credential");
        Err(ApiError::unauthorized("admin token"))
    }
}

fn rate_limit(d: &Director, ip: ClientIp) -> Result<(), ApiError> {
    let key = ip.0.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    d.inner.limiter.check(key, Instant::now()).map_err(|wait| {
        d.inner.metrics.assignment("rate_limited");
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests from {key}: retry after {secs} s"),
        );
        e.retry_after_s = Some(secs);
        e
    })
}

// ---------------------------------------------------------------------------------------------
// Locations

/// The typed location of a request, as resolved.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum TypedOut {
    Resolved {
        input: String,
        label: String,
        location: Location,
        reason: String,
    },
    Coordinates {
        location: Location,
    },
    Unknown {
        input: String,
        reason: String,
    },
}

impl TypedOut {
    fn location(&self) -> Option<Location> {
        match self {
            TypedOut::Resolved { location, .. } | TypedOut::Coordinates { location } => {
                Some(*location)
            }
            TypedOut::Unknown { .. } => None,
        }
    }
}

/// Parse a `location` value: a typed place (resolved, or unknown when nothing matches) or
/// coordinates. Bad coordinates and unusable text are errors naming `field`.
fn typed_location(field: &str, v: &Value, strict: bool) -> Result<Option<TypedOut>, ApiError> {
    let accepted = Some(format!(
        "a place as typed (at most {MAX_PLACE_LEN} characters), or {{\"lat\": -90..90, \"lon\": -180..180}}"
    ));
    match v {
        Value::Null => Ok(None),
        Value::String(s) => typed_text(field, s, strict),
        Value::Object(m) => {
            let num = |k: &str| m.get(k).and_then(Value::as_f64);
            if m.len() != 2 {
                return Err(ApiError::field(
                    field,
                    format!("{field}: an object must have exactly the keys lat and lon"),
                    accepted,
                ));
            }
            let (Some(lat), Some(lon)) = (num("lat"), num("lon")) else {
                return Err(ApiError::field(
                    field,
                    format!("{field}: lat and lon must be numbers"),
                    accepted,
                ));
            };
            let loc = Location::new(lat, lon)
                .map_err(|e| ApiError::field(field, format!("{field}: {e}"), accepted))?;
            Ok(Some(TypedOut::Coordinates { location: loc }))
        }
        _ => Err(ApiError::field(
            field,
            format!("{field}: expected a string or an object"),
            accepted,
        )),
    }
}

fn typed_text(field: &str, s: &str, strict: bool) -> Result<Option<TypedOut>, ApiError> {
    let n = s.chars().count();
    if n > MAX_PLACE_LEN {
        return Err(ApiError::field(
            field,
            format!("{field}: {n} characters, at most {MAX_PLACE_LEN} are accepted"),
            None,
        ));
    }
    match Gazetteer::embedded().resolve(s) {
        Ok(r) => Ok(Some(TypedOut::Resolved {
            input: s.to_string(),
            label: r.place.label(),
            location: r.place.location,
            reason: r.reason,
        })),
        Err(PlaceError::Empty) if !strict => Ok(None),
        Err(e @ PlaceError::Unknown { .. }) if !strict => Ok(Some(TypedOut::Unknown {
            input: s.to_string(),
            reason: e.to_string(),
        })),
        Err(e) => Err(ApiError::field(field, format!("{field}: {e}"), None)),
    }
}

// ---------------------------------------------------------------------------------------------
// Assignments

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignmentIn {
    #[serde(default)]
    stream: Option<StreamId>,
    #[serde(default)]
    location: Option<Value>,
    #[serde(default)]
    protocol: Option<Protocol>,
    #[serde(default)]
    bitrate_kbps: Option<u64>,
}

#[derive(Debug, Serialize)]
struct PickOut<'a> {
    role: Role,
    server_id: &'a str,
    pop: &'a str,
    city: &'a str,
    location: Location,
    protocol: Protocol,
    url: &'a str,
    urls: &'a BTreeMap<String, String>,
    token: &'a str,
    estimate: &'a select::Estimate,
    scored_from: &'a select::Basis,
    runners_up: &'a [select::choose::RunnerUp],
    note: &'a Option<String>,
}

fn bitrate(d: &Director, b: Option<u64>) -> Result<u32, ApiError> {
    let max = d.config().max_bitrate_kbps;
    match b {
        None => Ok(d.config().default_bitrate_kbps),
        Some(b) if (1..=u64::from(max)).contains(&b) => Ok(b as u32),
        Some(b) => Err(ApiError::field(
            "bitrate_kbps",
            format!("bitrate_kbps: {b} is out of range"),
            accepted_for("bitrate_kbps", d),
        )),
    }
}

fn mint_stream_id() -> StreamId {
    let id = format!("s{:016x}", rand::random::<u64>());
    // Sixteen hex digits after a letter always satisfy the stream id rules.
    StreamId::parse(&id).unwrap_or_else(|_| StreamId::parse("s0").expect("valid literal"))
}

async fn assign(
    State(d): State<Director>,
    ip: ClientIp,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    rate_limit(&d, ip)?;
    // Every outcome is counted inside (invalid, no_server, ok, no_backup).
    assign_inner(&d, ip, body)
}

fn assign_inner(
    d: &Director,
    ip: ClientIp,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let invalid = |e: ApiError| {
        d.inner.metrics.assignment("invalid");
        e
    };
    let req: AssignmentIn = parse_json(d, body).map_err(invalid)?;
    let protocol = req.protocol.unwrap_or(Protocol::Native);
    let bitrate_kbps = bitrate(d, req.bitrate_kbps).map_err(invalid)?;
    let typed = match &req.location {
        Some(v) => typed_location("location", v, false).map_err(invalid)?,
        None => None,
    };
    let ip_loc = ip.0.map(|a| d.inner.locator.lookup(a));
    let sreq = select::Request {
        typed: typed.as_ref().and_then(TypedOut::location),
        ip: ip_loc.as_ref().and_then(|l| l.location()),
        protocol,
        bitrate_kbps,
    };

    let snap = d.snapshot();
    let learned = d.corrections();
    let now = d.unix_now();
    let t0 = Instant::now();
    let sel = select::select(
        &snap.fleet,
        &sreq,
        d.params(),
        Some(&learned),
        &d.inner.default_location,
        now,
    );
    d.inner
        .metrics
        .selection_seconds
        .observe(t0.elapsed().as_secs_f64());
    let sel = match sel {
        Ok(s) => s,
        Err(e) => {
            d.inner.metrics.assignment("no_server");
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_entry_server",
                e.to_string(),
            );
            err.retry_after_s = Some(d.config().heartbeat.interval_ms.div_ceil(1000).max(1));
            return Err(err);
        }
    };
    let stream = req.stream.unwrap_or_else(mint_stream_id);
    let ttl = d.config().tokens.ttl_s;
    let expires_at = now + ttl;
    let empty = BTreeMap::new();
    let pick_out = |p: &'_ select::Pick, role: Role| -> PickAnswer {
        let urls = snap.urls.get(&p.server_id).map(|u| &**u).unwrap_or(&empty);
        let location = snap
            .fleet
            .get(&p.server_id)
            .map(|s| s.location)
            .unwrap_or(p.scored_from.location);
        let token = d.inner.key.sign(&token::Claims {
            stream: stream.to_string(),
            server: p.server_id.clone(),
            role,
            iat: now,
            exp: expires_at,
        });
        let base = urls
            .get(protocol.as_str())
            .map(String::as_str)
            .unwrap_or("");
        // RTMP: the ready-to-use publish URL (stream name and token in the key, as encoders
        // send the part after the application as the publish name).
        let url = match protocol {
            Protocol::Rtmp if !base.is_empty() => {
                format!("{}/{stream}?token={token}", base.trim_end_matches('/'))
            }
            _ => base.to_string(),
        };
        PickAnswer {
            url,
            token,
            location,
            urls,
        }
    };
    let primary = pick_out(&sel.primary, Role::Primary);
    let backup = sel.backup.as_ref().map(|b| pick_out(b, Role::Backup));
    d.remember(
        stream.to_string(),
        AssignmentRecord {
            primary: PickRecord {
                server_id: sel.primary.server_id.clone(),
                basis: sel.primary.scored_from.location,
            },
            backup: sel.backup.as_ref().map(|b| PickRecord {
                server_id: b.server_id.clone(),
                basis: b.scored_from.location,
            }),
            assigned_at: now,
            expires_at,
        },
    );
    d.inner
        .metrics
        .assignment(if backup.is_some() { "ok" } else { "no_backup" });
    tracing::info!(
        stream = %stream,
        primary = %sel.primary.server_id,
        backup = sel.backup.as_ref().map(|b| b.server_id.as_str()).unwrap_or("-"),
        "assigned"
    );
    // Serialized straight from borrowed parts (no intermediate `Value` tree): this is the hot
    // path of the director.
    Ok(Json(AssignmentOut {
        stream: &stream,
        protocol,
        bitrate_kbps,
        client_ip: ip.0,
        locations: LocationsOut {
            typed: typed.as_ref(),
            ip: ip_loc.as_ref(),
        },
        primary: pick_json(&sel.primary, &primary, Role::Primary, protocol),
        backup: sel
            .backup
            .as_ref()
            .zip(backup.as_ref())
            .map(|(p, a)| pick_json(p, a, Role::Backup, protocol)),
        backup_reason: &sel.backup_reason,
        issued_at: now,
        expires_at,
    })
    .into_response())
}

fn pick_json<'a>(
    p: &'a select::Pick,
    a: &'a PickAnswer<'a>,
    role: Role,
    protocol: Protocol,
) -> PickOut<'a> {
    PickOut {
        role,
        server_id: &p.server_id,
        pop: &p.pop,
        city: &p.city,
        location: a.location,
        protocol,
        url: &a.url,
        urls: a.urls,
        token: &a.token,
        estimate: &p.estimate,
        scored_from: &p.scored_from,
        runners_up: &p.runners_up,
        note: &p.note,
    }
}

/// What a pick's answer owns (the rest is borrowed from the selection).
struct PickAnswer<'a> {
    url: String,
    token: String,
    location: Location,
    urls: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct LocationsOut<'a> {
    typed: Option<&'a TypedOut>,
    ip: Option<&'a geo::ip::IpLocation>,
}

#[derive(Serialize)]
struct AssignmentOut<'a> {
    stream: &'a StreamId,
    protocol: Protocol,
    bitrate_kbps: u32,
    client_ip: Option<IpAddr>,
    locations: LocationsOut<'a>,
    primary: PickOut<'a>,
    backup: Option<PickOut<'a>>,
    backup_reason: &'a Option<String>,
    issued_at: u64,
    expires_at: u64,
}

// ---------------------------------------------------------------------------------------------
// Ranked list

async fn ranked(
    State(d): State<Director>,
    ip: ClientIp,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    rate_limit(&d, ip)?;
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    for k in q.keys() {
        if !matches!(
            k.as_str(),
            "location" | "protocol" | "bitrate_kbps" | "limit"
        ) {
            return Err(ApiError::field(
                k.chars().take(40).collect::<String>().as_str(),
                "unknown query parameter",
                Some("location, protocol, bitrate_kbps, limit".into()),
            ));
        }
    }
    let protocol = match q.get("protocol") {
        None => Protocol::Native,
        Some(p) => p.parse::<Protocol>().map_err(|e| {
            ApiError::field("protocol", e.to_string(), accepted_for("protocol", &d))
        })?,
    };
    let bitrate_kbps = match q.get("bitrate_kbps") {
        None => bitrate(&d, None)?,
        Some(b) => bitrate(
            &d,
            Some(b.parse::<u64>().map_err(|_| {
                ApiError::field(
                    "bitrate_kbps",
                    "bitrate_kbps: not an integer",
                    accepted_for("bitrate_kbps", &d),
                )
            })?),
        )?,
    };
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
    let typed = match q.get("location") {
        Some(s) => typed_text("location", s, false)?,
        None => None,
    };
    let ip_loc = ip.0.map(|a| d.inner.locator.lookup(a));
    let (kind, from) = match (
        typed.as_ref().and_then(TypedOut::location),
        ip_loc.as_ref().and_then(|l| l.location()),
    ) {
        (Some(t), _) => ("typed", t),
        (None, Some(i)) => ("ip", i),
        (None, None) => ("default", d.inner.default_location),
    };
    let snap = d.snapshot();
    let learned = d.corrections();
    let now = d.unix_now();
    let params = d.params();
    let mut scored: Vec<(&select::EntryServer, select::Estimate)> = snap
        .fleet
        .nearest(&from)
        .filter(|s| s.ineligibility(protocol, bitrate_kbps).is_none())
        .take(params.candidates.max(limit))
        .map(|s| {
            let c = learned.correction(&from, &s.id, &s.location, params, now);
            (s, params.estimate(&from, s, bitrate_kbps, c.as_ref()))
        })
        .collect();
    scored.sort_by(|a, b| {
        a.1.score
            .total_cmp(&b.1.score)
            .then_with(|| a.0.id.cmp(&b.0.id))
    });
    let empty = BTreeMap::new();
    let list: Vec<Value> = scored
        .iter()
        .take(limit)
        .enumerate()
        .map(|(i, (s, e))| {
            let urls = snap.urls.get(&s.id).map(|u| &**u).unwrap_or(&empty);
            json!({
                "rank": i + 1,
                "server_id": s.id,
                "pop": s.pop,
                "city": s.city,
                "location": s.location,
                "url": urls.get(protocol.as_str()),
                "urls": urls,
                "estimate": e,
            })
        })
        .collect();
    Ok(Json(json!({
        "scored_from": { "kind": kind, "location": from },
        "locations": { "typed": typed, "ip": ip_loc },
        "protocol": protocol,
        "bitrate_kbps": bitrate_kbps,
        "entry_servers": list,
    })))
}

// ---------------------------------------------------------------------------------------------
// Streams

async fn stream_info(
    State(d): State<Director>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(id) =
        path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text()))?;
    let id = StreamId::parse(&id)
        .map_err(|e| ApiError::field("stream", e.to_string(), accepted_for("stream", &d)))?;
    let rec = d.assignment(id.as_str());
    let reports = d.registry().ingest_of(id.as_str());
    if rec.is_none() && reports.is_empty() {
        return Err(ApiError::not_found(format!(
            "stream {id} is unknown: no assignment and no entry server reports it"
        )));
    }
    let snap = d.snapshot();
    let mut rows: Vec<(String, Role, Option<u64>, bool)> = Vec::new();
    if let Some(r) = &rec {
        rows.push((r.primary.server_id.clone(), Role::Primary, None, false));
        if let Some(b) = &r.backup {
            rows.push((b.server_id.clone(), Role::Backup, None, false));
        }
    }
    for rep in reports {
        match rows
            .iter_mut()
            .find(|(s, r, ..)| *s == rep.server_id && *r == rep.role)
        {
            Some(row) => {
                row.2 = Some(rep.next_seq);
                row.3 = rep.live;
            }
            None => rows.push((rep.server_id, rep.role, Some(rep.next_seq), rep.live)),
        }
    }
    let live = rows.iter().any(|r| r.3);
    let ingest: Vec<Value> = rows
        .into_iter()
        .map(|(server, role, next_seq, live)| {
            let s = snap.fleet.get(&server);
            json!({
                "role": role,
                "server_id": server,
                "pop": s.map(|s| s.pop.as_str()),
                "city": s.map(|s| s.city.as_str()),
                "urls": snap.urls.get(&server).map(|u| &**u),
                "live": live,
                "next_seq": next_seq,
            })
        })
        .collect();
    Ok(Json(json!({
        "stream": id,
        "live": live,
        "ingest": ingest,
        "assigned_at": rec.as_ref().map(|r| r.assigned_at),
        "expires_at": rec.as_ref().map(|r| r.expires_at),
    })))
}

// ---------------------------------------------------------------------------------------------
// Entry servers

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterIn {
    id: String,
    pop: String,
    #[serde(default)]
    city: Option<String>,
    location: Value,
    capacity: CapacityIn,
    protocols: Vec<Protocol>,
    urls: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapacityIn {
    streams: u32,
    mbps: f64,
}

fn check_id(field: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_SERVER_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && s.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            field,
            format!("{field}: not a valid name"),
            Some(ID_ACCEPTED.into()),
        ))
    }
}

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

async fn register(
    State(d): State<Director>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    require_cluster(&d, &headers, "register")?;
    let r: RegisterIn = parse_json(&d, body)?;
    check_id("id", &r.id)?;
    check_id("pop", &r.pop)?;
    if let Some(c) = &r.city {
        check_text("city", c, MAX_CITY_LEN)?;
    }
    let loc = typed_location("location", &r.location, true)?.ok_or_else(|| {
        ApiError::field(
            "location",
            "location: required",
            accepted_for("location", &d),
        )
    })?;
    let (location, label) = match &loc {
        TypedOut::Resolved {
            location, label, ..
        } => (*location, label.clone()),
        TypedOut::Coordinates { location } => (*location, location.to_string()),
        TypedOut::Unknown { reason, .. } => {
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
    let mut protocols = r.protocols.clone();
    protocols.sort_by_key(|p| p.as_str());
    protocols.dedup();
    if protocols.is_empty() {
        return Err(ApiError::field(
            "protocols",
            "protocols: at least one is required",
            accepted_for("protocols", &d),
        ));
    }
    for p in &protocols {
        if !r.urls.contains_key(p.as_str()) {
            return Err(ApiError::field(
                "urls",
                format!("urls: no URL for protocol {p}, which protocols lists"),
                Some("a URL for every protocol in protocols".into()),
            ));
        }
    }
    for (p, u) in &r.urls {
        let field = format!("urls.{}", p.chars().take(20).collect::<String>());
        if p.parse::<Protocol>().is_err() {
            return Err(ApiError::field(
                &field,
                format!(
                    "urls: unknown protocol {:?}",
                    p.chars().take(20).collect::<String>()
                ),
                accepted_for("urls", &d),
            ));
        }
        check_text(&field, u, MAX_URL_LEN)?;
        if !u.contains("://") || u.chars().any(char::is_whitespace) {
            return Err(ApiError::field(
                &field,
                format!("{field}: not a URL"),
                Some("scheme://host:port/path, without spaces".into()),
            ));
        }
    }
    let reg = Registration {
        id: r.id.clone(),
        pop: r.pop,
        city: r.city.unwrap_or(label),
        location,
        capacity: Capacity {
            streams: r.capacity.streams,
            mbps: r.capacity.mbps,
        },
        protocols,
        urls: r.urls,
    };
    d.registry().register(reg, Instant::now())?;
    tracing::info!(server = %r.id, "entry server registered");
    let hb = &d.config().heartbeat;
    Ok(Json(json!({
        "heartbeat_interval_ms": hb.interval_ms,
        "missed_heartbeats_allowed": hb.missed_allowed,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatIn {
    #[serde(default)]
    load: LoadIn,
    #[serde(default)]
    state: ServerState,
    #[serde(default)]
    streams: Vec<StreamReportIn>,
    #[serde(default)]
    measurements: Vec<MeasurementIn>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LoadIn {
    #[serde(default)]
    streams: u32,
    #[serde(default)]
    mbps: f64,
    #[serde(default)]
    cpu: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamReportIn {
    stream: StreamId,
    role: Role,
    #[serde(default)]
    next_seq: u64,
    #[serde(default)]
    live: bool,
}

fn server_path(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) =
        path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_path", e.body_text()))?;
    if check_id("id", &id).is_err() {
        return Err(ApiError::not_found("no entry server has that id"));
    }
    Ok(id)
}

async fn heartbeat(
    State(d): State<Director>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    if let Err(e) = require_cluster(&d, &headers, "heartbeat") {
        d.inner.metrics.heartbeat("unauthorized");
        return Err(e);
    }
    let result = heartbeat_inner(&d, path, body);
    match &result {
        Ok(_) => d.inner.metrics.heartbeat("ok"),
        Err(e) if e.status == StatusCode::NOT_FOUND => d.inner.metrics.heartbeat("unknown_server"),
        Err(_) => d.inner.metrics.heartbeat("invalid"),
    }
    result
}

fn heartbeat_inner(
    d: &Director,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = server_path(path)?;
    let hb: HeartbeatIn = parse_json(d, body)?;
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
        .into_iter()
        .map(|s| StreamReport {
            stream: s.stream.to_string(),
            role: s.role,
            next_seq: s.next_seq,
            live: s.live,
        })
        .collect();
    d.registry().heartbeat(
        &id,
        Heartbeat {
            load: Load {
                streams: hb.load.streams,
                mbps: hb.load.mbps,
                cpu: hb.load.cpu,
            },
            state: hb.state,
            streams,
        },
        Instant::now(),
    )?;
    let mut ms = hb.measurements;
    let max = d.config().learning.max_measurements_per_heartbeat;
    if ms.len() > max {
        tracing::debug!(server = %id, dropped = ms.len() - max, "measurements over the per-heartbeat limit dropped");
        ms.truncate(max);
    }
    if !ms.is_empty() {
        d.learn(&id, ms);
    }
    Ok(Json(json!({})))
}

async fn deregister(
    State(d): State<Director>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    require_cluster(&d, &headers, "deregister")?;
    let id = server_path(path)?;
    d.registry().deregister(&id)?;
    tracing::info!(server = %id, "entry server deregistered");
    Ok(Json(json!({})))
}

// ---------------------------------------------------------------------------------------------
// Admin

async fn admin_list(
    State(d): State<Director>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&d, &headers)?;
    let servers = d.registry().servers(Instant::now());
    Ok(Json(json!({ "entry_servers": servers })))
}

async fn admin_drain(
    State(d): State<Director>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    set_drain(d, headers, path, true)
}

async fn admin_undrain(
    State(d): State<Director>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    set_drain(d, headers, path, false)
}

fn set_drain(
    d: Director,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    drained: bool,
) -> Result<Json<Value>, ApiError> {
    require_admin(&d, &headers)?;
    let id = server_path(path)?;
    let rec = d.registry().set_admin_drain(&id, drained)?;
    tracing::info!(server = %id, drained, "operator drain changed");
    Ok(Json(json!(rec)))
}

// ---------------------------------------------------------------------------------------------
// Operations

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when upkeep runs and the registry's view has been loaded. A director whose shared
/// registry (etcd) is unreachable stays ready (200) with `"status": "degraded"`: its last
/// snapshot still assigns well, and taking every director out of a load balancer at once because
/// etcd is down would turn a degraded fleet view into no service at all.
async fn readyz(State(d): State<Director>) -> Response {
    let snap = d.snapshot();
    let reg = d.registry().status();
    d.inner
        .metrics
        .registry_degraded
        .set(i64::from(reg.degraded));
    let mut b = json!({
        "registered_entry_servers": snap.fleet.len(),
        "healthy_entry_servers": snap.healthy,
    });
    if reg.backend != "memory" {
        b["registry"] = json!(reg);
    }
    if !d.upkeep_fresh(Instant::now()) {
        b["status"] = "not_ready".into();
        b["reason"] =
            "the upkeep task (heartbeat expiry, snapshot refresh) has not run recently".into();
        (StatusCode::SERVICE_UNAVAILABLE, Json(b)).into_response()
    } else if !reg.synced {
        b["status"] = "not_ready".into();
        b["reason"] = "the fleet view has not been loaded from the shared registry yet".into();
        (StatusCode::SERVICE_UNAVAILABLE, Json(b)).into_response()
    } else {
        b["status"] = if reg.degraded { "degraded" } else { "ready" }.into();
        (StatusCode::OK, Json(b)).into_response()
    }
}

async fn metrics(State(d): State<Director>) -> Response {
    // Refresh the gauges if the structure changed since the last snapshot.
    let _ = d.snapshot();
    let status = d.registry().status();
    d.inner
        .metrics
        .registry_degraded
        .set(i64::from(status.degraded));
    d.inner.metrics.etcd_writes(status.writes);
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.inner.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(CONTENT_TYPE, "application/json")], OPENAPI).into_response()
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
    Router::new()
        .route("/v1/assignments", post(assign))
        .route("/v1/entry-servers", get(ranked).post(register))
        .route("/v1/entry-servers/{id}", axum::routing::delete(deregister))
        .route("/v1/entry-servers/{id}/heartbeat", put(heartbeat))
        .route("/v1/streams/{id}", get(stream_info))
        .route("/v1/admin/entry-servers", get(admin_list))
        .route("/v1/admin/entry-servers/{id}/drain", post(admin_drain))
        .route("/v1/admin/entry-servers/{id}/undrain", post(admin_undrain))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware)
        .with_state(d)
}

/// Every route as `(METHOD, path)`, for the OpenAPI completeness test.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/assignments"),
    ("get", "/v1/entry-servers"),
    ("post", "/v1/entry-servers"),
    ("delete", "/v1/entry-servers/{id}"),
    ("put", "/v1/entry-servers/{id}/heartbeat"),
    ("get", "/v1/streams/{id}"),
    ("get", "/v1/admin/entry-servers"),
    ("post", "/v1/admin/entry-servers/{id}/drain"),
    ("post", "/v1/admin/entry-servers/{id}/undrain"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_headers_only_from_trusted_proxies() {
        let proxies = nets(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "1.2.3.4, 203.0.113.9, 10.0.0.7".parse().unwrap(),
        );
        // From a trusted proxy: the rightmost untrusted entry.
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &proxies),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // From anyone else: the peer.
        assert_eq!(
            client_ip("198.51.100.1".parse().unwrap(), &h, &proxies),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        // Forwarded wins over X-Forwarded-For; quoted IPv6 with port.
        h.insert(
            "forwarded",
            r#"for="[2001:db8::1]:4711";proto=https"#.parse().unwrap(),
        );
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &proxies),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // Garbage: nothing believed.
        let mut g = HeaderMap::new();
        g.insert("x-forwarded-for", "nonsense".parse().unwrap());
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &g, &proxies),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn constant_time_eq_works() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
