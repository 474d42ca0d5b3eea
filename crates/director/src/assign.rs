//! The assignment use case: what `POST /v1/assignments` does, as a function of the director's
//! state, callable and tested without HTTP.
//!
//! [`Director::assign`]:
//! 1. checks the request (bitrate range, probe values) — [`AssignError::Invalid`] names the field;
//! 2. in `webhook` mode, asks the platform's publish hook ([`crate::publish::ask_hook`]);
//! 3. resolves the typed place and the IP location, and selects a primary (from the typed
//!    location) and a backup (from the IP location, another POP) with [`select::select`] on the
//!    current fleet snapshot;
//! 4. in one atomic update of the stream's document ([`crate::streams`]): checks the key (or
//!    creates the stream in `open` mode), starts a broadcast or continues the one named (a path
//!    replacement keeps the other path's server), records its primary and backup;
//! 5. signs a token per pick bound to the stream, the broadcast, the server and the role, and
//!    builds the per-protocol URLs.
//!
//! A refusal at any step changes nothing: no document is written before step 4 succeeds, and
//! step 4 writes nothing when the key is wrong.
//!
//! [`Director::rank`] is the one ranking function: the ranked list (`GET /v1/entry-servers`) and
//! the probe targets use it, and it scores exactly as the selection does.

use std::net::IpAddr;

use geo::Location;
use proto::api::{
    Assignment, AssignmentRequest, Locations, MAX_PROBE_SAMPLES, MAX_PROBED_SERVERS, Pick,
    ProbeTarget, ProbeTargets, RankedList, RankedServer, RunnerUp, ScoredFrom, TypedLocation,
    WebhookRequest,
};
use proto::{BroadcastId, Protocol, Role, ServerId, StreamId, StreamKey};
use tokio::time::Instant;

use crate::config::PublishMode;
use crate::convert;
use crate::publish::{self, Ownership, PublishError};
use crate::state::Director;
use crate::streams::{Begun, Change, PickDoc, StreamDoc};

/// A request field that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
    pub accepted: Option<String>,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>, accepted: Option<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            accepted,
        }
    }
}

/// Why an assignment is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AssignError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    NoServer(#[from] select::SelectError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

impl Director {
    /// The default or checked bitrate.
    pub(crate) fn bitrate(&self, b: Option<u64>) -> Result<u32, FieldError> {
        let max = self.config().max_bitrate_kbps;
        match b {
            None => Ok(self.config().default_bitrate_kbps),
            Some(b) if (1..=u64::from(max)).contains(&b) => Ok(b as u32),
            Some(b) => Err(FieldError::new(
                "bitrate_kbps",
                format!("bitrate_kbps: {b} is out of range"),
                Some(format!("an integer from 1 to {max} (kbit/s)")),
            )),
        }
    }

    /// The locations of a request: the typed one resolved, the IP one looked up.
    pub(crate) fn locations(
        &self,
        typed: Option<&proto::api::LocationInput>,
        client_ip: Option<IpAddr>,
    ) -> Result<(Locations, Option<geo::ip::IpLocation>), FieldError> {
        let typed = match typed {
            Some(l) => convert::typed(l, false).map_err(|e| {
                FieldError::new(
                    "location",
                    format!("location: {e}"),
                    Some(proto::api::place::LOCATION_ACCEPTED.into()),
                )
            })?,
            None => None,
        };
        let ip = client_ip.map(|a| self.inner.locator.lookup(a));
        Ok((
            Locations {
                typed,
                ip: ip.as_ref().map(convert::ip_location),
            },
            ip,
        ))
    }

