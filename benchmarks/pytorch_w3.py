"""PyTorch's figures for the bench's W3, to compare with `bench` on the same machine.

W3 is one training step of an MLP (256 -> 1024 -> 1024 -> 10, ReLU, cross-entropy, plain
SGD at rate 0.05) on a batch of 256 rows, as `tools/bench/workloads.rs` runs it. This
script times it in PyTorch three ways, each in a fresh process (the thread count is fixed once
per process), and prints one line per configuration plus a JSON report:

- one process on T threads (T = 1 and every core);
- DistributedDataParallel on N processes of one thread each (gloo, over this machine), each
  process taking 256 / N rows of every step.

    pip install torch --index-url https://download.pytorch.org/whl/cpu
    python3 benchmarks/pytorch_w3.py --seconds 3 --json benchmarks/runs/pytorch-w3.json

Samples/s is the global batch (256) over the median step time, after a warm-up, as in `bench`.
"""

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time

BATCH = 256
LR = 0.05


def model_and_batch(torch, rows, seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 10),
    )
    x = torch.randn(rows, 256)
    y = torch.randint(0, 10, (rows,))
    return model, x, y


def timed_steps(step, seconds):
    warmup = time.perf_counter()
    while time.perf_counter() - warmup < min(seconds / 5, 1.0):
        step()
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(samples) < 5:
        t = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t)
    return samples


def sgd_step(torch, model, x, y):
    """One W3 training step of `model` on (x, y), as a function."""
    optim = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        optim.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optim.step()

    return step


def single(threads, seconds):
    import torch

    torch.set_num_threads(threads)
    model, x, y = model_and_batch(torch, BATCH, 1)
    return timed_steps(sgd_step(torch, model, x, y), seconds)


def ddp(rank, world, seconds, port):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, x, y = model_and_batch(torch, BATCH // world, 1 + rank)
    model = torch.nn.parallel.DistributedDataParallel(model)
    samples = timed_steps(sgd_step(torch, model, x, y), seconds)
    # Every rank steps in lockstep; rank 0's times stand for the step.
    dist.destroy_process_group()
    return samples


def child(args):
    if args.child == "single":
        samples = single(args.threads, args.seconds)
    else:
        samples = ddp(args.rank, args.world, args.seconds, args.port)
    if args.child == "single" or args.rank == 0:
        print(json.dumps({"median_seconds": statistics.median(samples), "steps": len(samples)}))


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--ddp", type=int, nargs="*", default=[2], help="DDP process counts")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", choices=["single", "ddp"], help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=29517, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import torch

    cores = os.cpu_count() or 1
    me = [sys.executable, __file__, "--seconds", str(args.seconds)]
    rows = []
    for threads in sorted({1, cores}):
        result = run(me + ["--child", "single", "--threads", str(threads)])
        rows.append((f"1 process x {threads} thread(s)", result))
    for world in args.ddp:
        # A port free now, for this run's rendezvous.
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        procs = [
            subprocess.Popen(
                me + ["--child", "ddp", "--rank", str(r), "--world", str(world), "--port", port],
                stdout=subprocess.PIPE,
                text=True,
            )
            for r in range(world)
        ]
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit(f"DDP on {world} processes failed")
        result = json.loads(outs[0].strip().splitlines()[-1])
        rows.append((f"DDP, {world} processes x 1 thread", result))

    report = {
        "torch": torch.__version__,
        "cpu": cpu_model(),
        "cores": cores,
        "batch": BATCH,
        "configurations": [],
    }
    print(f"| PyTorch {torch.__version__}, W3 | samples/s | median step (ms) |")
    print("|---|---|---|")
    for label, result in rows:
        per_second = BATCH / result["median_seconds"]
        print(f"| {label} | {per_second:,.0f} | {result['median_seconds'] * 1e3:.2f} |")
        report["configurations"].append({"label": label, "samples_per_second": per_second, **result})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
