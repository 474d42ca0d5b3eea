//! Probing: measure this device's round-trip time to the entry servers the director would
//! consider, before asking it for an assignment.
//!
//! **What.** [`Director::probe`] asks `GET /v1/probe-targets` for the best few candidates from
//! the typed location (for the primary) and from the IP location (for the backup), then times
//! `GET /v1/probe` on each of them — all targets at once, one connection each: a first request
//! sets the connection up and is not counted, then up to `samples` requests are timed one after
//! another. The results go into the assignment request (`probes`); the director ranks probed
//! servers by the median of their samples instead of its estimate, and says so in each pick's
//! explanation (`probed: median of N`).
//!
//! **Bounded.** Everything, the targets request included, ends by the budget
//! ([`PROBE_BUDGET`], half a second): a target still being timed then reports the samples it has,
//! one that has none is left out. A target answering 429 (its per-address probe limit) stops
//! being probed. At most [`MAX_PROBED_SERVERS`] targets and [`MAX_PROBE_SAMPLES`] samples each
//! are kept, whatever the director asked for.
//!
//! **What not.** Probing never fails an assignment: a director without probe targets, or targets
//! that do not answer, give an empty result and the request goes without probes.

use std::time::Duration;

use proto::Protocol;
use proto::api::{MAX_PROBE_SAMPLES, MAX_PROBED_SERVERS, ProbeResult, ProbeTarget};
use tokio::time::Instant;

use crate::director::Director;

/// How long probing may delay a push, at most.
pub const PROBE_BUDGET: Duration = Duration::from_millis(500);

/// What probing found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Probed {
    /// Per server that answered at least once: its samples (milliseconds).
    pub results: Vec<ProbeResult>,
    /// Targets the director named.
    pub targets: usize,
    /// How long probing took.
    pub took: Duration,
    /// Why nothing was probed, when nothing was.
    pub skipped: Option<String>,
}

impl Director {
    /// Probe the director's targets for a device at `location` (see the module docs).
    pub async fn probe(
        &self,
        location: Option<&str>,
        protocol: Protocol,
        budget: Duration,
    ) -> Probed {
        let t0 = Instant::now();
        let deadline = t0 + budget;
        let targets =
            match tokio::time::timeout_at(deadline, self.probe_targets(location, protocol)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    return Probed {
                        took: t0.elapsed(),
                        skipped: Some(format!("no probe targets: {e}")),
                        ..Probed::default()
                    };
                }
                Err(_) => {
                    return Probed {
                        took: t0.elapsed(),
                        skipped: Some(format!("no probe targets within {budget:?}")),
                        ..Probed::default()
                    };
                }
            };
        let samples = usize::try_from(targets.samples)
            .unwrap_or(MAX_PROBE_SAMPLES)
            .clamp(1, MAX_PROBE_SAMPLES);
        let list: Vec<&ProbeTarget> = targets.targets.iter().take(MAX_PROBED_SERVERS).collect();
        let mut runs = tokio::task::JoinSet::new();
        for (i, t) in list.iter().enumerate() {
            let (http, url) = (self.http.clone(), t.url.clone());
            runs.spawn(async move { (i, time_target(&http, &url, samples, deadline).await) });
        }
        let mut timed = vec![Vec::new(); list.len()];
        while let Some(r) = runs.join_next().await {
            if let Ok((i, s)) = r {
                timed[i] = s;
            }
        }
        let results = list
            .iter()
            .zip(timed)
            .filter(|(_, s)| !s.is_empty())
            .map(|(t, rtt_ms)| ProbeResult {
                server_id: t.server_id.clone(),
                rtt_ms,
            })
            .collect();
        Probed {
            results,
            targets: list.len(),
            took: t0.elapsed(),
            skipped: None,
        }
    }
}

/// Up to `samples` timed requests to `url` on one connection, ended by `deadline`.
async fn time_target(
    http: &reqwest::Client,
    url: &str,
    samples: usize,
    deadline: Instant,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(samples);
    // The first request sets the connection up (TCP, TLS): not a round trip of the path alone.
    for i in 0..=samples {
        let start = Instant::now();
        let one = async {
            let r = http.get(url).send().await.ok()?;
            let status = r.status();
            // Read the (empty) body so the connection goes back to the pool for the next one.
            let _ = r.bytes().await;
            Some(status)
        };
        match tokio::time::timeout_at(deadline, one).await {
            Ok(Some(s)) if s.is_success() => {
                if i > 0 {
                    let ms = start.elapsed().as_secs_f64() * 1000.0;
                    // The director accepts 0 < rtt < 10,000 ms; a loopback answer can time
                    // below a microsecond's resolution.
                    out.push(ms.clamp(0.001, 9_999.0));
                }
            }
            // Rate-limited, refused, unreachable, or out of time: what we have is the answer.
            _ => break,
        }
    }
    out
}
