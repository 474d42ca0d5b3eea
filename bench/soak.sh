#!/usr/bin/env bash
# A soak run: does firstmile stay flat over a long run of many broadcasts?
#
#   bench/soak.sh [minutes, default 30] [broadcasts, default 10000] [out dir, default bench/results]
#
# `firstmile up` (release build, six entry servers keeping broadcasts for RETENTION_S seconds,
# default 300, so the disk curve can settle within the run), then the `soak` tool: a pool of 300
# stream keys going live again and again, BROADCASTS broadcasts spread evenly over MINUTES, of
# mixed length (80 % 1–5 s, 18 % 10–40 s, 2 % 1–3 min) at 200 kbit/s over a primary and a
# backup, 30 % of them with one or two viewers on a random entry server (most relay it) who
# check they got every byte. Every 10 s it samples, per process (the director, which is the
# `firstmile up` process, and each entry server): resident memory, open descriptors, disk used
# by its broadcast logs, its last heartbeat's size, the broadcasts it holds in memory and the
# size of its own log file (stderr; a log line that grows with history shows there first).
# Each device of the pool asks the director from its own address on 127.1.0.0/16.
# Writes OUT/soak-DATE.csv and OUT/soak-DATE.svg (one panel per measure, one line per process)
# and prints a summary: each measure's value when warm-up ends (a third of the run), at the end,
# and its maximum — a flat curve has end ≈ warm-up. Not a test; nothing here is timed.
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-30}
BROADCASTS=${2:-10000}
OUT=${3:-bench/results}
RETENTION_S=${RETENTION_S:-300}
source bench/lib.sh

cargo build --release -q -p firstmile -p firstmile-bench
BIN=target/release
mkdir -p "$OUT"
stamp=$(date -u +%Y-%m-%d)
csv="$OUT/soak-$stamp.csv"

FIRSTMILE_ENTRY_RETENTION_SECS=$RETENTION_S \
  "$BIN/firstmile" up --data-dir "$work/data" > "$work/up.out" 2>"$work/up.err" &
up=$!
pids+=("$up")
for _ in $(seq 200); do grep -q '^admin token' "$work/up.out" 2>/dev/null && break; sleep 0.1; done
director=$(awk '$1=="director"{print $2}' "$work/up.out")
mapfile -t entries < <(awk '$1=="entry"{for(i=1;i<=NF;i++) if($i=="http") h=$(i+1); print $2, $NF, h}' "$work/up.out")
views=$(printf '%s\n' "${entries[@]}" | awk '{print $3}' | paste -sd, -)
for _ in $(seq 100); do
  "$BIN/firstmile" assign --director "$director" --location "Paris, FR" --json 2>/dev/null | grep -q '"backup": {' && break
  sleep 0.2
done

metric() { # $1 = http base, $2 = metric name
  curl -fs --max-time 5 "$1/metrics" 2>/dev/null | awk -v m="$2" '$1==m {print $2; exit}'
}
streams_of() { # ingest + relay broadcasts held in memory
  curl -fs --max-time 5 "$1/metrics" 2>/dev/null | awk '/^firstmile_entry_streams\{/ {s += $2} END {print s + 0}'
}
sample() { # $1 = seconds since start; never fails (a file deleted under du, a slow server)
  set +e
  local t=$1 rss fds
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$up/status")
  fds=$(ls "/proc/$up/fd" | wc -l)
  echo "$t,director,$rss,$fds,0,0,0,$(stat -c %s "$work/up.err" 2>/dev/null || echo 0)" >> "$csv"
  local e id pid http disk hb st lf
  for e in "${entries[@]}"; do
    read -r id pid http <<< "$e"
    [ -r "/proc/$pid/status" ] || continue
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    fds=$(ls "/proc/$pid/fd" | wc -l)
    disk=$(du -sb "$work/data/$id" 2>/dev/null | awk '{print $1}')
    hb=$(metric "$http" firstmile_entry_heartbeat_bytes)
    st=$(streams_of "$http")
    lf=$(stat -c %s "$work/data/$id.log" 2>/dev/null)
    echo "$t,$id,$rss,$fds,${disk:-0},${hb:-0},${st:-0},${lf:-0}" >> "$csv"
  done
  set -e
}

echo "t_s,process,rss_kb,fds,disk_bytes,heartbeat_bytes,streams_in_memory,log_file_bytes" > "$csv"
start=$(date +%s)
sample 0
( while sleep 10; do sample $(( $(date +%s) - start )); done ) &
sampler=$!
pids+=("$sampler")
"$BIN/soak" --director "$director" --views "$views" --minutes "$MINUTES" \
  --broadcasts "$BROADCASTS" > "$work/soak.json" 2> "$work/soak.err"
