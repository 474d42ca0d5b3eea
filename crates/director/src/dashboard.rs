//! The operator's dashboard: `GET /` on the director, a live world map of the network.
//!
//! **What.** A static page (`web/dashboard.html`, `web/dashboard.js`, embedded in the binary)
//! draws the world from Natural Earth shapes (npm `world-atlas` 110m countries, drawn with
//! `d3-geo` after `topojson-client` decodes them; all vendored under `web/vendor/` with their
//! licences, so the page loads nothing from the internet). Every two seconds it asks
//! `GET /v1/admin/dashboard` for one [`Dashboard`]: the entry servers at their cities coloured by
//! health, state and load; the live broadcasts with a line from where their device said it was
//! to their primary (solid) and backup (dashed); and the last [`RECENT`] assignments with the
//! typed and the IP location and where each pick's RTT came from.
//!
//! **Auth.** The page and its scripts are public (they hold nothing); the data is admin-only,
//! like every other `/v1/admin` endpoint: the page sends the admin token as a bearer header. It
//! takes the token from the URL's fragment (`/#token=…`, which browsers never send to a server,
//! so it is in no access log; `firstmile up` prints that URL) or asks for it, keeps it in the
//! tab's `sessionStorage` (gone when the tab closes) and removes it from the address bar. A wrong
//! token shows the 401 and asks again.
//!
//! **Bounded.** The assignment ring holds [`RECENT`] entries; the answer lists at most
//! [`MAX_STREAMS`] live broadcasts (the newest).
//!
//! **What not.** No history beyond the ring, no per-viewer data, no writes: draining and the
//! rest stay in the admin API.

use std::collections::VecDeque;

use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use proto::api::{Assignment, Pick, Point, ServerRecord};
use proto::{BroadcastId, ServerId, StreamId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::state::Director;

/// Assignments remembered for the dashboard.
pub const RECENT: usize = 100;
/// Live broadcasts listed at most.
pub const MAX_STREAMS: usize = 500;

/// Everything the dashboard draws, in one answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Dashboard {
    /// Unix seconds of this answer.
    pub generated_at: u64,
    /// Every registered entry server.
    pub servers: Vec<ServerRecord>,
    /// Broadcasts that have not ended, newest first.
    pub streams: Vec<LiveBroadcast>,
    /// The latest assignments, newest first.
    pub assignments: Vec<RecentAssignment>,
}

/// A broadcast that has not ended, with its two paths.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LiveBroadcast {
    pub stream: StreamId,
    pub broadcast: BroadcastId,
    /// An entry server reports its publisher live.
    pub live: bool,
    pub primary: Option<ServerId>,
    pub backup: Option<ServerId>,
    /// Where its device said it was when it went live (typed, else its IP's location), when
    /// this director assigned it recently.
    pub device: Option<Point>,
}

/// One assignment as the dashboard shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecentAssignment {
    /// Unix seconds.
    pub at: u64,
    pub stream: StreamId,
    pub broadcast: BroadcastId,
    /// What the device typed, as resolved (or as typed, when unknown).
    pub typed: Option<String>,
    pub typed_point: Option<Point>,
    /// Its IP address's location ("Paris, FR", or why unknown).
    pub ip: String,
    pub ip_point: Option<Point>,
    pub primary: Choice,
    pub backup: Option<Choice>,
}

/// One pick and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Choice {
    pub server_id: ServerId,
    pub pop: String,
    pub rtt_ms: f64,
    /// `estimated`, `learned from N sessions`, `probed: median of N`.
    pub rtt_source: String,
    /// `typed`, `ip` or `default`.
    pub scored_from: String,
    pub note: Option<String>,
}

fn choice(p: &Pick) -> Choice {
    Choice {
        server_id: p.server_id.clone(),
        pop: p.pop.to_string(),
        rtt_ms: p.estimate.rtt_ms,
        rtt_source: p.estimate.rtt_source.to_string(),
        scored_from: serde_json::to_value(p.scored_from.kind)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        note: p.note.clone(),
    }
}

fn recent(a: &Assignment) -> RecentAssignment {
    use proto::api::{IpLocation, TypedLocation};
    let typed = a.locations.typed.as_ref().map(|t| match t {
        TypedLocation::Resolved { label, .. } => label.clone(),
        TypedLocation::Coordinates { location } => format!("{}, {}", location.lat, location.lon),
        TypedLocation::Unknown { input, .. } => format!("{input} (unknown)"),
    });
    let ip = match &a.locations.ip {
        Some(IpLocation::Known {
            ip, city, country, ..
        }) => {
            let place: Vec<&str> = [city.as_deref(), country.as_deref()]
                .into_iter()
                .flatten()
                .collect();
            format!("{ip}: {}", place.join(", "))
        }
        Some(IpLocation::Unknown { ip, .. }) => format!("{ip}: unknown"),
        None => "no address".into(),
    };
    RecentAssignment {
        at: a.issued_at,
        stream: a.stream.clone(),
        broadcast: a.broadcast.clone(),
        typed,
        typed_point: a.locations.typed.as_ref().and_then(TypedLocation::point),
        ip,
        ip_point: a.locations.ip.as_ref().and_then(IpLocation::point),
        primary: choice(&a.primary),
        backup: a.backup.as_ref().map(choice),
    }
}

