#!/usr/bin/env bash
# Scale-out of the cluster (issue 14): many rooms, every member posting,
# members of each room spread over the nodes, on
#
#   single           one daemon, no Redis (the reference)
#   base-r1-n1       WISP_BASE_BIN (e.g. a build before batching) on one Redis, one node (only
#                    when WISP_BASE_BIN is set)
#   r1-n1 r1-n2 r1-n3   one Redis server, 1 / 2 / 3 Wisp nodes
#   c3-n1 c3-n2 c3-n3   a Redis Cluster of 3 masters (no replicas), 1 / 2 / 3 Wisp nodes
#
#   loadtest/scale.sh [OUTDIR]      about 6 minutes on 2 cores
#
# Each configuration runs `wisp-loadtest rooms` twice (ROOMS x PER_ROOM
# members, each sending LOW then HIGH msg/s, DURATION s each) and reports,
# per process (each node, each Redis), CPU per post as the difference
# between the two runs (Δ CPU / Δ posts: what one more post costs, without
# the fixed costs of heartbeats and idle connections), CPU per delivery at
# HIGH, and deliveries/s, p99 and loss at HIGH, in OUTDIR/summary.md.
# Everything it started is stopped by PID at the end.
#
# Env: ROOMS (200), PER_ROOM (5), LOW (1), HIGH (4), DURATION (10),
# CONFIGS (all of the above), WISP_BIN, WISP_BASE_BIN.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-$root/target/loadtest/scale}"
rooms="${ROOMS:-200}"
per_room="${PER_ROOM:-5}"
low="${LOW:-1}"
high="${HIGH:-4}"
duration="${DURATION:-10}"
configs="${CONFIGS:-single r1-n1 r1-n2 r1-n3 c3-n1 c3-n2 c3-n3}"
if [[ -n "${WISP_BASE_BIN:-}" && -z "${CONFIGS:-}" ]]; then
    configs="single base-r1-n1 $configs"
    configs="${configs/single base-r1-n1 single/single base-r1-n1}"
fi

command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is not installed" >&2; exit 1; }

# shellcheck source=loadtest/common.sh
source "$root/loadtest/common.sh"
build_tools

ulimit -n "$(ulimit -Hn)"
rm -rf "$out"
mkdir -p "$out/logs"
tmp="$(mktemp -d)"

trap 'stop_started; rm -rf "$tmp"' EXIT

redis_pids=()
redis_url=""
# start_redis SHARDS: one server (SHARDS=1) or a cluster of SHARDS masters.
start_redis() {
    local shards=$1 port
    redis_pids=()
    if [[ "$shards" == 1 ]]; then
        port="$(free_port)"
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            >"$out/logs/redis-$port.log" 2>&1 &
        redis_pids+=($!)
        started+=($!)
        wait_for "redis-server" redis-cli -p "$port" ping
        redis_url="--redis redis://127.0.0.1:$port"
        return
    fi
    local addrs=() seeds=()
    for _ in $(seq "$shards"); do
        port="$(free_port)"
        mkdir -p "$tmp/$port"
        # The bus port defaults to port + 10000, past 65535 for half the ephemeral ports.
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --cluster-port "$(free_port)" \
            --cluster-enabled yes --cluster-config-file "$tmp/$port/nodes.conf" \
            --cluster-node-timeout 1000 --cluster-require-full-coverage no --dir "$tmp/$port" \
            >"$out/logs/redis-$port.log" 2>&1 &
        redis_pids+=($!)
        started+=($!)
        wait_for "redis-server :$port" redis-cli -p "$port" ping
        addrs+=("127.0.0.1:$port")
        seeds+=("redis://127.0.0.1:$port")
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$out/logs/cluster-create.log" 2>&1
    for a in "${addrs[@]}"; do
        wait_for "cluster_state:ok on $a" sh -c "redis-cli -p ${a#*:} cluster info | grep -q cluster_state:ok"
    done
    redis_url="--redis-cluster $(IFS=,; echo "${seeds[*]}")"
}

