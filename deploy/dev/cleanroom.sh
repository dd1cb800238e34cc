#!/usr/bin/env bash
# Clean-room check of the set-up: runs both README commands in a minimal Debian root, as a new
# user on a machine with nothing but Debian and the Rust toolchain would, and reports their times.
#
#   deploy/dev/cleanroom.sh [--rev REV] [--refresh-base] [--keep] [--skip-run] [--skip-test]
#
# - The root is `debootstrap --variant=minbase` of the host's Debian release (cached as a pristine
#   tarball under $CLEANROOM_DIR, default /var/tmp/edge-cleanroom; --refresh-base makes it anew).
#   Every run unpacks a new copy: nothing one run installed is seen by the next.
# - The host's Rust toolchain is mounted read-only: ~/.rustup as the lower layer of an overlay (so
#   `rustup target add` still works inside), the `rustup` binary with its proxies (cargo, rustc, …).
#   Nothing else of the host's ~/.cargo/bin (tools installed there by hand) is visible.
# - The host's cargo registry (~/.cargo/registry), when present, is the read-only lower layer of the
#   root's registry, so crates already downloaded are not downloaded again; the rest comes from
#   crates.io as on any machine.
# - The commit under test (REV, default HEAD) is cloned into /root/edge; uncommitted changes are not
#   part of it. Then, inside the root: `deploy/dev/run.sh` until the edge logs its demo URL (the
#   demo playlist is fetched through it, then SIGTERM must drain and exit 0), and `deploy/dev/test.sh`.
#
# Needs root (chroot, mount) and debootstrap (`apt-get install debootstrap`). Takes about an hour
# on 2 cores: too slow for CI; run it whenever set-up changes and record the result in the README.
set -euo pipefail

rev=HEAD refresh_base=0 keep=0 skip_run=0 skip_test=0
while (($#)); do
  case "$1" in
    --rev) rev="$2"; shift 2 ;;
    --refresh-base) refresh_base=1; shift ;;
    --keep) keep=1; shift ;;
    --skip-run) skip_run=1; shift ;;
    --skip-test) skip_test=1; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "cleanroom: unknown argument $1" >&2; exit 2 ;;
  esac
done

