#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60).
#
#   scripts/fuzz.sh 60
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); when
# either is missing it says so and exits 0, so CI without nightly passes.
# A crash leaves its input in fuzz/artifacts/TARGET/ and exits non-zero:
# turn it into a regression test in tests/fuzz_parsers.rs named for the failure.
set -euo pipefail

secs="${1:-60}"
case "$secs" in
  ''|*[!0-9]*) echo "usage: $0 SECONDS" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/../fuzz"

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz.sh: no nightly toolchain; skipping fuzzing (rustup toolchain install nightly)"
  # Under scripts/test.sh, say "skipped" in its summary rather than "ok".
  [[ -n "${WISP_SKIP_FILE:-}" ]] && echo "no nightly toolchain" >"$WISP_SKIP_FILE"
  exit 0
fi
if ! cargo +nightly fuzz --help >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz not installed; skipping fuzzing (cargo install cargo-fuzz)"
  [[ -n "${WISP_SKIP_FILE:-}" ]] && echo "no cargo-fuzz" >"$WISP_SKIP_FILE"
  exit 0
fi

targets=$(cargo +nightly fuzz list)
for t in $targets; do
  echo "== fuzzing $t for ${secs}s"
  mkdir -p "corpus/$t"
  # -rss_limit_mb guards against a decoder allocating what a header announces.
  cargo +nightly fuzz run "$t" "corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=16384 -print_final_stats=1
done
echo "fuzz.sh: no crashes in:" $targets