    /// `POST /v1/assignments` (see the module docs).
    pub async fn assign(
        &self,
        req: AssignmentRequest,
        client_ip: Option<IpAddr>,
    ) -> Result<Assignment, AssignError> {
        let protocol = req.protocol.unwrap_or(Protocol::Native);
        let bitrate_kbps = self.bitrate(req.bitrate_kbps.map(u64::from))?;
        check_probes(&req)?;
        if req.replace.is_some() && req.broadcast.is_none() {
            return Err(FieldError::new(
                "replace",
                "replace: only with `broadcast` (the broadcast whose path is replaced)",
                None,
            )
            .into());
        }
        let mode = self.config().publish.mode;
        let stream = match (&req.stream, mode) {
            (Some(s), _) => s.clone(),
            (None, PublishMode::Open) => mint_stream_id(),
            (None, m) => {
                return Err(PublishError::StreamRequired(publish::mode_name(m)).into());
            }
        };
        let (locations, ip_location) = self.locations(req.location.as_ref(), client_ip)?;
        let mut private_from_hook = None;
        if mode == PublishMode::Webhook {
            let answer = publish::ask_hook(
                &self.inner.http,
                &self.config().publish.webhook,
                &WebhookRequest {
                    action: "publish".into(),
                    stream: stream.clone(),
                    key: req.key.clone(),
                    client_ip: client_ip.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                    location: match &req.location {
                        Some(proto::api::LocationInput::Place(s)) => Some(s.clone()),
                        Some(proto::api::LocationInput::Point(p)) => {
                            Some(format!("{},{}", p.lat, p.lon))
                        }
                        None => None,
                    },
                    protocol,
                    server_id: None,
                },
            )
            .await?;
            private_from_hook = answer.private;
        }

        let sreq = select::Request {
            typed: locations
                .typed
                .as_ref()
                .and_then(TypedLocation::point)
                .and_then(convert::location),
            ip: locations
                .ip
                .as_ref()
                .and_then(|l| l.point())
                .and_then(convert::location),
            protocol,
            bitrate_kbps,
        };
        let snap = self.snapshot();
        let learned = self.corrections();
        let now = self.unix_now();
        // The device's probes (checked as hostile input; servers that left are ignored) and its
        // network's history, by the socket address the director sees — never the typed place.
        let mut probes = select::Probes::from_api(&req.probes, &snap.fleet)
            .map_err(|e| FieldError::new(&e.field(), e.to_string(), None))?;
        let net = Self::network_of(client_ip, ip_location.as_ref());
        if net.is_none() {
            // A device on the director's own host has no network path to measure: its probes
            // (sub-millisecond noise) must not decide, as they would on `firstmile up`.
            probes = select::Probes::default();
        }
        let t0 = Instant::now();
        let sel = {
            let history = self.inner.history.lock().unwrap_or_else(|p| p.into_inner());
            let evidence = select::Evidence {
                learned: Some(&learned),
                history: net.as_ref().map(|n| history.view(n)),
                probes: (!probes.is_empty()).then_some(&probes),
            };
            select::select_with(
                &snap.fleet,
                &sreq,
                self.params(),
                &evidence,
                &self.inner.default_location,
                now,
            )
        };
        if let Some(n) = &net {
            self.remember_probes(n, &probes, &snap.fleet, now);
        }
        self.inner
            .metrics
            .selection_seconds
            .observe(t0.elapsed().as_secs_f64());
        let sel = sel?;

        let ttl = self.config().tokens.ttl_s;
        let expires_at = now + ttl;
        let history_s = self.config().publish.history_s;
        let new_id = BroadcastId::new(self.unix_ms(), rand::random());
        let pick_doc = |p: &select::Pick| PickDoc {
            server: server_id(&p.server_id),
            basis: Some(convert::point(p.scored_from.location)),
        };
        let mut created_key: Option<StreamKey> = None;
        let key = req.key.clone();
        let cont = req.broadcast.clone();
        let replace = req.replace;
        let outcome = self
            .inner
            .streams
            .modify(&stream, |doc| {
                // A shared store calls this again after a lost compare-and-swap: only the last
                // run's key was stored.
                created_key = None;
                let own = publish::check(mode, &stream, doc, key.as_ref(), fresh_key)?;
                let mut d = match (own, doc) {
                    (Ownership::Existing, Some(d)) => d.clone(),
                    (
                        Ownership::Create {
                            origin,
                            key,
                            generated,
                        },
                        _,
                    ) => {
                        let d = StreamDoc::new(
                            stream.clone(),
                            key.as_ref().map(StreamKey::hash),
                            false,
                            origin,
                            now,
                        );
                        if generated {
                            created_key = key;
                        }
                        d
                    }
                    (Ownership::Existing, None) => {
                        unreachable!("check returns Existing only for a known stream")
                    }
                };
                if let Some(p) = private_from_hook {
                    d.private = p;
                }
                let picks = match (&cont, replace) {
                    (Some(b), Some(role)) => {
                        // Only `role` changes; its new server must not be the other path's.
                        let other = d
                            .broadcast(b)
                            .and_then(|x| x.pick(other_role(role)))
                            .map(|p| p.server.clone());
                        let chosen = replacement(&sel, role, other.as_ref()).map(pick_doc);
                        match role {
                            Role::Primary => [(Role::Primary, chosen), (Role::Backup, None)],
                            Role::Backup => [(Role::Primary, None), (Role::Backup, chosen)],
                        }
                    }
                    _ => [
                        (Role::Primary, Some(pick_doc(&sel.primary))),
                        (Role::Backup, sel.backup.as_ref().map(pick_doc)),
                    ],
                };
                let begun: Begun = d.begin(
                    cont.as_ref(),
                    new_id.clone(),
                    picks,
                    expires_at,
                    now,
                    history_s,
                )?;
                Ok::<_, PublishError>((Change::Put(Box::new(d.clone())), (begun, d.private)))
            })
            .await
            .map_err(PublishError::from)?;
        let (begun, private) = outcome?;
        if let Some(old) = &begun.superseded {
            tracing::info!(%stream, broadcast = %old, "broadcast superseded by a new go-live");
        }

        // The answer describes the broadcast's two paths as recorded, each with a fresh token.
        let b = &begun.broadcast;
        let mk = |role: Role| -> Option<Pick> {
            let rec = b.pick(role)?;
            let from_sel = [Some(&sel.primary), sel.backup.as_ref()]
                .into_iter()
                .flatten()
                .find(|p| p.server_id == rec.server.as_str());
            Some(self.pick_answer(
                &snap,
                &stream,
                &b.id,
                role,
                &rec.server,
                from_sel,
                protocol,
                private,
                now,
                expires_at,
            ))
        };
        let primary = mk(Role::Primary).ok_or_else(|| {
            PublishError::Continue(crate::streams::ContinueError::Ended(b.id.clone()))
        })?;
        let backup = mk(Role::Backup);
        self.inner
            .metrics
            .assignment(if backup.is_some() { "ok" } else { "no_backup" });
        tracing::info!(
            stream = %stream,
            broadcast = %b.id,
            new = begun.new,
            primary = %primary.server_id,
            backup = backup.as_ref().map(|b| b.server_id.as_str()).unwrap_or("-"),
            "assigned"
        );
        let answer = Assignment {
            stream,
            broadcast: b.id.clone(),
            new_broadcast: begun.new,
            stream_key: created_key,
            protocol,
            bitrate_kbps,
            client_ip,
            locations,
            backup_reason: if backup.is_none() {
                sel.backup_reason
                    .clone()
                    .or_else(|| Some("no other entry server can take the stream".into()))
            } else {
                None
            },
            primary,
            backup,
            issued_at: now,
            expires_at,
        };
        self.note_assignment(&answer);
        Ok(answer)
    }

