#!/usr/bin/env bash
# signaling-relay.sh: round trip of a relay through the native signaling protocol, across two
# edges sharing a redis-server (issue 13: p50/p99 at 10k messages/s; seed 002 asks < 100 ms,
# goal p99 < 10 ms), and on one edge in the same run for comparison.
#
# PAIRS (default 100) pairs of WebSocket connections from one Node process (the `ws` client of
# edge/signaling/tests/reference): A_i joins stream `bench` on edge 1 and B_i on edge 2 (for the
# one-edge case both on edge 1). A_i sends an `offer` to B_i's peer id; B_i's client answers at
# once with an `answer` to A_i; A_i's client takes the time from sending the offer to reading
# the answer: one round trip is two relays (on two edges, each through Redis: HGET + PUBLISH,
# then the other node's subscription). Offers go at RATE (default 5000) a second in total, for
# SECS (default 10) seconds; a message is a relay, so RATE offers a second are 2 x RATE relays.
#   edges: `edge serve` (release), roles edge + signaling, a /ws/** route without policy,
#          messages_per_second raised so the rate limit does not shape the load
# The edges and redis share core SERVER_CPU, the client runs on LOAD_CPU.
#
# Needs the edge built (cargo build --release -p edge), redis-server, and the npm packages
# (deploy/dev/setup.sh --test). Run: bench/load/signaling-relay.sh
# Env: PAIRS, RATE, SECS, EDGE_BIN, SERVER_CPU, LOAD_CPU.
set -euo pipefail

