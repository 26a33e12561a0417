"""Ablation plots of one sweep, drawn from its ``runs`` and ``epochs`` tables (pandas DataFrames).

Each ``plot_*`` function takes the tables (``Sweep.runs.to_pandas()`` and ``Sweep.epochs.to_pandas()``, see
:mod:`iakd.analysis.export`) and an output path, writes one PNG and returns its path. When the tables hold
nothing the plot could show (no search trial, no confirmation run...), it writes nothing and returns None:
never a blank image. :func:`render_all` draws every plot of :data:`PLOTS` and says why each skipped one was
skipped (the drawing code raises :class:`NoData` with the reason; the public function turns it into None).

Only usable runs are drawn (:func:`iakd.analysis.export.usable`: finished or stopped early, finite validation
accuracy). Scores are the validation accuracy at the best epoch, the search's selection metric; test accuracy
is never used to pick anything. Baselines (CE, KD) are drawn as their mean over seeds, with a band from the
lowest to the highest seed. Figures are made with :class:`matplotlib.figure.Figure` and the Agg canvas
directly, so no pyplot state or GUI backend is involved.
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import optuna
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from iakd import schedules
from iakd.analysis.export import usable
from iakd.analysis.results import SCORE, search_ranking, sweep_results
from iakd.analysis.stats import Interval, mean_interval, paired_difference
from iakd.checkpoint import atomic_path
from iakd.errors import ConfigError

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
    "plot_swap_schedules",
    "render_all",
]

SCORE_LABEL = "validation accuracy (%), best epoch after the handover"
TEST_LABEL = "test accuracy (%), last epoch"
TOP_N = 5

_FAMILY_COLORS = dict(zip(schedules.FAMILIES, ("#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")))
_BASELINE_COLORS = {"ce": "#555555", "kd": "#d62728"}
_BASELINE_NAMES = {"ce": "CE (student alone)", "kd": "KD"}
_RANK_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b")
# The runs-table columns Optuna's importance sees, under their run-config names.
_SEARCHED = {"method": "method.name", "schedule_family": "schedule.family", "p0": "schedule.p0",
             "t_end": "schedule.t_end", "rate": "schedule.rate", "interval": "schedule.interval",
             "profile": "schedule.profile", "granularity": "method.granularity", "kd_weight": "method.kd_weight"}
_DPI = 110


class NoData(Exception):
    """Raised by a plot's drawing code when the tables hold nothing to show; the message says why."""


def _skippable(draw: Callable[..., Path]) -> Callable[..., Path | None]:
    """The public plot: ``draw``'s path, or None where ``draw`` raised :class:`NoData` (nothing written).

    ``draw`` itself stays reachable as ``__wrapped__`` (functools.wraps), which :func:`render_all` calls to
    learn the reason.
    """

    @functools.wraps(draw)
    def plot(*args: Any, **kwargs: Any) -> Path | None:
        try:
            return draw(*args, **kwargs)
        except NoData:
            return None

    return plot


# ------------------------------------------------------------------------------------------- helpers


def _role(runs: pd.DataFrame, role: str) -> pd.DataFrame:
    ok = usable(runs)
    return ok[ok["role"] == role]


def _search(runs: pd.DataFrame) -> pd.DataFrame:
    trials = _role(runs, "search")
    if trials.empty:
        raise NoData("no usable search trial")
    return trials


def best_trials(runs: pd.DataFrame, n: int = TOP_N) -> pd.DataFrame:
    """The ``n`` first of the search's ranking (usable trials by validation accuracy; ties: by run name)."""
    return search_ranking(runs).head(n)