    /// A pick of an answer: the server's details from the snapshot, the estimate from the
    /// selection when it picked this server (else a fresh estimate from the pick's basis), a
    /// token, the URL for the protocol.
    #[allow(clippy::too_many_arguments)]
    fn pick_answer(
        &self,
        snap: &crate::state::Snapshot,
        stream: &StreamId,
        broadcast: &BroadcastId,
        role: Role,
        server: &ServerId,
        from_sel: Option<&select::Pick>,
        protocol: Protocol,
        private: bool,
        now: u64,
        expires_at: u64,
    ) -> Pick {
        let s = snap.fleet.get(server.as_str());
        let urls = snap.urls.get(server.as_str()).cloned().unwrap_or_default();
        let token = self.inner.key.sign(&token::Claims {
            scp: token::Scope::Ingest,
            stream: stream.clone(),
            broadcast: broadcast.clone(),
            server: server.clone(),
            role,
            private,
            iat: now,
            exp: expires_at,
        });
        let base = urls.get(protocol).unwrap_or("").to_string();
        let url = match protocol {
            Protocol::Rtmp if !base.is_empty() => {
                format!("{}/{stream}?token={token}", base.trim_end_matches('/'))
            }
            _ => base,
        };
        let (estimate, scored_from, runners_up, note) = match from_sel {
            Some(p) => (
                convert::estimate_from(&p.estimate, p.rtt_source),
                convert::scored_from(&p.scored_from),
                p.runners_up
                    .iter()
                    .map(|r| RunnerUp {
                        server_id: server_id(&r.server_id),
                        pop: pop_id(&r.pop),
                        estimate: convert::estimate_from(&r.estimate, r.rtt_source),
                    })
                    .collect(),
                p.note.clone(),
            ),
            None => {
                // The other path of a replacement: it keeps its server; say so.
                let basis = s.map(|s| s.location).unwrap_or(self.inner.default_location);
                let est = s
                    .map(|s| self.params().prior(&basis, s, 1))
                    .map(|e| convert::estimate(&e));
                (
                    est.unwrap_or_else(|| convert::estimate(&zero_estimate())),
                    ScoredFrom {
                        kind: proto::api::BasisKind::Default,
                        location: convert::point(basis),
                        note: Some("kept: this path was not replaced".into()),
                    },
                    Vec::new(),
                    Some("the broadcast's current server for this path".into()),
                )
            }
        };
        Pick {
            role,
            server_id: server.clone(),
            pop: pop_id(s.map(|s| s.pop.as_str()).unwrap_or("unknown")),
            city: s.map(|s| s.city.clone()).unwrap_or_default(),
            location: convert::point(s.map(|s| s.location).unwrap_or(self.inner.default_location)),
            protocol,
            url,
            urls: (*urls).clone(),
            token,
            estimate,
            scored_from,
            runners_up,
            note,
        }
    }

