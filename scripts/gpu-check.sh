#!/usr/bin/env bash
# The CUDA checks, for a machine with an NVIDIA GPU and no Rust toolchain.
#
# Build here (any machine with the toolchain; no GPU or CUDA toolkit needed):
#   cargo build --release --features cuda --bin data_parallelism --bin check --bin bench
#   mkdir -p gpu-bin && cp target/release/{data_parallelism,check,bench} gpu-bin/
# and, for the NCCL checks on a machine that has Open MPI (`mpirun`) and libnccl:
#   cargo build --release --features cuda,mpi --bin dist_check && cp target/release/dist_check gpu-bin/
# Run there:
#   scripts/gpu-check.sh gpu-bin gpu-results
#
# It runs the tutorial example on the GPUs, the forward-equivalence and training-step checks on
# CUDA (the first GPU listed four times, so that several replicas share it, then every GPU), and
# the W2/W3 benchmarks, and writes everything to the results folder (summary.txt first).
set -u
bin=${1:-gpu-bin}
out=${2:-gpu-results}
seconds=${GPU_BENCH_SECONDS:-2}
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"

# Burn's CUDA runtime loads libcuda (the driver) and libnvrtc (to compile kernels) at run time.
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu \
           /usr/lib64 /usr/local/nvidia/lib64 /usr/local/cuda-*/lib64 /opt/conda/lib; do
  if [ -d "$dir" ] && ls "$dir"/libnvrtc.so* "$dir"/libcuda.so* >/dev/null 2>&1; then
    LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
done
# cudarc opens NCCL as `libnccl.so`, which only the -dev package provides; where only
# `libnccl.so.2` exists (the runtime package, or pip's nvidia-nccl), a link named libnccl.so is
# made in the results folder.
nccl=$(ls /usr/lib/x86_64-linux-gnu/libnccl.so* /usr/local/cuda/lib64/libnccl.so* /opt/conda/lib/libnccl.so* \
          /usr/local/lib/python3*/dist-packages/nvidia/nccl/lib/libnccl.so* \
          /usr/lib/python3*/site-packages/nvidia/nccl/lib/libnccl.so* 2>/dev/null | head -n 1)
if [ -n "$nccl" ]; then
  mkdir -p "$out/nccl-link" && ln -sf "$nccl" "$out/nccl-link/libnccl.so"
  LD_LIBRARY_PATH="$(cd "$out/nccl-link" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
echo "NCCL: ${nccl:-not found}" >> "$summary"
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >> "$summary"

{ nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi failed"; } \
  | tee "$out/gpus.csv" >> "$summary"
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
echo "GPUs: $gpus" >> "$summary"

status=0
step() {  # step NAME TIMEOUT COMMAND...: runs a command, keeps its output, notes the result.
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then echo "PASS $name ($((SECONDS - start)) s)" >> "$summary"
  else echo "FAIL $name (exit $rc, $((SECONDS - start)) s): see $name.txt" >> "$summary"; status=1; fi
}

step tutorial-all-gpus        120 "$bin/data_parallelism"
step tutorial-4-replicas      120 "$bin/data_parallelism" --devices 4
step check-4-replicas-gpu0    300 env CUDA_VISIBLE_DEVICES=0 "$bin/check" --devices 4
if [ "$gpus" -gt 1 ]; then
  step check-all-gpus         300 "$bin/check" --devices "$gpus"
fi
step bench-cuda               600 "$bin/bench" --workloads w1,w2,w3 --devices "1,2,4" --seconds "$seconds" \
                                  --json "$out/bench-cuda.json" --markdown "$out/bench-cuda.md"

# NCCL (gradients summed in GPU memory): one rank per GPU, only where dist_check was built and
# Open MPI is installed; skipped (and said so) otherwise.
if [ -x "$bin/dist_check" ] && command -v mpirun >/dev/null 2>&1; then
  mpi=(mpirun --allow-run-as-root --oversubscribe)
  step nccl-1-rank            120 "${mpi[@]}" -n 1 "$bin/dist_check" --transport nccl --tolerance 1e-4
  if [ "$gpus" -gt 1 ]; then
    step nccl-all-gpus        300 "${mpi[@]}" -n "$gpus" "$bin/dist_check" --transport nccl --tolerance 1e-4
  fi
  step mpi-host-2-ranks       120 "${mpi[@]}" -n 2 "$bin/dist_check" --transport mpi --tolerance 1e-4
else
  echo "SKIP nccl: needs $bin/dist_check (--features cuda,mpi) and mpirun on this machine" >> "$summary"
fi

cat "$summary"
exit $status
