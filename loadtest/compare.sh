#!/usr/bin/env bash
# Wisp against the comparison peers (loadtest/peers/README.md), same client,
# same machine, same run.
#
#   loadtest/compare.sh [OUTDIR]        full set, about 7 minutes on 2 cores
#   QUICK=1 loadtest/compare.sh         scaled-down smoke run, under 2 minutes
#
# Builds Wisp (release), the load generator and the peers, then for each
# scenario starts each server pinned to core $SERVER_CPU (default 0), drives
# it with wisp-loadtest pinned to core $CLIENT_CPU (default 1), stops it by
# PID, and finally tabulates server CPU per delivered message and p99 latency
# with ratios to the floor and the best peer (OUTDIR/summary.md, and a latency
# CDF per scenario in OUTDIR/<scenario>/cdf.svg).
#
# Env: QUICK=1, SERVERS="wisp floor tokio-peer node-peer" (also wisp-base,
# wisp-deflate, node-peer-buffer, node-peer-deflate), SCENARIOS="..."
# (names as below), WISP_BIN=path (skip building Wisp, use this binary),
# WISP_BASE_BIN=path: a second Wisp binary (e.g. a build of the previous
# commit) run as server `wisp-base` with the same options, so a change is
# measured against what it changes in the same run
# (SERVERS="wisp wisp-base floor").
#
# permessage-deflate (issue 13): servers named *-deflate are driven with the
# generator offering deflate (`wisp-loadtest --deflate`); every other server
# is driven without the offer, so it sends plain frames whatever it supports.
#   wisp-deflate       the same Wisp binary and options as `wisp` (deflate
#                      is on by default; --deflate says so), offered deflate
#   node-peer-deflate  node-peer --deflate: ws's perMessageDeflate, each send
#                      compressed per recipient (threshold 256, level 2, as
#                      Wisp); it implies --broadcast buffer
#   node-peer-buffer   node-peer --broadcast buffer, no deflate: the same
#                      per-recipient `send` without compression, to tell the
#                      cost of compressing from the cost of not corking
# When any *-deflate server is in SERVERS, four more scenarios run (names
# deflate-*): fan-out 1,000 x 100/s and rooms 500 x 10 x 1/s with `--text
# chat` (English-like words, as compressible as English; `x` padding would
# compress to a fifth), at 64 bytes (room events of ~190 bytes: under the
# 256-byte threshold, nothing is compressed) and at 512 bytes (~640-byte
# events: every message compressed). The deflate comparison in
# docs/benchmarks.md:
#   SERVERS="wisp-deflate wisp floor node-peer node-peer-buffer node-peer-deflate" \
#   SCENARIOS="deflate-fanout-room-1000x100-chat64 deflate-fanout-room-1000x100-chat512 \
#     deflate-rooms-500x10x1-chat64 deflate-rooms-500x10x1-chat512" loadtest/compare.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-$root/target/loadtest/compare}"
quick="${QUICK:-0}"
servers="${SERVERS:-wisp floor tokio-peer node-peer}"
server_cpu="${SERVER_CPU:-0}"
client_cpu="${CLIENT_CPU:-1}"

# shellcheck source=loadtest/common.sh
source "$root/loadtest/common.sh"
build_tools
peer_names=""
for s in $servers; do
    case "$s" in
    floor | tokio-peer | node-peer) peer_names+=" $s" ;;
    node-peer-*) peer_names+=" node-peer" ;;
    esac
done
[[ -z "$peer_names" ]] || loadtest/peers/build.sh $peer_names >/dev/null
peers="$root/loadtest/peers"

# Both the servers and the generator inherit this; 20,000 is this box's hard
# limit, each process stays under it (the generator splits with --procs).
ulimit -n "$(ulimit -Hn)"
rm -rf "$out"
mkdir -p "$out/logs"

server_pid=""
server_addr=""

start_server() { # NAME LOG
    local name=$1 log=$2
    case "$name" in
    wisp) cmd=("$wisp_bin" --bind 127.0.0.1:0 --rate-limit 0
        --max-outbound-bytes 268435456 --log info) ;;
    wisp-deflate) cmd=("$wisp_bin" --bind 127.0.0.1:0 --rate-limit 0
        --max-outbound-bytes 268435456 --log info --deflate) ;;
    wisp-base) cmd=("${WISP_BASE_BIN:?set WISP_BASE_BIN to run wisp-base}" --bind 127.0.0.1:0
        --rate-limit 0 --max-outbound-bytes 268435456 --log info) ;;
    floor) cmd=("$peers/floor/target/release/floor" 127.0.0.1:0) ;;
    tokio-peer) cmd=("$peers/tokio-peer/target/release/tokio-peer" 127.0.0.1:0) ;;
    node-peer) cmd=(node "$peers/node-peer/server.mjs" 127.0.0.1:0) ;;
    node-peer-buffer) cmd=(node "$peers/node-peer/server.mjs" 127.0.0.1:0 --broadcast buffer) ;;
    node-peer-deflate) cmd=(node "$peers/node-peer/server.mjs" 127.0.0.1:0 --deflate) ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
    esac
    taskset -c "$server_cpu" "${cmd[@]}" >"$log" 2>&1 &
    server_pid=$!
    server_addr="$(wait_addr "$log" "$server_pid")" || { echo "server $name did not start" >&2; exit 1; }
}

