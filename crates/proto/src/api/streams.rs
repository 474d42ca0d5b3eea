//! Streams, broadcasts and who may publish or watch them.
//!
//! A *stream* is a durable name its publisher owns (its stream key, or whatever the platform's
//! publish hook says). A *broadcast* is one go-live of a stream: its own id, log, sequence
//! numbering, primary and backup. Viewers ask for a stream and get its current broadcast.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Urls;
use crate::{BroadcastId, PopId, Protocol, Role, ServerId, StreamId, StreamKey};

/// `GET /v1/streams/{id}`: where a stream's current broadcast is ingested (what relays pull).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "stream": "live1", "live": true, "private": false,
    "broadcast": {"id": "b018c2f3a4b5c-0000002a", "state": "live", "started_at": 1764934674,
                  "primary": "fra-1", "backup": "lon-1"},
    "ingest": [
        {"role": "primary", "server_id": "fra-1", "pop": "fra", "city": "Frankfurt am Main, DE",
         "urls": {"http": "http://203.0.113.10:8001"}, "live": true, "next_seq": 1200},
        {"role": "backup", "server_id": "lon-1", "pop": "lon", "city": "London, GB",
         "urls": {"http": "http://203.0.113.20:8001"}, "live": true, "next_seq": 1199}
    ]
})))]
pub struct StreamInfo {
    /// The stream.
    pub stream: StreamId,
    /// Its current broadcast has a publisher connected.
    pub live: bool,
    /// Viewers need a playback token.
    pub private: bool,
    /// The current broadcast (or the last one, ended), if any.
    pub broadcast: Option<BroadcastInfo>,
    /// The entry servers of that broadcast.
    pub ingest: Vec<IngestInfo>,
}

/// One ingest server of a broadcast.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct IngestInfo {
    /// Its path.
    pub role: Role,
    /// The server.
    pub server_id: ServerId,
    /// Its POP (unknown when it left the fleet).
    pub pop: Option<PopId>,
    /// Its city.
    pub city: Option<String>,
    /// Its URLs (unknown when it left the fleet).
    pub urls: Option<Urls>,
    /// It reports a publisher connected.
    pub live: bool,
    /// The next sequence number it lacks, from its last report.
    pub next_seq: Option<u64>,
}

/// One broadcast.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "id": "b018c2f3a4b5c-0000002a", "state": "ended", "started_at": 1764934674,
    "ended_at": 1764938274, "final_seq": 90000, "primary": "fra-1", "backup": "lon-1"
})))]
pub struct BroadcastInfo {
    /// Its id.
    pub id: BroadcastId,
    /// Where it is in its life.
    pub state: BroadcastState,
    /// When it was authorized (Unix seconds).
    pub started_at: u64,
    /// When it ended (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    /// Its last sequence number, once ended cleanly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_seq: Option<u64>,
    /// Its primary entry server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<ServerId>,
    /// Its backup entry server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<ServerId>,
}

/// Where a broadcast is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BroadcastState {
    /// Authorized; no entry server reports a publisher yet.
    Starting,
    /// A publisher is connected to at least one of its entry servers.
    Live,
    /// It ended (END from the publisher, the publisher gone longer than the grace period, or
    /// superseded by the owner's next go-live).
    Ended,
}

/// `GET /v1/streams/{id}/broadcasts`: the recent broadcasts of a stream, newest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BroadcastList {
    /// The stream.
    pub stream: StreamId,
    /// Newest first (bounded by the director's history per stream).
    pub broadcasts: Vec<BroadcastInfo>,
}

/// `POST /v1/admin/streams` (admin): provision a stream and its key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"stream": "live1", "private": false})))]
pub struct StreamCreate {
    /// The stream id.
    pub stream: StreamId,
    /// Its key; absent: the director generates one (recommended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<StreamKey>,
    /// Viewers need a playback token.
    #[serde(default)]
    pub private: bool,
}

/// A stream key handed to its owner: shown once, stored hashed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({"stream": "live1", "key": "sk_4mZ8q2VtY7rLw9Kc3Np6Hx1B"})))]
pub struct StreamKeyIssued {
    /// The stream.
    pub stream: StreamId,
    /// Its key.
    pub key: StreamKey,
}

