#!/usr/bin/env python3
"""The scaling figures of BENCHMARKS.md ("Scaling"): tables and PNG plots of the cost curves
(scripts/cost-curves.sh) and of the emulated cluster (scripts/emulated-cluster.sh), the cost
model fitted on some emulated runs and checked against the others, and its projection to
8-512 GPUs.

    python3 benchmarks/scaling.py benchmarks/runs/scaling-DATE   # writes scaling.md and *.png there

Needs numpy and matplotlib. Everything under "measured" is read from the runs; everything under
"projected" is the model's, with the published bandwidths in PUBLISHED below.
"""
import json
import math
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# This machine's cores: ranks and replicas beyond it share them.
CORES = os.cpu_count() or 2

# NCCL all-reduce bus bandwidths (nccl-tests `all_reduce_perf`, large messages), bytes/s per
# GPU, and small-message latencies in seconds, from published figures (sources in
# BENCHMARKS.md). busbw is defined so that an all-reduce of S bytes over N GPUs takes
# 2 (N - 1) / N * S / busbw. Ring busbw is about flat in N; multi-node figures were found up
# to 32 GPUs (365 GB/s) and are held flat beyond, which is the projection's main assumption.
PUBLISHED = {
    "8x H100 in one node, NVLink (Ring)": {
        "busbw": 370e9, "latency": lambda n: 34e-6, "max_gpus": 8},
    "H100 nodes, 8x NDR 400G InfiniBand each": {
        "busbw": 365e9, "latency": lambda n: 24e-6 + 5.75e-6 * math.log2(n)},
    "A100 nodes, 8x HDR 200G InfiniBand each": {
        "busbw": 192e9, "latency": lambda n: 24e-6 + 5.75e-6 * math.log2(n)},
}


def load(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def ms(seconds):
    return f"{seconds * 1e3:.1f}"


def phases_row(p):
    ph = p["phases"]
    return [ms(ph["step"]), ms(ph["compute"]), ms(ph["combine"]), ms(ph["exchange"]),
            ms(ph["host"]), ms(ph["optimizer"]), ms(ph["wait"])]


PHASE_HEAD = ["step ms", "fwd+bwd", "sum", "exchange", "host", "optimizer", "wait"]


def table(head, rows):
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def w3_base(p):
    return p["model"] == "w3" and p["batch"] == 256 and p["precision"] == "f32"


# ---------------------------------------------------------------- the cost curves (measured)
def curves(points, out, md):
    kinds = sorted({p["label"] for p in points})
    md.append("### Cost curves (measured)\n")
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for kind in kinds:
        mine = [p for p in points if p["label"] == kind]
        # Batch.
        for devices in (1, 2):
            sweep = sorted((p for p in mine if p["model"] == "w3" and p["devices"] == devices
                            and not p["mpi"]), key=lambda p: p["batch"])
            if not sweep:
                continue
            axes[0].plot([p["batch"] for p in sweep], [p["samples_per_second"] for p in sweep],
                         marker="o", label=f"{kind}, {devices} replica(s)")
            md.append(f"\n**{kind}, W3's MLP, {devices} replica(s), against the batch**\n\n")
            md.append(table(["batch", "samples/s"] + PHASE_HEAD,
                            [[p["batch"], f"{p['samples_per_second']:.0f}"] + phases_row(p)
                             for p in sweep]))
        # Parameters.
        for devices in (1, 2):
            sweep = sorted((p for p in mine if p["batch"] == 256 and p["devices"] == devices
                            and not p["mpi"] and p["model"].startswith("mlp-")),
                           key=lambda p: p["params"])
            if not sweep:
                continue
            axes[1].plot([p["params"] / 1e6 for p in sweep],
                         [p["phases"]["step"] * 1e3 for p in sweep], marker="o",
                         label=f"{kind}, {devices} replica(s)")
            md.append(f"\n**{kind}, batch 256, {devices} replica(s), against the parameters**\n\n")
            md.append(table(["model", "parameters", "samples/s"] + PHASE_HEAD,
                            [[p["model"], f"{p['params'] / 1e6:.2f}M",
                              f"{p['samples_per_second']:.0f}"] + phases_row(p) for p in sweep]))
        # Replicas in one process.
        seen = {p["devices"]: p for p in mine if w3_base(p) and not p["mpi"]}
        sweep = [seen[d] for d in sorted(seen)]
        axes[2].plot([p["devices"] for p in sweep], [p["samples_per_second"] for p in sweep],
                     marker="o", label=kind)
        md.append(f"\n**{kind}, W3, replicas in one process**\n\n")
        md.append(table(["replicas", "samples/s"] + PHASE_HEAD,
                        [[p["devices"], f"{p['samples_per_second']:.0f}"] + phases_row(p)
                         for p in sweep]))
        # Ranks over shared memory.
        by_ranks = {p["ranks"]: p for p in mine if w3_base(p) and p["devices"] == 1 and p["mpi"]}
        ranks = [by_ranks[r] for r in sorted(by_ranks)]
        axes[3].plot([p["ranks"] for p in ranks], [p["samples_per_second"] for p in ranks],
                     marker="o", label=kind)
        md.append(f"\n**{kind}, W3, MPI ranks over shared memory**\n\n")
        md.append(table(["ranks", "samples/s"] + PHASE_HEAD,
                        [[p["ranks"], f"{p['samples_per_second']:.0f}"] + phases_row(p)
                         for p in ranks]))
        md.append("\n")
    for ax, (x, y, title) in zip(axes, [
            ("global batch", "samples/s", "W3's MLP against the batch"),
            ("parameters (millions)", "step (ms)", "batch 256 against the parameters"),
            ("replicas in one process", "samples/s", "W3, replicas"),
            ("MPI ranks (shared memory)", "samples/s", "W3, ranks")]):
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[0].set_xscale("log", base=2)
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=80)
    md.append("![cost curves](curves.png)\n\n")


