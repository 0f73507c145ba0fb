#!/usr/bin/env bash
# Callgrind profile of the daemon under a fixed, small chat load: where its
# user-space instructions go per delivered message (docs/benchmarks.md,
# "Profile"). perf sees no user space on these VMs (perf_event_paranoid = 2);
# callgrind counts instructions exactly, so two builds compare run to run.
#
#   loadtest/profile.sh [OUTDIR]          profile target/release/wisp
#   WISP_BIN=/path/to/wisp loadtest/profile.sh OUTDIR   another build
#
# Load (the same for every build): a room fan-out, 300 clients, 50 msg/s for
# 5 s, then 50 rooms x 10 clients each sending 2 msg/s for 4 s. Writes
# OUTDIR/callgrind.out, OUTDIR/annotate.txt (functions by self cost) and
# prints instructions per delivery. Needs valgrind (apt-get install valgrind).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${1:-$root/target/loadtest/profile}"
command -v valgrind >/dev/null || { echo "profile.sh needs valgrind" >&2; exit 2; }

# shellcheck source=loadtest/common.sh
source "$root/loadtest/common.sh"
build_tools
rm -rf "$out"
mkdir -p "$out"

valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
    "$wisp_bin" --bind 127.0.0.1:0 --rate-limit 0 --log info >"$out/wisp.log" 2>&1 &
pid=$!
# Valgrind starts slowly.
addr="$(wait_addr "$out/wisp.log" "$pid" 30)" || { stop_pid "$pid"; exit 1; }

timeout 120 "$lt" fanout -n 300 --rate 50 --duration 5 --url "ws://$addr" \
    --json "$out/fanout.json" --quiet >"$out/fanout.txt"
timeout 120 "$lt" rooms --rooms 50 --per-room 10 --rate 2 --duration 4 --url "ws://$addr" \
    --json "$out/rooms.json" --quiet >"$out/rooms.txt"

# A graceful stop, so callgrind writes its file; under valgrind it takes longer.
stop_pid "$pid" 60

deliveries=$(python3 - "$out" <<'EOF'
import json, sys
total = 0
for name in ("fanout", "rooms"):
    with open(f"{sys.argv[1]}/{name}.json") as f:
        total += json.load(f)["ops"]
print(total)
EOF
)
callgrind_annotate --inclusive=no "$out/callgrind.out" >"$out/annotate.txt"
ir=$(grep -m1 -oE '^[0-9,]+ \(100.0%\)' "$out/annotate.txt" | cut -d' ' -f1 | tr -d ,)
echo "instructions: $ir over $deliveries message deliveries = $((ir / deliveries)) per delivery (joins and handshakes included in the total)"
echo "top functions by self cost: $out/annotate.txt"
