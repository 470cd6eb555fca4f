#!/usr/bin/env bash
# The Flex build (whose matrix products pick gemm's AVX-512 kernels at run time, burn-flex
# `x86-v4`) on a CPU without AVX-512: the same binaries run under QEMU's user-mode emulator,
# whose CPU has AVX2 and FMA but no AVX-512 (apt install qemu-user), so gemm falls back to its
# AVX2 kernels. Runs `check` there (every data-parallel path against one device) and trains the
# same small MLP natively and emulated, comparing the epoch losses.
#
#   scripts/check-without-avx512.sh
set -eu
command -v qemu-x86_64 >/dev/null || { echo "qemu-x86_64 not found (apt install qemu-user)" >&2; exit 1; }
cargo build --release --no-default-features --features flex,mimalloc --bin check --bin train >&2
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
emulated "$tmp/detect" | grep -q "avx512f false" || { echo "the emulated CPU has AVX-512" >&2; exit 1; }
emulated target/release/check --devices 2 2>/dev/null | tail -1
cat > "$tmp/mlp.json" <<'JSON'
{"data": {"features": 64, "classes": 10, "train_size": 4096, "test_size": 1024, "noise": 4.0},
 "hidden_sizes": [256, 256], "batch_size": 128, "epochs": 3, "lr": 0.005}
JSON
target/release/train --config "$tmp/mlp.json" --devices 2 --out "$tmp/native" >/dev/null
emulated target/release/train --config "$tmp/mlp.json" --devices 2 --out "$tmp/emulated" >/dev/null
python3 - "$tmp" <<'PY'
import json, sys
a = json.load(open(f"{sys.argv[1]}/native/report.json"))["epochs"]
b = json.load(open(f"{sys.argv[1]}/emulated/report.json"))["epochs"]
diff = max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in ("train_loss", "test_loss"))
for x, y in zip(a, b):
    print(f"epoch {x['epoch']}: train loss {x['train_loss']:.9f} native, {y['train_loss']:.9f} emulated")
print(f"largest epoch-loss difference, AVX-512 kernels vs AVX2 kernels: {diff:.3e}")
sys.exit(0 if diff <= 1e-5 else 1)
PY
