//! Streams and their broadcasts: who owns a stream, which broadcast is current, where it is
//! ingested.
//!
//! **What.** A [`StreamDoc`] is the director's record of one stream: the SHA-256 of its key
//! (never the key), whether it is private, and its broadcasts — the *current* one (the stream's
//! latest go-live, with the primary and backup the director picked for it) and a short history
//! of ended ones for catch-up. Assignments, RTMP publishes with a key, relays (`GET
//! /v1/streams/{id}`) and heartbeats all read it; only the owner's requests (the right key, or the
//! platform's yes in `webhook` mode) start or change a broadcast.
//!
//! **Broadcast life.** A broadcast starts when the owner asks for an assignment without naming
//! one, or an encoder publishes with the key while no broadcast of the stream is active. It is
//! *continued* by requests that name it (a device replacing a dead path) and by publishes while
//! it is active (an RTMP re-publish, the second output of a dual-output encoder). It *ends* when:
//! - an entry server reports the publisher's END (`ended: final_seq` in its heartbeat);
//! - it went live and then no entry server has reported a publisher for `publisher_gone_s`
//!   (the encoder crashed or the network died; the next go-live starts cleanly);
//! - it never went live and its tokens expired;
//! - the owner starts the next one (*superseded*: its entry servers are told to end its
//!   sessions in their heartbeat answers), or the stream is revoked.
//!
//! The rules are methods of [`StreamDoc`] taking `now`, tested without a store; [`StreamStore`]
//! keeps the documents — in memory, or shared by every director on etcd (see
//! [`crate::etcd_streams`]) with compare-and-swap writes so two directors never make two
//! current broadcasts.
//!
//! **Bounded.** At most `limits.max_tracked_streams` documents; each keeps at most
//! [`HISTORY`] past broadcasts, and ended ones older than `streams.history_s` are dropped.
//! Streams claimed in `open` mode that have not gone live for `streams.claim_ttl_s` are
//! forgotten (their id becomes free again); provisioned streams stay until revoked.
//!
//! **What not.** No HTTP, no key checks (that is [`crate::publish`]), no selection.

use std::collections::BTreeMap;
use std::sync::Mutex;

use proto::api::{BroadcastInfo, BroadcastState, Point};
use proto::{BroadcastId, Role, ServerId, StreamId};
use serde::{Deserialize, Serialize};

/// Past broadcasts kept per stream.
pub const HISTORY: usize = 16;

/// How a stream came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Created by an operator (config file or admin API): kept until revoked.
    Provisioned,
    /// Claimed by its first publisher in `open` mode: forgotten after `claim_ttl_s` idle.
    Claimed,
    /// Known because the platform's webhook allowed a publish: no key is kept.
    Webhook,
}

/// Why a broadcast ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The publisher sent END.
    End,
    /// The publisher was gone for longer than the grace period.
    Gone,
    /// It never went live and its tokens expired.
    Expired,
    /// The owner went live again.
    Superseded,
    /// The stream was revoked.
    Revoked,
}

/// One entry server of a broadcast, and where its pick was scored from (measurements of this
/// path are attributed there).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PickDoc {
    pub server: ServerId,
    #[serde(default)]
    pub basis: Option<Point>,
}

/// One broadcast of a stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BroadcastDoc {
    pub id: BroadcastId,
    pub started_at: u64,
    #[serde(default)]
    pub ended_at: Option<u64>,
    #[serde(default)]
    pub end_reason: Option<EndReason>,
    #[serde(default)]
    pub final_seq: Option<u64>,
    #[serde(default)]
    pub primary: Option<PickDoc>,
    #[serde(default)]
    pub backup: Option<PickDoc>,
    /// When the newest token issued for it expires.
    pub expires_at: u64,
    /// It has been reported live at least once (from then on, `publisher_gone_s` applies).
    #[serde(default)]
    pub went_live: bool,
}

impl BroadcastDoc {
    pub fn is_ended(&self) -> bool {
        self.ended_at.is_some()
    }

    pub fn pick(&self, role: Role) -> Option<&PickDoc> {
        match role {
            Role::Primary => self.primary.as_ref(),
            Role::Backup => self.backup.as_ref(),
        }
    }

