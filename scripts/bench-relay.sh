#!/usr/bin/env bash
# Pass-through benchmark (issue 3's closing numbers): 100-token streams of
# POST /v1/chat/completions at concurrency 50 and 256, upstream chatloop-mock
# streaming as fast as it can, sent (a) straight to chatloop-mock, (b) through
# chatloop (1 worker), (c) through nginx (1 worker, proxy_buffering off).
# Reports streams/s, tokens/s, CPU microseconds per stream of the relay's
# processes (utime+stime from /proc) and chatloop's peak RSS. Loopback only;
# every process started here is stopped at the end.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
. scripts/bench-lib.sh
DUR=${DUR:-10}
TOKENS=100

cat >"$tmp/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"model":"llama-3.3-70b-versatile","stream":true,"messages":[{"role":"user","content":"hello"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer gsk_fake_bench"
LUA

# row NAME PORT CONC PID... : one line of the table
row() {
  local name=$1 port=$2 conc=$3; shift 3
  local t0 t1 out n rps errs
  t0=$(cpu_ticks "$@")
  out=$(wrk -t1 -c"$conc" -d"${DUR}s" -s "$tmp/post.lua" "http://127.0.0.1:$port/v1/chat/completions")
  t1=$(cpu_ticks "$@")
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {printf "%s ", $0}')
  awk -v n="$name" -v c="$conc" -v r="$rps" -v t="$TOKENS" -v cpu="$((t1 - t0))" -v q="$n" -v k="$tck" -v e="$errs" \
    'BEGIN { printf "%-26s c=%-4s %9.0f streams/s %10.0f tokens/s %7.1f us CPU/stream %s\n", n, c, r, r * t, cpu * 1e6 / k / q, e }'
}

mport=$(free_port)
./build/chatloop-mock --listen "127.0.0.1:$mport" --mock-tokens $TOKENS --mock-token-interval 0 \
  --mock-first-token 0 --record 0 2>"$tmp/mock.log" &
mock=$!; pids+=("$mock")
wait_http "$mport" /health

cport=$(free_port)
GROQ_API_KEY=gsk_fake_bench ./build/chatloop --config conf/chatloop.conf --listen "127.0.0.1:$cport" \
  --workers 1 --base-url "http://127.0.0.1:$mport/v1" --auth off --access-log off --log-level warn \
  2>"$tmp/chatloop.log" &
sup=$!; pids+=("$sup")
wait_http "$cport" /health
worker=$(pgrep -P "$sup" | head -1)

start_nginx_relay "$mport" 1

echo "100-token streams, wrk -t1 -d${DUR}s, $(nproc) cores, $(date -u +%F)"
for c in 50 256; do
  row "direct to chatloop-mock" "$mport" "$c" "$mock"
  row "chatloop (1 worker)" "$cport" "$c" "$worker"
  row "nginx (1 worker)" "$nport" "$c" $nginx_workers
done
echo "chatloop worker peak RSS: $(awk '/VmHWM/ {print $2, $3}' "/proc/$worker/status")"
grep -i 'restart' "$tmp/chatloop.log" && { echo "a chatloop worker died during the run" >&2; exit 1; } || true
