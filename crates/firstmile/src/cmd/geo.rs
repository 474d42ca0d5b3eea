//! `firstmile geo`: resolve a typed place or an IP address, as the director would.

use crate::Failure;
use anyhow::Context;
use geo::gazetteer::{Gazetteer, Resolution};
use geo::ip::{IpLocation, IpLocator};
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct GeoArgs {
    /// What a user would type ("Paris, TX", "SFO", "48.85,2.35", "-33.87,151.21", "Germany")
    /// or an IP address. Negative coordinates are taken as typed (not as flags).
    #[arg(allow_hyphen_values = true)]
    pub query: String,
    /// City database for IP lookups (GeoIP2/GeoLite2/DB-IP City, or ip-location-db format).
    #[arg(long, env = "FIRSTMILE_MMDB")]
    pub mmdb: Option<PathBuf>,
    /// Optional ASN database (GeoLite2-ASN format).
    #[arg(long)]
    pub asn_mmdb: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: GeoArgs) -> Result<(), Failure> {
    if let Ok(ip) = a.query.trim().parse::<IpAddr>() {
        let mut locator = IpLocator::new();
        if let Some(p) = &a.mmdb {
            let bytes = std::fs::read(p)
                .with_context(|| format!("cannot read {}", p.display()))
                .map_err(Failure::no_input)?;
            locator = locator
                .with_city_db(bytes)
                .with_context(|| format!("{} is not a usable city database", p.display()))
                .map_err(Failure::data)?;
        }
        if let Some(p) = &a.asn_mmdb {
            let bytes = std::fs::read(p)
                .with_context(|| format!("cannot read {}", p.display()))
                .map_err(Failure::no_input)?;
            locator = locator
                .with_asn_db(bytes)
                .with_context(|| format!("{} is not a usable ASN database", p.display()))
                .map_err(Failure::data)?;
        }
        let found = locator.lookup(ip);
        if a.json {
            println!("{}", json(&found)?);
        } else {
            print!("{}", human_ip(&found, a.mmdb.is_none()));
        }
        return Ok(());
    }
    let r = Gazetteer::embedded()
        .resolve(&a.query)
        .map_err(Failure::data)?;
    if a.json {
        println!("{}", json(&r)?);
    } else {
        print!("{}", human_place(&r));
    }
    Ok(())
}

fn json(v: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string_pretty(v).map_err(|e| Failure::data(anyhow::anyhow!(e)))
}

fn human_place(r: &Resolution) -> String {
    let p = &r.place;
    let mut s = format!(
        "{}\n  at {:.4}, {:.4} ({:?}{})\n  {}\n",
        p.label(),
        p.location.lat,
        p.location.lon,
        p.kind,
        if p.population > 0 {
            format!(", population {}", p.population)
        } else {
            String::new()
        },
        r.reason
    );
    if !r.alternatives.is_empty() {
        s.push_str("  also matched:\n");
        for alt in &r.alternatives {
            s.push_str(&format!(
                "    {} ({:.4}, {:.4})\n",
                alt.label(),
                alt.location.lat,
                alt.location.lon
            ));
        }
    }
    s
}

fn human_ip(l: &IpLocation, no_db: bool) -> String {
    match l {
        IpLocation::Known {
            ip,
            location,
            city,
            country,
            source,
            asn,
            as_org,
            accuracy_km,
        } => {
            let mut s = format!(
                "{ip}: {}{}\n  at {:.4}, {:.4}\n  source: {source:?}\n",
                city.as_deref().unwrap_or("(no city)"),
                country
                    .as_deref()
                    .map(|c| format!(", {c}"))
                    .unwrap_or_default(),
                location.lat,
                location.lon,
            );
            if let Some(a) = accuracy_km {
                s.push_str(&format!("  accuracy: {a} km\n"));
            }
            if let Some(n) = asn {
                s.push_str(&format!("  AS{n} {}\n", as_org.as_deref().unwrap_or("")));
            }
            s
        }
        IpLocation::Unknown { ip, reason } => {
            let hint = if no_db {
                " (pass --mmdb PATH to look addresses up; scripts/fetch-geolite2.sh fetches GeoLite2 City)"
            } else {
                ""
            };
            format!("{ip}: location unknown: {reason}{hint}\n")
        }
    }
}