# Let the last broadcasts end, be released and be reported before the last samples.
sleep 90
kill "$sampler" 2>/dev/null || true
sample $(( $(date +%s) - start ))
# Whatever a server still holds after the load is a finding: keep its list for a look.
held="$OUT/soak-$stamp-held.txt"
: > "$held"
for e in "${entries[@]}"; do
  read -r id pid http <<< "$e"
  if [ "$(streams_of "$http")" != 0 ]; then
    echo "== $id" >> "$held"
    curl -fs "$http/v1/streams" >> "$held" 2>/dev/null || true
    echo >> "$held"
  fi
done
[ -s "$held" ] || rm -f "$held"

python3 - "$csv" "$OUT/soak-$stamp.svg" "$MINUTES" "$BROADCASTS" <<'PY'
import csv, sys
from collections import defaultdict
path, svg_path, minutes, broadcasts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = list(csv.DictReader(open(path)))
measures = [("rss_kb", "resident memory (MB)", 1 / 1024), ("fds", "open descriptors", 1),
            ("disk_bytes", "log disk (MB)", 1 / 1e6), ("heartbeat_bytes", "heartbeat (bytes)", 1),
            ("streams_in_memory", "broadcasts in memory", 1),
            ("log_file_bytes", "own log file (MB)", 1 / 1e6)]
procs = sorted({r["process"] for r in rows}, key=lambda p: (p != "director", p))
series = defaultdict(list)
for r in rows:
    for m, _, f in measures:
        series[(r["process"], m)].append((float(r["t_s"]), float(r[m]) * f))
tmax = max(float(r["t_s"]) for r in rows) or 1
colours = ["#222", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
W, H, pad = 900, 170, 48
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H * len(measures) + 60}" font-family="sans-serif" font-size="11">',
       f'<text x="{pad}" y="18" font-size="14">firstmile soak: {broadcasts} broadcasts over {minutes} min (bench/soak.sh)</text>']
for i, (m, label, _) in enumerate(measures):
    y0 = 40 + i * H
    vals = [v for p in procs for _, v in series[(p, m)]]
    vmax = max(vals + [1]) * 1.1
    out.append(f'<text x="{pad}" y="{y0 + 10}">{label}</text>')
    out.append(f'<rect x="{pad}" y="{y0 + 16}" width="{W - 2 * pad}" height="{H - 40}" fill="none" stroke="#ccc"/>')
    out.append(f'<text x="{pad - 4}" y="{y0 + 22}" text-anchor="end">{vmax:.0f}</text>')
    out.append(f'<text x="{pad - 4}" y="{y0 + H - 24}" text-anchor="end">0</text>')
    for j, p in enumerate(procs):
        pts = series[(p, m)]
        if not pts or (m not in ("rss_kb", "fds", "log_file_bytes") and p == "director"):
            continue
        xy = " ".join(f"{pad + (W - 2 * pad) * t / tmax:.1f},{y0 + 16 + (H - 40) * (1 - v / vmax):.1f}" for t, v in pts)
        out.append(f'<polyline points="{xy}" fill="none" stroke="{colours[j % len(colours)]}" stroke-width="1.3"/>')
for j, p in enumerate(procs):
    out.append(f'<text x="{pad + j * 110}" y="{40 + len(measures) * H + 8}" fill="{colours[j % len(colours)]}">{p}</text>')
out.append(f'<text x="{W - pad}" y="{40 + len(measures) * H + 8}" text-anchor="end">time 0–{tmax / 60:.0f} min</text></svg>')
open(svg_path, "w").write("\n".join(out))

# Summary: warm-up end (a third of the run), end, max.
print(f"| process | measure | at {tmax / 3 / 60:.0f} min | at end | max |")
print("|---|---|---|---|---|")
for p in procs:
    for m, label, f in measures:
        pts = series[(p, m)]
        if not pts or (p == "director" and m not in ("rss_kb", "fds", "log_file_bytes")):
            continue
        warm = min(pts, key=lambda x: abs(x[0] - tmax / 3))[1]
        print(f"| {p} | {label} | {warm:.1f} | {pts[-1][1]:.1f} | {max(v for _, v in pts):.1f} |")
PY
echo
echo "load: $(cat "$work/soak.json")"
echo "csv: $csv  plot: $OUT/soak-$stamp.svg"
grep -c . "$work/soak.err" | xargs echo "soak stderr lines:"
grep -v '^{' "$work/soak.err" | head -5 || true
