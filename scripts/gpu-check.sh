#!/usr/bin/env bash
# The CUDA checks, for a machine with an NVIDIA GPU and no Rust toolchain.
#
# Build here (any machine with the toolchain; no GPU or CUDA toolkit needed):
#   scripts/gpu-build.sh                      # gpu-bin.tar.gz: data_parallelism, check, bench, learner
#   GPU_BUILD_MPI=1 scripts/gpu-build.sh      # with dist_check, for the NCCL checks on a
#                                             # machine that has Open MPI (`mpirun`) and libnccl
# Run there (BIN is that archive, or a folder holding the binaries):
#   scripts/gpu-check.sh gpu-bin.tar.gz gpu-results
#
# It runs the tutorial example on the GPUs, the forward-equivalence and training-step checks on
# CUDA (the first GPU listed four times, so that several replicas share it, then every GPU), the
# burn-train program (`learner`, SGD) on burn-train's SingleDevice and on DataParallelStrategy
# (its summaries' parameters are to be compared), and the W3 (with burn-train's MultiDevice and
# DataParallelStrategy beside), W4 (unequal replicas, three splits), W5 (the CNN from an image
# folder on disk against the same images in memory, prefetch on and off), W2 and W1 benchmarks (one run each, so that a
# run cut short loses only its own figures), and writes everything to the results folder,
# summary.txt first. If the binaries fall back to the CPU (no usable driver, NVRTC or GPU), the
# first step fails with the reason and the script stops there instead of spending the GPU's
# time on CPU figures.
#
# Environment:
#   GPU_CHECK_SECONDS   wall-clock budget for the whole script (default 480): each step's time
#                       limit is cut to what is left, and steps that no longer fit are skipped
#                       and said so, so the script ends, with its summary, inside the budget.
#   GPU_BENCH_SECONDS   seconds timed per benchmark configuration (default 2).
#   GPU_CHECK_ARCHIVE   a .tar.gz of the results folder, rewritten after every step (for
#                       runners that bring back only a few files, or may stop the script);
#                       summary.txt is copied next to it.
#   GPU_CHECK_ALLOW_CPU=1  runs everything even where the binaries fall back to the CPU (to try
#                       the script on a machine without a GPU).
set -u
bin=${1:-gpu-bin}
out=${2:-gpu-results}
seconds=${GPU_BENCH_SECONDS:-2}
budget=${GPU_CHECK_SECONDS:-480}
archive=${GPU_CHECK_ARCHIVE:-}
deadline=$((SECONDS + budget))
mkdir -p "$out"
out=$(cd "$out" && pwd -P)
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
status=0

pack() {  # rewrites the archive, if one was asked for
  [ -n "$archive" ] || return 0
  if tar -czf "$archive.tmp" -C "$(dirname "$out")" "$(basename "$out")" 2>/dev/null \
      && mv "$archive.tmp" "$archive"; then
    cp "$summary" "$(dirname "$archive")/summary.txt" 2>/dev/null || true
  else
    echo "cannot write the archive $archive" >&2; status=1
  fi
}

scratch=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
if [ -f "$bin" ]; then
  mkdir "$scratch/bin" && tar -xzf "$bin" -C "$scratch/bin" || { note "cannot unpack $bin"; pack; exit 1; }
  note "binaries: $bin"
  bin="$scratch/bin"
fi
# The CUDA API version the binaries were built for (written by gpu-build.sh), e.g. 13000.
built_for=$(cat "$bin/cuda-version.txt" 2>/dev/null || echo unknown)
note "built for CUDA API: $built_for"
major=${built_for%???}