    /// The role `server` has in this broadcast.
    pub fn role_of(&self, server: &ServerId) -> Option<Role> {
        Role::ALL
            .into_iter()
            .find(|r| self.pick(*r).is_some_and(|p| &p.server == server))
    }

    fn set_pick(&mut self, role: Role, p: PickDoc) {
        match role {
            Role::Primary => self.primary = Some(p),
            Role::Backup => self.backup = Some(p),
        }
    }

    /// The contract's view, with `live` as the registry reports it.
    pub fn info(&self, live: bool) -> BroadcastInfo {
        BroadcastInfo {
            id: self.id.clone(),
            state: if self.is_ended() {
                BroadcastState::Ended
            } else if live {
                BroadcastState::Live
            } else {
                BroadcastState::Starting
            },
            started_at: self.started_at,
            ended_at: self.ended_at,
            final_seq: self.final_seq,
            primary: self.primary.as_ref().map(|p| p.server.clone()),
            backup: self.backup.as_ref().map(|p| p.server.clone()),
        }
    }
}

/// The director's record of one stream (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamDoc {
    pub stream: StreamId,
    /// SHA-256 of the key, hex (none in `webhook` mode).
    #[serde(default)]
    pub key_sha256: Option<String>,
    #[serde(default)]
    pub private: bool,
    pub origin: Origin,
    pub created_at: u64,
    pub key_set_at: u64,
    /// Broadcasts started, ever.
    #[serde(default)]
    pub broadcasts: u64,
    /// The latest broadcast (ended or not).
    #[serde(default)]
    pub current: Option<BroadcastDoc>,
    /// Ended broadcasts before `current`, newest first.
    #[serde(default)]
    pub history: Vec<BroadcastDoc>,
    /// Last time a broadcast of it started or was reported live.
    pub active_at: u64,
}

/// Hex of a SHA-256 digest.
pub fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// What [`StreamDoc::begin`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Begun {
    /// The broadcast the caller's tokens are for.
    pub broadcast: BroadcastDoc,
    /// It started now.
    pub new: bool,
    /// The broadcast this one superseded, if that one had not ended.
    pub superseded: Option<BroadcastId>,
}

/// A broadcast that cannot be continued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ContinueError {
    #[error(
        "broadcast {0} is not the stream's current broadcast (it ended or a newer one started): \
         ask without `broadcast` to go live again"
    )]
    NotCurrent(BroadcastId),
    #[error("broadcast {0} ended: ask without `broadcast` to go live again")]
    Ended(BroadcastId),
}

/// Why a key-presenting publish cannot join the current broadcast.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error(
        "stream {stream} is live on {primary} and {backup} already (both paths are taken); \
         stop one of its encoders or wait {wait_s} s after it stopped"
    )]
    BothPathsTaken {
        stream: StreamId,
        primary: ServerId,
        backup: ServerId,
        wait_s: u64,
    },
}

impl StreamDoc {
    /// A new stream.
    pub fn new(
        stream: StreamId,
        key_sha256: Option<[u8; 32]>,
        private: bool,
        origin: Origin,
        now: u64,
    ) -> Self {
        Self {
            stream,
            key_sha256: key_sha256.as_ref().map(hex),
            private,
            origin,
            created_at: now,
            key_set_at: now,
            broadcasts: 0,
            current: None,
            history: Vec::new(),
            active_at: now,
        }
    }

    /// Whether `key` is this stream's key (constant-time on the digests). A stream without a
    /// stored key (webhook) matches nothing.
    pub fn key_matches(&self, key: &proto::StreamKey) -> bool {
        self.key_sha256
            .as_deref()
            .and_then(unhex)
            .is_some_and(|h| key.matches_hash(&h))
    }

    pub fn set_key(&mut self, key: &proto::StreamKey, now: u64) {
        self.key_sha256 = Some(hex(&key.hash()));
        self.key_set_at = now;
    }

    /// The current broadcast, if it has not ended.
    pub fn active(&self) -> Option<&BroadcastDoc> {
        self.current.as_ref().filter(|b| !b.is_ended())
    }

    /// The broadcast with this id: the current one or one in the history.
    pub fn broadcast(&self, id: &BroadcastId) -> Option<&BroadcastDoc> {
        self.current
            .iter()
            .chain(self.history.iter())
            .find(|b| &b.id == id)
    }