    /// The one ranking function: eligible servers nearest `from`, scored as the selection
    /// scores them (estimate + learned corrections + load), best first.
    /// The best `limit` servers from `from`, with what this director learned of the client's
    /// network (`net`: its history, as an assignment uses it) when it has one.
    pub fn rank(
        &self,
        from: &Location,
        protocol: Protocol,
        bitrate_kbps: u32,
        limit: usize,
        net: Option<&select::ClientNetwork>,
    ) -> Vec<(select::EntryServer, select::Estimate, select::RttSource)> {
        let snap = self.snapshot();
        let learned = self.corrections();
        let now = self.unix_now();
        // The history's lock only for a caller with a network to look up.
        let history = net.map(|_| self.inner.history.lock().unwrap_or_else(|p| p.into_inner()));
        let evidence = select::Evidence {
            learned: Some(&learned),
            history: net.zip(history.as_ref()).map(|(n, h)| h.view(n)),
            probes: None,
        };
        select::rank_with(
            &snap.fleet,
            from,
            protocol,
            bitrate_kbps,
            self.params(),
            &evidence,
            now,
            limit,
        )
        .into_iter()
        .map(|r| (r.server.clone(), r.estimate, r.rtt_source))
        .collect()
    }

    /// The network a client's measurements and history belong to (none for loopback clients).
    fn network_of(
        client_ip: Option<IpAddr>,
        ip_location: Option<&geo::ip::IpLocation>,
    ) -> Option<select::ClientNetwork> {
        client_ip
            .filter(|ip| measurable(*ip))
            .map(|ip| select::ClientNetwork::new(ip, asn_of(ip_location)))
    }

