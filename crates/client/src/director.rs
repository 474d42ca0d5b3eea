//! Talking to the director: assignments, stream status, the ranked entry-server list.
//!
//! **What.** Typed mirrors of the director's JSON (`crates/director/src/api.rs`), decoded
//! leniently: fields this client does not use are ignored and optional ones default, so a newer
//! director does not break an older client. Each answer also keeps the raw JSON
//! ([`Assignment::raw`]) for `firstmile assign --json`. Errors carry the director's own message
//! (its `{"error": ..., "accepted": ...}` body).
//!
//! **What not.** No retries or caching: the pusher decides when to ask again.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use proto::{Protocol, Role, StreamId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{ClientError, chain};

/// How long one director request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the device says it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum LocationInput {
    /// A place as typed: "Paris, FR", "SFO", "48.85,2.35".
    Place(String),
    /// Coordinates in degrees.
    Point {
        /// Latitude.
        lat: f64,
        /// Longitude.
        lon: f64,
    },
}

/// `POST /v1/assignments` body.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct AssignRequest {
    /// The stream id to (re)assign; the director mints one when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamId>,
    /// The typed location.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<LocationInput>,
    /// How the device will push (the director's default is native).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Expected bitrate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
}

/// A point on the globe, as the director writes it.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, Default)]
pub struct Point {
    /// Latitude in degrees.
    #[serde(default)]
    pub lat: f64,
    /// Longitude in degrees.
    #[serde(default)]
    pub lon: f64,
}

/// The estimated path to a server.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct Estimate {
    /// Great-circle distance.
    pub distance_km: f64,
    /// Round-trip time.
    pub rtt_ms: f64,
    /// Loss fraction, 0..1.
    pub loss: f64,
    /// Expected throughput.
    pub throughput_mbps: f64,
    /// The server's utilisation, 0..1.
    pub utilization: f64,
    /// Lower is better.
    pub score: f64,
    /// How much measured evidence moved the estimate (0 = prior alone).
    pub evidence: f64,
}

/// Which location a pick was scored from.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct ScoredFrom {
    /// `typed`, `ip` or `default`.
    pub kind: String,
    /// The point.
    pub location: Point,
    /// Why this one, when not obvious.
    pub note: Option<String>,
}

/// A next-best candidate.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct RunnerUp {
    /// Server id.
    pub server_id: String,
    /// Its POP.
    pub pop: String,
    /// Its estimate.
    pub estimate: Estimate,
}

/// One chosen entry server.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct Pick {
    /// The role the token is signed for.
    pub role: Option<Role>,
    /// Server id.
    pub server_id: String,
    /// POP (failure domain).
    pub pop: String,
    /// City.
    pub city: String,
    /// URL for the requested protocol (empty when the server has none).
    pub url: String,
    /// URLs by protocol name (`native`, `websocket`, `http`, `rtmp`).
    pub urls: BTreeMap<String, String>,
    /// Signed assignment token for this server, stream and role.
    pub token: String,
    /// The path estimate.
    pub estimate: Estimate,
    /// The location it was scored from.
    pub scored_from: ScoredFrom,
    /// Next best candidates from the same location.
    pub runners_up: Vec<RunnerUp>,
    /// Anything the caller should know.
    pub note: Option<String>,
}

impl Pick {
    /// The URL for `protocol`: `url` when it is for that protocol, else `urls[protocol]`.
    pub fn url_for(&self, protocol: Protocol) -> Option<&str> {
        self.urls
            .get(protocol.as_str())
            .map(String::as_str)
            .filter(|u| !u.is_empty())
            .or_else(|| (!self.url.is_empty()).then_some(self.url.as_str()))
    }
}

/// The director's answer to `POST /v1/assignments`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Assignment {
    /// The stream id (minted by the director when the request had none).
    pub stream: StreamId,
    /// The protocol the URLs are for.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// The primary pick (scored from the typed location).
    pub primary: Pick,
    /// The backup pick (scored from the IP location, another POP), if any.
    #[serde(default)]
    pub backup: Option<Pick>,
    /// Why there is no backup.
    #[serde(default)]
    pub backup_reason: Option<String>,
    /// Token expiry, Unix seconds.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// The whole answer as the director sent it.
    #[serde(skip)]
    pub raw: Value,
}

/// One ingest session of a stream, from `GET /v1/streams/{id}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct IngestInfo {
    /// Primary or backup.
    pub role: Option<Role>,
    /// Server id.
    pub server_id: String,
    /// Its URLs by protocol.
    pub urls: Option<BTreeMap<String, String>>,
    /// Whether the session is live.
    pub live: bool,
    /// The first sequence number the server does not have (as last reported).
    pub next_seq: Option<u64>,
}

