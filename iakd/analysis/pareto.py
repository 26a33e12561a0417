"""The Pareto front of points that trade a cost against an accuracy."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["pareto_front"]


def pareto_front(cost: np.ndarray, accuracy: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both (less or equal cost, more or equal accuracy), by cost.

    Of points with equal cost and accuracy only the first is kept. Hand-written: a two-objective sort in a few
    lines, where optuna's front would need a study and keeps ties.
    """
    order = np.lexsort((-accuracy, cost))  # by cost, then the more accurate first
    front, best = [], -math.inf
    for index in order:
        if accuracy[index] > best:
            front.append(index)
            best = accuracy[index]
    return np.asarray(front, dtype=int)
