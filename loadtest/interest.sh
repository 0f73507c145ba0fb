#!/usr/bin/env bash
# A node with no member in a busy room (issue 14): two Wisp nodes on one
# Redis; node A carries one room at RATE msg/s (one sender, one receiver,
# `wisp-loadtest fanout -n 2`), node B holds one member in another, idle
# room. Reports A's and Redis's CPU per message, and B's CPU and the bytes B
# received (ss's tcp_info over its sockets: from Redis, and its one idle
# member) over the run, for the current build and, when WISP_BASE_BIN is set,
# for that build too (e.g. one where every node subscribes to every room).
#
#   loadtest/interest.sh [OUTDIR]        about 1 minute
#
# Env: RATE (10000), DURATION (10), WISP_BIN, WISP_BASE_BIN.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-$root/target/loadtest/interest}"
rate="${RATE:-10000}"
duration="${DURATION:-10}"

command -v redis-server >/dev/null || { echo "redis-server is not installed" >&2; exit 1; }
command -v jq >/dev/null || { echo "jq is not installed" >&2; exit 1; }

# shellcheck source=loadtest/common.sh
source "$root/loadtest/common.sh"
build_tools

rm -rf "$out"
mkdir -p "$out/logs"
trap stop_started EXIT

cpu_us() { # PID: user + system CPU in µs
    awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) * 1000000 / hz }' "/proc/$1/stat"
}
read_bytes() { # PID: bytes received on its TCP connections (tcp_info, through ss), Redis's included
    ss -tinpH | python3 -c '
import re, sys
pid, total, mine = sys.argv[1], 0, False
for line in sys.stdin:
    if not line[0].isspace():
        mine = ("pid=%s," % pid) in line
    elif mine:
        m = re.search(r"bytes_received:(\d+)", line)
        total += int(m.group(1)) if m else 0
print(total)' "$1"
}

echo "| build | A CPU µs/msg | Redis CPU µs/msg | B CPU % of a core | B CPU µs/msg of A's room | B bytes read/s | B bytes read/msg | A messages/s |" >"$out/summary.md"
echo "|---|---:|---:|---:|---:|---:|---:|---:|" >>"$out/summary.md"

builds=("current:$wisp_bin")
[[ -n "${WISP_BASE_BIN:-}" ]] && builds+=("base:$WISP_BASE_BIN")
for build in "${builds[@]}"; do
    name="${build%%:*}" bin="${build#*:}"
    echo "==> $name" >&2
    rport="$(free_port)"
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$out/logs/redis-$name.log" 2>&1 &
    started+=($!)
    redis_pid=$!
    wait_for redis-server redis-cli -p "$rport" ping
    ports=() npids=()
    for node in a b; do
        port="$(free_port)"
        "$bin" --bind "127.0.0.1:$port" --rate-limit 0 --max-outbound-bytes 67108864 \
            --redis "redis://127.0.0.1:$rport" >"$out/logs/$name-$node.log" 2>&1 &
        started+=($!)
        npids+=($!)
        ports+=("$port")
        wait_for "node $node" sh -c "curl -sf http://127.0.0.1:$port/healthz | grep -q '\"redis\":\"up\"'"
    done
    # B's one member, in another room, for the whole run.
    timeout $((duration + 30)) "$lt" idle -n 1 --path /ws/elsewhere/bee --duration $((duration + 20)) \
        --url "ws://127.0.0.1:${ports[1]}" --quiet --json "$out/$name-idle.json" >"$out/logs/$name-idle.txt" 2>&1 &
    started+=($!)
    sleep 2
    b0_cpu="$(cpu_us "${npids[1]}")" b0_read="$(read_bytes "${npids[1]}")" t0="$(date +%s.%N)"
    timeout 120 "$lt" fanout -n 2 --rate "$rate" --duration "$duration" --drain 3 --quiet --label "$name" \
        --url "ws://127.0.0.1:${ports[0]}" --server-pid "${npids[0]}" --also-pid "$redis_pid" --json "$out/$name.json" \
        >"$out/logs/$name-fanout.txt" 2>&1 || echo "    fanout failed (see logs)" >&2
    b1_cpu="$(cpu_us "${npids[1]}")" b1_read="$(read_bytes "${npids[1]}")" t1="$(date +%s.%N)"
    sed 's/^/    /' "$out/logs/$name-fanout.txt" >&2
    jq -r --arg name "$name" --argjson bcpu "$(echo "$b1_cpu - $b0_cpu" | bc)" \
        --argjson bread "$((b1_read - b0_read))" --argjson secs "$(echo "$t1 - $t0" | bc)" '
        def f: (. * 100 | round) / 100;
        "| \($name) | \(.server.cpu_us / .sent | f) | \(.also[0].cpu_us / .sent | f) | \($bcpu / $secs / 10000 | f) | \($bcpu / .sent | f) | \($bread / $secs | round) | \($bread / .sent | f) | \(.sent / .window_s | round) |"
    ' "$out/$name.json" >>"$out/summary.md"
    stop_started
done
echo "==> $out/summary.md" >&2
cat "$out/summary.md"
