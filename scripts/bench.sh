#!/usr/bin/env bash
# `make bench`: the standard scenarios of SPEC §9, measured with chatbench on
# loopback against chatloop (workers = auto) with chatloop-mock upstream and
# a throwaway PostgreSQL; nginx relaying the same mock is the reference for
# scenario 1. Prints one table and writes it as JSON to
# bench/results/<UTC date and time>.json. Every process started here is
# stopped at the end (bench-lib.sh), and only 127.0.0.x is used.
#
#   (1) relay throughput: 256 concurrent SSE turns of 100 tokens, upstream
#       as fast as it can (+ the same load on the OpenAI pass-through and
#       through nginx, for the CPU comparison)
#   (2) paced streams: 5,000 WebSocket sessions, upstream 20 tokens/s
#   (3) idle capacity: 50,000 idle WebSockets, RSS per connection
#   (4) overhead: time to first token through chatloop minus straight to
#       chatloop-mock, at 1,000 turns/s
#
# Knobs (environment): BENCH_QUICK=1 shortens every scenario (a smoke run);
# S1_DUR, S2_SESSIONS, S2_TOKENS, S3_CONNS, S4_RATE, S4_DUR override sizes;
# BENCH_ONLY="1 4" runs only those scenarios; BENCH_CHATLOOP and BENCH_CONF
# measure another chatloop binary with its own config file (an A/B run
# against an older build, with this checkout's chatbench and mocks).
# BENCH_WARM: seconds of unrecorded load before each row of (1) and (4)
# (default 2; 0: none). S4_USERS: users of row (4u) (400).
# BENCH_LIMITS: the rate-limit flags (default: limits on but never reached,
# so every turn pays for the check; "--rate-limit-per-minute 0
# --max-turns-per-user 0" measures without; "" for a binary that predates them).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
. scripts/bench-lib.sh
started=$(date +%s)
# every process here may use as many sockets as the machine lets it
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

