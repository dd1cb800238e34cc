#!/usr/bin/env bash
# events.sh: what recording events costs viewers, and what the progress endpoint sustains.
#
#   (a) segment serving with events on vs off ([events] analytics): a warm memory tier (hits, no
#       event per request) and a memory tier too small for the stream (every request is a fill:
#       one cache.fill event each) — the worst case for events.
#   (b) POST /api/v1/stream/demo/progress with a development JWT, progress in redis-server, every
#       report appended to the spool (fsync = always: group commit) before the answer.
# The edge runs on core 0 with one thread, wrk (one thread, keep-alive) on core 1. Spool append
# throughput per fsync policy is the criterion bench: cargo bench -p edge-bench --bench spool.
#
#   cargo build --release -p edge && bench/load/events.sh
# Env: DURATION (s per run, default 10), CONNS (default 32), EDGE_BIN (default target/release/edge)
set -euo pipefail
DURATION=${DURATION:-10} CONNS=${CONNS:-32}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EDGE_BIN=${EDGE_BIN:-$ROOT/target/release/edge}
die() { echo "events: $*" >&2; exit 1; }
[[ -x $EDGE_BIN ]] || die "build the edge first: cargo build --release -p edge"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v redis-server >/dev/null || die "needs redis-server (deploy/dev/setup.sh --test)"

WORK=$(mktemp -d /tmp/events-bench.XXXXXX)
EDGE_PID='' REDIS_PID=''
cleanup() {
    [[ -n $EDGE_PID ]] && kill -TERM "$EDGE_PID" 2>/dev/null && wait "$EDGE_PID" 2>/dev/null
    [[ -n $REDIS_PID ]] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_edge() {  # $1 = analytics true|false, $2 = cache memory, $3 = extra env (REDIS_HOST=...)
    local http admin
    http=$(port) admin=$(port)
    rm -rf "$WORK/data"
    cat >"$WORK/edge.toml" <<TOML
[server]
listen = ["127.0.0.1:$http"]
tls_listen = []
admin_listen = "127.0.0.1:$admin"
threads = 1
data_dir = "$WORK/data"
[origin]
root = "$ROOT/deploy/demo/origin"
[cache]
memory = "$2"
[policies]
file = "$ROOT/policies/default.toml"
[events]
analytics = $1
TOML
    env $3 taskset -c 0 "$EDGE_BIN" serve --config "$WORK/edge.toml" >"$WORK/edge.log" 2>&1 &
    EDGE_PID=$!
    for _ in $(seq 100); do grep -q "demo stream:" "$WORK/edge.log" && break; sleep 0.1; done
    BASE="http://127.0.0.1:$http"
    SEG_TOKEN=$(grep -o 'demo stream: [^ ]*' "$WORK/edge.log" | head -1 | sed 's/.*token=//')
    JWT=$(grep -o 'token=eyJ[^ ]*' "$WORK/edge.log" | head -1 | sed 's/token=//')
}
stop_edge() { kill -TERM "$EDGE_PID"; wait "$EDGE_PID" 2>/dev/null || true; EDGE_PID=''; }

rps() { sed -n 's/^Requests\/sec: *//p' | cut -d. -f1; }
p99() { sed -n 's/^ *99% *//p'; }

segments=(v0/seg_000.ts v0/seg_001.ts v0/seg_002.ts v0/seg_003.ts v1/seg_000.ts v1/seg_001.ts v1/seg_002.ts v1/seg_003.ts)
cat >"$WORK/segments.lua" <<'LUA'
local i = 0
local segs = {}
init = function(args) segs = args end
request = function()
  i = i % #segs + 1
  return wrk.format("GET", segs[i])
end
LUA

echo "# events.sh: \`DURATION=$DURATION CONNS=$CONNS $0\`"
echo "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ'), nproc: $(nproc), edge on core 0 (1 thread), wrk -t1 -c$CONNS on core 1"
echo
echo "| case | events off req/s | events on req/s | on ÷ off | p99 off | p99 on |"
echo "|---|---|---|---|---|---|"
for case in "hits:64MiB" "fills:64KiB"; do
    name=${case%%:*} mem=${case#*:}
    declare -A R=() P=()
    for analytics in false true; do
        start_edge "$analytics" "$mem" ""
        args=()
        for s in "${segments[@]}"; do args+=("/vod/movies/demo/$s?token=$SEG_TOKEN"); done
        curl -sf -o /dev/null "$BASE${args[0]}" || die "segment not served: $(tail -3 "$WORK/edge.log")"
        out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$WORK/segments.lua" "$BASE" -- "${args[@]}")
        R[$analytics]=$(rps <<<"$out") P[$analytics]=$(p99 <<<"$out")
        stop_edge
    done
    ratio=$(python3 -c "print(f'{${R[true]}/${R[false]}:.3f}')")
    echo "| segments, $name (memory $mem) | ${R[false]} | ${R[true]} | $ratio | ${P[false]} | ${P[true]} |"
done
echo

RPORT=$(port)
redis-server --bind 127.0.0.1 --port "$RPORT" --save '' --appendonly no --dir "$WORK" >/dev/null &
REDIS_PID=$!
sleep 0.3
start_edge true 64MiB "REDIS_HOST=127.0.0.1 REDIS_PORT=$RPORT"
[[ -n $JWT ]] || die "no development token in the log"
cat >"$WORK/progress.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/api/v1/stream/demo/progress",
    {["Authorization"] = "Bearer $JWT", ["Content-Type"] = "application/json"},
    '{"position_seconds": ' .. (n % 7200) .. '}')
end
LUA
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $JWT" -d '{"position_seconds":1}' "$BASE/api/v1/stream/demo/progress")
[[ $code == 200 ]] || die "progress answered $code: $(tail -3 "$WORK/edge.log")"
out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$WORK/progress.lua" "$BASE")
stored=$(redis-cli -p "$RPORT" HGET watch_progress:dev-user:demo position_seconds)
echo "| progress endpoint (redis, fsync = always) | req/s | p99 |"
echo "|---|---|---|"
echo "| POST …/progress, one viewer, $CONNS connections | $(rps <<<"$out") | $(p99 <<<"$out") |"
echo
echo "redis holds position $stored for dev-user/demo after the run; spool: $(du -sh "$WORK/data/events" | cut -f1)"
stop_edge
