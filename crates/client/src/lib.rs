//! firstmile's device side: ask the director, upload on two paths at once, play a stream.
//!
//! **What.** [`assign`] asks the director for an assignment (a primary and a backup entry
//! server, each with a signed token). [`push::Pusher`] sends one source to both servers at once
//! over the native framed protocol (`crates/proto/PROTOCOL.md`), every chunk on every path, so
//! that either path can die without a gap. [`play::play`] fetches a stream's live HTTP body from
//! an entry server.
//!
//! **Why two paths at once, not failover on demand.** A live stream cannot wait for a dead path
//! to be detected and a new one set up: the backup already has every chunk when the primary dies.
//! The price is twice the upload bandwidth, which is what the patent's method buys.
//!
//! # Failover rules (the contract with the entry servers)
//!
//! * **Sequence numbers.** The first WELCOME of a push fixes the first sequence number (0 for a
//!   new stream); chunks are numbered +1 from there, the same on every path. `pts` is the
//!   microseconds since the push started (monotonic clock) at which the chunk's first byte was
//!   read. Chunks are cut at 64 KiB or after 20 ms, whichever first, in whole 188-byte packets
//!   for MPEG-TS input.
//! * **Retention.** A chunk stays in the ring until every path that is not dead has it (ACKed, or
//!   reported by WELCOME's `next_seq`). A full ring (512 MiB by default) stops reading the input
//!   (backpressure), except that a path which is down and is what holds the oldest chunk, while
//!   another path is live and ahead, is declared dead for good — a dead path never stalls the
//!   live one. Both paths down never drops data.
//! * **Reconnect.** A lost session (connection error, ERROR frame, no frame for 8 s — the client
//!   PINGs every 2 s when idle) reconnects to the same server with exponential backoff (100 ms
//!   doubling to 2 s, up to 25% jitter). HELLO carries `resume_from` = the oldest sequence number
//!   the ring holds; the client then sends from WELCOME's `next_seq`, so the server gets no gap
//!   and no duplicate beyond what was in flight.
//! * **Replacement.** A path down for 5 s (or at once after `unauthorized`, `bad_stream_id`,
//!   `unsupported_version`, `too_large`, `resume_unavailable`, `overloaded`, `going_away`, or a
//!   WELCOME it cannot use) asks the director for a new assignment for the same stream id, at
//!   most once per 5 s while it stays down. It takes the new pick for its own role unless that
//!   server is in use by the other path, else the other pick; HELLO uses the role the pick's
//!   token is signed for. Without a director, a fatal error kills the path; others keep retrying.
//! * **Fresh replacement server (the rule entry servers must apply).** A server that holds
//!   nothing of the stream and gets `resume_from = R` in HELLO starts its log at `R` and answers
//!   WELCOME `next_seq = R` (viewers of that server see the stream from `R`). A server that does
//!   hold part of the stream answers with its own `next_seq` as usual (`resume_unavailable` if
//!   `resume_from > next_seq`). A WELCOME below the ring's oldest chunk or above what was
//!   produced is unusable for this push (it triggers a replacement).
//! * **End.** At end of input the client sends END `final_seq` on every path after its last DATA,
//!   and a path is finished when its server ACKs `final_seq` after END (then closes). An empty
//!   input is sent as one empty chunk so END names a sequence number. The push waits at most 30 s
//!   after EOF; it succeeds when at least one server holds the whole stream, and says whether all
//!   do.
//!
//! **What not.** No WebSocket push yet (native TCP only), no TLS (`http://` and `tcp://` only),
//! no terminal rendering (the `firstmile` binary draws [`push::ProgressHandle`] snapshots).

pub mod chunker;
pub mod core;
pub mod director;
pub mod error;
pub mod play;
pub mod probe;
pub mod push;
pub mod ring;

pub use director::{AssignRequest, Assignment, Director, LocationInput, assign, url_for};
pub use error::{ClientError, PlayError, PushError};
pub use play::{PlayOptions, PlayStats, StartAt, play};
pub use probe::{PROBE_BUDGET, Probed};
pub use proto::api::Pick;
pub use push::{PushConfig, PushProgress, PushSummary, Pusher};
