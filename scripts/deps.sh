#!/usr/bin/env bash
# Installs every Debian package chatloop needs (build, run, test, bench).
# Idempotent: when everything is present it only runs dpkg-query and exits.
set -euo pipefail

pkgs=(
  build-essential pkg-config
  libuv1-dev node-llhttp libwslay-dev libcurl4-openssl-dev libpq-dev
  libmbedtls-dev libjansson-dev
  postgresql
  nodejs npm
  curl
  chromium                # the browser test (test/e2e/browser.test.mjs) drives it headless
)
# Optional extras for `make bench` (wrk, nginx for the comparison run).
if [ "${CHATLOOP_DEPS_BENCH:-0}" = 1 ]; then
  pkgs+=(wrk nginx-light)
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

# node and npm may come from outside Debian (the machine image); accept them.
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
  tmp=()
  for p in "${missing[@]}"; do
    case "$p" in nodejs|npm) ;; *) tmp+=("$p") ;; esac
  done
  missing=("${tmp[@]+"${tmp[@]}"}")
fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Node packages for the end-to-end tests (only when test/package.json exists).
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ -f "$here/test/package.json" ] && [ "${CHATLOOP_DEPS_NODE:-1}" = 1 ]; then
  if [ ! -d "$here/test/node_modules" ] || [ "$here/test/package-lock.json" -nt "$here/test/node_modules/.package-lock.json" ]; then
    echo "deps: npm ci in test/" >&2
    (cd "$here/test" && npm ci --no-audit --no-fund --silent)
  fi
fi
