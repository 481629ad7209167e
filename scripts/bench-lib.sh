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