def _fmt(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def config_label(row: pd.Series | dict[str, Any]) -> str:
    """A configuration in one line: ``"linear p0=0.50 t_end=0.80, gran. stage, uniform"``, with ``+KD 0.90``
    for IAKD+KD; a baseline's name for a method that does not swap (no schedule family in the runs table)."""
    teacher_init = ", teacher init" if row.get("init") == "teacher" else ""
    if not _present(row.get("schedule_family")):
        return _baseline_name(row["method"]) + teacher_init
    parts = [f"{row['schedule_family']} p0={_fmt(row['p0'])} t_end={_fmt(row['t_end'])}"]
    if _present(row.get("t_start")) and float(row["t_start"]) > 0:
        parts[0] += f" t_start={_fmt(row['t_start'])}"
    for key in ("rate", "interval"):
        if _present(row.get(key)):
            parts[0] += f" {key}={_fmt(row[key])}"
    parts += [f"gran. {row['granularity']}", str(row["profile"])]
    if _has_kd_term(row):
        parts.append(f"+KD {_fmt(row['kd_weight'])}" + (" on the student" if row.get("kd_on") == "student" else ""))
    if row.get("mixing") == "blend":
        parts.append("blend")
    if _present(row.get("hybrid_weight")) and float(row["hybrid_weight"]) > 0:
        parts.append(f"hybrid as aux. {_fmt(row['hybrid_weight'])}")
    return ", ".join(parts) + teacher_init


def _has_kd_term(row: pd.Series | dict[str, Any]) -> bool:
    # The export's kd_weight is the effective weight: 0 for iakd, > 0 for methods with a KD term (their
    # builder refuses 0), null for CE. So the table answers this without importing the method registry
    # (and torch with it).
    weight = row.get("kd_weight")
    return _present(weight) and float(weight) > 0


def _baseline_name(label: str) -> str:
    """A baseline's display name from its method or its label (``kd.teacher-init``: "KD, teacher init")."""
    method, _, init = str(label).partition(".")
    name = _BASELINE_NAMES.get(method, method.upper())
    return f"{name}, {init.removesuffix('-init')} init" if init else name


def _baseline_methods(frame: pd.DataFrame) -> list[str]:
    methods = [m for m in frame["method"].dropna().unique()]
    return sorted(methods, key=lambda m: (list(_BASELINE_COLORS).index(m) if m in _BASELINE_COLORS else 99, m))


def _bands(ax: Axes, runs: pd.DataFrame, metric: str = SCORE) -> int:
    """Each baseline method as a dashed line at its mean over seeds, with a min..max band; how many drawn."""
    baselines = _role(runs, "baseline")
    drawn = 0
    for index, method in enumerate(_baseline_methods(baselines)):
        values = baselines.loc[baselines["method"] == method, metric].dropna().to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            continue
        color = _BASELINE_COLORS.get(method, f"C{6 + index}")
        label = f"{_baseline_name(method)}: " + ("1 seed" if values.size == 1 else f"mean of {values.size} seeds")
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


def _legend(fig: Figure, handles: list[Any] | None = None, below: bool = False) -> None:
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


def _wrap(text: str, width: int) -> str:
    return textwrap.fill(text, width, break_on_hyphens=False)


def _figure(width: float = 9.0, height: float = 5.0, ncols: int = 1, sharey: bool = False) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    axes = fig.subplots(1, ncols, sharey=sharey, squeeze=True)
    for ax in np.atleast_1d(axes):
        ax.grid(True, alpha=0.3)
    return fig, axes


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=_DPI, format="png")
    return path


def _families(frame: pd.DataFrame) -> list[str]:
    present = set(frame["schedule_family"].dropna())
    return [f for f in schedules.FAMILIES if f in present] + sorted(present - set(schedules.FAMILIES))


def _family_color(family: str) -> str:
    return _FAMILY_COLORS.get(family, "#17becf")


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


# --------------------------------------------------------------------------------------------- plots


@_skippable
def plot_accuracy_by_family(runs: pd.DataFrame, path: str | Path) -> Path:
    """Each search trial's best validation accuracy by schedule family (jittered; hollow if stopped early),
    with the CE and KD baselines as bands."""
    trials = _search(runs)
    trials = trials[trials["schedule_family"].notna()]
    if trials.empty:
        raise NoData("no usable search trial with a swap schedule")
    fig, ax = _figure()
    _strip(ax, trials, "schedule_family", _families(trials), _family_color)
    _bands(ax, runs)
    ax.set_xlabel("swap schedule family")
    ax.set_ylabel(SCORE_LABEL)
    ax.set_title(f"Validation accuracy by schedule family ({_trials(len(trials))})")
    _legend(fig, _marker_legend() + ax.get_legend_handles_labels()[0], below=True)
    return _save(fig, path)


