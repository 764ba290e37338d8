#!/usr/bin/env bash
# Finds a CRIU that passes `criu check` on this kernel, building one from Debian's own source package if needed.
#
# Candidates, in order: $LXCR_CRIU (if set, it must work: the runtime would pick it first too), the cached build
# at $LXCR_CACHE_DIR/criu/bin/criu (default <repo>/.cache), the `criu` on PATH. Debian bookworm's criu 3.17
# fails `criu check` on kernels that map [vvar], [vvar_vclock] and [vdso] separately, so when nothing works we
# build the newest CRIU from the trixie/sid source package into the cache. System files are never touched: apt
# runs against a private sources list and lists directory in a temporary directory, removed on exit.
#
# Progress goes to stderr; the absolute path of the working criu is the LAST line on stdout.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR=$(realpath -m "${LXCR_CACHE_DIR:-$REPO_DIR/.cache}")
CRIU_PREFIX=$CACHE_DIR/criu
CACHED_CRIU=$CRIU_PREFIX/bin/criu
BUILD_LOG=$CRIU_PREFIX/build.log
SOURCE_SUITES='trixie sid'
BUILD_DEPENDENCIES=(libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev libnl-3-dev libprotobuf-c-dev
  libprotobuf-dev protobuf-c-compiler protobuf-compiler uuid-dev pkgconf python3-protobuf)

