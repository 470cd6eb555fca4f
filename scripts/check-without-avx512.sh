#!/usr/bin/env bash
# The CPU backends' matrix products pick AVX-512 kernels at run time where the CPU has them
# (Flex through gemm's `x86-v4`, burn-ndarray through matrixmultiply's `avx512`): this runs the
# same binaries on a CPU without AVX-512, QEMU's user-mode emulator, whose CPU has AVX2 and FMA
# but no AVX-512 (apt install qemu-user), so the kernels fall back to AVX2. For each backend it
# runs `check` there (every data-parallel path against one device) and trains the same small
# MLP natively and emulated, comparing the epoch losses: within 1e-5 on Flex. On burn-ndarray
# they differ by about 1e-2 after 3 epochs whatever its matrix products do: its `simd` feature
# computes reciprocals approximately on AVX-512 CPUs only (`_mm512_rcp14_ps`, in the backward
# pass of cross-entropy's `log`), so the difference is printed, not bounded (a build without
# matrixmultiply's `avx512` gave the same native losses to the last bit, 2026-12-03).
#
#   scripts/check-without-avx512.sh [flex|ndarray ...]     # both by default
set -euo pipefail
command -v qemu-x86_64 >/dev/null || { echo "qemu-x86_64 not found (apt install qemu-user)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
emulated() { qemu-x86_64 -cpu max "$@" 2> >(grep -v "TCG doesn't support" >&2); }
# What the emulated CPU offers, as the program sees it.
cat > "$tmp/detect.rs" <<'RS'
fn main() {
    println!("avx2 {} fma {} avx512f {}", is_x86_feature_detected!("avx2"),
        is_x86_feature_detected!("fma"), is_x86_feature_detected!("avx512f"));
}
RS
rustc -O "$tmp/detect.rs" -o "$tmp/detect"
echo "native:   $("$tmp/detect")"
echo "emulated: $(emulated "$tmp/detect")"
"$tmp/detect" | grep -q "avx512f true" || { echo "this CPU has no AVX-512: nothing to compare" >&2; exit 1; }
emulated "$tmp/detect" | grep -q "avx512f false" || { echo "the emulated CPU has AVX-512" >&2; exit 1; }
cat > "$tmp/mlp.json" <<'JSON'
{"data": {"features": 64, "classes": 10, "train_size": 4096, "test_size": 1024, "noise": 4.0},
 "hidden_sizes": [256, 256], "batch_size": 128, "epochs": 3, "lr": 0.005}
JSON
# The epoch losses of two runs, side by side; fails beyond `bound` (none: print only).
compare() {
  python3 - "$1" "$2" "$3" "$4" <<'PY'
import json, sys
backend, a, b, bound = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
a = json.load(open(f"{a}/report.json"))["epochs"]
b = json.load(open(f"{b}/report.json"))["epochs"]
diff = max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in ("train_loss", "test_loss"))
for x, y in zip(a, b):
    print(f"epoch {x['epoch']}: train loss {x['train_loss']:.9f} native, {y['train_loss']:.9f} emulated")
print(f"{backend}: largest epoch-loss difference, AVX-512 kernels vs AVX2 kernels: {diff:.3e}")
sys.exit(0 if bound == "none" or diff <= float(bound) else 1)
PY
}
for backend in ${@:-flex ndarray}; do
  target=target/avx512-check-$backend
  cargo build --release -p dp-tools --no-default-features --features "$backend,mimalloc" \
    --target-dir "$target" --bin check --bin train >&2
  echo "== $backend"
  emulated "$target/release/check" --devices 2 > "$tmp/$backend-check.txt" 2>&1 ||
    { tail -20 "$tmp/$backend-check.txt" >&2; exit 1; }
  grep -E '^[0-9]+ passed' "$tmp/$backend-check.txt"
  "$target/release/train" --config "$tmp/mlp.json" --devices 2 --out "$tmp/$backend-native" >/dev/null
  emulated "$target/release/train" --config "$tmp/mlp.json" --devices 2 \
    --out "$tmp/$backend-emulated" >/dev/null
  bound=1e-5
  [ "$backend" = ndarray ] && bound=none
  compare "$backend" "$tmp/$backend-native" "$tmp/$backend-emulated" "$bound"
done
