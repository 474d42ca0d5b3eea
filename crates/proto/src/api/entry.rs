//! What an entry server answers about itself and the broadcasts it holds.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{BroadcastId, Role, ServerId, StreamId};

/// `GET /v1/streams` of an entry server (operators and peers: its own credential or a peer token).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "server_id": "fra-1",
    "streams": [{"stream": "live1", "broadcast": "b018c2f3a4b5c-0000002a", "source": "ingest",
                 "role": "primary", "first_seq": 0, "next_seq": 1200, "live_sessions": 1}]
})))]
pub struct EntryStreams {
    /// This server.
    pub server_id: ServerId,
    /// The broadcasts held in memory here.
    pub streams: Vec<EntryStream>,
}

/// One broadcast held by an entry server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EntryStream {
    /// The stream.
    pub stream: StreamId,
    /// The broadcast.
    pub broadcast: BroadcastId,
    /// Ingested here, or relayed from the ingest servers.
    pub source: StreamSource,
    /// Ingest: the path this server is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Oldest sequence number readable here.
    pub first_seq: u64,
    /// Next sequence number.
    pub next_seq: u64,
    /// Final sequence number, once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<u64>,
    /// Publisher connections now.
    pub live_sessions: u64,
    /// RTMP dual path: the state of a rejoining publish (`mirroring`, `leading`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejoin: Option<String>,
}

/// Where a broadcast's chunks come from on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamSource {
    /// Pushed by a device to this node; durable in its log.
    Ingest,
    /// Pulled from the ingest servers and merged; memory only.
    Relay,
}

/// `GET /readyz` of an entry server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({"status": "ready"})))]
pub struct EntryReadiness {
    /// `ready` (200), `draining` or `disk_full` / `disk_failing` (503: no new broadcasts).
    pub status: String,
    /// Why, when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET /v1/streams/{id}/path` of an entry server: how this node gets the broadcast it serves
/// its viewers — it ingests it (and as which path), or relays it from the ingest servers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "server_id": "nyc-1", "stream": "live1", "broadcast": "b018c2f3a4b5c-0000002a",
    "source": "relay", "next_seq": 1200,
    "upstreams": [
        {"server_id": "lon-1", "role": "primary", "city": "London", "reachable": true, "next_seq": 1200},
        {"server_id": "fra-1", "role": "backup", "city": "Frankfurt", "reachable": false}
    ]
})))]
pub struct PlaybackPath {
    /// This server.
    pub server_id: ServerId,
    /// The stream.
    pub stream: StreamId,
    /// The broadcast served.
    pub broadcast: BroadcastId,
    /// Ingested here, or relayed from the ingest servers and merged.
    pub source: StreamSource,
    /// Ingest: the path this server is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The next sequence number this node will get.
    pub next_seq: u64,
    /// Final sequence number, once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<u64>,
    /// Relay: the ingest servers of the broadcast this node pulls from, both at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<PathUpstream>,
}

/// One ingest server a relaying node pulls from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PathUpstream {
    /// The ingest server.
    pub server_id: ServerId,
    /// Its path.
    pub role: Role,
    /// Its city.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    /// It answered this node just now (its health check, within a second).
    pub reachable: bool,
    /// The next sequence number it lacks, as it last reported to the director.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_seq: Option<u64>,
}

/// The answer to an HTTP push (`POST /v1/streams/{id}/push`) once its body has ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "stream": "live1", "broadcast": "b018c2f3a4b5c-0000002a", "bytes": 1048576, "final_seq": 31
})))]
pub struct PushResult {
    /// The stream.
    pub stream: StreamId,
    /// The broadcast the bytes became.
    pub broadcast: BroadcastId,
    /// Bytes stored.
    pub bytes: u64,
    /// The broadcast's last sequence number (none when the body was empty).
    pub final_seq: Option<u64>,
}
