#!/usr/bin/env bash
# One room on a two-node Wisp cluster (Redis) against the same room on one
# node of that cluster and on a single daemon without Redis.
#
#   loadtest/cluster.sh [OUTDIR]        about 2 minutes on 2 cores
#
# Builds Wisp and the load generator (release) if needed, starts a
# redis-server on a free port and two daemons A and B with --redis, and a
# daemon S without Redis, then for each load (LOADS, "RECEIVERSxRATE", default
# "20x20 200x200 1000x50": a light one for the latency floor, then two
# heavier ones) runs `wisp-loadtest fanout` for DURATION s (default 10):
#
#   one-node   every connection on A (the cluster's one-node case: each
#              message still makes the Redis round trip)
#   two-nodes  the sender and every other receiver on A, the rest on B
#              (--also-url)
#   single     every connection on S (no Redis: the reference)
#
# and reports deliveries/s, latency p50/p99/max (also per node), loss, and
# the CPU of A, B, redis-server and S over each measured window
# (/proc/PID/stat, via --server-pid/--also-pid), and Redis' own account of
# its scripts (INFO commandstats, reset before each cluster run: its joins,
# posts and heartbeats), in OUTDIR/summary.md.
# Everything it started is stopped by PID at the end, whatever happens.
#
# Env: LOADS, DURATION, WISP_BIN=path (skip building Wisp, use this binary).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-$root/target/loadtest/cluster}"
loads="${LOADS:-20x20 200x200 1000x50}"
duration="${DURATION:-10}"

command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is not installed" >&2; exit 1; }

# shellcheck source=loadtest/common.sh
source "$root/loadtest/common.sh"
build_tools

ulimit -n "$(ulimit -Hn)"
rm -rf "$out"
mkdir -p "$out/logs"

trap stop_started EXIT

redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    >"$out/logs/redis.log" 2>&1 &
redis_pid=$!
started+=("$redis_pid")
wait_for "redis-server" redis-cli -p "$redis_port" ping

start_wisp() { # NAME PORT [ARGS...]: prints the PID
    local name="$1" port="$2"
    shift 2
    "$wisp_bin" --bind "127.0.0.1:$port" --rate-limit 0 --max-outbound-bytes 67108864 "$@" \
        >"$out/logs/$name.log" 2>&1 &
    echo $!
}
port_a="$(free_port)"
a_pid="$(start_wisp a "$port_a" --redis "redis://127.0.0.1:$redis_port")"
started+=("$a_pid")
port_b="$(free_port)"
b_pid="$(start_wisp b "$port_b" --redis "redis://127.0.0.1:$redis_port")"
started+=("$b_pid")
port_s="$(free_port)"
s_pid="$(start_wisp single "$port_s")"
started+=("$s_pid")
healthy() { curl -sf "http://127.0.0.1:$1/healthz" | grep -q "$2"; }
wait_for "node A" healthy "$port_a" '"redis":"up"'
wait_for "node B" healthy "$port_b" '"redis":"up"'
wait_for "the single daemon" healthy "$port_s" '"status":"ok"'
echo "    redis-server pid $redis_pid :$redis_port, A pid $a_pid :$port_a, B pid $b_pid :$port_b, single pid $s_pid :$port_s" >&2

# run NAME N RATE ARGS...
run() {
    local name="$1" n="$2" rate="$3"
    shift 3
    echo "==> $name: $n receivers x $rate msg/s, ${duration}s" >&2
    # The previous run's connections leave (one script each on a cluster
    # node): let that finish before this run connects.
    sleep 1
    redis-cli -p "$redis_port" config resetstat >/dev/null
    if ! timeout 120 "$lt" fanout -n "$n" --rate "$rate" --duration "$duration" --drain 5 \
        --quiet --label "$name" --json "$out/$name-${n}x$rate.json" "$@" \
        >"$out/logs/$name-${n}x$rate.txt" 2>&1; then
        echo "    wisp-loadtest failed for $name (see $out/logs/$name-${n}x$rate.txt)" >&2
        return 0
    fi
    redis-cli -p "$redis_port" info commandstats | tr -d '\r' >"$out/logs/$name-${n}x$rate.redis.txt"
    sed 's/^/    /' "$out/logs/$name-${n}x$rate.txt" >&2
}