# ---------------------------------------------------------------- the emulated cluster
def rate_of(label, loopback):
    """The link's rate in bytes/s: the tbf rate, bounded by what the loopback carries."""
    if label.endswith("gbit"):
        return min(float(label[:-4]) * 1e9, loopback) / 8
    return loopback / 8


def cluster(points, loopback, out, md):
    md.append("### The emulated cluster (measured)\n\n")
    md.append(f"Loopback unlimited, one TCP stream: {loopback / 1e9:.1f} Gbit/s.\n\n")
    rows = []
    for p in sorted(points, key=lambda p: (p["model"], p["precision"], p.get("micro_batches", 1),
                                           p["label"], p["ranks"])):
        ph = p["phases"]
        share = (ph["exchange"] + ph["host"]) / ph["step"]
        # What pipelining the exchange in chunks with the copies and the optimizer step
        # could hide at most: those two, entirely.
        hideable = (ph["host"] + ph["optimizer"]) / ph["step"]
        rows.append([p["model"], p["precision"], p["label"], p["ranks"],
                     p.get("micro_batches", 1), f"{p['samples_per_second']:.0f}"]
                    + phases_row(p) + [f"{share:.0%}", f"{hideable:.0%}"])
    md.append(table(["model", "sums in", "network", "ranks", "micro-batches", "samples/s"]
                    + PHASE_HEAD
                    + ["exchange share", "hideable by pipelining, at most"], rows))
    md.append("\n")
    # Where the step goes, per network and ranks (f32 sums, one micro-batch).
    models = sorted({p["model"] for p in points})
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 4.5), squeeze=False)
    order = {"shm": 0, "none": 1, "100gbit": 2, "10gbit": 3, "1gbit": 4}
    names = ["compute", "wait", "combine", "optimizer", "host", "exchange"]
    for ax, model_name in zip(axes[0], models):
        sel = sorted((p for p in points if p["model"] == model_name and p["precision"] == "f32"
                      and p.get("micro_batches", 1) == 1),
                     key=lambda p: (order.get(p["label"], 9), p["ranks"]))
        labels = [f"{p['label']}\n{p['ranks']}r" for p in sel]
        bottom = np.zeros(len(sel))
        for name in names:
            values = np.array([p["phases"][name] * 1e3 for p in sel])
            ax.bar(labels, values, bottom=bottom, label=name)
            bottom += values
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylabel("ms per step (median phases)")
        ax.set_title(f"{model_name}: a step's time by network and ranks")
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "cluster.png"), dpi=80)
    md.append("![the step by network and ranks](cluster.png)\n\n")


