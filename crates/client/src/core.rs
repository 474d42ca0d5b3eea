//! The push core: ring retention and the per-path state machine (pure: no I/O; time is an
//! argument).
//!
//! **What.** [`PushCore`] owns the [`ChunkRing`] and one [`PathCore`] per upload path. The I/O
//! layer ([`crate::push`]) reports what happened — a WELCOME, an ACK, a lost session, a chunk
//! read from the source — and asks what to do next: which frame to write on a path, how long to
//! back off, whether to ask the director for a replacement. Every rule of the failover design is
//! here, where it can be unit tested without sockets.
//!
//! **Retention.** A chunk leaves the ring only when every path that still counts has it: the ring
//! is trimmed to the lowest `acked_next` (first sequence number the path's server does not
//! have) over paths that are not [`PathState::Dead`]. A path that has never been welcomed counts
//! as having nothing. When the ring is full, the source waits (backpressure) — except that a path
//! which is *down* (not [`PathState::Live`]) and is what holds the ring's oldest chunk, while
//! another path is live and ahead of it, is declared dead for good: a dead path must never stall
//! the surviving one. A connected path that is merely slow is not dropped; it slows the source.
//!
//! **What not.** No sockets, clocks, randomness or tasks; no knowledge of URLs beyond carrying
//! them in [`PathTarget`].

use bytes::Bytes;
use proto::{DataFlags, Role, Welcome};
use serde::Serialize;
use std::time::Duration;
use tokio::time::Instant;

use crate::ring::{Chunk, ChunkRing};

/// Where one upload path sends: a server, its URL for the chosen protocol, and the token the
/// director signed for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathTarget {
    /// The role written in HELLO (the role the token was signed for).
    pub role: Role,
    /// The entry server's id, as the director named it.
    pub server_id: String,
    /// `tcp://host:port` (native) or `ws://host:port/v1/ingest` (WebSocket).
    pub url: String,
    /// The director's signed assignment token for this server, stream and role.
    #[serde(skip)]
    pub token: String,
}

/// Where a path is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathState {
    /// Opening a connection / waiting for WELCOME (first time, or after a replacement).
    Connecting,
    /// Welcomed: sending DATA, receiving ACKs.
    Live,
    /// The session was lost; backing off before reconnecting.
    Reconnecting,
    /// Asking the director for a replacement server.
    Replacing,
    /// END was acknowledged: the server holds the whole stream.
    Finished,
    /// Given up for the rest of the push (see the module docs); no longer holds the ring.
    Dead,
}

impl PathState {
    /// Finished or dead: the path's task is over.
    pub fn is_terminal(self) -> bool {
        matches!(self, PathState::Finished | PathState::Dead)
    }

    /// Lowercase name for progress lines.
    pub fn as_str(self) -> &'static str {
        match self {
            PathState::Connecting => "connecting",
            PathState::Live => "live",
            PathState::Reconnecting => "reconnecting",
            PathState::Replacing => "replacing",
            PathState::Finished => "finished",
            PathState::Dead => "dead",
        }
    }
}

/// Timing policy of the failover rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailoverPolicy {
    /// First reconnect delay; doubles per failed attempt.
    pub backoff_min: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// A path down this long (no WELCOME since it went down) asks the director for a
    /// replacement; while it stays down it asks again at most this often.
    pub replace_after: Duration,
}

impl Default for FailoverPolicy {
    fn default() -> Self {
        FailoverPolicy {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            replace_after: Duration::from_secs(5),
        }
    }
}

/// One upload path's bookkeeping.
#[derive(Debug, Clone)]
pub struct PathCore {
    /// Which of the push's paths this is (its identity; the wire role is in `target`).
    pub slot: Role,
    /// The server it currently sends to.
    pub target: PathTarget,
    /// Its state.
    pub state: PathState,
    /// First sequence number its server does not have (`None`: never welcomed).
    acked_next: Option<u64>,
    /// Next sequence number to write on the current session.
    send_next: u64,
    /// END written on the current session.
    end_written: bool,
    welcomed_once: bool,
    down_since: Option<Instant>,
    attempts: u32,
    last_replace: Option<Instant>,
    /// Payload bytes written (all sessions, duplicates after a reconnect included).
    pub sent_bytes: u64,
    /// Sessions re-established after a loss (same or replacement server).
    pub reconnects: u32,
    /// Times the director gave this path a new server.
    pub replacements: u32,
    /// The last error seen on this path.
    pub last_error: Option<String>,
}

