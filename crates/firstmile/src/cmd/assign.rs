//! `firstmile assign`: ask the director where to push, and show why.

use crate::Failure;
use client::director::{Assignment, Pick};
use client::{AssignRequest, ClientError, LocationInput};
use proto::{Protocol, StreamId};

/// Flags shared by `assign` and `push`: what to ask the director.
#[derive(Debug, Clone, clap::Args)]
pub struct AskArgs {
    /// The director's base URL.
    #[arg(long, env = "FIRSTMILE_DIRECTOR", value_name = "URL")]
    pub director: String,
    /// Where the device is, as a person would type it ("Paris, FR", "SFO", "48.85,2.35").
    #[arg(long)]
    pub location: Option<String>,
    /// Stream id to (re)use; the director mints one when absent.
    #[arg(long)]
    pub stream: Option<StreamId>,
    /// How the device pushes.
    #[arg(long, default_value = "native", value_parser = ["native", "websocket"])]
    pub protocol: String,
    /// Expected bitrate, in kbit/s (the director's default when absent).
    #[arg(long, value_name = "N")]
    pub bitrate_kbps: Option<u32>,
}

impl AskArgs {
    pub fn protocol(&self) -> Result<Protocol, Failure> {
        self.protocol.parse::<Protocol>().map_err(Failure::usage)
    }

    pub fn request(&self) -> Result<AssignRequest, Failure> {
        Ok(AssignRequest {
            stream: self.stream.clone(),
            location: self.location.clone().map(LocationInput::Place),
            protocol: Some(self.protocol()?),
            bitrate_kbps: self.bitrate_kbps,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct AssignArgs {
    #[command(flatten)]
    pub ask: AskArgs,
    /// Print the director's JSON answer as it came.
    #[arg(long)]
    pub json: bool,
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

pub fn run(a: AssignArgs) -> Result<(), Failure> {
    let req = a.ask.request()?;
    let director = client::Director::new(&a.ask.director).map_err(client_failure)?;
    let assignment = runtime()?
        .block_on(director.assign(&req))
        .map_err(client_failure)?;
    if a.json {
        let text = serde_json::to_string_pretty(&assignment.raw).map_err(Failure::other)?;
        println!("{text}");
    } else {
        print!("{}", human(&assignment));
    }
    Ok(())
}

fn human(a: &Assignment) -> String {
    let mut s = format!("stream   {}\n", a.stream);
    if let Some(p) = a.protocol {
        s.push_str(&format!("protocol {p}\n"));
    }
    if let Some(e) = a.expires_at {
        s.push_str(&format!("tokens   expire at {e} (Unix seconds)\n"));
    }
    s.push_str(&pick("primary", &a.primary, a.protocol));
    match &a.backup {
        Some(b) => s.push_str(&pick("backup", b, a.protocol)),
        None => s.push_str(&format!(
            "backup   none: {}\n",
            a.backup_reason.as_deref().unwrap_or("no reason given")
        )),
    }
    s
}

fn pick(label: &str, p: &Pick, protocol: Option<Protocol>) -> String {
    let url = protocol
        .and_then(|pr| p.url_for(pr))
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
        "         estimate: RTT {:.1} ms, loss {:.2}%, {:.1} Mbit/s, {:.0} km, score {:.2}, evidence {:.2}\n",
        e.rtt_ms,
        e.loss * 100.0,
        e.throughput_mbps,
        e.distance_km,
        e.score,
        e.evidence
    ));
    let sf = &p.scored_from;
    s.push_str(&format!(
        "         scored from the {} location ({:.2}, {:.2}){}\n",
        if sf.kind.is_empty() { "?" } else { &sf.kind },
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
