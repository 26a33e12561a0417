"""The plots' shared look: axis labels, colours, a figure, a legend, wrapped text, the PNG written atomically."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from iakd import schedules
from iakd.checkpoint import atomic_path

__all__ = ["BASELINE_COLORS", "DPI", "SCORE_LABEL", "TEST_LABEL", "baseline_color", "family_color", "figure",
           "legend", "rank_color", "save", "wrap"]

SCORE_LABEL = "validation accuracy (%), best epoch after the handover"
TEST_LABEL = "test accuracy (%), last epoch"
DPI = 110

_FAMILY_COLORS = dict(zip(schedules.FAMILIES, ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")))
BASELINE_COLORS = {"ce": "#555555", "kd": "#d62728"}  # their order is the baselines' order in the plots
_RANK_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b")


def family_color(family: str) -> str:
    """A schedule family's colour, the same in every plot."""
    return _FAMILY_COLORS.get(family, "#17becf")


def baseline_color(method: str, index: int) -> str:
    """A baseline method's colour; one without its own colour gets the ``index``-th spare one."""
    return BASELINE_COLORS.get(method, f"C{6 + index}")


def rank_color(rank: int) -> str:
    """The colour of the ``rank``-th best trial (from 1)."""
    return _RANK_COLORS[(rank - 1) % len(_RANK_COLORS)]


def figure(width: float = 9.0, height: float = 5.0, ncols: int = 1, sharey: bool = False) -> tuple[Figure, Any]:
    """A figure (Agg canvas, no pyplot state) of ``ncols`` gridded axes side by side; the figure and its axes."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, sharey=sharey, squeeze=True)
    for ax in np.atleast_1d(axes):
        ax.grid(True, alpha=0.3)
    return fig, axes


def legend(fig: Figure, handles: list[Any] | None = None, below: bool = False) -> None:
    """One figure legend outside the axes (one entry per label across panels): at the right, or ``below``
    the axes in columns (short labels; leaves the axes the whole width)."""
    if handles is None:
        handles = [h for ax in fig.axes for h in ax.get_legend_handles_labels()[0]]
    handles = list({h.get_label(): h for h in handles}.values())
    if not handles:
        return
    if below:
        columns = max(1, int(fig.get_figwidth() // 4))  # about 4 inches per column of labels
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), columns), fontsize=9,
                   frameon=False)
    else:
        fig.legend(handles=handles, loc="outside right upper", fontsize=9, frameon=False)


def wrap(text: str, width: int) -> str:
    """``text`` in lines of at most ``width`` characters, broken at spaces only."""
    return textwrap.fill(text, width, break_on_hyphens=False)


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` (its folder made if needed) atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path
