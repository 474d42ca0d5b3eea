//! Stream documents shared by every director on etcd: who owns a stream (its key hash), its
//! current broadcast and history are the same whichever director answers, and survive a
//! director's restart.
//!
//! **What.** [`EtcdStreams`] keeps each [`StreamDoc`] as JSON at `{prefix}/streams/{id}`. Reads
//! come from a local copy kept current by a watch (`cached`, `get`, `list`, upkeep); every change
//! is a compare-and-swap on the key's `mod_revision` (0 = create if absent): a director that lost
//! the race gets the newer document in the same request and runs the change again on it, so two
//! directors never make two current broadcasts of a stream, and nothing one of them wrote is
//! overwritten blind.
//!
//! **Failover.** Requests go to one member at a time, the first of `registry.etcd.endpoints`
//! first; a member that fails or does not answer within `request_timeout_ms` is left for the next
//! at once (the registry's rule, [`crate::etcd`]). A write that timed out may still have landed:
//! when the swap then fails, the document etcd holds is compared with the bytes this director
//! tried to write, and if they are the same the change counts as done (it is not applied twice).
//!
//! **etcd unreachable.** Once the documents were loaded, a director keeps answering from its copy:
//! changes are applied locally and queued (the latest per stream, against the revision it was
//! based on) and written when etcd returns. If another director changed the same stream
//! meanwhile, etcd's document wins: the local change is dropped, logged and counted
//! (`firstmile_director_stream_conflicts_total`). The price of staying available is that two
//! directors cut off from etcd at the same time could each start a broadcast of one stream; when
//! etcd returns one of them is superseded by the other. Until its first load a director has no
//! copy and answers 503 for changes (`stream records unavailable`), and does not judge entry
//! servers' reports against documents it has not seen.
//!
//! **Bounded.** The copy holds what etcd holds under the prefix, at most
//! `limits.max_tracked_streams` new documents are created by this director past that count, and
//! the queue of unwritten changes holds at most one entry per stream in the copy.
//!
//! **What not.** No lease on stream documents: they live until their own rules end them
//! (claims expire, history trims, revocation), applied by every director's upkeep through the same
//! compare-and-swap.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use proto::StreamId;
use tokio::sync::Notify;

use crate::config::DirectorConfig;
use crate::etcd::{EtcdError, Failure, connect_options};
use crate::streams::{Change, StoreError, StreamDoc};

/// The key kind under `{prefix}/` (the registry's keys all sort before it).
pub const KIND: &str = "streams/";

/// Compare-and-swap rounds before a change gives up (each lost round means another director
/// changed the same stream in between).
const ROUNDS: usize = 16;
const MIN_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug)]
struct Entry {
    doc: StreamDoc,
    /// `mod_revision` of the version the copy holds (or was based on, for a local change).
    rev: i64,
}

/// A change made while etcd could not be reached.
#[derive(Debug)]
struct Pending {
    /// The revision it was based on (0: the stream did not exist).
    base: i64,
    /// The new document; `None` deletes.
    doc: Option<StreamDoc>,
}

#[derive(Debug, Default)]
struct Copy {
    docs: BTreeMap<StreamId, Entry>,
    pending: BTreeMap<StreamId, Pending>,
}

struct Inner {
    endpoints: Vec<String>,
    options: ConnectOptions,
    timeout: Duration,
    retry_max: Duration,
    /// `{prefix}/streams/`.
    root: String,
    max: usize,
    copy: Mutex<Copy>,
    clients: Mutex<Vec<Option<Client>>>,
    /// The member requests go to first.
    at: AtomicUsize,
    /// The copy was loaded at least once.
    loaded: AtomicBool,
    /// The watch is running: the copy is current.
    synced: AtomicBool,
    wake: Notify,
    conflicts: AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStreams")
            .field("endpoints", &self.endpoints)
            .field("root", &self.root)
            .field("loaded", &self.loaded)
            .field("synced", &self.synced)
            .finish_non_exhaustive()
    }
}