quick=${BENCH_QUICK:-0}
S1_DUR=${S1_DUR:-$([ "$quick" = 1 ] && echo 3 || echo 15)}
S2_SESSIONS=${S2_SESSIONS:-$([ "$quick" = 1 ] && echo 500 || echo 5000)}
S2_TOKENS=${S2_TOKENS:-$([ "$quick" = 1 ] && echo 40 || echo 400)}   # 400 at 20/s: 20 s answers
S2_RAMP=${S2_RAMP:-$([ "$quick" = 1 ] && echo 2 || echo 10)}
S2_DUR=${S2_DUR:-$([ "$quick" = 1 ] && echo 3 || echo 30)}
S3_CONNS=${S3_CONNS:-$([ "$quick" = 1 ] && echo 2000 || echo 50000)}
S4_RATE=${S4_RATE:-1000}
S4_DUR=${S4_DUR:-$([ "$quick" = 1 ] && echo 3 || echo 10)}
PACE_MS=50   # 20 tokens/s
ncores=$(nproc)
results=bench/results
mkdir -p "$results"
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
CB=./build/chatbench
CHATLOOP=${BENCH_CHATLOOP:-./build/chatloop}
CONF=${BENCH_CONF:-conf/chatloop.conf}
ONLY=${BENCH_ONLY:-1 2 3 4}
LIMITS=${BENCH_LIMITS---rate-limit-per-minute 1000000 --max-turns-per-user 100000 --auth-rate-limit-per-minute 0}
# (4u) spreads the turns over S4_USERS users, each well under an ordinary limit
S4_USERS=${S4_USERS:-400}
LIMITS_MANY=${BENCH_LIMITS---rate-limit-per-minute 600 --max-turns-per-user 8 --auth-rate-limit-per-minute 0}
want() { case " $ONLY " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# ---- PostgreSQL, two mocks ---------------------------------------------------------
pgport=$(free_port)
PG_FAST=1 bash scripts/pg-local.sh start "$tmp/pg" "$pgport" >/dev/null
bench_before_cleanup() {
  [ -n "${sup:-}" ] && { kill -TERM "$sup" 2>/dev/null; wait "$sup" 2>/dev/null || true; }
  bash scripts/pg-local.sh stop "$tmp/pg" >/dev/null 2>&1 || true
}
dburl=$(bash scripts/pg-local.sh url "$tmp/pg" "$pgport")

fast_port=$(free_port)
./build/chatloop-mock --listen "127.0.0.1:$fast_port" --mock-tokens 1000 --mock-token-interval 0 \
  --mock-first-token 0 --record 0 2>"$tmp/mock-fast.log" &
fast_pid=$!; pids+=("$fast_pid")
paced_port=$(free_port)
./build/chatloop-mock --listen "127.0.0.1:$paced_port" --mock-tokens 1000 \
  --mock-token-interval "${PACE_MS}ms" --mock-first-token "${PACE_MS}ms" --record 0 \
  2>"$tmp/mock-paced.log" &
paced_pid=$!; pids+=("$paced_pid")
wait_http "$fast_port" /health
wait_http "$paced_port" /health

# ---- chatloop, started afresh for each scenario (its own CPU and peak RSS) ----------
sup=""
bench_jwt_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
start_chatloop() { # MOCKPORT WORKERS [AUTH]
  cport=$(free_port)
  GROQ_API_KEY=gsk_fake_bench DATABASE_URL="$dburl" CHATLOOP_JWT_SECRET="$bench_jwt_secret" \
    "$CHATLOOP" --config "$CONF" \
    --listen "127.0.0.1:$cport" --workers "$2" --base-url "http://127.0.0.1:$1/v1" --auth "${3:-off}" \
    --kdf-iterations 1000 \
    --access-log off --log-level warn --max-connections 200000 --backlog 4096 \
    --db-pool-size 8 ${ROW_LIMITS-$LIMITS} 2>>"$tmp/chatloop.log" &
  sup=$!
  wait_http "$cport" /health
  sleep 0.3
  workers=$(pgrep -P "$sup" | tr '\n' ' ')
}
stop_chatloop() {
  if [ -n "$sup" ]; then
    if grep -qi 'restart' "$tmp/chatloop.log"; then echo "bench: a chatloop worker died" >&2; cat "$tmp/chatloop.log" >&2; exit 1; fi
    kill -TERM "$sup" 2>/dev/null || true
    wait "$sup" 2>/dev/null || true
    sup=""
  fi
}
# kB summed over PIDs: VmHWM (peak) or VmRSS (now)
mem_kb() { local f=$1 t=0; shift; for p in "$@"; do t=$((t + $(awk -v f="$f:" '$1 == f {print $2}' "/proc/$p/status"))); done; echo $t; }

# db_ticks: CPU ticks PostgreSQL has used so far (its backends, live and
# gone): what a scenario costs the database, measured beside chatloop's own
db_ticks() {
  local pm; pm=$(head -1 "$tmp/pg/data/postmaster.pid")
  local t; t=$(awk '{print $14+$15+$16+$17}' "/proc/$pm/stat")
  echo $((t + $(cpu_ticks $(pgrep -P "$pm") 2>/dev/null || echo 0)))
}
# record ID NAME CHATBENCH_JSON CPU_TICKS PEAK_KB [EXTRA_JSON]: one scenario
# row; with d0 set (db_ticks at its start) the row says what PostgreSQL used
record() {
  local db=""
  if [ -n "${d0:-}" ]; then
    db=$(awk -v t="$(( $(db_ticks) - d0 ))" -v k="$tck" 'BEGIN{printf ",\"db_cpu_s\":%.3f", t/k}')
    d0=""
  fi
  printf '{"id":"%s","name":"%s","chatbench":%s,"cpu_s":%s,"peak_rss_kb":%s%s%s}\n' \
    "$1" "$2" "$(cat "$3")" "$(awk -v t="$4" -v k="$tck" 'BEGIN{printf "%.3f", t/k}')" "$5" "$db" "${6:-}" \
    >>"$tmp/rows.jsonl"
}
# run_cb OUT ARGS...: chatbench with JSON output; its failures are reported, not fatal
run_cb() { local out=$1; shift; "$CB" --json "$@" >"$out" || true; }
# warm_cb ARGS...: the same load for BENCH_WARM seconds (2), not recorded, so
# a row measures the steady state: the first turns on each pooled database
# connection plan the statements and compile the limit function (tens of ms,
# which made a 10 s row's p99 a measure of startup)
warm_cb() { [ "${BENCH_WARM:-2}" = 0 ] || "$CB" "$@" -d "${BENCH_WARM:-2}s" >/dev/null 2>&1 || true; }
# make_users PORT N FILE: registers N bench users and writes their access
# tokens to FILE, one per line (8 at a time, each tried a few times; the
# KDF is cheap in the bench)
make_users() {
  local base="http://127.0.0.1:$1/api/v1"
  seq "$2" | xargs -P 8 -I{} sh -c '
    b=$1; e="many$$-{}@example.test"; d="{\"email\":\"$e\",\"password\":\"bench password 1\"}"
    for try in 1 2 3 4 5; do
      curl -s -o /dev/null -H "content-type: application/json" -d "$d" "$b/auth/register"
      t=$(curl -s -H "content-type: application/json" -d "$d" "$b/auth/login" |
        sed -n "s/.*\"access_token\":\"\([^\"]*\)\".*/\1/p")
      [ -n "$t" ] && { echo "$t"; exit 0; }
      sleep 0.2
    done
    echo "bench: user $e could not log in" >&2' _ "$base" >"$3" || true
}
# make_api_key PORT: registers a bench user, logs in, prints a new API key (or nothing)
make_api_key() {
  local base="http://127.0.0.1:$1/api/v1" email="bench$$@example.test" pw="bench password 1" tok
  curl -s -o /dev/null -H 'content-type: application/json' -d "{\"email\":\"$email\",\"password\":\"$pw\"}" "$base/auth/register" || true
  tok=$(curl -s -H 'content-type: application/json' -d "{\"email\":\"$email\",\"password\":\"$pw\"}" "$base/auth/login" |
    sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p' || true)
  [ -n "$tok" ] || return 0
  curl -s -H "authorization: Bearer $tok" -H 'content-type: application/json' -d '{"name":"bench"}' "$base/keys" |
    sed -n 's/.*"key":"\(cl-[^"]*\)".*/\1/p' || true
}

echo "bench: $ncores cores, $(date -u +%F), chatloop workers = auto; this takes a few minutes" >&2

# ---- (1) relay throughput -------------------------------------------------------------
if want 1; then
echo "bench: (1) relay throughput" >&2
start_chatloop "$fast_port" auto
warm_cb --mode sse -c 256 -d "${S1_DUR}s" -t 100 --conversation-turns 10 "http://127.0.0.1:$cport/api/v1/chat"
t0=$(cpu_ticks $workers); d0=$(db_ticks)
run_cb "$tmp/s1.json" --mode sse -c 256 -d "${S1_DUR}s" -t 100 --conversation-turns 10 \
  "http://127.0.0.1:$cport/api/v1/chat"
t1=$(cpu_ticks $workers)
record 1 "relay: 256 SSE turns x 100 tokens (chat turns, PostgreSQL)" "$tmp/s1.json" $((t1 - t0)) "$(mem_kb VmHWM $workers)"
warm_cb --mode openai -c 256 -d "${S1_DUR}s" -t 100 "http://127.0.0.1:$cport/v1/chat/completions"
t0=$(cpu_ticks $workers); d0=$(db_ticks)
run_cb "$tmp/s1b.json" --mode openai -c 256 -d "${S1_DUR}s" -t 100 "http://127.0.0.1:$cport/v1/chat/completions"
t1=$(cpu_ticks $workers)
record 1b "same load on the /v1 pass-through (no PostgreSQL)" "$tmp/s1b.json" $((t1 - t0)) "$(mem_kb VmHWM $workers)"
stop_chatloop

start_nginx_relay "$fast_port" "$ncores"
warm_cb --mode openai -c 256 -d "${S1_DUR}s" -t 100 "http://127.0.0.1:$nport/v1/chat/completions"
t0=$(cpu_ticks $nginx_workers)
run_cb "$tmp/s1c.json" --mode openai -c 256 -d "${S1_DUR}s" -t 100 "http://127.0.0.1:$nport/v1/chat/completions"
t1=$(cpu_ticks $nginx_workers)
record 1c "same load through nginx (reference relay)" "$tmp/s1c.json" $((t1 - t0)) "$(mem_kb VmHWM $nginx_workers)"
kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true
rm -f "$tmp/nginx.pid"
fi

# ---- (2) paced streams ----------------------------------------------------------------
if want 2; then
echo "bench: (2) $S2_SESSIONS paced WebSocket streams" >&2
start_chatloop "$paced_port" auto
t0=$(cpu_ticks $workers); d0=$(db_ticks)
run_cb "$tmp/s2.json" --mode ws -c "$S2_SESSIONS" -r "${S2_RAMP}s" -d "${S2_DUR}s" -t "$S2_TOKENS" \
  --conversation-turns 1000 --procs "$ncores" --timeout 120s "ws://127.0.0.1:$cport/ws/chat"
t1=$(cpu_ticks $workers)
record 2 "paced: $S2_SESSIONS WebSockets, upstream 20 tokens/s" "$tmp/s2.json" $((t1 - t0)) \
  "$(mem_kb VmHWM $workers)" ",\"pace_ms\":$PACE_MS"
# the same sessions straight to the mock: what the client and machine add alone
run_cb "$tmp/s2d.json" --mode openai -c "$S2_SESSIONS" -r "${S2_RAMP}s" -d "${S2_DUR}s" -t "$S2_TOKENS" \
  --procs "$ncores" --timeout 120s "http://127.0.0.1:$paced_port/v1/chat/completions"
record 2d "same sessions straight to chatloop-mock (baseline)" "$tmp/s2d.json" 0 0 ",\"pace_ms\":$PACE_MS"
stop_chatloop
fi

# ---- (3) idle capacity ----------------------------------------------------------------
if want 3; then
echo "bench: (3) $S3_CONNS idle WebSockets" >&2
# Each process may hold at most `ulimit -n` sockets: enough workers (and
# chatbench processes) that each stays well under it, at least one per core.
fdlim=$(ulimit -n)
per=$(( fdlim * 7 / 10 ))
need=$(( (S3_CONNS + per - 1) / per ))
w3=$(( need > ncores ? need : ncores ))
start_chatloop "$fast_port" "$w3"
base_kb=$(mem_kb VmRSS $workers)
run_cb "$tmp/s3.json" --mode ws --idle -c "$S3_CONNS" -r 10s -d 20s --procs "$need" \
  -s 127.0.0.1-127.0.0.8 "ws://127.0.0.1:$cport/ws/chat" &
cbpid=$!
# sample the workers' RSS once every connection is open (or at the end of the hold)
held_kb=0; open=0
for _ in $(seq 300); do
  sleep 0.1
  open=$(curl -s "http://127.0.0.1:$cport/metrics" | awk '$1 == "chatloop_connections_open" {print $2}')
  open=${open:-0}
  if [ "$open" -ge "$S3_CONNS" ]; then sleep 2; break; fi
  kill -0 "$cbpid" 2>/dev/null || break
done
open=$(curl -s "http://127.0.0.1:$cport/metrics" | awk '$1 == "chatloop_connections_open" {print $2}')
held_kb=$(mem_kb VmRSS $workers)
wait "$cbpid" || true
record 3 "idle: $S3_CONNS WebSockets ($w3 workers)" "$tmp/s3.json" 0 "$(mem_kb VmHWM $workers)" \
  ",\"baseline_rss_kb\":$base_kb,\"held_rss_kb\":$held_kb,\"open_at_sample\":${open:-0}"
stop_chatloop
fi

# ---- (4) overhead at 1,000 turns/s ---------------------------------------------------------
if want 4; then
echo "bench: (4) time to first token at $S4_RATE turns/s" >&2
start_chatloop "$fast_port" auto
warm_cb --mode ws -c 400 -R "$S4_RATE" -d "${S4_DUR}s" -t 20 "ws://127.0.0.1:$cport/ws/chat"
t0=$(cpu_ticks $workers); d0=$(db_ticks)
run_cb "$tmp/s4.json" --mode ws -c 400 -R "$S4_RATE" -d "${S4_DUR}s" -t 20 "ws://127.0.0.1:$cport/ws/chat"
t1=$(cpu_ticks $workers)
record 4 "TTFT at $S4_RATE turns/s: WebSocket chat turns" "$tmp/s4.json" $((t1 - t0)) "$(mem_kb VmHWM $workers)"
warm_cb --mode openai -c 400 -R "$S4_RATE" -d "${S4_DUR}s" -t 20 "http://127.0.0.1:$cport/v1/chat/completions"
t0=$(cpu_ticks $workers); d0=$(db_ticks)
run_cb "$tmp/s4b.json" --mode openai -c 400 -R "$S4_RATE" -d "${S4_DUR}s" -t 20 "http://127.0.0.1:$cport/v1/chat/completions"
t1=$(cpu_ticks $workers)
record 4b "TTFT at $S4_RATE turns/s: /v1 pass-through" "$tmp/s4b.json" $((t1 - t0)) "$(mem_kb VmHWM $workers)"
stop_chatloop
# the same two, authenticated with an API key (auth = required): what key
# auth adds (a per-worker cache, so no round trip per request)
start_chatloop "$fast_port" auto required
key=$(make_api_key "$cport")
if [ -n "$key" ]; then
  warm_cb --mode ws -c 400 -R "$S4_RATE" -d "${S4_DUR}s" -t 20 --token "$key" "ws://127.0.0.1:$cport/ws/chat"
  t0=$(cpu_ticks $workers); d0=$(db_ticks)
  run_cb "$tmp/s4k.json" --mode ws -c 400 -R "$S4_RATE" -d "${S4_DUR}s" -t 20 --token "$key" "ws://127.0.0.1:$cport/ws/chat"
  t1=$(cpu_ticks $workers)
  record 4k "TTFT at $S4_RATE turns/s: WebSocket chat turns, API key" "$tmp/s4k.json" $((t1 - t0)) "$(mem_kb VmHWM $workers)"
  warm_cb --mode openai -c 400 -R "$S4_RATE" -d "${S4_DUR}s" -t 20 --token "$key" "http://127.0.0.1:$cport/v1/chat/completions"
  t0=$(cpu_ticks $workers); d0=$(db_ticks)
  run_cb "$tmp/s4bk.json" --mode openai -c 400 -R "$S4_RATE" -d "${S4_DUR}s" -t 20 --token "$key" "http://127.0.0.1:$cport/v1/chat/completions"
  t1=$(cpu_ticks $workers)
  record 4bk "TTFT at $S4_RATE turns/s: /v1 pass-through, API key" "$tmp/s4bk.json" $((t1 - t0)) "$(mem_kb VmHWM $workers)"
else
  echo "bench: (4k) skipped: this chatloop makes no API keys" >&2
fi
stop_chatloop
# the same turns spread over many users (JWT), each far below an ordinary
# limit: what the check costs when no user is hot
ROW_LIMITS=$LIMITS_MANY start_chatloop "$fast_port" auto required
make_users "$cport" "$S4_USERS" "$tmp/tokens"
if [ "$(grep -c . "$tmp/tokens")" = "$S4_USERS" ]; then
  warm_cb --mode ws -c 400 -R "$S4_RATE" -d "${S4_DUR}s" -t 20 --token-file "$tmp/tokens" "ws://127.0.0.1:$cport/ws/chat"
  t0=$(cpu_ticks $workers); d0=$(db_ticks)
  run_cb "$tmp/s4u.json" --mode ws -c 400 -R "$S4_RATE" -d "${S4_DUR}s" -t 20 --token-file "$tmp/tokens" "ws://127.0.0.1:$cport/ws/chat"
  t1=$(cpu_ticks $workers)
  record 4u "TTFT at $S4_RATE turns/s: WebSocket chat turns, $S4_USERS users" "$tmp/s4u.json" $((t1 - t0)) "$(mem_kb VmHWM $workers)"
else
  echo "bench: (4u) skipped: $(grep -c . "$tmp/tokens") of $S4_USERS users could log in" >&2
fi
stop_chatloop
warm_cb --mode openai -c 400 -R "$S4_RATE" -d "${S4_DUR}s" -t 20 "http://127.0.0.1:$fast_port/v1/chat/completions"
run_cb "$tmp/s4d.json" --mode openai -c 400 -R "$S4_RATE" -d "${S4_DUR}s" -t 20 "http://127.0.0.1:$fast_port/v1/chat/completions"
record 4d "TTFT at $S4_RATE turns/s: straight to chatloop-mock" "$tmp/s4d.json" 0 0
fi

# ---- the table ------------------------------------------------------------------------------
node scripts/bench-report.mjs "$tmp/rows.jsonl" "$results/$stamp.json" "$ncores" "$(( $(date +%s) - started ))"
