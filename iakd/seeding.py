"""A run's random streams: one seed per kind of random choice, a function of the run's seed and the stream's name."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import numpy as np
import torch

__all__ = ["stream_seed", "seeded", "seed_globals"]


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
def seeded(seed: int, stream: str) -> Iterator[None]:
    """Run the block with the global RNGs seeded for ``stream``, and leave the caller's RNG states untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stream_seed(seed, stream))
        yield


def seed_globals(seed: int) -> None:
    """Seed the global RNGs (anything in a step that draws from them, e.g. dropout) for the training loop."""
    seed = stream_seed(seed, "global")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
