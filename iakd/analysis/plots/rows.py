"""Which rows of the runs table the plots draw (usable runs of a role, best trials, baselines); NoData if none."""

from __future__ import annotations

import pandas as pd

from iakd.analysis.export import usable
from iakd.analysis.plots.style import BASELINE_COLORS
from iakd.analysis.results import search_ranking

__all__ = ["TOP_N", "NoData", "baseline_methods", "best_trials", "role", "search_trials"]

TOP_N = 5


class NoData(Exception):
    """Raised by a plot's drawing code when the tables hold nothing to show; the message says why."""


def role(runs: pd.DataFrame, name: str) -> pd.DataFrame:
    """The usable runs (:func:`iakd.analysis.export.usable`) of one role: search, baseline or confirm."""
    ok = usable(runs)
    return ok[ok["role"] == name]


def search_trials(runs: pd.DataFrame) -> pd.DataFrame:
    """The usable search trials; :class:`NoData` where there is none."""
    trials = role(runs, "search")
    if trials.empty:
        raise NoData("no usable search trial")
    return trials


def best_trials(runs: pd.DataFrame, n: int = TOP_N) -> pd.DataFrame:
    """The ``n`` first of the search's ranking (usable trials by validation accuracy; ties: by run name)."""
    return search_ranking(runs).head(n)


def baseline_methods(frame: pd.DataFrame) -> list[str]:
    """The methods in ``frame``, in the plots' order of baselines (CE, KD, then others by name)."""
    methods = [m for m in frame["method"].dropna().unique()]
    return sorted(methods, key=lambda m: (list(BASELINE_COLORS).index(m) if m in BASELINE_COLORS else 99, m))
