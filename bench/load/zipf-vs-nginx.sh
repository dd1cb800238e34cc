#!/usr/bin/env bash
# zipf-vs-nginx.sh: origin offload and throughput of the edge's cache tiers against nginx
# proxy_cache with the same cache size, on a Zipf-distributed segment workload, same box, same run.
#
# Corpus: STREAMS streams x SEGMENTS segments of SEG_KIB KiB random bytes
#   (<corpus>/vod/movies/s<i>/seg_<j>.ts), generated once and kept in CORPUS_DIR for later runs;
#   plus vod/movies/coalesce/seg_0.ts, which no trace ever asks for.
# Origin: a static nginx (bench/load/nginx-origin.conf.template, one worker) whose access log
#   counts the requests and body bytes each contender fetched.
# Contenders, both pinned to core SERVER_CPU with the origin, cold at start, one worker/thread:
#   nginx: proxy_cache (key $uri, max_size CACHE_MIB, proxy_cache_lock on) -> origin
#          (bench/load/nginx-proxy-cache.conf.template)
#   edge:  `edge serve --config <generated edge.toml>`: HTTP origin, memory tier CACHE_MIB/4,
#          disk tier CACHE_MIB*3/4 (memory + disk = nginx's max_size), a /vod/** route with no
#          policy (caching only is compared)
# Trace: bench/load/zipf-trace.py (its header describes the viewer model): REQUESTS paths, the
#   stream Zipf(ZIPF_S) over the streams, VIEWERS concurrent viewers each watching a run of
#   consecutive segments. The same file drives both contenders through wrk and
#   bench/load/zipf-replay.lua (one wrk thread: the connections take the trace's paths in order).
# Phases, each for nginx then the edge:
#   1. coalescing: COALESCE_N concurrent GETs (connected first, then released together) of the
#      never-fetched coalesce segment; the origin log must show exactly one request for it.
#   2. hit-ratio pass: the whole trace exactly once, HR_CONNS connections, from a cold cache
#      (but for the coalesce segment). Hit ratio = 1 - origin requests / requests; origin bytes /
#      bytes served. The edge's per-tier split comes from its /metrics
#      (edge_cache_served_bytes_total{tier}, edge_upstream_fills_total).
#   3. throughput pass: wrk -c CONNS for DURATION seconds over the warm caches, walking the trace
#      from its start again (wrapping around); misses still go to the origin and are counted.
#      TP_ROUNDS rounds (nginx first in round 1, then alternating); the table has every run, the
#      medians and their ratio, and each contender's CPU time per request (its own processes,
#      and the origin's) from /proc.
# Prints markdown tables for bench/RESULTS.md with edge/nginx ratios, then samples x-cache values
# from the edge (after the measurements, so they disturb nothing measured).
#
# Same cache size, on paper: nginx enforces max_size only when its cache manager runs, which is
# at most every 10 s while no entry is past `inactive`; in between, fills grow the cache freely.
# At this bench's fill rates that is several hundred MiB, so the script samples, every second,
# how much each contender really holds ("peak MiB held"), and zipf-trace.py prints the hit ratio
# of an exact LRU of the same byte budget on the same trace, for reference. The nginx contender
# has no open_file_cache and tcp_nopush off (see nginx-proxy-cache.conf.template for why).
#
# Run from anywhere (needs the edge built: cargo build --release -p edge):
#   bench/load/zipf-vs-nginx.sh
# Env: STREAMS, SEGMENTS, SEG_KIB   corpus (default 200 x 50 x 256 KiB = 2.5 GiB)
#      CORPUS_DIR   where the corpus is kept (default /tmp/zipf-corpus-<STREAMS>x<SEGMENTS>x<SEG_KIB>k)
#      CACHE_MIB    cache size of each contender (default 512)
#      REQUESTS, ZIPF_S, VIEWERS, MEAN_RUN, SEED   trace (default 200000, 1.0, 64, 10, 1)
#      HR_CONNS     wrk connections of the hit-ratio pass (default 4)
#      DURATION     seconds of a throughput run (default 15), CONNS its connections (default 32),
#      TP_ROUNDS    throughput rounds (default 3)
#      COALESCE_N   concurrent requests of the coalescing check (default 200)
#      EDGE_BIN     edge binary (default target/release/edge, relative to the repo root)
#      SKIP_EDGE    1 = nginx only
#      SERVER_CPU / LOAD_CPU  cores for servers + origin / wrk and the clients (default 0 / 1)
#      EDGE_THREADS edge runtime threads (default 1, like nginx worker_processes 1)
set -euo pipefail

