#!/usr/bin/env bash
# pg-local.sh — a throwaway local PostgreSQL cluster for `make run` and the tests.
#
#   scripts/pg-local.sh start  [DIR] [PORT]   initdb if needed, start, create database "chatloop"
#   scripts/pg-local.sh stop   [DIR]          fast shutdown (idempotent)
#   scripts/pg-local.sh url    [DIR] [PORT]   print postgresql://postgres@127.0.0.1:PORT/chatloop
#   scripts/pg-local.sh status [DIR]          exit 0 when running (prints one line either way)
#
# DIR defaults to ./var/pg (relative to the repository), PORT to the port the
# cluster was last started on, else 5433. Layout: DIR/data (PGDATA),
# DIR/postgres.log, and the server's unix socket in DIR itself.
#
# Loopback only: listen_addresses = '127.0.0.1'; pg_hba trusts 127.0.0.1/32
# and the unix socket (which sits in DIR, mode 0700, so only the cluster's
# owner and root can reach it) and nothing else. Any local user can connect
# over 127.0.0.1 as the superuser: this is a developer/test cluster, never a
# production one.
#
# PG_FAST=1 turns off fsync, synchronous_commit and full_page_writes (a crash
# of the machine may corrupt the cluster). Tests use it; `make run` does not.
#
# Run as root (initdb refuses root): the server runs as the `postgres` user
# and DIR is made owned by it. When postgres cannot traverse DIR's parent
# (a checkout under /root, say), the cluster lives in
# /tmp/chatloop-pg-<hash of DIR> instead, DIR becomes a symlink to it, and
# start says so on stderr. Not root: everything runs as the current user.
#
# start prints nothing but errors (and that note); it is idempotent (already
# running on the same port: ok), waits until the server accepts connections
# (bounded) and clears a stale postmaster.pid left by a crash.
set -euo pipefail

die() { echo "pg-local: $*" >&2; exit 1; }

here="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-}"
dir_arg="${2:-}"
port_arg="${3:-}"
case "$cmd" in
  start|stop|url|status) ;;
  *) echo "usage: $0 start|stop|url|status [DIR] [PORT]" >&2; exit 2 ;;
esac
if [ -n "$port_arg" ] && ! [[ "$port_arg" =~ ^[0-9]+$ && "$port_arg" -ge 1 && "$port_arg" -le 65535 ]]; then
  die "bad port \"$port_arg\""
fi
TIMEOUT="${PG_LOCAL_TIMEOUT:-60}"   # seconds, for each of start and stop

# libpq's environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGSSLMODE, ...)
# must not redirect our own psql/pg_isready calls. PG_FAST, PG_BIN are ours.
while read -r v; do unset "$v"; done < <(compgen -e | grep -E '^PG[A-Z]' || true)

# ---- binaries ---------------------------------------------------------------
if [ -z "${PG_BIN:-}" ]; then
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5,5nr); do
    if [ -x "$d/initdb" ]; then PG_BIN="$d"; break; fi
  done
fi
if [ -z "${PG_BIN:-}" ] && command -v initdb >/dev/null 2>&1; then
  PG_BIN="$(dirname "$(command -v initdb)")"
fi
[ -n "${PG_BIN:-}" ] && [ -x "$PG_BIN/pg_ctl" ] ||
  die "PostgreSQL server binaries not found (install the Debian package \"postgresql\": scripts/deps.sh)"

# ---- who runs the server ------------------------------------------------------
# as_pg closes fd 9 (our flock): a postmaster inheriting it would hold the
# lock for as long as it runs.
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || die "running as root but there is no \"postgres\" user (install the package \"postgresql\")"
  PGOWNER=postgres
  # cd /: the postgres user may not be allowed into our working directory.
  if command -v runuser >/dev/null 2>&1; then
    as_pg() { (cd / && runuser -u postgres -- "$@" 9>&-); }
  else
    as_pg() { local q; printf -v q '%q ' "$@"; (cd / && su -s /bin/sh postgres -c "$q" 9>&-); }
  fi
else
  PGOWNER="$(id -un)"
  as_pg() { (cd / && "$@" 9>&-); }
fi

