//! Several directors sharing one fleet view on a real etcd (Debian `etcd-server`, started here on
//! 127.0.0.1 with free ports and a temporary data directory, killed on drop).
//!
//! If `etcd` is not installed these tests fail and say to run `scripts/etcd-deps.sh` (which
//! `scripts/test` runs first): a shared-state feature tested against nothing is not tested.
//!
//! Entry servers are simulated: tasks that register and heartbeat through the directors' routers
//! and register again when told 404, like the real ones. Timing: heartbeats every 200 ms, three
//! missed allowed, so leases of 1 s; waits poll a condition with a deadline, never sleep for it.

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use director::DirectorConfig;
use director::config::RegistryBackend;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{Api, config, primary};

const WAIT: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

fn etcd_binary() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("etcd"))
            .find(|f| f.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "the etcd tests need the `etcd` server binary (Debian etcd-server): run \
             scripts/etcd-deps.sh (scripts/test does) and try again"
        )
    })
}

/// One etcd member: its process, ports and data directory (kept across restarts).
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Member {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            client_port: free_port(),
            peer_port: free_port(),
            dir: tempfile::tempdir().expect("temporary directory"),
            child: None,
        }
    }

    fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn start(&mut self, cluster: &str) {
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("etcd log file");
        let child = Command::new(etcd_binary())
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &self.client_url()])
            .args(["--advertise-client-urls", &self.client_url()])
            .args(["--listen-peer-urls", &self.peer_url()])
            .args(["--initial-advertise-peer-urls", &self.peer_url()])
            .args(["--initial-cluster", cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "firstmile-test"])
            // Fast elections, so leases as short as 1 s are honoured (etcd's minimum lease TTL
            // is 1.5 election timeouts).
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An etcd cluster of one or more members on 127.0.0.1.
struct Etcd {
    members: Vec<Member>,
}

impl Etcd {
    async fn start(n: usize) -> Self {
        let members: Vec<Member> = (0..n).map(|i| Member::new(&format!("m{i}"))).collect();
        let mut e = Self { members };
        e.start_all().await;
        e
    }

