"""The confirmation stage's plot: test accuracy over fresh seeds, and the paired difference to the reference.

:func:`confirmation_groups` gives the confirmed configurations and baselines, labelled, in the plot's order;
:func:`draw_confirmation` writes the PNG, or raises :class:`~iakd.analysis.plots.rows.NoData` (writing nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from iakd.analysis.labels import BASELINE_NAMES, baseline_name, config_label
from iakd.analysis.plots.rows import NoData
from iakd.analysis.plots.style import BASELINE_COLORS, TEST_LABEL, figure, save, wrap
from iakd.analysis.results import sweep_results
from iakd.analysis.stats import Interval, mean_interval, paired_difference

__all__ = ["Candidate", "confirmation_groups", "draw_confirmation"]


@dataclass(frozen=True)
class Candidate:
    """One configuration of the confirmation stage, as the sweep's answer holds it, with its plot label."""

    name: str  # the iakd.candidate tag: a searched trial's name, or a baseline's method ("kd", "ce")
    label: str
    is_baseline: bool
    val: dict[int, float]  # seed -> best validation accuracy after the handover
    test: dict[int, float]  # seed -> last-epoch test accuracy
    teacher_init: bool = False  # its student started from the teacher's weights (compared with KD from there)


def confirmation_groups(runs: pd.DataFrame) -> list[Candidate]:
    """The confirmation's configurations from the sweep's answer (:func:`iakd.analysis.results.sweep_results`):
    the searched ones in the search's ranking (the winner, chosen on validation, first), then the baselines (KD,
    CE, others)."""
    return [Candidate(c.name, baseline_name(c.name) if c.is_baseline else f"{c.name}: {config_label(c.row)}",
                      c.is_baseline, c.val, c.test, c.row.get("init") == "teacher")
            for c in sweep_results(runs).confirmed]


def draw_confirmation(runs: pd.DataFrame, path: str | Path) -> Path:
    """The confirmation stage on last-epoch test accuracy: each confirmed configuration and baseline as mean
    with 95 % t-interval over its seeds (left), and its difference to the reference baseline (KD, or CE without
    KD) from the same initialisation, paired by seed, with its interval (right; only where that was confirmed)."""
    groups = [c for c in confirmation_groups(runs) if c.test]
    if not groups:
        raise NoData("no usable confirmation run (role confirm)")
    # the reference baseline (KD where it was confirmed, else CE: results.SweepResults.reference_method), from
    # scratch and from the teacher's initialisation: each configuration meets the one from its own start
    ref_name = sweep_results(runs).reference_method
    ref = next((c.test for c in groups if ref_name is not None and c.name == ref_name), None)
    ref_init = next((c.test for c in groups if c.name == f"{ref_name}.teacher-init"), None)
    ref_label = BASELINE_NAMES.get(ref_name or "", str(ref_name)).split(" (")[0]
    ncols = 2 if ref is not None and len(groups) > 1 else 1
    fig, axes = figure(width=13 if ncols == 2 else 9, height=1.6 + 0.75 * len(groups), ncols=ncols, sharey=True)
    axes = np.atleast_1d(axes)
    for y, candidate in enumerate(groups):
        interval = mean_interval(candidate.test.values())
        color = (BASELINE_COLORS.get(candidate.name.partition(".")[0], "#1f77b4") if candidate.is_baseline
                 else "#1f77b4")
        axes[0].scatter(list(candidate.test.values()), [y] * len(candidate.test), s=14, color="0.6", zorder=2)
        _interval_point(axes[0], interval, y, color, f"{interval.format()} (n={interval.n})")
        reference = ref_init if candidate.teacher_init and ref_init is not None else ref  # the same start
        if ncols == 2 and candidate.name != ref_name and reference is not candidate.test:
            diff = paired_difference(candidate.test, reference)
            if diff.n:
                _interval_point(axes[1], diff, y, color, f"{diff.format(signed=True)} (n={diff.n})")
        elif ncols == 2:
            axes[1].annotate(f"{ref_label}: the reference", (0, y), xytext=(6, 0), textcoords="offset points",
                             va="center", fontsize=8, color="0.4")
    axes[0].set_yticks(range(len(groups)), [wrap(c.label, 34) for c in groups])
    axes[0].set_ylim(len(groups) - 0.5, -0.7)  # first candidate at the top, room for the annotations
    axes[0].set_xlabel(f"{TEST_LABEL}: mean and 95 % interval over seeds")
    axes[0].margins(x=0.15)
    axes[0].set_title("Confirmed configurations and baselines")
    if ncols == 2:
        axes[1].axvline(0.0, color="black", lw=1)
        axes[1].set_xlabel("test accuracy points, paired by seed")
        axes[1].set_title(f"Difference to {ref_label} from the same initialisation")
        axes[1].margins(x=0.2)
    fig.suptitle("Confirmation on fresh seeds (grey dots: single seeds; order: the search's ranking on validation)")
    return save(fig, path)


def _interval_point(ax: Axes, interval: Interval, y: float, color: str, text: str) -> None:
    half = None if math.isnan(interval.half_width) else interval.half_width
    ax.errorbar(interval.mean, y, xerr=half, fmt="o", color=color, capsize=5, markersize=7, zorder=3)
    ax.annotate(text, (interval.mean, y), xytext=(0, 9), textcoords="offset points", ha="center", fontsize=8)

