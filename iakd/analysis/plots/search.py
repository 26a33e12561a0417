"""Plots of the search trials' scores against what was searched: family, p0/t_end, granularity, profile, cost.

And the searched parameters' fANOVA importance. Each ``draw_*`` takes the runs table and a path, writes one
PNG and returns its path, or raises :class:`~iakd.analysis.plots.rows.NoData` (writing nothing). Trials are
points, filled if they ran to the end and hollow if ASHA stopped them; CE and KD are bands over their seeds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from iakd import schedules
from iakd.analysis.export import usable
from iakd.analysis.importance import SEARCHED, NoImportance, param_importances
from iakd.analysis.labels import baseline_name
from iakd.analysis.pareto import pareto_front
from iakd.analysis.plots.rows import NoData, baseline_methods, role, search_trials
from iakd.analysis.plots.style import SCORE_LABEL, baseline_color, family_color, figure, legend, save, wrap
from iakd.analysis.results import SCORE

__all__ = ["draw_accuracy_by_family", "draw_accuracy_by_profile", "draw_accuracy_vs_cost",
           "draw_accuracy_vs_schedule_params", "draw_granularity_family_heatmap", "draw_param_importance"]


def _bands(ax: Axes, runs: pd.DataFrame, metric: str = SCORE) -> int:
    """Each baseline method as a dashed line at its mean over seeds, with a min..max band; how many drawn."""
    baselines = role(runs, "baseline")
    drawn = 0
    for index, method in enumerate(baseline_methods(baselines)):
        values = baselines.loc[baselines["method"] == method, metric].dropna().to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        color = baseline_color(method, index)
        label = f"{baseline_name(method)}: " + ("1 seed" if values.size == 1 else f"mean of {values.size} seeds")
        if values.max() > values.min():
            ax.axhspan(values.min(), values.max(), color=color, alpha=0.15, lw=0)
            label += " (band: min-max)"
        ax.axhline(values.mean(), color=color, ls="--", lw=1.5, label=label)
        drawn += 1
    return drawn


def _marker_legend() -> list[Line2D]:
    return [Line2D([], [], ls="", marker="o", color="0.3", markersize=7, label="trial ran to the end"),
            Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="0.3", markeredgewidth=1.5,
                   markersize=7, label="trial stopped early (ASHA)")]


def _scatter(ax: Axes, x: Sequence[float], y: Sequence[float], stopped: Sequence[bool], color: str,
             label: str | None = None) -> None:
    """Trials as points: filled if they ran to the end, hollow if stopped early."""
    x, y, stopped = np.asarray(x, float), np.asarray(y, float), np.asarray(stopped, bool)
    ax.scatter(x[~stopped], y[~stopped], s=45, color=color, edgecolors=color, label=label, zorder=3)
    ax.scatter(x[stopped], y[stopped], s=45, facecolors="none", edgecolors=color, linewidths=1.5,
               label=None if (~stopped).any() else label, zorder=3)


def _families(frame: pd.DataFrame) -> list[str]:
    present = set(frame["schedule_family"].dropna())
    return [f for f in schedules.FAMILIES if f in present] + sorted(present - set(schedules.FAMILIES))


def _granularity_key(value: str) -> tuple[int, int, str]:
    if value == "stage":
        return (0, 0, value)
    if str(value).isdigit():
        return (1, int(value), value)
    return (2 if value == "block" else 3, 0, str(value))


def _stopped(frame: pd.DataFrame) -> np.ndarray:
    return frame["stopped_early"].to_numpy(dtype=bool)


def _trials(count: int) -> str:
    return f"{count} trial{'' if count == 1 else 's'}"


def _strip(ax: Axes, trials: pd.DataFrame, column: str, order: list[str], colors: Callable[[str], str]) -> None:
    """Trials as jittered points per category of ``column`` (fixed seed: the same picture every time)."""
    rng = np.random.default_rng(0)
    for index, category in enumerate(order):
        group = trials[trials[column] == category]
        x = index + rng.uniform(-0.15, 0.15, len(group))
        _scatter(ax, x, group[SCORE], _stopped(group), colors(category))
    ax.set_xticks(range(len(order)), [f"{c}\n({_trials((trials[column] == c).sum())})" for c in order])
    ax.set_xlim(-0.6, len(order) - 0.4)


def _strip_plot(runs: pd.DataFrame, trials: pd.DataFrame, column: str, order: Sequence[str],
                color: Callable[[str], str], xlabel: str, what: str, path: str | Path) -> Path:
    """The trials' scores as a strip per value of ``column``, the baselines as bands."""
    fig, ax = figure()
    _strip(ax, trials, column, order, color)
    _bands(ax, runs)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(SCORE_LABEL)
    ax.set_title(f"Validation accuracy by {what} ({_trials(len(trials))})")
    legend(fig, _marker_legend() + ax.get_legend_handles_labels()[0], below=True)
    return save(fig, path)


