//! The fleet: entry servers register with the director, heartbeat, and are listed for operators.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{LocationInput, Point, Urls};
use crate::{BroadcastId, PopId, Role, ServerId, StreamId};

/// `POST /v1/entry-servers` (the server's own credential): an entry server joins the fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "id": "fra-1", "pop": "fra", "city": "Frankfurt am Main, DE",
    "location": {"lat": 50.11, "lon": 8.68},
    "capacity": {"streams": 100, "mbps": 1000.0},
    "urls": {"native": "tcp://203.0.113.10:7001", "websocket": "ws://203.0.113.10:8001/v1/ingest",
             "http": "http://203.0.113.10:8001"}
})))]
pub struct Registration {
    /// The server's id (unique in the fleet).
    pub id: ServerId,
    /// Its POP (failure domain).
    pub pop: PopId,
    /// A display name for its city (default: the resolved location's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 100)]
    pub city: Option<String>,
    /// Where it is.
    pub location: LocationInput,
    /// What it can carry.
    pub capacity: Capacity,
    /// Its URLs: the protocols it speaks are those with a URL.
    pub urls: Urls,
}

/// What an entry server can carry.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Concurrent ingest streams (at least 1).
    #[schema(minimum = 1)]
    pub streams: u32,
    /// Ingress bandwidth in Mbit/s.
    #[schema(exclusive_minimum = 0.0)]
    pub mbps: f64,
}

/// The answer to a registration: how often to heartbeat, and a peer token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "heartbeat_interval_ms": 1000, "missed_heartbeats_allowed": 3,
    "peer_token": "eyJhbGciOiJFZERTQSJ9.e30.c2ln", "peer_token_expires_at": 1764935274
})))]
pub struct Registered {
    /// Send a heartbeat this often.
    pub heartbeat_interval_ms: u64,
    /// After this many missed heartbeats the server is unhealthy (not assigned).
    pub missed_heartbeats_allowed: u32,
    /// The director vouches for this server to the other entry servers of the fleet: present it
    /// to them (`Authorization: Bearer`) for relay feeds of private broadcasts and their lists.
    pub peer_token: String,
    /// When it expires (Unix seconds): ask for a new one in a heartbeat before.
    pub peer_token_expires_at: u64,
}

/// `PUT /v1/entry-servers/{id}/heartbeat`: load, state, the broadcasts held, path measurements.
/// Its size does not grow with history: `streams` lists what is live and what changed recently.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "load": {"streams": 1, "mbps": 4.2, "cpu": 0.05},
    "state": "ready", "disk": "ok",
    "streams": [{"stream": "live1", "broadcast": "b018c2f3a4b5c-0000002a", "role": "primary",
                 "next_seq": 1200, "live": true}],
    "measurements": [{"stream": "live1", "role": "primary", "client_ip": "203.0.113.9",
                      "rtt_ms": 21.5, "min_rtt_ms": 19.0, "loss": 0.0, "throughput_mbps": 4.1,
                      "at": 1764934674}]
})))]
pub struct Heartbeat {
    /// What it carries now.
    #[serde(default)]
    pub load: Load,
    /// Whether it takes new streams.
    #[serde(default)]
    pub state: ServerState,
    /// Whether its log storage works: a server whose disk is full or failing takes no new
    /// broadcasts and is not assigned until it reports `ok` again.
    #[serde(default)]
    pub disk: DiskState,
    /// Broadcasts ingested here that are live or changed recently.
    #[serde(default)]
    pub streams: Vec<StreamReport>,
    /// Path measurements of ingest sessions since the last heartbeat.
    #[serde(default)]
    pub measurements: Vec<Measurement>,
    /// Ask for a fresh peer token in the answer (the one held expires soon).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub want_peer_token: bool,
}

/// What a server carries now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Live ingest streams.
    #[serde(default)]
    pub streams: u32,
    /// Ingress, Mbit/s.
    #[serde(default)]
    pub mbps: f64,
    /// CPU busy fraction, 0 to 1.
    #[serde(default)]
    pub cpu: f64,
}

/// Whether a server takes new streams.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Takes new streams.
    #[default]
    Ready,
    /// Shutting down: existing streams continue, no new ones.
    Draining,
}

/// The state of a server's log storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskState {
    /// Writes and syncs succeed.
    #[default]
    Ok,
    /// The file system is full (or under the configured free-space floor).
    Full,
    /// Writes or fsyncs fail for another reason.
    Failing,
}

