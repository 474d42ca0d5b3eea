//! Integration tests for `geo`: every accepted gazetteer form, properties of `resolve`, and IP
//! lookups over MMDB images written in the test with `mmdb-writer` (no committed databases).
//! One optional test reads a real GeoLite2 City database when `scripts/fetch-geolite2.sh` has
//! fetched it (or `FIRSTMILE_GEOLITE2` points at one), and skips with a note otherwise.

use std::net::IpAddr;

use geo::Location;
use geo::gazetteer::{Gazetteer, Place, PlaceError, PlaceKind};
use geo::ip::{IpDbError, IpLocation, IpLocator, IpSource};
use ipnet::IpNet;
use mmdb_writer::{IpVersion, Value, Writer};
use proptest::prelude::*;

fn resolve(s: &str) -> Place {
    Gazetteer::embedded()
        .resolve(s)
        .unwrap_or_else(|e| panic!("{s:?}: {e}"))
        .place
}

fn near(p: &Place, lat: f64, lon: f64, km: f64) {
    let d = p.location.distance_km(&Location::new(lat, lon).unwrap());
    assert!(d < km, "{} is {d:.0} km from {lat},{lon}", p.label());
}

// ---------------------------------------------------------------- gazetteer: accepted forms

#[test]
fn city_names() {
    let p = resolve("Paris");
    assert_eq!((p.country.as_str(), p.kind), ("FR", PlaceKind::City));
    near(&p, 48.8566, 2.3522, 10.0);
    assert_eq!(p.label(), "Paris, FR");

    for s in ["São Paulo", "sao paulo", "SAO  PAULO", "Sao-Paulo"] {
        let p = resolve(s);
        assert_eq!(p.country, "BR", "{s}");
        near(&p, -23.55, -46.63, 20.0);
    }
    for s in ["Munich", "München", "muenchen", "munchen"] {
        let p = resolve(s);
        assert_eq!(
            (p.name.as_str(), p.country.as_str()),
            ("Munich", "DE"),
            "{s}"
        );
    }
    assert_eq!(
        resolve("Rio").country,
        "BR",
        "a city name beats a lower-case airport code"
    );
}

#[test]
fn qualified_city_names() {
    for s in ["Paris, FR", "Paris, France", "paris,fr", "Paris France"] {
        assert_eq!(resolve(s).country, "FR", "{s}");
    }
    for s in ["Paris, Texas", "Paris, TX", "Paris, Texas, US", "Paris TX"] {
        let p = resolve(s);
        assert_eq!(
            (p.country.as_str(), p.admin1.as_deref()),
            ("US", Some("Texas")),
            "{s}"
        );
        near(&p, 33.66, -95.55, 20.0);
        assert_eq!(p.label(), "Paris, Texas, US");
    }
    let p = resolve("Austin, TX");
    assert_eq!(p.label(), "Austin, Texas, US");
    near(&p, 30.27, -97.74, 20.0);
    // A GeoNames admin-1 code outside the US (Île-de-France is 11).
    assert_eq!(resolve("Paris, 11").country, "FR");
}

#[test]
fn airports() {
    let p = resolve("SFO");
    assert_eq!((p.kind, p.country.as_str()), (PlaceKind::Airport, "US"));
    assert_eq!(p.label(), "SFO (San Francisco International Airport), US");
    near(&p, 37.62, -122.38, 5.0);
    let p = resolve("LHR");
    assert_eq!((p.kind, p.country.as_str()), (PlaceKind::Airport, "GB"));
    near(&p, 51.47, -0.45, 5.0);
    assert_eq!(resolve("lhr").kind, PlaceKind::Airport);
}

#[test]
fn countries() {
    for s in ["Germany", "DE", "DEU", "germany"] {
        let p = resolve(s);
        assert_eq!(
            (p.kind, p.country.as_str()),
            (PlaceKind::Country, "DE"),
            "{s}"
        );
        near(&p, 52.52, 13.40, 20.0); // the capital
    }
    assert_eq!(resolve("United Kingdom").country, "GB");
    assert_eq!(resolve("UK").country, "GB");
    assert_eq!(resolve("Mexico").kind, PlaceKind::Country);
}

#[test]
fn coordinates() {
    for s in [
        "48.8566,2.3522",
        "48.8566 2.3522",
        "48.8566, 2.3522",
        " 48.8566 ,2.3522 ",
    ] {
        let p = resolve(s);
        assert_eq!(
            (p.kind, p.country.as_str()),
            (PlaceKind::Coordinates, ""),
            "{s}"
        );
        assert_eq!(
            p.location,
            Location {
                lat: 48.8566,
                lon: 2.3522
            }
        );
        assert_eq!(p.label(), "48.8566,2.3522");
    }
    let g = Gazetteer::embedded();
    assert!(matches!(
        g.resolve("91,0"),
        Err(PlaceError::BadCoordinates(_))
    ));
    assert!(matches!(
        g.resolve("0 -181"),
        Err(PlaceError::BadCoordinates(_))
    ));
}

