//! Per-client-IP rate limiting: a token bucket per client, in a bounded map.
//!
//! **What.** [`RateLimiter::check`] takes one token from the client's bucket or says how long to
//! wait. IPv4 clients are keyed by address, IPv6 clients by their /64 (one subscriber usually
//! holds a whole /64, so keying by address would let one client multiply its quota).
//!
//! **Why bounded.** An attacker with many addresses must not grow the map without limit: it holds
//! at most `max_clients` buckets, split into shards (so concurrent requests rarely contend on one
//! lock). A full shard first forgets buckets that have refilled (idle clients, who lose nothing by
//! being forgotten), then its oldest entry.
//!
//! **What not.** Not a distributed limit: each director counts for itself. Time is tokio's
//! [`Instant`], passed in, so tests run on a paused clock.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    per_shard: usize,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
}

fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl RateLimiter {
    pub fn new(per_second: f64, burst: u32, max_clients: usize) -> Self {
        Self {
            per_second,
            burst: f64::from(burst.max(1)),
            per_shard: max_clients.div_ceil(SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Take a token for `ip` at `now`: `Ok(())`, or `Err(wait)` until one is available.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let k = key(ip);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        k.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        let mut m = shard.lock().unwrap_or_else(|p| p.into_inner());
        if !m.contains_key(&k) && m.len() >= self.per_shard {
            let (rate, burst) = (self.per_second, self.burst);
            m.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst
            });
            if m.len() >= self.per_shard
                && let Some(oldest) = m.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k)
            {
                m.remove(&oldest);
            }
        }
        let b = m.entry(k).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_second).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_second))
        }
    }

    /// Buckets held (for tests).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_refill() {
        let l = RateLimiter::new(2.0, 3, 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = Instant::now();
        for _ in 0..3 {
            assert!(l.check(ip, t).is_ok());
        }
        let wait = l.check(ip, t).unwrap_err();
        assert!(wait <= Duration::from_millis(500) && wait > Duration::ZERO);
        assert!(l.check(ip, t + Duration::from_millis(500)).is_ok());
        // Another client is unaffected.
        assert!(l.check("192.0.2.2".parse().unwrap(), t).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_and_ipv6_by_slash_64() {
        let l = RateLimiter::new(1.0, 1, 32);
        let t = Instant::now();
        for i in 0..1000u32 {
            let _ = l.check(
                IpAddr::from(0xC000_0200u32.wrapping_add(i).to_be_bytes()),
                t,
            );
        }
        assert!(l.tracked() <= 32);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        assert!(l.check(a, t).is_ok());
        assert!(l.check(b, t).is_err());
    }
}
