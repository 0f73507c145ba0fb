#!/usr/bin/env bash
# install-deps.sh — install what Wisp's tests need on a fresh Debian machine.
#
# Runs as root. Assumes what every machine of this project already has: Rust
# stable with cargo-nextest, Python 3.11 with pip, Node 20 with npm. Installs
# only what is missing, so a second run is quick and changes nothing:
#
#   - Debian packages: redis-server, redis-tools (cluster tests, on one server and on a Redis
#     Cluster), nginx (proxy tests),
#     chromium (browser tests). Their services are never left running: the
#     tests start their own instances on free ports.
#   - Python test clients: tests/py/requirements.txt (pinned).
#   - Node test clients: `npm ci` in tests/node and, when it has a
#     package.json, tests/e2e (both from their committed package-lock.json).
#   - cargo-fuzz, only when fuzz/ exists and a nightly toolchain is installed;
#     otherwise fuzzing is covered by the proptest-based tests (notice only).
#
# Environment: WISP_SKIP_APT=1 skips the Debian packages (e.g. on a machine
# where you are not root).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[install-deps] %s\n' "$*"; }

# PIDs of redis-server and nginx processes, space-separated.
service_pids() {
  { pgrep -x redis-server || true; pgrep -x nginx || true; } | tr '\n' ' '
}

export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_ROOT_USER_ACTION=ignore
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

# --- Debian packages -------------------------------------------------------
apt_packages=()
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
# redis-cli builds the Redis Cluster of the cluster tests (a dependency of redis-server, said here).
command -v redis-cli >/dev/null 2>&1 || apt_packages+=(redis-tools)
# nginx lives in /usr/sbin, which a non-login PATH may lack.
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || apt_packages+=(nginx)
command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)

if [[ ${#apt_packages[@]} -gt 0 && "${WISP_SKIP_APT:-0}" != 1 ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    log "not root: cannot install ${apt_packages[*]} (tests that need them will say so)"
  else
    log "apt-get install ${apt_packages[*]}"
    # Keep the packages' services from starting as daemons on their default
    # ports (invoke-rc.d honours policy-rc.d exit status 101 = "forbidden").
    # Only a policy-rc.d we created is removed again.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
      printf '#!/bin/sh\nexit 101\n' >"$policy"
      chmod 755 "$policy"
      created_policy=1
    fi
    # Service PIDs that existed before, so we stop only what this run started.
    before_pids=" $(service_pids) "
    rc=0
    {
      apt-get update -qq &&
        apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
    } || rc=$?
    if [[ $created_policy -eq 1 ]]; then rm -f "$policy"; fi
    # Belt and braces: if a service started anyway (no invoke-rc.d on this
    # image), stop the processes that were not there before, by PID.
    for pid in $(service_pids); do
      if [[ "$before_pids" != *" $pid "* ]]; then
        log "stopping $(cat "/proc/$pid/comm" 2>/dev/null || echo '?') (pid $pid) started by the package install"
        kill "$pid" 2>/dev/null || true
      fi
    done
    if [[ $rc -ne 0 ]]; then
      log "apt-get failed (status $rc)"
      exit "$rc"
    fi
  fi
else
  log "Debian packages: nothing to install"
fi

# --- Python test clients ---------------------------------------------------
req=tests/py/requirements.txt
if [[ -f $req ]]; then
  # `pip install` of satisfied == pins is a fast no-op, but it still prints;
  # check first so a warm machine stays quiet.
  if python3 - "$req" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, want = line.split("==")
    if version(name.strip()) != want.strip():
        sys.exit(1)
PY
    log "python: $req already satisfied"
  else
    log "pip install -r $req"
    python3 -m pip install -q -r "$req" ||
      python3 -m pip install -q --break-system-packages -r "$req"
  fi
fi

# --- Node test clients -----------------------------------------------------
npm_ci() {
  local dir=$1
  [[ -f $dir/package.json ]] || return 0
  if [[ ! -f $dir/package-lock.json ]]; then
    log "$dir has no package-lock.json: npm install (commit the lock file)"
    (cd "$dir" && npm install --no-audit --no-fund)
    return
  fi
  # npm ci wipes node_modules; skip it when the lock file has not changed
  # since the last install here.
  local stamp=$dir/node_modules/.wisp-lock-sha256
  local sha
  sha=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [[ -f $stamp && "$(cat "$stamp")" == "$sha" ]]; then
    log "node: $dir/node_modules up to date"
    return 0
  fi
  log "npm ci in $dir"
  (cd "$dir" && npm ci --no-audit --no-fund)
  echo "$sha" >"$stamp"
}
npm_ci tests/node
npm_ci tests/e2e

# --- cargo-fuzz (optional) -------------------------------------------------
if [[ -d fuzz ]]; then
  if command -v cargo-fuzz >/dev/null 2>&1; then
    log "cargo-fuzz: already installed"
  elif rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    log "cargo install cargo-fuzz (nightly toolchain found)"
    cargo install --locked cargo-fuzz
  else
    log "notice: no nightly toolchain, so no cargo-fuzz; fuzzing is covered by the proptest tests"
  fi
fi

log "done"
