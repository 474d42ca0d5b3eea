//! Integration tests of the decision core: selection invariants (property tests), the RTT
//! calibration against the shipped measurements, and the simulation on the shipped data.

use geo::Location;
use proptest::prelude::*;
use select::sim::{Dataset, SimConfig, run};
use select::{
    BasisKind, Capacity, ClientNetwork, Corrections, EntryServer, Evidence, Fleet, Health, History,
    Load, Measurement, Params, Probes, Protocol, Request, RttSourceKind, probe_targets, select,
    select_with,
};
use std::path::PathBuf;

fn loc(lat: f64, lon: f64) -> Location {
    Location::new(lat, lon).unwrap()
}

fn server(id: &str, pop: &str, l: Location) -> EntryServer {
    EntryServer {
        id: id.into(),
        pop: pop.into(),
        city: id.into(),
        location: l,
        capacity: Capacity {
            streams: 100,
            mbps: 1000.0,
        },
        load: Load::default(),
        health: Health::Healthy,
        draining: false,
        protocols: vec![Protocol::Native, Protocol::Rtmp],
    }
}

fn req(typed: Option<Location>, ip: Option<Location>) -> Request {
    Request {
        typed,
        ip,
        protocol: Protocol::Native,
        bitrate_kbps: 6000,
    }
}

const PARIS: (f64, f64) = (48.8566, 2.3522);
const FRANKFURT: (f64, f64) = (50.1109, 8.6821);
const NEW_YORK: (f64, f64) = (40.7128, -74.0060);
const TOKYO: (f64, f64) = (35.6762, 139.6503);
const DEFAULT: (f64, f64) = (0.0, 0.0);

fn world() -> Vec<EntryServer> {
    vec![
        server("par-1", "par", loc(PARIS.0, PARIS.1)),
        server("par-2", "par", loc(PARIS.0, PARIS.1 + 0.01)),
        server("fra-1", "fra", loc(FRANKFURT.0, FRANKFURT.1)),
        server("nyc-1", "nyc", loc(NEW_YORK.0, NEW_YORK.1)),
        server("tyo-1", "tyo", loc(TOKYO.0, TOKYO.1)),
    ]
}

fn default_place() -> Location {
    loc(DEFAULT.0, DEFAULT.1)
}

/// Select for a native 6 Mbit/s stream with the default parameters, no learning, at time 0.
fn pick(fleet: &Fleet, typed: Option<Location>, ip: Option<Location>) -> select::Selection {
    select(
        fleet,
        &req(typed, ip),
        &Params::default(),
        None,
        &default_place(),
        0,
    )
    .unwrap()
}

#[test]
fn typed_and_ip_on_different_continents() {
    let fleet = Fleet::new(world());
    let r = req(
        Some(loc(PARIS.0, PARIS.1)),
        Some(loc(NEW_YORK.0, NEW_YORK.1)),
    );
    let s = select(&fleet, &r, &Params::default(), None, &default_place(), 0).unwrap();
    assert_eq!(s.primary.pop, "par");
    assert_eq!(s.primary.scored_from.kind, BasisKind::Typed);
    let b = s.backup.unwrap();
    assert_eq!(b.server_id, "nyc-1");
    assert_eq!(b.scored_from.kind, BasisKind::Ip);
    assert!(!s.primary.runners_up.is_empty());
}

#[test]
fn backup_leaves_the_primary_pop_even_when_a_same_pop_server_is_nearer() {
    let fleet = Fleet::new(world());
    let paris = loc(PARIS.0, PARIS.1);
    let s = pick(&fleet, Some(paris), Some(paris));
    assert_eq!(s.primary.pop, "par");
    assert_eq!(s.backup.unwrap().server_id, "fra-1");
}

#[test]
fn one_location_unknown_uses_the_other_for_both() {
    let fleet = Fleet::new(world());
    let tokyo = loc(TOKYO.0, TOKYO.1);
    let s = pick(&fleet, None, Some(tokyo));
    assert_eq!(s.primary.server_id, "tyo-1");
    assert_eq!(s.primary.scored_from.kind, BasisKind::Ip);
    assert_eq!(s.backup.as_ref().unwrap().scored_from.kind, BasisKind::Ip);
    assert!(s.primary.scored_from.note.is_some());
    let s = pick(&fleet, Some(tokyo), None);
    assert_eq!(s.primary.server_id, "tyo-1");
    assert_eq!(s.backup.unwrap().scored_from.kind, BasisKind::Typed);
}