# case NAME WHO ARGS...: WHO is "all" or the servers to run, e.g. "wisp floor";
# ARGS go to wisp-loadtest.
run_case() {
    local name=$1 who=$2
    shift 2
    if [[ -n "${SCENARIOS:-}" && " $SCENARIOS " != *" $name "* ]]; then return 0; fi
    mkdir -p "$out/$name"
    for s in $servers; do
        [[ "$who" != all && " $who " != *" $s "* ]] && continue
        local raw=()
        [[ "$s" == floor ]] && raw=(--raw)
        # Only the *-deflate servers are offered permessage-deflate.
        [[ "$s" == *-deflate ]] && raw+=(--deflate)
        echo "==> $name: $s" >&2
        start_server "$s" "$out/logs/$name-$s.log"
        # A generator failure is reported and the run goes on.
        if ! timeout 300 taskset -c "$client_cpu" "$lt" "$@" "${raw[@]}" \
            --url "ws://$server_addr" --server-pid "$server_pid" --label "$s" \
            --json "$out/$name/$s.json" --quiet >"$out/logs/$name-$s.txt"; then
            echo "    wisp-loadtest failed for $name on $s (see $out/logs)" >&2
        fi
        grep -E '^  (deliveries|messages|handshakes|lost|latency|server CPU|server bytes|wire bytes|deflate|failures|note)' \
            "$out/logs/$name-$s.txt" | sed 's/^/    /' >&2 || true
        stop_pid "$server_pid"
    done
}

deflate_cases=0
[[ " $servers " == *-deflate\ * ]] && deflate_cases=1

if [[ "$quick" == 1 ]]; then
    # Same shapes, a fifth of the width and a tenth of the time.
    run_case fanout-room-1000x100 all fanout -n 200 --rate 100 --duration 1
    run_case fanout-global-1000x100 all fanout --global -n 200 --rate 100 --duration 1
    run_case fanout-sparse-5000x20 all fanout --global -n 1000 --rate 20 --duration 1
    run_case rooms-500x10x1 all rooms --rooms 100 --per-room 10 --rate 2 --duration 1
    run_case echo-100x64-inflight1 all echo -n 20 --size 64 --inflight 1 --duration 0.5
    run_case echo-100x64-inflight16 all echo -n 20 --size 64 --inflight 16 --duration 0.5
    run_case fanout-dense-1000x1000 all fanout -n 200 --rate 1000 --duration 1
    run_case idle-19000 all idle -n 2000 --procs 2 --sources 2 --duration 0.5
    run_case storm all storm --duration 0.5 --concurrency 32 --sources 4
    for shape in "100 10" "10 100" "1 1000"; do
        set -- $shape
        run_case "scale-room-$2" "wisp floor" rooms --rooms "$1" --per-room "$2" \
            --senders 1 --rate 10 --duration 1 --sources 4
    done
    if [[ "$deflate_cases" == 1 ]]; then
        for size in 64 512; do
            run_case "deflate-fanout-room-1000x100-chat$size" all fanout -n 200 --rate 100 \
                --duration 1 --text chat --size "$size"
            run_case "deflate-rooms-500x10x1-chat$size" all rooms --rooms 100 --per-room 10 \
                --rate 2 --duration 1 --text chat --size "$size"
        done
    fi
else
    run_case fanout-room-1000x100 all fanout -n 1000 --rate 100 --duration 10
    run_case fanout-global-1000x100 all fanout --global -n 1000 --rate 100 --duration 10
    # On /ws: the same width in a room first costs 12.5 M join events.
    run_case fanout-sparse-5000x20 all fanout --global -n 5000 --rate 20 --duration 10
    run_case rooms-500x10x1 all rooms --rooms 500 --per-room 10 --rate 1 --duration 10
    run_case echo-100x64-inflight1 all echo -n 100 --size 64 --inflight 1 --duration 5
    run_case echo-100x64-inflight16 all echo -n 100 --size 64 --inflight 16 --duration 5
    run_case fanout-dense-1000x1000 all fanout -n 1000 --rate 1000 --duration 5
    run_case idle-19000 all idle -n 19000 --procs 2 --sources 4 --duration 3
    run_case storm all storm --duration 5 --concurrency 32 --sources 4
    # The same 100,000 deliveries/s (10,000 members, one sender per room at
    # 10 msg/s) from rooms of 10 to one room of 10,000: CPU per delivery must
    # not grow with the room. Wisp and the floor (the kernel's share at the
    # same widths) only: joining 10,000 to one room is 50 M join events, ~40 s
    # for Wisp, as quadratic for the peers, which would add minutes.
    for shape in "1000 10" "100 100" "10 1000" "1 10000"; do
        set -- $shape
        run_case "scale-room-$2" "wisp floor" rooms --rooms "$1" --per-room "$2" \
            --senders 1 --rate 10 --duration 10 --sources 4
    done
    if [[ "$deflate_cases" == 1 ]]; then
        for size in 64 512; do
            run_case "deflate-fanout-room-1000x100-chat$size" all fanout -n 1000 --rate 100 \
                --duration 10 --text chat --size "$size"
            run_case "deflate-rooms-500x10x1-chat$size" all rooms --rooms 500 --per-room 10 \
                --rate 1 --duration 10 --text chat --size "$size"
        done
    fi
fi

echo "==> summary" >&2
"$lt" compare "$out"