/// Stream documents on etcd (see the module docs). Its watch task starts on first use inside a
/// tokio runtime and stops when the store is dropped.
#[derive(Debug)]
pub struct EtcdStreams {
    inner: Arc<Inner>,
    started: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for EtcdStreams {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a compare-and-swap found.
enum Swap {
    Done(i64),
    /// Another version is there (`None`: no document), at this revision.
    Lost(Option<(Vec<u8>, i64)>),
}

/// What a lost swap found is what this director tried to write (`None`: a delete): a write of
/// its own that landed although its request timed out.
fn holds(found: &Option<(Vec<u8>, i64)>, wrote: &Option<Vec<u8>>) -> bool {
    match (found, wrote) {
        (Some((bytes, _)), Some(v)) => bytes == v,
        (None, None) => true,
        _ => false,
    }
}

impl EtcdStreams {
    pub fn from_config(config: &DirectorConfig) -> Result<Self, EtcdError> {
        let e = &config.registry.etcd;
        let s = Self {
            inner: Arc::new(Inner {
                endpoints: e.endpoints.clone(),
                options: connect_options(e)?,
                timeout: Duration::from_millis(e.request_timeout_ms),
                retry_max: Duration::from_millis(e.retry_max_ms),
                root: format!("{}/{KIND}", e.prefix),
                max: config.limits.max_tracked_streams,
                copy: Mutex::new(Copy::default()),
                clients: Mutex::new(vec![None; e.endpoints.len().max(1)]),
                at: AtomicUsize::new(0),
                loaded: AtomicBool::new(false),
                synced: AtomicBool::new(false),
                wake: Notify::new(),
                conflicts: AtomicU64::new(0),
            }),
            started: AtomicBool::new(false),
            task: Mutex::new(None),
        };
        s.ensure_started();
        Ok(s)
    }

    fn ensure_started(&self) {
        if self.started.load(Ordering::Acquire) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        *lock(&self.task) = Some(handle.spawn(self.inner.clone().run()));
    }

    /// Changes dropped because another director changed the stream while this one could not
    /// reach etcd.
    pub fn conflicts(&self) -> u64 {
        self.inner.conflicts.load(Ordering::Relaxed)
    }

    /// The copy was loaded: reports can be judged against it.
    pub fn loaded(&self) -> bool {
        self.ensure_started();
        self.inner.loaded.load(Ordering::Acquire)
    }

    /// Changes not written to etcd yet.
    pub fn unwritten(&self) -> usize {
        lock(&self.inner.copy).pending.len()
    }

    pub fn cached(&self, id: &StreamId) -> Option<StreamDoc> {
        self.ensure_started();
        lock(&self.inner.copy).docs.get(id).map(|e| e.doc.clone())
    }

    pub fn get(&self, id: &StreamId) -> Result<Option<StreamDoc>, StoreError> {
        self.need_loaded()?;
        Ok(self.cached(id))
    }

    fn need_loaded(&self) -> Result<(), StoreError> {
        if self.loaded() {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "not loaded from etcd yet; retry in a moment".into(),
            ))
        }
    }

    pub fn list(
        &self,
        after: Option<&StreamId>,
        limit: usize,
    ) -> Result<Vec<StreamDoc>, StoreError> {
        self.need_loaded()?;
        let c = lock(&self.inner.copy);
        let range = match after {
            Some(a) => c
                .docs
                .range::<StreamId, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => c.docs.range::<StreamId, _>(..),
        };
        Ok(range.take(limit).map(|(_, e)| e.doc.clone()).collect())
    }

