#!/usr/bin/env bash
# Idempotent set-up shared by run.sh and test.sh, for a machine with nothing but Debian and the Rust
# toolchain (rustup): Debian packages, the wasm target, the guests.
# Usage: deploy/dev/setup.sh [--test]   (--test also installs what the test suite drives)
#
# Every package below is named for the build script or test that needs it (read from the build
# scripts of the `*-sys` crates in `cargo tree`, of this workspace and of the tools installed here).
# deploy/dev/cleanroom.sh proves the list on a minimal Debian root; run it when this file changes.
set -euo pipefail
cd "$(dirname "$0")/../.."

t0=$(date +%s)
phase() { echo "setup: $* ($(($(date +%s) - t0)) s so far)" >&2; }

packages=(
  ca-certificates # cargo and rustup fetch crates and targets over HTTPS
  gcc g++ libc6-dev # rustc links with cc; cc-built C of ring, zstd-sys, aws-lc-sys, wasmtime's fiber
  make # openssl-src (pingora vendors OpenSSL) and rdkafka-sys (librdkafka's ./configure && make)
  cmake # libz-ng-sys (pingora-core → flate2 zlib-ng); aws-lc-sys falls back to it
  perl # openssl-src runs OpenSSL's Configure (needs more than perl-base: IPC::Cmd and friends)
  pkg-config # libz-sys, zstd-sys and openssl-sys probe with it before building their own copy
)
if [[ "${1:-}" == "--test" ]]; then
  packages+=(
    ffmpeg # HLS client, ffprobe, and the demo/fixture encoder of the tests
    redis-server # shared kv scope, seeder directory, stream sessions and progress
    procps # kill(1): the tests signal the processes they start (drain on SIGTERM, SIGKILL faults)
    mount # mount(8)/umount(8): the disk-full test fills a real 512 KiB tmpfs
    python3 # http.server: the HTTP origin that ignores Range (edge-origin/tests/http.rs)
    curl # range requests as a client (edge-integration/tests/large.rs); not in a minimal Debian
    nodejs # the npm bittorrent-tracker server, the tracker's reference (edge-integration/tests/signaling.rs)
    chromium # headless player pages: hls.js + p2p-media-loader over WebRTC (edge-integration/tests/browser.rs)
  )
  # Debian packages npm apart from nodejs; NodeSource's nodejs brings its own.
  command -v npm >/dev/null || packages+=(npm)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  phase "Debian packages installed"
fi

# rust-toolchain.toml pins the toolchain and lists the target; this makes sure it is there.
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

echo "setup: building policy guests (guests/, wasm32-wasip2)" >&2
cargo build --quiet --locked --release --target wasm32-wasip2 --manifest-path guests/Cargo.toml
phase "guests built"

if [[ "${1:-}" == "--test" ]]; then
  # s3s-fs 0.15+ needs a newer rustc than ours; 0.14.1 is the verified pin (../shared/infra.md).
  if ! command -v s3s-fs >/dev/null || ! s3s-fs --version 2>/dev/null | grep -q "0.14.1"; then
    echo "setup: installing s3s-fs 0.14.1 (S3-compatible test server, ~3 min)" >&2
    cargo install --quiet --locked s3s-fs@0.14.1 --features binary
    phase "s3s-fs installed"
  fi
  # The dependency rules of ARCHITECTURE.md (deny.toml) and unused dependencies, checked by test.sh.
  if ! cargo deny --version 2>/dev/null | grep -q "0.20.2"; then
    echo "setup: installing cargo-deny 0.20.2 (~4 min)" >&2
    cargo install --quiet --locked cargo-deny@0.20.2
    phase "cargo-deny installed"
  fi
  if ! cargo machete --version 2>/dev/null | grep -q "0.9.2"; then
    echo "setup: installing cargo-machete 0.9.2 (~2 min)" >&2
    cargo install --quiet --locked cargo-machete@0.9.2
    phase "cargo-machete installed"
  fi
  # The reference tracker and a ws client, pinned by package-lock.json (no install scripts: the
  # optional WebRTC module needs a native build and is not used by the server).
  ref=edge/signaling/tests/reference
  if [[ ! -d $ref/node_modules/bittorrent-tracker || $ref/package-lock.json -nt $ref/node_modules/.package-lock.json ]]; then
    echo "setup: installing the npm bittorrent-tracker reference ($ref)" >&2
    (cd "$ref" && npm ci --ignore-scripts --omit=optional --no-audit --no-fund --loglevel=error)
    phase "npm reference tracker installed"
  fi
  # The browser test's player (hls.js, p2p-media-loader) and playwright-core to drive Chromium
  # (Debian's, above: playwright downloads no browser with --ignore-scripts).
  pages=edge/integration/tests/browser
  if [[ ! -d $pages/node_modules/p2p-media-loader-hlsjs || $pages/package-lock.json -nt $pages/node_modules/.package-lock.json ]]; then
    echo "setup: installing the browser test's npm packages ($pages)" >&2
    (cd "$pages" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    phase "browser test packages installed"
  fi
  # The Autobahn WebSocket conformance suite (Python 2 only: bullseye's interpreter unpacked
  # privately, the system untouched; edge-integration/tests/websocket_conformance.rs).
  bash deploy/dev/wstest.sh install
  # tansu's default features have no storage engine; dynostore brings memory:// and s3://
  # (../shared/infra.md, section Kafka).
  if ! command -v tansu >/dev/null || ! tansu --version 2>/dev/null | grep -q "0.6.0"; then
    echo "setup: installing tansu 0.6.0 (Kafka-protocol test broker; ~13 min the first time)" >&2
    cargo install --quiet --locked tansu@0.6.0 --features dynostore
    phase "tansu installed"
  fi
fi
