#!/bin/sh
# Fetch a real (old, 2018) GeoLite2 City database for the optional `geo` integration test.
#
# Source: PyPI `maxminddb-geolite2` 2018.703, which bundles MaxMind's GeoLite2-City.mmdb of
# July 2018 (GeoLite2 data by MaxMind, https://www.maxmind.com, CC BY-SA 4.0 at that time).
# Writes $REPO/.cache/geolite2/GeoLite2-City.mmdb (git-ignored) unless it already exists.
# The test reads FIRSTMILE_GEOLITE2 if set, else that path.
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
DEST="$REPO/.cache/geolite2"
OUT="$DEST/GeoLite2-City.mmdb"
if [ -s "$OUT" ]; then
    echo "already present: $OUT"
    exit 0
fi
mkdir -p "$DEST"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$TMP" maxminddb-geolite2==2018.703 \
    || python3 -m pip download --quiet --no-deps --dest "$TMP" maxminddb-geolite2==2018.703
for f in "$TMP"/*; do
    case "$f" in
        *.tar.gz) tar -xzf "$f" -C "$TMP" ;;
        *.whl | *.zip) python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$f" "$TMP" ;;
    esac
done
SRC=$(find "$TMP" -name GeoLite2-City.mmdb -type f | head -n 1)
if [ -z "$SRC" ]; then
    echo "GeoLite2-City.mmdb not found in maxminddb-geolite2==2018.703" >&2
    exit 1
fi
cp "$SRC" "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
echo "wrote $OUT ($(wc -c < "$OUT") bytes)"
