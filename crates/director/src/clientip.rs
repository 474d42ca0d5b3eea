//! The client's IP address: from the connection, or from `Forwarded` / `X-Forwarded-For` when
//! the peer is a trusted proxy (`http.trusted_proxies`), where the rightmost address that is not
//! itself a trusted proxy is the client (the leftmost entries are whatever the client chose to
//! send).

use std::net::{IpAddr, SocketAddr};

use axum::extract::FromRequestParts;
use axum::extract::connect_info::{ConnectInfo, MockConnectInfo};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::state::Director;
use crate::tls::TlsPeer;

/// The client's address as the director believes it (see the module docs). `None` when the
/// router is served without connection info.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|n| n.contains(&ip))
}

/// Parse one address from a Forwarded `for=` value or an X-Forwarded-For entry.
fn parse_forwarded_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    // "[2001:db8::1]" without a port.
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

/// The forwarding chain, client first, from `Forwarded` (preferred) or `X-Forwarded-For`.
/// `None` when a header is present but unparseable (then nothing in it is believed).
fn forwarded_chain(headers: &HeaderMap) -> Option<Vec<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let mut chain = Vec::new();
    if !forwarded.is_empty() {
        for elem in forwarded.iter().flat_map(|v| v.split(',')) {
            for pair in elem.split(';') {
                if let Some((k, v)) = pair.split_once('=')
                    && k.trim().eq_ignore_ascii_case("for")
                {
                    chain.push(parse_forwarded_addr(v)?);
                }
            }
        }
        return Some(chain);
    }
    for v in headers.get_all("x-forwarded-for") {
        for part in v.to_str().ok()?.split(',') {
            chain.push(parse_forwarded_addr(part)?);
        }
    }
    Some(chain)
}

/// The client IP for a request from `peer` with `headers`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !trusted(peer, proxies) {
        return peer;
    }
    let Some(chain) = forwarded_chain(headers) else {
        return peer;
    };
    let mut client = peer;
    for ip in chain.into_iter().rev().map(canonical) {
        client = ip;
        if !trusted(ip, proxies) {
            break;
        }
    }
    client
}

impl FromRequestParts<Director> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, d: &Director) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .or_else(|| {
                parts
                    .extensions
                    .get::<MockConnectInfo<SocketAddr>>()
                    .map(|c| c.0)
            })
            .or_else(|| {
                parts
                    .extensions
                    .get::<ConnectInfo<TlsPeer>>()
                    .map(|c| c.0.0)
            });
        Ok(ClientIp(peer.map(|p| {
            client_ip(p.ip(), &parts.headers, &d.config().http.trusted_proxies)
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn forwarded_headers_only_from_trusted_proxies() {
        let proxies = nets(&["10.0.0.0/8"]);
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            "1.2.3.4, 203.0.113.9, 10.0.0.7".parse().unwrap(),
        );
        // From a trusted proxy: the rightmost untrusted entry.
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &proxies),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // From anyone else: the peer.
        assert_eq!(
            client_ip("198.51.100.1".parse().unwrap(), &h, &proxies),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        // Forwarded wins over X-Forwarded-For; quoted IPv6 with port.
        h.insert(
            "forwarded",
            r#"for="[2001:db8::1]:4711";proto=https"#.parse().unwrap(),
        );
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &h, &proxies),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        // Garbage: nothing believed.
        let mut g = HeaderMap::new();
        g.insert("x-forwarded-for", "nonsense".parse().unwrap());
        assert_eq!(
            client_ip("10.0.0.1".parse().unwrap(), &g, &proxies),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
