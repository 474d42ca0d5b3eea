//! IP address → location, from MMDB images handed in as bytes.
//!
//! **What.** [`IpLocator::lookup`] answers where an address probably is, in this order:
//! 1. configured *site* ranges ([`IpLocator::with_site`]): the longest matching prefix wins, so an
//!    operator can pin office or lab networks (and private ranges) to a place;
//! 2. private, loopback, link-local and other non-global addresses without a site are
//!    [`IpLocation::Unknown`] (no database knows them);
//! 3. a city database ([`IpLocator::with_city_db`]) in either schema, detected per record:
//!    - GeoIP2 / GeoLite2 / DB-IP City, nested: `location.latitude`, `country.iso_code`,
//!      `city.names.en`, `location.accuracy_radius`;
//!    - ip-location-db, flat: `latitude`, `longitude` (stored as 32-bit floats), `country_code`,
//!      `city`.
//! 4. optionally, an ASN database ([`IpLocator::with_asn_db`], GeoLite2-ASN schema) adds
//!    `asn` and `as_org` to any known answer.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are looked up as IPv4.
//!
//! **Why a generic decode.** The two city schemas disagree on types (`city` is a map in one and a
//! string in the other; coordinates are doubles in one and floats in the other) and maxminddb's
//! typed decoding is strict, so records are decoded into a small untyped [`Value`] tree and read
//! by path. Records are small; this costs microseconds.
//!
//! **What it is not.** No file reading (the caller loads the bytes), no database updates, no
//! network calls. [`IpLocator::lookup`] never fails: problems become `Unknown` with a reason.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use maxminddb::Reader;
use serde::Serialize;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::Location;
use crate::gazetteer::{Place, PlaceKind};

/// Where a known location came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IpSource {
    /// A configured site range.
    Site { network: IpNet },
    /// The city database.
    Database,
}

/// The answer for one address.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum IpLocation {
    Known {
        ip: IpAddr,
        location: Location,
        city: Option<String>,
        /// ISO 3166-1 alpha-2.
        country: Option<String>,
        source: IpSource,
        asn: Option<u32>,
        as_org: Option<String>,
        accuracy_km: Option<u32>,
    },
    Unknown {
        ip: IpAddr,
        /// "no database configured", "not in database", "record has no coordinates",
        /// "private address with no site range", or a database error.
        reason: String,
    },
}

impl IpLocation {
    /// The location when known.
    pub fn location(&self) -> Option<Location> {
        match self {
            IpLocation::Known { location, .. } => Some(*location),
            IpLocation::Unknown { .. } => None,
        }
    }
}

/// A database image that cannot be used. The operator is at fault (wrong or corrupt file);
/// retrying with the same bytes fails the same way.
#[derive(Debug, thiserror::Error)]
pub enum IpDbError {
    #[error("not a readable MaxMind DB (.mmdb) image: {0}")]
    Invalid(#[from] maxminddb::MaxMindDbError),
    #[error(
        "database type {database_type:?} is not a {expected} database; expected {expected} \
         (GeoIP2/GeoLite2/DB-IP or ip-location-db for cities, GeoLite2-ASN for ASNs)"
    )]
    WrongKind {
        database_type: String,
        expected: &'static str,
    },
}

/// IP → location over configured sites and optional MMDB images. Immutable after building;
/// share it behind an `Arc` and swap it whole to update.
#[derive(Debug, Default)]
pub struct IpLocator {
    city: Option<Reader<Vec<u8>>>,
    asn: Option<Reader<Vec<u8>>>,
    /// Sorted by prefix length, longest first, then network, so the first match is the best.
    sites: Vec<(IpNet, Place)>,
}

impl IpLocator {
    /// A locator with no database: every address is `Unknown` unless a site range covers it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use a city database (GeoIP2/GeoLite2/DB-IP City schema or the flat ip-location-db
    /// schema). Rejects images that are not MMDB or that declare themselves ASN-only.
    pub fn with_city_db(mut self, bytes: Vec<u8>) -> Result<Self, IpDbError> {
        let reader = Reader::from_source(bytes)?;
        let t = reader.metadata().database_type.to_ascii_lowercase();
        if t.contains("asn") && !t.contains("city") {
            return Err(IpDbError::WrongKind {
                database_type: reader.metadata().database_type.clone(),
                expected: "city",
            });
        }
        self.city = Some(reader);
        Ok(self)
    }

    /// Use a GeoLite2-ASN-schema database for `asn` / `as_org`.
    pub fn with_asn_db(mut self, bytes: Vec<u8>) -> Result<Self, IpDbError> {
        let reader = Reader::from_source(bytes)?;
        let t = reader.metadata().database_type.to_ascii_lowercase();
        if t.contains("city") || t.contains("country") {
            return Err(IpDbError::WrongKind {
                database_type: reader.metadata().database_type.clone(),
                expected: "ASN",
            });
        }
        self.asn = Some(reader);
        Ok(self)
    }

