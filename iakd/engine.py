"""The training engine: one function, ``train(cfg)``, that every single run and every search trial calls.

config -> (data, teacher, student, method, swap schedule) -> steps -> per-epoch metrics -> callbacks.
Each epoch writes an atomic checkpoint holding everything an exact resume needs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from iakd import methods, models, outcomes, schedules
from iakd.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng,
    copy_atomic,
    load_file,
    restore_rng,
    save_atomic,
    write_text_atomic,
)
from iakd.config import MethodConfig, StudentConfig, TrainConfig, flat_items, to_dict
from iakd.data import Dataset, load_dataset
from iakd.errors import ConfigError
from iakd.frozen import freeze_teacher
from iakd.judging import best_judged_epoch, evaluated, handed_over, judged_epochs
from iakd.step import Compute, EpochTotals, make_step
from iakd.teachers import cache_path, load_teacher, recorded_accuracy, save_teacher
from iakd.transplant import transplant

__all__ = ["Callback", "train", "evaluate", "prepare_teacher", "teacher_file", "resolve_device", "stream_seed",
           "build_student", "build_method", "teacher_warning", "load_data", "read_resume_checkpoint",
           "recompute_bn_statistics", "evaluated", "judged_epochs", "best_judged_epoch", "handed_over",
           "compute_changes", "config_differences"]

# Called after each epoch with its metrics and the checkpoint just written (or None); True asks to stop.
Callback = Callable[[dict[str, Any], "Path | None"], "bool | None"]

# Config keys a resumed run may change: where outputs go and inputs are read from, and how fast it runs. Every
# other key changes what is trained, so it must equal the checkpoint's.
RESUME_FREE_KEYS = ("out_dir", "device", "checkpoint_every", "data.dir", "data.num_workers", "data.download",
                    "teacher.checkpoint", "teacher.cache_dir", "compute.cuda_graphs", "compute.bf16",
                    "compute.channels_last")

# A teacher within this many points of chance accuracy cannot teach: its hybrid tends to diverge.
TEACHER_CHANCE_MARGIN = 5.0


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA where there is one; asking for ``cuda`` without one is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' asked for, but no CUDA device is available; use device=auto or cpu")
    return torch.device(name)


def stream_seed(seed: int, stream: str) -> int:
    """The seed of one random stream of a run (``student``, ``connectors``, ``order``, ``augment``, ``swap``,
    ``global``): a function of the run's seed and the stream's name only.

    Each random choice of a run draws from its own stream, so no choice depends on what was built, trained or
    drawn before it: ``ce``, ``kd`` and ``iakd`` at one seed start from the same student and see the same
    batches, and a run that first trains its teacher matches one that reads the teacher from the cache.
    """
    digest = hashlib.sha256(f"iakd:{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # < 2**63: valid for torch, numpy (mod 2**32) and random


@contextlib.contextmanager
def _seeded(seed: int, stream: str) -> Iterator[None]:
    """Run the block with the global RNGs seeded for ``stream``, and leave the caller's RNG states untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, stream))
        yield


def _seed_globals(seed: int) -> None:
    """Seed the global RNGs (anything in a step that draws from them, e.g. dropout) for the training loop."""
    seed = stream_seed(seed, "global")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_student(arch: str, num_classes: int, seed: int) -> models.ZooModel:
    """The student's initial weights: a function of (arch, num_classes, seed) alone."""
    with _seeded(seed, "student"):
        return models.build(arch, num_classes)


def build_method(cfg: TrainConfig, student: models.ZooModel, teacher: models.ZooModel | None,
                 input_size: int) -> methods.Method:
    """The config's method around ``student``; connectors (where widths differ) draw from their own stream."""
    m = cfg.method
    swaps = methods.METHODS[m.name].uses_swap
    levers = {"mixing": m.mixing, "hybrid_weight": m.hybrid_weight, "kd_on": m.kd_on} if swaps else {}
    with _seeded(cfg.seed, "connectors"):
        return methods.build(m.name, student, teacher, granularity=m.granularity, teacher_bn=m.teacher_bn,
                             ce_weight=m.ce_weight,
                             kd_weight=m.kd_weight, temperature=m.temperature,
                             swap_seed=stream_seed(cfg.seed, "swap"), input_size=input_size,
                             pair=f"{cfg.teacher.arch} -> {cfg.student.arch}", **levers)


def read_resume_checkpoint(path: str | Path, cfg: TrainConfig) -> dict[str, Any]:
    """The checkpoint a run resumes from, checked against its config: a ConfigError names the first key that
    differs (a resumed run must train what the checkpoint trained), or a foreign or corrupt file."""
    state = load_file(path, required=("format", "epoch", "trainable", "optimizer", "rng", "config"))
    if state["format"] != CHECKPOINT_FORMAT:
        raise ConfigError(f"checkpoint {path}: format {state['format']!r}, expected {CHECKPOINT_FORMAT!r}")
    for key, (saved, now) in config_differences(state["config"], cfg).items():
        if key not in RESUME_FREE_KEYS:
            raise ConfigError(f"--resume: {key} is {now!r} here but {saved!r} in {path}; a resumed run keeps every "
                              "key that changes training (start a new output folder instead)")
    return state