/// `GET /v1/streams/{id}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct StreamInfo {
    /// Stream id.
    pub stream: StreamId,
    /// Whether any ingest session is live.
    #[serde(default)]
    pub live: bool,
    /// Ingest sessions.
    #[serde(default)]
    pub ingest: Vec<IngestInfo>,
}

/// One row of `GET /v1/entry-servers`, best first.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct RankedServer {
    /// 1-based rank.
    pub rank: u32,
    /// Server id.
    pub server_id: String,
    /// POP.
    pub pop: String,
    /// City.
    pub city: String,
    /// URLs by protocol.
    pub urls: BTreeMap<String, String>,
    /// The estimate from the caller.
    pub estimate: Estimate,
}

#[derive(Debug, Deserialize)]
struct RankedList {
    #[serde(default)]
    entry_servers: Vec<RankedServer>,
}

/// A director's base URL and an HTTP client.
#[derive(Debug, Clone)]
pub struct Director {
    base: String,
    http: reqwest::Client,
}

impl Director {
    /// A client for the director at `base` (`http://host:port` or `https://host:port`, verified
    /// against the public web roots).
    pub fn new(base: &str) -> Result<Self, ClientError> {
        Self::with_ca_file(base, None)
    }

    /// As [`Director::new`], also trusting the CA certificates in `ca_file` (PEM) for an
    /// `https://` director: a private CA or a self-signed certificate.
    pub fn with_ca_file(base: &str, ca_file: Option<&Path>) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        check_http_url(&base)?;
        let http = http_client(Some(REQUEST_TIMEOUT), ca_file)?;
        Ok(Director { base, http })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /v1/assignments`.
    pub async fn assign(&self, req: &AssignRequest) -> Result<Assignment, ClientError> {
        let url = format!("{}/v1/assignments", self.base);
        let resp = self.http.post(&url).json(req).send().await;
        let raw = json_answer(&url, resp).await?;
        let mut a: Assignment = decode(&url, raw.clone())?;
        a.raw = raw;
        Ok(a)
    }

    /// `GET /v1/streams/{id}`; `None` when the director does not know the stream.
    pub async fn stream(&self, id: &StreamId) -> Result<Option<StreamInfo>, ClientError> {
        let url = format!("{}/v1/streams/{id}", self.base);
        match json_answer(&url, self.http.get(&url).send().await).await {
            Ok(v) => decode(&url, v).map(Some),
            Err(ClientError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/entry-servers?location=...`: entry servers ranked for the caller, best first.
    pub async fn entry_servers(
        &self,
        location: Option<&str>,
    ) -> Result<Vec<RankedServer>, ClientError> {
        let mut url = format!("{}/v1/entry-servers", self.base);
        if let Some(l) = location {
            url.push_str("?location=");
            url.push_str(&percent_encode(l));
        }
        let v = json_answer(&url, self.http.get(&url).send().await).await?;
        let list: RankedList = decode(&url, v)?;
        Ok(list.entry_servers)
    }
}

/// Asks the director at `director_url` for an assignment.
pub async fn assign(director_url: &str, req: &AssignRequest) -> Result<Assignment, ClientError> {
    Director::new(director_url)?.assign(req).await
}

/// An HTTP(S) client: rustls with the ring provider, trusting the public web roots and
/// `ca_file`'s certificates.
pub(crate) fn http_client(
    timeout: Option<Duration>,
    ca_file: Option<&Path>,
) -> Result<reqwest::Client, ClientError> {
    let bad = |reason: String| ClientError::BadUrl {
        url: String::new(),
        reason,
    };
    let tls = plumbing::tls::client_config(ca_file).map_err(|e| bad(e.to_string()))?;
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .tls_backend_preconfigured((*tls).clone());
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build()
        .map_err(|e| bad(format!("cannot build an HTTP client: {e}")))
}

pub(crate) fn check_http_url(url: &str) -> Result<(), ClientError> {
    let bad = |reason: &str| ClientError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| bad("expected http://host:port or https://host:port"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("no host"));
    }
    Ok(())
}