    fn cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",")
    }

    async fn start_all(&mut self) {
        let cluster = self.cluster();
        for m in &mut self.members {
            m.start(&cluster);
        }
        self.wait_healthy().await;
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::client_url).collect()
    }

    /// Poll until a write through the first running member suceeds.
    async fn wait_healthy(&self) {
        let eps: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::client_url)
            .collect();
        let deadline = Instant::now() + WAIT;
        loop {
            let ok = async {
                let mut c = etcd_client::Client::connect(&eps, None).await.ok()?;
                tokio::time::timeout(Duration::from_secs(1), c.put("/health", "1", None))
                    .await
                    .ok()?
                    .ok()
            };
            if ok.await.is_some() {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self.members.iter().map(Member::log).collect();
                panic!("etcd did not become healthy: {logs:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Etcd {
    /// The index of the member that is the raft leader (polls until there is one).
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            for (i, m) in self.members.iter().enumerate() {
                let is_leader = async {
                    let mut c = etcd_client::Client::connect([m.client_url()], None)
                        .await
                        .ok()?;
                    let s = tokio::time::timeout(Duration::from_secs(1), c.status())
                        .await
                        .ok()?
                        .ok()?;
                    Some(s.header()?.member_id() == s.leader())
                };
                if is_leader.await == Some(true) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "etcd elected no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn etcd_config(endpoints: Vec<String>, prefix: &str) -> DirectorConfig {
    let mut c = config();
    c.heartbeat.interval_ms = 200;
    c.heartbeat.missed_allowed = 3;
    c.heartbeat.load_refresh_ms = 100;
    c.registry.backend = RegistryBackend::Etcd;
    let e = &mut c.registry.etcd;
    e.endpoints = endpoints;
    e.prefix = prefix.into();
    e.request_timeout_ms = 1000;
    e.connect_timeout_ms = 500;
    e.retry_max_ms = 400;
    e.load_write_interval_ms = 200;
    c
}

/// A director (router + upkeep task).
struct Dir {
    api: Arc<Api>,
    upkeep: JoinHandle<()>,
}

impl Dir {
    fn new(c: DirectorConfig) -> Self {
        let api = Arc::new(Api::new(c));
        let upkeep = tokio::spawn(api.d.clone().upkeep());
        Self { api, upkeep }
    }

    async fn ids(&self) -> Vec<String> {
        let r = self.api.admin(Method::GET, "/v1/admin/entry-servers").await;
        let mut v: Vec<String> = r.json["entry_servers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    async fn readyz(&self) -> (StatusCode, Value) {
        let r = self.api.req(Method::GET, "/readyz", None, &[], None).await;
        (r.status, r.json)
    }

    async fn degraded_metric(&self) -> bool {
        let r = self.api.app.clone().oneshot_text("/metrics").await;
        r.lines()
            .any(|l| l.trim() == "firstmile_director_registry_degraded 1")
    }

    /// `firstmile_director_etcd_writes_total`.
    async fn etcd_writes(&self) -> u64 {
        let r = self.api.app.clone().oneshot_text("/metrics").await;
        r.lines()
            .find_map(|l| l.strip_prefix("firstmile_director_etcd_writes_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no etcd write counter in {r}"))
    }

    async fn assign_tokyo(&self) -> (StatusCode, String) {
        let r = self
            .api
            .assign("203.0.113.9", json!({"location": "Tokyo"}))
            .await;
        (r.status, primary(&r).to_string())
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        self.upkeep.abort();
    }
}

trait OneshotText {
    fn oneshot_text(self, path: &str) -> impl Future<Output = String>;
}

impl OneshotText for axum::Router {
    async fn oneshot_text(self, path: &str) -> String {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let req = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .expect("request");
        let resp = self.oneshot(req).await.expect("infallible router");
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The key the simulated publisher of `stream` uses.
fn key_of(stream: &str) -> String {
    format!("{stream}-key-0123456789")
}

/// An encoder publishing `stream` with its key at entry server `id`: what the entry server asks
/// the director (`POST /v1/entry-servers/{id}/publishes`).
async fn key_publish(via: &Api, id: &str, stream: &str, key: &str) -> super::Resp {
    via.req(
        Method::POST,
        &format!("/v1/entry-servers/{id}/publishes"),
        None,
        &[("authorization", &format!("Bearer {}", super::cred(id)))],
        Some(
            json!({"stream": stream, "key": key, "client_ip": "192.0.2.7", "protocol": "rtmp"})
                .to_string(),
        ),
    )
    .await
}

/// A simulated entry server: an encoder publishes `stream` at it with the stream's key (in
/// `open` mode the first publisher claims the id), then it heartbeats through `via` every
/// 200 ms with that broadcast live, and registers again through `via` when told 404. Abort the
/// task to "kill" it.
fn entry_server(
    id: &'static str,
    place: &'static str,
    via: Arc<Api>,
    stream: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut broadcast: Option<String> = None;
        loop {
            tick.tick().await;
            if broadcast.is_none() {
                let r = key_publish(&via, id, stream, &key_of(stream)).await;
                if r.status == StatusCode::OK {
                    broadcast = r.json["broadcast"].as_str().map(String::from);
                }
            }
            let streams = match &broadcast {
                Some(b) => {
                    json!([{"stream": stream, "broadcast": b, "role": "primary", "next_seq": 7, "live": true}])
                }
                None => json!([]),
            };
            let body = json!({"load": {"streams": 1, "mbps": 2.5, "cpu": 0.1}, "streams": streams});
            if via.heartbeat(id, body).await.status == StatusCode::NOT_FOUND {
                let _ = via.register(id, id, place).await;
            }
        }
    })
}

/// Poll `f` until it is true or `WAIT` passes; then fail with `what`.
async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn all_see(dirs: Vec<&Dir>, want: &[&str]) -> bool {
    for d in dirs {
        if d.ids().await != want {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_directors_share_one_fleet_on_etcd() {
    let mut etcd = Etcd::start(1).await;
    let cfg = etcd_config(etcd.endpoints(), "/firstmile/test-shared");
    let (a, b, c) = (
        &Dir::new(cfg.clone()),
        &Dir::new(cfg.clone()),
        Dir::new(cfg.clone()),
    );
    let c_owned = c;
    let c = &c_owned;
    // A different fleet on the same etcd sees none of it.
    let other = Dir::new(etcd_config(etcd.endpoints(), "/firstmile/other"));

    // Registrations through different directors; heartbeats through yet others.
    assert_eq!(
        a.api.register("tyo-1", "tyo", "Tokyo").await.status,
        StatusCode::OK
    );
    assert_eq!(
        b.api.register("fra-1", "fra", "Frankfurt").await.status,
        StatusCode::OK
    );
    let c_api = c.api.clone();
    assert_eq!(
        c_api.register("syd-1", "syd", "Sydney").await.status,
        StatusCode::OK
    );
    let hb_tyo = entry_server("tyo-1", "Tokyo", b.api.clone(), "cam-tyo");
    let hb_fra = entry_server("fra-1", "Frankfurt", c_api.clone(), "cam-fra");
    let hb_syd = entry_server("syd-1", "Sydney", a.api.clone(), "cam-syd");
    until("every director sees three servers", move || {
        all_see(vec![a, b, c], &["fra-1", "syd-1", "tyo-1"])
    })
    .await;
    assert!(other.ids().await.is_empty(), "prefixes separate fleets");
    // Writes are counted where they are made: C registered syd-1; the fleet with no servers
    // wrote nothing.
    let written = c.etcd_writes().await;
    assert!(written >= 1, "C wrote syd-1's registration: {written}");
    assert_eq!(other.etcd_writes().await, 0);

    // Assignments agree, whichever director answers.
    for d in [a, b, c] {
        assert_eq!(d.assign_tokyo().await, (StatusCode::OK, "tyo-1".into()));
    }
    // Stream locations: any director answers for any stream, and for assignments made by others.
    until("stream reports reach every director", move || async move {
        for d in [a, b, c] {
            let r = d
                .api
                .req(Method::GET, "/v1/streams/cam-fra", None, &[], None)
                .await;
            if r.status != StatusCode::OK || r.json["ingest"][0]["server_id"] != "fra-1" {
                return false;
            }
        }
        true
    })
    .await;
    let r = a
        .api
        .assign(
            "203.0.113.9",
            json!({"stream": "cam-new", "location": "Sydney"}),
        )
        .await;
    assert_eq!(primary(&r), "syd-1", "{}", r.json);
    until(
        "an assignment made by A is known to B",
        move || async move {
            let r = b
                .api
                .req(Method::GET, "/v1/streams/cam-new", None, &[], None)
                .await;
            r.status == StatusCode::OK && r.json["ingest"][0]["server_id"] == "syd-1"
        },
    )
    .await;

    // Operator drain through one director applies everywhere.
    let r = b
        .api
        .admin(Method::POST, "/v1/admin/entry-servers/tyo-1/drain")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    until("the drain reaches A", move || async move {
        a.assign_tokyo().await.1 != "tyo-1"
    })
    .await;
    let r = a
        .api
        .admin(Method::POST, "/v1/admin/entry-servers/tyo-1/undrain")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    until("the undrain reaches C", move || async move {
        c.assign_tokyo().await.1 == "tyo-1"
    })
    .await;

    // Kill an entry server: every director drops it once its lease runs out.
    hb_syd.abort();
    let t0 = Instant::now();
    until("every director drops syd-1", move || {
        all_see(vec![a, b, c], &["fra-1", "tyo-1"])
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());

    // Stop etcd: assignments continue from the last snapshot, and the directors say degraded.
    etcd.members[0].stop();
    until("A reports degraded in /readyz", move || async move {
        let (s, j) = a.readyz().await;
        s == StatusCode::OK && j["status"] == "degraded" && j["registry"]["degraded"] == true
    })
    .await;
    assert!(a.degraded_metric().await, "metric registry_degraded is 1");
    for d in [a, b, c] {
        assert_eq!(d.assign_tokyo().await, (StatusCode::OK, "tyo-1".into()));
    }
    // Longer than a lease: nothing expires while etcd is away (no empty fleet).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for d in [a, b, c] {
        assert_eq!(d.ids().await, ["fra-1", "tyo-1"]);
        assert_eq!(d.assign_tokyo().await, (StatusCode::OK, "tyo-1".into()));
    }
    // A registration during the outage is kept and written when etcd returns.
    assert_eq!(
        b.api.register("par-1", "par", "Paris, FR").await.status,
        StatusCode::OK
    );
    let hb_par = entry_server("par-1", "Paris, FR", a.api.clone(), "cam-par");

    // Restart etcd: the directors catch up and converge.
    etcd.start_all().await;
    until(
        "everyone converges after etcd returns",
        move || async move {
            for d in [a, b, c] {
                if d.readyz().await.1["status"] != "ready" {
                    return false;
                }
            }
            all_see(vec![a, b, c], &["fra-1", "par-1", "tyo-1"]).await
        },
    )
    .await;
    assert!(!a.degraded_metric().await);

    // A director restarted mid-way rebuilds its view from etcd.
    hb_fra.abort();
    drop(c_owned);
    let hb_fra = entry_server("fra-1", "Frankfurt", a.api.clone(), "cam-fra");
    let c2 = &Dir::new(cfg.clone());
    until("a restarted director rebuilds its view", || {
        all_see(vec![c2], &["fra-1", "par-1", "tyo-1"])
    })
    .await;
    until("the restarted director is ready", || async {
        c2.readyz().await.1["status"] == "ready"
    })
    .await;
    let (s, j) = c2.readyz().await;
    assert_eq!(
        (s, j["status"].as_str()),
        (StatusCode::OK, Some("ready")),
        "{j}"
    );
    assert_eq!(c2.assign_tokyo().await, (StatusCode::OK, "tyo-1".into()));
    let r = c2
        .api
        .req(Method::GET, "/v1/streams/cam-par", None, &[], None)
        .await;
    assert_eq!(r.json["ingest"][0]["server_id"], "par-1", "{}", r.json);

    for t in [hb_tyo, hb_fra, hb_par] {
        t.abort();
    }
}

/// Issue 6: "a three-member etcd cluster where one member is stopped: nothing changes for
/// clients". The member stopped is the leader and every director's session is on it (the worst
/// case: a leader election and a failover at once). Regression test for the etcd client that
/// balanced over every endpoint and kept sending requests to the stopped member: writes and
/// lease renewals failed for seconds, a lease ran out and assignments answered 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_member_cluster_survives_one_member_stopping() {
    let mut etcd = Etcd::start(3).await;
    let leader = etcd.leader().await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let url = |i: usize| etcd.members[i].client_url();
    // Both start on the leader; then different orders for the rest.
    let config = |order: [usize; 3]| {
        let mut c = etcd_config(order.map(url).to_vec(), "/firstmile/test-cluster");
        // Leases of 2 s, shorter than production's 3 s.
        c.heartbeat.interval_ms = 500;
        c.heartbeat.missed_allowed = 4;
        c
    };
    let a = &Dir::new(config([leader, others[0], others[1]]));
    let b = &Dir::new(config([leader, others[1], others[0]]));
    assert_eq!(
        a.api.register("tyo-1", "tyo", "Tokyo").await.status,
        StatusCode::OK
    );
    assert_eq!(
        b.api.register("syd-1", "syd", "Sydney").await.status,
        StatusCode::OK
    );
    let hb_tyo = entry_server("tyo-1", "Tokyo", b.api.clone(), "cam-tyo");
    let hb_syd = entry_server("syd-1", "Sydney", a.api.clone(), "cam-syd");
    until(
        "both directors see both servers, ready",
        move || async move {
            all_see(vec![a, b], &["syd-1", "tyo-1"]).await
                && a.readyz().await.1["status"] == "ready"
                && b.readyz().await.1["status"] == "ready"
        },
    )
    .await;

    // Clients keep asking both directors, from before the stop until the end of the check.
    let done = AtomicBool::new(false);
    let clients = async {
        let (mut asked, mut wrong, mut degraded) = (0, Vec::new(), 0);
        while !done.load(Ordering::Acquire) {
            for (name, d) in [("A", a), ("B", b)] {
                let got = d.assign_tokyo().await;
                if got != (StatusCode::OK, "tyo-1".into()) {
                    wrong.push(format!("{name} assignment: {got:?}"));
                }
                let (s, j) = d.readyz().await;
                if s != StatusCode::OK {
                    wrong.push(format!("{name} /readyz: {s} {j}"));
                } else if j["status"] != "ready" {
                    degraded += 1;
                }
                let ids = d.ids().await;
                if !(ids.contains(&"tyo-1".into()) && ids.contains(&"syd-1".into())) {
                    wrong.push(format!("{name} lost a server: {ids:?}"));
                }
                asked += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (asked, wrong, degraded)
    };
    let failover = async {
        let t_stop = Instant::now();
        etcd.members[leader].stop();
        // Writes go through: a new server via B, its heartbeats via A, is seen by both.
        assert_eq!(
            b.api.register("fra-1", "fra", "Frankfurt").await.status,
            StatusCode::OK
        );
        let hb_fra = entry_server("fra-1", "Frankfurt", a.api.clone(), "cam-fra");
        until("both directors see fra-1", move || {
            all_see(vec![a, b], &["fra-1", "syd-1", "tyo-1"])
        })
        .await;
        until("both directors are ready", move || async move {
            a.readyz().await.1["status"] == "ready" && b.readyz().await.1["status"] == "ready"
        })
        .await;
        // Clients watch for longer than a lease after the stop: no lease runs out.
        tokio::time::sleep_until(t_stop + Duration::from_secs(3)).await;
        done.store(true, Ordering::Release);
        Some(hb_fra)
    };
    let ((asked, wrong, degraded), hb_fra) = tokio::join!(clients, failover);
    assert!(wrong.is_empty(), "clients saw a change: {wrong:#?}");
    assert!(asked > 20, "the clients asked {asked} times only");
    eprintln!("failover: {asked} rounds of client requests, {degraded} /readyz said degraded");

    // Leases still expire (now on the new leader): stop fra-1.
    hb_fra.expect("fra-1's heartbeats").abort();
    until("both drop fra-1", move || {
        all_see(vec![a, b], &["syd-1", "tyo-1"])
    })
    .await;
    hb_tyo.abort();
    hb_syd.abort();
}

/// A director whose watch falls behind a compaction reloads the whole view, and the view is then
/// what etcd holds: a compaction under a live watch changes nothing, one under a director that was
/// away (its member stopped, so it resumes from a compacted revision) makes it reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_watch_reloads_the_view() {
    let mut etcd = Etcd::start(3).await;
    let prefix = "/firstmile/test-compact";
    // A talks to m0 only (so it can be cut off); B to the others.
    let a = &Dir::new(etcd_config(vec![etcd.members[0].client_url()], prefix));
    let b = &Dir::new(etcd_config(
        vec![etcd.members[1].client_url(), etcd.members[2].client_url()],
        prefix,
    ));
    let mut admin = etcd_client::Client::connect(
        [etcd.members[1].client_url(), etcd.members[2].client_url()],
        None,
    )
    .await
    .expect("etcd client");
    let compact = async |c: &mut etcd_client::Client| {
        let rev = c
            .get("/", None)
            .await
            .expect("get")
            .header()
            .expect("header")
            .revision();
        c.compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .expect("compact");
    };
    assert_eq!(
        b.api.register("tyo-1", "tyo", "Tokyo").await.status,
        StatusCode::OK
    );
    assert_eq!(
        b.api.register("syd-1", "syd", "Sydney").await.status,
        StatusCode::OK
    );
    let hb_tyo = entry_server("tyo-1", "Tokyo", b.api.clone(), "cam-tyo");
    let hb_syd = entry_server("syd-1", "Sydney", b.api.clone(), "cam-syd");
    until("A sees both servers", move || {
        all_see(vec![a, b], &["syd-1", "tyo-1"])
    })
    .await;

    // Under a live watch: nothing changes.
    compact(&mut admin).await;
    assert_eq!(
        b.api.register("fra-1", "fra", "Frankfurt").await.status,
        StatusCode::OK
    );
    let hb_fra = entry_server("fra-1", "Frankfurt", b.api.clone(), "cam-fra");
    until("A sees fra-1 after a compaction", move || {
        all_see(vec![a], &["fra-1", "syd-1", "tyo-1"])
    })
    .await;

    // A is cut off; meanwhile a server goes, another comes, and history is compacted.
    etcd.members[0].stop();
    until("A is degraded", move || async move {
        a.readyz().await.1["status"] == "degraded"
    })
    .await;
    hb_syd.abort();
    assert_eq!(
        b.api.register("par-1", "par", "Paris, FR").await.status,
        StatusCode::OK
    );
    let hb_par = entry_server("par-1", "Paris, FR", b.api.clone(), "cam-par");
    until("B drops syd-1 (lease) and sees par-1", move || {
        all_see(vec![b], &["fra-1", "par-1", "tyo-1"])
    })
    .await;
    compact(&mut admin).await;
    assert_eq!(a.ids().await, ["fra-1", "syd-1", "tyo-1"], "A is away");

    // A comes back, finds its revision compacted, reloads.
    let cluster = etcd.cluster();
    etcd.members[0].start(&cluster);
    until("A reloads the view", move || async move {
        a.readyz().await.1["status"] == "ready"
            && all_see(vec![a, b], &["fra-1", "par-1", "tyo-1"]).await
    })
    .await;
    let r = a
        .api
        .req(Method::GET, "/v1/streams/cam-par", None, &[], None)
        .await;
    assert_eq!(r.json["ingest"][0]["server_id"], "par-1", "{}", r.json);
    for t in [hb_tyo, hb_fra, hb_par] {
        t.abort();
    }
}

/// Streams belong to their publishers whichever director answers: a claim made through one
/// director binds the key on every other, concurrent go-lives through two directors never make
/// two current broadcasts nor lose one, a restarted director keeps the key hash and history, and
/// changes made on both sides of an etcd outage converge on etcd's version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_ownership_and_broadcasts_are_shared_on_etcd() {
    let mut etcd = Etcd::start(1).await;
    let cfg = etcd_config(etcd.endpoints(), "/firstmile/test-owners");
    let a = Dir::new(cfg.clone());
    let b = &Dir::new(cfg.clone());
    for (id, place) in [("fra-1", "Frankfurt"), ("par-1", "Paris, FR")] {
        assert_eq!(a.api.register(id, id, place).await.status, StatusCode::OK);
    }
    let hb_fra = entry_server("fra-1", "Frankfurt", a.api.clone(), "cam-fra");
    let hb_par = entry_server("par-1", "Paris, FR", b.api.clone(), "cam-par");
    {
        let a = &a;
        until("both directors see both servers", move || {
            all_see(vec![a, b], &["fra-1", "par-1"])
        })
        .await;
    }

    // Claimed through A (open mode: the first publisher's key owns the id) ...
    let key = key_of("show");
    let r = key_publish(&a.api, "fra-1", "show", &key).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["new_broadcast"], true, "{}", r.json);
    let first = r.json["broadcast"].as_str().expect("broadcast").to_string();
    // ... bound on B: another key is refused, the owner's joins the same broadcast.
    let r = key_publish(&b.api, "par-1", "show", "someone-elses-key-42").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    let r = key_publish(&b.api, "par-1", "show", &key).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(
        (r.json["broadcast"].as_str(), r.json["role"].as_str()),
        (Some(first.as_str()), Some("backup")),
        "{}",
        r.json
    );

    // Go-lives through both directors at once: each starts a broadcast, none is lost.
    const ROUNDS: usize = 12;
    let go_live = async |d: &Dir| {
        let mut ids = Vec::new();
        for _ in 0..ROUNDS {
            let r = d
                .api
                .assign(
                    "203.0.113.9",
                    json!({"stream": "show", "key": key, "location": "Paris, FR"}),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.json);
            assert_eq!(r.json["new_broadcast"], true, "{}", r.json);
            ids.push(r.json["broadcast"].as_str().expect("broadcast").to_string());
        }
        ids
    };
    let (ids_a, ids_b) = tokio::join!(go_live(&a), go_live(b));
    let mut all: Vec<String> = ids_a.iter().chain(&ids_b).cloned().collect();
    all.push(first.clone());
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "every go-live got its own broadcast id");
    let record = async |d: &Dir| {
        d.api
            .admin(Method::GET, "/v1/admin/streams/show")
            .await
            .json
    };
    {
        let (a, record) = (&a, &record);
        until(
            "both directors hold the same document",
            move || async move { record(a).await == record(b).await },
        )
        .await;
    }
    let rec = record(b).await;
    assert_eq!(
        rec["broadcasts"].as_u64(),
        Some(1 + 2 * ROUNDS as u64),
        "every broadcast started is counted once: {rec}"
    );
    let current = rec["current"]["id"].as_str().expect("current").to_string();
    assert!(
        ids_a.last() == Some(&current) || ids_b.last() == Some(&current),
        "the current broadcast is the last one started by A or B: {current}"
    );
    let history = b
        .api
        .req(Method::GET, "/v1/streams/show/broadcasts", None, &[], None)
        .await
        .json;

    // A restarted director loads the documents: the key hash and history are still there.
    drop(a);
    let a = &Dir::new(cfg.clone());
    until("the restarted director is ready", || async {
        a.readyz().await.1["status"] == "ready"
    })
    .await;
    let r = key_publish(&a.api, "fra-1", "show", "someone-elses-key-42").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    let again = a
        .api
        .req(Method::GET, "/v1/streams/show/broadcasts", None, &[], None)
        .await
        .json;
    assert_eq!(again, history);

    // etcd away: both directors start a broadcast of the same stream from their copies.
    etcd.members[0].stop();
    until("both degraded", move || async move {
        a.readyz().await.1["status"] == "degraded" && b.readyz().await.1["status"] == "degraded"
    })
    .await;
    let mut during = Vec::new();
    for d in [a, b] {
        let r = d
            .api
            .assign("203.0.113.9", json!({"stream": "show", "key": key}))
            .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "answered from the copy: {}",
            r.json
        );
        during.push(r.json["broadcast"].as_str().expect("broadcast").to_string());
    }
    assert_ne!(during[0], during[1]);
    // etcd returns: one change is written, the other conflicts; both end up with etcd's.
    etcd.start_all().await;
    until(
        "the directors converge on one current broadcast",
        || async {
            let (ra, rb) = (record(a).await, record(b).await);
            ra == rb && during.iter().any(|d| ra["current"]["id"] == d.as_str())
        },
    )
    .await;
    let conflicts = async |d: &Dir| {
        let m = d.api.app.clone().oneshot_text("/metrics").await;
        m.lines()
            .find_map(|l| l.strip_prefix("firstmile_director_stream_conflicts_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no stream conflict counter in {m}"))
    };
    assert_eq!(
        conflicts(a).await + conflicts(b).await,
        1,
        "one of the two changes lost to the other"
    );
    hb_fra.abort();
    hb_par.abort();
}

/// Lease renewals are never starved by other writes (issue "running for months": one sequential
/// writer served every write and dropped heartbeats when its queue was full, and leases last a
/// few seconds). Eight entry servers heartbeat through director A with 1 s leases while A is
/// flooded with other etcd writes: drains and undrains of another server (the registry's writer)
/// and new streams (the stream store's compare-and-swaps) as fast as it answers. No heartbeat is
/// answered 404 (a lease that ran out), neither A nor a director that only watches (B) ever
/// misses a server, and `/readyz` never says renewals are late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_flood_never_starves_lease_renewals() {
    const IDS: [&str; 8] = [
        "fl-1", "fl-2", "fl-3", "fl-4", "fl-5", "fl-6", "fl-7", "fl-8",
    ];
    const PLACES: [&str; 4] = ["Tokyo", "Sydney", "Frankfurt", "Paris, FR"];
    let etcd = Etcd::start(1).await;
    let cfg = etcd_config(etcd.endpoints(), "/firstmile/test-flood");
    let a = &Dir::new(cfg.clone());
    let b = &Dir::new(cfg);
    for (i, id) in IDS.iter().enumerate() {
        let r = a.api.register(id, id, PLACES[i % PLACES.len()]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    }
    let r = a.api.register("churn-1", "churn", "Tokyo").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let hb_churn = entry_server("churn-1", "Tokyo", a.api.clone(), "cam-churn");
    let mut want: Vec<&str> = IDS.to_vec();
    want.push("churn-1");
    want.sort();
    let want = &want;
    until(
        "both directors see the servers, ready",
        move || async move {
            all_see(vec![a, b], want).await
                && a.readyz().await.1["status"] == "ready"
                && b.readyz().await.1["status"] == "ready"
        },
    )
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let lost = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    // Entry servers: heartbeats every 200 ms (leases of 1 s); a 404 means the lease ran out.
    let beats: Vec<JoinHandle<()>> = IDS
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (via, stop, lost) = (a.api.clone(), stop.clone(), lost.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                while !stop.load(Ordering::Acquire) {
                    tick.tick().await;
                    let body =
                        json!({"load": {"streams": 0, "mbps": 0.0, "cpu": 0.1}, "streams": []});
                    let r = via.heartbeat(id, body).await;
                    if r.status != StatusCode::OK {
                        lost.lock()
                            .unwrap()
                            .push(format!("{id}: heartbeat {}", r.status));
                        if r.status == StatusCode::NOT_FOUND {
                            let _ = via.register(id, id, PLACES[i % PLACES.len()]).await;
                        }
                    }
                }
            })
        })
        .collect();
    // The flood: drains and undrains, and new streams, as fast as A answers.
    let flood: Vec<JoinHandle<u64>> = (0..4u32)
        .map(|w| {
            let (via, stop) = (a.api.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Acquire) {
                    let r = if w.is_multiple_of(2) {
                        let what = if n.is_multiple_of(2) {
                            "drain"
                        } else {
                            "undrain"
                        };
                        via.admin(
                            Method::POST,
                            &format!("/v1/admin/entry-servers/churn-1/{what}"),
                        )
                        .await
                    } else {
                        via.assign(
                            "203.0.113.9",
                            json!({"stream": format!("flood-{w}-{n}"), "location": "Tokyo"}),
                        )
                        .await
                    };
                    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
                    n += 1;
                    // An in-process request never waits: let the other tasks run, as a
                    // network would.
                    tokio::task::yield_now().await;
                }
                n
            })
        })
        .collect();
    // Watch both views for five lease lifetimes.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        for (name, d) in [("A", a), ("B", b)] {
            let ids = d.ids().await;
            if ids != *want {
                lost.lock().unwrap().push(format!("{name} saw {ids:?}"));
            }
        }
        let (_, j) = a.readyz().await;
        if j["status"] != "ready" {
            lost.lock().unwrap().push(format!("A /readyz: {j}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Release);
    let mut writes = 0;
    for t in flood {
        writes += t.await.expect("flood client");
    }
    for t in beats {
        t.await.expect("entry server");
    }
    hb_churn.abort();
    let lost = lost.lock().unwrap().clone();
    assert!(lost.is_empty(), "leases ran out under the flood: {lost:#?}");
    assert!(
        writes >= 500,
        "the flood made {writes} writes only: not a flood"
    );
    eprintln!("flood: {writes} drains, undrains and new streams in 5 s");
}

#[test]
fn etcd_config_is_validated_and_the_example_loads() {
    let text = include_str!("../../../../examples/director-etcd.toml");
    let c = DirectorConfig::load(Some(text), Vec::new(), &[]).unwrap();
    assert_eq!(c.registry.backend, RegistryBackend::Etcd);
    assert_eq!(c.registry.etcd.endpoints.len(), 3);
    // Secrets from the environment, redacted when printed.
    let env = vec![(
        "FIRSTMILE_DIRECTOR_REGISTRY__ETCD__PASSWORD".to_string(),
        "hunter2-etcd".to_string(),
    )];
    let user = ["registry.etcd.username=firstmile".to_string()];
    let c = DirectorConfig::load(Some(text), env, &user).unwrap();
    assert_eq!(c.registry.etcd.password.as_deref(), Some("hunter2-etcd"));
    assert!(!c.to_redacted_toml().contains("hunter2-etcd"));
    // Each mistake names its key.
    for (set, key) in [
        ("registry.etcd.endpoints=[]", "registry.etcd.endpoints"),
        (
            "registry.etcd.endpoints=[\"127.0.0.1:2379\"]",
            "registry.etcd.endpoints",
        ),
        (
            "registry.etcd.prefix=\"firstmile/\"",
            "registry.etcd.prefix",
        ),
        (
            "registry.etcd.load_write_interval_ms=0",
            "registry.etcd.load_write_interval_ms",
        ),
        ("registry.backend=\"zookeeper\"", "registry.backend"),
        ("registry.etcd.username=firstmile", "registry.etcd.username"),
    ] {
        let e = DirectorConfig::load(Some(text), Vec::new(), &[set.to_string()])
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{set}: {e}");
    }
    // The memory backend ignores the etcd section.
    assert_eq!(config().registry.backend, RegistryBackend::Memory);
}
