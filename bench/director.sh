#!/usr/bin/env bash
# Director throughput: assignments per second over HTTP with 100 and 10,000 registered entry
# servers, next to nginx returning a fixed JSON body on the same machine (the ceiling).
#
# Usage: bench/director.sh [duration, default 20s] [connections, default 64]
# Installs wrk and nginx with apt-get if they are missing; builds firstmile in release mode.
# Traffic stays on 127.0.0.1; every run is bounded by the duration.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-20s}
CONN=${2:-64}
THREADS=2
DIR_PORT=17000
NGINX_PORT=17080
source bench/lib.sh

install_missing wrk:wrk nginx:nginx-light
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release -q -p firstmile
BIN=target/release/firstmile
"$BIN" keygen --out "$work/director" 2>/dev/null

echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') x $(nproc)"
echo "wrk: $THREADS threads, $CONN connections, $DUR per run"
echo

# --- nginx ceiling
cat > "$work/nginx.conf" <<NGX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      default_type application/json;
      return 200 '{"stream":"s1","primary":{"server_id":"fra-1","url":"tcp://127.0.0.2:7001"},"backup":{"server_id":"par-1","url":"tcp://127.0.0.3:7001"}}';
    }
  }
}
NGX
"$NGINX" -c "$work/nginx.conf" -p "$work"
sleep 0.5

run_wrk() { # name url
  local out
  out=$(wrk -t"$THREADS" -c"$CONN" -d"$DUR" --latency -s bench/director-assign.lua "$2")
  local rps p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  local non2xx
  non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  printf "%-34s %12s req/s   p99 %8s   non-2xx %s\n" "$1" "$rps" "$p99" "${non2xx:-0}"
}

run_wrk "nginx fixed JSON (1 worker)" "http://127.0.0.1:$NGINX_PORT/v1/assignments"

for n in 100 10000; do
  RUST_LOG=warn "$BIN" director --listen "127.0.0.1:$DIR_PORT" --fake-fleet "$n" \
    --set "auth.entry_key=bench-entry-key-0123456789abcdef0123" --set "auth.admin_token=bench-admin" \
    --set "tokens.signing_key_file=\"$work/director.key\"" \
    --set 'http.trusted_proxies=["127.0.0.0/8"]' \
    --set "http.rate_limit.per_second=1000000.0" --set "http.rate_limit.burst=1000000" &
  pids+=($!)
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$DIR_PORT/readyz" 2>/dev/null | grep -q "\"registered_entry_servers\":$n" && break
    sleep 0.2
  done
  # One request to check the answer is a real assignment.
  curl -fs -X POST -H 'content-type: application/json' -d '{"location":"Paris"}' \
    "http://127.0.0.1:$DIR_PORT/v1/assignments" | grep -q '"primary"' \
    || { echo "director not answering with $n servers"; exit 1; }
  run_wrk "director, $n servers" "http://127.0.0.1:$DIR_PORT"
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
  unset 'pids[-1]'
done
