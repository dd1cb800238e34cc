#!/usr/bin/env bash
# signaling-idle.sh: memory per idle tracker connection, the edge's WebTorrent tracker against
# the npm bittorrent-tracker server (the reference its replies match), same box, same run.
#
# Each tracker gets CONNS (default 5000) WebSocket connections from one Node process (the `ws`
# client of edge/signaling/tests/reference), each announcing once in one of SWARMS (default 50)
# swarms with a distinct peer id, then staying idle. The server's RSS is read before the first
# connection and SETTLE seconds (default 5) after the last announce was answered; the difference
# divided by CONNS is its memory per idle connection (issue 13: goal <= 10 KiB, >= 100k per GiB).
#   edge: `edge serve` (release) with roles edge + signaling, a /ws/** route without policy
#         (the JWT check costs nothing per idle connection), connection caps raised to CONNS
#   npm:  bittorrent-tracker 11.2.3's Server (ws only) on Node
# Both are pinned to core SERVER_CPU, the client to LOAD_CPU.
#
# Run from anywhere (needs the edge built: cargo build --release -p edge; and
# deploy/dev/setup.sh --test for the npm packages):
#   bench/load/signaling-idle.sh
# Env: CONNS, SWARMS, SETTLE, EDGE_BIN (default target/release/edge), SERVER_CPU / LOAD_CPU;
#      TLS=1: the edge over its TLS listener (wss://, the development certificate; the npm
#      server stays plain: it has no TLS of its own)
#      OWN=1: the edge's signaling listeners (`signaling.listen` / `tls_listen`, WebSocket-sized
#      buffers) instead of the viewer listeners
set -euo pipefail

