"""fANOVA importance of the searched parameters over a sweep's search trials, through an in-memory Optuna study."""

from __future__ import annotations

import optuna
import pandas as pd

from iakd.analysis.labels import has_kd_term, present
from iakd.analysis.results import SCORE

__all__ = ["SEARCHED", "NoImportance", "param_importances"]

# The runs-table columns Optuna's importance sees, under their run-config names.
SEARCHED = {"method": "method.name", "schedule_family": "schedule.family", "p0": "schedule.p0",
            "t_end": "schedule.t_end", "rate": "schedule.rate", "interval": "schedule.interval",
            "profile": "schedule.profile", "granularity": "method.granularity", "kd_weight": "method.kd_weight"}


class NoImportance(Exception):
    """Raised when the trials leave fANOVA nothing to attribute; the message says why."""


def param_importances(trials: pd.DataFrame) -> tuple[dict[str, float], list[str]]:
    """fANOVA importances (largest first) of the :data:`SEARCHED` columns that vary and are set in every trial,
    for the trials' score; and the varying columns left out because only some trials have them (conditional
    ones, such as ``rate``: fANOVA needs every parameter in every trial).

    The trials (rows of the runs table) are added to an in-memory Optuna study as finished trials.
    """
    columns = [c for c in SEARCHED if trials[c].notna().any() and trials[c].dropna().nunique() > 1]
    rows = []
    for _, trial in trials.iterrows():
        params = {c: trial[c] for c in columns if present(trial[c])}
        if "kd_weight" in params and not has_kd_term(trial):
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
            raise NoImportance("no searched parameter is set in every trial")
        if len({value for _, value in rows}) < 2:
            raise NoImportance("every search trial has the same score: no variance to attribute")
        try:
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except RuntimeError as error:  # e.g. "zero total variance in all trees" on very few trials
            raise NoImportance(f"fANOVA found nothing to attribute ({error})") from error
    finally:
        optuna.logging.set_verbosity(verbosity)
    return dict(importances), sorted(set(distributions) - common)
