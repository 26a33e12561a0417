"""Whether a checkpoint can resume a config: which keys differ, which of them a resume may change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iakd.checkpoint import CHECKPOINT_FORMAT, load_file
from iakd.config import TrainConfig, flat_items, to_dict
from iakd.errors import ConfigError

__all__ = ["RESUME_FREE_KEYS", "read_resume_checkpoint", "config_differences", "compute_changes"]

# Config keys a resumed run may change: where outputs go and inputs are read from, and how fast it runs. Every
# other key changes what is trained, so it must equal the checkpoint's.
RESUME_FREE_KEYS = ("out_dir", "device", "checkpoint_every", "data.dir", "data.num_workers", "data.download",
                    "teacher.checkpoint", "teacher.cache_dir", "compute.cuda_graphs", "compute.bf16",
                    "compute.channels_last")


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
