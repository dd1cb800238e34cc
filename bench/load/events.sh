#!/usr/bin/env bash
# events.sh: what recording events costs viewers, and what the progress endpoint sustains.
#
#   (a) segment serving with events on vs off ([events] analytics). Two edges run side by side,
#       one with events off and one with them on, both pinned to core 0 with one runtime thread;
#       wrk loads one of them at a time in short slices, alternating (off first in odd rounds), so
#       the drift of a shared VM hits both alike. The ratio reported is the median of the
#       per-round on ÷ off ratios.
#         hits:  a warm memory tier (no event per request: the ratio shows the remaining noise);
#         fills: 1024 objects of 16 KiB requested in turn through a memory tier that holds 16,
#                so every request is a fill from the origin with one cache.fill event — the
#                worst case for events.
#       Also printed: the edge's CPU time per request (utime + stime of every thread) and the
#       spool writer thread's CPU per event. The request-path part of an event (build,
#       timestamp, serialize, emit) is the criterion bench `cache_fill_event`.
#   (b) POST /api/v1/stream/demo/progress with a development JWT, progress in redis-server, every
#       report appended to the spool (fsync = always: group commit) before the answer.
# wrk (one thread, keep-alive) runs on core 1. Spool append throughput per fsync policy is the
# criterion bench: cargo bench -p edge-bench --bench spool.
#
#   cargo build --release -p edge && bench/load/events.sh
# Env: SLICE (s per measured slice, default 3), ROUNDS (off/on pairs per case, default 10),
#      CONNS (default 32), DURATION (s of the progress run, default 10),
#      EDGE_BIN (default target/release/edge)
set -euo pipefail
SLICE=${SLICE:-3} ROUNDS=${ROUNDS:-10} CONNS=${CONNS:-32} DURATION=${DURATION:-10}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EDGE_BIN=${EDGE_BIN:-$ROOT/target/release/edge}
die() { echo "events: $*" >&2; exit 1; }
[[ -x $EDGE_BIN ]] || die "build the edge first: cargo build --release -p edge"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
command -v redis-server >/dev/null || die "needs redis-server (deploy/dev/setup.sh --test)"

