"""The device a run computes on: the one its config names, with ``auto`` resolved."""

from __future__ import annotations

import torch

from iakd.errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA where there is one; asking for ``cuda`` without one is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' asked for, but no CUDA device is available; use device=auto or cpu")
    return torch.device(name)