# Burn's CUDA runtime opens libcuda (the driver) and libnvrtc (to compile kernels) at run time,
# under the names cudarc tries (libnvrtc.so, libnvrtc.so.<major>, ...); NCCL as libnccl.so,
# which only NCCL's -dev package provides. For each, a link with the plain name is made (in a
# scratch folder that goes first on LD_LIBRARY_PATH) to the first file found, preferring the
# major version the binaries were built for; the folders the links point into follow the
# existing LD_LIBRARY_PATH (the loader's own folders need no entry), so that libnvrtc finds its
# libnvrtc-builtins.
links="$scratch/libs" && mkdir "$links"
candidates=(/usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu /usr/lib64
  /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64
  /usr/local/cuda-*/targets/x86_64-linux/lib /opt/conda/lib
  /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib
  /usr/local/lib/python3*/dist-packages/nvidia/*/lib /usr/lib/python3*/site-packages/nvidia/*/lib)
if command -v nvcc >/dev/null 2>&1; then
  candidates+=("$(dirname "$(command -v nvcc)")/../lib64")
fi
path=""
for dir in "${candidates[@]}"; do
  [ -d "$dir" ] || continue
  dir=$(cd "$dir" && pwd -P)
  case ":$path:" in *":$dir:"*) continue ;; esac
  found=no
  for lib in cuda nvrtc nccl; do
    [ -e "$links/lib$lib.so" ] && continue
    file=""
    for f in "$dir"/lib$lib.so."$major"* "$dir"/lib$lib.so "$dir"/lib$lib.so.*; do
      [ -e "$f" ] && { file=$f; break; }  # -e skips dangling links and unmatched patterns
    done
    [ -n "$file" ] || continue
    found=yes
    ln -s "$file" "$links/lib$lib.so"
    note "lib$lib: $file"
  done
  case "$dir" in /usr/lib/x86_64-linux-gnu|/usr/lib64|/lib/x86_64-linux-gnu|/lib64) continue ;; esac
  [ $found = yes ] && path="${path:+$path:}$dir"
done
for lib in cuda nvrtc nccl; do
  [ -e "$links/lib$lib.so" ] || note "lib$lib: not found"
done
export LD_LIBRARY_PATH="$links${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}${path:+:$path}"
note "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

{ nvidia-smi --query-gpu=index,name,memory.total,driver_version,compute_cap --format=csv \
  || echo "nvidia-smi failed"; } > "$out/gpus.csv" 2>&1
tee -a "$summary" < "$out/gpus.csv"
{ nvidia-smi | grep -o "CUDA Version: [0-9.]*" | tee -a "$summary"; } 2>/dev/null
gpus=$({ nvidia-smi --query-gpu=index --format=csv,noheader | wc -l; } 2>/dev/null)
note "GPUs: $gpus"
pack

fell_back() { grep -q "No CUDA GPU available" "$out/$1.txt" 2>/dev/null && [ "${GPU_CHECK_ALLOW_CPU:-0}" != 1 ]; }

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
  if fell_back "$name"; then
    note "FAIL $name: ran on the CPU, not on CUDA ($(grep -h -m1 "CUDA:" "$out/$name.txt" || echo "no reason given"))"
    status=1
  elif [ $rc -eq 0 ]; then note "PASS $name ($((SECONDS - start)) s)"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
    note "FAIL $name (timed out after $limit s, or killed): see $name.txt"; status=1
  else note "FAIL $name (exit $rc, $((SECONDS - start)) s): see $name.txt"; status=1; fi
  pack
}

step tutorial-all-gpus        120 "$bin/data_parallelism"
if fell_back tutorial-all-gpus; then
  note "STOP: the binaries do not run on CUDA here; nothing else was run (GPU_CHECK_ALLOW_CPU=1 runs it all on the CPU)"
  pack
  exit 1
fi
step check-4-replicas-gpu0    240 env CUDA_VISIBLE_DEVICES=0 "$bin/check" --devices 4
if [ "$gpus" -gt 1 ]; then
  step check-all-gpus         240 "$bin/check" --devices "$gpus"
else
  note "SKIP check-all-gpus: fewer than two GPUs"
fi
# The burn-train program: parameters in learner-*.json, to compare with the single-device run's.
learner_args=(--optimizer sgd --epochs 2 --train-size 600)
step learner-single-gpu0      120 env CUDA_VISIBLE_DEVICES=0 "$bin/learner" --strategy single \
                                  "${learner_args[@]}" --dir "$scratch/learner-single" --summary "$out/learner-single.json"
step learner-4-replicas-gpu0  120 env CUDA_VISIBLE_DEVICES=0 "$bin/learner" --devices 4 \
                                  "${learner_args[@]}" --dir "$scratch/learner-4" --summary "$out/learner-4-replicas.json"
if [ "$gpus" -gt 1 ]; then
  step learner-all-gpus       120 "$bin/learner" --devices "$gpus" \
                                  "${learner_args[@]}" --dir "$scratch/learner-all" --summary "$out/learner-all-gpus.json"
fi
for w in w3 w4 w5 w2 w1; do
  step "bench-$w"             240 "$bin/bench" --workloads "$w" --devices "1,2,4" --seconds "$seconds" \
                                  --json "$out/bench-$w.json" --markdown "$out/bench-$w.md"
done
step tutorial-4-replicas      120 "$bin/data_parallelism" --devices 4

# NCCL (gradients summed in GPU memory): one rank per GPU, only where dist_check was built and
# Open MPI is installed; skipped (and said so) otherwise.
if [ -x "$bin/dist_check" ] && command -v mpirun >/dev/null 2>&1; then
  # Containers often forbid the cross-memory attach Open MPI uses between local ranks.
  mpi=(env OMPI_MCA_btl_vader_single_copy_mechanism=none mpirun --allow-run-as-root --oversubscribe)
  step nccl-1-rank            120 "${mpi[@]}" -n 1 "$bin/dist_check" --transport nccl --tolerance 1e-4
  if [ "$gpus" -gt 1 ]; then
    step nccl-all-gpus        240 "${mpi[@]}" -n "$gpus" "$bin/dist_check" --transport nccl --tolerance 1e-4
    # ZeRO stage 1 through NCCL's in-place reduce-scatter and all-gather, with accumulation.
    step nccl-sharded-adam    240 "${mpi[@]}" -n "$gpus" "$bin/dist_check" --transport nccl --tolerance 1e-4 \
                                  --sharded --optimizer adam --steps 20 --accumulate 2
  else
    note "SKIP nccl-all-gpus: fewer than two GPUs"
  fi
  step mpi-host-2-ranks       120 "${mpi[@]}" -n 2 "$bin/dist_check" --transport mpi --tolerance 1e-4
else
  note "SKIP nccl: needs dist_check in the binaries (GPU_BUILD_MPI=1 scripts/gpu-build.sh) and mpirun on this machine"
fi
[ -n "$archive" ] && note "archive: $archive"
pack
exit $status