#[test]
fn both_unknown_falls_back_to_the_default_place_and_says_so() {
    let fleet = Fleet::new(world());
    let frankfurt = loc(FRANKFURT.0, FRANKFURT.1);
    let s = select(
        &fleet,
        &req(None, None),
        &Params::default(),
        None,
        &frankfurt,
        0,
    )
    .unwrap();
    assert_eq!(s.primary.server_id, "fra-1");
    assert_eq!(s.primary.scored_from.kind, BasisKind::Default);
    assert!(
        s.primary
            .scored_from
            .note
            .as_deref()
            .unwrap()
            .contains("default")
    );
}

#[test]
fn full_drained_unhealthy_and_wrong_protocol_servers_are_skipped() {
    let mut servers = world();
    servers[0].load.streams = 100; // par-1 full
    servers[1].draining = true; // par-2 drained
    servers[2].health = Health::Unhealthy; // fra-1 down
    let fleet = Fleet::new(servers);
    let paris = loc(PARIS.0, PARIS.1);
    let s = pick(&fleet, Some(paris), Some(paris));
    assert_eq!(s.primary.server_id, "nyc-1");

    let mut r = req(Some(paris), Some(paris));
    r.protocol = Protocol::Websocket;
    let e = select(&fleet, &r, &Params::default(), None, &default_place(), 0).unwrap_err();
    assert_eq!(
        (
            e.total,
            e.full,
            e.draining,
            e.unhealthy,
            e.protocol_mismatch
        ),
        (5, 0, 1, 1, 3)
    );
    assert!(e.to_string().contains("websocket"), "{e}");
}

#[test]
fn bitrate_beyond_headroom_is_skipped() {
    let mut servers = world();
    servers[0].load.mbps = 999.0;
    servers[1].load.mbps = 999.0;
    let fleet = Fleet::new(servers);
    let paris = loc(PARIS.0, PARIS.1);
    let s = pick(&fleet, Some(paris), Some(paris));
    assert_eq!(s.primary.server_id, "fra-1");
}

#[test]
fn no_backup_possible_with_one_server() {
    let fleet = Fleet::new(vec![server("solo", "p", loc(PARIS.0, PARIS.1))]);
    let paris = loc(PARIS.0, PARIS.1);
    let s = pick(&fleet, Some(paris), Some(paris));
    assert_eq!(s.primary.server_id, "solo");
    assert!(s.backup.is_none());
    assert!(s.backup_reason.unwrap().contains("no other entry server"));
}

#[test]
fn same_pop_backup_only_when_nothing_else_qualifies_and_it_says_so() {
    let fleet = Fleet::new(vec![
        server("a", "p", loc(PARIS.0, PARIS.1)),
        server("b", "p", loc(PARIS.0, PARIS.1)),
    ]);
    let paris = loc(PARIS.0, PARIS.1);
    let s = pick(&fleet, Some(paris), Some(paris));
    let b = s.backup.unwrap();
    assert_ne!(b.server_id, s.primary.server_id);
    assert!(b.note.unwrap().contains("failure domain"));
}

#[test]
fn measurements_steer_away_from_a_badly_routed_server() {
    // Two POPs at the same distance; sessions from near the client report one of them slow.
    let client = loc(10.0, 0.0);
    let fleet = Fleet::new(vec![
        server("east", "e", loc(10.0, 5.0)),
        server("west", "w", loc(10.0, -5.0)),
    ]);
    let p = Params::default();
    let before = select(
        &fleet,
        &req(Some(client), Some(client)),
        &p,
        None,
        &default_place(),
        0,
    )
    .unwrap();
    assert_eq!(before.primary.server_id, "east"); // tie broken by id
    let mut learned = Corrections::new();
    for i in 0..10 {
        let m = Measurement {
            client: loc(10.2, 0.3),
            server_id: "east".into(),
            rtt_ms: 180.0,
            loss: Some(0.02),
            throughput_mbps: None,
            at: 100 + i,
        };
        learned
            .observe(&m, &fleet.get("east").unwrap().location, &p)
            .unwrap();
    }
    let after = select(
        &fleet,
        &req(Some(client), Some(client)),
        &p,
        Some(&learned),
        &default_place(),
        200,
    )
    .unwrap();
    assert_eq!(after.primary.server_id, "west");
    let east = after.backup.unwrap();
    assert_eq!(east.server_id, "east");
    assert!(
        east.estimate.evidence > 5.0 && east.estimate.rtt_ms > 100.0,
        "{east:?}"
    );
}