#[test]
fn ambiguity_is_explained() {
    let r = Gazetteer::embedded().resolve("Paris").unwrap();
    assert!(r.alternatives.iter().any(|p| p.country == "US"), "{r:?}");
    assert!(r.alternatives.len() <= 5);
    assert!(r.reason.contains("best of"), "{}", r.reason);
    let r = Gazetteer::embedded().resolve("AUS").unwrap();
    assert_eq!(r.place.kind, PlaceKind::Airport);
    assert!(r.alternatives.iter().any(|p| p.country == "AU"), "{r:?}");
}

#[test]
fn errors_say_what_is_accepted() {
    let g = Gazetteer::embedded();
    assert_eq!(g.resolve("").unwrap_err(), PlaceError::Empty);
    assert_eq!(g.resolve("  ").unwrap_err(), PlaceError::Empty);
    assert_eq!(
        g.resolve("ab\ncd").unwrap_err(),
        PlaceError::ControlCharacter { position: 2 }
    );
    assert!(matches!(
        g.resolve(&"x".repeat(201)).unwrap_err(),
        PlaceError::TooLong { len: 201, max: 200 }
    ));
    let e = g.resolve("Frankfrut").unwrap_err();
    let PlaceError::Unknown { suggestions, .. } = &e else {
        panic!("{e:?}");
    };
    assert!(
        suggestions.iter().any(|s| s == "Frankfurt am Main, DE"),
        "{suggestions:?}"
    );
    let msg = e.to_string();
    for part in [
        "Frankfrut",
        "lat,lon",
        "airport code",
        "city, country",
        "did you mean",
    ] {
        assert!(msg.contains(part), "{msg}");
    }
    assert!(matches!(
        g.resolve("Paris, Atlantis"),
        Err(PlaceError::Unknown { .. })
    ));
    // The city exists, just not in that region: suggest where it does exist.
    let Err(PlaceError::Unknown { suggestions, .. }) = g.resolve("Paris, CA") else {
        panic!("no Paris of 15,000 people in California or Canada");
    };
    assert_eq!(suggestions[..2], ["Paris, FR", "Paris, Texas, US"]);
}

#[test]
fn suggestions_are_fast() {
    let g = Gazetteer::embedded();
    let _ = g.resolve("warmup");
    let t = std::time::Instant::now();
    for _ in 0..10 {
        let _ = g.resolve("Sanfransisco");
    }
    // Generous: debug build on a shared 2-core machine.
    assert!(t.elapsed().as_millis() < 500, "{:?}", t.elapsed());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn resolve_never_panics(s in "\\PC{0,40}|.{0,250}") {
        let _ = Gazetteer::embedded().resolve(&s);
    }

    #[test]
    fn control_characters_are_rejected(a in "[a-z ]{0,10}", c in "[\\x00-\\x1f\\x7f]", b in "[a-z ]{0,10}") {
        let s = format!("{a}{c}{b}");
        prop_assert!(
            matches!(Gazetteer::embedded().resolve(&s),
                     Err(PlaceError::ControlCharacter { .. })),
            "{:?}", s
        );
    }

    #[test]
    fn too_long_is_rejected(n in 201usize..600) {
        prop_assert!(matches!(Gazetteer::embedded().resolve(&"a".repeat(n)), Err(PlaceError::TooLong { .. })), "too long accepted");
    }

    #[test]
    fn coordinates_round_trip(lat in -90.0f64..=90.0, lon in -180.0f64..=180.0, sep in prop::sample::select(vec![",", " ", ", "])) {
        let s = format!("{lat}{sep}{lon}");
        let p = Gazetteer::embedded().resolve(&s).unwrap().place;
        prop_assert_eq!(p.kind, PlaceKind::Coordinates);
        prop_assert_eq!(p.location, Location { lat, lon });
    }
}

// ---------------------------------------------------------------- ip: test databases

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn geoip2_record(lat: f64, lon: f64, cc: &str, city: &str) -> Value {
    Value::map([
        (
            "city",
            Value::map([("names", Value::map([("en", Value::from(city))]))]),
        ),
        ("country", Value::map([("iso_code", Value::from(cc))])),
        (
            "location",
            Value::map([
                ("latitude", Value::Double(lat)),
                ("longitude", Value::Double(lon)),
                ("accuracy_radius", Value::U16(20)),
            ]),
        ),
    ])
}

