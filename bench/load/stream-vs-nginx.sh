#!/usr/bin/env bash
# stream-vs-nginx.sh: cold objects far larger than a segment, from a throttled origin, through the
# edge and through nginx proxy_cache (which streams a fill to its first viewer), same box, same run.
#
# Origin: a static nginx (bench/load/nginx-origin.conf.template, one worker) with
#   limit_rate RATE per connection (default 50m = 50 MB/s), serving two sparse files made at start:
#   vod/movies/big/cold.mp4 (BIG_MIB, default 1024) and vod/movies/big/join.mp4 (JOIN_MIB, 256).
#   Its access log counts the requests and body bytes each contender fetched. nginx's limit_rate
#   holds per request: the edge's ranged slice requests (two at a time with read-ahead) each get
#   the rate, so total times say how each uses such an origin, not which is faster per se.
# Contenders, fresh for each phase, pinned to core SERVER_CPU with the origin, one worker/thread:
#   nginx: proxy_cache (key $uri, proxy_cache_lock on, its default 5 s lock timeout) -> origin
#          (bench/load/nginx-proxy-cache.conf.template, max_size 4 GiB)
#   edge:  `edge serve` with an HTTP origin, the default memory tier (256 MiB) and slices (4 MiB),
#          no disk tier, a /vod/** route with no policy
# Phases, nginx then the edge:
#   1. cold: one GET of cold.mp4 (curl on core LOAD_CPU): time to first byte and total time; the
#      edge's peak RSS, sampled every 100 ms. Then, on the same server, TTFB_N (default 15) GETs
#      of distinct cold 16 MiB objects one after another, each read whole: the median and the
#      largest time to first byte (one sample of a few ms says little on a shared core).
#   2. join: VIEWERS viewers (default 64) start GETs of the cold join.mp4 one every STAGGER
#      seconds (default 0.1), each reading it whole: bytes the origin sent for it (goal: one
#      object's worth), the first and last viewer's total time, the edge's peak RSS.
#   3. seeders (the edge only; skipped with SEEDERS=0): two seeder processes (`edge seeder`, on
#      core SERVER_CPU) hold a copy of cold.mp4 and publish it in a redis-server started for the
#      run; a fresh edge with that directory serves one cold GET of it (time to first byte, total,
#      origin bytes: goal 0); then a fresh edge again, and both seeders are killed (SIGKILL) once
#      the viewer has read half of the body: the edge must go on from the origin by range, the
#      viewer's response uninterrupted and complete (total time, origin bytes: about half).
# Prints markdown tables for bench/RESULTS.md with edge ÷ nginx ratios.
#
# Run from anywhere (needs the edge built: cargo build --release -p edge):
#   bench/load/stream-vs-nginx.sh
# Env: RATE, BIG_MIB, JOIN_MIB, VIEWERS, STAGGER, TTFB_N; EDGE_BIN (default target/release/edge);
#      SERVER_CPU / LOAD_CPU (default 0 / 1); SEEDERS (default 1; 0 skips phase 3)
set -euo pipefail

