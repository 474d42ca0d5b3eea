//! `firstmile up`: the whole network on one machine, on embedded defaults.
//!
//! A director runs in this process; each entry server is a child `firstmile entry` process on its
//! own loopback address (127.0.0.2, 127.0.0.3, …), placed in a world city and its own POP, so a
//! user can `kill -9` one mid-stream and watch the stream survive. Nothing external is needed:
//! the signing key and secrets are generated, the data lives in a temporary directory (removed on
//! exit unless `--data-dir` is given).
//!
//! `firstmile up --wan FILE` runs the same network in a wide-area test bed (`crates/wanbed`,
//! needs root): every host of FILE is a network namespace, each pair of hosts has the RTT, loss
//! and bottleneck FILE gives it, and TCP stays end to end. The director listens inside the host
//! whose role is `director` (it runs in this process, its socket in that namespace); each host
//! whose role is `entry` runs one `firstmile entry` child inside it, id = the host's name, POP =
//! the name up to its first `-`, location = its `city`, advertising its bed address. Hosts with
//! role `client` are where devices and viewers run (`ip netns exec PREFIX-HOST firstmile …`);
//! the director places each by IP in its `city`.

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
    /// Run in a wide-area test bed described by FILE (hosts with roles and cities, an RTT, loss
    /// and rate per path; e.g. crates/wanbed/beds/steering.toml). Needs root.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["servers", "client_site"])]
    pub wan: Option<PathBuf>,
}

struct Server {
    id: String,
    place: String,
    child: Child,
    native: String,
    http: String,
    args: Vec<String>,
    /// What runs the command again by hand: empty, or `ip netns exec NS` in a bed.
    launcher: String,
    /// Its own credential toward the director.
    credential: String,
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

/// Entry server `id`'s own credential under the director's entry key.
fn entry_credential(entry_key: &str, id: &str) -> String {
    match id.parse() {
        Ok(id) => token::entry_credential(entry_key, &id),
        Err(_) => String::new(),
    }
}

/// Start one child entry server (`cmd` runs the firstmile executable) and wait for its ready
/// line.
fn spawn_entry(
    mut cmd: Command,
    args: &[String],
    credential: &str,
    log: &Path,
) -> Result<(Child, String, String), Failure> {
    let log_file = std::fs::File::create(log)
        .with_context(|| format!("cannot create {}", log.display()))
        .map_err(Failure::other)?;
    let mut child = cmd
        .args(args)
        .env("FIRSTMILE_ENTRY_CREDENTIAL", credential)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))
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

/// Where data and logs go: `--data-dir`, or a temporary directory removed when the guard drops.
fn data_dir(a: &UpArgs) -> Result<(PathBuf, Option<tempfile::TempDir>), Failure> {
    Ok(match &a.data_dir {
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
    })
}