def draw_accuracy_by_family(runs: pd.DataFrame, path: str | Path) -> Path:
    """Each search trial's best validation accuracy by schedule family (jittered; hollow if stopped early),
    with the CE and KD baselines as bands."""
    trials = search_trials(runs)
    trials = trials[trials["schedule_family"].notna()]
    if trials.empty:
        raise NoData("no usable search trial with a swap schedule")
    return _strip_plot(runs, trials, "schedule_family", _families(trials), family_color, "swap schedule family",
                       "schedule family", path)


def draw_accuracy_vs_schedule_params(runs: pd.DataFrame, path: str | Path) -> Path:
    """Best validation accuracy against p0 (left) and t_end (right), coloured by schedule family."""
    trials = search_trials(runs)
    trials = trials[trials["p0"].notna() & trials["t_end"].notna()]
    if trials.empty:
        raise NoData("no usable search trial with p0 and t_end")
    fig, axes = figure(width=12, ncols=2, sharey=True)
    for ax, column, label in ((axes[0], "p0", "initial swap probability p0"),
                              (axes[1], "t_end", "end of swapping t_end (training progress t)")):
        for family in _families(trials):
            group = trials[trials["schedule_family"] == family]
            _scatter(ax, group[column], group[SCORE], _stopped(group), family_color(family), label=family)
        _bands(ax, runs)
        ax.set_xlabel(label)
        ax.set_xlim(-0.03, 1.03)
    axes[0].set_ylabel(SCORE_LABEL)
    axes[0].set_title("against p0")
    axes[1].set_title("against t_end")
    fig.suptitle(f"Validation accuracy against the schedule's parameters ({_trials(len(trials))})")
    legend(fig, _marker_legend() + axes[0].get_legend_handles_labels()[0], below=True)
    return save(fig, path)


def draw_granularity_family_heatmap(runs: pd.DataFrame, path: str | Path) -> Path:
    """Best validation accuracy per (granularity, schedule family) cell, annotated; untried cells blank."""
    trials = search_trials(runs)
    trials = trials[trials["schedule_family"].notna() & trials["granularity"].notna()]
    if trials.empty:
        raise NoData("no usable search trial with a granularity and a schedule family")
    families = _families(trials)
    granularities = sorted(trials["granularity"].unique(), key=_granularity_key)
    grid = np.full((len(granularities), len(families)), np.nan)
    counts = np.zeros_like(grid, dtype=int)
    for (granularity, family), group in trials.groupby(["granularity", "schedule_family"]):
        row, col = granularities.index(granularity), families.index(family)
        grid[row, col], counts[row, col] = group[SCORE].max(), len(group)
    fig, ax = figure(width=max(6.0, 1.5 * len(families) + 3), height=max(3.5, 0.9 * len(granularities) + 2))
    ax.grid(False)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
    low, high = np.nanmin(grid), np.nanmax(grid)
    for row in range(grid.shape[0]):
        for col in range(grid.shape[1]):
            if np.isnan(grid[row, col]):
                continue
            dark = high == low or (grid[row, col] - low) / (high - low) < 0.6
            ax.text(col, row, f"{grid[row, col]:.1f}\n(n={counts[row, col]})", ha="center", va="center",
                    fontsize=10, color="white" if dark else "black")
    ax.set_xticks(range(len(families)), families)
    ax.set_yticks(range(len(granularities)), granularities)
    ax.set_xlabel("swap schedule family")
    ax.set_ylabel("granularity (units per stage)")
    ax.set_title("Best validation accuracy (%) per granularity and family")
    fig.colorbar(image, ax=ax, label="best " + SCORE_LABEL)
    return save(fig, path)


