"""Plots of the best search trials over training: learning curves, pure student against hybrid, swap schedules.

Each ``draw_*`` takes the runs table (and the epochs table for per-epoch curves) and a path, writes one PNG and
returns its path, or raises :class:`~iakd.analysis.plots.rows.NoData` (writing nothing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from iakd import schedules
from iakd.analysis.labels import baseline_name, config_label, present
from iakd.analysis.plots.rows import NoData, baseline_methods, best_trials, role
from iakd.analysis.plots.style import baseline_color, figure, legend, rank_color, save, wrap
from iakd.analysis.results import SCORE
from iakd.errors import ConfigError

__all__ = ["draw_learning_curves", "draw_pure_vs_hybrid", "draw_swap_schedules"]


def draw_learning_curves(runs: pd.DataFrame, epochs: pd.DataFrame, path: str | Path) -> Path:
    """Validation accuracy per epoch of the five best search trials, against the baselines' mean curves."""
    top = best_trials(runs)
    curves = epochs[epochs["val_acc"].notna()]
    top = top[top["run_id"].isin(set(curves["run_id"]))]
    if top.empty:
        raise NoData("no per-epoch val_acc for any usable search trial")
    fig, ax = figure(width=11)
    baselines = role(runs, "baseline")
    for index, method in enumerate(baseline_methods(baselines)):
        ids = set(baselines.loc[baselines["method"] == method, "run_id"])
        table = curves[curves["run_id"].isin(ids)].groupby("epoch")["val_acc"].agg(["mean", "min", "max", "count"])
        if table.empty:
            continue
        color = baseline_color(method, index)
        ax.plot(table.index, table["mean"], color=color, ls="--", lw=2,
                label=f"{baseline_name(method)} ({'1 seed' if len(ids) == 1 else f'mean of {len(ids)} seeds'})")
        if (table["max"] > table["min"]).any():
            ax.fill_between(table.index, table["min"], table["max"], color=color, alpha=0.15, lw=0)
    for rank, (_, row) in enumerate(top.iterrows(), start=1):
        curve = curves[curves["run_id"] == row["run_id"]].sort_values("epoch")
        label = f"#{rank} {config_label(row)} ({row[SCORE]:.1f} %{', stopped early' if row['stopped_early'] else ''})"
        ax.plot(curve["epoch"], curve["val_acc"], color=rank_color(rank), marker=".", label=wrap(label, 48))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"Learning curves: the {len(top)} best search trials against the baselines")
    legend(fig)
    return save(fig, path)


def draw_pure_vs_hybrid(runs: pd.DataFrame, epochs: pd.DataFrame, path: str | Path, n: int = 3) -> Path:
    """Per best search trial: the pure student's validation accuracy (recomputed and running BatchNorm
    statistics), the hybrid's accuracy on the training batches it trains on, and p(t): where the student learns
    while it swaps, and what its own statistics would have shown."""
    top = best_trials(runs, n)
    curves = epochs[epochs["val_acc"].notna()]
    top = top[top["run_id"].isin(set(curves["run_id"]))]
    if top.empty:
        raise NoData("no per-epoch val_acc for any usable search trial")
    fig, axes = figure(width=4.2 * len(top), height=4.2, ncols=len(top), sharey=True)
    axes = np.atleast_1d(axes)
    for rank, (ax, (_, row)) in enumerate(zip(axes, top.iterrows()), start=1):
        curve = curves[curves["run_id"] == row["run_id"]].sort_values("epoch")  # evaluated epochs
        every = epochs[epochs["run_id"] == row["run_id"]].sort_values("epoch")  # the hybrid and p(t): every epoch
        ax.plot(curve["epoch"], curve["val_acc"], color="C0", marker=".", label="pure student, val (recomputed BN)")
        if "val_acc_running_bn" in curve and curve["val_acc_running_bn"].notna().any():
            ax.plot(curve["epoch"], curve["val_acc_running_bn"], color="C0", ls=":", marker=".", alpha=0.8,
                    label="pure student, val (running BN)")
        ax.plot(every["epoch"], every["train_acc"], color="C1", alpha=0.8, label="hybrid, training batches")
        ax.set_ylim(0, 100)
        ax.set_xlabel("epoch")
        ax.set_title(wrap(f"#{rank} {config_label(row)}", 40), fontsize=8)
        twin = ax.twinx()
        twin.plot(every["epoch"], every["swap_prob"], color="k", ls="--", lw=1, label="p(t), epoch mean")
        twin.set_ylim(0, 1.05)
        if rank == len(top):
            twin.set_ylabel("swap probability p(t)")
        else:
            twin.set_yticklabels([])
    axes[0].set_ylabel("accuracy (%)")
    handles = [*axes[0].get_legend_handles_labels()[0], Line2D([], [], color="k", ls="--", lw=1)]
    labels = [*axes[0].get_legend_handles_labels()[1], "p(t), epoch mean"]
    fig.suptitle("Pure student against the hybrid it trains in, with p(t), for the best trials")
    fig.legend(handles, labels, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    return save(fig, path)


def _schedule(row: pd.Series) -> schedules.SwapSchedule | None:
    spec = {"family": row["schedule_family"], "p0": row["p0"], "t_end": row["t_end"], "profile": row["profile"]}
    spec.update({key: row[key] for key in ("rate", "interval") if present(row.get(key))})
    try:
        return schedules.build(spec)
    except (ConfigError, KeyError, TypeError):
        return None  # a run logged with values the schedule refuses: nothing sensible to draw


def draw_swap_schedules(runs: pd.DataFrame, path: str | Path) -> Path:
    """The swap-probability curves p(t) of the five best search trials."""
    top = best_trials(runs)
    top = top[top["schedule_family"].notna()]
    drawn = [(rank, row, _schedule(row)) for rank, (_, row) in enumerate(top.iterrows(), start=1)]
    drawn = [(rank, row, schedule) for rank, row, schedule in drawn if schedule is not None]
    if not drawn:
        raise NoData("no usable search trial with a valid swap schedule")
    t = np.linspace(0.0, 1.0, 801)
    fig, ax = figure(width=11)
    for rank, row, schedule in drawn:
        label = f"#{rank} {config_label(row)} ({row[SCORE]:.1f} %)"
        ax.plot(t, [schedule(x) for x in t], lw=2, color=rank_color(rank), label=wrap(label, 48))
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training progress t (fraction of all steps)")
    ax.set_ylabel("swap probability p(t), before the depth profile")
    ax.set_title(f"Swap schedules of the {len(drawn)} best search trials")
    legend(fig)
    return save(fig, path)