cluster_pids=(--server-pid "$a_pid" --also-pid "$b_pid" --also-pid "$redis_pid")
for load in $loads; do
    n="${load%x*}"
    rate="${load#*x}"
    run one-node "$n" "$rate" --url "ws://127.0.0.1:$port_a" "${cluster_pids[@]}"
    run two-nodes "$n" "$rate" --url "ws://127.0.0.1:$port_a" \
        --also-url "ws://127.0.0.1:$port_b" "${cluster_pids[@]}"
    run single "$n" "$rate" --url "ws://127.0.0.1:$port_s" --server-pid "$s_pid"
done

# The table: CPU as % of one core over the window and µs per delivery.
{
    echo "| configuration | load | deliveries/s | p50 µs | p99 µs | max µs | lost | CPU A (or single) | CPU B | CPU redis-server |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for load in $loads; do
        n="${load%x*}"
        rate="${load#*x}"
        for name in one-node two-nodes single; do
            f="$out/$name-${n}x$rate.json"
            [[ -f "$f" ]] || { echo "| $name | $n × $rate/s | (failed) |||||||"; continue; }
            jq -r --arg name "$name" --arg load "$n × $rate/s" '
                def cpu(s): if s == null or s.cpu_us == null then "–"
                    else "\((s.cpu_share * 100) | round)% (\(s.cpu_us_per_op * 1000 | round / 1000) µs)" end;
                "| \($name) | \($load) | \(.ops_per_s | round) | \(.latency.p50_us | round) | \(.latency.p99_us | round) | \(.latency.max_us | round) | \(.lost) of \(.expected) | \(cpu(.server)) | \(cpu(.also[0])) | \(cpu(.also[1])) |"
            ' "$f"
        done
    done
    echo
    echo "Latency by the recipient's node (two-nodes):"
    echo
    echo "| load | node | p50 µs | p99 µs | max µs | deliveries |"
    echo "|---|---|---:|---:|---:|---:|"
    for load in $loads; do
        n="${load%x*}"
        rate="${load#*x}"
        f="$out/two-nodes-${n}x$rate.json"
        [[ -f "$f" ]] || continue
        jq -r --arg load "$n × $rate/s" '
            .latency_by_node | to_entries[] |
            "| \($load) | \(if .key == 0 then "A (sender)" else "B" end) | \(.value.p50_us | round) | \(.value.p99_us | round) | \(.value.max_us | round) | \(.value.count) |"
        ' "$f"
    done
    echo
    echo "Redis scripts (EVALSHA: joins, posts, heartbeats) from connect to drain:"
    echo
    echo "| configuration | load | EVALSHA calls | µs per call (Redis' count) |"
    echo "|---|---|---:|---:|"
    for load in $loads; do
        n="${load%x*}"
        rate="${load#*x}"
        for name in one-node two-nodes; do
            f="$out/logs/$name-${n}x$rate.redis.txt"
            [[ -f "$f" ]] || continue
            sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),usec=[0-9]*,usec_per_call=\([0-9.]*\).*/\1 \2/p' "$f" |
                while read -r calls per; do echo "| $name | $n × $rate/s | $calls | $per |"; done
        done
    done
} >"$out/summary.md"
echo "==> $out/summary.md" >&2
cat "$out/summary.md"
for name in a b single; do
    if grep -qiE 'warn|error' "$out/logs/$name.log"; then
        echo "--- $name.log warnings/errors:" >&2
        grep -iE 'warn|error' "$out/logs/$name.log" | head -20 >&2
    fi
done
