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