impl PathCore {
    /// Highest sequence number the server acknowledged (or held at WELCOME).
    pub fn acked_through(&self) -> Option<u64> {
        self.acked_next.and_then(|n| n.checked_sub(1))
    }

    fn holds_from(&self) -> u64 {
        self.acked_next.unwrap_or(0)
    }
}

/// Why a WELCOME cannot be used: the server and this push disagree on where the stream is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WelcomeError {
    /// The server needs chunks the ring no longer holds.
    #[error(
        "server {server} expects seq {next_seq}, but the oldest chunk still held is {front}: \
         it cannot be resumed without a gap"
    )]
    Behind {
        server: String,
        next_seq: u64,
        front: u64,
    },
    /// The server holds chunks this push never produced (a stream id reused by someone else?).
    #[error(
        "server {server} already has the stream up to seq {next_seq}, beyond what this push \
         produced ({produced}): use a new stream id"
    )]
    Ahead {
        server: String,
        next_seq: u64,
        produced: u64,
    },
    /// The server's payload limit is below this push's chunk size.
    #[error("server {server} accepts payloads up to {max_payload} bytes, chunks are up to {chunk}")]
    PayloadLimit {
        server: String,
        max_payload: u32,
        chunk: usize,
    },
}

/// The server acknowledged something it was never sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ACK through {through} but only seqs below {sent} were sent on this session")]
pub struct AckError {
    /// The bad ACK.
    pub through: u64,
    /// First sequence number not yet written.
    pub sent: u64,
}

/// What a path writes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A DATA frame.
    Data(Chunk),
    /// END with the final sequence number.
    End(u64),
}

/// What a path does after its session was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Reconnect to the same target after this delay (before jitter).
    Retry(Duration),
    /// Ask the director for a replacement now.
    Replace,
    /// Nothing: the path is finished or dead.
    Stop,
}

/// The push's shared state; see the module docs for the rules.
#[derive(Debug, Clone)]
pub struct PushCore {
    ring: ChunkRing,
    paths: Vec<PathCore>,
    policy: FailoverPolicy,
    started: bool,
    first_seq: Option<u64>,
    final_seq: Option<u64>,
    input_bytes: u64,
    chunks: u64,
}

impl PushCore {
    /// A core for these paths (one or two), with a ring of `ring_bytes`.
    pub fn new(paths: Vec<(Role, PathTarget)>, ring_bytes: usize, policy: FailoverPolicy) -> Self {
        let paths = paths
            .into_iter()
            .map(|(slot, target)| PathCore {
                slot,
                target,
                state: PathState::Connecting,
                acked_next: None,
                send_next: 0,
                end_written: false,
                welcomed_once: false,
                down_since: None,
                attempts: 0,
                last_replace: None,
                sent_bytes: 0,
                reconnects: 0,
                replacements: 0,
                last_error: None,
            })
            .collect();
        PushCore {
            ring: ChunkRing::new(0, ring_bytes),
            paths,
            policy,
            started: false,
            first_seq: None,
            final_seq: None,
            input_bytes: 0,
            chunks: 0,
        }
    }

    /// The paths.
    pub fn paths(&self) -> &[PathCore] {
        &self.paths
    }

    /// The ring.
    pub fn ring(&self) -> &ChunkRing {
        &self.ring
    }

    /// True once a WELCOME fixed the stream's first sequence number.
    pub fn started(&self) -> bool {
        self.started
    }

    /// The final sequence number, once the input ended.
    pub fn final_seq(&self) -> Option<u64> {
        self.final_seq
    }

    /// The first sequence number this push produced.
    pub fn first_seq(&self) -> Option<u64> {
        self.first_seq
    }

    /// Input bytes and chunks taken so far.
    pub fn input_totals(&self) -> (u64, u64) {
        (self.input_bytes, self.chunks)
    }

    /// True when every path is finished or dead.
    pub fn all_done(&self) -> bool {
        self.paths.iter().all(|p| p.state.is_terminal())
    }

