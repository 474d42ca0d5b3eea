//! Places: what a device says about where it is, and what the director made of it.

use std::fmt;
use std::net::IpAddr;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest typed place accepted, in characters.
pub const MAX_PLACE_LEN: usize = 200;

/// What a location field accepts, for error messages.
pub const LOCATION_ACCEPTED: &str =
    "a place as typed (at most 200 characters), or {\"lat\": -90..90, \"lon\": -180..180}";

/// A point on the Earth in decimal degrees (WGS 84).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(examples(json!({"lat": 48.8566, "lon": 2.3522})))]
pub struct Point {
    /// Latitude, -90 to 90.
    #[schema(minimum = -90.0, maximum = 90.0)]
    pub lat: f64,
    /// Longitude, -180 to 180.
    #[schema(minimum = -180.0, maximum = 180.0)]
    pub lon: f64,
}

impl Point {
    /// Whether both coordinates are finite and in range.
    pub fn is_valid(&self) -> bool {
        self.lat.is_finite()
            && self.lon.is_finite()
            && (-90.0..=90.0).contains(&self.lat)
            && (-180.0..=180.0).contains(&self.lon)
    }
}

/// Where a device or an entry server says it is: a place as a person types it (`"Paris, FR"`,
/// `"SFO"`, `"-33.87,151.21"`) or coordinates. Deserializing checks the length of text and the
/// range of coordinates, with messages that say what is accepted.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
#[serde(untagged)]
#[schema(examples("Paris, FR", json!({"lat": -33.87, "lon": 151.21})))]
pub enum LocationInput {
    /// A place as typed (at most 200 characters).
    Place(String),
    /// Coordinates.
    Point(Point),
}

impl<'de> Deserialize<'de> for LocationInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LocationInput;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(LOCATION_ACCEPTED)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<LocationInput, E> {
                let n = s.chars().count();
                if n > MAX_PLACE_LEN {
                    return Err(E::custom(format!(
                        "{n} characters, at most {MAX_PLACE_LEN} are accepted"
                    )));
                }
                if s.chars().any(char::is_control) {
                    return Err(E::custom("control characters are not accepted in a place"));
                }
                Ok(LocationInput::Place(s.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<LocationInput, A::Error> {
                let (mut lat, mut lon) = (None, None);
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "lat" if lat.is_none() => lat = Some(m.next_value::<f64>()?),
                        "lon" if lon.is_none() => lon = Some(m.next_value::<f64>()?),
                        _ => {
                            return Err(de::Error::custom(
                                "an object must have exactly the keys lat and lon",
                            ));
                        }
                    }
                }
                let (Some(lat), Some(lon)) = (lat, lon) else {
                    return Err(de::Error::custom(
                        "an object must have exactly the keys lat and lon",
                    ));
                };
                let p = Point { lat, lon };
                if !(lat.is_finite() && (-90.0..=90.0).contains(&lat)) {
                    return Err(de::Error::custom(format!(
                        "latitude {lat} is out of range: latitude must be a number between -90 and 90"
                    )));
                }
                if !(lon.is_finite() && (-180.0..=180.0).contains(&lon)) {
                    return Err(de::Error::custom(format!(
                        "longitude {lon} is out of range: longitude must be a number between -180 and 180"
                    )));
                }
                Ok(LocationInput::Point(p))
            }
        }
        d.deserialize_any(V)
    }
}

/// The typed location of a request, as the director resolved it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
#[schema(examples(json!({
    "status": "resolved", "input": "Paris, FR", "label": "Paris, FR",
    "location": {"lat": 48.85341, "lon": 2.3488}, "reason": "city Paris, FR (population 2138551)"
})))]
pub enum TypedLocation {
    /// A place the gazetteer knows.
    Resolved {
        /// What was typed.
        input: String,
        /// The place it resolved to.
        label: String,
        /// Its coordinates.
        location: Point,
        /// How it was matched (and the alternatives when ambiguous).
        reason: String,
    },
    /// Coordinates, taken as given.
    Coordinates {
        /// The point.
        location: Point,
    },
    /// Text the gazetteer does not know: the pick falls back to the other location.
    Unknown {
        /// What was typed.
        input: String,
        /// Why it is unknown (with suggestions).
        reason: String,
    },
}