@_skippable
def plot_accuracy_vs_schedule_params(runs: pd.DataFrame, path: str | Path) -> Path:
    """Best validation accuracy against p0 (left) and t_end (right), coloured by schedule family."""
    trials = _search(runs)
    trials = trials[trials["p0"].notna() & trials["t_end"].notna()]
    if trials.empty:
        raise NoData("no usable search trial with p0 and t_end")
    fig, axes = _figure(width=12, ncols=2, sharey=True)
    for ax, column, label in ((axes[0], "p0", "initial swap probability p0"),
                              (axes[1], "t_end", "end of swapping t_end (training progress t)")):
        for family in _families(trials):
            group = trials[trials["schedule_family"] == family]
            _scatter(ax, group[column], group[SCORE], _stopped(group), _family_color(family), label=family)
        _bands(ax, runs)
        ax.set_xlabel(label)
        ax.set_xlim(-0.03, 1.03)
    axes[0].set_ylabel(SCORE_LABEL)
    axes[0].set_title("against p0")
    axes[1].set_title("against t_end")
    fig.suptitle(f"Validation accuracy against the schedule's parameters ({_trials(len(trials))})")
    _legend(fig, _marker_legend() + axes[0].get_legend_handles_labels()[0], below=True)
    return _save(fig, path)


@_skippable
def plot_granularity_family_heatmap(runs: pd.DataFrame, path: str | Path) -> Path:
    """Best validation accuracy per (granularity, schedule family) cell, annotated; untried cells blank."""
    trials = _search(runs)
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
    fig, ax = _figure(width=max(6.0, 1.5 * len(families) + 3), height=max(3.5, 0.9 * len(granularities) + 2))
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
    return _save(fig, path)


@_skippable
def plot_accuracy_by_profile(runs: pd.DataFrame, path: str | Path) -> Path:
    """Each search trial's best validation accuracy by depth profile, with the baselines as bands."""
    trials = _search(runs)
    trials = trials[trials["profile"].notna()]
    if trials.empty:
        raise NoData("no usable search trial with a depth profile")
    present = set(trials["profile"])
    order = [p for p in schedules.PROFILES if p in present] + sorted(present - set(schedules.PROFILES))
    fig, ax = _figure()
    _strip(ax, trials, "profile", order, lambda _: "#1f77b4")
    _bands(ax, runs)
    ax.set_xlabel("depth profile (how p is spread over the units)")
    ax.set_ylabel(SCORE_LABEL)
    ax.set_title(f"Validation accuracy by depth profile ({_trials(len(trials))})")
    _legend(fig, _marker_legend() + ax.get_legend_handles_labels()[0], below=True)
    return _save(fig, path)


@_skippable
def plot_learning_curves(runs: pd.DataFrame, epochs: pd.DataFrame, path: str | Path) -> Path:
    """Validation accuracy per epoch of the five best search trials, against the baselines' mean curves."""
    top = best_trials(runs)
    curves = epochs[epochs["val_acc"].notna()]
    top = top[top["run_id"].isin(set(curves["run_id"]))]
    if top.empty:
        raise NoData("no per-epoch val_acc for any usable search trial")
    fig, ax = _figure(width=11)
    baselines = _role(runs, "baseline")
    for index, method in enumerate(_baseline_methods(baselines)):
        ids = set(baselines.loc[baselines["method"] == method, "run_id"])
        table = curves[curves["run_id"].isin(ids)].groupby("epoch")["val_acc"].agg(["mean", "min", "max", "count"])
        if table.empty:
            continue
        color = _BASELINE_COLORS.get(method, f"C{6 + index}")
        ax.plot(table.index, table["mean"], color=color, ls="--", lw=2,
                label=f"{_baseline_name(method)} ({'1 seed' if len(ids) == 1 else f'mean of {len(ids)} seeds'})")
        if (table["max"] > table["min"]).any():
            ax.fill_between(table.index, table["min"], table["max"], color=color, alpha=0.15, lw=0)
    for rank, (_, row) in enumerate(top.iterrows(), start=1):
        curve = curves[curves["run_id"] == row["run_id"]].sort_values("epoch")
        label = f"#{rank} {config_label(row)} ({row[SCORE]:.1f} %{', stopped early' if row['stopped_early'] else ''})"
        ax.plot(curve["epoch"], curve["val_acc"], color=_RANK_COLORS[(rank - 1) % len(_RANK_COLORS)], marker=".",
                label=_wrap(label, 48))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"Learning curves: the {len(top)} best search trials against the baselines")
    _legend(fig)
    return _save(fig, path)


