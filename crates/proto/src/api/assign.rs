//! Assignments: the device asks where to push, the director answers with a primary and a backup.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{LocationInput, Locations, Point, Urls};
use crate::{BroadcastId, PopId, Protocol, Role, ServerId, StreamId, StreamKey};

/// Most servers a device may report probes for in one request.
pub const MAX_PROBED_SERVERS: usize = 16;
/// Most RTT samples per probed server.
pub const MAX_PROBE_SAMPLES: usize = 16;

/// `POST /v1/assignments`: where should this device push?
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "stream": "live1", "key": "sk_4mZ8q2VtY7rLw9Kc3Np6Hx1B", "location": "Paris, FR",
    "protocol": "native", "bitrate_kbps": 4000
})))]
pub struct AssignmentRequest {
    /// The stream to publish. Absent: the director makes a new id (and, in `open` mode, a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<StreamId>,
    /// The stream's key. Required for a stream that has one (every stream, except a new one in
    /// `open` mode, which this request then creates and whose generated key the answer carries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<StreamKey>,
    /// Continue this broadcast instead of starting a new one: a device replacing a path that
    /// died asks with the broadcast it is sending. Refused (409 `broadcast_ended`) when it is no
    /// longer the stream's current broadcast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broadcast: Option<BroadcastId>,
    /// With `broadcast`: only this path is being replaced. Its new server is never the
    /// broadcast's other server; the other path keeps its server (the answer carries a fresh
    /// token for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace: Option<Role>,
    /// Where the user says the device is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<LocationInput>,
    /// How the device will push (default `native`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Expected bitrate in kbit/s (default: the director's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub bitrate_kbps: Option<u32>,
    /// RTTs the device measured to candidate servers (see `GET /v1/probe-targets`); they
    /// replace the director's estimates for those servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub probes: Vec<ProbeResult>,
}

/// RTT samples a device measured to one entry server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"server_id": "fra-1", "rtt_ms": [12.1, 11.8, 13.0, 12.4, 12.2]})))]
pub struct ProbeResult {
    /// The server probed.
    pub server_id: ServerId,
    /// Round-trip times in milliseconds (0 < rtt < 10,000; at most 16).
    #[schema(max_items = 16, min_items = 1)]
    pub rtt_ms: Vec<f64>,
}

/// `GET /v1/probe-targets`: the servers a device should measure before it asks for an
/// assignment (the best candidates by today's estimate from the typed and the IP location).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "samples": 5,
    "targets": [
        {"server_id": "fra-1", "pop": "fra", "url": "http://203.0.113.10:8001/v1/probe", "for": ["primary"]},
        {"server_id": "lon-1", "pop": "lon", "url": "http://203.0.113.20:8001/v1/probe", "for": ["primary", "backup"]}
    ]
})))]
pub struct ProbeTargets {
    /// How many RTT samples to take per target (the director ranks by their median).
    pub samples: u32,
    /// Whom to probe.
    pub targets: Vec<ProbeTarget>,
}

/// One server to probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProbeTarget {
    /// The server.
    pub server_id: ServerId,
    /// Its POP.
    pub pop: PopId,
    /// A URL that answers `204 No Content` at once: time a request to it.
    pub url: String,
    /// Which picks it is a candidate for.
    #[serde(rename = "for")]
    pub roles: Vec<Role>,
}

/// The director's answer to `POST /v1/assignments`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "stream": "live1", "broadcast": "b018c2f3a4b5c-0000002a", "new_broadcast": true,
    "protocol": "native", "bitrate_kbps": 4000, "client_ip": "203.0.113.9",
    "locations": {
        "typed": {"status": "coordinates", "location": {"lat": 48.85, "lon": 2.35}},
        "ip": {"status": "unknown", "ip": "203.0.113.9", "reason": "no database configured"}
    },
    "primary": {
        "role": "primary", "server_id": "fra-1", "pop": "fra", "city": "Frankfurt am Main, DE",
        "location": {"lat": 50.11, "lon": 8.68}, "protocol": "native",
        "url": "tcp://203.0.113.10:7001", "urls": {"native": "tcp://203.0.113.10:7001"},
        "token": "eyJhbGciOiJFZERTQSJ9.e30.c2ln",
        "estimate": {"distance_km": 478.0, "rtt_ms": 20.8, "loss": 0.001, "throughput_mbps": 212.0,
                     "utilization": 0.1, "score": 21.3, "evidence": 0.0,
                     "rtt_source": {"kind": "estimated", "samples": 0}},
        "scored_from": {"kind": "typed", "location": {"lat": 48.85, "lon": 2.35}},
        "runners_up": []
    },
    "backup": null, "backup_reason": "no other entry server can take the stream",
    "issued_at": 1764934674, "expires_at": 1764938274
})))]
pub struct Assignment {
    /// The stream.
    pub stream: StreamId,
    /// The broadcast these tokens are for: one go-live of the stream.
    pub broadcast: BroadcastId,
    /// Whether this request started the broadcast (false: it continues one).
    pub new_broadcast: bool,
    /// The stream's key, only in the answer to the request that created the stream in `open`
    /// mode without one: keep it, it is shown once and needed to go live again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_key: Option<StreamKey>,
    /// The protocol the picks' `url`s are for.
    pub protocol: Protocol,
    /// The bitrate the picks were checked against.
    pub bitrate_kbps: u32,
    /// The device's address as the director saw it.
    #[schema(value_type = Option<String>, format = "ip")]
    pub client_ip: Option<IpAddr>,
    /// The two locations the picks were scored from.
    pub locations: Locations,
    /// Best from the typed location.
    pub primary: Pick,
    /// Best from the IP location, in another POP whenever one can take the stream.
    pub backup: Option<Pick>,
    /// Why there is no backup.
    pub backup_reason: Option<String>,
    /// When the tokens were signed (Unix seconds).
    pub issued_at: u64,
    /// When they expire (Unix seconds): a session must start before.
    pub expires_at: u64,
}

