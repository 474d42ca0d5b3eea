//! `firstmile assign`: ask the director where to push, and show why.

use crate::Failure;
use client::{AssignRequest, ClientError, LocationInput};
use client::{Assignment, Pick};
use proto::{Protocol, StreamId};

/// Flags shared by `assign` and `push`: what to ask the director.
#[derive(Debug, Clone, clap::Args)]
pub struct AskArgs {
    /// The director's base URL.
    #[arg(long, env = "FIRSTMILE_DIRECTOR", value_name = "URL")]
    pub director: String,
    /// Where the device is, as a person would type it ("Paris, FR", "SFO", "48.85,2.35",
    /// "-33.87,151.21").
    #[arg(long, allow_hyphen_values = true)]
    pub location: Option<String>,
    /// Stream id to publish (the director mints one when absent, in its `open` mode).
    #[arg(long)]
    pub stream: Option<StreamId>,
    /// The stream's key (needed for a stream that has one). In `open` mode a new stream's key is
    /// generated and printed once on stderr as `stream key: ...`: keep it to go live again.
    #[arg(
        long,
        env = "FIRSTMILE_STREAM_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub key: Option<String>,
    /// How the device pushes (default native; rtmp with `--obs`).
    #[arg(long, value_parser = ["native", "websocket", "rtmp", "http"])]
    pub protocol: Option<String>,
    /// Expected bitrate, in kbit/s (the director's default when absent).
    #[arg(long, value_name = "N")]
    pub bitrate_kbps: Option<u32>,
    /// Also trust the CA certificates in this PEM file (besides the public web roots), for an
    /// https:// director and tls:// entry servers.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Do not measure the round-trip time to the candidate entry servers before asking (by
    /// default the device probes them for at most half a second and the director ranks probed
    /// servers by what was measured).
    #[arg(long)]
    pub no_probe: bool,
}

impl AskArgs {
    pub fn protocol(&self) -> Result<Protocol, Failure> {
        self.protocol
            .as_deref()
            .unwrap_or("native")
            .parse::<Protocol>()
            .map_err(Failure::usage)
    }

    /// The director client (https verified against the web roots plus `--ca-file`).
    pub fn director(&self) -> Result<client::Director, Failure> {
        client::Director::with_ca_file(&self.director, self.ca_file.as_deref())
            .map_err(client_failure)
    }

    /// The request, with probe results unless `--no-probe` (see `client::probe`). What probing
    /// did is said on stderr, so that stdout stays clean for pipes.
    pub async fn probed_request(
        &self,
        director: &client::Director,
        quiet: bool,
    ) -> Result<AssignRequest, Failure> {
        let mut req = self.request()?;
        if self.no_probe {
            return Ok(req);
        }
        let p = director
            .probe(
                self.location.as_deref(),
                self.protocol()?,
                client::PROBE_BUDGET,
            )
            .await;
        if !quiet {
            match &p.skipped {
                Some(why) => eprintln!("probe: skipped ({why})"),
                None => eprintln!(
                    "probe: {} of {} entry servers answered in {} ms",
                    p.results.len(),
                    p.targets,
                    p.took.as_millis()
                ),
            }
        }
        req.probes = p.results;
        Ok(req)
    }

    pub fn request(&self) -> Result<AssignRequest, Failure> {
        let key = match &self.key {
            Some(k) => Some(client::director::parse_key(k).map_err(Failure::usage)?),
            None => None,
        };
        Ok(AssignRequest {
            stream: self.stream.clone(),
            key,
            location: self.location.clone().map(LocationInput::Place),
            protocol: Some(self.protocol()?),
            bitrate_kbps: self.bitrate_kbps,
            ..Default::default()
        })
    }
}

/// Tell the publisher the key the director generated for a stream this request created (shown
/// once), on stderr so that stdout stays clean for pipes.
pub fn announce_key(a: &Assignment) {
    if let Some(k) = &a.stream_key {
        eprintln!("stream key: {}", k.expose());
        eprintln!(
            "  (stream {} is yours: keep this key to go live with it again: --key or FIRSTMILE_STREAM_KEY)",
            a.stream
        );
    }
}

#[derive(Debug, clap::Args)]
pub struct AssignArgs {
    #[command(flatten)]
    pub ask: AskArgs,
    /// Print the director's JSON answer as it came.
    #[arg(long)]
    pub json: bool,
    /// Print an ffmpeg command line that publishes to the primary and the backup at once
    /// (`tee` muxer; RTMP, or HTTP push with `--protocol http`).
    #[arg(long, conflicts_with_all = ["json", "obs"])]
    pub ffmpeg: bool,
    /// Print what to type into OBS's custom service fields (RTMP).
    #[arg(long, conflicts_with_all = ["json", "ffmpeg"])]
    pub obs: bool,
}

