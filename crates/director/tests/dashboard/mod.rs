//! The operator's dashboard (`GET /` on the director): its data endpoint, its files, and the
//! page drawn by a real headless Chromium (Debian `chromium`; `scripts/browser-deps.sh`, which
//! `scripts/test` runs, installs it).

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use super::{ADMIN, Api, config};

/// A world of six servers and one live broadcast assigned from Paris, reported live on both
/// of its paths.
async fn world_with_a_live_broadcast() -> (Api, Value) {
    let api = Api::new(config());
    api.world().await;
    let a = api
        .assign(
            "192.0.2.1",
            json!({"stream": "show", "location": "Paris, FR"}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.json);
    let b = a.json["broadcast"].as_str().unwrap().to_string();
    for role in ["primary", "backup"] {
        let server = a.json[role]["server_id"].as_str().unwrap().to_string();
        let r = api
            .heartbeat(
                &server,
                json!({"streams": [{"stream": "show", "broadcast": b, "role": role, "next_seq": 9, "live": true}]}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    }
    (api, a.json)
}

#[tokio::test]
async fn the_dashboard_data_is_admin_only_and_has_what_the_map_draws() {
    let (api, a) = world_with_a_live_broadcast().await;
    let r = api
        .req(Method::GET, "/v1/admin/dashboard", None, &[], None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.json);
    let r = api.admin(Method::GET, "/v1/admin/dashboard").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let d = &r.json;
    assert_eq!(d["servers"].as_array().unwrap().len(), 6, "{d}");
    let s = &d["streams"][0];
    assert_eq!(s["stream"], "show", "{d}");
    assert_eq!(s["live"], true, "{d}");
    assert_eq!(s["primary"], a["primary"]["server_id"], "{d}");
    assert_eq!(s["backup"], a["backup"]["server_id"], "{d}");
    assert!(
        s["device"]["lat"].as_f64().is_some(),
        "the device's typed place: {d}"
    );
    let r0 = &d["assignments"][0];
    assert_eq!(r0["typed"], "Paris, FR", "{d}");
    assert_eq!(r0["primary"]["server_id"], primary_of(&a), "{d}");
    assert_eq!(r0["primary"]["rtt_source"], "estimated", "{d}");
    assert_eq!(r0["primary"]["scored_from"], "typed", "{d}");
}

fn primary_of(a: &Value) -> &str {
    a["primary"]["server_id"].as_str().unwrap()
}

#[tokio::test]
async fn the_page_and_its_files_are_served_and_load_nothing_from_elsewhere() {
    let api = Api::new(config());
    let text = |path: &'static str| {
        let app = api.app.clone();
        async move {
            use http_body_util::BodyExt;
            use tower::ServiceExt;
            let resp = app
                .oneshot(
                    axum::http::Request::get(path)
                        .body(axum::body::Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status();
            let ty = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let cache = resp
                .headers()
                .get("cache-control")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                ty,
                cache,
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
    };
    let (s, ty, cache, page) = text("/").await;
    assert_eq!(s, StatusCode::OK);
    {
        use tower::ServiceExt;
        let resp = api
            .app
            .clone()
            .oneshot(
                axum::http::Request::get("/")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let csp = resp.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'self';") && !csp.contains("http"),
            "the browser may load only from the director: {csp}"
        );
    }
    assert!(ty.starts_with("text/html"), "{ty}");
    assert_eq!(cache, "no-cache");
    let (s, ty, _, js) = text("/dashboard/dashboard.js").await;
    assert_eq!(s, StatusCode::OK);
    assert!(ty.starts_with("text/javascript"), "{ty}");
    // Every script, style and the map come from this server: no absolute URL in the page or
    // its script except the SVG namespace (a name, never fetched).
    for (name, body) in [("page", &page), ("script", &js)] {
        for (i, _) in body.match_indices("://") {
            let start = body[..i].rfind(['"', '\'', '(', ' ']).map_or(0, |p| p + 1);
            let url = &body[start..(i + 30).min(body.len())];
            assert!(
                url.starts_with("http://www.w3.org/2000/svg"),
                "{name} refers to {url}"
            );
        }
    }
    for (src, want) in [
        ("/dashboard/vendor/d3-array.min.js", "public, max-age=86400"),
        ("/dashboard/vendor/d3-geo.min.js", "public, max-age=86400"),
        (
            "/dashboard/vendor/topojson-client.min.js",
            "public, max-age=86400",
        ),
        ("/dashboard/dashboard.css", "no-cache"),
        ("/dashboard/dashboard.js", "no-cache"),
    ] {
        assert!(page.contains(src), "the page uses {src}");
        let (s, _, cache, _) = text(src).await;
        assert_eq!((s, cache.as_str()), (StatusCode::OK, want), "{src}");
    }
    let (s, ty, _, map) = text("/dashboard/vendor/countries-110m.json").await;
    assert_eq!((s, ty.as_str()), (StatusCode::OK, "application/json"));
    let map: Value = serde_json::from_str(&map).unwrap();
    assert_eq!(map["type"], "Topology");
    let (s, _, _, _) = text("/dashboard/../Cargo.toml").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _, _) = text("/dashboard/vendor/nope.js").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

fn chromium() -> std::path::PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("chromium is not installed: run scripts/browser-deps.sh (scripts/test runs it)");
}

/// A real headless Chromium opens the dashboard with the admin token in the URL's fragment and
/// draws a marker per entry server and the live broadcast's two paths. The screenshot is kept
/// in `target/test-artifacts/dashboard.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_draws_every_server_and_the_live_paths() {
    let browser = chromium();
    let (api, a) = world_with_a_live_broadcast().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = director::router(api.d.clone());
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    let url = format!("http://{addr}/#token={ADMIN}");
    let profile = tempfile::tempdir().unwrap();
    let run = |extra: Vec<String>| {
        let (browser, url, profile) = (browser.clone(), url.clone(), profile.path().to_owned());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(browser)
                .args(["--headless=new", "--no-sandbox", "--disable-gpu"])
                .args([
                    "--no-first-run",
                    "--disable-extensions",
                    "--hide-scrollbars",
                ])
                .arg(format!("--user-data-dir={}", profile.display()))
                .args(["--virtual-time-budget=6000", "--window-size=1400,800"])
                .args(extra)
                .arg(url)
                .output()
                .unwrap()
        })
    };
    let out = tokio::time::timeout(Duration::from_secs(120), run(vec!["--dump-dom".into()]))
        .await
        .expect("chromium finished")
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("data-drawn="),
        "the page never drew: {}\n{}",
        dom,
        String::from_utf8_lossy(&out.stderr)
    );
    for s in ["fra-1", "fra-2", "par-1", "nyc-1", "tyo-1", "syd-1"] {
        assert!(
            dom.contains(&format!("<g data-server=\"{s}\"><circle")),
            "no marker for {s}"
        );
    }
    assert_eq!(
        dom.matches("class=\"path primary\" data-stream=\"show\"")
            .count(),
        1,
        "{dom}"
    );
    assert_eq!(
        dom.matches("class=\"path backup\" data-stream=\"show\"")
            .count(),
        1,
        "{dom}"
    );
    assert!(
        dom.contains("6 entry servers (6 healthy) · 1 broadcasts (1 live)"),
        "{dom}"
    );
    assert!(
        dom.contains(&format!("primary {}", primary_of(&a))),
        "{dom}"
    );
    // The land is drawn from the vendored shapes (177 countries in the 110m file).
    assert!(dom.matches("<path d=\"M").count() > 100, "no land drawn");

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        run(vec![format!("--screenshot={}", shot.display())]),
    )
    .await
    .expect("chromium finished")
    .unwrap();
    assert!(
        shot.metadata().map(|m| m.len() > 10_000).unwrap_or(false),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.abort();
}