    /// End the current broadcast (if it has not ended).
    pub fn end_current(&mut self, reason: EndReason, final_seq: Option<u64>, now: u64) -> bool {
        match self.current.as_mut() {
            Some(b) if !b.is_ended() => {
                b.ended_at = Some(now);
                b.end_reason = Some(reason);
                if final_seq.is_some() {
                    b.final_seq = final_seq;
                }
                true
            }
            _ => false,
        }
    }

    /// Start a broadcast (ending the current one as superseded), or continue `cont` when given.
    /// `picks` are the servers chosen now for each role; `id` the new broadcast's id.
    pub fn begin(
        &mut self,
        cont: Option<&BroadcastId>,
        id: BroadcastId,
        picks: [(Role, Option<PickDoc>); 2],
        expires_at: u64,
        now: u64,
        history_s: u64,
    ) -> Result<Begun, ContinueError> {
        if let Some(c) = cont {
            let Some(cur) = self.current.as_mut().filter(|b| &b.id == c) else {
                return Err(ContinueError::NotCurrent(c.clone()));
            };
            if cur.is_ended() {
                return Err(ContinueError::Ended(c.clone()));
            }
            for (role, p) in picks {
                if let Some(p) = p {
                    cur.set_pick(role, p);
                }
            }
            cur.expires_at = cur.expires_at.max(expires_at);
            self.active_at = now;
            return Ok(Begun {
                broadcast: cur.clone(),
                new: false,
                superseded: None,
            });
        }
        let superseded = self.active().map(|b| b.id.clone());
        self.end_current(EndReason::Superseded, None, now);
        let mut b = BroadcastDoc {
            id,
            started_at: now,
            ended_at: None,
            end_reason: None,
            final_seq: None,
            primary: None,
            backup: None,
            expires_at,
            went_live: false,
        };
        for (role, p) in picks {
            if let Some(p) = p {
                b.set_pick(role, p);
            }
        }
        if let Some(old) = self.current.replace(b.clone()) {
            self.history.insert(0, old);
        }
        self.trim(now, history_s);
        self.broadcasts += 1;
        self.active_at = now;
        Ok(Begun {
            broadcast: b,
            new: true,
            superseded,
        })
    }

    /// A publish with the key at `server` (RTMP, HTTP push): join the active broadcast when
    /// there is one — as the role `server` already has, else the free (or silent) role — or
    /// start a new one with `server` as primary. `live` says which servers report a publisher
    /// of the active broadcast now.
    #[allow(clippy::too_many_arguments)]
    pub fn join(
        &mut self,
        server: &ServerId,
        id: BroadcastId,
        live: &dyn Fn(&ServerId) -> bool,
        expires_at: u64,
        now: u64,
        history_s: u64,
        gone_s: u64,
    ) -> Result<(Begun, Role), JoinError> {
        if let Some(cur) = self.current.as_mut().filter(|b| !b.is_ended()) {
            let role = if let Some(r) = cur.role_of(server) {
                Some(r)
            } else {
                // The first role that is empty, else one whose server has no publisher.
                Role::ALL
                    .into_iter()
                    .find(|r| cur.pick(*r).is_none())
                    .or_else(|| {
                        Role::ALL
                            .into_iter()
                            .find(|r| cur.pick(*r).is_some_and(|p| !live(&p.server)))
                    })
            };
            match role {
                Some(r) => {
                    if cur.role_of(server).is_none() {
                        cur.set_pick(
                            r,
                            PickDoc {
                                server: server.clone(),
                                basis: None,
                            },
                        );
                    }
                    cur.expires_at = cur.expires_at.max(expires_at);
                    self.active_at = now;
                    return Ok((
                        Begun {
                            broadcast: cur.clone(),
                            new: false,
                            superseded: None,
                        },
                        r,
                    ));
                }
                None => {
                    return Err(JoinError::BothPathsTaken {
                        stream: self.stream.clone(),
                        primary: cur
                            .primary
                            .as_ref()
                            .map(|p| p.server.clone())
                            .unwrap_or_else(|| server.clone()),
                        backup: cur
                            .backup
                            .as_ref()
                            .map(|p| p.server.clone())
                            .unwrap_or_else(|| server.clone()),
                        wait_s: gone_s,
                    });
                }
            }
        }
        let begun = self
            .begin(
                None,
                id,
                [
                    (
                        Role::Primary,
                        Some(PickDoc {
                            server: server.clone(),
                            basis: None,
                        }),
                    ),
                    (Role::Backup, None),
                ],
                expires_at,
                now,
                history_s,
            )
            .unwrap_or_else(|_| unreachable!("begin without `cont` cannot fail"));
        Ok((begun, Role::Primary))
    }

