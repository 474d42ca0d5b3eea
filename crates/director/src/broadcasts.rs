//! The stream use cases besides assignment: key publishes from entry servers, what relays and
//! viewers ask about a stream, playback tokens, the operator's stream administration, and what
//! heartbeats and upkeep tell the stream documents. Each is a method of [`Director`], callable
//! without HTTP; [`crate::api`] only parses, calls and serializes.

use std::collections::HashMap;

use proto::api::{
    BroadcastList, BroadcastRef, IngestInfo, PlaybackToken, PublishGrant, PublishRequest,
    StreamCreate, StreamInfo, StreamKeyIssued, StreamList, StreamRecord, StreamReport,
    StreamUpdate, WebhookRequest,
};
use proto::{BroadcastId, Role, ServerId, StreamId, StreamKey};

use crate::assign::{FieldError, pop_id};
use crate::config::PublishMode;
use crate::publish::{self, Ownership, PublishError};
use crate::state::Director;
use crate::streams::{Change, Origin, StoreError, StreamDoc};

/// Why an operator's stream request is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    #[error("stream {0} exists already")]
    Exists(StreamId),
    #[error("no stream {0}")]
    NotFound(StreamId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

/// Who asks for a playback token.
#[derive(Debug, Clone, Copy)]
pub enum PlaybackAuth<'a> {
    /// The operator (admin token).
    Admin,
    /// Someone presenting this as the stream's key.
    Key(&'a StreamKey),
}

/// Why a playback token is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PlaybackError {
    #[error("no stream {0}")]
    NotFound(StreamId),
    #[error(
        "wrong stream key for stream {0}: send the stream's key or the admin token as the bearer"
    )]
    Forbidden(StreamId),
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Director {
    /// `POST /v1/entry-servers/{id}/publishes`: an encoder at `server` presented a stream key
    /// (RTMP with a fixed server URL and key, HTTP push with `?key=`). Check the key (or ask the
    /// platform), then join the stream's active broadcast or start one, as a role.
    pub async fn authorize_publish(
        &self,
        server: &ServerId,
        req: PublishRequest,
    ) -> Result<PublishGrant, PublishError> {
        let mode = self.config().publish.mode;
        let mut private_from_hook = None;
        if mode == PublishMode::Webhook {
            let a = publish::ask_hook(
                &self.inner.http,
                &self.config().publish.webhook,
                &WebhookRequest {
                    action: "publish".into(),
                    stream: req.stream.clone(),
                    key: Some(req.key.clone()),
                    client_ip: req.client_ip,
                    location: None,
                    protocol: req.protocol,
                    server_id: Some(server.clone()),
                },
            )
            .await?;
            private_from_hook = a.private;
        }
        let now = self.unix_now();
        let expires_at = now + self.config().tokens.ttl_s;
        let p = &self.config().publish;
        let (history_s, gone_s) = (p.history_s, p.publisher_gone_s);
        let new_id = BroadcastId::new(self.unix_ms(), rand::random());
        let reports = self.registry().ingest_of(req.stream.as_str());
        let live = |s: &ServerId| reports.iter().any(|r| r.live && r.server_id == s.as_str());
        let stream = req.stream.clone();
        let key = req.key.clone();
        let (begun, role, private) = self
            .inner
            .streams
            .modify(&stream, |doc| {
                let own = publish::check(mode, &stream, doc, Some(&key), || key.clone())?;
                let mut d = match (own, doc) {
                    (Ownership::Existing, Some(d)) => d.clone(),
                    (Ownership::Create { origin, key, .. }, _) => StreamDoc::new(
                        stream.clone(),
                        key.as_ref().map(StreamKey::hash),
                        false,
                        origin,
                        now,
                    ),
                    (Ownership::Existing, None) => unreachable!("Existing only for a known stream"),
                };
                if let Some(p) = private_from_hook {
                    d.private = p;
                }
                let (begun, role) = d.join(
                    server,
                    new_id.clone(),
                    &live,
                    expires_at,
                    now,
                    history_s,
                    gone_s,
                )?;
                let private = d.private;
                Ok::<_, PublishError>((Change::Put(Box::new(d)), (begun, role, private)))
            })
            .await??;
        let token = self.inner.key.sign(&token::Claims {
            scp: token::Scope::Ingest,
            stream: stream.clone(),
            broadcast: begun.broadcast.id.clone(),
            server: server.clone(),
            role,
            private,
            iat: now,
            exp: expires_at,
        });
        tracing::info!(%stream, broadcast = %begun.broadcast.id, %role, server = %server, new = begun.new, protocol = %req.protocol, "key publish authorized");
        Ok(PublishGrant {
            stream,
            broadcast: begun.broadcast.id,
            role,
            token,
            private,
            new_broadcast: begun.new,
        })
    }

    /// Whether some entry server reports `broadcast` of `stream` live.
    pub(crate) fn reported_live(&self, stream: &StreamId, broadcast: &BroadcastId) -> bool {
        self.registry()
            .ingest_of(stream.as_str())
            .iter()
            .any(|r| r.live && r.broadcast.as_deref() == Some(broadcast.as_str()))
    }

    /// `GET /v1/streams/{id}`: the current (or last) broadcast and its ingest servers, with
    /// what they report. `None`: no such stream.
    pub fn stream_info(&self, stream: &StreamId) -> Option<StreamInfo> {
        let doc = self.inner.streams.cached(stream)?;
        let snap = self.snapshot();
        let reports = self.registry().ingest_of(stream.as_str());
        let cur = doc.current.as_ref();
        let mut ingest = Vec::new();
        let mut live = false;
        if let Some(b) = cur {
            for role in Role::ALL {
                let Some(p) = b.pick(role) else { continue };
                let rep = reports.iter().find(|r| {
                    r.server_id == p.server.as_str()
                        && r.broadcast.as_deref() == Some(b.id.as_str())
                });
                let l = rep.is_some_and(|r| r.live) && !b.is_ended();
                live |= l;
                let s = snap.fleet.get(p.server.as_str());
                ingest.push(IngestInfo {
                    role,
                    server_id: p.server.clone(),
                    pop: s.map(|s| pop_id(&s.pop)),
                    city: s.map(|s| s.city.clone()),
                    urls: snap.urls.get(p.server.as_str()).map(|u| (**u).clone()),
                    live: l,
                    next_seq: rep.map(|r| r.next_seq),
                });
            }
        }
        Some(StreamInfo {
            stream: stream.clone(),
            live,
            private: doc.private,
            broadcast: cur.map(|b| b.info(live)),
            ingest,
        })
    }

    /// `GET /v1/streams/{id}/broadcasts`: newest first.
    pub fn broadcasts(&self, stream: &StreamId) -> Option<BroadcastList> {
        let doc = self.inner.streams.cached(stream)?;
        let mut v = Vec::new();
        if let Some(c) = &doc.current {
            v.push(c.info(self.reported_live(stream, &c.id)));
        }
        v.extend(doc.history.iter().map(|b| b.info(false)));
        Some(BroadcastList {
            stream: stream.clone(),
            broadcasts: v,
        })
    }

    /// Ingest servers of one broadcast (current or past), for catch-up by broadcast id.
    pub fn broadcast_info(&self, stream: &StreamId, broadcast: &BroadcastId) -> Option<StreamInfo> {
        let doc = self.inner.streams.cached(stream)?;
        let b = doc.broadcast(broadcast)?;
        let snap = self.snapshot();
        let reports = self.registry().ingest_of(stream.as_str());
        let mut live = false;
        let ingest = Role::ALL
            .into_iter()
            .filter_map(|role| {
                let p = b.pick(role)?;
                let rep = reports.iter().find(|r| {
                    r.server_id == p.server.as_str()
                        && r.broadcast.as_deref() == Some(b.id.as_str())
                });
                let l = rep.is_some_and(|r| r.live) && !b.is_ended();
                live |= l;
                let s = snap.fleet.get(p.server.as_str());
                Some(IngestInfo {
                    role,
                    server_id: p.server.clone(),
                    pop: s.map(|s| pop_id(&s.pop)),
                    city: s.map(|s| s.city.clone()),
                    urls: snap.urls.get(p.server.as_str()).map(|u| (**u).clone()),
                    live: l,
                    next_seq: rep.map(|r| r.next_seq),
                })
            })
            .collect();
        Some(StreamInfo {
            stream: stream.clone(),
            live,
            private: doc.private,
            broadcast: Some(b.info(live)),
            ingest,
        })
    }

    /// `POST /v1/streams/{id}/playback-tokens`.
    pub async fn playback_token(
        &self,
        stream: &StreamId,
        auth: PlaybackAuth<'_>,
        ttl_s: Option<u64>,
    ) -> Result<PlaybackToken, PlaybackError> {
        let max = self.config().publish.max_playback_ttl_s;
        let ttl = match ttl_s {
            None => max,
            Some(t) if (1..=max).contains(&t) => t,
            Some(t) => {
                return Err(FieldError::new(
                    "ttl_s",
                    format!("ttl_s: {t} is out of range"),
                    Some(format!("1 to {max} seconds")),
                )
                .into());
            }
        };
        let Some(doc) = self.inner.streams.get(stream).await? else {
            return Err(PlaybackError::NotFound(stream.clone()));
        };
        if let PlaybackAuth::Key(k) = auth
            && !doc.key_matches(k)
        {
            return Err(PlaybackError::Forbidden(stream.clone()));
        }
        let now = self.unix_now();
        let token = self.inner.key.sign_play(&token::PlayClaims {
            scp: token::Scope::Play,
            stream: stream.clone(),
            iat: now,
            exp: now + ttl,
        });
        Ok(PlaybackToken {
            stream: stream.clone(),
            token,
            expires_at: now + ttl,
        })
    }

    fn record(&self, d: &StreamDoc) -> StreamRecord {
        StreamRecord {
            stream: d.stream.clone(),
            private: d.private,
            created_at: d.created_at,
            key_set_at: d.key_set_at,
            current: d
                .current
                .as_ref()
                .map(|b| b.info(self.reported_live(&d.stream, &b.id))),
            broadcasts: d.broadcasts,
        }
    }

    /// `POST /v1/admin/streams`: provision a stream (its key generated unless given).
    pub async fn create_stream(&self, req: StreamCreate) -> Result<StreamKeyIssued, AdminError> {
        let key = req
            .key
            .clone()
            .unwrap_or_else(|| StreamKey::from_random(rand::random()));
        let now = self.unix_now();
        let s = req.stream.clone();
        let hash = key.hash();
        self.inner
            .streams
            .modify(&s, |doc| match doc {
                Some(_) => Err(AdminError::Exists(s.clone())),
                None => Ok((
                    Change::Put(Box::new(StreamDoc::new(
                        s.clone(),
                        Some(hash),
                        req.private,
                        Origin::Provisioned,
                        now,
                    ))),
                    (),
                )),
            })
            .await??;
        tracing::info!(stream = %s, "stream provisioned");
        Ok(StreamKeyIssued { stream: s, key })
    }

    /// Provision the config file's streams at start (the file wins for key and privacy).
    pub async fn provision_from_config(&self) -> Result<(), StoreError> {
        let now = self.unix_now();
        for p in &self.config().publish.streams {
            let hash = match (&p.key, &p.key_sha256) {
                (Some(k), _) => crate::streams::hex(&k.hash()),
                (None, Some(h)) => h.to_ascii_lowercase(),
                (None, None) => continue,
            };
            let _ = self
                .inner
                .streams
                .modify(&p.stream, |doc| {
                    let mut d = doc.cloned().unwrap_or_else(|| {
                        StreamDoc::new(p.stream.clone(), None, p.private, Origin::Provisioned, now)
                    });
                    if d.key_sha256.as_deref() != Some(hash.as_str()) {
                        d.key_sha256 = Some(hash.clone());
                        d.key_set_at = now;
                    }
                    d.private = p.private;
                    d.origin = Origin::Provisioned;
                    Ok::<_, ()>((Change::Put(Box::new(d)), ()))
                })
                .await?;
        }
        Ok(())
    }

    /// `GET /v1/admin/streams`.
    pub async fn list_streams(
        &self,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<StreamList, AdminError> {
        let docs = self.inner.streams.list(after, limit + 1).await?;
        let next = (docs.len() > limit).then(|| docs[limit - 1].stream.clone());
        Ok(StreamList {
            streams: docs.iter().take(limit).map(|d| self.record(d)).collect(),
            next,
        })
    }

    /// `GET /v1/admin/streams/{id}`.
    pub async fn stream_record(&self, s: &StreamId) -> Result<StreamRecord, AdminError> {
        match self.inner.streams.get(s).await? {
            Some(d) => Ok(self.record(&d)),
            None => Err(AdminError::NotFound(s.clone())),
        }
    }

    /// `PATCH /v1/admin/streams/{id}`.
    pub async fn update_stream(
        &self,
        s: &StreamId,
        u: StreamUpdate,
    ) -> Result<StreamRecord, AdminError> {
        let d = self
            .inner
            .streams
            .modify(s, |doc| match doc {
                None => Err(AdminError::NotFound(s.clone())),
                Some(d) => {
                    let mut d = d.clone();
                    if let Some(p) = u.private {
                        d.private = p;
                    }
                    Ok((Change::Put(Box::new(d.clone())), d))
                }
            })
            .await??;
        Ok(self.record(&d))
    }

    /// `POST /v1/admin/streams/{id}/rotate-key`: a new key; the old one stops working at once
    /// (tokens already issued keep their broadcast until they expire or it ends).
    pub async fn rotate_key(&self, s: &StreamId) -> Result<StreamKeyIssued, AdminError> {
        let key = StreamKey::from_random(rand::random());
        let now = self.unix_now();
        self.inner
            .streams
            .modify(s, |doc| match doc {
                None => Err(AdminError::NotFound(s.clone())),
                Some(d) => {
                    let mut d = d.clone();
                    d.set_key(&key, now);
                    Ok((Change::Put(Box::new(d)), ()))
                }
            })
            .await??;
        tracing::info!(stream = %s, "stream key rotated");
        Ok(StreamKeyIssued {
            stream: s.clone(),
            key,
        })
    }

    /// `DELETE /v1/admin/streams/{id}`: revoke. Its active broadcast's entry servers are told
    /// to end it (heartbeat answers), and the id is free again.
    pub async fn revoke_stream(&self, s: &StreamId) -> Result<(), AdminError> {
        let ended = self
            .inner
            .streams
            .modify(s, |doc| match doc {
                None => Err(AdminError::NotFound(s.clone())),
                Some(d) => Ok((Change::Delete, d.active().map(|b| b.id.clone()))),
            })
            .await??;
        if let Some(b) = ended {
            self.note_superseded(s, &b);
        }
        tracing::info!(stream = %s, "stream revoked");
        Ok(())
    }

    /// Remember that `broadcast` must end on its entry servers (told in heartbeat answers).
    pub(crate) fn note_superseded(&self, s: &StreamId, b: &BroadcastId) {
        let mut g = self.inner.ending.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= 100_000 {
            g.clear();
        }
        g.insert(
            BroadcastRef {
                stream: s.clone(),
                broadcast: b.clone(),
            },
            self.unix_now(),
        );
    }

    /// What a heartbeat's stream reports mean for the stream documents, and which of the
    /// reported broadcasts the server must end (superseded or revoked).
    pub async fn observe_reports(
        &self,
        server: &ServerId,
        reports: &[StreamReport],
    ) -> Vec<BroadcastRef> {
        let now = self.unix_now();
        let mut end = Vec::new();
        if !self.inner.streams.complete() {
            // Shared documents not loaded yet: an unknown stream may well exist.
            return end;
        }
        for r in reports {
            let Some(doc) = self.inner.streams.cached(&r.stream) else {
                if r.live {
                    end.push(BroadcastRef {
                        stream: r.stream.clone(),
                        broadcast: r.broadcast.clone(),
                    });
                }
                continue;
            };
            let current = doc.current.as_ref().map(|b| &b.id);
            let ended_without_end = doc.current.as_ref().is_some_and(|b| {
                b.is_ended() && b.end_reason != Some(crate::streams::EndReason::End)
            });
            if current == Some(&r.broadcast) && ended_without_end && r.live && r.ended.is_none() {
                // It ended (publisher gone too long, tokens expired): a publisher that came back
                // with an old token must start a new broadcast. (A broadcast ended by its END
                // lets a lagging path finish: the END is the same on both.)
                end.push(BroadcastRef {
                    stream: r.stream.clone(),
                    broadcast: r.broadcast.clone(),
                });
                continue;
            }
            if current != Some(&r.broadcast) {
                // An older broadcast still publishing: the owner went live again.
                if r.live && r.ended.is_none() {
                    end.push(BroadcastRef {
                        stream: r.stream.clone(),
                        broadcast: r.broadcast.clone(),
                    });
                }
                continue;
            }
            if r.live {
                self.inner
                    .live_seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert((r.stream.clone(), r.broadcast.clone()), now);
            }
            let needs_write = doc
                .active()
                .is_some_and(|b| (r.live && !b.went_live) || r.ended.is_some());
            if needs_write {
                let gone = self.config().publish.publisher_gone_s;
                let bid = r.broadcast.clone();
                let _ = self
                    .inner
                    .streams
                    .modify(&r.stream, |doc| {
                        let Some(d) = doc else {
                            return Ok::<_, ()>((Change::Keep, ()));
                        };
                        if d.current.as_ref().map(|b| &b.id) != Some(&bid) {
                            return Ok((Change::Keep, ()));
                        }
                        let mut d = d.clone();
                        if d.observe(r.live, r.ended, Some(0), now, gone) {
                            Ok((Change::Put(Box::new(d)), ()))
                        } else {
                            Ok((Change::Keep, ()))
                        }
                    })
                    .await;
                if let Some(f) = r.ended {
                    tracing::info!(stream = %r.stream, broadcast = %r.broadcast, final_seq = f, server = %server, "broadcast ended");
                }
            }
        }
        let ending = self.inner.ending.lock().unwrap_or_else(|p| p.into_inner());
        for r in reports {
            let k = BroadcastRef {
                stream: r.stream.clone(),
                broadcast: r.broadcast.clone(),
            };
            if r.ended.is_none() && ending.contains_key(&k) && !end.contains(&k) {
                end.push(k);
            }
        }
        end
    }

    /// Upkeep for streams: end broadcasts whose publisher is gone or whose tokens expired unused,
    /// trim histories, forget idle `open` claims, and forget what must be told to entry servers
    /// once their tokens cannot be used any more.
    pub async fn upkeep_streams(&self) {
        let now = self.unix_now();
        let p = self.config().publish.clone();
        let seen: HashMap<(StreamId, BroadcastId), u64> = self
            .inner
            .live_seen
            .lock()
            .unwrap_or_else(|x| x.into_inner())
            .clone();
        for s in self.inner.streams.open() {
            let Some(doc) = self.inner.streams.cached(&s) else {
                continue;
            };
            let Some(b) = doc.active() else { continue };
            let live_now = self.reported_live(&s, &b.id);
            if live_now {
                self.inner
                    .live_seen
                    .lock()
                    .unwrap_or_else(|x| x.into_inner())
                    .insert((s.clone(), b.id.clone()), now);
                continue;
            }
            let since = seen
                .get(&(s.clone(), b.id.clone()))
                .map(|t| now.saturating_sub(*t));
            let mut probe = doc.clone();
            if !probe.observe(false, None, since, now, p.publisher_gone_s) {
                continue;
            }
            let bid = b.id.clone();
            let _ = self
                .inner
                .streams
                .modify(&s, |doc| {
                    let Some(d) = doc else {
                        return Ok::<_, ()>((Change::Keep, ()));
                    };
                    if d.active().map(|b| &b.id) != Some(&bid) {
                        return Ok((Change::Keep, ()));
                    }
                    let mut d = d.clone();
                    if d.observe(false, None, since, now, p.publisher_gone_s) {
                        Ok((Change::Put(Box::new(d)), ()))
                    } else {
                        Ok((Change::Keep, ()))
                    }
                })
                .await;
            tracing::info!(stream = %s, broadcast = %bid, "broadcast ended: publisher gone");
        }
        // Idle open claims and old history, at most once a minute.
        let last = self
            .inner
            .streams_swept
            .load(std::sync::atomic::Ordering::Relaxed);
        if now >= last + 60 {
            self.inner
                .streams_swept
                .store(now, std::sync::atomic::Ordering::Relaxed);
            for s in self.inner.streams.matching(|d| {
                d.expired_claim(now, p.claim_ttl_s)
                    || d.history
                        .last()
                        .is_some_and(|b| b.ended_at.unwrap_or(now) + p.history_s <= now)
            }) {
                let _ = self
                    .inner
                    .streams
                    .modify(&s, |doc| {
                        let Some(d) = doc else {
                            return Ok::<_, ()>((Change::Keep, ()));
                        };
                        if d.expired_claim(now, p.claim_ttl_s) {
                            return Ok((Change::Delete, ()));
                        }
                        let mut d = d.clone();
                        d.trim(now, p.history_s);
                        Ok((Change::Put(Box::new(d)), ()))
                    })
                    .await;
            }
            let ttl = self.config().tokens.ttl_s;
            self.inner
                .ending
                .lock()
                .unwrap_or_else(|x| x.into_inner())
                .retain(|_, at| *at + ttl + 60 > now);
            self.inner
                .live_seen
                .lock()
                .unwrap_or_else(|x| x.into_inner())
                .retain(|_, at| *at + p.publisher_gone_s * 4 + 60 > now);
        }
    }
}
