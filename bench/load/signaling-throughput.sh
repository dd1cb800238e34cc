#!/usr/bin/env bash
# signaling-throughput.sh: announce/relay throughput of the edge's WebTorrent tracker against the
# npm bittorrent-tracker server (the reference its replies match), same box, same run, same load
# (issue 13: goal >= 3x the npm server; aquatic_ws publishes ~120k responses/s per core at ~1k
# connections: goal within 2x of that).
#
# The load is tracker-load (bench/src/bin/tracker-load.rs, Rust, one thread): CONNS (default
# 1000) connections in SWARMS (default 100) swarms, each keeping one announce with one offer in
# flight; the tracker answers the announce, relays the offer to another peer, whose client
# answers it; the answer is relayed back. A response is any message a client reads. Measured
# for SECS (default 10) after WARMUP (default 2) seconds.
#   edge: `edge serve` (release), roles edge + signaling, one runtime thread, a /ws/** route
#         without policy, messages_per_second and the swarm size raised so no limit shapes the
#         load (the defaults: 50 messages/s per connection, 1000 peers per swarm)
#   npm:  bittorrent-tracker 11.2.3's Server (ws only) on Node
# Each server is pinned to core SERVER_CPU, the load to LOAD_CPU. Besides responses/s, the
# server's CPU time over the window (utime + stime from /proc) gives responses per CPU second:
# the number that does not depend on whether the load generator kept up.
#
# Needs: cargo build --release -p edge -p edge-bench; deploy/dev/setup.sh --test (npm packages).
# Run: bench/load/signaling-throughput.sh   Env: CONNS, SWARMS, SECS, WARMUP, EDGE_BIN,
# LOAD_BIN, SERVER_CPU, LOAD_CPU.
set -euo pipefail

CONNS=${CONNS:-1000} SWARMS=${SWARMS:-100} SECS=${SECS:-10} WARMUP=${WARMUP:-2}
SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REF=$ROOT/edge/signaling/tests/reference
EDGE_BIN=${EDGE_BIN:-$ROOT/target/release/edge}
LOAD_BIN=${LOAD_BIN:-$ROOT/target/release/tracker-load}

. "$HERE/signaling-edge.sh"
log() { printf '[signaling-throughput %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ -x $EDGE_BIN ]] || die "edge binary $EDGE_BIN not found: cargo build --release -p edge"
[[ -x $LOAD_BIN ]] || die "load generator $LOAD_BIN not found: cargo build --release -p edge-bench"
[[ -d $REF/node_modules/bittorrent-tracker ]] || die "npm packages missing: deploy/dev/setup.sh --test"
ulimit -n $((CONNS * 2 + 1024)) || die "cannot raise the open-file limit"

WORK=$(mktemp -d /tmp/signaling-throughput.XXXXXX)
SERVER_PID=''
cleanup() {
    rm -f "$REF/.npm-tracker.mjs"
    [[ -n $SERVER_PID ]] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

measure() {  # $1: name, $2: ws url; SERVER_PID set. Prints: name json cpu_seconds
    local client c0 c1 hz
    hz=$(getconf CLK_TCK)
    taskset -c "$LOAD_CPU" "$LOAD_BIN" "$2" "$CONNS" "$SWARMS" "$SECS" "$WARMUP" >"$WORK/load.out" 2>"$WORK/load.err" &
    client=$!
    for _ in $(seq 600); do
        grep -q '^measuring' "$WORK/load.out" 2>/dev/null && break
        kill -0 "$client" 2>/dev/null || { cat "$WORK/load.err" >&2; die "$1: load generator died"; }
        sleep 0.05
    done
    c0=$(cpu_ticks "$SERVER_PID")
    for _ in $(seq $((SECS * 40 + 400))); do
        grep -q '^{' "$WORK/load.out" 2>/dev/null && break
        sleep 0.025
    done
    c1=$(cpu_ticks "$SERVER_PID")
    wait "$client" || true
    grep -q '^{' "$WORK/load.out" || { cat "$WORK/load.err" >&2; die "$1: no result"; }
    echo "$1 $(grep '^{' "$WORK/load.out") $(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN { printf "%.2f", (b - a) / hz }')"
}

# --- edge ---
signaling_edge_config "$WORK" "$CONNS" "messages_per_second = 1000000"
(cd "$ROOT" && exec taskset -c "$SERVER_CPU" "$EDGE_BIN" serve --config "$WORK/edge.toml" \
    --listen 127.0.0.1:0 --no-tls --admin-listen 127.0.0.1:0) 2>"$WORK/edge.log" &
SERVER_PID=$!
PORT=$(wait_for_port "$WORK/edge.log" http) || PORT=''
[[ -n $PORT ]] || { cat "$WORK/edge.log" >&2; die "edge did not start"; }
read -r _ E_JSON E_CPU < <(measure edge "ws://127.0.0.1:$PORT/ws/tracker")
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=''

# --- npm reference ---
start_npm_tracker "$REF" "$WORK" "$SERVER_CPU" || PORT=''
[[ -n $PORT ]] || die "npm tracker did not start"
read -r _ N_JSON N_CPU < <(measure npm "ws://127.0.0.1:$PORT")

field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
row() {  # name json cpu
    local rps per_cpu
    rps=$(field "$2" responses_per_s)
    per_cpu=$(awk -v r="$(field "$2" responses)" -v c="$3" 'BEGIN { if (c > 0) printf "%.0f", r / c; else print "-" }')
    printf '| %s | %.0f | %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$rps" "$(field "$2" replies)" \
        "$(field "$2" offers)" "$(field "$2" answers)" "$(field "$2" failures)" "$3" "$per_cpu" \
        "$(awk -v c="$3" -v s="$(field "$2" secs)" 'BEGIN { printf "%.0f %%", 100 * c / s }')"
}
echo "# signaling-throughput: \`CONNS=$CONNS SWARMS=$SWARMS SECS=$SECS $0\`"
echo "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ'), nproc: $(nproc), node: $(node --version), servers on core $SERVER_CPU, load on core $LOAD_CPU"
echo
echo "| tracker | responses/s | announce replies | offers relayed | answers relayed | failures | server CPU s | responses per CPU s | server CPU use |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
row edge "$E_JSON" "$E_CPU"
row "npm bittorrent-tracker" "$N_JSON" "$N_CPU"
E_RPS=$(field "$E_JSON" responses_per_s) N_RPS=$(field "$N_JSON" responses_per_s)
echo
echo "edge ÷ npm: $(awk -v e="$E_RPS" -v n="$N_RPS" 'BEGIN { printf "%.2f", e / n }')× responses/s"
