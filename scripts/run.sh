#!/usr/bin/env bash
# `make run`: serve on 127.0.0.1:8080 with conf/chatloop.conf. Without
# DATABASE_URL, a local PostgreSQL under ./var/pg is started for the run and
# stopped when chatloop exits (Ctrl-C drains and stops both).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
BUILD="${BUILD:-build}"
started_pg=0
if [ -z "${DATABASE_URL:-}" ] && [ -z "${CHATLOOP_DATABASE_URL:-}" ]; then
  bash scripts/pg-local.sh start
  started_pg=1
  DATABASE_URL="$(bash scripts/pg-local.sh url)"
  export DATABASE_URL
  echo "run: local PostgreSQL at $DATABASE_URL (data in ./var/pg)" >&2
fi
# A JWT secret kept under ./var (never committed), so tokens survive restarts
# of a local server; production sets jwt_secret itself.
if [ -z "${CHATLOOP_JWT_SECRET:-}" ] && ! grep -Eq '^[[:space:]]*jwt_secret[[:space:]]*=[[:space:]]*"?[^"[:space:]#]' conf/chatloop.conf; then
  mkdir -p var
  if [ ! -s var/jwt_secret ]; then
    (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > var/jwt_secret)
  fi
  CHATLOOP_JWT_SECRET="$(cat var/jwt_secret)"
  export CHATLOOP_JWT_SECRET
fi
stop_pg() {
  if [ "$started_pg" = 1 ]; then bash scripts/pg-local.sh stop || true; fi
}
trap stop_pg EXIT
# not exec: the trap must run after chatloop exits
"./$BUILD/chatloop" --config conf/chatloop.conf "$@"
