//! `wanbed`: bring a wide-area bed up by hand, check a description, or clear one left behind.
//!
//! ```sh
//! wanbed check crates/wanbed/beds/steering.toml   # validate and print hosts and paths
//! wanbed up crates/wanbed/beds/steering.toml      # until Ctrl-C; then tear down
//! ip netns exec fm-dev ping -c 3 10.77.0.3        # meanwhile, in another terminal
//! wanbed down crates/wanbed/beds/steering.toml    # after a `wanbed up` was killed with -9
//! ```
//!
//! Exit codes: 0 ok, 1 a failure while running, 64 a bad description or argument, 69 this
//! machine cannot host a bed (not root, no /dev/net/tun, `ip netns` fails).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use wanbed::{Bed, BedError, Spec, Stats};

#[derive(Debug, Parser)]
#[command(
    name = "wanbed",
    about = "A wide-area test bed: hosts in network namespaces, a delay, loss and rate per path"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Check a bed description and print its hosts and paths.
    Check { file: PathBuf },
    /// Bring the bed up and forward until SIGINT or SIGTERM, then tear it down.
    Up {
        file: PathBuf,
        /// Name the namespaces PREFIX-HOST instead of the description's prefix.
        #[arg(long)]
        prefix: Option<String>,
        /// Print the forwarder's counters every this many seconds (0 = only at the end).
        #[arg(long, default_value_t = 0)]
        stats_every: u64,
    },
    /// Remove the namespaces (and kill the processes in them) of a bed that was not torn down.
    Down {
        file: PathBuf,
        #[arg(long)]
        prefix: Option<String>,
    },
}

fn load(file: &std::path::Path, prefix: Option<&str>) -> Result<Spec, BedError> {
    let mut spec = Spec::from_file(file)?;
    if let Some(p) = prefix {
        spec.set_prefix(p).map_err(|e| BedError::Spec {
            path: None,
            source: e,
        })?;
    }
    Ok(spec)
}

fn exit_code(e: &BedError) -> ExitCode {
    match e {
        BedError::Spec { .. } | BedError::Read { .. } => ExitCode::from(64),
        BedError::Unavailable(_) => ExitCode::from(69),
        _ => ExitCode::FAILURE,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Check { file } => load(&file, None).map(|s| print_spec(&s)),
        Cmd::Up {
            file,
            prefix,
            stats_every,
        } => load(&file, prefix.as_deref()).and_then(|s| up(s, stats_every)),
        Cmd::Down { file, prefix } => load(&file, prefix.as_deref()).and_then(|s| {
            let removed = Bed::clear(&s)?;
            if removed.is_empty() {
                println!("nothing to remove: no namespace of this bed exists");
            } else {
                println!("removed {}", removed.join(" "));
            }
            Ok(())
        }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                msg += &format!(": {c}");
                cause = c.source();
            }
            eprintln!("wanbed: {msg}");
            exit_code(&e)
        }
    }
}

fn print_spec(s: &Spec) {
    let hosts = s.hosts();
    let w = hosts.iter().map(|h| h.name.len()).max().unwrap_or(4).max(8);
    println!(
        "{:<w$}  {:<15} {:<w2$} {:<9} city",
        "host",
        "address",
        "namespace",
        "role",
        w2 = w + s.prefix().len() + 2
    );
    for (i, h) in hosts.iter().enumerate() {
        println!(
            "{:<w$}  {:<15} {:<w2$} {:<9} {}",
            h.name,
            h.address.to_string(),
            s.netns(i),
            format!("{:?}", h.role).to_lowercase(),
            h.city.as_deref().unwrap_or("-"),
            w2 = w + s.prefix().len() + 2
        );
    }
    println!();
    print!("{:<w$}", "RTT ms");
    for h in hosts {
        print!(" {:>w$}", h.name);
    }
    println!();
    for (a, ha) in hosts.iter().enumerate() {
        print!("{:<w$}", ha.name);
        for b in 0..hosts.len() {
            if a == b {
                print!(" {:>w$}", "-");
            } else {
                print!(" {:>w$}", format!("{}", s.rtt_ms(a, b)));
            }
        }
        println!();
    }
    let mut shaped = Vec::new();
    for a in 0..hosts.len() {
        for b in a + 1..hosts.len() {
            let l = s.link(a, b);
            if l.loss > 0.0 || l.rate_bps.is_some() {
                let mut what = Vec::new();
                if l.loss > 0.0 {
                    what.push(format!("loss {} %", l.loss * 100.0));
                }
                if let Some(r) = l.rate_bps {
                    what.push(format!(
                        "{} Mbit/s, queue {} ms",
                        r as f64 / 1e6,
                        l.queue.as_millis()
                    ));
                }
                shaped.push(format!(
                    "  {} <-> {}: {}",
                    hosts[a].name,
                    hosts[b].name,
                    what.join(", ")
                ));
            }
        }
    }
    if !shaped.is_empty() {
        println!("\nloss and bottlenecks (each direction):");
        for l in shaped {
            println!("{l}");
        }
    }
}

fn print_stats(s: &Stats) {
    println!("forwarded (from -> to: packets, bytes; dropped by loss / full queue / overflow):");
    for (from, to, c) in s.paths() {
        println!(
            "  {from} -> {to}: {} packets, {} bytes; dropped {} / {} / {}{}",
            c.delivered_packets,
            c.delivered_bytes,
            c.lost,
            c.queue_full,
            c.overflow,
            if c.write_errors > 0 {
                format!("; {} write errors", c.write_errors)
            } else {
                String::new()
            }
        );
    }
    for (h, c) in s.hosts() {
        if *c != wanbed::HostCounters::default() {
            println!(
                "  {h} sent, not forwarded: {} not IPv4, {} malformed, {} with a false source, {} to no host, {} read errors",
                c.not_ipv4, c.malformed, c.spoofed, c.unroutable, c.read_errors
            );
        }
    }
}

/// Block the stop signals in every thread (the forwarder's threads inherit the mask), so that
/// the main thread alone takes them, with sigtimedwait.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; the calls only read and write it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Wait for a stop signal, at most `timeout`; the signal, if one came.
fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: set and ts are valid for the call; no siginfo is asked for.
    let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
}

fn up(spec: Spec, stats_every: u64) -> Result<(), BedError> {
    let set = block_stop_signals();
    let bed = Bed::up(spec)?;
    let s = bed.spec();
    println!(
        "wanbed is up: {} hosts in {}, forwarded by this process (pid {})",
        s.hosts().len(),
        s.subnet(),
        std::process::id()
    );
    print_spec(s);
    let first = s.netns(0);
    println!();
    println!("Run a program in a host:  ip netns exec {first} PROGRAM [ARGS]");
    println!("Ctrl-C or SIGTERM tears the bed down; processes still in its hosts are killed.");
    let period = if stats_every == 0 {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(stats_every)
    };
    let signal = loop {
        match wait_signal(&set, period) {
            Some(sig) => break sig,
            None if stats_every > 0 => print_stats(&bed.stats()),
            None => {}
        }
    };
    println!("signal {signal}: tearing down");
    let stats = bed.down()?;
    print_stats(&stats);
    Ok(())
}
