//! Playback: find an entry server, fetch the stream's live HTTP body, copy it out.
//!
//! **What.** [`play`] asks the director for entry servers ranked for the caller (or uses the one
//! given), requests `GET {http}/v1/streams/{id}/live?from=live|start|<seq>` (with the playback
//! token of a private stream, and a broadcast id when asked for a past one) and copies the body
//! to the writer as it arrives. While the entry server answers 404 (unknown yet) or 503 (not
//! live yet) it polls again with backoff, up to the `wait` bound. A body that ends cleanly means
//! the broadcast ended: success — or, with `follow`, wait (without bound) for the stream's next
//! broadcast and go on with it. Any entry server can serve any stream (it relays from the
//! ingest servers), so the best-ranked one with an HTTP URL is taken.
//!
//! **What not.** No resume after a broken body (the HTTP body carries no sequence numbers), no
//! demuxing: the bytes are the stream's payload as pushed.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use proto::{BroadcastId, StreamId};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, sleep};

use crate::director::{Director, check_http_url, error_message, http_client};
use crate::error::{ClientError, PlayError, chain};

/// Where in the stream playback starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// The live edge.
    #[default]
    Live,
    /// The oldest data the server still has.
    Start,
    /// A sequence number.
    Seq(u64),
}

impl fmt::Display for StartAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartAt::Live => f.write_str("live"),
            StartAt::Start => f.write_str("start"),
            StartAt::Seq(s) => write!(f, "{s}"),
        }
    }
}

/// Not `live`, `start` or a sequence number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a start point; accepted: live, start, or a sequence number")]
pub struct ParseStartAtError(String);

impl FromStr for StartAt {
    type Err = ParseStartAtError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "live" => Ok(StartAt::Live),
            "start" => Ok(StartAt::Start),
            _ => s
                .parse::<u64>()
                .map(StartAt::Seq)
                .map_err(|_| ParseStartAtError(s.to_owned())),
        }
    }
}

/// Where to play from, and how long to wait for the stream to appear.
#[derive(Debug, Clone)]
pub struct PlayOptions {
    /// The director to ask for an entry server (unless `from_url` is set).
    pub director: Option<String>,
    /// Force this entry server (`http://host:port`).
    pub from_url: Option<String>,
    /// The caller's typed location, for the director's ranking.
    pub location: Option<String>,
    /// Where in the stream to start.
    pub start_at: StartAt,
    /// How long to keep polling while the stream does not exist yet.
    pub wait: Duration,
    /// Extra CA certificates (PEM) trusted for an `https://` director.
    pub ca_file: Option<PathBuf>,
    /// A playback token (private streams).
    pub token: Option<String>,
    /// A past broadcast to play (catch-up) instead of the current one.
    pub broadcast: Option<BroadcastId>,
    /// After a broadcast ends, wait for the stream's next one and play it too.
    pub follow: bool,
}

/// What a finished playback copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayStats {
    /// The entry server's base URL.
    pub entry_url: String,
    /// Bytes written.
    pub bytes: u64,
    /// True when the reader went away (broken pipe) before the stream ended.
    pub reader_closed: bool,
    /// The broadcasts played, in order (from the entry server's `x-firstmile-broadcast`).
    pub broadcasts: Vec<String>,
}

/// `scheme://host:port` of a URL (drops any path).
fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    match url[after..].find('/') {
        Some(j) => &url[..after + j],
        None => url,
    }
}

/// The entry server to play from: `from_url`, else the director's best with an HTTP URL.
pub async fn entry_for_playback(opts: &PlayOptions) -> Result<String, PlayError> {
    if let Some(u) = &opts.from_url {
        let u = origin(u.trim_end_matches('/')).to_owned();
        check_http_url(&u)?;
        return Ok(u);
    }
    let Some(d) = &opts.director else {
        return Err(PlayError::NoEntryServer);
    };
    let list = Director::with_ca_file(d, opts.ca_file.as_deref())?
        .entry_servers(opts.location.as_deref())
        .await?;
    list.iter()
        .find_map(|s| {
            s.urls
                .get(proto::Protocol::Http)
                .filter(|u| u.starts_with("http://"))
        })
        .map(|u| origin(u).to_owned())
        .ok_or(PlayError::NoEntryServer)
}

