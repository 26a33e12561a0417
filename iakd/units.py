"""Units: the runs of blocks that swapping-in exchanges between student and teacher.

A granularity cuts every stage of both networks into the same number of contiguous, near-equal runs:
``"stage"`` one run per stage, an integer ``k`` k runs per stage, ``"block"`` one run per student block.
Unit i of the student and unit i of the teacher therefore start and end at the same position between
stage boundaries, and must meet the same spatial size there; widths may differ (connectors bridge them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from iakd.errors import ConfigError
from iakd.models import ZooModel

Granularity = str | int

__all__ = ["Granularity", "Unit", "canonical_granularity", "parse_granularity", "partition", "valid_granularities"]


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
    """Per stage, per block: the (C, H, W) shapes going in and out, found by one probe forward in eval mode.

    The probe holds two images: a teacher whose BatchNorm normalises with batch statistics
    (:class:`iakd.frozen.BatchStatisticsNorm`) cannot normalise a 1x1 map of a single image."""
    size = input_size or model.input_size
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        x = model.forward_stem(torch.zeros(2, 3, size, size, device=param.device, dtype=param.dtype))
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


def _runs_per_stage(student_blocks: Sequence[int], teacher_blocks: Sequence[int], granularity: Granularity,
                    pair: str) -> list[int]:
    """How many units each stage is cut into; a ConfigError if a stage of either network has too few blocks."""
    runs = []
    for s, (n_s, n_t) in enumerate(zip(student_blocks, teacher_blocks)):
        k = {"stage": 1, "block": n_s}.get(granularity, granularity)
        if k > n_s or k > n_t:
            raise ConfigError(
                f"granularity: {granularity!r} is impossible for {pair}: stage {s} has {n_s} student and "
                f"{n_t} teacher blocks, fewer than the {k} units asked for"
            )
        runs.append(k)
    return runs


def canonical_granularity(student_blocks: Sequence[int], teacher_blocks: Sequence[int], granularity: Granularity,
                          pair: str = "student/teacher") -> Granularity:
    """The one name of the partition ``granularity`` makes of this pair: ``"stage"`` where it cuts one unit per
    stage (k = 1, or ``block`` on single-block stages), ``"block"`` where it cuts every student block apart (k
    equal to the student's blocks in every stage), else the integer k. Two granularities with the same
    canonical name train exactly the same hybrid, so searches and MLflow tags use this name only.
    """
    granularity = parse_granularity(granularity)
    runs = _runs_per_stage(student_blocks, teacher_blocks, granularity, pair)
    if all(k == 1 for k in runs):
        return "stage"
    if list(runs) == list(student_blocks):
        return "block"
    return granularity


def partition(
    student: ZooModel,
    teacher: ZooModel,
    granularity: Granularity,
    *,
    input_size: int | None = None,
    pair: str = "student/teacher",
) -> tuple[list[Unit], list[Unit]]:
    """Cut student and teacher into aligned units; raise ConfigError naming pair, stage and numbers if impossible."""
    shapes = _probe(student, teacher, input_size, pair)
    return _partition(student.stages(), teacher.stages(), *shapes, granularity, pair)


def _probe(student: ZooModel, teacher: ZooModel, input_size: int | None, pair: str) -> tuple[list, list]:
    if len(student.stages()) != len(teacher.stages()):
        raise ConfigError(
            f"{pair}: the student has {len(student.stages())} stages and the teacher {len(teacher.stages())}; "
            "they must match"
        )
    return block_shapes(student, input_size), block_shapes(teacher, input_size)


def _partition(s_stages: list, t_stages: list, s_shapes: list, t_shapes: list, granularity: Granularity,
               pair: str) -> tuple[list[Unit], list[Unit]]:
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
    """Every distinct partition that `partition` accepts for this pair, once each, by its canonical name:
    ``"stage"``, then each integer k that is neither, then ``"block"``."""
    s_stages, t_stages = student.stages(), teacher.stages()
    shapes = _probe(student, teacher, input_size, pair)
    s_blocks, t_blocks = [len(st) for st in s_stages], [len(st) for st in t_stages]
    candidates: list[Granularity] = ["stage", "block", *range(2, max(s_blocks) + 1)]
    valid: list[Granularity] = []
    for g in candidates:
        try:
            _partition(s_stages, t_stages, *shapes, g, pair)
        except ConfigError:
            continue
        name = canonical_granularity(s_blocks, t_blocks, g, pair)
        if name not in valid:
            valid.append(name)
    return sorted(valid, key=lambda g: {"stage": (0, 0), "block": (2, 0)}.get(g, (1, g)))  # type: ignore[arg-type]
