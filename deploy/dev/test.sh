#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then checks formatting, lints
# and runs every test (unit, guest, in-process integration, real binary, ffmpeg as a client).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/dev/setup.sh --test
cargo fmt --all -- --check
(cd guests && cargo fmt --all -- --check)
cargo clippy --quiet --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