@_skippable
def plot_pure_vs_hybrid(runs: pd.DataFrame, epochs: pd.DataFrame, path: str | Path, n: int = 3) -> Path:
    """Per best search trial: the pure student's validation accuracy (recomputed and running BatchNorm
    statistics), the hybrid's accuracy on the training batches it trains on, and p(t): where the student learns
    while it swaps, and what its own statistics would have shown."""
    top = best_trials(runs, n)
    curves = epochs[epochs["val_acc"].notna()]
    top = top[top["run_id"].isin(set(curves["run_id"]))]
    if top.empty:
        raise NoData("no per-epoch val_acc for any usable search trial")
    fig, axes = _figure(width=4.2 * len(top), height=4.2, ncols=len(top), sharey=True)
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
        ax.set_title(_wrap(f"#{rank} {config_label(row)}", 40), fontsize=8)
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
    return _save(fig, path)


def _schedule(row: pd.Series) -> schedules.SwapSchedule | None:
    spec = {"family": row["schedule_family"], "p0": row["p0"], "t_end": row["t_end"], "profile": row["profile"]}
    spec.update({key: row[key] for key in ("rate", "interval") if _present(row.get(key))})
    try:
        return schedules.build(spec)
    except (ConfigError, KeyError, TypeError):
        return None  # a run logged with values the schedule refuses: nothing sensible to draw


@_skippable
def plot_swap_schedules(runs: pd.DataFrame, path: str | Path) -> Path:
    """The swap-probability curves p(t) of the five best search trials."""
    top = best_trials(runs)
    top = top[top["schedule_family"].notna()]
    drawn = [(rank, row, _schedule(row)) for rank, (_, row) in enumerate(top.iterrows(), start=1)]
    drawn = [(rank, row, schedule) for rank, row, schedule in drawn if schedule is not None]
    if not drawn:
        raise NoData("no usable search trial with a valid swap schedule")
    t = np.linspace(0.0, 1.0, 801)
    fig, ax = _figure(width=11)
    for rank, row, schedule in drawn:
        label = f"#{rank} {config_label(row)} ({row[SCORE]:.1f} %)"
        ax.plot(t, [schedule(x) for x in t], lw=2, color=_RANK_COLORS[(rank - 1) % len(_RANK_COLORS)],
                label=_wrap(label, 48))
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training progress t (fraction of all steps)")
    ax.set_ylabel("swap probability p(t), before the depth profile")
    ax.set_title(f"Swap schedules of the {len(drawn)} best search trials")
    _legend(fig)
    return _save(fig, path)


def _importances(trials: pd.DataFrame) -> tuple[dict[str, float], list[str]]:
    """fANOVA importances over the parameters every trial has; the parameters left out (conditional ones)."""
    columns = [c for c in _SEARCHED if trials[c].notna().any() and trials[c].dropna().nunique() > 1]
    rows = []
    for _, trial in trials.iterrows():
        params = {c: trial[c] for c in columns if _present(trial[c])}
        if "kd_weight" in params and not _has_kd_term(trial):
            del params["kd_weight"]  # only methods with a KD term use it (as in the search space)
        rows.append((params, float(trial[SCORE])))
    distributions: dict[str, optuna.distributions.BaseDistribution] = {}
    for column in columns:
        values = [params[column] for params, _ in rows if column in params]
        if isinstance(values[0], str):
            distributions[column] = optuna.distributions.CategoricalDistribution(sorted(set(values)))
        elif min(values) < max(values):
            distributions[column] = optuna.distributions.FloatDistribution(float(min(values)), float(max(values)))
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in memory" is noise here
    try:
        study = optuna.create_study(direction="maximize")
        for params, value in rows:
            kept = {k: v for k, v in params.items() if k in distributions}
            study.add_trial(optuna.trial.create_trial(
                params={k: (float(v) if not isinstance(v, str) else v) for k, v in kept.items()},
                distributions={k: distributions[k] for k in kept}, value=value))
        common = set.intersection(*(set(t.params) for t in study.trials))
        if not common:
            raise NoData("no searched parameter is set in every trial")
        if len({value for _, value in rows}) < 2:
            raise NoData("every search trial has the same score: no variance to attribute")
        try:
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except RuntimeError as error:  # e.g. "zero total variance in all trees" on very few trials
            raise NoData(f"fANOVA found nothing to attribute ({error})") from error
    finally:
        optuna.logging.set_verbosity(verbosity)
    return dict(importances), sorted(set(distributions) - common)


