//! `firstmile play`: write a stream's bytes to standard output (`| ffplay -`).

use std::time::Duration;

use crate::Failure;
use crate::cmd::assign::{client_failure, runtime};
use client::{PlayError, PlayOptions, StartAt};
use proto::StreamId;

#[derive(Debug, clap::Args)]
pub struct PlayArgs {
    /// The director's base URL (asked for the best entry server to play from).
    #[arg(
        long,
        env = "FIRSTMILE_DIRECTOR",
        value_name = "URL",
        required_unless_present = "from_url"
    )]
    pub director: Option<String>,
    /// Where to start: live, start, or a sequence number.
    #[arg(long, default_value = "live")]
    pub from: StartAt,
    /// How long to wait for a stream that has not started yet ("30s", "500ms", "2m").
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub wait: Duration,
    /// Play from this entry server (http://host:port) instead of asking the director.
    #[arg(long, value_name = "URL")]
    pub from_url: Option<String>,
    /// Where the viewer is, for the director's ranking (a place or "lat,lon").
    #[arg(long, allow_hyphen_values = true)]
    pub location: Option<String>,
    /// Also trust the CA certificates in this PEM file for an https:// director (besides the
    /// public web roots).
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<std::path::PathBuf>,
    /// A playback token (private streams; the platform gets one from the director).
    #[arg(
        long,
        env = "FIRSTMILE_PLAYBACK_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Play this past broadcast of the stream (catch-up) instead of its current one.
    #[arg(long, value_name = "ID")]
    pub broadcast: Option<proto::BroadcastId>,
    /// When the broadcast ends, wait for the stream's next broadcast and play it too (until
    /// interrupted).
    #[arg(long, conflicts_with = "broadcast")]
    pub follow: bool,
    /// The stream id.
    pub stream: StreamId,
}

/// "30s", "500ms", "2m", "1h", or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        format!("{s:?} is not a duration; accepted: 30s, 500ms, 2m, 1h, or seconds")
    })?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; accepted: ms, s, m, h"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

pub fn run(a: PlayArgs) -> Result<(), Failure> {
    let opts = PlayOptions {
        director: a.director,
        from_url: a.from_url,
        location: a.location,
        start_at: a.from,
        wait: a.wait,
        ca_file: a.ca_file,
        token: a.token,
        broadcast: a.broadcast,
        follow: a.follow,
    };
    let stats = runtime()?
        .block_on(client::play(&a.stream, &opts, tokio::io::stdout()))
        .map_err(|e| match e {
            PlayError::Client(c) => client_failure(c),
            PlayError::NotFound { .. } => Failure::no_input(e),
            PlayError::Output(_) => Failure::other(e),
            e if e.is_unavailable() => Failure::unavailable(e),
            e => Failure::other(e),
        })?;
    tracing::debug!(bytes = stats.bytes, entry = %stats.entry_url, "played");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("3d").is_err());
    }
}