fn geolite2_city_db() -> Vec<u8> {
    let mut w = Writer::new("GeoLite2-City");
    w.insert_value(
        net("192.0.2.0/24"),
        geoip2_record(48.8566, 2.3522, "FR", "Paris"),
    )
    .unwrap();
    w.insert_value(
        net("2001:db8::/32"),
        geoip2_record(52.52, 13.405, "DE", "Berlin"),
    )
    .unwrap();
    // A record with a country but no location (as for some anycast ranges).
    w.insert_value(
        net("198.51.100.0/24"),
        Value::map([("country", Value::map([("iso_code", Value::from("US"))]))]),
    )
    .unwrap();
    w.to_bytes().unwrap()
}

fn flat_city_db() -> Vec<u8> {
    let mut w = Writer::builder("ip-location-db dbip-city")
        .ip_version(IpVersion::V6)
        .build();
    w.insert_value(
        net("203.0.113.0/24"),
        Value::map([
            ("country_code", Value::from("JP")),
            ("state1", Value::from("Tokyo")),
            ("city", Value::from("Tokyo")),
            ("postcode", Value::from("")),
            ("latitude", Value::Float(35.6895)),
            ("longitude", Value::Float(139.6917)),
            ("timezone", Value::from("Asia/Tokyo")),
        ]),
    )
    .unwrap();
    w.to_bytes().unwrap()
}

fn asn_db() -> Vec<u8> {
    let mut w = Writer::new("GeoLite2-ASN");
    w.insert_value(
        net("192.0.2.0/24"),
        Value::map([
            ("autonomous_system_number", Value::U32(64_500)),
            ("autonomous_system_organization", Value::from("Example Net")),
        ]),
    )
    .unwrap();
    w.to_bytes().unwrap()
}

fn place(name: &str) -> Place {
    resolve(name)
}

