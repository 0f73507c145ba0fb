#!/usr/bin/env bash
# Each hostile client against a freshly started Wisp while bystanders chat:
# bystander round-trip latency and the daemon's peak RSS, one row per attack.
#
#   loadtest/hostile.sh [OUTDIR]        every kind, DURATION s each (~2 minutes)
#
# For each kind: start `wisp` (default options: the limits an attacker
# meets), run `wisp-loadtest hostile --kind KIND` against it (4 bystanders in
# one room, 4 messages/s in all, the attacker from 127.0.0.100 and up), stop
# the daemon by PID, and print a table: kind, bystander latency p50/p99/max,
# deliveries lost, the daemon's peak RSS over its whole life (sampled here
# every 100 ms), whether it was still alive at the end, what the attacker
# did. A watchdog here kills the daemon (by its PID) if its RSS passes
# KILL_MIB, so an unbounded daemon cannot take the machine down; the
# generator itself stops attacking at RSS_CAP_MIB.
#
# Env: KINDS="pipelined-get ping-flood message-flood history-get big-welcome fill",
# DURATION=10, RSS_CAP_MIB=1024, KILL_MIB=2048, WISP_BIN=path (skip building
# Wisp, use this binary), WISP_ARGS="..." (extra daemon options).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-$root/target/loadtest/hostile}"
kinds="${KINDS:-pipelined-get ping-flood message-flood history-get big-welcome fill}"
duration="${DURATION:-10}"
rss_cap="${RSS_CAP_MIB:-1024}"
kill_mib="${KILL_MIB:-2048}"
read -r -a wisp_args <<<"${WISP_ARGS:-}"

# shellcheck source=loadtest/common.sh
source "$root/loadtest/common.sh"
build_tools
rm -rf "$out"
mkdir -p "$out/logs"

# watch_rss PID FILE: writes the peak RSS (KiB) of PID to FILE every 100 ms
# while it runs; kills it past KILL_MIB and appends "killed" to FILE.killed.
watch_rss() {
    local pid=$1 file=$2 peak=0 rss
    while kill -0 "$pid" 2>/dev/null; do
        rss="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)"
        if [[ -n "$rss" ]]; then
            ((rss > peak)) && peak=$rss && echo "$peak" >"$file"
            if ((rss > kill_mib * 1024)); then
                kill -KILL "$pid" 2>/dev/null || true
                echo killed >"$file.killed"
                break
            fi
        fi
        sleep 0.1
    done
}

rows=()
for kind in $kinds; do
    log="$out/logs/$kind.log"
    echo "==> $kind" >&2
    "$wisp_bin" --bind 127.0.0.1:0 --log info "${wisp_args[@]}" >"$log" 2>&1 &
    pid=$!
    addr="$(wait_addr "$log" "$pid")" || { echo "wisp did not start" >&2; exit 1; }
    watch_rss "$pid" "$out/logs/$kind.rss" &
    watcher=$!
    if ! timeout $((duration + 120)) "$lt" hostile --kind "$kind" --duration "$duration" \
        --url "ws://$addr" --server-pid "$pid" --label wisp --rss-cap-mib "$rss_cap" \
        --json "$out/$kind.json" --quiet >"$out/logs/$kind.txt" 2>&1; then
        echo "    wisp-loadtest failed for $kind (see $out/logs/$kind.txt)" >&2
    fi
    alive=yes
    kill -0 "$pid" 2>/dev/null || alive=no
    [[ -f "$out/logs/$kind.rss.killed" ]] && alive="killed (RSS > ${kill_mib} MiB)"
    stop_pid "$pid"
    wait "$watcher" 2>/dev/null || true
    peak_kib="$(cat "$out/logs/$kind.rss" 2>/dev/null || echo 0)"
    if [[ -f "$out/$kind.json" ]]; then
        rows+=("$(jq -r --arg kind "$kind" --arg peak "$peak_kib" --arg alive "$alive" '
            def ms: . / 1000 | . * 10 | round / 10 | tostring;
            def lat(f): if .latency.count > 0 then .latency | f | ms else "-" end;
            [$kind,
             lat(.p50_us),
             lat(.p99_us),
             lat(.max_us),
             "\(.lost)/\(.expected)",
             (($peak | tonumber) / 1024 | . * 10 | round / 10 | tostring),
             $alive,
             (.attack.units_sent | tostring) + " " + .attack.unit + "s, "
               + (.attack.closed_by_server | tostring) + " closed, blocked "
               + (.attack.blocked_s | . * 10 | round / 10 | tostring) + " s"
               + (if .attack.stopped_for_rss then ", STOPPED at RSS cap" else "" end)
               + (if (.failures | length) > 0 then "; bystander failures: " + (.failures | tostring) else "" end)
            ] | join("\t")' "$out/$kind.json")")
    else
        rows+=("$kind	-	-	-	-	$((peak_kib / 1024))	$alive	no report")
    fi
done

{
    printf 'kind\tp50 ms\tp99 ms\tmax ms\tlost\tpeak RSS MiB\talive\tattacker\n'
    printf '%s\n' "${rows[@]}"
} | column -t -s $'\t' | tee "$out/summary.txt"
