#!/usr/bin/env bash
# vs-nginx.sh: throughput and tail latency of the edge against nginx, same box, same run.
#
# Both servers serve the same signed-URL-protected VOD objects from a warm cache:
#   nginx: secure_link check -> proxy_cache (key $uri) -> static "origin" server block
#          (bench/load/nginx.conf.template, worker_processes 1)
#   edge:  `edge serve` with EDGE_ORIGIN_ROOT pointing at the same files (signed-URL policy)
# Cases: (a) a ~1 KB HLS media playlist, (b) a 1 MiB segment. Each server is pinned to core 0
# and wrk (one thread, keep-alive) to core 1; cases run nginx first, then the edge.
# Prints a markdown table (req/s, p99, edge/nginx ratio) for bench/RESULTS.md.
#
# Run from anywhere (needs the edge built: cargo build --release -p <edge bin crate>):
#   bench/load/vs-nginx.sh
# Env: DURATION   seconds per wrk run (default 10)
#      CONNS      wrk connections (default 32)
#      EDGE_BIN   edge binary (default target/release/edge, relative to the repo root)
#      SKIP_EDGE  1 = measure nginx only
#      SERVER_CPU / LOAD_CPU  cores for servers / wrk (default 0 / 1)
#      EDGE_THREADS  edge runtime threads (default 1, like nginx worker_processes 1)
set -euo pipefail

