//! Probing: measure this device's round-trip time to the entry servers the director would
//! consider, before asking it for an assignment.
//!
//! **What.** [`Director::probe`] asks `GET /v1/probe-targets` for the best few candidates from
//! the typed location (for the primary) and from the IP location (for the backup), then times
//! each of them — all targets at once, one connection each: the TCP handshake is the first
//! sample (one round trip, answered by the server's kernel, so no application delay is in it),
//! then `GET /v1/probe` requests on that connection, timed one after another, up to `samples`
//! in all (an `https://` target: timed requests after an uncounted one that sets up TLS). The results go into the assignment request (`probes`); the director ranks probed
//! servers by the median of their samples instead of its estimate, and says so in each pick's
//! explanation (`probed: median of N`).
//!
//! **Bounded.** Everything, the targets request included, ends by the budget
//! ([`PROBE_BUDGET`], half a second): a target still being timed then reports the samples it has;
//! one whose handshake has not completed is reported at the time it waited (a lower bound, so a
//! path slower than the budget never looks better than the model's estimate); one that refused
//! the connection is left out. A target answering 429 (its per-address probe limit) stops
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

/// Up to `samples` round trips to `url`, ended by `deadline`. For `http://` (what entry servers
/// advertise unless they serve TLS): the TCP handshake is the first sample (one round trip,
/// answered by the server's kernel), then `GET` requests on that connection, each timed from
/// the request's first byte to the end of the answer's head. For `https://`, timed requests on
/// one pooled connection after an uncounted first one (which pays for TCP and TLS).
async fn time_target(
    http: &reqwest::Client,
    url: &str,
    samples: usize,
    deadline: Instant,
) -> Vec<f64> {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" => time_plain(&u, samples, deadline).await,
        Ok(_) => time_pooled(http, url, samples, deadline).await,
        Err(_) => Vec::new(),
    }
}

fn ms(d: Duration) -> f64 {
    // The director accepts 0 < rtt < 10,000 ms; a loopback answer can time below a
    // microsecond's resolution.
    (d.as_secs_f64() * 1000.0).clamp(0.001, 9_999.0)
}

async fn time_plain(url: &reqwest::Url, samples: usize, deadline: Instant) -> Vec<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = Vec::with_capacity(samples);
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return out;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let Ok(Ok(mut addrs)) =
        tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port))).await
    else {
        return out;
    };
    let Some(addr) = addrs.next() else { return out };
    let t = Instant::now();
    let mut sock =
        match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            // Refused or unreachable: no figure (the director's health checks deal with it).
            Ok(Err(_)) => return out,
            // Still no handshake at the end: its round trip is at least what it waited — a lower
            // bound, but a path that slow must not look better than the estimate.
            Err(_) => {
                out.push(ms(t.elapsed()));
                return out;
            }
        };
    out.push(ms(t.elapsed()));
    let _ = sock.set_nodelay(true);
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: firstmile-probe\r\n\r\n",
        url.path(),
        url.authority()
    );
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while out.len() < samples {
        let t = Instant::now();
        let one = async {
            sock.write_all(request.as_bytes()).await.ok()?;
            head.clear();
            // The answer's head (a 204 has no body); at most 8 KiB of it.
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.ok()?;
                if n == 0 || head.len() + n > 8192 {
                    return None;
                }
                head.extend_from_slice(&buf[..n]);
            }
            Some(head.starts_with(b"HTTP/1.1 2") || head.starts_with(b"HTTP/1.0 2"))
        };
        match tokio::time::timeout_at(deadline, one).await {
            Ok(Some(true)) => out.push(ms(t.elapsed())),
            // Refused (429: its per-address probe limit), closed, or out of time: the
            // handshake and what was timed so far are the answer.
            _ => break,
        }
    }
    out
}

async fn time_pooled(
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
                    out.push(ms(start.elapsed()));
                }
            }
            _ => break,
        }
    }
    out
}
