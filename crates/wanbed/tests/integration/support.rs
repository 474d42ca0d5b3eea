//! Bringing a bed up for a test, or saying loudly why not.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use wanbed::{Bed, Spec};

static SKIPPED: AtomicUsize = AtomicUsize::new(0);
static BEDS: AtomicUsize = AtomicUsize::new(0);

/// A bed from `toml` under a prefix no other test uses, or `None` (printed) where this machine
/// cannot host one.
pub fn bed(test: &str, toml: &str) -> Option<Bed> {
    if let Err(e) = wanbed::check_support() {
        if std::env::var_os("WANBED_REQUIRE").is_some_and(|v| v != "0") {
            panic!("{test}: WANBED_REQUIRE is set but {e}");
        }
        let k = SKIPPED.fetch_add(1, Ordering::SeqCst) + 1;
        // Written to the process's stderr, not through eprintln!, so the test harness does not
        // capture it: a skipped test must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED {test}: {e} [wanbed tests skipped in this run: {k}]"
        );
        return None;
    }
    let mut spec = Spec::from_toml(toml).expect("test bed description");
    let prefix = format!(
        "t{}x{}",
        std::process::id(),
        BEDS.fetch_add(1, Ordering::SeqCst)
    );
    spec.set_prefix(&prefix).expect("prefix");
    Some(Bed::up(spec).expect("bring the bed up"))
}

/// Print a measurement where it is seen even when the test passes.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "wanbed: {line}");
}

/// The kernel's TCP_INFO of a connected socket.
pub fn tcp_info(s: &impl AsRawFd) -> libc::tcp_info {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        assert_eq!(r, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        info
    }
}

/// Wait (bounded) until `cond` holds; the forwarder counts packets on its own threads.
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A deterministic byte stream, and a checksum over it (FNV-1a, 64 bits).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}