/// One broadcast ingested by the reporting server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamReport {
    /// The stream.
    pub stream: StreamId,
    /// The broadcast.
    pub broadcast: BroadcastId,
    /// The path it is at this server.
    pub role: Role,
    /// The next sequence number this server lacks.
    #[serde(default)]
    pub next_seq: u64,
    /// A publisher is connected and the broadcast has not ended.
    #[serde(default)]
    pub live: bool,
    /// The final sequence number, once the broadcast ended here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<u64>,
}

/// A path measurement of an ingest session (the kernel's TCP_INFO on the entry server).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Measurement {
    /// The stream.
    pub stream: StreamId,
    /// The path.
    pub role: Role,
    /// The device's address as the entry server saw it.
    #[schema(value_type = String, format = "ip")]
    pub client_ip: IpAddr,
    /// Smoothed RTT (TCP_INFO `tcpi_rtt`), ms.
    pub rtt_ms: f64,
    /// Minimum RTT seen on the connection, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_rtt_ms: Option<f64>,
    /// Retransmitted fraction, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Received throughput over the sample, Mbit/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throughput_mbps: Option<f64>,
    /// When it was taken (Unix seconds).
    pub at: u64,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({"superseded": []})))]
pub struct HeartbeatAnswer {
    /// Broadcasts held here that are no longer their stream's current broadcast (the owner went
    /// live again elsewhere, or the stream was revoked): end their sessions.
    #[serde(default)]
    pub superseded: Vec<BroadcastRef>,
    /// A fresh peer token, when the heartbeat asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_token: Option<String>,
    /// Its expiry (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_token_expires_at: Option<u64>,
}

/// A broadcast of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct BroadcastRef {
    /// The stream.
    pub stream: StreamId,
    /// The broadcast.
    pub broadcast: BroadcastId,
}

/// Whether the director assigns a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Heartbeats arrive.
    Healthy,
    /// It missed too many heartbeats (or reports a failing disk).
    Unhealthy,
}

/// A registered server as the director knows it (`GET /v1/admin/entry-servers`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServerRecord {
    /// The server.
    pub id: ServerId,
    /// Its POP.
    pub pop: PopId,
    /// Its city.
    pub city: String,
    /// Where it is.
    pub location: Point,
    /// What it can carry.
    pub capacity: Capacity,
    /// Its URLs.
    pub urls: Urls,
    /// Its last reported load.
    pub load: Load,
    /// Its last reported state.
    pub state: ServerState,
    /// Its last reported disk state.
    pub disk: DiskState,
    /// Whether heartbeats arrive.
    pub health: Health,
    /// Drained by an operator (separate from its own state and from health).
    pub admin_drained: bool,
    /// Heartbeats received.
    pub heartbeats: u64,
    /// Milliseconds since the last heartbeat (or the registration).
    pub last_heartbeat_age_ms: u64,
    /// Broadcasts in its last heartbeat.
    pub streams: u32,
}

/// `GET /v1/admin/entry-servers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServerList {
    /// Every registered server.
    pub entry_servers: Vec<ServerRecord>,
}

/// `GET /readyz` of the director.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "status": "ready", "registered_entry_servers": 6, "healthy_entry_servers": 6
})))]
pub struct Readiness {
    /// `ready` (200), `degraded` (200: answers come from the last view of a shared registry that
    /// cannot be reached or whose leases cannot be renewed) or `not_ready` (503).
    pub status: ReadinessStatus,
    /// Why, when not `ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Servers registered.
    pub registered_entry_servers: u32,
    /// Of those, healthy.
    pub healthy_entry_servers: u32,
    /// The shared registry's state (absent with the in-memory registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistryStatus>,
}

/// See [`Readiness::status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessStatus {
    /// Serving normally.
    Ready,
    /// Serving from a possibly stale view.
    Degraded,
    /// Not serving yet.
    NotReady,
}

/// Where the registry's view comes from and whether it is current.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegistryStatus {
    /// `memory` or `etcd`.
    pub backend: String,
    /// The view has been loaded from the shared store at least once.
    pub synced: bool,
    /// The shared store cannot be reached, or leases cannot be renewed in time.
    pub degraded: bool,
    /// Why it is degraded or not synced yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Key writes made to the shared store since start (lease renewals are not writes).
    pub writes: u64,
}
