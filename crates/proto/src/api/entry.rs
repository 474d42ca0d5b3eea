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
