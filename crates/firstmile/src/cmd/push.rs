//! `firstmile push`: upload a stream to a primary and a backup entry server at once.

use std::path::PathBuf;
use std::time::Duration;

use crate::Failure;
use crate::cmd::assign::{AskArgs, client_failure, runtime};
use client::push::{DirectorReassign, PathProgress, PushProgress};
use client::{AssignRequest, PushConfig, PushError, Pusher};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub ask: AskArgs,
    /// No progress line and no summary on stderr (errors are still printed).
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the end summary as JSON on stdout.
    #[arg(long)]
    pub json_summary: bool,
    /// Seconds a path may stay down before the director is asked for a replacement.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    pub replace_after: f64,
    /// Byte budget of the buffer of unacknowledged chunks, in MiB.
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    pub ring_mib: usize,
    /// The input: a file, or - for standard input.
    #[arg(default_value = "-", value_name = "FILE|-")]
    pub input: String,
}

pub fn run(a: PushArgs) -> Result<(), Failure> {
    let protocol = a.ask.protocol()?;
    if protocol != proto::Protocol::Native {
        return Err(Failure::usage(anyhow::anyhow!(
            "--protocol {protocol}: only native push is implemented in this build"
        )));
    }
    if !(a.replace_after.is_finite() && a.replace_after > 0.0) || a.ring_mib == 0 {
        return Err(Failure::usage(anyhow::anyhow!(
            "--replace-after must be > 0 seconds and --ring-mib > 0"
        )));
    }
    if let Some(ca) = &a.ask.ca_file {
        client::push::tls_client_config(Some(ca)).map_err(Failure::usage)?;
    }
    let director = a.ask.director()?;
    let rt = runtime()?;
    rt.block_on(async move {
        let req = a.ask.probed_request(&director, a.quiet).await?;
        let source: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if a.input == "-" {
            Box::new(tokio::io::stdin())
        } else {
            let path = PathBuf::from(&a.input);
            let f = tokio::fs::File::open(&path).await.map_err(|e| {
                Failure::no_input(anyhow::anyhow!("cannot open {}: {e}", path.display()))
            })?;
            Box::new(f)
        };
        let assignment = director.assign(&req).await.map_err(client_failure)?;
        crate::cmd::assign::announce_key(&assignment);
        let mut config = PushConfig {
            protocol,
            ring_bytes: a.ring_mib.saturating_mul(1024 * 1024),
            ca_file: a.ask.ca_file.clone(),
            ..PushConfig::default()
        };
        config.policy.replace_after = Duration::from_secs_f64(a.replace_after);
        let pusher = Pusher::from_assignment(&assignment, config)
            .map_err(Failure::other)?
            .with_reassign(DirectorReassign {
                director: director.clone(),
                request: AssignRequest {
                    // A stream created by this push is continued with its new key.
                    key: assignment.stream_key.clone().or(req.key.clone()),
                    ..req.clone()
                },
                broadcast: assignment.broadcast.clone(),
            });
        let bar = if a.quiet {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b
        };
        if !a.quiet {
            bar.println(format!(
                "pushing stream {} (broadcast {}) to {}{}",
                assignment.stream,
                assignment.broadcast,
                assignment.primary.server_id,
                assignment
                    .backup
                    .as_ref()
                    .map(|b| format!(" and {}", b.server_id))
                    .unwrap_or_else(|| format!(
                        " only (no backup: {})",
                        assignment.backup_reason.as_deref().unwrap_or("none given")
                    ))
            ));
        }
        let progress = pusher.progress();
        let ticker = {
            let bar = bar.clone();
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                loop {
                    tick.tick().await;
                    bar.set_message(line(&progress.snapshot()));
                    bar.tick();
                }
            })
        };
        let result = pusher.run(source).await;
        ticker.abort();
        bar.finish_and_clear();
        match result {
            Ok(summary) => {
                if a.json_summary {
                    let text = serde_json::to_string_pretty(&summary).map_err(Failure::other)?;
                    println!("{text}");
                }
                if !a.quiet {
                    eprint!("{}", human_summary(&summary.progress, &summary.stream));
                    if !summary.complete_everywhere {
                        eprintln!(
                            "warning: the stream is complete on {} of {} servers",
                            summary.complete_paths,
                            summary.progress.paths.len()
                        );
                    }
                }
                Ok(())
            }
            Err(e) => {
                if !a.quiet {
                    eprint!(
                        "{}",
                        human_summary(&progress.snapshot(), &assignment.stream)
                    );
                }
                Err(match e {
                    PushError::Input(_) => Failure::no_input(e),
                    e if e.is_unavailable() => Failure::unavailable(e),
                    e => Failure::other(e),
                })
            }
        }
    })
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

fn path_word(p: &PathProgress) -> String {
    let acked = p
        .acked_through
        .map(|s| format!("#{s}"))
        .unwrap_or_else(|| "-".into());
    let mut s = format!(
        "{} {} {} acked {acked}",
        p.slot,
        p.server_id,
        p.state.as_str()
    );
    if p.reconnects > 0 {
        s.push_str(&format!(" ({} reconnects)", p.reconnects));
    }
    if p.replacements > 0 {
        s.push_str(&format!(" ({} replaced)", p.replacements));
    }
    s
}

fn line(p: &PushProgress) -> String {
    let secs = p.elapsed.as_secs_f64().max(0.001);
    let rate = p.input_bytes as f64 * 8.0 / secs / 1e6;
    let paths: Vec<String> = p.paths.iter().map(path_word).collect();
    format!(
        "in {} ({rate:.1} Mbit/s) #{} | {}",
        mb(p.input_bytes),
        p.next_seq,
        paths.join(" | ")
    )
}

fn human_summary(p: &PushProgress, stream: &proto::StreamId) -> String {
    let mut s = format!(
        "stream {stream}: {} bytes in {} chunks (seq {}..={}) in {:.1} s\n",
        p.input_bytes,
        p.chunks,
        p.first_seq
            .map(|x| x.to_string())
            .unwrap_or_else(|| "-".into()),
        p.final_seq
            .map(|x| x.to_string())
            .unwrap_or_else(|| "-".into()),
        p.elapsed.as_secs_f64()
    );
    for path in &p.paths {
        s.push_str(&format!(
            "  {:<7} {} ({}): {}, acked through {}, {} sent, {} reconnects, {} replacements{}\n",
            path.slot.as_str(),
            path.server_id,
            path.url,
            path.state.as_str(),
            path.acked_through
                .map(|x| x.to_string())
                .unwrap_or_else(|| "-".into()),
            mb(path.sent_bytes),
            path.reconnects,
            path.replacements,
            path.last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        ));
    }
    s
}
