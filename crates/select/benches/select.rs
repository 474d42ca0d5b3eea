//! One selection among 1,000 and 100,000 servers spread over the world (seeded), from a random
//! client; the fleet snapshot is built once, as in the director. Then what measured steering
//! adds per assignment: checking a device's probes (10 servers × 5 samples), the selection with
//! those probes and the client network's history, the probe targets, and taking observations
//! into a history that is at its budget (100,000 networks).

use geo::Location;
use select::{
    Capacity, ClientNetwork, EntryServer, Evidence, Fleet, Health, History, Load, Params, Probes,
    Protocol, Request, probe_targets, select, select_with,
};
use std::net::IpAddr;

fn main() {
    divan::main();
}

fn lcg(state: &mut u64) -> f64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*state >> 11) as f64 / (1u64 << 53) as f64
}

fn random_location(st: &mut u64) -> Location {
    // Uniform on the sphere, within ±70° latitude where people live.
    let lat = (2.0 * lcg(st) - 1.0).asin().to_degrees().clamp(-70.0, 70.0);
    let lon = lcg(st) * 360.0 - 180.0;
    Location::new(lat, lon).unwrap()
}

fn fleet(n: usize) -> Fleet {
    let mut st = 42;
    Fleet::new(
        (0..n)
            .map(|i| EntryServer {
                id: format!("s{i:06}"),
                pop: format!("pop{}", i / 4),
                city: String::new(),
                location: random_location(&mut st),
                capacity: Capacity {
                    streams: 100,
                    mbps: 1000.0,
                },
                load: Load {
                    streams: (lcg(&mut st) * 90.0) as u32,
                    mbps: lcg(&mut st) * 900.0,
                    cpu: lcg(&mut st) * 0.9,
                },
                health: if lcg(&mut st) < 0.05 {
                    Health::Unhealthy
                } else {
                    Health::Healthy
                },
                draining: false,
                protocols: vec![Protocol::Native],
            })
            .collect(),
    )
}

#[divan::bench(args = [1_000, 100_000])]
fn select_primary_and_backup(bencher: divan::Bencher, n: usize) {
    let fleet = fleet(n);
    let params = Params::default();
    let mut st = 7;
    let default = Location::new(0.0, 0.0).unwrap();
    let requests: Vec<Request> = (0..1024)
        .map(|_| Request {
            typed: Some(random_location(&mut st)),
            ip: Some(random_location(&mut st)),
            protocol: Protocol::Native,
            bitrate_kbps: 6000,
        })
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    bencher
        .with_inputs(|| {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            requests[i % requests.len()].clone()
        })
        .bench_refs(|r| select(&fleet, r, &params, None, &default, 0).unwrap());
}

#[divan::bench(args = [1_000, 100_000])]
fn build_fleet_snapshot(bencher: divan::Bencher, n: usize) {
    let servers = fleet(n).servers().to_vec();
    bencher
        .with_inputs(|| servers.clone())
        .bench_values(Fleet::new);
}

/// A device's probes of its 10 targets (5 samples each) and a history in which its network has
/// 8 POPs, for each of 1024 requests.
struct Measured {
    requests: Vec<Request>,
    probes: Vec<Vec<(String, Vec<f64>)>>,
    networks: Vec<ClientNetwork>,
    history: History,
}

fn measured(fleet: &Fleet) -> Measured {
    let params = Params::default();
    let default = Location::new(0.0, 0.0).unwrap();
    let mut st = 11;
    let mut history = History::new();
    let (mut requests, mut probes, mut networks) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..1024u32 {
        let r = Request {
            typed: Some(random_location(&mut st)),
            ip: Some(random_location(&mut st)),
            protocol: Protocol::Native,
            bitrate_kbps: 6000,
        };
        let targets = probe_targets(fleet, &r, &params, &Evidence::default(), &default, 0, 5);
        let net = ClientNetwork::new(IpAddr::from([10, (i >> 8) as u8, i as u8, 7]), None);
        let mut results = Vec::new();
        for (k, t) in targets.iter().enumerate() {
            let base = 10.0 + 100.0 * lcg(&mut st);
            results.push((
                t.server.id.clone(),
                (0..5).map(|_| base + 5.0 * lcg(&mut st)).collect(),
            ));
            if k < 8 {
                history.observe(&net, &t.server.pop, base, 0).unwrap();
            }
        }
        requests.push(r);
        probes.push(results);
        networks.push(net);
    }
    Measured {
        requests,
        probes,
        networks,
        history,
    }
}

#[divan::bench(args = [1_000, 100_000])]
fn select_with_probes_and_history(bencher: divan::Bencher, n: usize) {
    let fleet = fleet(n);
    let params = Params::default();
    let default = Location::new(0.0, 0.0).unwrap();
    let m = measured(&fleet);
    let next = std::sync::atomic::AtomicUsize::new(0);
    bencher
        .with_inputs(|| next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1024)
        .bench_values(|i| {
            // Everything the director does per assignment with measurements: check the probes,
            // look the network up, select.
            let probes = Probes::new(
                m.probes[i].iter().map(|(s, v)| (s.as_str(), v.as_slice())),
                &fleet,
            )
            .unwrap();
            let e = Evidence {
                learned: None,
                history: Some(m.history.view(&m.networks[i])),
                probes: Some(&probes),
            };
            select_with(&fleet, &m.requests[i], &params, &e, &default, 0).unwrap()
        });
}

#[divan::bench(args = [1_000, 100_000])]
fn probe_targets_top_5_per_location(bencher: divan::Bencher, n: usize) {
    let fleet = fleet(n);
    let params = Params::default();
    let default = Location::new(0.0, 0.0).unwrap();
    let m = measured(&fleet);
    let next = std::sync::atomic::AtomicUsize::new(0);
    bencher
        .with_inputs(|| next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1024)
        .bench_values(|i| {
            probe_targets(
                &fleet,
                &m.requests[i],
                &params,
                &Evidence::default(),
                &default,
                0,
                5,
            )
            .len()
        });
}

/// One observation (a session's SRTT or a probe median) into a history at its budget of
/// 100,000 networks: every new network evicts the least recently updated one.
#[divan::bench]
fn history_observe_at_budget(bencher: divan::Bencher) {
    let mut h = History::new();
    let budget = h.params().max_networks as u32;
    for i in 0..budget {
        let net = ClientNetwork::new(IpAddr::from((i << 8).to_be_bytes()), None);
        h.observe(&net, "pop1", 20.0, u64::from(i)).unwrap();
    }
    let mut i = budget;
    bencher.bench_local(|| {
        i = i.wrapping_add(1);
        let net = ClientNetwork::new(IpAddr::from((i << 8).to_be_bytes()), None);
        h.observe(&net, "pop2", 25.0, u64::from(i)).unwrap();
    });
}