// --- Measured steering: probes and per-network history ------------------------------------

/// A ring of POPs around a client at (0, 0): `pN` at N × 200 km east, one server each.
fn ring(n: usize) -> Fleet {
    Fleet::new(
        (1..=n)
            .map(|i| {
                let id = format!("p{i}");
                server(&id, &id, loc(0.0, i as f64 * 200.0 / 111.2))
            })
            .collect(),
    )
}

fn here() -> Location {
    loc(0.0, 0.0)
}

fn with(fleet: &Fleet, r: &Request, e: &Evidence<'_>, now: u64) -> select::Selection {
    select_with(fleet, r, &Params::default(), e, &default_place(), now).unwrap()
}

#[test]
fn a_probed_median_replaces_the_estimate_and_the_pick_says_so() {
    let fleet = ring(6);
    let r = req(Some(here()), Some(here()));
    let plain = with(&fleet, &r, &Evidence::default(), 0);
    assert_eq!(plain.primary.server_id, "p1");
    assert_eq!(plain.primary.rtt_source.to_string(), "estimated");
    // p1 is badly routed from here; p2 is what the model thinks. The medians count, not the
    // minimum: p3 has the lowest single sample (its path is clean sometimes) but queues.
    let probes = Probes::new(
        [
            ("p1", vec![210.0, 205.0, 215.0, 208.0, 212.0]),
            ("p2", vec![19.5, 20.0, 21.0, 20.5, 19.0]),
            ("p3", vec![13.7, 42.0, 45.0, 41.0, 44.0]),
            ("unknown", vec![1.0]),
        ],
        &fleet,
    )
    .unwrap();
    let e = Evidence {
        probes: Some(&probes),
        ..Evidence::default()
    };
    let sel = with(&fleet, &r, &e, 0);
    assert_eq!(sel.primary.server_id, "p2");
    assert_eq!(sel.primary.estimate.rtt_ms, 20.0);
    assert_eq!(sel.primary.rtt_source.kind, RttSourceKind::Probed);
    assert_eq!(sel.primary.rtt_source.to_string(), "probed: median of 5");
    let backup = sel.backup.unwrap();
    // p3 (median 42) loses to the unprobed p4 (model 26 ms, plus no excess: fewer than 4
    // servers measured).
    assert_eq!(backup.server_id, "p4");
    assert_eq!(backup.rtt_source.to_string(), "estimated");
    let ranked = select::rank_with(
        &fleet,
        &here(),
        r.protocol,
        r.bitrate_kbps,
        &Params::default(),
        &e,
        0,
        6,
    );
    let order: Vec<(&str, f64, String)> = ranked
        .iter()
        .map(|x| {
            (
                x.server.id.as_str(),
                x.estimate.rtt_ms,
                x.rtt_source.to_string(),
            )
        })
        .collect();
    assert_eq!(order[0], ("p2", 20.0, "probed: median of 5".into()));
    assert_eq!(order[4], ("p3", 42.0, "probed: median of 5".into()));
    assert_eq!(order[5], ("p1", 210.0, "probed: median of 5".into()));
    assert!(order[1..4].iter().all(|x| x.2 == "estimated"), "{order:?}");
}