pub fn run(a: UpArgs) -> Result<(), Failure> {
    init_tracing("warn", false);
    if let Some(file) = a.wan.clone() {
        return run_wan(a, &file);
    }
    let exe = std::env::current_exe()
        .context("cannot find the firstmile executable")
        .map_err(Failure::other)?;
    let (dir, _tmp) = data_dir(&a)?;
    let key = token::SigningKey::generate(&mut rand::rng());
    let public_pem = key.public_key().to_pem();
    let cluster = secret();
    let mut config = director::DirectorConfig {
        listen: ([127, 0, 0, 1], a.port).into(),
        default_place: "Frankfurt am Main, DE".into(),
        ..Default::default()
    };
    config.auth.entry_key = cluster.clone();
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
            let credential = entry_credential(&cluster, id);
            let cred2 = credential.clone();
            let args2 = args.clone();
            let (child, native, http) = tokio::task::spawn_blocking(move || {
                spawn_entry(Command::new(&exe2), &args2, &cred2, &log)
            })
            .await
            .map_err(Failure::other)??;
            servers.push(Server {
                id: id.to_string(),
                place: place.to_string(),
                child,
                native,
                http,
                args,
                launcher: String::new(),
                credential,
            });
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
        println!("dashboard {url}/#token={admin_token}   (the live map; the token stays in the tab)");
        println!();
        println!("Clients on this machine are located by IP in {} (the backup is scored from there).", a.client_site);
        println!("Try, in another terminal:");
        println!("  firstmile assign --director {url} --location \"Paris, FR\"");
        println!("  ffmpeg -re -f lavfi -i testsrc2=size=640x360:rate=25 -c:v libx264 -g 50 -f mpegts - \\");
        println!("    | firstmile push --director {url} --location \"Paris, FR\" --stream demo -");
        println!("  # the first push of a new stream id prints its key (\"stream key: ...\"); go live again");
        println!("  # with it: --key KEY or FIRSTMILE_STREAM_KEY=KEY");
        println!("  firstmile play --director {url} --location \"New York\" demo | ffplay -");
        // A node that is neither the primary nor the backup of a push from Paris: it relays.
        if let Some(s) = servers.iter().find(|s| s.id.starts_with("nyc")).or(servers.last()) {
            println!("  # or in a browser (LL-HLS, from {}): {}/watch/demo", s.id, s.http);
        }
        println!("  kill -9 <pid of the primary above>   # the viewer (New York node) keeps playing");
        println!("Ctrl-C stops everything.");

        supervise(servers, &exe).await;
        let _ = stop_tx.send(());
        let _ = director_task.await;
        Ok::<(), Failure>(())
    })
}

/// Report servers that exit (a user killed one) until asked to stop; then stop them all
/// (SIGTERM: they drain) and wait for them.
async fn supervise(mut servers: Vec<Server>, exe: &Path) {
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
                            "  FIRSTMILE_ENTRY_CREDENTIAL={} {}{} {}",
                            s.credential,
                            s.launcher,
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
}

