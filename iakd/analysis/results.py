"""The answer of one sweep, computed once, from its runs table: which runs count (and why the others do not), the
search ranking and its winner, and the confirmation's means, intervals and paired differences.

The closing summary of ``tune/search.py``, the metrics on the sweep's parent run and ``report.md`` all read
:func:`sweep_results`, so one sweep gives one answer everywhere. The table is the one
:mod:`iakd.analysis.export` builds from MLflow (one row per run, every outcome kept and marked).

- A run counts when it finished or was stopped early by ASHA with a finite score (``export.usable``); a diverged,
  failed, killed or unfinished run does not, and every place says how many were left out.
- The winner is chosen once, on validation, in the search stage: the search trial with the best score
  (``best_val_acc``, over the epochs after its handover). The confirmation re-trains it on fresh seeds; its test
  accuracy there, and its difference to KD, are reported on seeds that played no part in choosing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from iakd.analysis.export import exclusions, usable
from iakd.analysis.stats import Interval, mean_interval, paired_difference
from iakd.tracking import baseline_label

__all__ = ["Confirmed", "SweepResults", "sweep_results", "search_ranking", "confirmation_runs", "SCORE"]

SCORE = "best_val_acc"  # the search metric as the runs table holds it: best validation accuracy after the handover
_BASELINE_ORDER = ("kd", "ce")


def search_ranking(runs: pd.DataFrame) -> pd.DataFrame:
    """The usable search trials, best score first (ties by run name): the search stage's ranking."""
    ok = usable(runs)
    trials = ok[ok["role"] == "search"]
    return trials.sort_values([SCORE, "run_name"], ascending=[False, True], kind="stable")


def confirmation_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run of the confirmation, usable or not: the ``confirm`` runs, and the baseline-stage runs on the
    confirmation's seeds that it reused instead of training its baselines again (they carry the candidate tag)."""
    confirm = runs[(runs["role"] == "confirm") & runs["candidate"].notna()]
    reused = runs[(runs["role"] == "baseline") & runs["candidate"].notna() & runs["seed"].isin(set(confirm["seed"]))
                  & ~runs["candidate"].isin(set(confirm["candidate"]))]
    return pd.concat([confirm, reused]) if not reused.empty else confirm


@dataclass(frozen=True)
class Confirmed:
    """One configuration of the confirmation: its counted runs' scores by seed."""

    name: str  # the iakd.candidate tag: a searched trial's name, or a baseline's method ("kd", "ce")
    is_baseline: bool
    row: dict[str, Any]  # one of its runs' rows (method, schedule...): what the configuration is
    val: dict[int, float]  # seed -> best validation accuracy (after the handover)
    test: dict[int, float]  # seed -> last-epoch test accuracy

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(sorted(self.test))

    @property
    def val_interval(self) -> Interval:
        return mean_interval(self.val.values())

    @property
    def test_interval(self) -> Interval:
        return mean_interval(self.test.values())


