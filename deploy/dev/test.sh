#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then checks formatting, lints
# and runs every test (guest unit tests, unit, guest components, in-process integration, real
# binary, ffmpeg as a client, redis-server for the shared key-value scope).
set -euo pipefail
cd "$(dirname "$0")/../.."
# A clean build gains nothing from incremental state, and it costs ~2 GB of disk.
export CARGO_INCREMENTAL=0
deploy/dev/setup.sh --test
cargo fmt --all -- --check
(cd guests && cargo fmt --all -- --check)
cargo clippy --quiet --locked --workspace --all-targets -- -D warnings
(cd guests && cargo clippy --quiet --locked --release --target wasm32-wasip2 -- -D warnings)
(cd guests && cargo test --quiet --locked)   # the guests' own unit tests, on the host target
cargo test --locked --workspace
