//! A real bed: namespaces, TUN links, the forwarder, real TCP between hosts.
//!
//! Bounds on times are generous on purpose (two shared cores): what is checked is that each
//! pair gets its own delay — never less than configured, of the right magnitude, in the right
//! order — not microsecond accuracy.

use crate::support::{bed, eventually, fnv1a, pattern, report, tcp_info};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};
use wanbed::{Bed, BedError};

const THREE: &str = r#"
    [default]
    rtt_ms = 40

    [[host]]
    name = "a"
    address = "10.77.0.1"

    [[host]]
    name = "near"
    address = "10.77.0.2"

    [[host]]
    name = "far"
    address = "10.77.3.3"

    [[path]]
    between = ["a", "near"]
    rtt_ms = 10

    [[path]]
    between = ["far", "a"]
    rtt_ms = 80
"#;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Echo every byte back until the client closes.
fn echo(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

struct Rtts {
    connect_min: f64,
    ping_min: f64,
    client_srtt: f64,
    client_min_rtt: f64,
    server_srtt: f64,
}

/// Measure the RTT from `client` to `server` with real TCP connections: the handshake time,
/// one-byte ping-pongs, and both ends' TCP_INFO.
fn measure(bed: &Bed, client: &str, server: &str) -> Rtts {
    const CONNECTS: usize = 4;
    const PINGS: usize = 8;
    let addr = bed.address(server).unwrap();
    let listener = bed
        .enter(server, || TcpListener::bind((addr, 0)))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let srv = std::thread::spawn(move || {
        let mut srtts = Vec::new();
        for _ in 0..CONNECTS {
            let (mut s, _) = listener.accept().unwrap();
            s.set_nodelay(true).unwrap();
            echo(&mut s);
            srtts.push(f64::from(tcp_info(&s).tcpi_rtt) / 1000.0);
        }
        srtts
    });
    let (connects, pings, srtt, min_rtt) = bed
        .enter(client, || {
            let (mut connects, mut pings, mut srtt, mut min_rtt) = (vec![], vec![], 0.0, 0.0);
            for _ in 0..CONNECTS {
                let t = Instant::now();
                let mut s = TcpStream::connect((addr, port)).unwrap();
                connects.push(ms(t.elapsed()));
                s.set_nodelay(true).unwrap();
                let mut b = [0u8; 1];
                for k in 0..PINGS {
                    let t = Instant::now();
                    s.write_all(&[k as u8]).unwrap();
                    s.read_exact(&mut b).unwrap();
                    pings.push(ms(t.elapsed()));
                    assert_eq!(b[0], k as u8);
                }
                let info = tcp_info(&s);
                srtt = f64::from(info.tcpi_rtt) / 1000.0;
                min_rtt = f64::from(info.tcpi_min_rtt) / 1000.0;
                s.shutdown(Shutdown::Write).unwrap();
                assert_eq!(
                    s.read(&mut b).unwrap(),
                    0,
                    "the echo server closes after us"
                );
            }
            (connects, pings, srtt, min_rtt)
        })
        .unwrap();
    let server_srtts = srv.join().unwrap();
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    Rtts {
        connect_min: min(&connects),
        ping_min: min(&pings),
        client_srtt: srtt,
        client_min_rtt: min_rtt,
        server_srtt: *server_srtts.last().unwrap(),
    }
}

#[test]
fn tcp_between_hosts_sees_each_pairs_configured_rtt() {
    let Some(bed) = bed("tcp_between_hosts_sees_each_pairs_configured_rtt", THREE) else {
        return;
    };
    let mut mins = Vec::new();
    // (client, server, configured RTT): two listed pairs, and one left to the default.
    for (client, server, want) in [
        ("a", "near", 10.0),
        ("a", "far", 80.0),
        ("near", "far", 40.0),
    ] {
        let r = measure(&bed, client, server);
        report(&format!(
            "{client} -> {server}: configured {want} ms; TCP connect {:.2} ms, ping-pong {:.2} ms, \
             client TCP_INFO srtt {:.2} / min_rtt {:.2} ms, server TCP_INFO srtt {:.2} ms",
            r.connect_min, r.ping_min, r.client_srtt, r.client_min_rtt, r.server_srtt
        ));
        // Never faster than the path, and not grossly slower (a loaded machine adds some).
        for (what, v) in [
            ("connect", r.connect_min),
            ("ping-pong", r.ping_min),
            ("client min_rtt", r.client_min_rtt),
        ] {
            assert!(
                v >= want * 0.95 && v <= want * 1.5 + 15.0,
                "{client} -> {server} {what}: {v:.2} ms, configured {want} ms"
            );
        }
        // The smoothed RTTs on both ends (what entry servers report) show the path too.
        for (what, v) in [
            ("client srtt", r.client_srtt),
            ("server srtt", r.server_srtt),
        ] {
            assert!(
                v >= want * 0.8 && v <= want * 2.0 + 20.0,
                "{client} -> {server} {what}: {v:.2} ms, configured {want} ms"
            );
        }
        mins.push(r.ping_min);
    }
    assert!(
        mins[0] < mins[2] && mins[2] < mins[1],
        "RTTs out of order: {mins:?}"
    );
    let s = bed.stats();
    for (from, to) in [("a", "near"), ("near", "a"), ("a", "far"), ("far", "a")] {
        let c = s.path(from, to).unwrap();
        assert!(c.delivered_packets > 0, "{from} -> {to}: {c:?}");
        assert_eq!(
            (c.lost, c.queue_full, c.overflow, c.write_errors),
            (0, 0, 0, 0)
        );
    }
    bed.down().unwrap();
}

const LOSSY: &str = r#"
    [[host]]
    name = "a"
    address = "10.77.0.1"

    [[host]]
    name = "b"
    address = "10.77.0.2"

    [[path]]
    between = ["a", "b"]
    rtt_ms = 20
    loss = 0.01
"#;

#[test]
fn a_bulk_transfer_through_a_lossy_path_arrives_intact() {
    let Some(bed) = bed("a_bulk_transfer_through_a_lossy_path_arrives_intact", LOSSY) else {
        return;
    };
    const LEN: usize = 2 << 20;
    let data = pattern(11, LEN);
    let sum = fnv1a(&data);
    let b = bed.address("b").unwrap();
    let listener = bed
        .enter("b", || TcpListener::bind((b, 0)))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let rx = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::with_capacity(LEN);
        s.read_to_end(&mut got).unwrap();
        let reply = (got.len() as u64, fnv1a(&got));
        s.write_all(&reply.0.to_be_bytes()).unwrap();
        s.write_all(&reply.1.to_be_bytes()).unwrap();
        got
    });
    let t = Instant::now();
    let mut s = bed
        .enter("a", || TcpStream::connect((b, port)))
        .unwrap()
        .unwrap();
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply).unwrap();
    let took = t.elapsed();
    let retrans = tcp_info(&s).tcpi_total_retrans;
    let got = rx.join().unwrap();
    let their_len = u64::from_be_bytes(reply[..8].try_into().unwrap());
    let their_sum = u64::from_be_bytes(reply[8..].try_into().unwrap());
    let stats = bed.stats();
    let ab = *stats.path("a", "b").unwrap();
    report(&format!(
        "{LEN} bytes a -> b over 20 ms, 1 % loss: {:.2} s, checksum {sum:016x} both ends, \
         forwarder dropped {} of {} packets a -> b, sender retransmitted {retrans}",
        took.as_secs_f64(),
        ab.lost,
        ab.lost + ab.delivered_packets
    ));
    assert_eq!(their_len, LEN as u64);
    assert_eq!(their_sum, sum, "checksum at the receiver");
    assert!(got == data, "the received bytes differ from the sent ones");
    // The path really dropped packets, and TCP (end to end, through the forwarder) repaired it.
    assert!(ab.lost > 0, "no loss on a 1 % path: {ab:?}");
    assert!(retrans > 0, "the sender never retransmitted");
    assert!(ab.delivered_bytes >= LEN as u64);
    bed.down().unwrap();
}

