"""Initialising a student from its teacher (``student.init: teacher``), as BERT-of-Theseus starts its successor.

The parts of the two networks are matched by their place in the zoo's anatomy (:class:`~iakd.models.ZooModel`):

- a module outside the stages (the stem's convolution and BatchNorm, a pre-head BatchNorm, the classifier) by its
  attribute path (``conv1``, ``bn1``, ``fc``, ``classifier``);
- block j of stage i of the student by block j of stage i of the teacher: a student with fewer blocks per stage
  receives the teacher's first blocks.

A part is copied whole (weights and BatchNorm statistics) where every tensor has the same name and shape in
both, and left as initialised otherwise. For the shipped pairs, where student and teacher have the same widths,
that is the stem, the classifier and the first ``n`` blocks of each stage for a student with ``n`` per stage.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from iakd.models import ZooModel, build

__all__ = ["parts", "transplant", "transplant_plan"]


def parts(model: ZooModel) -> dict[str, dict[str, torch.Tensor]]:
    """Part name -> {name within the part: tensor} for every entry of ``model.state_dict()``, in model order.

    A block's part is ``stage <i> block <j>`` (both from 1), its names as in the block's own state_dict; anything
    else belongs to the module that holds it (``conv1``, ``bn1``, ``fc``)."""
    owner: dict[int, tuple[str, str]] = {}
    for i, stage in enumerate(model.stages(), start=1):
        for j, block in enumerate(stage, start=1):
            for name, tensor in block.state_dict(keep_vars=True).items():
                owner[id(tensor)] = (f"stage {i} block {j}", name)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        part, name = owner.get(id(tensor)) or tuple(key.rsplit(".", 1))  # type: ignore[assignment]
        out.setdefault(part, {})[name] = tensor
    return out


def _matching(student: dict[str, dict[str, torch.Tensor]], teacher: dict[str, dict[str, torch.Tensor]]) -> list[str]:
    return [part for part, tensors in student.items()
            if part in teacher and tensors.keys() == teacher[part].keys()
            and all(t.shape == teacher[part][name].shape for name, t in tensors.items())]


@torch.no_grad()
def transplant(student: ZooModel, teacher: nn.Module) -> list[str]:
    """Copy into ``student`` every part whose tensors have the teacher's names and shapes; return their names.

    ``teacher`` must still hold its BatchNorm layers (a folded teacher has other tensors and matches less)."""
    s_parts, t_parts = parts(student), parts(teacher)  # type: ignore[arg-type]
    copied = _matching(s_parts, t_parts)
    for part in copied:
        for name, tensor in s_parts[part].items():
            tensor.copy_(t_parts[part][name])
    return copied


@functools.cache
def transplant_plan(student_arch: str, teacher_arch: str, num_classes: int = 10) -> tuple[str, ...]:
    """The parts ``transplant`` copies for a pair of architectures (empty: nothing fits), without any weights;
    what the config check asks before a run starts."""
    return tuple(_matching(parts(build(student_arch, num_classes)), parts(build(teacher_arch, num_classes))))