/// Maps a director/entry HTTP error to an exit code: unreachable or unavailable 69, our bad
/// input 64, anything else 1.
pub fn client_failure(e: ClientError) -> Failure {
    if e.is_unavailable() {
        return Failure::unavailable(e);
    }
    match e {
        ClientError::BadUrl { .. } => Failure::usage(e),
        ClientError::Status {
            status: 401 | 403, ..
        } => Failure::denied(e),
        ClientError::Status {
            status: 400 | 404 | 422,
            ..
        } => Failure::usage(e),
        e => Failure::other(e),
    }
}

/// A current-thread tokio runtime for a client command.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::other)
}

pub fn run(mut a: AssignArgs) -> Result<(), Failure> {
    // OBS publishes RTMP: `--obs` alone means that.
    if a.obs && a.ask.protocol.is_none() {
        a.ask.protocol = Some("rtmp".into());
    }
    let director = a.ask.director()?;
    let assignment = runtime()?.block_on(async {
        // --ffmpeg and --obs probe on behalf of encoders that cannot.
        let req = a.ask.probed_request(&director, false).await?;
        director.assign(&req).await.map_err(client_failure)
    })?;
    announce_key(&assignment);
    let key = assignment
        .stream_key
        .as_ref()
        .map(|k| k.expose().to_string())
        .or_else(|| a.ask.key.clone());
    if a.ffmpeg || a.obs {
        let protocol = a.ask.protocol()?;
        let text = if a.ffmpeg {
            ffmpeg_command(&assignment, protocol)
        } else {
            obs_fields(&assignment, protocol, key.as_deref())
        };
        print!("{}", text.map_err(|e| Failure::usage(anyhow::anyhow!(e)))?);
    } else if a.json {
        let text = serde_json::to_string_pretty(&assignment).map_err(Failure::other)?;
        println!("{text}");
    } else {
        print!("{}", human(&assignment));
    }
    Ok(())
}

fn human(a: &Assignment) -> String {
    let mut s = format!("stream   {}\n", a.stream);
    s.push_str(&format!(
        "broadcast {}{}\n",
        a.broadcast,
        if a.new_broadcast {
            " (new)"
        } else {
            " (continued)"
        }
    ));
    s.push_str(&format!("protocol {}\n", a.protocol));
    s.push_str(&format!(
        "tokens   expire at {} (Unix seconds)\n",
        a.expires_at
    ));
    s.push_str(&pick("primary", &a.primary, Some(a.protocol)));
    match &a.backup {
        Some(b) => s.push_str(&pick("backup", b, Some(a.protocol))),
        None => s.push_str(&format!(
            "backup   none: {}\n",
            a.backup_reason.as_deref().unwrap_or("no reason given")
        )),
    }
    s
}

