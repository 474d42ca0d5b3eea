#!/usr/bin/env bash
# Time to first frame and glass-to-glass delay in a real browser, for one live stream: firstmile's
# LL-HLS, HLS and HTTP-FLV next to nginx-rtmp's HLS, on this machine.
#
#   bench/browser.sh [trials, default 3] [seconds per trial, default 20] [out dir, default bench/results]
#
# One ffmpeg encodes a 640x360 30 fps test pattern (x264 veryfast, zerolatency, a keyframe every
# 2 s, 1.5 Mbit/s; AAC) and sends it over RTMP to firstmile's primary and backup (`firstmile up
# --servers 3`, the director's assignment) and to nginx-rtmp (Debian libnginx-mod-rtmp, `hls on`,
# 2 s fragments — the same length as firstmile's segments — 10 s playlist). It draws the capture
# time on every frame: 20 black/white boxes across the top, bit k of (Unix time in ms / 10).
# A headless Chromium page (bench/web/glass.html) plays one URL — hls.js 1.7.4 with its defaults
# (the copy firstmile serves), or mpegts.js 1.8.2 for HTTP-FLV (no stash buffer, chasing the live
# edge) — and reads the boxes off every frame it shows: delay = display time − capture time, on
# the same clock; time to first frame = first frame shown − URL handed to the player. Each trial
# is a fresh browser; the kinds take turns, trial after trial. Prints a Markdown table and writes
# every trial to OUT/browser-DATE.jsonl. Not a test; installs ffmpeg, chromium, nginx and
# libnginx-mod-rtmp with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:-3}
EACH=${2:-20}
OUT=${3:-bench/results}
source bench/lib.sh
install_missing ffmpeg:ffmpeg chromium:chromium curl:curl
cargo build --release -q -p firstmile
BIN=target/release/firstmile
mkdir -p "$OUT"
results="$OUT/browser-$(date -u +%Y-%m-%d).jsonl"
: > "$results"

# --- firstmile and nginx-rtmp
"$BIN" up --servers 3 --data-dir "$work/up" > "$work/up.out" 2>/dev/null &
pids+=("$!")
for _ in $(seq 200); do grep -q '^Ctrl-C' "$work/up.out" 2>/dev/null && break; sleep 0.1; done
director=$(awk '$1=="director"{print $2}' "$work/up.out")
http_of() { awk -v id="$1" '$1=="entry" && $2==id {for(i=1;i<=NF;i++) if($i=="http") print $(i+1)}' "$work/up.out"; }
for _ in $(seq 100); do
  a=$("$BIN" assign --director "$director" --location "Paris, FR" --stream glass --protocol rtmp --no-probe --json 2>/dev/null || true)
  echo "$a" | grep -q '"backup": {' && break
  sleep 0.1