WORK=$(mktemp -d /tmp/events-bench.XXXXXX)
declare -A PID=() BASE=() TOKEN=() ADMIN=()
REDIS_PID='' JWT=''
cleanup() {
    local p
    for p in "${PID[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    [[ -n $REDIS_PID ]] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_edge NAME ANALYTICS MEMORY SLICE [ENV...]
start_edge() {
    local name=$1 http admin
    http=$(port) admin=$(port)
    mkdir -p "$WORK/$name"
    cat >"$WORK/$name/edge.toml" <<TOML
[server]
listen = ["127.0.0.1:$http"]
tls_listen = []
admin_listen = "127.0.0.1:$admin"
threads = 1
data_dir = "$WORK/$name/data"
[origin]
root = "$WORK/origin"
[cache]
memory = "$3"
slice = "$4"
[policies]
file = "$ROOT/policies/default.toml"
[events]
analytics = $2
TOML
    env "${@:5}" taskset -c 0 "$EDGE_BIN" serve --config "$WORK/$name/edge.toml" >"$WORK/$name/edge.log" 2>&1 &
    PID[$name]=$!
    local log=$WORK/$name/edge.log
    for _ in $(seq 100); do grep -q "demo stream:" "$log" && break; sleep 0.1; done
    grep -q "demo stream:" "$log" || die "edge $name did not start: $(tail -3 "$log")"
    BASE[$name]="http://127.0.0.1:$http" ADMIN[$name]="http://127.0.0.1:$admin"
    TOKEN[$name]=$(grep -o 'demo stream: [^ ]*' "$log" | head -1 | sed 's/.*token=//')
    JWT=$(grep -o 'token="eyJ[^"]*"' "$log" | head -1 | sed 's/token="//; s/"$//' || true)
}
stop_edge() { kill -TERM "${PID[$1]}"; wait "${PID[$1]}" 2>/dev/null || true; unset "PID[$1]"; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/${PID[$1]}/stat"; }
writer_ticks() {
    local t
    for t in /proc/"${PID[$1]}"/task/*; do
        [[ $(cat "$t/comm") == edge-events-wri* ]] && awk '{print $14 + $15}' "$t/stat" && return
    done
    echo 0
}
rps() { sed -n 's/^Requests\/sec: *//p' | cut -d. -f1; }
requests() { sed -n 's/^ *\([0-9]*\) requests in.*/\1/p'; }
p99() { sed -n 's/^ *99% *//p'; }
median() { python3 -c 'import statistics, sys; print(f"{statistics.median(float(x) for x in sys.argv[2:]):.{int(sys.argv[1])}f}")' "$@"; }
ms() { python3 -c 'import sys; x = sys.argv[1]; print(float(x[:-2]) / 1000 if x.endswith("us") else float(x[:-2]) if x.endswith("ms") else float(x[:-1]) * 1000)' "$1"; }
calc() { python3 -c "print(f'{$1:.${2:-1}f}')"; }

# The fills case asks for 1024 distinct 16 KiB objects in turn; the memory tier holds 16.
mkdir -p "$WORK/origin"
cp -r "$ROOT/deploy/demo/origin/." "$WORK/origin/"
mkdir -p "$WORK/origin/vod/movies/demo/fill"
python3 - "$WORK/origin/vod/movies/demo/fill" <<'PY'
import os, sys
for i in range(1024):
    with open(os.path.join(sys.argv[1], f"part_{i:04}.ts"), "wb") as f:
        f.write(os.urandom(16384))
PY
hits=(v0/seg_000.ts v0/seg_001.ts v0/seg_002.ts v0/seg_003.ts v1/seg_000.ts v1/seg_001.ts v1/seg_002.ts v1/seg_003.ts)
fills=()
for i in $(seq 0 1023); do fills+=("fill/part_$(printf %04d "$i").ts"); done
cat >"$WORK/segments.lua" <<'LUA'
local i = 0
local segs = {}
init = function(args) segs = args end
request = function()
  i = i % #segs + 1
  return wrk.format("GET", segs[i])
end
LUA

echo "# events.sh: \`SLICE=$SLICE ROUNDS=$ROUNDS CONNS=$CONNS $0\`"
echo "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ'), nproc: $(nproc); two edges (events off / on) on core 0, one runtime"
echo "thread each, loaded in turn by wrk -t1 -c$CONNS on core 1 for ${SLICE}s slices, $ROUNDS rounds; medians"
echo
echo "| case | off req/s | on req/s | on ÷ off req/s (median of rounds; min–max) | CPU µs/request off | on | p99 off (ms) | p99 on (ms) | cache.fill events / requests (on) | writer CPU µs/event |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for case in hits fills; do
    declare -n urls=$case
    if [[ $case == hits ]]; then mem=64MiB max=4MiB; else mem=256KiB max=128KiB; fi
    start_edge off false "$mem" "$max"
    start_edge on true "$mem" "$max"
    declare -A R=() P=() C=() ARGS=()
    for side in off on; do
        a=''
        for s in "${urls[@]}"; do a+=" /vod/movies/demo/$s?token=${TOKEN[$side]}"; done
        ARGS[$side]=$a
        curl -sf -o /dev/null "${BASE[$side]}/vod/movies/demo/${urls[0]}?token=${TOKEN[$side]}" ||
            die "segment not served by $side: $(tail -3 "$WORK/$side/edge.log")"
        # Warm-up: caches, connections, the allocator.
        # shellcheck disable=SC2086
        taskset -c 1 wrk -t1 -c"$CONNS" -d2s -s "$WORK/segments.lua" "${BASE[$side]}" -- ${ARGS[$side]} >/dev/null
    done
    ratios='' total_req=0 w0=$(writer_ticks on)
    for round in $(seq "$ROUNDS"); do
        order="off on"
        (( round % 2 == 0 )) && order="on off"
        declare -A got=()
        for side in $order; do
            t0=$(cpu_ticks "$side")
            # shellcheck disable=SC2086
            out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${SLICE}s" --latency -s "$WORK/segments.lua" "${BASE[$side]}" -- ${ARGS[$side]})
            t1=$(cpu_ticks "$side") n=$(requests <<<"$out")
            got[$side]=$(rps <<<"$out")
            R[$side]+=" ${got[$side]}" P[$side]+=" $(ms "$(p99 <<<"$out")")"
            C[$side]+=" $(calc "($t1 - $t0) / $(getconf CLK_TCK) * 1e6 / $n")"
            [[ $side == on ]] && total_req=$((total_req + n))
        done
        ratios+=" $(calc "${got[on]} / ${got[off]}" 4)"
    done
    w1=$(writer_ticks on)
    events=$(curl -sf "${ADMIN[on]}/metrics" | sed -n 's/^edge_events_appended_total{kind="cache.fill"} //p')
    events=${events:-0}
    stop_edge off
    stop_edge on
    writer=$(calc "($w1 - $w0) / $(getconf CLK_TCK) * 1e6 / max($events, 1)" 2)
    # shellcheck disable=SC2086
    spread=$(python3 -c 'import sys; r = [float(x) for x in sys.argv[1:]]; print(f"{min(r):.3f}–{max(r):.3f}")' $ratios)
    # shellcheck disable=SC2086
    echo "| segments, $case (memory $mem, ${#urls[@]} objects) | $(median 0 ${R[off]}) | $(median 0 ${R[on]}) | **$(median 3 $ratios)** ($spread) | $(median 1 ${C[off]}) | $(median 1 ${C[on]}) | $(median 2 ${P[off]}) | $(median 2 ${P[on]}) | $events / $total_req (+ warm-up) | $writer |"
    unset -n urls
done
echo

RPORT=$(port)
redis-server --bind 127.0.0.1 --port "$RPORT" --save '' --appendonly no --dir "$WORK" >/dev/null &
REDIS_PID=$!
sleep 0.3
start_edge progress true 64MiB 4MiB REDIS_HOST=127.0.0.1 REDIS_PORT="$RPORT"
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
B=${BASE[progress]}
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer $JWT" -d '{"position_seconds":1}' "$B/api/v1/stream/demo/progress")
[[ $code == 200 ]] || die "progress answered $code: $(tail -3 "$WORK/progress/edge.log")"
out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$WORK/progress.lua" "$B")
final=$(curl -s -H "Authorization: Bearer $JWT" "$B/api/v1/stream/demo/progress")
echo "| progress endpoint (redis, fsync = always), ${DURATION}s | req/s | p99 |"
echo "|---|---|---|"
echo "| POST …/progress, one viewer, $CONNS connections | $(rps <<<"$out") | $(p99 <<<"$out") |"
echo
stop_edge progress
echo "after the run: GET …/progress = $final; redis watch_progress:dev-user:demo position_seconds = $(redis-cli -p "$RPORT" HGET watch_progress:dev-user:demo position_seconds)"
echo "spool: $("$EDGE_BIN" events tail --config "$WORK/progress/edge.toml" --kind stream.progress | wc -l) stream.progress records, $(du -sh "$WORK/progress/data/events" | cut -f1)"
