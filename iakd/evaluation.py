"""Evaluation: a model's top-1 accuracy on a split, and the pure student's scores after an epoch of training."""

from __future__ import annotations

import itertools
import math

import torch

from iakd import methods
from iakd.config import TrainConfig
from iakd.data import Dataset
from iakd.step import Compute

__all__ = ["evaluate", "recompute_bn_statistics", "evaluate_student"]


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


def evaluate_student(method: methods.Method, dataset: Dataset, cfg: TrainConfig,
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
