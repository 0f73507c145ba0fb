# Shell helpers shared by compare.sh, cluster.sh and profile.sh. Source it
# after setting `root` (the repository) and `cd "$root"`.

# build_tools: builds Wisp (unless WISP_BIN names a binary to use instead)
# and the load generator, release profile; sets `wisp_bin` and `lt`.
build_tools() {
    echo "==> build" >&2
    if [[ -z "${WISP_BIN:-}" ]]; then
        cargo build --release --quiet -p wisp --bin wisp
    fi
    cargo build --release --quiet -p wisp-loadtest
    wisp_bin="${WISP_BIN:-$root/target/release/wisp}"
    lt="$root/target/release/wisp-loadtest"
}

# wait_addr LOG PID [SECONDS]: prints the HOST:PORT that a server started
# with PID logs as `http://HOST:PORT/` in LOG (Wisp and every peer do);
# fails if the server exits first or after SECONDS (default 10).
wait_addr() {
    local log=$1 pid=$2 secs=${3:-10} addr=""
    for _ in $(seq 1 $((secs * 10))); do
        addr="$(grep -so 'http://[^/ ]*/' "$log" | head -n 1 | sed 's#http://##; s#/$##' || true)"
        if [[ -n "$addr" ]]; then
            echo "$addr"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "server $pid did not start; its log:" >&2
    cat "$log" >&2
    return 1
}

# stop_pid PID [SECONDS]: SIGTERM, then SIGKILL if it is still running after
# SECONDS (default 10); reaps it. Only for processes this script started.
stop_pid() {
    local pid=$1 secs=${2:-10}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((secs * 10))); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