    /// `resume_from` for the next HELLO on path `i`: nothing before the stream started, else the
    /// oldest sequence number still held (what a fresh replacement server can start from).
    pub fn resume_from(&self, _i: usize) -> Option<u64> {
        self.started.then(|| self.ring.front_seq())
    }

    /// Path `i` is opening a connection.
    pub fn on_connecting(&mut self, i: usize) {
        if let Some(p) = self.paths.get_mut(i)
            && !p.state.is_terminal()
            && p.state != PathState::Reconnecting
        {
            p.state = PathState::Connecting;
        }
    }

    /// Path `i` received WELCOME. The first WELCOME of the push fixes the first sequence
    /// number. `chunk_max` is the largest payload this push cuts.
    pub fn on_welcome(
        &mut self,
        i: usize,
        w: &Welcome,
        chunk_max: usize,
    ) -> Result<(), WelcomeError> {
        let Some(p) = self.paths.get(i) else {
            return Ok(());
        };
        let server = w.server_id.clone();
        if (w.max_payload as usize) < chunk_max {
            return Err(WelcomeError::PayloadLimit {
                server,
                max_payload: w.max_payload,
                chunk: chunk_max,
            });
        }
        if !self.started {
            self.started = true;
            self.ring.rebase(w.next_seq);
        }
        let (front, produced) = (self.ring.front_seq(), self.ring.next_seq());
        if w.next_seq < front {
            return Err(WelcomeError::Behind {
                server,
                next_seq: w.next_seq,
                front,
            });
        }
        if w.next_seq > produced {
            return Err(WelcomeError::Ahead {
                server,
                next_seq: w.next_seq,
                produced,
            });
        }
        let terminal = p.state.is_terminal();
        let p = &mut self.paths[i];
        if terminal {
            return Ok(());
        }
        if p.welcomed_once {
            p.reconnects += 1;
        }
        p.welcomed_once = true;
        p.state = PathState::Live;
        p.acked_next = Some(w.next_seq);
        p.send_next = w.next_seq;
        p.end_written = false;
        p.down_since = None;
        p.attempts = 0;
        self.trim();
        Ok(())
    }

    /// The next frame path `i` should write, if any (advances the path's send position).
    pub fn next_out(&mut self, i: usize) -> Option<Outgoing> {
        let p = self.paths.get_mut(i)?;
        if p.state != PathState::Live {
            return None;
        }
        if p.send_next < self.ring.next_seq() {
            let chunk = self.ring.get(p.send_next)?.clone();
            p.send_next += 1;
            p.sent_bytes += chunk.payload.len() as u64;
            return Some(Outgoing::Data(chunk));
        }
        match self.final_seq {
            Some(f) if !p.end_written && p.send_next > f => Some(Outgoing::End(f)),
            _ => None,
        }
    }

    /// END was written (and flushed) on path `i`'s current session.
    pub fn on_end_written(&mut self, i: usize) {
        if let Some(p) = self.paths.get_mut(i) {
            p.end_written = true;
        }
    }

    /// Path `i` received ACK `through`. Returns true when the path has written END and its
    /// server acknowledged the final sequence number: the session can close.
    pub fn on_ack(&mut self, i: usize, through: u64) -> Result<bool, AckError> {
        let Some(p) = self.paths.get_mut(i) else {
            return Ok(false);
        };
        if through >= p.send_next {
            return Err(AckError {
                through,
                sent: p.send_next,
            });
        }
        if p.acked_next.is_none_or(|n| through + 1 > n) {
            p.acked_next = Some(through + 1);
        }
        let complete = p.end_written && self.final_seq.is_some_and(|f| through >= f);
        self.trim();
        Ok(complete)
    }

    /// Whether path `i`'s server holds everything through the final sequence number.
    pub fn path_complete(&self, i: usize) -> bool {
        match (self.paths.get(i), self.final_seq) {
            (Some(p), Some(f)) => p.acked_next.is_some_and(|n| n > f),
            _ => false,
        }
    }

    /// Path `i` finished: its server acknowledged END.
    pub fn on_finished(&mut self, i: usize) {
        if let Some(p) = self.paths.get_mut(i) {
            p.state = PathState::Finished;
        }
        self.trim();
    }

    /// Path `i` is dead for good.
    pub fn on_dead(&mut self, i: usize, reason: impl Into<String>) {
        if let Some(p) = self.paths.get_mut(i)
            && p.state != PathState::Finished
        {
            p.state = PathState::Dead;
            p.last_error = Some(reason.into());
        }
        self.trim();
    }