# ---------------------------------------------------------------- the cost model
class CostModel:
    """T = L + max(X, 2 (R - 1) S / (e W)) + a (R - 1), for R ranks on the emulated network.

    Measured inputs, from the run of the same model, ranks and precision over shared memory
    (where the network costs nothing): L, the rank's own work (forward, backward, the sum over
    its replicas, the rounding to 16 bits and back, the optimizer step, the waits), that run's
    step less its exchange, plus (K - 1) times its forward, backward, sum and wait for K
    micro-batches a step; X, that run's exchange: what moving and adding the bytes costs the
    CPUs. S: the bytes each rank hands to the all-reduce (4 per value, 2 in 16 bits); 2 (R - 1)
    S: the bytes an all-reduce of S bytes puts on the one link every rank shares (each rank
    sends 2 (R - 1) / R S); W: the tbf rate, bounded by what the loopback carries. Fitted: e,
    the link's efficiency, and a, the latency per extra rank. TCP copies while the link drains,
    so the exchange takes the longer of the two, not their sum. On a switched network each rank
    has a link of its own and the all-reduce takes 2 (R - 1) / R S / busbw: the projection's
    form.
    """

    def __init__(self, shm_points):
        self.shm = shm_points
        self.a, self.e = 0.0, 1.0

    def reference(self, p):
        ref = [q for q in self.shm if q["model"] == p["model"] and q["ranks"] == p["ranks"]
               and q["precision"] == p["precision"] and q.get("micro_batches", 1) == 1]
        return ref[0]["phases"]

    def local(self, p):
        ph = self.reference(p)
        own = ph["step"] - ph["exchange"]
        k = p.get("micro_batches", 1)
        return own + (k - 1) * (ph["compute"] + ph["combine"] + ph["wait"])

    def wire(self, p, loopback):
        """Seconds on the link at efficiency 1."""
        return 2 * (p["ranks"] - 1) * p["bytes_per_step"] / rate_of(p["label"], loopback)

    def fit(self, points, loopback):
        # Least squares on relative error over a grid of efficiencies, the latency solved
        # for each (it enters linearly).
        best = None
        for e in np.linspace(0.3, 1.5, 241):
            rows, rhs = [], []
            for p in points:
                t = p["phases"]["step"]
                x = self.reference(p)["exchange"]
                base = self.local(p) + max(x, self.wire(p, loopback) / e)
                rows.append((p["ranks"] - 1) / t)
                rhs.append((t - base) / t)
            rows, rhs = np.array(rows), np.array(rhs)
            a = max(float(rows @ rhs / (rows @ rows)), 0.0)
            loss = float(((rhs - a * rows) ** 2).sum())
            if best is None or loss < best[0]:
                best = (loss, e, a)
        _, self.e, self.a = best

    def predict(self, p, loopback):
        x = self.reference(p)["exchange"]
        return self.local(p) + max(x, self.wire(p, loopback) / self.e) + self.a * (p["ranks"] - 1)


def model(curves_points, cluster_points, loopback, out, md):
    shm = [p for p in cluster_points if p["label"] == "shm"]
    mpi = [p for p in cluster_points if p["ranks"] > 1 and p["label"] != "shm"]
    fit_set = [p for p in mpi if p["ranks"] == 2 and p["precision"] == "f32"
               and p.get("micro_batches", 1) == 1]
    check_set = [p for p in mpi if p not in fit_set]
    m = CostModel(shm)
    m.fit(fit_set, loopback)
    md.append("### The cost model, fitted and checked\n\n")
    md.append(
        f"Fitted on the {len(fit_set)} runs of 2 ranks with f32 sums (W3 and mlp-4096, at 1, 10 "
        f"and 100 Gbit/s and unlimited); checked on the other {len(check_set)} (4 ranks, 16-bit "
        f"sums, 4 micro-batches a step). "
        f"Fitted: link efficiency {m.e:.2f} of the tbf rate, latency {m.a * 1e3:.2f} ms per "
        f"extra rank.\n\n")
    rows, errors = [], []
    for p in fit_set + check_set:
        predicted = m.predict(p, loopback)
        error = predicted / p["phases"]["step"] - 1
        role = "fit" if p in fit_set else "check"
        if role == "check":
            errors.append(abs(error))
        rows.append([role, p["model"], p["precision"], p["label"], p["ranks"],
                     p.get("micro_batches", 1), ms(p["phases"]["step"]), ms(predicted),
                     f"{error:+.1%}"])
    md.append(table(["set", "model", "sums in", "network", "ranks", "micro-batches",
                     "measured ms",
                     "predicted ms", "error"], rows))
    if errors:
        md.append(f"\nChecked runs: largest error {max(errors):.1%}, median "
                  f"{statistics.median(errors):.1%}; within 15%: "
                  f"{sum(e <= 0.15 for e in errors)} of {len(errors)}.\n")
        # What the fit adds: the same form with the tbf rate taken at its word, no latency.
        unfitted = CostModel(shm)
        plain = [abs(unfitted.predict(p, loopback) / p["phases"]["step"] - 1) for p in check_set]
        md.append(f"Unfitted (e = 1, a = 0): median {statistics.median(plain):.1%}, within 15%: "
                  f"{sum(e <= 0.15 for e in plain)} of {len(plain)}.\n\n")
    fig, ax = plt.subplots(figsize=(5, 5))
    for role, marker in (("fit", "o"), ("check", "x")):
        sel = fit_set if role == "fit" else check_set
        ax.scatter([p["phases"]["step"] * 1e3 for p in sel],
                   [m.predict(p, loopback) * 1e3 for p in sel], marker=marker, label=role)
    lim = [1, max(p["phases"]["step"] for p in mpi) * 1.5e3]
    ax.plot(lim, lim, "k:", lw=1)
    ax.plot(lim, [v * 1.15 for v in lim], "k:", lw=0.5)
    ax.plot(lim, [v / 1.15 for v in lim], "k:", lw=0.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured step (ms)")
    ax.set_ylabel("predicted step (ms)")
    ax.set_title("cost model on the emulated cluster")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "model.png"), dpi=80)
    md.append("![model against the runs](model.png)\n\n")
    return m


