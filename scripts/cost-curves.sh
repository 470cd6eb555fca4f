#!/usr/bin/env bash
# The cost curves of BENCHMARKS.md ("Scaling"): `scale`'s points on both CPU backends, each
# swept along one axis from W3's point (1.3M parameters, batch 256, one replica, one rank):
# batch 32 to 4096, parameters 0.1M to 25.2M (mlp-48 to mlp-4096), 1 to 8 replicas in one
# process, 1 to 4 MPI ranks over shared memory (the network's curves are
# scripts/emulated-cluster.sh's). One JSON line per point in OUT/curves.jsonl.
#
#   scripts/cost-curves.sh [out-dir]
#
# Builds `scale` with `mpi` for Flex (target/release) and burn-ndarray (target/bench-ndarray).
set -euo pipefail
out=${1:-benchmarks/runs/scaling-$(date +%F)}
mkdir -p "$out"
cargo build --release -p dp-tools --no-default-features --features flex,mimalloc,mpi --bin scale >&2
cargo build --release -p dp-tools --features mpi --bin scale --target-dir target/bench-ndarray >&2
seconds=${SCALE_SECONDS:-2}
# Each point's line, kept if the script stops early (each point has 15 minutes).
raw="$out/curves.partial"
rm -f "$raw"

run() {
  echo "== $*" >&2
  timeout 900 "$@" | grep '^POINT ' | tee -a "$raw" >&2
}

for kind in flex ndarray; do
  case $kind in
    flex) bin=target/release/scale ;;
    ndarray) bin=target/bench-ndarray/release/scale ;;
  esac
  common=(--seconds "$seconds" --label "$kind")
  for devices in 1 2; do
    for batch in 32 64 128 256 512 1024 2048 4096; do
      run "$bin" "${common[@]}" --batch "$batch" --devices "$devices"
    done
    for model in mlp-48 mlp-160 mlp-512 mlp-1536 mlp-4096; do
      run "$bin" "${common[@]}" --model "$model" --devices "$devices"
    done
  done
  for devices in 4 8; do
    run "$bin" "${common[@]}" --devices "$devices"
  done
  for ranks in 1 2 4; do
    run mpirun --allow-run-as-root --oversubscribe -n "$ranks" --mca btl vader,self \
      -x OMPI_MCA_btl_vader_single_copy_mechanism=none "$bin" --mpi "${common[@]}"
  done
done
sed 's/^POINT //' "$raw" > "$out/curves.jsonl"
rm -f "$raw"
echo "wrote $out/curves.jsonl" >&2
