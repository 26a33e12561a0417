"""Packing trials on one GPU: total images/s with 1, 2, 4, 8 concurrent training processes.

Each process trains resnet56 -> resnet20 with IAKD at p = 0.5 (stage granularity, masks drawn as in a run;
CIFAR-100 shapes, batch 64) in a step loop like the engine's. The processes start, warm up, wait at a barrier,
then all run for the same fixed time and report their own images/s; the figure is the sum. This is what a sweep
with fractional ``resources.gpu`` does to one card, less the data loading and evaluation of real trials.

CUDA only: without a CUDA device it prints one line saying so and exits 0 (``--allow-cpu`` runs the same
machinery on the CPU, to check the script itself; its figures mean nothing for GPUs).

    python benchmarks/packing.py [--seconds 20] [--counts 1,2,4,8] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from step_time import training_step  # benchmarks/ is the script's folder, first on sys.path

from iakd import methods, models
from iakd.step import Compute

TEACHER, STUDENT, NUM_CLASSES = "resnet56", "resnet20", 100


def worker(args: argparse.Namespace) -> None:
    """One packed trial: warm up, say ready, wait for go, run ``seconds``, print {"images_per_second": ...}."""
    device = torch.device(args.device)
    torch.manual_seed(args.index)
    teacher = models.build(TEACHER, NUM_CLASSES).to(device).eval()
    method = methods.build("iakd", models.build(STUDENT, NUM_CLASSES), teacher, granularity="stage").to(device).train()
    method.swap_prob = 0.5
    images = torch.randn(args.batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
    compute = Compute(device, bf16=args.bf16, channels_last=args.channels_last)
    step = training_step(method, images, labels, graphed=args.graphed, compute=compute)

    for _ in range(args.warmup_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    barrier = Path(args.barrier)
    (barrier / f"ready{args.index}").touch()
    while not (barrier / "go").exists():
        time.sleep(0.01)
    steps, started = 0, time.perf_counter()
    while time.perf_counter() - started < args.seconds:  # reading the clock needs no sync; the sync is at the end
        step()
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    print(json.dumps({"images_per_second": steps * args.batch_size / elapsed, "steps": steps, "seconds": elapsed}))


def run_packed(count: int, args: argparse.Namespace, device: str) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="iakd-packing-") as barrier:
        procs = [subprocess.Popen(
            [sys.executable, __file__, "--worker", "--index", str(i), "--barrier", barrier, "--device", device,
             "--seconds", str(args.seconds), "--batch-size", str(args.batch_size),
             "--warmup-steps", str(args.warmup_steps)] + (["--graphed"] if args.graphed else [])
            + (["--bf16"] if args.bf16 else []) + (["--channels-last"] if args.channels_last else []),
            stdout=subprocess.PIPE, text=True) for i in range(count)]
        while sum((Path(barrier) / f"ready{i}").exists() for i in range(count)) < count:
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
        (Path(barrier) / "go").touch()
        rates = []
        for p in procs:
            out, _ = p.communicate()
            if p.returncode != 0:
                raise SystemExit(f"a packed process failed with code {p.returncode}")
            rates.append(json.loads(out.strip().splitlines()[-1])["images_per_second"])
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per process")
    parser.add_argument("--counts", default="1,2,4,8", help="numbers of concurrent processes to try")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup-steps", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="5 timed seconds per process")
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU without CUDA (checks the script)")
    parser.add_argument("--graphs", default="both", choices=("off", "on", "both"),
                        help="eager steps, CUDA-graph steps (iakd.step.GraphedStep), or both in turn")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (compute.bf16)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC layout (compute.channels_last)")
    parser.add_argument("--graphed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--barrier", default="", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.seconds = 5.0
    if torch.cuda.is_available():
        device, name = "cuda", torch.cuda.get_device_name(0)
    elif args.allow_cpu:
        device, name = "cpu", "cpu (script check only)"
    else:
        print("packing: no CUDA device here; packed-trial figures need a GPU, nothing measured")
        return
    print(f"# packing: torch {torch.__version__}, {name}, {TEACHER}->{STUDENT} iakd p=0.5 stage, batch "
          f"{args.batch_size}, {args.seconds:g} s per process after {args.warmup_steps} warm-up steps, "
          f"{'bf16' if args.bf16 else 'fp32'}{', channels_last' if args.channels_last else ''}")
    for graphed in {"off": [False], "on": [True], "both": [False, True]}[args.graphs]:
        args.graphed = graphed
        kind = "graphed" if graphed else "eager"
        best = (0, 0.0)
        for count in (int(c) for c in args.counts.split(",")):
            rates = run_packed(count, args, device)
            total = sum(rates)
            best = max(best, (count, total), key=lambda b: b[1])
            print(f"{kind:>7} {count} process(es): total {total:9.0f} images/s, per process "
                  f"{min(rates):.0f}-{max(rates):.0f}")
        print(f"{kind:>7} most images/s in total: {best[0]} process(es), {best[1]:.0f} images/s "
              "(target >= 40000 on H100/H200)")


if __name__ == "__main__":
    main()
