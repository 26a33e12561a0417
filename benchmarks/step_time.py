"""Images/s of one training step per method, all in one process, interleaved, after warm-up, medians.

A step is what the engine does per batch: ``method.forward_train`` (for KD also the teacher's no-grad forward),
the summed loss's backward, an SGD step. IAKD at p = 0.5 is reported as the mean step time over every swap mask
of stage granularity (2^3 masks, each timed on its own): the expected cost of a step at p = 0.5. The same
methods built on ``freeze_teacher(teacher)`` (BatchNorm folded) run side by side to show what the fold saves.

    python benchmarks/step_time.py [--quick] [--device auto|cpu|cuda] [--batch-size 64] [--repeats N]
                                   [--pairs resnet56:resnet20,resnet32x4:resnet8x4]

One line per figure; ratios are of step times (lower is cheaper): ``iakd(0.5)/kd`` and ``iakd(0)/ce``.

The levers of swapping-in (docs/iakd-levers.md) are timed beside them, at p = 0.5 on the plain teacher:
``blend(0.5)`` runs both units everywhere (no mask is drawn), ``aux(0.5)`` is IAKD with the hybrid as an auxiliary
path (hybrid_weight 0.5: the pure student and, on a step that swaps, the hybrid), ``kd+aux(0.5)`` KD's loss on the
pure student plus that path, ``kd-on-student(0.5)`` IAKD+KD with its KD term on the pure student. A warm-up
(schedule.t_start) and the teacher's initialisation (student.init) change no step.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from iakd import methods, models
from iakd.devices import resolve_device
from iakd.frozen import freeze_teacher
from iakd.step import Compute, EagerStep, EpochTotals, GraphedStep

PAIRS = (("resnet56", "resnet20"), ("resnet32x4", "resnet8x4"))
NUM_CLASSES = 100
IMAGE_SIZE = 32


@dataclass
class Variant:
    """One timed thing: a method at one swap setting. ``figure`` names the line its time counts towards."""

    name: str
    figure: str
    step: Callable[[], None]
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(method: methods.Method, images: torch.Tensor, labels: torch.Tensor,
                  swap_prob=None, graphed: bool = False, compute: Compute | None = None) -> Callable[[], None]:
    """One training step as the engine takes it (``iakd.step``: forward_train, summed losses, the epoch's totals
    on the device, backward, SGD), on a fixed batch; ``swap_prob`` (a 0/1 list draws exactly that mask) is set
    before each step when given. ``graphed``: the CUDA-graph step (each mask captured on its second step). The
    other benchmarks take their step from here. ``compute``: bf16 autocast / channels_last (default: neither)."""
    compute = compute or Compute(images.device)
    compute.apply(method)
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    totals = EpochTotals(images.device)
    if graphed:
        runner = GraphedStep(method, optimizer, totals, compute, capture=images.device.type == "cuda")
    else:
        runner = EagerStep(method, optimizer, totals, compute)
    runner.set_lr()

    def step() -> None:
        if swap_prob is not None:
            method.swap_prob = swap_prob  # a 0/1 list draws exactly that mask
        runner(images, labels, method.draw_swap())

    return step


def eager_variants(teacher_arch: str, student_arch: str, device: torch.device, batch_size: int,
                   graphed: bool = False) -> list[Variant]:
    """Every method on the plain and on the folded teacher; each with its own student and optimizer.
    ``graphed``: the same as CUDA-graph steps, named and counted with a " graphed" suffix."""
    torch.manual_seed(0)
    teacher = models.build(teacher_arch, NUM_CLASSES).to(device).eval()
    folded = freeze_teacher(teacher)
    student = models.build(student_arch, NUM_CLASSES).to(device)
    images = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)
    tag = " graphed" if graphed else ""

    def build(name: str, t: models.ZooModel) -> methods.Method:
        return methods.build(name, copy.deepcopy(student), t, granularity="stage").to(device).train()

    def step(method, swap_prob=None):
        return training_step(method, images, labels, swap_prob, graphed=graphed)

    variants = [Variant(f"ce{tag}", f"ce{tag}", step(build("ce", teacher)))]
    for suffix, t in (("", teacher), (" folded", folded)):
        variants.append(Variant(f"kd{suffix}{tag}", f"kd{suffix}{tag}", step(build("kd", t))))
    variants.append(Variant(f"iakd p=0{tag}", f"iakd(0){tag}", step(build("iakd", teacher), 0.0)))
    for name in ("iakd", "iakd+kd"):
        for suffix, t in (("", teacher), (" folded", folded)):
            method = build(name, t)
            for mask in itertools.product((0.0, 1.0), repeat=method.num_units):
                bits = "".join(str(int(b)) for b in mask)
                variants.append(Variant(f"{name}{suffix} mask {bits}{tag}", f"{name}(0.5){suffix}{tag}",
                                        step(method, list(mask))))
    return variants


def lever_variants(teacher_arch: str, student_arch: str, device: torch.device, batch_size: int) -> list[Variant]:
    """The levers at p = 0.5 (every mask of stage granularity, each timed on its own; blend draws none)."""
    torch.manual_seed(0)
    teacher = models.build(teacher_arch, NUM_CLASSES).to(device).eval()
    student = models.build(student_arch, NUM_CLASSES).to(device)
    images = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)
    levers = {"blend(0.5)": ("iakd", {"mixing": "blend"}),
              "aux(0.5)": ("iakd", {"hybrid_weight": 0.5}),
              "kd+aux(0.5)": ("iakd+kd", {"hybrid_weight": 0.5, "ce_weight": 0.1}),
              "kd-on-student(0.5)": ("iakd+kd", {"kd_on": "student"})}
    variants = []
    for figure, (name, options) in levers.items():
        method = methods.build(name, copy.deepcopy(student), teacher, granularity="stage", **options).to(device)
        method.train()
        if options.get("mixing") == "blend":
            variants.append(Variant(figure, figure, training_step(method, images, labels, 0.5)))
            continue
        for mask in itertools.product((0.0, 1.0), repeat=method.num_units):
            bits = "".join(str(int(b)) for b in mask)
            variants.append(Variant(f"{figure} mask {bits}", figure,
                                    training_step(method, images, labels, list(mask))))
    return variants


def graphed_variants(teacher_arch: str, student_arch: str, device: torch.device, batch_size: int) -> list[Variant]:
    """The same steps as CUDA graphs (``iakd.step.GraphedStep``), timed beside the eager ones on CUDA; each
    mask's variant captures its own graph on its second step (in the warm-up round)."""
    return eager_variants(teacher_arch, student_arch, device, batch_size, graphed=True)


