#!/usr/bin/env bash
# Runs the edge on its embedded default: demo stream from deploy/demo/origin, signed-URL policy,
# no Redis, Kafka or S3. Extra arguments go to `edge serve` (e.g. --listen 127.0.0.1:0).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/dev/setup.sh
exec cargo run --quiet --locked -p edge -- serve "$@"