    /// Pin a network to a place. Site ranges win over the database; among sites the longest
    /// prefix wins. An IPv4-mapped IPv6 network is treated as IPv4.
    pub fn with_site(mut self, net: IpNet, place: Place) -> Self {
        let net = match net {
            IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
                Some(v4) => ipnet::Ipv4Net::new(v4, n.prefix_len() - 96)
                    .map(IpNet::V4)
                    .unwrap_or(net),
                None => net,
            },
            _ => net,
        };
        self.sites.push((net.trunc(), place));
        self.sites
            .sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then(a.0.cmp(&b.0)));
        self
    }

    /// Where `ip` probably is. Never fails.
    pub fn lookup(&self, ip: IpAddr) -> IpLocation {
        let ip = canonical(ip);
        let (asn, as_org) = self.asn_of(ip);
        if let Some((network, place)) = self.sites.iter().find(|(n, _)| n.contains(&ip)) {
            return IpLocation::Known {
                ip,
                location: place.location,
                city: (place.kind == PlaceKind::City).then(|| place.name.clone()),
                country: (!place.country.is_empty()).then(|| place.country.clone()),
                source: IpSource::Site { network: *network },
                asn,
                as_org,
                accuracy_km: None,
            };
        }
        let unknown = |reason: &str| IpLocation::Unknown {
            ip,
            reason: reason.to_string(),
        };
        if !is_global(ip) {
            return unknown("private address with no site range");
        }
        let Some(reader) = &self.city else {
            return unknown("no database configured");
        };
        let record = match reader.lookup(ip).and_then(|r| r.decode::<Value>()) {
            Ok(Some(v)) => v,
            Ok(None) => return unknown("not in database"),
            // An IPv6 address in an IPv4-only database is simply not covered.
            Err(maxminddb::MaxMindDbError::InvalidInput { .. }) => {
                return unknown("not in database");
            }
            Err(e) => return unknown(&format!("database record unreadable: {e}")),
        };
        let CityRecord {
            lat,
            lon,
            city,
            country,
            accuracy_km,
        } = CityRecord::from(&record);
        let (Some(lat), Some(lon)) = (lat, lon) else {
            return unknown("record has no coordinates");
        };
        let Ok(location) = Location::new(lat, lon) else {
            return unknown("record has out-of-range coordinates");
        };
        IpLocation::Known {
            ip,
            location,
            city,
            country,
            source: IpSource::Database,
            asn,
            as_org,
            accuracy_km,
        }
    }

    fn asn_of(&self, ip: IpAddr) -> (Option<u32>, Option<String>) {
        let Some(reader) = &self.asn else {
            return (None, None);
        };
        match reader.lookup(ip).and_then(|r| r.decode::<Value>()) {
            Ok(Some(v)) => (
                v.get(&["autonomous_system_number"])
                    .and_then(Value::as_f64)
                    .filter(|n| *n >= 0.0 && *n <= u32::MAX as f64)
                    .map(|n| n as u32),
                v.get(&["autonomous_system_organization"])
                    .and_then(Value::as_str)
                    .map(str::to_string),
            ),
            _ => (None, None),
        }
    }
}

/// IPv4-mapped IPv6 → IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether an address can appear in a public geolocation database. Conservative: anything in
/// the well-known special-purpose ranges is not.
fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            !(a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 shared (CGN)
                || o[0] >= 240)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80) // link local
        }
    }
}

/// The fields we use, read from either schema.
struct CityRecord {
    lat: Option<f64>,
    lon: Option<f64>,
    city: Option<String>,
    country: Option<String>,
    accuracy_km: Option<u32>,
}

impl From<&Value> for CityRecord {
    fn from(v: &Value) -> Self {
        let s = |path: &[&str]| v.get(path).and_then(Value::as_str).map(str::to_string);
        let n = |path: &[&str]| v.get(path).and_then(Value::as_f64);
        // Nested GeoIP2 schema first, flat ip-location-db schema second.
        let nested = v.get(&["location"]).is_some();
        if nested {
            CityRecord {
                lat: n(&["location", "latitude"]),
                lon: n(&["location", "longitude"]),
                city: s(&["city", "names", "en"]),
                country: s(&["country", "iso_code"])
                    .or_else(|| s(&["registered_country", "iso_code"])),
                accuracy_km: n(&["location", "accuracy_radius"])
                    .filter(|r| *r >= 0.0)
                    .map(|r| r.min(u32::MAX as f64) as u32),
            }
        } else {
            CityRecord {
                lat: n(&["latitude"]),
                lon: n(&["longitude"]),
                city: s(&["city"]).filter(|c| !c.is_empty()),
                country: s(&["country_code"]).filter(|c| !c.is_empty()),
                accuracy_km: None,
            }
        }
    }
}

/// An untyped MMDB value: enough structure to read either city schema by path.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    Str(String),
    Num(f64),
    Map(BTreeMap<String, Value>),
    Other,
}

impl Value {
    fn get(&self, path: &[&str]) -> Option<&Value> {
        let mut v = self;
        for k in path {
            match v {
                Value::Map(m) => v = m.get(*k)?,
                _ => return None,
            }
        }
        Some(v)
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Num(n) if n.is_finite() => Some(*n),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any MMDB value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Other)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Num(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Num(v as f64))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(Value::Num(v as f64))
    }
    fn visit_f32<E: de::Error>(self, v: f32) -> Result<Value, E> {
        // Through the shortest decimal string so 48.8566f32 reads back as 48.8566, not
        // 48.856601715087890625.
        Ok(Value::Num(v.to_string().parse().unwrap_or(f64::from(v))))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Num(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Value, E> {
        Ok(Value::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Other)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Other)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(Value::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = BTreeMap::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            m.insert(k, v);
        }
        Ok(Value::Map(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_v6_is_v4() {
        let ip: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(canonical(ip), "192.0.2.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn special_ranges_are_not_global() {
        for s in [
            "10.1.2.3",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(!is_global(s.parse().unwrap()), "{s}");
        }
        for s in ["8.8.8.8", "192.0.2.1", "2001:db8::1", "2a00:1450::1"] {
            assert!(is_global(s.parse().unwrap()), "{s}");
        }
    }

    #[test]
    fn no_db_is_unknown() {
        let l = IpLocator::new().lookup("8.8.8.8".parse().unwrap());
        assert_eq!(
            l,
            IpLocation::Unknown {
                ip: "8.8.8.8".parse().unwrap(),
                reason: "no database configured".into()
            }
        );
    }
}
