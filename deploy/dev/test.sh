#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then checks formatting, lints
# and runs every test (guest unit tests, unit, guest components, in-process integration, real
# binary, ffmpeg as a client, redis-server, s3s-fs and tansu as real services).
set -euo pipefail
cd "$(dirname "$0")/../.."
# A clean build gains nothing from incremental state, and it costs ~2 GB of disk.
export CARGO_INCREMENTAL=0
t0=$(date +%s)
step() { echo "test.sh: $* ($(($(date +%s) - t0)) s so far)" >&2; }
deploy/dev/setup.sh --test
step "set-up done"
cargo fmt --all -- --check
(cd guests && cargo fmt --all -- --check)
cargo deny --log-level error check bans     # who may depend on whom (deny.toml, ARCHITECTURE.md)
cargo machete                                # no unused dependencies (host workspace)
(cd guests && cargo machete)
cargo clippy --quiet --locked --workspace --all-targets -- -D warnings
(cd guests && cargo clippy --quiet --locked --release --target wasm32-wasip2 -- -D warnings)
step "fmt, dependency rules and clippy clean"
(cd guests && cargo test --quiet --locked)   # the guests' own unit tests, on the host target
step "guest unit tests passed"
cargo test --locked --workspace
step "workspace tests passed"