@dataclass(frozen=True)
class SweepResults:
    """What a sweep answers. ``ranking``: the usable search trials, best first; ``confirmed``: the confirmation's
    configurations, searched ones in ranking order (the winner first), then the baselines (KD, CE, others);
    ``left_out``: runs of the confirmation that do not count, by reason; ``search_left_out`` the same for the
    search stage."""

    ranking: pd.DataFrame
    confirmed: list[Confirmed] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)
    search_left_out: dict[str, int] = field(default_factory=dict)

    @property
    def winner(self) -> dict[str, Any] | None:
        """The search trial chosen on validation (its runs-table row), or None without a usable trial."""
        return None if self.ranking.empty else self.ranking.iloc[0].to_dict()

    def get(self, name: str) -> Confirmed | None:
        return next((c for c in self.confirmed if c.name == name), None)

    def reference(self, name: str, method: str) -> str:
        """The baseline ``method`` that ``name`` is compared with: the one trained from the same initialisation
        (``kd`` for a student from scratch, ``kd.teacher-init`` for one initialised from the teacher)."""
        c = self.get(name)
        return baseline_label(method, _init(c.row) if c is not None else None)

    @property
    def reference_method(self) -> str | None:
        """The baseline every configuration is measured against: KD where it was confirmed, else the first
        baseline confirmed (CE where ``baselines.methods`` is ``[ce]``); None without a confirmed baseline."""
        methods = [c.row["method"] for c in self.confirmed if c.is_baseline]  # KD first (the baselines' order)
        return methods[0] if methods else None

    def difference(self, name: str, reference: str, column: str = "test") -> Interval | None:
        """``name`` minus ``reference`` on ``column`` (test or val), paired by seed; None where either is missing.
        A baseline method as ``reference`` means that baseline under ``name``'s initialisation (:meth:`reference`)."""
        a, b = self.get(name), self.get(self.reference(name, reference))
        if a is None or b is None or a is b:
            return None
        return paired_difference(getattr(a, column), getattr(b, column))

    @property
    def left_out_count(self) -> int:
        return sum(self.left_out.values())

    def metrics(self, metric: str = "val_acc") -> dict[str, float]:
        """The parent run's figures: the winner's search score and last test accuracy, each confirmed
        configuration's mean test accuracy and difference to the reference baseline (``..._minus_kd``; CE's
        where KD was not a baseline), and how many confirmation runs did not count."""
        out: dict[str, float] = {}
        if self.winner is not None:
            out[f"best_{metric}"] = float(self.winner[SCORE])
            out["best_trial_last_test_acc"] = float(self.winner["last_test_acc"])
        reference = self.reference_method
        for c in self.confirmed:
            out[f"confirm_{c.name}_test_acc_mean"] = c.test_interval.mean
            diff = self.difference(c.name, reference) if reference is not None else None
            if diff is not None and not math.isnan(diff.mean):
                out[f"confirm_{c.name}_test_acc_minus_{reference}"] = diff.mean
        if self.confirmed or self.left_out:
            out["confirm_runs_left_out"] = float(self.left_out_count)
        return out


def sweep_results(runs: pd.DataFrame) -> SweepResults:
    """The answer of the sweep whose runs table (``export.load_sweep(...).runs.to_pandas()``) is ``runs``."""
    ranking = search_ranking(runs)
    everything = confirmation_runs(runs)
    counted = usable(everything)
    order = {name: i for i, name in enumerate(ranking["run_name"])}
    confirmed = []
    for name, group in counted.groupby("candidate", sort=True):
        first = group.iloc[0].to_dict()
        # a baseline's candidate is its label (method and initialisation); a searched one's is its trial name
        is_baseline = name == baseline_label(first["method"], _init(first))
        confirmed.append(Confirmed(str(name), is_baseline, first, _by_seed(group, SCORE),
                                   _by_seed(group, "last_test_acc")))
    searched = sorted((c for c in confirmed if not c.is_baseline),
                      key=lambda c: (order.get(c.name, len(order)), c.name))
    baselines = sorted((c for c in confirmed if c.is_baseline),
                       key=lambda c: (_init(c.row) != "scratch", _BASELINE_ORDER.index(c.row["method"])
                                      if c.row["method"] in _BASELINE_ORDER else 99, c.name))
    search = runs[runs["role"] == "search"]
    return SweepResults(ranking, searched + baselines, exclusions(everything) if not everything.empty else {},
                        exclusions(search) if not search.empty else {})


def _init(row: dict[str, Any]) -> str:
    """A run's student initialisation (``scratch`` where the table has none: runs from before the key)."""
    init = row.get("init")
    return init if isinstance(init, str) else "scratch"


def _by_seed(group: pd.DataFrame, column: str) -> dict[int, float]:
    return {int(s): float(v) for s, v in zip(group["seed"], group[column]) if math.isfinite(float(v))}