#[test]
fn geolite2_schema_v4_and_v6() {
    let l = IpLocator::new().with_city_db(geolite2_city_db()).unwrap();
    match l.lookup(ip("192.0.2.7")) {
        IpLocation::Known {
            location,
            city,
            country,
            source,
            accuracy_km,
            ..
        } => {
            assert_eq!(
                location,
                Location {
                    lat: 48.8566,
                    lon: 2.3522
                }
            );
            assert_eq!(city.as_deref(), Some("Paris"));
            assert_eq!(country.as_deref(), Some("FR"));
            assert_eq!(source, IpSource::Database);
            assert_eq!(accuracy_km, Some(20));
        }
        other => panic!("{other:?}"),
    }
    let v6 = l.lookup(ip("2001:db8::42"));
    assert_eq!(
        v6.location(),
        Some(Location {
            lat: 52.52,
            lon: 13.405
        })
    );
    // IPv4-mapped IPv6 is looked up as IPv4 and reported as IPv4.
    match l.lookup(ip("::ffff:192.0.2.7")) {
        IpLocation::Known {
            ip: got, country, ..
        } => {
            assert_eq!(got, ip("192.0.2.7"));
            assert_eq!(country.as_deref(), Some("FR"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn flat_schema_with_f32_coordinates() {
    let l = IpLocator::new().with_city_db(flat_city_db()).unwrap();
    match l.lookup(ip("203.0.113.9")) {
        IpLocation::Known {
            location,
            city,
            country,
            ..
        } => {
            assert_eq!(
                location,
                Location {
                    lat: 35.6895,
                    lon: 139.6917
                }
            );
            assert_eq!(city.as_deref(), Some("Tokyo"));
            assert_eq!(country.as_deref(), Some("JP"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_reasons() {
    let reason = |l: &IpLocator, a: &str| match l.lookup(ip(a)) {
        IpLocation::Unknown { reason, .. } => reason,
        k => panic!("{k:?}"),
    };
    let none = IpLocator::new();
    assert_eq!(reason(&none, "192.0.2.1"), "no database configured");
    let l = IpLocator::new().with_city_db(geolite2_city_db()).unwrap();
    assert_eq!(reason(&l, "198.51.100.1"), "record has no coordinates");
    assert_eq!(reason(&l, "8.8.8.8"), "not in database");
    assert_eq!(reason(&l, "10.0.0.1"), "private address with no site range");
    let v4only = {
        let mut w = Writer::builder("GeoLite2-City")
            .ip_version(IpVersion::V4)
            .build();
        w.insert_value(net("192.0.2.0/24"), geoip2_record(1.0, 2.0, "FR", "X"))
            .unwrap();
        IpLocator::new()
            .with_city_db(w.to_bytes().unwrap())
            .unwrap()
    };
    assert_eq!(reason(&v4only, "2001:db8::1"), "not in database");
    assert!(v4only.lookup(ip("192.0.2.1")).location().is_some());
}

#[test]
fn sites_win_and_longest_prefix_wins() {
    let l = IpLocator::new()
        .with_city_db(geolite2_city_db())
        .unwrap()
        .with_site(net("192.0.2.0/24"), place("Tokyo"))
        .with_site(net("192.0.2.128/25"), place("Sydney"))
        .with_site(net("10.0.0.0/8"), place("Austin, TX"));
    let src = |a: &str| match l.lookup(ip(a)) {
        IpLocation::Known {
            source,
            city,
            country,
            ..
        } => (source, city, country),
        u => panic!("{u:?}"),
    };
    assert_eq!(
        src("192.0.2.1"),
        (
            IpSource::Site {
                network: net("192.0.2.0/24")
            },
            Some("Tokyo".into()),
            Some("JP".into())
        )
    );
    assert_eq!(src("192.0.2.200").1.as_deref(), Some("Sydney"));
    assert_eq!(src("10.9.8.7").1.as_deref(), Some("Austin"));
    assert_eq!(src("::ffff:10.9.8.7").1.as_deref(), Some("Austin"));
    assert_eq!(src("2001:db8::1").0, IpSource::Database);
}

#[test]
fn asn_database() {
    let l = IpLocator::new()
        .with_city_db(geolite2_city_db())
        .unwrap()
        .with_asn_db(asn_db())
        .unwrap();
    match l.lookup(ip("192.0.2.1")) {
        IpLocation::Known { asn, as_org, .. } => {
            assert_eq!(asn, Some(64_500));
            assert_eq!(as_org.as_deref(), Some("Example Net"));
        }
        u => panic!("{u:?}"),
    }
    assert!(matches!(
        IpLocator::new().with_asn_db(geolite2_city_db()),
        Err(IpDbError::WrongKind { .. })
    ));
    assert!(matches!(
        IpLocator::new().with_city_db(asn_db()),
        Err(IpDbError::WrongKind { .. })
    ));
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for bytes in [Vec::new(), b"not an mmdb".to_vec(), vec![0xab; 4096], {
        let mut b = geolite2_city_db();
        b.truncate(b.len() / 2);
        b
    }] {
        assert!(IpLocator::new().with_city_db(bytes.clone()).is_err());
        assert!(IpLocator::new().with_asn_db(bytes).is_err());
    }
    // Corrupt search tree but intact metadata: lookups must not panic.
    let mut b = geolite2_city_db();
    for x in b.iter_mut().take(200) {
        *x = 0xff;
    }
    if let Ok(l) = IpLocator::new().with_city_db(b) {
        let _ = l.lookup(ip("192.0.2.1"));
        let _ = l.lookup(ip("2001:db8::1"));
    }
}

#[test]
fn serialises_with_status_tag() {
    let l = IpLocator::new();
    let v = serde_json::to_value(l.lookup(ip("192.0.2.1"))).unwrap();
    assert_eq!(v["status"], "unknown");
    let l = l.with_site(net("192.0.2.0/24"), place("Paris"));
    let v = serde_json::to_value(l.lookup(ip("192.0.2.1"))).unwrap();
    assert_eq!(v["status"], "known");
    assert_eq!(v["source"]["kind"], "site");
    assert_eq!(v["source"]["network"], "192.0.2.0/24");
}

// ---------------------------------------------------------------- ip: real database (optional)

#[test]
fn real_geolite2_database() {
    let path = std::env::var_os("FIRSTMILE_GEOLITE2")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../.cache/geolite2/GeoLite2-City.mmdb")
        });
    let Ok(bytes) = std::fs::read(&path) else {
        println!(
            "skipped: no GeoLite2 City database at {}; run scripts/fetch-geolite2.sh",
            path.display()
        );
        return;
    };
    let l = IpLocator::new().with_city_db(bytes).unwrap();
    let country = |a: &str| match l.lookup(ip(a)) {
        IpLocation::Known {
            country, location, ..
        } => (country, location),
        u => panic!("{a}: {u:?}"),
    };
    let (cc, _) = country("8.8.8.8");
    assert_eq!(cc.as_deref(), Some("US"));
    // MaxMind's documented London test address.
    let (cc, loc) = country("81.2.69.142");
    assert_eq!(cc.as_deref(), Some("GB"));
    assert!(
        loc.distance_km(&Location::new(51.5, -0.12).unwrap()) < 200.0,
        "{loc}"
    );
    // DFN (German research network) address space.
    let (cc, loc) = country("193.174.75.1");
    assert_eq!(cc.as_deref(), Some("DE"));
    assert!(
        loc.distance_km(&Location::new(51.0, 10.0).unwrap()) < 600.0,
        "{loc}"
    );
    // IPv6: Google public DNS.
    let (cc, _) = country("2001:4860:4860::8888");
    assert_eq!(cc.as_deref(), Some("US"));
}
