#!/usr/bin/env bash
# The MPI ranks of `scale` over an emulated network: a network namespace of their own whose
# loopback is rate-limited with tc's `tbf` qdisc, Open MPI forced onto TCP over that loopback
# (no shared memory), at 1, 10 and 100 Gbit/s; W3 (1.3M parameters) and mlp-4096 (25.2M,
# 101 MB of gradients) on 1, 2 and 4 ranks; 16-bit gradient sums at 1 Gbit/s; the drift of
# those sums from exact training. One JSON line per point in OUT/cluster.jsonl, drift in
# OUT/drift.jsonl; 4 micro-batches a step at 1 and 10 Gbit/s; `benchmarks/scaling.py`
# reads them.
#
#   scripts/emulated-cluster.sh [out-dir] [scale-binary]
#
# Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN), `unshare`, `ip`, `tc` and Open MPI. The
# namespace is anonymous (`unshare -n`): it and its qdisc vanish with the job, and no other
# network is touched. Every rank shares the one loopback: the emulated network is one link of
# the given rate that all the ranks' traffic crosses (a shared medium, not a switch giving
# each rank its own link); benchmarks/scaling.py models it as such.
set -euo pipefail
out=${1:-benchmarks/runs/scaling-$(date +%F)}
bin=${2:-target/release/scale}
mkdir -p "$out"
[ -x "$bin" ] || { echo "build it first: cargo build --release -p dp-tools --no-default-features --features flex,mimalloc,mpi --bin scale" >&2; exit 1; }
bin=$(realpath "$bin")
for tool in unshare ip tc mpirun python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing" >&2; exit 1; }
done
seconds=${SCALE_SECONDS:-2}
# Each point's lines, kept if the script stops early (a failed or hung point: each job has
# 15 minutes).
raw="$out/cluster.partial"
rm -f "$raw"

# Runs "$@" (a `scale` command line after the binary) on RANKS ranks inside a new network
# namespace whose loopback is limited to RATE (`none`: not limited; `shm`: shared memory, the
# default transport of ranks of one machine), and appends the point to cluster.jsonl.
point() {
  local rate=$1 ranks=$2
  shift 2
  local mca=(--mca btl tcp,self --mca btl_tcp_if_include lo --mca pml ob1)
  [ "$rate" = shm ] && mca=(--mca btl vader,self)
  echo "== $rate, $ranks ranks: $*" >&2
  RATE=$rate unshare -n bash -c '
    set -e
    ip link set lo up
    case $RATE in
      none|shm) ;;
      *) bits=${RATE%gbit}; burst=$(( bits < 2 ? 256 : bits * 128 ))
         tc qdisc add dev lo root tbf rate "$RATE" burst "${burst}kb" latency 50ms ;;
    esac
    exec "$@"' _ \
    timeout 900 mpirun --allow-run-as-root --oversubscribe -n "$ranks" "${mca[@]}" \
      -x OMPI_MCA_btl_vader_single_copy_mechanism=none \
      "$bin" --mpi --seconds "$seconds" --label "$rate" "$@" \
    | grep -E '^(POINT|DRIFT) ' | tee -a "$raw" >&2
}

# What the loopback carries unlimited (one TCP stream): the 100 Gbit/s setting is bounded by it.
unshare -n bash -c 'ip link set lo up; python3 - <<"PY"
import socket, threading, time
n = 2_000_000_000
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
def recv():
    c, _ = srv.accept(); got = 0; buf = bytearray(1 << 20)
    while got < n:
        k = c.recv_into(buf); got += k
        if k == 0: break
t = threading.Thread(target=recv); t.start()
s = socket.create_connection(srv.getsockname()); data = b"x" * (1 << 20)
start = time.time(); sent = 0
while sent < n: s.sendall(data); sent += len(data)
t.join()
print(f"LOOPBACK {{\"gbit_per_second\": {n * 8 / (time.time() - start) / 1e9:.2f}}}")
PY' | tee -a "$raw" >&2

for model in w3 mlp-4096; do
  point shm 1 --model "$model"
  for rate in 1gbit 10gbit 100gbit none shm; do
    for ranks in 2 4; do
      point "$rate" "$ranks" --model "$model"
    done
  done
  # 16-bit sums at 1 Gbit/s, and over shared memory (what rounding costs, without a network).
  for rate in 1gbit shm; do
    for precision in bf16 f16; do
      for ranks in 2 4; do
        point "$rate" "$ranks" --model "$model" --precision "$precision"
      done
    done
  done
  # Accumulating 4 micro-batches into a step: one exchange for 4 times the rows.
  for rate in 1gbit 10gbit; do
    point "$rate" 2 --model "$model" --micro-batches 4
  done
done
# Drift from exact sums does not depend on the network: over shared memory.
for ranks in 2 4; do
  for precision in bf16 f16; do
    point shm "$ranks" --model w3 --drift 200 --precision "$precision"
    point shm "$ranks" --model w3 --drift 200 --precision "$precision" --optimizer adam
  done
done
point shm 2 --model mlp-4096 --drift 20 --precision bf16
point shm 2 --model mlp-4096 --drift 20 --precision bf16 --optimizer adam

grep '^POINT ' "$raw" | sed 's/^POINT //' > "$out/cluster.jsonl"
grep '^DRIFT ' "$raw" | sed 's/^DRIFT //' > "$out/drift.jsonl"
grep '^LOOPBACK ' "$raw" | sed 's/^LOOPBACK //' > "$out/loopback.json"
rm -f "$raw"
echo "wrote $out/cluster.jsonl, $out/drift.jsonl, $out/loopback.json" >&2