/// `firstmile up --wan FILE`: the network inside a wide-area test bed.
fn run_wan(a: UpArgs, file: &Path) -> Result<(), Failure> {
    use wanbed::{BedError, Role};
    let spec = wanbed::Spec::from_file(file).map_err(Failure::usage)?;
    let hosts = spec.hosts().to_vec();
    let directors: Vec<_> = hosts.iter().filter(|h| h.role == Role::Director).collect();
    let [director_host] = directors.as_slice() else {
        return Err(Failure::usage(anyhow::anyhow!(
            "{}: give exactly one host role = \"director\" (found {})",
            file.display(),
            directors.len()
        )));
    };
    let entries: Vec<_> = hosts.iter().filter(|h| h.role == Role::Entry).collect();
    if entries.is_empty() {
        return Err(Failure::usage(anyhow::anyhow!(
            "{}: give at least one host role = \"entry\"",
            file.display()
        )));
    }
    if let Some(h) = entries.iter().find(|h| h.city.is_none()) {
        return Err(Failure::usage(anyhow::anyhow!(
            "{}: entry host {:?} needs a city (where the server is, as a user would type it)",
            file.display(),
            h.name
        )));
    }
    let exe = std::env::current_exe()
        .context("cannot find the firstmile executable")
        .map_err(Failure::other)?;
    let (dir, _tmp) = data_dir(&a)?;
    let key = token::SigningKey::generate(&mut rand::rng());
    let public_pem = key.public_key().to_pem();
    let cluster = secret();
    let mut config = director::DirectorConfig {
        listen: (director_host.address, a.port).into(),
        default_place: director_host
            .city
            .clone()
            .unwrap_or_else(|| "Frankfurt am Main, DE".into()),
        ..Default::default()
    };
    config.auth.entry_key = cluster.clone();
    config.auth.admin_token = secret();
    config.publish.mode = director::config::PublishMode::Open;
    // Every host with a city is placed there by its address (clients are what matters).
    for h in hosts.iter().filter(|h| h.city.is_some()) {
        config.sites.insert(
            ipnet::Ipv4Net::from(h.address).into(),
            h.city.clone().unwrap_or_default(),
        );
    }
    let d = director::Director::new(config.clone(), key, geo::ip::IpLocator::new())
        .map_err(Failure::usage)?;

    let bed = wanbed::Bed::up(spec).map_err(|e| match e {
        BedError::Unavailable(_) => Failure::unavailable(e),
        _ => Failure::other(e),
    })?;
    let listener = bed
        .enter(&director_host.name, || {
            let l = std::net::TcpListener::bind(config.listen)?;
            l.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(l)
        })
        .map_err(Failure::other)?
        .with_context(|| format!("cannot listen on {} in the bed", config.listen))
        .map_err(Failure::usage)?;

    let rt = runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(Failure::other)?;
        let url = format!("http://{}", listener.local_addr().map_err(Failure::other)?);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let director_task = tokio::spawn(director::run(d, listener, async move {
            let _ = stop_rx.await;
        }));

        let mut servers = Vec::new();
        for h in &entries {
            let host = h.address.to_string();
            let pop = h.name.split('-').next().unwrap_or(&h.name).to_string();
            let place = h.city.clone().unwrap_or_default();
            let args: Vec<String> = [
                "entry", "--id", &h.name, "--pop", &pop, "--location", &place,
                "--director", &url,
                "--native-listen", &format!("{host}:0"), "--http-listen", &format!("{host}:0"),
                "--rtmp-listen", &format!("{host}:0"),
                "--set", &format!("advertise={host}"),
                "--data-dir", &dir.join(&h.name).display().to_string(),
                "--token-public-key", &public_pem, "--fsync", "interval:20",
                "--set", "threads=1",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let log = dir.join(format!("{}.log", h.name));
            let cmd = bed.command(&h.name, &exe).map_err(Failure::other)?;
            let credential = entry_credential(&cluster, &h.name);
            let cred2 = credential.clone();
            let args2 = args.clone();
            let (child, native, http) =
                tokio::task::spawn_blocking(move || spawn_entry(cmd, &args2, &cred2, &log))
                    .await
                    .map_err(Failure::other)??;
            let launcher = format!("ip netns exec {} ", bed.netns(&h.name).map_err(Failure::other)?);
            servers.push(Server { id: h.name.clone(), place, child, native, http, args, launcher, credential });
        }

        println!(
            "firstmile is up in the wide-area bed {}: a director and {} entry servers, each in its own host",
            file.display(),
            servers.len()
        );
        println!("director  {url}  (host {})", director_host.name);
        for s in &servers {
            println!(
                "entry     {:<8} {:<24} native {:<22} http {:<22} pid {}",
                s.id, s.place, s.native, s.http, s.child.id()
            );
        }
        println!("data and logs: {}", dir.display());
        let s = bed.spec();
        for (i, h) in s.hosts().iter().enumerate() {
            let paths: Vec<String> = entries
                .iter()
                .filter(|e| e.name != h.name)
                .filter_map(|e| s.index(&e.name).map(|j| format!("{} {} ms", e.name, s.rtt_ms(i, j))))
                .collect();
            if h.role == Role::Client {
                println!(
                    "client    {:<8} {:<15} {:<24} RTT to {}",
                    h.name,
                    h.address,
                    h.city.as_deref().unwrap_or("-"),
                    paths.join(", ")
                );
            }
        }
        println!();
        println!("Run devices and viewers inside a client host, e.g.:");
        if let Some((i, c)) = s.hosts().iter().enumerate().find(|(_, h)| h.role == Role::Client) {
            let ns = s.netns(i);
            let place = c.city.as_deref().unwrap_or("Paris, FR");
            println!("  ip netns exec {ns} {} assign --director {url} --location \"{place}\"", exe.display());
            println!("  ffmpeg -re -f lavfi -i testsrc2=size=640x360:rate=25 -c:v libx264 -g 50 -f mpegts - \\");
            println!("    | ip netns exec {ns} {} push --director {url} --location \"{place}\" --stream demo -", exe.display());
        }
        println!("Ctrl-C stops everything and removes the bed.");

        supervise(servers, &exe).await;
        let _ = stop_tx.send(());
        let _ = director_task.await;
        Ok::<(), Failure>(())
    })?;
    drop(rt);
    bed.down().map(drop).map_err(Failure::other)
}