PAIRS=${PAIRS:-100} RATE=${RATE:-5000} SECS=${SECS:-10}
SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REF=$ROOT/edge/signaling/tests/reference
EDGE_BIN=${EDGE_BIN:-$ROOT/target/release/edge}
[[ $EDGE_BIN == /* ]] || EDGE_BIN=$ROOT/$EDGE_BIN

log() { printf '[signaling-relay %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ -x $EDGE_BIN ]] || die "edge binary $EDGE_BIN not found: cargo build --release -p edge"
[[ -d $REF/node_modules/ws ]] || die "npm packages missing: deploy/dev/setup.sh --test"
command -v redis-server >/dev/null || die "redis-server missing: deploy/dev/setup.sh --test"

WORK=$(mktemp -d /tmp/signaling-relay.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
    rm -rf "$WORK" "$REF/.relay-client.mjs"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REDIS_PORT=$(free_port)
taskset -c "$SERVER_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' \
    --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
PIDS+=($!)

cat >"$WORK/policies.toml" <<'EOF'
[[routes]]
name = "signaling"
paths = ["/ws/**"]
EOF

start_edge() {  # $1: name; sets PORT (not in a subshell: the edge must outlive it)
    mkdir -p "$WORK/$1"
    cat >"$WORK/$1/edge.toml" <<EOF
roles = ["edge", "signaling"]
[server]
demo_stream = ""
threads = 1
data_dir = "$WORK/$1/data"
[origin]
root = "$WORK"
[policies]
file = "$WORK/policies.toml"
watch_interval = "0s"
[redis]
host = "127.0.0.1"
port = $REDIS_PORT
[signaling]
node_id = "$1"
messages_per_second = 100000
max_swarm_peers = $((PAIRS * 2 + 10))
max_peer_list = 1
EOF
    (cd "$ROOT" && exec taskset -c "$SERVER_CPU" "$EDGE_BIN" serve --config "$WORK/$1/edge.toml" \
        --listen 127.0.0.1:0 --no-tls --admin-listen 127.0.0.1:0) >"$WORK/$1/edge.out" 2>"$WORK/$1/edge.log" &
    PIDS+=($!)
    local port=''
    for _ in $(seq 300); do
        port=$(grep -v '(admin)' "$WORK/$1/edge.log" | grep -oE 'listening on http://127\.0\.0\.1:[0-9]+' | head -1 | sed 's/.*://') || true
        [[ -n $port ]] && break
        sleep 0.1
    done
    [[ -n $port ]] || { cat "$WORK/$1/edge.log" >&2; die "$1 did not start"; }
    PORT=$port
}
start_edge edge-1; P1=$PORT
start_edge edge-2; P2=$PORT
for port in "$P1" "$P2"; do
    for _ in $(seq 150); do
        curl -fsS "http://127.0.0.1:$port/health" | grep -q '"signaling":"clustered"' && break
        sleep 0.1
    done
    curl -fsS "http://127.0.0.1:$port/health" | grep -q '"signaling":"clustered"' \
        || die "edge on $port not clustered: $(curl -sS "http://127.0.0.1:$port/health")"
done

cat >"$REF/.relay-client.mjs" <<'EOF'
// node .relay-client.mjs URL_A URL_B PAIRS RATE SECS -> one JSON line of round-trip times (ms)
import WebSocket from 'ws'
const [urlA, urlB, pairs, rate, secs] = [process.argv[2], process.argv[3], ...process.argv.slice(4).map(Number)]
const connect = (url, peerId) => new Promise((resolve, reject) => {
  const ws = new WebSocket(url)
  ws.on('error', reject)
  ws.on('open', () => ws.send(JSON.stringify({ type: 'join', streamId: 'bench', peerId })))
  ws.once('message', () => resolve(ws))
})
const a = [], b = []
for (let i = 0; i < pairs; i++) {
  b.push(await connect(urlB, 'b' + i))
  a.push(await connect(urlA, 'a' + i))
}
const rtts = []
let errors = 0
b.forEach((ws, i) => ws.on('message', raw => {
  const m = JSON.parse(raw)
  if (m.type === 'offer') ws.send(JSON.stringify({ type: 'answer', streamId: 'bench', to: m.from, sdp: m.sdp }))
  else if (m.type === 'error') errors++
}))
const sent = new Map()
a.forEach(ws => ws.on('message', raw => {
  const m = JSON.parse(raw)
  if (m.type === 'answer') {
    const t0 = sent.get(m.sdp.n)
    if (t0 !== undefined) { rtts.push(Number(process.hrtime.bigint() - t0) / 1e6); sent.delete(m.sdp.n) }
  } else if (m.type === 'error') errors++
}))
let n = 0
const total = rate * secs
const tickMs = 10, perTick = Math.max(1, Math.round(rate * tickMs / 1000))
const started = process.hrtime.bigint()
await new Promise(resolve => {
  const timer = setInterval(() => {
    for (let k = 0; k < perTick && n < total; k++, n++) {
      const i = n % pairs
      sent.set(n, process.hrtime.bigint())
      a[i].send(JSON.stringify({ type: 'offer', streamId: 'bench', to: 'b' + i, sdp: { n } }))
    }
    if (n >= total) { clearInterval(timer); resolve() }
  }, tickMs)
})
const sentFor = Number(process.hrtime.bigint() - started) / 1e9
await new Promise(r => setTimeout(r, 2000))
rtts.sort((x, y) => x - y)
const q = p => rtts.length ? rtts[Math.min(rtts.length - 1, Math.floor(p * rtts.length))].toFixed(2) : 'n/a'
console.log(JSON.stringify({ sent: n, answered: rtts.length, lost: sent.size, errors, offers_per_s: (n / sentFor).toFixed(0), p50: q(0.5), p90: q(0.9), p99: q(0.99), max: rtts.length ? rtts[rtts.length - 1].toFixed(2) : 'n/a' }))
for (const ws of [...a, ...b]) ws.terminate()
EOF

run() {  # $1: label, $2: url A, $3: url B
    local out
    out=$(cd "$REF" && taskset -c "$LOAD_CPU" node .relay-client.mjs "$2" "$3" "$PAIRS" "$RATE" "$SECS")
    log "$1: $out"
    echo "$1 $out"
}
ONE=$(run "one edge" "ws://127.0.0.1:$P1/ws/signaling" "ws://127.0.0.1:$P1/ws/signaling")
TWO=$(run "two edges via redis" "ws://127.0.0.1:$P1/ws/signaling" "ws://127.0.0.1:$P2/ws/signaling")
row() {
    local label=${1%% \{*} json="{${1#*\{}"
    python3 - "$label" "$json" <<'PY'
import json, sys
d = json.loads(sys.argv[2])
cols = ["offers_per_s", "sent", "answered", "lost", "errors", "p50", "p90", "p99", "max"]
print("| " + sys.argv[1] + " | " + " | ".join(str(d[c]) for c in cols) + " |")
PY
}
echo "# signaling-relay: \`PAIRS=$PAIRS RATE=$RATE SECS=$SECS $0\`"
echo "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ'), nproc: $(nproc), node: $(node --version), $(redis-server --version | cut -d' ' -f3), edges and redis on core $SERVER_CPU, client on core $LOAD_CPU"
echo
echo "| path | offers/s sent | offers | answers back | lost | errors | RTT p50 (ms) | p90 | p99 | max |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
row "$ONE"
row "$TWO"
