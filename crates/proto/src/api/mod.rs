//! The HTTP/JSON contract between the director, the entry servers and the clients.
//!
//! **What.** Every message of every HTTP API firstmile speaks, defined once: the device's
//! assignment request and the director's answer ([`assign`]), the entry servers' registration,
//! heartbeat and the fleet listings ([`fleet`]), streams, broadcasts, stream keys, publish
//! authorization and playback tokens ([`streams`]), what an entry server answers about the
//! streams it holds ([`entry`]), places ([`place`]) and the error body ([`ErrorBody`]). The
//! director serializes these types, the entry servers and `firstmile` deserialize them (and the
//! other way round); nothing in the services builds a protocol message with `json!` or reads one
//! by indexing a `Value`. Renaming a field is a compile error on both sides.
//!
//! **The OpenAPI documents** of the director (`/openapi.json`) and of the entry servers are
//! generated from these types (`utoipa` derives: field docs become descriptions, non-`Option`
//! fields are `required`, each message carries an example) and from the services' routers; a test
//! in each service fails when the served document and the code disagree, and another
//! deserializes every example into its type and back.
//!
//! **Rules of the contract.**
//! - Ids are validated types ([`StreamId`](crate::StreamId), [`ServerId`](crate::ServerId),
//!   [`PopId`](crate::PopId), [`BroadcastId`](crate::BroadcastId)): a message with a bad id does
//!   not deserialize, and the error names the field.
//! - Requests reject unknown fields (`deny_unknown_fields`): a misspelt option is an error, not
//!   a silent default. Answers ignore unknown fields when read, so an older client keeps working
//!   against a newer service that added one.
//! - Times are Unix seconds (`*_at`), durations carry their unit in the name (`_ms`, `_s`).
//! - Secrets ([`StreamKey`](crate::StreamKey)) appear only in the answer that hands them to their
//!   owner and in the requests that present them.
//!
//! **What not.** No validation of ranges that depend on configuration (the director checks
//! bitrates and sizes against its limits), no HTTP, no I/O.

pub mod assign;
pub mod entry;
pub mod fleet;
pub mod place;
pub mod streams;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use assign::*;
pub use entry::*;
pub use fleet::*;
pub use place::*;
pub use streams::*;

use crate::Protocol;

/// Every error answer of every firstmile HTTP API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "error": "location: latitude 95 is out of range: latitude must be a number between -90 and 90",
    "code": "invalid_field",
    "field": "location",
    "accepted": "a place as typed (at most 200 characters), or {\"lat\": -90..90, \"lon\": -180..180}"
})))]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// A stable machine-readable code (`invalid_field`, `malformed_json`, `unauthorized`,
    /// `forbidden`, `not_found`, `rate_limited`, `no_entry_server`, `stream_key_required`,
    /// `wrong_stream_key`, `publish_denied`, `broadcast_ended`, `not_live_yet`, ...).
    pub code: String,
    /// The request field at fault, as a path (`location`, `probes[2].rtt_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What would have been accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<String>,
}

impl ErrorBody {
    /// An error with a code and a message.
    pub fn new(code: impl Into<String>, error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            code: code.into(),
            field: None,
            accepted: None,
        }
    }
}

/// An entry server's URLs, one per protocol it speaks (absent = not offered).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "native": "tcp://203.0.113.10:7001",
    "websocket": "ws://203.0.113.10:8001/v1/ingest",
    "http": "http://203.0.113.10:8001",
    "rtmp": "rtmp://203.0.113.10:1935/live"
})))]
pub struct Urls {
    /// The native protocol: `tcp://host:port`, or `tls://host:port` with TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<String>,
    /// Native frames over WebSocket: `ws://host:port/v1/ingest` (or `wss://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<String>,
    /// The HTTP base: viewers, relays, HTTP push, HTTP-FLV (`http://host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// RTMP ingest: `rtmp://host:port/live`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtmp: Option<String>,
}

impl Urls {
    /// The URL for `p`, if offered.
    pub fn get(&self, p: Protocol) -> Option<&str> {
        match p {
            Protocol::Native => self.native.as_deref(),
            Protocol::Websocket => self.websocket.as_deref(),
            Protocol::Http => self.http.as_deref(),
            Protocol::Rtmp => self.rtmp.as_deref(),
        }
        .filter(|u| !u.is_empty())
    }

    /// Set the URL for `p`.
    pub fn set(&mut self, p: Protocol, url: Option<String>) {
        let slot = match p {
            Protocol::Native => &mut self.native,
            Protocol::Websocket => &mut self.websocket,
            Protocol::Http => &mut self.http,
            Protocol::Rtmp => &mut self.rtmp,
        };
        *slot = url;
    }

    /// The protocols offered, in [`Protocol::ALL`] order.
    pub fn protocols(&self) -> Vec<Protocol> {
        Protocol::ALL
            .into_iter()
            .filter(|p| self.get(*p).is_some())
            .collect()
    }
}

/// `GET /healthz`: the process answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({"status": "ok"})))]
pub struct Liveness {
    /// Always `ok`.
    pub status: String,
}

/// Every schema of the contract, for the services' OpenAPI documents (`components.schemas`):
/// a service registers them all so a type used only inside another is listed too.
pub fn schemas() -> Vec<(
    String,
    utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
)> {
    let mut v = Vec::new();
    macro_rules! add {
        ($($t:ty),* $(,)?) => {
            $( <$t as utoipa::ToSchema>::schemas(&mut v);
               v.push((<$t as utoipa::ToSchema>::name().into_owned(), <$t as utoipa::PartialSchema>::schema())); )*
        };
    }
    add!(
        ErrorBody,
        Urls,
        Liveness,
        crate::StreamId,
        crate::ServerId,
        crate::PopId,
        crate::BroadcastId,
        crate::StreamKey,
        crate::Role,
        crate::Protocol,
        Point,
        LocationInput,
        TypedLocation,
        IpLocation,
        IpSource,
        Locations,
        AssignmentRequest,
        ProbeResult,
        Assignment,
        Pick,
        Estimate,
        RttSource,
        RttSourceKind,
        ScoredFrom,
        BasisKind,
        RunnerUp,
        ProbeTarget,
        ProbeTargets,
        RankedList,
        RankedServer,
        Registration,
        Capacity,
        Registered,
        Heartbeat,
        Load,
        ServerState,
        DiskState,
        StreamReport,
        Measurement,
        HeartbeatAnswer,
        BroadcastRef,
        Health,
        ServerRecord,
        ServerList,
        Readiness,
        ReadinessStatus,
        RegistryStatus,
        StreamInfo,
        IngestInfo,
        BroadcastInfo,
        BroadcastState,
        BroadcastList,
        StreamCreate,
        StreamKeyIssued,
        StreamRecord,
        StreamList,
        StreamUpdate,
        PublishRequest,
        PublishGrant,
        PlaybackTokenRequest,
        PlaybackToken,
        WebhookRequest,
        WebhookAnswer,
        EntryStreams,
        EntryStream,
        StreamSource,
        EntryReadiness,
        PlaybackPath,
        PathUpstream,
        PushResult,
    );
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v.dedup_by(|a, b| a.0 == b.0);
    v
}