#[test]
fn an_access_link_that_slows_every_probe_does_not_hand_the_pick_to_an_unprobed_server() {
    // The device is on a link that adds 25 ms to everything. Without the excess added to the
    // unprobed candidates, p6 (estimated 31 ms, never measured) would beat every probed one.
    let fleet = ring(8);
    let p = Params::default();
    let r = req(Some(here()), Some(here()));
    let model = |id: &str| {
        p.prior(&here(), fleet.get(id).unwrap(), r.bitrate_kbps)
            .rtt_ms
    };
    let slow: Vec<(String, Vec<f64>)> = ["p1", "p2", "p3", "p4", "p5"]
        .iter()
        .map(|id| (id.to_string(), vec![model(id) + 25.0; 5]))
        .collect();
    let probes = Probes::new(slow.iter().map(|(s, v)| (s.as_str(), v)), &fleet).unwrap();
    let e = Evidence {
        probes: Some(&probes),
        ..Evidence::default()
    };
    let sel = with(&fleet, &r, &e, 0);
    assert_eq!(sel.primary.server_id, "p1");
    assert_eq!(sel.backup.as_ref().unwrap().server_id, "p2");
    let p6 = select::rank_with(&fleet, &here(), r.protocol, r.bitrate_kbps, &p, &e, 0, 8)
        .into_iter()
        .find(|x| x.server.id == "p6")
        .unwrap();
    assert_eq!(p6.measured_excess_ms, Some(25.0));
    assert!((p6.estimate.rtt_ms - (model("p6") + 25.0)).abs() < 1e-9);
    // A detour on every probed path is not an access link: the excess is capped, so a far
    // unprobed server can still win over five badly routed ones.
    let detour: Vec<(String, Vec<f64>)> = ["p1", "p2", "p3", "p4", "p5"]
        .iter()
        .map(|id| (id.to_string(), vec![model(id) + 150.0; 5]))
        .collect();
    let probes = Probes::new(detour.iter().map(|(s, v)| (s.as_str(), v)), &fleet).unwrap();
    let e = Evidence {
        probes: Some(&probes),
        ..Evidence::default()
    };
    let sel = with(&fleet, &r, &e, 0);
    assert_eq!(sel.primary.server_id, "p6");
    let note = sel.primary.note.unwrap();
    assert!(note.contains("30.0 ms"), "{note}");
}

#[test]
fn history_of_the_client_network_steers_its_later_sessions_only() {
    let fleet = ring(6);
    let r = req(Some(here()), Some(here()));
    let learned = Corrections::new();
    let mut h = History::new();
    let mine = ClientNetwork::new("198.51.100.23".parse().unwrap(), None);
    let theirs = ClientNetwork::new("198.51.101.23".parse().unwrap(), None);
    // Session 1: p1 (primary) and p2 (backup) measured by the entry servers.
    h.observe(&mine, "p1", 180.0, 1_000).unwrap();
    h.observe(&mine, "p2", 21.0, 1_000).unwrap();
    let e = |net: &ClientNetwork, h: &History| {
        let view = h.view(net);
        let sel = select_with(
            &fleet,
            &r,
            &Params::default(),
            &Evidence {
                learned: Some(&learned),
                history: Some(view),
                probes: None,
            },
            &default_place(),
            2_000,
        )
        .unwrap();
        (
            sel.primary.server_id.clone(),
            sel.primary.rtt_source.to_string(),
        )
    };
    assert_eq!(
        e(&mine, &h),
        ("p2".into(), "learned from 1 sessions".into())
    );
    // Another network is not steered by mine...
    assert_eq!(e(&theirs, &h), ("p1".into(), "estimated".into()));
    // ...and where my network says it is changes the candidates and their estimates, not
    // what my network measured to p2.
    let far = loc(0.0, 3.0);
    let view = h.view(&mine);
    let ranked = select::rank_with(
        &fleet,
        &far,
        r.protocol,
        r.bitrate_kbps,
        &Params::default(),
        &Evidence {
            history: Some(view),
            ..Evidence::default()
        },
        2_000,
        6,
    );
    let p2 = ranked.iter().find(|x| x.server.id == "p2").unwrap();
    assert_eq!(
        (p2.estimate.rtt_ms, p2.rtt_source.kind),
        (21.0, RttSourceKind::Learned)
    );
    // Probes of this request win over history.
    let probes = Probes::new([("p2", [35.0, 36.0, 34.0])], &fleet).unwrap();
    let ranked = select::rank_with(
        &fleet,
        &here(),
        r.protocol,
        r.bitrate_kbps,
        &Params::default(),
        &Evidence {
            history: Some(h.view(&mine)),
            probes: Some(&probes),
            ..Evidence::default()
        },
        2_000,
        6,
    );
    let src = |id: &str| {
        let x = ranked.iter().find(|x| x.server.id == id).unwrap();
        (x.estimate.rtt_ms, x.rtt_source.to_string())
    };
    assert_eq!(src("p2"), (35.0, "probed: median of 3".into()));
    assert_eq!(src("p1"), (180.0, "learned from 1 sessions".into()));
}