    /// Path `i` lost its session (or could not open one) with `error`. `fatal` means retrying
    /// the same server cannot help (e.g. `unauthorized`); `can_replace` means a director is
    /// there to ask.
    ///
    /// Rules: the outage clock starts at the first failure since the path was last welcomed.
    /// A fatal error asks for a replacement at once (or kills the path when there is no
    /// director); otherwise the path retries the same server with exponential backoff, and once
    /// it has been down for `replace_after` asks for a replacement, again at most every
    /// `replace_after` while it stays down.
    pub fn on_session_lost(
        &mut self,
        i: usize,
        error: String,
        fatal: bool,
        can_replace: bool,
        now: Instant,
    ) -> Next {
        let policy = self.policy;
        let Some(p) = self.paths.get_mut(i) else {
            return Next::Stop;
        };
        if p.state.is_terminal() {
            return Next::Stop;
        }
        p.last_error = Some(error.clone());
        p.end_written = false;
        p.attempts = p.attempts.saturating_add(1);
        let down_since = *p.down_since.get_or_insert(now);
        if fatal && !can_replace {
            self.on_dead(i, error);
            return Next::Stop;
        }
        let due_by_time = now.saturating_duration_since(down_since) >= policy.replace_after;
        let rate_ok = p
            .last_replace
            .is_none_or(|t| now.saturating_duration_since(t) >= policy.replace_after);
        if can_replace && (fatal || due_by_time) && rate_ok {
            p.state = PathState::Replacing;
            p.last_replace = Some(now);
            return Next::Replace;
        }
        p.state = PathState::Reconnecting;
        Next::Retry(backoff(p.attempts, policy.backoff_min, policy.backoff_max))
    }

    /// The director gave path `i` a new target.
    pub fn on_replaced(&mut self, i: usize, target: PathTarget) {
        if let Some(p) = self.paths.get_mut(i)
            && !p.state.is_terminal()
        {
            p.target = target;
            p.state = PathState::Connecting;
            p.replacements += 1;
            p.attempts = 0;
        }
    }

    /// Asking the director failed; path `i` goes on retrying its current target.
    pub fn on_replace_failed(&mut self, i: usize, error: String) -> Next {
        let policy = self.policy;
        let Some(p) = self.paths.get_mut(i) else {
            return Next::Stop;
        };
        if p.state.is_terminal() {
            return Next::Stop;
        }
        p.last_error = Some(error);
        p.state = PathState::Reconnecting;
        Next::Retry(backoff(p.attempts, policy.backoff_min, policy.backoff_max))
    }

    /// Takes a chunk from the source. `Err` gives the payload back when the ring is full even
    /// after [`make_room`](Self::make_room): the caller waits for an ACK and retries. Requires
    /// [`started`](Self::started).
    pub fn push_chunk(&mut self, pts: i64, payload: Bytes) -> Result<u64, Bytes> {
        if !self.ring.fits(payload.len()) {
            self.make_room();
        }
        let len = payload.len() as u64;
        let seq = self.ring.push(pts, DataFlags::NONE, payload)?;
        self.first_seq.get_or_insert(seq);
        self.input_bytes += len;
        self.chunks += 1;
        Ok(seq)
    }

    /// The input ended. A push that produced no chunk sends one empty chunk, so that END has a
    /// sequence number to name. Returns the final sequence number (`None` before the start).
    pub fn end_input(&mut self, pts: i64) -> Option<u64> {
        if !self.started {
            return None;
        }
        if self.first_seq.is_none() {
            // An empty chunk always fits an empty-enough ring; if not, wait like any chunk.
            if self.push_chunk(pts, Bytes::new()).is_err() {
                return None;
            }
        }
        let f = self.ring.next_seq().checked_sub(1)?;
        self.final_seq = Some(f);
        Some(f)
    }

