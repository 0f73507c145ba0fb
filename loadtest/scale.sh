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

# shellcheck source=loadtest/common.sh
source "$root/loadtest/common.sh"
require redis-server redis-cli jq curl
build_tools

ulimit -n "$(ulimit -Hn)"
fresh_out

for config in $configs; do
    echo "==> $config" >&2
    bin="$wisp_bin"
    [[ "$config" == base-r1-n1 ]] && bin="${WISP_BASE_BIN:?}"
    cluster_up "$config" "$bin"
    nodes=${#node_pids[@]}
    cluster_args
    for rate in "$low" "$high"; do
        sleep 1
        if ! timeout 180 "$lt" rooms --rooms "$rooms" --per-room "$per_room" --rate "$rate" \
            --duration "$duration" --drain 5 --quiet --label "$config" \
            --json "$out/$config-$rate.json" "${lt_args[@]}" >"$out/logs/$config-$rate.txt" 2>&1; then
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
    echo "| configuration | posts/s | deliveries/s | p99 ms | lost | nodes µs/post (each) | nodes total µs/post | Redis µs/post (each) | Redis total µs/post | nodes, Redis µs/post at $high msg/s (absolute) | all µs/delivery |"
    echo "|---|---:|---:|---:|---:|---|---:|---|---:|---|---:|"
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
            [range(0; $nodes + $shards) | ($hp[.].cpu_us // 0) / $h.sent] as $abs |
            "| \($config) | \(($h.sent / $h.window_s) | round) | \($h.ops_per_s | round) | \(($h.latency.p99_us / 1000) | f) | \($h.lost) | \($n | map(f | tostring) | join(" + ")) | \($n | add0 | f) | \(if ($r | length) == 0 then "–" else ($r | map(f | tostring) | join(" + ")) end) | \($r | add0 | f) | \($abs[0:$nodes] | add0 | f), \($abs[$nodes:] | add0 | f) | \((([$hp[].cpu_us // 0] | add) / $h.ops) | f) |"'
    done
} >"$out/summary.md"
echo "==> $out/summary.md" >&2
cat "$out/summary.md"