#[test]
fn probe_targets_are_the_top_k_from_each_location_deduplicated() {
    use select::probe::Role::{Backup, Primary};
    let fleet = Fleet::new(world());
    let paris = loc(PARIS.0, PARIS.1);
    let targets = |typed, ip, k| {
        probe_targets(
            &fleet,
            &req(typed, ip),
            &Params::default(),
            &Evidence::default(),
            &default_place(),
            0,
            k,
        )
        .into_iter()
        .map(|t| (t.server.id.clone(), t.roles))
        .collect::<Vec<_>>()
    };
    let s = |x: &str| x.to_string();
    assert_eq!(
        targets(Some(paris), Some(loc(TOKYO.0, TOKYO.1)), 2),
        [
            (s("par-1"), vec![Primary]),
            (s("par-2"), vec![Primary]),
            (s("tyo-1"), vec![Backup]),
            (s("fra-1"), vec![Backup]),
        ]
    );
    assert_eq!(
        targets(Some(paris), Some(loc(FRANKFURT.0, FRANKFURT.1)), 3),
        [
            (s("par-1"), vec![Primary, Backup]),
            (s("par-2"), vec![Primary, Backup]),
            (s("fra-1"), vec![Primary, Backup]),
        ]
    );
    // One location unknown: both lists come from the other, as in the selection.
    assert_eq!(
        targets(None, Some(paris), 1),
        [(s("par-1"), vec![Primary, Backup])]
    );
    assert!(targets(Some(paris), None, 0).is_empty());
}

fn arb_server(i: usize) -> impl Strategy<Value = EntryServer> {
    (
        -80.0f64..80.0,
        -180.0f64..180.0,
        0u32..6,
        0u32..=100,
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.1),
        prop::bool::weighted(0.8),
    )
        .prop_map(move |(lat, lon, pop, streams, sick, drain, native)| {
            let mut s = server(&format!("s{i:03}"), &format!("pop{pop}"), loc(lat, lon));
            s.load.streams = streams;
            s.load.mbps = f64::from(streams) * 5.0;
            if sick {
                s.health = Health::Unhealthy;
            }
            s.draining = drain;
            if !native {
                s.protocols = vec![Protocol::Rtmp];
            }
            s
        })
}

fn arb_fleet() -> impl Strategy<Value = Vec<EntryServer>> {
    (1usize..40).prop_flat_map(|n| (0..n).map(arb_server).collect::<Vec<_>>())
}

