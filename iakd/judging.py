"""Which epochs a run is judged on: the one rule behind best_val_acc, the ranking, ASHA and the report.

Plain functions over per-epoch metrics (dicts as the engine records them, MLflow holds them, or Tune reports
them); no torch, so the analysis can ask them without importing it.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["evaluated", "handed_over", "judged_epochs", "best_judged_epoch"]


def evaluated(metrics: dict[str, Any]) -> bool:
    """True for an epoch after which the pure student was evaluated (every ``evaluation.every`` epochs, and the
    last): only those carry ``val_acc`` and ``test_acc``."""
    return "val_acc" in metrics


def handed_over(metrics: dict[str, Any]) -> bool:
    """True for an epoch that began after the swap schedule ended: the student trains alone from its start to the
    end of the run. The engine records it as ``handed_over`` (1 or 0; a warm-up epoch before swapping starts has
    p = 0 but has not handed over); a history without it (a method that does not swap, or one written before the
    key existed) falls back to a swap probability of 0."""
    if "handed_over" in metrics:
        return bool(metrics["handed_over"])
    return metrics.get("swap_prob", 0.0) == 0.0


def judged_epochs(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The epochs a run is judged on: its evaluated epochs after its swap schedule handed over (every evaluated
    epoch of a method that does not swap), or the last evaluated epoch alone where the schedule never reaches 0.
    A schedule is never scored while its student still trains inside hybrids, or every late-handover schedule
    loses by construction."""
    scored = [h for h in history if evaluated(h)]
    return [h for h in scored if handed_over(h)] or scored[-1:]


def best_judged_epoch(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The judged epoch (:func:`judged_epochs`) with the best ``val_acc``, NaN skipped; None if there is none.
    Its ``val_acc`` is the run's ``best_val_acc``, during training as at the end."""
    judged = [h for h in judged_epochs(history) if not math.isnan(h["val_acc"])]
    return max(judged, key=lambda h: h["val_acc"], default=None)
