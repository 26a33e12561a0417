"""Units: the runs of blocks that swapping-in exchanges between student and teacher.

A granularity cuts every stage of both networks into the same number of contiguous, near-equal runs:
``"stage"`` one run per stage, an integer ``k`` k runs per stage, ``"block"`` one run per student block.
Unit i of the student and unit i of the teacher therefore start and end at the same position between
stage boundaries, and must meet the same spatial size there; widths may differ (connectors bridge them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import nn

from iakd.errors import ConfigError
from iakd.models import ZooModel

Granularity = Union[str, int]

__all__ = ["Granularity", "Unit", "partition", "valid_granularities", "parse_granularity"]


@dataclass(frozen=True)
class Unit:
    """A run of consecutive blocks of one stage, with the activation shapes (C, H, W) it maps between."""

    stage: int
    blocks: tuple[nn.Module, ...]
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]


def parse_granularity(value: Granularity) -> Granularity:
    """Accept ``"stage"``, ``"block"``, a positive int, or its string form ("3"); anything else is an error."""
    if isinstance(value, bool):
        raise ConfigError(f"granularity: {value!r} is not one of 'stage', 'block' or a positive integer")
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value in ("stage", "block") or (isinstance(value, int) and value >= 1):
        return value
    raise ConfigError(f"granularity: {value!r} is not one of 'stage', 'block' or a positive integer")


def _split(n: int, k: int) -> list[tuple[int, int]]:
    """k contiguous near-equal runs of range(n), larger runs first: 9 into 2 gives [0, 5), [5, 9)."""
    base, extra = divmod(n, k)
    bounds, start = [], 0
    for i in range(k):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


@torch.no_grad()
def block_shapes(model: ZooModel, input_size: int | None = None) -> list[list[tuple[tuple[int, ...], tuple[int, ...]]]]:
    """Per stage, per block: the (C, H, W) shapes going in and out, found by one probe forward in eval mode."""
    size = input_size or model.input_size
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        x = model.forward_stem(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype))
        shapes = []
        for stage in model.stages():
            stage_shapes = []
            for block in stage:
                y = block(x)
                stage_shapes.append((tuple(x.shape[1:]), tuple(y.shape[1:])))
                x = y
            shapes.append(stage_shapes)
    finally:
        model.train(was_training)
    return shapes


def _runs_per_stage(student_blocks: list[int], teacher_blocks: list[int], granularity: Granularity, pair: str) -> list[int]:
    runs = []
    for s, (n_s, n_t) in enumerate(zip(student_blocks, teacher_blocks)):
        k = {"stage": 1, "block": n_s}.get(granularity, granularity)
        if k > n_s or k > n_t:
            raise ConfigError(
                f"granularity {granularity!r} impossible for {pair}: stage {s} has {n_s} student and "
                f"{n_t} teacher blocks, fewer than the {k} units asked for"
            )
        runs.append(k)
    return runs


def partition(
    student: ZooModel,
    teacher: ZooModel,
    granularity: Granularity,
    *,
    input_size: int | None = None,
    pair: str = "student/teacher",
) -> tuple[list[Unit], list[Unit]]:
    """Cut student and teacher into aligned units; raise ConfigError naming pair, stage and numbers if impossible."""
    return _partition(student.stages(), teacher.stages(), *_probe(student, teacher, input_size, pair), granularity, pair)


def _probe(student: ZooModel, teacher: ZooModel, input_size: int | None, pair: str) -> tuple[list, list]:
    if len(student.stages()) != len(teacher.stages()):
        raise ConfigError(
            f"{pair}: the student has {len(student.stages())} stages and the teacher {len(teacher.stages())}; they must match"
        )
    return block_shapes(student, input_size), block_shapes(teacher, input_size)


def _partition(s_stages: list, t_stages: list, s_shapes: list, t_shapes: list, granularity: Granularity, pair: str) -> tuple[list[Unit], list[Unit]]:
    granularity = parse_granularity(granularity)
    runs = _runs_per_stage([len(st) for st in s_stages], [len(st) for st in t_stages], granularity, pair)
    s_units: list[Unit] = []
    t_units: list[Unit] = []
    for stage, k in enumerate(runs):
        for (s0, s1), (t0, t1) in zip(_split(len(s_stages[stage]), k), _split(len(t_stages[stage]), k)):
            su = Unit(stage, tuple(s_stages[stage][s0:s1]), s_shapes[stage][s0][0], s_shapes[stage][s1 - 1][1])
            tu = Unit(stage, tuple(t_stages[stage][t0:t1]), t_shapes[stage][t0][0], t_shapes[stage][t1 - 1][1])
            for where, a, b in (("input", su.in_shape, tu.in_shape), ("output", su.out_shape, tu.out_shape)):
                if a[1:] != b[1:]:
                    raise ConfigError(
                        f"{pair}: unit {len(s_units)} (stage {stage}) {where} is {a[1]}x{a[2]} in the student "
                        f"and {b[1]}x{b[2]} in the teacher; spatial sizes must match"
                    )
            s_units.append(su)
            t_units.append(tu)
    return s_units, t_units


def valid_granularities(
    student: ZooModel, teacher: ZooModel, *, input_size: int | None = None, pair: str = "student/teacher"
) -> list[Granularity]:
    """Every granularity that `partition` accepts for this pair: "stage", each integer k >= 2, "block"."""
    s_stages, t_stages = student.stages(), teacher.stages()
    shapes = _probe(student, teacher, input_size, pair)
    candidates: list[Granularity] = ["stage"]
    candidates += list(range(2, max(len(st) for st in student.stages()) + 1))
    candidates.append("block")
    valid = []
    for g in candidates:
        try:
            _partition(s_stages, t_stages, *shapes, g, pair)
        except ConfigError:
            continue
        valid.append(g)
    return valid