fn arb_loc() -> impl Strategy<Value = Option<Location>> {
    prop::option::weighted(
        0.8,
        (-90.0f64..=90.0, -180.0f64..=180.0).prop_map(|(a, b)| loc(a, b)),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn selection_invariants(servers in arb_fleet(), typed in arb_loc(), ip in arb_loc(), seed in any::<u64>()) {
        let r = req(typed, ip);
        let p = Params::default();
        let fleet = Fleet::new(servers.clone());
        let eligible: Vec<&EntryServer> = servers
            .iter()
            .filter(|s| s.ineligibility(r.protocol, r.bitrate_kbps).is_none())
            .collect();
        match select(&fleet, &r, &p, None, &default_place(), 0) {
            Err(e) => prop_assert!(eligible.is_empty(), "error {e} with {} eligible", eligible.len()),
            Ok(sel) => {
                // Never an unhealthy, drained, full or wrong-protocol server.
                let ok = |id: &str| eligible.iter().any(|s| s.id == id);
                prop_assert!(ok(&sel.primary.server_id));
                match &sel.backup {
                    Some(b) => {
                        prop_assert!(ok(&b.server_id));
                        prop_assert_ne!(&b.server_id, &sel.primary.server_id);
                        // POP diversity whenever another POP qualifies.
                        if eligible.iter().any(|s| s.pop != sel.primary.pop) {
                            prop_assert_ne!(&b.pop, &sel.primary.pop);
                        }
                    }
                    None => prop_assert_eq!(eligible.len(), 1),
                }
                // Independent of the order servers are given in.
                let mut shuffled = servers.clone();
                let n = shuffled.len();
                let mut st = seed;
                for i in (1..n).rev() {
                    st = st.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    shuffled.swap(i, (st >> 33) as usize % (i + 1));
                }
                let again = select(&Fleet::new(shuffled), &r, &p, None, &default_place(), 0).unwrap();
                prop_assert_eq!(again, sel);
            }
        }
    }

    #[test]
    fn measured_selection_invariants(
        servers in arb_fleet(),
        typed in arb_loc(),
        ip in arb_loc(),
        probe_ms in prop::collection::vec(prop::option::of(0.0f64..500.0), 0..40),
        history_ms in prop::collection::vec(prop::option::of(1.0f64..500.0), 6),
    ) {
        let r = req(typed, ip);
        let p = Params::default();
        let fleet = Fleet::new(servers.clone());
        let results: Vec<(String, Vec<f64>)> = servers
            .iter()
            .zip(&probe_ms)
            .filter_map(|(s, x)| x.map(|x| (s.id.clone(), vec![x * 0.9, x, x * 1.5])))
            .take(select::probe::MAX_PROBED_SERVERS)
            .collect();
        let probes = Probes::new(results.iter().map(|(s, v)| (s.as_str(), v)), &fleet).unwrap();
        let mut h = History::new();
        let net = ClientNetwork::new("192.0.2.7".parse().unwrap(), None);
        for (i, x) in history_ms.iter().enumerate() {
            if let Some(x) = x {
                h.observe(&net, &format!("pop{i}"), *x, 0).unwrap();
            }
        }
        let e = Evidence { learned: None, history: Some(h.view(&net)), probes: Some(&probes) };
        let plain = select(&fleet, &r, &p, None, &default_place(), 0);
        match select_with(&fleet, &r, &p, &e, &default_place(), 0) {
            Err(_) => prop_assert!(plain.is_err()),
            Ok(sel) => {
                let plain = plain.unwrap();
                // Evidence changes which server, never whether there is a backup or its POP rule.
                prop_assert_eq!(sel.backup.is_some(), plain.backup.is_some());
                if let Some(b) = &sel.backup {
                    prop_assert_ne!(&b.server_id, &sel.primary.server_id);
                    if plain.backup.as_ref().is_some_and(|b| b.pop != plain.primary.pop) {
                        prop_assert_ne!(&b.pop, &sel.primary.pop);
                    }
                }
                // Every candidate shown says truly where its RTT came from.
                let shown = std::iter::once(&sel.primary).chain(sel.backup.iter());
                for pick in shown {
                    let (id, est, src) = (&pick.server_id, &pick.estimate, pick.rtt_source);
                    if let Some(pr) = probes.get(id) {
                        prop_assert_eq!(src.kind, RttSourceKind::Probed);
                        prop_assert_eq!(est.rtt_ms, pr.median_ms.max(0.01));
                        prop_assert_eq!(src.samples, 3);
                    } else if let Some(l) = h.view(&net).rtt(&pick.pop, 0) {
                        prop_assert_eq!(src.kind, RttSourceKind::Learned);
                        prop_assert_eq!(est.rtt_ms, l.rtt_ms);
                    } else {
                        prop_assert_eq!(src.kind, RttSourceKind::Estimated);
                        // The model's figure, plus at most the capped access excess.
                        let model = p.prior(&pick.scored_from.location, fleet.get(id).unwrap(), r.bitrate_kbps).rtt_ms;
                        prop_assert!(est.rtt_ms >= model - 1e-9, "{} < {}", est.rtt_ms, model);
                        prop_assert!(est.rtt_ms <= model + p.access_excess_cap_ms + 1e-9);
                    }
                }
            }
        }
    }
}

fn latency_dir() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/latency");
    assert!(
        d.is_dir(),
        "the shared latency data is expected at {} (a checkout of shared/ beside the repository)",
        d.display()
    );
    d
}

fn wonderproxy() -> Dataset {
    let d = latency_dir().join("wonderproxy-2020-dev");
    let servers = std::fs::read_to_string(d.join("servers.csv")).unwrap();
    let pings = std::fs::read_to_string(d.join("pings.csv")).unwrap();
    Dataset::parse(&servers, &pings).unwrap()
}

fn median_abs_log_error(pairs: &[(f64, f64)], base: f64, slope: f64) -> f64 {
    let mut e: Vec<f64> = pairs
        .iter()
        .map(|(d, rtt)| ((base + slope * d / 1000.0) / rtt).ln().abs())
        .collect();
    e.sort_by(f64::total_cmp);
    e[e.len() / 2]
}

