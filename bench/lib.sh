# Shared by the bench/ scripts: a work directory cleaned up on exit, package installs, CPU time
# of processes, and an nginx-rtmp server. Source it after `set -euo pipefail`.

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

# install_missing CMD:PACKAGE... — apt-get install the packages whose command (or file) is missing.
install_missing() {
  local need=() spec cmd pkg
  for spec in "$@"; do
    cmd=${spec%%:*}; pkg=${spec#*:}
    if [[ $cmd == /* ]]; then [ -e "$cmd" ] && continue; else command -v "$cmd" >/dev/null && continue; fi
    need+=($pkg)
  done
  if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

# cpu_of PID... — total user+system CPU seconds of the processes still alive.
cpu_of() {
  local t=0 p
  for p in "$@"; do
    if [ -r "/proc/$p/stat" ]; then
      t=$(awk -v t="$t" '{ sub(/.*\) /, ""); print t + ($12 + $13) / 100 }' "/proc/$p/stat")
    fi
  done
  echo "$t"
}

# free_port — a TCP port free on 127.0.0.1 now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# run_nginx LIVE_EXTRA [HTTP_BLOCK] — nginx with the RTMP module (1 worker) listening on
# RTMP_PORT, application `live` (`live on; record off;` and LIVE_EXTRA), plus HTTP_BLOCK.
run_nginx() {
  install_missing nginx:nginx /usr/lib/nginx/modules/ngx_rtmp_module.so:libnginx-mod-rtmp
  cat > "$work/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
rtmp { server { listen 127.0.0.1:$RTMP_PORT; chunk_size 4096; application live {
  live on; record off; $1 } } }
${2:-}
CONF
  "$(command -v nginx || echo /usr/sbin/nginx)" -c "$work/nginx.conf" -p "$work"
}

# start_nginx_rtmp — nginx-rtmp on a free port; sets RTMP_PORT.
start_nginx_rtmp() {
  RTMP_PORT=$(free_port)
  run_nginx ""
  sleep 0.5
}

# start_nginx_hls — nginx-rtmp publishing HLS (`hls on`, 2 s fragments, a 10 s playlist) and
# serving it over HTTP with CORS; sets RTMP_PORT and HLS_PORT (playlist of stream S:
# http://127.0.0.1:$HLS_PORT/hls/S.m3u8).
start_nginx_hls() {
  RTMP_PORT=$(free_port)
  HLS_PORT=$(free_port)
  # nginx's worker runs as an unprivileged user: it writes and serves the fragments.
  mkdir -p "$work/hls"
  chmod 755 "$work"
  chmod 777 "$work/hls"
  run_nginx "hls on; hls_path $work/hls; hls_fragment 2s; hls_playlist_length 10s;" "http {
  access_log off;
  client_body_temp_path $work/nginx-body;
  server { listen 127.0.0.1:$HLS_PORT; location /hls/ {
    alias $work/hls/;
    types { application/vnd.apple.mpegurl m3u8; video/mp2t ts; }
    add_header Cache-Control no-cache;
    add_header Access-Control-Allow-Origin *;
  } }
}"
}
