#!/usr/bin/env bash
# Capacity of the cluster at a fixed p99 (issue 14): for each configuration of
# scale.sh (single, r1-n1..3, c3-n1..3), `wisp-loadtest rooms` at rising rates
# until a step misses the bound (p99 over P99_MS, or a delivery lost); reports
# the last step within it: posts/s, deliveries/s, p99, and every process's CPU.
#
#   loadtest/capacity.sh [OUTDIR]      about 10 minutes on 2 cores
#
# The generator shares the machine with everything it measures: on 2 cores
# the absolute figures say where this machine saturates, not what a node or a
# shard can do alone (scale.sh's CPU per post says that).
#
# Env: ROOMS (200), PER_ROOM (5), RATES (per member, msg/s: 4 8 16 32 48 64
# 96 128), P99_MS (25), DURATION (5), CONFIGS (single r1-n1 r1-n2 r1-n3 c3-n1
# c3-n2 c3-n3), WISP_BIN.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-$root/target/loadtest/capacity}"
rooms="${ROOMS:-200}"
per_room="${PER_ROOM:-5}"
rates="${RATES:-4 8 16 32 48 64 96 128}"
p99_ms="${P99_MS:-25}"
duration="${DURATION:-5}"
configs="${CONFIGS:-single r1-n1 r1-n2 r1-n3 c3-n1 c3-n2 c3-n3}"

# shellcheck source=loadtest/common.sh
source "$root/loadtest/common.sh"
require redis-server redis-cli jq curl
build_tools

ulimit -n "$(ulimit -Hn)"
fresh_out

{
    echo "Rooms: $rooms × $per_room members, every member posting; rates per member: $rates msg/s, ${duration} s"
    echo "each; the bound: p99 ≤ $p99_ms ms and nothing lost. The last step within it, per configuration;"
    echo "CPU in % of one core over that step's window (nodes, then Redis servers, then the generator)."
    echo
    echo "| configuration | posts/s | deliveries/s | p99 ms | next step (posts/s): p99 ms, lost | nodes CPU % | Redis CPU % | generator CPU % |"
    echo "|---|---:|---:|---:|---|---|---|---:|"
} >"$out/summary.md"

for config in $configs; do
    echo "==> $config" >&2
    cluster_up "$config" "$wisp_bin"
    cluster_args
    nodes=${#node_pids[@]}
    echo "${#redis_pids[@]}" >"$out/$config.shards"
    best="" miss="(none: the last step was within the bound)"
    for rate in $rates; do
        sleep 1
        json="$out/$config-$rate.json"
        if ! timeout 120 "$lt" rooms --rooms "$rooms" --per-room "$per_room" --rate "$rate" \
            --duration "$duration" --drain 3 --quiet --label "$config" \
            --json "$json" "${lt_args[@]}" >"$out/logs/$config-$rate.txt" 2>&1; then
            echo "    wisp-loadtest failed for $config at $rate/s (see $out/logs/$config-$rate.txt)" >&2
            miss="$rate/s: the generator failed"
            break
        fi
        read -r posts p99 lost <<<"$(jq -r '"\(.sent / .window_s | round) \(.latency.p99_us / 1000) \(.lost)"' "$json")"
        echo "    $rate/s per member: $posts posts/s, p99 $p99 ms, lost $lost" >&2
        if [[ "$lost" != 0 ]] || awk -v p="$p99" -v b="$p99_ms" 'BEGIN { exit !(p > b) }'; then
            miss="$posts: $(printf '%.1f' "$p99") ms, $lost lost"
            break
        fi
        best="$json"
    done
    if [[ -z "$best" ]]; then
        echo "| $config | (none within the bound) | | | $miss | | | |" >>"$out/summary.md"
    else
        jq -r --arg config "$config" --arg miss "$miss" --argjson nodes "$nodes" '
            ([.server] + .also) as $p | .window_s as $w |
            def share: (.cpu_us // 0) / $w;
            "| \($config) | \(.sent / .window_s | round) | \(.ops_per_s | round) | \((.latency.p99_us / 100 | round) / 10) | \($miss) | \($p[0:$nodes] | map(share / 10000 | round | tostring) | join(" + ")) | \(if ($p | length) > $nodes then ($p[$nodes:] | map(share / 10000 | round | tostring) | join(" + ")) else "–" end) | \((.client_cpu_share // 0) * 100 | round) |"' \
            "$best" >>"$out/summary.md"
    fi
    stop_started
done
# Every step: CPU per post of every process (nodes, then Redis servers), as the load grows.
{
    echo
    echo "Every step: µs of CPU per post (each node, then each Redis server), p99 ms."
    echo
    echo "| configuration | posts/s | p99 ms | nodes µs/post | Redis µs/post |"
    echo "|---|---:|---:|---|---|"
    for config in $configs; do
        for rate in $rates; do
            json="$out/$config-$rate.json"
            [[ -f "$json" ]] || continue
            jq -r --arg config "$config" --argjson shards "$(cat "$out/$config.shards")" '
                .sent as $s | ([.server] + .also) as $p | (($p | length) - $shards) as $n |
                def per: ((.cpu_us // 0) / $s * 10 | round) / 10 | tostring;
                "| \($config) | \(.sent / .window_s | round) | \((.latency.p99_us / 100 | round) / 10) | \($p[0:$n] | map(per) | join(" + ")) | \(if $shards > 0 then ($p[$n:] | map(per) | join(" + ")) else "–" end) |"' "$json"
        done
    done
} >>"$out/summary.md"
echo "==> $out/summary.md" >&2
cat "$out/summary.md"