/// Re-fits the RTT prior on the shipped measurements (the method in `select::estimate`'s docs)
/// and fails if the constants in the code have drifted from what the data says.
#[test]
fn calibration() {
    let ds = wonderproxy();
    let pairs: Vec<(f64, f64)> = ds
        .rtt
        .iter()
        .filter_map(|((a, b), rtt)| {
            let (a, b) = (ds.cities.get(a)?, ds.cities.get(b)?);
            Some((a.location.distance_km(&b.location), *rtt))
        })
        .collect();
    assert!(pairs.len() > 14_000, "{}", pairs.len());
    let mut best = (f64::INFINITY, 0.0, 0.0);
    for b in 0..=40 {
        for s in 0..=40 {
            let (base, slope) = (f64::from(b), 10.0 + f64::from(s) * 0.5);
            let e = median_abs_log_error(&pairs, base, slope);
            if e < best.0 {
                best = (e, base, slope);
            }
        }
    }
    let model = Params::default().rtt;
    let ours = median_abs_log_error(&pairs, model.base_ms, model.per_1000km_ms);
    println!(
        "calibration: best grid fit {:.0} ms + {:.1} ms/1000 km (median |log error| {:.3}); model {} + {} ({:.3})",
        best.1, best.2, best.0, model.base_ms, model.per_1000km_ms, ours
    );
    assert!((best.1 - model.base_ms).abs() <= 2.0, "{best:?}");
    assert!((best.2 - model.per_1000km_ms).abs() <= 0.5, "{best:?}");
    assert!(ours < best.0 + 0.005 && ours < 0.19, "{ours}");

    // The backbone data sets: the same model is within 25 % at the median.
    for f in [
        "aws-cloudping/pairs_normalized_p50_1y.csv",
        "azure/pairs_normalized.csv",
    ] {
        let text = std::fs::read_to_string(latency_dir().join(f)).unwrap();
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
        let (cd, cr) = (col("great_circle_km"), col("rtt_ms"));
        let mut errs: Vec<f64> = lines
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                let d: f64 = f.get(cd)?.parse().ok()?;
                let r: f64 = f.get(cr)?.parse().ok()?;
                (r > 0.0).then(|| (model.rtt_ms(d) / r - 1.0).abs())
            })
            .collect();
        errs.sort_by(f64::total_cmp);
        let med = errs[errs.len() / 2];
        println!(
            "{f}: median relative error {med:.3} over {} pairs",
            errs.len()
        );
        assert!(med < 0.25, "{f}: {med}");
    }
}

const DEFAULT_POPS: &str = "6,36,72,95,180,57,64,112,56,107,169,139,175,243,115,11,7,210,54,94,27,10,206,20,67,34,214,114,2,22,18,39,37,100,24,97,53,213,108,238";

fn sim_config(seed: u64) -> SimConfig {
    SimConfig::new(DEFAULT_POPS.split(',').map(String::from).collect(), seed)
}

/// Mean over seeds 1–20 of each policy's figures: primary mean regret, share within 10 ms,
/// backup mean regret.
fn averages_over_seeds(
    ds: &Dataset,
    cfg: impl Fn(u64) -> SimConfig,
) -> std::collections::BTreeMap<String, (f64, f64, f64)> {
    let mut sums = std::collections::BTreeMap::<String, (f64, f64, f64)>::new();
    let seeds = 1..=20u64;
    let n = seeds.clone().count() as f64;
    for seed in seeds {
        let r = run(ds, &cfg(seed)).unwrap();
        for (name, p) in &r.policies {
            let e = sums.entry(name.clone()).or_default();
            e.0 += p.primary_regret_ms.mean / n;
            e.1 += p.primary_within_10ms / n;
            e.2 += p.backup_regret_ms.mean / n;
        }
    }
    sums
}

