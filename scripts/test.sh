#!/usr/bin/env bash
# test.sh — the one command that runs every Wisp test, from a fresh machine.
#
#   bash scripts/test.sh
#
# Steps, in order, each with a header and its time; the first failure stops
# the run with a non-zero status:
#   install-deps, build (release, all targets), fmt, clippy, cargo tests
#   (nextest, else cargo test), python clients (tests/py), node clients
#   (tests/node), e2e browser tests (tests/e2e, when present), autobahn
#   (tests/autobahn/run.sh), fuzz (scripts/fuzz.sh), then a check that the
#   tested binary is the one `cargo run --release` runs (nothing rebuilds).
#
# A step that had nothing to do (no ../shared/autobahn3, no nightly for
# cargo-fuzz) writes why to $WISP_SKIP_FILE and exits 0: the summary then
# says "skipped (why)", not "ok".
#
# Every process a step starts is in that step's process group, and the group
# is ended when the step ends or this script is interrupted.
#
# Environment:
#   WISP_BIN            exported to the tests: target/release/wisp, or
#                       $WISP_TEST_BIN when set (e.g. a debug build)
#   WISP_SKIP_INSTALL=1 skip scripts/install-deps.sh
#   WISP_ONLY="py node" run only these steps (names as in the summary)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export WISP_BIN="${WISP_TEST_BIN:-$ROOT/target/release/wisp}"
export PYTHONDONTWRITEBYTECODE=1
export NODE_NO_WARNINGS=1

step_pid=""
results=()
passed=0 failed=0 skipped=0
t_start=$(date +%s)

# group_alive PGID — does the process group still hold a live (non-zombie) process?
group_alive() {
  ps -e -o pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { f = 1 } END { exit !f }'
}

# cleanup — end whatever the current step's process group still holds:
# SIGTERM, up to 8 s to exit (wisp shuts down within 5 s), then SIGKILL.
cleanup() {
  [[ -n "$step_pid" ]] || return 0
  local pgid=$step_pid
  step_pid=""
  if group_alive "$pgid"; then
    echo "test.sh: ending leftover processes of group $pgid"
    kill -TERM -- "-$pgid" 2>/dev/null
    for _ in $(seq 1 80); do
      group_alive "$pgid" || break
      sleep 0.1
    done
    kill -KILL -- "-$pgid" 2>/dev/null
  fi
  return 0
}
trap 'cleanup' EXIT
trap 'echo; echo "test.sh: interrupted"; cleanup; exit 130' INT TERM

fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

summary() {
  echo
  echo "================================================================"
  echo " summary ($(fmt_secs $(($(date +%s) - t_start))) in all)"
  for r in "${results[@]}"; do echo "   $r"; done
  echo "================================================================"
  local line="steps: $passed passed, $failed failed"
  [[ $skipped -gt 0 ]] && line+=", $skipped skipped"
  echo "$line"
}

selected() {
  [[ -z "${WISP_ONLY:-}" ]] && return 0
  [[ " $WISP_ONLY " == *" $1 "* ]]
}

# step NAME COMMAND... — run COMMAND in its own process group, timed.
step() {
  local name=$1
  shift
  if ! selected "$name"; then
    return 0
  fi
  echo
  echo "==> [$name] $*"
  local t0 rc skip_file
  t0=$(date +%s)
  skip_file=$(mktemp)
  # setsid: the step and everything it starts get their own process group,
  # so cleanup can end stray servers or browsers by the group's id.
  WISP_SKIP_FILE="$skip_file" setsid "$@" </dev/null &
  step_pid=$!
  wait "$step_pid"
  rc=$?
  # A finished step may have left children behind (a server a test forgot).
  cleanup
  local dt=$(($(date +%s) - t0))
  local why
  why=$(head -n 1 "$skip_file" 2>/dev/null)
  rm -f "$skip_file"
  if [[ $rc -eq 0 && -n "$why" ]]; then
    echo "<== [$name] skipped: $why"
    results+=("$(printf '%-10s skipped (%s)' "$name" "$why")")
    skipped=$((skipped + 1))
  elif [[ $rc -eq 0 ]]; then
    echo "<== [$name] ok in $(fmt_secs $dt)"
    results+=("$(printf '%-10s ok      %s' "$name" "$(fmt_secs $dt)")")
    passed=$((passed + 1))
  else
    echo "<== [$name] FAILED (status $rc) after $(fmt_secs $dt)"
    results+=("$(printf '%-10s FAILED  %s (status %d)' "$name" "$(fmt_secs $dt)" "$rc")")
    failed=$((failed + 1))
    summary
    exit "$rc"
  fi
}

skip() {
  local name=$1 why=$2
  selected "$name" || return 0
  echo
  echo "==> [$name] skipped: $why"
  results+=("$(printf '%-10s skipped (%s)' "$name" "$why")")
  skipped=$((skipped + 1))
}

if [[ "${WISP_SKIP_INSTALL:-0}" == 1 ]]; then
  skip install "WISP_SKIP_INSTALL=1"
else
  step install bash scripts/install-deps.sh
fi

step build cargo build --release --all-targets --locked
step fmt cargo fmt --all --check
# --workspace: the load generator too (the root package alone is the default).
step clippy cargo clippy --workspace --all-targets --locked -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
  step cargo cargo nextest run --release --locked
else
  step cargo cargo test --release --locked
fi

step py python3 -m pytest tests/py -q
step node node --test tests/node/

if [[ -f tests/e2e/package.json ]] || compgen -G 'tests/e2e/*.test.*' >/dev/null; then
  step e2e node --test tests/e2e/
else
  skip e2e "no tests/e2e"
fi

step autobahn bash tests/autobahn/run.sh
# Bounded fuzzing of the request and frame parsers (skips with a notice
# where no nightly toolchain or cargo-fuzz is installed).
step fuzz bash scripts/fuzz.sh "${WISP_FUZZ_SECONDS:-30}"

# The binary the tests ran (target/release/wisp, built by the build step) must
# be the one `cargo run --release` runs: with resolver 2 (Cargo.toml), the
# dev-dependencies' features are not unified into it, so nothing rebuilds.
# `cargo build -v` prints `Fresh` for what it reuses and `Compiling` for
# what it rebuilds.
no_rebuild='out=$(cargo build --release --locked --bin wisp -v 2>&1) || { echo "$out"; exit 1; }
if grep -E "^ *(Compiling|Dirty) " <<<"$out"; then
  echo "cargo run --release would rebuild the tested binary (above)"
  exit 1
fi
echo "target/release/wisp is fresh: cargo run --release runs the tested binary"'
if [[ -z "${WISP_TEST_BIN:-}" ]]; then
  step no-rebuild bash -c "$no_rebuild"
fi

summary
exit 0
