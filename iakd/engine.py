"""The training loop: ``train(cfg)``, which every single run and every search trial calls.

config -> (data, teacher, student, method, swap schedule) -> steps -> per-epoch metrics -> callbacks.
Each epoch writes an atomic checkpoint holding everything an exact resume needs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import yaml

from iakd import methods, models, outcomes, schedules
from iakd.checkpoint import CHECKPOINT_FORMAT, capture_rng, restore_rng, save_atomic, write_text_atomic
from iakd.config import TrainConfig, to_dict
from iakd.data import Dataset, load_dataset
from iakd.devices import resolve_device
from iakd.errors import ConfigError
from iakd.evaluation import evaluate, evaluate_student
from iakd.frozen import freeze_teacher
from iakd.judging import best_judged_epoch, evaluated
from iakd.optimizer import build_optimizer
from iakd.resume import compute_changes, read_resume_checkpoint
from iakd.seeding import seed_globals, seeded, stream_seed
from iakd.step import Compute, EpochTotals, make_step
from iakd.teacher_cache import prepare_teacher, teacher_file, teacher_warning
from iakd.teachers import load_teacher, recorded_accuracy, save_teacher
from iakd.transplant import transplant

__all__ = ["Callback", "train", "build_student", "build_method", "load_data"]

# Called after each epoch with its metrics and the checkpoint just written (or None); True asks to stop.
Callback = Callable[[dict[str, Any], "Path | None"], "bool | None"]


def build_student(arch: str, num_classes: int, seed: int) -> models.ZooModel:
    """The student's initial weights: a function of (arch, num_classes, seed) alone."""
    with seeded(seed, "student"):
        return models.build(arch, num_classes)


def build_method(cfg: TrainConfig, student: models.ZooModel, teacher: models.ZooModel | None,
                 input_size: int) -> methods.Method:
    """The config's method around ``student``; connectors (where widths differ) draw from their own stream."""
    m = cfg.method
    swaps = methods.METHODS[m.name].uses_swap
    levers = {"mixing": m.mixing, "hybrid_weight": m.hybrid_weight, "kd_on": m.kd_on} if swaps else {}
    with seeded(cfg.seed, "connectors"):
        return methods.build(m.name, student, teacher, granularity=m.granularity, teacher_bn=m.teacher_bn,
                             ce_weight=m.ce_weight,
                             kd_weight=m.kd_weight, temperature=m.temperature,
                             swap_seed=stream_seed(cfg.seed, "swap"), input_size=input_size,
                             pair=f"{cfg.teacher.arch} -> {cfg.student.arch}", **levers)


def load_data(cfg: TrainConfig, device: torch.device) -> Dataset:
    """The dataset a run config names, on ``device``."""
    d = cfg.data
    return load_dataset(d.name, d.dir, val_fraction=d.val_fraction, split_seed=d.split_seed, device=device,
                        download=d.download, image_size=d.image_size, num_workers=d.num_workers,
                        train_size=d.train_size)


def _progress_line(m: dict[str, Any], cfg: TrainConfig) -> str:
    """One line per epoch: losses, the hybrid's (or student's) training accuracy, the pure student's val and
    test accuracy, its val accuracy with running BatchNorm statistics, p, the units' RMS ratios, speed."""
    swaps = methods.METHODS[cfg.method.name].uses_swap
    ratios = [v for k, v in m.items() if k.startswith("rms_ratio_u")]
    scores = ""
    if evaluated(m):
        running = f" (running bn {m['val_acc_running_bn']:5.1f}%)" if "val_acc_running_bn" in m else ""
        # NaN: an empty validation split (data.val_fraction=0), nothing to show
        val = f"val {m['val_acc']:5.1f}%{running}  " if math.isfinite(m["val_acc"]) else ""
        scores = f"{val}test {m['test_acc']:5.1f}%  "
    return (f"epoch {m['epoch']:>3}/{cfg.optim.epochs}  loss {m['train_loss']:.4f}  "
            f"{'hybrid' if swaps else 'train'} {m['train_acc']:5.1f}%  {scores}p {m['swap_prob']:.3f}"
            + (f"  rms s/t {' '.join(f'{r:.2f}' for r in ratios)}" if ratios else "")
            + f"  lr {m['lr']:.4g}  {m['epoch_seconds']:.1f}s ({m['images_per_second']:.0f} img/s)")


