//! The little the forwarder reads of a packet: IPv4 source and destination, after checking that
//! the bytes are an IPv4 header of the length they claim.
//!
//! Packets come from the kernels of the hosts' namespaces, but whatever runs in a host can write
//! raw packets, so nothing is trusted: a packet that is not IPv4, is shorter than its header, or
//! whose total length disagrees with what was read is dropped and counted. The forwarder never
//! changes a packet (no TTL decrement, no checksum update): it is a wire, not a router.
//!
//! Not handled: IPv6 (dropped and counted; the hosts' links carry IPv4 addresses only).

use std::net::Ipv4Addr;

/// The addresses of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Addrs {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
}

/// Why a packet is not a well-formed IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("IP version {0}, only 4 is forwarded")]
    NotIpv4(u8),
    #[error("{0} bytes, shorter than an IPv4 header (20)")]
    Short(usize),
    #[error("header length {0} bytes: accepted 20 to 60 and within the packet")]
    BadHeaderLength(usize),
    #[error("total length field {claimed} but {read} bytes read")]
    LengthMismatch { claimed: usize, read: usize },
}

/// Check an IPv4 packet's header and give its addresses.
pub fn ipv4_addrs(p: &[u8]) -> Result<Ipv4Addrs, PacketError> {
    let first = *p.first().ok_or(PacketError::Empty)?;
    if first >> 4 != 4 {
        return Err(PacketError::NotIpv4(first >> 4));
    }
    if p.len() < 20 {
        return Err(PacketError::Short(p.len()));
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 || ihl > p.len() {
        return Err(PacketError::BadHeaderLength(ihl));
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if total != p.len() {
        return Err(PacketError::LengthMismatch {
            claimed: total,
            read: p.len(),
        });
    }
    Ok(Ipv4Addrs {
        src: Ipv4Addr::new(p[12], p[13], p[14], p[15]),
        dst: Ipv4Addr::new(p[16], p[17], p[18], p[19]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[12..16].copy_from_slice(&[10, 77, 0, 1]);
        p[16..20].copy_from_slice(&[10, 77, 0, 2]);
        p
    }

    #[test]
    fn a_well_formed_header_gives_its_addresses() {
        assert_eq!(
            ipv4_addrs(&packet(60)),
            Ok(Ipv4Addrs {
                src: Ipv4Addr::new(10, 77, 0, 1),
                dst: Ipv4Addr::new(10, 77, 0, 2)
            })
        );
    }

    #[test]
    fn malformed_packets_are_refused() {
        assert_eq!(ipv4_addrs(&[]), Err(PacketError::Empty));
        let mut v6 = packet(60);
        v6[0] = 0x60;
        assert_eq!(ipv4_addrs(&v6), Err(PacketError::NotIpv4(6)));
        assert_eq!(ipv4_addrs(&packet(60)[..19]), Err(PacketError::Short(19)));
        let mut ihl = packet(40);
        ihl[0] = 0x44;
        assert_eq!(ipv4_addrs(&ihl), Err(PacketError::BadHeaderLength(16)));
        let mut long_ihl = packet(40);
        long_ihl[0] = 0x4f;
        assert_eq!(ipv4_addrs(&long_ihl), Err(PacketError::BadHeaderLength(60)));
        let mut lie = packet(40);
        lie[2..4].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(
            ipv4_addrs(&lie),
            Err(PacketError::LengthMismatch {
                claimed: 1000,
                read: 40
            })
        );
    }
}
