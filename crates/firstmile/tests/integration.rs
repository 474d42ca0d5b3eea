//! End-to-end tests of the `firstmile` binary: what a user types, what they get back, exit codes.

use std::process::{Command, Output};

fn firstmile(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firstmile"))
        .args(args)
        .output()
        .expect("run firstmile")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn shared_latency() -> String {
    let d = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/data/latency/wonderproxy-2020-dev"
    );
    assert!(std::path::Path::new(d).is_dir(), "{d} is missing");
    d.to_string()
}

#[test]
fn geo_resolves_a_typed_place_as_json() {
    let o = firstmile(&["geo", "Paris, Texas", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["place"]["country"], "US");
    assert_eq!(v["place"]["admin1"], "Texas");
    let lat = v["place"]["location"]["lat"].as_f64().unwrap();
    assert!((lat - 33.66).abs() < 0.1, "{lat}");
}

#[test]
fn geo_unknown_place_suggests_and_exits_65() {
    let o = firstmile(&["geo", "Frankfrut"]);
    assert_eq!(o.status.code(), Some(65));
    let e = stderr(&o);
    assert!(e.contains("did you mean Frankfurt am Main, DE"), "{e}");
    assert!(e.contains("accepted forms"), "{e}");
}

#[test]
fn geo_ip_without_database_is_unknown_not_an_error() {
    let o = firstmile(&["geo", "192.0.2.1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["status"], "unknown");
}

#[test]
fn geo_ip_with_a_missing_database_file_exits_66() {
    let o = firstmile(&["geo", "192.0.2.1", "--mmdb", "/nonexistent/x.mmdb"]);
    assert_eq!(o.status.code(), Some(66), "{}", stderr(&o));
}

#[test]
fn sim_json_is_the_documented_shape_and_learned_is_not_worse() {
    let o = firstmile(&["sim", "--data", &shared_latency(), "--json", "--seed", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["pops"], 40);
    assert_eq!(v["clients"], 82);
    assert_eq!(v["train_clients"], 41);
    let regret = |p: &str, k: &str| v["policies"][p][k]["mean"].as_f64().unwrap();
    assert_eq!(regret("oracle", "primary_regret_ms"), 0.0);
    assert!(regret("learned", "backup_regret_ms") < regret("nearest", "backup_regret_ms"));
    // Human output names every policy.
    let h = firstmile(&["sim", "--data", &shared_latency()]);
    let text = stdout(&h);
    for p in ["nearest", "estimate", "learned", "oracle"] {
        assert!(text.contains(p), "{text}");
    }
}

#[test]
fn sim_with_bad_pops_exits_64_naming_the_pop() {
    let o = firstmile(&["sim", "--data", &shared_latency(), "--pops", "6,nope"]);
    assert_eq!(o.status.code(), Some(64));
    assert!(stderr(&o).contains("\"nope\""), "{}", stderr(&o));
}

#[test]
fn sim_with_a_missing_directory_exits_66() {
    let o = firstmile(&["sim", "--data", "/nonexistent"]);
    assert_eq!(o.status.code(), Some(66));
    assert!(stderr(&o).contains("servers.csv"), "{}", stderr(&o));
}
