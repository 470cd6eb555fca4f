#!/usr/bin/env bash
# What SyncBatchNorm costs: the `train` example's CNN (batch norm in both convolution blocks)
# with Burn's BatchNorm and with SyncBatchNorm, on 2 devices in one process and on 2 MPI ranks
# of one device each, samples/s of the last epoch (the first warms up).
#
#   scripts/bench-sync-bn.sh [runs]        # builds `train` in release with `mpi`
#
# Prints one line per configuration and run; BENCHMARKS.md records the figures. The exchanges
# each step adds are counted by `dist_check --model sync-cnn` (its PASS line) and listed there.
set -eu
runs=${1:-2}
cargo build --release -p dp-tools --features mpi --bin train >&2
train=target/release/train
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# 8192 synthetic 8x8 images (64 steps of 128 per epoch), 2 epochs.
cat > "$tmp/cnn.json" <<'JSON'
{"model": "cnn", "images": {"train_size": 8192, "test_size": 512}, "epochs": 2, "batch_size": 128}
JSON
common=(--config "$tmp/cnn.json")
last_rate() {
  python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["epochs"][-1]["samples_per_second"]))' "$1/report.json"
}
for run in $(seq "$runs"); do
  for norm in batch sync; do
    flag=()
    [ "$norm" = sync ] && flag=(--sync-bn)
    out="$tmp/$norm-devices-$run"
    "$train" "${common[@]}" "${flag[@]}" --devices 2 --out "$out" >/dev/null
    echo "run $run | 2 devices, 1 process | ${norm}norm | $(last_rate "$out") samples/s"
    out="$tmp/$norm-ranks-$run"
    mpirun --allow-run-as-root --oversubscribe -n 2 "$train" --mpi "${common[@]}" "${flag[@]}" \
      --devices 1 --out "$out" >/dev/null
    echo "run $run | 2 MPI ranks x 1 device | ${norm}norm | $(last_rate "$out") samples/s"
  done
done