def config_differences(saved_config: dict[str, Any], cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Every dotted key whose value differs between a checkpoint's config and ``cfg``, in key order:
    key -> (checkpoint's value, value now); a key only one of them has is None in the other."""
    saved, now = flat_items(saved_config), flat_items(to_dict(cfg))
    return {key: (saved.get(key), now.get(key)) for key in sorted(set(saved) | set(now))
            if saved.get(key) != now.get(key)}


def compute_changes(saved_config: dict[str, Any], cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """The ``compute.*`` keys (how the step rounds, not what it trains) whose value differs between a checkpoint's
    config and the config resuming it: key -> (checkpoint's value, value now). A resumed run says so: its
    figures from the resume on come from other rounding than its first epochs'."""
    return {key: values for key, values in config_differences(saved_config, cfg).items() if key.startswith("compute.")}


def teacher_warning(accuracy: float, num_classes: int) -> str | None:
    """A warning when a teacher's test accuracy is within a few points of chance, else None."""
    chance = 100.0 / num_classes
    if accuracy < chance + TEACHER_CHANCE_MARGIN:
        return (f"the teacher's test accuracy {accuracy:.1f}% is within {TEACHER_CHANCE_MARGIN:g} points of chance "
                f"({chance:.1f}%): an untrained or wrong teacher file? A hybrid with it may diverge")
    return None


@torch.no_grad()
def recompute_bn_statistics(student: torch.nn.Module, split, max_images: int, compute: Compute | None = None,
                            batch_size: int = 256) -> None:
    """Recompute ``student``'s BatchNorm running statistics on the first ``max_images`` images of ``split``
    (unaugmented, in split order: no random stream is touched) with torch's ``update_bn``: the statistics of
    the pure student as it is now, not of the hybrids it trained in."""
    compute = compute or Compute(torch.device("cpu"))
    batch_size = min(batch_size, max_images)
    batches = itertools.islice(split.batches(batch_size, shuffle=False, augment=False),
                               math.ceil(min(len(split), max_images) / batch_size))
    with compute.autocast():
        torch.optim.swa_utils.update_bn((compute.prepare(images) for images, _ in batches), student)


@torch.no_grad()
def evaluate(model: torch.nn.Module, split, batch_size: int = 256, compute: Compute | None = None) -> float:
    """Top-1 accuracy in percent of ``model`` (in eval mode) on a split; NaN for an empty split."""
    if len(split) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    correct = 0
    for images, labels in split.batches(batch_size, shuffle=False, augment=False):
        if compute is None:
            logits = model(images)
        else:
            with compute.autocast():
                logits = model(compute.prepare(images))
        correct += (logits.argmax(1) == labels).sum()  # stays on the device: one read at the end
    model.train(was_training)
    return 100.0 * int(correct) / len(split)


def _lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    epochs = cfg.optim.epochs
    if cfg.optim.lr_schedule == "cosine":
        return lambda epoch: 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    # multistep: x gamma at each milestone (62.5 %, 75 %, 87.5 % of 240 epochs = 150, 180, 210)
    steps = [round(m * epochs) for m in cfg.optim.milestones]
    return lambda epoch: cfg.optim.gamma ** sum(epoch >= s for s in steps)


def _teacher_config(cfg: TrainConfig) -> TrainConfig:
    """The run that trains this config's teacher: method ce on the teacher's architecture, same recipe, on the
    whole training split (``data.train_size`` limits the student's data, not the teacher's). It checkpoints
    every epoch, so that a driver killed while it trains the teacher continues from its last epoch, and is
    evaluated once, at its end: nothing is chosen among its epochs, and evaluating changes no weight."""
    optim = dataclasses.replace(cfg.optim, epochs=cfg.teacher.epochs or cfg.optim.epochs,
                                batch_size=cfg.teacher.batch_size or cfg.optim.batch_size)
    return dataclasses.replace(cfg, student=StudentConfig(arch=cfg.teacher.arch), method=MethodConfig(name="ce"),
                               data=dataclasses.replace(cfg.data, train_size=None), optim=optim,
                               evaluation=dataclasses.replace(cfg.evaluation, every=optim.epochs),
                               checkpoint_every=1)


def teacher_file(cfg: TrainConfig) -> Path:
    """The teacher file this config uses: the given checkpoint, or the cache entry for its recipe."""
    if cfg.teacher.checkpoint:
        return Path(cfg.teacher.checkpoint)
    t = _teacher_config(cfg)
    data = {k: v for k, v in to_dict(t.data).items() if k not in ("dir", "num_workers", "download", "train_size")}
    return cache_path(cfg.teacher.cache_dir, dataset=cfg.data.name, arch=cfg.teacher.arch,
                      recipe={"data": data, "optim": to_dict(t.optim)}, seed=cfg.seed)


def prepare_teacher(cfg: TrainConfig, log: Callable[[str], None] = print) -> Path:
    """Make sure the teacher file exists: the given checkpoint must; a cached one is trained when missing."""
    path = teacher_file(cfg)
    if cfg.teacher.checkpoint:
        if not path.is_file():
            raise ConfigError(f"teacher.checkpoint: {path} not found")
        return path
    if path.is_file():
        log(f"teacher {cfg.teacher.arch}: reusing {path}")
        return path
    t_cfg = dataclasses.replace(_teacher_config(cfg), out_dir=str(path.with_suffix("")) + "-run")
    checkpoint = Path(t_cfg.out_dir) / "checkpoint.pt"
    resume = checkpoint if checkpoint.is_file() else None
    log(f"teacher {cfg.teacher.arch}: {'continuing' if resume else 'training'} {t_cfg.optim.epochs} epochs on "
        f"{cfg.data.name} -> {path}")
    result = train(t_cfg, log=log, prepare=False, resume_from=resume)
    if result["status"] != outcomes.FINISHED:
        raise RuntimeError(f"teacher training {result['status']}: {result['message']}")
    return copy_atomic(Path(t_cfg.out_dir) / "student.pt", path)  # already in the teacher file format


def load_data(cfg: TrainConfig, device: torch.device) -> Dataset:
    """The dataset a run config names, on ``device``."""
    d = cfg.data
    return load_dataset(d.name, d.dir, val_fraction=d.val_fraction, split_seed=d.split_seed, device=device,
                        download=d.download, image_size=d.image_size, num_workers=d.num_workers,
                        train_size=d.train_size)


def _evaluate_student(method: methods.Method, dataset: Dataset, cfg: TrainConfig,
                      compute: Compute) -> dict[str, float]:
    """The pure student's accuracies after an epoch, and what shows how the hybrid is doing.

    ``val_acc_running_bn`` uses the student's running BatchNorm statistics as training left them (inside
    hybrids, they describe hybrids); with ``evaluation.student_bn=recompute`` they are then recomputed on
    training images, and ``val_acc`` / ``test_acc`` use the recomputed ones (kept: they are the student's own).
    For swapping methods, ``rms_ratio_u<i>`` is unit i's student/teacher output RMS at the same input.
    """
    out = {}
    if method.uses_swap or cfg.evaluation.student_bn == "running":
        # Only a swapping student's running statistics describe something else than itself (its hybrids).
        out["val_acc_running_bn"] = evaluate(method, dataset.val, compute=compute)
    if cfg.evaluation.student_bn == "recompute":
        recompute_bn_statistics(method.student, dataset.train, cfg.evaluation.bn_images, compute)
        out["val_acc"] = evaluate(method, dataset.val, compute=compute)
    else:
        out["val_acc"] = out["val_acc_running_bn"]
    out["test_acc"] = evaluate(method, dataset.test, compute=compute)
    if method.uses_swap:
        probe, _ = next(dataset.train.batches(32, shuffle=False, augment=False))  # a fixed batch: cheap, comparable
        with compute.autocast():
            ratios = method.hybrid.unit_rms_ratios(compute.prepare(probe))
        out.update({f"rms_ratio_u{i}": r for i, r in enumerate(ratios)})
    return out


def _progress_line(m: dict[str, Any], cfg: TrainConfig) -> str:
    """One line per epoch: losses, the hybrid's (or student's) training accuracy, the pure student's val and
    test accuracy, its val accuracy with running BatchNorm statistics, p, the units' RMS ratios, speed."""
    swaps = methods.METHODS[cfg.method.name].uses_swap
    ratios = [v for k, v in m.items() if k.startswith("rms_ratio_u")]
    scores = ""
    if evaluated(m):
        running = f" (running bn {m['val_acc_running_bn']:5.1f}%)" if "val_acc_running_bn" in m else ""
        scores = f"val {m['val_acc']:5.1f}%{running}  test {m['test_acc']:5.1f}%  "
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
    optimizer = torch.optim.SGD(method.trainable_parameters(), lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                weight_decay=cfg.optim.weight_decay, nesterov=cfg.optim.nesterov)
    generators = {name: torch.Generator().manual_seed(stream_seed(cfg.seed, name)) for name in ("order", "augment")}
    generators["swap"] = getattr(method, "swap_generator", torch.Generator())
    return _Run(cfg, dataset, method, compute, schedules.build(cfg.schedule), optimizer,
                torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(cfg)), generators, teacher_acc, warning)


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
    _seed_globals(cfg.seed)
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
            metrics.update(_evaluate_student(run.method, run.dataset, cfg, run.compute))
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
