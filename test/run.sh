#!/usr/bin/env bash
# Runs every test: the C unit tests in $BUILD/test/, then the end-to-end tests
# (Node's built-in runner against $BUILD/chatloop). Ends with the line
# "N passed, N failed" and exits non-zero when anything failed.
set -u
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
BUILD="${BUILD:-build}"
export CHATLOOP_BIN="$here/$BUILD/chatloop"
export CHATLOOP_MOCK_BIN="$here/$BUILD/chatloop-mock"
passed=0
failed=0
log_dir="$(mktemp -d)"
pg_dir=""
cleanup() {
  if [ -n "$pg_dir" ]; then bash scripts/pg-local.sh stop "$pg_dir" >/dev/null 2>&1 || true; rm -rf "$pg_dir"; fi
  rm -rf "$log_dir"
}
trap cleanup EXIT

# The unit tests of code that talks to PostgreSQL (the turn) get a real
# throwaway cluster of their own: CHATLOOP_TEST_DATABASE_URL.
# (a random port may be taken by then: a few tries)
pg_dir="$(mktemp -d /tmp/chatloop-unit-pg-XXXXXX)"
for try in 1 2 3; do
  pg_port=$(( 20000 + RANDOM % 20000 ))
  if PG_FAST=1 bash scripts/pg-local.sh start "$pg_dir" "$pg_port" >"$log_dir/pg.log" 2>&1; then
    export CHATLOOP_TEST_DATABASE_URL="$(bash scripts/pg-local.sh url "$pg_dir" "$pg_port")"
    break
  fi
  bash scripts/pg-local.sh stop "$pg_dir" >/dev/null 2>&1 || true
  rm -rf "$pg_dir"; pg_dir="$(mktemp -d /tmp/chatloop-unit-pg-XXXXXX)"
done
if [ -z "${CHATLOOP_TEST_DATABASE_URL:-}" ]; then
  echo "note: no PostgreSQL for the unit tests ($(grep -m3 -E 'FATAL|ERROR|could not' "$log_dir/pg.log" | tr '\n' ' ')); the tests that need one fail"
fi

echo "== unit tests ($BUILD)"
for t in "$BUILD"/test/test_*; do
  [ -x "$t" ] || continue
  out="$log_dir/$(basename "$t").log"
  timeout 300 "$t" >"$out" 2>&1
  rc=$?
  line=$(grep -E '^[^ ]+: [0-9]+ passed, [0-9]+ failed$' "$out" | tail -1)
  p=$(echo "$line" | sed -E 's/.*: ([0-9]+) passed.*/\1/')
  f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
  if [ -z "$line" ]; then p=0; f=1; fi
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi   # crashed or sanitizer report
  passed=$((passed + p)); failed=$((failed + f))
  if [ "$f" -ne 0 ]; then
    echo "FAIL $(basename "$t") (exit $rc)"; cat "$out"
  else
    echo "ok   $(basename "$t"): $p passed"
  fi
done

if [ "${CHATLOOP_SKIP_E2E:-0}" != 1 ] && ls test/e2e/*.test.mjs >/dev/null 2>&1; then
  echo "== end-to-end tests ($CHATLOOP_BIN)"
  out="$log_dir/e2e.tap"
  # One file at a time: the tests measure server behaviour, not the runner's.
  timeout 900 node --test --test-concurrency=1 --test-reporter=tap test/e2e/ >"$out" 2>&1
  rc=$?
  grep -E '^(not ok|ok) ' "$out" | sed -E 's/^/  /'
  if grep -q '^not ok' "$out"; then
    echo "-- failures:"; grep -B2 -A40 '^not ok' "$out" | head -300
  fi
  p=$(grep -E '^# pass [0-9]+' "$out" | awk '{print $3}' | tail -1)
  f=$(grep -E '^# fail [0-9]+' "$out" | awk '{print $3}' | tail -1)
  p=${p:-0}; f=${f:-0}
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; echo "e2e runner exited $rc"; tail -50 "$out"; fi
  passed=$((passed + p)); failed=$((failed + f))
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
