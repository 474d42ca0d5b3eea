#!/usr/bin/env bash
# One RTMP publisher, many players, through firstmile and through nginx-rtmp, on this machine.
#
#   bench/rtmp.sh [players, default 20] [seconds, default 20] [mbit/s, default 4]
#
# The source is an H.264 + AAC FLV file made once with ffmpeg. firstmile: `firstmile up
# --servers 3`; ffmpeg publishes it with -re to the director's primary and backup at once (the
# `tee` command `firstmile assign --protocol rtmp --ffmpeg` prints) and PLAYERS `curl` players
# read HTTP-FLV from the third node, which relays and merges both copies. nginx-rtmp (Debian
# libnginx-mod-rtmp, 1 worker): the same file published with -re, PLAYERS `rtmpdump` players.
# Then the like-for-like run: the file published to one firstmile server alone (no backup), the
# players on that same server, as with nginx-rtmp.
# Reported: server CPU seconds per GB delivered (all firstmile entry servers; the nginx worker).
# Delay: one extra player per system (`flvdelay`) reads the FLV tags and reports arrival time
# minus (publisher launch time + tag timestamp): ffmpeg -re's start-up is included in both.
# Installs ffmpeg, rtmpdump, curl, nginx and libnginx-mod-rtmp with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PLAYERS=${1:-20}
SECONDS_RUN=${2:-20}
MBPS=${3:-4}
source bench/lib.sh
install_missing ffmpeg:ffmpeg rtmpdump:rtmpdump curl:curl
cargo build --release -q -p firstmile -p firstmile-bench
BIN=target/release/firstmile
src="$work/src.flv"
ffmpeg -loglevel error -f lavfi -i "testsrc2=size=1280x720:rate=30" -f lavfi -i "sine=frequency=440" \
  -t "$((SECONDS_RUN + 5))" -c:v libx264 -preset ultrafast -b:v "${MBPS}M" -maxrate "${MBPS}M" \
  -bufsize "$((MBPS * 2))M" -g 60 -c:a aac -b:a 128k -f flv "$src"

# --- firstmile
"$BIN" up --servers 3 --data-dir "$work/up" > "$work/up.out" 2>/dev/null &
pids+=("$!")
for _ in $(seq 100); do grep -q '^Ctrl-C' "$work/up.out" 2>/dev/null && break; sleep 0.1; done
director=$(awk '$1=="director"{print $2}' "$work/up.out")
view=$(awk '$1=="entry" && $2=="nyc-1"{for(i=1;i<=NF;i++) if($i=="http") print $(i+1)}' "$work/up.out")
entry_pids=$(awk '$1=="entry"{print $NF}' "$work/up.out")
for _ in $(seq 100); do
  a=$("$BIN" assign --director "$director" --location "Paris, FR" --stream rtmpbench --protocol rtmp --json 2>/dev/null || true)
  echo "$a" | grep -q '"backup": {' && break
  sleep 0.1
