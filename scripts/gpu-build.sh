#!/usr/bin/env bash
# Builds the binaries scripts/gpu-check.sh runs (feature `cuda`; no GPU or CUDA toolkit
# needed here) and packs them, stripped, into one archive for the GPU machine: as built they
# are over 100 MB together, the archive about 20 MB.
#
#   scripts/gpu-build.sh [ARCHIVE]        # default gpu-bin.tar.gz
#   GPU_BUILD_MPI=1 scripts/gpu-build.sh  # also dist_check (features cuda,mpi) for the NCCL
#                                         # checks; it needs Open MPI's libmpi on the GPU machine
#
# The binaries bind the CUDA 13.0 API (CUDARC_CUDA_VERSION=13000), which every driver for CUDA
# 13 serves (`nvidia-smi` prints the driver's as "CUDA Version"); without it and without nvcc,
# cudarc would bind the newest it knows (13.4), which an older driver may lack. For a driver
# of CUDA 12, set e.g. CUDARC_CUDA_VERSION=12080. Changing it rebuilds the CUDA crates.
#
# Then, on the GPU machine: scripts/gpu-check.sh gpu-bin.tar.gz gpu-results
set -euo pipefail
archive=${1:-gpu-bin.tar.gz}
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
bins=(data_parallelism check bench learner)
cargo build --release --features cuda --example data_parallelism
cargo build --release -p dp-tools --features cuda --bin check --bin bench --bin learner
if [ "${GPU_BUILD_MPI:-0}" = 1 ]; then
  cargo build --release -p dp-tools --features cuda,mpi --bin dist_check
  bins+=(dist_check)
fi
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
for name in "${bins[@]}"; do
  if [ "$name" = data_parallelism ]; then
    cp "$target/release/examples/$name" "$staging/"
  else
    cp "$target/release/$name" "$staging/"
  fi
done
if command -v strip >/dev/null 2>&1; then
  strip "$staging"/*
fi
echo "$CUDARC_CUDA_VERSION" > "$staging/cuda-version.txt"
tar -czf "$archive" -C "$staging" .
echo "$archive: ${bins[*]} for CUDA API $CUDARC_CUDA_VERSION ($(du -h "$archive" | cut -f1))"
