#!/usr/bin/env bash
# Idempotent set-up shared by run.sh and test.sh: Debian packages, the wasm target, the guests.
# Usage: deploy/dev/setup.sh [--test]   (--test also installs what the test suite drives:
# ffmpeg as an HLS client, redis-server for the shared key-value scope and the seeder directory,
# s3s-fs as the S3-compatible origin, tansu as the Kafka-protocol broker)
set -euo pipefail
cd "$(dirname "$0")/../.."

packages=(pkg-config libssl-dev)
[[ "${1:-}" == "--test" ]] && packages+=(ffmpeg redis-server)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# rust-toolchain.toml pins the toolchain and lists the target; this makes sure it is there.
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

echo "setup: building policy guests (guests/, wasm32-wasip2)" >&2
cargo build --quiet --locked --release --target wasm32-wasip2 --manifest-path guests/Cargo.toml

if [[ "${1:-}" == "--test" ]]; then
  # s3s-fs 0.15+ needs a newer rustc than ours; 0.14.1 is the verified pin (../shared/infra.md).
  if ! command -v s3s-fs >/dev/null || ! s3s-fs --version 2>/dev/null | grep -q "0.14.1"; then
    echo "setup: installing s3s-fs 0.14.1 (S3-compatible test server, ~3 min)" >&2
    cargo install --quiet --locked s3s-fs@0.14.1 --features binary
  fi
  # tansu's default features have no storage engine; dynostore brings memory:// and s3://
  # (../shared/infra.md, section Kafka).
  if ! command -v tansu >/dev/null || ! tansu --version 2>/dev/null | grep -q "0.6.0"; then
    echo "setup: installing tansu 0.6.0 (Kafka-protocol test broker; ~13 min the first time)" >&2
    cargo install --quiet --locked tansu@0.6.0 --features dynostore
  fi
fi