    /// Declares dead every down path that holds the full ring's oldest chunk while another path
    /// is live and ahead of it. Returns the slots declared dead.
    pub fn make_room(&mut self) -> Vec<Role> {
        let front = self.ring.front_seq();
        let live_ahead = self
            .paths
            .iter()
            .any(|p| p.state == PathState::Live && p.holds_from() > front);
        if !live_ahead {
            return Vec::new();
        }
        let cap = self.ring.capacity();
        let mut dead = Vec::new();
        for p in &mut self.paths {
            if !p.state.is_terminal() && p.state != PathState::Live && p.holds_from() <= front {
                p.state = PathState::Dead;
                p.last_error = Some(format!(
                    "declared dead: the chunk ring ({cap} bytes) filled up while this path was down"
                ));
                dead.push(p.slot);
            }
        }
        self.trim();
        dead
    }

    fn trim(&mut self) {
        let to = self
            .paths
            .iter()
            .filter(|p| p.state != PathState::Dead)
            .map(|p| p.holds_from())
            .min()
            .unwrap_or_else(|| self.ring.next_seq());
        self.ring.trim_to(to);
    }
}

/// Exponential backoff: `min · 2^(attempt-1)`, capped at `max` (attempt counts from 1).
pub fn backoff(attempt: u32, min: Duration, max: Duration) -> Duration {
    let shift = attempt.saturating_sub(1).min(20);
    min.saturating_mul(1u32 << shift).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(role: Role, id: &str) -> PathTarget {
        PathTarget {
            role,
            server_id: id.into(),
            url: format!("tcp://{id}"),
            token: "t".into(),
        }
    }

    fn welcome(next_seq: u64) -> Welcome {
        Welcome {
            next_seq,
            server_id: "s".into(),
            max_payload: 1 << 20,
            max_frame_len: (1 << 20) + 65536,
            ack_interval_ms: 100,
        }
    }

    fn two(ring: usize) -> PushCore {
        PushCore::new(
            vec![
                (Role::Primary, target(Role::Primary, "a")),
                (Role::Backup, target(Role::Backup, "b")),
            ],
            ring,
            FailoverPolicy::default(),
        )
    }

    fn drain(c: &mut PushCore, i: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(o) = c.next_out(i) {
            match o {
                Outgoing::Data(ch) => out.push(ch.seq),
                Outgoing::End(f) => {
                    // END repeats until it is reported written; stop at the first.
                    out.push(1_000_000 + f);
                    break;
                }
            }
        }
        out
    }

    fn data(n: usize) -> Bytes {
        Bytes::from(vec![1u8; n])
    }

    #[test]
    fn first_welcome_fixes_the_start_and_both_paths_get_every_chunk() {
        let mut c = two(1000);
        assert_eq!(c.resume_from(0), None);
        c.on_welcome(0, &welcome(5), 64).unwrap();
        assert_eq!(c.resume_from(1), Some(5));
        for _ in 0..3 {
            c.push_chunk(0, data(10)).unwrap();
        }
        assert_eq!(drain(&mut c, 0), vec![5, 6, 7]);
        c.on_welcome(1, &welcome(5), 64).unwrap();
        assert_eq!(drain(&mut c, 1), vec![5, 6, 7]);
        assert_eq!(c.paths()[1].sent_bytes, 30);
    }

    #[test]
    fn the_ring_keeps_a_chunk_until_both_paths_acked_it() {
        let mut c = two(1000);
        c.on_welcome(0, &welcome(0), 64).unwrap();
        c.on_welcome(1, &welcome(0), 64).unwrap();
        for _ in 0..4 {
            c.push_chunk(0, data(10)).unwrap();
        }
        drain(&mut c, 0);
        drain(&mut c, 1);
        assert_eq!(c.on_ack(0, 3), Ok(false));
        assert_eq!(c.ring().front_seq(), 0, "backup has acked nothing yet");
        c.on_ack(1, 1).unwrap();
        assert_eq!(c.ring().front_seq(), 2);
        assert_eq!(c.on_ack(1, 0), Ok(false), "stale ACKs are ignored");
        assert_eq!(c.ring().front_seq(), 2);
        assert_eq!(
            c.on_ack(1, 4),
            Err(AckError {
                through: 4,
                sent: 4
            })
        );
    }

    #[test]
    fn a_reconnect_resumes_from_welcome_with_no_duplicates_or_gaps() {
        let mut c = two(1000);
        c.on_welcome(0, &welcome(0), 64).unwrap();
        c.on_welcome(1, &welcome(0), 64).unwrap();
        for _ in 0..5 {
            c.push_chunk(0, data(10)).unwrap();
        }
        drain(&mut c, 0);
        drain(&mut c, 1);
        c.on_ack(0, 4).unwrap();
        c.on_ack(1, 1).unwrap();
        let t0 = Instant::now();
        let next = c.on_session_lost(1, "reset".into(), false, true, t0);
        assert_eq!(next, Next::Retry(Duration::from_millis(100)));
        assert_eq!(c.paths()[1].state, PathState::Reconnecting);
        assert_eq!(c.next_out(1), None, "nothing goes out while down");
        // The server got 2 and 3 but had not acked them yet: it says next_seq 4.
        assert_eq!(c.resume_from(1), Some(2));
        c.on_welcome(1, &welcome(4), 64).unwrap();
        assert_eq!(drain(&mut c, 1), vec![4]);
        assert_eq!(c.paths()[1].reconnects, 1);
        assert_eq!(c.paths()[1].acked_through(), Some(3));
        assert_eq!(c.ring().front_seq(), 4);
    }

    #[test]
    fn welcome_out_of_range_is_refused() {
        let mut c = two(1000);
        c.on_welcome(0, &welcome(0), 64).unwrap();
        for _ in 0..3 {
            c.push_chunk(0, data(10)).unwrap();
        }
        drain(&mut c, 0);
        c.on_ack(0, 2).unwrap();
        c.on_dead(1, "x");
        assert_eq!(c.ring().front_seq(), 3);
        let mut c2 = c.clone();
        assert!(matches!(
            c.on_welcome(0, &welcome(1), 64),
            Err(WelcomeError::Behind { front: 3, .. })
        ));
        assert!(matches!(
            c2.on_welcome(0, &welcome(9), 64),
            Err(WelcomeError::Ahead { produced: 3, .. })
        ));
        let mut small = welcome(3);
        small.max_payload = 10;
        assert!(matches!(
            c2.on_welcome(0, &small, 64),
            Err(WelcomeError::PayloadLimit { .. })
        ));
    }

    #[test]
    fn backoff_doubles_then_replacement_after_the_outage_window() {
        let mut c = two(1000);
        c.on_welcome(1, &welcome(0), 64).unwrap();
        let t0 = Instant::now();
        let mut delays = Vec::new();
        for k in 0..6u64 {
            match c.on_session_lost(
                1,
                "refused".into(),
                false,
                true,
                t0 + Duration::from_millis(k * 500),
            ) {
                Next::Retry(d) => delays.push(d.as_millis()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000]);
        let at5 = t0 + Duration::from_secs(5);
        assert_eq!(
            c.on_session_lost(1, "refused".into(), false, true, at5),
            Next::Replace
        );
        assert_eq!(c.paths()[1].state, PathState::Replacing);
        // The director is down: retry the old target, and do not ask again before 5 s more.
        assert!(matches!(
            c.on_replace_failed(1, "director down".into()),
            Next::Retry(_)
        ));
        let at6 = at5 + Duration::from_secs(1);
        assert!(matches!(
            c.on_session_lost(1, "refused".into(), false, true, at6),
            Next::Retry(_)
        ));
        let at10 = at5 + Duration::from_secs(5);
        assert_eq!(
            c.on_session_lost(1, "refused".into(), false, true, at10),
            Next::Replace
        );
        c.on_replaced(1, target(Role::Backup, "c"));
        assert_eq!(c.paths()[1].replacements, 1);
        assert_eq!(c.paths()[1].target.server_id, "c");
        assert_eq!(c.paths()[1].state, PathState::Connecting);
        // Without a director, the path keeps retrying.
        assert!(matches!(
            c.on_session_lost(1, "x".into(), false, false, at10 + Duration::from_secs(60)),
            Next::Retry(_)
        ));
    }

    #[test]
    fn fatal_errors_replace_at_once_or_kill_the_path_without_a_director() {
        let mut c = two(1000);
        let t0 = Instant::now();
        assert_eq!(
            c.on_session_lost(0, "unauthorized".into(), true, true, t0),
            Next::Replace
        );
        assert_eq!(
            c.on_session_lost(1, "unauthorized".into(), true, false, t0),
            Next::Stop
        );
        assert_eq!(c.paths()[1].state, PathState::Dead);
    }

    #[test]
    fn a_full_ring_kills_a_down_path_only_while_the_other_is_live_and_ahead() {
        let mut c = two(30);
        c.on_welcome(0, &welcome(0), 64).unwrap();
        c.on_welcome(1, &welcome(0), 64).unwrap();
        for _ in 0..3 {
            c.push_chunk(0, data(10)).unwrap();
        }
        drain(&mut c, 0);
        drain(&mut c, 1);
        // Both live, nobody acked: backpressure.
        assert!(c.push_chunk(0, data(10)).is_err());
        // Backup goes down, primary has not acked: still backpressure (no live path ahead).
        c.on_session_lost(1, "gone".into(), false, true, Instant::now());
        assert!(c.push_chunk(0, data(10)).is_err());
        assert_eq!(c.paths()[1].state, PathState::Reconnecting);
        // Primary acks: the down backup holds the ring alone and is declared dead.
        c.on_ack(0, 2).unwrap();
        assert_eq!(c.push_chunk(0, data(10)), Ok(3));
        assert_eq!(c.paths()[1].state, PathState::Dead);
        assert!(
            c.paths()[1]
                .last_error
                .as_deref()
                .unwrap_or("")
                .contains("ring")
        );
        assert_eq!(c.ring().front_seq(), 3);
    }

    #[test]
    fn both_paths_down_never_drops_data() {
        let mut c = two(20);
        c.on_welcome(0, &welcome(0), 64).unwrap();
        c.push_chunk(0, data(10)).unwrap();
        c.push_chunk(0, data(10)).unwrap();
        let now = Instant::now();
        c.on_session_lost(0, "x".into(), false, true, now);
        c.on_session_lost(1, "x".into(), false, true, now);
        assert!(c.push_chunk(0, data(10)).is_err());
        assert!(c.make_room().is_empty());
        assert_eq!(c.ring().len(), 2);
    }

    #[test]
    fn end_is_sent_after_the_last_chunk_and_finishes_on_the_final_ack() {
        let mut c = two(1000);
        c.on_welcome(0, &welcome(0), 64).unwrap();
        c.push_chunk(0, data(3)).unwrap();
        c.push_chunk(0, data(3)).unwrap();
        assert_eq!(c.end_input(9), Some(1));
        assert_eq!(drain(&mut c, 0), vec![0, 1, 1_000_001]);
        assert_eq!(c.on_ack(0, 1), Ok(false), "END not written yet");
        assert!(c.path_complete(0));
        c.on_end_written(0);
        assert_eq!(c.next_out(0), None);
        assert_eq!(c.on_ack(0, 1), Ok(true));
        c.on_finished(0);
        assert!(!c.all_done());
        c.on_dead(1, "gone");
        assert!(c.all_done());
    }

    #[test]
    fn an_empty_input_still_has_a_final_seq() {
        let mut c = two(1000);
        assert_eq!(c.end_input(0), None, "not started");
        c.on_welcome(0, &welcome(7), 64).unwrap();
        assert_eq!(c.end_input(0), Some(7));
        assert_eq!(drain(&mut c, 0), vec![7, 1_000_007]);
    }

    #[test]
    fn a_replacement_resumes_from_the_oldest_held_chunk() {
        let mut c = two(1000);
        c.on_welcome(0, &welcome(0), 64).unwrap();
        c.on_welcome(1, &welcome(0), 64).unwrap();
        for _ in 0..6 {
            c.push_chunk(0, data(1)).unwrap();
        }
        drain(&mut c, 0);
        drain(&mut c, 1);
        c.on_ack(0, 5).unwrap();
        c.on_ack(1, 2).unwrap();
        let t0 = Instant::now();
        c.on_session_lost(1, "x".into(), true, true, t0);
        c.on_replaced(1, target(Role::Backup, "fresh"));
        assert_eq!(c.resume_from(1), Some(3));
        // A fresh server applying the resume rule answers next_seq = resume_from.
        c.on_welcome(1, &welcome(3), 64).unwrap();
        assert_eq!(drain(&mut c, 1), vec![3, 4, 5]);
    }

    #[test]
    fn backoff_is_capped() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(backoff(1, min, max), min);
        assert_eq!(backoff(3, min, max), Duration::from_millis(400));
        assert_eq!(backoff(40, min, max), max);
        assert_eq!(backoff(0, min, max), min);
    }
}
