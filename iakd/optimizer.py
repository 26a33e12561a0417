"""The optimizer a config names: SGD over the trainable parameters, with a cosine or multistep lr schedule."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from iakd.config import OptimConfig

__all__ = ["lr_factor", "build_optimizer"]


def lr_factor(optim: OptimConfig) -> Callable[[int], float]:
    """The learning rate's factor (of ``optim.lr``) at the start of each epoch."""
    epochs = optim.epochs
    if optim.lr_schedule == "cosine":
        return lambda epoch: 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))
    # multistep: x gamma at each milestone (62.5 %, 75 %, 87.5 % of 240 epochs = 150, 180, 210)
    steps = [round(m * epochs) for m in optim.milestones]
    return lambda epoch: optim.gamma ** sum(epoch >= s for s in steps)


def build_optimizer(optim: OptimConfig, parameters: Iterable[torch.nn.Parameter]
                    ) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD over ``parameters`` as ``optim`` sets it, and the scheduler that steps its lr once per epoch."""
    optimizer = torch.optim.SGD(parameters, lr=optim.lr, momentum=optim.momentum,
                                weight_decay=optim.weight_decay, nesterov=optim.nesterov)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(optim))