def draw_accuracy_by_profile(runs: pd.DataFrame, path: str | Path) -> Path:
    """Each search trial's best validation accuracy by depth profile, with the baselines as bands."""
    trials = search_trials(runs)
    trials = trials[trials["profile"].notna()]
    if trials.empty:
        raise NoData("no usable search trial with a depth profile")
    present = set(trials["profile"])
    order = [p for p in schedules.PROFILES if p in present] + sorted(present - set(schedules.PROFILES))
    return _strip_plot(runs, trials, "profile", order, lambda _: "#1f77b4",
                       "depth profile (how p is spread over the units)", "depth profile", path)


def draw_param_importance(runs: pd.DataFrame, path: str | Path) -> Path:
    """Hyperparameter importance (Optuna's fANOVA) of the searched parameters for best validation accuracy.

    The finished and stopped-early search trials are added to an in-memory Optuna study; parameters that vary
    and are set in every trial are assessed (a conditional one, such as ``schedule.rate``, only exists in some
    trials, and fANOVA needs every parameter in every trial: the plot names those left out).
    """
    trials = search_trials(runs)
    if len(trials) < 2:
        raise NoData(f"not enough trials for an importance estimate ({len(trials)} usable search trial, need 2)")
    try:
        importances, left_out = param_importances(trials)
    except NoImportance as why:
        raise NoData(str(why)) from why
    if not importances:
        raise NoData("no searched parameter varies across the trials")
    names = list(importances)[::-1]  # largest at the top
    fig, ax = figure(width=9, height=1.0 + 0.55 * len(names) + 1.2)
    ax.barh([SEARCHED[n] for n in names], [importances[n] for n in names], color="#1f77b4")
    for y, name in enumerate(names):
        ax.text(importances[name], y, f" {importances[name]:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max(1.0, max(importances.values()) * 1.15))
    ax.set_xlabel("importance for best validation accuracy (fANOVA, share of variance)")
    ax.set_ylabel("searched parameter")
    ax.set_title(f"Hyperparameter importance over {len(trials)} search trials")
    if left_out:
        note = "not assessed (set in some trials only): " + ", ".join(SEARCHED[n] for n in left_out)
        fig.text(0.01, 0.005, wrap(note, 110), fontsize=8, color="0.35", va="bottom")
        fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    return save(fig, path)


def draw_accuracy_vs_cost(runs: pd.DataFrame, path: str | Path) -> Path:
    """Best validation accuracy against training cost (seconds, and images seen) for search trials and
    baselines, with the Pareto front (most accurate for the cost) of the runs that ran to the end."""
    ok = usable(runs)
    ok = ok[ok["role"].isin(["search", "baseline"])]
    panels = [(column, label) for column, label in (("train_seconds", "training time (s)"),
                                                    ("images_seen", "training images seen"))
              if ok[column].notna().any()]
    if not panels:
        raise NoData("no run with train_seconds or images_seen")
    fig, axes = figure(width=6 * len(panels) + 3, ncols=len(panels), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (column, label) in zip(axes, panels):
        frame = ok[ok[column].notna()]
        trials = frame[frame["role"] == "search"]
        for family in _families(trials):
            group = trials[trials["schedule_family"] == family]
            _scatter(ax, group[column], group[SCORE], _stopped(group), family_color(family), label=family)
        baselines = frame[frame["role"] == "baseline"]
        for index, method in enumerate(baseline_methods(baselines)):
            group = baselines[baselines["method"] == method]
            ax.scatter(group[column], group[SCORE], marker="s" if method == "ce" else "D", s=55,
                       color=baseline_color(method, index), label=baseline_name(method), zorder=3)
        complete = frame[frame["outcome"] == "finished"]
        if not complete.empty:
            cost, accuracy = complete[column].to_numpy(float), complete[SCORE].to_numpy(float)
            front = pareto_front(cost, accuracy)
            ax.step(cost[front], accuracy[front], where="post", color="black", lw=1, alpha=0.7)
            ax.scatter(cost[front], accuracy[front], s=140, facecolors="none", edgecolors="black", linewidths=1.2,
                       label="Pareto front (runs that ran to the end)", zorder=4)
        ax.set_xlabel(label)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    axes[0].set_ylabel(SCORE_LABEL)
    fig.suptitle("Validation accuracy against training cost")
    legend(fig, _marker_legend() + [h for ax in axes for h in ax.get_legend_handles_labels()[0]], below=True)
    return save(fig, path)