impl Director {
    /// Remember an assignment for the dashboard (a ring of [`RECENT`]).
    pub(crate) fn note_assignment(&self, a: &Assignment) {
        let mut r = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() >= RECENT {
            r.pop_back();
        }
        r.push_front(recent(a));
    }

    /// `GET /v1/admin/dashboard`.
    pub fn dashboard(&self, servers: Vec<ServerRecord>) -> Dashboard {
        let recent: Vec<RecentAssignment> = self
            .inner
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let mut streams: Vec<(u64, LiveBroadcast)> = Vec::new();
        for s in self.inner.streams.open() {
            let Some(doc) = self.inner.streams.cached(&s) else {
                continue;
            };
            let Some(b) = doc.active() else { continue };
            let device = recent
                .iter()
                .find(|r| r.stream == s && r.broadcast == b.id)
                .and_then(|r| r.typed_point.or(r.ip_point));
            streams.push((
                b.started_at,
                LiveBroadcast {
                    stream: s.clone(),
                    broadcast: b.id.clone(),
                    live: self.reported_live(&s, &b.id),
                    primary: b.primary.as_ref().map(|p| p.server.clone()),
                    backup: b.backup.as_ref().map(|p| p.server.clone()),
                    device,
                },
            ));
        }
        streams.sort_by_key(|s| std::cmp::Reverse(s.0));
        streams.truncate(MAX_STREAMS);
        Dashboard {
            generated_at: self.unix_now(),
            servers,
            streams: streams.into_iter().map(|(_, l)| l).collect(),
            assignments: recent,
        }
    }
}

const PAGE: &str = include_str!("../web/dashboard.html");

/// The page's files: name → (content type, bytes).
fn asset(name: &str) -> Option<(&'static str, &'static [u8])> {
    Some(match name {
        "dashboard.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../web/dashboard.js"),
        ),
        "dashboard.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../web/dashboard.css"),
        ),
        "vendor/d3-array.min.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../web/vendor/d3-array.min.js"),
        ),
        "vendor/d3-geo.min.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../web/vendor/d3-geo.min.js"),
        ),
        "vendor/topojson-client.min.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../web/vendor/topojson-client.min.js"),
        ),
        "vendor/countries-110m.json" => (
            "application/json",
            include_bytes!("../web/vendor/countries-110m.json"),
        ),
        _ => return None,
    })
}

/// What the page may load: only from this director (the browser enforces it, so even an
/// injected script could not reach elsewhere).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the dashboard page.
pub(crate) async fn page() -> Response {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
            (axum::http::header::CONTENT_SECURITY_POLICY, CSP),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /dashboard/{*file}`: the page's scripts, styles and map.
pub(crate) async fn file(Path(name): Path<String>) -> Response {
    match asset(&name) {
        Some((ty, body)) => {
            // The page's own files change with the binary under the same names: revalidate.
            // The vendored ones are pinned versions.
            let cache = if name.starts_with("vendor/") {
                "public, max-age=86400"
            } else {
                "no-cache"
            };
            ([(CONTENT_TYPE, ty), (CACHE_CONTROL, cache)], body).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            [(CONTENT_TYPE, "text/plain; charset=utf-8")],
            "no such dashboard file\n",
        )
            .into_response(),
    }
}

/// What the dashboard draws: entry servers, live broadcasts and their two paths, the latest
/// assignments with their explanations.
#[utoipa::path(get, path = "/v1/admin/dashboard", tag = "admin",
    security(("admin" = [])),
    responses((status = 200, body = Dashboard), (status = 401, body = proto::api::ErrorBody)))]
pub(crate) async fn data(
    State(d): State<Director>,
    headers: HeaderMap,
) -> Result<axum::Json<Dashboard>, crate::api::ApiError> {
    crate::api::require_admin(&d, &headers)?;
    let servers = crate::api::admin_servers(&d);
    Ok(axum::Json(d.dashboard(servers)))
}

/// The ring, for the state's constructor.
pub(crate) fn ring() -> std::sync::Mutex<VecDeque<RecentAssignment>> {
    std::sync::Mutex::new(VecDeque::with_capacity(RECENT))
}