const SLOW: &str = r#"
    [[host]]
    name = "a"
    address = "10.77.0.1"

    [[host]]
    name = "b"
    address = "10.77.0.2"

    [[path]]
    between = ["a", "b"]
    rtt_ms = 10
    rate_mbit = 8
"#;

#[test]
fn a_bottleneck_caps_the_throughput() {
    let Some(bed) = bed("a_bottleneck_caps_the_throughput", SLOW) else {
        return;
    };
    const LEN: usize = 1_000_000;
    let data = pattern(3, LEN);
    let b = bed.address("b").unwrap();
    let listener = bed
        .enter("b", || TcpListener::bind((b, 0)))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let rx = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(&[1]).unwrap();
        got
    });
    let mut s = bed
        .enter("a", || TcpStream::connect((b, port)))
        .unwrap()
        .unwrap();
    let t = Instant::now();
    s.write_all(&data).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut done = [0u8; 1];
    s.read_exact(&mut done).unwrap();
    let took = t.elapsed().as_secs_f64();
    assert!(rx.join().unwrap() == data);
    let mbit = LEN as f64 * 8.0 / took / 1e6;
    report(&format!(
        "{LEN} bytes through an 8 Mbit/s bottleneck: {took:.2} s, {mbit:.2} Mbit/s of payload"
    ));
    // Payload alone at 8 Mbit/s takes a second; headers make it longer, never shorter.
    assert!(took >= 0.95, "{took:.3} s: faster than the bottleneck");
    bed.down().unwrap();
}

