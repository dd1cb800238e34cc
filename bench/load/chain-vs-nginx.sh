#!/usr/bin/env bash
# chain-vs-nginx.sh: what the full policy chain costs on a cached 1 MiB segment, against the same
# edge with no policy and against nginx doing its nearest equivalent, same box, same run.
#
# Three servers serve the same object (seg_1m.ts, 1 MiB, warm in each cache):
#   chain:     `edge serve` with a policies file modelled on policies/platform.toml:
#              auth-jwt (HS256, token in `authorization`) -> subscription (asks a stand-in user
#              service once, then answers from kv) -> rate-limit (GCRA, 1M/s burst 1M: never
#              refuses, so this measures its cost) -> signed-url (token in the query)
#   no-policy: the same binary and objects, one route with an empty chain
#   nginx:     secure_link + limit_req ($binary_remote_addr, never refuses) -> proxy_cache (key
#              $uri) -> static "origin" server block (bench/load/nginx-limit-req.conf.template)
# Every server gets the same request: the edge's signed-URL query (nginx: its md5/expires query)
# and `authorization: Bearer <JWT>` (ignored by no-policy and nginx). Each server runs one
# worker/thread pinned to core 0, wrk (one thread, keep-alive) runs on core 1. Round 1 measures
# nginx, then no-policy, then the chain; each further round starts one server later (ROUNDS=3:
# every server once in every position). The user service is a python3 http.server on loopback
# answering GET /api/v1/users/{id}/subscription with {"active": true}; it must see exactly one
# request in the whole run (the subscription guest caches the answer). Before measuring, each
# server must answer 200 with the whole body and a cache hit, and the chain must refuse a missing
# or forged JWT (401) and a missing or tampered signed-URL token (403); a run fails on any
# non-2xx response seen by wrk and on any policy failure (trap, timeout).
#
# Rate-limit mode: RL_MODE (default "global", as in policies/platform.toml). There is no [redis]
# here, so the edge's shared kv scope is a second in-process store: "global" then costs what
# "local" does and never falls back (the script checks that global_fallback stayed 0). The
# subscription guest uses the shared scope too.
#
# Prints a markdown table (req/s, p99, chain/no-policy and chain/nginx ratios) for
# bench/RESULTS.md, goals: chain/no-policy >= 0.90, chain/nginx >= 1.0; and a second table with
# each server's own CPU time per request (utime + stime) and how busy both cores were. At 1 MiB
# per response wrk's core is the bottleneck for the edge (~95-100 % busy), so req/s reflects the
# load generator as much as the server; the CPU per request is the steadier measure of the
# chain's cost.
#
# Run from anywhere (needs the edge and the guests built:
#   cargo build --release -p edge
#   cd guests && cargo build --release --target wasm32-wasip2):
#   bench/load/chain-vs-nginx.sh
# Env: DURATION   seconds per wrk run (default 10)
#      CONNS      wrk connections (default 32)
#      ROUNDS     measurement rounds, one table row each (default 1)
#      RL_MODE    rate-limit mode, global | local (default global)
#      EDGE_BIN   edge binary (default target/release/edge, relative to the repo root)
#      GUESTS     directory of the guest modules (default guests/target/wasm32-wasip2/release)
#      SERVER_CPU / LOAD_CPU  cores for servers / wrk (default 0 / 1)
#      EDGE_THREADS  edge runtime threads (default 1, like nginx worker_processes 1)
set -euo pipefail