done
field() { echo "$a" | python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
p_url=$(field '["primary"]["url"]'); b_url=$(field '["backup"]["url"]')
p_id=$(field '["primary"]["server_id"]'); b_id=$(field '["backup"]["server_id"]')
r_id=$(awk -v p="$p_id" -v b="$b_id" '$1=="entry" && $2!=p && $2!=b {print $2; exit}' "$work/up.out")
ingest=$(http_of "$p_id"); relay=$(http_of "$r_id")
start_nginx_hls

# --- the publisher: the capture clock drawn on every frame, then the frames renumbered
filter="settb=1/1000,setpts=RTCTIME/1000,drawbox=x=0:y=0:w=640:h=32:color=black:t=fill"
for k in $(seq 0 19); do
  filter+=",drawbox=x=$((k * 32)):y=0:w=32:h=32:color=white:t=fill:enable='mod(floor(t*100/$((2 ** k))),2)'"
done
filter+=",setpts=N/(30*TB)"
ffmpeg -loglevel error -re -f lavfi -i "testsrc2=size=640x360:rate=30" \
  -re -f lavfi -i "sine=frequency=440:sample_rate=48000" -map 0:v -map 1:a \
  -vf "$filter" -r 30 -c:v libx264 -preset veryfast -tune zerolatency -pix_fmt yuv420p \
  -g 60 -keyint_min 60 -sc_threshold 0 -b:v 1500k -maxrate 1500k -bufsize 1500k \
  -c:a aac -b:a 96k -flags +global_header -f tee \
  "[f=flv:onfail=ignore]$p_url|[f=flv:onfail=ignore]$b_url|[f=flv:onfail=ignore]rtmp://127.0.0.1:$RTMP_PORT/live/glass" \
  2> "$work/ffmpeg.err" &
pids+=("$!")
ready() { curl -fs -o /dev/null --max-time 15 "$1"; }
for u in "$ingest/hls/glass/index.m3u8" "$relay/hls/glass/index.m3u8" "http://127.0.0.1:$HLS_PORT/hls/glass.m3u8"; do
  for _ in $(seq 60); do ready "$u" && break; sleep 0.5; done
  ready "$u" || { echo "not playing: $u" >&2; cat "$work/ffmpeg.err" >&2; exit 1; }
done
sleep 6 # a few segments in every playlist

# --- the page server and the trials
python3 bench/glass_server.py "$results" > "$work/page.port" &
pids+=("$!")
for _ in $(seq 50); do [ -s "$work/page.port" ] && break; sleep 0.1; done
page="http://127.0.0.1:$(cat "$work/page.port")/glass.html"
kinds=(
  "firstmile LL-HLS, ingest node|hls|$ingest/hls/glass/index.m3u8"
  "firstmile LL-HLS, relay node|hls|$relay/hls/glass/index.m3u8"
  "firstmile HLS (classic playlist), ingest node|hls|$ingest/hls/glass/classic.m3u8"
  "firstmile HTTP-FLV, ingest node|flv|$ingest/live/glass.flv"
  "nginx-rtmp HLS (2 s fragments)|hls|http://127.0.0.1:$HLS_PORT/hls/glass.m3u8"
)
chromium_bin=$(command -v chromium || command -v chromium-browser)
n=0
for t in $(seq "$TRIALS"); do
  for k in "${kinds[@]}"; do
    IFS='|' read -r label kind src <<< "$k"
    n=$((n + 1))
    url="$page?$(python3 -c 'import sys, urllib.parse as u; print(u.urlencode({"label": sys.argv[1], "kind": sys.argv[2], "src": sys.argv[3], "seconds": sys.argv[4]}))' "$label" "$kind" "$src" "$EACH")"
    before=$(wc -l < "$results")
    "$chromium_bin" --headless --no-sandbox --disable-gpu --mute-audio --no-first-run \
      --autoplay-policy=no-user-gesture-required --disable-background-networking \
      --user-data-dir="$work/chrome-$n" "$url" > /dev/null 2>&1 &
    chrome=$!
    for _ in $(seq $(((EACH + 30) * 10))); do
      [ "$(wc -l < "$results")" -gt "$before" ] && break
      sleep 0.1
    done
    kill "$chrome" 2>/dev/null || true
    wait "$chrome" 2>/dev/null || true
    [ "$(wc -l < "$results")" -gt "$before" ] || echo "trial $t: no result from $label" >&2
  done
done

python3 - "$results" <<'PY'
import json, sys, statistics as st
from collections import OrderedDict
rows = OrderedDict()
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["label"], []).append(r)
def med(xs):
    xs = [x for x in xs if x is not None]
    return f"{st.median(xs) / 1000:.2f} s" if xs else "—"
print("| what | time to first frame, median (each trial) | glass-to-glass p50 (median of trials) | p95 (worst trial) | frames | stalls | errors |")
print("|---|---|---|---|---|---|---|")
for label, rs in rows.items():
    each = ", ".join("—" if r["ttff_ms"] is None else f'{r["ttff_ms"] / 1000:.2f}' for r in rs)
    p95 = [r["delay_p95_ms"] for r in rs if r["delay_p95_ms"] is not None]
    errs = sum(len(r["errors"]) for r in rs)
    print(f'| {label} | {med([r["ttff_ms"] for r in rs])} ({each}) | {med([r["delay_p50_ms"] for r in rs])} '
          f'| {max(p95) / 1000:.2f} s | {sum(r["frames"] for r in rs)} | {sum(r["stalls"] for r in rs)} | {errs} |'
          if p95 else f'| {label} | — | — | — | 0 | — | {errs} |')
PY
echo "trials: $results"
