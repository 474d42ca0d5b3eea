//! Streams that belong to their publishers: the `keys`, `open` and `webhook` modes, broadcasts
//! (start, continue, replace, supersede, end), key publishes from entry servers, private streams
//! and playback tokens — through the router, and the publish hook against a real HTTP server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use director::config::{OnHookError, ProvisionedStream, PublishMode};
use serde_json::{Value, json};

use super::{ADMIN, Api, T0, backup, config, cred, primary};

fn keys_config() -> director::DirectorConfig {
    let mut c = config();
    c.publish.mode = PublishMode::Keys;
    c
}

impl Api {
    async fn create_stream(&self, body: Value) -> super::Resp {
        self.req(
            Method::POST,
            "/v1/admin/streams",
            None,
            &[("authorization", &format!("Bearer {ADMIN}"))],
            Some(body.to_string()),
        )
        .await
    }

    async fn info(&self, stream: &str) -> super::Resp {
        self.req(
            Method::GET,
            &format!("/v1/streams/{stream}"),
            None,
            &[],
            None,
        )
        .await
    }

    async fn key_publish(&self, server: &str, body: Value) -> super::Resp {
        self.req(
            Method::POST,
            &format!("/v1/entry-servers/{server}/publishes"),
            None,
            &[("authorization", &format!("Bearer {}", cred(server)))],
            Some(body.to_string()),
        )
        .await
    }
}

