//! Test support (dev-only): a director and entry servers for integration tests.
//!
//! **What.** [`TestDirector`] and [`TestEntry`] run the real services, each on a runtime of its
//! own (so an entry server can be *killed*: its runtime dropped, every socket closed at once,
//! nothing drained), on listeners bound before anything spawns (`127.0.0.1:0`, or another
//! `127.0.0.x` to play several hosts: the address is known at once, no fixed port, no sleeping
//! for start-up). When a handle is dropped or [`joined`](TestEntry::join), a service task that
//! panicked has its panic **re-raised** in the test, so a crash inside a server fails the test
//! that caused it instead of showing up as a hang or a confusing error elsewhere.
//!
//! Conventions the crates' tests share: the signing key is [`key`] (seed `[7; 32]`), the
//! director's entry key [`ENTRY_KEY`] (each entry server gets its own [`credential`]), the admin
//! token [`ADMIN`]; [`peer_token`] is what another entry server of the fleet would present.
//!
//! **What not.** No fakes: these are the services themselves. No assertions about behaviour:
//! that is each test's job.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

/// The entry key of test directors (entry servers' credentials derive from it).
pub const ENTRY_KEY: &str = "test-entry-key-0123456789abcdefghijkl";

/// Entry server `id`'s own credential under [`ENTRY_KEY`].
pub fn credential(id: &str) -> String {
    token::entry_credential(ENTRY_KEY, &id.parse().expect("a valid server id"))
}

/// A peer token for a fictitious entry server of the test fleet (signed with [`key`]): what one
/// entry server presents to another.
pub fn peer_token() -> String {
    key().sign_peer(&token::PeerClaims {
        scp: token::Scope::Peer,
        server: "test-peer".parse().expect("literal"),
        iat: 0,
        exp: u64::MAX / 2,
    })
}
/// The admin token of test directors.
pub const ADMIN: &str = "admin";

/// The signing key of test directors (entry servers get its public half).
pub fn key() -> token::SigningKey {
    token::SigningKey::from_bytes(&[7u8; 32])
}

/// A listener bound now (its address known), to hand to a runtime.
pub fn bind(addr: &str) -> std::net::TcpListener {
    let l = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    l.set_nonblocking(true).expect("non-blocking listener");
    l
}

/// A service task on a runtime of its own.
#[derive(Debug)]
pub struct Spawned {
    rt: Option<tokio::runtime::Runtime>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Spawned {
    /// Run `f` (given after the runtime exists, so it may use tokio listeners) on a one-worker
    /// runtime.
    pub fn run<F, Fut>(f: F) -> Self
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let task = {
            let _g = rt.enter();
            tokio::spawn(f())
        };
        Self {
            rt: Some(rt),
            task: Some(task),
        }
    }

    /// Abrupt death: the runtime and every socket go away at once. A panic that already
    /// happened is re-raised.
    pub fn kill(&mut self) {
        self.reraise();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        self.task = None;
    }

