//! `firstmile up`: the whole network on one machine, on embedded defaults.
//!
//! A director runs in this process; each entry server is a child `firstmile entry` process on its
//! own loopback address (127.0.0.2, 127.0.0.3, …), placed in a world city and its own POP, so a
//! user can `kill -9` one mid-stream and watch the stream survive. Nothing external is needed:
//! the signing key and secrets are generated, the data lives in a temporary directory (removed on
//! exit unless `--data-dir` is given).

use crate::Failure;
use crate::cmd::serve::{init_tracing, runtime, terminated};
use anyhow::Context;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where the local entry servers are placed: (id, pop, place).
pub const SITES: [(&str, &str, &str); 6] = [
    ("fra-1", "fra", "Frankfurt am Main, DE"),
    ("lon-1", "lon", "London, GB"),
    ("nyc-1", "nyc", "New York City, US"),
    ("sao-1", "sao", "São Paulo, BR"),
    ("tyo-1", "tyo", "Tokyo, JP"),
    ("syd-1", "syd", "Sydney, AU"),
];

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Director port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// How many entry servers (1 to 6).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u8).range(1..=6))]
    pub servers: u8,
    /// Where clients on this machine (127.0.0.1) are located by IP, so the backup is chosen
    /// from there while the primary follows the typed location.
    #[arg(long, default_value = "London, GB", allow_hyphen_values = true)]
    pub client_site: String,
    /// Keep data and logs here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

struct Server {
    id: &'static str,
    place: &'static str,
    child: Child,
    native: String,
    http: String,
    args: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    hex(&b)
}

/// Start one child entry server and wait for its ready line.
fn spawn_entry(
    exe: &Path,
    args: &[String],
    cluster_secret: &str,
    log: &Path,
) -> Result<(Child, String, String), Failure> {
    let log_file = std::fs::File::create(log)
        .with_context(|| format!("cannot create {}", log.display()))
        .map_err(Failure::other)?;
    let mut child = Command::new(exe)
        .args(args)
        .env("FIRSTMILE_ENTRY_CLUSTER_SECRET", cluster_secret)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))
        .map_err(Failure::other)?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Failure::other(anyhow::anyhow!("no stdout")))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let line = match rx.recv_timeout(Duration::from_secs(15)) {
        Ok(Some(Ok(l))) => l,
        _ => {
            let _ = child.kill();
            return Err(Failure::other(anyhow::anyhow!(
                "entry server did not start; see {}",
                log.display()
            )));
        }
    };
    // "entry ID native tcp://A http http://B"
    let f: Vec<&str> = line.split_whitespace().collect();
    match f.as_slice() {
        ["entry", _, "native", n, "http", h, ..] => Ok((child, n.to_string(), h.to_string())),
        _ => {
            let _ = child.kill();
            Err(Failure::other(anyhow::anyhow!(
                "unexpected ready line {line:?}"
            )))
        }
    }
}

