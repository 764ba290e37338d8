#!/usr/bin/env bash
# Makes this machine ready to run LXCloud-CR's testbed, demo and tests: Debian packages (LXC, busybox, Java 17,
# nftables, CRIU's build dependencies, Ansible), the npm packages from package-lock.json, and a CRIU that passes
# `criu check` on this kernel (built once from Debian's source package if the installed one fails).
# Idempotent: each step checks first and says what it does. Runs before `npm test` and `npm run demo`.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${LXCR_CACHE_DIR:-$repo/.cache}
say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# The npm lifecycle tells which README command is running, so a non-root user gets the exact command back.
case "${npm_lifecycle_event:-}" in
  pretest) rerun="sudo npm test" ;;
  predemo) rerun="sudo npm run demo" ;;
  *) rerun="sudo bash scripts/setup.sh" ;;
esac
if [ "$(id -u)" -ne 0 ]; then
  die "LXC containers and CRIU checkpoints need root. Run instead (in $repo): $rerun"
fi

node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
[ "$node_major" -ge 20 ] || die "Node.js 20 or newer is required (found $(node --version 2>/dev/null || echo none)); install Node 20 and rerun: $rerun"

# Debian packages. CRIU's build dependencies are listed here too so that a CRIU build never stops half-way
# for a missing header; they are small. ansible and ansible-lint: the tests of the Ansible roles in deploy/.
packages=(
  lxc busybox-static nftables openjdk-17-jre-headless openjdk-17-jdk-headless xz-utils dpkg-dev
  libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev libnl-3-dev libprotobuf-c-dev
  libprotobuf-dev protobuf-c-compiler protobuf-compiler uuid-dev pkgconf python3-protobuf gcc make openssl
  ansible ansible-lint
)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2 || die "apt-get update failed; check the machine's Debian sources and rerun: $rerun"
  apt-get install -y -q "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed (see above); fix it and rerun: $rerun"
else
  say "Debian packages present"
fi

# npm packages, exactly as package-lock.json pins them; reinstalled only when the lock file changed.
# Not `npm ci`: npm 11 leaves other platforms' optional binaries (rollup, esbuild, ...) out of the lock file it
# writes and then refuses that same lock file in `npm ci`. `npm install --no-save` installs the locked
# versions and never rewrites the lock file.
stamp=$repo/node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ "$repo/package-lock.json" -nt "$stamp" ]; then
  say "installing npm packages as package-lock.json pins them"
  (cd "$repo" && npm install --no-save --no-audit --no-fund >&2) || die "npm install failed (see above); rerun: $rerun"
else
  say "npm packages present"
fi

# A CRIU that works on this kernel. setup-criu.sh prints its path on its last line.
criu=$(bash "$repo/scripts/setup-criu.sh" | tail -n 1) || die "no working CRIU (see above)"
say "CRIU: $criu ($("$criu" --version 2>/dev/null | head -n 1))"

mkdir -p "$cache"

# The agent's JMX gossip probe, compiled once per version of its source into the directory the agent looks in
# (src/cluster/jmx-gossip.ts: .cache/gossip-probe/<first 16 hex of the source's sha256>/).
probe_src=$repo/src/cluster/jmx/GossipProbe.java
probe_dir=$cache/gossip-probe/$(sha256sum "$probe_src" | cut -c1-16)
if [ ! -f "$probe_dir/GossipProbe.class" ]; then
  say "compiling the JMX gossip probe into $probe_dir"
  mkdir -p "$cache/gossip-probe"
  probe_tmp=$(mktemp -d "$probe_dir.tmp-XXXXXX")
  javac -nowarn -d "$probe_tmp" "$probe_src" >&2 || { rm -rf "$probe_tmp"; die "javac failed on $probe_src (see above); rerun: $rerun"; }
  chmod 755 "$probe_tmp"
  mv -T "$probe_tmp" "$probe_dir" 2>/dev/null || rm -rf "$probe_tmp" # another run compiled it meanwhile
else
  say "JMX gossip probe compiled"
fi
say "ready"
