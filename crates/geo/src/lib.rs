//! Geography for firstmile: where a device is.
//!
//! Two questions are answered here, both offline and without I/O:
//! - *typed place → coordinates*: [`gazetteer`] resolves what a user typed ("Paris, TX", "SFO",
//!   "48.85,2.35", "Germany") against an embedded GeoNames/ISO/IATA gazetteer;
//! - *IP address → coordinates*: [`ip`] looks an address up in an MMDB image given as bytes
//!   (GeoIP2/GeoLite2 City schema, or the flat ip-location-db schema), after configured site ranges.
//!
//! It also owns [`Location`] and the great-circle distance used by everything above it.
//! This crate is pure (L0): no sockets, no files, no clock, no environment. Callers read files and
//! hand the bytes in.

pub mod gazetteer;
pub mod ip;

use serde::{Deserialize, Serialize};

/// Mean Earth radius in kilometres (IUGG), the radius of the sphere distances are computed on.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A point on the Earth in decimal degrees (WGS 84). Latitude in [-90, 90], longitude in [-180, 180].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
}

/// A coordinate outside the accepted range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LocationError {
    #[error("latitude {0} is out of range: latitude must be a number between -90 and 90")]
    Latitude(f64),
    #[error("longitude {0} is out of range: longitude must be a number between -180 and 180")]
    Longitude(f64),
}

impl Location {
    /// A checked location. NaN and infinities are out of range.
    pub fn new(lat: f64, lon: f64) -> Result<Self, LocationError> {
        if !(-90.0..=90.0).contains(&lat) {
            return Err(LocationError::Latitude(lat));
        }
        if !(-180.0..=180.0).contains(&lon) {
            return Err(LocationError::Longitude(lon));
        }
        Ok(Self { lat, lon })
    }

    /// Great-circle distance in kilometres (haversine on a sphere of [`EARTH_RADIUS_KM`]).
    /// Error against the WGS 84 ellipsoid is below 0.5 %, far below what network paths care about.
    pub fn distance_km(&self, other: &Location) -> f64 {
        let (p1, p2) = (self.lat.to_radians(), other.lat.to_radians());
        let dp = p2 - p1;
        let dl = (other.lon - self.lon).to_radians();
        let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
    }

    /// The point as a unit vector in Earth-centred coordinates. Euclidean (chord) distance between
    /// two such vectors grows monotonically with great-circle distance, which lets spatial indexes
    /// work without special cases at the poles or the antimeridian.
    pub fn unit_vector(&self) -> [f64; 3] {
        let (lat, lon) = (self.lat.to_radians(), self.lon.to_radians());
        [lat.cos() * lon.cos(), lat.cos() * lon.sin(), lat.sin()]
    }

    /// Chord length on the unit sphere for a great-circle distance in km (inverse of the mapping
    /// used by [`Location::unit_vector`]), for radius queries on an index of unit vectors.
    pub fn chord_for_km(km: f64) -> f64 {
        let angle = (km / EARTH_RADIUS_KM).min(std::f64::consts::PI);
        2.0 * (angle / 2.0).sin()
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.4},{:.4}", self.lat, self.lon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paris_to_new_york_is_about_5837_km() {
        let paris = Location::new(48.8566, 2.3522).unwrap();
        let nyc = Location::new(40.7128, -74.0060).unwrap();
        let d = paris.distance_km(&nyc);
        assert!((d - 5837.0).abs() < 10.0, "{d}");
        assert_eq!(paris.distance_km(&paris), 0.0);
    }

    #[test]
    fn antipodes_and_antimeridian() {
        let a = Location::new(0.0, 179.9).unwrap();
        let b = Location::new(0.0, -179.9).unwrap();
        assert!(a.distance_km(&b) < 25.0);
        let n = Location::new(90.0, 0.0).unwrap();
        let s = Location::new(-90.0, 0.0).unwrap();
        assert!((n.distance_km(&s) - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6);
    }

    #[test]
    fn out_of_range_is_rejected() {
        assert_eq!(Location::new(91.0, 0.0), Err(LocationError::Latitude(91.0)));
        assert!(Location::new(0.0, 180.5).is_err());
        assert!(Location::new(f64::NAN, 0.0).is_err());
    }

    #[test]
    fn chord_matches_unit_vectors() {
        let a = Location::new(10.0, 20.0).unwrap();
        let b = Location::new(-30.0, 100.0).unwrap();
        let (va, vb) = (a.unit_vector(), b.unit_vector());
        let chord =
            ((va[0] - vb[0]).powi(2) + (va[1] - vb[1]).powi(2) + (va[2] - vb[2]).powi(2)).sqrt();
        assert!((chord - Location::chord_for_km(a.distance_km(&b))).abs() < 1e-9);
    }
}