pub fn run(a: UpArgs) -> Result<(), Failure> {
    init_tracing("warn", false);
    let exe = std::env::current_exe()
        .context("cannot find the firstmile executable")
        .map_err(Failure::other)?;
    let (dir, _tmp) = match &a.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("cannot create {}", d.display()))
                .map_err(Failure::usage)?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("firstmile-up-")
                .tempdir()
                .context("cannot create a temporary directory")
                .map_err(Failure::other)?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let key = token::SigningKey::generate(&mut rand::rng());
    let public_pem = key.public_key().to_pem();
    let cluster = secret();
    let mut config = director::DirectorConfig {
        listen: ([127, 0, 0, 1], a.port).into(),
        default_place: "Frankfurt am Main, DE".into(),
        ..Default::default()
    };
    config.auth.cluster_token = cluster.clone();
    config.auth.admin_token = secret();
    // A demo network: the first publisher of a new stream id gets its key and owns the id.
    config.publish.mode = director::config::PublishMode::Open;
    let admin_token = config.auth.admin_token.clone();
    config.sites.insert(
        "127.0.0.1/32".parse().map_err(Failure::other)?,
        a.client_site.clone(),
    );
    let d = director::Director::new(config.clone(), key, geo::ip::IpLocator::new())
        .map_err(Failure::usage)?;

    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))
            .map_err(Failure::usage)?;
        let url = format!("http://{}", listener.local_addr().map_err(Failure::other)?);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let director_task = tokio::spawn(director::run(d, listener, async move {
            let _ = stop_rx.await;
        }));

        let mut servers = Vec::new();
        for (i, (id, pop, place)) in SITES.iter().take(a.servers.into()).enumerate() {
            let host = format!("127.0.0.{}", i + 2);
            let args: Vec<String> = [
                "entry", "--id", id, "--pop", pop, "--location", place, "--director", &url,
                "--native-listen", &format!("{host}:0"), "--http-listen", &format!("{host}:0"),
                "--rtmp-listen", &format!("{host}:0"),
                "--data-dir", &dir.join(id).display().to_string(),
                "--token-public-key", &public_pem, "--fsync", "interval:20",
                // Six servers and a director share this machine's cores: one worker each.
                "--set", "threads=1",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let log = dir.join(format!("{id}.log"));
            let exe2 = exe.clone();
            let cluster2 = cluster.clone();
            let args2 = args.clone();
            let (child, native, http) =
                tokio::task::spawn_blocking(move || spawn_entry(&exe2, &args2, &cluster2, &log))
                    .await
                    .map_err(Failure::other)??;
            servers.push(Server { id, place, child, native, http, args });
        }

        println!("firstmile is up: a director and {} entry servers on this machine", servers.len());
        println!("director  {url}");
        for s in &servers {
            println!(
                "entry     {:<6} {:<24} native {:<22} http {:<22} pid {}",
                s.id, s.place, s.native, s.http, s.child.id()
            );
        }
        println!("data and logs: {}", dir.display());
        println!("admin token (Authorization: Bearer, /v1/admin/...): {admin_token}");
        println!();
        println!("Clients on this machine are located by IP in {} (the backup is scored from there).", a.client_site);
        println!("Try, in another terminal:");
        println!("  firstmile assign --director {url} --location \"Paris, FR\"");
        println!("  ffmpeg -re -f lavfi -i testsrc2=size=640x360:rate=25 -c:v libx264 -g 50 -f mpegts - \\");
        println!("    | firstmile push --director {url} --location \"Paris, FR\" --stream demo -");
        println!("  # the first push of a new stream id prints its key (\"stream key: ...\"); go live again");
        println!("  # with it: --key KEY or FIRSTMILE_STREAM_KEY=KEY");
        println!("  firstmile play --director {url} --location \"New York\" demo | ffplay -");
        println!("  kill -9 <pid of the primary above>   # the viewer (New York node) keeps playing");
        println!("Ctrl-C stops everything.");

        // Report servers that exit (a user killed one) until asked to stop.
        let mut term = Box::pin(terminated());
        loop {
            tokio::select! {
                _ = &mut term => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    servers.retain_mut(|s| match s.child.try_wait() {
                        Ok(Some(status)) => {
                            let args: Vec<String> = s
                                .args
                                .iter()
                                .map(|a| if a.contains([' ', '\n']) { format!("'{a}'") } else { a.clone() })
                                .collect();
                            println!("entry {} exited ({status}); to start it again:", s.id);
                            println!(
                                "  FIRSTMILE_ENTRY_CLUSTER_SECRET={cluster} {} {}",
                                exe.display(),
                                args.join(" ")
                            );
                            false
                        }
                        _ => true,
                    });
                }
            }
        }
        println!("stopping");
        for s in &servers {
            // SIGTERM: drain gracefully.
            let _ = Command::new("kill").arg(s.child.id().to_string()).status();
        }
        for mut s in servers {
            let _ = tokio::task::spawn_blocking(move || s.child.wait()).await;
        }
        let _ = stop_tx.send(());
        let _ = director_task.await;
        Ok::<(), Failure>(())
    })
}