/// A stream as operators see it (never its key).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "stream": "live1", "private": false, "created_at": 1764934000, "key_set_at": 1764934000,
    "current": null, "broadcasts": 0
})))]
pub struct StreamRecord {
    /// The stream.
    pub stream: StreamId,
    /// Viewers need a playback token.
    pub private: bool,
    /// When it was created (Unix seconds).
    pub created_at: u64,
    /// When its key was set or last rotated.
    pub key_set_at: u64,
    /// Its current (or last) broadcast.
    pub current: Option<BroadcastInfo>,
    /// Broadcasts it has had.
    pub broadcasts: u64,
}

/// `GET /v1/admin/streams`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamList {
    /// The streams, by id (at most `limit`, from `after`).
    pub streams: Vec<StreamRecord>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<StreamId>,
}

/// `PATCH /v1/admin/streams/{id}` (admin).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"private": true})))]
pub struct StreamUpdate {
    /// Make viewers need a playback token (takes effect from the next broadcast on the entry
    /// servers that ingest it, and at once on relays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<bool>,
}

/// `POST /v1/publishes` (an entry server's credential): an encoder that presents a stream key
/// instead of an assignment token (RTMP with a fixed server URL and key, HTTP push with
/// `?key=`) asks whether it may publish, and as which broadcast and role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "stream": "live1", "key": "sk_4mZ8q2VtY7rLw9Kc3Np6Hx1B", "client_ip": "203.0.113.9",
    "protocol": "rtmp"
})))]
pub struct PublishRequest {
    /// The stream.
    pub stream: StreamId,
    /// The key the encoder presented.
    pub key: StreamKey,
    /// The encoder's address as the entry server saw it.
    #[schema(value_type = String, format = "ip")]
    pub client_ip: IpAddr,
    /// How it publishes.
    pub protocol: Protocol,
}

/// The director's yes to a [`PublishRequest`] (a no is an [`ErrorBody`](super::ErrorBody):
/// 401/403 wrong key or denied by the platform, 409 live elsewhere on both paths).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "stream": "live1", "broadcast": "b018c2f3a4b5c-0000002a", "role": "primary",
    "token": "eyJhbGciOiJFZERTQSJ9.e30.c2ln", "private": false, "new_broadcast": true
})))]
pub struct PublishGrant {
    /// The stream.
    pub stream: StreamId,
    /// The broadcast this publish belongs to.
    pub broadcast: BroadcastId,
    /// The path it is.
    pub role: Role,
    /// An ingest token for this server, broadcast and role (as an assignment would carry).
    pub token: String,
    /// Viewers need a playback token.
    pub private: bool,
    /// This publish started the broadcast.
    pub new_broadcast: bool,
}

/// `POST /v1/streams/{id}/playback-tokens` (the stream's key or the admin token): a token that
/// lets a viewer watch a private stream.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"ttl_s": 3600})))]
pub struct PlaybackTokenRequest {
    /// Lifetime in seconds (default and maximum: the director's `playback.max_ttl_s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub ttl_s: Option<u64>,
}

/// A playback token (`?token=` on every viewer endpoint).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({
    "stream": "live1", "token": "eyJhbGciOiJFZERTQSJ9.e30.c2ln", "expires_at": 1764938274
})))]
pub struct PlaybackToken {
    /// The stream.
    pub stream: StreamId,
    /// The token.
    pub token: String,
    /// When it expires (Unix seconds).
    pub expires_at: u64,
}

/// What the director POSTs to the platform's publish hook (`webhook` mode): may this encoder
/// publish this stream? A 2xx answer allows it (optionally with a [`WebhookAnswer`] body); any
/// other status denies it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({
    "action": "publish", "stream": "live1", "key": "sk_4mZ8q2VtY7rLw9Kc3Np6Hx1B",
    "client_ip": "203.0.113.9", "location": "Paris, FR", "protocol": "rtmp", "server_id": "fra-1"
})))]
pub struct WebhookRequest {
    /// Always `publish`.
    pub action: String,
    /// The stream.
    pub stream: StreamId,
    /// The key the publisher presented (absent when it presented none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<StreamKey>,
    /// The publisher's address.
    #[schema(value_type = String, format = "ip")]
    pub client_ip: IpAddr,
    /// The place the publisher typed, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// How it publishes.
    pub protocol: Protocol,
    /// The entry server it reached (key publishes: RTMP, HTTP push), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<ServerId>,
}

/// The optional body of the publish hook's 2xx answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(examples(json!({"private": true})))]
pub struct WebhookAnswer {
    /// Make the stream private (viewers need a playback token); absent: unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<bool>,
}
