#!/usr/bin/env bash
# docs-assets.sh [DIR] — fetches Swagger UI (the npm package swagger-ui-dist,
# a pinned release checked against its SHA-512) and puts the files /docs
# serves into DIR (default ./var/docs, chatloop's default docs_dir; outside
# git). `make docs` and the test dependencies run it. Idempotent: a DIR
# that already holds this release is left alone.
set -euo pipefail
VERSION=5.35.0
SHA512=534eaba4cb56f55dd73c638179a993512af4674f63317e0826e00da44fc465b021c341bc0a0c2bcd4e18997927fe1d3008336c5dd19aad334d1c2dec53cc9551
# What chatloop reads (src/http/docs.c), plus the licence that must travel
# with the code.
FILES=(swagger-ui-bundle.js swagger-ui.css favicon-32x32.png favicon-16x16.png LICENSE NOTICE)

here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$here/var/docs}"
if [ "$(cat "$dir/VERSION" 2>/dev/null || true)" = "$VERSION" ]; then
  exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "docs-assets: npm is needed (apt-get install npm)" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "docs-assets: fetching swagger-ui-dist@$VERSION" >&2
(cd "$tmp" && npm pack --silent "swagger-ui-dist@$VERSION" >/dev/null)
tgz="$tmp/swagger-ui-dist-$VERSION.tgz"
got="$(sha512sum "$tgz" | cut -d' ' -f1)"
if [ "$got" != "$SHA512" ]; then
  echo "docs-assets: swagger-ui-dist-$VERSION.tgz has SHA-512 $got, expected $SHA512; not installed" >&2
  exit 1
fi
tar -xzf "$tgz" -C "$tmp"
# Built beside DIR and renamed over it, so a running fetch never leaves a
# half-filled directory for a chatloop starting meanwhile.
mkdir -p "$(dirname "$dir")"
stage="$(mktemp -d "$dir.tmp.XXXXXX")"
for f in "${FILES[@]}"; do cp "$tmp/package/$f" "$stage/$f"; done
echo "$VERSION" >"$stage/VERSION"
chmod 755 "$stage"
rm -rf "$dir"
mv "$stage" "$dir"
echo "docs-assets: Swagger UI $VERSION in $dir (restart chatloop to serve it at /docs)" >&2