@dataclasses.dataclass
class _Run:
    """One training run's state: what it trains, how, where it is, and everything an exact resume restores."""

    cfg: TrainConfig
    dataset: Dataset
    method: methods.Method
    compute: Compute
    schedule: schedules.SwapSchedule
    optimizer: torch.optim.SGD
    lr_scheduler: torch.optim.lr_scheduler.LambdaLR
    generators: dict[str, torch.Generator]
    teacher_acc: float | None = None
    teacher_warning: str | None = None
    epoch: int = 0  # epochs done
    step: int = 0  # steps done
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def total_steps(self) -> int:
        return self.cfg.optim.epochs * math.ceil(len(self.dataset.train) / self.cfg.optim.batch_size)

    def restore(self, state: dict[str, Any], source: str | Path) -> None:
        """Continue exactly where ``state`` (a checkpoint read by ``read_resume_checkpoint``) stopped."""
        try:
            self.method.load_trainable_state_dict(state["trainable"])
        except (KeyError, RuntimeError) as e:
            raise ConfigError(f"checkpoint {source}: does not fit this config ({str(e)[:160]})") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        restore_rng(state["rng"], **self.generators)
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])

    def save(self, path: Path) -> Path:
        """An atomic checkpoint holding everything :meth:`restore` needs."""
        return save_atomic({
            "format": CHECKPOINT_FORMAT, "epoch": self.epoch, "step": self.step, "config": to_dict(self.cfg),
            "trainable": self.method.trainable_state_dict(), "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(), "rng": capture_rng(**self.generators),
            "history": self.history,
        }, path)

    def train_epoch(self, step_fn, totals: EpochTotals) -> tuple[dict[str, Any], float | None]:
        """One epoch of steps; its training metrics (read from the device once), or the first non-finite loss."""
        cfg, method, schedule = self.cfg, self.method, self.schedule
        method.train()
        started = time.perf_counter()
        totals.reset()  # the epoch's sums stay on the device and are read once, after its last step
        step_fn.set_lr()
        seen = swapped = swap_draws = 0
        prob_sum = 0.0
        started_alone = schedule.ended(self.step / self.total_steps)
        batches = self.dataset.train.batches(cfg.optim.batch_size, shuffle=True, augment=True,
                                             generator=self.generators["order"],
                                             augment_generator=self.generators["augment"])
        for images, labels in batches:
            progress = self.step / self.total_steps
            if method.uses_swap:
                method.swap_prob = schedule.unit_probs(progress, method.num_units)
            swap = method.draw_swap()  # on the host, from the run's swap stream; None when nothing swaps
            step_fn(images, labels, swap)
            self.step += 1
            seen += labels.shape[0]
            if swap is not None:
                prob_sum += schedule(progress)
                swapped += sum(swap)
                swap_draws += len(swap)
        epoch_metrics, first_bad = totals.read(seen)
        if first_bad is not None:
            return {}, first_bad
        lr = self.optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():  # the graphed step updates without optimizer.step(), which torch looks for
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
            self.lr_scheduler.step()
        seconds = time.perf_counter() - started
        previous = self.history[-1] if self.history else {}
        self.epoch += 1
        return {
            "epoch": self.epoch,
            **epoch_metrics,
            "lr": lr,
            "swap_prob": prob_sum / math.ceil(seen / cfg.optim.batch_size),
            "swap_rate": swapped / swap_draws if swap_draws else 0.0,
            # the schedule had ended when the epoch began: judged from here on (iakd.judging.handed_over)
            **({"handed_over": float(started_alone)} if method.uses_swap else {}),
            "epoch_seconds": seconds,
            "images_per_second": seen / seconds,
            # cumulative cost: what the analysis sets accuracy against
            "images_seen": previous.get("images_seen", 0) + seen,
            "train_seconds": previous.get("train_seconds", 0.0) + seconds,
        }, None

    def result(self, status: str, message: str) -> dict[str, Any]:
        """What ``train`` returns: status, history and the final figures (best over the judged epochs)."""
        history = self.history
        best = best_judged_epoch(history)
        last = next((h for h in reversed(history) if evaluated(h)), {})  # the last epoch always is, unless stopped
        return {
            "status": status,
            "message": message,
            "epochs": len(history),
            "num_classes": self.dataset.num_classes,
            "teacher_test_acc": self.teacher_acc,
            "teacher_warning": self.teacher_warning,
            # best over the epochs the run is judged on (after its schedule handed over): see judged_epochs
            "best_val_acc": best["val_acc"] if best is not None else float("nan"),
            "best_epoch": best["epoch"] if best is not None else None,
            "last_val_acc": last.get("val_acc", float("nan")),
            "last_test_acc": last.get("test_acc", float("nan")),
            "history": history,
        }