    /// `GET /v1/entry-servers?location=`.
    pub fn ranked_list(
        &self,
        location: Option<&proto::api::LocationInput>,
        protocol: Protocol,
        bitrate_kbps: u32,
        limit: usize,
        client_ip: Option<IpAddr>,
    ) -> Result<RankedList, FieldError> {
        let (locations, ip_location) = self.locations(location, client_ip)?;
        let net = Self::network_of(client_ip, ip_location.as_ref());
        let (kind, from) = self.basis(&locations);
        let snap = self.snapshot();
        let entry_servers = self
            .rank(&from, protocol, bitrate_kbps, limit, net.as_ref())
            .into_iter()
            .enumerate()
            .map(|(i, (s, e, src))| {
                let urls = snap
                    .urls
                    .get(&s.id)
                    .map(|u| (**u).clone())
                    .unwrap_or_default();
                RankedServer {
                    rank: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    server_id: server_id(&s.id),
                    pop: pop_id(&s.pop),
                    city: s.city.clone(),
                    location: convert::point(s.location),
                    url: urls.get(protocol).map(str::to_string),
                    urls,
                    estimate: convert::estimate_from(&e, src),
                }
            })
            .collect();
        Ok(RankedList {
            scored_from: ScoredFrom {
                kind,
                location: convert::point(from),
                note: None,
            },
            locations,
            protocol,
            bitrate_kbps,
            entry_servers,
        })
    }

    /// Where a list is ranked from: the typed location, else the IP's, else the default.
    fn basis(&self, l: &Locations) -> (proto::api::BasisKind, Location) {
        use proto::api::BasisKind;
        if let Some(t) = l
            .typed
            .as_ref()
            .and_then(TypedLocation::point)
            .and_then(convert::location)
        {
            return (BasisKind::Typed, t);
        }
        if let Some(i) =
            l.ip.as_ref()
                .and_then(|x| x.point())
                .and_then(convert::location)
        {
            return (BasisKind::Ip, i);
        }
        (BasisKind::Default, self.inner.default_location)
    }

    /// `GET /v1/probe-targets`: the best `k` candidates from the typed location (for the
    /// primary) and from the IP location (for the backup), with their probe URLs.
    pub fn probe_targets(
        &self,
        location: Option<&proto::api::LocationInput>,
        protocol: Protocol,
        bitrate_kbps: u32,
        client_ip: Option<IpAddr>,
        k: usize,
        samples: u32,
    ) -> Result<ProbeTargets, FieldError> {
        let (locations, ip_location) = self.locations(location, client_ip)?;
        let net = Self::network_of(client_ip, ip_location.as_ref());
        let typed = locations
            .typed
            .as_ref()
            .and_then(TypedLocation::point)
            .and_then(convert::location);
        let ip = locations
            .ip
            .as_ref()
            .and_then(|x| x.point())
            .and_then(convert::location);
        let (p_from, b_from) = match (typed, ip) {
            (Some(t), Some(i)) => (t, i),
            (Some(x), None) | (None, Some(x)) => (x, x),
            (None, None) => (self.inner.default_location, self.inner.default_location),
        };
        let snap = self.snapshot();
        let mut targets: Vec<ProbeTarget> = Vec::new();
        for (role, from) in [(Role::Primary, p_from), (Role::Backup, b_from)] {
            for (s, _, _) in self.rank(&from, protocol, bitrate_kbps, k, net.as_ref()) {
                if let Some(t) = targets.iter_mut().find(|t| t.server_id == s.id.as_str()) {
                    if !t.roles.contains(&role) {
                        t.roles.push(role);
                    }
                    continue;
                }
                let Some(http) = snap.urls.get(&s.id).and_then(|u| u.http.clone()) else {
                    continue;
                };
                targets.push(ProbeTarget {
                    server_id: server_id(&s.id),
                    pop: pop_id(&s.pop),
                    url: format!("{}/v1/probe", http.trim_end_matches('/')),
                    roles: vec![role],
                });
            }
        }
        Ok(ProbeTargets { samples, targets })
    }

    /// Probe medians are evidence for this network's later sessions too.
    fn remember_probes(
        &self,
        net: &select::ClientNetwork,
        probes: &select::Probes,
        fleet: &select::Fleet,
        now: u64,
    ) {
        if probes.is_empty() {
            return;
        }
        let mut h = self.inner.history.lock().unwrap_or_else(|p| p.into_inner());
        for (id, p) in probes.iter() {
            if let Some(s) = fleet.get(id)
                && p.median_ms > 0.0
            {
                let _ = h.observe(net, &s.pop, p.median_ms, now);
            }
        }
    }

