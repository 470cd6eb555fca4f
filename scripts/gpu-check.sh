#!/usr/bin/env bash
# The CUDA checks, for a machine with an NVIDIA GPU and no Rust toolchain.
#
# Build here (any machine with the toolchain; no GPU or CUDA toolkit needed):
#   scripts/gpu-build.sh                      # gpu-bin.tar.gz: data_parallelism, check, bench
#   GPU_BUILD_MPI=1 scripts/gpu-build.sh      # with dist_check, for the NCCL checks on a
#                                             # machine that has Open MPI (`mpirun`) and libnccl
# Run there (BIN is that archive, or a folder holding the binaries):
#   scripts/gpu-check.sh gpu-bin.tar.gz gpu-results
#
# It runs the tutorial example on the GPUs, the forward-equivalence and training-step checks on
# CUDA (the first GPU listed four times, so that several replicas share it, then every GPU), and
# the W3, W2 and W1 benchmarks (one run each, so that a run cut short loses only its own
# figures), and writes everything to the results folder, summary.txt first.
#
# Environment:
#   GPU_CHECK_SECONDS   wall-clock budget for the whole script (default 480): each step's time
#                       limit is cut to what is left, and steps that no longer fit are skipped
#                       and said so, so the script always ends and writes its summary.
#   GPU_BENCH_SECONDS   seconds timed per benchmark configuration (default 2).
#   GPU_CHECK_ARCHIVE   if set, a .tar.gz of the results folder is written there at the end
#                       (for runners that bring back only a few files).
set -u
bin=${1:-gpu-bin}
out=${2:-gpu-results}
seconds=${GPU_BENCH_SECONDS:-2}
budget=${GPU_CHECK_SECONDS:-480}
deadline=$((SECONDS + budget))
mkdir -p "$out"
out=$(cd "$out" && pwd)
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

# Burn's CUDA runtime opens libcuda (the driver) and libnvrtc (to compile kernels) at run time,
# under the names cudarc tries (libnvrtc.so, libnvrtc.so.<major>, ...); NCCL as libnccl.so,
# which only NCCL's -dev package provides. Every folder holding one of them joins
# LD_LIBRARY_PATH (CUDA's stub folders excepted: their libcuda fails at run time), and links
# with the plain names are made to the first versioned file found, outside the results.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
if [ -f "$bin" ]; then
  mkdir "$scratch/bin" && tar -xzf "$bin" -C "$scratch/bin" || { note "cannot unpack $bin"; exit 1; }
  bin="$scratch/bin"
fi
links="$scratch/libs" && mkdir "$links"
candidates=(/usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64
  /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64
  /usr/local/cuda-*/targets/x86_64-linux/lib /opt/conda/lib
  /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib /opt/*/.venv/lib/python3*/site-packages/nvidia/cu*/lib
  /usr/local/lib/python3*/dist-packages/nvidia/*/lib /usr/lib/python3*/site-packages/nvidia/*/lib)
if command -v nvcc >/dev/null 2>&1; then
  candidates+=("$(dirname "$(command -v nvcc)")/../lib64")
fi
path=""
for dir in "${candidates[@]}"; do
  case "$dir" in */stubs*) continue ;; esac
  [ -d "$dir" ] || continue
  found=no
  for lib in cuda nvrtc nccl; do
    file=$(ls "$dir"/lib$lib.so* 2>/dev/null | sort | head -n 1)
    [ -n "$file" ] || continue
    found=yes
    if [ ! -e "$links/lib$lib.so" ]; then
      ln -s "$(cd "$(dirname "$file")" && pwd)/$(basename "$file")" "$links/lib$lib.so"
      note "lib$lib: $file"
    fi
  done
  [ $found = yes ] && path="${path:+$path:}$(cd "$dir" && pwd)"
done
for lib in cuda nvrtc nccl; do
  [ -e "$links/lib$lib.so" ] || note "lib$lib: not found"
done
export LD_LIBRARY_PATH="$links${path:+:$path}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
note "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

{ nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi failed"; } \
  | tee "$out/gpus.csv" >> "$summary"
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
note "GPUs: $gpus"

status=0
step() {  # step NAME LIMIT COMMAND...: runs a command, keeps its output, notes the result.
  local name=$1 limit=$2; shift 2
  local left=$((deadline - SECONDS - 5))
  if [ "$left" -lt 20 ]; then
    note "SKIP $name: out of time (GPU_CHECK_SECONDS=$budget)"; status=1; return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local start=$SECONDS
  timeout -k 5 "$limit" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then note "PASS $name ($((SECONDS - start)) s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    note "FAIL $name (timed out after $limit s): see $name.txt"; status=1
  else note "FAIL $name (exit $rc, $((SECONDS - start)) s): see $name.txt"; status=1; fi
}

step tutorial-all-gpus        120 "$bin/data_parallelism"
step check-4-replicas-gpu0    240 env CUDA_VISIBLE_DEVICES=0 "$bin/check" --devices 4
if [ "$gpus" -gt 1 ]; then
  step check-all-gpus         240 "$bin/check" --devices "$gpus"
fi
for w in w3 w2 w1; do
  step "bench-$w"             240 "$bin/bench" --workloads "$w" --devices "1,2,4" --seconds "$seconds" \
                                  --json "$out/bench-$w.json" --markdown "$out/bench-$w.md"
done
step tutorial-4-replicas      120 "$bin/data_parallelism" --devices 4

# NCCL (gradients summed in GPU memory): one rank per GPU, only where dist_check was built and
# Open MPI is installed; skipped (and said so) otherwise.
if [ -x "$bin/dist_check" ] && command -v mpirun >/dev/null 2>&1; then
  mpi=(mpirun --allow-run-as-root --oversubscribe)
  step nccl-1-rank            120 "${mpi[@]}" -n 1 "$bin/dist_check" --transport nccl --tolerance 1e-4
  if [ "$gpus" -gt 1 ]; then
    step nccl-all-gpus        240 "${mpi[@]}" -n "$gpus" "$bin/dist_check" --transport nccl --tolerance 1e-4
  fi
  step mpi-host-2-ranks       120 "${mpi[@]}" -n 2 "$bin/dist_check" --transport mpi --tolerance 1e-4
else
  note "SKIP nccl: needs $bin/dist_check (--features cuda,mpi) and mpirun on this machine"
fi

if [ -n "${GPU_CHECK_ARCHIVE:-}" ]; then
  tar -czf "$GPU_CHECK_ARCHIVE" -C "$(dirname "$out")" "$(basename "$out")" \
    && note "archive: $GPU_CHECK_ARCHIVE"
fi
exit $status
