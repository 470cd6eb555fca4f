#!/usr/bin/env bash
# Runs the W3 benchmark on burn-ndarray 0.21.0 with one change: its matrix product takes a
# 2-D operand as a view instead of copying a transposed one element by element
# (scripts/burn-ndarray-matmul-strides.patch). The workspace is not changed: the patched copy
# is used through `cargo --config patch...`, built in its own target folder.
#
# Usage: scripts/bench-patched-ndarray.sh OUT.json [bench arguments...]
set -euo pipefail
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
  echo "usage: $0 OUT.json [bench arguments...]" >&2
  exit 2
fi
out="$(realpath -m "$1")"
shift
cd "$(dirname "$0")/.."
work="${TMPDIR:-/tmp}/burn-ndarray-patched"
cargo fetch --quiet
registry=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 1 -mindepth 1 -type d \
  -exec test -d {}/burn-ndarray-0.21.0 \; -print -quit)
if [ -z "$registry" ]; then
  echo "burn-ndarray 0.21.0 is not in cargo's registry (cargo fetch failed?)" >&2
  exit 1
fi
rm -rf "$work" && cp -r "$registry/burn-ndarray-0.21.0" "$work"
patch -d "$work" -p1 --quiet < scripts/burn-ndarray-matmul-strides.patch
# The patch is recorded in Cargo.lock while it builds; the lock file is put back afterwards.
cp Cargo.lock "$work.lock"
trap 'cp "$work.lock" Cargo.lock' EXIT
cargo build --release --bin bench --target-dir target/patched-ndarray \
  --config "patch.crates-io.burn-ndarray.path=\"$work\""
target/patched-ndarray/release/bench --workloads w3 --devices 1,2 --json "$out" "$@"