def measure(variants: list[Variant], device: torch.device, repeats: int, steps: int, warmup: int,
            clock: Callable[[], float] = time.perf_counter) -> None:
    """Round-robin over the variants (shuffled each round), ``steps`` steps per sample; warm-up rounds untimed."""
    order = list(variants)
    rng = random.Random(0)
    for round_index in range(warmup + repeats):
        rng.shuffle(order)
        for v in order:
            _synchronize(device)
            started = clock()
            for _ in range(steps):
                v.step()
            _synchronize(device)
            if round_index >= warmup:
                v.times.append((clock() - started) / steps)


def report(pair: str, variants: list[Variant], batch_size: int) -> None:
    figures: dict[str, list[Variant]] = {}
    for v in variants:
        figures.setdefault(v.figure, []).append(v)
    # Expected step time of a figure: the mean over its variants (all masks equally likely at p = 0.5).
    seconds = {name: statistics.fmean(v.median for v in vs) for name, vs in figures.items()}
    for name, vs in figures.items():
        ms = [v.median * 1e3 for v in vs]
        spread = f"  (mean of {len(vs)} masks, {min(ms):.0f}-{max(ms):.0f} ms)" if len(vs) > 1 else ""
        print(f"{pair}  {name:<22} {batch_size / seconds[name]:>9.1f} images/s  "
              f"{seconds[name] * 1e3:8.1f} ms/step{spread}")
    for v in variants:
        if v.figure.startswith("iakd(0.5)"):
            print(f"{pair}  {v.name:<22} {v.median * 1e3:8.1f} ms/step")

    def ratio(a: str, b: str, target: str = "") -> None:
        if a in seconds and b in seconds:
            print(f"{pair}  ratio {a}/{b} = {seconds[a] / seconds[b]:.3f}{target}")

    ratio("iakd(0.5)", "kd", "  (target <= 0.85)")
    ratio("iakd(0.5) folded", "kd folded", "  (target <= 0.85; both on the folded teacher)")
    ratio("iakd(0)", "ce", "  (target <= 1.05)")
    ratio("iakd+kd(0.5)", "kd")
    ratio("iakd+kd(0.5) folded", "kd folded")
    for lever in ("blend(0.5)", "aux(0.5)", "kd+aux(0.5)", "kd-on-student(0.5)"):
        ratio(lever, "kd", "  (a lever)")
        ratio(lever, "iakd(0.5)", "  (a lever against today's IAKD)")
    ratio("kd folded", "kd", "  (the fold's effect)")
    ratio("iakd(0.5) folded", "iakd(0.5)", "  (the fold's effect)")
    ratio("iakd+kd(0.5) folded", "iakd+kd(0.5)", "  (the fold's effect)")
    ratio("iakd(0.5) folded graphed", "kd folded graphed", "  (target <= 0.85; both graphed, folded teacher)")
    ratio("iakd(0) graphed", "ce graphed", "  (target <= 1.05; both graphed)")
    for name in [n for n in seconds if n.endswith(" graphed")]:
        ratio(name, name.removesuffix(" graphed"), "  (graphed / eager)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA where available), cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 6, quick 3)")
    parser.add_argument("--steps", type=int, default=None, help="steps per sample (default 2 on CPU, 20 on CUDA)")
    parser.add_argument("--pairs", default=None, help="teacher:student,... (default both; quick: resnet56:resnet20)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time (CPU only, use with --threads 1 on a "
                             "shared machine: time taken by other processes is then not counted)")
    parser.add_argument("--quick", action="store_true", help="one pair, fewer rounds")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    repeats = args.repeats or (3 if args.quick else 6)
    steps = args.steps or (20 if device.type == "cuda" else (1 if args.quick else 2))
    pairs = PAIRS[:1] if args.quick else PAIRS
    if args.pairs:
        pairs = tuple(tuple(p.split(":")) for p in args.pairs.split(","))
    if args.clock == "cpu" and device.type == "cuda":
        parser.error("--clock cpu measures the CPU's work; on CUDA use the wall clock")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"# step_time: torch {torch.__version__}, {name}, batch {args.batch_size}, {repeats} rounds x {steps} "
          f"steps after 1 warm-up round, fp32, {args.clock} clock")
    for teacher_arch, student_arch in pairs:
        variants = eager_variants(teacher_arch, student_arch, device, args.batch_size)
        variants += lever_variants(teacher_arch, student_arch, device, args.batch_size)
        if device.type == "cuda":
            variants += graphed_variants(teacher_arch, student_arch, device, args.batch_size)
        measure(variants, device, repeats, steps, warmup=1, clock=clock)
        report(f"{teacher_arch}->{student_arch}", variants, args.batch_size)


if __name__ == "__main__":
    main()