done
p_url=$(echo "$a" | python3 -c 'import json,sys; print(json.load(sys.stdin)["primary"]["url"])')
b_url=$(echo "$a" | python3 -c 'import json,sys; print(json.load(sys.stdin)["backup"]["url"])')
# fm_run LABEL STREAM PLAY_URL PUBLISH_ARGS...: publish $src with ffmpeg -re (PUBLISH_ARGS are
# its output options), PLAYERS curl players and one flvdelay on PLAY_URL; prints CPU per GB of
# all entry servers and the delay.
fm_run() {
  local label=$1 stream=$2 play=$3; shift 3
  rm -f "$work"/f*
  local cpu0 cpu1 t0 bytes
  cpu0=$(cpu_of $entry_pids)
  t0=$(date +%s%N)
  ffmpeg -loglevel error -re -i "$src" -map 0 -c copy "$@" &
  pids+=("$!")
  sleep 1.5
  target/release/flvdelay --seconds "$((SECONDS_RUN - 3))" --t0-ns "$t0" --url "$play" \
    > "$work/$stream-delay" 2>/dev/null &
  for i in $(seq "$PLAYERS"); do
    curl -s --max-time "$((SECONDS_RUN - 3))" -o /dev/null -w '%{size_download}\n' \
      "$play" > "$work/f$i" 2>/dev/null &
  done
  local wait_until=$((SECONDS + SECONDS_RUN))
  while [ $SECONDS -lt $wait_until ] && pgrep -f "curl -s --max-time" >/dev/null; do sleep 0.5; done
  cpu1=$(cpu_of $entry_pids)
  bytes=$(cat "$work"/f* 2>/dev/null | awk '{s+=$1} END {print s+0}')
  python3 -c "
cpu=$cpu1-$cpu0; gb=$bytes/1e9
d=open('$work/$stream-delay').read().split() or ['nan','nan','0']
print(f'$label: players $PLAYERS, delivered {gb:.3f} GB, entry CPU {cpu:.2f} s = {cpu/gb if gb else float(\"nan\"):.2f} CPU s/GB, delay p50 {d[0]} ms p99 {d[1]} ms')"
  kill "${pids[-1]}" 2>/dev/null || true  # the publisher: done with it
  wait "${pids[-1]}" 2>/dev/null || true
}

fm_run "firstmile RTMP x2 (tee) -> HTTP-FLV on a relay node" rtmpbench "$view/live/rtmpbench.flv" \
  -f tee "[f=flv:onfail=ignore]$p_url|[f=flv:onfail=ignore]$b_url"

# --- firstmile, one server (like for like with nginx-rtmp): the same file published to the
# primary alone, the players reading HTTP-FLV from that same server.
a1=$("$BIN" assign --director "$director" --location "Paris, FR" --stream rtmpsingle --protocol rtmp --json)
s_url=$(echo "$a1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["primary"]["url"])')
s_id=$(echo "$a1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["primary"]["server_id"])')
s_http=$(awk -v id="$s_id" '$1=="entry" && $2==id {for(i=1;i<=NF;i++) if($i=="http") print $(i+1)}' "$work/up.out")
fm_run "firstmile RTMP x1 -> HTTP-FLV on the same server" rtmpsingle "$s_http/live/rtmpsingle.flv" \
  -f flv "$s_url"

# --- nginx-rtmp
start_nginx_rtmp
PORT=$RTMP_PORT
t0=$(date +%s%N)
ffmpeg -loglevel error -re -i "$src" -map 0 -c copy -f flv "rtmp://127.0.0.1:$PORT/live/bench" &
pids+=("$!")
sleep 1.5
worker=$(pgrep -f "nginx: worker process" -n)
cpu0=$(cpu_of "$worker")
sh -c "timeout $((SECONDS_RUN - 3)) rtmpdump -q -r rtmp://127.0.0.1:$PORT/live/bench -v -o - 2>/dev/null | target/release/flvdelay --t0-ns $t0 > $work/ng-delay" &
for i in $(seq "$PLAYERS"); do
  sh -c "timeout $((SECONDS_RUN - 3)) rtmpdump -q -r rtmp://127.0.0.1:$PORT/live/bench -v -o - 2>/dev/null | wc -c > $work/n$i" &
done
wait_until=$((SECONDS + SECONDS_RUN))
while [ $SECONDS -lt $wait_until ] && pgrep -f "rtmpdump -q -r rtmp://127.0.0.1:$PORT" >/dev/null; do sleep 0.5; done
cpu1=$(cpu_of "$worker")
bytes=$(cat "$work"/n* 2>/dev/null | awk '{s+=$1} END {print s+0}')
python3 -c "
cpu=$cpu1-$cpu0; gb=$bytes/1e9
d=open('$work/ng-delay').read().split() or ['nan','nan','0']
print(f'nginx-rtmp -> RTMP players: players $PLAYERS, delivered {gb:.3f} GB, nginx CPU {cpu:.2f} s = {cpu/gb if gb else float(\"nan\"):.2f} CPU s/GB, delay p50 {d[0]} ms p99 {d[1]} ms')"