def _build_run(cfg: TrainConfig, device: torch.device, *, prepare: bool, log: Callable[[str], None]) -> _Run:
    """config -> data, teacher, student, method, optimizer and the run's random streams."""
    dataset = load_data(cfg, device)
    teacher, teacher_acc, warning = None, None, None
    student = build_student(cfg.student.arch, dataset.num_classes, cfg.seed)
    uses_teacher = methods.METHODS[cfg.method.name].uses_teacher
    if uses_teacher or cfg.student.init == "teacher":
        path = prepare_teacher(cfg, log) if prepare else teacher_file(cfg)
        teacher = load_teacher(path, cfg.teacher.arch, dataset.num_classes, dataset=cfg.data.name).to(device)
        if cfg.student.init == "teacher":  # before any folding: the copied parts include BatchNorm layers
            copied = transplant(student, teacher)
            log(f"student {cfg.student.arch} initialised from the teacher: {', '.join(copied)}")
    if uses_teacher:
        # A teacher trained here records its test accuracy; measuring it again costs a pass over the test split
        # per run (10,000 images through resnet20 on Fashion-MNIST: 11 s of a 100-s run on a CPU core)
        teacher_acc = recorded_accuracy(path, cfg.data.name, cfg.data.image_size)
        how = "as its file records it"
        if teacher_acc is None:
            teacher_acc, how = evaluate(teacher, dataset.test), "measured"
        log(f"teacher {cfg.teacher.arch} from {path}: test acc {teacher_acc:.2f}% ({how})")
        warning = teacher_warning(teacher_acc, dataset.num_classes)
        if warning:
            log(f"warning: {warning}")
        if cfg.method.teacher_bn == "frozen" or not methods.METHODS[cfg.method.name].uses_swap:
            teacher = freeze_teacher(teacher)  # BatchNorm folded into the convolutions: it only ever infers
        # else the hybrid's copy needs the BatchNorm layers (it normalises with batch statistics), and the
        # standalone teacher (IAKD+KD's logits) is the loaded one in eval mode: the same arithmetic, unfolded
    else:
        teacher = None  # only lent its weights to the student
    method = build_method(cfg, student, teacher, dataset.image_size).to(device)
    compute = Compute(device, bf16=cfg.compute.bf16, channels_last=cfg.compute.channels_last)
    compute.apply(method)
    optimizer, lr_scheduler = build_optimizer(cfg.optim, method.trainable_parameters())
    generators = {name: torch.Generator().manual_seed(stream_seed(cfg.seed, name)) for name in ("order", "augment")}
    generators["swap"] = getattr(method, "swap_generator", torch.Generator())
    return _Run(cfg, dataset, method, compute, cfg.schedule, optimizer, lr_scheduler, generators,
                teacher_acc, warning)


def train(
    cfg: TrainConfig,
    callbacks: Iterable[Callback] = (),
    *,
    resume_from: str | Path | None = None,
    log: Callable[[str], None] = print,
    prepare: bool = True,
) -> dict[str, Any]:
    """Train one student (or, with method ``ce``, one network alone) and return the final metrics.

    ``resume_from`` continues from a checkpoint exactly. The result has ``status`` (finished, stopped or
    diverged), ``message``, ``history`` (per-epoch metrics), the final figures (best/last val accuracy, last
    test accuracy), and the teacher's test accuracy with a ``teacher_warning`` when it is near chance.
    """
    callbacks = list(callbacks)
    device = resolve_device(cfg.device)
    out_dir = Path(cfg.out_dir)
    # Before any data or teacher work: a checkpoint that cannot be resumed fails in a second, not after minutes.
    state = read_resume_checkpoint(resume_from, cfg) if resume_from is not None else None
    run = _build_run(cfg, device, prepare=prepare, log=log)
    seed_globals(cfg.seed)
    if state is not None:
        run.restore(state, resume_from)
        log(f"resumed from {resume_from} at epoch {run.epoch}")
        for key, (before, now) in compute_changes(state["config"], cfg).items():
            log(f"resumed with {key}={now} (the checkpoint's epochs ran with {before}): rounding changes here")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    totals = EpochTotals(device)
    step_fn = make_step(run.method, run.optimizer, totals, run.compute, cuda_graphs=cfg.compute.cuda_graphs)
    status, message = outcomes.FINISHED, f"trained {cfg.optim.epochs} epochs"
    while run.epoch < cfg.optim.epochs:
        metrics, first_bad = run.train_epoch(step_fn, totals)
        if first_bad is not None:  # a NaN ends the run at this epoch
            status, message = outcomes.DIVERGED, f"diverged at epoch {run.epoch + 1}: loss is {first_bad}"
            log(message)
            break
        if run.epoch % cfg.evaluation.every == 0 or run.epoch == cfg.optim.epochs:
            metrics.update(evaluate_student(run.method, run.dataset, cfg, run.compute))
        run.history.append(metrics)
        log(_progress_line(metrics, cfg))
        due = run.epoch % cfg.checkpoint_every == 0 or run.epoch == cfg.optim.epochs
        checkpoint = run.save(out_dir / "checkpoint.pt") if due else None
        write_text_atomic(out_dir / "metrics.json", json.dumps(run.history, indent=1))
        if any([cb(metrics, checkpoint) for cb in callbacks]):  # every callback sees every epoch
            status, message = outcomes.STOPPED, f"stopped by a callback after epoch {run.epoch}"
            break
    # the file records the test accuracy of the weights it holds: known only when the last epoch was evaluated
    final = run.history[-1] if run.history and evaluated(run.history[-1]) else None
    save_teacher(out_dir / "student.pt", run.method.student, arch=cfg.student.arch, dataset=cfg.data.name,
                 num_classes=run.dataset.num_classes, accuracy=final["test_acc"] if final else None,
                 config=to_dict(cfg))
    return run.result(status, message)
