//! The director's integration tests: the router without sockets (oneshot, client IPs injected as
//! connection info), one test over a real socket, heartbeat expiry on a paused clock, config
//! layering, and a property test that drives the router with random input.
//!
//! Client IPs are TEST-NET addresses mapped by an MMDB generated here:
//! 192.0.2.0/24 → Tokyo, 198.51.100.0/24 → New York, 203.0.113.0/24 → Sydney.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use director::{Director, DirectorConfig, TokioClock, router};
use geo::ip::IpLocator;
use http_body_util::BodyExt;
use mmdb_writer::{Value as Mv, Writer};
use proptest::prelude::*;
use rand::SeedableRng;
use serde_json::{Value, json};
use tower::ServiceExt;

mod dashboard;
mod etcd;
mod listeners;
mod openapi;
mod streams;

const ENTRY_KEY: &str = "entry-key-0123456789abcdef0123456789";

/// Entry server `id`'s own credential (HMAC of its id under the director's entry key).
/// An id that is not a valid server id gets a well-formed but unearned credential.
fn cred(id: &str) -> String {
    match id.parse() {
        Ok(id) => token::entry_credential(ENTRY_KEY, &id),
        Err(_) => format!("{id}:{}", "0".repeat(64)),
    }
}
const ADMIN: &str = "admin-secret-0123456789";
const T0: u64 = 1_700_000_000;

fn city(lat: f64, lon: f64, cc: &str, name: &str) -> Mv {
    Mv::map([
        (
            "city",
            Mv::map([("names", Mv::map([("en", Mv::from(name))]))]),
        ),
        ("country", Mv::map([("iso_code", Mv::from(cc))])),
        (
            "location",
            Mv::map([
                ("latitude", Mv::Double(lat)),
                ("longitude", Mv::Double(lon)),
                ("accuracy_radius", Mv::U16(20)),
            ]),
        ),
    ])
}

fn mmdb() -> Vec<u8> {
    let mut w = Writer::new("GeoLite2-City");
    w.insert_value(
        "192.0.2.0/24".parse::<ipnet::IpNet>().unwrap(),
        city(35.6895, 139.6917, "JP", "Tokyo"),
    )
    .unwrap();
    w.insert_value(
        "198.51.100.0/24".parse::<ipnet::IpNet>().unwrap(),
        city(40.7128, -74.006, "US", "New York"),
    )
    .unwrap();
    w.insert_value(
        "203.0.113.0/24".parse::<ipnet::IpNet>().unwrap(),
        city(-33.8688, 151.2093, "AU", "Sydney"),
    )
    .unwrap();
    w.to_bytes().unwrap()
}

fn config() -> DirectorConfig {
    let mut c = DirectorConfig::default();
    c.auth.entry_key = ENTRY_KEY.into();
    c.auth.admin_token = ADMIN.into();
    c.http.rate_limit.per_second = 10_000.0;
    c.http.rate_limit.burst = 10_000;
    c.http.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
    c.default_place = "Frankfurt, DE".into();
    // Most scenarios here are about selection: the first request for a stream creates it.
    // Ownership is tested in `streams`.
    c.publish.mode = director::config::PublishMode::Open;
    c
}

fn director_with(c: DirectorConfig) -> Director {
    let key = token::SigningKey::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(7));
    let locator = IpLocator::new().with_city_db(mmdb()).unwrap();
    Director::with_parts(c, key, locator, None, Arc::new(TokioClock::starting_at(T0))).unwrap()
}

struct Api {
    app: Router,
    d: Director,
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

impl Api {
    fn new(c: DirectorConfig) -> Self {
        let d = director_with(c);
        // Default peer for requests that set none: loopback (IP location unknown).
        let app = router(d.clone()).layer(MockConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
        Self { app, d }
    }

    async fn req(
        &self,
        method: Method,
        path: &str,
        peer: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let mut req = match body {
            Some(s) => b
                .header("content-type", "application/json")
                .body(Body::from(s))
                .unwrap(),
            None => b.body(Body::empty()).unwrap(),
        };
        if let Some(p) = peer {
            let addr: SocketAddr = format!("{p}:40000").parse().unwrap();
            req.extensions_mut().insert(ConnectInfo(addr));
        }
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            json,
        }
    }

    async fn assign(&self, peer: &str, body: Value) -> Resp {
        self.req(
            Method::POST,
            "/v1/assignments",
            Some(peer),
            &[],
            Some(body.to_string()),
        )
        .await
    }

    async fn register(&self, id: &str, pop: &str, place: &str) -> Resp {
        let body = json!({
            "id": id, "pop": pop, "location": place,
            "capacity": {"streams": 100, "mbps": 1000},
            "urls": {
                "native": format!("tcp://{id}.example:7001"),
                "websocket": format!("ws://{id}.example:8001/v1/ingest"),
                "http": format!("http://{id}.example:8001"),
                "rtmp": format!("rtmp://{id}.example:1935/live"),
            }
        });
        self.req(
            Method::POST,
            "/v1/entry-servers",
            None,
            &[("authorization", &format!("Bearer {}", cred(id)))],
            Some(body.to_string()),
        )
        .await
    }

    async fn heartbeat(&self, id: &str, body: Value) -> Resp {
        self.req(
            Method::PUT,
            &format!("/v1/entry-servers/{id}/heartbeat"),
            None,
            &[("authorization", &format!("Bearer {}", cred(id)))],
            Some(body.to_string()),
        )
        .await
    }