node_ports=()
node_pids=()
# start_nodes N BIN
start_nodes() {
    local n=$1 bin=$2 port
    node_ports=()
    node_pids=()
    for i in $(seq "$n"); do
        port="$(free_port)"
        # shellcheck disable=SC2086
        "$bin" --bind "127.0.0.1:$port" --rate-limit 0 --max-outbound-bytes 67108864 $redis_url \
            >"$out/logs/$config-node$i.log" 2>&1 &
        node_pids+=($!)
        started+=($!)
        node_ports+=("$port")
    done
    for port in "${node_ports[@]}"; do
        if [[ -n "$redis_url" ]]; then
            wait_for "node :$port" sh -c "curl -sf http://127.0.0.1:$port/healthz | grep -q '\"redis\":\"up\"'"
        else
            wait_for "node :$port" curl -sf "http://127.0.0.1:$port/healthz"
        fi
    done
}

for config in $configs; do
    echo "==> $config" >&2
    bin="$wisp_bin"
    case "$config" in
    single) redis_url=""; redis_pids=(); nodes=1 ;;
    base-r1-n1) bin="${WISP_BASE_BIN:?}"; start_redis 1; nodes=1 ;;
    r1-n*) start_redis 1; nodes="${config#r1-n}" ;;
    c3-n*) start_redis 3; nodes="${config#c3-n}" ;;
    *) echo "unknown configuration $config" >&2; exit 2 ;;
    esac
    start_nodes "$nodes" "$bin"
    args=(--url "ws://127.0.0.1:${node_ports[0]}" --server-pid "${node_pids[0]}")
    for i in "${!node_ports[@]}"; do
        [[ "$i" == 0 ]] && continue
        args+=(--also-url "ws://127.0.0.1:${node_ports[$i]}" --also-pid "${node_pids[$i]}")
    done
    for p in "${redis_pids[@]}"; do args+=(--also-pid "$p"); done
    for rate in "$low" "$high"; do
        sleep 1
        if ! timeout 180 "$lt" rooms --rooms "$rooms" --per-room "$per_room" --rate "$rate" \
            --duration "$duration" --drain 5 --quiet --label "$config" \
            --json "$out/$config-$rate.json" "${args[@]}" >"$out/logs/$config-$rate.txt" 2>&1; then
            echo "    wisp-loadtest failed for $config at $rate/s (see $out/logs/$config-$rate.txt)" >&2
        fi
        sed 's/^/    /' "$out/logs/$config-$rate.txt" >&2
    done
    echo "$nodes ${#redis_pids[@]}" >"$out/$config.shape"
    stop_started
done

# The table.
{
    echo "Rooms: $rooms × $per_room members, each member sending $low then $high msg/s for ${duration} s;"
    echo "members of each room alternate over the nodes. CPU per post: Δ CPU / Δ posts between the"
    echo "two rates; per delivery: CPU / deliveries at $high msg/s. µs of one core."
    echo
    echo "| configuration | posts/s | deliveries/s | p99 ms | lost | nodes µs/post (each) | nodes total µs/post | Redis µs/post (each) | Redis total µs/post | all µs/delivery |"
    echo "|---|---:|---:|---:|---:|---|---:|---|---:|---:|"
    for config in $configs; do
        lo="$out/$config-$low.json" hi="$out/$config-$high.json"
        [[ -f "$lo" && -f "$hi" ]] || { echo "| $config | (failed) |||||||||"; continue; }
        read -r nodes shards <"$out/$config.shape"
        jq -r -n --slurpfile lo "$lo" --slurpfile hi "$hi" --arg config "$config" \
            --argjson nodes "$nodes" --argjson shards "$shards" '
            ($lo[0]) as $l | ($hi[0]) as $h |
            ([$h.server] + $h.also) as $hp | ([$l.server] + $l.also) as $lp |
            ($h.sent - $l.sent) as $dp |
            [range(0; $nodes + $shards) | (($hp[.].cpu_us // 0) - ($lp[.].cpu_us // 0)) / $dp] as $per |
            ($per[0:$nodes]) as $n | ($per[$nodes:]) as $r |
            def f: (. * 10 | round) / 10;
            def add0: if length == 0 then 0 else add end;
            "| \($config) | \(($h.sent / $h.window_s) | round) | \($h.ops_per_s | round) | \(($h.latency.p99_us / 1000) | f) | \($h.lost) | \($n | map(f | tostring) | join(" + ")) | \($n | add0 | f) | \(if ($r | length) == 0 then "–" else ($r | map(f | tostring) | join(" + ")) end) | \($r | add0 | f) | \((([$hp[].cpu_us // 0] | add) / $h.ops) | f) |"'
    done
} >"$out/summary.md"
echo "==> $out/summary.md" >&2
cat "$out/summary.md"
