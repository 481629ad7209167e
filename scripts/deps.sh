#!/usr/bin/env bash
# deps.sh [run|test] — installs the Debian packages chatloop needs, and for
# `test` the Node packages of the tests (test/package.json).
#   run   what building and serving need: the compiler, the C libraries,
#         llhttp's sources, PostgreSQL (make run)
#   test  run's, plus Node.js and npm, Chromium for the browser tests, and
#         `npm ci` in test/ (make test, make asan, make bench; the default)
# CHATLOOP_DEPS_BENCH=1 adds wrk and nginx-light for `make bench`'s
# comparison runs. Idempotent: when everything is present it only runs
# dpkg-query and exits.
set -euo pipefail

mode="${1:-test}"
case "$mode" in
  run|test) ;;
  *) echo "usage: $0 [run|test]" >&2; exit 2 ;;
esac

pkgs=(
  build-essential pkg-config
  libuv1-dev node-llhttp libwslay-dev libcurl4-openssl-dev libpq-dev
  libmbedtls-dev libjansson-dev
  postgresql
  curl                    # the README's examples; scripts talk to the server with it
)
if [ "$mode" = test ]; then
  # Debian 12's Node.js is 18: test/package.json pins what still runs on it
  # (playwright-core 1.61; 1.62 and later want Node 20).
  pkgs+=(
    nodejs npm
    chromium              # the browser tests (test/e2e/*browser.test.mjs) drive it headless
  )
fi
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
  for p in "${missing[@]+"${missing[@]}"}"; do
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

# Node packages for the end-to-end tests.
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ "$mode" = test ] && [ -f "$here/test/package.json" ] && [ "${CHATLOOP_DEPS_NODE:-1}" = 1 ]; then
  if [ ! -d "$here/test/node_modules" ] || [ "$here/test/package-lock.json" -nt "$here/test/node_modules/.package-lock.json" ]; then
    echo "deps: npm ci in test/" >&2
    (cd "$here/test" && npm ci --no-audit --no-fund --silent)
  fi
fi
