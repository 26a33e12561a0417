"""The sweep's teacher, once, before any trial: trained (or checked) on the driver and shared with every trial
through the storage path, and a warning when it is near chance accuracy."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from iakd.checkpoint import load_file
from iakd.config import TrainConfig
from iakd.engine import load_data
from iakd.evaluation import evaluate
from iakd.search import storage
from iakd.teacher_cache import prepare_teacher, teacher_file, teacher_warning
from iakd.teachers import load_teacher, recorded_accuracy

__all__ = ["share_teacher", "check_teacher"]


def share_teacher(base: TrainConfig, storage_path: str, *, log: Callable[[str], None] = print) -> str:
    """Train (or check) the sweep's teacher once, here, and return where every trial reads it.

    On a folder (local or NFS) a trained teacher is cached under ``<storage_path>/teachers`` and trials read it
    there; a given ``teacher.checkpoint`` is read where it is. Behind a URI (``s3://``...) the driver keeps its
    copy in ``teacher.cache_dir`` and publishes the file to ``<storage_path>/teachers/``, where trials on any
    node, and a resumed sweep on a new head node, find it.
    """
    if not storage.is_uri(storage_path):
        if not base.teacher.checkpoint:
            base.teacher.cache_dir = str(Path(storage_path) / "teachers")
        return str(prepare_teacher(base, log=log))
    if base.teacher.checkpoint:
        local = prepare_teacher(base, log=log)  # checks that the given file exists
        # users' files may share a name: the published one carries its content's digest
        remote = storage.join(storage_path, "teachers", f"{local.stem}-{_file_digest(local)}{local.suffix}")
    else:
        local = teacher_file(base)
        remote = storage.join(storage_path, "teachers", local.name)  # the cache key already names the recipe
        if not local.is_file() and storage.exists(remote):
            log(f"teacher {base.teacher.arch}: fetching {remote}")
            storage.download(remote, local)
        local = prepare_teacher(base, log=log)
    if not storage.exists(remote):
        log(f"teacher {base.teacher.arch}: publishing {local} -> {remote}")
        storage.upload(local, remote)
    return remote


def check_teacher(base: TrainConfig, teacher_path: str) -> str | None:
    """A warning when the sweep's teacher is within a few points of chance accuracy (see teacher_cache.teacher_warning).

    A teacher trained here on this dataset and size carries its test accuracy (the trials take the same figure,
    ``recorded_accuracy``); another file is evaluated on the test split once.
    """
    local = storage.fetch(teacher_path)
    accuracy = recorded_accuracy(local, base.data.name, base.data.image_size)
    if accuracy is not None:  # a file trained here records its classes beside its accuracy
        return teacher_warning(accuracy, int(load_file(local, what="teacher checkpoint")["num_classes"]))
    dataset = load_data(dataclasses.replace(base, device="cpu"), torch.device("cpu"))
    teacher = load_teacher(local, base.teacher.arch, dataset.num_classes)
    return teacher_warning(evaluate(teacher, dataset.test), dataset.num_classes)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]
