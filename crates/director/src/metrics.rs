//! The director's Prometheus metrics, in a registry owned by the [`crate::Director`] (no global
//! state, so several directors can live in one test process).
//!
//! - `firstmile_director_assignments_total{outcome}`: `ok`, `no_backup`, `no_server`,
//!   `invalid`, `rate_limited`;
//! - `firstmile_director_selection_seconds`: time spent in selection (histogram);
//! - `firstmile_director_entry_servers_registered`, `..._healthy`: gauges, set at each snapshot;
//! - `firstmile_director_heartbeats_total{result}`: `ok`, `unknown_server`, `unauthorized`,
//!   `invalid`;
//! - `firstmile_director_measurements_total{result}`: `accepted`, `rejected`;
//! - `firstmile_director_registry_degraded`: 1 while the shared registry (etcd) cannot be reached
//!   and answers come from the last snapshot, else 0 (always 0 in memory);
//! - `firstmile_director_etcd_writes_total`: key writes this director made to etcd (puts and
//!   transactions; lease renewals are not writes), to check the write budget;
//! - `firstmile_director_stream_conflicts_total`: stream changes made while etcd was unreachable
//!   and dropped because another director changed the same stream meanwhile (etcd's version
//!   wins); `firstmile_director_streams_unwritten`: such changes waiting for etcd now;
//! - `firstmile_director_history_networks`, `..._history_bytes`: the per-network RTT history
//!   (client prefixes and POPs; at most `select::HistoryParams::max_networks`, about 50 MB);
//! - the HTTP(S) listener (`plumbing::listen`, read at each scrape):
//!   `firstmile_director_connections` (open now), `..._connections_refused_total{reason}`
//!   (`full`, `per_ip`), `..._connections_evicted_total` (closed while opening to make room),
//!   `..._connections_timed_out_total{phase}` (`opening`: TLS handshake or first request head
//!   too slow; `idle`: no next request on a kept-alive connection).

use std::sync::Arc;

use plumbing::listen::ListenStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    assignments: Family<Labels, Counter>,
    pub selection_seconds: Histogram,
    pub registered: Gauge,
    pub healthy: Gauge,
    heartbeats: Family<Labels, Counter>,
    measurements: Family<Labels, Counter>,
    pub registry_degraded: Gauge,
    etcd_writes: Counter,
    etcd_writes_seen: std::sync::atomic::AtomicU64,
    stream_conflicts: Counter,
    stream_conflicts_seen: std::sync::atomic::AtomicU64,
    pub streams_unwritten: Gauge,
    pub history_networks: Gauge,
    pub history_bytes: Gauge,
    /// Counters of the HTTP(S) listener, kept by its gate.
    pub http_listener: Arc<ListenStats>,
}

/// Renders the listener's counters at scrape time.
#[derive(Debug)]
struct ListenerCollector(Arc<ListenStats>);

