"""The teacher a config uses: its file (given, or cached per recipe and trained when missing), checked for chance."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from iakd import outcomes
from iakd.checkpoint import copy_atomic
from iakd.config import MethodConfig, StudentConfig, TrainConfig, to_dict
from iakd.errors import ConfigError, RunError
from iakd.teachers import cache_path

__all__ = ["TEACHER_CHANCE_MARGIN", "teacher_file", "prepare_teacher", "teacher_warning"]

# A teacher within this many points of chance accuracy cannot teach: its hybrid tends to diverge.
TEACHER_CHANCE_MARGIN = 5.0


def teacher_warning(accuracy: float, num_classes: int) -> str | None:
    """A warning when a teacher's test accuracy is within a few points of chance, else None."""
    chance = 100.0 / num_classes
    if accuracy < chance + TEACHER_CHANCE_MARGIN:
        return (f"the teacher's test accuracy {accuracy:.1f}% is within {TEACHER_CHANCE_MARGIN:g} points of chance "
                f"({chance:.1f}%): an untrained or wrong teacher file? A hybrid with it may diverge")
    return None


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
    # Imported here: the engine asks this module for its teacher, and a teacher is trained by the engine.
    from iakd.engine import train

    t_cfg = dataclasses.replace(_teacher_config(cfg), out_dir=str(path.with_suffix("")) + "-run")
    checkpoint = Path(t_cfg.out_dir) / "checkpoint.pt"
    resume = checkpoint if checkpoint.is_file() else None
    log(f"teacher {cfg.teacher.arch}: {'continuing' if resume else 'training'} {t_cfg.optim.epochs} epochs on "
        f"{cfg.data.name} -> {path}")
    result = train(t_cfg, log=log, prepare=False, resume_from=resume)
    if result["status"] != outcomes.FINISHED:
        raise RunError(f"teacher training {result['status']}: {result['message']} (its recipe is the run's optim "
                       "section; or give a trained teacher with teacher.checkpoint)")
    return copy_atomic(Path(t_cfg.out_dir) / "student.pt", path)  # already in the teacher file format
