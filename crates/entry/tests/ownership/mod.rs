//! Streams that belong to their publishers, end to end: a real director (open mode) and three
//! entry servers on 127.0.0.x; the owner publishes with its key, outsiders try every door; the
//! same key goes live 100 times (native) and 5 times (RTMP, real ffmpeg); private playback.

use super::*;

/// What an HTTP request got: status and body.
async fn post_json(url: String, body: Value) -> (u16, Value) {
    let r = http_client().post(url).json(&body).send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn assign_with(d: &Director, body: Value) -> (u16, Value) {
    post_json(format!("{}/v1/assignments", d.url), body).await
}

async fn stream_info(d: &Director, stream: &str) -> Value {
    get(format!("{}/v1/streams/{stream}", d.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Push `chunks` to both picks of an assignment and END; returns once both acknowledged all.
async fn push_both(a: &Value, stream: &str, chunks: &Arc<Vec<Bytes>>) {
    let (_, paddr, ptok) = pick(a, "primary");
    let (_, baddr, btok) = pick(a, "backup");
    let n = chunks.len();
    let p = tokio::spawn(push(
        paddr,
        stream.to_string(),
        Role::Primary,
        ptok,
        chunks.clone(),
        n,
        true,
    ));
    let b = tokio::spawn(push(
        baddr,
        stream.to_string(),
        Role::Backup,
        btok,
        chunks.clone(),
        n,
        true,
    ));
    assert_eq!(p.await.unwrap(), Ok(0));
    assert_eq!(b.await.unwrap(), Ok(0));
}

/// Chunks whose bytes say which broadcast they belong to.
fn marked(tag: &str, n: usize) -> Arc<Vec<Bytes>> {
    Arc::new(
        (0..n)
            .map(|i| Bytes::from(format!("[{tag}:{i:04}]").repeat(40)))
            .collect(),
    )
}

async fn read_url(url: String) -> Result<Vec<u8>, (u16, String)> {
    let r = http_client()
        .get(&url)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| (0, e.to_string()))?;
    let s = r.status().as_u16();
    if s != 200 {
        return Err((s, r.text().await.unwrap_or_default()));
    }
    r.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| (0, e.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsider_without_the_key_is_refused_everywhere_and_the_viewer_gets_only_the_owners_bytes()
 {
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let servers = three_servers(&d, dir.path()).await;
    // The owner goes live: the first assignment creates the stream and hands out its key.
    let (s, a) = assign_with(&d, json!({"stream": "live1", "location": "Paris, FR"})).await;
    assert_eq!(s, 200, "{a}");
    let key = a["stream_key"].as_str().unwrap().to_string();
    let owner = source(400);
    let (_, paddr, ptok) = pick(&a, "primary");
    let (_, baddr, btok) = pick(&a, "backup");
    let slow = |addr: String, role, tok: String| {
        let owner = owner.clone();
        tokio::spawn(async move {
            let mut p = Path::connect(&addr).await.map_err(|e| e.to_string())?;
            p.hello("live1", role, &tok, None)
                .await
                .map_err(|e| e.to_string())?;
            for seq in 0..owner.len() as u64 {
                p.data(seq, owner[seq as usize].clone())
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            p.send(&Frame::End {
                final_seq: owner.len() as u64 - 1,
            })
            .await
            .map_err(|e| e.to_string())?;
            p.until_ack(owner.len() as u64 - 1).await
        })
    };
    let primary = slow(paddr.clone(), Role::Primary, ptok);
    let backup = slow(baddr.clone(), Role::Backup, btok);
    // A viewer on the third node, from the start.
    let nyc = servers[2].http;
    wait_until_holds(servers[0].http, "live1", 10).await;
    let viewer = tokio::spawn(read_url(format!(
        "http://{nyc}/v1/streams/live1/live?from=start"
    )));
    let before = stream_info(&d, "live1").await;

    // The outsider: the director gives it nothing and changes nothing...
    for body in [
        json!({"stream": "live1", "location": "Sydney"}),
        json!({"stream": "live1", "key": "guessed-guessed-guessed", "location": "Sydney"}),
    ] {
        let (s, e) = assign_with(&d, body).await;
        assert!(s == 401 || s == 403, "{s} {e}");
    }
    // ... its own stream's token cannot open this one (native HELLO) ...
    let (_, evil) = assign_with(&d, json!({"stream": "evil", "location": "Paris, FR"})).await;
    let (_, _, evil_tok) = pick(&evil, "primary");
    let mut p = Path::connect(&paddr).await.unwrap();
    let f = p
        .hello("live1", Role::Primary, &evil_tok, None)
        .await
        .unwrap();
    assert!(
        matches!(&f, Frame::Error(e) if e.code == ErrorCode::Unauthorized),
        "{f:?}"
    );
    // ... nor can a bare HELLO, an END from nowhere, or an HTTP push without or with a wrong key.
    let mut p = Path::connect(&paddr).await.unwrap();
    let f = p.hello("live1", Role::Primary, "", None).await.unwrap();
    assert!(
        matches!(&f, Frame::Error(e) if e.code == ErrorCode::Unauthorized),
        "{f:?}"
    );
    let mut p = Path::connect(&paddr).await.unwrap();
    p.send(&Frame::End { final_seq: 3 }).await.unwrap();
    let (code, _) = expect_error(&mut p).await;
    assert_eq!(code, ErrorCode::Protocol);
    let http = servers[0].http;
    for q in ["", "?key=guessed-guessed-guessed", "?token=x.y.z"] {
        let r = http_client()
            .post(format!("http://{http}/v1/streams/live1/push{q}"))
            .body(vec![0u8; 100_000])
            .send()
            .await
            .unwrap();
        assert!(
            matches!(r.status().as_u16(), 401 | 403),
            "push{q}: {}",
            r.status()
        );
    }
    // The list of streams is for operators only.
    assert_eq!(
        get(format!("http://{http}/v1/streams"))
            .await
            .unwrap()
            .status(),
        401
    );
    let after = stream_info(&d, "live1").await;
    for k in ["id", "primary", "backup", "started_at"] {
        assert_eq!(after["broadcast"][k], before["broadcast"][k], "{k}");
    }
    assert_eq!(
        stream_info(&d, "live1").await["ingest"][0]["server_id"],
        before["ingest"][0]["server_id"]
    );

    // The owner's push completes; the viewer got exactly the owner's bytes.
    assert_eq!(primary.await.unwrap(), Ok(()));
    assert_eq!(backup.await.unwrap(), Ok(()));
    let got = viewer.await.unwrap().unwrap();
    assert!(
        got == concat(&owner),
        "the viewer's bytes are not exactly the owner's"
    );
    // And the owner, with its key, goes live again.
    let (s, a2) = assign_with(&d, json!({"stream": "live1", "key": key})).await;
    assert_eq!(s, 200, "{a2}");
    assert_ne!(a2["broadcast"], a["broadcast"]);
}

/// Poll (bounded) until an ingest server holds `n` chunks of any broadcast of `stream`.
async fn wait_until_holds(http: SocketAddr, stream: &str, n: u64) {
    for _ in 0..500 {
        let v: Value = get_streams(http).await.unwrap().json().await.unwrap();
        if v["streams"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["stream"] == stream && s["next_seq"].as_u64().unwrap_or(0) >= n)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{http} never held {n} chunks of {stream}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_goes_live_a_hundred_times_and_every_broadcast_plays_back_exactly() {
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let servers = three_servers(&d, dir.path()).await;
    let nyc = servers[2].http;
    let mut key: Option<String> = None;
    let mut ids = Vec::new();
    for i in 0..100 {
        let mut body = json!({"stream": "daily", "location": "Paris, FR"});
        if let Some(k) = &key {
            body["key"] = json!(k);
        }
        let (s, a) = assign_with(&d, body).await;
        assert_eq!(s, 200, "go-live {i}: {a}");
        assert_eq!(a["new_broadcast"], true);
        if key.is_none() {
            key = Some(a["stream_key"].as_str().unwrap().to_string());
        }
        let b = a["broadcast"].as_str().unwrap().to_string();
        assert!(!ids.contains(&b), "broadcast ids are unique");
        let chunks = marked(&format!("b{i:03}"), 4 + i % 5);
        push_both(&a, "daily", &chunks).await;
        // Played back by broadcast id from a node that relays it: exactly its bytes.
        let got = read_url(format!(
            "http://{nyc}/v1/streams/daily/live?broadcast={b}&from=start"
        ))
        .await
        .unwrap();
        assert!(got == concat(&chunks), "broadcast {i} played back wrong");
        ids.push(b);
    }
    // Past broadcasts stay readable by id (on an ingest server: from its log).
    let first = read_url(format!(
        "http://{}/v1/streams/daily/live?broadcast={}&from=start",
        servers[0].http, ids[0]
    ))
    .await
    .unwrap();
    assert!(first == concat(&marked("b000", 4)));
    // The director counts them and keeps a bounded history.
    let r = http_client()
        .get(format!("{}/v1/admin/streams/daily", d.url))
        .bearer_auth("admin")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(r["broadcasts"], 100, "{r}");
    // Memory: ended broadcasts are released (not 100 per server in the hub).
    let held = get_streams(servers[0].http)
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let n = held["streams"].as_array().unwrap().len();
    assert!(n <= 100, "{n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_viewer_gets_its_broadcast_and_its_end_and_a_follower_gets_the_next_one() {
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let servers = three_servers(&d, dir.path()).await;
    let nyc = servers[2].http;
    let (_, a1) = assign_with(&d, json!({"stream": "show", "location": "Paris, FR"})).await;
    let key = a1["stream_key"].as_str().unwrap().to_string();
    let one = marked("one", 200);
    let (_, paddr, ptok) = pick(&a1, "primary");
    let (_, baddr, btok) = pick(&a1, "backup");
    // Broadcast 1: pushed slowly; a live viewer joins mid-way.
    let p1 = tokio::spawn(push(
        paddr,
        "show".into(),
        Role::Primary,
        ptok,
        one.clone(),
        100,
        false,
    ));
    let b1 = tokio::spawn(push(
        baddr,
        "show".into(),
        Role::Backup,
        btok,
        one.clone(),
        100,
        false,
    ));
    assert!(p1.await.unwrap().is_ok() && b1.await.unwrap().is_ok());
    let viewer = tokio::spawn(read_url(format!(
        "http://{nyc}/v1/streams/show/live?from=start"
    )));
    let (_, paddr, ptok) = pick(&a1, "primary");
    let (_, baddr, btok) = pick(&a1, "backup");
    let p1 = tokio::spawn(push(
        paddr,
        "show".into(),
        Role::Primary,
        ptok,
        one.clone(),
        200,
        true,
    ));
    let b1 = tokio::spawn(push(
        baddr,
        "show".into(),
        Role::Backup,
        btok,
        one.clone(),
        200,
        true,
    ));
    assert!(p1.await.unwrap().is_ok() && b1.await.unwrap().is_ok());
    let got = viewer.await.unwrap().unwrap();
    assert!(got == concat(&one), "viewer of broadcast 1 got other bytes");
    // Between broadcasts a live viewer waits (bounded) and is told to retry.
    let between = read_url(format!("http://{nyc}/v1/streams/show/live")).await;
    assert!(
        between.is_err(),
        "got {} bytes of the ended broadcast",
        between.as_ref().map(Vec::len).unwrap_or(0)
    );
    let (s, e) = between.unwrap_err();
    assert_eq!(s, 503, "{e}");
    assert!(e.contains("not_live_yet"), "{e}");
    // Broadcast 2 with the same key: a new viewer gets it, and nothing of broadcast 1.
    let (_, a2) = assign_with(
        &d,
        json!({"stream": "show", "key": key, "location": "Paris, FR"}),
    )
    .await;
    let two = marked("two", 50);
    let viewer2 = tokio::spawn(read_url(format!(
        "http://{nyc}/v1/streams/show/live?from=start"
    )));
    push_both(&a2, "show", &two).await;
    let got = viewer2.await.unwrap().unwrap();
    assert!(got == concat(&two), "viewer of broadcast 2 got other bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_live_again_ends_the_previous_broadcasts_sessions() {
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let _servers = three_servers(&d, dir.path()).await;
    let (_, a1) = assign_with(&d, json!({"stream": "sup", "location": "Paris, FR"})).await;
    let key = a1["stream_key"].as_str().unwrap().to_string();
    let (_, paddr, ptok) = pick(&a1, "primary");
    let mut p = Path::connect(&paddr).await.unwrap();
    assert!(matches!(
        p.hello("sup", Role::Primary, &ptok, None).await.unwrap(),
        Frame::Welcome(_)
    ));
    let chunks = source(10);
    for seq in 0..5u64 {
        p.data(seq, chunks[seq as usize].clone()).await.unwrap();
    }
    p.until_ack(4).await.unwrap();
    // The owner goes live again (a restarted encoder): the old session is told to go away.
    let (s, _) = assign_with(
        &d,
        json!({"stream": "sup", "key": key, "location": "Paris, FR"}),
    )
    .await;
    assert_eq!(s, 200);
    let t0 = std::time::Instant::now();
    let (code, msg) = loop {
        let _ = p.data(5, chunks[5].clone()).await;
        match tokio::time::timeout(Duration::from_millis(200), p.recv()).await {
            Ok(Ok(Some(Frame::Error(e)))) => break (e.code, e.message),
            Ok(Ok(None)) | Ok(Err(_)) => panic!("closed without an ERROR"),
            _ => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the old session was never ended"
        );
    };
    assert_eq!(code, ErrorCode::GoingAway, "{msg}");
    assert!(msg.contains("superseded"), "{msg}");
    // And the old token cannot start a new session of the old broadcast there.
    let mut q = Path::connect(&paddr).await.unwrap();
    let f = q.hello("sup", Role::Primary, &ptok, None).await.unwrap();
    assert!(
        matches!(&f, Frame::Error(e) if e.code == ErrorCode::GoingAway),
        "{f:?}"
    );
}

/// `stream` claimed (its first go-live's key), made private by the admin, and live again with
/// its key: a broadcast whose tokens carry the privacy. The assignment and the key.
async fn private_broadcast(d: &Director, stream: &str) -> (Value, String) {
    let (_, a) = assign_with(d, json!({"stream": stream, "location": "Paris, FR"})).await;
    let key = a["stream_key"].as_str().unwrap().to_string();
    let r = http_client()
        .patch(format!("{}/v1/admin/streams/{stream}", d.url))
        .bearer_auth("admin")
        .json(&json!({"private": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, a) = assign_with(
        d,
        json!({"stream": stream, "key": key, "location": "Paris, FR"}),
    )
    .await;
    (a, key)
}

/// A playback token for `stream` from the director, asked with the stream's key (60 s).
async fn playback_token(d: &Director, stream: &str, key: &str) -> String {
    let r = http_client()
        .post(format!("{}/v1/streams/{stream}/playback-tokens", d.url))
        .bearer_auth(key)
        .json(&json!({"ttl_s": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    t["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_streams_need_a_playback_token_and_cause_no_relay_pull() {
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let servers = three_servers(&d, dir.path()).await;
    let (a, key) = private_broadcast(&d, "priv").await;
    let chunks = marked("p", 30);
    push_both(&a, "priv", &chunks).await;
    let (ingest, relay) = (servers[0].http, servers[2].http);
    for http in [ingest, relay] {
        let (s, e) = read_url(format!("http://{http}/v1/streams/priv/live?from=start"))
            .await
            .unwrap_err();
        assert_eq!(s, 401, "{http}: {e}");
        let (s, _) = read_url(format!("http://{http}/live/priv.flv?token=garbage"))
            .await
            .unwrap_err();
        assert_eq!(s, 401);
    }
    // No relay was started on the third node by the refused viewers.
    let held: Value = get_streams(relay).await.unwrap().json().await.unwrap();
    assert!(
        held["streams"].as_array().unwrap().is_empty(),
        "a refused viewer made the node relay: {held}"
    );
    // With a playback token from the director (asked with the stream key): 200.
    let (s, t) = post_json(
        format!("{}/v1/streams/priv/playback-tokens", d.url),
        json!({}),
    )
    .await;
    assert_eq!(s, 401, "{t}");
    let tok = &playback_token(&d, "priv", &key).await;
    for http in [ingest, relay] {
        let got = read_url(format!(
            "http://{http}/v1/streams/priv/live?from=start&token={tok}"
        ))
        .await
        .unwrap();
        assert!(got == concat(&chunks), "{http}");
    }
    // An expired one: 401.
    let expired = token::SigningKey::from_bytes(&[7u8; 32]).sign_play(&token::PlayClaims {
        scp: token::Scope::Play,
        stream: "priv".parse().unwrap(),
        iat: 1,
        exp: 2,
    });
    let (s, e) = read_url(format!(
        "http://{relay}/v1/streams/priv/live?token={expired}"
    ))
    .await
    .unwrap_err();
    assert_eq!(s, 401);
    assert!(e.contains("expired"), "{e}");
    // A token for another stream: 401.
    let other = token::SigningKey::from_bytes(&[7u8; 32]).sign_play(&token::PlayClaims {
        scp: token::Scope::Play,
        stream: "other".parse().unwrap(),
        iat: 1,
        exp: far_future(),
    });
    let (s, _) = read_url(format!(
        "http://{ingest}/v1/streams/priv/live?token={other}"
    ))
    .await
    .unwrap_err();
    assert_eq!(s, 401);
}

/// Only peers and the server itself see what it holds: its own credential or a peer token the
/// director signed. Another server's credential (it cannot be checked here), an ingest or
/// playback token, an expired peer token or one signed by another key are 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_server_itself_and_its_peers_read_its_stream_table() {
    let dir = tempfile::tempdir().unwrap();
    let e = testkit::TestEntry::start(
        testkit::entry_config("par-1", "par", "Paris", dir.path(), None),
        "127.0.0.1",
    );
    let key = testkit::key();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let peer = |signer: &token::SigningKey, exp: u64| {
        signer.sign_peer(&token::PeerClaims {
            scp: token::Scope::Peer,
            server: "lon-1".parse().unwrap(),
            iat: now.saturating_sub(60),
            exp,
        })
    };
    let other_key = token::SigningKey::from_bytes(&[9u8; 32]);
    let ingest = key.sign(&token::Claims {
        scp: token::Scope::Ingest,
        stream: "s".parse().unwrap(),
        broadcast: proto::BroadcastId::new(now * 1000, 1),
        server: "par-1".parse().unwrap(),
        role: proto::Role::Primary,
        private: false,
        iat: now,
        exp: now + 600,
    });
    let play = key.sign_play(&token::PlayClaims {
        scp: token::Scope::Play,
        stream: "s".parse().unwrap(),
        iat: now,
        exp: now + 600,
    });
    let refused = [
        ("none", None),
        (
            "another server's credential",
            Some(testkit::credential("lon-1")),
        ),
        ("an ingest token", Some(ingest)),
        ("a playback token", Some(play)),
        ("an expired peer token", Some(peer(&key, now - 1))),
        (
            "a peer token of another key",
            Some(peer(&other_key, now + 600)),
        ),
        ("garbage", Some("x".repeat(5000))),
    ];
    let accepted = [
        ("its own credential", testkit::credential("par-1")),
        ("a peer token", peer(&key, now + 600)),
    ];
    for path in ["/v1/streams"] {
        let url = format!("http://{}{path}", e.http);
        for (what, bearer) in &refused {
            let mut r = http_client().get(&url);
            if let Some(b) = bearer {
                r = r.bearer_auth(b);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} with {what}");
        }
        for (what, bearer) in &accepted {
            let r = http_client()
                .get(&url)
                .bearer_auth(bearer)
                .send()
                .await
                .unwrap();
            assert_ne!(r.status(), 401, "{path} with {what}");
            assert_ne!(r.status(), 403, "{path} with {what}");
        }
    }
}

/// HLS of a private stream (MPEG-TS pushed on both paths): no playlist, segment or part without
/// a playback token, on the ingest node and on a relay; with one, every URI of the playlist
/// carries it, and what it names is served with `private` caching (a CDN must not share it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_hls_needs_the_token_on_every_resource_and_is_cached_privately() {
    super::rtmp::need_ffmpeg();
    let d = start_director();
    let dir = tempfile::tempdir().unwrap();
    let servers = three_servers(&d, dir.path()).await;
    let (a, key) = private_broadcast(&d, "privhls").await;
    let ts = super::rtmp::run(
        std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-hide_banner", "-loglevel", "error"])
            .args(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25"])
            .args(["-f", "lavfi", "-i", "sine=frequency=220:sample_rate=48000"])
            .args([
                "-t", "5", "-c:v", "libx264", "-g", "25", "-pix_fmt", "yuv420p",
            ])
            .args(["-c:a", "aac", "-f", "mpegts", "-"]),
    )
    .stdout;
    let chunks: Arc<Vec<Bytes>> =
        Arc::new(ts.chunks(188 * 50).map(Bytes::copy_from_slice).collect());
    push_both(&a, "privhls", &chunks).await;
    let broadcast = a["broadcast"].as_str().unwrap();
    let tok = &playback_token(&d, "privhls", &key).await;
    let (ingest, relay) = (servers[0].http, servers[2].http);
    for http in [ingest, relay] {
        let base = format!("http://{http}/hls/privhls");
        let q = format!("broadcast={broadcast}");
        let (s, e) = read_url(format!("{base}/index.m3u8?{q}"))
            .await
            .unwrap_err();
        assert_eq!(s, 401, "{http}: {e}");
        let (s, _) = read_url(format!("{base}/classic.m3u8?{q}&token=garbage"))
            .await
            .unwrap_err();
        assert_eq!(s, 401);
        let text = String::from_utf8(
            read_url(format!("{base}/index.m3u8?{q}&token={tok}"))
                .await
                .unwrap(),
        )
        .unwrap();
        let uris: Vec<String> = text
            .lines()
            .filter_map(|l| {
                if l.starts_with('#') {
                    l.split("URI=\"")
                        .nth(1)?
                        .split('"')
                        .next()
                        .map(str::to_string)
                } else {
                    (!l.is_empty()).then(|| l.to_string())
                }
            })
            .collect();
        assert!(uris.len() > 3, "{text}");
        for u in &uris {
            assert!(u.ends_with(&format!("?token={tok}")), "{u} in\n{text}");
        }
        let seg = uris.iter().find(|u| u.contains(".m4s")).unwrap();
        let r = http_client()
            .get(format!("{base}/{seg}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["cache-control"],
            "private, max-age=31536000, immutable"
        );
        let bare = seg.split('?').next().unwrap();
        let (s, _) = read_url(format!("{base}/{bare}")).await.unwrap_err();
        assert_eq!(s, 401, "{bare} without the token");
    }
}