/// The header naming the broadcast a playback response carries.
pub const BROADCAST_HEADER: &str = "x-firstmile-broadcast";

/// Plays `stream` into `out`; see the module docs.
pub async fn play<W: AsyncWrite + Unpin>(
    stream: &StreamId,
    opts: &PlayOptions,
    mut out: W,
) -> Result<PlayStats, PlayError> {
    let base = entry_for_playback(opts).await?;
    let http = http_client(None, opts.ca_file.as_deref())?;
    let mut stats = PlayStats {
        entry_url: base.clone(),
        bytes: 0,
        reader_closed: false,
        broadcasts: Vec::new(),
    };
    let mut first = true;
    loop {
        let mut url = format!("{base}/v1/streams/{stream}/live?from={}", opts.start_at);
        if !first {
            url = format!("{base}/v1/streams/{stream}/live?from=start");
        }
        if let (Some(b), true) = (&opts.broadcast, first) {
            url.push_str(&format!("&broadcast={b}"));
        }
        if let Some(t) = &opts.token {
            url.push_str("&token=");
            url.push_str(&crate::director::percent_encode(t));
        }
        // Waiting for the stream: bounded the first time, without bound between broadcasts.
        let deadline = first.then(|| Instant::now() + opts.wait);
        let mut delay = Duration::from_millis(100);
        let mut resp = loop {
            let resp = http
                .get(&url)
                .send()
                .await
                .map_err(|e| ClientError::Unreachable {
                    url: url.clone(),
                    detail: chain(&e),
                })?;
            let status = resp.status();
            if status.is_success() {
                let b = resp
                    .headers()
                    .get(BROADCAST_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                if !first && stats.broadcasts.last() == Some(&b) {
                    // The entry server still has the broadcast that just ended: not the next.
                    sleep(Duration::from_millis(500)).await;
                    continue;
                }
                stats.broadcasts.push(b);
                break resp;
            }
            let body = resp.bytes().await.unwrap_or_default();
            if matches!(status.as_u16(), 404 | 503) {
                let now = Instant::now();
                if let Some(d) = deadline
                    && now >= d
                {
                    return Err(PlayError::NotFound {
                        stream: stream.to_string(),
                        url: base,
                        waited: opts.wait,
                    });
                }
                let wait = deadline.map_or(delay, |d| delay.min(d - now));
                sleep(wait).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                continue;
            }
            return Err(ClientError::Status {
                url,
                status: status.as_u16(),
                message: error_message(&body),
                code: serde_json::from_slice::<proto::api::ErrorBody>(&body)
                    .ok()
                    .map(|b| b.code),
            }
            .into());
        };
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    return Err(PlayError::BrokenOff {
                        bytes: stats.bytes,
                        detail: chain(&e),
                    });
                }
            };
            match out.write_all(&chunk).await.and(out.flush().await) {
                Ok(()) => stats.bytes += chunk.len() as u64,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    stats.reader_closed = true;
                    return Ok(stats);
                }
                Err(e) => return Err(PlayError::Output(e)),
            }
        }
        if !opts.follow || opts.broadcast.is_some() {
            return Ok(stats);
        }
        first = false;
        tracing::info!(%stream, "broadcast ended; waiting for the next one (--follow)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_points_parse_and_print() {
        for s in ["live", "start", "42"] {
            assert_eq!(s.parse::<StartAt>().unwrap().to_string(), s);
        }
        assert!("-1".parse::<StartAt>().is_err());
        assert!(
            "Live"
                .parse::<StartAt>()
                .unwrap_err()
                .to_string()
                .contains("accepted")
        );
    }

    #[test]
    fn origins() {
        assert_eq!(origin("http://127.0.0.2:8001"), "http://127.0.0.2:8001");
        assert_eq!(origin("http://h:1/v1/ingest"), "http://h:1");
    }
}