    /// Re-raise the task's panic, if it panicked (not when the test itself is panicking).
    fn reraise(&mut self) {
        let finished = self.task.as_ref().is_some_and(|t| t.is_finished());
        if !finished || std::thread::panicking() {
            return;
        }
        let (Some(rt), Some(task)) = (self.rt.as_ref(), self.task.take()) else {
            return;
        };
        if let Err(e) = rt.block_on(task)
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    /// Wait for the task to end (it must end by itself: a shutdown future that resolved) and
    /// re-raise its panic; returns what it returned.
    pub fn join(mut self) -> std::io::Result<()> {
        let (Some(rt), Some(task)) = (self.rt.take(), self.task.take()) else {
            return Ok(());
        };
        let r = rt.block_on(task);
        rt.shutdown_background();
        match r {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A director serving on a loopback port.
#[derive(Debug)]
pub struct TestDirector {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub addr: SocketAddr,
    /// The director itself (for calls without HTTP).
    pub director: director::Director,
    pub spawned: Spawned,
}

/// A director configuration for tests: the test secrets, generous rate limits, 100 ms
/// heartbeats, the `open` publish mode (the first request for a stream creates it).
pub fn director_config() -> director::DirectorConfig {
    let mut cfg = director::DirectorConfig::default();
    cfg.auth.entry_key = ENTRY_KEY.into();
    cfg.auth.admin_token = ADMIN.into();
    cfg.heartbeat.interval_ms = 100;
    cfg.http.rate_limit.per_second = 10_000.0;
    cfg.http.rate_limit.burst = 10_000;
    cfg.publish.mode = director::config::PublishMode::Open;
    cfg
}

impl TestDirector {
    /// A director with `cfg` and [`key`], no IP database, on 127.0.0.1:0.
    pub fn start(cfg: director::DirectorConfig) -> Self {
        let d = director::Director::new(cfg, key(), geo::ip::IpLocator::new())
            .expect("a valid test configuration");
        let listener = bind("127.0.0.1:0");
        let addr = listener.local_addr().expect("bound");
        let d2 = d.clone();
        let spawned = Spawned::run(move || async move {
            let l = tokio::net::TcpListener::from_std(listener)?;
            director::run(d2, l, std::future::pending()).await
        });
        Self {
            url: format!("http://{addr}"),
            addr,
            director: d,
            spawned,
        }
    }
}

/// An entry server on one loopback host (native, HTTP and RTMP listeners on port 0).
#[derive(Debug)]
pub struct TestEntry {
    pub native: SocketAddr,
    pub http: SocketAddr,
    pub rtmp: SocketAddr,
    pub cfg: entry::EntryConfig,
    pub spawned: Spawned,
}

/// An entry server's configuration for tests: `id` in `pop` at `place`, its data in
/// `dir/<id>`, registered with `director` (if any) with the test secrets.
pub fn entry_config(
    id: &str,
    pop: &str,
    place: &str,
    dir: &Path,
    director: Option<&TestDirector>,
) -> entry::EntryConfig {
    entry::EntryConfig {
        id: id.into(),
        pop: pop.into(),
        location: place.into(),
        director: director.map(|d| d.url.clone()),
        credential: credential(id),
        token_public_key: key().public_key().to_pem(),
        data_dir: dir.join(id),
        relay_give_up_ms: 3000,
        // Tests play back many broadcasts from one address.
        relay_starts_per_ip_per_min: 100_000,
        report_cpu: false,
        ..entry::EntryConfig::default()
    }
}

impl TestEntry {
    /// Start an entry server with `cfg` on `host` (e.g. `127.0.0.2`).
    pub fn start(cfg: entry::EntryConfig, host: &str) -> Self {
        let (n, h, r) = (
            bind(&format!("{host}:0")),
            bind(&format!("{host}:0")),
            bind(&format!("{host}:0")),
        );
        let (native, http, rtmp) = (
            n.local_addr().expect("bound"),
            h.local_addr().expect("bound"),
            r.local_addr().expect("bound"),
        );
        let e = entry::Entry::init(cfg.clone()).expect("a valid test configuration");
        let spawned = Spawned::run(move || async move {
            let n = tokio::net::TcpListener::from_std(n)?;
            let h = tokio::net::TcpListener::from_std(h)?;
            let r = tokio::net::TcpListener::from_std(r)?;
            e.run_with(n, h, Some(r), std::future::pending()).await
        });
        Self {
            native,
            http,
            rtmp,
            cfg,
            spawned,
        }
    }

    /// Abrupt death (see [`Spawned::kill`]).
    pub fn kill(&mut self) {
        self.spawned.kill();
    }

    /// Start again on the same data directory (and new ports).
    pub fn restart(&mut self) {
        self.kill();
        let host = self.native.ip().to_string();
        *self = TestEntry::start(self.cfg.clone(), &host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "boom in a service")]
    fn a_panicking_service_fails_the_test_that_drops_it() {
        let mut s = Spawned::run(|| async { panic!("boom in a service") });
        // Let it run.
        while !s.task.as_ref().is_some_and(|t| t.is_finished()) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        s.kill();
    }

    #[test]
    fn a_service_that_ends_is_joined_with_its_result() {
        let s = Spawned::run(|| async { Err(std::io::Error::other("ended")) });
        assert_eq!(s.join().unwrap_err().to_string(), "ended");
    }
}
