"""Values as MLflow takes them: flat, truncated params and tags, and metrics that are one number each."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Metric, Param, RunTag

from iakd.config import flat_items

__all__ = ["MAX_PARAM_LENGTH", "MAX_TAG_LENGTH", "flatten", "as_metrics", "as_params", "as_tags", "as_tag_dict"]

# MLflow's limits (mlflow.utils.validation): longer values are rejected, or truncated with a warning,
# depending on MLFLOW_TRUNCATE_LONG_VALUES; truncating here makes the result the same everywhere.
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
_ELLIPSIS = "..."


def _truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when it was cut (so a reader can tell)."""
    return text if len(text) <= limit else text[: limit - len(_ELLIPSIS)] + _ELLIPSIS


def _render(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        # Compact JSON reads better in the UI than Python's repr and round-trips with json.loads;
        # default=str keeps odd members (paths, enums) instead of failing the whole sweep.
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)  # None -> "None", True -> "True", 0.3 -> "0.3"


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as flat MLflow params: ``{"a": {"b": 1}} -> {"a.b": "1"}``.

    Lists and tuples become compact JSON (``[1,2]``), ``None`` becomes ``"None"``, an empty mapping
    becomes ``"{}"`` (so the key is still visible), and every value is cut to :data:`MAX_PARAM_LENGTH`.
    """
    return {name: _truncate("{}" if isinstance(value, Mapping) else _render(value), MAX_PARAM_LENGTH)
            for name, value in flat_items(config, prefix).items()}


def _as_float(value: Any) -> float | None:
    """A metric value, or None for things that are not one number (strings, dicts, None, arrays)."""
    if value is None or isinstance(value, (str, bytes)):
        return None  # float("3") would succeed, but a string in a result dict is not a metric
    try:
        return float(value)  # ints, bools (0/1), numpy scalars, 0-d tensors
    except (TypeError, ValueError):
        return None


def as_metrics(metrics: Mapping[str, Any], step: int) -> list[Metric]:
    """The values of ``metrics`` that are one number, as MLflow metrics at ``step``, stamped now."""
    now = int(time.time() * 1000)
    numbers = ((key, _as_float(value)) for key, value in metrics.items())
    return [Metric(key, number, now, step) for key, number in numbers if number is not None]


def as_tags(tags: Mapping[str, Any]) -> list[RunTag]:
    """``tags`` as MLflow run tags, each value a string cut to :data:`MAX_TAG_LENGTH`."""
    return [RunTag(key, _truncate(str(value), MAX_TAG_LENGTH)) for key, value in tags.items()]


def as_tag_dict(tags: Mapping[str, Any] | None) -> dict[str, str]:
    """``tags`` as :func:`as_tags` renders them, in a dict (what ``create_run`` takes)."""
    return {tag.key: tag.value for tag in as_tags(tags or {})}


def as_params(params: Mapping[str, Any]) -> list[Param]:
    """``params`` flattened (:func:`flatten`) into MLflow params."""
    return [Param(key, value) for key, value in flatten(params).items()]
