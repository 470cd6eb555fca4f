#!/usr/bin/env bash
# W3 on this CPU, repeated, beside PyTorch: the bench's W3 rows (plain model,
# DataParallelTrainer x2 with the optimizer step on the first device or sharded, SGD and Adam,
# and the ceiling) on Flex built with and without its AVX-512 kernels (burn-flex `x86-v4`),
# on burn-ndarray, then PyTorch's W3 (benchmarks/pytorch_w3.py), `runs` times in a row, so that
# the machine's drift between runs touches every configuration alike.
#
#   scripts/bench-w3-cpu.sh [runs] [out-dir]     # default 3 runs, benchmarks/runs/w3-cpu-DATE
#
# Flex without `x86-v4` is built from a copy of the workspace with that feature removed, in its
# own target folder. PyTorch is skipped (with a note) where `import torch` fails. Each run's
# Markdown tables and JSON reports land in the output folder; BENCHMARKS.md records the figures.
set -eu
runs=${1:-3}
out=${2:-benchmarks/runs/w3-cpu-$(date +%F)}
mkdir -p "$out"
root=$(pwd)
features=(--no-default-features --features flex,mimalloc)
cargo build --release -p dp-tools "${features[@]}" --bin bench >&2
v4="$root/target/release/bench"
# The same bench without Flex's AVX-512 kernels, built apart.
avx2_tree=$(mktemp -d)
trap 'rm -rf "$avx2_tree"' EXIT
git ls-files -z | xargs -0 -I{} cp --parents {} "$avx2_tree"
sed -i 's/, "burn-flex\/x86-v4"//' "$avx2_tree/crates/backend/Cargo.toml"
grep -q '^flex = .*x86-v4' "$avx2_tree/crates/backend/Cargo.toml" && { echo "could not remove x86-v4" >&2; exit 1; }
(cd "$avx2_tree" && CARGO_TARGET_DIR="$root/target/bench-avx2" cargo build --release \
  -p dp-tools "${features[@]}" --bin bench >&2)
avx2="$root/target/bench-avx2/release/bench"
cargo build --release -p dp-tools --bin bench --target-dir target/bench-ndarray >&2
ndarray="$root/target/bench-ndarray/release/bench"
w3=(--workloads w3 --devices 2 --burn-train false --seconds 3)
for run in $(seq "$runs"); do
  for kind in flex-avx512 flex-avx2 ndarray; do
    case $kind in
      flex-avx512) bin=$v4 ;;
      flex-avx2) bin=$avx2 ;;
      ndarray) bin=$ndarray ;;
    esac
    echo "== run $run: $kind" >&2
    "$bin" "${w3[@]}" --json "$out/$kind-$run.json" --markdown "$out/$kind-$run.md" >/dev/null
  done
  rm -f "$out/pytorch-$run.json"
  if python3 -c 'import torch' 2>/dev/null; then
    echo "== run $run: pytorch" >&2
    python3 benchmarks/pytorch_w3.py --seconds 3 --json "$out/pytorch-$run.json" \
      > "$out/pytorch-$run.md" 2>"$out/pytorch-$run.err" || echo "PyTorch run $run failed" >&2
  else
    echo "PyTorch not importable: skipped" >&2
  fi
done
# One line per configuration: samples/s of every run.
python3 - "$out" "$runs" <<'PY'
import json, sys, os
out, runs = sys.argv[1], int(sys.argv[2])
rows = {}
for run in range(1, runs + 1):
    for kind in ["flex-avx512", "flex-avx2", "ndarray"]:
        path = os.path.join(out, f"{kind}-{run}.json")
        if not os.path.exists(path):
            continue
        for m in json.load(open(path))["measurements"]:
            label = f"{kind} | {m['spec']['runner']} x{m['spec']['devices']}, threads {m['spec']['threads']}"
            rows.setdefault(label, []).append(round(m["rows_per_second"]))
    path = os.path.join(out, f"pytorch-{run}.json")
    if os.path.exists(path):
        for c in json.load(open(path))["configurations"]:
            rows.setdefault(f"pytorch | {c['label']}", []).append(round(c["samples_per_second"]))
for label, values in rows.items():
    print(f"| {label} | {' / '.join(str(v) for v in values)} |")
PY