def projection(m, curves_points, cluster_points, out, md):
    md.append("### Projection to 8-512 GPUs (projected, not measured)\n\n")
    md.append(
        "Weak scaling: each GPU takes 256 rows a step. The exchange is the model's all-reduce "
        "on a switched network, `latency(N) + 2 (N - 1) / N * S / busbw`, with the "
        "published bus bandwidths; the copies and the per-byte host cost of the CPU runs are "
        "left out (NCCL sums in GPU memory). No GPU's compute was measured here: the table "
        "gives the exchange's time and the compute a step needs for 90% efficiency "
        "(exchange at most 1/9 of it, nothing hidden), and the efficiency if each GPU "
        "computed as fast as one rank of this CPU (measured, Flex).\n\n")
    params = {}
    for p in cluster_points:
        params[p["model"]] = p["params"]
    rows = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model_name, count in sorted(params.items()):
        s = count * 4
        cpu = [c for c in curves_points if c["label"] == "flex" and c["model"] == model_name
               and c["devices"] == 1 and not c["mpi"] and c["batch"] == 256]
        cpu_step = cpu[0]["phases"]["step"] if cpu else None
        for net, spec in PUBLISHED.items():
            xs, ys = [], []
            for n in (8, 16, 32, 64, 128, 256, 512):
                if n > spec.get("max_gpus", 1 << 20):
                    continue
                t = spec["latency"](n) + 2 * (n - 1) / n * s / spec["busbw"]
                eff = cpu_step / (cpu_step + t) if cpu_step else float("nan")
                xs.append(n)
                ys.append(t * 1e3)
                rows.append([model_name, net, n, f"{t * 1e3:.2f}", f"{9 * t * 1e3:.1f}",
                             f"{eff:.1%}"])
            ax.plot(xs, ys, marker="o", label=f"{model_name}, {net}")
    md.append(table(["model", "network", "GPUs", "exchange ms", "compute for 90% ms",
                     "efficiency at this CPU's compute"], rows))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("GPUs")
    ax.set_ylabel("all-reduce per step (ms)")
    ax.set_title("projected exchange per step")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "projection.png"), dpi=80)
    md.append("\n![projected exchange](projection.png)\n\n")


def drift(points, md):
    if not points:
        return
    md.append("### Gradient sums in 16 bits: drift from exact sums (measured)\n\n")
    rows = []
    for d in points:
        rows.append([d["model"], d["optimizer"], d["precision"], d["ranks"], d["steps"],
                     f"{d['relative']:.2e}", f"{d['max_abs']:.2e}",
                     f"{d['loss'][-1][0]:.4f} / {d['loss'][-1][1]:.4f}",
                     "yes" if d["ranks_agree"] else "NO"])
    md.append(table(["model", "optimizer", "sums in", "ranks", "steps",
                     "relative distance", "largest difference", "last loss (16-bit / exact)",
                     "ranks agree"], rows))
    md.append("\n")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "."
    curves_points = load(os.path.join(out, "curves.jsonl"))
    cluster_points = load(os.path.join(out, "cluster.jsonl"))
    drift_points = load(os.path.join(out, "drift.jsonl"))
    loopback = 30e9
    path = os.path.join(out, "loopback.json")
    if os.path.exists(path):
        with open(path) as f:
            loopback = json.load(f)["gbit_per_second"] * 1e9
    md = []
    if curves_points:
        curves(curves_points, out, md)
    if cluster_points:
        cluster(cluster_points, loopback, out, md)
        m = model(curves_points, cluster_points, loopback, out, md)
        if m is not None:
            projection(m, curves_points, cluster_points, out, md)
    drift(drift_points, md)
    with open(os.path.join(out, "scaling.md"), "w") as f:
        f.write("".join(md))
    print("".join(md))


if __name__ == "__main__":
    main()