    pub fn matching(&self, f: impl Fn(&StreamDoc) -> bool) -> Vec<StreamId> {
        lock(&self.inner.copy)
            .docs
            .values()
            .filter(|e| f(&e.doc))
            .map(|e| e.doc.stream.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.inner.copy).docs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Apply `f` as a compare-and-swap (see the module docs).
    pub async fn modify<R, E>(
        &self,
        id: &StreamId,
        mut f: impl FnMut(Option<&StreamDoc>) -> Result<(Change, R), E>,
    ) -> Result<Result<R, E>, StoreError> {
        self.need_loaded()?;
        let inner = &self.inner;
        let key = format!("{}{id}", inner.root);
        // The version to start from: the copy's (current while the watch runs).
        let (mut cur, mut rev) = {
            let c = lock(&inner.copy);
            match c.docs.get(id) {
                Some(e) => (Some(e.doc.clone()), e.rev),
                None => (None, 0),
            }
        };
        for _ in 0..ROUNDS {
            let (change, r) = match f(cur.as_ref()) {
                Ok(x) => x,
                Err(e) => return Ok(Err(e)),
            };
            let value = match &change {
                Change::Keep => return Ok(Ok(r)),
                Change::Put(doc) => {
                    if cur.is_none() && self.len() >= inner.max {
                        return Err(StoreError::Full(inner.max));
                    }
                    Some(serde_json::to_vec(&**doc).map_err(|e| {
                        StoreError::Unavailable(format!("stream {id}: not encodable: {e}"))
                    })?)
                }
                Change::Delete => None,
            };
            let new_doc = match change {
                Change::Put(d) => Some(*d),
                _ => None,
            };
            if !inner.synced.load(Ordering::Acquire) {
                inner.keep_local(id, rev, new_doc);
                return Ok(Ok(r));
            }
            match inner.swap(&key, rev, value.as_deref()).await {
                Ok(Swap::Done(at)) => {
                    inner.applied(id, at, new_doc);
                    return Ok(Ok(r));
                }
                Ok(Swap::Lost(now)) => {
                    // Ours, written by a request that timed out and was retried?
                    if holds(&now, &value) {
                        let at = now.as_ref().map_or(rev, |n| n.1);
                        inner.applied(id, at, new_doc);
                        return Ok(Ok(r));
                    }
                    match now {
                        Some((bytes, at)) => match serde_json::from_slice::<StreamDoc>(&bytes) {
                            Ok(d) => {
                                inner.observed(id, at, Some(d.clone()));
                                (cur, rev) = (Some(d), at);
                            }
                            Err(e) => {
                                return Err(StoreError::Unavailable(format!(
                                    "stream {id}: the document in etcd is unreadable: {e}"
                                )));
                            }
                        },
                        None => {
                            inner.observed(id, i64::MAX, None);
                            (cur, rev) = (None, 0);
                        }
                    }
                }
                Err(Failure::Member(why)) => {
                    // No member answers: keep it locally, written when etcd returns.
                    tracing::warn!(stream = %id, error = %why, "etcd unreachable: stream change kept locally");
                    inner.synced.store(false, Ordering::Release);
                    inner.keep_local(id, rev, new_doc);
                    inner.wake.notify_one();
                    return Ok(Ok(r));
                }
                Err(Failure::Refused(why)) => return Err(StoreError::Unavailable(why)),
            }
        }
        Err(StoreError::Unavailable(format!(
            "stream {id}: changed by other directors {ROUNDS} times in a row; retry"
        )))
    }
}

impl Inner {
    /// Apply a change this director wrote (`at`: its revision).
    fn applied(&self, id: &StreamId, at: i64, doc: Option<StreamDoc>) {
        let mut c = lock(&self.copy);
        c.pending.remove(id);
        match doc {
            Some(doc) => {
                if c.docs.get(id).is_none_or(|e| e.rev <= at) {
                    c.docs.insert(id.clone(), Entry { doc, rev: at });
                }
            }
            None => {
                c.docs.remove(id);
            }
        }
    }

    /// What etcd holds for `id`, seen in a failed swap or an event (`None`: deleted at `at`).
    fn observed(&self, id: &StreamId, at: i64, doc: Option<StreamDoc>) {
        let mut c = lock(&self.copy);
        if c.pending.contains_key(id) {
            // A local change waits for this key: the flush decides (etcd wins on conflict).
            return;
        }
        match doc {
            Some(doc) => {
                if c.docs.get(id).is_none_or(|e| e.rev < at) {
                    c.docs.insert(id.clone(), Entry { doc, rev: at });
                }
            }
            None => {
                if c.docs.get(id).is_some_and(|e| e.rev <= at) {
                    c.docs.remove(id);
                }
            }
        }
    }

    /// A change made while etcd cannot be reached: visible here at once, queued for etcd.
    fn keep_local(&self, id: &StreamId, rev: i64, doc: Option<StreamDoc>) {
        let mut c = lock(&self.copy);
        let base = c.pending.get(id).map_or(rev, |p| p.base);
        match &doc {
            Some(d) => {
                c.docs.insert(
                    id.clone(),
                    Entry {
                        doc: d.clone(),
                        rev,
                    },
                );
            }
            None => {
                c.docs.remove(id);
            }
        }
        c.pending.insert(id.clone(), Pending { base, doc });
    }

    async fn client(&self, i: usize) -> Result<Client, Failure> {
        if let Some(c) = lock(&self.clients).get(i).cloned().flatten() {
            return Ok(c);
        }
        let endpoint = self.endpoints[i].clone();
        let c = match tokio::time::timeout(
            self.timeout,
            Client::connect([endpoint.as_str()], Some(self.options.clone())),
        )
        .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(Failure::of("connect", &e)),
            Err(_) => {
                return Err(Failure::Member(format!(
                    "connect {endpoint}: no answer within {:?}",
                    self.timeout
                )));
            }
        };
        if let Some(slot) = lock(&self.clients).get_mut(i) {
            *slot = Some(c.clone());
        }
        Ok(c)
    }

