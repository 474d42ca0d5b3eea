//! From the pure crates' types (`geo`, `select`) to the HTTP contract's (`proto::api`), and the
//! director's reading of a typed place. One place, so the services never build a message by hand.

use geo::Location;
use geo::gazetteer::{Gazetteer, PlaceError};
use proto::api::{
    self, BasisKind, Estimate, IpSource, LocationInput, Point, RttSource, ScoredFrom, TypedLocation,
};

pub fn point(l: Location) -> Point {
    Point {
        lat: l.lat,
        lon: l.lon,
    }
}

/// A contract point that deserialized (so it is in range) as a `geo` location.
pub fn location(p: Point) -> Option<Location> {
    Location::new(p.lat, p.lon).ok()
}

pub fn estimate(e: &select::Estimate) -> Estimate {
    estimate_from(e, select::ESTIMATED)
}

/// An estimate whose RTT came from `source` (probes, history, or the model).
pub fn estimate_from(e: &select::Estimate, source: RttSource) -> Estimate {
    Estimate {
        distance_km: e.distance_km,
        rtt_ms: e.rtt_ms,
        loss: e.loss,
        throughput_mbps: e.throughput_mbps,
        utilization: e.utilization,
        score: e.score,
        evidence: e.evidence,
        rtt_source: source,
    }
}

pub fn scored_from(b: &select::Basis) -> ScoredFrom {
    ScoredFrom {
        kind: match b.kind {
            select::BasisKind::Typed => BasisKind::Typed,
            select::BasisKind::Ip => BasisKind::Ip,
            select::BasisKind::Default => BasisKind::Default,
        },
        location: point(b.location),
        note: b.note.clone(),
    }
}

pub fn ip_location(l: &geo::ip::IpLocation) -> api::IpLocation {
    match l {
        geo::ip::IpLocation::Known {
            ip,
            location,
            city,
            country,
            source,
            asn,
            as_org,
            accuracy_km,
        } => api::IpLocation::Known {
            ip: *ip,
            location: point(*location),
            city: city.clone(),
            country: country.clone(),
            source: match source {
                geo::ip::IpSource::Site { network } => IpSource::Site {
                    network: network.to_string(),
                },
                geo::ip::IpSource::Database => IpSource::Database,
            },
            asn: *asn,
            as_org: as_org.clone(),
            accuracy_km: *accuracy_km,
        },
        geo::ip::IpLocation::Unknown { ip, reason } => api::IpLocation::Unknown {
            ip: *ip,
            reason: reason.clone(),
        },
    }
}

/// A typed place that cannot be used at all (as opposed to one that is merely unknown, which
/// falls back to the other location).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PlaceRefused(pub String);

/// Resolve what a device typed. Text the gazetteer does not know is `Unknown` (the pick falls
/// back to the IP location) unless `strict` (an entry server's registration), where it is an
/// error; empty text is "nothing typed".
pub fn typed(input: &LocationInput, strict: bool) -> Result<Option<TypedLocation>, PlaceRefused> {
    match input {
        LocationInput::Point(p) => Ok(Some(TypedLocation::Coordinates { location: *p })),
        LocationInput::Place(s) => match Gazetteer::embedded().resolve(s) {
            Ok(r) => Ok(Some(TypedLocation::Resolved {
                input: s.clone(),
                label: r.place.label(),
                location: point(r.place.location),
                reason: r.reason,
            })),
            Err(PlaceError::Empty) if !strict => Ok(None),
            Err(e @ PlaceError::Unknown { .. }) if !strict => Ok(Some(TypedLocation::Unknown {
                input: s.clone(),
                reason: e.to_string(),
            })),
            Err(e) => Err(PlaceRefused(e.to_string())),
        },
    }
}