@_skippable
def plot_param_importance(runs: pd.DataFrame, path: str | Path) -> Path:
    """Hyperparameter importance (Optuna's fANOVA) of the searched parameters for best validation accuracy.

    The finished and stopped-early search trials are added to an in-memory Optuna study; parameters that vary
    and are set in every trial are assessed (a conditional one, such as ``schedule.rate``, only exists in some
    trials, and fANOVA needs every parameter in every trial: the plot names those left out).
    """
    trials = _search(runs)
    if len(trials) < 2:
        raise NoData(f"not enough trials for an importance estimate ({len(trials)} usable search trial, need 2)")
    importances, left_out = _importances(trials)
    if not importances:
        raise NoData("no searched parameter varies across the trials")
    names = list(importances)[::-1]  # largest at the top
    fig, ax = _figure(width=9, height=1.0 + 0.55 * len(names) + 1.2)
    ax.barh([_SEARCHED[n] for n in names], [importances[n] for n in names], color="#1f77b4")
    for y, name in enumerate(names):
        ax.text(importances[name], y, f" {importances[name]:.2f}", va="center", fontsize=9)
    ax.set_xlim(0, max(1.0, max(importances.values()) * 1.15))
    ax.set_xlabel("importance for best validation accuracy (fANOVA, share of variance)")
    ax.set_ylabel("searched parameter")
    ax.set_title(f"Hyperparameter importance over {len(trials)} search trials")
    if left_out:
        note = "not assessed (set in some trials only): " + ", ".join(_SEARCHED[n] for n in left_out)
        fig.text(0.01, 0.005, _wrap(note, 110), fontsize=8, color="0.35", va="bottom")
        fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))
    return _save(fig, path)