    /// One request, to the current member and on failure to each other in turn.
    async fn request<T, F, Fut>(&self, what: &str, f: F) -> Result<T, Failure>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.endpoints.len();
        let mut last = String::from("no etcd endpoints");
        for _ in 0..n {
            let i = self.at.load(Ordering::Relaxed) % n;
            let attempt = async {
                let c = self.client(i).await?;
                match tokio::time::timeout(self.timeout, f(c)).await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(Failure::of(what, &e)),
                    Err(_) => Err(Failure::Member(format!(
                        "{what}: no answer within {:?}",
                        self.timeout
                    ))),
                }
            };
            match attempt.await {
                Ok(v) => return Ok(v),
                Err(Failure::Refused(m)) => return Err(Failure::Refused(m)),
                Err(Failure::Member(m)) => {
                    if let Some(slot) = lock(&self.clients).get_mut(i) {
                        *slot = None;
                    }
                    let _ = self.at.compare_exchange(
                        i,
                        (i + 1) % n,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    last = format!("{}: {m}", self.endpoints[i]);
                }
            }
        }
        Err(Failure::Member(last))
    }

    /// Write `value` (`None`: delete) at `key` if its `mod_revision` is `rev`.
    async fn swap(&self, key: &str, rev: i64, value: Option<&[u8]>) -> Result<Swap, Failure> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
            .and_then([match value {
                Some(v) => TxnOp::put(key, v, None),
                None => TxnOp::delete(key, None),
            }])
            .or_else([TxnOp::get(key, None)]);
        let resp = self
            .request("stream write", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let at = resp.header().map_or(0, |h| h.revision());
        if resp.succeeded() {
            return Ok(Swap::Done(at));
        }
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(g) = op {
                return Ok(Swap::Lost(
                    g.kvs()
                        .first()
                        .map(|kv| (kv.value().to_vec(), kv.mod_revision())),
                ));
            }
        }
        Ok(Swap::Lost(None))
    }

    fn id_of(&self, kv: &KeyValue) -> Option<StreamId> {
        let key = kv.key_str().ok()?;
        key.strip_prefix(self.root.as_str())?.parse().ok()
    }

    /// Write the changes kept while etcd was away. Stops at the first member failure.
    async fn flush(&self) -> Result<(), Failure> {
        loop {
            let next = {
                let c = lock(&self.copy);
                c.pending
                    .iter()
                    .next()
                    .map(|(id, p)| (id.clone(), p.base, p.doc.clone()))
            };
            let Some((id, base, doc)) = next else {
                return Ok(());
            };
            let key = format!("{}{id}", self.root);
            let value = match &doc {
                Some(d) => match serde_json::to_vec(d) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        tracing::error!(stream = %id, error = %e, "stream document not encodable: dropped");
                        lock(&self.copy).pending.remove(&id);
                        continue;
                    }
                },
                None => None,
            };
            let res = self.swap(&key, base, value.as_deref()).await;
            let mut c = lock(&self.copy);
            // Changed again meanwhile: the newer change is written on the next round.
            let same = c
                .pending
                .get(&id)
                .is_some_and(|p| p.base == base && p.doc == doc);
            match res {
                Ok(Swap::Done(at)) => {
                    if same {
                        c.pending.remove(&id);
                        if let Some(e) = c.docs.get_mut(&id) {
                            e.rev = at;
                        }
                    } else if let Some(p) = c.pending.get_mut(&id) {
                        p.base = at;
                    }
                }
                Ok(Swap::Lost(now)) => {
                    let ours = holds(&now, &value);
                    c.pending.remove(&id);
                    if !ours {
                        self.conflicts.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(stream = %id, "a change made while etcd was unreachable conflicts with another director's: etcd's version kept");
                    }
                    match now.and_then(|(b, at)| {
                        serde_json::from_slice::<StreamDoc>(&b)
                            .ok()
                            .map(|d| (d, at))
                    }) {
                        Some((doc, rev)) => {
                            c.docs.insert(id.clone(), Entry { doc, rev });
                        }
                        None => {
                            c.docs.remove(&id);
                        }
                    }
                }
                Err(Failure::Refused(why)) => {
                    tracing::error!(stream = %id, error = %why, "etcd refused a stream change: dropped");
                    c.pending.remove(&id);
                }
                Err(e @ Failure::Member(_)) => return Err(e),
            }
        }
    }

    /// Replace the copy with a full load (changes not written yet stay on top).
    fn replace(&self, kvs: Vec<KeyValue>) {
        let mut docs = BTreeMap::new();
        for kv in &kvs {
            let Some(id) = self.id_of(kv) else {
                tracing::warn!("etcd stream key with a bad id: skipped");
                continue;
            };
            match serde_json::from_slice::<StreamDoc>(kv.value()) {
                Ok(doc) if doc.stream == id => {
                    docs.insert(
                        id,
                        Entry {
                            doc,
                            rev: kv.mod_revision(),
                        },
                    );
                }
                _ => tracing::warn!(stream = %id, "bad stream document in etcd: skipped"),
            }
        }
        let mut c = lock(&self.copy);
        let pending: Vec<(StreamId, Option<StreamDoc>)> = c
            .pending
            .iter()
            .map(|(id, p)| (id.clone(), p.doc.clone()))
            .collect();
        for (id, doc) in pending {
            match doc {
                Some(doc) => {
                    let rev = docs.get(&id).map_or(0, |e| e.rev);
                    docs.insert(id, Entry { doc, rev });
                }
                None => {
                    docs.remove(&id);
                }
            }
        }
        c.docs = docs;
        tracing::info!(streams = c.docs.len(), "etcd stream documents loaded");
    }

    fn apply(&self, kv: &KeyValue, ty: EventType) {
        let Some(id) = self.id_of(kv) else { return };
        match ty {
            EventType::Put => match serde_json::from_slice::<StreamDoc>(kv.value()) {
                Ok(doc) if doc.stream == id => self.observed(&id, kv.mod_revision(), Some(doc)),
                _ => tracing::warn!(stream = %id, "bad stream document in etcd: skipped"),
            },
            EventType::Delete => self.observed(&id, kv.mod_revision(), None),
        }
    }

    /// The watch task: load, write what was kept, watch; on failure the next member, and after
    /// every member failed in a row a backoff.
    async fn run(self: Arc<Self>) {
        let mut backoff = MIN_BACKOFF;
        let mut failed = 0;
        loop {
            match self.session().await {
                Ok(()) => {
                    failed = 0;
                    continue;
                }
                Err(why) => {
                    self.synced.store(false, Ordering::Release);
                    failed += 1;
                    if failed < self.endpoints.len() {
                        continue;
                    }
                    failed = 0;
                    tracing::warn!(error = %why, "etcd unreachable: stream documents answered from this director's copy");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.retry_max);
                    continue;
                }
            }
        }
    }

    /// Ok: reload (compaction, cancelled watch); Err: a member failed.
    async fn session(&self) -> Result<(), String> {
        self.flush().await.map_err(|e| e.to_string())?;
        let root = self.root.clone();
        let mut got = self
            .request("stream load", |mut c| {
                let root = root.clone();
                async move {
                    c.get(root.as_bytes(), Some(GetOptions::new().with_prefix()))
                        .await
                }
            })
            .await
            .map_err(|e| e.to_string())?;
        let rev = got.header().map_or(0, |h| h.revision());
        self.replace(got.take_kvs());
        self.loaded.store(true, Ordering::Release);
        let i = self.at.load(Ordering::Relaxed) % self.endpoints.len().max(1);
        let mut client = self.client(i).await.map_err(|e| e.to_string())?;
        let mut watch = tokio::time::timeout(
            self.timeout,
            client.watch(
                root.as_bytes(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            ),
        )
        .await
        .map_err(|_| "stream watch: no answer".to_string())?
        .map_err(|e| format!("stream watch: {e}"))?;
        match tokio::time::timeout(self.timeout, watch.message()).await {
            Ok(Ok(Some(resp))) => {
                if resp.canceled() || resp.compact_revision() > 0 {
                    return Ok(());
                }
                for ev in resp.events() {
                    if let Some(kv) = ev.kv() {
                        self.apply(kv, ev.event_type());
                    }
                }
            }
            Ok(Ok(None)) => return Err("stream watch closed at once".into()),
            Ok(Err(e)) => return Err(format!("stream watch: {e}")),
            Err(_) => return Err("stream watch: not created in time".into()),
        }
        // Changes kept while the watch was being set up.
        self.flush().await.map_err(|e| e.to_string())?;
        self.synced.store(true, Ordering::Release);
        loop {
            tokio::select! {
                msg = watch.message() => match msg {
                    Ok(Some(resp)) => {
                        if resp.canceled() || resp.compact_revision() > 0 {
                            self.synced.store(false, Ordering::Release);
                            return Ok(());
                        }
                        for ev in resp.events() {
                            if let Some(kv) = ev.kv() {
                                self.apply(kv, ev.event_type());
                            }
                        }
                    }
                    Ok(None) => return Err("stream watch closed".into()),
                    Err(e) => return Err(format!("stream watch: {e}")),
                },
                _ = self.wake.notified() => {
                    if !self.synced.load(Ordering::Acquire) {
                        // A request failed on every member: start over.
                        return Err("a stream write reached no member".into());
                    }
                    self.flush().await.map_err(|e| e.to_string())?;
                }
            }
        }
    }
}
