"""Teacher files in the RepDistiller / mdistiller format: ``{"model": state_dict, ...}`` plus our metadata.

A file from those projects (``<arch>_vanilla/ckpt_epoch_240.pth``) loads as it is. A teacher trained here adds
``arch``, ``dataset``, ``num_classes``, ``accuracy`` and ``config``; where such metadata is present it is checked
against what the run asks for.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from iakd import models
from iakd.checkpoint import load_file, save_atomic
from iakd.errors import ConfigError
from iakd.models import ZooModel

__all__ = ["save_teacher", "load_teacher", "recorded_accuracy", "cache_path"]


def save_teacher(path: str | Path, model: ZooModel, *, arch: str, dataset: str, num_classes: int,
                 accuracy: float | None, config: Mapping[str, Any] | None = None) -> Path:
    """Write a teacher file that RepDistiller, mdistiller and this project all read."""
    return save_atomic(
        {"model": model.state_dict(), "arch": arch, "dataset": dataset, "num_classes": num_classes,
         "accuracy": accuracy, "config": json.dumps(dict(config or {}), sort_keys=True, default=str)},
        path,
    )


def load_teacher(path: str | Path, arch: str, num_classes: int, dataset: str | None = None) -> ZooModel:
    """Build ``arch`` and load the teacher's weights strictly; mismatches name the file and the numbers.

    Where the file says which dataset and how many classes it was trained for (files trained here do), both
    must match the run's ``dataset`` and ``num_classes``.
    """
    state = load_file(path, what="teacher checkpoint", required=("model",))
    if state.get("arch", arch) != arch:
        raise ConfigError(f"teacher checkpoint {path}: holds a {state['arch']!r}, but teacher.arch is {arch!r}")
    if dataset is not None and state.get("dataset", dataset) != dataset:
        raise ConfigError(f"teacher checkpoint {path}: was trained on {state['dataset']!r}, but data.name is "
                          f"{dataset!r}")
    if state.get("num_classes", num_classes) != num_classes:
        raise ConfigError(f"teacher checkpoint {path}: has {state['num_classes']} classes, the dataset has "
                          f"{num_classes}")
    weights = state["model"]
    if not isinstance(weights, Mapping) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ConfigError(f"teacher checkpoint {path}: its 'model' entry is not a state dict (name -> tensor)")
    head = next((weights[k] for k in ("fc.weight", "classifier.weight") if k in weights), None)
    if head is not None and head.shape[0] != num_classes:
        raise ConfigError(f"teacher checkpoint {path}: has {head.shape[0]} classes, the dataset has {num_classes}")
    model = models.build(arch, num_classes)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ConfigError(f"teacher checkpoint {path}: does not fit {arch!r} ({first[:160]})") from None
    return model.requires_grad_(False).eval()


def recorded_accuracy(path: str | Path, dataset: str, image_size: int | None) -> float | None:
    """The test accuracy a teacher file trained here records, when it was measured on this dataset at this image
    size; None otherwise (a file from elsewhere, or another size), and the caller measures it."""
    state = load_file(path, what="teacher checkpoint", required=("model",))
    try:
        size = json.loads(state.get("config") or "{}").get("data", {}).get("image_size")
    except (TypeError, ValueError, AttributeError):
        return None
    if state.get("dataset") != dataset or size != image_size or state.get("accuracy") is None:
        return None
    return float(state["accuracy"])


def cache_path(cache_dir: str | Path, *, dataset: str, arch: str, recipe: Mapping[str, Any], seed: int) -> Path:
    """Where the teacher for (dataset, arch, recipe, seed) is cached: a second request reuses the file."""
    key = json.dumps({"dataset": dataset, "arch": arch, "recipe": recipe, "seed": seed}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / f"{dataset}-{arch}-{digest}.pth"