#[test]
fn commands_run_inside_a_host_and_teardown_removes_everything() {
    let Some(bed) = bed(
        "commands_run_inside_a_host_and_teardown_removes_everything",
        LOSSY,
    ) else {
        return;
    };
    let out = bed
        .command("a", "ip")
        .unwrap()
        .args(["-o", "-4", "addr", "show"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("wan0") && text.contains("10.77.0.1/16"),
        "{text}"
    );
    assert!(
        !text.contains("10.77.0.2"),
        "host a sees b's address: {text}"
    );
    assert!(matches!(
        bed.command("nobody", "true"),
        Err(BedError::UnknownHost(_))
    ));

    // A second bed under the same names is refused, and the first one is untouched.
    let again = Bed::up(bed.spec().clone());
    assert!(
        matches!(again, Err(BedError::NamespaceExists(_))),
        "{again:?}"
    );
    let names: Vec<String> = ["a", "b"]
        .iter()
        .map(|h| bed.netns(h).unwrap().to_string())
        .collect();
    for n in &names {
        assert!(wanbed::netns::path(n).exists(), "{n} was removed");
    }

    // A process left running in a host is killed at teardown.
    let mut child = bed
        .command("b", "sleep")
        .unwrap()
        .arg("600")
        .spawn()
        .unwrap();
    bed.down().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait()));
    let status = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the process in the host was not killed")
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    for n in &names {
        assert!(!wanbed::netns::path(n).exists(), "{n} is left behind");
    }
}

/// A UDP socket in the calling thread's namespace bound to an address this host does not own
/// (IP_TRANSPARENT: the kernel then sends from it), as a spoofing program would.
fn spoofing_udp(addr: std::net::Ipv4Addr) -> UdpSocket {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor we own; sockaddr_in is filled in full.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        let r = libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_TRANSPARENT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(r, 0);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(addr).to_be();
        let r = libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        UdpSocket::from_raw_fd(fd)
    }
}

#[test]
fn packets_to_nowhere_or_with_a_false_source_are_dropped_and_counted() {
    let Some(bed) = bed(
        "packets_to_nowhere_or_with_a_false_source_are_dropped_and_counted",
        THREE,
    ) else {
        return;
    };
    let a = bed.address("a").unwrap();
    let near = bed.address("near").unwrap();
    let far = bed.address("far").unwrap();
    let listener = bed
        .enter("near", || UdpSocket::bind((near, 0)))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    bed.enter("a", || {
        let s = UdpSocket::bind((a, 0)).unwrap();
        s.send_to(b"to nobody", ("10.77.0.99", 9)).unwrap();
        // From a, claiming to be far.
        spoofing_udp(far)
            .send_to(b"pretending to be far", (near, port))
            .unwrap();
    })
    .unwrap();
    eventually("the forwarder counts both", || {
        let h = *bed.stats().host("a").unwrap();
        h.unroutable >= 1 && h.spoofed >= 1
    });
    let s = bed.stats();
    for (from, to) in [("a", "near"), ("far", "near")] {
        assert_eq!(
            s.path(from, to).unwrap().delivered_packets,
            0,
            "{from} -> {to}"
        );
    }
    listener.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        listener.recv_from(&mut buf).is_err(),
        "near received a spoofed packet"
    );
    bed.down().unwrap();
}
