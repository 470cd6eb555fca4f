#!/usr/bin/env bash
# Runs the W3 benchmark against one of Burn 0.21.0's backend crates with a change applied, to
# measure what a fix proposed upstream would give. The workspace is not changed: the patched copy
# is used through `cargo --config patch...`, built in a target folder of its own.
#
#   scripts/bench-patched-burn.sh burn-ndarray scripts/burn-ndarray-matmul-strides.patch OUT.json
#   scripts/bench-patched-burn.sh burn-flex scripts/burn-flex-empty-no-copy.patch OUT.json
#
# Usage: scripts/bench-patched-burn.sh CRATE PATCH OUT.json [bench arguments...]
set -euo pipefail
if [ $# -lt 3 ] || [[ "$3" == -* ]]; then
  echo "usage: $0 CRATE PATCH OUT.json [bench arguments...]" >&2
  exit 2
fi
crate="$1"
patch_file="$(realpath "$2")"
out="$(realpath -m "$3")"
shift 3
case "$crate" in
  burn-ndarray) features=() ;;
  burn-flex) features=(--features flex) ;;
  *) echo "unknown crate $crate (burn-ndarray or burn-flex)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
work="${TMPDIR:-/tmp}/$crate-patched"
cargo fetch --quiet
registry=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 1 -mindepth 1 -type d \
  -exec test -d "{}/$crate-0.21.0" \; -print -quit)
if [ -z "$registry" ]; then
  echo "$crate 0.21.0 is not in cargo's registry (cargo fetch failed?)" >&2
  exit 1
fi
rm -rf "$work" && cp -r "$registry/$crate-0.21.0" "$work"
patch -d "$work" -p1 --quiet < "$patch_file"
# The patch is recorded in Cargo.lock while it builds; the lock file is put back afterwards.
cp Cargo.lock "$work.lock"
trap 'cp "$work.lock" Cargo.lock' EXIT
cargo build --release -p dp-tools --bin bench "${features[@]}" --target-dir "target/patched-$crate" \
  --config "patch.crates-io.$crate.path=\"$work\""
"target/patched-$crate/release/bench" --workloads w3 --devices 1,2 --json "$out" "$@"