RATE=${RATE:-50m} BIG_MIB=${BIG_MIB:-1024} JOIN_MIB=${JOIN_MIB:-256} VIEWERS=${VIEWERS:-64}
STAGGER=${STAGGER:-0.1} TTFB_N=${TTFB_N:-15} SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1} SEEDERS=${SEEDERS:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EDGE_BIN=${EDGE_BIN:-$ROOT/target/release/edge}
[[ $EDGE_BIN == /* ]] || EDGE_BIN=$ROOT/$EDGE_BIN

log() { printf '[stream-vs-nginx %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

if ! command -v nginx >/dev/null || ! command -v taskset >/dev/null; then
    log "installing nginx and util-linux (Debian packages)"
    apt-get update && apt-get install -y --no-install-recommends nginx util-linux
fi
command -v curl >/dev/null || die "needs curl"
if [[ $SEEDERS == 1 ]] && ! command -v redis-server >/dev/null; then
    log "installing redis-server (Debian package) for the seeder phase"
    apt-get update && apt-get install -y --no-install-recommends redis-server
fi
[[ -x $EDGE_BIN ]] || die "edge binary $EDGE_BIN not found: cargo build --release -p edge, or set EDGE_BIN"

WORK=$(mktemp -d /tmp/stream-vs-nginx.XXXXXX)
ORIGIN_PID='' FRONT_PID='' SAMPLER_PID='' REDIS_PID='' SEEDER_PIDS='' READER_PID=''
cleanup() {
    local p
    for p in $READER_PID $SAMPLER_PID $FRONT_PID $SEEDER_PIDS $REDIS_PID $ORIGIN_PID; do
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
chmod 755 "$WORK"

free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        [[ " ${USED_PORTS:-} " == *" $p "* ]] && continue
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { USED_PORTS="${USED_PORTS:-} $p"; echo "$p"; return; }
    done
}
wait_http() {
    for _ in $(seq 100); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "$1") != 000 ]] && return
        sleep 0.1
    done
    die "$2 did not come up"
}

# --- origin ----------------------------------------------------------------------------------
mkdir -p "$WORK/origin/vod/movies/big" "$WORK/nginx-tmp"
truncate -s "${BIG_MIB}M" "$WORK/origin/vod/movies/big/cold.mp4"
truncate -s "${JOIN_MIB}M" "$WORK/origin/vod/movies/big/join.mp4"
for ((i = 0; i < TTFB_N; i++)); do
    truncate -s 16M "$WORK/origin/vod/movies/big/nginx-$i.mp4" "$WORK/origin/vod/movies/big/edge-$i.mp4"
done
ORIGIN_PORT=$(free_port)
sed -e "s|@WORK@|$WORK|g" -e "s|@ORIGIN_DIR@|$WORK/origin|g" -e "s|@PORT@|$ORIGIN_PORT|g" \
    -e "s|@LIMIT_RATE@|$RATE|g" "$HERE/nginx-origin.conf.template" >"$WORK/nginx-origin.conf"
ORIGIN_LOG=$WORK/origin-access.log
taskset -c "$SERVER_CPU" nginx -p "$WORK" -c "$WORK/nginx-origin.conf" -e "$WORK/nginx-origin-error.log" &
ORIGIN_PID=$!
wait_http "http://127.0.0.1:$ORIGIN_PORT/" "origin nginx"

origin_bytes() {  # body bytes the origin sent for path $2 after log line $1
    sleep 0.5
    tail -n "+$(($1 + 1))" "$ORIGIN_LOG" | awk -v p="$2" '$1 == p { b += $3 } END { printf "%.0f\n", b }'
}

# --- contenders ------------------------------------------------------------------------------
PORT='' PID_OF_SERVER=''
start_nginx() {
    PORT=$(free_port)
    rm -rf "$WORK/nginx-cache"; mkdir -p "$WORK/nginx-cache"
    sed -e "s|@WORK@|$WORK|g" -e "s|@PORT@|$PORT|g" -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" \
        -e "s|@CACHE_MIB@|4096|g" "$HERE/nginx-proxy-cache.conf.template" >"$WORK/nginx-front.conf"
    taskset -c "$SERVER_CPU" nginx -p "$WORK" -c "$WORK/nginx-front.conf" -e "$WORK/nginx-front-error.log" &
    FRONT_PID=$! PID_OF_SERVER=$FRONT_PID
    wait_http "http://127.0.0.1:$PORT/" "nginx proxy_cache"
}
start_edge() {  # $1: more TOML for edge.toml (the seeder phase's [redis])
    cat >"$WORK/open-policies.toml" <<'EOF'
[[routes]]
name = "vod"
paths = ["/vod/**"]
EOF
    rm -rf "$WORK/edge-data"
    cat >"$WORK/edge.toml" <<EOF
[server]
demo_stream = ""
threads = 1
data_dir = "$WORK/edge-data"
[origin]
url = "http://127.0.0.1:$ORIGIN_PORT/"
timeout = "10s"
[policies]
file = "$WORK/open-policies.toml"
watch_interval = "0s"
${1:-}
EOF
    unset EDGE_CONFIG EDGE_POLICIES EDGE_ORIGIN_ROOT EDGE_ORIGIN_URL EDGE_CACHE_MEMORY EDGE_THREADS \
        EDGE_DISK_CACHE_PATH EDGE_DISK_CACHE_SIZE EDGE_DATA_DIR REDIS_HOST S3_BUCKET_NAME 2>/dev/null || true
    export RUST_LOG=warn,edge=info
    (cd "$ROOT" && exec taskset -c "$SERVER_CPU" "$EDGE_BIN" serve --config "$WORK/edge.toml" \
        --listen 127.0.0.1:0 --no-tls --admin-listen 127.0.0.1:0) 2>"$WORK/edge.log" &
    FRONT_PID=$! PID_OF_SERVER=$FRONT_PID
    PORT=''
    for _ in $(seq 100); do
        PORT=$(grep -v '(admin)' "$WORK/edge.log" | grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' \
            | head -1 | sed 's/.*://') || true
        [[ -n $PORT ]] && break
        sleep 0.1
    done
    [[ -n $PORT ]] || { cat "$WORK/edge.log" >&2; die "edge did not start"; }
}
stop_front() {
    kill -TERM "$FRONT_PID" 2>/dev/null || true
    wait "$FRONT_PID" 2>/dev/null || true
    FRONT_PID=''
}
# Peak RSS (KiB) of the server and its children while the sampler runs.
start_sampler() {
    : >"$WORK/rss"
    (
        while :; do
            pids=$(pgrep -P "$PID_OF_SERVER" 2>/dev/null | paste -sd, - || true)
            ps -o rss= -p "$PID_OF_SERVER${pids:+,$pids}" 2>/dev/null | awk '{ s += $1 } END { print s + 0 }' >>"$WORK/rss"
            sleep 0.1
        done
    ) &
    SAMPLER_PID=$!
}
stop_sampler() {
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=''
    sort -n "$WORK/rss" | tail -1
}

echo "# stream-vs-nginx: \`RATE=$RATE BIG_MIB=$BIG_MIB JOIN_MIB=$JOIN_MIB VIEWERS=$VIEWERS STAGGER=$STAGGER $0\`"
echo "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ'), nproc: $(nproc), nginx: $(nginx -v 2>&1 | sed 's/.*\///'),"\
     "servers and origin on core $SERVER_CPU, clients on core $LOAD_CPU"
echo

declare -A TTFB TOTAL RSS1 TTFB_MED TTFB_MAX CBYTES OBYTES FIRST LAST RSS2 OK
for who in nginx edge; do
    # Phase 1: one cold viewer.
    "start_$who"
    start_sampler
    mark=$(wc -l <"$ORIGIN_LOG")
    read -r ttfb total size < <(taskset -c "$LOAD_CPU" curl -s -o /dev/null \
        -w '%{time_starttransfer} %{time_total} %{size_download}\n' \
        "http://127.0.0.1:$PORT/vod/movies/big/cold.mp4")
    RSS1[$who]=$(stop_sampler)
    [[ $size == $((BIG_MIB << 20)) ]] || die "$who: cold.mp4 came with $size bytes"
    TTFB[$who]=$ttfb TOTAL[$who]=$total
    CBYTES[$who]=$(origin_bytes "$mark" /vod/movies/big/cold.mp4)
    log "$who cold: ttfb ${ttfb}s total ${total}s, origin bytes ${CBYTES[$who]}"
    : >"$WORK/ttfb"
    for ((i = 0; i < TTFB_N; i++)); do
        taskset -c "$LOAD_CPU" curl -s -o /dev/null -w '%{time_starttransfer}\n' \
            "http://127.0.0.1:$PORT/vod/movies/big/$who-$i.mp4" >>"$WORK/ttfb"
    done
    TTFB_MED[$who]=$(sort -n "$WORK/ttfb" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
    TTFB_MAX[$who]=$(sort -n "$WORK/ttfb" | tail -1)
    log "$who ttfb of $TTFB_N cold 16 MiB objects: median ${TTFB_MED[$who]}s, max ${TTFB_MAX[$who]}s"
    stop_front

    # Phase 2: viewers joining one cold object at staggered times.
    "start_$who"
    start_sampler
    mark=$(wc -l <"$ORIGIN_LOG")
    : >"$WORK/viewers"
    viewers=()
    for ((i = 0; i < VIEWERS; i++)); do
        taskset -c "$LOAD_CPU" curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' \
            "http://127.0.0.1:$PORT/vod/movies/big/join.mp4" >>"$WORK/viewers" &
        viewers+=($!)
        sleep "$STAGGER"
    done
    for v in "${viewers[@]}"; do wait "$v" || true; done
    RSS2[$who]=$(stop_sampler)
    OBYTES[$who]=$(origin_bytes "$mark" /vod/movies/big/join.mp4)
    OK[$who]=$(awk -v n=$((JOIN_MIB << 20)) '$1 == 200 && $2 == n { c++ } END { print c + 0 }' "$WORK/viewers")
    FIRST[$who]=$(head -1 "$WORK/viewers" | cut -d' ' -f3)
    LAST[$who]=$(sort -k3 -n "$WORK/viewers" | tail -1 | cut -d' ' -f3)
    log "$who join: ${OK[$who]}/$VIEWERS complete, origin bytes ${OBYTES[$who]}"
    stop_front
done

# Phase 3: the same cold object from seeders, then with both seeders killed mid-body.
declare -A S_TTFB S_TOTAL S_SIZE S_OBYTES S_RSS
if [[ $SEEDERS == 1 ]]; then
    REDIS_PORT=$(free_port)
    taskset -c "$SERVER_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
        --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    redis-cli -p "$REDIS_PORT" ping >/dev/null || die "redis-server did not come up"
    REDIS_TOML=$(printf '[redis]\nhost = "127.0.0.1"\nport = %s\n' "$REDIS_PORT")
    start_seeders() {
        local id p
        SEEDER_PIDS=''
        redis-cli -p "$REDIS_PORT" flushall >/dev/null
        for id in seeder-a seeder-b; do
            mkdir -p "$WORK/$id/vod/movies/big"
            [[ -e $WORK/$id/vod/movies/big/cold.mp4 ]] \
                || truncate -s "${BIG_MIB}M" "$WORK/$id/vod/movies/big/cold.mp4"
            cat >"$WORK/$id.toml" <<EOF
[server]
demo_stream = ""
data_dir = "$WORK/$id-data"
[origin]     # and has an origin (pull-through is off: nothing is fetched from it)
url = "http://127.0.0.1:$ORIGIN_PORT/"
[policies]   # and loads a policies file (not used to serve)
file = "$WORK/open-policies.toml"
watch_interval = "0s"
[seeder]
cache_path = "$WORK/$id"
id = "$id"
pull_through = false
$REDIS_TOML
EOF
            (cd "$ROOT" && exec taskset -c "$SERVER_CPU" "$EDGE_BIN" seeder --config "$WORK/$id.toml" \
                --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0) 2>"$WORK/$id.log" &
            SEEDER_PIDS="$SEEDER_PIDS $!"
        done
        # Both must be in the directory (the first scan hashes the whole file) before the edge starts.
        for _ in $(seq 600); do
            [[ $(redis-cli -p "$REDIS_PORT" hlen stream:big:segment:cold.mp4) == 2 ]] && return
            for p in $SEEDER_PIDS; do kill -0 "$p" 2>/dev/null || { cat "$WORK"/seeder-*.log >&2; die "a seeder exited"; }; done
            sleep 0.1
        done
        cat "$WORK"/seeder-*.log >&2
        die "the seeders did not publish cold.mp4 within 60 s"
    }
    stop_seeders() {
        local p
        for p in $SEEDER_PIDS; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
        SEEDER_PIDS=''
    }
    for run in healthy killed; do
        start_seeders
        start_edge "$REDIS_TOML"
        PID_OF_SERVER=$FRONT_PID
        start_sampler
        mark=$(wc -l <"$ORIGIN_LOG")
        rm -f "$WORK/body"; mkfifo "$WORK/body"
        if [[ $run == killed ]]; then  # read half, kill both seeders, read the rest
            (
                head -c $((BIG_MIB << 19)) >/dev/null
                for p in $SEEDER_PIDS; do kill -KILL "$p" 2>/dev/null || true; done
                cat >/dev/null
            ) <"$WORK/body" &
        else
            cat <"$WORK/body" >/dev/null &
        fi
        READER_PID=$!
        read -r ttfb total size < <(taskset -c "$LOAD_CPU" curl -s -o "$WORK/body" \
            -w '%{time_starttransfer} %{time_total} %{size_download}\n' \
            "http://127.0.0.1:$PORT/vod/movies/big/cold.mp4")
        wait "$READER_PID" || true
        READER_PID=''
        S_RSS[$run]=$(stop_sampler)
        S_TTFB[$run]=$ttfb S_TOTAL[$run]=$total S_SIZE[$run]=$size
        S_OBYTES[$run]=$(origin_bytes "$mark" /vod/movies/big/cold.mp4)
        [[ $size == $((BIG_MIB << 20)) ]] || log "edge with seeders ($run): cold.mp4 came with $size bytes"
        log "edge from seeders ($run): ttfb ${ttfb}s total ${total}s, $size bytes, origin bytes ${S_OBYTES[$run]}"
        stop_front
        stop_seeders
    done
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
echo "Cold ${BIG_MIB} MiB object, origin throttled to $RATE/s per connection, one viewer:"
echo
echo "| | nginx proxy_cache | edge | edge ÷ nginx |"
echo "|---|---|---|---|"
echo "| time to first byte (s) | ${TTFB[nginx]} | ${TTFB[edge]} | $(ratio "${TTFB[edge]}" "${TTFB[nginx]}") |"
echo "| time to first byte, median of $TTFB_N cold 16 MiB objects (s) | ${TTFB_MED[nginx]} | ${TTFB_MED[edge]} | $(ratio "${TTFB_MED[edge]}" "${TTFB_MED[nginx]}") |"
echo "| time to first byte, largest of the $TTFB_N (s) | ${TTFB_MAX[nginx]} | ${TTFB_MAX[edge]} | $(ratio "${TTFB_MAX[edge]}" "${TTFB_MAX[nginx]}") |"
echo "| total time (s) | ${TOTAL[nginx]} | ${TOTAL[edge]} | $(ratio "${TOTAL[edge]}" "${TOTAL[nginx]}") |"
echo "| peak RSS (MiB) | $(mib "${RSS1[nginx]}") | $(mib "${RSS1[edge]}") | |"
echo
echo "$VIEWERS viewers joining a cold ${JOIN_MIB} MiB object one every ${STAGGER} s, each reading it whole:"
echo
echo "| | nginx proxy_cache | edge |"
echo "|---|---|---|"
echo "| complete responses | ${OK[nginx]}/$VIEWERS | ${OK[edge]}/$VIEWERS |"
echo "| origin bytes (objects' worth) | ${OBYTES[nginx]} ($(ratio "${OBYTES[nginx]}" $((JOIN_MIB << 20)))) | ${OBYTES[edge]} ($(ratio "${OBYTES[edge]}" $((JOIN_MIB << 20)))) |"
echo "| first viewer's total time (s) | ${FIRST[nginx]} | ${FIRST[edge]} |"
echo "| slowest viewer's total time (s) | ${LAST[nginx]} | ${LAST[edge]} |"
echo "| peak RSS (MiB) | $(mib "${RSS2[nginx]}") | $(mib "${RSS2[edge]}") |"

if [[ $SEEDERS == 1 ]]; then
    echo
    echo "The cold ${BIG_MIB} MiB object from two seeders holding it (the origin as in phase 1), one viewer:"
    echo
    echo "| | edge, origin only (phase 1) | edge, seeders | edge, both seeders killed at half the body |"
    echo "|---|---|---|---|"
    echo "| time to first byte (s) | ${TTFB[edge]} | ${S_TTFB[healthy]} | ${S_TTFB[killed]} |"
    echo "| total time (s) | ${TOTAL[edge]} | ${S_TOTAL[healthy]} | ${S_TOTAL[killed]} |"
    echo "| bytes received (of $((BIG_MIB << 20))) | $((BIG_MIB << 20)) | ${S_SIZE[healthy]} | ${S_SIZE[killed]} |"
    echo "| origin bytes (objects' worth) | ${CBYTES[edge]} ($(ratio "${CBYTES[edge]}" $((BIG_MIB << 20)))) | ${S_OBYTES[healthy]} ($(ratio "${S_OBYTES[healthy]}" $((BIG_MIB << 20)))) | ${S_OBYTES[killed]} ($(ratio "${S_OBYTES[killed]}" $((BIG_MIB << 20)))) |"
    echo "| edge peak RSS (MiB) | $(mib "${RSS1[edge]}") | $(mib "${S_RSS[healthy]}") | $(mib "${S_RSS[killed]}") |"
fi