#[tokio::test]
async fn provisioned_keys_gate_assignments_and_a_refusal_changes_nothing() {
    let api = Api::new(keys_config());
    api.world().await;
    // Without a stream id in keys mode: nothing to own.
    let r = api.assign("192.0.2.1", json!({"location": "Paris"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);
    assert_eq!(r.json["field"], "stream");
    // Not provisioned: refused like a wrong key (no stream enumeration).
    let r = api
        .assign(
            "192.0.2.1",
            json!({"stream": "live1", "key": "abcdefghijklmnopqrst"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json["code"], "wrong_stream_key");

    let r = api.create_stream(json!({"stream": "live1"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let key = r.json["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("sk_") && key.len() == 35);
    assert_eq!(
        api.create_stream(json!({"stream": "live1"})).await.status,
        StatusCode::CONFLICT
    );
    // Listed without its key.
    let r = api.admin(Method::GET, "/v1/admin/streams").await;
    assert_eq!(r.json["streams"][0]["stream"], "live1");
    assert!(!r.json.to_string().contains(&key), "the list shows the key");
    assert!(!r.json.to_string().contains("sha"), "{}", r.json);

    let r = api
        .assign("192.0.2.1", json!({"stream": "live1", "location": "Paris"}))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json["code"], "stream_key_required");
    let wrong = format!("{}x", &key[..key.len() - 1]);
    let r = api
        .assign(
            "192.0.2.1",
            json!({"stream": "live1", "key": wrong, "location": "Paris"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        !r.json.to_string().contains(&wrong),
        "the error echoes the key"
    );
    // Nothing changed: no broadcast.
    let rec = api.admin(Method::GET, "/v1/admin/streams/live1").await;
    assert_eq!(rec.json["broadcasts"], 0, "{}", rec.json);
    assert!(rec.json["current"].is_null());

    let r = api
        .assign(
            "192.0.2.1",
            json!({"stream": "live1", "key": key, "location": "Paris"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["new_broadcast"], true);
    assert!(
        r.json.get("stream_key").is_none(),
        "a provisioned key is never returned"
    );
    let b1 = r.json["broadcast"].as_str().unwrap().to_string();
    // The tokens bind the broadcast.
    let c = api
        .d
        .public_key()
        .verify(r.json["primary"]["token"].as_str().unwrap(), T0 + 1)
        .unwrap();
    assert_eq!(c.broadcast.as_str(), b1);

    // Rotation: the old key stops working at once.
    let r = api
        .req(
            Method::POST,
            "/v1/admin/streams/live1/rotate-key",
            None,
            &[("authorization", &format!("Bearer {ADMIN}"))],
            None,
        )
        .await;
    let key2 = r.json["key"].as_str().unwrap().to_string();
    assert_ne!(key2, key);
    let r = api
        .assign("192.0.2.1", json!({"stream": "live1", "key": key}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api
        .assign("192.0.2.1", json!({"stream": "live1", "key": key2}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // Revocation.
    let r = api.admin(Method::DELETE, "/v1/admin/streams/live1").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = api
        .assign("192.0.2.1", json!({"stream": "live1", "key": key2}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Admin calls need the admin token.
    let r = api
        .req(Method::GET, "/v1/admin/streams", None, &[], None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn streams_provisioned_in_the_config_file_by_key_hash() {
    let mut c = keys_config();
    let key = proto::StreamKey::parse("correct-horse-battery").unwrap();
    let hex: String = key.hash().iter().map(|b| format!("{b:02x}")).collect();
    c.publish.streams = vec![ProvisionedStream {
        stream: "cam1".parse().unwrap(),
        key: None,
        key_sha256: Some(hex),
        private: false,
    }];
    let api = Api::new(c);
    api.d.provision_from_config().await.unwrap();
    api.world().await;
    let r = api
        .assign(
            "192.0.2.1",
            json!({"stream": "cam1", "key": "correct-horse-battery"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .assign(
            "192.0.2.1",
            json!({"stream": "cam1", "key": "correct-horse-batterx"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn open_mode_the_first_publisher_owns_the_id_and_outsiders_change_nothing() {
    let api = Api::new(config());
    api.world().await;
    let r = api
        .assign("192.0.2.1", json!({"stream": "demo", "location": "Paris"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let key = r.json["stream_key"]
        .as_str()
        .expect("a generated key, once")
        .to_string();
    let b1 = r.json["broadcast"].as_str().unwrap().to_string();
    let b1_primary = primary(&r).to_string();
    let before = api.info("demo").await.json;

    // An outsider, with no key or a wrong one, from elsewhere: refused, and nothing changes.
    for body in [
        json!({"stream": "demo", "location": "Sydney"}),
        json!({"stream": "demo", "key": "aaaaaaaaaaaaaaaaaaaa", "location": "Sydney"}),
        json!({"stream": "demo", "key": "aaaaaaaaaaaaaaaaaaaa", "broadcast": b1, "replace": "primary"}),
    ] {
        let r = api.assign("203.0.113.9", body).await;
        assert!(
            r.status == StatusCode::UNAUTHORIZED || r.status == StatusCode::FORBIDDEN,
            "{}",
            r.json
        );
        assert!(r.json.get("stream_key").is_none());
    }
    assert_eq!(api.info("demo").await.json, before);

    // The owner goes live again: a new broadcast; the old one is superseded.
    let r = api
        .assign(
            "192.0.2.1",
            json!({"stream": "demo", "key": key, "location": "Paris"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json.get("stream_key").is_none(), "the key is shown once");
    let b2 = r.json["broadcast"].as_str().unwrap().to_string();
    assert_ne!(b1, b2);
    let list = api
        .req(Method::GET, "/v1/streams/demo/broadcasts", None, &[], None)
        .await;
    assert_eq!(list.json["broadcasts"][0]["id"], b2.as_str());
    assert_eq!(list.json["broadcasts"][1]["id"], b1.as_str());
    assert_eq!(list.json["broadcasts"][1]["state"], "ended");
    // The old broadcast's server, still publishing it, is told to end it.
    let r = api
        .heartbeat(
            &b1_primary,
            json!({"streams": [{"stream": "demo", "broadcast": b1, "role": "primary", "next_seq": 5, "live": true}]}),
        )
        .await;
    assert_eq!(
        r.json["superseded"][0]["broadcast"],
        b1.as_str(),
        "{}",
        r.json
    );
    // Continuing the old one is refused; continuing the current one replaces one path only.
    let r = api
        .assign(
            "192.0.2.1",
            json!({"stream": "demo", "key": key, "broadcast": b1}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.json["code"], "broadcast_ended");
    let cur = api.info("demo").await.json;
    let (p, b) = (
        cur["ingest"][0]["server_id"].as_str().unwrap().to_string(),
        cur["ingest"][1]["server_id"].as_str().unwrap().to_string(),
    );
    let r = api
        .assign(
            "192.0.2.1",
            json!({"stream": "demo", "key": key, "broadcast": b2, "replace": "backup", "location": "Paris"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["new_broadcast"], false);
    assert_eq!(r.json["broadcast"], b2.as_str());
    assert_eq!(primary(&r), p, "the primary path keeps its server");
    assert_ne!(
        backup(&r),
        p,
        "the backup never lands on the primary's server"
    );
    let _ = b;
}

#[tokio::test]
async fn a_broadcast_ends_on_end_and_when_its_publisher_is_gone() {
    let mut c = config();
    c.publish.publisher_gone_s = 5;
    let api = Api::new(c);
    api.world().await;
    let r = api
        .assign("192.0.2.1", json!({"stream": "e1", "location": "Paris"}))
        .await;
    let key = r.json["stream_key"].as_str().unwrap().to_string();
    let b1 = r.json["broadcast"].as_str().unwrap().to_string();
    let srv = primary(&r).to_string();
    let hb = |b: &str, live: bool, ended: Option<u64>| {
        let mut s = json!({"stream": "e1", "broadcast": b, "role": "primary", "next_seq": 10, "live": live});
        if let Some(f) = ended {
            s["ended"] = json!(f);
        }
        json!({"streams": [s]})
    };
    api.heartbeat(&srv, hb(&b1, true, None)).await;
    assert_eq!(api.info("e1").await.json["broadcast"]["state"], "live");
    api.heartbeat(&srv, hb(&b1, false, Some(9))).await;
    let i = api.info("e1").await.json;
    assert_eq!(i["broadcast"]["state"], "ended", "{i}");
    assert_eq!(i["broadcast"]["final_seq"], 9);
    assert_eq!(i["live"], false);

    // Publisher gone: live, then no report of it for publisher_gone_s.
    let r = api
        .assign(
            "192.0.2.1",
            json!({"stream": "e1", "key": key, "location": "Paris"}),
        )
        .await;
    let b2 = r.json["broadcast"].as_str().unwrap().to_string();
    api.heartbeat(primary(&r), hb(&b2, true, None)).await;
    api.d.upkeep_streams().await;
    assert_eq!(api.info("e1").await.json["broadcast"]["state"], "live");
    api.heartbeat(primary(&r), json!({"streams": []})).await;
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(6)).await;
    api.d.upkeep_streams().await;
    let i = api.info("e1").await.json;
    assert_eq!(i["broadcast"]["state"], "ended", "{i}");
    // The publisher coming back with its old token is told to end (it must go live again).
    let r = api.heartbeat(&srv, hb(&b2, true, None)).await;
    assert_eq!(
        r.json["superseded"][0]["broadcast"],
        b2.as_str(),
        "{}",
        r.json
    );
}

#[tokio::test]
async fn key_publishes_join_the_active_broadcast_as_the_free_path() {
    let api = Api::new(keys_config());
    api.world().await;
    let key = api.create_stream(json!({"stream": "obs1"})).await.json["key"]
        .as_str()
        .unwrap()
        .to_string();
    let body =
        |k: &str| json!({"stream": "obs1", "key": k, "client_ip": "192.0.2.7", "protocol": "rtmp"});
    let a = api.key_publish("fra-1", body(&key)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    assert_eq!(
        (a.json["role"].as_str(), a.json["new_broadcast"].as_bool()),
        (Some("primary"), Some(true))
    );
    let b = api.key_publish("par-1", body(&key)).await;
    assert_eq!(b.json["role"], "backup");
    assert_eq!(b.json["broadcast"], a.json["broadcast"]);
    assert_eq!(b.json["new_broadcast"], false);
    // The token is for that server, broadcast and role.
    let c = api
        .d
        .public_key()
        .verify(b.json["token"].as_str().unwrap(), T0 + 1)
        .unwrap();
    assert_eq!((c.server.as_str(), c.role), ("par-1", proto::Role::Backup));
    // Both live: a third server is refused.
    let bid = a.json["broadcast"].as_str().unwrap();
    for (s, role) in [("fra-1", "primary"), ("par-1", "backup")] {
        api.heartbeat(
            s,
            json!({"streams": [{"stream": "obs1", "broadcast": bid, "role": role, "next_seq": 1, "live": true}]}),
        )
        .await;
    }
    let r = api.key_publish("nyc-1", body(&key)).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
    assert_eq!(r.json["code"], "stream_busy");
    // A wrong key; an unknown server; no cluster credential.
    assert_eq!(
        api.key_publish("fra-1", body("wrongwrongwrongwrong"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.key_publish("nope-1", body(&key)).await.status,
        StatusCode::NOT_FOUND
    );
    let r = api
        .req(
            Method::POST,
            "/v1/entry-servers/fra-1/publishes",
            None,
            &[],
            Some(body(&key).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Stream info names the broadcast's two servers.
    let i = api.info("obs1").await.json;
    assert_eq!(i["ingest"][0]["server_id"], "fra-1");
    assert_eq!(i["ingest"][1]["server_id"], "par-1");
}

#[tokio::test]
async fn private_streams_and_playback_tokens() {
    let api = Api::new(keys_config());
    api.world().await;
    let key = api
        .create_stream(json!({"stream": "priv", "private": true}))
        .await
        .json["key"]
        .as_str()
        .unwrap()
        .to_string();
    let r = api
        .assign("192.0.2.1", json!({"stream": "priv", "key": key}))
        .await;
    let c = api
        .d
        .public_key()
        .verify(r.json["primary"]["token"].as_str().unwrap(), T0 + 1)
        .unwrap();
    assert!(
        c.private,
        "ingest tokens carry the privacy of the broadcast"
    );
    assert_eq!(api.info("priv").await.json["private"], true);
    let tok = |auth: String, body: Value| {
        let api = &api;
        async move {
            api.req(
                Method::POST,
                "/v1/streams/priv/playback-tokens",
                None,
                &[("authorization", &auth)],
                Some(body.to_string()),
            )
            .await
        }
    };
    let r = tok(format!("Bearer {key}"), json!({"ttl_s": 60})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["expires_at"], T0 + 60);
    let pc = api
        .d
        .public_key()
        .verify_play(r.json["token"].as_str().unwrap(), T0 + 1)
        .unwrap();
    assert_eq!(pc.stream.as_str(), "priv");
    assert!(
        api.d
            .public_key()
            .verify(r.json["token"].as_str().unwrap(), T0 + 1)
            .is_err(),
        "a playback token does not publish"
    );
    assert_eq!(
        tok(format!("Bearer {ADMIN}"), json!({})).await.status,
        StatusCode::OK
    );
    assert_eq!(
        tok("Bearer zzzzzzzzzzzzzzzzzzzz".into(), json!({}))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        tok(format!("Bearer {key}"), json!({"ttl_s": 10_000_000}))
            .await
            .status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    // Making a stream public again.
    let r = api
        .req(
            Method::PATCH,
            "/v1/admin/streams/priv",
            None,
            &[("authorization", &format!("Bearer {ADMIN}"))],
            Some(json!({"private": false}).to_string()),
        )
        .await;
    assert_eq!(r.json["private"], false, "{}", r.json);
}

/// A platform's publish hook: answers as `mode` says, and records what it was asked.
async fn hook(
    mode: &'static str,
) -> (
    SocketAddr,
    Arc<Mutex<Vec<Value>>>,
    tokio::task::JoinHandle<()>,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let app = axum::Router::new().route(
        "/on_publish",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::Json<Value>| {
                let seen = s2.clone();
                async move {
                    let mut v = body.0;
                    v["_auth"] = json!(headers.get("authorization").and_then(|h| h.to_str().ok()));
                    seen.lock().unwrap().push(v);
                    match mode {
                        "allow" => (StatusCode::OK, axum::Json(json!({"private": true}))),
                        "deny" => (StatusCode::FORBIDDEN, axum::Json(json!({"error": "no"}))),
                        _ => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            (StatusCode::OK, axum::Json(json!({})))
                        }
                    }
                }
            },
        ),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        axum::serve(l, app).await.unwrap();
    });
    (addr, seen, h)
}

fn webhook_config(addr: SocketAddr, on_error: OnHookError) -> director::DirectorConfig {
    let mut c = config();
    c.publish.mode = PublishMode::Webhook;
    c.publish.webhook.url = Some(format!("http://{addr}/on_publish"));
    c.publish.webhook.secret = Some("hook-secret".into());
    c.publish.webhook.timeout_ms = 300;
    c.publish.webhook.on_error = on_error;
    c
}

#[tokio::test]
async fn webhook_mode_allow_deny_slow_and_down() {
    // Allow: the platform is asked with everything it needs, and may make the stream private.
    let (addr, seen, h) = hook("allow").await;
    let api = Api::new(webhook_config(addr, OnHookError::Deny));
    api.world().await;
    let r = api
        .assign(
            "192.0.2.1",
            json!({"stream": "w1", "key": "platform-key-123456", "location": "Paris", "protocol": "rtmp"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let asked = seen.lock().unwrap()[0].clone();
    assert_eq!(asked["action"], "publish");
    assert_eq!(asked["stream"], "w1");
    assert_eq!(asked["key"], "platform-key-123456");
    assert_eq!(asked["client_ip"], "192.0.2.1");
    assert_eq!(asked["location"], "Paris");
    assert_eq!(asked["protocol"], "rtmp");
    assert_eq!(asked["_auth"], "Bearer hook-secret");
    assert_eq!(api.info("w1").await.json["private"], true);
    h.abort();

    // Deny: 403, nothing recorded.
    let (addr, _, h) = hook("deny").await;
    let api = Api::new(webhook_config(addr, OnHookError::Deny));
    api.world().await;
    let r = api.assign("192.0.2.1", json!({"stream": "w2"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json["code"], "publish_denied");
    assert_eq!(api.info("w2").await.status, StatusCode::NOT_FOUND);
    h.abort();

    // Slow: past the timeout it is "down" — refused with Retry-After (fail closed)...
    let (addr, _, h) = hook("slow").await;
    let api = Api::new(webhook_config(addr, OnHookError::Deny));
    api.world().await;
    let t0 = std::time::Instant::now();
    let r = api.assign("192.0.2.1", json!({"stream": "w3"})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.json);
    assert_eq!(r.json["code"], "publish_hook_unavailable");
    assert!(r.headers.contains_key("retry-after"));
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the timeout bounds the wait"
    );
    // ... or allowed when configured to fail open.
    let api = Api::new(webhook_config(addr, OnHookError::Allow));
    api.world().await;
    assert_eq!(
        api.assign("192.0.2.1", json!({"stream": "w3"}))
            .await
            .status,
        StatusCode::OK
    );
    h.abort();

    // Down: nothing listens.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let api = Api::new(webhook_config(dead, OnHookError::Deny));
    api.world().await;
    let r = api.assign("192.0.2.1", json!({"stream": "w4"})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json["code"], "publish_hook_unavailable");
}