DURATION=${DURATION:-10} CONNS=${CONNS:-32} SKIP_EDGE=${SKIP_EDGE:-0}
SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EDGE_BIN=${EDGE_BIN:-target/release/edge}
[[ $EDGE_BIN = /* ]] || EDGE_BIN=$ROOT/$EDGE_BIN

die() { echo "vs-nginx: $*" >&2; exit 1; }
log() { echo "vs-nginx: $*" >&2; }

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v taskset >/dev/null; then
    log "installing nginx, wrk"
    apt-get update && apt-get install -y --no-install-recommends nginx wrk util-linux
fi
command -v openssl >/dev/null && command -v curl >/dev/null || die "needs openssl and curl"
if [[ $SKIP_EDGE != 1 && ! -x $EDGE_BIN ]]; then
    die "edge binary $EDGE_BIN not found: build it, set EDGE_BIN, or SKIP_EDGE=1 for nginx only"
fi

echo "# vs-nginx: \`DURATION=$DURATION CONNS=$CONNS SKIP_EDGE=$SKIP_EDGE $0${*:+ $*}\`"
echo "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ'), nproc: $(nproc), nginx: $(nginx -v 2>&1 | sed 's/.*\///'),"\
     "wrk: -t1 -c$CONNS -d${DURATION}s --latency, servers on core $SERVER_CPU, wrk on core $LOAD_CPU"
echo

WORK=$(mktemp -d /tmp/vs-nginx.XXXXXX)
NGINX_PID='' EDGE_PID=''
cleanup() {
    [[ -n $NGINX_PID ]] && kill "$NGINX_PID" 2>/dev/null && wait "$NGINX_PID" 2>/dev/null
    [[ -n $EDGE_PID ]] && kill -TERM "$EDGE_PID" 2>/dev/null && wait "$EDGE_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
chmod 755 "$WORK"   # nginx workers run as nobody when started by root

# --- bench objects -------------------------------------------------------------------------
ORIGIN=$WORK/origin DIR=/vod/movies/bench
mkdir -p "$ORIGIN$DIR" "$WORK/nginx-tmp" "$WORK/edge-data"
{
    printf '#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n'
    for i in $(seq -w 0 19); do printf '#EXTINF:2.0,\nseg_%03d.ts\n' "$((10#$i))"; done
    printf '#EXT-X-ENDLIST\n'
} >"$ORIGIN$DIR/index.m3u8"
head -c 1048576 /dev/urandom >"$ORIGIN$DIR/seg_1m.ts"
chmod -R a+rX "$ORIGIN"
CASES=(index.m3u8 seg_1m.ts)

free_port() {  # a random port nothing answers on (racy, good enough for a bench)
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        [[ " ${USED_PORTS:-} " == *" $p "* ]] && continue
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}
status() { curl -s -o /dev/null -w '%{http_code}' "$1"; }
wait_http() {  # wait until URL answers anything, up to 10 s
    for _ in $(seq 100); do [[ $(status "$1") != 000 ]] && return; sleep 0.1; done
    die "$2 did not come up"
}

# --- nginx ---------------------------------------------------------------------------------
FRONT_PORT=$(free_port); USED_PORTS=" $FRONT_PORT"; ORIGIN_PORT=$(free_port)
SECRET=$(openssl rand -hex 16)
sed -e "s|@WORK@|$WORK|g" -e "s|@ORIGIN_DIR@|$ORIGIN|g" -e "s|@FRONT_PORT@|$FRONT_PORT|g" \
    -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" -e "s|@SECRET@|$SECRET|g" \
    "$HERE/nginx.conf.template" >"$WORK/nginx.conf"
nginx_link() {  # secure_link URL for $1 (a uri) expiring at $2
    local md5
    md5=$(printf '%s' "$2$1 $SECRET" | openssl md5 -binary | openssl base64 | tr +/ -_ | tr -d =)
    echo "http://127.0.0.1:$FRONT_PORT$1?md5=$md5&expires=$2"
}
taskset -c "$SERVER_CPU" nginx -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" &
NGINX_PID=$!
wait_http "http://127.0.0.1:$FRONT_PORT/" "nginx (see $WORK/nginx-error.log)"
EXPIRES=$(($(date +%s) + 3600))
[[ $(status "http://127.0.0.1:$FRONT_PORT$DIR/index.m3u8") == 403 ]] || die "nginx: unsigned request not refused with 403"
[[ $(status "$(nginx_link "$DIR/index.m3u8" $(($(date +%s) - 60)))") == 410 ]] || die "nginx: expired link not 410"

# --- edge ----------------------------------------------------------------------------------
if [[ $SKIP_EDGE != 1 ]]; then
    export SIGNED_URL_SECRET=$SECRET$SECRET EDGE_ORIGIN_ROOT=$ORIGIN EDGE_DATA_DIR=$WORK/edge-data
    export RUST_LOG=warn,edge=info EDGE_THREADS=${EDGE_THREADS:-1}   # one worker thread, like nginx
    (cd "$ROOT" && exec taskset -c "$SERVER_CPU" "$EDGE_BIN" serve --listen 127.0.0.1:0 --no-tls \
        --admin-listen 127.0.0.1:0) 2>"$WORK/edge.log" &
    EDGE_PID=$!
    EDGE_PORT=''
    for _ in $(seq 100); do
        EDGE_PORT=$(grep -v '(admin)' "$WORK/edge.log" | grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' \
            | head -1 | sed 's/.*://') || true
        [[ -n $EDGE_PORT ]] && break
        kill -0 "$EDGE_PID" 2>/dev/null || { cat "$WORK/edge.log" >&2; die "edge exited at start"; }
        sleep 0.1
    done
    [[ -n $EDGE_PORT ]] || { cat "$WORK/edge.log" >&2; die "edge did not log its port within 10 s"; }
    EDGE_URL=$(cd "$ROOT" && "$EDGE_BIN" sign-url "$DIR/index.m3u8" --ttl 3600 \
        --base "http://127.0.0.1:$EDGE_PORT" 2>>"$WORK/edge.log")
    EDGE_QUERY="?${EDGE_URL#*\?}"
    [[ $EDGE_URL == *\?token=* ]] || die "unexpected sign-url output: $EDGE_URL"
    [[ $(status "http://127.0.0.1:$EDGE_PORT$DIR/index.m3u8") != 200 ]] || die "edge served an unsigned request"
else
    log "SKIP_EDGE=1: measuring nginx only"
fi

# --- warm-up: three requests per object and server, all must be 200 ------------------------
declare -A URL
for c in "${CASES[@]}"; do
    URL[nginx,$c]=$(nginx_link "$DIR/$c" "$EXPIRES")
    [[ $SKIP_EDGE == 1 ]] || URL[edge,$c]="http://127.0.0.1:$EDGE_PORT$DIR/$c$EDGE_QUERY"
    for s in nginx edge; do
        [[ -n ${URL[$s,$c]:-} ]] || continue
        for _ in 1 2 3; do
            code=$(status "${URL[$s,$c]}")
            [[ $code == 200 ]] || die "$s warm-up of $c: HTTP $code"
        done
    done
    hit=$(curl -s -o /dev/null -D - "${URL[nginx,$c]}" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-cache-status"{print $2}')
    [[ $hit == HIT ]] || die "nginx: $c not a cache hit after warm-up (X-Cache-Status: ${hit:-none})"
done

# --- measure -------------------------------------------------------------------------------
to_ms() {  # 812.00us | 1.23ms | 1.01s -> milliseconds
    awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}
declare -A RPS P99
for c in "${CASES[@]}"; do
    for s in nginx edge; do
        [[ -n ${URL[$s,$c]:-} ]] || continue
        log "$c: $s, ${DURATION}s"
        out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${URL[$s,$c]}")
        RPS[$s,$c]=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
        P99[$s,$c]=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
        bad=$(awk -F': *' '/Non-2xx or 3xx responses/ { print $2 }' <<<"$out")
        if [[ -n $bad && $bad != 0 ]] || [[ -z ${RPS[$s,$c]} || ${RPS[$s,$c]} == 0 ]]; then
            echo "$out" >&2; die "$s $c: $bad non-2xx responses (or no requests)"
        fi
        grep -q 'Socket errors' <<<"$out" && log "warning: $s $c: $(grep 'Socket errors' <<<"$out")"
    done
done

echo "| case | nginx req/s | nginx p99 (ms) | edge req/s | edge p99 (ms) | edge/nginx req/s |"
echo "|---|---:|---:|---:|---:|---:|"
for c in "${CASES[@]}"; do
    if [[ -n ${RPS[edge,$c]:-} ]]; then
        ratio=$(awk -v e="${RPS[edge,$c]}" -v n="${RPS[nginx,$c]}" 'BEGIN { printf "%.2f", e / n }')
        echo "| $c | ${RPS[nginx,$c]} | ${P99[nginx,$c]} | ${RPS[edge,$c]} | ${P99[edge,$c]} | $ratio |"
    else
        echo "| $c | ${RPS[nginx,$c]} | ${P99[nginx,$c]} | skipped | skipped | - |"
    fi
done
