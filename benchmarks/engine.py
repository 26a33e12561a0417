"""The engine's overhead: images/s of ``iakd.engine.train`` epochs against the training step alone, same shapes.

The run: batch 64 on one of two datasets: ``digits`` at 32x32 (the one dataset that needs no download; 1,294
training images, so an epoch is short and evaluation weighs) or ``random-cifar100`` (random images written in
the official CIFAR-100 python format to a temporary folder, 50,000 + 10,000 of them, read by the real loader:
CIFAR-100's shapes and epoch length). The teacher is trained for one epoch into a temporary cache on digits,
and is a randomly initialised network saved as a teacher file on random-cifar100 (speed does not depend on
its accuracy). For each method (ce, and iakd at a constant p = 0.5), the engine trains for a few epochs; after
each epoch a callback times the step alone (``step_time.training_step``: the engine's own step code) for as many
steps as an epoch has, on a fixed batch of the same shape (for iakd the swap masks are drawn at p = 0.5 as in
the run). So engine epochs and step-alone chunks alternate under the same machine load. The first epoch
(warm-up, teacher loading, graph captures) is left out; figures are medians over the rest. On CUDA, ``--graphs
both`` runs everything with ``compute.cuda_graphs`` off and on.

Figures: the step alone; the engine's training loop (its ``images_per_second`` metric: batching, augmentation,
the schedule, metric bookkeeping); the engine's whole epoch (also evaluation of the val and test splits and the
checkpoint). Ratios engine / step alone: 1 means no overhead.

    python benchmarks/engine.py [--quick] [--device auto|cpu|cuda] [--dataset digits|random-cifar100]
                                [--epochs N] [--pair resnet56:resnet20] [--methods ce,iakd] [--graphs off|on|both]
"""

from __future__ import annotations

import argparse
import math
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from step_time import training_step  # benchmarks/ is the script's folder, first on sys.path

import iakd.devices
import iakd.engine
from iakd import methods, models
from iakd.config import load_config
from iakd.frozen import freeze_teacher
from iakd.step import Compute
from iakd.teachers import save_teacher

BATCH = 64
IMAGE_SIZE = 32
NUM_CLASSES = {"digits": 10, "random-cifar100": 100}


def write_random_cifar100(root: Path, train: int = 50_000, test: int = 10_000) -> Path:
    """Random uint8 images and labels in the official CIFAR-100 python format under ``root``."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", train), ("test", test)):
        labels = rng.integers(0, 100, n).tolist()
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": labels,
                 b"coarse_labels": [label // 5 for label in labels]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_alone(name: str, teacher_arch: str, student_arch: str, device: torch.device, num_classes: int,
                graphed: bool, compute: Compute):
    """The engine's step outside it: fixed batch, same method on the folded teacher, swap drawn at p = 0.5."""
    teacher = freeze_teacher(models.build(teacher_arch, num_classes).to(device).eval())
    method = methods.build(name, models.build(student_arch, num_classes), teacher, granularity="stage")
    method = method.to(device).train()
    if method.uses_swap:
        method.swap_prob = 0.5
    images = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    labels = torch.randint(0, num_classes, (BATCH,), device=device)
    return training_step(method, images, labels, graphed=graphed, compute=compute)