STREAMS=${STREAMS:-200} SEGMENTS=${SEGMENTS:-50} SEG_KIB=${SEG_KIB:-256} CACHE_MIB=${CACHE_MIB:-512}
REQUESTS=${REQUESTS:-200000} ZIPF_S=${ZIPF_S:-1.0} VIEWERS=${VIEWERS:-64} MEAN_RUN=${MEAN_RUN:-10}
SEED=${SEED:-1} HR_CONNS=${HR_CONNS:-4} DURATION=${DURATION:-15} CONNS=${CONNS:-32} TP_ROUNDS=${TP_ROUNDS:-3}
COALESCE_N=${COALESCE_N:-200} SKIP_EDGE=${SKIP_EDGE:-0} EDGE_THREADS=${EDGE_THREADS:-1}
SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EDGE_BIN=${EDGE_BIN:-target/release/edge}
[[ $EDGE_BIN = /* ]] || EDGE_BIN=$ROOT/$EDGE_BIN
CORPUS_DIR=${CORPUS_DIR:-/tmp/zipf-corpus-${STREAMS}x${SEGMENTS}x${SEG_KIB}k}

die() { echo "zipf-vs-nginx: $*" >&2; exit 1; }
log() { echo "zipf-vs-nginx: $*" >&2; }

for v in STREAMS SEGMENTS SEG_KIB CACHE_MIB REQUESTS VIEWERS HR_CONNS DURATION CONNS TP_ROUNDS COALESCE_N EDGE_THREADS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
[[ $CACHE_MIB -ge 4 && $((CACHE_MIB % 4)) == 0 ]] || die "CACHE_MIB must be a multiple of 4 (memory = 1/4, disk = 3/4)"
[[ $DURATION -le 600 ]] || die "DURATION must be at most 600 seconds"
SEG_BYTES=$((SEG_KIB * 1024))
SLICE_MIB=$((CACHE_MIB / 4 < 4 ? CACHE_MIB / 4 : 4))
CORPUS_MIB=$((STREAMS * SEGMENTS * SEG_KIB / 1024))
[[ $CORPUS_MIB -gt $CACHE_MIB ]] || log "warning: the corpus ($CORPUS_MIB MiB) fits in the cache ($CACHE_MIB MiB): nothing is evicted"

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v taskset >/dev/null; then
    log "installing nginx, wrk"
    apt-get update && apt-get install -y --no-install-recommends nginx wrk util-linux
fi
for tool in curl python3; do command -v $tool >/dev/null || die "needs $tool"; done
if [[ $SKIP_EDGE != 1 && ! -x $EDGE_BIN ]]; then
    die "edge binary $EDGE_BIN not found: cargo build --release -p edge, set EDGE_BIN, or SKIP_EDGE=1 for nginx only"
fi
# Disk: the corpus (kept) + nginx's cache (which can grow to ~3-4x max_size between its cache
# manager's passes, see below) + the edge's disk tier (this run only).
need_mib=$((CACHE_MIB * 5 + 64)); [[ -f $CORPUS_DIR/.complete ]] || need_mib=$((need_mib + CORPUS_MIB))
avail_mib=$(df -Pm /tmp | awk 'NR == 2 { print $4 }')
[[ $avail_mib -gt $need_mib ]] || die "needs ~$need_mib MiB free under /tmp, has $avail_mib"

echo "# zipf-vs-nginx: \`STREAMS=$STREAMS SEGMENTS=$SEGMENTS SEG_KIB=$SEG_KIB CACHE_MIB=$CACHE_MIB REQUESTS=$REQUESTS"\
     "ZIPF_S=$ZIPF_S VIEWERS=$VIEWERS MEAN_RUN=$MEAN_RUN SEED=$SEED HR_CONNS=$HR_CONNS DURATION=$DURATION"\
     "CONNS=$CONNS TP_ROUNDS=$TP_ROUNDS COALESCE_N=$COALESCE_N SKIP_EDGE=$SKIP_EDGE $0${*:+ $*}\`"
echo "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ'), nproc: $(nproc), nginx: $(nginx -v 2>&1 | sed 's/.*\///'),"\
     "servers and origin on core $SERVER_CPU, wrk on core $LOAD_CPU, load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "corpus: $STREAMS streams x $SEGMENTS segments x $SEG_KIB KiB = $CORPUS_MIB MiB; cache per contender:"\
     "$CACHE_MIB MiB (nginx proxy_cache max_size; edge memory $((CACHE_MIB / 4)) MiB + disk $((CACHE_MIB * 3 / 4)) MiB)"
echo

WORK=$(mktemp -d /tmp/zipf-vs-nginx.XXXXXX)
ORIGIN_PID='' NGINX_PID='' EDGE_PID='' SAMPLER_PID=''
cleanup() {  # every step guarded: a failed `wait` must not skip the rest
    local p
    for p in "$SAMPLER_PID" "$EDGE_PID" "$NGINX_PID" "$ORIGIN_PID"; do
        [[ -n $p ]] || continue
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
chmod 755 "$WORK"   # nginx workers run as nobody when started by root

# --- corpus (kept between runs) ------------------------------------------------------------
if [[ ! -f $CORPUS_DIR/.complete ]]; then
    log "generating the corpus in $CORPUS_DIR ($CORPUS_MIB MiB, once)"
    rm -rf "$CORPUS_DIR"
    for ((i = 0; i < STREAMS; i++)); do
        d=$CORPUS_DIR/vod/movies/s$i
        mkdir -p "$d"
        for ((j = 0; j < SEGMENTS; j++)); do head -c "$SEG_BYTES" /dev/urandom >"$d/seg_$j.ts"; done
    done
    mkdir -p "$CORPUS_DIR/vod/movies/coalesce"
    head -c "$SEG_BYTES" /dev/urandom >"$CORPUS_DIR/vod/movies/coalesce/seg_0.ts"
    chmod -R a+rX "$CORPUS_DIR"
    touch "$CORPUS_DIR/.complete"
fi
chmod a+rx "$CORPUS_DIR" 2>/dev/null || true   # nginx workers run as nobody when started by root
COALESCE_PATH=/vod/movies/coalesce/seg_0.ts

# --- trace ---------------------------------------------------------------------------------
TRACE=$WORK/trace.txt
# Reference: exact LRU caches of the whole budget and of the edge's disk tier alone, in objects.
LRU_OBJECTS=$((CACHE_MIB * 1024 / SEG_KIB)),$((CACHE_MIB * 3 / 4 * 1024 / SEG_KIB))
python3 "$HERE/zipf-trace.py" --streams "$STREAMS" --segments "$SEGMENTS" --requests "$REQUESTS" \
    --zipf-s "$ZIPF_S" --viewers "$VIEWERS" --mean-run "$MEAN_RUN" --seed "$SEED" \
    --lru-capacity "$LRU_OBJECTS" --out "$TRACE" 2>"$WORK/trace.log" || { cat "$WORK/trace.log" >&2; die "zipf-trace.py failed"; }
[[ $(wc -l <"$TRACE") == "$REQUESTS" ]] || die "trace has $(wc -l <"$TRACE") lines, expected $REQUESTS"
sed 's/^zipf-trace: /trace: /' "$WORK/trace.log"
echo

free_port() {  # a random port nothing answers on (racy, good enough for a bench)
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        [[ " ${USED_PORTS:-} " == *" $p "* ]] && continue
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { USED_PORTS="${USED_PORTS:-} $p"; echo "$p"; return; }
    done
}
status() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
wait_http() {  # wait until URL answers anything, up to 10 s
    for _ in $(seq 100); do [[ $(status "$1") != 000 ]] && return; sleep 0.1; done
    die "$2 did not come up"
}

# --- origin and nginx ----------------------------------------------------------------------
mkdir -p "$WORK/nginx-tmp" "$WORK/nginx-cache" "$WORK/edge-disk" "$WORK/edge-data"
ORIGIN_PORT=$(free_port); USED_PORTS=" $ORIGIN_PORT"
NGINX_PORT=$(free_port); USED_PORTS="$USED_PORTS $NGINX_PORT"
sed -e "s|@WORK@|$WORK|g" -e "s|@ORIGIN_DIR@|$CORPUS_DIR|g" -e "s|@PORT@|$ORIGIN_PORT|g" \
    -e "s|@LIMIT_RATE@|0|g" "$HERE/nginx-origin.conf.template" >"$WORK/nginx-origin.conf"
sed -e "s|@WORK@|$WORK|g" -e "s|@PORT@|$NGINX_PORT|g" -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" \
    -e "s|@CACHE_MIB@|$CACHE_MIB|g" "$HERE/nginx-proxy-cache.conf.template" >"$WORK/nginx-front.conf"
ORIGIN_LOG=$WORK/origin-access.log
taskset -c "$SERVER_CPU" nginx -p "$WORK" -c "$WORK/nginx-origin.conf" -e "$WORK/nginx-origin-error.log" &
ORIGIN_PID=$!
wait_http "http://127.0.0.1:$ORIGIN_PORT/" "origin nginx (see $WORK/nginx-origin-error.log)"
taskset -c "$SERVER_CPU" nginx -p "$WORK" -c "$WORK/nginx-front.conf" -e "$WORK/nginx-front-error.log" &
NGINX_PID=$!
wait_http "http://127.0.0.1:$NGINX_PORT/" "nginx (see $WORK/nginx-front-error.log)"

# --- edge ----------------------------------------------------------------------------------
EDGE_PORT='' ADMIN_PORT=''
if [[ $SKIP_EDGE != 1 ]]; then
    cat >"$WORK/open-policies.toml" <<'EOF'
# One route for every video object, no policy: only caching is compared.
[[routes]]
name = "vod"
paths = ["/vod/**"]
EOF
    cat >"$WORK/edge.toml" <<EOF
[server]
demo_stream = ""
threads = $EDGE_THREADS
data_dir = "$WORK/edge-data"

[origin]
url = "http://127.0.0.1:$ORIGIN_PORT/"   # /vod/movies/s1/seg_0.ts -> GET <url>vod/movies/s1/seg_0.ts

[cache]
memory = "$((CACHE_MIB / 4)) MiB"
slice = "$SLICE_MIB MiB"   # 4 MiB (the default), or the memory tier if smaller (validate requires)
segment_ttl = "1h"

[disk_cache]
path = "$WORK/edge-disk"
capacity = "$((CACHE_MIB * 3 / 4)) MiB"   # memory + disk = nginx's max_size

[policies]
file = "$WORK/open-policies.toml"
watch_interval = "0s"
EOF
    # Settings from the environment would override the file; this run uses the file only.
    unset EDGE_CONFIG EDGE_POLICIES EDGE_ORIGIN_ROOT EDGE_ORIGIN_URL EDGE_CACHE_MEMORY EDGE_THREADS \
        EDGE_DISK_CACHE_PATH EDGE_DISK_CACHE_SIZE EDGE_DATA_DIR EDGE_LISTEN EDGE_ADMIN_LISTEN \
        REDIS_HOST S3_BUCKET_NAME SEEDER_ENABLED 2>/dev/null || true
    export RUST_LOG=warn,edge=info
    (cd "$ROOT" && "$EDGE_BIN" validate --config "$WORK/edge.toml") >"$WORK/validate.log" 2>&1 \
        || { cat "$WORK/validate.log" >&2; die "edge validate refused the generated edge.toml"; }
    (cd "$ROOT" && exec taskset -c "$SERVER_CPU" "$EDGE_BIN" serve --config "$WORK/edge.toml" \
        --listen 127.0.0.1:0 --no-tls --admin-listen 127.0.0.1:0) 2>"$WORK/edge.log" &
    EDGE_PID=$!
    for _ in $(seq 100); do
        EDGE_PORT=$(grep -v '(admin)' "$WORK/edge.log" | grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' \
            | head -1 | sed 's/.*://') || true
        ADMIN_PORT=$(grep '(admin)' "$WORK/edge.log" | grep -oE 'http://127\.0\.0\.1:[0-9]+' \
            | head -1 | sed 's/.*://') || true
        [[ -n $EDGE_PORT && -n $ADMIN_PORT ]] && break
        kill -0 "$EDGE_PID" 2>/dev/null || { cat "$WORK/edge.log" >&2; die "edge exited at start"; }
        sleep 0.1
    done
    [[ -n $EDGE_PORT && -n $ADMIN_PORT ]] || { cat "$WORK/edge.log" >&2; die "edge did not log its ports within 10 s"; }
    curl -sf -o /dev/null "http://127.0.0.1:$ADMIN_PORT/metrics" || die "edge: no /metrics on the admin port"
else
    log "SKIP_EDGE=1: measuring nginx only"
fi
CONTENDERS=(nginx); [[ $SKIP_EDGE == 1 ]] || CONTENDERS+=(edge)
declare -A BASE=([nginx]="http://127.0.0.1:$NGINX_PORT" [edge]="http://127.0.0.1:${EDGE_PORT:-0}")

# --- helpers -------------------------------------------------------------------------------
origin_mark() { wc -l <"$ORIGIN_LOG"; }
origin_since() {  # "<requests> <body bytes>" logged by the origin after line $1 (optional path filter $2)
    sleep 0.5   # the last lines of requests just answered
    tail -n "+$(($1 + 1))" "$ORIGIN_LOG" | awk -v p="${2:-}" \
        'p == "" || $1 == p { n++; b += $3 } END { printf "%d %.0f\n", n, b }'
}
edge_metric() {  # sum of the edge's metric lines matching the regex $1
    curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v re="$1" '$0 ~ re { s += $NF } END { printf "%.0f\n", s }'
}
edge_tiers() {  # "memory disk origin seeder stale upstream-fills-ok" counters, space-separated
    local t out=''
    for t in memory disk origin seeder stale; do
        out+="$(edge_metric "^edge_cache_served_bytes_total\\{tier=\"$t\"\\}") "
    done
    echo "$out$(edge_metric '^edge_upstream_fills_total\{.*result="ok"')"
}
to_ms() {  # 812.00us | 1.23ms | 1.01s -> milliseconds
    awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}
held_bytes() {  # bytes contender $1 holds now: nginx's cache files; the edge's memory + disk tiers
    if [[ $1 == nginx ]]; then
        find "$WORK/nginx-cache" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f\n", s }'
    else
        echo $(( $(edge_metric '^edge_cache_stored_bytes\{tier="memory"\}') + $(edge_metric '^edge_disk_cache_bytes ') ))
    fi
}
start_sampler() {  # the peak of held_bytes $1, sampled every second, kept in $WORK/peak-$1
    echo 0 >"$WORK/peak-$1"
    (
        peak=0
        while :; do
            cur=$(held_bytes "$1" 2>/dev/null) || cur=0
            if [[ ${cur:-0} -gt $peak ]]; then peak=$cur; echo "$peak" >"$WORK/peak-$1"; fi
            sleep 1
        done
    ) &
    SAMPLER_PID=$!
}
stop_sampler() {  # $1 = the contender; one last sample, so a pass shorter than a second counts too
    local cur
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=''
    cur=$(held_bytes "$1" 2>/dev/null) || cur=0
    if [[ ${cur:-0} -gt $(cat "$WORK/peak-$1") ]]; then echo "$cur" >"$WORK/peak-$1"; fi
}
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { printf f, v }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }

# --- 1. coalescing: COALESCE_N concurrent requests for a segment nobody fetched yet -----------
cat >"$WORK/coalesce.py" <<'EOF'
# Opens N connections, releases N GETs of one path together, prints
# "<#200> <#full bodies> <slowest ms> <x-cache value>=<count>,...".
import collections, http.client, sys, threading, time
port, path, n, size = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for _ in range(n)]
for c in conns:
    c.connect()
go = threading.Barrier(n + 1)
res = [None] * n
def get(k):
    go.wait()
    t0 = time.monotonic()
    try:
        conns[k].request("GET", path)
        r = conns[k].getresponse()
        body = r.read()
        xc = r.getheader("x-cache") or r.getheader("x-cache-status") or "-"
        res[k] = (r.status, len(body), time.monotonic() - t0, xc)
    except Exception as e:
        res[k] = (0, 0, time.monotonic() - t0, type(e).__name__)
threads = [threading.Thread(target=get, args=(k,)) for k in range(n)]
for t in threads:
    t.start()
go.wait()
for t in threads:
    t.join()
ok = sum(1 for r in res if r[0] == 200)
full = sum(1 for r in res if r[1] == size)
slow = max(r[2] for r in res) * 1000
xc = collections.Counter(r[3] for r in res)
print(ok, full, f"{slow:.0f}", ",".join(f"{k.replace(' ', '_')}={v}" for k, v in sorted(xc.items())))
EOF
declare -A CO_ORIGIN CO_OK CO_FULL CO_SLOW CO_XC
for s in "${CONTENDERS[@]}"; do
    log "coalescing check: $s, $COALESCE_N concurrent GETs of $COALESCE_PATH"
    mark=$(origin_mark)
    port=${BASE[$s]##*:}
    read -r CO_OK[$s] CO_FULL[$s] CO_SLOW[$s] CO_XC[$s] < <(taskset -c "$LOAD_CPU" python3 "$WORK/coalesce.py" \
        "$port" "$COALESCE_PATH" "$COALESCE_N" "$SEG_BYTES")
    read -r CO_ORIGIN[$s] _ < <(origin_since "$mark" "$COALESCE_PATH")
    [[ ${CO_OK[$s]} == "$COALESCE_N" ]] || log "warning: $s: only ${CO_OK[$s]} of $COALESCE_N coalescing requests answered 200"
done

# --- 2. hit-ratio pass: the whole trace once, cold caches ----------------------------------
declare -A HR_REQ HR_ORIGIN HR_OBYTES HR_SERVED HR_RPS HR_SECS HR_PEAK TIERS0 TIERS1
for s in "${CONTENDERS[@]}"; do
    log "hit-ratio pass: $s, $REQUESTS requests, $HR_CONNS connections"
    mark=$(origin_mark)
    [[ $s == edge ]] && TIERS0[$s]=$(edge_tiers)
    start_sampler "$s"
    out=$(ZIPF_REPLAY_MODE=once taskset -c "$LOAD_CPU" wrk -t1 -c"$HR_CONNS" -d1800s --timeout 30s \
        -s "$HERE/zipf-replay.lua" "${BASE[$s]}" -- "$TRACE")
    stop_sampler "$s"
    HR_PEAK[$s]=$(mib "$(cat "$WORK/peak-$s")")
    read -r answered okc bad < <(sed -n 's/^zipf-replay: issued=[0-9]* answered=\([0-9]*\) ok=\([0-9]*\) bad=\([0-9]*\)$/\1 \2 \3/p' <<<"$out")
    if [[ ${answered:-} != "$REQUESTS" || ${okc:-} != "$REQUESTS" ]]; then
        echo "$out" >&2; die "$s hit-ratio pass: answered ${answered:-?}, 200 ${okc:-?}, other ${bad:-?} of $REQUESTS"
    fi
    grep -q 'Socket errors' <<<"$out" && log "warning: $s hit-ratio pass: $(grep 'Socket errors' <<<"$out")"
    HR_REQ[$s]=$REQUESTS
    HR_SERVED[$s]=$((REQUESTS * SEG_BYTES))
    HR_RPS[$s]=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
    HR_SECS[$s]=$(awk '/requests in/ { for (k = 1; k <= NF; k++) if ($k == "in") { v = $(k + 1); sub(/,$/, "", v); print v } }' <<<"$out")
    read -r HR_ORIGIN[$s] HR_OBYTES[$s] < <(origin_since "$mark")
    if [[ $s == edge ]]; then
        TIERS1[$s]=$(edge_tiers)
        metrics=$(curl -sf "http://127.0.0.1:$ADMIN_PORT/metrics") || die "edge: no /metrics on the admin port"
        for m in edge_cache_served_bytes_total edge_upstream_fills_total edge_cache_stored_bytes edge_disk_cache_bytes; do
            grep -q "^# TYPE $m " <<<"$metrics" || log "warning: edge /metrics has no $m after the hit-ratio pass"
        done
    fi
done

# --- 3. throughput pass over the warm caches -----------------------------------------------
# TP_ROUNDS rounds; round 1 measures nginx then the edge, each further round swaps the order.
# Besides wrk's numbers: the CPU time (utime + stime) of the contender's processes and of the
# origin's, per request served, from /proc.
CLK_TCK=$(getconf CLK_TCK)
procs_of() {  # the processes of $1: nginx = front master + its children (worker, cache manager,
    # cache loader); origin = origin master + worker; edge = the edge process (all its threads)
    case $1 in
        nginx) echo "$NGINX_PID"; pgrep -P "$NGINX_PID" || true ;;
        origin) echo "$ORIGIN_PID"; pgrep -P "$ORIGIN_PID" || true ;;
        edge) echo "$EDGE_PID" ;;
    esac
}
cpu_ticks() {  # utime + stime of the processes of $1, in clock ticks (exited children not counted)
    local p t=0 stat rest
    for p in $(procs_of "$1"); do
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        rest=${stat##*) }   # fields from 3 on (the command name may hold spaces)
        read -r -a f <<<"$rest"
        t=$((t + f[11] + f[12]))   # fields 14 and 15
    done
    echo "$t"
}
per_req_us() { awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", t * 1e6 / hz / n }'; }
declare -A TP_REQ TP_RPS TP_MIBS TP_P99 TP_ORIGIN TP_PEAK TP_CPU TP_OCPU
for ((round = 1; round <= TP_ROUNDS; round++)); do
    order=("${CONTENDERS[@]}")
    if ((round % 2 == 0)) && [[ ${#order[@]} == 2 ]]; then order=(edge nginx); fi
    for s in "${order[@]}"; do
        log "throughput pass, round $round: $s, ${DURATION}s, $CONNS connections"
        k=$s,$round
        mark=$(origin_mark)
        start_sampler "$s"
        c0=$(cpu_ticks "$s") o0=$(cpu_ticks origin)
        out=$(ZIPF_REPLAY_MODE=loop taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --timeout 10s --latency \
            -s "$HERE/zipf-replay.lua" "${BASE[$s]}" -- "$TRACE")
        c1=$(cpu_ticks "$s") o1=$(cpu_ticks origin)
        stop_sampler "$s"
        TP_PEAK[$k]=$(mib "$(cat "$WORK/peak-$s")")
        TP_REQ[$k]=$(awk '/requests in/ { print $1 }' <<<"$out")
        TP_RPS[$k]=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
        TP_P99[$k]=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
        TP_MIBS[$k]=$(awk -v r="${TP_RPS[$k]}" -v b="$SEG_BYTES" 'BEGIN { printf "%.0f", r * b / 1048576 }')
        bad=$(awk -F': *' '/Non-2xx or 3xx responses/ { print $2 }' <<<"$out")
        if [[ -n $bad && $bad != 0 ]] || [[ -z ${TP_RPS[$k]} || ${TP_RPS[$k]} == 0 ]]; then
            echo "$out" >&2; die "$s throughput pass: ${bad:-0} non-2xx responses (or no requests)"
        fi
        grep -q 'Socket errors' <<<"$out" && log "warning: $s throughput pass: $(grep 'Socket errors' <<<"$out")"
        TP_CPU[$k]=$(per_req_us $((c1 - c0)) "${TP_REQ[$k]}")
        TP_OCPU[$k]=$(per_req_us $((o1 - o0)) "${TP_REQ[$k]}")
        read -r TP_ORIGIN[$k] _ < <(origin_since "$mark")
    done
done
median() { tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else {
    m = (v[NR / 2] + v[NR / 2 + 1]) / 2; if (m == int(m)) print m; else printf "%.2f\n", m } }'; }
declare -A MED_RPS MED_P99 MED_CPU
for s in "${CONTENDERS[@]}"; do
    r='' p='' c=''
    for ((round = 1; round <= TP_ROUNDS; round++)); do
        r+="${TP_RPS[$s,$round]} " p+="${TP_P99[$s,$round]} " c+="${TP_CPU[$s,$round]} "
    done
    MED_RPS[$s]=$(median <<<"${r% }") MED_P99[$s]=$(median <<<"${p% }") MED_CPU[$s]=$(median <<<"${c% }")
done

# --- what each cache holds at the end -------------------------------------------------------
NGINX_HELD=$(mib "$(held_bytes nginx)")
if [[ $SKIP_EDGE != 1 ]]; then
    EDGE_MEM_HELD=$(mib "$(edge_metric '^edge_cache_stored_bytes\{tier="memory"\}')")
    EDGE_DISK_HELD=$(mib "$(edge_metric '^edge_disk_cache_bytes ')")
fi

# --- report --------------------------------------------------------------------------------
ratio() { awk -v e="$1" -v n="$2" 'BEGIN { if (n == 0) print "-"; else printf "%.2f", e / n }'; }
hit() { awk -v o="$1" -v r="$2" 'BEGIN { printf "%.4f", 1 - o / r }'; }
echo "Hit-ratio pass (the whole trace once, cold caches, wrk -t1 -c$HR_CONNS):"
echo
echo "| contender | requests | origin requests | hit ratio | origin MiB | served MiB | origin bytes ÷ served | peak MiB held | pass req/s (time) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for s in "${CONTENDERS[@]}"; do
    echo "| $s | ${HR_REQ[$s]} | ${HR_ORIGIN[$s]} | $(hit "${HR_ORIGIN[$s]}" "${HR_REQ[$s]}") |"\
         "$(mib "${HR_OBYTES[$s]}") | $(mib "${HR_SERVED[$s]}") |"\
         "$(awk -v o="${HR_OBYTES[$s]}" -v b="${HR_SERVED[$s]}" 'BEGIN { printf "%.3f", o / b }') |"\
         "${HR_PEAK[$s]} | ${HR_RPS[$s]} (${HR_SECS[$s]}) |"
done
if [[ $SKIP_EDGE != 1 ]]; then
    echo "| edge ÷ nginx | | $(ratio "${HR_ORIGIN[edge]}" "${HR_ORIGIN[nginx]}") |"\
         "$(ratio "$(hit "${HR_ORIGIN[edge]}" "$REQUESTS")" "$(hit "${HR_ORIGIN[nginx]}" "$REQUESTS")") |"\
         "$(ratio "${HR_OBYTES[edge]}" "${HR_OBYTES[nginx]}") | | $(ratio "${HR_OBYTES[edge]}" "${HR_OBYTES[nginx]}") |"\
         "$(ratio "${HR_PEAK[edge]}" "${HR_PEAK[nginx]}") | $(ratio "${HR_RPS[edge]}" "${HR_RPS[nginx]}") |"
fi
echo
echo "Peak MiB held: sampled every second during the pass (nginx: sum of its cache files' sizes;"\
     "edge: edge_cache_stored_bytes{tier=\"memory\"} + edge_disk_cache_bytes)."
echo
if [[ $SKIP_EDGE != 1 ]]; then
    read -r m0 d0 o0 se0 st0 f0 <<<"${TIERS0[edge]}"
    read -r m1 d1 o1 se1 st1 f1 <<<"${TIERS1[edge]}"
    tot=$(( (m1 - m0) + (d1 - d0) + (o1 - o0) + (se1 - se0) + (st1 - st0) ))
    share() { awk -v x="$1" -v t="$tot" 'BEGIN { if (t == 0) print "-"; else printf "%.1f %%", 100 * x / t }'; }
    echo "Edge tiers over the hit-ratio pass (edge_cache_served_bytes_total): memory $(share $((m1 - m0))),"\
         "disk $(share $((d1 - d0))), origin $(share $((o1 - o0)))$( [[ $((se1 - se0 + st1 - st0)) == 0 ]] || echo ", seeder $(share $((se1 - se0))), stale $(share $((st1 - st0)))");"\
         "$(mib "$tot") MiB served by the metrics ($(mib "${HR_SERVED[edge]}") MiB by wrk's count);"\
         "edge_upstream_fills_total{result=\"ok\"} +$((f1 - f0)) (origin log: ${HR_ORIGIN[edge]})."
    echo
fi
echo "Throughput pass (warm caches, the trace again from its start in every run, wrk -t1 -c$CONNS -d${DURATION}s,"\
     "$TP_ROUNDS rounds: round 1 nginx first, then alternating):"
echo
echo "| round | contender | requests | req/s | MiB/s (bodies) | p99 (ms) | origin requests | hit ratio in the run | server CPU µs/req | origin CPU µs/req | peak MiB held |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for ((round = 1; round <= TP_ROUNDS; round++)); do
    for s in "${CONTENDERS[@]}"; do
        k=$s,$round
        echo "| $round | $s | ${TP_REQ[$k]} | ${TP_RPS[$k]} | ${TP_MIBS[$k]} | ${TP_P99[$k]} | ${TP_ORIGIN[$k]} |"\
             "$(hit "${TP_ORIGIN[$k]}" "${TP_REQ[$k]}") | ${TP_CPU[$k]} | ${TP_OCPU[$k]} | ${TP_PEAK[$k]} |"
    done
done
for s in "${CONTENDERS[@]}"; do
    echo "| median | $s | | ${MED_RPS[$s]} | $(awk -v r="${MED_RPS[$s]}" -v b="$SEG_BYTES" 'BEGIN { printf "%.0f", r * b / 1048576 }') |"\
         "${MED_P99[$s]} | | | ${MED_CPU[$s]} | | |"
done
if [[ $SKIP_EDGE != 1 ]]; then
    echo "| edge ÷ nginx | medians | | **$(ratio "${MED_RPS[edge]}" "${MED_RPS[nginx]}")** | $(ratio "${MED_RPS[edge]}" "${MED_RPS[nginx]}") |"\
         "$(ratio "${MED_P99[edge]}" "${MED_P99[nginx]}") | | | $(ratio "${MED_CPU[edge]}" "${MED_CPU[nginx]}") | | |"
    echo
    echo "Per round, edge ÷ nginx req/s: $(for ((round = 1; round <= TP_ROUNDS; round++)); do
        printf '%s ' "$(ratio "${TP_RPS[edge,$round]}" "${TP_RPS[nginx,$round]}")"; done)"
fi
echo
echo "Coalescing ($COALESCE_N concurrent GETs of $COALESCE_PATH, cold):"
echo
echo "| contender | 200 answers | full bodies | origin requests for the path | slowest answer (ms) | x-cache values |"
echo "|---|---:|---:|---:|---:|---|"
for s in "${CONTENDERS[@]}"; do
    echo "| $s | ${CO_OK[$s]} | ${CO_FULL[$s]} | **${CO_ORIGIN[$s]}** | ${CO_SLOW[$s]} | $(tr _ ' ' <<<"${CO_XC[$s]}" | sed 's/,/, /g') |"
done
echo
echo "Cache held at the end: nginx $NGINX_HELD MiB of cache files (max_size $CACHE_MIB MiB)$(
    [[ $SKIP_EDGE == 1 ]] || echo "; edge memory $EDGE_MEM_HELD MiB (edge_cache_stored_bytes) + disk $EDGE_DISK_HELD MiB (edge_disk_cache_bytes)")."
if [[ $SKIP_EDGE != 1 ]]; then
    hr_e=$(hit "${HR_ORIGIN[edge]}" "$REQUESTS") hr_n=$(hit "${HR_ORIGIN[nginx]}" "$REQUESTS")
    goal() { if awk "BEGIN { exit !($1) }"; then echo met; else echo "**not met**"; fi; }
    echo
    echo "Goals: hit ratio edge ≥ nginx ($hr_e vs $hr_n): $(goal "$hr_e >= $hr_n");"\
         "throughput edge/nginx ≥ 1.0 (medians: $(ratio "${MED_RPS[edge]}" "${MED_RPS[nginx]}")): $(goal "${MED_RPS[edge]} >= ${MED_RPS[nginx]}");"\
         "one origin fetch under coalescing (edge ${CO_ORIGIN[edge]}, nginx ${CO_ORIGIN[nginx]}): $(goal "${CO_ORIGIN[edge]} == 1")."
    # x-cache values of the edge on a sample of the trace (after the measurements, so they change
    # nothing measured): the distinct paths of the last 500 requests of its last throughput run
    # (which walked the trace from the start, wrapping around), most recent first.
    last_round=$TP_ROUNDS; ((TP_ROUNDS % 2 == 0)) && last_round=$((TP_ROUNDS - 1))   # the edge ran last
    last=$(( (TP_REQ[edge,$last_round] - 1) % REQUESTS + 1 ))
    { [[ $last -ge 500 ]] || tail -n $((500 - last)) "$TRACE"; head -n "$last" "$TRACE" | tail -n 500; } \
        | tac | awk '!seen[$0]++' \
        | awk -v b="http://127.0.0.1:$EDGE_PORT" '{ printf "url = \"%s%s\"\noutput = \"/dev/null\"\n", b, $0 }' >"$WORK/sample.curl"
    xc=$(curl -s --config "$WORK/sample.curl" -D - | tr -d '\r' \
        | awk -F': ' 'tolower($1) == "x-cache" { c[$2]++ } END { for (k in c) printf "%s ×%d, ", k, c[k] }')
    echo
    echo "Edge x-cache on $(grep -c '^url' "$WORK/sample.curl") distinct paths of the last 500 requests of its last throughput run, asked once each after the runs, most recent first: ${xc%, }."
    errs=$(grep -cE ' (WARN|ERROR) ' "$WORK/edge.log" || true)
    [[ $errs == 0 ]] || { echo; echo "Edge log: $errs warnings/errors, first ones:"; grep -E ' (WARN|ERROR) ' "$WORK/edge.log" | head -5 | sed 's/^/    /'; }
fi
errs=$(grep -c . "$WORK/nginx-front-error.log" 2>/dev/null || true)
[[ ${errs:-0} == 0 ]] || { echo; echo "nginx error log: $errs lines, first ones:"; head -5 "$WORK/nginx-front-error.log" | sed 's/^/    /'; }