impl TypedLocation {
    /// The coordinates, when known.
    pub fn point(&self) -> Option<Point> {
        match self {
            TypedLocation::Resolved { location, .. } | TypedLocation::Coordinates { location } => {
                Some(*location)
            }
            TypedLocation::Unknown { .. } => None,
        }
    }
}

/// Where a known IP location came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IpSource {
    /// A configured site range (`[director.sites]`).
    Site {
        /// The range, e.g. `10.1.0.0/16`.
        network: String,
    },
    /// The city database.
    Database,
}

/// The location of the device's IP address, as the director looked it up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
#[schema(examples(json!({
    "status": "known", "ip": "203.0.113.9", "location": {"lat": 51.5085, "lon": -0.1257},
    "city": "London", "country": "GB", "source": {"kind": "database"}, "asn": 64500,
    "as_org": "Example Net", "accuracy_km": 20
})))]
pub enum IpLocation {
    /// The databases (or a site range) know the address.
    Known {
        /// The address looked up.
        #[schema(value_type = String, format = "ip")]
        ip: IpAddr,
        /// Its coordinates.
        location: Point,
        /// City, when the database has one.
        city: Option<String>,
        /// ISO 3166-1 alpha-2 country code.
        country: Option<String>,
        /// Where the answer came from.
        source: IpSource,
        /// Autonomous system number, when an ASN database is configured.
        asn: Option<u32>,
        /// Its organisation.
        as_org: Option<String>,
        /// The database's accuracy radius.
        accuracy_km: Option<u32>,
    },
    /// Nothing is known: the pick falls back to the other location.
    Unknown {
        /// The address looked up.
        #[schema(value_type = String, format = "ip")]
        ip: IpAddr,
        /// Why (no database, not in it, no coordinates, private range without a site).
        reason: String,
    },
}

impl IpLocation {
    /// The coordinates, when known.
    pub fn point(&self) -> Option<Point> {
        match self {
            IpLocation::Known { location, .. } => Some(*location),
            IpLocation::Unknown { .. } => None,
        }
    }
}

/// Both locations of a request: the patent's two inputs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Locations {
    /// From what the user typed (none when nothing was typed).
    pub typed: Option<TypedLocation>,
    /// From the connection's address (none when the director serves without one).
    pub ip: Option<IpLocation>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_input_takes_text_or_coordinates_and_says_what_is_wrong() {
        let p: LocationInput = serde_json::from_str("\"Paris, FR\"").unwrap();
        assert_eq!(p, LocationInput::Place("Paris, FR".into()));
        let p: LocationInput = serde_json::from_str(r#"{"lon": 151.21, "lat": -33.87}"#).unwrap();
        assert_eq!(
            p,
            LocationInput::Point(Point {
                lat: -33.87,
                lon: 151.21
            })
        );
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"lat":-33.87,"lon":151.21}"#
        );
        for (bad, says) in [
            (r#"{"lat": 95, "lon": 0}"#, "between -90 and 90"),
            (r#"{"lat": 0, "lon": 190}"#, "between -180 and 180"),
            (r#"{"lat": 0}"#, "exactly the keys lat and lon"),
            (
                r#"{"lat": 0, "lon": 0, "alt": 1}"#,
                "exactly the keys lat and lon",
            ),
            ("42", "a place as typed"),
            ("\"a\\u0000b\"", "control characters"),
        ] {
            let e = serde_json::from_str::<LocationInput>(bad).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        let long = format!("\"{}\"", "x".repeat(201));
        let e = serde_json::from_str::<LocationInput>(&long).unwrap_err();
        assert!(e.to_string().contains("at most 200"), "{e}");
    }
}