/// The goal of measured steering (issue 11), on the shipped data with the default 40 POPs,
/// averaged over seeds 1–20: primary mean regret ≤ 1 ms, ≥ 97 % of clients within 10 ms of
/// their best POP, backup mean regret ≤ 3 ms — for `probe` (top 5, 5 samples, median) and for
/// `history` after 5 sessions. The same check fails for `nearest` and `learned`.
#[test]
fn sim_probe_and_history_meet_the_goal_and_nearest_does_not() {
    let ds = wonderproxy();
    let avg = averages_over_seeds(&ds, sim_config);
    for (name, (p, w, b)) in &avg {
        println!(
            "{name:<9} primary mean {p:6.2} ms, within 10 ms {:5.1} %, backup mean {b:6.2} ms",
            w * 100.0
        );
    }
    let meets = |name: &str| {
        let (p, w, b) = avg[name];
        p <= 1.0 && w >= 0.97 && b <= 3.0
    };
    assert!(meets("probe"), "probe: {:?}", avg["probe"]);
    assert!(meets("history"), "history: {:?}", avg["history"]);
    assert!(meets("oracle"));
    assert!(!meets("nearest"), "nearest: {:?}", avg["nearest"]);
    assert!(!meets("learned"), "learned: {:?}", avg["learned"]);
}

#[test]
fn sim_on_shipped_data_learned_beats_nearest() {
    let ds = wonderproxy();
    let (mut nearest, mut learned) = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0));
    let seeds = 1..=10;
    for seed in seeds.clone() {
        let r = run(&ds, &sim_config(seed)).unwrap();
        assert_eq!((r.pops, r.clients, r.train_clients), (40, 82, 41));
        let o = &r.policies["oracle"];
        assert_eq!(
            (o.primary_regret_ms.mean, o.backup_regret_ms.p90),
            (0.0, 0.0)
        );
        // With idle servers the prior ranks by distance, exactly like nearest.
        assert_eq!(r.policies["estimate"], r.policies["nearest"]);
        let (n, l) = (&r.policies["nearest"], &r.policies["learned"]);
        nearest.0 += n.primary_regret_ms.mean;
        nearest.1 += n.backup_regret_ms.mean;
        nearest.2 += n.backup_regret_ms.p90;
        learned.0 += l.primary_regret_ms.mean;
        learned.1 += l.backup_regret_ms.mean;
        learned.2 += l.backup_regret_ms.p90;
    }
    println!("sums over 10 seeds: nearest {nearest:?}, learned {learned:?}");
    assert!(
        learned.0 <= nearest.0,
        "primary mean regret: {learned:?} vs {nearest:?}"
    );
    assert!(
        learned.1 < 0.85 * nearest.1,
        "backup mean regret: {learned:?} vs {nearest:?}"
    );
    assert!(
        learned.2 < 0.85 * nearest.2,
        "backup p90 regret: {learned:?} vs {nearest:?}"
    );
}

#[test]
fn sim_json_has_exactly_the_documented_shape() {
    let r = run(&wonderproxy(), &sim_config(1)).unwrap();
    let v = serde_json::to_value(&r).unwrap();
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&v),
        [
            "clients",
            "history_sessions",
            "policies",
            "pops",
            "probe_samples",
            "probe_targets",
            "train_clients"
        ]
    );
    assert_eq!(
        (
            &v["probe_targets"],
            &v["probe_samples"],
            &v["history_sessions"]
        ),
        (&5.into(), &5.into(), &5.into())
    );
    assert_eq!(
        keys(&v["policies"]),
        [
            "estimate", "history", "learned", "nearest", "oracle", "probe"
        ]
    );
    for p in select::sim::POLICIES {
        assert_eq!(
            keys(&v["policies"][p]),
            [
                "backup_regret_ms",
                "primary_regret_ms",
                "primary_within_10ms"
            ]
        );
        assert_eq!(
            keys(&v["policies"][p]["primary_regret_ms"]),
            ["mean", "median", "p90"]
        );
    }
}

#[test]
fn sim_rejects_bad_configs_with_reasons() {
    let ds = wonderproxy();
    let mut c = sim_config(1);
    c.pops = vec!["6".into(), "nope".into()];
    assert_eq!(
        run(&ds, &c).unwrap_err().to_string(),
        "POP \"nope\" is not a server id in servers.csv"
    );
    c.pops = vec!["6".into()];
    assert!(
        run(&ds, &c)
            .unwrap_err()
            .to_string()
            .contains("at least 2 POPs")
    );
    c = sim_config(1);
    c.train_fraction = 1.0;
    assert!(run(&ds, &c).is_err());
}
