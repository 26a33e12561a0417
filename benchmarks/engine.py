"""The engine's overhead: images/s of ``iakd.engine.train`` epochs against the training step alone, same shapes.

The run: digits at 32x32 (``data.name=digits data.image_size=32``, the one dataset that needs no download),
batch 64, the teacher trained for one epoch into a temporary cache. For each method (ce, and iakd at a constant
p = 0.5), the engine trains for a few epochs; after each epoch a callback times the step alone for as many steps
as an epoch has, on a fixed batch of the same shape, with a method built apart from the engine's (for iakd the
swap masks are drawn at p = 0.5 as in the run). So engine epochs and step-alone chunks alternate, and each
epoch's pair is measured under the same machine load. The first epoch (warm-up, teacher loading) is left out;
figures are medians over the rest.

Figures: the step alone; the engine's training loop (its ``images_per_second`` metric: batching, augmentation,
the schedule, metric bookkeeping, host synchronisation); the engine's whole epoch (also evaluation of the
val and test splits and the checkpoint). Ratios engine / step alone: 1 means no overhead.

    python benchmarks/engine.py [--quick] [--device auto|cpu|cuda] [--epochs N] [--pair resnet56:resnet20]
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from step_time import training_step  # benchmarks/ is the script's folder, first on sys.path

import iakd.engine
from iakd import methods, models
from iakd.config import load_config
from iakd.frozen import freeze_teacher

BATCH = 64
IMAGE_SIZE = 32
NUM_CLASSES = 10  # digits


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_alone(name: str, teacher_arch: str, student_arch: str, device: torch.device, folded: bool):
    """A step function like the engine's, outside it: fixed batch, same method, swap drawn at p = 0.5."""
    teacher = models.build(teacher_arch, NUM_CLASSES).to(device).eval()
    if folded:
        teacher = freeze_teacher(teacher)
    method = methods.build(name, models.build(student_arch, NUM_CLASSES), teacher, granularity="stage")
    method = method.to(device).train()
    if method.uses_swap:
        method.swap_prob = 0.5
    images = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), device=device)
    return training_step(method, images, labels)


def run(name: str, teacher_arch: str, student_arch: str, epochs: int, device: torch.device, tmp: Path) -> None:
    overrides = [
        "data.name=digits", f"data.image_size={IMAGE_SIZE}", f"teacher.arch={teacher_arch}", "teacher.epochs=1",
        f"teacher.cache_dir={tmp / 'teachers'}", f"student.arch={student_arch}", f"method.name={name}",
        "schedule.family=constant", "schedule.p0=0.5", "schedule.t_end=1.0", f"optim.epochs={epochs}",
        f"optim.batch_size={BATCH}", f"device={device.type}", f"out_dir={tmp / name}",
    ]
    cfg = load_config(None, overrides)
    # Whether the engine runs the teacher folded (issue 11): the step alone then must too, to do the same work.
    folded = "freeze_teacher" in vars(iakd.engine)
    step = _step_alone(name, teacher_arch, student_arch, device, folded)
    for _ in range(3):  # warm-up of the step alone
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
    label = f"{teacher_arch}->{student_arch}  {name:<5}"
    print(f"{label} step alone             {alone:>8.1f} images/s  (teacher {'folded' if folded else 'as loaded'})")
    print(f"{label} engine training loop   {loop:>8.1f} images/s  ratio to step alone {loop / alone:.3f}")
    print(f"{label} engine whole epoch     {whole:>8.1f} images/s  ratio to step alone {whole / alone:.3f}"
          f"  (with eval of val+test and checkpoint)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run, first untimed (default 6, quick 3)")
    parser.add_argument("--pair", default=None, help="teacher:student (resnet56:resnet20; quick resnet20:resnet8)")
    parser.add_argument("--methods", default="ce,iakd")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = iakd.engine.resolve_device(args.device)
    epochs = args.epochs or (3 if args.quick else 6)
    teacher_arch, student_arch = (args.pair or ("resnet20:resnet8" if args.quick else "resnet56:resnet20")).split(":")
    print(f"# engine: torch {torch.__version__}, device {device}, {torch.get_num_threads()} torch threads, digits "
          f"{IMAGE_SIZE}x{IMAGE_SIZE}, batch {BATCH}, {epochs} epochs per run (first untimed)")
    with tempfile.TemporaryDirectory(prefix="iakd-bench-engine-") as tmp:
        for name in args.methods.split(","):
            run(name, teacher_arch, student_arch, epochs, device, Path(tmp))


if __name__ == "__main__":
    main()