fn pick(label: &str, p: &Pick, protocol: Option<Protocol>) -> String {
    let url = protocol
        .and_then(|pr| client::url_for(p, pr))
        .unwrap_or(p.url.as_str());
    let e = &p.estimate;
    let mut s = format!(
        "{label:<8} {}  POP {}  {}  {}\n",
        p.server_id,
        p.pop,
        p.city,
        if url.is_empty() { "(no URL)" } else { url }
    );
    s.push_str(&format!(
        "         estimate: RTT {:.1} ms ({}), loss {:.2}%, {:.1} Mbit/s, {:.0} km, score {:.2}, evidence {:.2}\n",
        e.rtt_ms,
        e.rtt_source,
        e.loss * 100.0,
        e.throughput_mbps,
        e.distance_km,
        e.score,
        e.evidence
    ));
    let sf = &p.scored_from;
    s.push_str(&format!(
        "         scored from the {} location ({:.2}, {:.2}){}\n",
        serde_json::to_value(sf.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        sf.location.lat,
        sf.location.lon,
        sf.note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default()
    ));
    if !p.runners_up.is_empty() {
        let r: Vec<String> = p
            .runners_up
            .iter()
            .map(|r| {
                format!(
                    "{} ({}) RTT {:.1} ms score {:.2}",
                    r.server_id, r.pop, r.estimate.rtt_ms, r.estimate.score
                )
            })
            .collect();
        s.push_str(&format!("         runners-up: {}\n", r.join("; ")));
    }
    if let Some(n) = &p.note {
        s.push_str(&format!("         note: {n}\n"));
    }
    s
}

/// The full RTMP publish URL of a pick: `{urls.rtmp}/{stream}?token={token}` (the director's
/// `url` already is that for `protocol: rtmp`).
fn rtmp_url(stream: &str, p: &Pick) -> Option<String> {
    if p.url.starts_with("rtmp://") && p.url.contains("token=") {
        return Some(p.url.clone());
    }
    let base = p.urls.get(Protocol::Rtmp)?;
    Some(format!(
        "{}/{stream}?token={}",
        base.trim_end_matches('/'),
        p.token
    ))
}

fn push_url(stream: &str, p: &Pick) -> Option<String> {
    let base = p.urls.get(Protocol::Http)?;
    Some(format!(
        "{}/v1/streams/{stream}/push?token={}",
        base.trim_end_matches('/'),
        p.token
    ))
}

/// An ffmpeg command line publishing to both picks with the `tee` muxer; `onfail=ignore` keeps
/// the other output going when one entry server dies.
pub fn ffmpeg_command(a: &Assignment, protocol: Protocol) -> Result<String, String> {
    let picks: Vec<&Pick> = std::iter::once(&a.primary)
        .chain(a.backup.as_ref())
        .collect();
    let (format, urls): (&str, Vec<String>) = match protocol {
        Protocol::Rtmp => (
            "flv",
            picks
                .iter()
                .map(|p| rtmp_url(a.stream.as_str(), p))
                .collect::<Option<_>>()
                .ok_or("a pick has no RTMP URL: is rtmp_listen set on the entry servers?")?,
        ),
        Protocol::Http => (
            "mpegts",
            picks
                .iter()
                .map(|p| push_url(a.stream.as_str(), p))
                .collect::<Option<_>>()
                .ok_or("a pick has no HTTP URL")?,
        ),
        other => {
            return Err(format!(
                "--ffmpeg needs --protocol rtmp or http, not {other}"
            ));
        }
    };
    let method = if protocol == Protocol::Http {
        ":method=POST"
    } else {
        ""
    };
    let outputs: Vec<String> = urls
        .iter()
        .map(|u| format!("[f={format}:onfail=ignore{method}]{u}"))
        .collect();
    Ok(format!(
        "ffmpeg -re -i INPUT -map 0:v? -map 0:a? -c:v libx264 -preset veryfast -tune zerolatency \
         -g 50 -c:a aac -b:a 128k -f tee '{}'\n",
        outputs.join("|")
    ))
}

/// What to type into OBS: Settings → Stream → Service "Custom...", Server and Stream Key; the
/// backup goes into a second output (a second OBS profile or a multiple-RTMP-outputs plugin).
/// With the stream's key, the Stream Key field is `<stream>?key=<key>`, which OBS keeps day after
/// day (every publish becomes a broadcast the director authorizes); without it, this
/// broadcast's token.
pub fn obs_fields(a: &Assignment, protocol: Protocol, key: Option<&str>) -> Result<String, String> {
    if protocol != Protocol::Rtmp {
        return Err(format!("--obs needs --protocol rtmp, not {protocol}"));
    }
    let mut s = String::from("OBS: Settings > Stream > Service: Custom...\n");
    for (label, p) in
        std::iter::once(("primary", &a.primary)).chain(a.backup.as_ref().map(|b| ("backup", b)))
    {
        let base = p
            .urls
            .get(Protocol::Rtmp)
            .ok_or("a pick has no RTMP URL: is rtmp_listen set on the entry servers?")?;
        let field = match key {
            Some(k) => format!("{}?key={k}", a.stream),
            None => format!("{}?token={}", a.stream, p.token),
        };
        s.push_str(&format!(
            "{label:<8} Server:     {base}\n         Stream Key: {field}\n"
        ));
    }
    if key.is_none() {
        s.push_str("(No stream key given: these Stream Keys carry this broadcast's tokens. With --key, they carry the stream's key, which works day after day.)\n");
    }
    if a.backup.is_some() {
        s.push_str("The backup goes into a second output (a second OBS profile, or a plugin such as \"Multiple RTMP outputs\"), with the same encoder settings.\n");
    }
    s.push_str("Turn on Settings > Advanced > Automatically Reconnect: an output that reconnects with these fields continues the broadcast.\n");
    Ok(s)
}