    /// Drop ended broadcasts beyond [`HISTORY`] or older than `history_s`.
    pub fn trim(&mut self, now: u64, history_s: u64) {
        self.history.truncate(HISTORY);
        self.history
            .retain(|b| b.ended_at.unwrap_or(now).saturating_add(history_s) > now);
    }

    /// Apply what the entry servers report of the current broadcast at `now`: went live, ended
    /// with a final sequence number. `since_live` is how long ago a publisher was last reported
    /// (None: never seen by this director). Returns whether the document changed.
    pub fn observe(
        &mut self,
        live_now: bool,
        ended: Option<u64>,
        since_live: Option<u64>,
        now: u64,
        gone_s: u64,
    ) -> bool {
        let Some(cur) = self.current.as_mut().filter(|b| !b.is_ended()) else {
            return false;
        };
        if let Some(f) = ended {
            self.end_current(EndReason::End, Some(f), now);
            return true;
        }
        if live_now {
            if !cur.went_live {
                cur.went_live = true;
                self.active_at = now;
                return true;
            }
            return false;
        }
        if cur.went_live {
            let quiet = since_live.unwrap_or(now.saturating_sub(self.active_at));
            if quiet >= gone_s {
                self.end_current(EndReason::Gone, None, now);
                return true;
            }
        } else if now >= cur.expires_at {
            self.end_current(EndReason::Expired, None, now);
            return true;
        }
        false
    }

    /// Forget-able: an `open` claim idle for longer than `claim_ttl_s` with nothing active.
    pub fn expired_claim(&self, now: u64, claim_ttl_s: u64) -> bool {
        self.origin != Origin::Provisioned
            && self.active().is_none()
            && now >= self.active_at.saturating_add(claim_ttl_s)
    }
}

/// A store operation that could not be done.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store is full (`limits.max_streams`).
    #[error(
        "the director tracks {0} streams, its limit: revoke unused streams or raise limits.max_tracked_streams"
    )]
    Full(usize),
    /// The shared store cannot be reached (etcd); a retry may succeed.
    #[error("stream records unavailable: {0}")]
    Unavailable(String),
}

/// What a modification does to a document.
#[derive(Debug)]
pub enum Change {
    Put(Box<StreamDoc>),
    Delete,
    Keep,
}

/// Documents in this process (see the module docs for the shared one).
#[derive(Debug)]
pub struct MemoryStreams {
    docs: Mutex<BTreeMap<StreamId, StreamDoc>>,
    max: usize,
}

