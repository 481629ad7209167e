# Shared by the bench scripts (sourced, not run): dependencies and a build,
# a temp dir, and every process started here (listed in `pids`, or nginx by
# its pid file) stopped on exit; plus small helpers.
CHATLOOP_DEPS_BENCH=1 bash scripts/deps.sh
make --no-print-directory >/dev/null
tmp=$(mktemp -d)
pids=()
bench_cleanup() {
  # a script's own teardown first (e.g. a PostgreSQL cluster under $tmp)
  if declare -F bench_before_cleanup >/dev/null; then bench_before_cleanup || true; fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$tmp/nginx.pid" ] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true
  rm -rf "$tmp"
}
trap bench_cleanup EXIT
tck=$(getconf CLK_TCK)

# A free TCP port on 127.0.0.1.
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
# Waits (up to 10 s) until http://127.0.0.1:PORT/PATH answers.
wait_http() { for _ in $(seq 100); do curl -sf "http://127.0.0.1:$1$2" >/dev/null && return 0; sleep 0.1; done; echo "nothing answers on $1" >&2; return 1; }
# utime+stime, in clock ticks, of the given PIDs.
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }

# start_nginx_relay UPSTREAM_PORT WORKERS: nginx on a free port relaying to
# chatloop-mock (keep-alive upstream, no buffering), the reference relay of
# the bench scripts. Sets nport and nginx_workers; the nginx.pid in $tmp
# makes bench_cleanup stop it.
start_nginx_relay() {
  nport=$(free_port)
  cat >"$tmp/nginx.conf" <<NGX
worker_processes $2;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log;
events { worker_connections 8192; }
http {
  access_log off;
  upstream mock { server 127.0.0.1:$1; keepalive 512; }
  server {
    listen 127.0.0.1:$nport reuseport;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGX
  nginx -c "$tmp/nginx.conf" -p "$tmp" &
  pids+=($!)
  wait_http "$nport" /health
  nginx_workers=$(pgrep -P "$(cat "$tmp/nginx.pid")" | tr '\n' ' ')
}