say() { printf 'setup-criu: %s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

# Succeeds when `criu check` fails, printing criu's last meaningful output line; fails when the check passes.
# "Looks good." is required as well as exit status 0, so a wrong binary (LXCR_CRIU=/bin/true) is not accepted.
criu_check_fails() {
  local output
  if output=$("$1" check 2>&1) && grep -q '^Looks good' <<<"$output"; then return 1; fi
  printf '%s\n' "${output:-no output}" | grep -v 'RLIMIT_NOFILE' | tail -n 1
}

criu_version() { "$1" --version | sed -n 's/^Version: //p'; }

# Succeeds (and reports) when the candidate exists and passes `criu check`.
try_candidate() {
  local what=$1 candidate=$2 failure
  if [[ ! -x $candidate ]]; then
    say "$what $candidate does not exist or is not executable"
    return 1
  fi
  if failure=$(criu_check_fails "$candidate"); then
    say "$what $candidate fails 'criu check': $failure"
    return 1
  fi
  say "using $what $candidate (criu $(criu_version "$candidate")): 'criu check' passes"
  return 0
}

# The Debian mirror the machine already uses for its own release (deb822 .sources or one-line sources.list).
debian_mirror() {
  local codename
  codename=$(. /etc/os-release && printf '%s' "$VERSION_CODENAME")
  {
    cat /etc/apt/sources.list.d/*.sources 2>/dev/null
    printf '\n' # the last stanza ends at a blank line like the others
  } | awk -v suite="$codename" '
      /^[[:space:]]*$/ { if (uris != "" && match_suite) { print uris; exit } uris = ""; match_suite = 0; next }
      /^URIs:/ { uris = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) match_suite = 1 }'
  [[ -f /etc/apt/sources.list ]] && sed -E 's/\[[^]]*\]//' /etc/apt/sources.list |
    awk -v suite="$codename" '$1 == "deb" && $3 == suite { print $2; exit }'
  return 0
}

# Runs one build step with its output appended to the build log; on failure names the step and the log.
step() {
  local name=$1
  shift
  say "$name"
  printf '\n=== %s: %s\n' "$name" "$*" >>"$BUILD_LOG"
  "$@" >>"$BUILD_LOG" 2>&1 || die "step '$name' failed; read $BUILD_LOG"
}

build_criu() {
  local work mirror keyring tool
  command -v apt-get >/dev/null || die "apt-get not found: building CRIU needs Debian's apt"
  for tool in make gcc xz sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found: install build-essential xz-utils"
  done
  mirror=$(debian_mirror | head -n 1)
  [[ -n $mirror ]] || die "could not find this machine's Debian mirror in /etc/apt/sources.list{,.d/*.sources}"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -f $keyring ]] || die "$keyring missing: install debian-archive-keyring"

  mkdir -p "$CRIU_PREFIX"
  : >"$BUILD_LOG"
  work=$(mktemp -d "${TMPDIR:-/tmp}/lxcr-criu-build.XXXXXX")
  # shellcheck disable=SC2064 # expand $work now: the trap must remove this very directory
  trap "rm -rf '$work'" EXIT
  trap 'exit 130' INT TERM
  mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/source"
  printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: %s\n' \
    "$mirror" "$SOURCE_SUITES" "$keyring" >"$work/apt/criu-src.sources"
  # A private sources list, lists directory and cache: the machine's apt configuration and state stay untouched.
  local apt=(apt-get -q -o "Dir::Etc::sourcelist=$work/apt/criu-src.sources" -o Dir::Etc::sourceparts=-
    -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache" -o APT::Get::List-Cleanup=0)

  local started=$SECONDS
  step "fetching the $SOURCE_SUITES source indexes from $mirror" "${apt[@]}" update
  # The Debian packaging tarball is sometimes missing from the mirror (404): apt-get then fails although the
  # .dsc and the upstream tarball arrived and were verified, so we check for those ourselves below.
  say "downloading the newest criu source package"
  (cd "$work/source" && "${apt[@]}" source --download-only criu) >>"$BUILD_LOG" 2>&1 || true
  local dsc orig
  dsc=$(find "$work/source" -maxdepth 1 -name 'criu_*.dsc' | sort -V | tail -n 1)
  orig=$(find "$work/source" -maxdepth 1 -name 'criu_*.orig.tar.*' | sort -V | tail -n 1)
  [[ -n $dsc && -n $orig ]] || die "step 'apt-get source criu' did not fetch the .dsc and orig tarball; read $BUILD_LOG"
  step "verifying $(basename "$orig") against $(basename "$dsc")" \
    grep -q "^ $(sha256sum "$orig" | cut -d' ' -f1) [0-9]* $(basename "$orig")\$" "$dsc"

  step "unpacking $(basename "$orig")" tar -xf "$orig" -C "$work/source"
  local tree
  tree=$(find "$work/source" -mindepth 1 -maxdepth 1 -type d | head -n 1)
  [[ -f $tree/Makefile ]] || die "step 'unpack' produced no source tree with a Makefile in $work/source"
  say "compiling criu in $tree (make -j$(nproc) criu)"
  printf '\n=== make criu\n' >>"$BUILD_LOG"
  local compile_started=$SECONDS
  make -C "$tree" -j"$(nproc)" criu >>"$BUILD_LOG" 2>&1 ||
    die "step 'make criu' failed (are the build dependencies installed? ${BUILD_DEPENDENCIES[*]}); read $BUILD_LOG"

  # Install through a temporary name so an interrupted install never leaves a half-written binary in the cache.
  step "installing into $CACHED_CRIU" install -D -m 0755 "$tree/criu/criu" "$CACHED_CRIU.new"
  mv -f "$CACHED_CRIU.new" "$CACHED_CRIU"
  say "built criu $(criu_version "$CACHED_CRIU") in $((SECONDS - started)) s, of which compiling" \
    "$((SECONDS - compile_started)) s (build log: $BUILD_LOG)"
}

main() {
  [[ $(id -u) -eq 0 ]] || die "must run as root: criu check, checkpoint and restore need root"
  mkdir -p "$CRIU_PREFIX"
  # Serialise concurrent setups: two builds into the same cache would race on the binary.
  exec 9>"$CRIU_PREFIX/.lock"
  flock 9

  if [[ -n ${LXCR_CRIU:-} ]]; then
    try_candidate 'LXCR_CRIU' "$LXCR_CRIU" ||
      die "LXCR_CRIU=$LXCR_CRIU is not a working criu (see above); unset it to let this script find or build one"
    printf '%s\n' "$(realpath "$LXCR_CRIU")"
    return
  fi
  if try_candidate 'cached build' "$CACHED_CRIU"; then
    printf '%s\n' "$CACHED_CRIU"
    return
  fi
  local system_criu
  system_criu=$(command -v criu) || say "no criu on PATH"
  if [[ -n $system_criu ]] && try_candidate 'system criu' "$system_criu"; then
    printf '%s\n' "$(realpath "$system_criu")"
    return
  fi

  say "no working criu found; building the newest one from Debian's source package"
  build_criu
  local failure
  if failure=$(criu_check_fails "$CACHED_CRIU"); then
    die "step 'criu check' failed for the freshly built $CACHED_CRIU: $failure"
  fi
  say "'criu check' passes for $CACHED_CRIU"
  printf '%s\n' "$CACHED_CRIU"
}

main "$@"
