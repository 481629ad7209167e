#!/usr/bin/env bash
# HTTP core benchmark (issue 2's closing numbers): GET /health under
# `wrk -t1 -c50 -d15s` against chatloop with 1 and 2 workers and against
# nginx (1 worker, a fixed small 200) in the same sitting, with the server's
# CPU microseconds per request read from /proc (utime+stime of the workers);
# then the RSS of one worker holding 10,000 idle keep-alive connections.
# Loopback only; every process started here is stopped at the end.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
. scripts/bench-lib.sh
DUR=${DUR:-15}
IDLE=${IDLE:-10000}

# run_wrk NAME PORT PATH PID... : prints one result row
run_wrk() {
  local name=$1 port=$2 path=$3; shift 3
  local before after out reqs rps p99
  before=$(cpu_ticks "$@")
  out=$(wrk -t1 -c50 -d"${DUR}s" --latency "http://127.0.0.1:$port$path")
  after=$(cpu_ticks "$@")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  awk -v n="$name" -v r="$rps" -v p="$p99" -v c="$((after - before))" -v q="$reqs" -v t="$tck" \
    'BEGIN { printf "%-22s %12s req/s   p99 %-9s  %6.2f us CPU/request\n", n, r, p, c * 1e6 / t / q }'
}

worker_pids() { pgrep -P "$1" | tr '\n' ' '; }

echo "GET /health, wrk -t1 -c50 -d${DUR}s, $(nproc) cores, $(date -u +%F)"
for w in 1 2; do
  port=$(free_port)
  ./build/chatloop --config conf/chatloop.conf --listen "127.0.0.1:$port" --workers "$w" \
    --access-log off --log-level warn 2>"$tmp/chatloop.log" &
  sup=$!; pids+=("$sup")
  wait_http "$port" /health
  # shellcheck disable=SC2046
  run_wrk "chatloop ($w worker)" "$port" /health $(worker_pids "$sup")
  kill "$sup"; wait "$sup" || true
done

if command -v nginx >/dev/null; then
  port=$(free_port)
  cat >"$tmp/nginx.conf" <<NGX
worker_processes 1;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$port;
    location / { default_type application/json; return 200 '{"status":"ok"}'; }
  }
}
NGX
  nginx -c "$tmp/nginx.conf" -p "$tmp" &
  pids+=($!)
  wait_http "$port" /
  sleep 0.2
  run_wrk "nginx (1 worker)" "$port" / $(pgrep -P "$(cat "$tmp/nginx.pid")")
  kill "$(cat "$tmp/nginx.pid")"; rm -f "$tmp/nginx.pid"
fi

echo
echo "RSS of one worker holding $IDLE idle keep-alive connections"
port=$(free_port)
./build/chatloop --config conf/chatloop.conf --listen "127.0.0.1:$port" --workers 1 \
  --access-log off --log-level warn 2>"$tmp/chatloop.log" &
sup=$!; pids+=("$sup")
wait_http "$port" /health
wpid=$(worker_pids "$sup" | awk '{print $1}')
base=$(awk '/VmRSS/ {print $2}' "/proc/$wpid/status")
(ulimit -n 20000 2>/dev/null || true; node scripts/idle-conns.mjs "$port" "$IDLE" 6) &
cli=$!; pids+=("$cli")
sleep 1
for _ in $(seq 60); do
  open=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^chatloop_connections_open/ {print $2}')
  [ "${open:-0}" -ge "$IDLE" ] && break
  sleep 0.5
done
sleep 1
held=$(awk '/VmRSS/ {print $2}' "/proc/$wpid/status")
echo "baseline ${base} KiB, with ${open} connections ${held} KiB:" \
  "$(awk -v a="$base" -v b="$held" -v n="$open" 'BEGIN { printf "%.0f bytes per connection", (b - a) * 1024 / n }')"
wait "$cli" || true
kill "$sup"; wait "$sup" || true
