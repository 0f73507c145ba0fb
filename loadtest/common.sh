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

# Processes a script started (append their PIDs); stop_started stops them. Scripts `trap
# stop_started EXIT` so nothing they started outlives them.
started=()

# stop_started: SIGTERM every PID in `started`, SIGKILL whatever is still there after 5 s, reap
# them, and empty the list. Only processes this script started.
stop_started() {
    local p
    for p in "${started[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${started[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    started=()
}

# free_port: a loopback TCP port nothing listens on now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_for DESCRIPTION COMMAND...: runs COMMAND every 0.1 s until it succeeds, for up to 20 s;
# then gives up, saying what it waited for, and exits.
wait_for() {
    local what="$1"
    shift
    for _ in $(seq 200); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "timed out waiting for $what" >&2
    exit 1
}