/// One chosen entry server, with its token and why it was chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Pick {
    /// The role the token is signed for.
    pub role: Role,
    /// The server.
    pub server_id: ServerId,
    /// Its POP (failure domain).
    pub pop: PopId,
    /// Its city.
    pub city: String,
    /// Where it is.
    pub location: Point,
    /// The protocol of `url`.
    pub protocol: Protocol,
    /// Where to push with `protocol` (for RTMP the complete publish URL, token included).
    pub url: String,
    /// Every URL of the server.
    pub urls: Urls,
    /// The signed token for this server, stream, broadcast and role.
    pub token: String,
    /// The path estimate.
    pub estimate: Estimate,
    /// The location it was scored from.
    pub scored_from: ScoredFrom,
    /// The next best candidates from the same location, best first.
    pub runners_up: Vec<RunnerUp>,
    /// Anything the device should know ("backup shares the primary's POP").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The estimated path from a location to a server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Estimate {
    /// Great-circle distance.
    pub distance_km: f64,
    /// Round-trip time, from `rtt_source`.
    pub rtt_ms: f64,
    /// Loss as a fraction, 0 to 1.
    pub loss: f64,
    /// Expected throughput.
    pub throughput_mbps: f64,
    /// The server's utilisation, 0 to 1.
    pub utilization: f64,
    /// Lower is better (RTT plus loss, load and bitrate penalties, in ms).
    pub score: f64,
    /// How much measured evidence moved the estimate (0 = the geographic prior alone).
    pub evidence: f64,
    /// Where `rtt_ms` came from.
    pub rtt_source: RttSource,
}

/// Where an RTT figure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({"kind": "probed", "samples": 5})))]
pub struct RttSource {
    /// `estimated` (the geographic prior, with corrections learned from nearby clients),
    /// `learned` (earlier sessions from the client's own network), `probed` (the device's
    /// own probes in this request).
    pub kind: RttSourceKind,
    /// Sessions learned from, or probe samples measured (0 when estimated).
    pub samples: u32,
}

/// See [`RttSource`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RttSourceKind {
    /// The geographic prior (and corrections learned near the location).
    Estimated,
    /// Earlier sessions of the client's network.
    Learned,
    /// The device's probes (median).
    Probed,
}

impl std::fmt::Display for RttSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            RttSourceKind::Estimated => f.write_str("estimated"),
            RttSourceKind::Learned => write!(f, "learned from {} sessions", self.samples),
            RttSourceKind::Probed => write!(f, "probed: median of {}", self.samples),
        }
    }
}

/// Which location a pick was scored from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BasisKind {
    /// The typed location.
    Typed,
    /// The IP location.
    Ip,
    /// Neither was known: the director's default place.
    Default,
}

/// The location a pick was scored from, and why that one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ScoredFrom {
    /// Which one.
    pub kind: BasisKind,
    /// The point.
    pub location: Point,
    /// Why, when it is not the obvious one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A next-best candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunnerUp {
    /// The server.
    pub server_id: ServerId,
    /// Its POP.
    pub pop: PopId,
    /// Its estimate.
    pub estimate: Estimate,
}

/// `GET /v1/entry-servers?location=`: the ranked list (like Twitch's ingest list).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "scored_from": {"kind": "typed", "location": {"lat": 48.85, "lon": 2.35}},
    "locations": {"typed": {"status": "coordinates", "location": {"lat": 48.85, "lon": 2.35}}, "ip": null},
    "protocol": "rtmp", "bitrate_kbps": 4000,
    "entry_servers": [{
        "rank": 1, "server_id": "fra-1", "pop": "fra", "city": "Frankfurt am Main, DE",
        "location": {"lat": 50.11, "lon": 8.68}, "url": "rtmp://203.0.113.10:1935/live",
        "urls": {"rtmp": "rtmp://203.0.113.10:1935/live"},
        "estimate": {"distance_km": 478.0, "rtt_ms": 20.8, "loss": 0.001, "throughput_mbps": 212.0,
                     "utilization": 0.1, "score": 21.3, "evidence": 0.0,
                     "rtt_source": {"kind": "estimated", "samples": 0}}
    }]
})))]
pub struct RankedList {
    /// The location the list is ranked from.
    pub scored_from: ScoredFrom,
    /// Both locations of the request.
    pub locations: Locations,
    /// The protocol asked for.
    pub protocol: Protocol,
    /// The bitrate asked for.
    pub bitrate_kbps: u32,
    /// Best first.
    pub entry_servers: Vec<RankedServer>,
}

/// One row of the ranked list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RankedServer {
    /// 1 = best.
    pub rank: u32,
    /// The server.
    pub server_id: ServerId,
    /// Its POP.
    pub pop: PopId,
    /// Its city.
    pub city: String,
    /// Where it is.
    pub location: Point,
    /// Its URL for the protocol asked for.
    pub url: Option<String>,
    /// Every URL.
    pub urls: Urls,
    /// The path estimate.
    pub estimate: Estimate,
}
