#!/usr/bin/env bash
# One live stream to many viewers, through firstmile and through nginx-rtmp, on this machine.
#
#   bench/fanout.sh [viewers, default 200] [seconds, default 20] [mbit/s, default 8]
#
# firstmile: `firstmile up --servers 3`; the `fanout` tool pushes a paced stream of timestamped
# records through the director's primary and backup, and VIEWERS HTTP viewers watch it on the
# third node (which relays it from both). Reported: CPU seconds of all entry servers per GB
# delivered, end-to-end latency p50/p99, and — in a second run where the primary is killed with
# SIGKILL half-way — the longest stall any viewer saw and whether any record was missed or
# repeated.
# nginx-rtmp: ffmpeg publishes an MBIT Mbit/s H.264 file (made once) with -re; VIEWERS rtmpdump
# players read it; reported: nginx CPU seconds per GB delivered, and the delay seen by one more
# player (arrival minus publisher launch + tag timestamp; ffmpeg's start-up is included). nginx-rtmp has no backup path:
# killing it ends every viewer's stream.
# Installs nginx with libnginx-mod-rtmp, ffmpeg and rtmpdump with apt-get when missing. All
# traffic stays on 127.0.0.0/8; every run is bounded by SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."
VIEWERS=${1:-200}
SECONDS_RUN=${2:-20}
MBPS=${3:-8}
source bench/lib.sh


cargo build --release -q -p firstmile -p firstmile-bench
BIN=target/release

run_firstmile() { # $1 = label, $2 = kill primary? (yes/no)
  "$BIN/firstmile" up --servers 3 --data-dir "$work/up-$1" > "$work/up-$1.out" 2>/dev/null &
  local up=$!
  pids+=("$up")
  for _ in $(seq 100); do grep -q '^Ctrl-C' "$work/up-$1.out" 2>/dev/null && break; sleep 0.1; done
  local director; director=$(awk '$1=="director"{print $2}' "$work/up-$1.out")
  # Paris → primary lon-1, backup fra-1; viewers on nyc-1.
  local view; view=$(awk '$1=="entry" && $2=="nyc-1"{for(i=1;i<=NF;i++) if($i=="http") print $(i+1)}' "$work/up-$1.out")
  local lon_pid; lon_pid=$(awk '$1=="entry" && $2=="lon-1"{print $NF}' "$work/up-$1.out")
  local entry_pids; entry_pids=$(awk '$1=="entry"{print $NF}' "$work/up-$1.out")
  # Wait until the servers are selectable.
  for _ in $(seq 100); do
    "$BIN/firstmile" assign --director "$director" --location "Paris, FR" --json 2>/dev/null | grep -q '"backup": {' && break
    sleep 0.1
  done
  local cpu0; cpu0=$(cpu_of $entry_pids)
  local kill_args=()
  [ "$2" = yes ] && kill_args=(--kill-pid "$lon_pid" --kill-at $((SECONDS_RUN / 2)))
  "$BIN/fanout" --director "$director" --stream "bench-$1" --mbps "$MBPS" --seconds "$SECONDS_RUN" \
    --viewers "$VIEWERS" --view "$view" "${kill_args[@]}" > "$work/fanout-$1.json"
  local cpu1; cpu1=$(cpu_of $entry_pids)
  kill "$up" 2>/dev/null || true
  wait "$up" 2>/dev/null || true
  python3 - "$work/fanout-$1.json" "$cpu0" "$cpu1" "$1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); cpu = float(sys.argv[3]) - float(sys.argv[2])
gb = r["bytes_delivered"] / 1e9
print(f"firstmile {sys.argv[4]}: viewers {r['viewers']}, delivered {gb:.2f} GB, entry CPU {cpu:.1f} s "
      f"= {cpu / gb if gb else float('nan'):.2f} CPU s/GB, latency p50 {r['latency_ms']['p50']:.1f} ms "
      f"p99 {r['latency_ms']['p99']:.1f} ms, longest viewer stall {r['max_stall_ms']:.0f} ms, "
      f"out-of-order records {r['out_of_order_records']}, viewer errors {r['viewer_errors']}")
PY
}

run_firstmile steady no
run_firstmile kill-primary yes

# --- nginx-rtmp ------------------------------------------------------------------------------
install_missing ffmpeg:ffmpeg rtmpdump:rtmpdump
start_nginx_rtmp
PORT=$RTMP_PORT
src="$work/src.flv"
ffmpeg -loglevel error -f lavfi -i "testsrc2=size=1280x720:rate=30" -t "$((SECONDS_RUN + 5))" \
  -c:v libx264 -preset ultrafast -b:v "${MBPS}M" -maxrate "${MBPS}M" -bufsize "$((MBPS * 2))M" -g 60 \
  -f flv "$src"
t0=$(date +%s%N)
ffmpeg -loglevel error -re -i "$src" -c copy -f flv "rtmp://127.0.0.1:$PORT/live/bench" &
pids+=("$!")
sleep 1
worker=$(pgrep -f "nginx: worker process" -n)
cpu0=$(cpu_of "$worker")
# One more player measures the delay: arrival minus (publisher launch + tag timestamp).
sh -c "timeout $((SECONDS_RUN - 2)) rtmpdump -q -r rtmp://127.0.0.1:$PORT/live/bench -v -o - 2>/dev/null | $BIN/flvdelay --t0-ns $t0 > $work/ng-delay" &
for i in $(seq "$VIEWERS"); do
  sh -c "timeout $((SECONDS_RUN - 2)) rtmpdump -q -r rtmp://127.0.0.1:$PORT/live/bench -v -o - 2>/dev/null | wc -c > $work/v$i" &
done
wait_until=$((SECONDS + SECONDS_RUN))
while [ $SECONDS -lt $wait_until ] && pgrep -f "rtmpdump -q -r rtmp://127.0.0.1:$PORT" >/dev/null; do sleep 0.5; done
cpu1=$(cpu_of "$worker")
bytes=$(cat "$work"/v* 2>/dev/null | awk '{s+=$1} END {print s+0}')
python3 -c "
cpu=$cpu1-$cpu0; gb=$bytes/1e9
d=open('$work/ng-delay').read().split() or ['nan','nan','0']
print(f'nginx-rtmp: viewers $VIEWERS, delivered {gb:.2f} GB, nginx CPU {cpu:.1f} s = {cpu/gb if gb else float(\"nan\"):.2f} CPU s/GB, delay p50 {d[0]} ms p99 {d[1]} ms (includes ffmpeg start-up and rtmpdump buffering)')"
