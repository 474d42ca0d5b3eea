//! One selection among 1,000 and 100,000 servers spread over the world (seeded), from a random
//! client; the fleet snapshot is built once, as in the director.

use geo::Location;
use select::{Capacity, EntryServer, Fleet, Health, Load, Params, Protocol, Request, select};

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
