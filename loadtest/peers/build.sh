#!/usr/bin/env bash
# Build the comparison peers (release): all three, or those named
# (`build.sh floor`). Idempotent: cargo and npm only redo what changed.
# Exits non-zero on the first failure.
#   tokio-peer/target/release/tokio-peer
#   floor/target/release/floor
#   node-peer/node_modules (run: node node-peer/server.mjs)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
wanted=" ${*:-tokio-peer floor node-peer} "

for crate in tokio-peer floor; do
    [[ "$wanted" == *" $crate "* ]] || continue
    echo "==> cargo build --release ($crate)"
    # Each peer is its own workspace with its own target dir, so building it
    # never touches the Wisp workspace or its target/.
    (cd "$here/$crate" && CARGO_TARGET_DIR="$here/$crate/target" \
        cargo build --release --locked --quiet)
    test -x "$here/$crate/target/release/$crate"
done

if [[ "$wanted" == *" node-peer "* ]]; then
echo "==> npm install (node-peer)"
command -v node >/dev/null || { echo "build.sh: node is not installed" >&2; exit 1; }
(cd "$here/node-peer" && npm install --no-audit --no-fund --loglevel=error)
node -e "import('$here/node-peer/node_modules/ws/wrapper.mjs').then(() => {})"
fi

echo "peers built:"
echo "  $here/tokio-peer/target/release/tokio-peer [ADDR] [--threads N]"
echo "  $here/floor/target/release/floor [ADDR] [--immediate]"
echo "  node $here/node-peer/server.mjs [ADDR] [--broadcast cork|frame|buffer|string] [--deflate]"
