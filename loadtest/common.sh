# Shell helpers shared by the load scripts (compare.sh, cluster.sh, scale.sh, capacity.sh, ...).
# Source it after setting `root` (the repository) and `cd "$root"`.

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

# require COMMAND...: exits, saying which, unless every COMMAND is installed.
require() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null || { echo "$c is not installed" >&2; exit 1; }
    done
}

# fresh_out: empties `out` (logs under $out/logs), makes `tmp`, and stops what the script started
# and removes `tmp` when it exits.
fresh_out() {
    rm -rf "$out"
    mkdir -p "$out/logs"
    tmp="$(mktemp -d)"
    trap 'stop_started; rm -rf "$tmp"' EXIT
}

# cluster_args: the generator's arguments for what cluster_up started, in `lt_args`: the first node
# as --url and --server-pid, the others as --also-url and --also-pid, the Redis servers as
# --also-pid (so the report has every process's CPU, nodes first).
cluster_args() {
    local i p
    lt_args=(--url "ws://127.0.0.1:${node_ports[0]}" --server-pid "${node_pids[0]}")
    for i in "${!node_ports[@]}"; do
        [[ "$i" == 0 ]] && continue
        lt_args+=(--also-url "ws://127.0.0.1:${node_ports[$i]}" --also-pid "${node_pids[$i]}")
    done
    for p in "${redis_pids[@]}"; do lt_args+=(--also-pid "$p"); done
}

# cluster_up CONFIG BIN: starts what a configuration of scale.sh and capacity.sh names, with Wisp
# binary BIN (base-r1-n1: BIN is WISP_BASE_BIN's):
#   single            one daemon, no Redis
#   r1-nN             one redis-server, N nodes with --redis
#   c3-nN             a Redis Cluster of 3 masters (no replicas), N nodes with --redis-cluster
#   base-r1-n1        as r1-n1
# Sets redis_pids, redis_url (the nodes' option), node_pids, node_ports; everything goes into
# `started`. Needs `out` (logs under $out/logs) and `tmp` (the cluster's files).
cluster_up() {
    local config=$1 bin=$2 nodes
    redis_url=""
    redis_pids=()
    case "$config" in
    single) nodes=1 ;;
    base-r1-n1) start_redis 1; nodes=1 ;;
    r1-n*) start_redis 1; nodes="${config#r1-n}" ;;
    c3-n*) start_redis 3; nodes="${config#c3-n}" ;;
    *) echo "unknown configuration $config" >&2; exit 2 ;;
    esac
    start_nodes "$config" "$nodes" "$bin"
}

# start_redis SHARDS: one server (SHARDS=1) or a cluster of SHARDS masters.
start_redis() {
    local shards=$1 port
    if [[ "$shards" == 1 ]]; then
        port="$(free_port)"
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            >"$out/logs/redis-$port.log" 2>&1 &
        redis_pids+=($!)
        started+=($!)
        wait_for "redis-server" redis-cli -p "$port" ping
        redis_url="--redis redis://127.0.0.1:$port"
        return
    fi
    local addrs=() seeds=()
    for _ in $(seq "$shards"); do
        port="$(free_port)"
        mkdir -p "$tmp/$port"
        # The bus port defaults to port + 10000, past 65535 for half the ephemeral ports.
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --cluster-port "$(free_port)" \
            --cluster-enabled yes --cluster-config-file "$tmp/$port/nodes.conf" \
            --cluster-node-timeout 1000 --cluster-require-full-coverage no --dir "$tmp/$port" \
            >"$out/logs/redis-$port.log" 2>&1 &
        redis_pids+=($!)
        started+=($!)
        wait_for "redis-server :$port" redis-cli -p "$port" ping
        addrs+=("127.0.0.1:$port")
        seeds+=("redis://127.0.0.1:$port")
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes >"$out/logs/cluster-create.log" 2>&1
    for a in "${addrs[@]}"; do
        wait_for "cluster_state:ok on $a" sh -c "redis-cli -p ${a#*:} cluster info | grep -q cluster_state:ok"
    done
    redis_url="--redis-cluster $(IFS=,; echo "${seeds[*]}")"
}

# start_nodes CONFIG N BIN: N Wisp nodes on free ports (logs $out/logs/CONFIG-nodeI.log), with
# `redis_url` if set, the rate limits off and a large outbound budget (the generator reads as fast
# as it can, but shares the cores).
start_nodes() {
    local config=$1 n=$2 bin=$3 port
    node_ports=()
    node_pids=()
    for i in $(seq "$n"); do
        port="$(free_port)"
        # shellcheck disable=SC2086
        "$bin" --bind "127.0.0.1:$port" --rate-limit 0 --max-outbound-bytes 67108864 $redis_url \
            >"$out/logs/$config-node$i.log" 2>&1 &
        node_pids+=($!)
        started+=($!)
        node_ports+=("$port")
    done
    for port in "${node_ports[@]}"; do
        if [[ -n "$redis_url" ]]; then
            wait_for "node :$port" sh -c "curl -sf http://127.0.0.1:$port/healthz | grep -q '\"redis\":\"up\"'"
        else
            wait_for "node :$port" curl -sf "http://127.0.0.1:$port/healthz"
        fi
    done
}
