#!/usr/bin/env bash
# Builds the release tarball the lxcr_agent role installs: this checkout's npm package (what `npm pack` ships)
# with its production dependencies installed exactly as package-lock.json pins them, so target hosts need only
# Node and no registry access. Usage: deploy/pack-release.sh OUTPUT-DIR
# Prints the tarball's absolute path as its last line: lxcloud-cr-<version>-<12 hex of the package's sha256>.tar.gz
# (the content hash in the name lets the role tell releases apart without unpacking them).
# npm reads its cache first (--prefer-offline); with npm_config_offline=true it never goes online.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf 'pack-release: %s\n' "$*" >&2; }
die() { printf 'pack-release: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: deploy/pack-release.sh OUTPUT-DIR"
mkdir -p "$1"
out=$(cd "$1" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/lxcr-release.XXXXXX")
trap 'rm -rf "$work"' EXIT

say "packing $repo"
package=$(cd "$repo" && npm pack --silent --pack-destination "$work" | tail -n 1) || die "npm pack failed (see above)"
hash=$(sha256sum "$work/$package" | cut -c1-12)
name=${package%.tgz}-$hash
tar -xzf "$work/$package" -C "$work"
mv "$work/package" "$work/$name"
cp "$repo/package-lock.json" "$work/$name/"
say "installing production dependencies as package-lock.json pins them"
(cd "$work/$name" && npm install --omit=dev --no-save --no-audit --no-fund --prefer-offline >&2) \
  || die "npm install in $work/$name failed (see above); with npm_config_offline=true every locked package must be in npm's cache (run npm install in the checkout first)"
chmod 0755 "$work/$name/bin/lxcr.js"
tar -czf "$out/$name.tar.gz.tmp" -C "$work" "$name"
mv -f "$out/$name.tar.gz.tmp" "$out/$name.tar.gz"
say "release $out/$name.tar.gz"
printf '%s\n' "$out/$name.tar.gz"