impl Collector for ListenerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.snapshot();
        let open = ConstGauge::new(s.open as i64);
        open.encode(encoder.encode_descriptor(
            "connections",
            "Connections open on the HTTP(S) listener",
            None,
            open.metric_type(),
        )?)?;
        let counter = |n: u64| ConstCounter::new(n);
        let mut family = encoder.encode_descriptor(
            "connections_refused",
            "Connections refused by the listener's caps, by reason",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, n) in [("full", s.refused_full), ("per_ip", s.refused_per_ip)] {
            counter(n).encode(family.encode_family(&vec![("reason", reason)])?)?;
        }
        let evicted = counter(s.evicted);
        evicted.encode(encoder.encode_descriptor(
            "connections_evicted",
            "Connections closed while still opening to make room for a newcomer",
            None,
            evicted.metric_type(),
        )?)?;
        let mut family = encoder.encode_descriptor(
            "connections_timed_out",
            "Connections closed by a timeout: opening (handshake, first request head) or idle",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (phase, n) in [("opening", s.timed_out_opening), ("idle", s.timed_out_idle)] {
            counter(n).encode(family.encode_family(&vec![("phase", phase)])?)?;
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Bring `counter` up to `total`, a count kept elsewhere (read at each scrape); `seen` is the
/// total it was last brought to.
fn catch_up(counter: &Counter, seen: &std::sync::atomic::AtomicU64, total: u64) {
    let before = seen.fetch_max(total, std::sync::atomic::Ordering::Relaxed);
    if total > before {
        counter.inc_by(total - before);
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("firstmile_director");
        let assignments = Family::<Labels, Counter>::default();
        let selection_seconds = Histogram::new(exponential_buckets(0.000_01, 2.0, 16));
        let registered = Gauge::default();
        let healthy = Gauge::default();
        let heartbeats = Family::<Labels, Counter>::default();
        let measurements = Family::<Labels, Counter>::default();
        let registry_degraded = Gauge::default();
        let etcd_writes = Counter::default();
        let stream_conflicts = Counter::default();
        let streams_unwritten = Gauge::default();
        let history_networks = Gauge::default();
        let history_bytes = Gauge::default();
        registry.register(
            "history_networks",
            "Client networks (prefixes and ASNs) with per-POP RTT history",
            history_networks.clone(),
        );
        registry.register(
            "history_bytes",
            "Approximate memory held by the per-network RTT history",
            history_bytes.clone(),
        );
        registry.register(
            "stream_conflicts",
            "Stream changes made while etcd was unreachable, dropped for another director's",
            stream_conflicts.clone(),
        );
        registry.register(
            "streams_unwritten",
            "Stream changes kept locally, waiting for etcd",
            streams_unwritten.clone(),
        );
        let http_listener = Arc::new(ListenStats::default());
        registry.register_collector(Box::new(ListenerCollector(http_listener.clone())));
        registry.register(
            "etcd_writes",
            "Key writes this director made to etcd (puts and transactions)",
            etcd_writes.clone(),
        );
        registry.register(
            "assignments",
            "Assignment requests by outcome",
            assignments.clone(),
        );
        registry.register(
            "selection_seconds",
            "Time spent selecting primary and backup",
            selection_seconds.clone(),
        );
        registry.register(
            "entry_servers_registered",
            "Registered entry servers",
            registered.clone(),
        );
        registry.register(
            "entry_servers_healthy",
            "Registered entry servers that heartbeat on time",
            healthy.clone(),
        );
        registry.register("heartbeats", "Heartbeats by result", heartbeats.clone());
        registry.register(
            "measurements",
            "Path measurements from entry servers by result",
            measurements.clone(),
        );
        registry.register(
            "registry_degraded",
            "1 while the shared registry (etcd) is unreachable and answers come from the last snapshot",
            registry_degraded.clone(),
        );
        Self {
            http_listener,
            registry_degraded,
            etcd_writes,
            etcd_writes_seen: Default::default(),
            stream_conflicts,
            stream_conflicts_seen: Default::default(),
            streams_unwritten,
            history_networks,
            history_bytes,
            registry,
            assignments,
            selection_seconds,
            registered,
            healthy,
            heartbeats,
            measurements,
        }
    }

    pub fn assignment(&self, outcome: &'static str) {
        self.assignments
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    /// Bring the etcd write counter up to the registry's count.
    pub fn etcd_writes(&self, total: u64) {
        catch_up(&self.etcd_writes, &self.etcd_writes_seen, total);
    }

    /// Bring the stream conflict counter up to the store's count.
    pub fn stream_conflicts(&self, total: u64) {
        catch_up(&self.stream_conflicts, &self.stream_conflicts_seen, total);
    }

    pub fn heartbeat(&self, result: &'static str) {
        self.heartbeats
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    pub fn measurements(&self, result: &'static str, n: u64) {
        if n > 0 {
            self.measurements
                .get_or_create(&vec![("result", result)])
                .inc_by(n);
        }
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
