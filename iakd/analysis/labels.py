"""How the plots and ``report.md`` name a run's configuration and a baseline, from a row of the runs table."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

__all__ = ["BASELINE_NAMES", "baseline_name", "config_label", "has_kd_term", "present"]

BASELINE_NAMES = {"ce": "CE (student alone)", "kd": "KD"}


def present(value: Any) -> bool:
    """Whether a cell of the runs table holds a value (neither None nor NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def has_kd_term(row: pd.Series | dict[str, Any]) -> bool:
    """Whether the row's method trains with a KD term."""
    # The export's kd_weight is the effective weight: 0 for iakd, > 0 for methods with a KD term (their
    # builder refuses 0), null for CE. So the table answers this without importing the method registry
    # (and torch with it).
    weight = row.get("kd_weight")
    return present(weight) and float(weight) > 0


def baseline_name(label: str) -> str:
    """A baseline's display name from its method or its label (``kd.teacher-init``: "KD, teacher init")."""
    method, _, init = str(label).partition(".")
    name = BASELINE_NAMES.get(method, method.upper())
    return f"{name}, {init.removesuffix('-init')} init" if init else name


def _fmt(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def config_label(row: pd.Series | dict[str, Any]) -> str:
    """A configuration in one line: ``"linear p0=0.50 t_end=0.80, gran. stage, uniform"``, with ``+KD 0.90``
    for IAKD+KD; a baseline's name for a method that does not swap (no schedule family in the runs table)."""
    teacher_init = ", teacher init" if row.get("init") == "teacher" else ""
    if not present(row.get("schedule_family")):
        return baseline_name(row["method"]) + teacher_init
    parts = [f"{row['schedule_family']} p0={_fmt(row['p0'])} t_end={_fmt(row['t_end'])}"]
    if present(row.get("t_start")) and float(row["t_start"]) > 0:
        parts[0] += f" t_start={_fmt(row['t_start'])}"
    for key in ("rate", "interval"):
        if present(row.get(key)):
            parts[0] += f" {key}={_fmt(row[key])}"
    parts += [f"gran. {row['granularity']}", str(row["profile"])]
    if has_kd_term(row):
        parts.append(f"+KD {_fmt(row['kd_weight'])}" + (" on the student" if row.get("kd_on") == "student" else ""))
    if row.get("mixing") == "blend":
        parts.append("blend")
    if present(row.get("hybrid_weight")) and float(row["hybrid_weight"]) > 0:
        parts.append(f"hybrid as aux. {_fmt(row['hybrid_weight'])}")
    return ", ".join(parts) + teacher_init
