//! Path measurements read from a TCP socket (Linux `TCP_INFO`).
//!
//! The entry server is the *receiver* of an ingest stream, so what the kernel knows is:
//! the smoothed RTT and the minimum RTT of the connection (from the ACK frames and pings the
//! server sends), the bytes received (→ achieved throughput over an interval), and retransmits of
//! the segments the server sent (a proxy for path loss: the sender's own retransmits are not
//! visible to the receiver). Neither socket2 nor nix exposes `TCP_INFO`, so this reads it with
//! `getsockopt(2)` directly.

/// One reading.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TcpInfo {
    pub rtt_ms: f64,
    pub min_rtt_ms: f64,
    pub bytes_received: u64,
    pub segs_out: u32,
    pub total_retrans: u32,
}

impl TcpInfo {
    /// Retransmitted fraction of the segments this side sent.
    pub fn loss(&self) -> f64 {
        if self.segs_out == 0 {
            0.0
        } else {
            (f64::from(self.total_retrans) / f64::from(self.segs_out)).min(1.0)
        }
    }
}

/// Read `TCP_INFO` of a connected TCP socket. `None` on other platforms or on error.
#[cfg(target_os = "linux")]
pub fn read(fd: std::os::fd::RawFd) -> Option<TcpInfo> {
    // SAFETY: tcp_info is plain old data; getsockopt writes at most `len` bytes into it and we
    // pass its true size. An invalid fd makes the call fail with EBADF, which we map to None.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    Some(TcpInfo {
        rtt_ms: f64::from(info.tcpi_rtt) / 1000.0,
        min_rtt_ms: f64::from(info.tcpi_min_rtt) / 1000.0,
        bytes_received: info.tcpi_bytes_received,
        segs_out: info.tcpi_segs_out,
        total_retrans: info.tcpi_total_retrans,
    })
}

#[cfg(not(target_os = "linux"))]
pub fn read(_fd: i32) -> Option<TcpInfo> {
    None
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn reads_a_loopback_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        c.write_all(&[7u8; 10_000]).unwrap();
        let mut buf = vec![0u8; 10_000];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"ack").unwrap();
        let mut a = [0u8; 3];
        c.read_exact(&mut a).unwrap();
        let info = super::read(s.as_raw_fd()).unwrap();
        assert_eq!(info.bytes_received, 10_000);
        assert!(info.rtt_ms >= 0.0 && info.rtt_ms < 1000.0, "{info:?}");
        assert!(super::read(-1).is_none());
    }
}
