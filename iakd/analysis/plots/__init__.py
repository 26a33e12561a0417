"""The report's plots of one sweep: the list :data:`PLOTS`, :func:`render_all`, and each plot as ``plot_*``.

Each ``plot_*`` function takes the sweep's tables (``Sweep.runs.to_pandas()``, and ``Sweep.epochs.to_pandas()``
for per-epoch curves; see :mod:`iakd.analysis.export`) and an output path, writes one PNG and returns its path.
When the tables hold nothing the plot could show (no search trial, no confirmation run...), it writes nothing
and returns None: never a blank image. :func:`render_all` draws every plot of :data:`PLOTS` and says why each
skipped one was skipped: it calls the drawing functions (``draw_*``), which raise :class:`NoData` with the reason.

The drawing code sits in submodules by what it draws: :mod:`~iakd.analysis.plots.search` (the search trials'
scores against what was searched), :mod:`~iakd.analysis.plots.curves` (the best trials over training),
:mod:`~iakd.analysis.plots.confirmation` (the confirmation stage); the rows they draw come from
:mod:`~iakd.analysis.plots.rows`, their look from :mod:`~iakd.analysis.plots.style`.

Only usable runs are drawn (:func:`iakd.analysis.export.usable`: finished or stopped early, finite validation
accuracy). Scores are the validation accuracy at the best epoch, the search's selection metric; test accuracy
is never used to pick anything. Baselines (CE, KD) are drawn as their mean over seeds, with a band from the
lowest to the highest seed. Figures are made with :class:`matplotlib.figure.Figure` and the Agg canvas
directly, so no pyplot state or GUI backend is involved.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from iakd.analysis.labels import config_label
from iakd.analysis.plots import confirmation, curves, search
from iakd.analysis.plots.confirmation import Candidate, confirmation_groups
from iakd.analysis.plots.rows import NoData, best_trials

__all__ = [
    "Candidate",
    "NoData",
    "PLOTS",
    "Plot",
    "Rendered",
    "best_trials",
    "config_label",
    "confirmation_groups",
    "plot_accuracy_by_family",
    "plot_accuracy_by_profile",
    "plot_accuracy_vs_cost",
    "plot_accuracy_vs_schedule_params",
    "plot_confirmation",
    "plot_granularity_family_heatmap",
    "plot_learning_curves",
    "plot_param_importance",
    "plot_pure_vs_hybrid",
    "plot_swap_schedules",
    "render_all",
]


@dataclass(frozen=True)
class Plot:
    """One plot of the report: its file stem, title, and a drawing function ``(runs, epochs, path)`` that raises
    :class:`NoData` when there is nothing to draw."""

    name: str
    title: str
    draw: Callable[[pd.DataFrame, pd.DataFrame, Path], Path]


@dataclass(frozen=True)
class Rendered:
    """What became of one plot: its PNG, or None and the reason it was skipped."""

    name: str
    title: str
    path: Path | None
    reason: str | None = None


def _runs_only(draw: Callable[[pd.DataFrame, Path], Path]) -> Callable[[pd.DataFrame, pd.DataFrame, Path], Path]:
    return lambda runs, epochs, path: draw(runs, path)


PLOTS: tuple[Plot, ...] = (
    Plot("accuracy_by_family", "Validation accuracy by schedule family", _runs_only(search.draw_accuracy_by_family)),
    Plot("accuracy_vs_p0_t_end", "Validation accuracy against p0 and t_end",
         _runs_only(search.draw_accuracy_vs_schedule_params)),
    Plot("granularity_family_heatmap", "Best validation accuracy per granularity and family",
         _runs_only(search.draw_granularity_family_heatmap)),
    Plot("accuracy_by_profile", "Validation accuracy by depth profile", _runs_only(search.draw_accuracy_by_profile)),
    Plot("learning_curves", "Learning curves of the five best trials", curves.draw_learning_curves),
    Plot("pure_vs_hybrid", "Pure student against the hybrid, with p(t), for the best trials",
         curves.draw_pure_vs_hybrid),
    Plot("swap_schedules", "Swap schedules p(t) of the five best trials", _runs_only(curves.draw_swap_schedules)),
    Plot("param_importance", "Hyperparameter importance (fANOVA)", _runs_only(search.draw_param_importance)),
    Plot("accuracy_vs_cost", "Validation accuracy against training cost", _runs_only(search.draw_accuracy_vs_cost)),
    Plot("confirmation", "Confirmation: intervals over seeds and paired difference to KD",
         _runs_only(confirmation.draw_confirmation)),
)


def render_all(runs: pd.DataFrame, epochs: pd.DataFrame, out_dir: str | Path) -> list[Rendered]:
    """Draw every plot of :data:`PLOTS` into ``out_dir`` as ``<name>.png``; say why each skipped one was."""
    rendered = []
    for plot in PLOTS:
        try:
            path = plot.draw(runs, epochs, Path(out_dir) / f"{plot.name}.png")
            rendered.append(Rendered(plot.name, plot.title, path))
        except NoData as why:
            rendered.append(Rendered(plot.name, plot.title, None, str(why)))
    return rendered


def _or_none(draw: Callable[..., Path]) -> Callable[..., Path | None]:
    """``draw`` as a public plot (same arguments and docstring): its path, or None where it raised NoData."""

    @functools.wraps(draw)
    def plot(*args: Any, **kwargs: Any) -> Path | None:
        try:
            return draw(*args, **kwargs)
        except NoData:
            return None

    plot.__name__ = plot.__qualname__ = draw.__name__.replace("draw_", "plot_", 1)
    return plot


plot_accuracy_by_family = _or_none(search.draw_accuracy_by_family)
plot_accuracy_vs_schedule_params = _or_none(search.draw_accuracy_vs_schedule_params)
plot_granularity_family_heatmap = _or_none(search.draw_granularity_family_heatmap)
plot_accuracy_by_profile = _or_none(search.draw_accuracy_by_profile)
plot_param_importance = _or_none(search.draw_param_importance)
plot_accuracy_vs_cost = _or_none(search.draw_accuracy_vs_cost)
plot_learning_curves = _or_none(curves.draw_learning_curves)
plot_pure_vs_hybrid = _or_none(curves.draw_pure_vs_hybrid)
plot_swap_schedules = _or_none(curves.draw_swap_schedules)
plot_confirmation = _or_none(confirmation.draw_confirmation)