# ---- where the cluster lives ------------------------------------------------------
want="${dir_arg:-$here/var/pg}"
case "$want" in /*) ;; *) want="$PWD/$want" ;; esac
want="${want%/}"
parent="$(dirname "$want")"
DIR="$want"
fallback_note=""
if [ "$PGOWNER" = postgres ]; then
  # Resolve the parent (start creates it, as root, when missing) and ask
  # whether postgres can reach it. The fallback is a function of the path
  # alone, so every command finds the same cluster.
  if [ "$cmd" = start ]; then mkdir -p "$parent"; fi
  if [ -d "$parent" ]; then
    parent="$(cd "$parent" && pwd -P)"
    want="$parent/$(basename "$want")"
  fi
  if ! as_pg test -x "$parent"; then
    hash="$(printf '%s' "$want" | sha256sum | cut -c1-12)"
    DIR="/tmp/chatloop-pg-$hash"
    fallback_note="pg-local: note: the postgres user cannot reach $parent; the cluster lives in $DIR (symlinked from $want)"
  fi
fi
DATA="$DIR/data"
LOG="$DIR/postgres.log"
CONF="$DATA/chatloop.conf"

# Port: the argument, else what the cluster was last started with, else 5433.
stored_port() { sed -n 's/^port = \([0-9]*\)$/\1/p' "$CONF" 2>/dev/null | head -1; }
PORT="${port_arg:-$(stored_port || true)}"
PORT="${PORT:-5433}"

# ---- state ---------------------------------------------------------------------------
# The postmaster's pid when it is running for this data directory, else "".
# A pid in postmaster.pid counts only when that process is a postgres server
# whose working directory is DATA: pids are reused after a crash or a
# container restart.
running_pid() {
  local pid comm cwd data_real
  pid="$(head -1 "$DATA/postmaster.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] && [ -d "/proc/$pid" ] || return 0
  comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
  case "$comm" in postgres|postmaster) ;; *) return 0 ;; esac
  cwd="$(readlink "/proc/$pid/cwd" 2>/dev/null || true)"
  data_real="$(cd "$DATA" 2>/dev/null && pwd -P || true)"
  [ -n "$cwd" ] && [ "$cwd" = "$data_real" ] && echo "$pid"
  return 0
}
running_port() { sed -n 4p "$DATA/postmaster.pid" 2>/dev/null || true; }

# After a crash postmaster.pid (and the socket's lock file) may name a pid
# that now belongs to another process; postgres would then refuse to start
# ("lock file already exists"). A dead pid is left alone: postgres itself
# handles that case, and also checks no old backend still holds the shared
# memory.
clear_stale() {
  local pid
  pid="$(head -1 "$DATA/postmaster.pid" 2>/dev/null || true)"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 0
  if [ -d "/proc/$pid" ] && [ -z "$(running_pid)" ]; then
    rm -f "$DATA/postmaster.pid" "$DIR"/.s.PGSQL.*
  fi
}

# After the postmaster was killed its backends notice and exit within
# moments; until they have, the old shared memory is in use and postgres
# refuses to start. Wait (bounded) for every process still in DATA to go.
wait_orphans() {
  local data_real deadline left p
  data_real="$(cd "$DATA" 2>/dev/null && pwd -P)" || return 0
  deadline=$(( $(date +%s) + TIMEOUT ))
  while :; do
    left=""
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/cwd" 2>/dev/null)" = "$data_real" ] && left="$left ${p#/proc/}"
    done
    [ -z "$left" ] && return 0
    [ "$(date +%s)" -ge "$deadline" ] && die "processes of a crashed server still run in $DATA:$left"
    sleep 0.1
  done
}

ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$1" -U postgres -d postgres -t 2 >/dev/null 2>&1; }

psql_q() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres "$@"; }

lock() {
  # One start/stop at a time per cluster.
  local lf="$DIR/.pg-local.lock"
  exec 9>>"$lf"
  flock -w "$TIMEOUT" 9 || die "another pg-local.sh holds $lf"
}

# ---- commands ---------------------------------------------------------------------------
case "$cmd" in
url)
  echo "postgresql://postgres@127.0.0.1:$PORT/chatloop"
  ;;

status)
  pid="$(running_pid)"
  if [ -n "$pid" ]; then
    echo "running: pid $pid, port $(running_port), data $DATA"
  else
    echo "stopped: data $DATA"
    exit 1
  fi
  ;;

stop)
  [ -d "$DIR" ] || exit 0
  lock
  if [ -z "$(running_pid)" ]; then clear_stale; exit 0; fi
  if ! as_pg "$PG_BIN/pg_ctl" stop -D "$DATA" -m fast -w -t "$TIMEOUT" >/dev/null 2>&1; then
    as_pg "$PG_BIN/pg_ctl" stop -D "$DATA" -m immediate -w -t "$TIMEOUT" >/dev/null 2>&1 ||
      die "could not stop the server in $DATA (see $LOG)"
  fi
  ;;

start)
  if [ -n "$fallback_note" ]; then
    # A fallback cluster is reached through the symlink for humans only.
    if [ ! -e "$want" ] || [ -L "$want" ]; then ln -sfn "$DIR" "$want"; fi
  fi
  mkdir -p "$DIR"
  lock
  if [ "$PGOWNER" = postgres ]; then chown postgres: "$DIR"; fi
  chmod 700 "$DIR"

  pid="$(running_pid)"
  if [ -n "$pid" ]; then
    rp="$(running_port)"
    [ "$rp" = "$PORT" ] || die "already running on port $rp (asked for $PORT): stop it first"
  else
    if [ -f "$DATA/postmaster.pid" ]; then clear_stale; wait_orphans; fi
    if [ ! -f "$DATA/PG_VERSION" ]; then
      [ -n "$fallback_note" ] && echo "$fallback_note" >&2
      [ ! -e "$DATA" ] || [ -z "$(ls -A "$DATA" 2>/dev/null)" ] ||
        die "$DATA exists, is not empty and holds no cluster; remove it"
      loc="C"
      if locale -a 2>/dev/null | grep -qiE '^c\.utf-?8$'; then loc="C.UTF-8"; fi
      if ! out="$(as_pg "$PG_BIN/initdb" -D "$DATA" -U postgres -E UTF8 --locale="$loc" \
                   --auth-local=trust --auth-host=trust 2>&1)"; then
        echo "$out" >&2
        die "initdb failed in $DATA"
      fi
      # Our settings live in chatloop.conf (rewritten at every start).
      echo "include_if_exists = 'chatloop.conf'" | as_pg tee -a "$DATA/postgresql.conf" >/dev/null
      as_pg tee "$DATA/pg_hba.conf" >/dev/null <<'EOF'
# chatloop throwaway cluster (scripts/pg-local.sh): loopback only.
# The unix socket lives in a 0700 directory owned by the cluster's user.
local   all   all                 trust
host    all   all   127.0.0.1/32  trust
EOF
    fi
    sock="$DIR"
    # sun_path holds 107 bytes: a deep DIR gets no unix socket (TCP only).
    if [ $(( ${#DIR} + 20 )) -gt 100 ]; then sock=""; fi
    {
      echo "# written by scripts/pg-local.sh at every start; edits are lost"
      echo "listen_addresses = '127.0.0.1'"
      echo "port = $PORT"
      echo "unix_socket_directories = '$sock'"
      echo "unix_socket_permissions = 0700"
      echo "max_connections = 300"
      echo "logging_collector = off"
      if [ "${PG_FAST:-0}" = 1 ]; then
        echo "# PG_FAST=1: a throwaway test cluster; a machine crash may corrupt it"
        echo "fsync = off"
        echo "synchronous_commit = off"
        echo "full_page_writes = off"
      fi
    } | as_pg tee "$CONF" >/dev/null
    if ! as_pg "$PG_BIN/pg_ctl" start -D "$DATA" -l "$LOG" -w -t "$TIMEOUT" -s >/dev/null 2>&1; then
      echo "pg-local: the server did not start on 127.0.0.1:$PORT; the end of $LOG:" >&2
      tail -n 15 "$LOG" >&2 2>/dev/null || true
      exit 1
    fi
  fi

  # pg_ctl -w waits for "ready"; pg_isready confirms TCP reaches it (bounded).
  deadline=$(( $(date +%s) + TIMEOUT ))
  until ready "$PORT"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "pg-local: 127.0.0.1:$PORT not accepting connections after ${TIMEOUT}s; the end of $LOG:" >&2
      tail -n 15 "$LOG" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.1
  done

  if [ -z "$(psql_q -tAc "SELECT 1 FROM pg_database WHERE datname = 'chatloop'")" ]; then
    # Another start may create it at the same moment: "already exists" is fine.
    if ! out="$(psql_q -c 'CREATE DATABASE chatloop' 2>&1)" && ! grep -q 'already exists' <<<"$out"; then
      echo "$out" >&2
      die "could not create database chatloop"
    fi
  fi
  ;;
esac