DURATION=${DURATION:-10} CONNS=${CONNS:-32} ROUNDS=${ROUNDS:-1} RL_MODE=${RL_MODE:-global}
SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
EDGE_BIN=${EDGE_BIN:-target/release/edge}
[[ $EDGE_BIN = /* ]] || EDGE_BIN=$ROOT/$EDGE_BIN
GUESTS=${GUESTS:-guests/target/wasm32-wasip2/release}
[[ $GUESTS = /* ]] || GUESTS=$ROOT/$GUESTS

die() { echo "chain-vs-nginx: $*" >&2; exit 1; }
log() { echo "chain-vs-nginx: $*" >&2; }

[[ $DURATION =~ ^[1-9][0-9]*$ && $DURATION -le 600 ]] || die "DURATION must be 1..600 seconds"
[[ $ROUNDS =~ ^[1-9][0-9]*$ && $ROUNDS -le 20 ]] || die "ROUNDS must be 1..20"
[[ $RL_MODE == global || $RL_MODE == local ]] || die "RL_MODE must be global or local"
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v taskset >/dev/null; then
    log "installing nginx, wrk"
    apt-get update && apt-get install -y --no-install-recommends nginx wrk util-linux
fi
for tool in openssl curl python3; do command -v $tool >/dev/null || die "needs $tool"; done
[[ -x $EDGE_BIN ]] || die "edge binary $EDGE_BIN not found: cargo build --release -p edge, or set EDGE_BIN"
for m in auth_jwt subscription rate_limit signed_url; do
    [[ -f $GUESTS/$m.wasm ]] || die "$GUESTS/$m.wasm not found: cd guests && cargo build --release --target wasm32-wasip2"
done

echo "# chain-vs-nginx: \`DURATION=$DURATION CONNS=$CONNS ROUNDS=$ROUNDS RL_MODE=$RL_MODE $0${*:+ $*}\`"
echo "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ'), nproc: $(nproc), nginx: $(nginx -v 2>&1 | sed 's/.*\///'),"\
     "wrk: -t1 -c$CONNS -d${DURATION}s --latency, servers on core $SERVER_CPU, wrk on core $LOAD_CPU,"\
     "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

WORK=$(mktemp -d /tmp/chain-vs-nginx.XXXXXX)
NGINX_PID='' CHAIN_PID='' OPEN_PID='' USERS_PID=''
cleanup() {  # every step guarded: a non-zero `wait` (a killed python) must not skip the rest
    local p
    for p in "$NGINX_PID" "$CHAIN_PID" "$OPEN_PID" "$USERS_PID"; do
        [[ -n $p ]] || continue
        kill -TERM "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
chmod 755 "$WORK"   # nginx workers run as nobody when started by root

# --- bench object --------------------------------------------------------------------------
ORIGIN=$WORK/origin DIR=/vod/movies/bench OBJ=seg_1m.ts SIZE=1048576
mkdir -p "$ORIGIN$DIR" "$WORK/nginx-tmp" "$WORK/edge-chain" "$WORK/edge-open"
head -c $SIZE /dev/urandom >"$ORIGIN$DIR/$OBJ"
chmod -R a+rX "$ORIGIN"

free_port() {  # a random port nothing answers on (racy, good enough for a bench)
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        [[ " ${USED_PORTS:-} " == *" $p "* ]] && continue
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}
status() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
wait_http() {  # wait until URL answers anything, up to 10 s
    for _ in $(seq 100); do [[ $(status "$1") != 000 ]] && return; sleep 0.1; done
    die "$2 did not come up"
}

# --- user service stand-in -----------------------------------------------------------------
# Answers GET /api/v1/users/{id}/subscription with {"active": true} and counts those requests;
# GET /hits returns the count (not counted). Port 0; the port goes to users.port.
cat >"$WORK/users.py" <<'EOF'
import http.server, json, re, sys
hits = 0
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global hits
        if self.path == "/hits":
            body = str(hits).encode()
        elif re.fullmatch(r"/api/v1/users/[^/]+/subscription", self.path):
            hits += 1
            body = json.dumps({"active": True}).encode()
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        sys.stderr.write("users: " + (fmt % args) + "\n")
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
with open(sys.argv[1], "w") as f:
    f.write(str(srv.server_address[1]))
srv.serve_forever()
EOF
python3 -u "$WORK/users.py" "$WORK/users.port" 2>"$WORK/users.log" &
USERS_PID=$!
for _ in $(seq 100); do [[ -s $WORK/users.port ]] && break; sleep 0.1; done
USERS_PORT=$(cat "$WORK/users.port" 2>/dev/null) || true
[[ -n $USERS_PORT ]] || { cat "$WORK/users.log" >&2; die "user service did not start"; }
USERS_URL=http://127.0.0.1:$USERS_PORT
users_hits() { curl -sf "$USERS_URL/hits"; }
[[ $(users_hits) == 0 ]] || die "user service: /hits does not answer 0"

# --- nginx ---------------------------------------------------------------------------------
USED_PORTS=" $USERS_PORT"
FRONT_PORT=$(free_port); USED_PORTS+=" $FRONT_PORT"; ORIGIN_PORT=$(free_port)
SECRET=$(openssl rand -hex 16)
sed -e "s|@WORK@|$WORK|g" -e "s|@ORIGIN_DIR@|$ORIGIN|g" -e "s|@FRONT_PORT@|$FRONT_PORT|g" \
    -e "s|@ORIGIN_PORT@|$ORIGIN_PORT|g" -e "s|@SECRET@|$SECRET|g" \
    "$HERE/nginx-limit-req.conf.template" >"$WORK/nginx.conf"
nginx_link() {  # secure_link URL for $1 (a uri) expiring at $2
    local md5
    md5=$(printf '%s' "$2$1 $SECRET" | openssl md5 -binary | openssl base64 | tr +/ -_ | tr -d =)
    echo "http://127.0.0.1:$FRONT_PORT$1?md5=$md5&expires=$2"
}
taskset -c "$SERVER_CPU" nginx -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" &
NGINX_PID=$!
wait_http "http://127.0.0.1:$FRONT_PORT/" "nginx (see $WORK/nginx-error.log)"
EXPIRES=$(($(date +%s) + 3600))
[[ $(status "http://127.0.0.1:$FRONT_PORT$DIR/$OBJ") == 403 ]] || die "nginx: unsigned request not refused with 403"
[[ $(status "$(nginx_link "$DIR/$OBJ" $(($(date +%s) - 60)))") == 410 ]] || die "nginx: expired link not 410"

# --- policies ------------------------------------------------------------------------------
# The chain of policies/platform.toml (same policies, fail modes, headers and variables), with
# module paths made absolute, a limit that never refuses, and RL_MODE.
cat >"$WORK/chain.toml" <<EOF
[policies.auth]
module = "$GUESTS/auth_jwt.wasm"
fail = "closed"
headers = ["authorization"]
[policies.auth.config]
secret = "\${JWT_SECRET_KEY}"
leeway = "30"

[policies.subscription]
module = "$GUESTS/subscription.wasm"
fail = "closed"
outbound = ["\${USER_SERVICE_URL}"]
outbound_timeout = "2s"
[policies.subscription.config]
url = "\${USER_SERVICE_URL}"
timeout = "\${USER_SERVICE_TIMEOUT}"
cache_ttl = "\${REDIS_SUBSCRIPTION_CACHE_TTL}"
on_error = "stale"
stale_max = "3600"

[policies.rate-limit]
module = "$GUESTS/rate_limit.wasm"
fail = "open"
[policies.rate-limit.config]
rate = "1000000/s"      # measures the cost of the check: never refuses at one core's rate
burst = "1000000"
key = "subject"
mode = "$RL_MODE"

[policies.signed-url]
module = "$GUESTS/signed_url.wasm"
fail = "closed"
[policies.signed-url.config]
secret = "\${SIGNED_URL_SECRET}"

[[routes]]
name = "vod"
paths = ["/vod/**"]
chain = ["auth", "subscription", "rate-limit", "signed-url"]
EOF
cat >"$WORK/open.toml" <<'EOF'
# The same route with no policy (a route is needed: an unrouted path is 404 no_route).
[[routes]]
name = "vod"
paths = ["/vod/**"]
chain = []
EOF

JWT_SECRET=$(openssl rand -hex 32)
export SIGNED_URL_SECRET=$SECRET$SECRET EDGE_ORIGIN_ROOT=$ORIGIN
export JWT_SECRET_KEY=$JWT_SECRET USER_SERVICE_URL=$USERS_URL USER_SERVICE_TIMEOUT=2s
export REDIS_SUBSCRIPTION_CACHE_TTL=3600   # longer than any run: one user-service call in all
export RUST_LOG=warn,edge=info EDGE_THREADS=${EDGE_THREADS:-1}   # one worker thread, like nginx
unset EDGE_CONFIG REDIS_HOST 2>/dev/null || true   # no edge file, no Redis
for p in chain open; do
    (cd "$ROOT" && EDGE_POLICIES=$WORK/$p.toml EDGE_DATA_DIR=$WORK/edge-$p "$EDGE_BIN" validate) \
        >"$WORK/validate-$p.log" 2>&1 || { cat "$WORK/validate-$p.log" >&2; die "edge validate refused $p.toml"; }
done

mint_jwt() {  # an HS256 JWT for viewer-1 signed with $1, valid for two hours
    python3 - "$1" <<'EOF'
import base64, hashlib, hmac, json, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
body = b64(json.dumps({"sub": "viewer-1", "exp": int(time.time()) + 7200}, separators=(",", ":")).encode())
sig = b64(hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
EOF
}
JWT=$(mint_jwt "$JWT_SECRET")
FORGED_JWT=$(mint_jwt "not-$JWT_SECRET")
AUTH="authorization: Bearer $JWT"

# --- edges ---------------------------------------------------------------------------------
declare -A PORT ADMIN
start_edge() {  # $1 = chain | open; sets PORT[$1], ADMIN[$1] and CHAIN_PID / OPEN_PID
    local name=$1 pid port='' admin=''
    (cd "$ROOT" && EDGE_POLICIES=$WORK/$name.toml EDGE_DATA_DIR=$WORK/edge-$name \
        exec taskset -c "$SERVER_CPU" "$EDGE_BIN" serve --listen 127.0.0.1:0 --no-tls \
        --admin-listen 127.0.0.1:0) 2>"$WORK/edge-$name.log" &
    pid=$!
    if [[ $name == chain ]]; then CHAIN_PID=$pid; else OPEN_PID=$pid; fi
    for _ in $(seq 100); do
        port=$(grep -v '(admin)' "$WORK/edge-$name.log" | grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' \
            | head -1 | sed 's/.*://') || true
        admin=$(grep '(admin)' "$WORK/edge-$name.log" | grep -oE 'http://127\.0\.0\.1:[0-9]+' \
            | head -1 | sed 's/.*://') || true
        [[ -n $port && -n $admin ]] && break
        kill -0 "$pid" 2>/dev/null || { cat "$WORK/edge-$name.log" >&2; die "edge ($name) exited at start"; }
        sleep 0.1
    done
    [[ -n $port && -n $admin ]] || { cat "$WORK/edge-$name.log" >&2; die "edge ($name) did not log its ports within 10 s"; }
    PORT[$name]=$port ADMIN[$name]=$admin
}
start_edge chain
start_edge open
EDGE_URL=$(cd "$ROOT" && "$EDGE_BIN" sign-url "$DIR/$OBJ" --ttl 3600 --base http://127.0.0.1 2>>"$WORK/edge-chain.log")
[[ $EDGE_URL == *\?token=* ]] || die "unexpected sign-url output: $EDGE_URL"
EDGE_QUERY="?${EDGE_URL#*\?}"

declare -A URL
URL[nginx]=$(nginx_link "$DIR/$OBJ" "$EXPIRES")
URL[open]="http://127.0.0.1:${PORT[open]}$DIR/$OBJ$EDGE_QUERY"
URL[chain]="http://127.0.0.1:${PORT[chain]}$DIR/$OBJ$EDGE_QUERY"
SERVERS=(nginx open chain)
declare -A LABEL=([nginx]=nginx [open]=no-policy [chain]=chain)

# The chain refuses what it should (before any allowed request: the user service stays at 0
# until the first request with a valid JWT).
bare="http://127.0.0.1:${PORT[chain]}$DIR/$OBJ"
[[ $(status "${URL[chain]}") == 401 ]] || die "chain: request without JWT not refused with 401"
[[ $(status -H "authorization: Bearer $FORGED_JWT" "${URL[chain]}") == 401 ]] || die "chain: bad JWT signature not 401"
[[ $(status -H "$AUTH" "$bare") == 403 ]] || die "chain: request without signed-URL token not refused with 403"
TOKEN=${EDGE_QUERY#\?token=}   # <expires>.<scope>.<binding>.<mac>: a later expiry breaks the mac
TAMPERED="http://127.0.0.1:${PORT[chain]}$DIR/$OBJ?token=$((${TOKEN%%.*} + 1)).${TOKEN#*.}"
[[ $(status -H "$AUTH" "$TAMPERED") == 403 ]] || die "chain: tampered signed-URL token not 403"
# ... and no-policy really has none.
[[ $(status "http://127.0.0.1:${PORT[open]}$DIR/$OBJ") == 200 ]] || die "no-policy: bare request not 200"

# --- warm-up: three requests per server, all 200 with the whole body, then a cache hit --------
for s in "${SERVERS[@]}"; do
    for _ in 1 2 3; do
        read -r code size < <(curl -s -o /dev/null -w '%{http_code} %{size_download}\n' -H "$AUTH" "${URL[$s]}")
        [[ $code == 200 ]] || die "${LABEL[$s]} warm-up: HTTP $code"
        [[ $size == "$SIZE" ]] || die "${LABEL[$s]} warm-up: body of $size bytes, expected $SIZE"
    done
    hdr=$(curl -s -o /dev/null -D - -H "$AUTH" "${URL[$s]}" | tr -d '\r')
    if [[ $s == nginx ]]; then
        hit=$(awk -F': ' 'tolower($1)=="x-cache-status"{print $2}' <<<"$hdr")
        [[ $hit == HIT ]] || die "nginx: not a cache hit after warm-up (X-Cache-Status: ${hit:-none})"
    else
        hit=$(awk -F': ' 'tolower($1)=="x-cache"{print $2}' <<<"$hdr")
        [[ $hit == "HIT memory" ]] || die "${LABEL[$s]}: not a cache hit after warm-up (x-cache: ${hit:-none})"
    fi
done
[[ $(users_hits) == 1 ]] || die "user service: $(users_hits) requests after warm-up, expected 1"

# --- measure -------------------------------------------------------------------------------
to_ms() {  # 812.00us | 1.23ms | 1.01s -> milliseconds
    awk -v v="$1" 'BEGIN { n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.2f", n }'
}
# Besides wrk's numbers: the server's own CPU time per request (utime + stime of its processes:
# nginx master + worker, the edge process), and how busy each core was (/proc/stat; softirq
# included), to tell a server-bound run from one bound by the load generator's core.
CLK_TCK=$(getconf CLK_TCK)
server_pids() {  # the processes of server $1
    case $1 in
        nginx)  # master + workers (not the cache loader, which exits a minute after start)
            echo "$NGINX_PID"
            for p in $(pgrep -P "$NGINX_PID"); do
                if grep -q 'worker process' "/proc/$p/cmdline" 2>/dev/null; then echo "$p"; fi
            done ;;
        open) echo "$OPEN_PID" ;;
        chain) echo "$CHAIN_PID" ;;
    esac
}
server_ticks() {  # "utime utime+stime" of pids $@, in clock ticks (comm has no spaces here)
    local p u=0 t=0 pu pt
    for p in "$@"; do
        read -r pu pt < <(awk '{ print $14, $14 + $15 }' "/proc/$p/stat")
        u=$((u + pu)) t=$((t + pt))
    done
    echo "$u $t"
}
per_req() {  # $1 clock ticks over $2 requests -> µs per request
    awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN { printf "%.0f", n ? t * 1e6 / hz / n : 0 }'
}
core_ticks() {  # "busy total" ticks of core $1 since boot
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
declare -A RPS P99 CPU UCPU SBUSY LBUSY
for r in $(seq "$ROUNDS"); do
    # Round 1 runs nginx, no-policy, chain; each further round starts one server later, so that
    # with ROUNDS=3 every server runs once in every position.
    k=$(( (r - 1) % ${#SERVERS[@]} ))
    for s in "${SERVERS[@]:k}" "${SERVERS[@]:0:k}"; do
        log "round $r/$ROUNDS: ${LABEL[$s]}, ${DURATION}s"
        pids=$(server_pids "$s")
        read -r u0 t0 < <(server_ticks $pids); read -r sb0 st0 < <(core_ticks "$SERVER_CPU"); read -r lb0 lt0 < <(core_ticks "$LOAD_CPU")
        out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "$AUTH" "${URL[$s]}")
        read -r u1 t1 < <(server_ticks $pids); read -r sb1 st1 < <(core_ticks "$SERVER_CPU"); read -r lb1 lt1 < <(core_ticks "$LOAD_CPU")
        n=$(awk '/requests in/ { print $1 }' <<<"$out")
        CPU[$s,$r]=$(per_req $((t1 - t0)) "${n:-0}") UCPU[$s,$r]=$(per_req $((u1 - u0)) "${n:-0}")
        SBUSY[$s,$r]=$(( 100 * (sb1 - sb0) / (st1 - st0 > 0 ? st1 - st0 : 1) ))
        LBUSY[$s,$r]=$(( 100 * (lb1 - lb0) / (lt1 - lt0 > 0 ? lt1 - lt0 : 1) ))
        RPS[$s,$r]=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
        P99[$s,$r]=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
        bad=$(awk -F': *' '/Non-2xx or 3xx responses/ { print $2 }' <<<"$out")
        if [[ -n $bad && $bad != 0 ]] || [[ -z ${RPS[$s,$r]} || ${RPS[$s,$r]} == 0 ]]; then
            echo "$out" >&2; die "${LABEL[$s]}: ${bad:-0} non-2xx responses (or no requests)"
        fi
        grep -q 'Socket errors' <<<"$out" && log "warning: ${LABEL[$s]}: $(grep 'Socket errors' <<<"$out")"
    done
done
HITS=$(users_hits)
for p in chain open; do  # not fatal, but shown: the edges should have nothing to say under load
    grep -E 'WARN|ERROR' "$WORK/edge-$p.log" | head -5 | sed "s/^/chain-vs-nginx: edge ($p) logged: /" >&2 || true
done
[[ $HITS == 1 ]] || die "user service: $HITS requests in the whole run, expected 1 (subscription cache not used?)"
metric() {  # sum of the chain edge's metric lines matching $1 (a regex on the whole line)
    curl -s "http://127.0.0.1:${ADMIN[chain]}/metrics" | awk -v re="$1" '$0 ~ re && !/^#/ { n += $NF } END { printf "%d", n }'
}
DENIED=$(metric '^edge_policy_decisions_total.*outcome="(deny|redirect)"')
FAILED=$(metric '^edge_policy_failures_total')
FALLBACK=$(metric '^edge_policy_custom_total.*name="global_fallback"')
SUB_HIT=$(metric '^edge_policy_custom_total.*name="cache_hit"')
SUB_MISS=$(metric '^edge_policy_custom_total.*name="cache_miss"')
[[ $FAILED == 0 ]] || die "chain: $FAILED policy failures (traps, timeouts) during the run"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "| $OBJ, 1 MiB | chain req/s | chain p99 (ms) | no-policy req/s | no-policy p99 (ms) | nginx req/s | nginx p99 (ms) | chain/no-policy | chain/nginx |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
    echo "| round $r | ${RPS[chain,$r]} | ${P99[chain,$r]} | ${RPS[open,$r]} | ${P99[open,$r]} |"\
         "${RPS[nginx,$r]} | ${P99[nginx,$r]} | **$(ratio "${RPS[chain,$r]}" "${RPS[open,$r]}")** |"\
         "**$(ratio "${RPS[chain,$r]}" "${RPS[nginx,$r]}")** |"
done
echo
# no-policy÷chain of the CPU per request: what chain/no-policy req/s would be if the server's
# core were the bottleneck (it is not when wrk's core is ~100 % busy).
echo "| same runs | chain | no-policy | nginx | no-policy÷chain CPU |"
echo "|---|---:|---:|---:|---:|"
for r in $(seq "$ROUNDS"); do
    echo "| round $r: server CPU µs/request | ${CPU[chain,$r]} | ${CPU[open,$r]} | ${CPU[nginx,$r]} |"\
         "$(ratio "${CPU[open,$r]}" "${CPU[chain,$r]}") |"
    echo "| round $r: of which user space | ${UCPU[chain,$r]} | ${UCPU[open,$r]} | ${UCPU[nginx,$r]} | |"
    echo "| round $r: core $SERVER_CPU (server) / core $LOAD_CPU (wrk) busy % |"\
         "${SBUSY[chain,$r]} / ${LBUSY[chain,$r]} | ${SBUSY[open,$r]} / ${LBUSY[open,$r]} | ${SBUSY[nginx,$r]} / ${LBUSY[nginx,$r]} | |"
done
echo
goal() { awk -v v="$1" -v g="$2" 'BEGIN { print (v + 0 >= g + 0) ? "met" : "NOT met" }'; }
stats() {  # "lowest median" of the numbers on stdin
    sort -g | awk '{ v[NR] = $1 } END { m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.2f %.2f\n", v[1], m }'
}
read -r min_np med_np < <(for r in $(seq "$ROUNDS"); do ratio "${RPS[chain,$r]}" "${RPS[open,$r]}"; echo; done | stats)
read -r min_ng med_ng < <(for r in $(seq "$ROUNDS"); do ratio "${RPS[chain,$r]}" "${RPS[nginx,$r]}"; echo; done | stats)
read -r min_cpu med_cpu < <(for r in $(seq "$ROUNDS"); do ratio "${CPU[open,$r]}" "${CPU[chain,$r]}"; echo; done | stats)
echo "Goals, req/s: chain/no-policy ≥ 0.90 — lowest round $min_np ($(goal "$min_np" 0.90)), median $med_np"\
     "($(goal "$med_np" 0.90)); chain/nginx ≥ 1.0 — lowest round $min_ng ($(goal "$min_ng" 1.0)), median $med_ng"\
     "($(goal "$med_ng" 1.0)). Server CPU per request, no-policy÷chain: lowest $min_cpu, median $med_cpu."
echo "User service: $HITS request in the run; subscription guest: $SUB_MISS kv misses, $SUB_HIT kv hits."\
     "Chain edge: $DENIED denials (4 expected: the refusal checks), $FAILED policy failures,"\
     "$FALLBACK rate-limit global fallbacks (mode $RL_MODE, no Redis)."