/// Reads a JSON answer; a non-2xx status becomes [`ClientError::Status`] with the body's
/// `error` message (and `accepted`, when given).
pub(crate) async fn json_answer(
    url: &str,
    resp: Result<reqwest::Response, reqwest::Error>,
) -> Result<Value, ClientError> {
    let resp = resp.map_err(|e| ClientError::Unreachable {
        url: url.to_owned(),
        detail: chain(&e),
    })?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| ClientError::Unreachable {
        url: url.to_owned(),
        detail: chain(&e),
    })?;
    if !status.is_success() {
        return Err(ClientError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
            message: error_message(&body),
        });
    }
    serde_json::from_slice(&body).map_err(|e| ClientError::BadResponse {
        url: url.to_owned(),
        reason: format!("not JSON: {e}"),
    })
}

/// The human message of an error body: `error` (+ `accepted`), or the start of the text.
pub(crate) fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body)
        && let Some(e) = v.get("error").and_then(Value::as_str)
    {
        return match v.get("accepted").and_then(Value::as_str) {
            Some(a) => format!("{e} (accepted: {a})"),
            None => e.to_owned(),
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(no body)".to_owned()
    } else {
        text.chars().take(300).collect()
    }
}

fn decode<T: serde::de::DeserializeOwned>(url: &str, v: Value) -> Result<T, ClientError> {
    serde_json::from_value(v).map_err(|e| ClientError::BadResponse {
        url: url.to_owned(),
        reason: e.to_string(),
    })
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_directors_assignment_shape() {
        let v = serde_json::json!({
            "stream": "cam1", "protocol": "native", "bitrate_kbps": 6000, "client_ip": null,
            "locations": {"typed": null, "ip": null},
            "primary": {
                "role": "primary", "server_id": "par-1", "pop": "par", "city": "Paris",
                "location": {"lat": 48.85, "lon": 2.35}, "protocol": "native",
                "url": "tcp://127.0.0.2:7001",
                "urls": {"native": "tcp://127.0.0.2:7001", "http": "http://127.0.0.2:8001"},
                "token": "tok",
                "estimate": {"distance_km": 3.0, "rtt_ms": 4.5, "loss": 0.001,
                    "throughput_mbps": 80.0, "utilization": 0.1, "score": 5.0, "evidence": 0.0},
                "scored_from": {"kind": "typed", "location": {"lat": 48.8, "lon": 2.3}, "note": null},
                "runners_up": [{"server_id": "ams-1", "pop": "ams", "estimate": {"rtt_ms": 12.0}}],
                "note": null
            },
            "backup": null, "backup_reason": "only one POP", "issued_at": 1, "expires_at": 2
        });
        let a: Assignment = serde_json::from_value(v).unwrap();
        assert_eq!(
            a.primary.url_for(Protocol::Native),
            Some("tcp://127.0.0.2:7001")
        );
        assert_eq!(
            a.primary.url_for(Protocol::Http),
            Some("http://127.0.0.2:8001")
        );
        assert_eq!(
            a.primary.url_for(Protocol::Websocket),
            Some("tcp://127.0.0.2:7001")
        );
        assert_eq!(a.primary.runners_up[0].estimate.rtt_ms, 12.0);
        assert_eq!(a.primary.role, Some(Role::Primary));
        assert!(a.backup.is_none());
        assert_eq!(a.expires_at, Some(2));
    }

    #[test]
    fn requests_serialize_like_the_director_expects() {
        let r = AssignRequest {
            stream: Some(StreamId::parse("s1").unwrap()),
            location: Some(LocationInput::Place("Paris, FR".into())),
            protocol: Some(Protocol::Native),
            bitrate_kbps: None,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"stream": "s1", "location": "Paris, FR", "protocol": "native"})
        );
        let p = LocationInput::Point { lat: 1.0, lon: 2.0 };
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"lat": 1.0, "lon": 2.0})
        );
    }

    #[test]
    fn error_messages_come_from_the_body() {
        assert_eq!(
            error_message(br#"{"error":"bitrate_kbps: 0 is out of range","code":"invalid_field","accepted":"1..=100000"}"#),
            "bitrate_kbps: 0 is out of range (accepted: 1..=100000)"
        );
        assert_eq!(error_message(b"  plain text\n"), "plain text");
        assert_eq!(error_message(b""), "(no body)");
    }

    #[test]
    fn urls_are_checked_and_queries_encoded() {
        assert!(check_http_url("http://127.0.0.1:1").is_ok());
        assert!(check_http_url("https://x").is_ok());
        assert!(check_http_url("tcp://x").is_err());
        assert!(check_http_url("http://").is_err());
        assert_eq!(percent_encode("Paris, FR"), "Paris%2C%20FR");
        assert_eq!(percent_encode("São"), "S%C3%A3o");
    }
}