impl MemoryStreams {
    pub fn new(max: usize) -> Self {
        Self {
            docs: Mutex::new(BTreeMap::new()),
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<StreamId, StreamDoc>> {
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &StreamId) -> Option<StreamDoc> {
        self.lock().get(id).cloned()
    }

    /// Apply `f` to the document (absent = None) under the store's lock.
    pub fn modify<R, E>(
        &self,
        id: &StreamId,
        mut f: impl FnMut(Option<&StreamDoc>) -> Result<(Change, R), E>,
    ) -> Result<Result<R, E>, StoreError> {
        let mut g = self.lock();
        let (change, r) = match f(g.get(id)) {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        match change {
            Change::Put(doc) => {
                if !g.contains_key(id) && g.len() >= self.max {
                    return Err(StoreError::Full(self.max));
                }
                g.insert(id.clone(), *doc);
            }
            Change::Delete => {
                g.remove(id);
            }
            Change::Keep => {}
        }
        Ok(Ok(r))
    }

    /// Up to `limit` documents after `after`, by id.
    pub fn list(&self, after: Option<&StreamId>, limit: usize) -> Vec<StreamDoc> {
        let g = self.lock();
        let range = match after {
            Some(a) => {
                g.range::<StreamId, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
            }
            None => g.range::<StreamId, _>(..),
        };
        range.take(limit).map(|(_, d)| d.clone()).collect()
    }

    /// Ids of streams with a broadcast that has not ended (for upkeep).
    pub fn open(&self) -> Vec<StreamId> {
        self.lock()
            .values()
            .filter(|d| d.active().is_some())
            .map(|d| d.stream.clone())
            .collect()
    }

    /// Ids of documents matching `f` (for upkeep's expiry pass).
    pub fn matching(&self, f: impl Fn(&StreamDoc) -> bool) -> Vec<StreamId> {
        self.lock()
            .values()
            .filter(|d| f(d))
            .map(|d| d.stream.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the director keeps stream documents: in this process, or shared on etcd.
#[derive(Debug)]
pub enum StreamStore {
    Memory(MemoryStreams),
    Etcd(crate::etcd_streams::EtcdStreams),
}

impl StreamStore {
    /// The document, as the store has it now.
    pub async fn get(&self, id: &StreamId) -> Result<Option<StreamDoc>, StoreError> {
        match self {
            StreamStore::Memory(m) => Ok(m.get(id)),
            StreamStore::Etcd(e) => e.get(id),
        }
    }

    /// The document as this director last saw it, without asking a shared store (hot paths:
    /// heartbeats, relays' lookups). Equal to [`StreamStore::get`] in memory.
    pub fn cached(&self, id: &StreamId) -> Option<StreamDoc> {
        match self {
            StreamStore::Memory(m) => m.get(id),
            StreamStore::Etcd(e) => e.cached(id),
        }
    }

    /// Apply `f` atomically: in memory under a lock; on a shared store as a compare-and-swap,
    /// calling `f` again with the newer document when another director wrote in between.
    pub async fn modify<R, E>(
        &self,
        id: &StreamId,
        f: impl FnMut(Option<&StreamDoc>) -> Result<(Change, R), E>,
    ) -> Result<Result<R, E>, StoreError> {
        match self {
            StreamStore::Memory(m) => m.modify(id, f),
            StreamStore::Etcd(e) => e.modify(id, f).await,
        }
    }

    pub async fn list(
        &self,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamDoc>, StoreError> {
        match self {
            StreamStore::Memory(m) => Ok(m.list(after, limit)),
            StreamStore::Etcd(e) => e.list(after, limit),
        }
    }

    /// Streams whose current broadcast has not ended.
    pub fn open(&self) -> Vec<StreamId> {
        match self {
            StreamStore::Memory(m) => m.open(),
            StreamStore::Etcd(e) => e.matching(|d| d.active().is_some()),
        }
    }

    /// Streams matching `f` (upkeep).
    pub fn matching(&self, f: impl Fn(&StreamDoc) -> bool) -> Vec<StreamId> {
        match self {
            StreamStore::Memory(m) => m.matching(f),
            StreamStore::Etcd(e) => e.matching(f),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            StreamStore::Memory(m) => m.len(),
            StreamStore::Etcd(e) => e.len(),
        }
    }

    /// This director holds every document there is (in memory always; on etcd once loaded): a
    /// stream it does not know does not exist, and reports can be judged against it.
    pub fn complete(&self) -> bool {
        match self {
            StreamStore::Memory(_) => true,
            StreamStore::Etcd(e) => e.loaded(),
        }
    }

    /// Changes dropped because another director changed the stream while this one could not
    /// reach etcd (0 in memory).
    pub fn conflicts(&self) -> u64 {
        match self {
            StreamStore::Memory(_) => 0,
            StreamStore::Etcd(e) => e.conflicts(),
        }
    }

    /// Changes kept locally, not written to the shared store yet (0 in memory).
    pub fn unwritten(&self) -> usize {
        match self {
            StreamStore::Memory(_) => 0,
            StreamStore::Etcd(e) => e.unwritten(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> StreamId {
        s.parse().unwrap()
    }
    fn srv(s: &str) -> ServerId {
        s.parse().unwrap()
    }
    fn pick(s: &str) -> Option<PickDoc> {
        Some(PickDoc {
            server: srv(s),
            basis: None,
        })
    }
    fn bid(n: u64) -> BroadcastId {
        BroadcastId::new(n, 0)
    }

    fn doc() -> StreamDoc {
        let key = proto::StreamKey::parse("abcdefghijklmnop").unwrap();
        StreamDoc::new(sid("s"), Some(key.hash()), false, Origin::Claimed, 100)
    }

    #[test]
    fn keys_match_only_their_own_hash() {
        let d = doc();
        assert!(d.key_matches(&proto::StreamKey::parse("abcdefghijklmnop").unwrap()));
        assert!(!d.key_matches(&proto::StreamKey::parse("abcdefghijklmnoq").unwrap()));
        let mut w = d.clone();
        w.key_sha256 = None;
        assert!(!w.key_matches(&proto::StreamKey::parse("abcdefghijklmnop").unwrap()));
    }

    #[test]
    fn a_new_go_live_supersedes_and_continuing_needs_the_current_id() {
        let mut d = doc();
        let a = d
            .begin(
                None,
                bid(1),
                [
                    (Role::Primary, pick("fra-1")),
                    (Role::Backup, pick("lon-1")),
                ],
                500,
                110,
                3600,
            )
            .unwrap();
        assert!(a.new && a.superseded.is_none());
        // Replacing the backup keeps the broadcast.
        let c = d
            .begin(
                Some(&bid(1)),
                bid(2),
                [(Role::Primary, None), (Role::Backup, pick("ams-1"))],
                600,
                120,
                3600,
            )
            .unwrap();
        assert!(!c.new);
        assert_eq!(c.broadcast.id, bid(1));
        assert_eq!(c.broadcast.backup.unwrap().server, srv("ams-1"));
        assert_eq!(c.broadcast.primary.unwrap().server, srv("fra-1"));
        // A new go-live supersedes it.
        let n = d
            .begin(
                None,
                bid(3),
                [(Role::Primary, pick("fra-1")), (Role::Backup, None)],
                700,
                130,
                3600,
            )
            .unwrap();
        assert_eq!(n.superseded, Some(bid(1)));
        assert_eq!(d.history[0].end_reason, Some(EndReason::Superseded));
        assert_eq!(d.broadcasts, 2);
        // The old one cannot be continued any more.
        assert_eq!(
            d.begin(
                Some(&bid(1)),
                bid(4),
                [(Role::Primary, None), (Role::Backup, None)],
                0,
                140,
                3600
            ),
            Err(ContinueError::NotCurrent(bid(1)))
        );
        d.end_current(EndReason::End, Some(9), 150);
        assert_eq!(
            d.begin(
                Some(&bid(3)),
                bid(4),
                [(Role::Primary, None), (Role::Backup, None)],
                0,
                160,
                3600
            ),
            Err(ContinueError::Ended(bid(3)))
        );
    }

    #[test]
    fn publishes_with_the_key_join_the_active_broadcast_or_start_one() {
        let mut d = doc();
        let none = |_: &ServerId| false;
        let (b, r) = d
            .join(&srv("fra-1"), bid(1), &none, 500, 100, 3600, 30)
            .unwrap();
        assert!(b.new && r == Role::Primary);
        // The second output of a tee, at another server: the backup of the same broadcast.
        let (b2, r2) = d
            .join(&srv("lon-1"), bid(2), &none, 500, 101, 3600, 30)
            .unwrap();
        assert!(!b2.new && r2 == Role::Backup && b2.broadcast.id == bid(1));
        // A re-publish at the primary: same role.
        let (b3, r3) = d
            .join(&srv("fra-1"), bid(3), &none, 500, 102, 3600, 30)
            .unwrap();
        assert_eq!((b3.broadcast.id, r3), (bid(1), Role::Primary));
        // A third server while both are live: refused.
        let both = |_: &ServerId| true;
        assert!(matches!(
            d.join(&srv("ams-1"), bid(4), &both, 500, 103, 3600, 30),
            Err(JoinError::BothPathsTaken { .. })
        ));
        // ... but takes a silent path's role.
        let fra_live = |s: &ServerId| s.as_str() == "fra-1";
        let (b5, r5) = d
            .join(&srv("ams-1"), bid(5), &fra_live, 500, 104, 3600, 30)
            .unwrap();
        assert_eq!((b5.broadcast.id, r5), (bid(1), Role::Backup));
        // After it ended, the next publish starts broadcast 2.
        d.end_current(EndReason::End, Some(10), 105);
        let (b6, r6) = d
            .join(&srv("lon-1"), bid(6), &none, 500, 106, 3600, 30)
            .unwrap();
        assert!(b6.new && b6.broadcast.id == bid(6) && r6 == Role::Primary);
    }

    #[test]
    fn broadcasts_end_on_end_on_silence_and_on_expiry() {
        let mut d = doc();
        d.begin(
            None,
            bid(1),
            [(Role::Primary, pick("fra-1")), (Role::Backup, None)],
            500,
            100,
            3600,
        )
        .unwrap();
        // Not live yet: stays until its tokens expire.
        assert!(!d.observe(false, None, None, 400, 30));
        assert!(d.observe(false, None, None, 500, 30));
        assert_eq!(
            d.current.as_ref().unwrap().end_reason,
            Some(EndReason::Expired)
        );
        // Live, then silent for the grace period.
        d.begin(
            None,
            bid(2),
            [(Role::Primary, pick("fra-1")), (Role::Backup, None)],
            5000,
            600,
            3600,
        )
        .unwrap();
        assert!(d.observe(true, None, Some(0), 610, 30));
        assert!(!d.observe(false, None, Some(29), 639, 30));
        assert!(d.observe(false, None, Some(30), 640, 30));
        assert_eq!(
            d.current.as_ref().unwrap().end_reason,
            Some(EndReason::Gone)
        );
        // END with a final sequence number.
        d.begin(
            None,
            bid(3),
            [(Role::Primary, pick("fra-1")), (Role::Backup, None)],
            5000,
            700,
            3600,
        )
        .unwrap();
        assert!(d.observe(true, Some(41), Some(0), 710, 30));
        let c = d.current.as_ref().unwrap();
        assert_eq!(
            (c.end_reason, c.final_seq),
            (Some(EndReason::End), Some(41))
        );
        assert_eq!(c.info(false).state, BroadcastState::Ended);
    }

    #[test]
    fn history_is_bounded_by_count_and_age_and_claims_expire() {
        let mut d = doc();
        for i in 0..40u64 {
            d.begin(
                None,
                bid(i + 1),
                [(Role::Primary, pick("fra-1")), (Role::Backup, None)],
                10_000,
                100 + i,
                3600,
            )
            .unwrap();
        }
        assert_eq!(d.history.len(), HISTORY);
        d.end_current(EndReason::End, Some(1), 200);
        d.trim(200 + 3600, 3600);
        assert!(d.history.is_empty(), "older than history_s");
        assert!(d.broadcast(&bid(40)).is_some(), "the current one stays");
        assert!(!d.expired_claim(200 + 100, 86_400));
        assert!(d.expired_claim(139 + 86_400, 86_400));
        d.origin = Origin::Provisioned;
        assert!(!d.expired_claim(10_000_000, 86_400));
    }

    #[test]
    fn the_memory_store_is_bounded_and_lists_in_pages() {
        let m = MemoryStreams::new(3);
        for s in ["a", "b", "c"] {
            m.modify(&sid(s), |_| {
                Ok::<_, ()>((
                    Change::Put(Box::new(StreamDoc::new(
                        sid(s),
                        None,
                        false,
                        Origin::Webhook,
                        1,
                    ))),
                    (),
                ))
            })
            .unwrap()
            .unwrap();
        }
        let full = m.modify(&sid("d"), |_| {
            Ok::<_, ()>((
                Change::Put(Box::new(StreamDoc::new(
                    sid("d"),
                    None,
                    false,
                    Origin::Webhook,
                    1,
                ))),
                (),
            ))
        });
        assert!(matches!(full, Err(StoreError::Full(3))));
        let page: Vec<_> = m
            .list(Some(&sid("a")), 1)
            .into_iter()
            .map(|d| d.stream)
            .collect();
        assert_eq!(page, vec![sid("b")]);
        m.modify(&sid("b"), |_| Ok::<_, ()>((Change::Delete, ())))
            .unwrap()
            .unwrap();
        assert_eq!(m.len(), 2);
    }
}