    async fn admin(&self, method: Method, path: &str) -> Resp {
        self.req(
            method,
            path,
            None,
            &[("authorization", &format!("Bearer {ADMIN}"))],
            None,
        )
        .await
    }

    /// Six servers in five POPs on four continents.
    async fn world(&self) {
        for (id, pop, place) in [
            ("fra-1", "fra", "Frankfurt"),
            ("fra-2", "fra", "Frankfurt"),
            ("par-1", "par", "Paris, FR"),
            ("nyc-1", "nyc", "New York"),
            ("tyo-1", "tyo", "Tokyo"),
            ("syd-1", "syd", "Sydney"),
        ] {
            let r = self.register(id, pop, place).await;
            assert_eq!(r.status, StatusCode::OK, "{id}: {}", r.json);
        }
    }
}

fn primary(r: &Resp) -> &str {
    r.json["primary"]["server_id"].as_str().unwrap_or("")
}

fn backup(r: &Resp) -> &str {
    r.json["backup"]["server_id"].as_str().unwrap_or("")
}

// ------------------------------------------------------------------------------- scenarios

#[tokio::test]
async fn typed_place_and_ip_on_different_continents() {
    let api = Api::new(config());
    api.world().await;
    // Typed Paris, IP in Tokyo.
    let r = api
        .assign("192.0.2.10", json!({"stream": "abc", "location": "Paris"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(primary(&r), "par-1", "{}", r.json);
    assert_eq!(backup(&r), "tyo-1", "{}", r.json);
    assert_eq!(r.json["primary"]["scored_from"]["kind"], "typed");
    assert_eq!(r.json["backup"]["scored_from"]["kind"], "ip");
    assert_eq!(r.json["locations"]["ip"]["city"], "Tokyo");
    assert_eq!(r.json["primary"]["url"], "tcp://par-1.example:7001");
    assert_eq!(
        r.json["primary"]["urls"]["rtmp"],
        "rtmp://par-1.example:1935/live"
    );
    assert!(r.json["primary"]["estimate"]["rtt_ms"].as_f64().unwrap() > 0.0);
    assert!(r.json["primary"]["runners_up"].as_array().unwrap().len() <= 3);
    assert_eq!(r.json["expires_at"], T0 + 3600);

    // Tokens verify with the public key alone and bind stream, server and role.
    let vk = api.d.public_key();
    let c = vk
        .verify(r.json["primary"]["token"].as_str().unwrap(), T0 + 1)
        .unwrap();
    assert_eq!((c.stream.as_str(), c.server.as_str()), ("abc", "par-1"));
    assert_eq!(c.role, proto::Role::Primary);
    let c = vk
        .verify(r.json["backup"]["token"].as_str().unwrap(), T0 + 1)
        .unwrap();
    assert_eq!((c.server.as_str(), c.role), ("tyo-1", proto::Role::Backup));
    assert_eq!(c.exp, T0 + 3600);
}

#[tokio::test]
async fn typed_coordinates_and_websocket_url() {
    let api = Api::new(config());
    api.world().await;
    let r = api
        .assign(
            "203.0.113.7",
            json!({"location": {"lat": 40.7, "lon": -74.0}, "protocol": "websocket", "bitrate_kbps": 6000}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(primary(&r), "nyc-1");
    assert_eq!(backup(&r), "syd-1");
    assert_eq!(
        r.json["primary"]["url"],
        "ws://nyc-1.example:8001/v1/ingest"
    );
    // A stream id was minted.
    assert!(proto::StreamId::parse(r.json["stream"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn one_location_unknown() {
    let api = Api::new(config());
    api.world().await;
    // The typed place matches nothing: both picks from the IP (New York).
    let r = api
        .assign("198.51.100.20", json!({"location": "Qwzxvbnm Pltk"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["locations"]["typed"]["status"], "unknown");
    assert_eq!(primary(&r), "nyc-1");
    assert_eq!(r.json["primary"]["scored_from"]["kind"], "ip");
    assert_ne!(r.json["backup"]["pop"], "nyc");

    // The IP is unknown (loopback, no site): both from the typed place.
    let r = api.assign("127.0.0.1", json!({"location": "Sydney"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["locations"]["ip"]["status"], "unknown");
    assert_eq!(primary(&r), "syd-1");
    assert_eq!(r.json["backup"]["scored_from"]["kind"], "typed");

    // Neither: the configured default place (Frankfurt).
    let r = api.assign("127.0.0.1", json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["primary"]["scored_from"]["kind"], "default");
    assert_eq!(r.json["primary"]["pop"], "fra");
    assert_eq!(r.json["backup"]["pop"], "par");
}

#[tokio::test]
async fn full_server_is_skipped() {
    let api = Api::new(config());
    api.world().await;
    let r = api
        .heartbeat(
            "nyc-1",
            json!({"load": {"streams": 100, "mbps": 10.0, "cpu": 0.3}, "state": "ready"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    // Load changes reach the snapshot on the upkeep round.
    api.d.upkeep_once(tokio::time::Instant::now());
    let r = api
        .assign("198.51.100.1", json!({"location": "New York"}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(primary(&r), "nyc-1");
    assert_ne!(backup(&r), "nyc-1");
}

#[tokio::test]
async fn drained_server_is_skipped_until_undrained() {
    let api = Api::new(config());
    api.world().await;
    let r = api
        .admin(Method::POST, "/v1/admin/entry-servers/par-1/drain")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["admin_drained"], true);
    let r = api.assign("192.0.2.1", json!({"location": "Paris"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["primary"]["pop"], "fra");
    let r = api
        .admin(Method::POST, "/v1/admin/entry-servers/par-1/undrain")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = api.assign("192.0.2.1", json!({"location": "Paris"})).await;
    assert_eq!(primary(&r), "par-1");

    // A server whose disk is full is skipped even if it says ready, and the list says why.
    api.heartbeat("par-1", json!({"state": "ready", "disk": "full"}))
        .await;
    let r = api.assign("192.0.2.1", json!({"location": "Paris"})).await;
    assert_ne!(primary(&r), "par-1");
    let r = api.admin(Method::GET, "/v1/admin/entry-servers").await;
    let par = r.json["entry_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "par-1")
        .unwrap()
        .clone();
    assert_eq!(
        (par["disk"].as_str(), par["state"].as_str()),
        (Some("full"), Some("ready"))
    );
    api.heartbeat("par-1", json!({"state": "ready", "disk": "ok"}))
        .await;
    let r = api.assign("192.0.2.1", json!({"location": "Paris"})).await;
    assert_eq!(primary(&r), "par-1", "assigned again once its disk is ok");

    // A server that reports itself draining is skipped too.
    api.heartbeat("par-1", json!({"state": "draining"})).await;
    let r = api.assign("192.0.2.1", json!({"location": "Paris"})).await;
    assert_ne!(primary(&r), "par-1");

    // The admin list shows the registry.
    let r = api.admin(Method::GET, "/v1/admin/entry-servers").await;
    let list = r.json["entry_servers"].as_array().unwrap();
    assert_eq!(list.len(), 6);
    let par = list.iter().find(|s| s["id"] == "par-1").unwrap();
    assert_eq!(par["state"], "draining");
    assert_eq!(par["health"], "healthy");
    // Without the admin token: 401.
    let r = api
        .req(Method::GET, "/v1/admin/entry-servers", None, &[], None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// Steering by measurement: a device's probes replace the estimate for the servers probed, and
/// say so; they are then history for the device's network (by its socket address) and for no
/// other; entry servers' session RTTs are history too; hostile probes are refused by field.
#[tokio::test]
async fn probes_and_network_history_steer_the_picks() {
    let api = Api::new(config());
    api.world().await;
    let paris = |peer: &'static str, probes: Value| {
        let api = &api;
        async move {
            api.assign(peer, json!({"location": "Paris, FR", "probes": probes}))
                .await
        }
    };
    // Geography alone: Paris.
    let r = paris("192.0.2.1", json!([])).await;
    assert_eq!(primary(&r), "par-1", "{}", r.json);
    assert_eq!(
        r.json["primary"]["estimate"]["rtt_source"]["kind"],
        "estimated"
    );

    // The device measured Paris badly routed and Frankfurt fast: Frankfurt, "probed".
    let probes = json!([
        {"server_id": "par-1", "rtt_ms": [150.0, 148.0, 152.0, 149.0, 400.0]},
        {"server_id": "fra-1", "rtt_ms": [11.0, 10.0, 12.0, 10.5, 10.8]},
        {"server_id": "gone-9", "rtt_ms": [1.0]},
    ]);
    let r = paris("192.0.2.1", probes).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(primary(&r), "fra-1", "{}", r.json);
    let e = &r.json["primary"]["estimate"];
    assert_eq!(
        e["rtt_source"],
        json!({"kind": "probed", "samples": 5}),
        "{e}"
    );
    assert_eq!(
        e["rtt_ms"].as_f64().map(|x| (x * 10.0).round()),
        Some(108.0),
        "median: {e}"
    );

    // Its network remembers, without probes this time: another device of 192.0.2.0/24.
    let r = paris("192.0.2.77", json!([])).await;
    assert_eq!(primary(&r), "fra-1", "{}", r.json);
    assert_eq!(
        r.json["primary"]["estimate"]["rtt_source"]["kind"],
        "learned"
    );
    // Another network is not steered by it.
    let r = paris("198.51.100.5", json!([])).await;
    assert_eq!(primary(&r), "par-1", "{}", r.json);

    // Entry servers' session RTTs (TCP_INFO smoothed RTT) from 203.0.113.0/24 teach the same.
    let m = |client: &str, rtt: f64| json!({"stream": "cam1", "role": "primary", "client_ip": client, "rtt_ms": rtt, "at": T0});
    let r = api
        .heartbeat("par-1", json!({"measurements": [m("203.0.113.50", 140.0)]}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .heartbeat("fra-1", json!({"measurements": [m("203.0.113.51", 12.0)]}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = paris("203.0.113.9", json!([])).await;
    assert_eq!(primary(&r), "fra-1", "{}", r.json);
    assert_eq!(
        r.json["primary"]["estimate"]["rtt_source"],
        json!({"kind": "learned", "samples": 1})
    );
    // The ranked list and the probe targets use the network's history too: for 203.0.113.0/24,
    // Frankfurt (12 ms, learned) ranks first from "Paris", in the list and as the first probe
    // target (targets come best first); another network still gets the estimate.
    let get_from = |peer: &'static str, path: &'static str| {
        let api = &api;
        async move {
            let r = api.req(Method::GET, path, Some(peer), &[], None).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.json);
            r.json
        }
    };
    let first = |peer| async move {
        get_from(peer, "/v1/entry-servers?location=Paris&limit=3").await["entry_servers"][0].clone()
    };
    let top = first("203.0.113.10").await;
    assert_eq!(top["server_id"], "fra-1", "{top}");
    assert_eq!(top["estimate"]["rtt_source"]["kind"], "learned", "{top}");
    assert_eq!(first("198.51.100.5").await["server_id"], "par-1");
    let targets = |peer| async move {
        get_from(peer, "/v1/probe-targets?location=Paris").await["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["server_id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let (learned, other) = (targets("203.0.113.10").await, targets("198.51.100.5").await);
    assert_eq!(learned[0], "fra-1", "{learned:?}");
    assert_eq!(other[0], "par-1", "{other:?}");

    // Hostile probes: refused, naming the field; nothing learned from them.
    for (probes, field) in [
        (
            json!([{"server_id": "fra-1", "rtt_ms": [-1.0]}]),
            "probes[0].rtt_ms",
        ),
        (
            json!([{"server_id": "fra-1", "rtt_ms": []}]),
            "probes[0].rtt_ms",
        ),
        (
            json!([{"server_id": "fra-1", "rtt_ms": [1.0]}, {"server_id": "fra-1", "rtt_ms": [1.0]}]),
            "probes[1].server_id",
        ),
        (
            json!([{"server_id": "fra-1", "rtt_ms": [1e9]}]),
            "probes[0].rtt_ms",
        ),
    ] {
        let r = paris("198.51.100.5", probes).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
        assert_eq!(r.json["field"], field, "{}", r.json);
    }
    let r = paris("198.51.100.5", json!([])).await;
    assert_eq!(
        primary(&r),
        "par-1",
        "refused probes taught nothing: {}",
        r.json
    );
}

#[tokio::test]
async fn no_backup_possible() {
    let api = Api::new(config());
    api.register("solo-1", "solo", "Paris").await;
    let r = api.assign("192.0.2.1", json!({"location": "Paris"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(primary(&r), "solo-1");
    assert!(r.json["backup"].is_null());
    assert!(
        r.json["backup_reason"]
            .as_str()
            .unwrap()
            .contains("no other entry server")
    );

    // And no server at all: 503 with the reason.
    api.admin(Method::POST, "/v1/admin/entry-servers/solo-1/drain")
        .await;
    let r = api.assign("192.0.2.1", json!({})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json["code"], "no_entry_server");
    assert!(r.json["error"].as_str().unwrap().contains("1 draining"));
}

#[tokio::test]
async fn ranked_list_and_stream_lookup() {
    let api = Api::new(config());
    api.world().await;
    let r = api
        .req(
            Method::GET,
            "/v1/entry-servers?location=Sydney&limit=3",
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let list = r.json["entry_servers"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["server_id"], "syd-1");
    assert_eq!(list[0]["rank"], 1);
    // From the caller's IP when no place is given.
    let r = api
        .req(
            Method::GET,
            "/v1/entry-servers",
            Some("192.0.2.3"),
            &[],
            None,
        )
        .await;
    assert_eq!(r.json["entry_servers"][0]["server_id"], "tyo-1");
    assert_eq!(r.json["scored_from"]["kind"], "ip");
    let r = api
        .req(
            Method::GET,
            "/v1/entry-servers?protocol=srt",
            None,
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json["field"], "protocol");

    // Streams: unknown, then assigned, then reported live.
    let r = api
        .req(Method::GET, "/v1/streams/live1", None, &[], None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let a = api
        .assign("192.0.2.1", json!({"stream": "live1", "location": "Paris"}))
        .await;
    let r = api
        .req(Method::GET, "/v1/streams/live1", None, &[], None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["live"], false);
    assert_eq!(r.json["ingest"].as_array().unwrap().len(), 2);
    let b = a.json["broadcast"].as_str().unwrap().to_string();
    api.heartbeat(
        primary(&a),
        json!({"streams": [{"stream": "live1", "broadcast": b, "role": "primary", "next_seq": 1234, "live": true}]}),
    )
    .await;
    let r = api
        .req(Method::GET, "/v1/streams/live1", None, &[], None)
        .await;
    assert_eq!(r.json["live"], true);
    let p = &r.json["ingest"][0];
    assert_eq!(p["role"], "primary");
    assert_eq!(p["server_id"], "par-1");
    assert_eq!(p["next_seq"], 1234);
    assert_eq!(p["urls"]["native"], "tcp://par-1.example:7001");
    assert_eq!(r.json["broadcast"]["started_at"], T0);
    assert_eq!(r.json["broadcast"]["state"], "live");
    assert_eq!(r.json["broadcast"]["id"], b.as_str());
    let r = api
        .req(Method::GET, "/v1/streams/..%2Fetc", None, &[], None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

// ------------------------------------------------------------------------------- bad input

#[tokio::test]
async fn bad_input_names_the_field() {
    let api = Api::new(config());
    api.world().await;
    let post = |body: &str| {
        api.req(
            Method::POST,
            "/v1/assignments",
            Some("192.0.2.1"),
            &[],
            Some(body.to_string()),
        )
    };
    let r = post("{not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json["code"], "malformed_json");
    let r = post(r#"{"stream": "a", "colour": "red"}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.json["error"].as_str().unwrap().contains("colour"),
        "{}",
        r.json
    );
    let r = post(r#"{"bitrate_kbps": "fast"}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json["field"], "bitrate_kbps");
    let r = post(r#"{"bitrate_kbps": 999999999999}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json["field"], "bitrate_kbps");
    assert!(r.json["accepted"].as_str().unwrap().contains("200000"));
    let r = post(r#"{"bitrate_kbps": 0}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = post(r#"{"protocol": "srt"}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json["field"], "protocol");
    assert!(
        r.json["error"].as_str().unwrap().contains("websocket"),
        "{}",
        r.json
    );
    let r = post(r#"{"stream": "../../etc/passwd"}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json["field"], "stream");
    let long = "x".repeat(500);
    let r = post(&json!({ "location": long }).to_string()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json["field"], "location");
    let r = post(r#"{"location": {"lat": 95, "lon": 0}}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json["field"], "location");
    let r = post(r#"{"location": 42}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = post(r#"[1, 2]"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = post(r#"{} trailing"#).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let huge = format!(r#"{{"location": "{}"}}"#, "y".repeat(100_000));
    let r = post(&huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json["code"], "body_too_large");

    // Unknown route and method: JSON errors.
    let r = api.req(Method::GET, "/v2/nothing", None, &[], None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json["code"], "not_found");
    let r = api
        .req(Method::DELETE, "/v1/assignments", None, &[], None)
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // Registration validation.
    // No credential can exist for an id that is not valid: authentication refuses it first.
    let r = api.register("bad id!", "x", "Paris").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json["code"], "unauthorized");
    let r = api.register("ok-1", "x", "Qwzxvbnm Pltk").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json["field"], "location");
}

#[tokio::test]
async fn entry_server_credentials_and_unknown_ids() {
    let api = Api::new(config());
    api.world().await;
    let before = api.admin(Method::GET, "/v1/admin/entry-servers").await.json;
    for auth in [None, Some("Bearer wrong"), Some("Basic abc")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let r = api
            .req(
                Method::PUT,
                "/v1/entry-servers/fra-1/heartbeat",
                None,
                &headers,
                Some(
                    json!({"load": {"streams": 99, "mbps": 1.0, "cpu": 0.9}, "state": "draining"})
                        .to_string(),
                ),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json["code"], "unauthorized");
        let r = api
            .req(
                Method::DELETE,
                "/v1/entry-servers/fra-1",
                None,
                &headers,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    }
    // The admin token is not an entry server's credential.
    let r = api
        .req(
            Method::DELETE,
            "/v1/entry-servers/fra-1",
            None,
            &[("authorization", &format!("Bearer {ADMIN}"))],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // One server's credential (leaked) cannot heartbeat for, deregister, publish for or
    // re-register another server: 403, nothing changes.
    let other = format!("Bearer {}", cred("par-1"));
    for (m, path, body) in [
        (Method::PUT, "/v1/entry-servers/fra-1/heartbeat", Some(json!({"state": "draining"}).to_string())),
        (Method::DELETE, "/v1/entry-servers/fra-1", None),
        (
            Method::POST,
            "/v1/entry-servers/fra-1/publishes",
            Some(json!({"stream": "s", "key": "abcdefghijklmnop", "client_ip": "192.0.2.1", "protocol": "rtmp"}).to_string()),
        ),
        (
            Method::POST,
            "/v1/entry-servers",
            Some(json!({"id": "fra-1", "pop": "evil", "location": "Sydney", "capacity": {"streams": 1, "mbps": 1}, "urls": {"native": "tcp://evil.example:1"}}).to_string()),
        ),
    ] {
        let r = api
            .req(m.clone(), path, None, &[("authorization", other.as_str())], body)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{m} {path}: {}", r.json);
        assert!(r.json["error"].as_str().unwrap().contains("par-1"), "{}", r.json);
    }
    // A credential made with another entry key, or relabelled: 401.
    let forged = cred("par-1").replacen("par-1", "fra-1", 1);
    let r = api
        .req(
            Method::DELETE,
            "/v1/entry-servers/fra-1",
            None,
            &[("authorization", &format!("Bearer {forged}"))],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // No state change.
    let mut after = api.admin(Method::GET, "/v1/admin/entry-servers").await.json;
    let mut before = before;
    for v in [&mut before, &mut after] {
        for s in v["entry_servers"].as_array_mut().unwrap() {
            s["last_heartbeat_age_ms"] = Value::Null;
        }
    }
    assert_eq!(before, after);

    // Registration hands the server a peer token naming it, which any entry server verifies with
    // the public key alone and which is neither an ingest nor a playback token; a heartbeat
    // asking for a fresh one gets one, others do not carry it.
    let vk = api.d.public_key();
    let now = T0 + 1;
    let r = api.register("lon-1", "lon", "London").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let peer = r.json["peer_token"].as_str().unwrap().to_string();
    let claims = vk.verify_peer(&peer, now).unwrap();
    assert_eq!(claims.server.as_str(), "lon-1");
    assert!(claims.exp > now && claims.exp <= now + 3600, "{claims:?}");
    assert_eq!(r.json["peer_token_expires_at"], claims.exp);
    assert!(vk.verify(&peer, now).is_err() && vk.verify_play(&peer, now).is_err());
    let r = api.heartbeat("lon-1", json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert!(
        r.json.get("peer_token").is_none_or(Value::is_null),
        "{}",
        r.json
    );
    let r = api
        .heartbeat("lon-1", json!({"want_peer_token": true}))
        .await;
    let fresh = r.json["peer_token"].as_str().expect("a fresh peer token");
    assert_eq!(vk.verify_peer(fresh, now).unwrap().server.as_str(), "lon-1");

    let r = api.heartbeat("nope-1", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Deregister, then heartbeats are 404 (the server registers again).
    let r = api
        .req(
            Method::DELETE,
            "/v1/entry-servers/fra-1",
            None,
            &[("authorization", &format!("Bearer {}", cred("fra-1")))],
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(
        api.heartbeat("fra-1", json!({})).await.status,
        StatusCode::NOT_FOUND
    );
    let r = api.heartbeat("fra-2", json!({"load": {"cpu": 1.5}})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.json["field"], "load.cpu");

    let m = api.req(Method::GET, "/metrics", None, &[], None).await;
    assert_eq!(m.status, StatusCode::OK);
}

#[tokio::test]
async fn rate_limit_per_client_ip() {
    let mut c = config();
    c.http.rate_limit.per_second = 1.0;
    c.http.rate_limit.burst = 2;
    let api = Api::new(c);
    api.world().await;
    for _ in 0..2 {
        assert_eq!(
            api.assign("192.0.2.1", json!({})).await.status,
            StatusCode::OK
        );
    }
    let r = api.assign("192.0.2.1", json!({})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.json["code"], "rate_limited");
    // Another client is not affected.
    assert_eq!(
        api.assign("192.0.2.2", json!({})).await.status,
        StatusCode::OK
    );
    // Behind a trusted proxy, the forwarded client is the key (and is geolocated).
    for i in 0..2 {
        let r = api
            .req(
                Method::POST,
                "/v1/assignments",
                Some("10.0.0.1"),
                &[("x-forwarded-for", "198.51.100.77")],
                Some("{}".into()),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{i}");
        assert_eq!(r.json["locations"]["ip"]["city"], "New York");
    }
    let r = api
        .req(
            Method::POST,
            "/v1/assignments",
            Some("10.0.0.1"),
            &[("x-forwarded-for", "198.51.100.77")],
            Some("{}".into()),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    // From an untrusted peer the header is ignored.
    let r = api
        .req(
            Method::POST,
            "/v1/assignments",
            Some("203.0.113.5"),
            &[("x-forwarded-for", "198.51.100.77")],
            Some("{}".into()),
        )
        .await;
    assert_eq!(r.json["locations"]["ip"]["city"], "Sydney");
    assert_eq!(r.json["client_ip"], "203.0.113.5");

    let m = api.req(Method::GET, "/metrics", None, &[], None).await;
    assert_eq!(m.status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_and_openapi() {
    let api = Api::new(config());
    api.world().await;
    api.assign("192.0.2.1", json!({})).await;
    api.assign("192.0.2.1", json!({"protocol": "nope"})).await;
    api.heartbeat("fra-1", json!({})).await;
    let resp = api
        .app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for needle in [
        "firstmile_director_assignments_total{outcome=\"ok\"} 1",
        "firstmile_director_assignments_total{outcome=\"invalid\"} 1",
        "firstmile_director_selection_seconds_count 1",
        "firstmile_director_entry_servers_registered 6",
        "firstmile_director_entry_servers_healthy 6",
        "firstmile_director_heartbeats_total{result=\"ok\"} 1",
    ] {
        assert!(text.contains(needle), "{needle} missing in\n{text}");
    }

    assert_eq!(
        api.req(Method::GET, "/healthz", None, &[], None)
            .await
            .status,
        StatusCode::OK
    );
    // The request id is returned.
    let resp = api
        .app
        .clone()
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(resp.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn measurements_feed_the_corrections() {
    let api = Api::new(config());
    api.world().await;
    let a = api
        .assign("192.0.2.1", json!({"stream": "m1", "location": "Paris"}))
        .await;
    assert_eq!(primary(&a), "par-1");
    let b = a.json["broadcast"].as_str().unwrap();
    let r = api
        .heartbeat(
            "par-1",
            json!({
                "load": {"streams": 1, "mbps": 4.0, "cpu": 0.1},
                "streams": [{"stream": "m1", "broadcast": b, "role": "primary", "next_seq": 10, "live": true}],
                "measurements": [
                    {"stream": "m1", "role": "primary", "client_ip": "192.0.2.1", "rtt_ms": 40.1,
                     "min_rtt_ms": 38.0, "loss": 0.001, "throughput_mbps": 8.2, "at": T0},
                    {"stream": "other", "role": "primary", "client_ip": "127.0.0.1", "rtt_ms": 40.0, "at": T0},
                    {"stream": "m1", "role": "primary", "client_ip": "192.0.2.1", "rtt_ms": -1.0, "at": T0}
                ]
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json, json!({"superseded": []}));
    assert_eq!(
        api.d.corrections().measurements(),
        0,
        "published periodically, not per heartbeat"
    );
    api.d.publish_corrections();
    assert_eq!(api.d.corrections().measurements(), 1);
}

// ------------------------------------------------------------------------------- paused clock

#[tokio::test(start_paused = true)]
async fn heartbeat_expiry_and_return() {
    let api = Api::new(config());
    api.world().await;
    let upkeep = tokio::spawn(api.d.clone().upkeep());
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        api.req(Method::GET, "/readyz", None, &[], None)
            .await
            .status,
        StatusCode::OK
    );

    // Everyone but par-1 heartbeats every second for 5 s.
    let others = ["fra-1", "fra-2", "nyc-1", "tyo-1", "syd-1"];
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        for id in others {
            assert_eq!(api.heartbeat(id, json!({})).await.status, StatusCode::OK);
        }
    }
    let r = api.admin(Method::GET, "/v1/admin/entry-servers").await;
    let par = r.json["entry_servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "par-1")
        .unwrap()
        .clone();
    assert_eq!(par["health"], "unhealthy", "{par}");
    let r = api.assign("192.0.2.1", json!({"location": "Paris"})).await;
    assert_ne!(primary(&r), "par-1");

    // It comes back with its next heartbeat.
    assert_eq!(
        api.heartbeat("par-1", json!({})).await.status,
        StatusCode::OK
    );
    let r = api.assign("192.0.2.1", json!({"location": "Paris"})).await;
    assert_eq!(primary(&r), "par-1");

    // Silent past forget_after_missed intervals: forgotten, and heartbeats get 404.
    tokio::time::sleep(Duration::from_millis(1000 * 301)).await;
    assert_eq!(
        api.heartbeat("par-1", json!({})).await.status,
        StatusCode::NOT_FOUND
    );
    // Token expiry follows the same clock.
    let r = api.assign("192.0.2.1", json!({"stream": "late"})).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "all forgotten: {}",
        r.json
    );
    upkeep.abort();
}

// ------------------------------------------------------------------------------- real socket

#[tokio::test]
async fn over_a_real_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The shared test support runs the director on its own runtime and re-raises its panics.
    let mut cfg = config();
    cfg.auth.entry_key = testkit::ENTRY_KEY.into();
    let td = testkit::TestDirector::start(cfg);
    let addr = td.addr;
    let cred = testkit::credential("fra-1");

    async fn http(addr: SocketAddr, req: String) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
    let reg = json!({
        "id": "fra-1", "pop": "fra", "location": {"lat": 50.11, "lon": 8.68},
        "capacity": {"streams": 10, "mbps": 100},
        "urls": {"native": "tcp://127.0.0.2:7001"}
    })
    .to_string();
    let out = http(
        addr,
        format!(
            "POST /v1/entry-servers HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {cred}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reg}",
            reg.len()
        ),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"heartbeat_interval_ms\":1000"), "{out}");
    let body = r#"{"stream":"sock","location":"Berlin"}"#;
    let out = http(
        addr,
        format!(
            "POST /v1/assignments HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let json: Value = serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["primary"]["server_id"], "fra-1");
    assert_eq!(json["client_ip"], "127.0.0.1");
    assert_eq!(json["locations"]["ip"]["status"], "unknown");
    drop(td);
}

// ------------------------------------------------------------------------------- config

#[test]
fn config_layers_defaults_file_env_flags() {
    let file = r#"
        listen = "127.0.0.1:7100"
        default_place = "Paris"
        [auth]
        entry_key = "file-entry-key-0123456789abcdef-0123"
        admin_token = "file-admin"
        [heartbeat]
        interval_ms = 2000
        missed_allowed = 4
        [sites]
        "10.1.0.0/16" = "Frankfurt"
        [scoring]
        w_load_ms = 30.0
    "#;
    let env = vec![
        (
            "FIRSTMILE_DIRECTOR_HEARTBEAT__INTERVAL_MS".to_string(),
            "500".to_string(),
        ),
        (
            "FIRSTMILE_DIRECTOR_LISTEN".to_string(),
            "127.0.0.1:7200".to_string(),
        ),
        (
            "FIRSTMILE_DIRECTOR_HTTP__TRUSTED_PROXIES".to_string(),
            r#"["10.0.0.0/8"]"#.to_string(),
        ),
        (
            "FIRSTMILE_DIRECTOR_CONFIG".to_string(),
            "/ignored.toml".to_string(),
        ),
        ("UNRELATED".to_string(), "x".to_string()),
    ];
    let flags = vec!["listen=127.0.0.1:7300".to_string()];
    let c = DirectorConfig::load(Some(file), env.clone(), &flags).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:7300"); // flag beats env
    assert_eq!(c.heartbeat.interval_ms, 500); // env beats file
    assert_eq!(c.heartbeat.missed_allowed, 4); // file beats default
    assert_eq!(c.heartbeat.forget_after_missed, 300); // default
    assert_eq!(c.default_place, "Paris");
    assert_eq!(c.scoring.w_load_ms, 30.0);
    assert_eq!(c.scoring.candidates, select::Params::default().candidates);
    assert_eq!(c.http.trusted_proxies.len(), 1);
    assert_eq!(c.sites.len(), 1);
    let c = DirectorConfig::load(Some(file), env, &[]).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:7200");
    // The redacted print hides secrets and reloads.
    let printed = c.to_redacted_toml();
    assert!(
        !printed.contains("file-entry-key") && printed.contains("<redacted>"),
        "{printed}"
    );
    let reloaded = DirectorConfig::load(
        Some(&printed),
        Vec::new(),
        &[
            "auth.admin_token=other".into(),
            "auth.entry_key=another-entry-key-of-32-characters".into(),
        ],
    );
    assert!(reloaded.is_ok(), "{reloaded:?}");

    // Bad configurations name the key.
    let bad = |file: &str, env: Vec<(String, String)>| {
        DirectorConfig::load(Some(file), env, &[])
            .unwrap_err()
            .to_string()
    };
    let ok_auth =
        "[auth]\nentry_key = \"an-entry-key-of-at-least-32-chars!\"\nadmin_token = \"b\"\n";
    assert!(bad("listen = 5", vec![]).contains("listen"));
    assert!(bad(&format!("{ok_auth}colour = 1"), vec![]).contains("colour"));
    assert!(bad("", vec![]).contains("auth.entry_key"));
    let short = bad(
        "[auth]\nentry_key = \"short\"\nadmin_token = \"b\"\n",
        vec![],
    );
    assert!(
        short.contains("auth.entry_key") && short.contains("32"),
        "{short}"
    );
    assert!(
        bad(&format!("{ok_auth}[heartbeat]\nmissed_allowed = 0"), vec![])
            .contains("missed_allowed")
    );
    assert!(
        bad(
            &format!("{ok_auth}default_place = \"Qwzxvbnm Pltk\""),
            vec![]
        )
        .contains("default_place")
    );
    assert!(bad(&format!("{ok_auth}[scoring]\nnope = 1"), vec![]).contains("nope"));
    assert!(bad("this is not toml", vec![]).contains("config file"));
    let e = bad(
        ok_auth,
        vec![(
            "FIRSTMILE_DIRECTOR_HEARTBEAT__INTERVAL_MS".into(),
            "soon".into(),
        )],
    );
    assert!(e.contains("heartbeat.interval_ms"), "{e}");
    // A config without a signing key cannot start.
    let c = DirectorConfig::load(Some(ok_auth), Vec::new(), &[]).unwrap();
    let e = Director::from_config(c).unwrap_err().to_string();
    assert!(e.contains("signing_key"), "{e}");
    // Missing TLS material and MMDB files are found before binding, naming the key.
    let key = token::SigningKey::generate(&mut rand_chacha::ChaCha8Rng::seed_from_u64(1)).to_pem();
    let with_key = |extra: &str| {
        DirectorConfig::load(
            Some(&format!(
                "{ok_auth}[tokens]\nsigning_key_pem = '''{key}'''\n{extra}"
            )),
            Vec::new(),
            &[],
        )
        .unwrap()
    };
    assert!(Director::from_config(with_key("")).is_ok());
    let e = Director::from_config(with_key(
        "[tls]\ncert_file = \"/nonexistent.crt\"\nkey_file = \"/nonexistent.key\"\n",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("TLS certificate file"), "{e}");
    let e = Director::from_config(with_key("[geoip]\ncity_db = \"/nonexistent.mmdb\"\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("geoip.city_db"), "{e}");
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../../examples/director.toml");
    let c = DirectorConfig::load(Some(text), Vec::new(), &[]).unwrap();
    assert!(c.tokens.signing_key_file.is_some());
}

// ------------------------------------------------------------------------------- fuzz

fn arb_path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/v1/assignments".to_string()),
        Just("/v1/entry-servers".to_string()),
        Just("/v1/entry-servers/fra-1".to_string()),
        Just("/v1/entry-servers/fra-1/heartbeat".to_string()),
        Just("/v1/streams/abc".to_string()),
        Just("/v1/admin/entry-servers".to_string()),
        Just("/v1/admin/entry-servers/fra-1/drain".to_string()),
        Just("/v1/entry-servers?location=Paris&limit=5".to_string()),
        "/v1/[a-z%0-9/._?=&-]{0,40}".prop_map(|s| s),
        "/v1/streams/[^ #?/]{0,200}".prop_map(|s| s.replace(' ', "%20")),
    ]
}

fn arb_body() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        Just(json!(null)),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,60}".prop_map(Value::from),
        Just(json!({"lat": 91, "lon": 0})),
        Just(json!(["native"])),
    ];
    let keys = prop_oneof![
        Just("stream"),
        Just("location"),
        Just("protocol"),
        Just("bitrate_kbps"),
        Just("id"),
        Just("pop"),
        Just("capacity"),
        Just("protocols"),
        Just("urls"),
        Just("load"),
        Just("state"),
        Just("streams"),
        Just("measurements"),
        Just("x"),
    ];
    prop_oneof![
        proptest::collection::vec((keys, value), 0..6).prop_map(|kv| {
            let m: serde_json::Map<String, Value> =
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            Value::Object(m).to_string()
        }),
        ".{0,200}",
        proptest::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]
    #[test]
    fn random_requests_never_5xx(
        method in prop_oneof![Just(Method::GET), Just(Method::POST), Just(Method::PUT), Just(Method::DELETE), Just(Method::PATCH)],
        path in arb_path(),
        body in arb_body(),
        auth in prop_oneof![Just(None), Just(Some(cred("fra-1"))), Just(Some(ADMIN.to_string())), Just(Some("x".to_string()))],
        xff in prop_oneof![Just(None), ".{0,40}".prop_map(Some), Just(Some("198.51.100.1, 10.0.0.1".to_string()))],
        peer in prop_oneof![Just("10.0.0.1"), Just("192.0.2.1"), Just("::1")],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            thread_local! { static API: std::cell::RefCell<Option<Api>> = const { std::cell::RefCell::new(None) }; }
            let app = API.with(|a| {
                let mut a = a.borrow_mut();
                if a.is_none() {
                    *a = Some(Api::new(config()));
                }
                a.as_ref().map(|a| a.app.clone()).unwrap()
            });
            let Ok(uri) = path.parse::<axum::http::Uri>() else { return; };
            let mut b = Request::builder().method(method).uri(uri);
            if let Some(a) = auth {
                b = b.header("authorization", format!("Bearer {a}"));
            }
            if let Some(x) = xff.as_deref().and_then(|x| axum::http::HeaderValue::from_str(x).ok()) {
                b = b.header("x-forwarded-for", x);
            }
            let mut req = b.body(Body::from(body)).unwrap();
            let addr = SocketAddr::new(peer.parse().unwrap(), 1234);
            req.extensions_mut().insert(ConnectInfo(addr));
            let resp = app.oneshot(req).await.unwrap();
            let status = resp.status();
            // 503 is the honest answer when no entry server is registered.
            assert!(!status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE, "{status}");
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            if status.is_client_error() {
                let v: Value = serde_json::from_slice(&bytes).expect("errors are JSON");
                assert!(v["error"].is_string());
            }
        });
    }
}