repo=$(cd "$(dirname "$0")/../.." && pwd)
[[ $(id -u) -eq 0 ]] || { echo "cleanroom: needs root (chroot, mount)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "cleanroom: needs debootstrap (apt-get install debootstrap)" >&2; exit 2; }
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
rustup_bin=$(command -v rustup) || { echo "cleanroom: no rustup on PATH" >&2; exit 2; }
rustup_bin=$(readlink -f "$rustup_bin")
registry=${CARGO_HOME:-$HOME/.cargo}/registry
commit=$(git -C "$repo" rev-parse --verify "$rev^{commit}")
short=${commit:0:12}

work=${CLEANROOM_DIR:-/var/tmp/edge-cleanroom}
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
base=$work/base-$suite-minbase.tar
root=$work/root-$short-$(date +%s)
report=$work/report-$short.txt
mkdir -p "$work"

log() { printf '[cleanroom %s] %s\n' "$(date +%T)" "$*" | tee -a "$report" >&2; }
: >"$report"

# --- the pristine base ------------------------------------------------------------------------
if ((refresh_base)) || [[ ! -s $base ]]; then
  log "debootstrap --variant=minbase $suite (Debian archive)"
  rm -rf "$work/base.new"
  debootstrap --variant=minbase "$suite" "$work/base.new" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
  tar -C "$work/base.new" -cf "$base.tmp" . && mv "$base.tmp" "$base"
  rm -rf "$work/base.new"
fi

# --- a new root from it ------------------------------------------------------------------------
mounts=()
cleanup() {
  local rc=$?
  # Processes still running inside the root were started by this script (run.sh, the tests).
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/root" 2>/dev/null) == "$root" ]] && kill -KILL "${p#/proc/}" 2>/dev/null || true
  done
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -R -l "${mounts[i]}" 2>/dev/null || true; done
  if ((keep)); then log "root kept at $root"; else rm -rf --one-file-system "$root"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$root"
tar -C "$root" -xf "$base"
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The machine's own network trust (a TLS-inspecting egress proxy's CA, say) is part of the
# machine, like its resolver: ca-certificates, once setup.sh installs it, picks these up.
if [[ -d /usr/local/share/ca-certificates ]]; then
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
if [[ -d /etc/apt/sources.list.d ]]; then cp -a /etc/apt/sources.list.d/. "$root/etc/apt/sources.list.d/"; fi
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then : >"$root/etc/apt/sources.list"; fi
# As in any Debian container image: packages do not start their services on install.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d" && chmod +x "$root/usr/sbin/policy-rc.d"

bind() { # bind SRC DST [ro]: a directory or a single file
  if [[ -d $1 ]]; then mkdir -p "$2"; else mkdir -p "$(dirname "$2")"; : >"$2"; fi
  mount --bind "$1" "$2"; mounts+=("$2")
  if [[ ${3:-} == ro ]]; then mount -o remount,bind,ro "$2"; fi
}
overlay() { # overlay LOWER DST: LOWER read-only, writes land in the root
  local name; name=$(basename "$2")
  mkdir -p "$root/.overlay/$name/upper" "$root/.overlay/$name/work" "$2"
  mount -t overlay "overlay-$name" \
    -o "lowerdir=$1,upperdir=$root/.overlay/$name/upper,workdir=$root/.overlay/$name/work" "$2"
  mounts+=("$2")
}
mkdir -p "$root/proc" "$root/sys" "$root/dev"
mount -t proc proc "$root/proc"; mounts+=("$root/proc")
# /sys and /dev (with pts and shm) as recursive binds that receive the host's mounts but never
# send theirs back (rslave), so a shared / cannot leak the root's mounts to the host.
for d in sys dev; do
  mount --rbind "/$d" "$root/$d"; mount --make-rslave "$root/$d"; mounts+=("$root/$d")
done

# The toolchain: rustup (read-only) and its proxies; ~/.rustup as a read-only lower layer.
overlay "$rustup_home" "$root/root/.rustup"
bind "$rustup_bin" "$root/root/.cargo/bin/rustup" ro
for proxy in cargo rustc rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver rust-gdb rust-lldb; do
  ln -s rustup "$root/root/.cargo/bin/$proxy"
done
[[ -d $registry ]] && overlay "$registry" "$root/root/.cargo/registry"

git clone --quiet --no-hardlinks "$repo" "$root/root/edge"
git -C "$root/root/edge" checkout --quiet --detach "$commit"

inside() { # inside LOGFILE COMMAND...: a login-like shell in the root with a new user's environment
  local logfile=$1; shift
  chroot "$root" /usr/bin/env -i HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM=dumb \
    PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c 'cd /root/edge && exec "$@"' bash "$@" >"$logfile" 2>&1
}

log "commit $commit, root $root"
log "host toolchain: $(rustc --version) ($(rustup show active-toolchain 2>/dev/null | head -1))"

# --- 1. deploy/dev/run.sh ------------------------------------------------------------------------
run_readme_run() {
for port in 8080 8443 9090; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    log "port $port is in use on this machine; run.sh's defaults need it free"; exit 1
  fi
done
run_log=$work/run-$short.log
start=$(date +%s)
inside "$run_log" deploy/dev/run.sh &
run_pid=$!
url=""
while kill -0 "$run_pid" 2>/dev/null; do
  url=$(grep -o 'demo stream: http[^ ]*' "$run_log" | head -1 | cut -d' ' -f3 || true)
  [[ -n $url ]] && break
  sleep 2
done
ready=$(($(date +%s) - start))
if [[ -z $url ]]; then
  wait "$run_pid" || true
  tail -30 "$run_log" >&2
  log "run.sh: FAILED before the edge was ready ($ready s); log $run_log"; exit 1
fi
log "run.sh: edge ready in $ready s ($((ready / 60)) min $((ready % 60)) s): $url"
body=$(curl -sS --max-time 10 "$url") || { log "run.sh: the demo playlist could not be fetched"; exit 1; }
[[ $body == "#EXTM3U"* ]] || { log "run.sh: the demo playlist is not HLS: ${body:0:80}"; exit 1; }
log "run.sh: demo playlist fetched through the edge ($(wc -c <<<"$body") bytes, #EXTM3U)"
# run.sh execs cargo, which execs the edge: the edge is the process whose root is ours, named edge.
edge_pid=""
for p in /proc/[0-9]*; do
  [[ $(readlink "$p/root" 2>/dev/null) == "$root" && $(cat "$p/comm" 2>/dev/null) == edge ]] && edge_pid=${p#/proc/}
done
[[ -n $edge_pid ]] || { log "run.sh: no edge process found"; exit 1; }
kill -TERM "$edge_pid"
run_rc=0; wait "$run_pid" || run_rc=$?
log "run.sh: SIGTERM → exit $run_rc"
((run_rc == 0)) || { tail -20 "$run_log" >&2; exit 1; }
}
if ((skip_run)); then log "run.sh: skipped (--skip-run)"; else run_readme_run; fi

# --- 2. deploy/dev/test.sh -----------------------------------------------------------------------
if ((skip_test)); then log "test.sh: skipped (--skip-test)"; exit 0; fi
test_log=$work/test-$short.log
start=$(date +%s)
test_rc=0; inside "$test_log" deploy/dev/test.sh || test_rc=$?
took=$(($(date +%s) - start))
passed=$({ grep -oE '[0-9]+ passed' "$test_log" || true; } | awk '{s += $1} END {print s + 0}')
failed=$({ grep -oE '[0-9]+ failed' "$test_log" || true; } | awk '{s += $1} END {print s + 0}')
log "test.sh: exit $test_rc in $took s ($((took / 60)) min $((took % 60)) s); $passed tests passed, $failed failed; log $test_log"
{ grep -hE '^(setup|test.sh): ' "$test_log" || true; } | sed 's/^/  /' | tee -a "$report" >&2
((test_rc == 0)) || { tail -40 "$test_log" >&2; exit 1; }
log "both README commands passed on a clean $suite minbase root; report $report"
