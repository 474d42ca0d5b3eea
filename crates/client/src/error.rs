//! Errors of the client crate, one enum per concern, each saying who is at fault and whether a
//! retry can help.

use std::time::Duration;

/// An error and its causes as one line, skipping causes its message already contains (reqwest
/// repeats them). Errors here carry this instead of a `source()` chain, so `{:#}` does not print
/// every cause twice.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cur = c.source();
    }
    out
}

/// Talking to the director or an entry server's HTTP API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL given is not usable (our side: fix the flag).
    #[error("bad URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing answered, or the connection broke (the network or the server: retry may help).
    #[error("cannot reach {url}: {detail}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The transport error with its causes, flattened (see [`chain`]).
        detail: String,
    },
    /// The server answered with an error status; `message` is its own explanation.
    #[error("{url} answered HTTP {status}: {message}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The `error` field of the JSON body (or the start of the body).
        message: String,
        /// The body's machine-readable `code`, when it was an error body.
        code: Option<String>,
    },
    /// The server answered 2xx with a body this client does not understand (version skew).
    #[error("{url} sent an answer this client does not understand: {reason}")]
    BadResponse {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

impl ClientError {
    /// True when the server could not be reached or said it is unavailable (exit 69).
    pub fn is_unavailable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Status { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// The error body's `code` (`wrong_stream_key`, `broadcast_ended`, ...), when there was one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status, when the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A push could not complete.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Reading the source failed (the input's fault).
    #[error("reading the input: {0}")]
    Input(std::io::Error),
    /// No path was welcomed by any entry server in time (network or servers: retry may help).
    #[error("no entry server accepted the stream within {after:?}: {detail}")]
    NoServer {
        /// How long we tried.
        after: Duration,
        /// The last error of each path.
        detail: String,
    },
    /// The assignment is unusable (e.g. no URL for the protocol).
    #[error("assignment: {0}")]
    Assignment(String),
    /// Every path died before the stream was complete on any server.
    #[error("every path failed before the stream was complete on a server: {detail}")]
    AllPathsFailed {
        /// The last error of each path.
        detail: String,
    },
}

impl PushError {
    /// True when the failure is the servers' or the network's (exit 69).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            PushError::NoServer { .. } | PushError::AllPathsFailed { .. }
        )
    }
}

/// Playback could not complete.
#[derive(Debug, thiserror::Error)]
pub enum PlayError {
    /// The director or the entry server failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The director listed no entry server with an HTTP URL.
    #[error("the director lists no entry server with an http URL to play from")]
    NoEntryServer,
    /// The stream did not appear within the wait.
    #[error("stream {stream} does not exist on {url} (waited {waited:?})")]
    NotFound {
        /// The stream id.
        stream: String,
        /// The entry server's URL.
        url: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The body broke off before the stream ended.
    #[error("the stream broke off after {bytes} bytes: {detail}")]
    BrokenOff {
        /// Bytes copied before.
        bytes: u64,
        /// The transport error with its causes, flattened.
        detail: String,
    },
    /// Writing the output failed.
    #[error("writing the output: {0}")]
    Output(std::io::Error),
}

impl PlayError {
    /// True when a server could not be reached (exit 69).
    pub fn is_unavailable(&self) -> bool {
        match self {
            PlayError::Client(e) => e.is_unavailable(),
            PlayError::NoEntryServer | PlayError::BrokenOff { .. } => true,
            _ => false,
        }
    }
}