CONNS=${CONNS:-5000} SWARMS=${SWARMS:-50} SETTLE=${SETTLE:-5} TLS=${TLS:-0} OWN=${OWN:-0}
SERVER_CPU=${SERVER_CPU:-0} LOAD_CPU=${LOAD_CPU:-1}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
REF=$ROOT/edge/signaling/tests/reference
EDGE_BIN=${EDGE_BIN:-$ROOT/target/release/edge}
[[ $EDGE_BIN == /* ]] || EDGE_BIN=$ROOT/$EDGE_BIN

. "$HERE/signaling-edge.sh"
log() { printf '[signaling-idle %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
[[ -x $EDGE_BIN ]] || die "edge binary $EDGE_BIN not found: cargo build --release -p edge"
[[ -d $REF/node_modules/bittorrent-tracker ]] || die "npm packages missing: deploy/dev/setup.sh --test"
ulimit -n $((CONNS * 2 + 1024)) || die "cannot raise the open-file limit to $((CONNS * 2 + 1024))"

WORK=$(mktemp -d /tmp/signaling-idle.XXXXXX)
SERVER_PID=''
cleanup() {
    [[ -n $SERVER_PID ]] && kill -TERM "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/client.mjs" <<'EOF'
// Opens N connections to URL, each announcing once (swarm i % SWARMS, peer id from i), waits
// for every reply, then prints "ready" and stays idle until killed.
import WebSocket from 'ws'
const [url, n, swarms] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])]
const pad = s => s.padStart(20, '0').slice(-20)
let answered = 0
const sockets = []
const open = i => new Promise((resolve, reject) => {
  const ws = new WebSocket(url, { rejectUnauthorized: false })
  ws.on('error', reject)
  ws.on('message', () => { answered++; resolve() })
  ws.on('open', () => ws.send(JSON.stringify({
    action: 'announce', info_hash: pad('swarm' + (i % swarms)), peer_id: pad('peer' + i),
    event: 'started', left: 1, numwant: 0, uploaded: 0, downloaded: 0
  })))
  sockets.push(ws)
})
for (let i = 0; i < n; i += 200) {
  await Promise.all(Array.from({ length: Math.min(200, n - i) }, (_, k) => open(i + k)))
}
console.log(`ready ${answered}`)
setInterval(() => {}, 1 << 30)
EOF
cp "$WORK/client.mjs" "$REF/.idle-client.mjs"
trap 'rm -f "$REF/.idle-client.mjs" "$REF/.npm-tracker.mjs"; cleanup' EXIT

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

measure() {  # $1: name, $2: ws url; SERVER_PID set
    local before after client
    sleep 1
    before=$(rss_kib "$SERVER_PID")
    (cd "$REF" && exec taskset -c "$LOAD_CPU" node .idle-client.mjs "$2" "$CONNS" "$SWARMS") >"$WORK/client.out" 2>"$WORK/client.err" &
    client=$!
    for _ in $(seq 600); do
        grep -q '^ready' "$WORK/client.out" 2>/dev/null && break
        kill -0 "$client" 2>/dev/null || { cat "$WORK/client.err" >&2; die "$1: client died"; }
        sleep 0.2
    done
    grep -q "^ready $CONNS" "$WORK/client.out" || die "$1: not every announce was answered: $(cat "$WORK/client.out")"
    sleep "$SETTLE"
    after=$(rss_kib "$SERVER_PID")
    kill "$client"; wait "$client" 2>/dev/null || true
    log "$1: RSS ${before} KiB -> ${after} KiB with $CONNS idle connections"
    echo "$1 $before $after"
}

# --- edge ---
own=''
if [[ $OWN == 1 ]]; then
    if [[ $TLS == 1 ]]; then own='tls_listen = ["127.0.0.1:0"]'; else own='listen = ["127.0.0.1:0"]'; fi
fi
signaling_edge_config "$WORK" "$CONNS" "$own"
if [[ $TLS == 1 ]]; then
    listen=(--listen 127.0.0.1:0 --tls-listen 127.0.0.1:0) scheme=https ws=wss
else
    listen=(--listen 127.0.0.1:0 --no-tls) scheme=http ws=ws
fi
where=''
if [[ $OWN == 1 ]]; then
    scheme=$ws where=', signaling listener'
fi
(cd "$ROOT" && exec taskset -c "$SERVER_CPU" "$EDGE_BIN" serve --config "$WORK/edge.toml" \
    "${listen[@]}" --admin-listen 127.0.0.1:0) 2>"$WORK/edge.log" &
SERVER_PID=$!
PORT=$(wait_for_port "$WORK/edge.log" "$scheme") || PORT=''
[[ -n $PORT ]] || { cat "$WORK/edge.log" >&2; die "edge did not start"; }
read -r _ E_BEFORE E_AFTER < <(measure edge "$ws://127.0.0.1:$PORT/ws/tracker")
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=''

# --- npm reference ---
start_npm_tracker "$REF" "$WORK" "$SERVER_CPU" || PORT=''
[[ -n $PORT ]] || die "npm tracker did not start"
read -r _ N_BEFORE N_AFTER < <(measure npm "ws://127.0.0.1:$PORT")

per() { awk -v a="$1" -v b="$2" -v n="$CONNS" 'BEGIN { printf "%.1f", (b - a) / n }'; }
per_gib() { awk -v a="$1" -v b="$2" -v n="$CONNS" 'BEGIN { printf "%.0f", 1048576 / ((b - a) / n) }'; }
echo "# signaling-idle: \`CONNS=$CONNS SWARMS=$SWARMS SETTLE=$SETTLE $0\`"
echo "date: $(date -u '+%Y-%m-%dT%H:%M:%SZ'), nproc: $(nproc), node: $(node --version), servers on core $SERVER_CPU, client on core $LOAD_CPU"
echo
echo "| tracker | RSS before (KiB) | RSS with $CONNS idle connections (KiB) | KiB per connection | connections per GiB |"
echo "|---|---:|---:|---:|---:|"
echo "| edge ($ws://$where) | $E_BEFORE | $E_AFTER | $(per "$E_BEFORE" "$E_AFTER") | $(per_gib "$E_BEFORE" "$E_AFTER") |"
echo "| npm bittorrent-tracker | $N_BEFORE | $N_AFTER | $(per "$N_BEFORE" "$N_AFTER") | $(per_gib "$N_BEFORE" "$N_AFTER") |"
