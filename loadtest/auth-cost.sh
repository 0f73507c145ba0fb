#!/usr/bin/env bash
# What verifying a connection token costs per upgrade (issue 15): the storm
# scenario (connect, upgrade, close, CONCURRENCY in flight) against three
# daemons started one after another in the same run:
#
#   open    --auth open, upgrades without a token (the reference)
#   hs256   --auth token, HS256 (a shared secret), every upgrade `?token=`
#   es256   --auth token --token-alg ES256 (a P-256 public key), the same
#
#   loadtest/auth-cost.sh [OUTDIR]      about 1 minute after the build
#
# Builds Wisp and the load generator (release) if needed; makes a fresh
# HS256 secret (token minted with `wisp token`) and a P-256 key pair
# (`openssl genpkey`; the ES256 token is signed with `openssl dgst` and
# assembled by python3's standard library, no JWT package needed). Each
# daemon runs pinned to core SERVER_CPU (default 0) on a free port, the
# generator on CLIENT_CPU (default 1), like compare.sh; each daemon is
# stopped by PID. All upgrades go to PATH (default /ws, the global channel:
# one token serves every connection there, while a room refuses a second
# connection under the same name with 409).
#
# Output: OUTDIR/summary.md (handshakes/s and server CPU per handshake, with
# ratios to the `open` row of the same round), one JSON per row, logs.
#
# Env: DURATION (s per row, default 5), CONCURRENCY (default 32), ROUNDS
# (default 1; rows alternate open/hs256/es256 within a round), PATH_WS,
# WISP_BIN=path (skip building Wisp, use this binary).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-$root/target/loadtest/auth-cost}"
duration="${DURATION:-5}"
concurrency="${CONCURRENCY:-32}"
rounds="${ROUNDS:-1}"
path_ws="${PATH_WS:-/ws}"
server_cpu="${SERVER_CPU:-0}"
client_cpu="${CLIENT_CPU:-1}"

for tool in jq openssl python3 taskset; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed" >&2; exit 1; }
done

# shellcheck source=loadtest/common.sh
source "$root/loadtest/common.sh"
build_tools

ulimit -n "$(ulimit -Hn)"
rm -rf "$out"
mkdir -p "$out/logs" "$out/keys"
keys="$out/keys"

echo "==> keys and tokens" >&2
head -c 48 /dev/urandom | base64 >"$keys/hs256.secret"
"$wisp_bin" token --secret-file "$keys/hs256.secret" --sub storm --rooms '*' --ttl 3600 \
    >"$keys/hs256.token"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$keys/es256.key" 2>/dev/null
openssl pkey -in "$keys/es256.key" -pubout -out "$keys/es256.pub"
# ES256 (RFC 7518 §3.4): the signature is r || s, 32 bytes each; openssl gives
# it DER-encoded (SEQUENCE of two INTEGERs), unpacked here.
python3 - "$keys/es256.key" >"$keys/es256.token" <<'EOF'
import base64, json, subprocess, sys, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
head = b64(json.dumps({"typ": "JWT", "alg": "ES256"}, separators=(",", ":")).encode())
body = b64(json.dumps({"sub": "storm", "rooms": ["*"], "history": False,
                       "iat": now, "exp": now + 3600}, separators=(",", ":")).encode())
signing_input = f"{head}.{body}".encode()
der = subprocess.run(["openssl", "dgst", "-sha256", "-sign", sys.argv[1]],
                     input=signing_input, capture_output=True, check=True).stdout
def integer(b, i):
    assert b[i] == 0x02, "DER INTEGER expected"
    n = b[i + 1]
    return int.from_bytes(b[i + 2:i + 2 + n], "big"), i + 2 + n
assert der[0] == 0x30, "DER SEQUENCE expected"
i = 3 if der[1] == 0x81 else 2
r, i = integer(der, i)
s, _ = integer(der, i)
print(f"{head}.{body}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}")
EOF

pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do stop_pid "$p" 5; done
}
trap cleanup EXIT

# row ROUND MODE: one daemon, one storm, the daemon stopped.
row() {
    local round=$1 mode=$2 auth=() token=()
    case "$mode" in
    open) auth=(--auth open) ;;
    hs256)
        auth=(--auth token --token-secret-file "$keys/hs256.secret")
        token=(--token-file "$keys/hs256.token")
        ;;
    es256)
        auth=(--auth token --token-alg ES256 --token-public-key "$keys/es256.pub")
        token=(--token-file "$keys/es256.token")
        ;;
    esac
    local name="r$round-$mode" log="$out/logs/r$round-$mode.log"
    echo "==> round $round: $mode" >&2
    taskset -c "$server_cpu" "$wisp_bin" --bind 127.0.0.1:0 --rate-limit 0 \
        --max-outbound-bytes 268435456 --log info "${auth[@]}" >"$log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    local addr
    addr="$(wait_addr "$log" "$pid")"
    if ! timeout 120 taskset -c "$client_cpu" "$lt" storm --path "$path_ws" "${token[@]}" \
        --duration "$duration" --concurrency "$concurrency" --sources 4 \
        --url "ws://$addr" --server-pid "$pid" --label "$mode" \
        --json "$out/$name.json" --quiet >"$out/logs/$name.txt"; then
        echo "    wisp-loadtest failed for $name (see $out/logs)" >&2
    fi
    grep -E '^  (handshakes|server CPU|failures|note)' "$out/logs/$name.txt" | sed 's/^/    /' >&2 || true
    stop_pid "$pid"
}

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$rounds"); do
    for mode in open hs256 es256; do row "$round" "$mode"; done
done
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

echo "==> summary" >&2
{
    echo "# Token verification cost: storm on $path_ws, $concurrency in flight, ${duration} s per row"
    echo
    echo "Wisp: $wisp_bin ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')); server on core $server_cpu, generator on core $client_cpu;"
    echo "load average (1/5/15 min) at start $load_start, at end $load_end."
    echo
    echo "| round | mode | handshakes/s | × open | failed | server CPU µs/handshake | × open | server core | handshake p50 µs | p99 µs |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    for round in $(seq 1 "$rounds"); do
        base="$out/r$round-open.json"
        for mode in open hs256 es256; do
            f="$out/r$round-$mode.json"
            [[ -f "$f" ]] || { echo "| $round | $mode | (no result) ||||||||"; continue; }
            jq -r --arg round "$round" --arg mode "$mode" --slurpfile b "$base" '
                def r(x): (x * 100 | round) as $n
                    | "\($n / 100 | floor).\($n % 100 | tostring | if length < 2 then "0" + . else . end)";
                def ratio(x; y): if (x == null or y == null or y == 0) then "–"
                                 else "\(r(x / y))×" end;
                "| \($round) | \($mode) | \(.handshakes_per_s | round)"
                + " | \(ratio(.handshakes_per_s; $b[0].handshakes_per_s))"
                + " | \(.failures | add // 0)"
                + " | \(if .server.cpu_us_per_op then r(.server.cpu_us_per_op) else "–" end)"
                + " | \(ratio(.server.cpu_us_per_op; $b[0].server.cpu_us_per_op))"
                + " | \(if .server.cpu_share then "\(.server.cpu_share * 100 | round)%" else "–" end)"
                + " | \(.handshake_latency.p50_us | round) | \(.handshake_latency.p99_us | round) |"
            ' "$f"
        done
    done
} >"$out/summary.md"
cat "$out/summary.md"