def _pareto(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both (less or equal cost, more or equal accuracy)."""
    order = np.lexsort((-accuracy, cost))  # by cost, then the more accurate first
    front, best = [], -math.inf
    for index in order:
        if accuracy[index] > best:
            front.append(index)
            best = accuracy[index]
    return np.asarray(front, dtype=int)


@_skippable
def plot_accuracy_vs_cost(runs: pd.DataFrame, path: str | Path) -> Path:
    """Best validation accuracy against training cost (seconds, and images seen) for search trials and
    baselines, with the Pareto front (most accurate for the cost) of the runs that ran to the end."""
    ok = usable(runs)
    ok = ok[ok["role"].isin(["search", "baseline"])]
    panels = [(column, label) for column, label in (("train_seconds", "training time (s)"),
                                                    ("images_seen", "training images seen"))
              if ok[column].notna().any()]
    if not panels:
        raise NoData("no run with train_seconds or images_seen")
    fig, axes = _figure(width=6 * len(panels) + 3, ncols=len(panels), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (column, label) in zip(axes, panels):
        frame = ok[ok[column].notna()]
        trials = frame[frame["role"] == "search"]
        for family in _families(trials):
            group = trials[trials["schedule_family"] == family]
            _scatter(ax, group[column], group[SCORE], _stopped(group), _family_color(family), label=family)
        baselines = frame[frame["role"] == "baseline"]
        for index, method in enumerate(_baseline_methods(baselines)):
            group = baselines[baselines["method"] == method]
            ax.scatter(group[column], group[SCORE], marker="s" if method == "ce" else "D", s=55,
                       color=_BASELINE_COLORS.get(method, f"C{6 + index}"), label=_baseline_name(method), zorder=3)
        complete = frame[frame["outcome"] == "finished"]
        if not complete.empty:
            cost, accuracy = complete[column].to_numpy(float), complete[SCORE].to_numpy(float)
            front = _pareto(cost, accuracy)
            ax.step(cost[front], accuracy[front], where="post", color="black", lw=1, alpha=0.7)
            ax.scatter(cost[front], accuracy[front], s=140, facecolors="none", edgecolors="black", linewidths=1.2,
                       label="Pareto front (runs that ran to the end)", zorder=4)
        ax.set_xlabel(label)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    axes[0].set_ylabel(SCORE_LABEL)
    fig.suptitle("Validation accuracy against training cost")
    _legend(fig, _marker_legend() + [h for ax in axes for h in ax.get_legend_handles_labels()[0]], below=True)
    return _save(fig, path)


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
    return [Candidate(c.name, _baseline_name(c.name) if c.is_baseline else f"{c.name}: {config_label(c.row)}",
                      c.is_baseline, c.val, c.test, c.row.get("init") == "teacher")
            for c in sweep_results(runs).confirmed]


@_skippable
def plot_confirmation(runs: pd.DataFrame, path: str | Path) -> Path:
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
    ref_label = _BASELINE_NAMES.get(ref_name or "", str(ref_name)).split(" (")[0]
    ncols = 2 if ref is not None and len(groups) > 1 else 1
    fig, axes = _figure(width=13 if ncols == 2 else 9, height=1.6 + 0.75 * len(groups), ncols=ncols, sharey=True)
    axes = np.atleast_1d(axes)
    for y, candidate in enumerate(groups):
        interval = mean_interval(candidate.test.values())
        color = (_BASELINE_COLORS.get(candidate.name.partition(".")[0], "#1f77b4") if candidate.is_baseline
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
    axes[0].set_yticks(range(len(groups)), [_wrap(c.label, 34) for c in groups])
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
    return _save(fig, path)


def _interval_point(ax: Axes, interval: Interval, y: float, color: str, text: str) -> None:
    half = None if math.isnan(interval.half_width) else interval.half_width
    ax.errorbar(interval.mean, y, xerr=half, fmt="o", color=color, capsize=5, markersize=7, zorder=3)
    ax.annotate(text, (interval.mean, y), xytext=(0, 9), textcoords="offset points", ha="center", fontsize=8)


# ----------------------------------------------------------------------------------------- all plots


@dataclass(frozen=True)
class Plot:
    """One plot of the report: its file stem, title, and a drawing function ``(runs, epochs, path)``."""

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


def _runs_only(plot: Callable[..., Path | None]) -> Callable[[pd.DataFrame, pd.DataFrame, Path], Path]:
    draw = plot.__wrapped__  # type: ignore[attr-defined]
    return lambda runs, epochs, path: draw(runs, path)


PLOTS: tuple[Plot, ...] = (
    Plot("accuracy_by_family", "Validation accuracy by schedule family", _runs_only(plot_accuracy_by_family)),
    Plot("accuracy_vs_p0_t_end", "Validation accuracy against p0 and t_end",
         _runs_only(plot_accuracy_vs_schedule_params)),
    Plot("granularity_family_heatmap", "Best validation accuracy per granularity and family",
         _runs_only(plot_granularity_family_heatmap)),
    Plot("accuracy_by_profile", "Validation accuracy by depth profile", _runs_only(plot_accuracy_by_profile)),
    Plot("learning_curves", "Learning curves of the five best trials", plot_learning_curves.__wrapped__),  # type: ignore[attr-defined]
    Plot("pure_vs_hybrid", "Pure student against the hybrid, with p(t), for the best trials",
         plot_pure_vs_hybrid.__wrapped__),  # type: ignore[attr-defined]
    Plot("swap_schedules", "Swap schedules p(t) of the five best trials", _runs_only(plot_swap_schedules)),
    Plot("param_importance", "Hyperparameter importance (fANOVA)", _runs_only(plot_param_importance)),
    Plot("accuracy_vs_cost", "Validation accuracy against training cost", _runs_only(plot_accuracy_vs_cost)),
    Plot("confirmation", "Confirmation: intervals over seeds and paired difference to KD",
         _runs_only(plot_confirmation)),
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