    pub(crate) fn unix_ms(&self) -> u64 {
        self.unix_now().saturating_mul(1000) + u64::from(rand::random::<u16>() % 1000)
    }
}

/// Whether measurements from `ip` say anything about a network path: not from loopback (a
/// device on the same host as the servers, as with `firstmile up`), whose RTTs are scheduler
/// noise.
pub(crate) fn measurable(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    !ip.is_loopback() && !ip.is_unspecified()
}

/// The autonomous system of an IP location, where an ASN database is configured.
pub(crate) fn asn_of(l: Option<&geo::ip::IpLocation>) -> Option<u32> {
    match l {
        Some(geo::ip::IpLocation::Known { asn, .. }) => *asn,
        _ => None,
    }
}

fn other_role(r: Role) -> Role {
    match r {
        Role::Primary => Role::Backup,
        Role::Backup => Role::Primary,
    }
}

/// The selection's pick for `role` unless it is `avoid`, else the next candidates in order
/// (its runners-up, then the other pick and its runners-up).
fn replacement<'a>(
    sel: &'a select::Selection,
    role: Role,
    avoid: Option<&ServerId>,
) -> Option<&'a select::Pick> {
    let ok = |id: &str| avoid.is_none_or(|a| a.as_str() != id);
    let (first, second) = match role {
        Role::Primary => (Some(&sel.primary), sel.backup.as_ref()),
        Role::Backup => (sel.backup.as_ref(), Some(&sel.primary)),
    };
    [first, second]
        .into_iter()
        .flatten()
        .find(|p| ok(&p.server_id))
}

fn check_probes(req: &AssignmentRequest) -> Result<(), FieldError> {
    if req.probes.len() > MAX_PROBED_SERVERS {
        return Err(FieldError::new(
            "probes",
            format!(
                "probes: {} servers, at most {MAX_PROBED_SERVERS}",
                req.probes.len()
            ),
            Some(format!("at most {MAX_PROBED_SERVERS} servers")),
        ));
    }
    for (i, p) in req.probes.iter().enumerate() {
        let f = format!("probes[{i}].rtt_ms");
        if p.rtt_ms.is_empty() || p.rtt_ms.len() > MAX_PROBE_SAMPLES {
            return Err(FieldError::new(
                &f,
                format!("{f}: {} samples", p.rtt_ms.len()),
                Some(format!("1 to {MAX_PROBE_SAMPLES} samples")),
            ));
        }
        if let Some(bad) = p
            .rtt_ms
            .iter()
            .find(|x| !(x.is_finite() && **x > 0.0 && **x < 10_000.0))
        {
            return Err(FieldError::new(
                &f,
                format!("{f}: {bad} is not a round-trip time"),
                Some("milliseconds, more than 0 and less than 10000".into()),
            ));
        }
    }
    Ok(())
}

fn fresh_key() -> StreamKey {
    StreamKey::from_random(rand::random())
}

fn mint_stream_id() -> StreamId {
    let id = format!("s{:016x}", rand::random::<u64>());
    StreamId::parse(&id).unwrap_or_else(|_| unreachable!("s + 16 hex digits is a valid id"))
}

/// Server ids in the snapshot were validated at registration.
pub(crate) fn server_id(s: &str) -> ServerId {
    ServerId::parse(s).unwrap_or_else(|_| unreachable!("registered ids are validated: {s:?}"))
}

pub(crate) fn pop_id(s: &str) -> proto::PopId {
    proto::PopId::parse(s).unwrap_or_else(|_| proto::PopId::parse("unknown").expect("literal"))
}

fn zero_estimate() -> select::Estimate {
    select::Estimate {
        distance_km: 0.0,
        rtt_ms: 0.0,
        loss: 0.0,
        throughput_mbps: 0.0,
        utilization: 0.0,
        score: 0.0,
        evidence: 0.0,
    }
}