def run(name: str, teacher_arch: str, student_arch: str, epochs: int, device: torch.device, tmp: Path,
        dataset: str, graphed: bool, extra: list[str]) -> None:
    num_classes = NUM_CLASSES[dataset]
    if dataset == "digits":
        data = ["data.name=digits", f"data.image_size={IMAGE_SIZE}", "teacher.epochs=1",
                f"teacher.cache_dir={tmp / 'teachers'}"]
    else:
        teacher_file = tmp / f"random-{teacher_arch}.pth"
        if not teacher_file.is_file():
            # A random teacher whose blocks stay near the identity (BatchNorm scales x 0.2, statistics of its own
            # activations): a plain random resnet56 amplifies its input through 27 residual blocks, and IAKD's
            # loss through it grows to ~1e11 within an epoch (and to NaN on some GPU runs).
            teacher = models.build(teacher_arch, num_classes).train()
            with torch.no_grad():
                for module in teacher.modules():
                    if isinstance(module, torch.nn.BatchNorm2d):
                        module.weight.mul_(0.2)
                for _ in range(4):
                    teacher(torch.randn(128, 3, IMAGE_SIZE, IMAGE_SIZE))
            save_teacher(teacher_file, teacher, arch=teacher_arch, dataset="cifar100", num_classes=num_classes,
                         accuracy=None)
        data = ["data.name=cifar100", f"data.dir={tmp}", f"teacher.checkpoint={teacher_file}"]
    overrides = data + [
        f"teacher.arch={teacher_arch}", f"student.arch={student_arch}", f"method.name={name}",
        "schedule.family=constant", "schedule.p0=0.5", "schedule.t_end=1.0", f"optim.epochs={epochs}",
        f"optim.batch_size={BATCH}", "optim.lr=0.01", f"device={device.type}", f"out_dir={tmp / name}",
        f"compute.cuda_graphs={str(graphed).lower()}", *extra,
    ]
    cfg = load_config(None, overrides)
    compute = Compute(device, bf16=cfg.compute.bf16, channels_last=cfg.compute.channels_last)
    step = _step_alone(name, teacher_arch, student_arch, device, num_classes, graphed, compute)
    for _ in range(20 if graphed else 3):  # warm-up of the step alone (graphed: every mask captured)
        step()
    steps_per_epoch = None
    loop_rate, epoch_rate, alone_rate = [], [], []
    last = time.perf_counter()

    def callback(metrics, checkpoint) -> None:
        nonlocal last, steps_per_epoch
        now = time.perf_counter()
        images = metrics["images_per_second"] * metrics["epoch_seconds"]
        steps_per_epoch = math.ceil(round(images) / BATCH)
        if metrics["epoch"] > 1:
            loop_rate.append(metrics["images_per_second"])
            epoch_rate.append(images / (now - last))
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(steps_per_epoch):
            step()
        _synchronize(device)
        alone_rate.append(BATCH / ((time.perf_counter() - started) / steps_per_epoch))
        last = time.perf_counter()

    result = iakd.engine.train(cfg, [callback], log=lambda line: None)
    if result["status"] != "finished":
        raise SystemExit(f"{name}: run {result['status']}: {result['message']}")
    alone = statistics.median(alone_rate[1:])
    loop, whole = statistics.median(loop_rate), statistics.median(epoch_rate)
    label = f"{teacher_arch}->{student_arch}  {name:<5}{' graphed' if graphed else ' eager  '}{' ' + ' '.join(extra)}"
    print(f"{label} step alone             {alone:>8.1f} images/s")
    print(f"{label} engine training loop   {loop:>8.1f} images/s  ratio to step alone {loop / alone:.3f}")
    print(f"{label} engine whole epoch     {whole:>8.1f} images/s  ratio to step alone {whole / alone:.3f}"
          f"  (with eval of val+test and checkpoint)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run, first untimed (default 6, quick 3)")
    parser.add_argument("--pair", default=None, help="teacher:student (resnet56:resnet20; quick resnet20:resnet8)")
    parser.add_argument("--methods", default="ce,iakd")
    parser.add_argument("--dataset", default="digits", choices=tuple(NUM_CLASSES))
    parser.add_argument("--images", type=int, default=50_000, help="random-cifar100 training images (test: 1/5)")
    parser.add_argument("--extra", default="", help="more config overrides for the runs, comma-separated "
                        "(e.g. compute.bf16=true,compute.channels_last=true; the step alone takes the compute keys)")
    parser.add_argument("--graphs", default="both", choices=("off", "on", "both"),
                        help="compute.cuda_graphs in the runs (CUDA only; on the CPU always off)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = iakd.devices.resolve_device(args.device)
    epochs = args.epochs or (3 if args.quick else 6)
    teacher_arch, student_arch = (args.pair or ("resnet20:resnet8" if args.quick else "resnet56:resnet20")).split(":")
    graphs = {"off": [False], "on": [True], "both": [False, True]}[args.graphs] if device.type == "cuda" else [False]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"# engine: torch {torch.__version__}, {name}, {args.dataset} {IMAGE_SIZE}x{IMAGE_SIZE}, batch {BATCH}, "
          f"{epochs} epochs per run (first untimed)")
    with tempfile.TemporaryDirectory(prefix="iakd-bench-engine-") as tmp:
        if args.dataset == "random-cifar100":
            write_random_cifar100(Path(tmp), args.images, max(1, args.images // 5))
        for method in args.methods.split(","):
            for graphed in graphs:
                run(method, teacher_arch, student_arch, epochs, device, Path(tmp), args.dataset, graphed,
                    [e for e in args.extra.split(",") if e])


if __name__ == "__main__":
    main()
