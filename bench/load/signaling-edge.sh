# signaling-edge.sh: sourced by the signaling benchmarks. The edge they measure: roles edge +
# signaling, one runtime thread, a /ws/** route without policy (the JWT check costs nothing per
# message or idle connection), connection caps raised to the load.
#   signaling_edge_config DIR CONNS [LINES]  writes DIR/policies.toml and DIR/edge.toml; LINES
#                                            go under [signaling] (one per line)
#   wait_for_port LOG SCHEME                 prints the port of the first non-admin
#                                            "listening on SCHEME://127.0.0.1:PORT" in LOG (30 s)

signaling_edge_config() {
    local dir=$1 conns=$2 lines=${3:-}
    cat >"$dir/policies.toml" <<'EOT'
[[routes]]
name = "signaling"
paths = ["/ws/**"]
EOT
    cat >"$dir/edge.toml" <<EOT
roles = ["edge", "signaling"]
[server]
demo_stream = ""
threads = 1
data_dir = "$dir/edge-data"
max_connections = $((conns + 100))
max_connections_per_client = $((conns + 100))
[origin]
root = "$dir"
[policies]
file = "$dir/policies.toml"
watch_interval = "0s"
[signaling]
max_swarm_peers = $conns
$lines
EOT
}

wait_for_port() {
    local log=$1 scheme=$2 port=''
    for _ in $(seq 300); do
        port=$(grep -v '(admin)' "$log" | grep -oE "listening on $scheme://127\.0\.0\.1:[0-9]+" | head -1 | sed 's/.*://') || true
        [[ -n $port ]] && { echo "$port"; return 0; }
        sleep 0.1
    done
    return 1
}

# start_npm_tracker REF WORK CPU: the npm bittorrent-tracker 11.2.3 Server (ws only) on Node,
# pinned to CPU, from REF's node_modules; sets SERVER_PID and PORT (the script file REF/.npm-
# tracker.mjs is removed by the caller's cleanup: rm -f "$REF/.npm-tracker.mjs").
start_npm_tracker() {
    local ref=$1 work=$2 cpu=$3
    cat >"$ref/.npm-tracker.mjs" <<'EOT'
import Server from 'bittorrent-tracker/server'
const server = new Server({ udp: false, http: false, ws: true, stats: false })
server.on('warning', () => {})
server.on('error', () => {})
server.listen(0, '127.0.0.1', () => console.log(`port ${server.ws.address().port}`))
EOT
    (cd "$ref" && exec taskset -c "$cpu" node .npm-tracker.mjs) >"$work/npm.out" 2>&1 &
    SERVER_PID=$!
    PORT=''
    for _ in $(seq 100); do
        PORT=$(sed -n 's/^port //p' "$work/npm.out") || true
        [[ -n $PORT ]] && return 0
        sleep 0.1
    done
    return 1
}
